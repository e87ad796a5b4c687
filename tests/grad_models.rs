//! `onnxsam grad` on every reference model equals PyTorch autograd (tools/export_models.py makes
//! the fixtures): gradients, per-sample losses and running statistics, on both engines.
mod common;

use std::collections::BTreeMap;

use common::*;
use onnxsam::tensor::{read_npz, HostTensor};

/// ‖Δ‖/‖ref‖ ≤ 1e-4; a reference that is zero in exact arithmetic (norm < 1e-6, e.g. the key
/// bias of softmax attention, which the softmax cancels) must come out below 1e-6 too.
fn close(name: &str, got: &HostTensor, want: &HostTensor) -> Result<(), String> {
    if got.shape != want.shape {
        return Err(format!("{name}: shape {:?} vs PyTorch {:?}", got.shape, want.shape));
    }
    let (g, w) = (got.to_f64(), want.to_f64());
    let diff = g.iter().zip(&w).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
    let norm = w.iter().map(|b| b * b).sum::<f64>().sqrt();
    let ok = if norm < 1e-6 { diff < 1e-6 } else { diff / norm <= 1e-4 };
    if ok {
        Ok(())
    } else {
        Err(format!("{name}: ‖Δ‖ = {diff:.3e}, ‖ref‖ = {norm:.3e}"))
    }
}

fn check(dir: &str, model_path: &std::path::Path, backend: &str) {
    check_variant(dir, model_path, backend, "", &[]);
}

/// `grad` with extra arguments against fixtures batch{suffix}.npz / grads{suffix}.npz.
fn check_variant(dir: &str, model_path: &std::path::Path, backend: &str, suffix: &str, extra: &[&str]) {
    let tmp = tempdir();
    let out = tmp.path().join("grads.npz");
    let batch = fixture(&format!("{dir}/batch{suffix}.npz"));
    let args: Vec<&str> = ["--backend", backend].iter().chain(extra).copied().collect();
    let o = grad_cmd(model_path, &batch, &out, &args);
    assert_eq!(o.status.code(), Some(0), "{dir}{suffix} on {backend}: {}", stderr(&o));
    let got = read_npz(&out).unwrap();
    let want: BTreeMap<String, HostTensor> = read_npz(&fixture(&format!("{dir}/grads{suffix}.npz"))).unwrap();
    let mut errors = Vec::new();
    for (name, w) in &want {
        match got.get(name) {
            None => errors.push(format!("{name}: missing")),
            Some(g) => {
                if let Err(e) = close(name, g, w) {
                    errors.push(e);
                }
            }
        }
    }
    assert!(errors.is_empty(), "{dir} on {backend}:\n{}", errors.join("\n"));
    let extra: Vec<&String> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(extra.is_empty(), "{dir}: parameters PyTorch does not have: {extra:?}");
}

#[test]
fn gradients_match_pytorch_on_tract() {
    for m in MODELS {
        check(m, &model(m), "tract");
    }
}

#[test]
fn gradients_match_pytorch_on_ort() {
    for m in MODELS {
        check(m, &model(m), "ort");
    }
}

#[test]
fn label_smoothing_and_mse_match_pytorch() {
    for backend in ["tract", "ort"] {
        check_variant("mlp", &model("mlp"), backend, "_ls", &["--label-smoothing", "0.1"]);
        check_variant("mlp", &model("mlp"), backend, "_mse", &["--loss", "mse"]);
    }
}

#[test]
fn a_model_with_its_loss_inside_exposes_per_sample_losses() {
    // SoftmaxCrossEntropyLoss(reduction=mean) in the graph; tract cannot run that op, but the
    // pass rewrites it into ops both engines run
    let p = fixture("loss_inside/model.onnx");
    check("loss_inside", &p, "ort");
    check("loss_inside", &p, "tract");
}

