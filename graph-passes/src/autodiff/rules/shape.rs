//! Ops that move elements without changing them.
use super::dy;
use crate::autodiff::{Ctx, Grads, Rule};
use crate::ir::{node_error, NodeExt};
use crate::onnx::NodeProto;
use crate::Result;

pub fn rule(op: &str) -> Option<Rule> {
    Some(match op {
        "Flatten" | "Reshape" | "Squeeze" | "Unsqueeze" => reshape_back,
        "Transpose" => transpose,
        "Concat" => concat,
        "Split" => split,
        "Slice" => slice,
        "Expand" => expand,
        "Tile" => tile,
        "Pad" => pad,
        _ => return None,
    })
}

fn first_only(g: String, n: &NodeProto) -> Grads {
    let mut out = vec![Some(g)];
    out.resize(n.input.len(), None);
    out
}

/// y = reshape(x):  dx = reshape(dy, shape(x))
fn reshape_back(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    Ok(first_only(c.reshape_like(&d, &n.input[0]), n))
}

/// y = transpose(x, p):  dx = transpose(dy, p⁻¹)
fn transpose(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let r = c.rank(&n.input[0])?;
    let perm = n.attr_ints("perm").unwrap_or_else(|| (0..r as i64).rev().collect());
    let mut inv = vec![0i64; r];
    for (i, &p) in perm.iter().enumerate() {
        inv[p as usize] = i as i64;
    }
    // a weight used as Wᵀ (the dynamo exporter's Linear): its gradient arrives as a GEMM
    // product P = AᵀB, and Pᵀ = BᵀA is one GEMM rather than a GEMM and a Transpose
    if inv == [1, 0] {
        if let Some((a, b)) = gemm_at_b(c, &d) {
            return Ok(vec![Some(c.g.add("Gemm", &[&b, &a]).int("transA", 1).output())]);
        }
    }
    Ok(vec![Some(c.transpose(&d, &inv))])
}

/// (A, B) when `v` is a plain Gemm(A, B, transA=1) the sweep emitted and nothing else reads.
fn gemm_at_b(c: &Ctx, v: &str) -> Option<(String, String)> {
    let n = c.g.nodes.iter().find(|n| n.output.first().map(|o| o == v).unwrap_or(false))?;
    let plain = n.op_type == "Gemm"
        && n.input.len() == 2
        && n.attr_i("transA", 0) == 1
        && n.attr_i("transB", 0) == 0
        && n.attr_f("alpha", 1.0) == 1.0
        && n.pass_tag().is_some();
    let readers = c.g.nodes.iter().filter(|m| m.input.iter().any(|i| i == v)).count();
    (plain && readers == 0).then(|| (n.input[0].clone(), n.input[1].clone()))
}

fn axis_of(n: &NodeProto, c: &Ctx, default: i64) -> Result<usize> {
    let r = c.rank(&n.input[0])? as i64;
    let a = n.attr_i("axis", default);
    Ok((if a < 0 { a + r } else { a }) as usize)
}

/// y = concat(x₁…xₖ, axis):  dxᵢ = the slice of dy that xᵢ filled
fn concat(n: &NodeProto, dys: &[Option<String>], need: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let axis = axis_of(n, c, 0)?;
    let mut start = 0i64;
    let mut out = Vec::new();
    for (k, x) in n.input.iter().enumerate() {
        let len = c.shape(x)?[axis]
            .known()
            .ok_or_else(|| node_error(n, format!("input '{x}' has a symbolic size along the concat axis")))?;
        out.push(if need[k] {
            let (s, e, a) = (c.const_i64(&[start]), c.const_i64(&[start + len]), c.const_i64(&[axis as i64]));
            Some(c.op("Slice", &[&d, &s, &e, &a]))
        } else {
            None
        });
        start += len;
    }
    Ok(out)
}

/// (y₁…yₖ) = split(x, axis):  dx = concat(dy₁…dyₖ), zeros for outputs no gradient reached
fn split(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let axis = axis_of(n, c, 0)?;
    let parts: Vec<String> = n
        .output
        .iter()
        .zip(dys)
        .map(|(o, d)| match d {
            Some(d) => d.clone(),
            None => c.zeros_like(o),
        })
        .collect();
    let refs: Vec<&str> = parts.iter().map(|s| s.as_str()).collect();
    let dx = c.g.add("Concat", &refs).int("axis", axis as i64).output();
    Ok(first_only(dx, n))
}

