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
use crate::distributed::{self as distributed, Dist};
use crate::grad::Batch;
use crate::step::{Evaluator, StepRunner};
use crate::tensor::HostTensor;
use checkpoint::Position;
pub use config::TrainConfig;
pub(crate) use evaluate::{binding, evaluate, fixed_batch, fixed_batch_refusal, metric_of, output_classes};

/// Stopped by Ctrl-C: checkpoint and exit.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn scalar(out: &BTreeMap<String, HostTensor>, k: &str) -> Value {
    out.get(k).and_then(|t| t.to_f64().first().copied()).map(|v| json!(v)).unwrap_or(Value::Null)
}

/// Trains as `cfg` says. Returns the exit code: 0 done, 130 interrupted (checkpoint written).
///
/// Data-parallel (crate::distributed): every rank runs this. An error every rank reached
/// together (a NaN on some rank, ranks that disagree) is reported by rank 0 and ends the others
/// quietly; an error only one rank saw (its data, its engine) is reported with its rank, and
/// ends every rank's process at once (MPI_Abort), so none waits for it in a collective.
pub fn train(cfg: &TrainConfig) -> Result<i32> {
    let existed = cfg.run.exists();
    let mut dist = crate::distributed::connect(cfg.distributed, cfg.dist_opts.clone())?;
    if dist.as_ref().is_some_and(|d| d.rank() != 0) {
        // rank 0 says what every rank would; a rank's own error is still said (with its rank)
        crate::error::QUIET.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let result = train_on(cfg, dist.as_mut(), existed);
    let (Some(d), Err(e)) = (dist.as_mut(), &result) else { return result };
    let code = e.downcast_ref::<crate::error::Failure>().map(|f| f.code).unwrap_or(2);
    match e.downcast_ref::<crate::distributed::Stopped>() {
        // every rank stops here together: one of them says why, and no rank exits before that
        // line is out (the launcher ends the job when the first rank exits with an error)
        Some(s) => {
            if s.report {
                eprintln!("onnxsam: error: {}", format!("{e:#}").replace('\n', " "));
            }
            let _ = d.barrier();
            Ok(s.code)
        }
        None => {
            eprintln!("onnxsam: error: rank {} of {}: {}", d.rank(), d.size(), format!("{e:#}").replace('\n', " "));
            d.abort(code)
        }
    }
}

fn train_on(cfg: &TrainConfig, dist: Option<&mut crate::distributed::Dist>, existed: bool) -> Result<i32> {
    let rank0 = dist.as_ref().map(|d| d.rank() == 0).unwrap_or(true);
    let mut t = Trainer::set_up(cfg, dist)?;
    let result = (|| {
        while t.pos.epoch < t.epochs && (t.pos.step as usize) < t.total {
            let Some(tally) = t.train_epoch()? else { return Ok(130) };
            if t.end_epoch(tally)? {
                break;
            }
        }
        t.finish()
    })();
    if rank0 && result.is_err() && !cfg.resume && checkpoint::list(&cfg.run).map(|l| l.is_empty()).unwrap_or(false) {
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
    for f in [
        "config.json",
        "source.onnx",
        "normalization.json",
        "classes.json",
        "labels.npz",
        "metrics.jsonl",
        "metrics.csv",
    ] {
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
    /// Evaluation's batch size (--eval-batch-size; 1 for a file that fixes the batch at 1).
    eval_batch: usize,
    /// Data-parallel: this rank's communicator (None: one process).
    dist: Option<&'a mut Dist>,
    /// A data-parallel rank other than 0: it writes and prints nothing (errors aside).
    quiet: bool,
    /// Rows of a step's global batch (--batch-size × ranks).
    global_batch: usize,
    /// Running statistics (averaged across ranks at evaluations and checkpoints).
    state_names: Vec<String>,
    /// The running statistics were averaged after the last step.
    state_averaged: bool,
    /// Only whole batches: --drop-last, m-SAM, or a step compiled at the data's sizes.
    drop_last: bool,
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
    pub fn set_up(cfg: &'a TrainConfig, mut dist: Option<&'a mut Dist>) -> Result<Trainer<'a>> {
        let run = &cfg.run;
        let ranks = dist.as_ref().map(|d| (d.rank(), d.size()));
        // what each rank does on its own (model, graphs, data, engine): every rank gets through
        // it, or every rank stops with one error (Dist::settle)
        let local = (|| {
            if !cfg.resume && run.join("config.json").exists() {
                bail!(
                    "{}: this folder already holds a run; pass --resume {} to continue it, or choose another --out",
                    run.display(),
                    run.display()
                );
            }
            let o = &cfg.dist_opts;
            if ranks.is_none() && (o.sync_ascent || o.global_weights) {
                bail!("--sync-ascent and --global-weights define SAM and RW-SAM across ranks; train data-parallel with mpirun -np N onnxsam train … --distributed mpi, or leave them out");
            }
            if o.sync_ascent && cfg.spec.micro_batch.is_some() {
                bail!("--sync-ascent gives the global batch one ε, while m-SAM (--micro-batch) perturbs each micro-batch; choose one");
            }
            if o.sync_ascent && cfg.spec.optimizer == graph_passes::passes::sam_update::Optimizer::Sgd {
                bail!("--sync-ascent chooses how the SAM family's ε is taken across ranks; --optimizer sgd, adam and adamw have no ascent step (their gradient is averaged across ranks anyway)");
            }
            if o.global_weights && cfg.spec.reweight.is_none() {
                bail!("--global-weights normalizes RW-SAM's weights over all ranks; it needs --reweight λ");
            }
            if let Some(e) = cfg.sam_from_epoch {
                if cfg.spec.optimizer == graph_passes::passes::sam_update::Optimizer::Sgd {
                    bail!("--sam-from-epoch {e} switches to a SAM-family optimizer at that epoch; choose one with --optimizer (sam, gsam, …)");
                }
                if e == 0 {
                    bail!("--sam-from-epoch counts epochs from 1 (1: SAM from the start)");
                }
                if ranks.is_some() || cfg.spec.accumulate.is_some_and(|k| k > 1) || cfg.spec.micro_batch.is_some() {
                    bail!("--sam-from-epoch runs on one process without --accumulate or --micro-batch here");
                }
            }
            if cfg.rho_follows_lr && cfg.spec.optimizer == graph_passes::passes::sam_update::Optimizer::Sgd {
                bail!("--rho-schedule lr schedules the SAM family's ρ; --optimizer {} has none", cfg.spec.optimizer.name());
            }
            let shown = cfg.model.display().to_string();
            let model = Model::load(&cfg.model)?;
            let spec = &cfg.spec;
            if cfg.batch_size == 0 {
                bail!("--batch-size must be at least 1");
            }
            let mut drop_last = cfg.drop_last;
            // said once the data fits (the sizes are the data's)
            let mut sizes_note = None;
            if let Some(m) = spec.micro_batch {
                if cfg.batch_size % m != 0 {
                    bail!("--micro-batch {m} does not divide --batch-size {}", cfg.batch_size);
                }
                drop_last = true; // m-SAM needs whole batches
            }
            // where a rule needs sizes the file leaves to run time, the step is compiled for the
            // data's sample shape and --batch-size (one process, no accumulation: the step then
            // runs at one size), and the last, smaller batch is dropped
            let one_size = ranks.is_none() && spec.accumulate.unwrap_or(1) <= 1 && spec.micro_batch.is_none();
            let sizes = || crate::grad::data_input_dims(&cfg.data, &model, Some(cfg.batch_size));
            let compiled = crate::grad::compile_at_sizes(&model, sizes, |m| graph_passes::step::step_graphs(m, spec));
            let (graphs, fixed_sizes) = compiled.map_err(|e| {
                // an export that fixed the batch may have folded what a dynamic one keeps
                let fixed = evaluate::fixed_batch(&model)
                    .map(|f| format!("; the file also fixes the batch at {} ({}): {}", f.batch, f.what, f.hint))
                    .unwrap_or_default();
                anyhow!("{shown}: {e}{fixed}")
            })?;
            // the model the step graphs were compiled from (the file's, or at the data's sizes)
            let step_model = match fixed_sizes {
                Some(f) if !one_size => bail!(
                    "{shown}: {} needs a size the file computes from its inputs' shape: onnxsam compiles such a model for one batch size, and --accumulate, --micro-batch and --distributed run several; train without them",
                    f.node()
                ),
                Some(f) => {
                    drop_last = true;
                    sizes_note = Some(format!("{shown}: {} (a last batch smaller than --batch-size is dropped)", f.note()));
                    f.model
                }
                None => model.clone(),
            };
            // the class count the labels are checked against: the loss's own, else the output's axis 1
            let classes = match graphs.step.contract.cross_entropy.as_ref().map(|x| x.classes) {
                Some(c) => Some(c as usize),
                None => output_classes(&model, &shown, &graphs.step.contract)?,
            };
            if let Some(f) = evaluate::fixed_batch(&model) {
                // the engines would stop at the first step in their own words; a batch of one
                // trains (and evaluates) one sample at a time
                let bn = graphs.step.contract.batch_norm_over_batch_only.as_deref();
                if let Some(why) = evaluate::fixed_batch_refusal(&f, Some(cfg.batch_size), bn) {
                    bail!("{shown}: {why}");
                }
            }
            let (mut inputs, target) = binding(&graphs.step.model, &graphs.step.contract, classes);
            if sizes_note.is_some() {
                // the data is checked against the file's sizes: the steps run at the training
                // data's (they came from it), evaluation of a test set at its own
                let (file_inputs, _) = binding(&model, &graphs.step.contract, classes);
                for (i, f) in inputs.iter_mut().zip(file_inputs) {
                    i.dims = f.dims;
                }
            }
            let metric = metric_of(&graphs.step.contract);
            let (d, clean, flipped) = load_data(cfg, &inputs, &target, classes, &shown, drop_last)?;
            // what a user should know once, before the run (said when the run starts): the network
            // trains as the file says
            let mut notes: Vec<String> = sizes_note.into_iter().collect();
            if !cfg.resume {
                if let Some(note) = crate::grad::dropout_note(&model) {
                    notes.push(note);
                }
                let ce = graphs.step.contract.cross_entropy.as_ref().map(|x| x.classes as usize);
                // the classes the data has: named (folders, table categories), else the labels' max + 1
                // (train.classes is raised to the model's count for label noise)
                let seen = if d.train.class_names.is_empty() {
                    d.train
                        .labels()
                        .and_then(|l| l.iter().copied().max())
                        .map(|m| (m.max(-1) + 1) as usize)
                        .unwrap_or(0)
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
            // data-parallel: a global batch of --batch-size × ranks; the last global batch's rows are
            // shared out, and a share of fewer rows than ranks is dropped
            let n_ranks = ranks.map(|r| r.1).unwrap_or(1);
            let global_batch = cfg.batch_size * n_ranks;
            let rest = d.train.len() % global_batch;
            let one_row = !drop_last && rest >= n_ranks && distributed::shares(rest, n_ranks).contains(&1);
            if let Some(bn) = &graphs.step.contract.batch_norm_over_batch_only {
                if n_ranks > 1 && one_row {
                    bail!(
                        "{}: {} samples in global batches of {n_ranks} × {} leave a last batch that gives some rank one sample, and {bn} cannot normalize one value per channel (PyTorch refuses it too); pass --drop-last or another --batch-size",
                        d.train.source,
                        d.train.len(),
                        cfg.batch_size
                    );
                }
                if n_ranks == 1 && !drop_last && d.train.len() % cfg.batch_size == 1 {
                    bail!(
                    "{}: {} samples in batches of {} leave a last batch of one sample, and {bn} cannot normalize one value per channel (PyTorch refuses it too); pass --drop-last or another --batch-size",
                    d.train.source,
                    d.train.len(),
                    cfg.batch_size
                );
                }
            }
            let per_epoch = loader::global_batches_per_epoch(d.train.len(), global_batch, drop_last, n_ranks);
            if per_epoch == 0 {
                bail!(
                    "{}: {} samples make no whole global batch of {n_ranks} ranks × --batch-size {}; lower --batch-size or use fewer ranks",
                    d.train.source,
                    d.train.len(),
                    cfg.batch_size
                );
            }
            let total = match (cfg.max_steps, cfg.epochs) {
                (Some(s), _) => s,
                (None, Some(e)) => e * per_epoch,
                (None, None) => bail!("give --epochs N or --max-steps N"),
            };
            if let Some(e) = cfg.sam_from_epoch.filter(|&e| e > total.div_ceil(per_epoch.max(1))) {
                notes.push(format!(
                    "--sam-from-epoch {e}: the run has {} epoch(s), so it trains with {} alone",
                    total.div_ceil(per_epoch.max(1)),
                    spec.base.name()
                ));
            }
            // the engine loads both graphs before anything is written: a graph it cannot run leaves no run
            let be = backend::select(&rank_device(cfg, ranks.is_some()), ranks.map(|r| r.0 == 0).unwrap_or(true))?;
            let mut runner =
                StepRunner::from_graphs(graphs, &step_model, spec, be.as_ref(), cfg.seed).with_context(|| shown.clone())?;
            let eval = Evaluator::new(&model, &spec.grad, be.as_ref()).with_context(|| shown.clone())?;
            if ranks.is_some() {
                runner.distribute(&step_model, be.as_ref()).with_context(|| shown.clone())?;
            }
            if cfg.sam_from_epoch.is_some_and(|e| e > 1) {
                runner.set_before(&step_model, be.as_ref()).with_context(|| shown.clone())?;
            }
            // a resumed run's checkpoint, read by every rank
            let resumed = if cfg.resume { Some(checkpoint::load(run, None)?) } else { None };
            if let (Some((p, _)), Some((_, n))) = (&resumed, ranks) {
                if p.ranks != n {
                    bail!(
                    "{}: this run trained on {} rank{}; resume it on as many (mpirun -np {}), as {n} would change its global batch",
                    run.display(),
                    p.ranks,
                    if p.ranks == 1 { "" } else { "s" },
                    p.ranks
                );
                }
            } else if let Some((p, _)) = resumed.as_ref().filter(|(p, _)| p.ranks > 1) {
                bail!(
                    "{}: this run trained on {} ranks; resume it with mpirun -np {} onnxsam train --resume {}",
                    run.display(),
                    p.ranks,
                    p.ranks,
                    run.display()
                );
            }
            Ok((shown, model, metric, d, clean, flipped, notes, be, runner, eval, (per_epoch, total, drop_last), resumed))
        })();
        let (shown, model, metric, d, clean, flipped, notes, be, mut runner, eval, (per_epoch, total, drop_last), resumed) =
            match dist.as_deref_mut() {
                Some(x) => x.settle(local)?,
                None => local?,
            };
        let (rank, n_ranks) = ranks.unwrap_or((0, 1));
        if let Some(x) = dist.as_deref_mut() {
            // ranks that would train different things stop before the first step
            let fp = start_fingerprint(cfg, &d, &runner.values, resumed.as_ref(), total);
            x.agree("the model, the command line, the data or the checkpoint resumed from", fp)?;
        }
        let written = if rank == 0 {
            start_run_folder(cfg, &model, &d.train, &clean, &flipped, d.standardized.as_ref())
        } else {
            Ok(())
        };
        match dist.as_deref_mut() {
            Some(x) => x.settle(written)?,
            None => written?,
        }
        let global_batch = cfg.batch_size * n_ranks;
        let epochs = total.div_ceil(per_epoch.max(1));
        let mut pos = Position {
            step: 0,
            epoch: 0,
            batch_in_epoch: 0,
            metrics_lines: 0,
            seconds: 0.0,
            epoch_sums: (0.0, 0.0, 0),
            ranks: n_ranks,
        };
        let quiet = rank != 0;
        if let Some((p, values)) = resumed {
            for (k, v) in values {
                runner.values.insert(k, v);
            }
            runner.step = p.step;
            if !quiet {
                println!(
                    "resuming {} at step {} (epoch {}, batch {})",
                    run.display(),
                    p.step,
                    p.epoch + 1,
                    p.batch_in_epoch
                );
            }
            pos = p;
        }
        runner.keep_on_device = true;
        let metrics = if quiet {
            metrics::Metrics::counted(run, pos.metrics_lines)
        } else {
            metrics::Metrics::open(run, pos.metrics_lines)?
        };
        let spec = &cfg.spec;
        let _ = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst));
        // f32 → f64 through the decimal the user wrote (0.05, not 0.05000000074505806)
        let lr0: f64 = spec.lr.to_string().parse().unwrap_or(spec.lr as f64);
        let rho0: f64 = spec.rho.to_string().parse().unwrap_or(spec.rho as f64);
        let base = spec.base.name().to_string();
        let method = match (spec.optimizer, spec.micro_batch) {
            (graph_passes::passes::sam_update::Optimizer::Sgd, _) => base,
            (o, Some(m)) => format!("m-{} (m = {m}) with {base}", o.name()),
            (o, None) => format!("{} with {base}", o.name()),
        };
        let method = match cfg.sam_from_epoch {
            Some(e) if e > 1 => format!("{method} from epoch {e} ({} before)", spec.base.name()),
            _ => method,
        };
        if !quiet {
            println!(
                "training {} on {} ({} samples, {} steps/epoch, {} steps) with {}{}; {}",
                shown,
                cfg.data.display(),
                d.train.len(),
                per_epoch,
                total,
                method,
                spec.reweight.map(|r| format!(" + {}", r.describe())).unwrap_or_default(),
                be.describe()
            );
            if let Some(n) = &runner.contract().loss_note {
                println!("{n}");
            }
            if let Some(x) = dist.as_deref() {
                let has_state = !runner.contract().state_next.is_empty();
                println!("{}", distributed_plan(cfg, x, d.train.len(), has_state));
            }
            for n in notes {
                eprintln!("onnxsam: note: {n}");
            }
        }
        let base_seconds = pos.seconds;
        // a file that fixes the batch at one sample is evaluated one sample at a time
        let eval_batch =
            if evaluate::fixed_batch(&model).is_some() { 1 } else { cfg.eval_batch_size };
        let state_names: Vec<String> = runner.contract().state_next.keys().cloned().collect();
        Ok(Trainer {
            eval_batch,
            dist,
            quiet,
            global_batch,
            state_names,
            state_averaged: false,
            drop_last,
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
            // the progress bar draws on stderr, which mpirun does not give a terminal
            tty: std::io::stdout().is_terminal() && std::io::stderr().is_terminal(),
        })
    }

    fn drop_last(&self) -> bool {
        self.drop_last
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
                batch_size: self.global_batch,
                drop_last: self.drop_last(),
                skip: self.pos.batch_in_epoch,
                augment: cfg.crop_flip.then(|| loader::CropFlip { pad: 4, fill: self.fill.clone() }),
                seed: cfg.seed,
                epoch: self.pos.epoch,
                shard: self.dist.as_ref().map(|d| (d.rank(), d.size())),
            },
        )
    }

    fn progress_bar(&self) -> Option<indicatif::ProgressBar> {
        (self.tty && !self.quiet).then(|| {
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
            // data-parallel: every rank stops after the step in whose round some rank said so
            let interrupted = match &self.dist {
                Some(d) => d.agreement.interrupted,
                None => INTERRUPTED.load(Ordering::SeqCst),
            };
            if interrupted {
                self.pos.epoch_sums = (tally.loss, tally.correct, tally.n);
                self.checkpoint()?;
                if let Some(b) = &bar {
                    b.abandon();
                }
                if !self.quiet {
                    println!(
                        "interrupted at step {}: checkpoint written; continue with --resume {}",
                        self.pos.step,
                        self.cfg.run.display()
                    );
                }
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
        // GSAM's ProportionScheduler (lr_min = 0): ρ_t = ρ_min + (ρ − ρ_min)·lr_t/lr₀
        let rho = if self.cfg.rho_follows_lr && self.lr0 > 0.0 {
            self.cfg.rho_min + (self.rho0 - self.cfg.rho_min) * lr / self.lr0
        } else {
            self.rho0
        };
        let runner = &mut self.runner;
        // late-phase SAM: the base optimizer's graph until --sam-from-epoch
        runner.sam_active = self.cfg.sam_from_epoch.is_none_or(|e| self.pos.epoch + 1 >= e);
        runner.hyper.insert("lr".into(), lr as f32);
        if runner.hyper.contains_key("rho") {
            runner.hyper.insert("rho".into(), rho as f32);
        }
        // data-parallel: this rank's rows of a global batch of n rows (the epoch's last may be short)
        let n = match self.dist.as_deref_mut() {
            Some(d) => {
                if std::env::var("ONNXSAM_TEST_KILL").ok() == Some(format!("{}:{}", d.rank(), self.pos.step)) {
                    // tests: RANK:STEP, that rank's process dies (SIGABRT) before that step
                    std::process::abort();
                }
                let start = self.pos.batch_in_epoch * self.global_batch;
                d.interrupted = INTERRUPTED.load(Ordering::SeqCst);
                self.global_batch.min(self.train.len() - start)
            }
            None => batch.len(),
        };
        let result = match self.dist.as_deref_mut() {
            Some(d) => runner.step_global(batch, n, d),
            None => runner.step(batch),
        };
        let out = match result {
            Ok(o) => o,
            Err(e) => {
                let message = format!("training stopped: {e:#}; {}", self.last_good()?);
                return Err(match e.downcast::<distributed::Stopped>() {
                    Ok(s) => distributed::Stopped { message, ..s }.into(),
                    Err(_) => crate::error::check_failed(message),
                });
            }
        };
        self.state_averaged = false;
        self.pos.step += 1;
        self.pos.batch_in_epoch += 1;
        tally.steps += 1;
        let every = self.dist.as_ref().map(|d| d.opts.check_every).unwrap_or(0);
        if every > 0 && self.pos.step % every == 0 {
            self.check_identical()?;
        }
        let loss = out["loss"].to_f64()[0];
        let correct = self.metric.and_then(|m| out.get(m.0)).map(|c| c.to_f64()[0]).unwrap_or(f64::NAN);
        // an epoch's train loss weighs each step by its rows, or by its kept positions where
        // the loss is the mean over kept positions (one process; data-parallel steps by rows)
        let w = match self.dist.as_deref() {
            None => crate::grad::batch_weight(self.runner.contract(), batch) as usize,
            Some(_) => n,
        };
        tally.loss += loss * w as f64;
        tally.correct += correct / n as f64 * w as f64;
        tally.n += w;
        let mut row = Map::new();
        row.insert("kind".into(), json!("step"));
        row.insert("step".into(), json!(self.pos.step));
        row.insert("epoch".into(), json!(self.pos.epoch + 1));
        row.insert("lr".into(), json!(lr));
        if self.runner.hyper.contains_key("rho") && self.runner.sam_active {
            row.insert("rho".into(), json!(rho));
        }
        row.insert("loss".into(), json!(loss));
        let metric_name = self.metric.map(|m| m.1).unwrap_or("");
        if let Some((_, name)) = self.metric {
            row.insert(name.into(), json!(correct / n as f64));
        }
        if self.cfg.sam_from_epoch.is_some() {
            row.insert("sam".into(), json!(self.runner.sam_active));
        }
        for k in ["grad_norm", "sharpness", "weight_entropy", "ess", "lambda", "max_weight", "trace_v"] {
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
                if self.pos.batch_in_epoch % every == 0 && !self.quiet {
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
        let ppl = self.runner.contract().class_axis.map(|a| a > 1).unwrap_or(false);
        if tally.n > 0 {
            row.insert("train_loss".into(), json!(tally.loss / tally.n as f64));
            if ppl {
                row.insert("train_ppl".into(), json!((tally.loss / tally.n as f64).exp()));
            }
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
        self.average_state()?;
        for (name, d) in [("val", &self.val), ("test", &self.test)] {
            if let Some(d) = d {
                let e = evaluate(
                    &mut self.eval,
                    &self.runner.values,
                    d,
                    self.eval_batch,
                    self.dist.as_deref_mut(),
                )?;
                row.insert(format!("{name}_loss"), json!(e.loss));
                if let Some(mn) = metric_name {
                    row.insert(format!("{name}_{mn}"), json!(e.metric));
                }
                line += &format!(", {name} {}", show(e.loss, e.metric));
                if ppl {
                    // a language model's perplexity: exp of the mean loss per kept token
                    row.insert(format!("{name}_ppl"), json!(e.loss.exp()));
                    line += &format!(" ppl {:.2}", e.loss.exp());
                }
                if let Some(iou) = e.mean_iou {
                    row.insert(format!("{name}_miou"), json!(iou));
                    line += &format!(" mIoU {iou:.4}");
                }
            }
        }
        let seconds = self.seconds();
        row.insert("seconds".into(), json!(seconds));
        let mut comm = String::new();
        if let Some(d) = self.dist.as_deref_mut() {
            // this rank's all-reduce traffic in the epoch, per step
            let t = std::mem::take(&mut d.traffic);
            let steps = tally.steps.max(1) as f64;
            row.insert("allreduce_mib".into(), json!(t.bytes as f64 / steps / 1048576.0));
            row.insert("allreduce_ms".into(), json!(1e3 * t.seconds / steps));
            row.insert("allreduce_wait_ms".into(), json!(1e3 * t.wait_seconds / steps));
            let calls = t.calls as f64 / steps;
            let calls = if (calls - calls.round()).abs() < 0.05 { format!("{calls:.0}") } else { format!("{calls:.1}") };
            comm = format!(
                "; all-reduce {:.1} MiB in {calls} calls, {:.1} ms a step, {:.1} ms waiting for other ranks",
                t.bytes as f64 / steps / 1048576.0,
                1e3 * t.seconds / steps,
                1e3 * t.wait_seconds / steps
            );
        }
        // the process's peak resident memory so far (MiB)
        let peak = crate::memory::peak_rss_bytes().map(crate::memory::mib);
        if let Some(p) = peak {
            row.insert("peak_rss_mib".into(), json!(p.round()));
        }
        self.metrics.write(&row)?;
        if !self.quiet {
            println!(
                "{line} ({seconds:.1} s; waiting for data {:.1}% of the epoch{}{comm})",
                100.0 * tally.data_wait / epoch_s.max(1e-9),
                peak.map(|p| format!("; peak memory {p:.0} MiB")).unwrap_or_default()
            );
        }
        if let Some(w) = tally.last_weights.filter(|_| !self.quiet) {
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
    /// Data-parallel: running statistics averaged and parameters compared across ranks first;
    /// rank 0 writes; every rank stops if the write failed.
    fn checkpoint(&mut self) -> Result<()> {
        self.pos.metrics_lines = self.metrics.lines;
        self.pos.seconds = self.seconds();
        self.runner.sync()?;
        self.average_state()?;
        if self.dist.is_some() {
            self.check_identical()?;
        }
        let written = if self.quiet {
            Ok(())
        } else {
            checkpoint::save(&self.cfg.run, &self.pos, &self.runner.values, self.cfg.keep_checkpoints).map(|_| ())
        };
        match self.dist.as_deref_mut() {
            Some(d) => d.settle(written),
            None => written,
        }
    }

    /// Data-parallel: every rank's running statistics replaced by their average over ranks
    /// (once after a step: evaluation and checkpoint see the same values).
    fn average_state(&mut self) -> Result<()> {
        if let (Some(d), false) = (self.dist.as_deref_mut(), self.state_averaged) {
            d.average_state(&mut self.runner.values, &self.state_names)?;
            self.state_averaged = true;
        }
        Ok(())
    }

    /// Data-parallel: parameters and optimizer state must be bit-identical on every rank (the
    /// same summed gradient, the same update); a rank that drifted stops every rank.
    fn check_identical(&mut self) -> Result<()> {
        let Some(d) = self.dist.as_deref_mut() else { return Ok(()) };
        self.runner.sync()?;
        if let Ok(spec) = std::env::var("ONNXSAM_TEST_DRIFT") {
            // tests: RANK:STEP nudges one parameter on that rank after that step
            let v: Vec<u64> = spec.split(':').filter_map(|x| x.parse().ok()).collect();
            if v.len() == 2 && v[0] == d.rank() as u64 && v[1] == self.pos.step {
                if let Some(p) = self.runner.contract().params.first().cloned() {
                    if let Some(crate::tensor::Data::F32(x)) = self.runner.values.get_mut(&p).map(|t| &mut t.data) {
                        x[0] += 1e-3;
                    }
                }
            }
        }
        let state = &self.state_names;
        let fp = distributed::fingerprint(self.runner.values.iter().filter(|(k, _)| !state.contains(k)));
        d.agree(&format!("after step {}, parameters and optimizer state", self.pos.step), fp).map_err(|e| {
            match e.downcast::<distributed::Stopped>() {
                Ok(s) => distributed::Stopped {
                    message: format!(
                        "{} (an all-reduce that does not give every rank the same sum, or a rank whose engine computes differently); {}",
                        s.message,
                        self.last_good().unwrap_or_default()
                    ),
                    ..s
                }
                .into(),
                Err(e) => e,
            }
        })
    }

    /// --trace-v N: the gradient-noise trace of the trained parameters over N training samples
    /// (the same N, with their training labels, for every run of a seed-independent key):
    /// tr V = (1/N)·Σ‖∇ℓᵢ‖² − ‖(1/N)·Σ∇ℓᵢ‖², exact per-sample gradients in batches of 16.
    fn trace_v(&mut self, n: usize) -> Result<()> {
        let n = n.min(self.train.len());
        let be = backend::select(&rank_device(self.cfg, false), false)?;
        let mut psg = crate::step::PerSampleGrads::new(&self.model, &self.cfg.spec.grad, be.as_ref())?;
        let order = loader::permutation(self.train.len(), 0, "trace_v");
        let (mut sq, mut sum, mut used): (f64, BTreeMap<String, Vec<f64>>, usize) = (0.0, BTreeMap::new(), 0);
        for chunk in order[..n].chunks(16).filter(|c| c.len() >= 2) {
            let b = self.train.try_batch(chunk)?;
            for gi in psg.grads(&self.runner.values, &b, self.cfg.seed, self.pos.step)? {
                used += 1;
                for (p, t) in gi {
                    let v = t.to_f64();
                    sq += v.iter().map(|x| x * x).sum::<f64>();
                    let acc = sum.entry(p).or_insert_with(|| vec![0.0; v.len()]);
                    acc.iter_mut().zip(&v).for_each(|(a, x)| *a += x);
                }
            }
        }
        let used = used.max(1);
        let mean_sq = sq / used as f64;
        let norm_mean_sq: f64 = sum.values().flatten().map(|a| (a / used as f64).powi(2)).sum();
        let tv = mean_sq - norm_mean_sq;
        let mut row = Map::new();
        row.insert("kind".into(), json!("trace_v"));
        row.insert("step".into(), json!(self.pos.step));
        row.insert("samples".into(), json!(used));
        row.insert("trace_v".into(), json!(tv));
        row.insert("mean_sq_grad_norm".into(), json!(mean_sq));
        row.insert("sq_norm_mean_grad".into(), json!(norm_mean_sq));
        self.metrics.write(&row)?;
        if !self.quiet {
            println!("tr V = {tv:.4} over {used} training samples (mean ‖∇ℓᵢ‖² {mean_sq:.4}, ‖∇L‖² {norm_mean_sq:.4})");
        }
        Ok(())
    }

    /// The trained model: the original graph with the trained values, RUN_DIR/model.onnx.
    fn finish(mut self) -> Result<i32> {
        self.runner.sync()?;
        self.average_state()?;
        if self.cfg.trace_v_samples > 0 && self.dist.is_none() {
            self.trace_v(self.cfg.trace_v_samples)?;
        }
        let path = self.cfg.run.join("model.onnx");
        let written = if self.quiet {
            Ok(())
        } else {
            export::export(&self.model, &self.cfg.spec.grad, &self.runner.values)
                .with_context(|| self.shown.clone())
                .and_then(|trained| Ok(trained.save(&path, &Default::default())?))
        };
        match self.dist.as_deref_mut() {
            Some(d) => d.settle(written)?,
            None => written?,
        }
        if !self.quiet {
            println!("wrote {} (the trained model)", path.display());
        }
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

/// What every rank of a data-parallel run must agree on before its first step: the command line
/// (and what decides which collectives a rank calls), the model file, its initial values, the
/// checkpoint resumed from, and the training, validation and test data in full.
fn start_fingerprint(
    cfg: &TrainConfig,
    d: &RunData,
    values: &BTreeMap<String, HostTensor>,
    resumed: Option<&(Position, BTreeMap<String, HostTensor>)>,
    total: usize,
) -> u64 {
    let o = &cfg.dist_opts;
    let comm = format!("{} {} {} {} {total}", o.sync_ascent, o.global_weights, o.bucket_bytes, o.check_every);
    let mut parts = vec![
        distributed::fingerprint_bytes(cfg.command_line.join("\u{1f}").as_bytes()),
        distributed::fingerprint_bytes(comm.as_bytes()),
        std::fs::read(&cfg.model).map(|b| distributed::fingerprint_bytes(&b)).unwrap_or(0),
        distributed::fingerprint(values.iter()),
    ];
    if let Some((p, v)) = resumed {
        parts.extend([p.step, p.epoch as u64, p.batch_in_epoch as u64, distributed::fingerprint(v.iter())]);
    }
    for set in std::iter::once(&d.train).chain(d.val.as_ref()).chain(d.test.as_ref()) {
        parts.push(set.len() as u64);
        parts.push(distributed::fingerprint(set.columns.iter().map(|(k, v)| (k, v)).chain(set.y.as_ref().map(|y| (&set.source, y)))));
    }
    let bytes: Vec<u8> = parts.iter().flat_map(|p| p.to_le_bytes()).collect();
    distributed::fingerprint_bytes(&bytes)
}

/// The engine request of this rank: data-parallel with `--device cuda` (no index), each rank takes
/// the GPU of its rank on its node (OMPI_COMM_WORLD_LOCAL_RANK, MPI_LOCALRANKID, SLURM_LOCALID),
/// as torchrun's LOCAL_RANK; `--device cuda:N` is taken as given.
fn rank_device(cfg: &TrainConfig, distributed: bool) -> backend::BackendRequest {
    let mut req = cfg.backend.clone();
    let bare = cfg.command_line.windows(2).any(|w| w[0] == "--device" && w[1] == "cuda")
        || cfg.command_line.iter().any(|a| a == "--device=cuda");
    if distributed && bare {
        let local = ["OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"]
            .iter()
            .find_map(|v| std::env::var(v).ok().and_then(|s| s.parse::<i32>().ok()));
        if let Some(l) = local {
            req.device = backend::Device::Cuda(l);
        }
    }
    req
}

/// The log line that says how a data-parallel run splits its work.
fn distributed_plan(cfg: &TrainConfig, d: &Dist, samples: usize, has_state: bool) -> String {
    let n = d.size();
    let spec = &cfg.spec;
    let sam = spec.optimizer != graph_passes::passes::sam_update::Optimizer::Sgd;
    let ascent = match (sam, spec.micro_batch, d.opts.sync_ascent) {
        (false, _, _) => String::new(),
        (true, Some(m), _) => format!("; m-SAM micro-batches of {m} within each rank"),
        (true, None, true) => "; one ε from the all-reduced ascent gradient (--sync-ascent)".into(),
        (true, None, false) => format!(
            "; each rank's ε from its own gradient (m-SAM with m = {}; --sync-ascent for one ε)",
            cfg.batch_size
        ),
    };
    let weights = match (spec.reweight.is_some(), d.opts.global_weights) {
        (false, _) => "",
        (true, false) => "; RW-SAM weights normalized within each rank",
        (true, true) => "; RW-SAM weights normalized over all ranks (--global-weights)",
    };
    let bn = if has_state { "; BatchNorm running statistics averaged across ranks at each evaluation and checkpoint" } else { "" };
    let rest = samples % (cfg.batch_size * n);
    let dropped = if rest > 0 && rest < n && !cfg.drop_last {
        format!("; each epoch's last {rest} sample{} (fewer than the ranks) are left out", if rest == 1 { "" } else { "s" })
    } else {
        String::new()
    };
    format!(
        "distributed: {n} rank{} × --batch-size {} per rank = global batch {}{ascent}{weights}; gradients averaged across ranks in buckets of {:.1} MiB{bn}{dropped}",
        if n == 1 { "" } else { "s" },
        cfg.batch_size,
        cfg.batch_size * n,
        d.opts.bucket_bytes as f64 / 1048576.0
    )
}
