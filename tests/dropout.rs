//! Dropout kept by a training-mode export trains as PyTorch's nn.Dropout: the mask keeps an element
//! where the runtime's uniform noise u ≥ p and scales it by 1/(1 − p); evaluation has none. SAM's
//! second forward (at θ + ε) draws its own masks, as PyTorch's second `model(x)` does; the
//! finite-difference forwards of RW-SAM share the clean pass's masks. A mask over a size known only
//! at run time (a sequence length) is shaped from the batch.
use std::collections::BTreeMap;

use onnxsam::backend::{self, Backend, BackendKind, BackendRequest, Device};
use onnxsam::graph_passes::ir::{Graph, Model};
use onnxsam::graph_passes::onnx::{data_type as dt, tensor, ModelProto, OperatorSetIdProto};
use onnxsam::graph_passes::passes::sam_update::Optimizer;
use onnxsam::graph_passes::passes::value_info;
use onnxsam::graph_passes::step::{grad_graph, GradSpec, StepSpec};
use onnxsam::grad::{feeds_with, initial_values, Batch, FeedOptions};
use onnxsam::step::StepRunner;
use onnxsam::tensor::HostTensor;

const P: f32 = 0.4;

fn engine(kind: BackendKind) -> Box<dyn Backend> {
    backend::select(&BackendRequest { kind, ort_lib: None, device: Device::Cpu, threads: Some(1) }, false).unwrap()
}

/// logits = Dropout(x · W, p) (training mode, ratio as an input: what torch.onnx.export writes for
/// a model in train mode), x [N, 4] → [N, 3]; or over a sequence, x [N, T, 4] → mean over T.
fn model(seq: bool) -> Model {
    let mut g = Graph::default();
    let dims: Vec<i64> = if seq { vec![-1, -1, 4] } else { vec![-1, 4] };
    let mut x = value_info("x", dt::FLOAT, &dims);
    if seq {
        use onnxsam::graph_passes::onnx::{tensor_shape_proto::dimension::Value as D, type_proto};
        if let Some(type_proto::Value::TensorType(t)) = x.r#type.as_mut().and_then(|t| t.value.as_mut()) {
            t.shape.as_mut().unwrap().dim[1].value = Some(D::DimParam("seq".into()));
        }
    }
    g.inputs.push(x);
    let w: Vec<f32> = (0..12).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.1).collect();
    g.initializers.push(tensor::from_f32("fc.weight", &[4, 3], &w));
    let h = g.add("MatMul", &["x", "fc.weight"]).output();
    let ratio = g.add_initializer("ratio", tensor::from_f32("", &[], &[P]));
    let train = g.add_initializer("training", tensor::from_bool("", &[], &[true]));
    let y = g.add("Dropout", &[&h, &ratio, &train]).name("dropout").output();
    let logits = if seq {
        g.add("ReduceMean", &[&y]).ints("axes", &[1]).int("keepdims", 0).named_outputs(&["logits"]).remove(0)
    } else {
        g.add("Identity", &[&y]).named_outputs(&["logits"]).remove(0)
    };
    g.outputs.push(value_info(&logits, dt::FLOAT, &[-1, 3]));
    let meta = ModelProto {
        ir_version: 9,
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: 17 }],
        producer_name: "pytorch".into(),
        ..Default::default()
    };
    Model { meta, graph: g }
}

fn x_data(n: usize) -> Vec<f32> {
    (0..n * 4).map(|i| ((i as f32) * 0.61).sin()).collect()
}

/// dW of mean cross-entropy with logits (x·W) ⊙ m / (1 − p), m = [u ≥ p].
fn expected_dw(x: &[f32], w: &[f32], u: &[f32], labels: &[i64]) -> Vec<f64> {
    let n = labels.len();
    let mut dw = vec![0.0f64; 12];
    for i in 0..n {
        let h: Vec<f64> =
            (0..3).map(|j| (0..4).map(|k| x[i * 4 + k] as f64 * w[k * 3 + j] as f64).sum::<f64>()).collect();
        let m: Vec<f64> = (0..3).map(|j| if u[i * 3 + j] >= P { 1.0 / (1.0 - P as f64) } else { 0.0 }).collect();
        let z: Vec<f64> = (0..3).map(|j| h[j] * m[j]).collect();
        let mx = z.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = z.iter().map(|v| (v - mx).exp()).collect();
        let s: f64 = e.iter().sum();
        for j in 0..3 {
            let dz = (e[j] / s - if labels[i] == j as i64 { 1.0 } else { 0.0 }) / n as f64;
            for k in 0..4 {
                dw[k * 3 + j] += x[i * 4 + k] as f64 * dz * m[j];
            }
        }
    }
    dw
}

