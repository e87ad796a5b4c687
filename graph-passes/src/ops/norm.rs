//! Normalizations: BatchNormalization (inference form; the train-mode pass writes the training
//! form out in elementary ops), LayerNormalization, and those written out in elementary ops
//! before autodiff (InstanceNormalization, GroupNormalization, LpNormalization,
//! MeanVarianceNormalization).
use super::{dy, op, Family, Gradient as G, OpDef};
use crate::ctx::{Ctx, Grads};
use crate::ir::{node_error, Graph, NodeExt};
use crate::onnx::{data_type as dt, NodeProto};
use crate::shapes::{input_type, same_as_input, set, Dim, Shape, Shapes};
use crate::Result;

pub const FAMILY: Family = Family { name: "norm", ops };

fn ops() -> Vec<OpDef> {
    vec![
        op("BatchNormalization", "15+", batch_norm_shape, G::Rule(batch_norm)).notes(
            "training: batch statistics, running statistics updated as PyTorch (unbiased variance) by the train-mode pass; statistics computed in the graph (track_running_stats=False) differentiated through",
        ),
        op("LayerNormalization", "17+", layer_norm_shape, G::Rule(layer_norm)),
        op("InstanceNormalization", "6+", same_as_input, G::Lowered(instance_norm_lower))
            .notes("written out: mean and biased variance over the spatial axes, ·scale[C] + B[C]"),
        op("GroupNormalization", "18+", same_as_input, G::Lowered(group_norm_lower)).notes(
            "written out; opset 18-20: scale and bias per group ([num_groups]), opset 21+: per channel ([C], as torch.nn.GroupNorm)",
        ),
        op("LpNormalization", "1+", same_as_input, G::Lowered(lp_norm_lower))
            .notes("written out as x / ‖x‖ₚ (p = 1, 2) along the axis; a zero vector stays 0"),
        op("MeanVarianceNormalization", "13+", same_as_input, G::Lowered(mvn_lower))
            .notes("written out as the ONNX function: (x − E x)/(√Var x + 1e-9) over axes (default 0, 2, 3)"),
        op("RMSNormalization", "23+", same_as_input, G::Lowered(rms_norm_lower))
            .notes("written out: x / √(mean(x²) + ε)·scale over the axes from `axis` on, so both engines run it"),
    ]
}

fn batch_norm_shape(_: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let out0 = n.output.first().cloned().unwrap_or_default();
    let x = input_type(s, n, 0)?;
    let c = x.shape.as_ref().map(|xs| vec![xs[1].clone()]);
    for o in n.output.iter().skip(1) {
        set(s, o, x.dtype, c.clone());
    }
    set(s, &out0, x.dtype, x.shape);
    Ok(())
}

fn layer_norm_shape(_: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let out0 = n.output.first().cloned().unwrap_or_default();
    let x = input_type(s, n, 0)?;
    if let Some(xs) = &x.shape {
        let axis = crate::shapes::axis_in(n, n.attr_i("axis", -1), xs.len())?;
        let red: Shape = xs.iter().enumerate().map(|(i, d)| if i < axis { d.clone() } else { Dim::Known(1) }).collect();
        for o in n.output.iter().skip(1) {
            set(s, o, dt::FLOAT, Some(red.clone()));
        }
    }
    set(s, &out0, x.dtype, x.shape);
    Ok(())
}

/// y = (x − μ)·γ/√(σ² + ε) + β with running μ, σ² (constants):
///   dx = dy·γ/√(σ² + ε),  dγ = Σ dy·(x − μ)/√(σ² + ε),  dβ = Σ dy   (sums over all axes but C)
fn batch_norm(n: &NodeProto, dys: &[Option<String>], need: &[bool], c: &mut Ctx) -> Result<Grads> {
    if n.attr_i("training_mode", 0) != 0 {
        return Err(node_error(n, "training_mode=1: run the train-mode pass first (it decomposes batch statistics)"));
    }
    if need.get(3).copied().unwrap_or(false) || need.get(4).copied().unwrap_or(false) {
        return Err(node_error(n, "running statistics cannot be trained"));
    }
    let d = dy(n, dys)?;
    let (x, scale, mean, var) = (&n.input[0], &n.input[1], &n.input[3], &n.input[4]);
    let r = c.rank(x)?;
    let spatial: Vec<i64> = (1..r as i64 - 1).collect();
    let reduce_axes: Vec<i64> = std::iter::once(0).chain(2..r as i64).collect();
    let eps = c.scalar(n.attr_f("epsilon", 1e-5));
    let ve = c.add(var, &eps);
    let sd = c.sqrt(&ve);
    let one_ = c.scalar(1.0);
    let inv = c.div(&one_, &sd);
    let inv_r = c.unsqueeze(&inv, &spatial);
    let mut out = vec![None; n.input.len()];
    if need[0] {
        let k = c.mul(scale, &inv);
        let kr = c.unsqueeze(&k, &spatial);
        out[0] = Some(c.mul(&d, &kr));
    }
    if need[1] {
        let mr = c.unsqueeze(mean, &spatial);
        let xc = c.sub(x, &mr);
        let xh = c.mul(&xc, &inv_r);
        let t = c.mul(&d, &xh);
        out[1] = Some(c.reduce_sum(&t, &reduce_axes, false));
    }
    if need[2] {
        out[2] = Some(c.reduce_sum(&d, &reduce_axes, false));
    }
    Ok(out)
}

