//! Bad input through the CLI: exit 2, one line naming the file and the problem, never a panic.
mod common;

use common::*;
use onnxsam::graph_passes::onnx::{load_model, OperatorSetIdProto};
use prost::Message;

fn inspect(p: &std::path::Path) -> std::process::Output {
    onnxsam(&["inspect", p.to_str().unwrap()])
}

#[test]
fn empty_file() {
    let d = tempdir();
    let p = write(d.path(), "empty.onnx", b"");
    assert_bad_input(&inspect(&p), "empty.onnx", "empty");
}

#[test]
fn random_bytes() {
    let d = tempdir();
    // fixed pseudo-random bytes (xorshift), so the test is reproducible
    let mut x = 0x2545F4914F6CDD1Du64;
    let bytes: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let p = write(d.path(), "random.onnx", &bytes);
    assert_bad_input(&inspect(&p), "random.onnx", "not an ONNX model");
}

#[test]
fn truncated_protobuf() {
    let d = tempdir();
    let bytes = std::fs::read(model("cnn")).unwrap();
    let p = write(d.path(), "cut.onnx", &bytes[..bytes.len() / 2]);
    assert_bad_input(&inspect(&p), "cut.onnx", "truncated");
}

#[test]
fn valid_protobuf_that_is_not_a_model() {
    let d = tempdir();
    let t = onnxsam::graph_passes::onnx::tensor::from_f32("x", &[2], &[1.0, 2.0]);
    let p = write(d.path(), "tensor.pb", &t.encode_to_vec());
    assert_bad_input(&inspect(&p), "tensor.pb", "not an ONNX model");
    // a message that decodes as a ModelProto but has no graph
    let p = write(d.path(), "nograph.onnx", &OperatorSetIdProto { domain: None, version: 3 }.encode_to_vec());
    assert_bad_input(&inspect(&p), "nograph.onnx", "not an ONNX model");
}

#[test]
fn unknown_opset_domain() {
    let d = tempdir();
    let mut m = load_model(&model("mlp")).unwrap();
    m.opset_import.push(OperatorSetIdProto { domain: Some("com.example.custom".into()), version: 1 });
    let p = write(d.path(), "custom.onnx", &m.encode_to_vec());
    assert_bad_input(&inspect(&p), "custom.onnx", "unknown opset domain 'com.example.custom'");
}

#[test]
fn missing_model_file() {
    let o = onnxsam(&["inspect", "/nonexistent/model.onnx"]);
    assert_bad_input(&o, "/nonexistent/model.onnx", "cannot read");
}

fn write_npz(dir: &std::path::Path, name: &str, arrays: &[(&str, onnxsam::tensor::HostTensor)]) -> std::path::PathBuf {
    let p = dir.join(name);
    let v: Vec<(String, onnxsam::tensor::HostTensor)> =
        arrays.iter().map(|(n, t)| (n.to_string(), t.clone())).collect();
    onnxsam::tensor::write_npz(&p, &v).unwrap();
    p
}

#[test]
fn npz_with_wrong_name_dtype_or_shape() {
    use onnxsam::tensor::HostTensor;
    let d = tempdir();
    let m = model("transformer");
    let run = |p: &std::path::Path| {
        onnxsam(&["run", m.to_str().unwrap(), "--input", p.to_str().unwrap(), "--backend", "tract"])
    };
    let two = write_npz(
        d.path(),
        "names.npz",
        &[("tokens", HostTensor::i64(&[2, 16], vec![0; 32])), ("extra", HostTensor::i64(&[1], vec![0]))],
    );
    assert_bad_input(&run(&two), "names.npz", "no array named 'ids'");
    let dtype = write_npz(d.path(), "dtype.npz", &[("ids", HostTensor::f32(&[2, 16], vec![0.0; 32]))]);
    assert_bad_input(&run(&dtype), "dtype.npz", "is float32 but the model's input 'ids' is int64");
    let shape = write_npz(d.path(), "shape.npz", &[("ids", HostTensor::i64(&[2, 15], vec![0; 30]))]);
    assert_bad_input(&run(&shape), "shape.npz", "shape [2, 15]");
    let junk = write(d.path(), "junk.npz", b"not a zip file");
    assert_bad_input(&run(&junk), "junk.npz", "not a valid .npz");
}

