//! Composes passes into the graphs onnxsam runs: the gradient graph (forward + loss + gradients).
use crate::import::{Import, Sharing};
use crate::ir::Model;
use crate::passes::lift_params::LiftParams;
use crate::passes::per_sample_loss::{Loss, PerSampleLoss};
use crate::passes::train_mode::{EvalMode, TrainMode};
use crate::pass::{run_all, Contract, Pass};
use crate::passes::autodiff::Autodiff;
use crate::Result;

#[derive(Clone, Debug)]
pub struct GradSpec {
    pub loss: Loss,
    pub train_mode: bool,
    pub freeze: Vec<String>,
    /// Which tensors several nodes read stay one parameter (import).
    pub sharing: Sharing,
    /// Train a graph whose BatchNorm layers the exporter folded into convolutions.
    pub allow_folded_bn: bool,
    /// The model was freshly built: restore every folded BatchNorm layer (import::fresh_bn).
    pub assume_fresh_bn: bool,
    /// Differentiate Σ wᵢ·ℓᵢ with a `sample_weights` input instead of the mean loss.
    pub weighted: bool,
    /// Padding rows of embedding tables the file does not record (`--padding-idx`).
    pub padding_idx: crate::import::conventions::PaddingRows,
    /// How Clip nodes the file does not describe pass the gradient at their bounds.
    pub clip_at_bounds: Option<crate::import::conventions::ClipConvention>,
    /// The labels' sample dims (without the batch axis), when the data is known: they choose
    /// cross-entropy's class axis (per_sample_loss::ClassAxis::Auto).
    pub labels_shape: Option<Vec<usize>>,
}

impl GradSpec {
    /// The passes every graph starts with: import (PyTorch's tensors, merges undone) and
    /// lift-params (parameters become inputs).
    pub fn front(&self) -> (Import, LiftParams) {
        (
            Import {
                sharing: self.sharing,
                allow_folded_bn: self.allow_folded_bn,
                assume_fresh_bn: self.assume_fresh_bn,
                freeze: self.freeze.clone(),
                padding_idx: self.padding_idx.clone(),
                clip_at_bounds: self.clip_at_bounds,
            },
            LiftParams { freeze: self.freeze.clone() },
        )
    }
}

impl Default for GradSpec {
    fn default() -> Self {
        GradSpec {
            loss: Loss::CrossEntropy {
                label_smoothing: 0.0,
                ignore_index: None,
                class_axis: Default::default(),
                reduction: Default::default(),
            },
            train_mode: true,
            freeze: vec![],
            sharing: Sharing::Auto,
            allow_folded_bn: false,
            assume_fresh_bn: false,
            weighted: false,
            padding_idx: vec![],
            clip_at_bounds: None,
            labels_shape: None,
        }
    }
}

/// Ops between the parameters and the outputs that have no gradient rule, found right after
/// import, so the error names the op and its node rather than a consequence.
pub fn check_differentiable(g: &crate::ir::Graph, params: &[String]) -> Result<()> {
    match untrainable_ops(g, params)?.into_iter().next() {
        Some(first) => Err(crate::Error(first)),
        None => Ok(()),
    }
}

/// One line per op (first node of each op type) that a gradient would have to pass through
/// from `params` but that has no gradient rule.
pub fn untrainable_ops(g: &crate::ir::Graph, params: &[String]) -> Result<Vec<String>> {
    use crate::ir::NodeExt;
    use crate::ops::{is_non_differentiable, why_no_gradient};
    let mut reached: std::collections::HashSet<&str> = params.iter().map(|s| s.as_str()).collect();
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for &i in &g.topo_order()? {
        let n = &g.nodes[i];
        if is_non_differentiable(&n.op_type) || !crate::autodiff::reads_through_gradient(n, &reached) {
            continue;
        }
        if let Some(why) = why_no_gradient(&n.op_type) {
            if seen.insert(n.op_type.clone()) {
                out.push(format!("{} {why}", n.describe()));
            }
        }
        reached.extend(n.output.iter().map(|s| s.as_str()));
    }
    Ok(out)
}