#[test]
fn bad_batches_are_refused() {
    let tmp = tempdir();
    let m = model("mlp");
    let out = tmp.path().join("g.npz");
    let run = |batch: &std::path::Path| grad_cmd(&m, batch, &out, &["--backend", "tract"]);
    let x = read_npz(&fixture("mlp/batch.npz")).unwrap().remove("input").unwrap();
    let write = |name: &str, arrays: Vec<(String, HostTensor)>| {
        let p = tmp.path().join(name);
        onnxsam::tensor::write_npz(&p, &arrays).unwrap();
        p
    };
    let no_labels = write("nolabels.npz", vec![("input".into(), x.clone())]);
    assert_bad_input(&run(&no_labels), "nolabels.npz", "no labels");
    let bad_label = write(
        "range.npz",
        vec![("input".into(), x.clone()), ("y".into(), HostTensor::i64(&[8], vec![0, 1, 2, 3, 4, 5, 6, 10]))],
    );
    assert_bad_input(&run(&bad_label), "range.npz", "label 10 (sample 7) is out of range");
    let negative = write(
        "neg.npz",
        vec![("input".into(), x.clone()), ("y".into(), HostTensor::i64(&[8], vec![0, 1, 2, 3, 4, 5, 6, -1]))],
    );
    assert_bad_input(&run(&negative), "neg.npz", "out of range");
    let rows = write("rows.npz", vec![("input".into(), x.clone()), ("y".into(), HostTensor::i64(&[7], vec![0; 7]))]);
    assert_bad_input(&run(&rows), "rows.npz", "'y' has 7 rows");
    let shape = write(
        "shape.npz",
        vec![
            ("input".into(), HostTensor::f32(&[8, 784], vec![0.0; 8 * 784])),
            ("y".into(), HostTensor::i64(&[8], vec![0; 8])),
        ],
    );
    assert_bad_input(&run(&shape), "shape.npz", "samples of 'input' have shape [784]");
    let float_labels = write("float.npz", vec![("input".into(), x), ("y".into(), HostTensor::f32(&[8], vec![0.0; 8]))]);
    assert_bad_input(&run(&float_labels), "float.npz", "int64");
}

#[test]
fn unsupported_op_is_named_with_its_node() {
    use onnxsam::graph_passes::onnx::load_model;
    use prost::Message;
    let mut m = load_model(&model("mlp")).unwrap();
    let g = m.graph.as_mut().unwrap();
    // put an op without a gradient rule on the path: Relu → Shrink (ONNX's, no rule yet)
    let relu = g.node.iter_mut().find(|n| n.op_type == "Relu").unwrap();
    relu.op_type = "Shrink".into();
    let name = relu.name.clone();
    let tmp = tempdir();
    let p = write(tmp.path(), "shrink.onnx", &m.encode_to_vec());
    let o = grad_cmd(&p, &fixture("mlp/batch.npz"), &tmp.path().join("g.npz"), &["--backend", "tract"]);
    assert_bad_input(&o, "shrink.onnx", &format!("op Shrink (node {name}) has no gradient rule yet"));
    let i = onnxsam(&["inspect", p.to_str().unwrap()]);
    assert!(stdout(&i).contains(&format!("op Shrink (node {name}) has no gradient rule yet")), "{}", stdout(&i));
}

#[test]
fn gradcheck_passes_on_the_mlp_and_the_cnn() {
    for m in ["mlp", "cnn"] {
        let o = onnxsam(&[
            "gradcheck",
            model(m).to_str().unwrap(),
            "--batch",
            fixture(&format!("{m}/batch.npz")).to_str().unwrap(),
            "--backend",
            "tract",
        ]);
        assert_eq!(o.status.code(), Some(0), "{m}: {}{}", stdout(&o), stderr(&o));
        assert!(stdout(&o).contains("0 failed"), "{}", stdout(&o));
    }
}

