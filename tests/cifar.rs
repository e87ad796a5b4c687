//! CIFAR-10 on real images: the first 20 test images (foolbox's PNGs, re-encoded as a CIFAR-10
//! binary batch by tools/make_cifar_sample.py, which also wrote the values read from the PNGs).
mod common;

use std::path::Path;

use common::*;
use onnxsam::data::{self, Format, Kind};

fn reference() -> serde_json::Value {
    let r = std::fs::read_to_string(fixture("cifar10/reference.json")).unwrap();
    serde_json::from_str(&r).unwrap()
}

#[test]
fn cifar10_batch_reads_as_the_pngs_show() {
    let dir = fixture("cifar10");
    let l = data::load(&dir, None, &Default::default()).unwrap();
    assert_eq!(l.format, Format::Cifar);
    assert_eq!(l.kind, Kind::Cifar10);
    let d = &l.train; // a folder with only test_batch.bin trains on it
    let r = reference();
    let imgs = r["images"].as_array().unwrap();
    assert_eq!(d.len(), 20);
    assert_eq!(d.float_samples().unwrap().1, &[3, 32, 32]);
    assert_eq!(d.classes, 10);
    for (i, img) in imgs.iter().enumerate() {
        assert_eq!(d.labels().unwrap()[i], img["label"].as_i64().unwrap(), "label of {}", img["file"]);
        let x = &d.float_samples().unwrap().0[i * 3072..(i + 1) * 3072];
        for (c, m) in img["channel_means"].as_array().unwrap().iter().enumerate() {
            let mean = x[c * 1024..(c + 1) * 1024].iter().map(|&v| v as f64).sum::<f64>() / 1024.0 * 255.0;
            assert!((mean - m.as_f64().unwrap()).abs() < 1e-3, "{} channel {c}: {mean} vs {m}", img["file"]);
        }
        for p in img["probes"].as_array().unwrap() {
            let p: Vec<usize> = p.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
            let (c, y, xx, v) = (p[0], p[1], p[2], p[3]);
            let got = (x[c * 1024 + y * 32 + xx] * 255.0).round() as usize;
            assert_eq!(got, v, "{} pixel (channel {c}, row {y}, column {xx})", img["file"]);
        }
    }
}

#[test]
fn resnet8_trains_and_evaluates_on_real_cifar_images() {
    let t = tempfile::tempdir().unwrap();
    let run = t.path().join("run");
    let data = fixture("cifar10");
    let o = onnxsam(&[
        "train",
        model("resnet8").to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--optimizer",
        "sam",
        "--reweight",
        "1",
        "--batch-size",
        "10",
        "--epochs",
        "6",
        "--lr",
        "0.05",
        "--augment",
        "crop-flip",
        "--backend",
        "tract",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let rows = onnxsam::train::metrics::read(&run).unwrap();
    let losses: Vec<f64> = rows
        .iter()
        .filter(|r| r.get("kind").and_then(|k| k.as_str()) == Some("epoch"))
        .map(|r| r["train_loss"].as_f64().unwrap())
        .collect();
    assert_eq!(losses.len(), 6);
    // 20 images, 12 steps: the training loss falls well below chance (ln 10 ≈ 2.30)
    assert!(losses[5] < 0.8 * losses[0], "train loss per epoch {losses:?}");
    let o = onnxsam(&["eval", run.join("model.onnx").to_str().unwrap(), "--data", data.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let s = stdout(&o);
    assert!(s.contains("20 samples"), "{s}");
    // the trained model, with its running statistics, does better than chance on the images
    // without augmentation too
    let loss: f64 = s.split("loss ").nth(1).and_then(|a| a.split(',').next()).unwrap().parse().unwrap();
    assert!(loss < 2.2, "{s}");
}

#[test]
fn a_truncated_cifar_batch_is_one_line_naming_the_file() {
    let t = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("cifar10/test_batch.bin")).unwrap();
    let f = t.path().join("test_batch.bin");
    std::fs::write(&f, &bytes[..bytes.len() - 100]).unwrap();
    let e = format!("{:#}", data::load(Path::new(t.path()), None, &Default::default()).err().unwrap());
    assert!(e.contains("test_batch.bin") && e.contains("truncated"), "{e}");
}
