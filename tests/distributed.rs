//! Data-parallel training over MPI (`--features mpi`; needs `mpirun`, e.g. Debian's openmpi-bin):
//! 2 ranks × batch b against 1 process × batch 2b over 5 steps on an MNIST subset — SGD, AdamW
//! (optimizer state included), SAM with --sync-ascent, RW-SAM with --sync-ascent
//! --global-weights, and per-rank-ascent SAM against m-SAM with m = b — plus resume, and the
//! faults: a rank that dies, a NaN on one rank, a rank that drifts, ranks that disagree at start.
#![cfg(feature = "mpi")]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use common::*;
use onnxsam::data::idx;
use onnxsam::tensor::{read_npz, write_npz, HostTensor};

/// MNIST's first `n` training and 100 test images (x float32 in [0, 1], y int64).
fn mnist_subset(dir: &Path, n: usize) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mnist = root().join("data/mnist");
    let train = idx::read_mnist_dir(&mnist, false)
        .unwrap_or_else(|e| panic!("MNIST is needed for this test: run tools/fetch-data.sh mnist ({e})"))
        .head(n)
        .unwrap();
    let test = idx::read_mnist_dir(&mnist, true).unwrap().head(100).unwrap();
    let p = dir.join("mnist.npz");
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

/// `mpirun -np N onnxsam ARGS` (as root where CI runs, oversubscribing 2 cores), with `env`.
fn mpirun(n: usize, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new("mpirun");
    c.args(["--oversubscribe", "-np", &n.to_string()]);
    c.env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    c.env("OMPI_MCA_rmaps_base_oversubscribe", "1");
    for (k, v) in env {
        c.env(k, v);
    }
    c.arg(env!("CARGO_BIN_EXE_onnxsam")).args(args);
    c.output().expect("mpirun (install OpenMPI: apt-get install openmpi-bin libopenmpi-dev)")
}

/// `train mlp.onnx --data DATA --out OUT --batch-size B` (MNIST normalization, tract, 1 thread) EXTRA…
fn train_args(data: &Path, out: &Path, batch: usize, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec!["train".into(), model("mlp").display().to_string()];
    for x in
        ["--data", &data.display().to_string(), "--out", &out.display().to_string(), "--batch-size", &batch.to_string()]
    {
        a.push(x.to_string());
    }
    for x in ["--normalize", "0.1307,0.3081", "--backend", "tract", "--threads", "1"].iter().chain(extra) {
        a.push(x.to_string());
    }
    a
}

fn run_ranks(n: usize, data: &Path, out: &Path, batch: usize, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let args = train_args(data, out, batch, extra);
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    mpirun(n, &args, env)
}

fn run_one(data: &Path, out: &Path, batch: usize, extra: &[&str]) -> Output {
    let args = train_args(data, out, batch, extra);
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    onnxsam(&args)
}

fn ok(o: &Output, what: &str) {
    assert!(o.status.success(), "{what} failed: {}\n{}", stderr(o), stdout(o));
}

fn checkpoint(run: &Path, step: u64) -> std::collections::BTreeMap<String, HostTensor> {
    read_npz(&run.join(format!("checkpoints/step-{step:08}.npz"))).unwrap()
}

/// The largest relative difference (max |a − b| / max |b|) over the tensors both hold, and how
/// many they share.
fn max_rel(
    a: &std::collections::BTreeMap<String, HostTensor>,
    b: &std::collections::BTreeMap<String, HostTensor>,
) -> (f64, usize) {
    let mut worst = 0.0f64;
    let mut shared = 0;
    for (k, x) in a {
        let Some(y) = b.get(k) else { continue };
        shared += 1;
        let (x, y) = (x.to_f64(), y.to_f64());
        let d = x.iter().zip(&y).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
        let s = y.iter().map(|q| q.abs()).fold(0.0, f64::max).max(1e-12);
        worst = worst.max(d / s);
    }
    (worst, shared)
}

/// 2 ranks × 32 with `two` against one process × 64 with `one`, 5 steps: parameters and
/// optimizer state within `tol`. Returns the 2-rank checkpoint.
fn equal_over_5_steps(
    data: &Path,
    two: &[&str],
    one: &[&str],
    tol: f64,
) -> std::collections::BTreeMap<String, HostTensor> {
    let t = tempdir();
    let (r2, r1) = (t.path().join("two"), t.path().join("one"));
    let steps = ["--max-steps", "5"];
    let o = run_ranks(2, data, &r2, 32, &[two, &steps].concat(), &[]);
    ok(&o, "2 ranks");
    ok(&run_one(data, &r1, 64, &[one, &steps].concat()), "1 process");
    let (a, b) = (checkpoint(&r2, 5), checkpoint(&r1, 5));
    let (worst, shared) = max_rel(&a, &b);
    // parameters and every state tensor both carry (momentum, Adam's moments; m-SAM's one-process
    // checkpoint also holds its micro-batch accumulator)
    assert!(shared >= 6 && shared == a.len().min(b.len()), "{shared} of {} and {} tensors shared", a.len(), b.len());
    assert!(worst <= tol, "2 ranks × 32 {two:?} vs 1 × 64 {one:?}: worst relative difference {worst:e} > {tol:e}");
    a
}

