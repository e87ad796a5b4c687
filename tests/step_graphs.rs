//! Training-step graphs (issue 4): identities between optimizers, PyTorch reference steps,
//! the m-sharpness identity, bad input.
mod common;

use std::collections::BTreeMap;

use common::*;
use graph_passes::ir::Model;
use graph_passes::passes::sam_update::Optimizer;
use graph_passes::step::{ReweightSpec, Score, StepSpec};
use onnxsam::backend::{self, Backend, BackendKind, BackendRequest, Device};
use onnxsam::grad::Batch;
use onnxsam::step::StepRunner;
use onnxsam::tensor::{read_npz, HostTensor};

fn engine(kind: &str) -> Box<dyn Backend> {
    let kind = if kind == "ort" { BackendKind::Ort } else { BackendKind::Tract };
    backend::select(&BackendRequest { kind, ort_lib: None, device: Device::Cpu, threads: Some(2) }, false).unwrap()
}

fn fixture_batch(r: &StepRunner, name: &str) -> Batch {
    let path = fixture(&format!("{name}/batch.npz"));
    r.batch(&path.display().to_string(), read_npz(&path).unwrap()).unwrap()
}

/// Runs one step of `spec` on a model's fixture batch; returns the runner (values after the step)
/// and the step's outputs.
fn one_step(name: &str, spec: &StepSpec, engine_kind: &str) -> (StepRunner, BTreeMap<String, HostTensor>) {
    let m = Model::load(&model(name)).unwrap();
    let be = engine(engine_kind);
    let mut r = StepRunner::new(&m, spec, be.as_ref(), 7).unwrap();
    let b = fixture_batch(&r, name);
    let out = r.step(&b).unwrap();
    (r, out)
}

fn max_rel(a: &BTreeMap<String, HostTensor>, b: &BTreeMap<String, HostTensor>) -> (f64, String) {
    let mut worst = (0.0, String::new());
    for (k, x) in a {
        let y = &b[k];
        let (x, y) = (x.to_f64(), y.to_f64());
        let d = x.iter().zip(&y).map(|(p, q)| (p - q).powi(2)).sum::<f64>().sqrt();
        let n = y.iter().map(|q| q * q).sum::<f64>().sqrt().max(1e-12);
        if d / n > worst.0 {
            worst = (d / n, k.clone());
        }
    }
    worst
}

fn sam(rho: f32) -> StepSpec {
    StepSpec { optimizer: Optimizer::Sam, rho, weight_decay: 5e-4, ..StepSpec::default() }
}

#[test]
fn sam_with_rho_zero_equals_sgd() {
    for e in ["tract", "ort"] {
        for name in ["mlp", "resnet8"] {
            let (a, _) = one_step(name, &sam(0.0), e);
            let sgd = StepSpec { weight_decay: 5e-4, ..StepSpec::default() };
            let (b, _) = one_step(name, &sgd, e);
            let (err, at) = max_rel(&a.values, &b.values);
            assert!(err == 0.0, "{name} on {e}: SAM(ρ=0) differs from SGD by {err:.2e} at {at}");
        }
    }
}

#[test]
fn rw_sam_with_lambda_zero_equals_sam() {
    for e in ["tract", "ort"] {
        for name in ["mlp", "resnet8"] {
            let (a, _) = one_step(name, &sam(0.05), e);
            let rw = StepSpec {
                reweight: Some(ReweightSpec {
                    lambda: 0.0,
                    score: Score::Fd { q: 1, scheme: graph_passes::passes::fd_branch::FdScheme::Forward },
                    score_norm: graph_passes::passes::reweight::ScoreNorm::Mean,
                }),
                ..sam(0.05)
            };
            let (b, out) = one_step(name, &rw, e);
            let (err, at) = max_rel(&a.values, &b.values);
            assert!(err < 1e-6, "{name} on {e}: RW-SAM(λ=0) differs from SAM by {err:.2e} at {at}");
            let ess = out["ess"].to_f64()[0];
            assert!((ess - 8.0).abs() < 1e-4, "λ = 0 gives uniform weights: ESS {ess}");
        }
    }
}
