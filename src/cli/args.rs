//! Options shared by several commands, and how they become the library's plain specs: how the
//! gradient graph is built (GradGraphArgs → GradSpec), the optimizer (StepArgs → StepSpec), the
//! engine (BackendArgs → BackendRequest).
use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use clap::{Args, ValueEnum};
use graph_passes::import::Sharing;
use graph_passes::passes::fd_branch::FdScheme;
use graph_passes::passes::per_sample_loss::{ClassAxis, Loss, Reduction};
use graph_passes::passes::reweight::ScoreNorm;
use graph_passes::passes::sam_update::{BaseOptimizer, Optimizer, VariantParams, WeightDecayMode};
use graph_passes::step::{GradSpec, ReweightSpec, Score, StepSpec};

use crate::backend::{BackendKind, BackendRequest, Device};

#[derive(Clone, Copy, ValueEnum, Debug, PartialEq)]
pub enum LossKind {
    /// Class labels: [N] for logits [N, C], [N, d1, …] per token/pixel for [N, C, d1, …]
    CrossEntropy,
    /// Float targets shaped as the output: (y − t)²
    Mse,
    /// |y − t|
    L1,
    /// torch.nn.HuberLoss(delta = --huber-delta)
    Huber,
    /// torch.nn.SmoothL1Loss(beta = --huber-delta)
    SmoothL1,
    /// Multi-label: torch.nn.BCEWithLogitsLoss with float 0/1 targets shaped as the logits
    BceWithLogits,
    /// The model's output is already the per-sample loss [N] (no labels)
    Output,
}

/// How the gradient graph is built.
#[derive(Args, Clone, Debug)]
pub struct GradGraphArgs {
    #[arg(long, value_enum, default_value = "cross-entropy")]
    loss: LossKind,
    /// Label smoothing ε for cross-entropy (PyTorch's formula)
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f32,
    /// Cross-entropy: positions with this label count in no loss or accuracy (F.cross_entropy's
    /// ignore_index, e.g. -100 for padding tokens)
    #[arg(long, allow_hyphen_values = true)]
    ignore_index: Option<i64>,
    /// Cross-entropy with per-position labels: the logits' class axis, 1 ([N, C, d1, …], as
    /// F.cross_entropy takes them) or -1 ([N, d1, …, C], language models). Default: the one the
    /// labels' shape fits (said in the log)
    #[arg(long, allow_hyphen_values = true, value_parser = parse_class_axis)]
    class_axis: Option<ClassAxis>,
    /// Cross-entropy with per-position labels: mean (F.cross_entropy's reduction='mean' over all
    /// kept positions of the batch) or sample-mean (each sample's mean, then the mean over
    /// samples: every sample weighs the same)
    #[arg(long, value_enum, default_value = "mean")]
    loss_reduction: LossReduction,
    /// huber's delta, smooth-l1's beta (default 1)
    #[arg(long, allow_hyphen_values = true)]
    huber_delta: Option<f32>,
    /// BatchNorm with batch statistics and Dropout active (the default)
    #[arg(long, conflicts_with = "eval_mode")]
    train_mode: bool,
    /// BatchNorm with running statistics, Dropout off
    #[arg(long)]
    eval_mode: bool,
    /// Keep parameters matching this glob constant (repeatable), e.g. --freeze 'conv1.*'
    #[arg(long, value_name = "PATTERN")]
    freeze: Vec<String>,
    /// Give every use of a shared tensor its own parameter, even where PyTorch uses one tensor
    /// several times (default: tensors the exporter merged are untied where the file shows they
    /// were distinct PyTorch tensors; a tensor PyTorch itself reuses stays one parameter)
    #[arg(long, conflicts_with = "keep_tied")]
    untie_shared: bool,
    /// Keep tensors the exporter merged as one parameter each (BatchNorm running statistics
    /// are still kept apart from parameters)
    #[arg(long)]
    keep_tied: bool,
    /// Train a graph whose BatchNorm layers the exporter folded into convolutions (not the
    /// network PyTorch trains; a warning says so)
    #[arg(long)]
    allow_folded_bn: bool,
    #[command(flatten)]
    pub import: ImportArgs,
}

