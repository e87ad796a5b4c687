//! `onnxsam train`: data → step graph runs → checkpoints, metrics, the trained model.
pub mod checkpoint;
pub mod export;
pub mod metrics;
pub mod schedule;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser};
use graph_passes::ir::Model;
use graph_passes::shapes::{self, Dim};
use serde_json::{json, Map, Value};

use crate::backend;
use crate::cli::grad::GradGraphArgs;
use crate::cli::step::StepArgs;
use crate::cli::BackendArgs;
use crate::data::{self, loader, Dataset, Format};
use crate::step::{Evaluator, StepRunner};
use crate::tensor::HostTensor;
use checkpoint::Position;
use schedule::Schedule;

#[derive(Args, Clone, Debug)]
pub struct TrainArgs {
    /// The ONNX model (its single output: logits, or a loss)
    pub model: Option<PathBuf>,
    /// Training data: an MNIST-style folder (IDX, raw or .gz), CIFAR binary batches, .npz (x, y)
    #[arg(long, value_name = "DATASET")]
    pub data: Option<PathBuf>,
    /// Test data (default: the test split beside the training data, when there is one)
    #[arg(long, value_name = "DATASET")]
    pub test: Option<PathBuf>,
    #[arg(long, value_enum)]
    pub data_format: Option<Format>,
    /// Per-channel normalization MEAN,STD (or M1,M2,M3,S1,S2,S3), or `none`; default per dataset
    #[arg(long)]
    pub normalize: Option<String>,
    #[command(flatten)]
    pub graph: GradGraphArgs,
    #[command(flatten)]
    pub step: StepArgs,
    #[arg(long, conflicts_with = "max_steps")]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub max_steps: Option<usize>,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// constant, cosine, step:0.3,0.6,0.8[@factor], warmup:STEPS[,SCHEDULE]
    #[arg(long, default_value = "constant")]
    pub lr_schedule: String,
    /// constant, or `lr` (ρ follows the learning rate's schedule)
    #[arg(long, default_value = "constant")]
    pub rho_schedule: String,
    /// Symmetric label noise on the training labels: this fraction gets another class
    #[arg(long, value_name = "FRACTION")]
    pub label_noise: Option<f64>,
    /// Seed of the label noise (default: --seed)
    #[arg(long)]
    pub label_noise_seed: Option<u64>,
    /// Augmentation: crop-flip (random crop with 4-pixel padding, horizontal flip)
    #[arg(long, value_name = "KIND")]
    pub augment: Option<String>,
    /// Hold out this fraction of the training data for validation
    #[arg(long, value_name = "F")]
    pub val_split: Option<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Drop the last partial batch of each epoch
    #[arg(long)]
    pub drop_last: bool,
    /// Checkpoints to keep
    #[arg(long, default_value_t = 3)]
    pub keep_checkpoints: usize,
    /// Batch size of evaluation (256 keeps resnet8's peak memory under 1 GiB)
    #[arg(long, default_value_t = 256)]
    pub eval_batch_size: usize,
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Run folder: config, metrics.jsonl/csv, checkpoints/, model.onnx
    #[arg(long, value_name = "RUN_DIR")]
    pub out: Option<PathBuf>,
    /// Continue the run in RUN_DIR from its last checkpoint (its own configuration; --epochs or
    /// --max-steps may extend it)
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
}

#[derive(Parser)]
struct Stored {
    #[command(flatten)]
    a: TrainArgs,
}

/// Stopped by Ctrl-C: checkpoint and exit.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Per-channel (means, stds) from `--normalize` or, without it, the dataset's defaults.
pub(crate) fn normalization(arg: Option<&str>, kind: data::Kind) -> Result<Option<(Vec<f32>, Vec<f32>)>> {
    match arg {
        Some(s) => parse_normalize(s),
        None => Ok(kind.normalization()),
    }
}

