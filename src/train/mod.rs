//! `onnxsam train` as a library: data → one step-graph run per step → evaluation, checkpoints,
//! metrics, the trained model. [`train`] reads as its parts: [`Trainer::set_up`] (data, graphs,
//! run folder, resume), [`Trainer::train_epoch`] (batches → [`Trainer::train_step`]),
//! [`Trainer::end_epoch`] (evaluation, checkpoint) and [`Trainer::finish`] (the trained model).
pub mod checkpoint;
pub mod config;
pub mod evaluate;
pub mod export;
pub mod metrics;
pub mod schedule;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use graph_passes::ir::Model;
use serde_json::{json, Map, Value};

use crate::backend;
use crate::data::{self, loader, Dataset, InputSpec, LoadOptions, Normalize, TargetSpec};
use crate::grad::Batch;
use crate::step::{Evaluator, StepRunner};
use crate::tensor::HostTensor;
use checkpoint::Position;
pub use config::TrainConfig;
pub(crate) use evaluate::{binding, evaluate, metric_of, output_classes};

/// Stopped by Ctrl-C: checkpoint and exit.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn scalar(out: &BTreeMap<String, HostTensor>, k: &str) -> Value {
    out.get(k).and_then(|t| t.to_f64().first().copied()).map(|v| json!(v)).unwrap_or(Value::Null)
}

/// Trains as `cfg` says. Returns the exit code: 0 done, 130 interrupted (checkpoint written).
pub fn train(cfg: &TrainConfig) -> Result<i32> {
    let existed = cfg.run.exists();
    let mut t = Trainer::set_up(cfg)?;
    let result = (|| {
        while t.pos.epoch < t.epochs && (t.pos.step as usize) < t.total {
            let Some(tally) = t.train_epoch()? else { return Ok(130) };
            if t.end_epoch(tally)? {
                break;
            }
        }
        t.finish()
    })();
    if result.is_err() && !cfg.resume && checkpoint::list(&cfg.run).map(|l| l.is_empty()).unwrap_or(false) {
        // a run that stopped before its first checkpoint leaves nothing to resume: its folder goes,
        // so that the same command can be run again
        remove_unstarted_run(&cfg.run, existed);
    }
    result
}

/// Removes what a run that never checkpointed wrote: the whole folder where set_up made it, else
/// the files it writes (a folder the user had already holds other things).
fn remove_unstarted_run(run: &std::path::Path, existed: bool) {
    if !existed {
        let _ = std::fs::remove_dir_all(run);
        return;
    }
    for f in ["config.json", "source.onnx", "normalization.json", "classes.json", "labels.npz", "metrics.jsonl", "metrics.csv"] {
        let _ = std::fs::remove_file(run.join(f));
    }
    let _ = std::fs::remove_dir(checkpoint::dir(run));
}

/// The data a run trains and evaluates on, checked against the model.
struct RunData {
    train: Dataset,
    val: Option<Dataset>,
    test: Option<Dataset>,
    /// Per channel: the normalized value of a zero pixel (crop-flip's padding).
    fill: Vec<f32>,
    /// --normalize standard: the training split's per-feature mean and std.
    standardized: Option<(Vec<f32>, Vec<f32>)>,
}

/// One epoch's running sums.
struct Tally {
    loss: f64,
    correct: f64,
    n: usize,
    steps: usize,
    data_wait: f64,
    start: Instant,
    last_weights: Option<HostTensor>,
}

/// A run in progress.
pub struct Trainer<'a> {
    cfg: &'a TrainConfig,
    shown: String,
    model: Model,
    runner: StepRunner,
    eval: Evaluator,
    /// The task metric: the graph's diagnostic and its name in metrics (acc, mae).
    metric: Option<(&'static str, &'static str)>,
    train: Arc<Dataset>,
    val: Option<Dataset>,
    test: Option<Dataset>,
    fill: Vec<f32>,
    per_epoch: usize,
    total: usize,
    epochs: usize,
    pos: Position,
    metrics: metrics::Metrics,
    started: Instant,
    base_seconds: f64,
    lr0: f64,
    rho0: f64,
    tty: bool,
}

