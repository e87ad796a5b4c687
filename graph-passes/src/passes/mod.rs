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

use crate::ctx::Ctx;
use crate::pass::Contract;
use crate::ir::Model;
use crate::onnx::{data_type as dt, ValueInfoProto};
use crate::{bail, Result};

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
    // no axes: over all of them, to a scalar
    sum_f64(ctx, xs.len(), |ctx, i| {
        let x64 = ctx.cast(&xs[i], dt::DOUBLE);
        ctx.g.add("ReduceSumSquare", &[&x64]).int("keepdims", 0).output()
    })
}

/// Σ over tensors of Σ x·y (float scalar), summed in float64 as [`sum_of_squares`].
pub fn dot(ctx: &mut Ctx, xs: &[String], ys: &[String]) -> String {
    sum_f64(ctx, xs.len().min(ys.len()), |ctx, i| {
        let x64 = ctx.cast(&xs[i], dt::DOUBLE);
        let y64 = ctx.cast(&ys[i], dt::DOUBLE);
        let xy = ctx.mul(&x64, &y64);
        ctx.g.add("ReduceSum", &[&xy]).int("keepdims", 0).output()
    })
}

/// Σᵢ term(i) for i < n: float64 scalar terms added in order, cast to float32 (0 for none).
fn sum_f64(ctx: &mut Ctx, n: usize, mut term: impl FnMut(&mut Ctx, usize) -> String) -> String {
    let mut acc: Option<String> = None;
    for i in 0..n {
        let s = term(ctx, i);
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
