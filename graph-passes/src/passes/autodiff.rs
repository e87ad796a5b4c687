//! autodiff: the gradient of the loss (or of the weighted loss Σ wᵢ·ℓᵢ) with respect to every
//! lifted parameter, as graph outputs `grad/<parameter>`.
use super::value_info_untyped_shape;
use crate::pass::{Contract, Pass};
use crate::pass::{BatchNormRegion, CrossEntropyRegion};
use crate::autodiff::{gradients_with, Shortcut};
use crate::ir::Model;
use crate::onnx::data_type as dt;
use crate::ops::softmax_loss::one_hot;
use crate::{bail, Result};

pub struct Autodiff {
    /// Differentiate `weighted_loss` (needs per-sample-loss with `weighted`) instead of `loss`.
    pub weighted: bool,
}

pub const GRAD_PREFIX: &str = "grad/";

impl Pass for Autodiff {
    fn name(&self) -> &'static str {
        "autodiff"
    }

    fn run(&self, m: &mut Model, c: &mut Contract) -> Result<()> {
        let loss = if self.weighted {
            m.graph.outputs.iter().find(|o| o.name.starts_with("weighted_loss")).map(|o| o.name.clone())
        } else {
            c.loss.clone()
        };
        let Some(loss) = loss else { bail!("autodiff needs a loss: run per-sample-loss first") };
        let opset = m.opset();
        let shortcuts = shortcuts(c.cross_entropy.as_ref(), &c.batch_norms);
        let grads = gradients_with(&mut m.graph, opset, &loss, &c.params, &shortcuts, &[])?;
        for p in &c.params {
            let out = m.graph.add("Identity", &[&grads[p]]).named_outputs(&[&format!("{GRAD_PREFIX}{p}")]).remove(0);
            m.graph.outputs.push(value_info_untyped_shape(&out, dt::FLOAT));
            c.grads.insert(p.clone(), out);
        }
        m.graph.topo_sort()
    }
}

/// The closed-form gradient regions of a forward (cross-entropy, train-mode BatchNorms).
pub fn shortcuts(ce: Option<&CrossEntropyRegion>, bns: &[BatchNormRegion]) -> Vec<Shortcut> {
    let mut s: Vec<Shortcut> = ce.into_iter().map(cross_entropy_shortcut).collect();
    s.extend(bns.iter().map(batch_norm_shortcut));
    s
}

/// d logits = dℓ[:, None]·(softmax(logits) − (1 − ε)·onehot(labels) − ε/C)
fn cross_entropy_shortcut(r: &CrossEntropyRegion) -> Shortcut {
    let r = r.clone();
    Shortcut {
        output: r.per_sample.clone(),
        inputs: vec![r.logits.clone()],
        build: Box::new(move |c, d, _| {
            let sm = c.g.add("Softmax", &[&r.logits]).int("axis", 1).output();
            let mut target = one_hot(c, &r.labels, r.classes);
            if r.smoothing != 0.0 {
                let (a, b) = (c.scalar(1.0 - r.smoothing), c.scalar(r.smoothing / r.classes as f32));
                let t = c.mul(&target, &a);
                target = c.add(&t, &b);
            }
            let diff = c.sub(&sm, &target);
            let dc = c.unsqueeze(d, &[1]);
            Ok(vec![Some(c.mul(&diff, &dc))])
        }),
    }
}

/// Train-mode BatchNorm y = (x − μ)·k + β, k = γ/s, s = √(σ² + ε), batch μ and σ² over `axes`
/// (n elements per channel):
///   dβ = Σ dy,  dγ = Σ dy·(x − μ) / s,
///   dx = k·(dy − Σdy/n − (x − μ)·Σ(dy·(x − μ))/(n·s²))
fn batch_norm_shortcut(r: &BatchNormRegion) -> Shortcut {
    let r = r.clone();
    Shortcut {
        output: r.y.clone(),
        inputs: vec![r.x.clone(), r.scale.clone(), r.bias.clone()],
        build: Box::new(move |c, dy, need| {
            let flat = c.const_i64(&[-1]);
            let p = c.mul(dy, &r.centered);
            let s2 = c.reduce_sum(&p, &r.axes, true); // Σ dy·(x − μ)  [1, C, 1, 1]
            let s1 = c.reduce_sum(dy, &r.axes, true); // Σ dy
            let dgamma = need[1].then(|| {
                let t = c.div(&s2, &r.std);
                c.reshape(&t, &flat)
            });
            let dbeta = need[2].then(|| c.reshape(&s1, &flat));
            let dx = need[0].then(|| {
                let m1 = c.div(&s1, &r.count);
                let var = c.mul(&r.std, &r.std);
                let nv = c.mul(&var, &r.count);
                let m2 = c.div(&s2, &nv);
                let t = c.mul(&r.centered, &m2);
                let u = c.sub(dy, &m1);
                let u = c.sub(&u, &t);
                c.mul(&u, &r.factor)
            });
            Ok(vec![dx, dgamma, dbeta])
        }),
    }
}
