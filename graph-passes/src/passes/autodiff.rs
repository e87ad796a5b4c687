//! autodiff: the gradient of the loss (or of the weighted loss Σ wᵢ·ℓᵢ) with respect to every
//! lifted parameter, as graph outputs `grad/<parameter>`.
use super::{value_info_untyped_shape, Contract, Pass};
use crate::autodiff::gradients;
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
        let grads = gradients(&mut m.graph, opset, &loss, &c.params)?;
        for p in &c.params {
            let out = m.graph.add("Identity", &[&grads[p]]).named_outputs(&[&format!("{GRAD_PREFIX}{p}")]).remove(0);
            m.graph.outputs.push(value_info_untyped_shape(&out, dt::FLOAT));
            c.grads.insert(p.clone(), out);
        }
        m.graph.topo_sort()
    }
}
