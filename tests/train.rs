//! `onnxsam train`, `eval`, `export` end to end on an MNIST subset (needs tools/fetch-data.sh mnist).
mod common;

use std::path::{Path, PathBuf};

use common::*;
use onnxsam::data::idx;
use onnxsam::tensor::{read_npz, write_npz, HostTensor};

/// MNIST's first `n` training and 500 test images as an .npz (x float32 in [0, 1], y int64).
fn mnist_subset(dir: &Path, n: usize) -> PathBuf {
    let mnist = root().join("data/mnist");
    let train = idx::read_mnist_dir(&mnist, false)
        .unwrap_or_else(|e| panic!("MNIST is needed for this test: run tools/fetch-data.sh mnist ({e})"))
        .head(n)
        .unwrap();
    let test = idx::read_mnist_dir(&mnist, true).unwrap().head(500).unwrap();
    let p = dir.join("mnist_subset.npz");
    write_npz(
        &p,
        &[
            ("x".into(), HostTensor::f32(&[n, 1, 28, 28], train.x.clone())),
            ("y".into(), HostTensor::i64(&[n], train.y.clone())),
            ("x_test".into(), HostTensor::f32(&[500, 1, 28, 28], test.x.clone())),
            ("y_test".into(), HostTensor::i64(&[500], test.y.clone())),
        ],
    )
    .unwrap();
    p
}

fn train_cmd(extra: &[&str]) -> std::process::Output {
    let mut a = vec!["train"];
    a.extend_from_slice(extra);
    onnxsam(&a)
}

/// metrics.jsonl rows without the wall-clock column.
fn rows(run: &Path) -> Vec<serde_json::Map<String, serde_json::Value>> {
    onnxsam::train::metrics::read(run)
        .unwrap()
        .into_iter()
        .map(|mut r| {
            r.remove("seconds");
            r
        })
        .collect()
}

fn last_test_acc(run: &Path) -> f64 {
    rows(run).iter().rev().find_map(|r| r.get("test_acc").and_then(|v| v.as_f64())).unwrap()
}

fn first_loss(run: &Path) -> f64 {
    rows(run)[0]["loss"].as_f64().unwrap()
}

fn epoch_train_loss(run: &Path) -> f64 {
    rows(run).iter().rev().find_map(|r| r.get("train_loss").and_then(|v| v.as_f64())).unwrap()
}

const NORM: &[&str] = &["--normalize", "0.1307,0.3081"];

#[test]
fn sgd_sam_and_rw_sam_learn_mnist_on_tract() {
    let tmp = tempdir();
    let data = mnist_subset(tmp.path(), 4096);
    for (i, opt) in [&["--optimizer", "sgd"][..], &["--optimizer", "sam"], &["--optimizer", "sam", "--reweight", "1"]]
        .iter()
        .enumerate()
    {
        let run = tmp.path().join(format!("run-{i}"));
        let mut args = vec!["models/mlp.onnx", "--data", data.to_str().unwrap(), "--epochs", "2", "--lr", "0.05"];
        args.extend_from_slice(NORM);
        args.extend_from_slice(opt);
        args.extend_from_slice(&["--backend", "tract", "--out", run.to_str().unwrap()]);
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_onnxsam"));
        let o = cmd.current_dir(root()).arg("train").args(&args).output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{opt:?}: {}", stderr(&o));
        let acc = last_test_acc(&run);
        assert!(acc >= 0.88, "{opt:?}: test accuracy {acc} after 2 epochs of 4096 MNIST images (want ≥ 0.88)");
        assert!(epoch_train_loss(&run) < 0.5 * first_loss(&run), "{opt:?}: the loss did not fall");
        // the trained model runs in onnxsam run and evaluates to the logged test accuracy
        let o = onnxsam(&[
            "eval",
            run.join("model.onnx").to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--normalize",
            "0.1307,0.3081",
            "--json",
            "--backend",
            "tract",
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert!(
            (v["accuracy"].as_f64().unwrap() - acc).abs() < 1e-9,
            "eval of model.onnx {} vs logged {acc}",
            v["accuracy"]
        );
    }
}

#[test]
fn ort_and_tract_runs_of_one_seed_agree_over_the_first_steps() {
    let tmp = tempdir();
    let data = mnist_subset(tmp.path(), 640);
    let mut losses = Vec::new();
    for be in ["tract", "ort"] {
        let run = tmp.path().join(be);
        let mut args =
            vec!["models/cnn.onnx", "--data", data.to_str().unwrap(), "--max-steps", "5", "--batch-size", "64"];
        args.extend_from_slice(NORM);
        args.extend_from_slice(&[
            "--optimizer",
            "sam",
            "--reweight",
            "1",
            "--backend",
            be,
            "--out",
            run.to_str().unwrap(),
        ]);
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_onnxsam"));
        let o = cmd.current_dir(root()).arg("train").args(&args).output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{be}: {}", stderr(&o));
        let l: Vec<f64> =
            rows(&run).iter().filter(|r| r["kind"] == "step").map(|r| r["loss"].as_f64().unwrap()).collect();
        losses.push(l);
    }
    assert_eq!(losses[0].len(), 5);
    for (s, (a, b)) in losses[0].iter().zip(&losses[1]).enumerate() {
        assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "step {}: tract loss {a} vs ort {b}", s + 1);
    }
}

#[test]
fn resumed_run_continues_the_identical_trajectory() {
    let tmp = tempdir();
    let data = mnist_subset(tmp.path(), 1024);
    let base = |run: &Path, epochs: &str| -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        a.extend(
            ["models/mlp.onnx", "--data", data.to_str().unwrap(), "--epochs", epochs, "--batch-size", "100"]
                .iter()
                .map(|s| s.to_string()),
        );
        a.extend(NORM.iter().map(|s| s.to_string()));
        a.extend(
            ["--optimizer", "sam", "--reweight", "1", "--backend", "tract", "--out", run.to_str().unwrap()]
                .iter()
                .map(|s| s.to_string()),
        );
        a
    };
    let run = |args: &[String]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_onnxsam"));
        let o = cmd.current_dir(root()).arg("train").args(args).output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    };
    let straight = tmp.path().join("straight");
    run(&base(&straight, "2"));
    let split = tmp.path().join("split");
    run(&base(&split, "1"));
    let o = train_cmd(&["--resume", split.to_str().unwrap(), "--epochs", "2"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(rows(&straight), rows(&split), "metrics of 2 epochs vs 1 + resume + 1 differ");
    let last = |r: &Path| onnxsam::train::checkpoint::list(r).unwrap().last().unwrap().1.with_extension("npz");
    assert_eq!(last(&straight).file_name(), last(&split).file_name());
    let a = read_npz(&last(&straight)).unwrap();
    let b = read_npz(&last(&split)).unwrap();
    assert_eq!(a, b, "final parameters differ");
    assert_eq!(std::fs::read(straight.join("model.onnx")).unwrap(), std::fs::read(split.join("model.onnx")).unwrap());
}
