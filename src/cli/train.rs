//! `train`, `eval` and `export`: their options, and the training configuration built from them
//! (the training itself is crate::train).
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser};
use graph_passes::ir::Model;
use serde_json::Value;

use super::{BackendArgs, GradGraphArgs, StepArgs};
use crate::backend;
use crate::data::Normalize;
use crate::data::{self, Format};
use crate::step::Evaluator;
use crate::train::schedule::Schedule;
use crate::train::TrainConfig;

#[derive(Args)]
pub struct EvalArgs {
    /// The ONNX model (e.g. a run's model.onnx)
    model: PathBuf,
    /// Dataset (its test split when it has one, else the whole set; see --split)
    #[arg(long, value_name = "DATASET")]
    data: PathBuf,
    #[arg(long, value_enum)]
    data_format: Option<Format>,
    /// A table's label/target column
    #[arg(long, value_name = "COLUMN")]
    target: Option<String>,
    /// test (default when the dataset has one) or train
    #[arg(long)]
    split: Option<String>,
    /// Per-channel normalization MEAN,STD (or M1,…,S1,…), or `none`; default per dataset
    #[arg(long)]
    normalize: Option<String>,
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    #[command(flatten)]
    graph: GradGraphArgs,
    #[command(flatten)]
    backend: BackendArgs,
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct EvalReport {
    model: String,
    data: String,
    samples: usize,
    loss: f64,
    /// Classification: accuracy (per position for per-token/pixel labels).
    #[serde(skip_serializing_if = "Option::is_none")]
    accuracy: Option<f64>,
    /// Regression: mean absolute error.
    #[serde(skip_serializing_if = "Option::is_none")]
    mae: Option<f64>,
    /// Per-position labels (tokens, pixels): mean intersection over union of the classes.
    #[serde(skip_serializing_if = "Option::is_none")]
    mean_iou: Option<f64>,
    /// Language models (classes on the last axis of per-token logits): exp(loss), the loss being
    /// the mean over kept tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    perplexity: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    per_class_accuracy: Vec<Option<f64>>,
}

pub fn eval(a: EvalArgs) -> Result<i32> {
    let model = Model::load(&a.model)?;
    let shown = a.model.display().to_string();
    if a.graph.train_mode_asked() {
        bail!(
            "eval evaluates in eval mode, as model.eval() (BatchNorm's running statistics, no dropout); --train-mode does not apply to it"
        );
    }
    let mut spec = a.graph.spec()?;
    spec.labels_shape = data::label_dims(&a.data, a.data_format)?;
    let be = backend::select(&a.backend.request(), true)?;
    let mut ev = Evaluator::new(&model, &spec, be.as_ref()).map_err(|e| anyhow!("{shown}: {e:#}"))?;
    let classes = crate::train::output_classes(&model, &shown, &ev.graph.contract)?;
    let (inputs, target) = crate::train::binding(&ev.graph.model, &ev.graph.contract, classes);
    let image_shape = crate::data::image_shape(&inputs);
    let opts =
        crate::data::LoadOptions { sample_shape: image_shape, target: a.target.clone(), image_cache_bytes: None };
    let loaded = data::load(&a.data, a.data_format, &opts)?;
    let d = match a.split.as_deref() {
        Some("train") => loaded.train,
        Some("test") => loaded.test.ok_or_else(|| anyhow!("{}: no test split here", a.data.display()))?,
        Some(other) => bail!("--split {other}: expected test or train"),
        None => loaded.test.unwrap_or(loaded.train),
    };
    let mut d = d.bind(&inputs, &target, &shown)?;
    // a run's model.onnx: the standardization its training used, from normalization.json beside it
    let beside = a.model.parent().map(|p| p.join("normalization.json")).filter(|p| p.exists());
    let norm = match (a.normalize.as_deref(), beside) {
        (None, Some(p)) => {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&p)?)
                .with_context(|| format!("{}: not a normalization file", p.display()))?;
            let f = |k: &str| -> Vec<f32> {
                v[k].as_array()
                    .map(|a| a.iter().filter_map(|x| x.as_f64()).map(|x| x as f32).collect())
                    .unwrap_or_default()
            };
            eprintln!("normalizing as in training ({})", p.display());
            Some((f("mean"), f("std")))
        }
        (Some("standard"), _) => bail!(
            "--normalize standard takes its statistics from a training split; eval applies those of a run (normalization.json beside its model.onnx) on its own"
        ),
        (arg, _) => parse_normalize(arg)?.resolve(loaded.kind),
    };
    if let Some((m, s)) = norm {
        d.normalize_channels(&m, &s)?;
    }
    let values = crate::grad::initial_values(&ev.graph.contract)?;
    let metric = crate::train::metric_of(&ev.graph.contract);
    // a file that fixes its batch is evaluated in batches of that size
    let batch_size = match crate::train::fixed_batch(&model) {
        Some(f) if f.batch == 1 => 1,
        Some(f) if f.batch as usize == a.batch_size && d.len() % a.batch_size == 0 => a.batch_size,
        Some(f) => bail!(
            "{shown}: the file fixes the batch at {} ({}); evaluate {} samples with --batch-size {} when they divide, or {}",
            f.batch,
            f.what,
            d.len(),
            f.batch,
            f.hint
        ),
        None => a.batch_size,
    };
    let e = crate::train::evaluate(&mut ev, &values, &d, batch_size, None)?;
    let (loss, m) = (e.loss, e.metric);
    // per-class accuracy of a classifier with one label per sample
    let mut per_class = vec![];
    if let (Some(labels), Some(("correct", _))) =
        (d.labels().filter(|_| d.y.as_ref().map(|y| y.shape.len()) == Some(1)), metric)
    {
        let classes = classes.unwrap_or(d.classes).max(1);
        let (mut hit, mut count) = (vec![0usize; classes], vec![0usize; classes]);
        let mut i = 0;
        while i < d.len() {
            let idx: Vec<usize> = (i..(i + batch_size).min(d.len())).collect();
            let out = ev.run(&values, &d.try_batch(&idx)?)?;
            let logits = out.values().find(|t| t.shape.len() == 2 && t.shape[0] == idx.len()).map(|t| t.to_f64());
            if let Some(l) = logits {
                let c = l.len() / idx.len();
                for (k, &s) in idx.iter().enumerate() {
                    let row = &l[k * c..(k + 1) * c];
                    let arg = (0..c)
                        .max_by(|&p, &q| row[p].partial_cmp(&row[q]).unwrap_or(std::cmp::Ordering::Equal))
                        .unwrap_or(0);
                    let y = labels[s] as usize;
                    if y < classes {
                        count[y] += 1;
                        hit[y] += (arg == y) as usize;
                    }
                }
            }
            i += batch_size;
        }
        per_class = hit.iter().zip(&count).map(|(&h, &c)| (c > 0).then(|| h as f64 / c as f64)).collect();
    }
    let r = EvalReport {
        model: shown,
        data: a.data.display().to_string(),
        samples: d.len(),
        loss,
        accuracy: (metric.map(|m| m.1) == Some("acc")).then_some(m),
        mae: (metric.map(|m| m.1) == Some("mae")).then_some(m),
        mean_iou: e.mean_iou,
        perplexity: ev.graph.contract.class_axis.filter(|&a| a > 1).map(|_| loss.exp()),
        per_class_accuracy: per_class,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        let mut line = format!("{}: {} samples of {}: loss {:.4}", r.model, r.samples, r.data, r.loss);
        if let Some(acc) = r.accuracy {
            line += &format!(", accuracy {acc:.4}");
        }
        if let Some(mae) = r.mae {
            line += &format!(", mean absolute error {mae:.4}");
        }
        if let Some(iou) = r.mean_iou {
            line += &format!(", mean IoU {iou:.4}");
        }
        if let Some(p) = r.perplexity {
            line += &format!(", perplexity {p:.3}");
        }
        println!("{line}");
        if !r.per_class_accuracy.is_empty() {
            let per: Vec<String> = r
                .per_class_accuracy
                .iter()
                .enumerate()
                .filter_map(|(c, a)| a.map(|a| format!("{c}: {a:.3}")))
                .collect();
            println!("per class: {}", per.join(", "));
        }
    }
    Ok(0)
}

