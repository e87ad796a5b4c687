//! sam-update: the ascent gradient, the perturbation, the gradient at θ + ε and the base
//! optimizer step (METHOD.md):
//!   g_a = ∇ ascent loss (Σ pᵢ·ℓᵢ with reweight, else L)        [+ wd·θ in weight-decay mode `loss`]
//!   SAM  ε = ρ·g_a/(‖g_a‖ + 1e-12);  USAM ε = ρ·g_a;
//!   ASAM ε = ρ·T²·g_a/(‖T·g_a‖ + 1e-12), T = |θ| + η on weights, 1 elsewhere
//!   g = ∇L(θ + ε) with the uniform loss (SGD: g = ∇L(θ))       [+ wd·(θ + ε) in mode `loss`]
//!   clip (--clip-grad-norm, torch.nn.utils.clip_grad_norm_): g ← g·min(1, max_norm/(‖g‖ + 1e-6))
//!   coupled: g ← g + wd·θ;  decoupled: θ ← θ − lr·wd·θ
//!   SGD (torch.optim.SGD): buf ← μ·buf + g;  d = g + μ·buf (nesterov) or buf;  θ ← θ − lr·d
//!   Adam/AdamW (torch.optim.Adam/AdamW, its single-tensor path): t ← t + 1;
//!     m ← m + (1−β₁)(g − m);  v ← β₂·v + (1−β₂)·g²;  [amsgrad: v_max ← max(v_max, v), used for v]
//!     θ ← θ − (lr/(1−β₁ᵗ))·m / (√v/√(1−β₂ᵗ) + eps)        (AdamW: decoupled decay first)
//! The variants of the literature (METHOD.md; docs/optimizers.md), g the ascent gradient, g_p = ∇L(θ + ε):
//!   GSAM   d = g_p − α·(g − cos·‖g‖·g_p/(‖g_p‖ + 1e-12)),  cos = g·g_p/(‖g‖‖g_p‖ + 1e-12)
//!   WSAM   d = ((1−2γ)/(1−γ))·g + (γ/(1−γ))·g_p
//!   F-SAM  ε along g − σ·m (m from before this step; 0 on the first), m ← λ·m + (1−λ)·g (m = g first)
//!   LookSAM every k-th step d = g_p and g_v = g_p − (g_p·g/‖g‖²)·g is kept; between (`looksam_reuse`,
//!          one forward-backward) d = g + α·(‖g‖/(‖g_v‖ + 1e-12))·g_v
//!   Momentum-SAM ε = −ρ·v/(‖v‖ + 1e-12), v the momentum buffer (Adam: exp_avg) from the last step;
//!          one forward-backward, at θ + ε (it updates BatchNorm's statistics); coupled decay at θ + ε
//! m-SAM splits this in two graphs: `Micro` (one micro-batch: accumulates g into `grad_acc/<p>`)
//! and `Apply` (the base step with g = Σ acc / k). Gradient accumulation over a logical batch
//! (--accumulate K) in three: `AccAscent` per micro-batch (the ascent gradient's share), then
//! `AccDescent` per micro-batch (one ε from the whole ascent gradient, the gradient's share at
//! θ + ε), then `Apply`: SAM over the logical batch, whatever its micro-batches.
use std::collections::HashMap;

use super::forward::copy_forward;
use super::{dot, expose, hyper, sum_of_squares, value_info};
use crate::pass::{Contract, Pass};
use crate::autodiff::gradients_with;
use crate::ctx::Ctx;
use crate::ir::Model;
use crate::onnx::data_type as dt;
use crate::shapes::Shapes;
use crate::{bail, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    Sgd,
    Sam,
    Usam,
    Asam,
    /// Surrogate-gap SAM (Zhuang et al., ICLR 2022).
    Gsam,
    /// Weighted SAM (Yue et al., KDD 2023), the undecoupled form.
    Wsam,
    /// Friendly SAM (Li et al., CVPR 2024; the authors' nblt/F-SAM).
    Fsam,
    /// LookSAM (Liu et al., CVPR 2022): full SAM every k-th step, the kept component between.
    #[serde(rename = "looksam")]
    LookSam,
    /// Momentum-SAM (Becker et al., 2024): ascent along the momentum, one gradient per step.
    #[serde(rename = "momentum-sam")]
    MomentumSam,
}

impl Optimizer {
    /// The name the command line and the docs use.
    pub fn name(self) -> &'static str {
        match self {
            Optimizer::Sgd => "sgd",
            Optimizer::Sam => "sam",
            Optimizer::Usam => "usam",
            Optimizer::Asam => "asam",
            Optimizer::Gsam => "gsam",
            Optimizer::Wsam => "wsam",
            Optimizer::Fsam => "fsam",
            Optimizer::LookSam => "looksam",
            Optimizer::MomentumSam => "momentum-sam",
        }
    }

    /// SAM, USAM and ASAM: the three that m-SAM, --accumulate and data-parallel steps take.
    pub fn is_basic_sam(self) -> bool {
        matches!(self, Optimizer::Sam | Optimizer::Usam | Optimizer::Asam)
    }

    /// An ascent gradient RW-SAM's weights can reweight (all but SGD and Momentum-SAM).
    pub fn has_ascent(self) -> bool {
        !matches!(self, Optimizer::Sgd | Optimizer::MomentumSam)
    }
}