/// The model after import and lift-params: PyTorch's parameters as inputs under their names.
/// With `differentiable`, every op between them and the outputs must have a gradient rule.
pub fn imported(model: &Model, spec: &GradSpec, differentiable: bool) -> Result<(Model, Contract)> {
    let mut m = model.clone();
    let mut c = Contract::default();
    let (import, lift) = spec.front();
    run_all(&mut m, &mut c, &[&import, &lift])?;
    if differentiable {
        // ops whose gradient is a lowering are written out in ops with rules first
        m.graph.pass = Some("lower".into());
        let lowered = crate::ops::lower(&mut m);
        m.graph.pass = None;
        lowered?;
        check_differentiable(&m.graph, &c.params)?;
    }
    Ok((m, c))
}

/// forward + per-sample loss + gradients of every trainable parameter.
pub fn grad_graph(model: &Model, spec: &GradSpec) -> Result<(Model, Contract)> {
    let (mut m, mut c) = imported(model, spec, true)?;
    let loss = PerSampleLoss { loss: spec.loss, weighted: spec.weighted, labels_shape: spec.labels_shape.clone() };
    let ad = Autodiff { weighted: spec.weighted };
    let mode: &dyn Pass = if spec.train_mode { &TrainMode } else { &EvalMode };
    run_all(&mut m, &mut c, &[mode, &loss, &ad])?;
    m.graph.value_info.clear();
    m.graph.remove_identities();
    m.graph.fold_transposes_and_reshapes();
    m.graph.eliminate_common_subexpressions();
    m.graph.remove_dead();
    Ok((m, c))
}

/// forward + per-sample loss only (no gradients): what gradcheck evaluates.
pub fn loss_graph(model: &Model, spec: &GradSpec) -> Result<(Model, Contract)> {
    let (mut m, mut c) = imported(model, spec, false)?;
    let loss = PerSampleLoss { loss: spec.loss, weighted: spec.weighted, labels_shape: spec.labels_shape.clone() };
    let mode: &dyn Pass = if spec.train_mode { &TrainMode } else { &EvalMode };
    run_all(&mut m, &mut c, &[mode, &loss])?;
    m.graph.value_info.clear();
    Ok((m, c))
}

// ---------------------------------------------------------------------------------------------
// Training-step graphs

use crate::bail;
use crate::passes::cleanup::Cleanup;
use crate::passes::eval_graph::EvalGraph;
use crate::passes::fd_branch::{FdBranch, FdScheme};
use crate::passes::reweight::{Reweight, ScoreNorm};
use crate::passes::sam_update::{BaseOptimizer, Optimizer, SamUpdate, Stage, VariantParams, WeightDecayMode};
use serde::Serialize;

/// Where RW-SAM's per-sample scores come from.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Score {
    /// Finite differences along Q Rademacher directions (the fd-branch pass).
    Fd { q: usize, scheme: FdScheme },
    /// Exact per-sample gradient norms, fed by the runtime (slow; for measuring the estimator).
    Exact,
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct ReweightSpec {
    /// λ, or (with `target_ess`) unused: λ is then chosen each step.
    pub lambda: f32,
    /// Adaptive λ (--reweight auto): the effective sample size to keep, as a fraction of the batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_ess: Option<f32>,
    pub score: Score,
    pub score_norm: ScoreNorm,
}

impl ReweightSpec {
    /// "reweight λ = 1" or "reweight λ auto (ESS 0.5 of the batch)".
    pub fn describe(&self) -> String {
        match self.target_ess {
            Some(f) => format!("reweight λ auto (ESS {f} of the batch)"),
            None => format!("reweight λ = {}", self.lambda),
        }
    }
}

