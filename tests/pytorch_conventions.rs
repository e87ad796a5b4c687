//! Where a PyTorch op's gradient is not what its ONNX form says, onnxsam follows PyTorch as the
//! file (or the user) tells it: exact values at the points that decide, on both engines. The
//! conventions are torch 2.15's, checked in its eager mode (float64):
//! - Clip: no gradient where x equals a bound for torch.clamp with number bounds, F.hardtanh and
//!   F.relu6; half of it for torch.clamp with tensor bounds (the dynamo exporter without its
//!   optimizer writes clamp as Max and Min); `--clip-at-bounds pass` gives all of it;
//! - HardSwish: 0 at −3, 1 at 3;
//! - nn.Embedding(padding_idx=k) never trains row k; scale_grad_by_freq divides each row's
//!   gradient by its count in the batch;
//! - a tensor broadcast along a size known only at run time is summed back along it (or the graph
//!   is refused at build time where that cannot be decided).
use std::collections::BTreeMap;

use onnxsam::backend::{self, BackendKind, BackendRequest, Device};
use onnxsam::graph_passes::autodiff::gradients;
use onnxsam::graph_passes::import::conventions::{CLIP_CONVENTION, PADDING_IDX, SCALE_GRAD_BY_FREQ};
use onnxsam::graph_passes::onnx::metadata::FX_NODE;
use onnxsam::graph_passes::ir::{Graph, Model};
use onnxsam::graph_passes::onnx::{data_type as dt, tensor, ModelProto, OperatorSetIdProto};
use onnxsam::graph_passes::passes::{value_info, value_info_untyped_shape};
use onnxsam::tensor::HostTensor;

const ENGINES: [BackendKind; 2] = [BackendKind::Tract, BackendKind::Ort];

/// A graph input whose dims are numbers or named symbols ("N", "T", …).
fn input(g: &mut Graph, name: &str, dtype: i32, dims: &[&str]) {
    use onnxsam::graph_passes::onnx::{tensor_shape_proto::dimension::Value as D, type_proto};
    let mut v = value_info(name, dtype, &vec![1; dims.len()]);
    if let Some(type_proto::Value::TensorType(t)) = v.r#type.as_mut().and_then(|t| t.value.as_mut()) {
        for (d, s) in t.shape.as_mut().unwrap().dim.iter_mut().zip(dims) {
            d.value = Some(match s.parse::<i64>() {
                Ok(k) => D::DimValue(k),
                Err(_) => D::DimParam(s.to_string()),
            });
        }
    }
    g.inputs.push(v);
}

/// loss = Σ w·y (w a fixed input `w` shaped like y), gradients of `wrt` as outputs grad/<x>.
fn with_loss(mut g: Graph, y: &str, wrt: &[&str]) -> Result<Model, String> {
    let p = g.add("Mul", &[y, "w"]).output();
    let loss = g.add("ReduceSum", &[&p]).int("keepdims", 0).named_outputs(&["loss"]).remove(0);
    g.outputs.push(value_info(&loss, dt::FLOAT, &[]));
    let wrt: Vec<String> = wrt.iter().map(|s| s.to_string()).collect();
    let grads = gradients(&mut g, 18, &loss, &wrt).map_err(|e| e.to_string())?;
    for x in &wrt {
        let out = g.add("Identity", &[&grads[x]]).named_outputs(&[&format!("grad/{x}")]).remove(0);
        g.outputs.push(value_info_untyped_shape(&out, dt::FLOAT));
    }
    g.topo_sort().unwrap();
    let meta = ModelProto {
        ir_version: 10,
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: 18 }],
        producer_name: "onnxsam-tests".into(),
        ..Default::default()
    };
    Ok(Model { meta, graph: g })
}

fn grads(m: &Model, feeds: &[(&str, HostTensor)], engine: BackendKind) -> BTreeMap<String, Vec<f64>> {
    let be =
        backend::select(&BackendRequest { kind: engine, ort_lib: None, device: Device::Cpu, threads: Some(1) }, false)
            .unwrap();
    let mut s = be.load(&m.to_proto()).unwrap_or_else(|e| panic!("{engine:?}: {e:#}"));
    let feeds: Vec<(String, HostTensor)> = feeds.iter().map(|(n, t)| (n.to_string(), t.clone())).collect();
    let out = s.run(&feeds).unwrap_or_else(|e| panic!("{engine:?}: {e:#}"));
    out.into_iter().filter_map(|(k, v)| k.strip_prefix("grad/").map(|x| (x.to_string(), v.to_f64()))).collect()
}