/// The hyperparameters of the SAM variants (each paper's default; docs/optimizers.md).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct VariantParams {
    /// GSAM's α (pytorch-optimizer's default 0.4; the authors' example uses 0.2).
    pub gsam_alpha: f32,
    /// WSAM's γ (0.9, the paper's and pytorch-optimizer's).
    pub wsam_gamma: f32,
    /// F-SAM's σ and λ (the authors' class defaults 1 and 0.9).
    pub fsam_sigma: f32,
    pub fsam_lambda: f32,
    /// LookSAM: a full step every k steps (the paper's LookSAM-5), α (0.7).
    pub looksam_k: usize,
    pub looksam_alpha: f32,
}

impl Default for VariantParams {
    fn default() -> Self {
        VariantParams {
            gsam_alpha: 0.4,
            wsam_gamma: 0.9,
            fsam_sigma: 1.0,
            fsam_lambda: 0.9,
            looksam_k: 5,
            looksam_alpha: 0.7,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightDecayMode {
    Coupled,
    Loss,
    Decoupled,
}

/// The base optimizer that takes the step from the (SAM) gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseOptimizer {
    /// torch.optim.SGD: momentum, dampening 0, nesterov.
    Sgd,
    /// torch.optim.Adam: weight decay coupled into the gradient (L2).
    Adam,
    /// torch.optim.AdamW: decoupled weight decay θ ← θ·(1 − lr·wd).
    #[serde(rename = "adamw")]
    AdamW,
}

impl BaseOptimizer {
    /// The name the command line uses.
    pub fn name(self) -> &'static str {
        match self {
            BaseOptimizer::Sgd => "sgd",
            BaseOptimizer::Adam => "adam",
            BaseOptimizer::AdamW => "adamw",
        }
    }

    /// Adam or AdamW (state exp_avg, exp_avg_sq, step; hyperparameters betas, eps).
    pub fn is_adam(self) -> bool {
        self != BaseOptimizer::Sgd
    }
}

/// Which part of the step this graph computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The whole step in one graph.
    Full,
    /// m-SAM: one micro-batch's g = ∇L_j(θ + ε_j), added to the accumulators.
    Micro,
    /// m-SAM and --accumulate: the base optimizer step from the accumulated gradient.
    Apply,
    /// --accumulate (one micro-batch at θ): its share of the ascent gradient, `micro_weight`·∇
    /// (or ∇Σ pᵢ·ℓᵢ with the logical batch's weights fed), added to `ascent_acc/<p>` (SAM
    /// family) or to `grad_acc/<p>` (the descent gradient itself: SGD, Adam).
    AccAscent,
    /// --accumulate (one micro-batch): ε from the whole logical batch's ascent gradient
    /// (`ascent_acc/<p>`), its share `micro_weight`·∇L(θ + ε) added to `grad_acc/<p>`.
    AccDescent,
}

#[derive(Clone, Debug)]
pub struct SamUpdate {
    pub optimizer: Optimizer,
    pub stage: Stage,
    /// ASAM's η.
    pub eta: f32,
    pub nesterov: bool,
    pub weight_decay_mode: WeightDecayMode,
    /// No weight decay on biases and normalization parameters (rank ≤ 1).
    pub no_decay_bias_norm: bool,
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub rho: f32,
    pub base: BaseOptimizer,
    /// Adam's (β₁, β₂) and eps (torch.optim.Adam's `betas`, `eps`).
    pub betas: (f32, f32),
    pub eps: f32,
    pub amsgrad: bool,
    /// Clip the descent gradient to this global L2 norm (torch.nn.utils.clip_grad_norm_'s max_norm).
    pub max_grad_norm: Option<f32>,
    /// The SAM variants' hyperparameters.
    pub variant: VariantParams,
    /// LookSAM's graph of the steps between full ones (g_v reused, one forward-backward).
    pub looksam_reuse: bool,
}

pub const GRAD_ACC: &str = "grad_acc/";
pub const MOMENTUM_BUFFER: &str = "momentum_buffer/";
/// Adam's state, named as torch.optim.Adam's state dict: exp_avg, exp_avg_sq, max_exp_avg_sq, step.
pub const EXP_AVG: &str = "exp_avg/";
pub const EXP_AVG_SQ: &str = "exp_avg_sq/";
pub const MAX_EXP_AVG_SQ: &str = "max_exp_avg_sq/";
/// Adam's step count t (a float32 scalar; one for all parameters, as they all step together).
pub const STEP_COUNT: &str = "step";
pub const NEXT: &str = "next/";
pub const MICRO_BATCHES: &str = "micro_batches";
/// --accumulate: the ascent gradient of the logical batch, summed over its micro-batches.
pub const ASCENT_ACC: &str = "ascent_acc/";
/// --accumulate: a micro-batch's share of the logical batch (its size over the batch's).
pub const MICRO_WEIGHT: &str = "micro_weight";
/// --accumulate: the diagnostic L(θ + ε) of one micro-batch (the runtime forms the sharpness).
pub const LOSS_AT_EPS: &str = "loss_at_eps";
/// F-SAM's EMA of the gradient (the authors' `momentum`), and whether it has been set (0 or 1).
pub const FSAM_MOMENTUM: &str = "fsam_momentum/";
pub const FSAM_STARTED: &str = "fsam_started";
/// LookSAM's kept component g_v.
pub const LOOKSAM_GV: &str = "looksam_gv/";
/// Optimizer state that belongs to no parameter: float32 scalars that start at 0.
pub const SCALAR_STATES: [&str; 2] = [STEP_COUNT, FSAM_STARTED];

