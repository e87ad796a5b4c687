//! Ops that move elements without changing them: Reshape, Flatten, Squeeze, Unsqueeze,
//! Transpose, Concat, Split, Slice, Expand, Tile, Pad, DepthToSpace, SpaceToDepth, Trilu.
use super::{dy, op, Family, Gradient as G, OpDef};
use crate::autodiff::{Ctx, Grads};
use crate::ir::{node_error, Graph, NodeExt};
use crate::onnx::NodeProto;
use crate::shapes::{
    axes_of, broadcast, dims_product, input_type, ints_of, norm_axis, reshape_shape, same_as_input, set, slice_bounds,
    unknown_rank_out, Dim, Shapes, ValueType,
};
use crate::Result;

pub const FAMILY: Family = Family { name: "shape", ops };

fn ops() -> Vec<OpDef> {
    vec![
        op("Reshape", "14+", reshape_shape_rule, G::Rule(reshape_back)),
        op("Flatten", "13+", flatten_shape, G::Rule(reshape_back)),
        op("Squeeze", "13+", squeeze_shape, G::Rule(reshape_back)),
        op("Unsqueeze", "13+", squeeze_shape, G::Rule(reshape_back)),
        op("Transpose", "13+", transpose_shape, G::Rule(transpose)),
        op("Concat", "13+", concat_shape, G::Rule(concat)),
        op("Split", "13+", split_shape, G::Rule(split)),
        op("Slice", "13+", slice_shape, G::Rule(slice)).notes("constant starts/ends/axes; steps of 1"),
        op("Expand", "13+", expand_shape, G::Rule(expand)),
        op("Tile", "13+", tile_shape, G::Rule(tile)).notes("constant repeats"),
        op("Pad", "13+", pad_shape, G::Rule(pad)).notes("constant mode, constant non-negative pads, no axes input"),
        op("Trilu", "14+", same_as_input, G::Missing("no gradient rule yet")),
        op("DepthToSpace", "13+", same_as_input, G::Missing("no gradient rule yet")),
        op("SpaceToDepth", "13+", same_as_input, G::Missing("no gradient rule yet")),
    ]
}

fn flatten_shape(_: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let out0 = n.output.first().cloned().unwrap_or_default();
    let x = input_type(s, n, 0)?;
    let shape = x.shape.as_ref().map(|xs| {
        let axis = norm_axis(n.attr_i("axis", 1), xs.len());
        vec![dims_product(&xs[..axis]), dims_product(&xs[axis..])]
    });
    set(s, &out0, x.dtype, shape);
    Ok(())
}

fn reshape_shape_rule(_: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let out0 = n.output.first().cloned().unwrap_or_default();
    let x = input_type(s, n, 0)?;
    let target = s.values.get(&n.input[1]).cloned();
    let shape = match (target, &x.shape) {
        (Some(t), xs) => Some(reshape_shape(n, xs.as_ref(), &t, n.attr_i("allowzero", 0) != 0)?),
        (None, _) => {
            let r =
                s.rank(&n.input[1]).and(s.shape(&n.input[1]).and_then(|sh| sh.first()).and_then(|d| d.known()));
            r.map(|r| (0..r).map(|_| s.fresh_dim("r")).collect())
        }
    };
    if let (Some(v), Some(sh)) = (s.values.get(&n.input[0]).cloned(), &shape) {
        if sh.len() <= 1 {
            s.values.insert(out0.clone(), v);
        }
    }
    set(s, &out0, x.dtype, shape);
    Ok(())
}

fn transpose_shape(_: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let out0 = n.output.first().cloned().unwrap_or_default();
    let x = input_type(s, n, 0)?;
    let shape = x.shape.map(|xs| {
        let perm = n.attr_ints("perm").unwrap_or_else(|| (0..xs.len() as i64).rev().collect());
        perm.iter().map(|&p| xs[p as usize].clone()).collect()
    });
    set(s, &out0, x.dtype, shape);
    Ok(())
}