#[derive(Clone, Copy, ValueEnum, Debug, PartialEq)]
pub enum LossReduction {
    /// F.cross_entropy(reduction='mean'): the mean over every kept position of the batch
    Mean,
    /// the mean over samples of each sample's mean over its kept positions
    SampleMean,
}

/// `--class-axis`: 1, or -1 (the last axis).
fn parse_class_axis(s: &str) -> std::result::Result<ClassAxis, String> {
    match s.trim() {
        "1" => Ok(ClassAxis::Second),
        "-1" | "last" => Ok(ClassAxis::Last),
        other => Err(format!("'{other}': the class axis is 1 (logits [N, C, d1, …]) or -1 (logits [N, d1, …, C])")),
    }
}

/// What the file may not say about the PyTorch model, told by the user.
#[derive(Args, Clone, Debug, Default)]
pub struct ImportArgs {
    /// The padding row of an embedding table (nn.Embedding's padding_idx, never trained), where
    /// the file does not record it (legacy exports): TABLE=ROW, or TABLE=none; repeatable
    #[arg(long, value_name = "TABLE=ROW", allow_hyphen_values = true)]
    padding_idx: Vec<String>,
    /// Where Clip's input equals a bound: no gradient (zero: torch 2.15's clamp with number
    /// bounds, F.hardtanh, F.relu6 — the default) or all of it (pass: an older PyTorch's clamp).
    /// For Clip nodes the file does not describe (legacy exports)
    #[arg(long, value_enum, value_name = "CONVENTION")]
    clip_at_bounds: Option<ClipAtBounds>,
    /// The model was freshly built and never trained, its BatchNorm layers at PyTorch's defaults
    /// (weight 1, bias 0, running mean 0, variance 1): the layers a dynamo default export folded
    /// into convolutions are given back (the file cannot show weight and variance; layers it shows
    /// trained are refused anyway)
    #[arg(long)]
    pub assume_fresh_batchnorm: bool,
}

impl ImportArgs {
    /// Sets the spec's padding rows and Clip convention.
    pub fn apply(&self, spec: &mut GradSpec) -> Result<()> {
        spec.padding_idx = self.padding_idx.iter().map(|s| padding_row(s)).collect::<Result<_>>()?;
        spec.assume_fresh_bn = self.assume_fresh_batchnorm;
        spec.clip_at_bounds = self.clip_at_bounds.map(|c| match c {
            ClipAtBounds::Zero => graph_passes::import::conventions::ClipConvention::Zero,
            ClipAtBounds::Pass => graph_passes::import::conventions::ClipConvention::Pass,
        });
        Ok(())
    }
}

#[derive(Clone, Copy, ValueEnum, Debug, PartialEq)]
pub enum ClipAtBounds {
    /// no gradient where x equals a bound (torch 2.15's clamp with number bounds, hardtanh, relu6)
    Zero,
    /// the whole gradient where x equals a bound (an older PyTorch's clamp)
    Pass,
}

/// `TABLE=ROW` or `TABLE=none` (--padding-idx).
fn padding_row(s: &str) -> Result<(String, Option<i64>)> {
    let Some((table, row)) = s.rsplit_once('=') else {
        bail!("--padding-idx {s}: expected TABLE=ROW (e.g. --padding-idx embeddings.word_embeddings.weight=1) or TABLE=none");
    };
    if table.is_empty() {
        bail!("--padding-idx {s}: the table name is empty; expected TABLE=ROW");
    }
    let row = match row.trim() {
        "none" | "None" => None,
        r => Some(r.parse::<i64>().map_err(|e| match e.kind() {
            std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow => {
                anyhow!("--padding-idx {s}: the row {r} is out of range for any table")
            }
            _ => anyhow!("--padding-idx {s}: the row '{r}' is not an integer; expected TABLE=ROW or TABLE=none"),
        })?),
    };
    Ok((table.to_string(), row))
}

impl GradGraphArgs {
    /// True when the command line says --train-mode (which some commands do not take).
    pub fn train_mode_asked(&self) -> bool {
        self.train_mode
    }