/// An optimizer compiled into step graphs (METHOD.md). Hyperparameters given here are the
/// defaults of the graph's scalar inputs; the runtime may feed others each step.
#[derive(Clone, Debug, Serialize)]
pub struct StepSpec {
    #[serde(skip)]
    pub grad: GradSpec,
    pub loss: String,
    pub optimizer: Optimizer,
    pub reweight: Option<ReweightSpec>,
    /// m-SAM micro-batch size M.
    pub micro_batch: Option<usize>,
    /// --accumulate K: one step over a logical batch in K micro-batches (AccumulateGraphs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accumulate: Option<usize>,
    pub lr: f32,
    pub momentum: f32,
    pub nesterov: bool,
    pub weight_decay: f32,
    pub weight_decay_mode: WeightDecayMode,
    pub no_decay_bias_norm: bool,
    pub rho: f32,
    pub eta: f32,
    pub fd_delta: f32,
    /// The optimizer that takes the step from the (SAM) gradient: SGD, Adam or AdamW.
    pub base: BaseOptimizer,
    /// Adam's (β₁, β₂) and eps.
    pub betas: (f32, f32),
    pub eps: f32,
    pub amsgrad: bool,
    /// --clip-grad-norm: the global L2 norm the descent gradient is clipped to.
    pub max_grad_norm: Option<f32>,
    /// GSAM's α, WSAM's γ, F-SAM's σ and λ, LookSAM's k and α.
    pub variant: VariantParams,
}

impl Default for StepSpec {
    fn default() -> Self {
        StepSpec {
            grad: GradSpec::default(),
            loss: "cross-entropy".into(),
            optimizer: Optimizer::Sgd,
            reweight: None,
            micro_batch: None,
            accumulate: None,
            lr: 0.1,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
            weight_decay_mode: WeightDecayMode::Coupled,
            no_decay_bias_norm: false,
            rho: 0.05,
            eta: 0.01,
            fd_delta: 3e-3,
            base: BaseOptimizer::Sgd,
            betas: (0.9, 0.999),
            eps: 1e-8,
            amsgrad: false,
            max_grad_norm: None,
            variant: VariantParams::default(),
        }
    }
}

