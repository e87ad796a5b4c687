//! load → save → load keeps graphs, initializers and metadata; external data stays confined.
mod common;

use common::*;
use onnxsam::graph_passes::ir::Model;
use onnxsam::graph_passes::onnx::{self, data_location, load_model, save_model, SaveOptions, StringStringEntryProto};
use prost::Message;

fn roundtrip(path: &std::path::Path) {
    let dir = tempdir();
    let original = load_model(path).unwrap();
    let model = Model::from_proto(original.clone());
    let out = dir.path().join("copy.onnx");
    model.save(&out, &SaveOptions::default()).unwrap();
    let again = load_model(&out).unwrap();
    assert_eq!(original, again, "{} changed in a load → save → load", path.display());
    // external data written beside it reads back identically
    let ext = dir.path().join("ext.onnx");
    save_model(&original, &ext, &SaveOptions { external_data: Some(true), ..Default::default() }).unwrap();
    assert!(dir.path().join("ext.onnx.data").exists());
    assert!(std::fs::metadata(&ext).unwrap().len() < std::fs::metadata(&out).unwrap().len());
    assert_eq!(original, load_model(&ext).unwrap(), "{} changed through external data", path.display());
}

#[test]
fn every_reference_model_survives_load_save_load() {
    for m in MODELS {
        roundtrip(&model(m));
    }
}

#[test]
fn reencoding_keeps_every_field_of_the_exported_file() {
    // Protobuf's size does not depend on field order: equal sizes mean no field was dropped.
    for m in MODELS {
        let bytes = std::fs::read(model(m)).unwrap();
        let decoded = onnx::ModelProto::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded.encoded_len(), bytes.len(), "{m}: re-encoding lost or added bytes");
    }
}

#[test]
fn ir10_node_metadata_survives_roundtrip() {
    let m = Model::load(&model("transformer")).unwrap();
    assert_eq!(m.meta.ir_version, 10);
    let with_meta = m.graph.nodes.iter().filter(|n| !n.metadata_props.is_empty()).count();
    assert!(with_meta > 10, "the new exporter tags nodes with metadata");
    let dir = tempdir();
    let out = dir.path().join("t.onnx");
    m.save(&out, &SaveOptions::default()).unwrap();
    let back = Model::load(&out).unwrap();
    for (a, b) in m.graph.nodes.iter().zip(&back.graph.nodes) {
        assert_eq!(a.metadata_props, b.metadata_props, "node {}", a.name);
    }
    assert_eq!(m.graph.inputs[0].metadata_props, back.graph.inputs[0].metadata_props);
}

#[test]
fn external_data_model_loads_like_the_inline_one() {
    let ext = load_model(&fixture("external/model.onnx")).unwrap();
    let inline = load_model(&model("transformer")).unwrap();
    let (ge, gi) = (ext.graph.unwrap(), inline.graph.unwrap());
    assert_eq!(ge.initializer.len(), gi.initializer.len());
    for (a, b) in ge.initializer.iter().zip(&gi.initializer) {
        assert_eq!(a.name, b.name);
        assert_eq!(onnx::tensor::to_f64(a).unwrap(), onnx::tensor::to_f64(b).unwrap(), "{}", a.name);
        assert_eq!(a.data_location, data_location::DEFAULT);
    }
    roundtrip(&fixture("external/model.onnx"));
}

/// The mlp with its first weight moved to external data at `location`.
fn with_external(dir: &std::path::Path, location: &str) -> std::path::PathBuf {
    let mut m = load_model(&model("mlp")).unwrap();
    let t = &mut m.graph.as_mut().unwrap().initializer[0];
    onnx::tensor::make_raw(t).unwrap();
    let len = t.raw_data.len();
    t.raw_data.clear();
    t.data_location = data_location::EXTERNAL;
    t.external_data = vec![
        StringStringEntryProto { key: "location".into(), value: location.into() },
        StringStringEntryProto { key: "length".into(), value: len.to_string() },
    ];
    write(dir, "model.onnx", &m.encode_to_vec())
}

#[test]
fn external_data_outside_the_model_folder_is_refused() {
    let dir = tempdir();
    let inner = dir.path().join("model");
    std::fs::create_dir(&inner).unwrap();
    std::fs::write(dir.path().join("secret.data"), vec![0u8; 1 << 20]).unwrap();
    for location in ["../secret.data", "/etc/passwd", "sub/../../secret.data"] {
        let p = with_external(&inner, location);
        let o = onnxsam(&["inspect", p.to_str().unwrap()]);
        assert_bad_input(&o, "model.onnx", "refused");
    }
    // a symbolic link inside the folder that points out of it
    std::os::unix::fs::symlink(dir.path().join("secret.data"), inner.join("link.data")).unwrap();
    let p = with_external(&inner, "link.data");
    let o = onnxsam(&["inspect", p.to_str().unwrap()]);
    assert_bad_input(&o, "model.onnx", "outside the model's folder");
}

#[test]
fn missing_external_data_file_is_reported() {
    let dir = tempdir();
    let p = with_external(dir.path(), "weights.data");
    let o = onnxsam(&["inspect", p.to_str().unwrap()]);
    assert_bad_input(&o, "model.onnx", "weights.data' is missing");
}

#[test]
fn truncated_external_data_file_is_reported() {
    let dir = tempdir();
    std::fs::write(dir.path().join("weights.data"), vec![0u8; 100]).unwrap();
    let p = with_external(dir.path(), "weights.data");
    let o = onnxsam(&["inspect", p.to_str().unwrap()]);
    assert_bad_input(&o, "model.onnx", "truncated");
}