/// The parameter an optimizer-state input belongs to (`momentum_buffer/<p>`, `grad_acc/<p>`,
/// `exp_avg/<p>`, …); scalar states belong to none and are returned as they are.
pub fn state_param(state: &str) -> &str {
    [MOMENTUM_BUFFER, GRAD_ACC, ASCENT_ACC, EXP_AVG, EXP_AVG_SQ, MAX_EXP_AVG_SQ, FSAM_MOMENTUM, LOOKSAM_GV]
        .iter()
        .find_map(|p| state.strip_prefix(p))
        .unwrap_or(state)
}

/// The shape of an optimizer-state input: its parameter's, or [] for a scalar state.
pub fn state_dims(c: &Contract, state: &str) -> Option<Vec<i64>> {
    if SCALAR_STATES.contains(&state) {
        return Some(vec![]);
    }
    c.init.get(state_param(state)).map(|t| t.dims.clone())
}

/// A weight tensor for ASAM (SamsungLabs/ASAM: names containing "weight"; for names without
/// PyTorch structure, any tensor of rank ≥ 2 that is not called a bias).
pub fn is_weight(name: &str, rank: usize) -> bool {
    name.contains("weight") || (!name.contains("bias") && rank >= 2)
}

impl SamUpdate {
    fn decayed(&self, c: &Contract, p: &str) -> bool {
        !(self.no_decay_bias_norm && rank(c, p) <= 1)
    }
}

fn rank(c: &Contract, p: &str) -> usize {
    c.init.get(p).map(|t| t.dims.len()).unwrap_or(0)
}

fn dims(c: &Contract, p: &str) -> Vec<i64> {
    c.init.get(p).map(|t| t.dims.clone()).unwrap_or_default()
}

impl Pass for SamUpdate {
    fn name(&self) -> &'static str {
        "sam-update"
    }

    fn run(&self, m: &mut Model, c: &mut Contract) -> Result<()> {
        let params = c.params.clone();
        if params.is_empty() {
            bail!("the model has no trainable parameters (all frozen?)");
        }
        // no weight decay asked for: no `weight_decay` input and no decay nodes (two per parameter)
        let wd = if self.weight_decay != 0.0 { Some(hyper(m, c, "weight_decay", self.weight_decay)?) } else { None };
        let wd = wd.as_deref();
        match self.stage {
            Stage::AccAscent => {
                // a weighted ascent loss (the logical batch's Gibbs weights) is its share already;
                // its decay term (mode `loss`) is not: Σ over shares of micro_weight·wd·θ = wd·θ
                let weighted = c.ascent_loss.is_some();
                let decay_apart = weighted && self.weight_decay_mode == WeightDecayMode::Loss;
                let (ga, _) = self.ascent_gradient(m, c, if decay_apart { None } else { wd })?;
                let scaled = if !weighted {
                    self.scaled(m, c, &ga)?
                } else if let (true, Some(wd)) = (decay_apart, wd) {
                    let w = hyper(m, c, MICRO_WEIGHT, 1.0)?;
                    let mut ctx = Ctx::new(&mut m.graph, Shapes::default(), 0);
                    let share = ctx.mul(wd, &w);
                    self.add_decay(&mut ctx, c, &params, &params, &ga, Some(&share))
                } else {
                    ga
                };
                let into = if self.optimizer == Optimizer::Sgd { GRAD_ACC } else { ASCENT_ACC };
                accumulate(m, c, &params, &scaled, into);
                return m.graph.topo_sort();
            }
            Stage::AccDescent => {
                let mut ctx = Ctx::new(&mut m.graph, Shapes::default(), 0);
                let mut ga = Vec::new();
                for p in &params {
                    let a = format!("{ASCENT_ACC}{p}");
                    ctx.g.inputs.push(value_info(&a, dt::FLOAT, &dims(c, p)));
                    ga.push(a);
                }
                // no clean pass here: the running statistics and the loss at θ come from AccAscent
                c.state_next.clear();
                c.diagnostics.clear();
                let gn = self.norm_diagnostic(&mut ctx, c, &ga);
                // each share carries its part of the decay: Σ wⱼ·(∇Lⱼ + wd·(θ + ε)) = ∇L + wd·(θ + ε)
                let g = self.gradient_at_perturbed(m, c, wd, &ga, &gn, true)?;
                let scaled = self.scaled(m, c, &g)?;
                accumulate(m, c, &params, &scaled, GRAD_ACC);
                return m.graph.topo_sort();
            }
            _ => {}
        }
        let g = match self.stage {
            Stage::Apply => {
                let k = hyper(m, c, MICRO_BATCHES, 1.0)?;
                let mut acc = Vec::new();
                for p in &params {
                    let a = format!("{GRAD_ACC}{p}");
                    m.graph.inputs.push(value_info(&a, dt::FLOAT, &dims(c, p)));
                    acc.push(a);
                }
                let mut ctx = Ctx::new(&mut m.graph, Shapes::default(), 0);
                acc.iter().map(|a| ctx.div(a, &k)).collect()
            }
            _ => self.descent_gradient(m, c, wd)?,
        };
        if self.stage == Stage::Micro {
            accumulate(m, c, &params, &g, GRAD_ACC);
            return m.graph.topo_sort();
        }
        self.base_step(m, c, wd, &g)?;
        m.graph.topo_sort()
    }
}

