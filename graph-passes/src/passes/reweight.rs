//! reweight: Gibbs weights over the batch from per-sample scores (METHOD.md, RW-SAM 3–4):
//!   pᵢ = softmax(λ·sᵢ/c),  c = mean_j s_j (score-norm mean, scale-free λ) or 1 (none)
//! treated as constants for the gradient, and the ascent loss Σ pᵢ·ℓᵢ. With λ = 0, pᵢ = 1/b and
//! the ascent gradient is SAM's. Diagnostics: entropy H(p), effective sample size 1/Σpᵢ², max pᵢ.
//!
//! Adaptive λ (`target_ess` F, docs/optimizers.md): each step λ ≥ 0 is chosen so that the
//! effective sample size ESS(λ) = (Σ e^{λaᵢ})² / Σ e^{2λaᵢ} (aᵢ = sᵢ/c) is F·b. ESS falls
//! monotonically from b (λ = 0) as λ grows (d log Σp²/dλ = 2(E_{2λ}[a] − E_λ[a]) ≥ 0), so the
//! root is unique. With uᵢ = (aᵢ − max a)/(max a − min a) ∈ [−1, 0] and κ = λ·(max a − min a),
//! ESS is evaluated for all κ of a log grid at once (one [K, b] tensor, no loop), the bracketing
//! cell is searched again on a finer grid, and ln κ is interpolated linearly between its two
//! ends. F ≥ 1, or scores all equal, give λ = 0: SAM.
use super::{expose, hyper, value_info};
use crate::pass::{Contract, Pass};
use crate::ctx::Ctx;
use crate::ir::Model;
use crate::onnx::data_type as dt;
use crate::shapes;
use crate::{bail, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScoreNorm {
    Mean,
    None,
}

pub struct Reweight {
    pub lambda: f32,
    pub norm: ScoreNorm,
    /// Adaptive λ: the target ESS as a fraction of the batch (the `target_ess` input's default).
    pub target_ess: Option<f32>,
}

pub const WEIGHTS: &str = "sample_weights";
/// The adaptive λ's grid: κ = λ·(max a − min a) from e^{AUTO_LN_LO} to e^{AUTO_LN_HI}, searched
/// on AUTO_COARSE points, then on AUTO_FINE points inside the bracketing cell.
pub const AUTO_LN_LO: f64 = -6.907755278982137; // ln 1e-3
pub const AUTO_LN_HI: f64 = 9.210340371976184; // ln 1e4
pub const AUTO_COARSE: usize = 64;
pub const AUTO_FINE: usize = 32;

/// The ESS of softmax(κ·u) (the host twin of the graph's `ess_grid`).
fn ess_of(u: &[f64], kappa: f64) -> f64 {
    let (mut s1, mut s2) = (0.0, 0.0);
    for x in u {
        let w = (kappa * x).exp();
        s1 += w;
        s2 += w * w;
    }
    s1 * s1 / s2
}

/// Where F·b falls along a grid of ESS values that fall from one point to the next: the index
/// of the last point above it plus the fraction of the next cell, Σⱼ clip((Eⱼ − T)/(Eⱼ − Eⱼ₊₁), 0, 1)
/// (cells wholly above count 1, the bracketing cell its linear fraction, cells below 0).
fn crossing(e: &[f64], target: f64) -> f64 {
    e.windows(2).map(|w| ((w[0] - target) / (w[0] - w[1]).max(1e-30)).clamp(0.0, 1.0)).sum()
}

/// The adaptive λ of `a` (scores over c) for the target ESS fraction `f`, as the graph computes
/// it (in float64 here): for --accumulate and data-parallel steps, whose weights the runtime forms.
pub fn auto_lambda(a: &[f64], f: f64) -> f64 {
    let mx = a.iter().cloned().fold(f64::MIN, f64::max);
    let mn = a.iter().cloned().fold(f64::MAX, f64::min);
    let r = mx - mn;
    if a.is_empty() || f >= 1.0 || !(r > 0.0) {
        return 0.0;
    }
    let target = f * a.len() as f64;
    let u: Vec<f64> = a.iter().map(|x| (x - mx) / r).collect();
    let h1 = (AUTO_LN_HI - AUTO_LN_LO) / (AUTO_COARSE - 1) as f64;
    let n1 = (0..AUTO_COARSE).filter(|&j| ess_of(&u, (AUTO_LN_LO + j as f64 * h1).exp()) > target).count();
    let lo = AUTO_LN_LO + (n1 as f64 - 1.0) * h1;
    let h2 = h1 / (AUTO_FINE - 1) as f64;
    let e: Vec<f64> = (0..AUTO_FINE).map(|j| ess_of(&u, (lo + j as f64 * h2).exp())).collect();
    (lo + h2 * crossing(&e, target)).exp() / r
}

impl Pass for Reweight {
    fn name(&self) -> &'static str {
        "reweight"
    }

    fn run(&self, m: &mut Model, c: &mut Contract) -> Result<()> {
        let Some(lps) = c.loss_per_sample.clone() else { bail!("reweight needs per-sample losses") };
        // (StepSpec::check keeps F in (0, 1])
        let lambda = match self.target_ess {
            None => Some(hyper(m, c, "lambda", self.lambda)?),
            Some(_) => None,
        };
        let target = match self.target_ess {
            Some(f) => Some(hyper(m, c, "target_ess", f)?),
            None => None,
        };
        let scores = match &c.scores {
            Some(s) => s.clone(),
            None => {
                // --score exact: the runtime feeds exact per-sample gradient norms
                m.graph.inputs.push(value_info(super::fd_branch::SCORES, dt::FLOAT, &[-1]));
                c.scores_fed = true;
                c.scores = Some(super::fd_branch::SCORES.to_string());
                super::fd_branch::SCORES.to_string()
            }
        };
        let opset = m.opset();
        let mut ctx = Ctx::new(&mut m.graph, shapes::Shapes::default(), opset);
        let normalized = match self.norm {
            ScoreNorm::Mean => {
                let mean = ctx.reduce_mean(&scores, &[0], false);
                let tiny = ctx.scalar(1e-12);
                let cn = ctx.add(&mean, &tiny);
                ctx.div(&scores, &cn)
            }
            ScoreNorm::None => scores.clone(),
        };
        let lambda = match (lambda, target) {
            (Some(l), _) => l,
            (None, Some(f)) => {
                let l = auto_lambda_graph(&mut ctx, &normalized, &f);
                let out = expose(&mut ctx, &l, "lambda", Some(&[]));
                c.diagnostics.insert("lambda".into(), out);
                l
            }
            (None, None) => unreachable!("λ is fixed or adaptive"),
        };
        let a = ctx.mul(&normalized, &lambda);
        let p = ctx.g.add("Softmax", &[&a]).int("axis", 0).output();
        let p = expose(&mut ctx, &p, WEIGHTS, Some(&[-1]));
        // H(p) = −Σ pᵢ·log pᵢ, with log p from LogSoftmax (finite where p underflows to 0)
        let logp = ctx.g.add("LogSoftmax", &[&a]).int("axis", 0).output();
        let plogp = ctx.mul(&p, &logp);
        let s = ctx.reduce_sum(&plogp, &[0], false);
        let h = ctx.neg(&s);
        let p2 = ctx.square(&p);
        let sp2 = ctx.reduce_sum(&p2, &[0], false);
        let one = ctx.scalar(1.0);
        let ess = ctx.div(&one, &sp2);
        let maxw = ctx.g.add("ReduceMax", &[&p]).int("keepdims", 0).output();
        for (name, v) in [("weight_entropy", h), ("ess", ess), ("max_weight", maxw)] {
            let out = expose(&mut ctx, &v, name, Some(&[]));
            c.diagnostics.insert(name.into(), out);
        }
        let wl = ctx.mul(&lps, &p);
        let wl = ctx.reduce_sum(&wl, &[0], false);
        c.stop_gradient.push(p.clone());
        c.weights = Some(p);
        c.ascent_loss = Some(wl);
        m.graph.topo_sort()
    }
}