#[test]
fn rewrite_grad_only_writes_a_graph_diff_groups_by_pass() {
    let tmp = tempdir();
    let out = tmp.path().join("grad.onnx");
    let m = model("resnet8");
    let o = onnxsam(&["rewrite", m.to_str().unwrap(), "--grad-only", "-o", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(tmp.path().join("grad.json").exists());
    let d = onnxsam(&["diff", m.to_str().unwrap(), out.to_str().unwrap()]);
    let text = stdout(&d);
    for pass in ["train-mode (", "per-sample-loss (", "autodiff ("] {
        assert!(text.contains(pass), "{pass} missing from:\n{text}");
    }
    // the written graph runs in ONNX Runtime as it is: parameters default to their initial values
    let contract: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("grad.json")).unwrap()).unwrap();
    assert_eq!(contract["params"].as_array().unwrap().len(), 29);
    assert_eq!(contract["state_next"].as_object().unwrap().len(), 18);
}

/// The mlp with Dropout(0.5) after its first ReLU.
fn mlp_with_dropout(dir: &std::path::Path) -> std::path::PathBuf {
    use onnxsam::graph_passes::ir::Model;
    let mut m = Model::load(&model("mlp")).unwrap();
    let i = m.graph.nodes.iter().position(|n| n.op_type == "Relu").unwrap();
    let relu_out = m.graph.nodes[i].output[0].clone();
    let dropped = m.graph.add("Dropout", &[&relu_out]).float("ratio", 0.5).name("/dropout/Dropout").output();
    for n in m.graph.nodes.iter_mut().filter(|n| n.op_type == "Gemm") {
        for inp in n.input.iter_mut().filter(|x| **x == relu_out) {
            *inp = dropped.clone();
        }
    }
    m.graph.topo_sort().unwrap();
    let p = dir.join("dropout.onnx");
    m.save(&p, &Default::default()).unwrap();
    p
}