fn parse_normalize(s: &str) -> Result<Option<(Vec<f32>, Vec<f32>)>> {
    if s == "none" {
        return Ok(None);
    }
    let v: Vec<f32> = s
        .split(',')
        .map(|x| x.trim().parse::<f32>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| anyhow!("--normalize {s}: expected MEAN,STD numbers (or none)"))?;
    if v.len() < 2 || v.len() % 2 != 0 {
        bail!("--normalize {s}: expected MEAN,STD or M1,…,Mc,S1,…,Sc");
    }
    let h = v.len() / 2;
    if v[h..].iter().any(|&x| x <= 0.0) {
        bail!("--normalize {s}: standard deviations must be > 0");
    }
    Ok(Some((v[..h].to_vec(), v[h..].to_vec())))
}

/// The model input's sample shape (known dims after the batch) and the logits' class count.
pub(crate) fn model_io(model: &Model, source: &str) -> Result<(String, Vec<Option<i64>>, Option<usize>)> {
    let inputs = model.graph.data_inputs();
    let [input] = inputs.as_slice() else {
        bail!("{source}: onnxsam trains models with one data input; this one has {}", inputs.len());
    };
    let t =
        shapes::value_type_of(&input.r#type).ok_or_else(|| anyhow!("{source}: input '{}' has no type", input.name))?;
    let dims: Vec<Option<i64>> = t.shape.unwrap_or_default().iter().skip(1).map(Dim::known).collect();
    let s = shapes::infer(&model.graph).map_err(|e| anyhow!("{source}: {e}"))?;
    let classes = model
        .graph
        .outputs
        .first()
        .and_then(|o| s.shape(&o.name))
        .and_then(|sh| sh.get(1).and_then(Dim::known))
        .map(|c| c as usize);
    Ok((input.name.clone(), dims, classes))
}

pub(crate) fn check_data(
    d: &Dataset,
    want: &[Option<i64>],
    input: &str,
    classes: Option<usize>,
    model: &str,
) -> Result<()> {
    let ok = d.sample_shape.len() == want.len()
        && d.sample_shape.iter().zip(want).all(|(&n, w)| w.map(|w| w as usize == n).unwrap_or(true));
    if !ok {
        let w: Vec<String> = want.iter().map(|d| d.map(|x| x.to_string()).unwrap_or("?".into())).collect();
        bail!(
            "{}: samples of shape {:?} do not fit the model's input '{input}' [N, {}] ({model}); use a dataset of that shape",
            d.source,
            d.sample_shape,
            w.join(", ")
        );
    }
    if let Some(c) = classes {
        if let Some((i, &bad)) = d.y.iter().enumerate().find(|(_, &l)| l as usize >= c) {
            bail!("{}: label {bad} (sample {i}) is out of range: {model} has {c} classes (0..{})", d.source, c - 1);
        }
    }
    Ok(())
}

fn evaluate(
    ev: &mut Evaluator,
    values: &BTreeMap<String, HostTensor>,
    d: &Dataset,
    input: &str,
    bs: usize,
) -> Result<(f64, f64)> {
    let (mut loss, mut correct) = (0.0, 0.0);
    let n = d.len();
    let mut i = 0;
    while i < n {
        let idx: Vec<usize> = (i..(i + bs).min(n)).collect();
        let out = ev.run(values, &d.batch(input, &idx))?;
        loss += out["loss"].to_f64()[0] * idx.len() as f64;
        correct += out.get("correct").map(|c| c.to_f64()[0]).unwrap_or(f64::NAN);
        i += bs;
    }
    Ok((loss / n as f64, correct / n as f64))
}

fn scalar(out: &BTreeMap<String, HostTensor>, k: &str) -> Value {
    out.get(k).and_then(|t| t.to_f64().first().copied()).map(|v| json!(v)).unwrap_or(Value::Null)
}

pub fn train(mut a: TrainArgs, raw: Vec<String>) -> Result<i32> {
    // --resume: the stored configuration, with --epochs/--max-steps from this command if given
    let run: PathBuf;
    let resuming = a.resume.is_some();
    let stored_raw: Vec<String>;
    if let Some(r) = a.resume.clone() {
        let (raw_args, stored) = stored_run(&r, "no run to resume here")?;
        stored_raw = raw_args;
        let (epochs, max_steps, backend) = (a.epochs, a.max_steps, a.backend.clone());
        a = stored;
        if epochs.is_some() || max_steps.is_some() {
            a.epochs = epochs;
            a.max_steps = max_steps;
        }
        if raw.iter().any(|x| {
            x.starts_with("--backend")
                || x.starts_with("--device")
                || x.starts_with("--threads")
                || x.starts_with("--ort-lib")
        }) {
            a.backend = backend;
        }
        run = r;
    } else {
        run = a.out.clone().ok_or_else(|| anyhow!("train needs --out RUN_DIR (or --resume RUN_DIR)"))?;
        if run.join("config.json").exists() {
            bail!(
                "{}: this folder already holds a run; pass --resume {} to continue it, or choose another --out",
                run.display(),
                run.display()
            );
        }
        stored_raw = raw.clone();
    }
    let model_path = a.model.clone().ok_or_else(|| anyhow!("train needs a MODEL"))?;
    let data_path = a.data.clone().ok_or_else(|| anyhow!("train needs --data DATASET"))?;
    let shown = model_path.display().to_string();
    let model = Model::load(&model_path)?;
    let spec = a.step.spec(&a.graph)?;
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if let Some(m) = spec.micro_batch {
        if a.batch_size % m != 0 {
            bail!("--micro-batch {m} does not divide --batch-size {}", a.batch_size);
        }
        if !a.drop_last {
            a.drop_last = true; // m-SAM needs whole batches
        }
    }
    let lr_sched: Schedule = a.lr_schedule.parse()?;
    let rho_follows_lr = match a.rho_schedule.as_str() {
        "constant" => false,
        "lr" => true,
        other => bail!("--rho-schedule {other}: expected constant or lr"),
    };
    if let Some(aug) = &a.augment {
        if aug != "crop-flip" {
            bail!("--augment {aug}: the augmentation onnxsam has is crop-flip");
        }
    }
    // data
    let (input, want_shape, classes) = model_io(&model, &shown)?;
    let loaded = data::load(&data_path, a.data_format)?;
    let mut train = loaded.train;
    let mut test = match &a.test {
        Some(t) => Some(data::load(t, a.data_format)?.train),
        None => loaded.test,
    };
    let norm = normalization(a.normalize.as_deref(), loaded.kind)?;
    if let Some((m, s)) = &norm {
        train.normalize_channels(m, s)?;
        if let Some(t) = test.as_mut() {
            t.normalize_channels(m, s)?;
        }
    }
    check_data(&train, &want_shape, &input, classes, &shown)?;
    if let Some(t) = &test {
        check_data(t, &want_shape, &input, classes, &shown)?;
    }
    let mut val = None;
    if let Some(f) = a.val_split {
        if !(0.0..1.0).contains(&f) {
            bail!("--val-split must be a fraction in [0, 1), got {f}");
        }
        let order = loader::permutation(train.len(), a.seed, "val-split");
        let k = (f * train.len() as f64).round() as usize;
        val = Some(train.subset(&order[..k]));
        train = train.subset(&order[k..]);
    }
    if let Some(c) = classes {
        train.classes = train.classes.max(c);
    }
    let clean = train.y.clone();
    let flipped = match a.label_noise {
        Some(f) => train.add_label_noise(f, a.label_noise_seed.unwrap_or(a.seed))?,
        None => vec![],
    };
    if train.len() < a.batch_size && a.drop_last {
        bail!("{}: {} samples are fewer than one batch of {}", train.source, train.len(), a.batch_size);
    }
    // the graphs: a model onnxsam cannot train gets its one error line before anything is written
    let graphs = graph_passes::step::step_graphs(&model, &spec).map_err(|e| anyhow!("{shown}: {e}"))?;
    if let Some(bn) = &graphs.step.contract.batch_norm_over_batch_only {
        if !a.drop_last && train.len() % a.batch_size == 1 {
            bail!(
                "{}: {} samples in batches of {} leave a last batch of one sample, and {bn} cannot normalize one value per channel (PyTorch refuses it too); pass --drop-last or another --batch-size",
                train.source,
                train.len(),
                a.batch_size
            );
        }
    }
    // the run folder
    std::fs::create_dir_all(&run).map_err(|e| {
        anyhow!("{}: cannot create the run folder: {}", run.display(), graph_passes::onnx::io_reason(&e))
    })?;
    if !resuming {
        let cfg = json!({
            "args": stored_raw,
            "model": std::fs::canonicalize(&model_path).unwrap_or(model_path.clone()),
            "onnxsam": env!("CARGO_PKG_VERSION"),
            "spec": serde_json::to_value(&spec)?,
        });
        model.save(&run.join("source.onnx"), &Default::default())?;
        if a.label_noise.is_some() {
            let n = clean.len();
            crate::tensor::write_npz(
                &run.join("labels.npz"),
                &[
                    ("clean".into(), HostTensor::i64(&[n], clean.clone())),
                    ("noisy".into(), HostTensor::i64(&[n], train.y.clone())),
                    ("flipped".into(), HostTensor::i64(&[flipped.len()], flipped.iter().map(|&i| i as i64).collect())),
                ],
            )?;
        }
        graph_passes::onnx::write_atomic(&run.join("config.json"), serde_json::to_string_pretty(&cfg)?.as_bytes())?;
    }
    if a.label_noise.is_some() {
        println!(
            "label noise: {} of {} training labels flipped ({:.2}%); clean and noisy labels in {}",
            flipped.len(),
            train.len(),
            100.0 * flipped.len() as f64 / train.len() as f64,
            run.join("labels.npz").display()
        );
    }
    let be = backend::select(&a.backend.request(), true)?;
    let mut runner =
        StepRunner::from_graphs(graphs, &model, &spec, be.as_ref(), a.seed).with_context(|| shown.clone())?;
    let mut eval = Evaluator::new(&model, &spec.grad, be.as_ref()).with_context(|| shown.clone())?;
    let per_epoch = loader::batches_per_epoch(train.len(), a.batch_size, a.drop_last);
    let total = match (a.max_steps, a.epochs) {
        (Some(s), _) => s,
        (None, Some(e)) => e * per_epoch,
        (None, None) => bail!("give --epochs N or --max-steps N"),
    };
    let epochs = total.div_ceil(per_epoch.max(1));
    let mut pos =
        Position { step: 0, epoch: 0, batch_in_epoch: 0, metrics_lines: 0, seconds: 0.0, epoch_sums: (0.0, 0.0, 0) };
    if resuming {
        let (p, values) = checkpoint::load(&run, None)?;
        for (k, v) in values {
            runner.values.insert(k, v);
        }
        runner.step = p.step;
        println!("resuming {} at step {} (epoch {}, batch {})", run.display(), p.step, p.epoch + 1, p.batch_in_epoch);
        pos = p;
    }
    runner.keep_on_device = true;
    let mut metrics = metrics::Metrics::open(&run, pos.metrics_lines)?;
    let _ = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst));
    let train = Arc::new(train);
    let tty = std::io::stdout().is_terminal();
    let started = Instant::now();
    let base_seconds = pos.seconds;
    // f32 → f64 through the decimal the user wrote (0.05, not 0.05000000074505806)
    let lr0: f64 = spec.lr.to_string().parse().unwrap_or(spec.lr as f64);
    let rho0: f64 = spec.rho.to_string().parse().unwrap_or(spec.rho as f64);
    let bs = a.batch_size;
    println!(
        "training {} on {} ({} samples, {} steps/epoch, {} steps) with {}{}; {}",
        shown,
        data_path.display(),
        train.len(),
        per_epoch,
        total,
        format!("{:?}", spec.optimizer).to_lowercase(),
        spec.reweight.map(|r| format!(" + reweight λ = {}", r.lambda)).unwrap_or_default(),
        be.describe()
    );
    while pos.epoch < epochs && (pos.step as usize) < total {
        let order = loader::permutation(train.len(), a.seed, &format!("epoch/{}", pos.epoch));
        let fill = norm.as_ref().map(|(m, s)| m.iter().zip(s).map(|(m, s)| -m / s).collect()).unwrap_or_default();
        let batches = loader::Prefetch::start(
            train.clone(),
            loader::EpochSpec {
                input: input.clone(),
                order,
                batch_size: bs,
                drop_last: a.drop_last,
                skip: pos.batch_in_epoch,
                augment: a.augment.as_ref().map(|_| loader::CropFlip { pad: 4, fill }),
                seed: a.seed,
                epoch: pos.epoch,
            },
        );
        let bar = tty.then(|| {
            let b = indicatif::ProgressBar::new(per_epoch as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "epoch {prefix} {bar:30} {pos}/{len} {msg} [{elapsed} < {eta}]",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.set_prefix(format!("{}/{epochs}", pos.epoch + 1));
            b.set_position(pos.batch_in_epoch as u64);
            b
        });
        // a run resumed mid-epoch goes on with the epoch's sums so far
        let (mut ep_loss, mut ep_correct, mut ep_n) =
            if pos.batch_in_epoch > 0 { pos.epoch_sums } else { (0.0, 0.0, 0) };
        let mut last_weights: Option<HostTensor> = None;
        let epoch_start = Instant::now();
        let mut steps_this_epoch = 0usize;
        let mut batches = batches;
        let mut data_wait = 0.0f64;
        loop {
            let waited = Instant::now();
            let Some(batch) = batches.next() else { break };
            data_wait += waited.elapsed().as_secs_f64();
            if pos.step as usize >= total {
                break;
            }
            let t = pos.step as usize;
            let lr = lr0 * lr_sched.factor(t, total);
            let rho = if rho_follows_lr && lr0 > 0.0 { rho0 * lr / lr0 } else { rho0 };
            runner.hyper.insert("lr".into(), lr as f32);
            if runner.hyper.contains_key("rho") {
                runner.hyper.insert("rho".into(), rho as f32);
            }
            let n = batch.labels.shape[0];
            let out = match runner.step(&batch) {
                Ok(o) => o,
                Err(e) => {
                    if let Some(b) = &bar {
                        b.abandon();
                    }
                    let last =
                        checkpoint::list(&run)?.last().map(|(s, _)| format!("step {s}")).unwrap_or("none yet".into());
                    return Err(crate::cli::check_failed(format!(
                        "training stopped: {e:#}; the last good checkpoint ({last}) is in {}",
                        checkpoint::dir(&run).display()
                    )));
                }
            };
            pos.step += 1;
            pos.batch_in_epoch += 1;
            steps_this_epoch += 1;
            let loss = out["loss"].to_f64()[0];
            let correct = out.get("correct").map(|c| c.to_f64()[0]).unwrap_or(f64::NAN);
            ep_loss += loss * n as f64;
            ep_correct += correct;
            ep_n += n;
            let seconds = base_seconds + started.elapsed().as_secs_f64();
            let mut row = Map::new();
            row.insert("kind".into(), json!("step"));
            row.insert("step".into(), json!(pos.step));
            row.insert("epoch".into(), json!(pos.epoch + 1));
            row.insert("lr".into(), json!(lr));
            if runner.hyper.contains_key("rho") {
                row.insert("rho".into(), json!(rho));
            }
            row.insert("loss".into(), json!(loss));
            row.insert("acc".into(), json!(correct / n as f64));
            for k in ["grad_norm", "sharpness", "weight_entropy", "ess", "max_weight", "trace_v"] {
                if out.contains_key(k) {
                    row.insert(k.into(), scalar(&out, k));
                }
            }
            row.insert("seconds".into(), json!(seconds));
            metrics.write(&row)?;
            if let Some(w) = out.get("sample_weights") {
                last_weights = Some(w.clone());
            }
            let rate = steps_this_epoch as f64 / epoch_start.elapsed().as_secs_f64().max(1e-9);
            match &bar {
                Some(b) => {
                    b.set_position(pos.batch_in_epoch as u64);
                    b.set_message(format!("loss {loss:.4} acc {:.3} {rate:.1} steps/s", correct / n as f64));
                }
                None => {
                    let every = (per_epoch / 5).max(1);
                    if pos.batch_in_epoch % every == 0 {
                        println!(
                            "epoch {}/{epochs} step {}/{per_epoch}: loss {loss:.4}, acc {:.3}, {rate:.1} steps/s",
                            pos.epoch + 1,
                            pos.batch_in_epoch,
                            correct / n as f64
                        );
                    }
                }
            }
            if INTERRUPTED.load(Ordering::SeqCst) {
                pos.metrics_lines = metrics.lines;
                pos.seconds = seconds;
                pos.epoch_sums = (ep_loss, ep_correct, ep_n);
                runner.sync()?;
                checkpoint::save(&run, &pos, &runner.values, a.keep_checkpoints)?;
                if let Some(b) = &bar {
                    b.abandon();
                }
                println!(
                    "interrupted at step {}: checkpoint written; continue with --resume {}",
                    pos.step,
                    run.display()
                );
                return Ok(130);
            }
        }
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        let epoch_s = epoch_start.elapsed().as_secs_f64();
        // end of the epoch (or of --max-steps): evaluate, checkpoint
        let mut row = Map::new();
        row.insert("kind".into(), json!("epoch"));
        row.insert("step".into(), json!(pos.step));
        row.insert("epoch".into(), json!(pos.epoch + 1));
        if ep_n > 0 {
            row.insert("train_loss".into(), json!(ep_loss / ep_n as f64));
            row.insert("train_acc".into(), json!(ep_correct / ep_n as f64));
        }
        if steps_this_epoch > 0 {
            row.insert("data_wait".into(), json!(data_wait / epoch_s.max(1e-9)));
        }
        let mut line = format!("epoch {}/{epochs}: step {}", pos.epoch + 1, pos.step);
        if ep_n > 0 {
            line += &format!(", train loss {:.4} acc {:.4}", ep_loss / ep_n as f64, ep_correct / ep_n as f64);
        }
        runner.sync()?;
        for (name, d) in [("val", &val), ("test", &test)] {
            if let Some(d) = d {
                let (l, acc) = evaluate(&mut eval, &runner.values, d, &input, a.eval_batch_size)?;
                row.insert(format!("{name}_loss"), json!(l));
                row.insert(format!("{name}_acc"), json!(acc));
                line += &format!(", {name} loss {l:.4} acc {acc:.4}");
            }
        }
        let seconds = base_seconds + started.elapsed().as_secs_f64();
        row.insert("seconds".into(), json!(seconds));
        metrics.write(&row)?;
        println!(
            "{line} ({seconds:.1} s; waiting for data {:.1}% of the epoch)",
            100.0 * data_wait / epoch_s.max(1e-9)
        );
        if let Some(w) = last_weights.take() {
            crate::tensor::write_npz(&run.join("sample_weights.npz"), &[("sample_weights".into(), w)])?;
        }
        if pos.batch_in_epoch >= per_epoch || (pos.step as usize) < total {
            pos.epoch += 1;
            pos.batch_in_epoch = 0;
        }
        pos.metrics_lines = metrics.lines;
        pos.seconds = seconds;
        pos.epoch_sums = (ep_loss, ep_correct, ep_n);
        checkpoint::save(&run, &pos, &runner.values, a.keep_checkpoints)?;
        if pos.batch_in_epoch != 0 {
            break;
        }
    }
    runner.sync()?;
    let trained = export::export(&model, &spec.grad, &runner.values)?;
    trained.save(&run.join("model.onnx"), &Default::default())?;
    println!("wrote {} (the trained model)", run.join("model.onnx").display());
    Ok(0)
}

/// The run folder's source model and its training spec (for export).
pub fn run_source(run: &Path) -> Result<(Model, graph_passes::step::GradSpec)> {
    let (_, stored) = stored_run(run, "not a run folder")?;
    let model = Model::load(&run.join("source.onnx"))?;
    Ok((model, stored.graph.spec()?))
}

/// The command-line arguments a run was started with (RUN_DIR/config.json), and as parsed.
fn stored_run(run: &Path, missing: &str) -> Result<(Vec<String>, TrainArgs)> {
    let cfg = run.join("config.json");
    let text =
        std::fs::read_to_string(&cfg).with_context(|| format!("{}: {missing} (config.json missing)", run.display()))?;
    let v: Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not an onnxsam run config", cfg.display()))?;
    let args: Vec<String> = v["args"]
        .as_array()
        .map(|x| x.iter().filter_map(|s| s.as_str().map(String::from)).collect())
        .unwrap_or_default();
    let stored = Stored::try_parse_from(std::iter::once("train".to_string()).chain(args.iter().cloned()))
        .map_err(|e| anyhow!("{}: {}", cfg.display(), e.to_string().lines().next().unwrap_or("")))?;
    Ok((args, stored.a))
}