    pub fn spec(&self) -> Result<GradSpec> {
        if !(0.0..1.0).contains(&self.label_smoothing) {
            bail!("--label-smoothing must be in [0, 1), got {}", self.label_smoothing);
        }
        let ce = self.loss == LossKind::CrossEntropy;
        if !ce && self.label_smoothing != 0.0 {
            bail!("--label-smoothing applies to cross-entropy only");
        }
        if !ce && self.ignore_index.is_some() {
            bail!("--ignore-index applies to cross-entropy only");
        }
        if !ce && self.class_axis.is_some() {
            bail!("--class-axis applies to cross-entropy only");
        }
        if !ce && self.loss_reduction != LossReduction::Mean {
            bail!("--loss-reduction applies to cross-entropy with per-position labels only");
        }
        let huber = matches!(self.loss, LossKind::Huber | LossKind::SmoothL1);
        if !huber && self.huber_delta.is_some() {
            bail!("--huber-delta applies to --loss huber and smooth-l1 only");
        }
        let delta = self.huber_delta.unwrap_or(1.0);
        if delta.is_nan() || delta <= 0.0 {
            bail!("--huber-delta must be > 0, got {delta}");
        }
        let loss = match self.loss {
            LossKind::CrossEntropy => {
                Loss::CrossEntropy {
                    label_smoothing: self.label_smoothing,
                    ignore_index: self.ignore_index,
                    class_axis: self.class_axis.unwrap_or_default(),
                    reduction: match self.loss_reduction {
                        LossReduction::Mean => Reduction::Mean,
                        LossReduction::SampleMean => Reduction::SampleMean,
                    },
                }
            }
            LossKind::Mse => Loss::Mse,
            LossKind::L1 => Loss::L1,
            LossKind::Huber => Loss::Huber { delta },
            LossKind::SmoothL1 => Loss::SmoothL1 { beta: delta },
            LossKind::BceWithLogits => Loss::BceWithLogits,
            LossKind::Output => Loss::Output,
        };
        let mut spec = GradSpec {
            loss,
            train_mode: !self.eval_mode,
            freeze: self.freeze.clone(),
            sharing: if self.untie_shared {
                Sharing::UntieAll
            } else if self.keep_tied {
                Sharing::KeepTied
            } else {
                Sharing::Auto
            },
            allow_folded_bn: self.allow_folded_bn,
            assume_fresh_bn: false,
            weighted: false,
            padding_idx: vec![],
            clip_at_bounds: None,
            labels_shape: None,
        };
        self.import.apply(&mut spec)?;
        Ok(spec)
    }
}

/// Options every command that executes a graph shares.
#[derive(Args, Clone, Debug)]
pub struct BackendArgs {
    /// Engine: ort (ONNX Runtime) when its library is found, else tract (embedded)
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendKind,
    /// Path to libonnxruntime.so (else ORT_DYLIB_PATH, else a pip-installed onnxruntime)
    #[arg(long, value_name = "PATH")]
    pub ort_lib: Option<PathBuf>,
    /// cpu, cuda or cuda:N (CUDA needs onnxruntime-gpu)
    #[arg(long, default_value = "cpu")]
    pub device: Device,
    /// Intra-op threads (default: all cores)
    #[arg(long)]
    pub threads: Option<usize>,
}

impl BackendArgs {
    pub fn request(&self) -> BackendRequest {
        BackendRequest {
            kind: self.backend,
            ort_lib: self.ort_lib.clone(),
            device: self.device.clone(),
            threads: self.threads,
        }
    }
}