/// For each κ of `kappa` ([K, 1]): the ESS of softmax(κ·u), u ([b]) → [K].
fn ess_grid(ctx: &mut Ctx, u_row: &str, kappa: &str) -> String {
    let x = ctx.mul(kappa, u_row);
    let w = ctx.exp(&x);
    let s1 = ctx.reduce_sum(&w, &[1], false);
    let s2 = ctx.reduce("ReduceSumSquare", &w, &[1], false);
    let s1s = ctx.square(&s1);
    ctx.div(&s1s, &s2)
}

/// The graph of [`auto_lambda`]: λ (a float scalar) from the normalized scores `a` ([b]) and the
/// target fraction `f` (a float scalar input). About 45 nodes on [64, b] and [32, b] tensors.
fn auto_lambda_graph(ctx: &mut Ctx, a: &str, f: &str) -> String {
    use crate::onnx::data_type as dt;
    let mx = ctx.g.add("ReduceMax", &[a]).int("keepdims", 0).output();
    let mn = ctx.g.add("ReduceMin", &[a]).int("keepdims", 0).output();
    let r = ctx.sub(&mx, &mn);
    let tiny = ctx.scalar(1e-30);
    let r_safe = ctx.op("Max", &[&r, &tiny]);
    let shifted = ctx.sub(a, &mx);
    // [b]: broadcast against the [K, 1] grids to [K, b]
    let u_row = ctx.div(&shifted, &r_safe);
    // the target F·b
    let b = ctx.op("Size", &[a]);
    let b = ctx.cast(&b, dt::FLOAT);
    let target = ctx.mul(f, &b);
    // coarse grid: how many of its points keep an ESS above the target
    let h1 = (AUTO_LN_HI - AUTO_LN_LO) / (AUTO_COARSE - 1) as f64;
    let k1: Vec<f32> = (0..AUTO_COARSE).map(|j| (AUTO_LN_LO + j as f64 * h1).exp() as f32).collect();
    let k1 = ctx.const_f32(&[AUTO_COARSE as i64, 1], &k1);
    let e1 = ess_grid(ctx, &u_row, &k1);
    let above = ctx.op("Greater", &[&e1, &target]);
    let above = ctx.mask(&above);
    let n1 = ctx.reduce_sum(&above, &[0], false);
    // the fine grid across the bracketing cell [lo, lo + h1], lo = ln κ_min + (n1 − 1)·h1
    let h1c = ctx.scalar(h1 as f32);
    let off = ctx.mul(&n1, &h1c);
    let lo0 = ctx.scalar((AUTO_LN_LO - h1) as f32);
    let lo = ctx.add(&lo0, &off);
    let h2 = h1 / (AUTO_FINE - 1) as f64;
    let steps: Vec<f32> = (0..AUTO_FINE).map(|j| (j as f64 * h2) as f32).collect();
    let steps = ctx.const_f32(&[AUTO_FINE as i64, 1], &steps);
    let g2 = ctx.add(&lo, &steps);
    let k2 = ctx.exp(&g2);
    let e2 = ess_grid(ctx, &u_row, &k2);
    // ln κ = lo + h2·crossing(e2)
    let first = slice(ctx, &e2, 0, AUTO_FINE as i64 - 1);
    let next = slice(ctx, &e2, 1, AUTO_FINE as i64);
    let drop = ctx.sub(&first, &next);
    let drop = ctx.op("Max", &[&drop, &tiny]);
    let over = ctx.sub(&first, &target);
    let frac = ctx.div(&over, &drop);
    let zero = ctx.scalar(0.0);
    let one = ctx.scalar(1.0);
    let frac = ctx.op("Clip", &[&frac, &zero, &one]);
    let cells = ctx.reduce_sum(&frac, &[0], false);
    let h2c = ctx.scalar(h2 as f32);
    let d = ctx.mul(&cells, &h2c);
    let ln_k = ctx.add(&lo, &d);
    let kappa = ctx.exp(&ln_k);
    let lambda = ctx.div(&kappa, &r_safe);
    // λ = 0 where F ≥ 1 or the scores are all equal
    let below = ctx.op("Less", &[f, &one]);
    let spread = ctx.op("Greater", &[&r, &zero]);
    let ok = ctx.op("And", &[&below, &spread]);
    ctx.where_(&ok, &lambda, &zero)
}

/// x[start..end] along axis 0.
fn slice(ctx: &mut Ctx, x: &str, start: i64, end: i64) -> String {
    let s = ctx.const_i64(&[start]);
    let e = ctx.const_i64(&[end]);
    let ax = ctx.const_i64(&[0]);
    ctx.op("Slice", &[x, &s, &e, &ax])
}
