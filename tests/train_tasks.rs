//! `onnxsam train` on every task family (issue 12), each first step against PyTorch
//! (tools/reference_tasks.py, float64): a token-id transformer, regression with each float-target
//! loss, a two-input per-token tagger with padding labels, a per-pixel segmentation net, a model
//! that computes its own per-sample loss; and the
//! data sources ImageFolder and CSV.
mod common;

use std::path::{Path, PathBuf};

use common::*;
use onnxsam::tensor::{read_npz, HostTensor};

fn train(args: &[&str]) -> std::process::Output {
    let mut a = vec!["train"];
    a.extend_from_slice(args);
    onnxsam(&a)
}

fn rel(got: &[f64], want: &[f64]) -> f64 {
    let d = got.iter().zip(want).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
    let n = want.iter().map(|b| b * b).sum::<f64>().sqrt().max(1e-12);
    d / n
}

/// (task, model, options): the optimizer settings of tools/reference_tasks.py. A task's data and
/// reference are tests/fixtures/tasks/<task>/ (<task> up to an '@': the same task on another file).
fn tasks() -> Vec<(&'static str, PathBuf, Vec<&'static str>)> {
    let linreg = fixture("linreg/model.onnx");
    let mut t = vec![(
        "transformer_sam",
        model("transformer"),
        vec!["--optimizer", "sam", "--rho", "0.05", "--lr", "0.05", "--batch-size", "32"],
    )];
    for (task, loss) in [
        ("linreg_mse", vec!["--loss", "mse"]),
        ("linreg_l1", vec!["--loss", "l1"]),
        ("linreg_huber", vec!["--loss", "huber", "--huber-delta", "0.5"]),
        ("linreg_smooth_l1", vec!["--loss", "smooth-l1", "--huber-delta", "0.5"]),
        ("linreg_bce", vec!["--loss", "bce-with-logits"]),
    ] {
        let mut a = loss;
        a.extend(["--lr", "0.05", "--batch-size", "64"]);
        t.push((task, linreg.clone(), a));
    }
    t.push((
        "tagger_sam",
        fixture("tasks/tagger/model.onnx"),
        vec!["--ignore-index", "-100", "--optimizer", "sam", "--rho", "0.05", "--lr", "0.1", "--batch-size", "24"],
    ));
    t.push((
        "tagger_sam_sample",
        fixture("tasks/tagger/model.onnx"),
        vec![
            "--ignore-index",
            "-100",
            "--loss-reduction",
            "sample-mean",
            "--optimizer",
            "sam",
            "--rho",
            "0.05",
            "--lr",
            "0.1",
            "--batch-size",
            "24",
        ],
    ));
    // a causal language model (tied embeddings, classes last, padded sequences) as both
    // exporters write it, with the default reduction and with sample-mean
    for (task, file, extra) in [
        ("gpt2_sam@dynamo", "dynamo", vec![]),
        ("gpt2_sam@legacy", "legacy", vec!["--padding-idx", "transformer.wte.weight=none"]),
        ("gpt2_sam_sample@dynamo", "dynamo", vec!["--loss-reduction", "sample-mean"]),
        // as Hugging Face initializes it: the dynamo exporter's optimizer drops its zero biases
        ("gpt2_fresh_sam@dynamo_fresh", "dynamo_fresh", vec![]),
    ] {
        let mut a = vec!["--ignore-index", "-100", "--optimizer", "sam", "--rho", "0.05", "--lr", "0.1"];
        a.extend(["--batch-size", "24"]);
        a.extend(extra);
        t.push((task, fixture(&format!("tasks/gpt2/{file}.onnx")), a));
    }
    t.push((
        "seg_sgd",
        fixture("tasks/seg/model.onnx"),
        vec!["--ignore-index", "-100", "--lr", "0.1", "--batch-size", "16"],
    ));
    t.push((
        "own_loss_sgd",
        fixture("tasks/own_loss/model.onnx"),
        vec!["--loss", "output", "--lr", "0.05", "--batch-size", "32"],
    ));
    t
}