/// y = x̂·γ + β, x̂ = (x − μ)/√(σ² + ε) over the axes from `axis` on:
///   dβ = Σ_lead dy,  dγ = Σ_lead dy·x̂,
///   dx = (dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)) / √(σ² + ε) with dx̂ = dy·γ
fn layer_norm(n: &NodeProto, dys: &[Option<String>], need: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let x = &n.input[0];
    let r = c.rank(x)? as i64;
    let axis = crate::shapes::axis_in(n, n.attr_i("axis", -1), r as usize)? as i64;
    let norm_axes: Vec<i64> = (axis..r).collect();
    let lead_axes: Vec<i64> = (0..axis).collect();
    // the forward's own statistics: LayerNormalization's optional Mean and InvStdDev outputs
    let (mu, inv) = layer_norm_stats(n, c);
    let xc = c.sub(x, &mu);
    let xh = c.mul(&xc, &inv);
    let mut out = vec![None; n.input.len()];
    if need[0] {
        let dxh = c.mul(&d, &n.input[1]);
        let m1 = c.reduce_mean(&dxh, &norm_axes, true);
        let p = c.mul(&dxh, &xh);
        let m2 = c.reduce_mean(&p, &norm_axes, true);
        let t = c.mul(&xh, &m2);
        let u = c.sub(&dxh, &m1);
        let u = c.sub(&u, &t);
        out[0] = Some(c.mul(&u, &inv));
    }
    if need.get(1).copied().unwrap_or(false) {
        let t = c.mul(&d, &xh);
        let s = c.reduce_sum(&t, &lead_axes, false);
        out[1] = Some(c.unbroadcast(&s, &n.input[1], &n.input[1]).unwrap_or(s));
    }
    if need.get(2).copied().unwrap_or(false) {
        out[2] = Some(c.reduce_sum(&d, &lead_axes, false));
    }
    Ok(out)
}

/// The Mean and InvStdDev outputs of a LayerNormalization node, added to the forward node when
/// the export left them out (both engines compute them with the normalization).
fn layer_norm_stats(n: &NodeProto, c: &mut Ctx) -> (String, String) {
    let existing = |k: usize| n.output.get(k).filter(|s| !s.is_empty()).cloned();
    if let (Some(m), Some(i)) = (existing(1), existing(2)) {
        return (m, i);
    }
    let base = n.output[0].clone();
    let (m, i) = (
        existing(1).unwrap_or_else(|| c.g.fresh(&format!("{base}_mean"))),
        existing(2).unwrap_or_else(|| c.g.fresh(&format!("{base}_inv_std"))),
    );
    let node = c.g.nodes.iter_mut().find(|x| x.output.first() == Some(&base)).expect("forward node exists");
    node.output.resize(1, String::new());
    node.output.push(m.clone());
    node.output.push(i.clone());
    (m, i)
}

/// (x − μ)/√(σ² + ε) over `axes` (biased variance, as PyTorch's normalizations).
fn standardize(c: &mut Ctx, x: &str, axes: &[i64], eps: f32) -> String {
    let mu = c.reduce_mean(x, axes, true);
    let xc = c.sub(x, &mu);
    let sq = c.mul(&xc, &xc);
    let var = c.reduce_mean(&sq, axes, true);
    let e = c.scalar(eps);
    let ve = c.add(&var, &e);
    let sd = c.sqrt(&ve);
    c.div(&xc, &sd)
}

/// A per-channel vector [C] shaped to broadcast over x [N, C, d…]: [C, 1, …].
fn per_channel(c: &mut Ctx, v: &str, rank: usize) -> String {
    let tail: Vec<i64> = (1..rank as i64 - 1).collect();
    if tail.is_empty() {
        v.to_string()
    } else {
        c.unsqueeze(v, &tail)
    }
}