fn assert_close(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: {} values, expected {}", got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() < 1e-6, "{what}: [{i}] = {g}, expected {w}\n got {got:?}\nwant {want:?}");
    }
}

fn fx(op: &str, bounds: &str) -> String {
    format!("%y : [num_users=1] = call_function[target=torch.ops.aten.{op}](args = (%x, {bounds}), kwargs = {{}})")
}

/// x holds both bounds exactly (0 and 6), values inside and outside.
fn clip_input() -> HostTensor {
    HostTensor::f32(&[6], vec![-1.0, 0.0, 2.5, 6.0, 7.0, 3.0])
}
const W: [f32; 6] = [0.5, -1.5, 2.0, 0.25, -3.0, 1.0];

/// dx of Clip(x, 0, 6): w inside, `at` × w at a bound, 0 outside.
fn clip_grad(at: f64) -> Vec<f64> {
    let x = [-1.0, 0.0, 2.5, 6.0, 7.0, 3.0f32];
    x.iter()
        .zip(W)
        .map(|(&x, w)| {
            if x > 0.0 && x < 6.0 {
                w as f64
            } else if x == 0.0 || x == 6.0 {
                at * w as f64
            } else {
                0.0
            }
        })
        .collect()
}

fn clip_model(meta: Option<(&str, String)>) -> Model {
    let mut g = Graph::default();
    input(&mut g, "x", dt::FLOAT, &["6"]);
    input(&mut g, "w", dt::FLOAT, &["6"]);
    let lo = g.add_initializer("lo", tensor::from_f32("", &[], &[0.0]));
    let hi = g.add_initializer("hi", tensor::from_f32("", &[], &[6.0]));
    let mut b = g.add("Clip", &["x", &lo, &hi]);
    if let Some((k, v)) = &meta {
        b = b.meta(k, v);
    }
    let y = b.output();
    with_loss(g, &y, &["x"]).unwrap()
}

#[test]
fn clip_gives_what_torch_gives_at_its_bounds() {
    let feeds = [("x", clip_input()), ("w", HostTensor::f32(&[6], W.to_vec()))];
    let scalar_bounds = "%scalar_tensor_default, %scalar_tensor_default_1";
    let cases: Vec<(&str, Option<(&str, String)>, f64)> = vec![
        ("no metadata: torch 2.15's clamp with number bounds", None, 0.0),
        ("dynamo aten.clamp with number bounds", Some((FX_NODE, fx("clamp.Tensor", scalar_bounds))), 0.0),
        ("dynamo aten.clamp with tensor bounds", Some((FX_NODE, fx("clamp.Tensor", "%p_lo, %p_hi"))), 0.5),
        ("dynamo aten.relu6 (F.relu6, nn.ReLU6)", Some((FX_NODE, fx("relu6.default", ""))), 0.0),
        ("dynamo aten.hardtanh", Some((FX_NODE, fx("hardtanh.default", "0.0, 6.0"))), 0.0),
        ("--clip-at-bounds pass on a legacy Clip", Some((CLIP_CONVENTION, "pass".into())), 1.0),
        ("--clip-at-bounds zero on a legacy Clip", Some((CLIP_CONVENTION, "zero".into())), 0.0),
    ];
    for (what, meta, at) in cases {
        let m = clip_model(meta);
        for e in ENGINES {
            assert_close(&format!("{what} on {e:?}"), &grads(&m, &feeds, e)["x"], &clip_grad(at));
        }
    }
}