/// y = x[starts:ends] (step 1):  dx = pad(dy) with zeros back to x's shape
fn slice(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let x = &n.input[0];
    let xs = c.shape(x)?.clone();
    let r = xs.len();
    let ints = |i: usize| n.input.get(i).filter(|s| !s.is_empty()).map(|s| c.const_ints(s));
    let starts = ints(1).flatten().ok_or_else(|| node_error(n, "starts must be constant"))?;
    let ends = ints(2).flatten().ok_or_else(|| node_error(n, "ends must be constant"))?;
    let axes = match ints(3) {
        Some(Some(a)) => a,
        Some(None) => return Err(node_error(n, "axes must be constant")),
        None => (0..starts.len() as i64).collect(),
    };
    if let Some(steps) = ints(4) {
        if steps.ok_or_else(|| node_error(n, "steps must be constant"))?.iter().any(|&s| s != 1) {
            return Err(node_error(n, "the gradient of a Slice with steps ≠ 1 is not supported yet"));
        }
    }
    let mut pads = vec![0i64; 2 * r];
    for (k, &a) in axes.iter().enumerate() {
        let a = (if a < 0 { a + r as i64 } else { a }) as usize;
        let Some(dim) = xs[a].known() else {
            // the whole of a symbolic axis (the batch, `x[:, 0]` as the dynamo exporter writes it)
            if starts[k] == 0 && ends[k] >= i32::MAX as i64 {
                continue;
            }
            return Err(node_error(n, "sliced axis has a symbolic size"));
        };
        let (b, e, _) = crate::shapes::slice_bounds(starts[k], ends[k], 1, dim);
        pads[a] = b;
        pads[a + r] = dim - e.max(b);
    }
    let p = c.const_i64(&pads);
    Ok(first_only(c.op("Pad", &[&d, &p]), n))
}

/// y = expand(x, shape):  dx = dy summed over the broadcast axes
fn expand(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    Ok(first_only(c.unbroadcast(&d, &n.input[0], &n.output[0])?, n))
}

/// y = tile(x, r):  dx = Σ over the copies: reshape dy to [r₀, d₀, r₁, d₁, …], sum the r axes
fn tile(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let x = &n.input[0];
    let xd = c.known_dims(x).map_err(|e| node_error(n, e))?;
    let reps = c.const_ints(&n.input[1]).ok_or_else(|| node_error(n, "repeats must be constant"))?;
    let split: Vec<i64> = xd.iter().zip(&reps).flat_map(|(&dd, &r)| [r, dd]).collect();
    let s = c.const_i64(&split);
    let r = c.reshape(&d, &s);
    let axes: Vec<i64> = (0..xd.len() as i64).map(|i| 2 * i).collect();
    Ok(first_only(c.reduce_sum(&r, &axes, false), n))
}

/// y = pad(x, constant):  dx = the unpadded window of dy
fn pad(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    if n.attr_s("mode").map(|m| m != "constant").unwrap_or(false) {
        return Err(node_error(n, "only constant padding has a gradient rule"));
    }
    if n.input.get(3).map(|s| !s.is_empty()).unwrap_or(false) {
        return Err(node_error(n, "Pad with an axes input is not supported"));
    }
    let x = &n.input[0];
    let xs = c.shape(x)?.clone();
    let r = xs.len();
    let pads = n
        .attr_ints("pads")
        .or_else(|| n.input.get(1).and_then(|p| c.const_ints(p)))
        .ok_or_else(|| node_error(n, "pads must be constant"))?;
    if pads.iter().any(|&p| p < 0) {
        return Err(node_error(n, "negative pads are not supported"));
    }
    let mut starts = Vec::new();
    let mut ends = Vec::new();
    let mut axes = Vec::new();
    for i in 0..r {
        if pads[i] == 0 && pads[i + r] == 0 {
            continue;
        }
        let dim = xs[i].known().ok_or_else(|| node_error(n, "padded axis has a symbolic size"))?;
        starts.push(pads[i]);
        ends.push(pads[i] + dim);
        axes.push(i as i64);
    }
    if axes.is_empty() {
        return Ok(first_only(d, n));
    }
    let (s, e, a) = (c.const_i64(&starts), c.const_i64(&ends), c.const_i64(&axes));
    Ok(first_only(c.op("Slice", &[&d, &s, &e, &a]), n))
}