/// A float32 input `name` of shape `dims`, unless the graph has it already.
fn ensure_input(g: &mut crate::ir::Graph, name: &str, dims: &[i64]) {
    if !g.inputs.iter().any(|v| v.name == name) {
        g.inputs.push(value_info(name, dt::FLOAT, dims));
    }
}

/// acc_next = acc + g for every parameter (`<prefix><p>` inputs and `next/<prefix><p>` outputs).
fn accumulate(m: &mut Model, c: &mut Contract, params: &[String], g: &[String], prefix: &str) {
    let mut ctx = Ctx::new(&mut m.graph, Shapes::default(), 0);
    for (p, gp) in params.iter().zip(g) {
        let a = format!("{prefix}{p}");
        ctx.g.inputs.push(value_info(&a, dt::FLOAT, &dims(c, p)));
        let next = ctx.add(&a, gp);
        let out = expose(&mut ctx, &next, &format!("{NEXT}{a}"), Some(&dims(c, p)));
        c.opt_state_next.insert(a, out);
    }
}

impl SamUpdate {
    /// micro_weight·g: a micro-batch's gradient as its share of the logical batch's mean.
    fn scaled(&self, m: &mut Model, c: &mut Contract, g: &[String]) -> Result<Vec<String>> {
        let w = hyper(m, c, MICRO_WEIGHT, 1.0)?;
        let mut ctx = Ctx::new(&mut m.graph, Shapes::default(), 0);
        Ok(g.iter().map(|x| ctx.mul(x, &w)).collect())
    }

    /// The gradient the base optimizer descends along (before coupled weight decay), plus the
    /// diagnostics loss, correct, grad_norm and sharpness.
    fn descent_gradient(&self, m: &mut Model, c: &mut Contract, wd: Option<&str>) -> Result<Vec<String>> {
        match self.optimizer {
            Optimizer::MomentumSam => return self.momentum_sam_gradient(m, c, wd),
            Optimizer::LookSam if self.looksam_reuse => return self.looksam_between(m, c, wd),
            _ => {}
        }
        let (ga, gn) = self.ascent_gradient(m, c, wd)?;
        let (dir, dir_norm) = match self.optimizer {
            Optimizer::Sgd => return Ok(ga),
            Optimizer::Fsam => self.fsam_direction(m, c, &ga)?,
            _ => (ga.clone(), gn.clone()),
        };
        let gp = self.gradient_at_perturbed(m, c, wd, &dir, &dir_norm, false)?;
        let opset = m.opset();
        match self.optimizer {
            Optimizer::Gsam => {
                let alpha = hyper(m, c, "gsam_alpha", self.variant.gsam_alpha)?;
                let mut ctx = Ctx::new(&mut m.graph, Shapes::default(), opset);
                let tiny = ctx.scalar(1e-12);
                let gp2 = sum_of_squares(&mut ctx, &gp);
                let gpn = ctx.sqrt(&gp2);
                let inner = dot(&mut ctx, &ga, &gp);
                let nn = ctx.mul(&gpn, &gn);
                let nn = ctx.add(&nn, &tiny);
                let cos = ctx.div(&inner, &nn);
                let gpd = ctx.add(&gpn, &tiny);
                let k = ctx.mul(&cos, &gn);
                let k = ctx.div(&k, &gpd);
                Ok(ga
                    .iter()
                    .zip(&gp)
                    .map(|(g, p)| {
                        let along = ctx.mul(p, &k);
                        let vertical = ctx.sub(g, &along);
                        let v = ctx.mul(&vertical, &alpha);
                        ctx.sub(p, &v)
                    })
                    .collect())
            }
            Optimizer::Wsam => {
                let gamma = hyper(m, c, "wsam_gamma", self.variant.wsam_gamma)?;
                let mut ctx = Ctx::new(&mut m.graph, Shapes::default(), opset);
                let one = ctx.scalar(1.0);
                let rest = ctx.sub(&one, &gamma);
                let b = ctx.div(&gamma, &rest);
                let a = ctx.sub(&one, &b);
                Ok(ga
                    .iter()
                    .zip(&gp)
                    .map(|(g, p)| {
                        let x = ctx.mul(g, &a);
                        let y = ctx.mul(p, &b);
                        ctx.add(&x, &y)
                    })
                    .collect())
            }
            Optimizer::LookSam => {
                // g_v = g_p − (g_p·g/‖g‖²)·g, kept for the steps between
                let mut ctx = Ctx::new(&mut m.graph, Shapes::default(), opset);
                let tiny = ctx.scalar(1e-12);
                let inner = dot(&mut ctx, &gp, &ga);
                let g2 = ctx.square(&gn);
                let g2 = ctx.add(&g2, &tiny);
                let k = ctx.div(&inner, &g2);
                for ((p, g), gpi) in c.params.clone().iter().zip(&ga).zip(&gp) {
                    let input = format!("{LOOKSAM_GV}{p}");
                    ensure_input(ctx.g, &input, &dims(c, p));
                    let along = ctx.mul(g, &k);
                    let gv = ctx.sub(gpi, &along);
                    let out = expose(&mut ctx, &gv, &format!("{NEXT}{input}"), Some(&dims(c, p)));
                    c.opt_state_next.insert(input, out);
                }
                Ok(gp)
            }
            _ => Ok(gp),
        }
    }