#[test]
fn dropout_masks_keep_where_the_noise_reaches_p_and_scale_by_one_over_one_minus_p() {
    let m = model(false);
    let (g, c) = grad_graph(&m, &GradSpec::default()).unwrap();
    assert_eq!(c.random_uniform.len(), 1, "one noise input for the one Dropout: {:?}", c.random_uniform);
    let (noise, dims) = c.random_uniform.iter().next().unwrap();
    assert_eq!(dims, &vec![-1, 3]);
    let n = 5;
    let x = x_data(n);
    let labels = vec![0i64, 2, 1, 1, 0];
    let u: Vec<f32> = (0..n * 3).map(|i| ((i * 37 % 17) as f32 + 0.5) / 17.0).collect();
    let batch = Batch { data: vec![("x".into(), HostTensor::f32(&[n, 4], x.clone()))], labels: Some(HostTensor::i64(&[n], labels.clone())) };
    let values: BTreeMap<String, HostTensor> = initial_values(&c).unwrap();
    let fixed = BTreeMap::from([(noise.clone(), HostTensor::f32(&[n, 3], u.clone()))]);
    let feeds = feeds_with(&c, Some(&batch), &values, &FeedOptions { fixed: Some(&fixed), ..Default::default() }).unwrap();
    let w = onnxsam::graph_passes::onnx::tensor::to_f32(c.init.get("fc.weight").unwrap()).unwrap();
    let want = expected_dw(&x, &w, &u, &labels);
    for kind in [BackendKind::Tract, BackendKind::Ort] {
        let mut s = engine(kind).load(&g.to_proto()).unwrap();
        let out: BTreeMap<String, HostTensor> = s.run(&feeds).unwrap().into_iter().collect();
        let got = out[&c.grads["fc.weight"]].to_f64();
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-6, "{kind:?}: dW {got:?} vs {want:?}");
        }
    }
}

/// SAM with ρ = 0 takes its gradient at θ + 0 = θ through its own forward: with the same masks
/// as the clean pass it is SGD; PyTorch draws new ones, and so does onnxsam (another noise input).
#[test]
fn sams_second_forward_draws_its_own_dropout_masks() {
    let m = model(false);
    let spec = StepSpec { optimizer: Optimizer::Sam, rho: 0.0, lr: 0.1, ..StepSpec::default() };
    let sgd = StepSpec { lr: 0.1, ..StepSpec::default() };
    let be = engine(BackendKind::Tract);
    let n = 6;
    let batch = Batch {
        data: vec![("x".into(), HostTensor::f32(&[n, 4], x_data(n)))],
        labels: Some(HostTensor::i64(&[n], vec![0, 1, 2, 0, 1, 2])),
    };
    let u1: Vec<f32> = (0..n * 3).map(|i| ((i * 5 % 13) as f32 + 0.5) / 13.0).collect();
    let u2: Vec<f32> = (0..n * 3).map(|i| ((i * 11 % 7) as f32 + 0.5) / 7.0).collect();
    let run = |spec: &StepSpec, noise: &[&Vec<f32>]| -> Vec<f64> {
        let mut r = StepRunner::new(&m, spec, be.as_ref(), 3).unwrap();
        let names: Vec<String> = r.contract().random_uniform.keys().cloned().collect();
        assert_eq!(names.len(), noise.len(), "noise inputs: {names:?}");
        for (name, u) in names.iter().zip(noise) {
            r.fixed.insert(name.clone(), HostTensor::f32(&[n, 3], (*u).clone()));
        }
        r.step(&batch).unwrap();
        r.values["fc.weight"].to_f64()
    };
    let plain = run(&sgd, &[&u1]);
    // names sort as "dropout.uniform" < "dropout.uniform.adv": the clean pass's, then the second's
    let same = run(&spec, &[&u1, &u1]);
    let other = run(&spec, &[&u1, &u2]);
    let diff = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    assert!(diff(&plain, &same) < 1e-7, "same masks: SAM(ρ = 0) is SGD ({:.2e})", diff(&plain, &same));
    assert!(diff(&plain, &other) > 1e-4, "the second forward's own masks change the step");
}

