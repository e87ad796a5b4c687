//! The gradient graph `onnxsam rewrite --grad-only` writes runs in Python onnxruntime as it is
//! (tools/check_portable.py) and gives PyTorch's gradients. CI installs onnxruntime for python3.
mod common;

use common::*;

#[test]
fn written_gradient_graphs_run_in_python_onnxruntime() {
    for m in ["cnn", "resnet8", "transformer"] {
        let tmp = tempdir();
        let out = tmp.path().join("grad.onnx");
        let o = onnxsam(&["rewrite", model(m).to_str().unwrap(), "--grad-only", "-o", out.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let check = std::process::Command::new("python3")
            .arg(root().join("tools/check_portable.py"))
            .arg(&out)
            .arg(fixture(&format!("{m}/batch.npz")))
            .arg(fixture(&format!("{m}/grads.npz")))
            .output()
            .expect("python3 runs");
        assert!(
            check.status.success(),
            "{m}: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
    }
}