fn squeeze_shape(g: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let op = n.op_type.as_str();
    let out0 = n.output.first().cloned().unwrap_or_default();
    let x = input_type(s, n, 0)?;
    let axes = axes_of(g, s, n, 1);
    let shape = match (&x.shape, axes) {
        (Some(xs), Some(axes)) if op == "Unsqueeze" => {
            let r = xs.len() + axes.len();
            let mut ax: Vec<usize> = axes.iter().map(|&a| norm_axis(a, r)).collect();
            ax.sort();
            let mut out = Vec::with_capacity(r);
            let mut it = xs.iter();
            for i in 0..r {
                out.push(if ax.contains(&i) {
                    Dim::Known(1)
                } else {
                    it.next().cloned().unwrap_or(Dim::Known(1))
                });
            }
            Some(out)
        }
        (Some(xs), Some(axes)) => {
            let ax: Vec<usize> = axes.iter().map(|&a| norm_axis(a, xs.len())).collect();
            Some(xs.iter().enumerate().filter(|(i, _)| !ax.contains(i)).map(|(_, d)| d.clone()).collect())
        }
        (Some(xs), None) if op == "Squeeze" => {
            Some(xs.iter().filter(|d| **d != Dim::Known(1)).cloned().collect())
        }
        _ => None,
    };
    if let Some(v) = s.values.get(&n.input[0]).cloned() {
        s.values.insert(out0.clone(), v);
    }
    set(s, &out0, x.dtype, shape);
    Ok(())
}

fn concat_shape(_: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let out0 = n.output.first().cloned().unwrap_or_default();
    let types: Vec<ValueType> = (0..n.input.len()).map(|i| input_type(s, n, i)).collect::<Result<_>>()?;
    let shape = if types.iter().all(|t| t.shape.is_some()) {
        let first = types[0].shape.clone().unwrap();
        let axis = norm_axis(n.attr_i("axis", 0), first.len());
        let mut out = first.clone();
        let mut total: Option<i64> = Some(0);
        for t in &types {
            let d = &t.shape.as_ref().unwrap()[axis];
            total = total.and_then(|acc| d.known().map(|v| acc + v));
        }
        out[axis] = total.map(Dim::Known).unwrap_or_else(|| s.fresh_dim("cat"));
        Some(out)
    } else {
        None
    };
    let vals: Option<Vec<Vec<Dim>>> = n.input.iter().map(|i| s.values.get(i).cloned()).collect();
    if let Some(vals) = vals {
        s.values.insert(out0.clone(), vals.concat());
    }
    set(s, &out0, types[0].dtype, shape);
    Ok(())
}

fn split_shape(g: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let x = input_type(s, n, 0)?;
    let k = n.output.len();
    let split = n
        .attr_ints("split")
        .or_else(|| n.input.get(1).filter(|x| !x.is_empty()).and_then(|i| ints_of(g, s, i)));
    for (j, o) in n.output.iter().enumerate() {
        let shape = x.shape.as_ref().map(|xs| {
            let axis = norm_axis(n.attr_i("axis", 0), xs.len());
            let mut out = xs.clone();
            out[axis] = match (&split, &xs[axis]) {
                (Some(sp), _) => Dim::Known(sp[j]),
                (None, Dim::Known(d)) => Dim::Known((d + k as i64 - 1) / k as i64).clone(),
                _ => Dim::Sym(format!("split{j}")),
            };
            if split.is_none() {
                if let Dim::Known(d) = xs[axis] {
                    let chunk = (d + k as i64 - 1) / k as i64;
                    out[axis] = Dim::Known(if j + 1 == k { d - chunk * (k as i64 - 1) } else { chunk });
                }
            }
            out
        });
        set(s, o, x.dtype, shape);
    }
    Ok(())
}