impl StepSpec {
    /// Rejects combinations that make no sense, with what to do instead.
    pub fn check(&self) -> Result<()> {
        if !(self.rho >= 0.0) {
            bail!("--rho must be ≥ 0, got {}", self.rho);
        }
        if !(self.lr >= 0.0) {
            bail!("--lr must be ≥ 0, got {}", self.lr);
        }
        if !(0.0..1.0).contains(&self.momentum) && self.momentum != 0.0 {
            bail!("--momentum must be in [0, 1), got {}", self.momentum);
        }
        if !(self.weight_decay >= 0.0) {
            bail!("--weight-decay must be ≥ 0, got {}", self.weight_decay);
        }
        if self.base.is_adam() {
            let (b1, b2) = self.betas;
            if !(0.0..1.0).contains(&b1) || !(0.0..1.0).contains(&b2) {
                bail!("--betas must be two numbers in [0, 1), got {b1},{b2}");
            }
            if !(self.eps >= 0.0) {
                bail!("--eps must be ≥ 0, got {}", self.eps);
            }
            if self.base == BaseOptimizer::AdamW && self.weight_decay_mode != WeightDecayMode::Decoupled {
                bail!("AdamW's weight decay is decoupled (θ ← θ·(1 − lr·wd)); for weight decay added to the gradient use Adam (--base-optimizer adam)");
            }
            if self.base == BaseOptimizer::Adam && self.weight_decay_mode == WeightDecayMode::Decoupled {
                bail!("Adam with decoupled weight decay is AdamW: use --base-optimizer adamw (or --optimizer adamw)");
            }
        } else if self.amsgrad {
            bail!("--amsgrad is an option of Adam and AdamW (--base-optimizer adam|adamw)");
        }
        if let Some(n) = self.max_grad_norm {
            if !(n > 0.0) {
                bail!("--clip-grad-norm must be > 0, got {n}");
            }
        }
        if !(self.fd_delta > 0.0) {
            bail!("--fd-delta must be > 0, got {}", self.fd_delta);
        }
        let v = &self.variant;
        if !(0.0..=1.0).contains(&v.gsam_alpha) {
            bail!("--gsam-alpha must be in [0, 1], got {}", v.gsam_alpha);
        }
        if !(0.0..1.0).contains(&v.wsam_gamma) {
            bail!("--wsam-gamma must be in [0, 1) (0.5 is SAM, 0 the base optimizer), got {}", v.wsam_gamma);
        }
        if !(v.fsam_sigma.is_finite()) {
            bail!("--fsam-sigma must be finite, got {}", v.fsam_sigma);
        }
        if !(0.0..1.0).contains(&v.fsam_lambda) {
            bail!("--fsam-lambda must be in [0, 1), got {}", v.fsam_lambda);
        }
        if v.looksam_k == 0 {
            bail!("--looksam-k must be at least 1 (1 is SAM on every step)");
        }
        if !(v.looksam_alpha >= 0.0) {
            bail!("--looksam-alpha must be ≥ 0, got {}", v.looksam_alpha);
        }
        let o = self.optimizer.name();
        if !self.optimizer.is_basic_sam() && self.optimizer != Optimizer::Sgd {
            if self.micro_batch.is_some() {
                bail!("--micro-batch (m-SAM) perturbs with sam, usam or asam; --optimizer {o} has no m- form here");
            }
            if self.accumulate.is_some_and(|k| k > 1) {
                bail!("--accumulate runs sam, usam and asam; --optimizer {o} takes one batch per step here (lower --batch-size instead)");
            }
        }
        if let Some(r) = &self.reweight {
            if self.optimizer == Optimizer::Sgd {
                bail!("--reweight needs a SAM-family optimizer (--optimizer sam|usam|asam|gsam|wsam|fsam|looksam): SGD has no ascent step to reweight");
            }
            if self.optimizer == Optimizer::MomentumSam {
                bail!("--reweight reweights the ascent gradient; momentum-sam has none (its ε comes from the momentum buffer)");
            }
            if !r.lambda.is_finite() {
                bail!("--reweight λ must be finite, got {}", r.lambda);
            }
            if let Some(f) = r.target_ess {
                if !(f > 0.0 && f <= 1.0) {
                    bail!("--target-ess is a fraction of the batch in (0, 1], got {f}");
                }
            }
            if let Score::Fd { q: 0, .. } = r.score {
                bail!("--fd-q must be at least 1");
            }
            if self.micro_batch.is_some() {
                bail!("--reweight and --micro-batch are two ways to get m-sharpness; choose one");
            }
        }
        if let Some(k) = self.accumulate {
            if k == 0 {
                bail!("--accumulate must be at least 1");
            }
            if self.micro_batch.is_some() {
                bail!("--accumulate and --micro-batch split a batch two ways: m-SAM perturbs per micro-batch, accumulation once for the whole batch; choose one");
            }
            if matches!(self.reweight, Some(ReweightSpec { score: Score::Exact, .. })) {
                bail!("--accumulate takes RW-SAM's finite-difference scores (--score fd), not --score exact");
            }
        }
        if let Some(m) = self.micro_batch {
            if m == 0 {
                bail!("--micro-batch must be at least 1");
            }
            if self.optimizer == Optimizer::Sgd {
                bail!("--micro-batch applies to SAM-family optimizers (m-SAM); SGD has no perturbation");
            }
        }
        Ok(())
    }

    fn sam_update(&self, stage: Stage) -> SamUpdate {
        SamUpdate {
            optimizer: self.optimizer,
            stage,
            eta: self.eta,
            nesterov: self.nesterov,
            weight_decay_mode: self.weight_decay_mode,
            no_decay_bias_norm: self.no_decay_bias_norm,
            lr: self.lr,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            rho: self.rho,
            base: self.base,
            betas: self.betas,
            eps: self.eps,
            amsgrad: self.amsgrad,
            max_grad_norm: self.max_grad_norm,
            variant: self.variant,
            looksam_reuse: false,
        }
    }
}

/// The input of exact per-sample scores (--score exact).
pub const SCORES_INPUT: &str = crate::passes::fd_branch::SCORES;

/// A compiled graph with its contract.
pub struct StepGraph {
    pub model: Model,
    pub contract: Contract,
}

/// What an optimizer compiles to: one step graph, or (m-SAM) a micro-batch graph run k times
/// and an apply graph; LookSAM adds the graph of the steps between its full ones.
pub struct StepGraphs {
    pub step: StepGraph,
    pub apply: Option<StepGraph>,
    /// LookSAM: steps t with t mod k ≠ 0 (one forward-backward, g_v reused).
    pub between: Option<StepGraph>,
}

