//! Composes passes into the graphs onnxsam runs: the gradient graph (forward + loss + gradients).
use crate::ir::Model;
use crate::passes::lift_params::LiftParams;
use crate::passes::per_sample_loss::{Loss, PerSampleLoss};
use crate::passes::train_mode::{EvalMode, TrainMode};
use crate::passes::{autodiff::Autodiff, run_all, Contract, Pass};
use crate::Result;

#[derive(Clone, Debug)]
pub struct GradSpec {
    pub loss: Loss,
    pub train_mode: bool,
    pub freeze: Vec<String>,
    pub untie_shared: bool,
    /// Differentiate Σ wᵢ·ℓᵢ with a `sample_weights` input instead of the mean loss.
    pub weighted: bool,
}

impl Default for GradSpec {
    fn default() -> Self {
        GradSpec {
            loss: Loss::CrossEntropy { label_smoothing: 0.0 },
            train_mode: true,
            freeze: vec![],
            untie_shared: false,
            weighted: false,
        }
    }
}

/// Ops between the parameters and the outputs that have no gradient rule: found before any pass
/// runs, so the error names the op and its node rather than a consequence.
pub fn check_differentiable(model: &Model) -> Result<()> {
    use crate::autodiff::rules::{is_non_differentiable, rule_for};
    use crate::ir::NodeExt;
    let g = &model.graph;
    let mut reached: std::collections::HashSet<&str> =
        g.initializers.iter().map(|t| t.name.as_str()).filter(|n| !n.starts_with("onnx::")).collect();
    for &i in &g.topo_order()? {
        let n = &g.nodes[i];
        if is_non_differentiable(&n.op_type) || !n.input.iter().any(|v| reached.contains(v.as_str())) {
            continue;
        }
        if rule_for(&n.op_type).is_none() {
            crate::bail!("{} has no gradient rule yet", n.describe());
        }
        reached.extend(n.output.iter().map(|s| s.as_str()));
    }
    Ok(())
}

/// forward + per-sample loss + gradients of every trainable parameter.
pub fn grad_graph(model: &Model, spec: &GradSpec) -> Result<(Model, Contract)> {
    check_differentiable(model)?;
    let mut m = model.clone();
    let mut c = Contract::default();
    let lift = LiftParams { freeze: spec.freeze.clone(), untie_shared: spec.untie_shared };
    let loss = PerSampleLoss { loss: spec.loss, weighted: spec.weighted };
    let ad = Autodiff { weighted: spec.weighted };
    let mut passes: Vec<&dyn Pass> = vec![&lift];
    passes.push(if spec.train_mode { &TrainMode } else { &EvalMode });
    passes.push(&loss);
    passes.push(&ad);
    run_all(&mut m, &mut c, &passes)?;
    m.graph.value_info.clear();
    m.graph.remove_identities();
    m.graph.eliminate_common_subexpressions();
    m.graph.remove_dead();
    Ok((m, c))
}

/// forward + per-sample loss only (no gradients): what gradcheck evaluates.
pub fn loss_graph(model: &Model, spec: &GradSpec) -> Result<(Model, Contract)> {
    let mut m = model.clone();
    let mut c = Contract::default();
    let lift = LiftParams { freeze: spec.freeze.clone(), untie_shared: spec.untie_shared };
    let loss = PerSampleLoss { loss: spec.loss, weighted: spec.weighted };
    let mut passes: Vec<&dyn Pass> = vec![&lift];
    passes.push(if spec.train_mode { &TrainMode } else { &EvalMode });
    passes.push(&loss);
    run_all(&mut m, &mut c, &passes)?;
    m.graph.value_info.clear();
    Ok((m, c))
}