    /// F-SAM's ascent direction g − σ·m (m from the last step; g itself on the first step), its
    /// norm, and m's next value λ·m + (1−λ)·g (g on the first step), as the authors' code.
    fn fsam_direction(&self, m: &mut Model, c: &mut Contract, ga: &[String]) -> Result<(Vec<String>, String)> {
        let sigma = hyper(m, c, "fsam_sigma", self.variant.fsam_sigma)?;
        let lambda = hyper(m, c, "fsam_lambda", self.variant.fsam_lambda)?;
        let opset = m.opset();
        let mut ctx = Ctx::new(&mut m.graph, Shapes::default(), opset);
        ensure_input(ctx.g, FSAM_STARTED, &[]);
        let one = ctx.scalar(1.0);
        let started_next = expose(&mut ctx, &one, &format!("{NEXT}{FSAM_STARTED}"), Some(&[]));
        c.opt_state_next.insert(FSAM_STARTED.into(), started_next);
        let s_sigma = ctx.mul(FSAM_STARTED, &sigma);
        let s_lambda = ctx.mul(FSAM_STARTED, &lambda);
        let mut dir = Vec::new();
        for (p, g) in c.params.clone().iter().zip(ga) {
            let input = format!("{FSAM_MOMENTUM}{p}");
            ensure_input(ctx.g, &input, &dims(c, p));
            let corr = ctx.mul(&input, &s_sigma);
            dir.push(ctx.sub(g, &corr));
            // g + started·λ·(m − g): λ·m + (1−λ)·g once started, g on the first step
            let diff = ctx.sub(&input, g);
            let t = ctx.mul(&diff, &s_lambda);
            let next = ctx.add(g, &t);
            let out = expose(&mut ctx, &next, &format!("{NEXT}{input}"), Some(&dims(c, p)));
            c.opt_state_next.insert(input, out);
        }
        let n2 = sum_of_squares(&mut ctx, &dir);
        let n = ctx.sqrt(&n2);
        Ok((dir, n))
    }

    /// LookSAM between full steps: g = ∇L(θ) (one forward-backward), d = g + α·(‖g‖/‖g_v‖)·g_v.
    fn looksam_between(&self, m: &mut Model, c: &mut Contract, wd: Option<&str>) -> Result<Vec<String>> {
        let (g, gn) = self.ascent_gradient(m, c, wd)?;
        let alpha = hyper(m, c, "looksam_alpha", self.variant.looksam_alpha)?;
        let mut ctx = Ctx::new(&mut m.graph, Shapes::default(), 0);
        let mut gv = Vec::new();
        for p in c.params.clone() {
            let input = format!("{LOOKSAM_GV}{p}");
            ensure_input(ctx.g, &input, &dims(c, &p));
            c.state.push(input.clone());
            gv.push(input);
        }
        let n2 = sum_of_squares(&mut ctx, &gv);
        let n = ctx.sqrt(&n2);
        let tiny = ctx.scalar(1e-12);
        let d = ctx.add(&n, &tiny);
        let k = ctx.div(&gn, &d);
        let k = ctx.mul(&k, &alpha);
        Ok(g.iter()
            .zip(&gv)
            .map(|(g, v)| {
                let t = ctx.mul(v, &k);
                ctx.add(g, &t)
            })
            .collect())
    }

    /// Momentum-SAM: ε = −ρ·v/(‖v‖ + 1e-12) from the momentum of the last step, the forward read
    /// at θ + ε (its only forward: loss, metric and BatchNorm's statistics are those at θ + ε),
    /// g = ∇L(θ + ε) [+ wd·(θ + ε) in mode `loss`]. Returns g and θ + ε (where the authors' code
    /// takes coupled decay).
    fn momentum_sam_gradient(&self, m: &mut Model, c: &mut Contract, wd: Option<&str>) -> Result<Vec<String>> {
        let params = c.params.clone();
        let Some(loss) = c.loss.clone() else { bail!("sam-update needs a loss: run per-sample-loss first") };
        let opset = m.opset();
        let rho = hyper(m, c, "rho", self.rho)?;
        let forward_nodes = m.graph.nodes.len();
        let prefix = if self.base.is_adam() { EXP_AVG } else { MOMENTUM_BUFFER };
        let mut ctx = Ctx::new(&mut m.graph, Shapes::default(), opset);
        let mut v = Vec::new();
        for p in &params {
            let b = format!("{prefix}{p}");
            ensure_input(ctx.g, &b, &dims(c, p));
            v.push(b);
        }
        let n2 = sum_of_squares(&mut ctx, &v);
        let n = ctx.sqrt(&n2);
        let tiny = ctx.scalar(1e-12);
        let d = ctx.add(&n, &tiny);
        let k = ctx.div(&rho, &d);
        let k = ctx.neg(&k);
        let mut subst = HashMap::new();
        let mut perturbed = Vec::new();
        for (p, b) in params.iter().zip(&v) {
            let e = ctx.mul(b, &k);
            let x = ctx.add(p, &e);
            subst.insert(p.clone(), x.clone());
            perturbed.push(x);
        }
        // the forward (and the loss) read θ + ε instead of θ
        for node in ctx.g.nodes[..forward_nodes].iter_mut() {
            for i in node.input.iter_mut() {
                if let Some(x) = subst.get(i.as_str()) {
                    *i = x.clone();
                }
            }
        }
        for r in c.batch_norms.iter_mut() {
            for x in [&mut r.scale, &mut r.bias] {
                if let Some(y) = subst.get(x.as_str()) {
                    *x = y.clone();
                }
            }
        }
        super::expose_metric(&mut ctx, c);
        c.diagnostics.insert("loss".into(), loss.clone());
        let shortcuts = super::autodiff::shortcuts(c.cross_entropy.as_ref(), &c.batch_norms);
        let g = gradients_with(ctx.g, opset, &loss, &perturbed, &shortcuts, &c.stop_gradient)?;
        let mut ctx = Ctx::new(&mut m.graph, Shapes::default(), opset);
        let mut g: Vec<String> = perturbed.iter().map(|x| g[x].clone()).collect();
        self.norm_diagnostic(&mut ctx, c, &g);
        if matches!(self.weight_decay_mode, WeightDecayMode::Loss | WeightDecayMode::Coupled) {
            // coupled: the authors add wd·(θ + ε) to the gradient; base_step then adds none
            g = self.add_decay(&mut ctx, c, &params, &perturbed, &g, wd);
        }
        Ok(g)
    }