/// A Dropout over [N, seq, 3] with both sizes known only at run time: the mask is shaped from
/// the batch (here 2 × 5), one draw per element.
#[test]
fn dropout_over_a_run_time_sequence_length_is_shaped_from_the_batch() {
    let m = model(true);
    let (g, c) = grad_graph(&m, &GradSpec::default()).unwrap();
    let noise = c.random_uniform.keys().next().unwrap().clone();
    assert_eq!(c.random_shapes.get(&noise).map(|v| v.len()), Some(3), "{:?}", c.random_shapes);
    let (n, t) = (2, 5);
    let batch = Batch {
        data: vec![("x".into(), HostTensor::f32(&[n, t, 4], (0..n * t * 4).map(|i| (i as f32 * 0.3).cos()).collect()))],
        labels: Some(HostTensor::i64(&[n], vec![1, 2])),
    };
    let values = initial_values(&c).unwrap();
    let feeds = feeds_with(&c, Some(&batch), &values, &FeedOptions::default()).unwrap();
    let u = &feeds.iter().find(|(k, _)| *k == noise).unwrap().1;
    assert_eq!(u.shape, vec![n, t, 3]);
    for kind in [BackendKind::Tract, BackendKind::Ort] {
        let mut s = engine(kind).load(&g.to_proto()).unwrap();
        let out: BTreeMap<String, HostTensor> = s.run(&feeds).unwrap().into_iter().collect();
        assert!(out[&c.grads["fc.weight"]].to_f64().iter().all(|v| v.is_finite()));
    }
}

/// A train-mode dynamo export writes Dropout2d / AlphaDropout (aten.bernoulli) as RandomUniformLike
/// masks, unseeded in the engine: onnxsam feeds them from the run's seeded RNG instead, so the
/// gradient is the same on both engines and from one run to the next.
#[test]
fn random_ops_are_drawn_from_the_runs_seeded_rng() {
    let mut m = model(false);
    let g = &mut m.graph;
    // logits ← logits · [u < 0.75] / 0.75 with u = RandomUniformLike(logits)
    let out = g.outputs[0].name.clone();
    let pre = g.fresh("pre");
    for n in g.nodes.iter_mut() {
        for o in n.output.iter_mut() {
            if *o == out {
                *o = pre.clone();
            }
        }
    }
    let u = g.add("RandomUniformLike", &[&pre]).name("n1").float("low", 0.0).float("high", 1.0).output();
    let p = g.add_initializer("keep", tensor::from_f32("", &[], &[0.75]));
    let keep = g.add("Less", &[&u, &p]).output();
    let keep = g.add("Cast", &[&keep]).int("to", dt::FLOAT as i64).output();
    let kept = g.add("Mul", &[&pre, &keep]).output();
    let s = g.add_initializer("scale", tensor::from_f32("", &[], &[1.0 / 0.75]));
    g.add("Mul", &[&kept, &s]).exact_outputs(&[&out]);
    let (gm, c) = grad_graph(&m, &GradSpec::default()).unwrap();
    assert_eq!(c.random_uniform.len(), 2, "the Dropout's noise and the random op's: {:?}", c.random_uniform);
    let n = 4;
    let batch = Batch {
        data: vec![("x".into(), HostTensor::f32(&[n, 4], x_data(n)))],
        labels: Some(HostTensor::i64(&[n], vec![0, 1, 2, 1])),
    };
    let values = initial_values(&c).unwrap();
    let grads = |kind: BackendKind, seed: u64| -> Vec<f64> {
        let feeds = feeds_with(&c, Some(&batch), &values, &FeedOptions { seed, ..Default::default() }).unwrap();
        let mut s = engine(kind).load(&gm.to_proto()).unwrap();
        let out: BTreeMap<String, HostTensor> = s.run(&feeds).unwrap().into_iter().collect();
        out[&c.grads["fc.weight"]].to_f64()
    };
    let a = grads(BackendKind::Tract, 0);
    assert_eq!(a, grads(BackendKind::Tract, 0), "the same seed, the same masks");
    let b = grads(BackendKind::Ort, 0);
    assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-6), "both engines draw the same masks");
    assert_ne!(a, grads(BackendKind::Tract, 1), "another seed, other masks");
}