#[test]
fn backend_ort_without_a_library() {
    let d = tempdir();
    let m = model("mlp");
    let input = fixture("mlp/input.npz");
    // no ORT_DYLIB_PATH, and a PATH where no python3 can be found
    let o = onnxsam_env(
        &["run", m.to_str().unwrap(), "--input", input.to_str().unwrap(), "--backend", "ort"],
        &[("ORT_DYLIB_PATH", ""), ("PATH", d.path().to_str().unwrap())],
    );
    assert_bad_input(&o, "onnxruntime", "no ONNX Runtime library found");
    let o = onnxsam(&[
        "run",
        m.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--backend",
        "ort",
        "--ort-lib",
        "/nonexistent/libonnxruntime.so",
    ]);
    assert_bad_input(&o, "/nonexistent/libonnxruntime.so", "not a file");
}

#[test]
fn tract_cannot_run_an_op_it_lacks() {
    // SoftmaxCrossEntropyLoss is not implemented in tract: an error, not a crash
    let mut m = load_model(&model("mlp")).unwrap();
    m.opset_import[0].version = 17;
    let g = m.graph.as_mut().unwrap();
    let logits = g.output[0].name.clone();
    g.input.push(onnxsam::graph_passes::onnx::ValueInfoProto {
        name: "labels".into(),
        r#type: g.input[0].r#type.clone().map(|mut t| {
            if let Some(onnxsam::graph_passes::onnx::type_proto::Value::TensorType(tt)) = &mut t.value {
                tt.elem_type = 7;
                tt.shape = None;
            }
            t
        }),
        ..Default::default()
    });
    g.node.push(onnxsam::graph_passes::onnx::NodeProto {
        op_type: "SoftmaxCrossEntropyLoss".into(),
        name: "loss".into(),
        input: vec![logits, "labels".into()],
        output: vec!["loss".into()],
        ..Default::default()
    });
    g.output[0].name = "loss".into();
    g.output[0].r#type = None;
    let d = tempdir();
    let p = write(d.path(), "loss.onnx", &m.encode_to_vec());
    let inputs = d.path().join("in.npz");
    let x = onnxsam::tensor::read_npz(&fixture("mlp/input.npz")).unwrap().remove("input").unwrap();
    onnxsam::tensor::write_npz(
        &inputs,
        &[("input".into(), x), ("labels".into(), onnxsam::tensor::HostTensor::i64(&[4], vec![1, 2, 3, 4]))],
    )
    .unwrap();
    let o = onnxsam(&["run", p.to_str().unwrap(), "--input", inputs.to_str().unwrap(), "--backend", "tract"]);
    assert_bad_input(&o, "loss.onnx", "tract");
}

#[test]
fn device_cuda_without_a_cuda_onnxruntime() {
    // CI installs the CPU wheel: asking for CUDA must fail with how to get onnxruntime-gpu,
    // never fall back to the CPU silently
    let m = model("mlp");
    let input = fixture("mlp/input.npz");
    let o = onnxsam(&["run", m.to_str().unwrap(), "--input", input.to_str().unwrap(), "--device", "cuda"]);
    assert_bad_input(&o, "libonnxruntime", "pip install onnxruntime-gpu");
    let o = onnxsam(&[
        "run",
        m.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--backend",
        "tract",
        "--device",
        "cuda:1",
    ]);
    assert_bad_input(&o, "tract", "CPU only");
}