#[derive(Clone, Copy, ValueEnum, Debug, PartialEq)]
pub enum OptimizerArg {
    /// torch.optim.SGD (momentum, nesterov)
    Sgd,
    /// SAM (Foret et al.): the gradient at θ + ρ·g/‖g‖, stepped by the base optimizer
    Sam,
    /// Unnormalized SAM: ε = ρ·g
    Usam,
    /// Adaptive SAM (Kwon et al.): ε scaled by |θ| + η
    Asam,
    /// GSAM (Zhuang et al.): d = g_p − α·(g's part orthogonal to g_p); --gsam-alpha, and
    /// --rho-schedule lr as its paper schedules ρ
    Gsam,
    /// WSAM (Yue et al.): d = ((1−2γ)/(1−γ))·g + (γ/(1−γ))·g_p; --wsam-gamma
    Wsam,
    /// Friendly SAM (Li et al.): ascent along g − σ·m, m the EMA of gradients; --fsam-sigma, --fsam-lambda
    Fsam,
    /// LookSAM (Liu et al.): full SAM every k-th step, one forward-backward between; --looksam-k, --looksam-alpha
    Looksam,
    /// Momentum-SAM (Becker et al.): ε = −ρ·v/‖v‖ along the momentum, one forward-backward per step
    MomentumSam,
    /// torch.optim.Adam (no perturbation)
    Adam,
    /// torch.optim.AdamW (no perturbation)
    Adamw,
}

/// --reweight's value: a fixed λ or `auto`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ReweightArg {
    Lambda(f32),
    Auto,
}

fn parse_reweight(s: &str) -> std::result::Result<ReweightArg, String> {
    if s == "auto" {
        return Ok(ReweightArg::Auto);
    }
    s.parse::<f32>().map(ReweightArg::Lambda).map_err(|_| format!("expected a number λ or `auto`, got '{s}'"))
}

/// The default --target-ess of --reweight auto.
pub const DEFAULT_TARGET_ESS: f32 = 0.5;

#[derive(Clone, Copy, ValueEnum, Debug, PartialEq)]
pub enum BaseArg {
    Sgd,
    Adam,
    Adamw,
}

#[derive(Clone, Copy, ValueEnum, Debug, PartialEq)]
pub enum ScoreArg {
    /// Finite differences along random directions (one extra forward per direction)
    Fd,
    /// Exact per-sample gradient norms (one backward per sample; for measuring the estimator)
    Exact,
}

#[derive(Clone, Copy, ValueEnum, Debug, PartialEq)]
pub enum ScoreNormArg {
    Mean,
    None,
}

#[derive(Clone, Copy, ValueEnum, Debug, PartialEq)]
pub enum FdSchemeArg {
    Forward,
    Central,
}

#[derive(Clone, Copy, ValueEnum, Debug, PartialEq)]
pub enum WdModeArg {
    /// PyTorch SGD: g ← g + wd·θ on the descent gradient
    Coupled,
    /// wd/2·‖θ‖² is part of the loss (also in the ascent gradient), as google-research/sam
    Loss,
    /// θ ← θ − lr·wd·θ separately
    Decoupled,
}