/// torch.clamp exported by the dynamo exporter without its optimizer: Max(x, lo) then Min(·, hi),
/// both tagged aten.clamp. With number bounds no gradient at a bound (as eager torch 2.15); the
/// plain Max/Min rule (torch.maximum: ties share) where the bounds are tensors.
#[test]
fn clamp_written_as_max_and_min_gives_what_torch_gives_at_the_bounds() {
    let feeds = [("x", clip_input()), ("w", HostTensor::f32(&[6], W.to_vec()))];
    for (bounds, want) in [(Some("%scalar_tensor_default, %scalar_tensor_default_1"), clip_grad(0.0)), (Some("%p_lo, %p_hi"), clip_grad(0.5)), (None, clip_grad(0.5))] {
        let mut g = Graph::default();
        input(&mut g, "x", dt::FLOAT, &["6"]);
        input(&mut g, "w", dt::FLOAT, &["6"]);
        let lo = g.add_initializer("lo", tensor::from_f32("", &[], &[0.0]));
        let hi = g.add_initializer("hi", tensor::from_f32("", &[], &[6.0]));
        let meta = bounds.map(|b| fx("clamp.Tensor", b));
        let mut mx = g.add("Max", &["x", &lo]);
        if let Some(m) = &meta {
            mx = mx.meta(FX_NODE, m);
        }
        let lower = mx.output();
        let mut mn = g.add("Min", &[&lower, &hi]);
        if let Some(m) = &meta {
            mn = mn.meta(FX_NODE, m);
        }
        let y = mn.output();
        let m = with_loss(g, &y, &["x"]).unwrap();
        for e in ENGINES {
            assert_close(&format!("Max/Min with bounds {bounds:?} on {e:?}"), &grads(&m, &feeds, e)["x"], &want);
        }
    }
}

/// HardSwish at its kinks, as torch 2.15's hardswish_backward: 0 at −3, 1 at 3.
#[test]
fn hard_swish_at_its_kinks() {
    let mut g = Graph::default();
    input(&mut g, "x", dt::FLOAT, &["4"]);
    input(&mut g, "w", dt::FLOAT, &["4"]);
    let y = g.add("HardSwish", &["x"]).output();
    let m = with_loss(g, &y, &["x"]).unwrap();
    let feeds = [("x", HostTensor::f32(&[4], vec![-3.0, 3.0, 0.0, -4.0])), ("w", HostTensor::f32(&[4], vec![1.0; 4]))];
    for e in ENGINES {
        assert_close(&format!("HardSwish on {e:?}"), &grads(&m, &feeds, e)["x"], &[0.0, 1.0, 0.5, 0.0]);
    }
}

fn embedding_model(meta: &[(&str, &str)]) -> Model {
    let mut g = Graph::default();
    input(&mut g, "table", dt::FLOAT, &["5", "2"]);
    input(&mut g, "ids", dt::INT64, &["N", "T"]);
    input(&mut g, "w", dt::FLOAT, &["N", "T", "2"]);
    let mut b = g.add("Gather", &["table", "ids"]).int("axis", 0);
    for (k, v) in meta {
        b = b.meta(k, v);
    }
    let y = b.output();
    with_loss(g, &y, &["table"]).unwrap()
}

/// dW[r] = Σ over positions with id r of w (then scaled, then the padding row zeroed).
fn embedding_grad(ids: &[i64], w: &[f32], padding: Option<i64>, by_freq: bool) -> Vec<f64> {
    let mut d = vec![0.0f64; 10];
    let mut count = [0.0f64; 5];
    for (p, &id) in ids.iter().enumerate() {
        count[id as usize] += 1.0;
        for j in 0..2 {
            d[id as usize * 2 + j] += w[p * 2 + j] as f64;
        }
    }
    for r in 0..5 {
        for j in 0..2 {
            if by_freq && count[r] > 0.0 {
                d[r * 2 + j] /= count[r];
            }
            if padding == Some(r as i64) {
                d[r * 2 + j] = 0.0;
            }
        }
    }
    d
}

#[test]
fn embedding_padding_row_gets_no_gradient_and_frequency_scaling_divides() {
    let ids = vec![1, 4, 1, 0, 1, 3];
    let w: Vec<f32> = (0..12).map(|i| 0.25 * i as f32 - 1.0).collect();
    let table: Vec<f32> = (0..10).map(|i| 0.1 * i as f32).collect();
    let feeds = [
        ("table", HostTensor::f32(&[5, 2], table)),
        ("ids", HostTensor::i64(&[2, 3], ids.clone())),
        ("w", HostTensor::f32(&[2, 3, 2], w.clone())),
    ];
    let cases: Vec<(Vec<(&str, &str)>, Option<i64>, bool)> = vec![
        (vec![], None, false),
        (vec![(PADDING_IDX, "1")], Some(1), false),
        (vec![(PADDING_IDX, "2")], Some(2), false),
        (vec![(SCALE_GRAD_BY_FREQ, "1")], None, true),
        (vec![(PADDING_IDX, "0"), (SCALE_GRAD_BY_FREQ, "1")], Some(0), true),
    ];
    for (meta, pad, freq) in cases {
        let m = embedding_model(&meta);
        for e in ENGINES {
            assert_close(
                &format!("padding {pad:?}, scale_grad_by_freq {freq} on {e:?}"),
                &grads(&m, &feeds, e)["table"],
                &embedding_grad(&ids, &w, pad, freq),
            );
        }
    }
}

