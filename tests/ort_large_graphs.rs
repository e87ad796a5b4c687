//! Large graphs on ONNX Runtime are committed per concrete batch size on their first run (its
//! allocation planner is slow on large graphs with symbolic shapes): results must not depend on
//! it, for every batch size a session sees.
use onnxsam::backend::{self, BackendKind, BackendRequest, Device};
use onnxsam::graph_passes::ir::{Graph, Model};
use onnxsam::graph_passes::onnx::{data_type as dt, tensor, ModelProto, OperatorSetIdProto};
use onnxsam::graph_passes::passes::value_info;
use onnxsam::tensor::HostTensor;

/// y = x + 0.5·k through k Add nodes, x [N, 3].
fn chain(k: usize) -> Model {
    let mut g = Graph::default();
    g.inputs.push(value_info("x", dt::FLOAT, &[-1, 3]));
    let c = g.add_initializer("c", tensor::from_f32("", &[], &[0.5]));
    let mut v = "x".to_string();
    for _ in 0..k {
        v = g.add("Add", &[&v, &c]).output();
    }
    let y = g.add("Identity", &[&v]).named_outputs(&["y"]).remove(0);
    g.outputs.push(value_info(&y, dt::FLOAT, &[-1, 3]));
    let meta = ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: 17 }],
        ..Default::default()
    };
    Model { meta, graph: g }
}

#[test]
fn large_graph_runs_at_every_batch_size() {
    let be = backend::select(
        &BackendRequest { kind: BackendKind::Ort, ort_lib: None, device: Device::Cpu, threads: Some(1) },
        false,
    )
    .unwrap();
    let k = 2000;
    let mut s = be.load(&chain(k).to_proto()).unwrap();
    for n in [2usize, 5, 2] {
        let x: Vec<f32> = (0..n * 3).map(|i| i as f32).collect();
        let out = s.run(&[("x".into(), HostTensor::f32(&[n, 3], x.clone()))]).unwrap();
        let y = out[0].1.to_f64();
        assert_eq!(y.len(), n * 3);
        for (a, b) in y.iter().zip(&x) {
            assert_eq!(*a, *b as f64 + 0.5 * k as f64, "batch {n}");
        }
    }
}

#[test]
fn a_large_graph_onnx_runtime_rejects_is_an_error_on_first_run() {
    let be = backend::select(
        &BackendRequest { kind: BackendKind::Ort, ort_lib: None, device: Device::Cpu, threads: Some(1) },
        false,
    )
    .unwrap();
    let mut m = chain(2000);
    // an op ONNX Runtime does not have
    m.graph.nodes[10].op_type = "NoSuchOp".into();
    let err = match be.load(&m.to_proto()) {
        Err(e) => format!("{e:#}"),
        Ok(mut s) => format!("{:#}", s.run(&[("x".into(), HostTensor::f32(&[1, 3], vec![0.0; 3]))]).unwrap_err()),
    };
    assert!(err.contains("ONNX Runtime cannot load the model") && err.contains("NoSuchOp"), "{err}");
}