    /// ∇ of the ascent loss (Σ pᵢ·ℓᵢ with reweight, else L) at θ [+ wd·θ in mode `loss`] and its
    /// norm; diagnostics loss, the task metric and grad_norm.
    fn ascent_gradient(&self, m: &mut Model, c: &mut Contract, wd: Option<&str>) -> Result<(Vec<String>, String)> {
        let params = c.params.clone();
        let Some(loss) = c.loss.clone() else { bail!("sam-update needs a loss: run per-sample-loss first") };
        let opset = m.opset();
        let shortcuts = super::autodiff::shortcuts(c.cross_entropy.as_ref(), &c.batch_norms);
        let ascent = c.ascent_loss.clone().unwrap_or_else(|| loss.clone());
        let ga = gradients_with(&mut m.graph, opset, &ascent, &params, &shortcuts, &c.stop_gradient)?;
        let mut ctx = Ctx::new(&mut m.graph, Shapes::default(), opset);
        let mut ga: Vec<String> = params.iter().map(|p| ga[p].clone()).collect();
        if self.weight_decay_mode == WeightDecayMode::Loss {
            ga = self.add_decay(&mut ctx, c, &params, &params, &ga, wd);
        }
        let gn = self.norm_diagnostic(&mut ctx, c, &ga);
        super::expose_metric(&mut ctx, c);
        c.diagnostics.insert("loss".into(), loss.clone());
        Ok((ga, gn))
    }

    /// ‖g‖ over all parameters, exposed as the `grad_norm` diagnostic.
    fn norm_diagnostic(&self, ctx: &mut Ctx, c: &mut Contract, g: &[String]) -> String {
        let gn2 = sum_of_squares(ctx, g);
        let gn = ctx.sqrt(&gn2);
        let gn = expose(ctx, &gn, "grad_norm", Some(&[]));
        c.diagnostics.insert("grad_norm".into(), gn.clone());
        gn
    }