/// x [N, T, D] + p [1, T, D] (a position table sliced to the sequence, BERT's position
/// embeddings): dp sums over the batch, with N and T known only at run time.
#[test]
fn broadcast_over_a_symbolic_batch_is_summed_back() {
    let mut g = Graph::default();
    input(&mut g, "x", dt::FLOAT, &["N", "T", "2"]);
    input(&mut g, "p", dt::FLOAT, &["1", "T", "2"]);
    input(&mut g, "w", dt::FLOAT, &["N", "T", "2"]);
    let y = g.add("Add", &["x", "p"]).output();
    let m = with_loss(g, &y, &["p", "x"]).unwrap();
    let (n, t) = (3usize, 4usize);
    let w: Vec<f32> = (0..n * t * 2).map(|i| (i as f32 * 0.37).sin()).collect();
    let mut want = vec![0.0f64; t * 2];
    for b in 0..n {
        for k in 0..t * 2 {
            want[k] += w[b * t * 2 + k] as f64;
        }
    }
    let feeds = [
        ("x", HostTensor::f32(&[n, t, 2], vec![0.0; n * t * 2])),
        ("p", HostTensor::f32(&[1, t, 2], vec![0.5; t * 2])),
        ("w", HostTensor::f32(&[n, t, 2], w.clone())),
    ];
    for e in ENGINES {
        let got = grads(&m, &feeds, e);
        assert_close(&format!("dp on {e:?}"), &got["p"], &want);
        assert_close(&format!("dx on {e:?}"), &got["x"], &w.iter().map(|&v| v as f64).collect::<Vec<_>>());
    }
}

/// Where a size is a symbol the result does not share, it may be 1 at run time (broadcast) or not:
/// the gradient graph is refused at build time, naming the tensor, rather than guessing.
#[test]
fn broadcast_that_cannot_be_decided_is_refused_at_build_time() {
    let mut g = Graph::default();
    input(&mut g, "x", dt::FLOAT, &["N", "2"]);
    input(&mut g, "p", dt::FLOAT, &["M", "2"]);
    input(&mut g, "w", dt::FLOAT, &["1", "2"]);
    let y = g.add("Add", &["x", "p"]).output();
    let e = with_loss(g, &y, &["p"]).err().expect("must be refused");
    assert!(e.contains("cannot tell whether 'p' [M, 2] was broadcast along axis 0"), "{e}");
    assert!(e.contains("op Add"), "names the node: {e}");
}

/// Concat along an axis whose sizes are known only at run time (GPT-2's key cache: past keys, then
/// the new ones): each input's gradient is its slice of dy, the offsets computed in the graph.
#[test]
fn concat_gradient_splits_sizes_known_only_at_run_time() {
    let mut g = Graph::default();
    input(&mut g, "a", dt::FLOAT, &["N", "P", "2"]);
    input(&mut g, "b", dt::FLOAT, &["N", "T", "2"]);
    input(&mut g, "w", dt::FLOAT, &["1", "1", "2"]);
    let y = g.add("Concat", &["a", "b"]).int("axis", 1).output();
    let m = with_loss(g, &y, &["a", "b"]).unwrap();
    let (n, p, t) = (2usize, 3usize, 4usize);
    let w = [0.5f32, -2.0];
    let feeds = [
        ("a", HostTensor::f32(&[n, p, 2], vec![1.0; n * p * 2])),
        ("b", HostTensor::f32(&[n, t, 2], vec![1.0; n * t * 2])),
        ("w", HostTensor::f32(&[1, 1, 2], w.to_vec())),
    ];
    let want = |len: usize| -> Vec<f64> { (0..n * len * 2).map(|i| w[i % 2] as f64).collect() };
    for e in ENGINES {
        let got = grads(&m, &feeds, e);
        assert_close(&format!("da on {e:?}"), &got["a"], &want(p));
        assert_close(&format!("db on {e:?}"), &got["b"], &want(t));
    }
}