#[test]
fn two_ranks_step_as_one_process_of_twice_the_batch() {
    let t = tempdir();
    let data = mnist_subset(t.path(), 512);
    // SGD with momentum and weight decay
    let sgd = ["--lr", "0.05", "--momentum", "0.9", "--weight-decay", "5e-4"];
    equal_over_5_steps(&data, &sgd, &sgd, 1e-5);
    // AdamW: its moments and step count identical (every rank's checksum is compared each step)
    let adamw = ["--optimizer", "adamw", "--lr", "1e-3", "--weight-decay", "0.01", "--check-every", "1"];
    equal_over_5_steps(&data, &adamw, &adamw, 1e-4);
    // SAM with one ε from the all-reduced ascent gradient is SAM on the global batch
    let sam = ["--optimizer", "sam", "--rho", "0.05", "--lr", "0.05", "--momentum", "0.9"];
    let synced = equal_over_5_steps(&data, &[&sam[..], &["--sync-ascent"]].concat(), &sam, 1e-5);
    // SAM with per-rank ascent (the default) is m-SAM with m = the per-rank batch …
    let per_rank = equal_over_5_steps(&data, &sam, &[&sam[..], &["--micro-batch", "32"]].concat(), 1e-5);
    // … which is not SAM on the global batch
    let (d, _) = max_rel(&per_rank, &synced);
    assert!(d > 1e-3, "per-rank and synchronized ascent should differ, differ by {d:e}");
    // RW-SAM with weights over all ranks and one ε is RW-SAM on the global batch
    let rw = [&sam[..], &["--reweight", "1"]].concat();
    equal_over_5_steps(&data, &[&rw[..], &["--sync-ascent", "--global-weights"]].concat(), &rw, 1e-5);
    // m-SAM's micro-batches within each rank
    let msam = [&sam[..], &["--micro-batch", "16"]].concat();
    equal_over_5_steps(&data, &msam, &msam, 1e-5);
}

/// A language model's padded sequences (tests/fixtures/tasks/gpt2): the global batch's loss is
/// the mean over all its kept tokens, so ranks weigh by their kept tokens, not their rows, and 2
/// ranks × 12 step as 1 process × 24 (the ranks' shares keep different numbers of tokens).
#[test]
fn language_model_ranks_weigh_by_kept_tokens() {
    let t = tempdir();
    let data = fixture("tasks/gpt2_sam/data.npz").display().to_string();
    let m = fixture("tasks/gpt2/dynamo.onnx").display().to_string();
    let run = |n: usize, out: &Path, extra: &[&str]| -> Output {
        let b = (24 / n).to_string();
        let o = out.display().to_string();
        let mut a = vec!["train", &m, "--data", &data, "--out", &o, "--batch-size", &b, "--ignore-index", "-100"];
        a.extend(["--backend", "tract", "--threads", "1", "--max-steps", "3", "--lr", "0.1"]);
        a.extend(extra);
        if n == 1 {
            onnxsam(&a)
        } else {
            mpirun(n, &a, &[])
        }
    };
    let sam = ["--optimizer", "sam", "--rho", "0.05"];
    let rw = ["--optimizer", "sam", "--rho", "0.05", "--reweight", "1"];
    let sync: Vec<&str> = [&sam[..], &["--sync-ascent"]].concat();
    let rw_sync: Vec<&str> = [&rw[..], &["--sync-ascent", "--global-weights"]].concat();
    for (name, two, one) in [("sgd", &[][..], &[][..]), ("sam", &sync[..], &sam[..]), ("rw-sam", &rw_sync[..], &rw[..])] {
        let (r2, r1) = (t.path().join(format!("{name}-2")), t.path().join(format!("{name}-1")));
        ok(&run(2, &r2, two), &format!("{name} on 2 ranks"));
        ok(&run(1, &r1, one), &format!("{name} in 1 process"));
        let (worst, shared) = max_rel(&checkpoint(&r2, 3), &checkpoint(&r1, 3));
        assert!(shared >= 16, "{name}: {shared} tensors shared");
        assert!(worst <= 2e-5, "{name}: 2 ranks × 12 vs 1 × 24: worst relative difference {worst:e}");
    }
}