    /// ε from the ascent gradient `ga` (norm `gn`), then g = ∇L(θ + ε) with the uniform loss
    /// [+ wd·(θ + ε) in mode `loss`]. Diagnostic sharpness L(θ + ε) − L(θ), or (`accumulating`:
    /// the loss at θ is another graph's) `loss_at_eps` = L(θ + ε).
    fn gradient_at_perturbed(
        &self,
        m: &mut Model,
        c: &mut Contract,
        wd: Option<&str>,
        ga: &[String],
        gn: &str,
        accumulating: bool,
    ) -> Result<Vec<String>> {
        let params = c.params.clone();
        let Some(loss) = c.loss.clone() else { bail!("sam-update needs a loss: run per-sample-loss first") };
        let opset = m.opset();
        let rho = hyper(m, c, "rho", self.rho)?;
        let mut ctx = Ctx::new(&mut m.graph, Shapes::default(), opset);
        // ε
        let tiny = ctx.scalar(1e-12);
        let eps: Vec<String> = match self.optimizer {
            Optimizer::Usam => ga.iter().map(|g| ctx.mul(g, &rho)).collect(),
            Optimizer::Sgd | Optimizer::MomentumSam => unreachable!("no ascent gradient"),
            // SAM and the variants that perturb as it does (F-SAM along its corrected direction)
            Optimizer::Sam | Optimizer::Gsam | Optimizer::Wsam | Optimizer::Fsam | Optimizer::LookSam => {
                let d = ctx.add(gn, &tiny);
                let k = ctx.div(&rho, &d);
                ga.iter().map(|g| ctx.mul(g, &k)).collect()
            }
            Optimizer::Asam => {
                let eta = ctx.scalar(self.eta);
                let t: Vec<Option<String>> = params
                    .iter()
                    .map(|p| {
                        is_weight(p, rank(c, p)).then(|| {
                            let a = ctx.op("Abs", &[p]);
                            ctx.add(&a, &eta)
                        })
                    })
                    .collect();
                let tg: Vec<String> =
                    ga.iter().zip(&t).map(|(g, t)| t.as_ref().map(|t| ctx.mul(t, g)).unwrap_or(g.clone())).collect();
                let n2 = sum_of_squares(&mut ctx, &tg);
                let n = ctx.sqrt(&n2);
                let d = ctx.add(&n, &tiny);
                let k = ctx.div(&rho, &d);
                tg.iter()
                    .zip(&t)
                    .map(|(x, t)| {
                        let y = t.as_ref().map(|t| ctx.mul(t, x)).unwrap_or(x.clone());
                        ctx.mul(&y, &k)
                    })
                    .collect()
            }
        };
        let mut subst = HashMap::new();
        let mut perturbed = Vec::new();
        for (p, e) in params.iter().zip(&eps) {
            let v = ctx.add(p, e);
            subst.insert(p.clone(), v.clone());
            perturbed.push(v);
        }
        // dropout: the pass at θ + ε draws its own masks, as PyTorch's second forward does (the
        // finite-difference copies share the clean pass's: their differences measure θ alone)
        for (u, _) in c.random_uniform.clone() {
            let adv = ctx.g.fresh(&format!("{u}.adv"));
            let dims = c.random_uniform[&u].clone();
            let mut declared = ctx.g.inputs.iter().find(|v| v.name == u).cloned().expect("the noise is an input");
            declared.name = adv.clone();
            ctx.g.inputs.push(declared);
            c.random_uniform.insert(adv.clone(), dims);
            if let Some(sp) = c.random_shapes.get(&u).cloned() {
                c.random_shapes.insert(adv.clone(), sp);
            }
            subst.insert(u, adv);
        }
        let copy = copy_forward(ctx.g, c, "adv/", &subst)?;
        let adv_loss = copy.value(&loss);
        if accumulating {
            let l = expose(&mut ctx, &adv_loss, LOSS_AT_EPS, Some(&[]));
            c.diagnostics.insert(LOSS_AT_EPS.into(), l);
        } else {
            let sharp = ctx.sub(&adv_loss, &loss);
            let sharp = expose(&mut ctx, &sharp, "sharpness", Some(&[]));
            c.diagnostics.insert("sharpness".into(), sharp);
        }
        let shortcuts = copy.shortcuts();
        let g = gradients_with(ctx.g, opset, &adv_loss, &perturbed, &shortcuts, &[])?;
        let mut ctx = Ctx::new(&mut m.graph, Shapes::default(), opset);
        let mut g: Vec<String> = perturbed.iter().map(|v| g[v].clone()).collect();
        if self.weight_decay_mode == WeightDecayMode::Loss {
            g = self.add_decay(&mut ctx, c, &params, &perturbed, &g, wd);
        }
        Ok(g)
    }

    /// g + wd·at for decayed parameters.
    fn add_decay(
        &self,
        ctx: &mut Ctx,
        c: &Contract,
        params: &[String],
        at: &[String],
        g: &[String],
        wd: Option<&str>,
    ) -> Vec<String> {
        let Some(wd) = wd else { return g.to_vec() };
        params
            .iter()
            .zip(at)
            .zip(g)
            .map(|((p, x), g)| {
                if self.decayed(c, p) {
                    let t = ctx.mul(x, wd);
                    ctx.add(g, &t)
                } else {
                    g.clone()
                }
            })
            .collect()
    }

    /// The base step, PyTorch semantics: clipping, weight decay, then SGD (momentum, nesterov) or
    /// Adam/AdamW; outputs next/<p> and next/<state> for every optimizer state.
    fn base_step(&self, m: &mut Model, c: &mut Contract, wd: Option<&str>, g: &[String]) -> Result<()> {
        let params = c.params.clone();
        let lr = hyper(m, c, "lr", self.lr)?;
        let g = match self.max_grad_norm {
            Some(max_norm) => {
                let mn = hyper(m, c, "max_norm", max_norm)?;
                let mut ctx = Ctx::new(&mut m.graph, Shapes::default(), 0);
                clip_grad_norm(&mut ctx, g, &mn)
            }
            None => g.to_vec(),
        };
        let mut ctx = Ctx::new(&mut m.graph, Shapes::default(), 0);
        // (Momentum-SAM's coupled decay is at θ + ε, added with its gradient)
        let g = if self.weight_decay_mode == WeightDecayMode::Coupled && self.optimizer != Optimizer::MomentumSam {
            self.add_decay(&mut ctx, c, &params, &params, &g, wd)
        } else {
            g
        };
        // θ after decoupled weight decay
        let mut theta = Vec::new();
        for p in &params {
            let mut t = p.clone();
            if let Some(wd) = wd.filter(|_| self.weight_decay_mode == WeightDecayMode::Decoupled && self.decayed(c, p))
            {
                let lw = ctx.mul(&lr, wd);
                let d = ctx.mul(p, &lw);
                t = ctx.sub(p, &d);
            }
            theta.push(t);
        }
        drop(ctx);
        if self.base.is_adam() {
            return self.adam_step(m, c, &lr, &theta, &g);
        }
        let mu = hyper(m, c, "momentum", self.momentum)?;
        let mut ctx = Ctx::new(&mut m.graph, Shapes::default(), 0);
        for ((p, gp), theta) in params.iter().zip(&g).zip(&theta) {
            let d = dims(c, p);
            let buf = format!("{MOMENTUM_BUFFER}{p}");
            ensure_input(ctx.g, &buf, &d);
            let mb = ctx.mul(&buf, &mu);
            let nb = ctx.add(&mb, gp);
            let step = if self.nesterov {
                let t = ctx.mul(&nb, &mu);
                ctx.add(gp, &t)
            } else {
                nb.clone()
            };
            let u = ctx.mul(&step, &lr);
            let np = ctx.sub(theta, &u);
            let np = expose(&mut ctx, &np, &format!("{NEXT}{p}"), Some(&d));
            let nb = expose(&mut ctx, &nb, &format!("{NEXT}{buf}"), Some(&d));
            c.params_next.insert(p.clone(), np);
            c.opt_state_next.insert(buf, nb);
        }
        Ok(())
    }

