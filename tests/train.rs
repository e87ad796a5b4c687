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
            ("x".into(), train.columns[0].1.clone()),
            ("y".into(), train.y.clone().unwrap()),
            ("x_test".into(), test.columns[0].1.clone()),
            ("y_test".into(), test.y.clone().unwrap()),
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

/// `train MODEL --data DATA --epochs 1 --out OUT EXTRA…` (no normalization).
fn train_once(model: &str, data: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut a = vec![model, "--data", data.to_str().unwrap(), "--epochs", "1"];
    a.extend_from_slice(&["--out", out.to_str().unwrap()]);
    a.extend_from_slice(extra);
    train_cmd(&a)
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
    // The engines' float32 rounding alone: measured ≤ 3e-7 over 8 steps for SGD, SAM and RW-SAM on
    // cnn (SAM and RW-SAM parted after two steps, by 5e-4 at step 3, while ‖g‖ was summed in
    // float32: each engine's summation order moved ε = ρ·g/‖g‖ by ~1e-4; it is summed in float64 now).
    let sgd: &[&str] = &["--optimizer", "sgd"];
    let sam: &[&str] = &["--optimizer", "sam"];
    let rw: &[&str] = &["--optimizer", "sam", "--reweight", "1"];
    for (k, (opt, steps, tol)) in [(sgd, 5, 1e-5), (sam, 5, 1e-5), (rw, 5, 1e-5)].into_iter().enumerate() {
        let mut losses = Vec::new();
        for be in ["tract", "ort"] {
            let run = tmp.path().join(format!("{be}-{k}"));
            let n = steps.to_string();
            let mut args =
                vec!["models/cnn.onnx", "--data", data.to_str().unwrap(), "--max-steps", &n, "--batch-size", "64"];
            args.extend_from_slice(NORM);
            args.extend_from_slice(opt);
            args.extend_from_slice(&["--backend", be, "--out", run.to_str().unwrap()]);
            let o = train_cmd(&args);
            assert_eq!(o.status.code(), Some(0), "{be}: {}", stderr(&o));
            let l: Vec<f64> =
                rows(&run).iter().filter(|r| r["kind"] == "step").map(|r| r["loss"].as_f64().unwrap()).collect();
            losses.push(l);
        }
        assert_eq!(losses[0].len(), steps);
        for (s, (a, b)) in losses[0].iter().zip(&losses[1]).enumerate() {
            assert!((a - b).abs() <= tol * a.abs().max(1.0), "{opt:?} step {}: tract loss {a} vs ort {b}", s + 1);
        }
    }
}