impl<'a> Trainer<'a> {
    /// Everything before the first step: the model and its graphs, the data, the run folder
    /// (config.json, source.onnx; or the checkpoint to resume from), the engine. A model or
    /// dataset onnxsam cannot train gets its one error line before anything is written.
    pub fn set_up(cfg: &'a TrainConfig) -> Result<Trainer<'a>> {
        let run = &cfg.run;
        if !cfg.resume && run.join("config.json").exists() {
            bail!(
                "{}: this folder already holds a run; pass --resume {} to continue it, or choose another --out",
                run.display(),
                run.display()
            );
        }
        let shown = cfg.model.display().to_string();
        let model = Model::load(&cfg.model)?;
        let spec = &cfg.spec;
        if cfg.batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        let mut drop_last = cfg.drop_last;
        if let Some(m) = spec.micro_batch {
            if cfg.batch_size % m != 0 {
                bail!("--micro-batch {m} does not divide --batch-size {}", cfg.batch_size);
            }
            drop_last = true; // m-SAM needs whole batches
        }
        let graphs = graph_passes::step::step_graphs(&model, spec).map_err(|e| anyhow!("{shown}: {e}"))?;
        // the class count the labels are checked against: the loss's own, else the output's axis 1
        let classes = match graphs.step.contract.cross_entropy.as_ref().map(|x| x.classes) {
            Some(c) => Some(c as usize),
            None => output_classes(&model, &shown)?,
        };
        let (inputs, target) = binding(&graphs.step.model, &graphs.step.contract, classes);
        let metric = metric_of(&graphs.step.contract);
        let (d, clean, flipped) = load_data(cfg, &inputs, &target, classes, &shown, drop_last)?;
        // what a user should know once, before the run (said when the run starts): the network
        // trains as the file says
        let mut notes = Vec::new();
        if !cfg.resume {
            if let Some(note) = crate::grad::dropout_note(&model) {
                notes.push(note);
            }
            let ce = graphs.step.contract.cross_entropy.as_ref().map(|x| x.classes as usize);
            // the classes the data has: named (folders, table categories), else the labels' max + 1
            // (train.classes is raised to the model's count for label noise)
            let seen = if d.train.class_names.is_empty() {
                d.train.labels().and_then(|l| l.iter().copied().max()).map(|m| (m.max(-1) + 1) as usize).unwrap_or(0)
            } else {
                d.train.class_names.len()
            };
            if let Some(c) = ce.filter(|&c| seen > 0 && seen < c) {
                let named = if d.train.class_names.is_empty() {
                    format!("labels 0…{}", seen - 1)
                } else {
                    graph_passes::import::summary(&d.train.class_names, 4)
                };
                notes.push(format!(
                    "the model has {c} class outputs and {} has {seen} classes ({named}); outputs {seen}…{} are only ever trained towards never being the answer",
                    d.train.source,
                    c - 1
                ));
            }
        }
        if let Some(bn) = &graphs.step.contract.batch_norm_over_batch_only {
            if !drop_last && d.train.len() % cfg.batch_size == 1 {
                bail!(
                    "{}: {} samples in batches of {} leave a last batch of one sample, and {bn} cannot normalize one value per channel (PyTorch refuses it too); pass --drop-last or another --batch-size",
                    d.train.source,
                    d.train.len(),
                    cfg.batch_size
                );
            }
        }
        // the engine loads both graphs before anything is written: a graph it cannot run leaves no run
        let be = backend::select(&cfg.backend, true)?;
        let mut runner =
            StepRunner::from_graphs(graphs, &model, spec, be.as_ref(), cfg.seed).with_context(|| shown.clone())?;
        let eval = Evaluator::new(&model, &spec.grad, be.as_ref()).with_context(|| shown.clone())?;
        start_run_folder(cfg, &model, &d.train, &clean, &flipped, d.standardized.as_ref())?;
        let per_epoch = loader::batches_per_epoch(d.train.len(), cfg.batch_size, drop_last);
        let total = match (cfg.max_steps, cfg.epochs) {
            (Some(s), _) => s,
            (None, Some(e)) => e * per_epoch,
            (None, None) => bail!("give --epochs N or --max-steps N"),
        };
        let epochs = total.div_ceil(per_epoch.max(1));
        let mut pos = Position {
            step: 0,
            epoch: 0,
            batch_in_epoch: 0,
            metrics_lines: 0,
            seconds: 0.0,
            epoch_sums: (0.0, 0.0, 0),
        };
        if cfg.resume {
            let (p, values) = checkpoint::load(run, None)?;
            for (k, v) in values {
                runner.values.insert(k, v);
            }
            runner.step = p.step;
            println!(
                "resuming {} at step {} (epoch {}, batch {})",
                run.display(),
                p.step,
                p.epoch + 1,
                p.batch_in_epoch
            );
            pos = p;
        }
        runner.keep_on_device = true;
        let metrics = metrics::Metrics::open(run, pos.metrics_lines)?;
        let _ = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst));
        // f32 → f64 through the decimal the user wrote (0.05, not 0.05000000074505806)
        let lr0: f64 = spec.lr.to_string().parse().unwrap_or(spec.lr as f64);
        let rho0: f64 = spec.rho.to_string().parse().unwrap_or(spec.rho as f64);
        let base = format!("{:?}", spec.base).to_lowercase();
        let method = match (spec.optimizer, spec.micro_batch) {
            (graph_passes::passes::sam_update::Optimizer::Sgd, _) => base,
            (o, Some(m)) => format!("m-{} (m = {m}) with {base}", format!("{o:?}").to_lowercase()),
            (o, None) => format!("{} with {base}", format!("{o:?}").to_lowercase()),
        };
        println!(
            "training {} on {} ({} samples, {} steps/epoch, {} steps) with {}{}; {}",
            shown,
            cfg.data.display(),
            d.train.len(),
            per_epoch,
            total,
            method,
            spec.reweight.map(|r| format!(" + reweight λ = {}", r.lambda)).unwrap_or_default(),
            be.describe()
        );
        for n in notes {
            eprintln!("onnxsam: note: {n}");
        }
        let base_seconds = pos.seconds;
        Ok(Trainer {
            cfg,
            shown,
            model,
            runner,
            eval,
            metric,
            train: Arc::new(d.train),
            val: d.val,
            test: d.test,
            fill: d.fill,
            per_epoch,
            total,
            epochs,
            pos,
            metrics,
            started: Instant::now(),
            base_seconds,
            lr0,
            rho0,
            tty: std::io::stdout().is_terminal(),
        })
    }

    fn drop_last(&self) -> bool {
        self.cfg.drop_last || self.cfg.spec.micro_batch.is_some()
    }

    fn seconds(&self) -> f64 {
        self.base_seconds + self.started.elapsed().as_secs_f64()
    }

    /// The batches of the epoch in progress, prepared on a background thread.
    fn epoch_batches(&self) -> loader::Prefetch {
        let cfg = self.cfg;
        let order = loader::permutation(self.train.len(), cfg.seed, &format!("epoch/{}", self.pos.epoch));
        loader::Prefetch::start(
            self.train.clone(),
            loader::EpochSpec {
                order,
                batch_size: cfg.batch_size,
                drop_last: self.drop_last(),
                skip: self.pos.batch_in_epoch,
                augment: cfg.crop_flip.then(|| loader::CropFlip { pad: 4, fill: self.fill.clone() }),
                seed: cfg.seed,
                epoch: self.pos.epoch,
            },
        )
    }

    fn progress_bar(&self) -> Option<indicatif::ProgressBar> {
        self.tty.then(|| {
            let b = indicatif::ProgressBar::new(self.per_epoch as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "epoch {prefix} {bar:30} {pos}/{len} {msg} [{elapsed} < {eta}]",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.set_prefix(format!("{}/{}", self.pos.epoch + 1, self.epochs));
            b.set_position(self.pos.batch_in_epoch as u64);
            b
        })
    }

    /// The steps of one epoch (or what is left of it). None: interrupted by Ctrl-C, with a
    /// checkpoint written.
    fn train_epoch(&mut self) -> Result<Option<Tally>> {
        let bar = self.progress_bar();
        // a run resumed mid-epoch goes on with the epoch's sums so far
        let (loss, correct, n) = if self.pos.batch_in_epoch > 0 { self.pos.epoch_sums } else { (0.0, 0.0, 0) };
        let mut tally = Tally { loss, correct, n, steps: 0, data_wait: 0.0, start: Instant::now(), last_weights: None };
        let mut batches = self.epoch_batches();
        loop {
            let waited = Instant::now();
            let Some(batch) = batches.next() else { break };
            tally.data_wait += waited.elapsed().as_secs_f64();
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    if let Some(b) = &bar {
                        b.abandon();
                    }
                    return Err(e.context(format!(
                        "training stopped at step {}; {}",
                        self.pos.step,
                        self.last_good()?
                    )));
                }
            };
            if self.pos.step as usize >= self.total {
                break;
            }
            if let Err(e) = self.train_step(&batch, &mut tally, bar.as_ref()) {
                if let Some(b) = &bar {
                    b.abandon();
                }
                return Err(e);
            }
            if INTERRUPTED.load(Ordering::SeqCst) {
                self.pos.epoch_sums = (tally.loss, tally.correct, tally.n);
                self.checkpoint()?;
                if let Some(b) = &bar {
                    b.abandon();
                }
                println!(
                    "interrupted at step {}: checkpoint written; continue with --resume {}",
                    self.pos.step,
                    self.cfg.run.display()
                );
                return Ok(None);
            }
        }
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        Ok(Some(tally))
    }

    /// One optimizer step: the scheduled lr (and ρ), the step graph's run, a metrics row.
    fn train_step(&mut self, batch: &Batch, tally: &mut Tally, bar: Option<&indicatif::ProgressBar>) -> Result<()> {
        let t = self.pos.step as usize;
        let lr = self.lr0 * self.cfg.lr_schedule.factor(t, self.total);
        let rho = if self.cfg.rho_follows_lr && self.lr0 > 0.0 { self.rho0 * lr / self.lr0 } else { self.rho0 };
        let runner = &mut self.runner;
        runner.hyper.insert("lr".into(), lr as f32);
        if runner.hyper.contains_key("rho") {
            runner.hyper.insert("rho".into(), rho as f32);
        }
        let n = batch.len();
        let out = match runner.step(batch) {
            Ok(o) => o,
            Err(e) => {
                return Err(crate::error::check_failed(format!("training stopped: {e:#}; {}", self.last_good()?)));
            }
        };
        self.pos.step += 1;
        self.pos.batch_in_epoch += 1;
        tally.steps += 1;
        let loss = out["loss"].to_f64()[0];
        let correct = self.metric.and_then(|m| out.get(m.0)).map(|c| c.to_f64()[0]).unwrap_or(f64::NAN);
        tally.loss += loss * n as f64;
        tally.correct += correct;
        tally.n += n;
        let mut row = Map::new();
        row.insert("kind".into(), json!("step"));
        row.insert("step".into(), json!(self.pos.step));
        row.insert("epoch".into(), json!(self.pos.epoch + 1));
        row.insert("lr".into(), json!(lr));
        if self.runner.hyper.contains_key("rho") {
            row.insert("rho".into(), json!(rho));
        }
        row.insert("loss".into(), json!(loss));
        let metric_name = self.metric.map(|m| m.1).unwrap_or("");
        if let Some((_, name)) = self.metric {
            row.insert(name.into(), json!(correct / n as f64));
        }
        for k in ["grad_norm", "sharpness", "weight_entropy", "ess", "max_weight", "trace_v"] {
            if out.contains_key(k) {
                row.insert(k.into(), scalar(&out, k));
            }
        }
        row.insert("seconds".into(), json!(self.seconds()));
        self.metrics.write(&row)?;
        if let Some(w) = out.get("sample_weights") {
            tally.last_weights = Some(w.clone());
        }
        let rate = tally.steps as f64 / tally.start.elapsed().as_secs_f64().max(1e-9);
        let m = if self.metric.is_some() { format!(" {metric_name} {:.3}", correct / n as f64) } else { String::new() };
        match bar {
            Some(b) => {
                b.set_position(self.pos.batch_in_epoch as u64);
                b.set_message(format!("loss {loss:.4}{m} {rate:.1} steps/s"));
            }
            None => {
                let every = (self.per_epoch / 5).max(1);
                if self.pos.batch_in_epoch % every == 0 {
                    println!(
                        "epoch {}/{} step {}/{}: loss {loss:.4}{}, {rate:.1} steps/s",
                        self.pos.epoch + 1,
                        self.epochs,
                        self.pos.batch_in_epoch,
                        self.per_epoch,
                        m.replacen(' ', ", ", 1)
                    );
                }
            }
        }
        Ok(())
    }

    /// The end of an epoch (or of --max-steps): evaluation on val/test, an epoch row, the last
    /// RW-SAM weights, a checkpoint. Returns true when the run stops here (mid-epoch).
    fn end_epoch(&mut self, tally: Tally) -> Result<bool> {
        let epoch_s = tally.start.elapsed().as_secs_f64();
        let mut row = Map::new();
        row.insert("kind".into(), json!("epoch"));
        row.insert("step".into(), json!(self.pos.step));
        row.insert("epoch".into(), json!(self.pos.epoch + 1));
        let metric_name = self.metric.map(|m| m.1);
        if tally.n > 0 {
            row.insert("train_loss".into(), json!(tally.loss / tally.n as f64));
            if let Some(mn) = metric_name {
                row.insert(format!("train_{mn}"), json!(tally.correct / tally.n as f64));
            }
        }
        if tally.steps > 0 {
            row.insert("data_wait".into(), json!(tally.data_wait / epoch_s.max(1e-9)));
        }
        let mut line = format!("epoch {}/{}: step {}", self.pos.epoch + 1, self.epochs, self.pos.step);
        let show = |l: f64, m: f64| match metric_name {
            Some(mn) => format!("loss {l:.4} {mn} {m:.4}"),
            None => format!("loss {l:.4}"),
        };
        if tally.n > 0 {
            line += &format!(", train {}", show(tally.loss / tally.n as f64, tally.correct / tally.n as f64));
        }
        self.runner.sync()?;
        for (name, d) in [("val", &self.val), ("test", &self.test)] {
            if let Some(d) = d {
                let e = evaluate(&mut self.eval, &self.runner.values, d, self.cfg.eval_batch_size)?;
                row.insert(format!("{name}_loss"), json!(e.loss));
                if let Some(mn) = metric_name {
                    row.insert(format!("{name}_{mn}"), json!(e.metric));
                }
                line += &format!(", {name} {}", show(e.loss, e.metric));
                if let Some(iou) = e.mean_iou {
                    row.insert(format!("{name}_miou"), json!(iou));
                    line += &format!(" mIoU {iou:.4}");
                }
            }
        }
        let seconds = self.seconds();
        row.insert("seconds".into(), json!(seconds));
        // the process's peak resident memory so far (MiB)
        let peak = crate::memory::peak_rss_bytes().map(crate::memory::mib);
        if let Some(p) = peak {
            row.insert("peak_rss_mib".into(), json!(p.round()));
        }
        self.metrics.write(&row)?;
        println!(
            "{line} ({seconds:.1} s; waiting for data {:.1}% of the epoch{})",
            100.0 * tally.data_wait / epoch_s.max(1e-9),
            peak.map(|p| format!("; peak memory {p:.0} MiB")).unwrap_or_default()
        );
        if let Some(w) = tally.last_weights {
            crate::tensor::write_npz(&self.cfg.run.join("sample_weights.npz"), &[("sample_weights".into(), w)])?;
        }
        if self.pos.batch_in_epoch >= self.per_epoch || (self.pos.step as usize) < self.total {
            self.pos.epoch += 1;
            self.pos.batch_in_epoch = 0;
        }
        self.pos.epoch_sums = (tally.loss, tally.correct, tally.n);
        self.checkpoint()?;
        Ok(self.pos.batch_in_epoch != 0)
    }

    /// "the last good checkpoint (step N) is in RUN/checkpoints", for a run that stops on an error.
    fn last_good(&self) -> Result<String> {
        let run = &self.cfg.run;
        Ok(match checkpoint::list(run)?.last() {
            Some((s, _)) => format!("the last good checkpoint (step {s}) is in {}", checkpoint::dir(run).display()),
            None if !self.cfg.resume => format!(
                "no checkpoint was written yet, so nothing is kept: {} is removed and the same command can run again",
                run.display()
            ),
            None => format!("{} holds no checkpoint", run.display()),
        })
    }

    /// Writes a checkpoint of where the run stands (parameters, optimizer state, statistics).
    fn checkpoint(&mut self) -> Result<()> {
        self.pos.metrics_lines = self.metrics.lines;
        self.pos.seconds = self.seconds();
        self.runner.sync()?;
        checkpoint::save(&self.cfg.run, &self.pos, &self.runner.values, self.cfg.keep_checkpoints)?;
        Ok(())
    }

    /// The trained model: the original graph with the trained values, RUN_DIR/model.onnx.
    fn finish(mut self) -> Result<i32> {
        self.runner.sync()?;
        let trained = export::export(&self.model, &self.cfg.spec.grad, &self.runner.values)
            .with_context(|| self.shown.clone())?;
        let path = self.cfg.run.join("model.onnx");
        trained.save(&path, &Default::default())?;
        println!("wrote {} (the trained model)", path.display());
        Ok(0)
    }
}