/// One full-batch step of every task on `engine`: parameters and loss equal PyTorch's.
fn first_steps_equal_pytorch(engine: &str) {
    let tmp = tempdir();
    let mut errors = Vec::new();
    for (task, m, opts) in tasks() {
        let run = tmp.path().join(format!("{}-{engine}", task.replace('@', "-")));
        let dir = task.split('@').next().unwrap();
        let data = fixture(&format!("tasks/{dir}/data.npz"));
        let mut a = vec![m.to_str().unwrap(), "--data", data.to_str().unwrap(), "--max-steps", "1"];
        a.extend(opts.iter().copied());
        a.extend(["--backend", engine, "--out", run.to_str().unwrap()]);
        let o = train(&a);
        if o.status.code() != Some(0) {
            errors.push(format!("{task}: exit {:?}: {}", o.status.code(), stderr(&o)));
            continue;
        }
        let want = read_npz(&fixture(&format!("tasks/{dir}/ref.npz"))).unwrap();
        let ckpt = onnxsam::train::checkpoint::list(&run).unwrap().last().unwrap().1.with_extension("npz");
        let got = read_npz(&ckpt).unwrap();
        for (k, w) in &want {
            let Some(p) = k.strip_prefix("next/") else { continue };
            let Some(g) = got.get(p) else {
                errors.push(format!("{task}: no parameter '{p}' in the checkpoint"));
                continue;
            };
            let (g, w) = (g.to_f64(), w.to_f64());
            let e = rel(&g, &w);
            let init = want[&format!("init/{p}")].to_f64();
            let du: Vec<f64> = g.iter().zip(&init).map(|(a, b)| a - b).collect();
            let dw: Vec<f64> = w.iter().zip(&init).map(|(a, b)| a - b).collect();
            let eu = rel(&du, &dw);
            if e > 1e-5 || eu > 2e-3 {
                errors.push(format!("{task}: {p}: ‖Δ‖/‖ref‖ = {e:.2e}, update {eu:.2e}"));
            }
        }
        let r = rows(&run);
        let loss = r[0]["loss"].as_f64().unwrap();
        let wl = want["loss"].to_f64()[0];
        if (loss - wl).abs() > 1e-5 * wl.abs().max(1.0) {
            errors.push(format!("{task}: loss {loss} vs PyTorch {wl}"));
        }
        // the task's metric: accuracy of classes (per token/pixel), MAE of regression
        let metric = if task.starts_with("linreg_bce") || task.starts_with("own_loss") {
            None
        } else if task.starts_with("linreg") {
            Some("mae")
        } else {
            Some("acc")
        };
        for m in ["acc", "mae"] {
            if r[0].contains_key(m) != (metric == Some(m)) {
                errors.push(format!("{task}: metrics row {:?} (expected the metric {metric:?})", r[0]));
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
fn first_step_of_every_task_equals_pytorch_on_tract() {
    first_steps_equal_pytorch("tract");
}

#[test]
fn first_step_of_every_task_equals_pytorch_on_ort() {
    first_steps_equal_pytorch("ort");
}

#[test]
fn bad_task_data_gets_one_line() {
    let tmp = tempdir();
    let d = tmp.path();
    let out = |n: &str| d.join(n).to_str().unwrap().to_string();
    let npz = |name: &str, arrays: &[(&str, HostTensor)]| -> PathBuf {
        let p = d.join(name);
        let v: Vec<(String, HostTensor)> = arrays.iter().map(|(k, t)| (k.to_string(), t.clone())).collect();
        onnxsam::tensor::write_npz(&p, &v).unwrap();
        p
    };
    let tr = model("transformer");
    // float token ids
    let p = npz(
        "floatids.npz",
        &[("ids", HostTensor::f32(&[2, 16], vec![0.0; 32])), ("y", HostTensor::i64(&[2], vec![0, 1]))],
    );
    let o = train(&[tr.to_str().unwrap(), "--data", p.to_str().unwrap(), "--max-steps", "1", "--out", &out("r1")]);
    assert_bad_input(&o, "floatids.npz", "is float32 but the model's input 'ids' is int64");
    // float labels for cross-entropy
    let p = npz(
        "floaty.npz",
        &[("ids", HostTensor::i64(&[2, 16], vec![0; 32])), ("y", HostTensor::f32(&[2], vec![0.0, 1.0]))],
    );
    let o = train(&[tr.to_str().unwrap(), "--data", p.to_str().unwrap(), "--max-steps", "1", "--out", &out("r2")]);
    assert_bad_input(&o, "floaty.npz", "regression loss");
    // a missing input of a two-input model
    let tagger = fixture("tasks/tagger/model.onnx");
    let p = npz(
        "nomask.npz",
        &[("ids", HostTensor::i64(&[2, 16], vec![0; 32])), ("y", HostTensor::i64(&[2, 16], vec![0; 32]))],
    );
    let o = train(&[tagger.to_str().unwrap(), "--data", p.to_str().unwrap(), "--max-steps", "1", "--out", &out("r3")]);
    assert_bad_input(&o, "nomask.npz", "no array 'mask'");
    // per-token labels of the wrong shape
    let mask = HostTensor { shape: vec![2, 16], data: onnxsam::tensor::Data::Bool(vec![true; 32]) };
    let p = npz(
        "shortlabels.npz",
        &[
            ("ids", HostTensor::i64(&[2, 16], vec![0; 32])),
            ("mask", mask.clone()),
            ("y", HostTensor::i64(&[2], vec![0, 1])),
        ],
    );
    let o = train(&[tagger.to_str().unwrap(), "--data", p.to_str().unwrap(), "--max-steps", "1", "--out", &out("r4")]);
    assert_bad_input(&o, "shortlabels.npz", "per position");
    // a label out of range that is not the ignore index
    let mut y = vec![0i64; 32];
    y[5] = 7;
    let p = npz(
        "range.npz",
        &[("ids", HostTensor::i64(&[2, 16], vec![0; 32])), ("mask", mask), ("y", HostTensor::i64(&[2, 16], y))],
    );
    let o = train(&[
        tagger.to_str().unwrap(),
        "--data",
        p.to_str().unwrap(),
        "--ignore-index",
        "-100",
        "--max-steps",
        "1",
        "--out",
        &out("r5"),
    ]);
    assert_bad_input(&o, "range.npz", "label 7");
    // NaN targets of a regression
    let p = npz(
        "nan.npz",
        &[("x", HostTensor::f32(&[2, 5], vec![0.0; 10])), ("y", HostTensor::f32(&[2], vec![f32::NAN, 1.0]))],
    );
    let lin = fixture("linreg/model.onnx");
    let o = train(&[
        lin.to_str().unwrap(),
        "--data",
        p.to_str().unwrap(),
        "--loss",
        "mse",
        "--max-steps",
        "1",
        "--out",
        &out("r6"),
    ]);
    assert_bad_input(&o, "nan.npz", "NaN");
    // token ids outside the embedding table (PyTorch's nn.Embedding raises; Gather would wrap)
    for (name, id) in [("oov.npz", 64i64), ("negative.npz", -3)] {
        let mut ids = vec![1i64; 32];
        ids[20] = id;
        let p = npz(name, &[("ids", HostTensor::i64(&[2, 16], ids)), ("y", HostTensor::i64(&[2], vec![0, 1]))]);
        let o = train(&[tr.to_str().unwrap(), "--data", p.to_str().unwrap(), "--max-steps", "1", "--out", &out("r7")]);
        assert_bad_input(&o, name, &format!("holds id {id} (sample 1), outside the 64 rows"));
    }
    // no samples
    let p = npz("empty.npz", &[("ids", HostTensor::i64(&[0, 16], vec![])), ("y", HostTensor::i64(&[0], vec![]))]);
    let o = train(&[tr.to_str().unwrap(), "--data", p.to_str().unwrap(), "--max-steps", "1", "--out", &out("r8")]);
    assert_bad_input(&o, "empty.npz", "no samples");
    // --ignore-index needs per-position labels; crop-flip would move images but not pixel labels
    let tdata = fixture("tasks/transformer_sam/data.npz");
    let o = train(&[
        tr.to_str().unwrap(),
        "--data",
        tdata.to_str().unwrap(),
        "--ignore-index",
        "0",
        "--max-steps",
        "1",
        "--out",
        &out("r9"),
    ]);
    assert_bad_input(&o, "--ignore-index", "drop the rows");
    let seg = fixture("tasks/seg/model.onnx");
    let sdata = fixture("tasks/seg_sgd/data.npz");
    let o = train(&[
        seg.to_str().unwrap(),
        "--data",
        sdata.to_str().unwrap(),
        "--ignore-index",
        "-100",
        "--augment",
        "crop-flip",
        "--max-steps",
        "1",
        "--out",
        &out("r10"),
    ]);
    assert_bad_input(&o, "seg_sgd/data.npz", "per-position labels");
    let o = train(&[
        tr.to_str().unwrap(),
        "--data",
        tdata.to_str().unwrap(),
        "--val-split",
        "0.001",
        "--max-steps",
        "1",
        "--out",
        &out("r11"),
    ]);
    assert_bad_input(&o, "--val-split", "leaves 0 for validation");
    for r in ["r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9", "r10", "r11"] {
        assert!(!d.join(r).join("config.json").exists(), "{r}: nothing is written for bad data");
    }
}

// ---------------------------------------------------------------------------------------------
// ImageFolder and CSV

/// MNIST's first `per_class` training images of each digit as PNGs in OUT/<digit>/NNNNN.png.
fn mnist_image_folder(out: &Path, per_class: usize, test: bool) -> Vec<(Vec<u8>, i64)> {
    let d = onnxsam::data::idx::read_mnist_dir(&root().join("data/mnist"), test)
        .unwrap_or_else(|e| panic!("MNIST is needed for this test: run tools/fetch-data.sh mnist ({e})"));
    let (x, _) = d.float_samples().unwrap();
    let y = d.labels().unwrap();
    let mut count = [0usize; 10];
    let mut kept = Vec::new();
    for i in 0..d.len() {
        let c = y[i] as usize;
        if count[c] == per_class {
            continue;
        }
        count[c] += 1;
        let px: Vec<u8> = x[i * 784..(i + 1) * 784].iter().map(|&v| (v * 255.0).round() as u8).collect();
        let dir = out.join(c.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        image::GrayImage::from_raw(28, 28, px.clone()).unwrap().save(dir.join(format!("{i:05}.png"))).unwrap();
        kept.push((px, c as i64));
    }
    kept
}

#[test]
fn image_folder_trains_as_the_same_images_in_an_npz() {
    let tmp = tempdir();
    let root_dir = tmp.path().join("digits");
    let train_imgs = mnist_image_folder(&root_dir.join("train"), 4, false);
    mnist_image_folder(&root_dir.join("test"), 2, true);
    // the same images, in ImageFolder's order (class folders sorted, then file names), as an .npz
    let mut order: Vec<usize> = (0..train_imgs.len()).collect();
    order.sort_by_key(|&i| train_imgs[i].1);
    let n = train_imgs.len();
    let x: Vec<f32> = order.iter().flat_map(|&i| train_imgs[i].0.iter().map(|&p| p as f32 / 255.0)).collect();
    let y: Vec<i64> = order.iter().map(|&i| train_imgs[i].1).collect();
    let npz = tmp.path().join("digits.npz");
    onnxsam::tensor::write_npz(
        &npz,
        &[("x".into(), HostTensor::f32(&[n, 1, 28, 28], x)), ("y".into(), HostTensor::i64(&[n], y))],
    )
    .unwrap();
    let common = ["--max-steps", "3", "--batch-size", "16", "--normalize", "0.1307,0.3081", "--backend", "tract"];
    let a = tmp.path().join("run-folder");
    let mut args = vec!["models/cnn.onnx", "--data", root_dir.to_str().unwrap(), "--out", a.to_str().unwrap()];
    args.extend(common);
    let o = train(&args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let b = tmp.path().join("run-npz");
    let mut args = vec!["models/cnn.onnx", "--data", npz.to_str().unwrap(), "--out", b.to_str().unwrap()];
    args.extend(common);
    let o = train(&args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // and decoded batch by batch on the prefetch thread (a folder over the cache size)
    let l = tmp.path().join("run-lazy");
    let mut args = vec!["models/cnn.onnx", "--data", root_dir.to_str().unwrap(), "--out", l.to_str().unwrap()];
    args.extend(common);
    args.extend(["--image-cache-mb", "0"]);
    let o = train(&args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("decoded batch by batch"), "{}", stderr(&o));
    let steps = |r: &Path| rows(r).into_iter().filter(|x| x["kind"] == "step").collect::<Vec<_>>();
    assert_eq!(steps(&a), steps(&b), "ImageFolder and .npz of the same images train alike");
    assert_eq!(rows(&a), rows(&l), "decoded up front or batch by batch: the same run");
    // the test split (ROOT/test) was evaluated, and the class mapping written
    assert!(rows(&a).iter().any(|r| r.contains_key("test_acc")), "{:?}", rows(&a));
    let classes: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("classes.json")).unwrap()).unwrap();
    assert_eq!(classes["classes"][3], "3");
    // a corrupt image is named, and nothing is trained
    std::fs::write(root_dir.join("train").join("5").join("bad.png"), b"not a png").unwrap();
    let c = tmp.path().join("run-bad");
    let o = train(&[
        "models/cnn.onnx",
        "--data",
        root_dir.to_str().unwrap(),
        "--max-steps",
        "1",
        "--out",
        c.to_str().unwrap(),
    ]);
    assert_bad_input(&o, "bad.png", "cannot decode");
    assert!(!c.join("config.json").exists());
    let o = train(&[
        "models/cnn.onnx",
        "--data",
        root_dir.to_str().unwrap(),
        "--max-steps",
        "1",
        "--image-cache-mb",
        "0",
        "--out",
        c.to_str().unwrap(),
    ]);
    assert_bad_input(&o, "bad.png", "cannot decode");
    assert!(!c.join("config.json").exists(), "headers are checked before anything is written");
}

#[test]
fn csv_table_trains_as_the_same_numbers_in_an_npz() {
    let tmp = tempdir();
    let d = tmp.path();
    // linear-regression data: five features, the target column third (features keep file order)
    let mut csv = String::from("f0,f1,price,f2,f3,f4\n");
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for i in 0..40 {
        let f: Vec<f32> = (0..5).map(|k| (((i * 7 + k * 13) % 17) as f32 - 8.0) / 4.0).collect();
        let t = f[0] - 2.0 * f[1] + 0.5 * f[2] + 3.0 * f[4];
        csv += &format!("{},{},{},{},{},{}\n", f[0], f[1], t, f[2], f[3], f[4]);
        xs.extend(&f);
        ys.push(t);
    }
    std::fs::write(d.join("houses.csv"), &csv).unwrap();
    let npz = d.join("houses.npz");
    onnxsam::tensor::write_npz(
        &npz,
        &[("x".into(), HostTensor::f32(&[40, 5], xs)), ("y".into(), HostTensor::f32(&[40], ys))],
    )
    .unwrap();
    let lin = fixture("linreg/model.onnx");
    let run = |data: &Path, out: &str, extra: &[&str]| {
        let o = d.join(out);
        let mut a = vec![lin.to_str().unwrap(), "--data", data.to_str().unwrap(), "--loss", "mse", "--max-steps", "4"];
        a.extend(["--batch-size", "10", "--lr", "0.01", "--backend", "tract", "--out", o.to_str().unwrap()]);
        a.extend(extra);
        let r = train(&a);
        assert_eq!(r.status.code(), Some(0), "{}", stderr(&r));
        o
    };
    let a = run(&d.join("houses.csv"), "run-csv", &["--target", "price"]);
    let b = run(&npz, "run-npz", &[]);
    assert_eq!(rows(&a), rows(&b), "CSV and .npz of the same numbers train alike");
    // --normalize standard: the training split's statistics, saved and used by eval
    let c = run(&d.join("houses.csv"), "run-std", &["--target", "price", "--normalize", "standard"]);
    let n: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(c.join("normalization.json")).unwrap()).unwrap();
    assert_eq!(n["mean"].as_array().unwrap().len(), 5);
    let o = onnxsam(&[
        "eval",
        c.join("model.onnx").to_str().unwrap(),
        "--data",
        d.join("houses.csv").to_str().unwrap(),
        "--target",
        "price",
        "--loss",
        "mse",
        "--backend",
        "tract",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("mean absolute error"), "{}", stdout(&o));
    // the statistics normalization.json holds are the ones applied: the same loss as training's last
    // epoch on the same table, and another without them
    let with = stdout(&o);
    let o = onnxsam(&[
        "eval",
        c.join("model.onnx").to_str().unwrap(),
        "--data",
        d.join("houses.csv").to_str().unwrap(),
        "--target",
        "price",
        "--loss",
        "mse",
        "--normalize",
        "none",
        "--backend",
        "tract",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_ne!(with, stdout(&o), "normalization.json makes a difference");
    let o = onnxsam(&[
        "eval",
        c.join("model.onnx").to_str().unwrap(),
        "--data",
        d.join("houses.csv").to_str().unwrap(),
        "--target",
        "price",
        "--loss",
        "mse",
        "--normalize",
        "standard",
        "--backend",
        "tract",
    ]);
    assert_bad_input(&o, "--normalize standard", "normalization.json");
    // bad cells are named
    std::fs::write(d.join("bad.csv"), "a,b,c,d,e,price\n1,2,3,4,5,6\n1,2,x,4,5,6\n").unwrap();
    let o = train(&[
        lin.to_str().unwrap(),
        "--data",
        d.join("bad.csv").to_str().unwrap(),
        "--target",
        "price",
        "--loss",
        "mse",
        "--max-steps",
        "1",
        "--out",
        d.join("r-bad").to_str().unwrap(),
    ]);
    assert_bad_input(&o, "bad.csv", "line 3, column 'c'");
    let o = train(&[
        lin.to_str().unwrap(),
        "--data",
        d.join("houses.csv").to_str().unwrap(),
        "--target",
        "cost",
        "--loss",
        "mse",
        "--max-steps",
        "1",
        "--out",
        d.join("r-col").to_str().unwrap(),
    ]);
    assert_bad_input(&o, "houses.csv", "no column 'cost'");
}

/// m-SAM sums the task metric over its micro-batches: the MAE of a first m-SAM step (measured at
/// θ, like every first step) equals plain SAM's.
#[test]
fn m_sam_reports_the_batch_metric() {
    let tmp = tempdir();
    let lin = fixture("linreg/model.onnx");
    let data = fixture("tasks/linreg_mse/data.npz");
    let run = |name: &str, extra: &[&str]| {
        let out = tmp.path().join(name);
        let mut a = vec![lin.to_str().unwrap(), "--data", data.to_str().unwrap(), "--loss", "mse", "--max-steps", "1"];
        a.extend(["--batch-size", "64", "--optimizer", "sam", "--backend", "tract", "--out", out.to_str().unwrap()]);
        a.extend(extra);
        let o = train(&a);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        rows(&out)[0]["mae"].as_f64().unwrap()
    };
    let full = run("sam", &[]);
    let micro = run("msam", &["--micro-batch", "16"]);
    assert!((full - micro).abs() < 1e-5 * full, "m-SAM MAE {micro} vs SAM {full}");
}

/// Mean IoU and per-pixel accuracy of a segmentation net's evaluation equal those computed here
/// from its logits (`onnxsam run`) and the labels.
#[test]
fn dense_evaluation_reports_pixel_accuracy_and_mean_iou() {
    let tmp = tempdir();
    let seg = fixture("tasks/seg/model.onnx");
    let mut d = read_npz(&fixture("tasks/seg_sgd/data.npz")).unwrap();
    let x = d.remove("x").unwrap();
    let y = d.remove("y").unwrap();
    let data = tmp.path().join("seg.npz");
    onnxsam::tensor::write_npz(
        &data,
        &[("x".into(), x.clone()), ("y".into(), y.clone()), ("x_test".into(), x.clone()), ("y_test".into(), y.clone())],
    )
    .unwrap();
    let run = tmp.path().join("run");
    let o = train(&[
        seg.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--ignore-index",
        "-100",
        "--lr",
        "0",
        "--max-steps",
        "1",
        "--batch-size",
        "16",
        "--backend",
        "tract",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let epoch = rows(&run).into_iter().find(|r| r["kind"] == "epoch").unwrap();
    // the logits of the (unchanged: lr 0) model
    let input = tmp.path().join("x.npz");
    onnxsam::tensor::write_npz(&input, &[("x".into(), x)]).unwrap();
    let out = tmp.path().join("logits.npz");
    let o = run_cmd(&seg, &input, &out, "tract");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let logits = read_npz(&out).unwrap().into_values().next().unwrap();
    let (n, c, p) = (logits.shape[0], logits.shape[1], logits.shape[2] * logits.shape[3]);
    let l = logits.to_f64();
    let yv = y.to_f64();
    let (mut inter, mut union) = (vec![0.0; c], vec![0.0; c]);
    let mut acc_sum = 0.0;
    for s in 0..n {
        let (mut kept, mut right) = (0.0, 0.0);
        for q in 0..p {
            let label = yv[s * p + q];
            if label < 0.0 {
                continue;
            }
            let pred = (0..c).max_by(|&a, &b| l[(s * c + a) * p + q].total_cmp(&l[(s * c + b) * p + q])).unwrap();
            let label = label as usize;
            kept += 1.0;
            if pred == label {
                right += 1.0;
                inter[label] += 1.0;
                union[label] += 1.0;
            } else {
                union[label] += 1.0;
                union[pred] += 1.0;
            }
        }
        acc_sum += right / kept;
    }
    let ious: Vec<f64> = (0..c).filter(|&k| union[k] > 0.0).map(|k| inter[k] / union[k]).collect();
    let miou = ious.iter().sum::<f64>() / ious.len() as f64;
    let got = epoch["test_miou"].as_f64().unwrap();
    assert!((got - miou).abs() < 1e-9, "mean IoU {got} vs {miou}");
    let acc = epoch["test_acc"].as_f64().unwrap();
    assert!((acc - acc_sum / n as f64).abs() < 1e-6, "pixel accuracy {acc} vs {}", acc_sum / n as f64);
}

/// A language model's labels must give one label per token: labels shorter than the sequence
/// (which GatherElements would silently read as the first positions) are refused naming the
/// file, and padding labels without --ignore-index get the flag named.
#[test]
fn language_model_labels_are_one_per_token() {
    use onnxsam::tensor::write_npz;
    let m = fixture("tasks/gpt2/dynamo.onnx");
    let d = read_npz(&fixture("tasks/gpt2_sam/data.npz")).unwrap();
    let ids = d["input_ids"].clone();
    let y = d["y"].to_f64();
    let t = tempdir();
    let short: Vec<i64> = (0..24).flat_map(|r| (0..10).map(move |c| (r, c))).map(|(r, c)| y[r * 16 + c] as i64).collect();
    let p = t.path().join("short.npz");
    write_npz(&p, &[("input_ids".into(), ids.clone()), ("y".into(), HostTensor::i64(&[24, 10], short))]).unwrap();
    let g = t.path().join("g.npz");
    for backend in ["tract", "ort"] {
        let o = grad_cmd(&m, &p, &g, &["--ignore-index", "-100", "--backend", backend]);
        assert_bad_input(&o, "short.npz", "one label per position");
    }
    let o = grad_cmd(&m, &fixture("tasks/gpt2_sam/data.npz"), &g, &["--backend", "tract"]);
    assert_bad_input(&o, "data.npz", "pass --ignore-index -100");
    // ids beyond the vocabulary, found through GPT-2's view of its ids and the tied table's
    // other name (the dynamo file reads lm_head.weight)
    let mut big = ids.clone();
    if let onnxsam::tensor::Data::I64(v) = &mut big.data {
        v[3] = 40;
    }
    let p = t.path().join("big.npz");
    write_npz(&p, &[("input_ids".into(), big), ("y".into(), d["y"].clone())]).unwrap();
    for file in ["dynamo", "legacy"] {
        let m = fixture(&format!("tasks/gpt2/{file}.onnx"));
        let mut a = vec!["--ignore-index", "-100", "--backend", "tract"];
        if file == "legacy" {
            a.extend(["--padding-idx", "transformer.wte.weight=none"]);
        }
        assert_bad_input(&grad_cmd(&m, &p, &g, &a), "big.npz", "outside the 32 rows");
    }
}

/// `export --format safetensors`: PyTorch's state_dict names and layouts, a tied parameter under
/// both of its names (GPT-2's legacy file names one), the trained values of the checkpoint, and
/// BatchNorm's num_batches_tracked (tools/check_safetensors.py loads these into the PyTorch models
/// strictly and compares their forward with the trained ONNX file's).
#[test]
fn safetensors_export_is_pytorchs_state_dict() {
    let t = tempdir();
    let read = |p: &Path| -> std::collections::BTreeMap<String, (Vec<usize>, Vec<u8>)> {
        let bytes = std::fs::read(p).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        st.tensors().into_iter().map(|(n, v)| (n, (v.shape().to_vec(), v.data().to_vec()))).collect()
    };
    let f32s = |b: &[u8]| -> Vec<f64> { b.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect() };
    // GPT-2, legacy file: the tied table stored twice (one transposed), named once
    let run = t.path().join("gpt2");
    let m = fixture("tasks/gpt2/legacy.onnx");
    let data = fixture("tasks/gpt2_sam/data.npz");
    let o = train(&[
        m.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--ignore-index",
        "-100",
        "--padding-idx",
        "transformer.wte.weight=none",
        "--max-steps",
        "2",
        "--batch-size",
        "12",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let st = t.path().join("gpt2.safetensors");
    let o = onnxsam(&["export", run.to_str().unwrap(), "--format", "safetensors", "-o", st.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let got = read(&st);
    let ckpt = read_npz(&onnxsam::train::checkpoint::list(&run).unwrap().last().unwrap().1.with_extension("npz")).unwrap();
    let (wte, head) = (&got["transformer.wte.weight"], &got["lm_head.weight"]);
    assert_eq!(wte.0, vec![32, 16]);
    assert_eq!(wte, head, "the tied weight under both names");
    assert_eq!(f32s(&wte.1), ckpt["transformer.wte.weight"].to_f64(), "the trained values");
    assert_eq!(got["transformer.h.0.attn.c_attn.weight"].0, vec![16, 48], "Conv1D's [in, out] layout");
    assert_eq!(got.len(), 17);
    // BatchNorm: running statistics and num_batches_tracked (2 steps × --accumulate 2)
    let run = t.path().join("bn");
    let z = fixture("zoo/resnet18");
    let (m, data) = (z.join("dynamo_noopt.onnx"), z.join("batch.npz"));
    let o = train(&[
        m.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--max-steps",
        "2",
        "--batch-size",
        "8",
        "--accumulate",
        "2",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let st = t.path().join("bn.safetensors");
    let o = onnxsam(&["export", run.to_str().unwrap(), "--format", "safetensors", "-o", st.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let got = read(&st);
    let tracked: Vec<&String> = got.keys().filter(|k| k.ends_with(".num_batches_tracked")).collect();
    assert!(!tracked.is_empty(), "{:?}", got.keys().collect::<Vec<_>>());
    for k in tracked {
        assert_eq!(got[k].1, 4i64.to_le_bytes().to_vec(), "{k}");
        let bn = k.strip_suffix(".num_batches_tracked").unwrap();
        assert!(got.contains_key(&format!("{bn}.running_mean")) && got.contains_key(&format!("{bn}.weight")), "{bn}");
    }
}