/// The optimizer and its hyperparameters (defaults of the step graph's scalar inputs).
#[derive(Args, Clone, Debug)]
pub struct StepArgs {
    /// sgd (default), adam, adamw, or a SAM variant (over --base-optimizer): sam, usam, asam,
    /// gsam, wsam, fsam, looksam, momentum-sam
    #[arg(long, value_enum)]
    pub optimizer: Option<OptimizerArg>,
    /// GSAM's α: how much of g's component orthogonal to g_p is subtracted (default 0.4)
    #[arg(long, value_name = "ALPHA", allow_hyphen_values = true)]
    pub gsam_alpha: Option<f32>,
    /// WSAM's γ: the weight of sharpness (0.5 is SAM, 0 the base optimizer; default 0.9)
    #[arg(long, value_name = "GAMMA", allow_hyphen_values = true)]
    pub wsam_gamma: Option<f32>,
    /// F-SAM's σ: how much of the gradient's EMA is taken out of the ascent (default 1)
    #[arg(long, value_name = "SIGMA", allow_hyphen_values = true)]
    pub fsam_sigma: Option<f32>,
    /// F-SAM's λ: the EMA's decay (default 0.9)
    #[arg(long, value_name = "LAMBDA", allow_hyphen_values = true)]
    pub fsam_lambda: Option<f32>,
    /// LookSAM: a full SAM step every K steps (default 5)
    #[arg(long, value_name = "K", allow_hyphen_values = true)]
    pub looksam_k: Option<usize>,
    /// LookSAM's α: the weight of the kept component between full steps (default 0.7)
    #[arg(long, value_name = "ALPHA", allow_hyphen_values = true)]
    pub looksam_alpha: Option<f32>,
    /// RW-SAM: reweight samples by pᵢ ∝ exp(λ·sᵢ/c) in the ascent step: λ = LAMBDA (a negative λ
    /// as --reweight=-1), or `auto` (the default when no value is given): λ chosen each step so
    /// that the weights' effective sample size is --target-ess of the batch
    #[arg(long, value_name = "LAMBDA|auto", num_args = 0..=1, default_missing_value = "auto", value_parser = parse_reweight)]
    pub reweight: Option<ReweightArg>,
    /// --reweight auto: the effective sample size 1/Σpᵢ² to keep, as a fraction of the batch
    /// (1 is SAM)
    #[arg(long, value_name = "F", allow_hyphen_values = true)]
    pub target_ess: Option<f32>,
    /// m-SAM: perturb per micro-batch of M samples (M must divide the batch size)
    #[arg(long, value_name = "M")]
    pub micro_batch: Option<usize>,
    /// Gradient accumulation: one step over each batch in K micro-batches, memory as for a
    /// batch of batch-size/K. SAM, RW-SAM: over the whole batch (the ascent gradient accumulated
    /// over all K, one ε, the gradient at θ + ε accumulated, RW-SAM's weights normalized over the
    /// batch); BatchNorm statistics per micro-batch, as PyTorch's accumulation
    #[arg(long, value_name = "K")]
    pub accumulate: Option<usize>,
    /// Perturbation radius ρ (ASAM: typically 0.5–1.0)
    #[arg(long, default_value_t = 0.05, allow_hyphen_values = true)]
    pub rho: f32,
    /// ASAM's η
    #[arg(long, default_value_t = 0.01)]
    pub eta: f32,
    /// The base optimizer of sam/usam/asam (SAM's `base_optimizer`): sgd (default), adam, adamw
    #[arg(long, value_enum, value_name = "OPTIMIZER")]
    pub base_optimizer: Option<BaseArg>,
    /// Learning rate (default: 0.1 with SGD, 1e-3 with Adam/AdamW as torch.optim)
    #[arg(long, allow_hyphen_values = true)]
    pub lr: Option<f32>,
    /// SGD momentum (default 0.9)
    #[arg(long, allow_hyphen_values = true)]
    pub momentum: Option<f32>,
    #[arg(long)]
    pub nesterov: bool,
    /// Adam's β₁,β₂ (default 0.9,0.999)
    #[arg(long, value_name = "B1,B2", allow_hyphen_values = true)]
    pub betas: Option<String>,
    /// Adam's eps, added to √v̂ (default 1e-8)
    #[arg(long, allow_hyphen_values = true)]
    pub eps: Option<f32>,
    /// Adam/AdamW: the maximum of past squared-gradient averages (torch.optim's amsgrad)
    #[arg(long)]
    pub amsgrad: bool,
    /// Clip the descent gradient to this global L2 norm (torch.nn.utils.clip_grad_norm_)
    #[arg(long, value_name = "MAX_NORM", allow_hyphen_values = true)]
    pub clip_grad_norm: Option<f32>,
    /// Weight decay (default 0; AdamW: 1e-2 as torch.optim.AdamW)
    #[arg(long, allow_hyphen_values = true)]
    pub weight_decay: Option<f32>,
    /// coupled (default; SGD and Adam), loss, or decoupled (AdamW's, and its default)
    #[arg(long, value_enum)]
    pub weight_decay_mode: Option<WdModeArg>,
    /// No weight decay on biases and normalization parameters (tensors of rank ≤ 1)
    #[arg(long)]
    pub no_decay_bias_norm: bool,
    /// Where RW-SAM's per-sample scores come from
    #[arg(long, value_enum, default_value = "fd")]
    pub score: ScoreArg,
    /// c in λ·sᵢ/c: mean score (scale-free λ) or 1 (the paper's formula)
    #[arg(long, value_enum, default_value = "mean")]
    pub score_norm: ScoreNormArg,
    /// Finite-difference step δ (good window 1e-3 … 1e-2 for the models here)
    #[arg(long, default_value_t = 3e-3)]
    pub fd_delta: f32,
    /// Number of random directions Q
    #[arg(long, default_value_t = 1)]
    pub fd_q: usize,
    #[arg(long, value_enum, default_value = "forward")]
    pub fd_scheme: FdSchemeArg,
}