/// The training, validation and test sets: loaded, bound to the graph's inputs and labels,
/// normalized, split, with label noise applied; also the clean labels and the indices flipped.
fn load_data(
    cfg: &TrainConfig,
    inputs: &[InputSpec],
    target: &TargetSpec,
    classes: Option<usize>,
    shown: &str,
    drop_last: bool,
) -> Result<(RunData, Vec<i64>, Vec<usize>)> {
    let image_shape = data::image_shape(inputs);
    let opts = LoadOptions {
        sample_shape: image_shape,
        target: cfg.target.clone(),
        image_cache_bytes: cfg.image_cache_mb.map(|m| m << 20),
    };
    let loaded = data::load(&cfg.data, cfg.data_format, &opts)?;
    let mut train = loaded.train.bind(inputs, target, shown)?;
    let mut test = match &cfg.test {
        Some(t) => {
            let format = cfg.data_format.unwrap_or(loaded.format);
            let d = if format == data::Format::Csv {
                // categories mapped as the training table's
                let names = (!train.class_names.is_empty()).then_some(train.class_names.as_slice());
                data::load_table(t, cfg.target.as_deref().unwrap_or(""), names)?
            } else {
                data::load(t, Some(format), &opts)?.train
            };
            Some(d.bind(inputs, target, shown)?)
        }
        None => match loaded.test {
            Some(d) => Some(d.bind(inputs, target, shown)?),
            None => None,
        },
    };
    let mut val = None;
    if let Some(f) = cfg.val_split {
        if !(0.0..1.0).contains(&f) {
            bail!("--val-split must be a fraction in [0, 1), got {f}");
        }
        let order = loader::permutation(train.len(), cfg.seed, "val-split");
        let k = (f * train.len() as f64).round() as usize;
        if k == 0 || k == train.len() {
            bail!(
                "--val-split {f} of {} samples leaves {} for validation and {} for training; choose a fraction that leaves both",
                train.len(),
                k,
                train.len() - k
            );
        }
        val = Some(train.subset(&order[..k]));
        train = train.subset(&order[k..]);
    }
    // normalization: per channel (given or the dataset's), or standardization from the training split
    let norm = match &cfg.normalize {
        Normalize::Standard => {
            let Some((x, shape)) = train.float_samples() else {
                bail!("{}: --normalize standard applies to float features; this data has none", train.source);
            };
            let f: usize = shape.iter().product();
            if shape.len() != 1 {
                bail!(
                    "{}: --normalize standard is for tables [N, features]; for images give MEAN,STD per channel",
                    train.source
                );
            }
            Some(data::table::standardize_stats(x, f))
        }
        other => other.resolve(loaded.kind),
    };
    if let Some((m, s)) = &norm {
        for d in std::iter::once(&mut train).chain(val.as_mut()).chain(test.as_mut()) {
            d.normalize_channels(m, s)?;
        }
    }
    if let Some(c) = classes {
        train.classes = train.classes.max(c);
    }
    let clean = train.labels().map(|l| l.to_vec()).unwrap_or_default();
    let flipped = match cfg.label_noise {
        Some(f) => train.add_label_noise(f, cfg.label_noise_seed)?,
        None => vec![],
    };
    if cfg.crop_flip && train.y.as_ref().map(|y| y.shape.len() >= 2).unwrap_or(false) {
        bail!(
            "{}: --augment crop-flip moves the image but not its per-position labels; train dense predictions without it",
            train.source
        );
    }
    if train.len() < cfg.batch_size && drop_last {
        bail!("{}: {} samples are fewer than one batch of {}", train.source, train.len(), cfg.batch_size);
    }
    let fill = norm
        .as_ref()
        .filter(|_| cfg.crop_flip)
        .map(|(m, s)| m.iter().zip(s).map(|(m, s)| -m / s).collect())
        .unwrap_or_default();
    let standardized = if cfg.normalize == Normalize::Standard { norm.clone() } else { None };
    Ok((RunData { train, val, test, fill, standardized }, clean, flipped))
}

