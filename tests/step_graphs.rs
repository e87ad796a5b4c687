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

/// RW-SAM's reweighting with λ = `lambda`: forward differences along one direction, mean-normalized
/// scores.
fn reweight(lambda: f32) -> Option<ReweightSpec> {
    Some(ReweightSpec {
        target_ess: None,
        lambda,
        score: Score::Fd { q: 1, scheme: graph_passes::passes::fd_branch::FdScheme::Forward },
        score_norm: graph_passes::passes::reweight::ScoreNorm::Mean,
    })
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
            let rw = StepSpec { reweight: reweight(0.0), ..sam(0.05) };
            let (b, out) = one_step(name, &rw, e);
            let (err, at) = max_rel(&a.values, &b.values);
            assert!(err < 1e-6, "{name} on {e}: RW-SAM(λ=0) differs from SAM by {err:.2e} at {at}");
            let ess = out["ess"].to_f64()[0];
            assert!((ess - 8.0).abs() < 1e-4, "λ = 0 gives uniform weights: ESS {ess}");
        }
    }
}

#[test]
fn adaptive_lambda_at_full_ess_and_the_variants_at_their_identity_settings_equal_sam() {
    use graph_passes::passes::sam_update::VariantParams;
    for e in ["tract", "ort"] {
        for name in ["mlp", "resnet8"] {
            let (sam_run, _) = one_step(name, &sam(0.05), e);
            // --reweight auto --target-ess 1: λ = 0, bit for bit the RW-SAM step with λ = 0
            let mut full = reweight(0.0).unwrap();
            full.target_ess = Some(1.0);
            let (a, out) = one_step(name, &StepSpec { reweight: Some(full), ..sam(0.05) }, e);
            let (b, _) = one_step(name, &StepSpec { reweight: reweight(0.0), ..sam(0.05) }, e);
            assert_eq!(out["lambda"].to_f64()[0], 0.0, "{name} on {e}: F = 1 gives λ = 0");
            let (err, at) = max_rel(&a.values, &b.values);
            assert!(err == 0.0, "{name} on {e}: auto λ at F = 1 differs from λ = 0 by {err:.2e} at {at}");
            let (err, at) = max_rel(&a.values, &sam_run.values);
            assert!(err < 1e-6, "{name} on {e}: auto λ at F = 1 differs from SAM by {err:.2e} at {at}");
            // GSAM α = 0, WSAM γ = 0.5, LookSAM k = 1 and F-SAM's first step are SAM
            let v = VariantParams::default();
            for (label, spec) in [
                ("gsam α = 0", StepSpec { optimizer: Optimizer::Gsam, variant: VariantParams { gsam_alpha: 0.0, ..v }, ..sam(0.05) }),
                ("wsam γ = 0.5", StepSpec { optimizer: Optimizer::Wsam, variant: VariantParams { wsam_gamma: 0.5, ..v }, ..sam(0.05) }),
                ("looksam k = 1", StepSpec { optimizer: Optimizer::LookSam, variant: VariantParams { looksam_k: 1, ..v }, ..sam(0.05) }),
                ("fsam, first step", StepSpec { optimizer: Optimizer::Fsam, ..sam(0.05) }),
            ] {
                let (r, _) = one_step(name, &spec, e);
                let (err, at) = max_rel(&sam_run.values, &r.values);
                assert!(err < 1e-6, "{name} on {e}: {label} differs from SAM by {err:.2e} at {at}");
            }
            // Momentum-SAM with ρ = 0 is SGD
            let (m, _) = one_step(name, &StepSpec { optimizer: Optimizer::MomentumSam, rho: 0.0, ..sam(0.0) }, e);
            let (s, _) = one_step(name, &StepSpec { weight_decay: 5e-4, ..StepSpec::default() }, e);
            let (err, at) = max_rel(&s.values, &m.values);
            assert!(err < 1e-6, "{name} on {e}: momentum-sam with ρ = 0 differs from SGD by {err:.2e} at {at}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One step of every optimizer against tools/reference_steps.py (PyTorch, METHOD.md)

/// buf0_p[i] = 1e-3·sin(0.1·i + k), as tools/reference_steps.py.
fn buf0(k: usize, n: usize) -> Vec<f32> {
    (0..n).map(|i| (1e-3 * (0.1 * i as f64 + k as f64).sin()) as f32).collect()
}

/// z_p[i] = 1 − 2·bit13(i·2654435761 + 97·k mod 2³²), as tools/reference_steps.py.
fn rademacher(k: usize, n: usize) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            let h = (i.wrapping_mul(2654435761).wrapping_add(97 * k as u64)) % (1u64 << 32);
            1.0 - 2.0 * ((h >> 13) & 1) as f32
        })
        .collect()
}

/// Adam's state before the step, as tools/reference_steps.py's adam_state0: exp_avg = buf0(k),
/// exp_avg_sq = buf0(k + 17)², max_exp_avg_sq = buf0(k + 31)² + buf0(k + 17)²/2; step 3.
fn adam_state0(k: usize, n: usize) -> [Vec<f32>; 3] {
    let v: Vec<f64> = buf0(k + 17, n).iter().map(|&x| (x as f64).powi(2)).collect();
    let vmax = buf0(k + 31, n).iter().zip(&v).map(|(&a, &b)| ((a as f64).powi(2) + b / 2.0) as f32).collect();
    [buf0(k, n), v.iter().map(|&x| x as f32).collect(), vmax]
}

const ADAM_STEP0: f32 = 3.0;

/// The optimizers of tools/reference_steps.py's CONFIGS.
const REFERENCE_OPTIMIZERS: [&str; 12] = [
    "sgd",
    "sam",
    "usam",
    "asam",
    "rwsam",
    "msam",
    "adam",
    "adamw_sam",
    "adam_usam_amsgrad",
    "adamw_asam_clip",
    "adamw_rwsam",
    "adamw_msam_amsgrad_clip",
];

/// The SAM variants of tools/reference_steps.py's VARIANTS (their state before the step:
/// fsam_momentum = buf0(k + 53), looksam_gv = buf0(k + 70)).
const REFERENCE_VARIANTS: [&str; 10] = [
    "rwsam_auto",
    "rwsam_auto_none",
    "gsam",
    "rw_gsam",
    "wsam",
    "fsam",
    "fsam_first",
    "looksam",
    "looksam_between",
    "momentum_sam",
];

fn reference_spec(opt: &str) -> StepSpec {
    use graph_passes::passes::sam_update::{BaseOptimizer as B, VariantParams, WeightDecayMode as W};
    let base = StepSpec { lr: 0.1, momentum: 0.9, weight_decay: 5e-4, rho: 0.05, ..StepSpec::default() };
    let adam = StepSpec { base: B::Adam, lr: 1e-3, ..base.clone() };
    let adamw =
        StepSpec { base: B::AdamW, lr: 1e-3, weight_decay: 1e-2, weight_decay_mode: W::Decoupled, ..base.clone() };
    match opt {
        "sgd" => StepSpec { nesterov: true, ..base },
        "sam" => StepSpec { optimizer: Optimizer::Sam, ..base },
        "usam" => StepSpec { optimizer: Optimizer::Usam, weight_decay_mode: W::Loss, ..base },
        "asam" => StepSpec { optimizer: Optimizer::Asam, rho: 0.5, eta: 0.01, weight_decay_mode: W::Decoupled, ..base },
        "rwsam" => StepSpec { optimizer: Optimizer::Sam, reweight: reweight(1.0), fd_delta: 3e-3, ..base },
        "msam" => StepSpec { optimizer: Optimizer::Sam, micro_batch: Some(2), ..base },
        "adam" => adam,
        "adamw_sam" => StepSpec { optimizer: Optimizer::Sam, ..adamw },
        "adam_usam_amsgrad" => StepSpec { optimizer: Optimizer::Usam, amsgrad: true, ..adam },
        "adamw_asam_clip" => {
            StepSpec { optimizer: Optimizer::Asam, rho: 0.5, eta: 0.01, max_grad_norm: Some(0.05), ..adamw }
        }
        "adamw_rwsam" => StepSpec {
            optimizer: Optimizer::Sam,
            reweight: reweight(1.0),
            fd_delta: 3e-3,
            betas: (0.8, 0.99),
            eps: 1e-6,
            ..adamw
        },
        "rwsam_auto" | "rwsam_auto_none" => {
            let mut rw = reweight(0.0).unwrap();
            rw.target_ess = Some(if opt == "rwsam_auto" { 0.5 } else { 0.25 });
            if opt == "rwsam_auto_none" {
                rw.score_norm = graph_passes::passes::reweight::ScoreNorm::None;
            }
            StepSpec { optimizer: Optimizer::Sam, reweight: Some(rw), fd_delta: 3e-3, ..base }
        }
        "gsam" | "rw_gsam" => StepSpec {
            optimizer: Optimizer::Gsam,
            variant: VariantParams { gsam_alpha: 0.3, ..Default::default() },
            reweight: if opt == "rw_gsam" { reweight(1.0) } else { None },
            fd_delta: 3e-3,
            ..base
        },
        "wsam" => StepSpec {
            optimizer: Optimizer::Wsam,
            variant: VariantParams { wsam_gamma: 0.8, ..Default::default() },
            ..base
        },
        "fsam" | "fsam_first" => StepSpec {
            optimizer: Optimizer::Fsam,
            variant: VariantParams { fsam_sigma: 1.0, fsam_lambda: 0.9, ..Default::default() },
            ..base
        },
        "looksam" | "looksam_between" => StepSpec {
            optimizer: Optimizer::LookSam,
            variant: VariantParams { looksam_k: 5, looksam_alpha: 0.7, ..Default::default() },
            ..base
        },
        "momentum_sam" => StepSpec { optimizer: Optimizer::MomentumSam, rho: 0.05, ..base },
        "adamw_msam_amsgrad_clip" => StepSpec {
            optimizer: Optimizer::Sam,
            micro_batch: Some(2),
            amsgrad: true,
            max_grad_norm: Some(0.05),
            ..adamw
        },
        _ => unreachable!(),
    }
}

/// ‖Δ‖/‖ref‖ of two vectors.
fn rel(got: &[f64], want: &[f64]) -> f64 {
    let d = got.iter().zip(want).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
    let n = want.iter().map(|b| b * b).sum::<f64>().sqrt();
    if n < 1e-12 {
        d
    } else {
        d / n
    }
}

fn check_reference_step(name: &str, opt: &str, engine_kind: &str) -> Vec<String> {
    let m = Model::load(&model(name)).unwrap();
    let be = engine(engine_kind);
    let spec = reference_spec(opt);
    let mut r = StepRunner::new(&m, &spec, be.as_ref(), 0).unwrap();
    let mut params = r.contract().params.clone();
    params.sort();
    for (k, p) in params.iter().enumerate() {
        let n = r.values[p].len();
        let shape = r.values[p].shape.clone();
        if spec.base.is_adam() {
            let [m0, v0, vmax0] = adam_state0(k, n);
            r.values.insert(format!("exp_avg/{p}"), HostTensor::f32(&shape, m0));
            r.values.insert(format!("exp_avg_sq/{p}"), HostTensor::f32(&shape, v0));
            if spec.amsgrad {
                r.values.insert(format!("max_exp_avg_sq/{p}"), HostTensor::f32(&shape, vmax0));
            }
            r.values.insert("step".into(), HostTensor::f32(&[], vec![ADAM_STEP0]));
        } else {
            r.values.insert(format!("momentum_buffer/{p}"), HostTensor::f32(&shape, buf0(k, n)));
        }
        // the SAM variants' state (tools/reference_steps.py)
        match opt {
            "fsam" | "fsam_first" => {
                r.values.insert(format!("fsam_momentum/{p}"), HostTensor::f32(&shape, buf0(k + 53, n)));
                r.values.insert("fsam_started".into(), HostTensor::f32(&[], vec![(opt == "fsam") as u8 as f32]));
            }
            "looksam_between" => {
                r.values.insert(format!("looksam_gv/{p}"), HostTensor::f32(&shape, buf0(k + 70, n)));
                r.step = 1;
            }
            _ => {}
        }
        let signs: Vec<bool> = rademacher(k, n).into_iter().map(|z| z > 0.0).collect();
        r.fixed.insert(
            format!("fd_z/0/{p}"),
            HostTensor { shape: shape.clone(), data: onnxsam::tensor::Data::Bool(signs) },
        );
    }
    let before = r.values.clone();
    let b = fixture_batch(&r, name);
    let out = r.step(&b).unwrap();
    let want = read_npz(&fixture(&format!("{name}/step_{opt}.npz"))).unwrap();
    let mut errors = Vec::new();
    // running statistics: PyTorch buffer name → the graph's state input
    let state_name = |buffer: &str| -> Option<String> {
        r.contract().state_next.keys().find(|k| k.as_str() == buffer || k.ends_with(buffer)).cloned()
    };
    for (key, w) in &want {
        let Some(v) = key.strip_prefix("next/") else { continue };
        let input = if r.values.contains_key(v) { Some(v.to_string()) } else { state_name(v) };
        let Some(input) = input else {
            errors.push(format!("{key}: no such value in the step graph"));
            continue;
        };
        let pick = |t: &HostTensor| -> Vec<f64> {
            let all = t.to_f64();
            match want.get(&format!("idx/{key}")) {
                Some(idx) => idx.to_f64().iter().map(|&i| all[i as usize]).collect(),
                None => all,
            }
        };
        let got = pick(&r.values[&input]);
        let w = w.to_f64();
        let e = rel(&got, &w);
        if e > 1e-4 {
            errors.push(format!("{key}: ‖Δ‖/‖ref‖ = {e:.2e}"));
        }
        // the update itself (θ_next − θ), far stricter than the next value
        if let Some(b0) = before.get(&input) {
            let b0 = pick(b0);
            let du: Vec<f64> = got.iter().zip(&b0).map(|(a, b)| a - b).collect();
            let dw: Vec<f64> = w.iter().zip(&b0).map(|(a, b)| a - b).collect();
            let e = rel(&du, &dw);
            if e > 2e-3 {
                errors.push(format!("{key}: update ‖Δ‖/‖ref‖ = {e:.2e}"));
            }
        }
    }
    for diag in ["loss", "grad_norm", "sharpness", "scores", "lambda", "ess"] {
        if let (Some(w), Some(g)) = (want.get(diag), out.get(diag)) {
            let e = rel(&g.to_f64(), &w.to_f64());
            // λ: the graph interpolates ln λ on a grid (reweight.rs), the reference bisects to the root
            let tol = match diag {
                "sharpness" | "scores" => 1e-2,
                "lambda" | "ess" => 1e-3,
                _ => 1e-4,
            };
            if e > tol {
                errors.push(format!("{diag}: {:?} vs PyTorch {:?} (rel {e:.2e})", g.to_f64(), w.to_f64()));
            }
        }
    }
    errors.into_iter().map(|e| format!("{name} {opt} on {engine_kind}: {e}")).collect()
}

fn reference_steps(engine_kind: &str, optimizers: &[&str]) {
    let mut errors = Vec::new();
    for name in ["mlp", "cnn", "resnet8"] {
        for opt in optimizers {
            errors.extend(check_reference_step(name, opt, engine_kind));
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
fn one_step_of_every_optimizer_equals_pytorch_on_tract() {
    reference_steps("tract", &REFERENCE_OPTIMIZERS);
}

#[test]
fn one_step_of_every_optimizer_equals_pytorch_on_ort() {
    reference_steps("ort", &REFERENCE_OPTIMIZERS);
}

#[test]
fn one_step_of_every_sam_variant_and_adaptive_lambda_equals_pytorch_on_tract() {
    reference_steps("tract", &REFERENCE_VARIANTS);
}

#[test]
fn one_step_of_every_sam_variant_and_adaptive_lambda_equals_pytorch_on_ort() {
    reference_steps("ort", &REFERENCE_VARIANTS);
}

// ---------------------------------------------------------------------------------------------
// The m-sharpness identity (METHOD.md): for quadratic per-sample losses, m-USAM with m = 1 over
// all n samples descends along ∇[L + (ρ/2)‖∇L‖² + (ρ/2)·tr V].

#[test]
fn m_usam_with_m_one_is_the_gradient_of_loss_plus_gradient_norm_plus_variance() {
    use graph_passes::passes::per_sample_loss::Loss;
    let n = 16;
    let (rho, lr) = (0.05f64, 0.1f64);
    // data: ℓᵢ = (aᵢᵀw + b − yᵢ)² (mse on one output), parameters θ = (w, b)
    let u = onnxsam::grad::uniform(9, "linreg", n * 6);
    let x: Vec<f32> = u[..n * 5].iter().map(|v| 2.0 * v - 1.0).collect();
    let t: Vec<f32> = u[n * 5..].iter().map(|v| 2.0 * v - 1.0).collect();
    let m = Model::load(&fixture("linreg/model.onnx")).unwrap();
    let spec = StepSpec {
        optimizer: Optimizer::Usam,
        micro_batch: Some(1),
        rho: rho as f32,
        lr: lr as f32,
        momentum: 0.0,
        grad: graph_passes::step::GradSpec { loss: Loss::Mse, ..Default::default() },
        ..StepSpec::default()
    };
    for e in ["tract", "ort"] {
        let be = engine(e);
        let mut r = StepRunner::new(&m, &spec, be.as_ref(), 0).unwrap();
        let theta0: Vec<f64> = r.values["W"].to_f64().into_iter().chain(r.values["b"].to_f64()).collect();
        let batch = Batch {
            data: vec![("x".into(), HostTensor::f32(&[n, 5], x.clone()))],
            labels: Some(HostTensor::f32(&[n, 1], t.clone())),
        };
        r.step(&batch).unwrap();
        let theta1: Vec<f64> = r.values["W"].to_f64().into_iter().chain(r.values["b"].to_f64()).collect();
        let g: Vec<f64> = theta0.iter().zip(&theta1).map(|(a, b)| (a - b) / lr).collect();
        // the right-hand side in float64: aᵢ = (xᵢ, 1), gᵢ = 2·rᵢ·aᵢ, Hᵢ = 2·aᵢaᵢᵀ
        let a: Vec<Vec<f64>> =
            (0..n).map(|i| x[i * 5..i * 5 + 5].iter().map(|&v| v as f64).chain([1.0]).collect()).collect();
        let dot = |p: &[f64], q: &[f64]| p.iter().zip(q).map(|(x, y)| x * y).sum::<f64>();
        let gi: Vec<Vec<f64>> = (0..n)
            .map(|i| {
                let res = dot(&a[i], &theta0) - t[i] as f64;
                a[i].iter().map(|v| 2.0 * res * v).collect()
            })
            .collect();
        let mean =
            |vs: &[Vec<f64>]| -> Vec<f64> { (0..6).map(|k| vs.iter().map(|v| v[k]).sum::<f64>() / n as f64).collect() };
        let gbar = mean(&gi);
        let hv = |i: usize, v: &[f64]| -> Vec<f64> { a[i].iter().map(|ak| 2.0 * ak * dot(&a[i], v)).collect() };
        let hbar_gbar = mean(&(0..n).map(|i| hv(i, &gbar)).collect::<Vec<_>>());
        let mean_h_g = mean(&(0..n).map(|i| hv(i, &gi[i])).collect::<Vec<_>>());
        // ∇L = ḡ;  ∇(½‖∇L‖²) = H̄ḡ;  ∇(½·tr V) = (1/n)ΣHᵢgᵢ − H̄ḡ
        let rhs: Vec<f64> = (0..6).map(|k| gbar[k] + rho * hbar_gbar[k] + rho * (mean_h_g[k] - hbar_gbar[k])).collect();
        let err = rel(&g, &rhs);
        assert!(err < 1e-4, "{e}: m-USAM(m = 1) direction {g:?} vs ∇[L + ρ/2‖∇L‖² + ρ/2·tr V] {rhs:?}: rel {err:.2e}");
        // and the variance term matters: without it the identity fails
        let without: Vec<f64> = (0..6).map(|k| gbar[k] + rho * hbar_gbar[k]).collect();
        assert!(rel(&g, &without) > 100.0 * err.max(1e-7), "{e}: tr V term too small to test");
    }
}

// ---------------------------------------------------------------------------------------------
// rewrite / bench: bad input and what they write

fn rewrite(args: &[&str]) -> (std::process::Output, tempfile::TempDir) {
    let tmp = tempdir();
    let out = tmp.path().join("step.onnx");
    let mut a = vec!["rewrite", "models/mlp.onnx", "-o", out.to_str().unwrap()];
    a.extend_from_slice(args);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_onnxsam"));
    cmd.current_dir(root()).args(&a);
    (cmd.output().unwrap(), tmp)
}

#[test]
fn bad_optimizer_options_exit_2_with_one_line() {
    let (o, _t) = rewrite(&["--optimizer", "sgd", "--reweight", "1"]);
    assert_bad_input(&o, "--reweight", "SAM-family optimizer");
    let (o, _t) = rewrite(&["--optimizer", "sam", "--rho", "-0.1"]);
    assert_bad_input(&o, "--rho", "≥ 0");
    let (o, _t) = rewrite(&["--optimizer", "sam", "--micro-batch", "0"]);
    assert_bad_input(&o, "--micro-batch", "at least 1");
    let (o, _t) = rewrite(&["--optimizer", "sam", "--reweight", "1", "--micro-batch", "4"]);
    assert_bad_input(&o, "--micro-batch", "choose one");
    let (o, _t) = rewrite(&["--optimizer", "lamb"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("invalid value 'lamb'"), "{}", stderr(&o));
    let (o, _t) = rewrite(&["--optimizer", "adamw", "--momentum", "0.9"]);
    assert_bad_input(&o, "--momentum", "--betas");
    let (o, _t) = rewrite(&["--optimizer", "sam", "--base-optimizer", "adamw", "--weight-decay-mode", "coupled"]);
    assert_bad_input(&o, "AdamW's weight decay is decoupled", "--base-optimizer adam");
    let (o, _t) = rewrite(&["--optimizer", "adam", "--betas", "0.9"]);
    assert_bad_input(&o, "--betas 0.9", "B1,B2");
    let (o, _t) = rewrite(&["--optimizer", "adam", "--betas", "0.9,1.5"]);
    assert_bad_input(&o, "--betas", "[0, 1)");
    let (o, _t) = rewrite(&["--optimizer", "sgd", "--amsgrad"]);
    assert_bad_input(&o, "--amsgrad", "Adam");
    let (o, _t) = rewrite(&["--optimizer", "sam", "--clip-grad-norm", "0"]);
    assert_bad_input(&o, "--clip-grad-norm", "> 0");
    let (o, _t) = rewrite(&["--optimizer", "adamw", "--base-optimizer", "sgd"]);
    assert_bad_input(&o, "--base-optimizer", "its own base optimizer");
    let (o, _t) = rewrite(&["--optimizer", "sam", "--accumulate", "0"]);
    assert_bad_input(&o, "--accumulate", "at least 1");
    let (o, _t) = rewrite(&["--optimizer", "sam", "--accumulate", "2", "--micro-batch", "4"]);
    assert_bad_input(&o, "--accumulate and --micro-batch", "choose one");
    let (o, _t) = rewrite(&["--optimizer", "sam", "--reweight", "1", "--score", "exact", "--accumulate", "2"]);
    assert_bad_input(&o, "--accumulate", "--score fd");
    // the SAM variants and adaptive λ (docs/optimizers.md)
    let (o, _t) = rewrite(&["--optimizer", "sam", "--gsam-alpha", "0.2"]);
    assert_bad_input(&o, "--gsam-alpha", "--optimizer gsam");
    let (o, _t) = rewrite(&["--optimizer", "wsam", "--wsam-gamma", "1"]);
    assert_bad_input(&o, "--wsam-gamma", "[0, 1)");
    let (o, _t) = rewrite(&["--optimizer", "looksam", "--looksam-k", "0"]);
    assert_bad_input(&o, "--looksam-k", "at least 1");
    let (o, _t) = rewrite(&["--optimizer", "momentum-sam", "--reweight", "1"]);
    assert_bad_input(&o, "--reweight", "momentum-sam has none");
    let (o, _t) = rewrite(&["--optimizer", "gsam", "--micro-batch", "4"]);
    assert_bad_input(&o, "--micro-batch", "sam, usam or asam");
    let (o, _t) = rewrite(&["--optimizer", "fsam", "--accumulate", "2"]);
    assert_bad_input(&o, "--accumulate", "sam, usam and asam");
    let (o, _t) = rewrite(&["--optimizer", "sam", "--reweight", "1", "--target-ess", "0.5"]);
    assert_bad_input(&o, "--target-ess", "--reweight auto");
    let (o, _t) = rewrite(&["--optimizer", "sam", "--reweight", "auto", "--target-ess", "0"]);
    assert_bad_input(&o, "--target-ess", "(0, 1]");
    let (o, _t) = rewrite(&["--optimizer", "sam", "--reweight", "-0.5"]);
    assert_bad_input(&o, "unexpected argument '-0'", "--reweight=-0.5");
    // --reweight alone is adaptive λ at F = 0.5; --reweight=-0.5 a negative λ
    for (args, want) in [(&["--reweight"][..], (0.5, None)), (&["--reweight=-0.5"][..], (0.0, Some(-0.5)))] {
        let mut a = vec!["--optimizer", "sam"];
        a.extend_from_slice(args);
        let (o, t) = rewrite(&a);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let j: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(t.path().join("step.json")).unwrap()).unwrap();
        let rw = &j["spec"]["reweight"];
        match want {
            (f, None) => assert_eq!(rw["target_ess"].as_f64(), Some(f), "{rw}"),
            (_, Some(l)) => {
                assert_eq!(rw["lambda"].as_f64(), Some(l), "{rw}");
                assert!(rw.get("target_ess").is_none(), "{rw}");
            }
        }
    }
    let (o, _t) = rewrite(&["--optimizer", "sam", "--reweight", "often"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("expected a number λ or `auto`"), "{}", stderr(&o));
    // m-SAM's micro-batch must divide the batch
    let o = onnxsam(&[
        "bench",
        model("mlp").to_str().unwrap(),
        "--optimizer",
        "sam",
        "--micro-batch",
        "5",
        "--batch-size",
        "128",
        "--backend",
        "tract",
    ]);
    assert_bad_input(&o, "--micro-batch 5", "does not divide");
}

#[test]
fn rewrite_writes_a_step_graph_that_inspect_and_diff_explain() {
    let (o, t) = rewrite(&["--optimizer", "sam", "--reweight", "1", "--fd-q", "2"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let step = t.path().join("step.onnx");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(t.path().join("step.json")).unwrap()).unwrap();
    let g = &json["graphs"][0];
    let roles =
        |key: &str, role: &str| -> usize { g[key].as_array().unwrap().iter().filter(|io| io["role"] == role).count() };
    assert_eq!(roles("inputs", "parameter"), 6);
    assert_eq!(roles("inputs", "random_direction"), 12, "Q = 2 directions per parameter tensor");
    assert!(g["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|io| io["role"] == "random_direction")
        .all(|io| io["dtype"] == "bool"));
    assert_eq!(roles("inputs", "state"), 6, "momentum buffers");
    assert_eq!(roles("outputs", "parameter"), 6);
    for d in ["loss", "correct", "grad_norm", "sharpness", "weight_entropy", "ess", "max_weight", "trace_v"] {
        assert!(
            g["outputs"].as_array().unwrap().iter().any(|io| io["name"] == d && io["role"] == "diagnostic"),
            "diagnostic {d} missing"
        );
    }
    let o = onnxsam(&["inspect", step.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0));
    let text = stdout(&o);
    assert!(text.contains("onnxsam training-step graph"), "{text}");
    assert!(text.contains("reweight λ = 1"), "{text}");
    let o = onnxsam(&["diff", model("mlp").to_str().unwrap(), step.to_str().unwrap()]);
    let text = stdout(&o);
    for pass in ["per-sample-loss", "fd-branch", "reweight", "sam-update"] {
        assert!(text.contains(&format!("{pass} (")), "diff shows no {pass} nodes:\n{text}");
    }
    // m-SAM writes the micro-batch graph and the apply graph
    let (o, t) = rewrite(&["--optimizer", "sam", "--micro-batch", "16"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(t.path().join("step.apply.onnx").exists());
    let o = onnxsam(&["inspect", t.path().join("step.apply.onnx").to_str().unwrap()]);
    assert!(stdout(&o).contains("m-SAM apply graph"), "{}", stdout(&o));
}

// ---------------------------------------------------------------------------------------------
// Smaller contracts: exact scores, weight-decay exclusions, the eval graph, stable output

#[test]
fn exact_scores_are_per_sample_gradient_norms_and_set_the_gibbs_weights() {
    use onnxsam::step::PerSampleGrads;
    let m = Model::load(&model("mlp")).unwrap();
    let be = engine("tract");
    let spec = StepSpec {
        reweight: Some(ReweightSpec {
            target_ess: None,
            lambda: 1.0,
            score: Score::Exact,
            score_norm: graph_passes::passes::reweight::ScoreNorm::Mean,
        }),
        ..sam(0.05)
    };
    let mut r = StepRunner::new(&m, &spec, be.as_ref(), 0).unwrap();
    let b = fixture_batch(&r, "mlp");
    let mut psg = PerSampleGrads::new(&m, &spec.grad, be.as_ref()).unwrap();
    let norms: Vec<f64> = psg.norms(&r.values, &b, 0, 0).unwrap().into_iter().map(|x| x as f64).collect();
    // ‖∇ℓᵢ‖ from the per-sample gradients agrees with the mean gradient of the fixture
    let out = r.step(&b).unwrap();
    let c = norms.iter().sum::<f64>() / norms.len() as f64;
    let e: Vec<f64> = norms.iter().map(|s| (s / c).exp()).collect();
    let z: f64 = e.iter().sum();
    let want: Vec<f64> = e.iter().map(|x| x / z).collect();
    let got = out["sample_weights"].to_f64();
    assert!(rel(&got, &want) < 1e-5, "weights {got:?} vs softmax(s/mean s) {want:?}");
    assert!(norms.iter().all(|&n| n > 0.0));
}

#[test]
fn weight_decay_spares_biases_and_norms_when_asked() {
    use graph_passes::passes::sam_update::WeightDecayMode as W;
    for mode in [W::Coupled, W::Decoupled, W::Loss] {
        // SGD: with SAM, decay in mode `loss` also enters ε and so moves every parameter a little
        let sgd = StepSpec::default();
        let with = StepSpec { weight_decay: 0.1, weight_decay_mode: mode, no_decay_bias_norm: true, ..sgd.clone() };
        let without = StepSpec { weight_decay: 0.0, ..sgd };
        let (a, _) = one_step("resnet8", &with, "tract");
        let (b, _) = one_step("resnet8", &without, "tract");
        for p in a.contract().params.clone() {
            let d = rel(&a.values[&p].to_f64(), &b.values[&p].to_f64());
            let rank = a.values[&p].shape.len();
            if rank <= 1 {
                assert!(d < 1e-6, "{mode:?}: {p} (rank {rank}) was decayed: {d:.2e}");
            } else {
                assert!(d > 1e-5, "{mode:?}: {p} was not decayed");
            }
        }
    }
}

#[test]
fn eval_graph_gives_eval_mode_logits_loss_and_correct_count() {
    use onnxsam::step::Evaluator;
    for e in ["tract", "ort"] {
        let m = Model::load(&model("resnet8")).unwrap();
        let be = engine(e);
        let mut ev = Evaluator::new(&m, &graph_passes::step::GradSpec::default(), be.as_ref()).unwrap();
        let input = read_npz(&fixture("resnet8/input.npz")).unwrap();
        let want = &read_npz(&fixture("resnet8/output.npz")).unwrap()["logits"];
        let x = input.values().next().unwrap().clone();
        let n = x.shape[0];
        let labels: Vec<i64> = (0..n as i64).map(|i| i % 10).collect();
        let batch = Batch { data: vec![("input".into(), x)], labels: Some(HostTensor::i64(&[n], labels.clone())) };
        let values = onnxsam::grad::initial_values(&ev.graph.contract).unwrap();
        let out = ev.run(&values, &batch).unwrap();
        let logits = out["logits"].to_f64();
        assert!(rel(&logits, &want.to_f64()) < 1e-5, "{e}: eval-mode logits differ from PyTorch's");
        let w = want.to_f64();
        let mut correct = 0.0;
        let mut loss = 0.0;
        for i in 0..n {
            let row = &w[i * 10..i * 10 + 10];
            let arg = (0..10).max_by(|&a, &b| row[a].partial_cmp(&row[b]).unwrap()).unwrap();
            correct += (arg as i64 == labels[i]) as i32 as f64;
            let mx = row.iter().cloned().fold(f64::MIN, f64::max);
            let lse = mx + row.iter().map(|v| (v - mx).exp()).sum::<f64>().ln();
            loss += (lse - row[labels[i] as usize]) / n as f64;
        }
        assert_eq!(out["correct"].to_f64()[0], correct, "{e}");
        assert!((out["loss"].to_f64()[0] - loss).abs() < 1e-4 * loss.abs().max(1.0), "{e}");
    }
}

#[test]
fn rewriting_twice_gives_the_same_bytes() {
    let (o1, t1) = rewrite(&["--optimizer", "asam", "--reweight", "0.5", "--fd-scheme", "central"]);
    let (o2, t2) = rewrite(&["--optimizer", "asam", "--reweight", "0.5", "--fd-scheme", "central"]);
    assert_eq!(o1.status.code(), Some(0), "{}", stderr(&o1));
    assert_eq!(o2.status.code(), Some(0));
    let a = std::fs::read(t1.path().join("step.onnx")).unwrap();
    let b = std::fs::read(t2.path().join("step.onnx")).unwrap();
    assert!(a == b, "two rewrites of the same model and spec differ");
    let ja = std::fs::read(t1.path().join("step.json")).unwrap();
    let jb = std::fs::read(t2.path().join("step.json")).unwrap();
    assert!(ja == jb);
}

/// Three steps of `spec` on resnet8 (BN) with ONNX Runtime, once through the host and once with
/// values kept on the device: equal losses, carried outputs not returned, and after `sync` the
/// same values bit for bit; then one more step of each from there.
fn device_matches_host(spec: &StepSpec, seed: u64) {
    let m = Model::load(&model("resnet8")).unwrap();
    let be = engine("ort");
    let mut host = StepRunner::new(&m, spec, be.as_ref(), seed).unwrap();
    let mut dev = StepRunner::new(&m, spec, be.as_ref(), seed).unwrap();
    dev.keep_on_device = true;
    let b = fixture_batch(&host, "resnet8");
    for step in 0..3 {
        let a = host.step(&b).unwrap();
        let d = dev.step(&b).unwrap();
        assert_eq!(a["loss"], d["loss"], "step {step}");
        assert!(!d.contains_key("next/conv1.weight"), "carried outputs stay on the device");
    }
    assert_ne!(host.values, dev.values, "before sync the host copy is stale");
    dev.sync().unwrap();
    assert_eq!(host.values, dev.values);
    let a = host.step(&b).unwrap();
    let d = dev.step(&b).unwrap();
    assert_eq!(a["loss"], d["loss"], "after sync");
}

#[test]
fn values_kept_on_the_device_match_the_host_round_trip() {
    // ONNX Runtime with IoBinding: parameters, momentum and running statistics stay with the
    // engine between steps
    device_matches_host(&StepSpec { reweight: reweight(1.0), ..sam(0.05) }, 3);
}

#[test]
fn m_sam_values_kept_on_the_device_match_the_host_round_trip() {
    // m-SAM's two graphs share parameters and the accumulated gradient on the device: the
    // micro-batch session keeps the running statistics, the apply session parameters and momentum
    device_matches_host(&StepSpec { micro_batch: Some(2), ..sam(0.05) }, 5);
}

#[test]
fn weight_decay_is_an_input_only_when_asked_for() {
    // no decay: no `weight_decay` input and no decay nodes (two per parameter)
    let m = Model::load(&model("mlp")).unwrap();
    let none = graph_passes::step::step_graphs(&m, &StepSpec::default()).unwrap();
    let some = graph_passes::step::step_graphs(&m, &StepSpec { weight_decay: 5e-4, ..StepSpec::default() }).unwrap();
    assert!(!none.step.contract.hyper.contains_key("weight_decay"));
    assert_eq!(some.step.contract.hyper.get("weight_decay"), Some(&5e-4));
    let params = some.step.contract.params.len();
    assert_eq!(some.step.model.graph.nodes.len(), none.step.model.graph.nodes.len() + 2 * params);
}