#[test]
fn resumed_run_continues_the_identical_trajectory() {
    let tmp = tempdir();
    let data = mnist_subset(tmp.path(), 1024);
    // RW-SAM on tract; m-SAM on ONNX Runtime, whose two sessions keep values on the device; the
    // base optimizers SGD, AdamW and Adam with amsgrad and clipping (their state is in the checkpoints);
    // the SAM variants' state: F-SAM's EMA and its first-step flag, LookSAM's g_v (k = 3, so the
    // resumed epoch starts between full steps) under adaptive RW, late-phase GSAM switching at the
    // resumed epoch
    let configs: [&[&str]; 6] = [
        &["--optimizer", "sam", "--reweight", "1", "--backend", "tract"],
        &["--optimizer", "sam", "--base-optimizer", "adamw", "--lr", "1e-3", "--reweight", "1", "--backend", "tract"],
        &[
            "--optimizer",
            "sam",
            "--base-optimizer",
            "adam",
            "--amsgrad",
            "--clip-grad-norm",
            "1",
            "--lr",
            "1e-3",
            "--micro-batch",
            "25",
            "--backend",
            "ort",
        ],
        &["--optimizer", "fsam", "--backend", "ort"],
        &["--optimizer", "looksam", "--looksam-k", "3", "--reweight", "auto", "--backend", "tract"],
        &["--optimizer", "gsam", "--sam-from-epoch", "2", "--backend", "ort"],
    ];
    for (k, opt) in configs.iter().enumerate() {
        let base = |run: &Path, epochs: &str| -> Vec<String> {
            let mut a: Vec<String> = Vec::new();
            a.extend(
                ["models/mlp.onnx", "--data", data.to_str().unwrap(), "--epochs", epochs, "--batch-size", "100"]
                    .iter()
                    .map(|s| s.to_string()),
            );
            a.extend(NORM.iter().chain(opt.iter()).map(|s| s.to_string()));
            a.extend(["--out".to_string(), run.to_str().unwrap().to_string()]);
            a
        };
        let run = |args: &[String]| {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_onnxsam"));
            let o = cmd.current_dir(root()).arg("train").args(args).output().unwrap();
            assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        };
        let straight = tmp.path().join(format!("straight-{k}"));
        run(&base(&straight, "2"));
        let split = tmp.path().join(format!("split-{k}"));
        run(&base(&split, "1"));
        if k == 0 {
            // a resumed run keeps its configuration
            let o = train_cmd(&["--resume", split.to_str().unwrap(), "--epochs", "2", "--lr", "5"]);
            assert_bad_input(&o, "--lr", "cannot change");
        }
        let o = train_cmd(&["--resume", split.to_str().unwrap(), "--epochs", "2"]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert_eq!(rows(&straight), rows(&split), "{opt:?}: metrics of 2 epochs vs 1 + resume + 1 differ");
        // each epoch row carries the process's peak memory so far (a measurement, so not compared above)
        let raw = onnxsam::train::metrics::read(&straight).unwrap();
        let epochs: Vec<_> = raw.iter().filter(|r| r["kind"] == "epoch").collect();
        assert_eq!(epochs.len(), 2);
        for e in epochs {
            let mib = e["peak_rss_mib"].as_f64().expect("peak memory logged per epoch");
            assert!(mib > 1.0 && mib < 24_000.0, "implausible peak memory {mib} MiB");
        }
        let last = |r: &Path| onnxsam::train::checkpoint::list(r).unwrap().last().unwrap().1.with_extension("npz");
        assert_eq!(last(&straight).file_name(), last(&split).file_name());
        let a = read_npz(&last(&straight)).unwrap();
        let b = read_npz(&last(&split)).unwrap();
        assert_eq!(a, b, "{opt:?}: final parameters differ");
        let model = |r: &Path| std::fs::read(r.join("model.onnx")).unwrap();
        assert_eq!(model(&straight), model(&split), "{opt:?}");
    }
}

#[test]
fn a_checkpoint_write_that_dies_leaves_the_previous_one_loadable() {
    let tmp = tempdir();
    let data = mnist_subset(tmp.path(), 512);
    let run = tmp.path().join("run");
    let mut args = vec!["models/mlp.onnx", "--data", data.to_str().unwrap(), "--epochs", "1", "--batch-size", "128"];
    args.extend_from_slice(NORM);
    args.extend_from_slice(&["--backend", "tract", "--out", run.to_str().unwrap()]);
    let o = train_cmd(&args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let before = onnxsam::train::checkpoint::load(&run, None).unwrap();
    // the second epoch's checkpoint write fails midway
    let o = onnxsam_env(
        &["train", "--resume", run.to_str().unwrap(), "--epochs", "2"],
        &[("ONNXSAM_FAIL_CHECKPOINT", "1")],
    );
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("checkpoint write failed"), "{}", stderr(&o));
    let after = onnxsam::train::checkpoint::load(&run, None).unwrap();
    assert_eq!(before.0, after.0, "the newest complete checkpoint changed");
    assert_eq!(before.1, after.1);
    // and the run goes on from it
    let o = train_cmd(&["--resume", run.to_str().unwrap(), "--epochs", "2"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(onnxsam::train::checkpoint::load(&run, None).unwrap().0.step, 8);
}

#[test]
fn label_noise_flips_the_stated_fraction_with_its_seed() {
    let tmp = tempdir();
    let mnist = idx::read_mnist_dir(&root().join("data/mnist"), false).unwrap().head(10_000).unwrap();
    for f in [0.2, 0.4, 0.8] {
        let mut a = mnist.clone();
        let flipped = a.add_label_noise(f, 5).unwrap();
        let changed = a.labels().unwrap().iter().zip(mnist.labels().unwrap()).filter(|(x, y)| x != y).count();
        assert_eq!(changed, (f * 10_000.0_f64).round() as usize, "fraction {f}");
        assert_eq!(flipped.len(), changed);
        let mut b = mnist.clone();
        b.add_label_noise(f, 5).unwrap();
        assert_eq!(a.y, b.y, "same seed, same noise");
        let mut c = mnist.clone();
        c.add_label_noise(f, 6).unwrap();
        assert_ne!(a.y, c.y, "another seed, other noise");
        // symmetric: flipped labels spread over the other classes
        let mut counts = [0usize; 10];
        for &i in &flipped {
            counts[a.labels().unwrap()[i] as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 0), "{counts:?}");
    }
    // the run logs it and keeps both label sets
    let data = mnist_subset(tmp.path(), 1000);
    let run = tmp.path().join("noisy");
    let mut args =
        vec!["models/mlp.onnx", "--data", data.to_str().unwrap(), "--max-steps", "2", "--label-noise", "0.4"];
    args.extend_from_slice(NORM);
    args.extend_from_slice(&["--backend", "tract", "--out", run.to_str().unwrap()]);
    let o = train_cmd(&args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("label noise: 400 of 1000 training labels flipped"), "{}", stdout(&o));
    let labels = read_npz(&run.join("labels.npz")).unwrap();
    let (clean, noisy) = (labels["clean"].to_f64(), labels["noisy"].to_f64());
    assert_eq!(clean.iter().zip(&noisy).filter(|(a, b)| a != b).count(), 400);
}

#[test]
fn bad_training_input_exits_2_and_overwrites_nothing() {
    let tmp = tempdir();
    let data = mnist_subset(tmp.path(), 256);
    let d = data.to_str().unwrap();
    let out = tmp.path().join("r");
    let o = train_once("models/resnet8.onnx", &data, &out, &["--backend", "tract"]);
    assert_bad_input(&o, "mnist_subset.npz", "do not fit the model's input");
    // labels out of range
    let bad = tmp.path().join("bad_labels.npz");
    let x = HostTensor::f32(&[4, 1, 28, 28], vec![0.0; 4 * 784]);
    write_npz(&bad, &[("x".into(), x), ("y".into(), HostTensor::i64(&[4], vec![0, 1, 12, 3]))]).unwrap();
    let o = train_once("models/mlp.onnx", &bad, &out, &["--backend", "tract"]);
    assert_bad_input(&o, "bad_labels.npz", "label 12");
    // a corrupt IDX header
    let idx_dir = tmp.path().join("idx");
    std::fs::create_dir_all(&idx_dir).unwrap();
    let mut img = vec![0u8, 0, 8, 3, 0, 0, 0, 9, 0, 0, 0, 28, 0, 0, 0, 28];
    img.extend(vec![0u8; 2 * 784]);
    std::fs::write(idx_dir.join("train-images-idx3-ubyte"), &img).unwrap();
    std::fs::write(idx_dir.join("train-labels-idx1-ubyte"), [0u8, 0, 8, 1, 0, 0, 0, 2, 1, 2]).unwrap();
    let o = train_once("models/mlp.onnx", &idx_dir, &out, &["--backend", "tract"]);
    assert_bad_input(&o, "train-images-idx3-ubyte", "corrupt IDX header");
    assert!(!out.join("config.json").exists(), "a failed start wrote a run");
    // --device cuda without a CUDA-capable ONNX Runtime
    let o = train_once("models/mlp.onnx", &data, &out, &["--backend", "ort", "--device", "cuda"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("onnxruntime-gpu"), "{}", stderr(&o));
    // a folder holding another run, without --resume: refused, nothing touched
    let run = tmp.path().join("taken");
    let mut args = vec!["models/mlp.onnx", "--data", d, "--max-steps", "1"];
    args.extend_from_slice(NORM);
    args.extend_from_slice(&["--backend", "tract", "--out", run.to_str().unwrap()]);
    assert_eq!(train_cmd(&args).status.code(), Some(0));
    let before: Vec<Vec<u8>> =
        ["config.json", "metrics.jsonl", "model.onnx"].iter().map(|f| std::fs::read(run.join(f)).unwrap()).collect();
    let o = train_cmd(&[
        "models/cnn.onnx",
        "--data",
        d,
        "--max-steps",
        "1",
        "--backend",
        "tract",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert_bad_input(&o, "taken", "already holds a run");
    let after: Vec<Vec<u8>> =
        ["config.json", "metrics.jsonl", "model.onnx"].iter().map(|f| std::fs::read(run.join(f)).unwrap()).collect();
    assert_eq!(before, after);
}

#[test]
fn a_nan_loss_stops_training_naming_the_step() {
    let tmp = tempdir();
    let data = mnist_subset(tmp.path(), 512);
    let run = tmp.path().join("nan");
    // an absurd learning rate diverges within a few steps
    let mut args = vec![
        "models/mlp.onnx",
        "--data",
        data.to_str().unwrap(),
        "--epochs",
        "3",
        "--lr",
        "1e6",
        "--batch-size",
        "128",
    ];
    args.extend_from_slice(NORM);
    args.extend_from_slice(&["--backend", "tract", "--out", run.to_str().unwrap()]);
    let o = train_cmd(&args);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("training stopped: step"), "{err}");
    assert!(!err.contains("panicked"));
    // it stopped before the first checkpoint: nothing to resume is kept, and the message says so;
    // the same command runs again (rather than "already holds a run")
    assert!(err.contains("no checkpoint was written yet") && err.contains("the same command can run again"), "{err}");
    assert!(!run.exists(), "the run folder of a run without a checkpoint is removed");
    let again = train_cmd(&args);
    assert_eq!(again.status.code(), Some(1), "{}", stderr(&again));
    assert!(!stderr(&again).contains("already holds a run"), "{}", stderr(&again));
}

#[test]
fn notes_say_once_what_the_file_and_the_data_leave_out() {
    let tmp = tempdir();
    let data = mnist_subset(tmp.path(), 64);
    // labels 0, 1, 2 only, for a model with 10 outputs
    let arrays = read_npz(&data).unwrap();
    let y: Vec<i64> = arrays["y"].to_f64().iter().map(|&v| (v as i64) % 3).collect();
    let three = tmp.path().join("three.npz");
    write_npz(&three, &[("x".into(), arrays["x"].clone()), ("y".into(), HostTensor::i64(&[y.len()], y))]).unwrap();
    let run = tmp.path().join("notes");
    let o = train_cmd(&[
        "models/mlp.onnx",
        "--data",
        three.to_str().unwrap(),
        "--max-steps",
        "1",
        "--normalize",
        "none",
        "--backend",
        "tract",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    let notes: Vec<&str> = err.lines().filter(|l| l.starts_with("onnxsam: note: ")).collect();
    assert_eq!(notes.iter().filter(|l| l.contains("has no Dropout")).count(), 1, "{err}");
    assert_eq!(notes.iter().filter(|l| l.contains("10 class outputs") && l.contains("has 3 classes")).count(), 1, "{err}");
    // eval evaluates as model.eval(): --train-mode is refused rather than ignored
    let o = onnxsam(&["eval", run.join("model.onnx").to_str().unwrap(), "--data", three.to_str().unwrap(), "--train-mode"]);
    assert_bad_input(&o, "", "eval evaluates in eval mode");
}

#[test]
fn plot_writes_the_curves_of_a_run() {
    let tmp = tempdir();
    let data = mnist_subset(tmp.path(), 512);
    let run = tmp.path().join("run");
    let mut args = vec!["models/mlp.onnx", "--data", data.to_str().unwrap(), "--epochs", "2", "--batch-size", "64"];
    args.extend_from_slice(NORM);
    args.extend_from_slice(&[
        "--optimizer",
        "sam",
        "--reweight",
        "auto",
        "--target-ess",
        "0.25",
        "--trace-v",
        "64",
        "--backend",
        "tract",
        "--out",
        run.to_str().unwrap(),
    ]);
    let o = train_cmd(&args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(run.join("sample_weights.npz").exists(), "the last RW weights are kept for the histogram");
    // adaptive λ steers every step's ESS to 0.25 of the batch of 64, and is logged beside it
    let r = rows(&run);
    let steps: Vec<_> = r.iter().filter(|r| r["kind"] == "step").collect();
    assert_eq!(steps.len(), 16);
    for row in &steps {
        let (ess, lambda) = (row["ess"].as_f64().unwrap(), row["lambda"].as_f64().unwrap());
        assert!((ess - 16.0).abs() < 0.05, "step {}: ESS {ess}, not 16 (λ = {lambda})", row["step"]);
        assert!(lambda > 0.0, "step {}: λ = {lambda}", row["step"]);
    }
    // --trace-v: one row of exact tr V = mean ‖∇ℓᵢ‖² − ‖∇L‖² (both logged)
    let tv: Vec<_> = r.iter().filter(|r| r["kind"] == "trace_v").collect();
    assert_eq!(tv.len(), 1);
    let (t, m, g) =
        (tv[0]["trace_v"].as_f64().unwrap(), tv[0]["mean_sq_grad_norm"].as_f64().unwrap(), tv[0]["sq_norm_mean_grad"].as_f64().unwrap());
    assert!(t > 0.0 && (t - (m - g)).abs() < 1e-9 * m, "tr V {t} = {m} − {g}");
    let o = onnxsam(&["plot", run.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let png = std::fs::read(run.join("curves.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(png.len() > 20_000, "a 2000×900 plot with seven panels ({} bytes)", png.len());
    // a folder without a run: one line, exit 2
    let o = onnxsam(&["plot", tmp.path().to_str().unwrap()]);
    assert_bad_input(&o, "metrics.jsonl", "cannot read");
}

#[test]
fn ctrl_c_checkpoints_mid_epoch_and_resume_continues_identically() {
    let tmp = tempdir();
    let data = mnist_subset(tmp.path(), 640);
    let args = |run: &Path| -> Vec<String> {
        let mut a: Vec<String> =
            ["train", "models/cnn.onnx", "--data", data.to_str().unwrap(), "--epochs", "2", "--batch-size", "32"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        a.extend(NORM.iter().map(|s| s.to_string()));
        a.extend(
            ["--optimizer", "sam", "--backend", "tract", "--out", run.to_str().unwrap()].iter().map(|s| s.to_string()),
        );
        a
    };
    let straight = tmp.path().join("straight");
    let o = onnxsam(&args(&straight).iter().map(|s| s.as_str()).collect::<Vec<_>>());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // the same run, interrupted by SIGINT a few steps in
    let run = tmp.path().join("interrupted");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_onnxsam"))
        .current_dir(root())
        .args(args(&run))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    loop {
        let lines = std::fs::read_to_string(run.join("metrics.jsonl")).map(|s| s.lines().count()).unwrap_or(0);
        if lines >= 5 {
            break;
        }
        assert!(t0.elapsed().as_secs() < 120, "the run wrote no metrics");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(130), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("interrupted at step"), "{text}");
    let pos = onnxsam::train::checkpoint::load(&run, None).unwrap().0;
    assert!(pos.batch_in_epoch > 0 && pos.epoch == 0, "checkpoint mid-epoch: {pos:?}");
    let o = train_cmd(&["--resume", run.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(rows(&straight), rows(&run), "metrics of an uninterrupted run vs Ctrl-C + resume");
    assert_eq!(std::fs::read(straight.join("model.onnx")).unwrap(), std::fs::read(run.join("model.onnx")).unwrap());
}

/// The PyTorch docs' default export writes the example's batch (1) into the file: `inspect` says
/// so in its verdict, `train` at another batch size is refused with the re-export before anything
/// runs, and at --batch-size 1 it trains and evaluates one sample at a time, on both engines and
/// from both exporters.
#[test]
fn a_file_with_a_fixed_batch_is_explained_and_trains_at_that_batch() {
    let t = tempdir();
    let n = 12;
    let x: Vec<f32> = (0..n * 16).map(|i| ((i * 37 % 23) as f32) / 23.0 - 0.5).collect();
    let y: Vec<i64> = (0..n as i64).map(|i| i % 3).collect();
    let data = t.path().join("data.npz");
    write_npz(
        &data,
        &[
            ("x".into(), HostTensor::f32(&[n, 1, 4, 4], x.clone())),
            ("y".into(), HostTensor::i64(&[n], y.clone())),
            ("x_test".into(), HostTensor::f32(&[4, 1, 4, 4], x[..64].to_vec())),
            ("y_test".into(), HostTensor::i64(&[4], y[..4].to_vec())),
        ],
    )
    .unwrap();
    for export in ["dynamo", "legacy"] {
        let m = fixture(&format!("fixed_batch/{export}.onnx"));
        let m = m.to_str().unwrap();
        let o = onnxsam(&["inspect", m]);
        let verdict = stdout(&o).lines().find(|l| l.starts_with("verdict:")).unwrap_or_default().to_string();
        assert!(verdict.contains("only at --batch-size 1") && verdict.contains("dynamic_shapes"), "{export}: {verdict}");
        let out = t.path().join(format!("{export}-8"));
        let o = train_cmd(&[m, "--data", data.to_str().unwrap(), "--batch-size", "4", "--max-steps", "2", "--out", out.to_str().unwrap()]);
        assert_bad_input(&o, m, "fixes the batch at 1");
        assert!(stderr(&o).contains("--batch-size 1"));
        assert!(!out.exists());
        for backend in ["tract", "ort"] {
            let out = t.path().join(format!("{export}-{backend}"));
            let o = train_cmd(&[
                m,
                "--data",
                data.to_str().unwrap(),
                "--batch-size",
                "1",
                "--epochs",
                "1",
                "--optimizer",
                "sam",
                "--lr",
                "0.1",
                "--backend",
                backend,
                "--out",
                out.to_str().unwrap(),
            ]);
            assert!(o.status.success(), "{export} on {backend}: {}", stderr(&o));
            let last = rows(&out).into_iter().rev().find(|r| r.contains_key("test_loss")).unwrap();
            assert!(last["test_loss"].as_f64().unwrap().is_finite());
            assert_eq!(rows(&out).iter().filter(|r| r["kind"] == "step").count(), n);
        }
        // eval evaluates it one sample at a time (its default batch would not fit)
        let o = onnxsam(&["eval", m, "--data", data.to_str().unwrap()]);
        assert!(o.status.success(), "{export} eval: {}", stderr(&o));
        // grad and step on a batch of 4 say so in one line before an engine runs
        let batch = t.path().join("batch4.npz");
        write_npz(
            &batch,
            &[("x".into(), HostTensor::f32(&[4, 1, 4, 4], x[..64].to_vec())), ("y".into(), HostTensor::i64(&[4], y[..4].to_vec()))],
        )
        .unwrap();
        for cmd in ["grad", "step"] {
            let g = t.path().join("g.npz");
            let o = onnxsam(&[cmd, m, "--batch", batch.to_str().unwrap(), "--out", g.to_str().unwrap(), "--backend", "tract"]);
            assert_bad_input(&o, "batch4.npz", "4 samples, but");
            assert!(stderr(&o).contains("fixes the batch at 1") && stderr(&o).contains("give a batch of 1"), "{cmd}: {}", stderr(&o));
        }
    }
    // a legacy export given dynamic_axes for its input alone keeps the output's batch of 1
    let m = fixture("fixed_batch/legacy_input_only.onnx");
    let m = m.to_str().unwrap();
    let verdict = stdout(&onnxsam(&["inspect", m])).lines().find(|l| l.starts_with("verdict:")).unwrap_or_default().to_string();
    assert!(verdict.contains("output '") && verdict.contains("output_names"), "{verdict}");
    let out = t.path().join("input-only");
    let o = train_cmd(&[m, "--data", data.to_str().unwrap(), "--batch-size", "4", "--max-steps", "2", "--out", out.to_str().unwrap()]);
    assert_bad_input(&o, m, "fixes the batch at 1 (output '");
}