/// A new run's folder: config.json (how to resume), source.onnx, labels.npz under label noise.
fn start_run_folder(
    cfg: &TrainConfig,
    model: &Model,
    train: &Dataset,
    clean: &[i64],
    flipped: &[usize],
    standardized: Option<&(Vec<f32>, Vec<f32>)>,
) -> Result<()> {
    let run = &cfg.run;
    std::fs::create_dir_all(run).map_err(|e| {
        anyhow!("{}: cannot create the run folder: {}", run.display(), graph_passes::onnx::io_reason(&e))
    })?;
    if !cfg.resume {
        let model_path: PathBuf = std::fs::canonicalize(&cfg.model).unwrap_or(cfg.model.clone());
        let json = json!({
            "args": cfg.command_line,
            "model": model_path,
            "onnxsam": env!("CARGO_PKG_VERSION"),
            "spec": serde_json::to_value(&cfg.spec)?,
        });
        model.save(&run.join("source.onnx"), &Default::default())?;
        if let Some((m, s)) = standardized {
            // what eval applies to a run's model.onnx
            let json = json!({ "kind": "standard", "mean": m, "std": s });
            graph_passes::onnx::write_atomic(
                &run.join("normalization.json"),
                serde_json::to_string_pretty(&json)?.as_bytes(),
            )?;
        }
        if !train.class_names.is_empty() {
            // class → index, as torchvision's ImageFolder.classes (or a table's sorted categories)
            let classes = json!({ "classes": train.class_names });
            graph_passes::onnx::write_atomic(
                &run.join("classes.json"),
                serde_json::to_string_pretty(&classes)?.as_bytes(),
            )?;
        }
        if cfg.label_noise.is_some() {
            let n = clean.len();
            crate::tensor::write_npz(
                &run.join("labels.npz"),
                &[
                    ("clean".into(), HostTensor::i64(&[n], clean.to_vec())),
                    ("noisy".into(), HostTensor::i64(&[n], train.labels().map(|l| l.to_vec()).unwrap_or_default())),
                    ("flipped".into(), HostTensor::i64(&[flipped.len()], flipped.iter().map(|&i| i as i64).collect())),
                ],
            )?;
        }
        graph_passes::onnx::write_atomic(&run.join("config.json"), serde_json::to_string_pretty(&json)?.as_bytes())?;
    }
    if cfg.label_noise.is_some() {
        println!(
            "label noise: {} of {} training labels flipped ({:.2}%); clean and noisy labels in {}",
            flipped.len(),
            train.len(),
            100.0 * flipped.len() as f64 / train.len() as f64,
            run.join("labels.npz").display()
        );
    }
    Ok(())
}