    /// torch.optim.Adam/AdamW's single-tensor step (torch/optim/adam.py, `_single_tensor_adam`)
    /// from θ (already decayed for AdamW) and g (already with L2 for Adam).
    fn adam_step(&self, m: &mut Model, c: &mut Contract, lr: &str, theta: &[String], g: &[String]) -> Result<()> {
        let params = c.params.clone();
        let b1 = hyper(m, c, "beta1", self.betas.0)?;
        let b2 = hyper(m, c, "beta2", self.betas.1)?;
        let eps = hyper(m, c, "eps", self.eps)?;
        if m.graph.inputs.iter().any(|v| v.name == STEP_COUNT) || c.init.contains_key(STEP_COUNT) {
            bail!("the model already has a value named '{STEP_COUNT}', the name of Adam's step count; rename it");
        }
        let mut ctx = Ctx::new(&mut m.graph, Shapes::default(), 0);
        ctx.g.inputs.push(value_info(STEP_COUNT, dt::FLOAT, &[]));
        let one = ctx.scalar(1.0);
        let t = ctx.add(STEP_COUNT, &one);
        let next_t = expose(&mut ctx, &t, &format!("{NEXT}{STEP_COUNT}"), Some(&[]));
        c.opt_state_next.insert(STEP_COUNT.into(), next_t);
        let p1 = ctx.op("Pow", &[&b1, &t]);
        let bc1 = ctx.sub(&one, &p1);
        let p2 = ctx.op("Pow", &[&b2, &t]);
        let bc2 = ctx.sub(&one, &p2);
        let step_size = ctx.div(lr, &bc1);
        let bc2_sqrt = ctx.sqrt(&bc2);
        let one_minus_b1 = ctx.sub(&one, &b1);
        let one_minus_b2 = ctx.sub(&one, &b2);
        for ((p, gp), theta) in params.iter().zip(g).zip(theta) {
            let d = dims(c, p);
            let (ma, va) = (format!("{EXP_AVG}{p}"), format!("{EXP_AVG_SQ}{p}"));
            ensure_input(ctx.g, &ma, &d);
            ensure_input(ctx.g, &va, &d);
            // exp_avg.lerp_(grad, 1 − β₁); exp_avg_sq.mul_(β₂).addcmul_(grad, grad, value=1 − β₂)
            let diff = ctx.sub(gp, &ma);
            let step_m = ctx.mul(&diff, &one_minus_b1);
            let nm = ctx.add(&ma, &step_m);
            let vb = ctx.mul(&va, &b2);
            let g2 = ctx.mul(gp, gp);
            let g2 = ctx.mul(&g2, &one_minus_b2);
            let nv = ctx.add(&vb, &g2);
            let mut second = nv.clone();
            if self.amsgrad {
                let mx = format!("{MAX_EXP_AVG_SQ}{p}");
                ctx.g.inputs.push(value_info(&mx, dt::FLOAT, &d));
                let nmx = ctx.op("Max", &[&mx, &nv]);
                second = nmx.clone();
                let out = expose(&mut ctx, &nmx, &format!("{NEXT}{mx}"), Some(&d));
                c.opt_state_next.insert(mx, out);
            }
            // denom = (√v / √(1 − β₂ᵗ)) + eps;  θ ← θ − step_size·m/denom
            let r = ctx.sqrt(&second);
            let r = ctx.div(&r, &bc2_sqrt);
            let denom = ctx.add(&r, &eps);
            let q = ctx.div(&nm, &denom);
            let u = ctx.mul(&q, &step_size);
            let np = ctx.sub(theta, &u);
            let np = expose(&mut ctx, &np, &format!("{NEXT}{p}"), Some(&d));
            let nm = expose(&mut ctx, &nm, &format!("{NEXT}{ma}"), Some(&d));
            let nv = expose(&mut ctx, &nv, &format!("{NEXT}{va}"), Some(&d));
            c.params_next.insert(p.clone(), np);
            c.opt_state_next.insert(ma, nm);
            c.opt_state_next.insert(va, nv);
        }
        Ok(())
    }
}

/// torch.nn.utils.clip_grad_norm_ over all of `g` (L2): g·min(1, max_norm/(‖g‖ + 1e-6)).
fn clip_grad_norm(ctx: &mut Ctx, g: &[String], max_norm: &str) -> Vec<String> {
    let n2 = sum_of_squares(ctx, g);
    let n = ctx.sqrt(&n2);
    let tiny = ctx.scalar(1e-6);
    let d = ctx.add(&n, &tiny);
    let coef = ctx.div(max_norm, &d);
    let one = ctx.scalar(1.0);
    let coef = ctx.op("Min", &[&coef, &one]);
    g.iter().map(|x| ctx.mul(x, &coef)).collect()
}