#[derive(Args)]
pub struct ExportArgs {
    /// A training run's folder
    run: PathBuf,
    /// The checkpoint's step (default: the newest)
    #[arg(long)]
    step: Option<u64>,
    /// onnx: the original graph with the trained tensors; safetensors: the trained parameters and
    /// buffers under PyTorch's state_dict() names and layouts, for
    /// model.load_state_dict(safetensors.torch.load_file(PATH), strict=True)
    #[arg(long, value_enum, default_value = "onnx")]
    format: ExportFormat,
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: PathBuf,
}

#[derive(Clone, Copy, clap::ValueEnum, Debug, PartialEq)]
pub enum ExportFormat {
    /// The original graph with the trained tensors (loadable by any ONNX runtime)
    Onnx,
    /// PyTorch's state_dict (safetensors.torch.load_file)
    Safetensors,
}

pub fn export(a: ExportArgs) -> Result<i32> {
    let (model, spec, micro) = run_source_with_micro_batches(&a.run)?;
    let (pos, values) = crate::train::checkpoint::load(&a.run, a.step)?;
    if a.format == ExportFormat::Safetensors {
        // the forwards that moved BatchNorm's running statistics: one a step, one a micro-batch
        // with --accumulate
        let batches = pos.step as i64 * micro as i64;
        let t = crate::train::export::state_dict(&model, &spec, &values, batches)?;
        crate::train::export::write_safetensors(&a.output, &t)?;
        eprintln!(
            "wrote {} ({} tensors under PyTorch's state_dict names; checkpoint at step {})",
            a.output.display(),
            t.len(),
            pos.step
        );
        return Ok(0);
    }
    let m = crate::train::export::export(&model, &spec, &values)?;
    m.save(&a.output, &Default::default())?;
    eprintln!("wrote {} (checkpoint at step {})", a.output.display(), pos.step);
    Ok(0)
}

