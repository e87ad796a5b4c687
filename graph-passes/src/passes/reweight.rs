//! reweight: Gibbs weights over the batch from per-sample scores (METHOD.md, RW-SAM 3–4):
//!   pᵢ = softmax(λ·sᵢ/c),  c = mean_j s_j (score-norm mean, scale-free λ) or 1 (none)
//! treated as constants for the gradient, and the ascent loss Σ pᵢ·ℓᵢ. With λ = 0, pᵢ = 1/b and
//! the ascent gradient is SAM's. Diagnostics: entropy H(p), effective sample size 1/Σpᵢ², max pᵢ.
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
}

pub const WEIGHTS: &str = "sample_weights";

impl Pass for Reweight {
    fn name(&self) -> &'static str {
        "reweight"
    }

    fn run(&self, m: &mut Model, c: &mut Contract) -> Result<()> {
        let Some(lps) = c.loss_per_sample.clone() else { bail!("reweight needs per-sample losses") };
        let lambda = hyper(m, c, "lambda", self.lambda)?;
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
        let scaled = ctx.mul(&scores, &lambda);
        let a = match self.norm {
            ScoreNorm::Mean => {
                let mean = ctx.reduce_mean(&scores, &[0], false);
                let tiny = ctx.scalar(1e-12);
                let cn = ctx.add(&mean, &tiny);
                ctx.div(&scaled, &cn)
            }
            ScoreNorm::None => scaled,
        };
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