/// InstanceNormalization (x [N, C, d…], scale [C], B [C], epsilon):
/// y = (x − mean_d x)/√(var_d x + ε)·scale + B
fn instance_norm_lower(n: &NodeProto, c: &mut Ctx) -> Result<()> {
    let x = &n.input[0];
    let r = c.rank(x)?;
    if r < 3 {
        return Err(node_error(n, "needs an input [N, C, d…]"));
    }
    let axes: Vec<i64> = (2..r as i64).collect();
    let xh = standardize(c, x, &axes, n.attr_f("epsilon", 1e-5));
    let s = per_channel(c, &n.input[1], r);
    let b = per_channel(c, &n.input[2], r);
    let t = c.mul(&xh, &s);
    let y = c.add(&t, &b);
    super::replace_output(c, n, 0, &y);
    Ok(())
}

/// GroupNormalization (x [N, C, d…], scale, bias, num_groups G, epsilon): x seen as
/// [N, G, C/G·d…], standardized over the last axis; opset 18–20 scale/bias are per group [G],
/// opset 21+ per channel [C] (ONNX GroupNormalization-21 changed the meaning).
fn group_norm_lower(n: &NodeProto, c: &mut Ctx) -> Result<()> {
    let x = &n.input[0];
    let r = c.rank(x)?;
    let groups = n.attr_i("num_groups", 0);
    if groups <= 0 {
        return Err(node_error(n, "num_groups missing"));
    }
    let s3 = c.const_i64(&[0, groups, -1]);
    let x3 = c.reshape(x, &s3);
    let xh = standardize(c, &x3, &[2], n.attr_f("epsilon", 1e-5));
    let y = if c.opset >= 21 {
        let back = c.reshape_like(&xh, x);
        let s = per_channel(c, &n.input[1], r);
        let b = per_channel(c, &n.input[2], r);
        let t = c.mul(&back, &s);
        c.add(&t, &b)
    } else {
        let s = c.unsqueeze(&n.input[1], &[1]);
        let b = c.unsqueeze(&n.input[2], &[1]);
        let t = c.mul(&xh, &s);
        let t = c.add(&t, &b);
        c.reshape_like(&t, x)
    };
    super::replace_output(c, n, 0, &y);
    Ok(())
}

/// LpNormalization (axis, p ∈ {1, 2}): y = x / ‖x‖ₚ along the axis; a zero vector stays 0.
fn lp_norm_lower(n: &NodeProto, c: &mut Ctx) -> Result<()> {
    let x = &n.input[0];
    let r = c.rank(x)?;
    let axis = crate::shapes::axis_in(n, n.attr_i("axis", -1), r)? as i64;
    let op = match n.attr_i("p", 2) {
        1 => "ReduceL1",
        2 => "ReduceL2",
        p => return Err(node_error(n, format!("p = {p}: ONNX defines p = 1 and 2 only"))),
    };
    let norm = c.reduce(op, x, &[axis], true);
    let (zero, one_) = (c.scalar(0.0), c.scalar(1.0));
    let z = c.op("Equal", &[&norm, &zero]);
    let safe = c.where_(&z, &one_, &norm);
    let y = c.div(x, &safe);
    super::replace_output(c, n, 0, &y);
    Ok(())
}

/// MeanVarianceNormalization (axes, default [0, 2, 3]): y = (x − E x)/(√(E x² − (E x)²) + 1e-9),
/// the ONNX function body (the variance taken as E (x − E x)², the same value).
fn mvn_lower(n: &NodeProto, c: &mut Ctx) -> Result<()> {
    let x = &n.input[0];
    let r = c.rank(x)?;
    let axes: Vec<i64> = crate::shapes::axes_in(n, &n.attr_ints("axes").unwrap_or(vec![0, 2, 3]), r)?
        .into_iter()
        .map(|a| a as i64)
        .collect();
    let mu = c.reduce_mean(x, &axes, true);
    let xc = c.sub(x, &mu);
    let sq = c.mul(&xc, &xc);
    let var = c.reduce_mean(&sq, &axes, true);
    let sd = c.sqrt(&var);
    let e = c.scalar(1e-9);
    let den = c.add(&sd, &e);
    let y = c.div(&xc, &den);
    super::replace_output(c, n, 0, &y);
    Ok(())
}

/// RMSNormalization-23 (X, scale; axis = −1, epsilon): y = x / √(mean over axes axis… of x² + ε)
/// · scale.
fn rms_norm_lower(n: &NodeProto, c: &mut Ctx) -> Result<()> {
    let x = &n.input[0];
    let r = c.rank(x)?;
    let axis = crate::shapes::axis_in(n, n.attr_i("axis", -1), r)? as i64;
    let axes: Vec<i64> = (axis..r as i64).collect();
    let sq = c.mul(x, x);
    let ms = c.reduce_mean(&sq, &axes, true);
    let e = c.scalar(n.attr_f("epsilon", 1e-5));
    let t = c.add(&ms, &e);
    let rms = c.sqrt(&t);
    let xh = c.div(x, &rms);
    let y = c.mul(&xh, &n.input[1]);
    super::replace_output(c, n, 0, &y);
    Ok(())
}
