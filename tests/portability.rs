//! The gradient graph `onnxsam rewrite --grad-only` writes runs in Python onnxruntime as it is
//! (tools/check_portable.py) and gives PyTorch's gradients. CI installs onnxruntime for python3.
mod common;

use common::*;

/// Runs a tools/ script with python3; panics with its output when it fails.
fn python(label: &str, script: &str, args: &[&std::path::Path]) {
    let check =
        std::process::Command::new("python3").arg(root().join(script)).args(args).output().expect("python3 runs");
    assert!(
        check.status.success(),
        "{label}: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn written_gradient_graphs_run_in_python_onnxruntime() {
    for m in ["cnn", "resnet8", "transformer"] {
        let tmp = tempdir();
        let out = tmp.path().join("grad.onnx");
        let o = onnxsam(&["rewrite", model(m).to_str().unwrap(), "--grad-only", "-o", out.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let (batch, grads) = (fixture(&format!("{m}/batch.npz")), fixture(&format!("{m}/grads.npz")));
        python(m, "tools/check_portable.py", &[&out, &batch, &grads]);
    }
}

/// A step graph runs in Python onnxruntime from its step.json alone (tools/check_step_portable.py)
/// and gives the next parameters, momentum and running statistics onnxsam's own run gives.
#[test]
fn written_step_graphs_run_in_python_onnxruntime() {
    use graph_passes::ir::Model;
    use onnxsam::backend::{self, BackendKind, BackendRequest, Device};
    use onnxsam::step::StepRunner;
    use onnxsam::tensor::read_npz;
    let be = backend::select(
        &BackendRequest { kind: BackendKind::Tract, ort_lib: None, device: Device::Cpu, threads: Some(2) },
        false,
    )
    .unwrap();
    for (m, opt) in [("cnn", &["--optimizer", "sgd"][..]), ("resnet8", &["--optimizer", "sam", "--reweight", "1"][..])]
    {
        let tmp = tempdir();
        let step = tmp.path().join("step.onnx");
        let mut args =
            vec!["rewrite", model(m).to_str().unwrap().to_string().leak() as &str, "-o", step.to_str().unwrap()];
        args.extend_from_slice(opt);
        let o = onnxsam(&args);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let out = tmp.path().join("out.npz");
        python(m, "tools/check_step_portable.py", &[&step, &fixture(&format!("{m}/batch.npz")), &out]);
        let py = read_npz(&out).unwrap();
        // the same step in onnxsam (tract), with Python's directions
        let spec_json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(tmp.path().join("step.json")).unwrap()).unwrap();
        let mut spec = graph_passes::step::StepSpec { rho: 0.05, ..Default::default() };
        if opt[1] == "sam" {
            spec.optimizer = graph_passes::passes::sam_update::Optimizer::Sam;
            spec.reweight = Some(graph_passes::step::ReweightSpec {
                target_ess: None,
                lambda: 1.0,
                score: graph_passes::step::Score::Fd {
                    q: 1,
                    scheme: graph_passes::passes::fd_branch::FdScheme::Forward,
                },
                score_norm: graph_passes::passes::reweight::ScoreNorm::Mean,
            });
        }
        assert_eq!(spec_json["spec"]["optimizer"], if opt[1] == "sam" { "sam" } else { "sgd" });
        let mut r = StepRunner::new(&Model::load(&model(m)).unwrap(), &spec, be.as_ref(), 0).unwrap();
        for (k, v) in &py {
            if k.starts_with("fd_z/") {
                r.fixed.insert(k.clone(), v.clone());
            }
        }
        let arrays = read_npz(&fixture(&format!("{m}/batch.npz"))).unwrap();
        let b = r.batch("batch.npz", arrays).unwrap();
        let ours = r.step(&b).unwrap();
        let mut compared = 0;
        for (k, v) in &ours {
            if !k.starts_with("next/") {
                continue;
            }
            let p = &py[k];
            let (a, b) = (v.to_f64(), p.to_f64());
            let d = a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
            let n = b.iter().map(|y| y * y).sum::<f64>().sqrt().max(1e-12);
            assert!(d / n < 1e-5, "{m} {k}: onnxsam vs Python onnxruntime rel {:.2e}", d / n);
            compared += 1;
        }
        assert!(compared > 0, "{m}: no next/ outputs compared");
    }
}
