//! Graph passes, each a type with a name and a `run`, composed in one place (`step.rs`). Every
//! node a pass inserts carries `onnxsam.pass = <name>`.
pub mod autodiff;
pub mod cleanup;
pub mod eval_graph;
pub mod fd_branch;
pub mod forward;
pub mod lift_params;
pub mod per_sample_loss;
pub mod reweight;
pub mod sam_update;
pub mod train_mode;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::ctx::Ctx;
use crate::ir::Model;
use crate::onnx::{data_type as dt, NodeProto, TensorProto, ValueInfoProto};
use crate::{bail, Result};

/// What the rewritten graph expects and returns; filled in by the passes as they run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Contract {
    /// The model's own inputs (data).
    pub data: Vec<String>,
    /// Labels (cross-entropy) or targets (mse).
    pub labels: Option<String>,
    /// The task metric per sample [batch] and its name: `correct` (the fraction of a sample's
    /// positions classified right) or `abs_error` (regression: mean |y − t|).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<(String, String)>,
    /// Cross-entropy's ignore_index: labels of this value are padding, not classes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignore_index: Option<i64>,
    /// Cross-entropy's class axis in the logits: 1, or the last axis (classes last: language
    /// models).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class_axis: Option<i64>,
    /// Per-position labels with ignore_index under the default reduction: each graph run's loss
    /// is the mean over the kept positions of its batch, so batches (micro-batches, ranks,
    /// evaluation batches) combine in proportion to their kept positions, not their rows.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub position_mean: bool,
    /// How the loss reads per-position logits, for the log: the class axis and why, the reduction.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_note: Option<String>,
    /// Trainable parameters, as graph inputs, in order.
    pub params: Vec<String>,
    /// What the import pass found: PyTorch parameters and buffers, merges undone, layouts.
    pub import: crate::import::ImportReport,
    /// State fed back each step (BatchNorm running statistics) → the output with its next value.
    pub state_next: BTreeMap<String, String>,
    /// State read but not updated (running statistics of an evaluation graph).
    pub state: Vec<String>,
    /// Inputs the runtime fills with uniform [0, 1) noise (dropout masks) → their shape
    /// (−1 stands for the batch size, or for a size `random_shapes` spells out).
    pub random_uniform: BTreeMap<String, Vec<i64>>,
    /// The shapes of noise inputs with sizes known only at run time beyond the batch: each size a
    /// number or a product of data-input sizes (`2·seq`), the symbols as `symbols` defines them.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub random_shapes: BTreeMap<String, Vec<String>>,
    /// A size symbol of the data inputs → (input, axis) that carries it at run time.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub symbols: BTreeMap<String, (String, usize)>,
    pub loss: Option<String>,
    pub loss_per_sample: Option<String>,
    pub logits: Option<String>,
    /// Optional per-sample weight input of a weighted loss.
    pub sample_weights: Option<String>,
    /// parameter → its gradient output
    pub grads: BTreeMap<String, String>,
    /// The softmax cross-entropy whose gradient autodiff writes in closed form.
    #[serde(skip)]
    pub cross_entropy: Option<CrossEntropyRegion>,
    /// Train-mode BatchNorms whose gradient autodiff writes in closed form.
    #[serde(skip)]
    pub batch_norms: Vec<BatchNormRegion>,
    /// A train-mode BatchNorm that normalizes over the batch axis alone (BatchNorm1d, or 1×1
    /// maps): a batch of one sample gives it one value per channel (PyTorch refuses that).
    #[serde(skip)]
    pub batch_norm_over_batch_only: Option<String>,
    /// Initial values of parameters and state, by name.
    #[serde(skip)]
    pub init: BTreeMap<String, TensorProto>,

    // --- training-step graphs (fd-branch, reweight, sam-update) ---
    /// The training-form forward (lift-params, train-mode, per-sample-loss), in topological
    /// order: what fd-branch and sam-update clone at perturbed parameters.
    #[serde(skip)]
    pub forward: Vec<NodeProto>,
    /// Hyperparameter inputs (scalars fed each step) → default value.
    pub hyper: BTreeMap<String, f32>,
    /// Rademacher direction inputs of the finite-difference branch.
    pub directions: Vec<Direction>,
    /// Per-sample scores sᵢ (fd-branch output, or the `scores` input with --score exact).
    pub scores: Option<String>,
    /// True when `scores` is an input the runtime fills with exact per-sample gradient norms.
    pub scores_fed: bool,
    /// Gibbs weights pᵢ (reweight).
    pub weights: Option<String>,
    /// The loss the ascent gradient differentiates (Σ pᵢ·ℓᵢ with reweight, else `loss`).
    #[serde(skip)]
    pub ascent_loss: Option<String>,
    /// Values autodiff treats as constants (the Gibbs weights).
    #[serde(skip)]
    pub stop_gradient: Vec<String>,
    /// Optimizer state inputs (momentum buffers, m-SAM gradient accumulators) → output with their next value.
    pub opt_state_next: BTreeMap<String, String>,
    /// Parameter → output with its next value.
    pub params_next: BTreeMap<String, String>,
    /// Diagnostic name → output (METHOD.md: loss, correct, grad_norm, sharpness, …).
    pub diagnostics: BTreeMap<String, String>,
}

