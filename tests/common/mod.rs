#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const MODELS: &[&str] = &["mlp", "cnn", "resnet8", "transformer"];

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn model(name: &str) -> PathBuf {
    root().join("models").join(format!("{name}.onnx"))
}

pub fn fixture(rel: &str) -> PathBuf {
    root().join("tests/fixtures").join(rel)
}

pub fn onnxsam(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_onnxsam")).args(args).output().expect("run onnxsam")
}

pub fn onnxsam_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_onnxsam"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run onnxsam")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Exit code 2, exactly one line on stderr that names `file` and contains `what`, no panic.
pub fn assert_bad_input(o: &Output, file: &str, what: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "expected exit 2, got {:?}; stderr: {err}", o.status.code());
    let lines: Vec<&str> = err.lines().filter(|l| !l.starts_with("backend:")).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {err}");
    assert!(lines[0].starts_with("onnxsam: error: "), "{err}");
    assert!(lines[0].contains(file), "error should name {file}: {err}");
    assert!(lines[0].to_lowercase().contains(&what.to_lowercase()), "error should say '{what}': {err}");
    assert!(!err.contains("panicked") && !err.contains("backtrace") && !err.contains("internal error"), "{err}");
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// `onnxsam grad MODEL --batch BATCH --out OUT EXTRA…`
pub fn grad_cmd(model: &Path, batch: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args =
        vec!["grad", model.to_str().unwrap(), "--batch", batch.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    onnxsam(&args)
}

/// `onnxsam run MODEL --input INPUT --output OUT --backend BACKEND`
pub fn run_cmd(model: &Path, input: &Path, out: &Path, backend: &str) -> Output {
    onnxsam(&[
        "run",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--backend",
        backend,
    ])
}

/// metrics.jsonl rows without the wall-clock and memory columns (machine measurements).
pub fn rows(run: &Path) -> Vec<serde_json::Map<String, serde_json::Value>> {
    onnxsam::train::metrics::read(run)
        .unwrap()
        .into_iter()
        .map(|mut r| {
            r.remove("seconds");
            r.remove("data_wait");
            r.remove("peak_rss_mib");
            r.remove("allreduce_ms");
            r.remove("allreduce_wait_ms");
            r
        })
        .collect()
}