#[test]
fn a_resumed_run_continues_the_same_trajectory() {
    let t = tempdir();
    let data = mnist_subset(t.path(), 256); // 4 global batches of 64: checkpoints every 4 steps
    let (straight, split) = (t.path().join("straight"), t.path().join("split"));
    let args = ["--optimizer", "sam", "--rho", "0.05", "--lr", "0.05", "--momentum", "0.9", "--reweight", "1"];
    ok(&run_ranks(2, &data, &straight, 32, &[&args[..], &["--max-steps", "8"]].concat(), &[]), "straight");
    ok(&run_ranks(2, &data, &split, 32, &[&args[..], &["--max-steps", "4"]].concat(), &[]), "first half");
    let s = split.display().to_string();
    let resumed = mpirun(2, &["train", "--resume", &s, "--max-steps", "8"], &[]);
    ok(&resumed, "resume");
    let (a, b) = (checkpoint(&straight, 8), checkpoint(&split, 8));
    for (k, x) in &a {
        assert_eq!(x, &b[k], "{k}: a resumed run must be bit-identical");
    }
    // another count of ranks would change the global batch: refused, naming the count
    let o = mpirun(3, &["train", "--resume", &s, "--max-steps", "12"], &[]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("trained on 2 ranks") && err.contains("mpirun -np 2"), "{err}");
    // and one process is told how to resume it
    let o = onnxsam(&["train", "--resume", &s, "--max-steps", "12"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("mpirun -np 2"), "{}", stderr(&o));
}

/// The `onnxsam: error:` lines of a run (mpirun adds its own lines after them).
fn error_lines(o: &Output) -> Vec<String> {
    stderr(o).lines().filter(|l| l.starts_with("onnxsam: error:")).map(String::from).collect()
}

#[test]
fn faults_stop_every_rank_with_one_error() {
    let t = tempdir();
    let data = mnist_subset(t.path(), 128); // 2 global batches of 64 an epoch
    let sgd = ["--lr", "0.05", "--epochs", "3"];
    // a rank that dies: every rank ends within seconds; the last checkpoint (step 2) is kept
    let run = t.path().join("killed");
    let start = Instant::now();
    let o = run_ranks(2, &data, &run, 32, &sgd, &[("ONNXSAM_TEST_KILL", "1:3")]);
    assert!(!o.status.success());
    assert!(start.elapsed().as_secs() < 60, "the surviving rank should end within seconds");
    let r = run.display().to_string();
    ok(&mpirun(2, &["train", "--resume", &r, "--epochs", "3"], &[]), "resume after a rank died");
    // a rank whose parameters drift: every rank stops, the error names the rank and the step
    let run = t.path().join("drift");
    let o =
        run_ranks(2, &data, &run, 32, &[&sgd[..], &["--check-every", "1"]].concat(), &[("ONNXSAM_TEST_DRIFT", "1:3")]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = error_lines(&o);
    assert_eq!(e.len(), 1, "one error line: {e:?}");
    assert!(e[0].contains("after step 3") && e[0].contains("rank 1 from rank 0") && e[0].contains("step 2"), "{e:?}");
    // a NaN on one rank (one sample's features overflow its logits): every rank stops at that step
    let mut arrays = read_npz(&data).unwrap();
    let x = arrays.get_mut("x").unwrap();
    if let onnxsam::tensor::Data::F32(v) = &mut x.data {
        v[..784].iter_mut().for_each(|p| *p = 3e37);
    }
    let bad = t.path().join("nan.npz");
    let list: Vec<(String, HostTensor)> = arrays.into_iter().collect();
    write_npz(&bad, &list).unwrap();
    let run = t.path().join("nan");
    let o = run_ranks(2, &bad, &run, 32, &["--lr", "0.05", "--epochs", "1"], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = error_lines(&o);
    assert_eq!(e.len(), 1, "one error line: {e:?}");
    assert!(e[0].contains("the loss is not finite on rank") && e[0].contains("of 2"), "{e:?}");
    // ranks that were given different arguments stop before the first step
    let run = t.path().join("mixed");
    let (d, r) = (data.display().to_string(), run.display().to_string());
    let m = root().join("models/mlp.onnx").display().to_string();
    let base = ["train", &m, "--data", &d, "--out", &r, "--batch-size", "32", "--max-steps", "2", "--backend", "tract"];
    let mut c = Command::new("mpirun");
    c.env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    c.args(["--oversubscribe", "-np", "1", env!("CARGO_BIN_EXE_onnxsam")]).args(base).args(["--lr", "0.1"]);
    c.args([":", "-np", "1", env!("CARGO_BIN_EXE_onnxsam")]).args(base).args(["--lr", "0.2"]);
    let o = c.output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = error_lines(&o);
    assert!(e.len() == 1 && e[0].contains("differ across ranks: rank 1 from rank 0"), "{e:?}");
    assert!(!run.join("config.json").exists(), "nothing is written before the ranks agree");
    // ranks that see different files at the same paths (each rank in its own folder): test labels
    // that differ, then checkpoints that differ, stop every rank before the first step
    let (a, b) = (t.path().join("host-a"), t.path().join("host-b"));
    let mut arrays = read_npz(&data).unwrap();
    for (dir, label) in [(&a, 1i64), (&b, 2)] {
        std::fs::create_dir_all(dir).unwrap();
        if let Some(onnxsam::tensor::Data::I64(y)) = arrays.get_mut("y_test").map(|t| &mut t.data) {
            y[0] = label;
        }
        let list: Vec<(String, HostTensor)> = arrays.clone().into_iter().collect();
        write_npz(&dir.join("data.npz"), &list).unwrap();
    }
    let on_hosts = |args: &[&str]| {
        let mut c = Command::new("mpirun");
        c.env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
        for dir in [&a, &b] {
            c.args(["--oversubscribe", "-np", "1", "-wdir", dir.to_str().unwrap(), env!("CARGO_BIN_EXE_onnxsam")]).args(args);
            if dir == &a {
                c.arg(":");
            }
        }
        c.output().unwrap()
    };
    let args = ["train", &m, "--data", "data.npz", "--out", "run", "--batch-size", "32", "--max-steps", "2", "--backend", "tract"];
    let o = on_hosts(&args);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = error_lines(&o);
    assert!(e.len() == 1 && e[0].contains("differ across ranks: rank 1 from rank 0"), "{e:?}");
    // the same data, but a stale run folder on one host: it resumes from another step
    std::fs::copy(a.join("data.npz"), b.join("data.npz")).unwrap();
    let in_dir = |dir: &Path, args: &[&str]| {
        let mut c = Command::new("mpirun");
        c.env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
        c.args(["--oversubscribe", "-np", "2", "-wdir", dir.to_str().unwrap(), env!("CARGO_BIN_EXE_onnxsam")]).args(args);
        ok(&c.output().unwrap(), "a run to resume");
    };
    // the same command line (relative paths) in each folder; one host's run went on to step 4
    for dir in [&a, &b] {
        in_dir(dir, &["train", &m, "--data", "data.npz", "--out", "run", "--batch-size", "32", "--max-steps", "2", "--backend", "tract"]);
    }
    in_dir(&b, &["train", "--resume", "run", "--max-steps", "4"]);
    let o = on_hosts(&["train", "--resume", "run", "--max-steps", "6"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = error_lines(&o);
    assert!(e.len() == 1 && e[0].contains("the checkpoint resumed from differ across ranks"), "{e:?}");
    // a global batch larger than the data: refused before anything is written, naming it
    let small = mnist_subset(&t.path().join("small"), 40);
    let run = t.path().join("too-few");
    let o = run_ranks(2, &small, &run, 32, &["--drop-last", "--epochs", "1"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = error_lines(&o);
    assert!(e.len() == 1 && e[0].contains("no whole global batch of 2 ranks × --batch-size 32"), "{e:?}");
    assert!(!run.exists());
}

#[test]
fn evaluation_is_sharded_and_summed() {
    let t = tempdir();
    let data = mnist_subset(t.path(), 128);
    let (r2, r1) = (t.path().join("two"), t.path().join("one"));
    let sgd = ["--lr", "0.05", "--epochs", "1"];
    ok(&run_ranks(2, &data, &r2, 32, &sgd, &[]), "2 ranks");
    ok(&run_one(&data, &r1, 64, &sgd), "1 process");
    let last = |r: &Path| rows(r).into_iter().rev().find(|x| x.contains_key("test_loss")).unwrap();
    let (a, b) = (last(&r2), last(&r1));
    let (la, lb) = (a["test_loss"].as_f64().unwrap(), b["test_loss"].as_f64().unwrap());
    assert!((la - lb).abs() <= 1e-5 * lb.abs(), "test loss over 2 ranks {la} vs 1 process {lb}");
    assert_eq!(a["test_acc"], b["test_acc"]);
    // the traffic is reported, and only rank 0 wrote the metrics (one row per step and epoch)
    assert!(a["allreduce_mib"].as_f64().unwrap() > 0.0);
    assert_eq!(rows(&r2).len(), rows(&r1).len());
}
