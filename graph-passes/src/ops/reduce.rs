//! Reductions (Reduce*), ArgMax/ArgMin, CumSum, TopK, Hardmax.
use super::{dy, op, Family, Gradient as G, OpDef};
use crate::autodiff::{Ctx, Grads};
use crate::ir::{node_error, Graph, NodeExt};
use crate::onnx::{data_type as dt, NodeProto};
use crate::shapes::{axes_of, data_dependent, input_type, norm_axis, reduce_shape, same_as_input, set, Shapes};
use crate::Result;

pub const FAMILY: Family = Family { name: "reduce", ops };

fn ops() -> Vec<OpDef> {
    vec![
        op("ReduceSum", "13+", reduce_shape_rule, G::Rule(reduce_sum)).notes("axes constant (attribute or input)"),
        op("ReduceMean", "13+", reduce_shape_rule, G::Rule(reduce_mean)).notes("axes constant (attribute or input)"),
        op("ReduceMax", "13+", reduce_shape_rule, G::Missing("no gradient rule yet")),
        op("ReduceMin", "13+", reduce_shape_rule, G::Missing("no gradient rule yet")),
        op("ReduceProd", "13+", reduce_shape_rule, G::Missing("no gradient rule yet")),
        op("ReduceL1", "13+", reduce_shape_rule, G::Missing("no gradient rule yet")),
        op("ReduceL2", "13+", reduce_shape_rule, G::Missing("no gradient rule yet")),
        op("ReduceSumSquare", "13+", reduce_shape_rule, G::Missing("no gradient rule yet")),
        op("ReduceLogSumExp", "13+", reduce_shape_rule, G::Missing("no gradient rule yet")),
        op("ArgMax", "13+", reduce_shape_rule, G::None),
        op("ArgMin", "13+", reduce_shape_rule, G::None),
        op("Hardmax", "13+", same_as_input, G::None),
        op("CumSum", "14+", same_as_input, G::Missing("no gradient rule yet")),
        op("TopK", "11+", data_dependent, G::Missing("no gradient rule yet")),
    ]
}

fn reduce_shape_rule(g: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let op = n.op_type.as_str();
    let out0 = n.output.first().cloned().unwrap_or_default();
    let x = input_type(s, n, 0)?;
    let keep = n.attr_i("keepdims", 1) != 0;
    let arg = op.starts_with("Arg");
    let axes = if arg { Some(vec![n.attr_i("axis", 0)]) } else { axes_of(g, s, n, 1) };
    let has_axes_input = n.input.get(1).map(|a| !a.is_empty()).unwrap_or(false) || n.attr("axes").is_some();
    let shape = match (&x.shape, axes) {
        (Some(xs), Some(ax)) => {
            let ax: Vec<usize> = ax.iter().map(|&a| norm_axis(a, xs.len())).collect();
            Some(reduce_shape(xs, &ax, keep))
        }
        (Some(xs), None) if !has_axes_input => {
            if n.attr_i("noop_with_empty_axes", 0) != 0 {
                Some(xs.clone())
            } else {
                Some(reduce_shape(xs, &(0..xs.len()).collect::<Vec<_>>(), keep))
            }
        }
        // over every axis without keepdims: a scalar, whatever the input's shape
        (None, None) if !has_axes_input && !keep && !arg && n.attr_i("noop_with_empty_axes", 0) == 0 => {
            Some(vec![])
        }
        _ => None,
    };
    set(s, &out0, if arg { dt::INT64 } else { x.dtype }, shape);
    Ok(())
}

/// The reduced axes (normalized) of a Reduce node: attribute (old opsets) or constant input.
fn axes(n: &NodeProto, c: &Ctx) -> Result<Vec<i64>> {
    let r = c.rank(&n.input[0])? as i64;
    let given = match n.attr_ints("axes") {
        Some(a) => Some(a),
        None => match n.input.get(1).filter(|s| !s.is_empty()) {
            Some(a) => Some(c.const_ints(a).ok_or_else(|| node_error(n, "axes must be a constant"))?),
            None => None,
        },
    };
    Ok(match given {
        Some(a) if !a.is_empty() => a.into_iter().map(|v| if v < 0 { v + r } else { v }).collect(),
        _ if n.attr_i("noop_with_empty_axes", 0) != 0 => vec![],
        _ => (0..r).collect(),
    })
}

/// dy brought back to x's shape: unsqueeze the dropped axes (a scalar broadcasts as it is), then
/// expand.
fn spread(n: &NodeProto, d: &str, ax: &[i64], c: &mut Ctx) -> Result<String> {
    let all = ax.len() == c.rank(&n.input[0])?;
    let kept = if n.attr_i("keepdims", 1) == 0 && !ax.is_empty() && !all { c.unsqueeze(d, ax) } else { d.to_string() };
    Ok(c.expand_like(&kept, &n.input[0]))
}

/// y = Σ_axes x:  dx = expand(dy)
fn reduce_sum(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let ax = axes(n, c)?;
    let mut out = vec![Some(spread(n, &d, &ax, c)?)];
    out.resize(n.input.len(), None);
    Ok(out)
}

/// y = mean_axes x:  dx = expand(dy) / (number of reduced elements)
fn reduce_mean(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let ax = axes(n, c)?;
    let xs = c.shape(&n.input[0])?.clone();
    // dy / count first (the small tensor), then spread
    let count: Option<i64> = ax.iter().map(|&a| xs[a as usize].known()).product();
    let scaled = match count {
        Some(k) => {
            let s = c.scalar(1.0 / k as f32);
            c.mul(&d, &s)
        }
        None => {
            // a symbolic axis (the batch): count at run time
            let k = if ax.len() == xs.len() {
                c.op("Size", &[&n.input[0]])
            } else {
                let shape = c.shape_of(&n.input[0]);
                let idx = c.const_i64(&ax);
                let picked = c.g.add("Gather", &[&shape, &idx]).int("axis", 0).output();
                c.g.add("ReduceProd", &[&picked]).int("keepdims", 0).output()
            };
            let k = c.cast(&k, crate::onnx::data_type::FLOAT);
            c.div(&d, &k)
        }
    };
    let dx = spread(n, &scaled, &ax, c)?;
    let mut out = vec![Some(dx)];
    out.resize(n.input.len(), None);
    Ok(out)
}
