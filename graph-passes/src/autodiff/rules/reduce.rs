//! ReduceMean, ReduceSum.
use super::dy;
use crate::autodiff::{Ctx, Grads, Rule};
use crate::ir::{node_error, NodeExt};
use crate::onnx::NodeProto;
use crate::Result;

pub fn rule(op: &str) -> Option<Rule> {
    Some(match op {
        "ReduceSum" => reduce_sum,
        "ReduceMean" => reduce_mean,
        _ => return None,
    })
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
