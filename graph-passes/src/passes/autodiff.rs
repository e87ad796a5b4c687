//! autodiff: the gradient of the loss (or of the weighted loss Σ wᵢ·ℓᵢ) with respect to every
//! lifted parameter, as graph outputs `grad/<parameter>`.
use super::CrossEntropyRegion;
use super::{value_info_untyped_shape, Contract, Pass};
use crate::autodiff::{gradients_with, rules::softmax_loss::one_hot, Shortcut};
use crate::ir::Model;
use crate::onnx::data_type as dt;
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
        let shortcuts: Vec<Shortcut> = c.cross_entropy.iter().map(cross_entropy_shortcut).collect();
        let grads = gradients_with(&mut m.graph, opset, &loss, &c.params, &shortcuts)?;
        for p in &c.params {
            let out = m.graph.add("Identity", &[&grads[p]]).named_outputs(&[&format!("{GRAD_PREFIX}{p}")]).remove(0);
            m.graph.outputs.push(value_info_untyped_shape(&out, dt::FLOAT));
            c.grads.insert(p.clone(), out);
        }
        m.graph.topo_sort()
    }
}

/// d logits = dℓ[:, None]·(softmax(logits) − (1 − ε)·onehot(labels) − ε/C)
fn cross_entropy_shortcut(r: &CrossEntropyRegion) -> Shortcut {
    let r = r.clone();
    Shortcut {
        output: r.per_sample.clone(),
        input: r.logits.clone(),
        build: Box::new(move |c, d| {
            let sm = c.g.add("Softmax", &[&r.logits]).int("axis", 1).output();
            let mut target = one_hot(c, &r.labels, r.classes);
            if r.smoothing != 0.0 {
                let (a, b) = (c.scalar(1.0 - r.smoothing), c.scalar(r.smoothing / r.classes as f32));
                let t = c.mul(&target, &a);
                target = c.add(&t, &b);
            }
            let diff = c.sub(&sm, &target);
            let dc = c.unsqueeze(d, &[1]);
            Ok(c.mul(&diff, &dc))
        }),
    }
}
