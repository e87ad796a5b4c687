//! `onnxsam run` on every reference model matches PyTorch's outputs on both engines.
mod common;

use common::*;
use onnxsam::tensor::read_npz;

fn check(model_name: &str, backend: &str) {
    let dir = tempdir();
    let out = dir.path().join("out.npz");
    let m = model(model_name);
    let input = fixture(&format!("{model_name}/input.npz"));
    let o = run_cmd(&m, &input, &out, backend);
    assert_eq!(o.status.code(), Some(0), "{model_name} on {backend}: {}", stderr(&o));
    assert!(stderr(&o).contains(&format!("backend: {backend}")), "{}", stderr(&o));
    let got = read_npz(&out).unwrap();
    let want = read_npz(&fixture(&format!("{model_name}/output.npz"))).unwrap();
    for (name, w) in &want {
        let g = got.get(name).unwrap_or_else(|| panic!("{model_name}: output {name} missing"));
        let err = g.max_abs_diff(w).unwrap_or_else(|| panic!("{model_name}: shape {:?} vs {:?}", g.shape, w.shape));
        assert!(err <= 1e-4, "{model_name} on {backend}: max abs error {err} > 1e-4");
    }
}

#[test]
fn models_match_pytorch_on_tract() {
    for m in MODELS {
        check(m, "tract");
    }
}

/// Needs ONNX Runtime: .ci/run installs it (`pip install onnxruntime==1.31.1`). Fails, never
/// skips, when the library is missing.
#[test]
fn models_match_pytorch_on_ort() {
    for m in MODELS {
        check(m, "ort");
    }
}

#[test]
fn auto_backend_says_which_engine_it_picked() {
    let m = model("mlp");
    let input = fixture("mlp/input.npz");
    let o = onnxsam(&["run", m.to_str().unwrap(), "--input", input.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).starts_with("backend: ort") || stderr(&o).starts_with("backend: tract"), "{}", stderr(&o));
    assert!(stdout(&o).contains("logits: float32 [4, 10]"), "{}", stdout(&o));
}

#[test]
fn inspect_backends_reports_the_library() {
    let o = onnxsam(&["inspect", "--backends", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(v["tract"].as_str().unwrap().contains("tract"));
    let ort = &v["ort"];
    assert!(ort["path"].as_str().unwrap().contains("libonnxruntime"), "{v}");
    assert_eq!(ort["version"].as_str(), Some("1.31.1"), "{v}");
    assert_eq!(v["ort_loads"], serde_json::Value::Bool(true), "{v}");
}

#[test]
fn inspect_describes_resnet8() {
    let o = onnxsam(&["inspect", model("resnet8").to_str().unwrap(), "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["ops"]["BatchNormalization"], 9);
    assert_eq!(v["ops"]["Conv"], 9);
    assert_eq!(v["inputs"][0]["shape"], "[N, 3, 32, 32]");
    assert_eq!(v["outputs"][0]["dtype"], "float32");
    assert_eq!(v["modes"].as_array().unwrap().len(), 9);
}