#[test]
fn dropout_in_train_mode_is_seeded_and_differentiable() {
    let tmp = tempdir();
    let p = mlp_with_dropout(tmp.path());
    let batch = fixture("mlp/batch.npz");
    let grad = |seed: &str, backend: &str, mode: &str| {
        let out = tmp.path().join(format!("g{seed}{backend}{mode}.npz"));
        let o = grad_cmd(&p, &batch, &out, &["--seed", seed, "--backend", backend, mode]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        read_npz(&out).unwrap()
    };
    let a = grad("1", "tract", "--train-mode");
    let b = grad("1", "ort", "--train-mode");
    let c = grad("2", "tract", "--train-mode");
    let e = grad("1", "tract", "--eval-mode");
    // same seed: same mask on both engines; another seed: another mask; eval: no mask
    assert!(
        close("loss", &a["loss"], &b["loss"]).is_ok()
            && close("fc1.weight", &a["fc1.weight"], &b["fc1.weight"]).is_ok()
    );
    assert_ne!(a["loss"].to_f64(), c["loss"].to_f64());
    let reference = read_npz(&fixture("mlp/grads.npz")).unwrap();
    assert!(close("loss", &e["loss"], &reference["loss"]).is_ok(), "eval mode is the model without dropout");
    // about half the hidden units of each sample are dropped: the fc2 gradient sees zeros
    let o = onnxsam(&[
        "gradcheck",
        p.to_str().unwrap(),
        "--batch",
        batch.to_str().unwrap(),
        "--backend",
        "tract",
        "--train-mode",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
}

#[test]
fn eval_mode_gradients_pass_gradcheck_on_resnet8() {
    let o = onnxsam(&[
        "gradcheck",
        model("resnet8").to_str().unwrap(),
        "--batch",
        fixture("resnet8/batch.npz").to_str().unwrap(),
        "--eval-mode",
        "--backend",
        "tract",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
}

/// y = (x·W)·W with W one initializer read by two MatMuls.
fn tied_model(dir: &std::path::Path) -> std::path::PathBuf {
    use onnxsam::graph_passes::ir::{Graph, Model};
    use onnxsam::graph_passes::onnx::{data_type as dt, tensor, ModelProto, OperatorSetIdProto};
    use onnxsam::graph_passes::passes::value_info;
    let mut g = Graph::default();
    g.inputs.push(value_info("x", dt::FLOAT, &[-1, 4]));
    let w: Vec<f32> = (0..16).map(|i| ((i * 7 % 5) as f32 - 2.0) * 0.3).collect();
    g.initializers.push(tensor::from_f32("W", &[4, 4], &w));
    let h = g.add("MatMul", &["x", "W"]).name("first").output();
    let y = g.add("MatMul", &[&h, "W"]).name("second").named_outputs(&["y"]).remove(0);
    g.outputs.push(value_info(&y, dt::FLOAT, &[-1, 4]));
    let meta = ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: 17 }],
        ..Default::default()
    };
    let p = dir.join("tied.onnx");
    Model { meta, graph: g }.save(&p, &Default::default()).unwrap();
    p
}

#[test]
fn tied_weights_stay_tied_unless_untied_and_inspect_reports_them() {
    let tmp = tempdir();
    let p = tied_model(tmp.path());
    let batch = tmp.path().join("batch.npz");
    let x: Vec<f32> = (0..8).map(|i| i as f32 * 0.25 - 1.0).collect();
    onnxsam::tensor::write_npz(
        &batch,
        &[("x".into(), HostTensor::f32(&[2, 4], x)), ("y".into(), HostTensor::f32(&[2, 4], vec![0.5; 8]))],
    )
    .unwrap();
    let grad = |extra: &[&str]| {
        let out = tmp.path().join(format!("g{}.npz", extra.len()));
        let args: Vec<&str> = ["--loss", "mse", "--backend", "tract"].iter().chain(extra).copied().collect();
        let o = grad_cmd(&p, &batch, &out, &args);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        read_npz(&out).unwrap()
    };
    let tied = grad(&[]);
    let untied = grad(&["--untie-shared"]);
    assert!(tied.contains_key("W") && !tied.keys().any(|k| k.starts_with("W.tied")));
    let copy = untied.keys().find(|k| k.starts_with("W.tied")).expect("a second parameter for the second use").clone();
    // the tied gradient is the sum of the gradients of the two uses
    let sum: Vec<f64> = untied["W"].to_f64().iter().zip(untied[&copy].to_f64()).map(|(a, b)| a + b).collect();
    let t = tied["W"].to_f64();
    assert!(sum.iter().zip(&t).all(|(a, b)| (a - b).abs() < 1e-5), "{sum:?} vs {t:?}");
    let o = onnxsam(&["inspect", p.to_str().unwrap()]);
    assert!(stdout(&o).contains("tied weights: 'W' is read by 2 nodes (first, second)"), "{}", stdout(&o));
    // --freeze keeps W constant: nothing left to train is an error, not a silent no-op
    let out = tmp.path().join("frozen.npz");
    let o = grad_cmd(&p, &batch, &out, &["--loss", "mse", "--freeze", "W*", "--backend", "tract"]);
    assert_bad_input(&o, "tied.onnx", "no trainable parameters");
}

#[test]
fn gradcheck_catches_a_gradient_that_is_ten_percent_off() {
    use onnxsam::backend::{BackendKind, Device};
    use onnxsam::cli::grad::{check_gradients, CheckSettings, GradRun};
    use onnxsam::cli::BackendArgs;
    use onnxsam::graph_passes::step::GradSpec;
    use onnxsam::tensor::Data;
    let backend = BackendArgs { backend: BackendKind::Tract, ort_lib: None, device: Device::Cpu, threads: Some(1) };
    let mut r = GradRun::new(&model("mlp"), &GradSpec::default(), &backend, false).unwrap();
    let batch = r.batch(&fixture("mlp/batch.npz")).unwrap();
    let out = r.run(&batch, 0).unwrap();
    let mut grads: BTreeMap<String, HostTensor> =
        r.contract.grads.iter().map(|(p, g)| (p.clone(), out[g].clone())).collect();
    let set = CheckSettings { samples: 32, step: 1e-2, tolerance: 2e-2, seed: 0 };
    let rows = check_gradients(&mut r, &batch, &grads, set).unwrap();
    assert!(rows.iter().all(|row| row.ok), "{rows:?}");
    if let Data::F32(v) = &mut grads.get_mut("fc2.weight").unwrap().data {
        v.iter_mut().for_each(|x| *x *= 1.1);
    }
    let rows = check_gradients(&mut r, &batch, &grads, set).unwrap();
    let failed: Vec<&str> = rows.iter().filter(|row| !row.ok).map(|row| row.parameter.as_str()).collect();
    assert_eq!(failed, vec!["fc2.weight"], "{rows:?}");
}

/// What a legacy file cannot say is said on stderr, one line each, while training goes on: the
/// legacy exporter stores registered buffers like parameters, and ONNX momentum 1 may stand for
/// PyTorch's momentum=None, a cumulative average the file does not carry.
#[test]
fn legacy_buffers_and_momentum_one_are_warned_about() {
    use onnxsam::graph_passes::ir::{Graph, Model};
    use onnxsam::graph_passes::onnx::{data_type as dt, tensor, ModelProto, OperatorSetIdProto};
    use onnxsam::graph_passes::passes::value_info;
    let tmp = tempdir();
    let mut g = Graph::default();
    g.inputs.push(value_info("x", dt::FLOAT, &[-1, 3, 2, 2]));
    for (name, v) in [("bn.weight", 1.0), ("bn.bias", 0.0), ("bn.running_mean", 0.0), ("bn.running_var", 1.0)] {
        g.initializers.push(tensor::from_f32(name, &[3], &[v; 3]));
    }
    g.initializers.push(tensor::from_f32(
        "fc.weight",
        &[12, 2],
        &(0..24).map(|i| (i as f32 - 12.0) * 0.05).collect::<Vec<_>>(),
    ));
    g.initializers.push(tensor::from_f32("pe", &[2], &[0.1, -0.2]));
    let b = g
        .add("BatchNormalization", &["x", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"])
        .float("momentum", 1.0)
        .name("/bn/BatchNormalization")
        .output();
    let f = g.add("Flatten", &[&b]).output();
    let h = g.add("MatMul", &[&f, "fc.weight"]).output();
    let y = g.add("Add", &[&h, "pe"]).named_outputs(&["y"]).remove(0);
    g.outputs.push(value_info(&y, dt::FLOAT, &[-1, 2]));
    let meta = ModelProto {
        ir_version: 8,
        producer_name: "pytorch".into(),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: 17 }],
        ..Default::default()
    };
    let p = tmp.path().join("legacy.onnx");
    Model { meta, graph: g }.save(&p, &Default::default()).unwrap();
    let batch = tmp.path().join("batch.npz");
    let x: Vec<f32> = (0..48).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.3).collect();
    onnxsam::tensor::write_npz(
        &batch,
        &[("x".into(), HostTensor::f32(&[4, 3, 2, 2], x)), ("y".into(), HostTensor::f32(&[4, 2], vec![0.5; 8]))],
    )
    .unwrap();
    let out = tmp.path().join("g.npz");
    let o = grad_cmd(&p, &batch, &out, &["--loss", "mse", "--backend", "tract"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("onnxsam: warning: ")).collect();
    assert_eq!(warnings.len(), 2, "{err}");
    assert!(
        warnings.iter().any(|w| w.contains("does not mark buffers") && w.contains("pe") && !w.contains("fc.weight")),
        "{err}"
    );
    assert!(
        warnings.iter().any(|w| w.contains("momentum 1") && w.contains("momentum=None") && w.contains("bn")),
        "{err}"
    );
    // inspect's verdict does not say "trains as PyTorch" beside that warning
    let v = stdout(&onnxsam(&["inspect", p.to_str().unwrap(), "--no-engine-check"]));
    assert!(
        v.lines().any(|l| l.starts_with("verdict: trains, but perhaps not as PyTorch: BatchNorm") && l.contains("momentum=None")),
        "{v}"
    );
    // --freeze takes the buffer out of training
    let o = grad_cmd(&p, &batch, &out, &["--loss", "mse", "--backend", "tract", "--freeze", "pe"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!read_npz(&out).unwrap().contains_key("pe"));
    assert!(!stderr(&o).contains("does not mark buffers"), "{}", stderr(&o));
}