impl StepArgs {
    pub fn spec(&self, graph: &GradGraphArgs) -> Result<StepSpec> {
        let grad: GradSpec = graph.spec()?;
        if !grad.train_mode {
            bail!(
                "--eval-mode: step graphs train with batch statistics; use `rewrite --eval` for the evaluation graph"
            );
        }
        let chosen = self.optimizer.unwrap_or(OptimizerArg::Sgd);
        let optimizer = match chosen {
            OptimizerArg::Sgd | OptimizerArg::Adam | OptimizerArg::Adamw => Optimizer::Sgd,
            OptimizerArg::Sam => Optimizer::Sam,
            OptimizerArg::Usam => Optimizer::Usam,
            OptimizerArg::Asam => Optimizer::Asam,
            OptimizerArg::Gsam => Optimizer::Gsam,
            OptimizerArg::Wsam => Optimizer::Wsam,
            OptimizerArg::Fsam => Optimizer::Fsam,
            OptimizerArg::Looksam => Optimizer::LookSam,
            OptimizerArg::MomentumSam => Optimizer::MomentumSam,
        };
        let mut variant = VariantParams::default();
        for (flag, given, owner) in [
            ("--gsam-alpha", self.gsam_alpha.is_some(), Optimizer::Gsam),
            ("--wsam-gamma", self.wsam_gamma.is_some(), Optimizer::Wsam),
            ("--fsam-sigma", self.fsam_sigma.is_some(), Optimizer::Fsam),
            ("--fsam-lambda", self.fsam_lambda.is_some(), Optimizer::Fsam),
            ("--looksam-k", self.looksam_k.is_some(), Optimizer::LookSam),
            ("--looksam-alpha", self.looksam_alpha.is_some(), Optimizer::LookSam),
        ] {
            if given && optimizer != owner {
                bail!("{flag} is a hyperparameter of --optimizer {}; this run uses {}", owner.name(), chosen_name(chosen));
            }
        }
        variant.gsam_alpha = self.gsam_alpha.unwrap_or(variant.gsam_alpha);
        variant.wsam_gamma = self.wsam_gamma.unwrap_or(variant.wsam_gamma);
        variant.fsam_sigma = self.fsam_sigma.unwrap_or(variant.fsam_sigma);
        variant.fsam_lambda = self.fsam_lambda.unwrap_or(variant.fsam_lambda);
        variant.looksam_k = self.looksam_k.unwrap_or(variant.looksam_k);
        variant.looksam_alpha = self.looksam_alpha.unwrap_or(variant.looksam_alpha);
        let named_base = match chosen {
            OptimizerArg::Adam => Some(BaseArg::Adam),
            OptimizerArg::Adamw => Some(BaseArg::Adamw),
            OptimizerArg::Sgd => Some(BaseArg::Sgd),
            _ => None,
        };
        let base = match (named_base, self.base_optimizer) {
            (Some(n), Some(b)) if n != b => bail!(
                "--base-optimizer applies to the SAM family; --optimizer {} is its own base optimizer",
                chosen_name(chosen)
            ),
            (Some(n), _) => n,
            (None, b) => b.unwrap_or(BaseArg::Sgd),
        };
        let base = match base {
            BaseArg::Sgd => BaseOptimizer::Sgd,
            BaseArg::Adam => BaseOptimizer::Adam,
            BaseArg::Adamw => BaseOptimizer::AdamW,
        };
        let adam = base.is_adam();
        if adam && (self.momentum.is_some() || self.nesterov) {
            bail!("--momentum and --nesterov are SGD's; Adam's moments are set by --betas B1,B2");
        }
        if !adam && (self.betas.is_some() || self.eps.is_some()) {
            bail!("--betas and --eps are Adam's; choose --optimizer adam|adamw or --base-optimizer adam|adamw");
        }
        let betas = match &self.betas {
            None => (0.9, 0.999),
            Some(b) => {
                let v: Vec<f32> = b
                    .split(',')
                    .map(|x| x.trim().parse::<f32>())
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|_| anyhow!("--betas {b}: expected two numbers B1,B2 (e.g. 0.9,0.999)"))?;
                let [b1, b2] = v[..] else { bail!("--betas {b}: expected two numbers B1,B2 (e.g. 0.9,0.999)") };
                (b1, b2)
            }
        };
        let weight_decay_mode = match self.weight_decay_mode {
            Some(WdModeArg::Coupled) => WeightDecayMode::Coupled,
            Some(WdModeArg::Loss) => WeightDecayMode::Loss,
            Some(WdModeArg::Decoupled) => WeightDecayMode::Decoupled,
            None if base == BaseOptimizer::AdamW => WeightDecayMode::Decoupled,
            None => WeightDecayMode::Coupled,
        };
        if self.target_ess.is_some() && self.reweight != Some(ReweightArg::Auto) {
            bail!("--target-ess sets the adaptive λ of --reweight auto; with a fixed λ, drop it");
        }
        let reweight = self.reweight.map(|r| ReweightSpec {
            lambda: match r {
                ReweightArg::Lambda(l) => l,
                ReweightArg::Auto => 0.0,
            },
            target_ess: (r == ReweightArg::Auto).then(|| self.target_ess.unwrap_or(DEFAULT_TARGET_ESS)),
            score: match self.score {
                ScoreArg::Fd => Score::Fd {
                    q: self.fd_q,
                    scheme: match self.fd_scheme {
                        FdSchemeArg::Forward => FdScheme::Forward,
                        FdSchemeArg::Central => FdScheme::Central,
                    },
                },
                ScoreArg::Exact => Score::Exact,
            },
            score_norm: match self.score_norm {
                ScoreNormArg::Mean => ScoreNorm::Mean,
                ScoreNormArg::None => ScoreNorm::None,
            },
        });
        let spec = StepSpec {
            loss: loss_name(grad.loss),
            grad,
            optimizer,
            reweight,
            micro_batch: self.micro_batch,
            accumulate: self.accumulate,
            lr: self.lr.unwrap_or(if adam { 1e-3 } else { 0.1 }),
            momentum: self.momentum.unwrap_or(0.9),
            nesterov: self.nesterov,
            weight_decay: self.weight_decay.unwrap_or(if base == BaseOptimizer::AdamW { 1e-2 } else { 0.0 }),
            weight_decay_mode,
            base,
            betas,
            eps: self.eps.unwrap_or(1e-8),
            amsgrad: self.amsgrad,
            max_grad_norm: self.clip_grad_norm,
            no_decay_bias_norm: self.no_decay_bias_norm,
            rho: self.rho,
            eta: self.eta,
            fd_delta: self.fd_delta,
            variant,
        };
        spec.check().map_err(|e| anyhow!("{e}"))?;
        Ok(spec)
    }
}

/// --optimizer's value as the command line spells it.
fn chosen_name(o: OptimizerArg) -> String {
    o.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default()
}

/// The loss as the command line names it, with its settings.
fn loss_name(l: Loss) -> String {
    match l {
        Loss::CrossEntropy { label_smoothing, ignore_index, reduction, .. } => {
            let mut s = "cross-entropy".to_string();
            if reduction == Reduction::SampleMean {
                s += " (sample-mean)";
            }
            if label_smoothing > 0.0 {
                s += &format!(" (label smoothing {label_smoothing})");
            }
            if let Some(i) = ignore_index {
                s += &format!(" (ignore index {i})");
            }
            s
        }
        Loss::Mse => "mse".into(),
        Loss::L1 => "l1".into(),
        Loss::Huber { delta } => format!("huber (delta {delta})"),
        Loss::SmoothL1 { beta } => format!("smooth-l1 (beta {beta})"),
        Loss::BceWithLogits => "bce-with-logits".into(),
        Loss::Output => "the model's output".into(),
    }
}