/// A random-direction input z_q for one parameter tensor (fd-branch).
#[derive(Clone, Debug, Serialize)]
pub struct Direction {
    pub input: String,
    pub param: String,
    pub q: usize,
}

/// ℓ = per_sample, computed from logits [N, C] and labels by softmax cross-entropy with label
/// smoothing: d logits = dℓ·(softmax(logits) − (1 − ε)·onehot(labels) − ε/C).
#[derive(Clone, Debug)]
pub struct CrossEntropyRegion {
    pub per_sample: String,
    pub logits: String,
    pub labels: String,
    pub smoothing: f32,
    pub classes: i64,
}

/// The values of a decomposed train-mode BatchNormalization (see train_mode.rs).
#[derive(Clone, Debug)]
pub struct BatchNormRegion {
    pub x: String,
    pub scale: String,
    pub bias: String,
    pub y: String,
    /// x − μ
    pub centered: String,
    /// √(σ² + ε), [1, C, 1, …]
    pub std: String,
    /// γ/√(σ² + ε), [1, C, 1, …]
    pub factor: String,
    /// elements per channel (float scalar)
    pub count: String,
    pub axes: Vec<i64>,
    pub rank: i64,
}

pub trait Pass {
    fn name(&self) -> &'static str;
    fn run(&self, m: &mut Model, c: &mut Contract) -> Result<()>;
}

/// Runs passes in order, tagging each one's nodes with its name.
pub fn run_all(m: &mut Model, c: &mut Contract, passes: &[&dyn Pass]) -> Result<()> {
    for p in passes {
        m.graph.pass = Some(p.name().to_string());
        let r = p.run(m, c);
        m.graph.pass = None;
        r?;
    }
    Ok(())
}

/// A tensor-typed ValueInfo with the given dims (negative dims become the symbol "N").
pub fn value_info(name: &str, elem_type: i32, dims: &[i64]) -> ValueInfoProto {
    use crate::onnx::{
        tensor_shape_proto::dimension::Value as D, tensor_shape_proto::Dimension, type_proto, TensorShapeProto,
        TypeProto,
    };
    let dim = dims
        .iter()
        .map(|&d| Dimension {
            value: Some(if d < 0 { D::DimParam("N".into()) } else { D::DimValue(d) }),
            denotation: String::new(),
        })
        .collect();
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type,
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: String::new(),
        }),
        ..Default::default()
    }
}

