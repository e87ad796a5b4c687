//! `onnxsam diff` on real pairs.
mod common;

use common::*;
use onnxsam::graph_passes::diff::diff;
use onnxsam::graph_passes::ir::Model;
use onnxsam::graph_passes::onnx::{tensor, SaveOptions};

fn load(name: &str) -> Model {
    Model::load(&model(name)).unwrap()
}

#[test]
fn model_against_itself_has_no_changes() {
    for m in MODELS {
        let a = load(m);
        let d = diff(&a, &a.clone());
        assert!(d.is_empty(), "{m}: {d:?}");
        assert_eq!(d.nodes_unchanged, a.graph.nodes.len());
    }
    let p = model("cnn");
    let o = onnxsam(&["diff", p.to_str().unwrap(), p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("no changes"), "{}", stdout(&o));
}

#[test]
fn one_changed_initializer_is_reported_with_its_largest_change() {
    let a = load("mlp");
    let mut b = a.clone();
    let t = b.graph.initializers.iter_mut().find(|t| t.dims.len() == 2).unwrap();
    let name = t.name.clone();
    let mut v = tensor::to_f32(t).unwrap();
    v[7] += 0.25;
    *t = tensor::from_f32(&name, &t.dims.clone(), &v);
    let d = diff(&a, &b);
    assert_eq!(d.initializers.len(), 1, "{d:?}");
    assert_eq!(d.initializers[0].name, name);
    let delta = d.initializers[0].max_abs_diff.unwrap();
    assert!((delta - 0.25).abs() < 1e-6, "{delta}");
    assert!(d.nodes_added.is_empty() && d.nodes_removed.is_empty() && d.nodes_changed.is_empty());
}

#[test]
fn renamed_node_is_matched_and_reported_as_renamed() {
    let a = load("cnn");
    let mut b = a.clone();
    let old = b.graph.nodes[3].name.clone();
    b.graph.nodes[3].name = "renamed_node".into();
    let d = diff(&a, &b);
    assert!(d.nodes_added.is_empty() && d.nodes_removed.is_empty(), "{d:?}");
    assert_eq!(d.nodes_changed.len(), 1);
    assert_eq!(d.nodes_changed[0].name, "renamed_node");
    assert!(d.nodes_changed[0].changes[0].contains(&old), "{:?}", d.nodes_changed[0]);
}

#[test]
fn added_node_is_listed_under_its_pass() {
    let a = load("resnet8");
    let mut b = a.clone();
    b.graph.pass = Some("example-pass".into());
    let logits = b.graph.outputs[0].name.clone();
    let y = b.graph.add("Relu", &[&logits]).name("extra_relu").output();
    b.graph.outputs[0].name = y;
    let d = diff(&a, &b);
    assert_eq!(d.nodes_added.len(), 1, "{d:?}");
    assert_eq!(d.nodes_added[0].op_type, "Relu");
    assert_eq!(d.nodes_added[0].pass.as_deref(), Some("example-pass"));
    assert!(d.nodes_removed.is_empty() && d.nodes_changed.is_empty());
    assert_eq!(d.outputs.len(), 2, "one output removed, one added: {:?}", d.outputs);
    // through the CLI, in all three formats
    let dir = tempdir();
    let pb = dir.path().join("b.onnx");
    b.save(&pb, &SaveOptions::default()).unwrap();
    let pa = model("resnet8");
    let text = stdout(&onnxsam(&["diff", pa.to_str().unwrap(), pb.to_str().unwrap()]));
    assert!(text.contains("nodes        | +1 -0 ~0"), "{text}");
    assert!(text.contains("example-pass (1 nodes: Relu×1)"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&stdout(&onnxsam(&[
        "diff",
        pa.to_str().unwrap(),
        pb.to_str().unwrap(),
        "--format",
        "json",
    ])))
    .unwrap();
    assert_eq!(json["nodes_added"][0]["name"], "extra_relu");
    let dot = stdout(&onnxsam(&["diff", pa.to_str().unwrap(), pb.to_str().unwrap(), "--format", "dot"]));
    assert!(dot.starts_with("digraph") && dot.contains("palegreen"), "{dot}");
}

#[test]
fn nodes_without_names_are_matched_by_structure() {
    let a = load("resnet8");
    let mut b = a.clone();
    for n in &mut b.graph.nodes {
        n.name.clear();
    }
    // regenerated value names too: rename every intermediate value
    let outputs: Vec<String> = b.graph.outputs.iter().map(|o| o.name.clone()).collect();
    let mut map = std::collections::HashMap::new();
    for (i, n) in b.graph.nodes.iter_mut().enumerate() {
        for o in &mut n.output {
            if !outputs.contains(o) {
                let new = format!("v{i}_{o}");
                map.insert(o.clone(), new.clone());
                *o = new;
            }
        }
    }
    for n in &mut b.graph.nodes {
        for i in &mut n.input {
            if let Some(new) = map.get(i) {
                *i = new.clone();
            }
        }
    }
    let d = diff(&a, &b);
    assert!(
        d.nodes_added.is_empty() && d.nodes_removed.is_empty(),
        "added {:?} removed {:?}",
        d.nodes_added.len(),
        d.nodes_removed.len()
    );
    assert!(
        d.nodes_changed.iter().all(|c| c.changes.len() == 1 && c.changes[0].starts_with("renamed")),
        "{:?}",
        d.nodes_changed
    );
}

#[test]
fn diff_of_a_step_graph_shows_backward_nodes_apart_from_the_update() {
    // what autodiff adds for the SAM update's two gradients is grouped as sam-update/autodiff,
    // the forward at θ+ε as sam-update/forward, the update itself (ε, θ+ε, the SGD step) as
    // sam-update
    let dir = tempdir();
    let step = dir.path().join("step.onnx");
    let m = model("cnn");
    let o = onnxsam(&["rewrite", m.to_str().unwrap(), "--optimizer", "sam", "-o", step.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&onnxsam(&["diff", m.to_str().unwrap(), step.to_str().unwrap()]));
    let count = |pass: &str| -> usize {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{pass} (")))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let (backward, forward, update) = (count("sam-update/autodiff"), count("sam-update/forward"), count("sam-update"));
    assert!(
        backward > 20 && forward > 5 && update > 0,
        "backward {backward}, forward {forward}, update {update}: {text}"
    );
    // the backward of a conv net has Conv/ConvTranspose/MatMul nodes; the update has none
    let group =
        |pass: &str| text.lines().find(|l| l.trim().starts_with(&format!("{pass} ("))).unwrap_or("").to_string();
    assert!(group("sam-update/autodiff").contains("Conv") || group("sam-update/autodiff").contains("MatMul"), "{text}");
    assert!(!group("sam-update").contains("Conv×"), "{text}");
}