/// Batches onnxsam must not run: no samples, a NaN, a folder or a missing file instead of an
/// .npz, one sample through a BatchNorm over the batch axis alone; and --out a folder.
#[test]
fn bad_batches_and_paths_get_one_line() {
    use onnxsam::tensor::{read_npz, write_npz, HostTensor};
    let d = tempdir();
    let dir = fixture("zoo/bn_batchstats");
    let m = dir.join("dynamo.onnx");
    let batch = read_npz(&dir.join("batch.npz")).unwrap();
    let (x, y) = (batch["input"].clone(), batch["y"].clone());
    let rows = |t: &HostTensor, n: usize| onnxsam::step::take_rows(t, 0, n);
    let out = d.path().join("g.npz");
    let grad = |b: &std::path::Path| grad_cmd(&m, b, &out, &["--backend", "tract"]);
    let save = |name: &str, x: HostTensor, y: HostTensor| {
        let p = d.path().join(name);
        write_npz(&p, &[("input".into(), x), ("y".into(), y)]).unwrap();
        p
    };
    let empty = save("empty.npz", rows(&x, 0), rows(&y, 0));
    assert_bad_input(&grad(&empty), "empty.npz", "no samples");
    let mut nan = x.clone();
    if let onnxsam::tensor::Data::F32(v) = &mut nan.data {
        v[5] = f32::NAN;
    }
    let nan = save("nan.npz", nan, y.clone());
    assert_bad_input(&grad(&nan), "nan.npz", "NaN");
    let one = save("one.npz", rows(&x, 1), rows(&y, 1));
    assert_bad_input(&grad(&one), "one sample", "BatchNorm layer bn3");
    assert_bad_input(&grad(d.path()), &d.path().display().to_string(), "is a folder");
    assert_bad_input(&grad(&d.path().join("missing.npz")), "missing.npz", "no such file");
    let o = grad_cmd(&m, &dir.join("batch.npz"), d.path(), &["--backend", "tract"]);
    assert_bad_input(&o, &d.path().display().to_string(), "is a folder");
    // train: 9 samples in batches of 8 leave one sample for the last batch; refused before any
    // run folder is made
    // nine samples: the batch and its first sample again
    let (xv, yv) = (x.as_f32().unwrap().to_vec(), y.to_f64());
    let per = xv.len() / 8;
    let nine_x = HostTensor::f32(&[9, 3, 16, 16], xv.iter().chain(&xv[..per]).copied().collect());
    let nine_y = HostTensor::i64(&[9], yv.iter().chain(&yv[..1]).map(|v| *v as i64).collect());
    let data = d.path().join("nine.npz");
    write_npz(&data, &[("x".into(), nine_x), ("y".into(), nine_y)]).unwrap();
    let run = d.path().join("run");
    let o = onnxsam(&[
        "train",
        m.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--normalize",
        "none",
        "--backend",
        "tract",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert_bad_input(&o, "nine.npz", "--drop-last");
    assert!(!run.exists(), "nothing is written for a run that cannot start");
}

/// `--padding-idx` naming no embedding table, a row outside the table, or a row that is no
/// integer: one line, exit 2.
#[test]
fn padding_idx_that_cannot_be_taken() {
    let file = fixture("zoo_foreign/hf_bert/legacy.onnx");
    let batch = fixture("zoo_foreign/hf_bert/batch.npz");
    let tmp = tempdir();
    let out = tmp.path().join("g.npz");
    for (flag, what) in [
        ("nope.weight=0", "no embedding table 'nope.weight'"),
        ("bert.embeddings.word_embeddings.weight=32", "the table has 32 rows"),
        ("bert.embeddings.word_embeddings.weight=-40", "the table has 32 rows"),
        ("bert.embeddings.word_embeddings.weight=one", "is not an integer"),
        ("bert.embeddings.word_embeddings.weight", "expected TABLE=ROW"),
    ] {
        let o = onnxsam(&[
            "grad",
            file.to_str().unwrap(),
            "--batch",
            batch.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--padding-idx",
            flag,
        ]);
        assert_bad_input(&o, "", what);
        assert!(!out.exists(), "nothing written for {flag}");
    }
}

/// Without the `mpi` feature, `--distributed mpi` and an MPI launcher's environment are refused
/// with the rebuild command; nothing is written (N processes would otherwise share one run folder).
#[cfg(not(feature = "mpi"))]
#[test]
fn distributed_training_needs_the_mpi_feature() {
    let t = tempdir();
    let data = fixture("mlp/batch.npz");
    let out = t.path().join("run");
    let (m, d, o) = (model("mlp"), data.display().to_string(), out.display().to_string());
    let m = m.display().to_string();
    let args = ["train", &m, "--data", &d, "--max-steps", "1", "--out", &o];
    let r = onnxsam(&[&args[..], &["--distributed", "mpi"]].concat());
    assert_bad_input(&r, "", "--features mpi");
    let r = onnxsam_env(&args, &[("OMPI_COMM_WORLD_SIZE", "2")]);
    assert_bad_input(&r, "", "an MPI launcher started 2 processes");
    let r = onnxsam(&[&args[..], &["--distributed", "nccl"]].concat());
    assert_bad_input(&r, "", "--distributed nccl");
    assert!(!out.exists());
}

/// The data-parallel definitions of SAM and RW-SAM are refused outside data-parallel training.
#[test]
fn data_parallel_options_need_data_parallel_training() {
    let t = tempdir();
    let data = fixture("mlp/batch.npz");
    let out = t.path().join("run");
    let (m, d, o) = (model("mlp").display().to_string(), data.display().to_string(), out.display().to_string());
    for flag in ["--sync-ascent", "--global-weights"] {
        let r = onnxsam(&["train", &m, "--data", &d, "--max-steps", "1", "--out", &o, "--optimizer", "sam", flag]);
        assert_bad_input(&r, "", "--distributed mpi");
        assert!(!out.exists());
    }
}
