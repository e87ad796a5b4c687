//! `onnxsam ops`: the op registry as a table; docs/ops.md is its Markdown output.
mod common;
use common::*;

/// docs/ops.md is generated: regenerate it with `onnxsam ops --markdown > docs/ops.md` when the
/// registry changes.
#[test]
fn docs_ops_md_is_the_registrys_table() {
    let o = onnxsam(&["ops", "--markdown"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let doc = std::fs::read_to_string(root().join("docs/ops.md")).expect("docs/ops.md");
    assert!(doc == stdout(&o), "docs/ops.md is out of date: run `cargo run --release -- ops --markdown > docs/ops.md`");
}

/// Every standard op ONNX Runtime training differentiates, onnxsam differentiates.
#[test]
fn coverage_is_a_superset_of_onnx_runtime_training() {
    use onnxsam::graph_passes::ops;
    let missing: Vec<&str> =
        ops::ORT_TRAINING_GRADIENTS.iter().copied().filter(|op| !ops::is_differentiable(op)).collect();
    assert!(missing.is_empty(), "ONNX Runtime training differentiates {missing:?}, onnxsam does not");
    let o = onnxsam(&["ops"]);
    assert!(stdout(&o).contains("onnxsam differentiates all of them"), "{}", stdout(&o));
}

#[test]
fn ops_answers_for_named_ops_and_refuses_unknown_ones() {
    let o = onnxsam(&["ops", "LSTM", "Resize", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let rows: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["op"], "LSTM");
    assert_eq!(rows[0]["gradient"], "written out");
    assert_eq!(rows[1]["op"], "Resize");
    assert_eq!(rows[1]["gradient"], "rule");
    let o = onnxsam(&["ops", "FancyOp"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("FancyOp"), "{err}");
}