/// import + lift-params + train-mode + per-sample-loss, with the forward recorded for copies.
fn training_forward(model: &Model, spec: &GradSpec) -> Result<(Model, Contract)> {
    let (mut m, mut c) = imported(model, spec, true)?;
    let loss = PerSampleLoss { loss: spec.loss, weighted: false, labels_shape: spec.labels_shape.clone() };
    run_all(&mut m, &mut c, &[&TrainMode, &loss])?;
    m.graph.value_info.clear();
    let order = m.graph.topo_order()?;
    c.forward = order.iter().map(|&i| m.graph.nodes[i].clone()).collect();
    Ok((m, c))
}

/// Compiles `spec` into its step graph(s).
pub fn step_graphs(model: &Model, spec: &StepSpec) -> Result<StepGraphs> {
    spec.check()?;
    let (mut m, mut c) = training_forward(model, &spec.grad)?;
    let apply = if spec.micro_batch.is_some() {
        let mut am = m.clone();
        let mut ac = c.clone();
        am.graph.outputs.clear();
        ac.loss = None;
        ac.loss_per_sample = None;
        ac.logits = None;
        run_all(&mut am, &mut ac, &[&spec.sam_update(Stage::Apply), &Cleanup])?;
        Some(StepGraph { model: am, contract: ac })
    } else {
        None
    };
    let mut passes: Vec<Box<dyn Pass>> = Vec::new();
    if let Some(r) = &spec.reweight {
        if let Score::Fd { q, scheme } = r.score {
            passes.push(Box::new(FdBranch { q, scheme, delta: spec.fd_delta }));
        }
        passes.push(Box::new(Reweight { lambda: r.lambda, norm: r.score_norm, target_ess: r.target_ess }));
    }
    let stage = if spec.micro_batch.is_some() { Stage::Micro } else { Stage::Full };
    let between = if spec.optimizer == Optimizer::LookSam && spec.variant.looksam_k > 1 {
        let (mut bm, mut bc) = (m.clone(), c.clone());
        let reuse = SamUpdate { looksam_reuse: true, ..spec.sam_update(Stage::Full) };
        run_all(&mut bm, &mut bc, &[&reuse, &Cleanup])?;
        Some(StepGraph { model: bm, contract: bc })
    } else {
        None
    };
    passes.push(Box::new(spec.sam_update(stage)));
    passes.push(Box::new(Cleanup));
    let refs: Vec<&dyn Pass> = passes.iter().map(|p| p.as_ref()).collect();
    run_all(&mut m, &mut c, &refs)?;
    Ok(StepGraphs { step: StepGraph { model: m, contract: c }, apply, between })
}

/// --accumulate K: one optimizer step over a logical batch of K micro-batches, as graphs the
/// runtime runs per micro-batch and once per step (../shared/METHOD.md's step, unchanged):
/// - `scores` (RW-SAM): the finite-difference scores of a micro-batch at θ (no state update);
///   the runtime forms the Gibbs weights over the whole logical batch from them;
/// - `ascent`: a micro-batch's share of the ascent gradient at θ — micro_weight·∇L, or ∇Σ pᵢ·ℓᵢ
///   with the logical batch's weights fed as `sample_weights` — accumulated; the clean pass, so
///   BatchNorm's running statistics move once per micro-batch, as PyTorch's accumulation moves them;
/// - `descent` (SAM family): ε from the accumulated ascent gradient of the whole logical batch,
///   the micro-batch's share of ∇L(θ + ε) accumulated;
/// - `apply`: the base optimizer step from the accumulated gradient.
pub struct AccumulateGraphs {
    pub scores: Option<StepGraph>,
    pub ascent: StepGraph,
    pub descent: Option<StepGraph>,
    pub apply: StepGraph,
}

