//! fd-branch: per-sample gradient-norm scores from Q extra forward passes (METHOD.md, RW-SAM 2):
//!   d_q,i = (ℓᵢ(θ + δz_q) − ℓᵢ(θ)) / δ            (forward scheme)
//!   d_q,i = (ℓᵢ(θ + δz_q) − ℓᵢ(θ − δz_q)) / (2δ)   (central scheme)
//!   sᵢ = √((1/Q)·Σ_q d_q,i²)
//! with z_q Rademacher (one bool input per parameter tensor and q — true is +1 — fed by the
//! runtime from a counter-based RNG; δ·z is Where(z, δ, −δ), a quarter of the bytes of a float
//! input and no multiply). Also tr V ≈ mean_i sᵢ² − (1/Q)·Σ_q (mean_i d_q,i)², unbiased at Q = 1.
use std::collections::HashMap;

use super::forward::copy_forward_with;
use super::{expose, hyper, value_info};
use crate::pass::{Contract, Direction, Pass};
use crate::ctx::Ctx;
use crate::ir::Model;
use crate::onnx::data_type as dt;
use crate::shapes;
use crate::{bail, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FdScheme {
    Forward,
    Central,
}

pub struct FdBranch {
    pub q: usize,
    pub scheme: FdScheme,
    pub delta: f32,
}

pub const SCORES: &str = "scores";

impl Pass for FdBranch {
    fn name(&self) -> &'static str {
        "fd-branch"
    }

    fn run(&self, m: &mut Model, c: &mut Contract) -> Result<()> {
        if self.q == 0 {
            bail!("--fd-q must be at least 1");
        }
        let Some(lps) = c.loss_per_sample.clone() else { bail!("fd-branch needs per-sample losses") };
        let delta = hyper(m, c, "fd_delta", self.delta)?;
        let opset = m.opset();
        let neg_delta = Ctx::new(&mut m.graph, shapes::Shapes::default(), opset).neg(&delta);
        let mut diffs = Vec::new();
        for q in 0..self.q {
            let mut plus = HashMap::new();
            let mut minus = HashMap::new();
            for p in c.params.clone() {
                let dims = c.init.get(&p).map(|t| t.dims.clone()).unwrap_or_default();
                let z = format!("fd_z/{q}/{p}");
                m.graph.inputs.push(value_info(&z, dt::BOOL, &dims));
                c.directions.push(Direction { input: z.clone(), param: p.clone(), q });
                let mut ctx = Ctx::new(&mut m.graph, shapes::Shapes::default(), opset);
                let dz = ctx.where_(&z, &delta, &neg_delta);
                plus.insert(p.clone(), ctx.add(&p, &dz));
                if self.scheme == FdScheme::Central {
                    minus.insert(p.clone(), ctx.sub(&p, &dz));
                }
            }
            let up = copy_forward_with(&mut m.graph, c, &format!("fd{q}+/"), &plus, true)?.value(&lps);
            let d = match self.scheme {
                FdScheme::Forward => {
                    let mut ctx = Ctx::new(&mut m.graph, shapes::Shapes::default(), opset);
                    let t = ctx.sub(&up, &lps);
                    ctx.div(&t, &delta)
                }
                FdScheme::Central => {
                    let down = copy_forward_with(&mut m.graph, c, &format!("fd{q}-/"), &minus, true)?.value(&lps);
                    let mut ctx = Ctx::new(&mut m.graph, shapes::Shapes::default(), opset);
                    let t = ctx.sub(&up, &down);
                    let two = ctx.scalar(2.0);
                    let h = ctx.mul(&delta, &two);
                    ctx.div(&t, &h)
                }
            };
            diffs.push(d);
        }
        let mut ctx = Ctx::new(&mut m.graph, shapes::Shapes::default(), opset);
        let inv_q = ctx.scalar(1.0 / self.q as f32);
        let mut sq_sum: Option<String> = None;
        let mut mean_sq_sum: Option<String> = None;
        for d in &diffs {
            let sq = ctx.square(d);
            sq_sum = Some(match sq_sum {
                Some(a) => ctx.add(&a, &sq),
                None => sq,
            });
            let md = ctx.reduce_mean(d, &[0], false); // (L(θ+δz) − L(θ))/δ
            let md2 = ctx.square(&md);
            mean_sq_sum = Some(match mean_sq_sum {
                Some(a) => ctx.add(&a, &md2),
                None => md2,
            });
        }
        let s2 = ctx.mul(sq_sum.as_ref().expect("q ≥ 1"), &inv_q);
        let s = ctx.sqrt(&s2);
        let scores = expose(&mut ctx, &s, SCORES, Some(&[-1]));
        let ms2 = ctx.reduce_mean(&s2, &[0], false);
        let between = ctx.mul(mean_sq_sum.as_ref().expect("q ≥ 1"), &inv_q);
        let tv = ctx.sub(&ms2, &between);
        let tv = expose(&mut ctx, &tv, "trace_v", Some(&[]));
        c.diagnostics.insert("trace_v".into(), tv);
        c.scores = Some(scores);
        m.graph.topo_sort()
    }
}
