//! Gradient accumulation (`--accumulate K`): one step over the batch in K micro-batches equals the
//! step over the whole batch — SGD, Adam, and the SAM family over the logical batch (one ε from
//! the accumulated ascent gradient, RW-SAM's weights normalized over the whole batch) — on models
//! without BatchNorm (with it, each micro-batch normalizes with its own statistics, as PyTorch's
//! accumulation does), also where K does not divide the batch.
mod common;

use std::collections::BTreeMap;

use common::*;
use graph_passes::ir::Model;
use graph_passes::passes::fd_branch::FdScheme;
use graph_passes::passes::reweight::ScoreNorm;
use graph_passes::passes::sam_update::{BaseOptimizer, Optimizer, WeightDecayMode};
use graph_passes::step::{ReweightSpec, Score, StepSpec};
use onnxsam::backend::{self, BackendKind, BackendRequest, Device};
use onnxsam::grad::Batch;
use onnxsam::step::StepRunner;
use onnxsam::tensor::{read_npz, HostTensor};

fn specs() -> Vec<(&'static str, StepSpec)> {
    let sam = StepSpec { optimizer: Optimizer::Sam, rho: 0.05, weight_decay: 5e-4, ..StepSpec::default() };
    vec![
        ("sgd", StepSpec { weight_decay: 5e-4, ..StepSpec::default() }),
        (
            "adamw",
            StepSpec {
                base: BaseOptimizer::AdamW,
                lr: 1e-3,
                weight_decay: 1e-2,
                weight_decay_mode: WeightDecayMode::Decoupled,
                ..StepSpec::default()
            },
        ),
        ("sam", sam.clone()),
        ("asam", StepSpec { optimizer: Optimizer::Asam, rho: 0.5, ..sam.clone() }),
        (
            "rw-sam",
            StepSpec {
                reweight: Some(ReweightSpec {
                    target_ess: None,
                    lambda: 1.0,
                    score: Score::Fd { q: 1, scheme: FdScheme::Forward },
                    score_norm: ScoreNorm::Mean,
                }),
                ..sam.clone()
            },
        ),
        (
            // the runtime's adaptive λ (graph_passes::passes::reweight::auto_lambda) against the graph's
            "rw-sam, adaptive λ",
            StepSpec {
                reweight: Some(ReweightSpec {
                    target_ess: Some(0.5),
                    lambda: 0.0,
                    score: Score::Fd { q: 1, scheme: FdScheme::Forward },
                    score_norm: ScoreNorm::Mean,
                }),
                ..sam.clone()
            },
        ),
        (
            "rw-sam, loss-mode decay",
            StepSpec {
                reweight: Some(ReweightSpec {
                    target_ess: None,
                    lambda: 1.0,
                    score: Score::Fd { q: 1, scheme: FdScheme::Forward },
                    score_norm: ScoreNorm::Mean,
                }),
                weight_decay: 5e-2,
                weight_decay_mode: WeightDecayMode::Loss,
                ..sam.clone()
            },
        ),
        ("sam, clip, loss-mode decay", StepSpec { max_grad_norm: Some(0.5), weight_decay_mode: WeightDecayMode::Loss, ..sam }),
    ]
}

/// Two steps of `spec` on the batch (8 MNIST samples, the mlp), then the parameters and the
/// diagnostics of the last step.
fn two_steps(model: &Model, spec: &StepSpec, kind: BackendKind) -> (BTreeMap<String, HostTensor>, BTreeMap<String, HostTensor>) {
    two_steps_on(model, spec, kind, "mlp/batch.npz")
}

fn two_steps_on(
    model: &Model,
    spec: &StepSpec,
    kind: BackendKind,
    batch: &str,
) -> (BTreeMap<String, HostTensor>, BTreeMap<String, HostTensor>) {
    let be = backend::select(&BackendRequest { kind, ort_lib: None, device: Device::Cpu, threads: Some(1) }, false).unwrap();
    let mut r = StepRunner::new(model, spec, be.as_ref(), 5).unwrap();
    let path = fixture(batch);
    let b: Batch = r.batch(&path.display().to_string(), read_npz(&path).unwrap()).unwrap();
    r.step(&b).unwrap();
    let out = r.step(&b).unwrap();
    (r.values.clone(), out)
}

fn max_rel(a: &BTreeMap<String, HostTensor>, b: &BTreeMap<String, HostTensor>) -> (f64, String) {
    let mut worst = (0.0, String::new());
    for (k, x) in b {
        let Some(y) = a.get(k) else { continue };
        let (x, y) = (x.to_f64(), y.to_f64());
        let d = x.iter().zip(&y).map(|(p, q)| (p - q).powi(2)).sum::<f64>().sqrt();
        let n = x.iter().map(|q| q * q).sum::<f64>().sqrt().max(1e-12);
        if d / n > worst.0 {
            worst = (d / n, k.clone());
        }
    }
    worst
}