/// Compiles `spec` for gradient accumulation (see [`AccumulateGraphs`]).
pub fn accumulate_graphs(model: &Model, spec: &StepSpec) -> Result<AccumulateGraphs> {
    spec.check()?;
    if !spec.optimizer.is_basic_sam() && spec.optimizer != Optimizer::Sgd {
        bail!(
            "--accumulate and data-parallel steps run sgd, sam, usam and asam; --optimizer {} runs one batch on one process here",
            spec.optimizer.name()
        );
    }
    if spec.micro_batch.is_some() {
        bail!("--accumulate and --micro-batch split a batch two ways: m-SAM perturbs per micro-batch, accumulation once for the whole batch; choose one");
    }
    let (m0, c0) = training_forward(model, &spec.grad)?;
    let keep_outputs = |m: &mut Model, c: &Contract| {
        let keep: std::collections::HashSet<&String> =
            c.params_next.values().chain(c.opt_state_next.values()).chain(c.state_next.values()).chain(c.diagnostics.values()).collect();
        let extra = [c.scores.as_ref(), c.weights.as_ref()];
        m.graph.outputs.retain(|o| keep.contains(&o.name) || extra.iter().any(|e| *e == Some(&o.name)) || o.name == "loss_per_sample");
    };
    // scores (RW-SAM): the fd branch alone
    let scores = match &spec.reweight {
        Some(r) => {
            let Score::Fd { q, scheme } = r.score else {
                bail!("--accumulate takes RW-SAM's finite-difference scores (--score fd), not --score exact");
            };
            let (mut m, mut c) = (m0.clone(), c0.clone());
            run_all(&mut m, &mut c, &[&FdBranch { q, scheme, delta: spec.fd_delta }])?;
            c.state_next.clear();
            m.graph.outputs.retain(|o| Some(&o.name) == c.scores.as_ref() || o.name == "trace_v");
            run_all(&mut m, &mut c, &[&Cleanup])?;
            Some(StepGraph { model: m, contract: c })
        }
        None => None,
    };
    // ascent: (weighted) loss at θ, its gradient's share accumulated
    let ascent = {
        let (mut m, mut c) = (m0.clone(), c0.clone());
        if spec.reweight.is_some() {
            let lps = c.loss_per_sample.clone().expect("per-sample-loss ran");
            m.graph.inputs.push(crate::passes::value_info(crate::passes::reweight::WEIGHTS, crate::onnx::data_type::FLOAT, &[-1]));
            let mut ctx = crate::ctx::Ctx::new(&mut m.graph, crate::shapes::Shapes::default(), 0);
            let wl = ctx.mul(&lps, crate::passes::reweight::WEIGHTS);
            let wl = ctx.reduce_sum(&wl, &[0], false);
            c.weights = Some(crate::passes::reweight::WEIGHTS.to_string());
            c.sample_weights = Some(crate::passes::reweight::WEIGHTS.to_string());
            c.ascent_loss = Some(wl);
        }
        run_all(&mut m, &mut c, &[&spec.sam_update(Stage::AccAscent)])?;
        keep_outputs(&mut m, &c);
        run_all(&mut m, &mut c, &[&Cleanup])?;
        StepGraph { model: m, contract: c }
    };
    let descent = if spec.optimizer == crate::passes::sam_update::Optimizer::Sgd {
        None
    } else {
        let (mut m, mut c) = (m0.clone(), c0.clone());
        run_all(&mut m, &mut c, &[&spec.sam_update(Stage::AccDescent)])?;
        keep_outputs(&mut m, &c);
        m.graph.outputs.retain(|o| o.name != "loss_per_sample");
        run_all(&mut m, &mut c, &[&Cleanup])?;
        Some(StepGraph { model: m, contract: c })
    };
    let apply = {
        let (mut m, mut c) = (m0, c0);
        m.graph.outputs.clear();
        c.loss = None;
        c.loss_per_sample = None;
        c.logits = None;
        c.state_next.clear();
        run_all(&mut m, &mut c, &[&spec.sam_update(Stage::Apply), &Cleanup])?;
        StepGraph { model: m, contract: c }
    };
    Ok(AccumulateGraphs { scores, ascent, descent, apply })
}

/// The evaluation graph: eval-mode forward, per-sample loss, correct count.
pub fn eval_graph(model: &Model, spec: &GradSpec) -> Result<StepGraph> {
    let (mut m, mut c) = imported(model, spec, false)?;
    let loss = PerSampleLoss { loss: spec.loss, weighted: false, labels_shape: spec.labels_shape.clone() };
    run_all(&mut m, &mut c, &[&EvalMode, &loss, &EvalGraph, &Cleanup])?;
    Ok(StepGraph { model: m, contract: c })
}