fn slice_shape(g: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let out0 = n.output.first().cloned().unwrap_or_default();
    let x = input_type(s, n, 0)?;
    let starts = ints_of(g, s, &n.input[1]);
    let ends = ints_of(g, s, &n.input[2]);
    let axes = n.input.get(3).filter(|x| !x.is_empty()).map(|a| ints_of(g, s, a));
    let steps = n.input.get(4).filter(|x| !x.is_empty()).map(|a| ints_of(g, s, a));
    let shape = match (&x.shape, starts, ends) {
        (Some(xs), Some(st), Some(en)) => {
            let axes = match axes {
                Some(Some(a)) => a,
                Some(None) => return unknown_rank_out(s, &out0, x.dtype, Some(xs.len())),
                None => (0..st.len() as i64).collect(),
            };
            let steps = match steps {
                Some(Some(a)) => a,
                Some(None) => return unknown_rank_out(s, &out0, x.dtype, Some(xs.len())),
                None => vec![1; st.len()],
            };
            let mut out = xs.clone();
            let mut val = s.values.get(&n.input[0]).cloned();
            for (j, &a) in axes.iter().enumerate() {
                let a = norm_axis(a, xs.len());
                match &xs[a] {
                    Dim::Known(d) => {
                        let (b, e, step) = slice_bounds(st[j], en[j], steps[j], *d);
                        let len = if step > 0 {
                            ((e - b).max(0) + step - 1) / step
                        } else {
                            ((b - e).max(0) + (-step) - 1) / (-step)
                        };
                        out[a] = Dim::Known(len);
                        if let Some(v) = &mut val {
                            if xs.len() == 1 && step > 0 {
                                *v = v
                                    .iter()
                                    .skip(b as usize)
                                    .take(len as usize)
                                    .step_by(step as usize)
                                    .cloned()
                                    .collect();
                            } else {
                                val = None;
                            }
                        }
                    }
                    Dim::Sym(sym) => {
                        out[a] = if st[j] == 0 && en[j] >= i64::MAX / 2 && steps[j] == 1 {
                            Dim::Sym(sym.clone())
                        } else {
                            s.fresh_dim("slice")
                        };
                        val = None;
                    }
                }
            }
            if let Some(v) = val {
                s.values.insert(out0.clone(), v);
            }
            Some(out)
        }
        (Some(xs), _, _) => Some((0..xs.len()).map(|_| s.fresh_dim("slice")).collect()),
        _ => None,
    };
    set(s, &out0, x.dtype, shape);
    Ok(())
}

fn expand_shape(_: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let out0 = n.output.first().cloned().unwrap_or_default();
    let x = input_type(s, n, 0)?;
    let shape = match (&x.shape, s.values.get(&n.input[1]).cloned()) {
        (Some(xs), Some(t)) => broadcast(&[xs, &t]),
        _ => None,
    };
    set(s, &out0, x.dtype, shape);
    Ok(())
}

fn tile_shape(g: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let out0 = n.output.first().cloned().unwrap_or_default();
    let x = input_type(s, n, 0)?;
    let shape = match (&x.shape, ints_of(g, s, &n.input[1])) {
        (Some(xs), Some(r)) => Some(
            xs.iter()
                .zip(r.iter())
                .map(|(d, &k)| match d {
                    Dim::Known(v) => Dim::Known(v * k),
                    Dim::Sym(sym) if k == 1 => Dim::Sym(sym.clone()),
                    _ => Dim::Sym(format!("tile({d})")),
                })
                .collect(),
        ),
        _ => None,
    };
    set(s, &out0, x.dtype, shape);
    Ok(())
}

fn pad_shape(g: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let out0 = n.output.first().cloned().unwrap_or_default();
    let x = input_type(s, n, 0)?;
    let pads = n.attr_ints("pads").or_else(|| n.input.get(1).and_then(|p| ints_of(g, s, p)));
    let shape = match (&x.shape, pads) {
        (Some(xs), Some(p)) if n.input.get(3).map(|a| a.is_empty()).unwrap_or(true) => {
            let r = xs.len();
            Some(
                xs.iter()
                    .enumerate()
                    .map(|(i, d)| match d {
                        Dim::Known(v) => Dim::Known(v + p[i] + p[i + r]),
                        Dim::Sym(sym) if p[i] + p[i + r] == 0 => Dim::Sym(sym.clone()),
                        _ => Dim::Sym(format!("pad({d})")),
                    })
                    .collect(),
            )
        }
        (Some(xs), _) => Some((0..xs.len()).map(|_| s.fresh_dim("pad")).collect()),
        _ => None,
    };
    set(s, &out0, x.dtype, shape);
    Ok(())
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
