//! Graphs that compute sizes and lists from their inputs' shape (tools/make_sizes_fixtures.py):
//! sequence ops and split sizes computed from Shape (import/sequences.rs, import/fold.rs), and
//! sizes a gradient rule needs that the file leaves to run time, compiled at the data's sizes
//! (graph_passes::sizes, grad::compile_at_sizes). Gradients against PyTorch float64 on both
//! engines, dynamic batch (and length) at another size than the export's.
mod common;

use common::*;
use onnxsam::tensor::read_npz;

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// `grad` on `file` equals the float64 reference for every parameter, on both engines; returns
/// the stderr of the last run.
fn matches_pytorch(model: &str, file: &str) -> String {
    let dir = fixture("sizes");
    let reference = read_npz(&dir.join(format!("{model}_ref.npz"))).unwrap();
    let t = tempdir();
    let mut last = String::new();
    for backend in ["tract", "ort"] {
        let out = t.path().join(format!("{backend}.npz"));
        let o = grad_cmd(&dir.join(file), &dir.join(format!("{model}_batch.npz")), &out, &["--backend", backend]);
        assert_eq!(o.status.code(), Some(0), "{file} on {backend}: {}", stderr(&o));
        let got = read_npz(&out).unwrap();
        let (l, lr) = (got["loss"].to_f64()[0], reference["loss"].to_f64()[0]);
        assert!((l - lr).abs() < 1e-5, "{file} on {backend}: loss {l} vs PyTorch {lr}");
        let mut params = 0;
        for (k, want) in &reference {
            let Some(p) = k.strip_prefix("grad/") else { continue };
            params += 1;
            let g = got.get(p).unwrap_or_else(|| panic!("{file} on {backend}: no gradient of '{p}'")).to_f64();
            let w = want.to_f64();
            let e = norm(&g.iter().zip(&w).map(|(a, b)| a - b).collect::<Vec<_>>()) / norm(&w);
            assert!(e < 1e-5, "{file} on {backend}: '{p}' off by {e:.2e}");
        }
        let trained = got.keys().filter(|k| !k.starts_with("loss")).count();
        assert_eq!(trained, params, "{file} on {backend}: {:?}", got.keys().collect::<Vec<_>>());
        last = stderr(&o);
    }
    last
}

/// split with uneven sizes, unbind + stack, chunk and tensor_split: the legacy file's sequence
/// ops and computed split sizes, the dynamo file's (optimize=False) SplitToSequence.
#[test]
fn lists_of_tensors_train_as_pytorch() {
    for file in ["lists_legacy.onnx", "lists_dynamo_noopt.onnx"] {
        let log = matches_pytorch("lists", file);
        assert!(!log.contains("note: "), "{file}: compiled at fixed sizes, which lists do not need: {log}");
    }
}

/// F.pad with pads computed from a dynamic length, and a slice at half the batch: compiled at
/// the batch's sizes, said in one line.
#[test]
fn sizes_computed_from_the_inputs_shape_compile_at_the_datas_sizes() {
    for (model, files, dims) in [
        ("pad_len", ["pad_len_legacy.onnx", "pad_len_dynamo.onnx"], "x [6, 2, 11]"),
        ("half_batch", ["half_batch_legacy.onnx", "half_batch_dynamo.onnx"], "x [6, 4]"),
    ] {
        for file in files {
            let log = matches_pytorch(model, file);
            assert!(
                log.contains(&format!("a size the file computes from its inputs' shape; compiled for {dims} (the data's)")),
                "{file}: {log}"
            );
        }
    }
    let f = fixture("sizes/pad_len_dynamo.onnx");
    let v = stdout(&onnxsam(&["inspect", f.to_str().unwrap()]));
    assert!(
        v.lines().any(|l| l.starts_with("verdict: trains at the data's sizes only: op Pad (node node_pad) needs a size")),
        "{v}"
    );
}

/// `train` on the padded-length model: the step compiled for --batch-size and the data's length,
/// the last smaller batch dropped (20 samples, batches of 8: 2 steps an epoch), the loss falls;
/// --accumulate (several batch sizes) is refused in one line before anything runs.
#[test]
fn train_at_the_datas_sizes_drops_the_smaller_last_batch() {
    let f = fixture("sizes/pad_len_dynamo.onnx");
    let t = tempdir();
    // the training data, and a test set of another length (its forward runs at its own sizes)
    let mut arrays = read_npz(&fixture("sizes/pad_len_train.npz")).unwrap();
    let x_test: Vec<f32> = (0..5 * 2 * 13).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.2).collect();
    arrays.insert("x_test".into(), onnxsam::tensor::HostTensor::f32(&[5, 2, 13], x_test));
    arrays.insert("y_test".into(), onnxsam::tensor::HostTensor::i64(&[5], vec![0, 1, 2, 1, 0]));
    let data = t.path().join("data.npz");
    onnxsam::tensor::write_npz(&data, &arrays.into_iter().collect::<Vec<_>>()).unwrap();
    for backend in ["tract", "ort"] {
        let run = t.path().join(backend);
        let args = [
            "train",
            f.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--batch-size",
            "8",
            "--epochs",
            "6",
            "--lr",
            "0.2",
            "--optimizer",
            "sam",
            "--backend",
            backend,
            "--out",
            run.to_str().unwrap(),
        ];
        let o = onnxsam(&args);
        assert_eq!(o.status.code(), Some(0), "{backend}: {}", stderr(&o));
        assert!(stderr(&o).contains("compiled for x [8, 2, 11] (the data's)"), "{backend}: {}", stderr(&o));
        assert!(stderr(&o).contains("a last batch smaller than --batch-size is dropped"), "{backend}: {}", stderr(&o));
        let rows = rows(&run);
        let losses: Vec<f64> = rows.iter().filter_map(|r| r.get("train_loss").and_then(|v| v.as_f64())).collect();
        let steps: Vec<i64> = rows.iter().filter_map(|r| r.get("step").and_then(|v| v.as_i64())).collect();
        assert_eq!(steps.last(), Some(&12), "{backend}: 2 whole batches an epoch for 6 epochs: {rows:?}");
        assert!(losses.last().unwrap() < losses.first().unwrap(), "{backend}: {losses:?}");
        let test: Vec<f64> = rows.iter().filter_map(|r| r.get("test_loss").and_then(|v| v.as_f64())).collect();
        assert!(!test.is_empty() && test.iter().all(|l| l.is_finite()), "{backend}: test loss at length 13: {rows:?}");
    }
    // --accumulate, and m-SAM (it runs the step per micro-batch): refused in one line
    let run = t.path().join("acc");
    let refused = |extra: &[&str], what: &str| {
        let mut args = vec!["train", f.to_str().unwrap(), "--data", data.to_str().unwrap(), "--batch-size", "8"];
        args.extend(["--epochs", "1", "--out", run.to_str().unwrap()]);
        args.extend(extra);
        assert_bad_input(&onnxsam(&args), "pad_len_dynamo.onnx", what);
        assert!(!run.exists());
    };
    refused(&["--accumulate", "2"], "--accumulate, --micro-batch and --distributed run several; train without them");
    refused(&["--optimizer", "sam", "--micro-batch", "4"], "run several; train without them");
    // and step with --accumulate
    let batch = fixture("sizes/pad_len_batch.npz");
    let out = t.path().join("s.npz");
    let o = onnxsam(&["step", f.to_str().unwrap(), "--batch", batch.to_str().unwrap(), "--out", out.to_str().unwrap(), "--accumulate", "2"]);
    assert_bad_input(&o, "pad_len_dynamo.onnx", "--accumulate and --micro-batch run several; step without them");
}