/// A ValueInfo with symbolic sizes where `dims` has them (Dim::Sym → dim_param).
pub fn value_info_dims(name: &str, elem_type: i32, dims: &[crate::shapes::Dim]) -> ValueInfoProto {
    use crate::onnx::{tensor_shape_proto::dimension::Value as D, type_proto};
    let mut v = value_info(name, elem_type, &vec![1; dims.len()]);
    if let Some(type_proto::Value::TensorType(t)) = v.r#type.as_mut().and_then(|t| t.value.as_mut()) {
        if let Some(shape) = t.shape.as_mut() {
            for (slot, d) in shape.dim.iter_mut().zip(dims) {
                slot.value = Some(match d {
                    crate::shapes::Dim::Known(k) => D::DimValue(*k),
                    crate::shapes::Dim::Sym(s) => D::DimParam(s.clone()),
                });
            }
        }
    }
    v
}

/// A ValueInfo with dtype only (shape left to the runtime).
pub fn value_info_untyped_shape(name: &str, elem_type: i32) -> ValueInfoProto {
    use crate::onnx::{type_proto, TypeProto};
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor { elem_type, shape: None })),
            denotation: String::new(),
        }),
        ..Default::default()
    }
}

/// A scalar float hyperparameter input `name` (added once) with its default.
pub fn hyper(m: &mut Model, c: &mut Contract, name: &str, default: f32) -> Result<String> {
    if c.hyper.contains_key(name) {
        return Ok(name.to_string());
    }
    let g = &m.graph;
    if g.inputs.iter().any(|v| v.name == name)
        || g.initializers.iter().any(|t| t.name == name)
        || g.nodes.iter().any(|n| n.output.iter().any(|o| o == name))
    {
        bail!("the model already has a value named '{name}', the name of a step-graph hyperparameter; rename it");
    }
    m.graph.inputs.push(value_info(name, dt::FLOAT, &[]));
    c.hyper.insert(name.to_string(), default);
    Ok(name.to_string())
}

/// Adds a graph output `name` = `value` (through an Identity so the name is exactly `name`).
pub fn expose(ctx: &mut Ctx, value: &str, name: &str, dims: Option<&[i64]>) -> String {
    let out = ctx.g.add("Identity", &[value]).named_outputs(&[name]).remove(0);
    ctx.g.outputs.push(match dims {
        Some(d) => value_info(&out, dt::FLOAT, d),
        None => value_info_untyped_shape(&out, dt::FLOAT),
    });
    out
}

/// Number of samples whose argmax logit is the label (float scalar).
/// Exposes the batch sum of the task metric (Contract::metric) as the diagnostic of its name.
pub fn expose_metric(ctx: &mut Ctx, c: &mut Contract) {
    if let Some((name, per_sample)) = c.metric.clone() {
        let sum = ctx.reduce_sum(&per_sample, &[0], false);
        let out = expose(ctx, &sum, &name, Some(&[]));
        c.diagnostics.insert(name, out);
    }
}

/// Σ over tensors of Σ x² (float scalar), summed in float64: a float32 sum over ~10⁵ squares is
/// off by ~1e-4 relative, by an amount that depends on each engine's summation order, and SAM's
/// ε = ρ·g/‖g‖ carried that difference into every step (ONNX Runtime and tract runs of one seed
/// parted after two SAM steps). The casts cost one pass over the gradients.
pub fn sum_of_squares(ctx: &mut Ctx, xs: &[String]) -> String {
    let mut acc: Option<String> = None;
    for x in xs {
        let x64 = ctx.cast(x, dt::DOUBLE);
        // no axes: over all of them, to a scalar
        let s = ctx.g.add("ReduceSumSquare", &[&x64]).int("keepdims", 0).output();
        acc = Some(match acc {
            Some(a) => ctx.add(&a, &s),
            None => s,
        });
    }
    match acc {
        Some(a) => ctx.cast(&a, dt::FLOAT),
        None => ctx.scalar(0.0),
    }
}