#[test]
fn accumulated_steps_equal_the_whole_batch_step() {
    let model = Model::load(&onnxsam_model("mlp")).unwrap();
    for kind in [BackendKind::Tract, BackendKind::Ort] {
        for (name, spec) in specs() {
            let (whole, out) = two_steps(&model, &spec, kind);
            for k in [2usize, 3, 8] {
                let acc = StepSpec { accumulate: Some(k), ..spec.clone() };
                let (parts, out_k) = two_steps(&model, &acc, kind);
                let (e, worst) = max_rel(&parts, &whole);
                assert!(e < 2e-5, "{name}, K = {k} on {kind:?}: '{worst}' off by {e:.2e} from the whole-batch step");
                for d in ["loss", "grad_norm", "sharpness", "ess"] {
                    if let (Some(a), Some(b)) = (out.get(d), out_k.get(d)) {
                        let (a, b) = (a.to_f64()[0], b.to_f64()[0]);
                        assert!((a - b).abs() <= 1e-4 * a.abs().max(1e-3), "{name}, K = {k} on {kind:?}: {d} {b} vs {a}");
                    }
                }
            }
        }
    }
}

/// A language model's padded sequences (tests/fixtures/tasks/gpt2, 24 rows keeping 4…15 tokens):
/// under the default reduction (the mean over the batch's kept tokens) micro-batches weigh by
/// their kept tokens, so K micro-batches make the whole batch's step — RW-SAM's scores and
/// weights included; under sample-mean they weigh by rows.
#[test]
fn accumulated_language_model_steps_weigh_micro_batches_by_kept_tokens() {
    use graph_passes::passes::per_sample_loss::{ClassAxis, Loss, Reduction};
    let model = Model::load(&fixture("tasks/gpt2/dynamo.onnx")).unwrap();
    for reduction in [Reduction::Mean, Reduction::SampleMean] {
        for (name, spec) in specs().into_iter().filter(|(n, _)| ["sgd", "adamw", "sam", "rw-sam"].contains(n)) {
            let mut spec = spec;
            spec.grad.loss =
                Loss::CrossEntropy { label_smoothing: 0.0, ignore_index: Some(-100), class_axis: ClassAxis::Auto, reduction };
            spec.grad.labels_shape = Some(vec![16]);
            let kind = BackendKind::Tract;
            let (whole, out) = two_steps_on(&model, &spec, kind, "tasks/gpt2_sam/data.npz");
            for k in [3usize, 5] {
                let acc = StepSpec { accumulate: Some(k), ..spec.clone() };
                let (parts, out_k) = two_steps_on(&model, &acc, kind, "tasks/gpt2_sam/data.npz");
                let (e, worst) = max_rel(&parts, &whole);
                // Adam divides by √v: float32 rounding of near-zero gradients shows more
                let tol = if name == "adamw" { 1e-4 } else { 2e-5 };
                assert!(e < tol, "{name} ({reduction:?}), K = {k}: '{worst}' off by {e:.2e} from the whole-batch step");
                for d in ["loss", "acc", "sharpness", "ess"] {
                    if let (Some(a), Some(b)) = (out.get(d), out_k.get(d)) {
                        let (a, b) = (a.to_f64()[0], b.to_f64()[0]);
                        // sharpness is a difference of two losses near 3.5: float32's rounding of them
                        let tol = if d == "sharpness" { 5e-6 } else { 1e-4 * a.abs().max(1e-3) };
                        assert!((a - b).abs() <= tol, "{name} ({reduction:?}), K = {k}: {d} {b} vs {a}");
                    }
                }
            }
        }
    }
}

/// With BatchNorm a micro-batch normalizes with its own statistics (so the step is not the
/// whole batch's), and the running statistics move once per micro-batch.
#[test]
fn batchnorm_moves_its_running_statistics_once_per_micro_batch() {
    let model = Model::load(&onnxsam_model("resnet8")).unwrap();
    let be = backend::select(&BackendRequest { kind: BackendKind::Tract, ort_lib: None, device: Device::Cpu, threads: Some(1) }, false)
        .unwrap();
    let spec = StepSpec { optimizer: Optimizer::Sam, accumulate: Some(2), ..StepSpec::default() };
    let mut r = StepRunner::new(&model, &spec, be.as_ref(), 1).unwrap();
    let path = fixture("resnet8/batch.npz");
    let b = r.batch(&path.display().to_string(), read_npz(&path).unwrap()).unwrap();
    let stat = r.contract().state_next.keys().find(|k| k.ends_with("running_mean")).unwrap().clone();
    let before = r.values[&stat].to_f64();
    let out = r.step(&b).unwrap();
    assert!(out["loss"].to_f64()[0].is_finite());
    // two micro-batches: m ← 0.9·(0.9·m + 0.1·μ₁) + 0.1·μ₂ ≠ one update
    let after = r.values[&stat].to_f64();
    assert!(before.iter().zip(&after).any(|(a, b)| (a - b).abs() > 1e-7), "the running mean moved");
}

fn onnxsam_model(name: &str) -> std::path::PathBuf {
    model(name)
}

/// `bench --consecutive` times each optimizer alone and reports its peak memory; with
/// `--accumulate` it times the accumulated step.
#[test]
fn bench_reports_peak_memory_per_optimizer_and_times_accumulation() {
    let o = onnxsam(&[
        "bench",
        model("mlp").to_str().unwrap(),
        "--optimizer",
        "sam",
        "--accumulate",
        "2",
        "--batch-size",
        "16",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--consecutive",
        "--json",
        "--backend",
        "tract",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_str(stdout(&o).lines().last().unwrap()).unwrap();
    let opts = r["optimizers"].as_array().unwrap();
    let names: Vec<&str> = opts.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["sgd acc=2", "sam acc=2"]);
    for t in opts {
        let mib = t["peak_rss_mib"].as_f64().expect("peak memory measured");
        assert!(mib > 1.0 && mib < 4096.0, "{t}");
    }
}