#[derive(Args, Clone, Debug)]
pub struct TrainArgs {
    /// The ONNX model (its single output: logits, or a loss)
    pub model: Option<PathBuf>,
    /// Training data: an MNIST-style folder (IDX, raw or .gz), CIFAR binary batches, an ImageFolder
    /// (class folders of PNG/JPEG), a CSV/TSV table (--target), .npz (x or one array per input, y)
    #[arg(long, value_name = "DATASET")]
    pub data: Option<PathBuf>,
    /// Test data (default: the test split beside the training data, when there is one)
    #[arg(long, value_name = "DATASET")]
    pub test: Option<PathBuf>,
    #[arg(long, value_enum)]
    pub data_format: Option<crate::data::Format>,
    /// CSV/TSV data: the label or target column (the other columns are the features, in order)
    #[arg(long, value_name = "COLUMN")]
    pub target: Option<String>,
    /// ImageFolder: decode all images into memory up front when they take at most MB decoded
    /// (default 2048), else decode each batch on the prefetch thread
    #[arg(long, value_name = "MB")]
    pub image_cache_mb: Option<u64>,
    /// Per-channel normalization MEAN,STD (or M1,M2,M3,S1,S2,S3), `standard` (tables: per feature from
    /// the training split, saved as RUN_DIR/normalization.json), or `none`; default per dataset
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
    /// Samples per step (data-parallel: per rank; the global batch is --batch-size × ranks)
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Data-parallel training over MPI: `mpirun -np N onnxsam train … --distributed mpi` (also
    /// chosen when an MPI launcher starts several processes). Each rank reads its share of every
    /// global batch; gradients are summed across ranks before the base optimizer
    #[arg(long, value_name = "mpi")]
    pub distributed: Option<String>,
    /// Data-parallel SAM family: ε from the ascent gradient averaged over all ranks (SAM on the
    /// global batch; two all-reduces a step) instead of each rank's own (m-SAM with m = --batch-size)
    #[arg(long)]
    pub sync_ascent: bool,
    /// Data-parallel RW-SAM: Gibbs weights normalized over all ranks' samples instead of each rank's
    #[arg(long)]
    pub global_weights: bool,
    /// Data-parallel: largest all-reduce bucket (MiB)
    #[arg(long, value_name = "MiB", default_value_t = 4.0)]
    pub bucket_mb: f64,
    /// Data-parallel: compare parameters and optimizer state across ranks every N steps (0: only
    /// at checkpoints)
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub check_every: u64,
    /// constant, cosine, step:0.3,0.6,0.8[@factor], warmup:STEPS[,SCHEDULE]
    #[arg(long, default_value = "constant")]
    pub lr_schedule: String,
    /// constant, or `lr`: ρ follows the learning rate's schedule, ρ_t = ρ_min + (ρ − ρ_min)·lr_t/lr
    /// (GSAM's proportional schedule)
    #[arg(long, default_value = "constant")]
    pub rho_schedule: String,
    /// The smallest ρ of --rho-schedule lr (default 0)
    #[arg(long, value_name = "RHO")]
    pub rho_min: Option<f64>,
    /// At the end of training: the gradient-noise trace tr V = mean ‖∇ℓᵢ‖² − ‖∇L‖² over N training
    /// samples with their training labels, from exact per-sample gradients (a `trace_v` row in
    /// metrics; the paper's Table 6 quantity)
    #[arg(long, value_name = "N")]
    pub trace_v: Option<usize>,
    /// Late-phase SAM: the base optimizer (--base-optimizer, default sgd) until this epoch
    /// (1-based), the chosen SAM variant from it on
    #[arg(long, value_name = "EPOCH")]
    pub sam_from_epoch: Option<usize>,
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

/// `onnxsam train`: the configuration from the command line (or, with --resume, from the run's
/// config.json, with --epochs/--max-steps and the engine options of this command), then
/// crate::train::train.
pub fn train(a: TrainArgs, raw: Vec<String>) -> Result<i32> {
    let cfg = config(a, raw)?;
    crate::train::train(&cfg)
}

fn config(mut a: TrainArgs, raw: Vec<String>) -> Result<TrainConfig> {
    let run: PathBuf;
    let command_line: Vec<String>;
    let resume = a.resume.is_some();
    if let Some(r) = a.resume.clone() {
        // a resumed run keeps its configuration: only its length and the engine may change
        let allowed = [
            "--resume",
            "--epochs",
            "--max-steps",
            "--backend",
            "--device",
            "--threads",
            "--ort-lib",
            "--distributed",
            "--check-every",
            "--bucket-mb",
        ];
        let changed: Vec<&str> = raw
            .iter()
            .filter(|x| x.starts_with("--"))
            .map(|x| x.split('=').next().unwrap_or(x))
            .filter(|x| !allowed.contains(x))
            .collect();
        if !changed.is_empty() {
            bail!(
                "--resume continues {} with its own configuration; {} cannot change (start a new run with --out to train otherwise)",
                r.display(),
                changed.join(", ")
            );
        }
        let (raw_args, stored) = stored_run(&r, "no run to resume here")?;
        command_line = raw_args;
        let (epochs, max_steps, backend) = (a.epochs, a.max_steps, a.backend.clone());
        let (check_every, bucket_mb, distributed) = (a.check_every, a.bucket_mb, a.distributed.clone());
        a = stored;
        if distributed.is_some() {
            a.distributed = distributed;
        }
        // how ranks communicate may change; what they compute may not
        if raw.iter().any(|x| x.starts_with("--check-every")) {
            a.check_every = check_every;
        }
        if raw.iter().any(|x| x.starts_with("--bucket-mb")) {
            a.bucket_mb = bucket_mb;
        }
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
        command_line = raw;
    }
    let model = a.model.clone().ok_or_else(|| anyhow!("train needs a MODEL"))?;
    let data = a.data.clone().ok_or_else(|| anyhow!("train needs --data DATASET"))?;
    let mut spec = a.step.spec(&a.graph)?;
    spec.grad.labels_shape = data::label_dims(&data, a.data_format)?;
    let lr_schedule: Schedule = a.lr_schedule.parse()?;
    let rho_follows_lr = match a.rho_schedule.as_str() {
        "constant" => false,
        "lr" => true,
        other => bail!("--rho-schedule {other}: expected constant or lr"),
    };
    if a.rho_min.is_some() && !rho_follows_lr {
        bail!("--rho-min is the floor of --rho-schedule lr; add --rho-schedule lr or drop it");
    }
    let rho_min = a.rho_min.unwrap_or(0.0);
    if !(rho_min >= 0.0 && rho_min as f32 <= spec.rho) {
        bail!("--rho-min {rho_min}: expected a value in [0, --rho] = [0, {}]", spec.rho);
    }
    let distributed = match a.distributed.as_deref() {
        None => false,
        Some("mpi") => true,
        Some(other) => bail!("--distributed {other}: the transport onnxsam has is mpi"),
    };
    if !(a.bucket_mb > 0.0 && a.bucket_mb.is_finite()) {
        bail!("--bucket-mb {}: expected a size in MiB above 0", a.bucket_mb);
    }
    let dist_opts = crate::distributed::DistOptions {
        sync_ascent: a.sync_ascent,
        global_weights: a.global_weights,
        bucket_bytes: ((a.bucket_mb * 1048576.0) as usize).max(4),
        check_every: a.check_every,
    };
    let crop_flip = match a.augment.as_deref() {
        None => false,
        Some("crop-flip") => true,
        Some(other) => bail!("--augment {other}: the augmentation onnxsam has is crop-flip"),
    };
    Ok(TrainConfig {
        model,
        data,
        test: a.test,
        data_format: a.data_format,
        target: a.target,
        image_cache_mb: a.image_cache_mb,
        normalize: parse_normalize(a.normalize.as_deref())?,
        spec,
        epochs: a.epochs,
        max_steps: a.max_steps,
        batch_size: a.batch_size,
        lr_schedule,
        rho_follows_lr,
        rho_min,
        sam_from_epoch: a.sam_from_epoch,
        trace_v_samples: a.trace_v.unwrap_or(0),
        label_noise: a.label_noise,
        label_noise_seed: a.label_noise_seed.unwrap_or(a.seed),
        crop_flip,
        val_split: a.val_split,
        seed: a.seed,
        drop_last: a.drop_last,
        keep_checkpoints: a.keep_checkpoints,
        eval_batch_size: a.eval_batch_size,
        backend: a.backend.request(),
        run,
        resume,
        command_line,
        distributed,
        dist_opts,
    })
}

#[derive(Parser)]
struct Stored {
    #[command(flatten)]
    a: TrainArgs,
}

/// `--normalize`: MEAN,STD or M1,…,Mc,S1,…,Sc, `standard` (per feature, from the training split),
/// `none`, or (absent) the dataset's default.
fn parse_normalize(arg: Option<&str>) -> Result<Normalize> {
    let Some(s) = arg else { return Ok(Normalize::DatasetDefault) };
    if s == "none" {
        return Ok(Normalize::Off);
    }
    if s == "standard" {
        return Ok(Normalize::Standard);
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
    Ok(Normalize::Channels { mean: v[..h].to_vec(), std: v[h..].to_vec() })
}

/// The run folder's source model and its training spec (for export).
/// The run's model, how its graph was built, and its micro-batches per step (--accumulate).
fn run_source_with_micro_batches(run: &Path) -> Result<(Model, graph_passes::step::GradSpec, usize)> {
    let (_, stored) = stored_run(run, "not a run folder")?;
    let model = Model::load(&run.join("source.onnx"))?;
    Ok((model, stored.graph.spec()?, stored.step.accumulate.unwrap_or(1).max(1)))
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