/// One input or output of a compiled graph and what it is for (step.json).
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct Io {
    pub name: String,
    /// data, label, parameter, state, random_direction, random_uniform, hyperparameter, score
    /// (inputs); parameter, state, diagnostic, per_sample, output (outputs)
    pub role: String,
    pub dtype: String,
    /// −1 stands for the batch size; empty for scalars; absent when unknown.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub shape: Option<Vec<i64>>,
    /// Inputs: the output that carries this input's value for the next step.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub next: Option<String>,
    /// Outputs: the input this output replaces next step.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub feeds: Option<String>,
    /// Random directions: which parameter and which q.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub param: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub q: Option<usize>,
    /// Hyperparameters: the default value.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub default: Option<f32>,
}

/// The roles of every input and output of a compiled graph.
pub fn io_roles(g: &StepGraph) -> (Vec<Io>, Vec<Io>) {
    use crate::shapes::value_type_of;
    let c = &g.contract;
    let ty = |v: &crate::onnx::ValueInfoProto| {
        let t = value_type_of(&v.r#type);
        let dtype = t.as_ref().map(|t| crate::onnx::tensor::dtype_name(t.dtype).to_string()).unwrap_or_default();
        let shape = t.and_then(|t| t.shape).map(|s| s.iter().map(|d| d.known().unwrap_or(-1)).collect());
        (dtype, shape)
    };
    let mut next_of: std::collections::BTreeMap<&str, &str> = std::collections::BTreeMap::new();
    for (i, o) in c.state_next.iter().chain(&c.opt_state_next).chain(&c.params_next) {
        next_of.insert(i, o);
    }
    let inputs = g
        .model
        .graph
        .data_inputs()
        .into_iter()
        .map(|v| {
            let (dtype, shape) = ty(v);
            let n = v.name.as_str();
            let dir = c.directions.iter().find(|d| d.input == n);
            let role = if c.data.iter().any(|d| d == n) {
                "data"
            } else if c.labels.as_deref() == Some(n) {
                "label"
            } else if c.params.iter().any(|p| p == n) {
                "parameter"
            } else if c.state_next.contains_key(n) || c.opt_state_next.contains_key(n) || c.state.iter().any(|s| s == n)
            {
                "state"
            } else if dir.is_some() {
                "random_direction"
            } else if c.random_uniform.contains_key(n) {
                "random_uniform"
            } else if c.hyper.contains_key(n) {
                "hyperparameter"
            } else if c.scores_fed && c.scores.as_deref() == Some(n) {
                "score"
            } else {
                "data"
            };
            Io {
                name: n.to_string(),
                role: role.into(),
                dtype,
                shape,
                next: next_of.get(n).map(|s| s.to_string()),
                feeds: None,
                param: dir.map(|d| d.param.clone()),
                q: dir.map(|d| d.q),
                default: c.hyper.get(n).copied(),
            }
        })
        .collect();
    let outputs = g
        .model
        .graph
        .outputs
        .iter()
        .map(|v| {
            let (dtype, shape) = ty(v);
            let n = v.name.as_str();
            let feeds = next_of.iter().find(|(_, o)| **o == n).map(|(i, _)| i.to_string());
            let role = if c.params_next.values().any(|o| o == n) {
                "parameter"
            } else if feeds.is_some() {
                "state"
            } else if c.diagnostics.values().any(|o| o == n) {
                "diagnostic"
            } else if [&c.loss_per_sample, &c.weights].iter().any(|x| x.as_deref() == Some(n))
                || (!c.scores_fed && c.scores.as_deref() == Some(n))
            {
                "per_sample"
            } else {
                "output"
            };
            Io {
                name: n.to_string(),
                role: role.into(),
                dtype,
                shape,
                next: None,
                feeds,
                param: None,
                q: None,
                default: None,
            }
        })
        .collect();
    (inputs, outputs)
}
