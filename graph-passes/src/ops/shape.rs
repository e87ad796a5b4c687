//! Ops that move elements without changing them: Reshape, Flatten, Squeeze, Unsqueeze,
//! Transpose, Concat, Split, Slice, Expand, Tile, Pad, DepthToSpace, SpaceToDepth, Trilu.
use super::{dy, op, Family, Gradient as G, OpDef};
use crate::ctx::{Ctx, Grads};
use crate::ir::{node_error, Graph, NodeExt};
use crate::onnx::NodeProto;
use crate::shapes::{
    axes_of, axes_in, axis_in, broadcast, dims_of, dims_product, input_type, ints_of, norm_axis, reshape_shape, same_as_input, set, slice_bounds,
    unknown_rank_out, Dim, Shapes, ValueType,
};
use crate::Result;

pub const FAMILY: Family = Family { name: "shape", ops };

fn ops() -> Vec<OpDef> {
    vec![
        op("Reshape", "14+", reshape_shape_rule, G::Rule(reshape_back)),
        op("Flatten", "13+", flatten_shape, G::Rule(reshape_back)),
        op("Squeeze", "13+", squeeze_shape, G::Rule(squeeze_back)),
        op("Unsqueeze", "13+", squeeze_shape, G::Rule(squeeze_back)),
        op("Transpose", "13+", transpose_shape, G::Rule(transpose)),
        op("Concat", "13+", concat_shape, G::Rule(concat)),
        op("Split", "13+", split_shape, G::Rule(split)),
        op("Slice", "13+", slice_shape, G::Rule(slice)).notes("constant starts/ends/axes/steps; any step, negative too"),
        op("Expand", "13+", expand_shape, G::Rule(expand)),
        op("Tile", "13+", tile_shape, G::Rule(tile)).notes("constant repeats"),
        op("Pad", "13+", pad_shape, G::Rule(pad))
            .notes("constant, reflect, edge, wrap (tract 0.23 has no wrap: ONNX Runtime); constant non-negative pads; axes input (opset 18) constant"),
        op("Trilu", "14+", same_as_input, G::Rule(trilu)),
        op("DepthToSpace", "13+", depth_to_space_shape, G::Rule(depth_to_space)).notes("DCR and CRD"),
        op("SpaceToDepth", "13+", space_to_depth_shape, G::Rule(space_to_depth)),
    ]
}

fn flatten_shape(_: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let out0 = n.output.first().cloned().unwrap_or_default();
    let x = input_type(s, n, 0)?;
    let shape = match x.shape.as_ref() {
        Some(xs) => {
            // Flatten's axis may equal the rank ([N, …] → [N·…, 1])
            let axis = if n.attr_i("axis", 1) == xs.len() as i64 { xs.len() } else { axis_in(n, n.attr_i("axis", 1), xs.len())? };
            Some(vec![dims_product(&xs[..axis]), dims_product(&xs[axis..])])
        }
        None => None,
    };
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
            let r = s.rank(&n.input[1]).and(s.shape(&n.input[1]).and_then(|sh| sh.first()).and_then(|d| d.known()));
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
    let shape = match x.shape {
        Some(xs) => {
            let perm = n.attr_ints("perm").unwrap_or_else(|| (0..xs.len() as i64).rev().collect());
            let mut sorted = perm.clone();
            sorted.sort();
            if sorted != (0..xs.len() as i64).collect::<Vec<_>>() {
                return Err(node_error(n, format!("perm {perm:?} is no permutation of the {} axes", xs.len())));
            }
            Some(perm.iter().map(|&p| xs[p as usize].clone()).collect())
        }
        None => None,
    };
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
            let mut ax: Vec<usize> = axes_in(n, &axes, r)?;
            ax.sort();
            let mut out = Vec::with_capacity(r);
            let mut it = xs.iter();
            for i in 0..r {
                out.push(if ax.contains(&i) { Dim::Known(1) } else { it.next().cloned().unwrap_or(Dim::Known(1)) });
            }
            Some(out)
        }
        (Some(xs), Some(axes)) => {
            let ax: Vec<usize> = axes_in(n, &axes, xs.len())?;
            Some(xs.iter().enumerate().filter(|(i, _)| !ax.contains(i)).map(|(_, d)| d.clone()).collect())
        }
        (Some(xs), None) if op == "Squeeze" => Some(xs.iter().filter(|d| **d != Dim::Known(1)).cloned().collect()),
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
        let axis = axis_in(n, n.attr_i("axis", 0), first.len())?;
        let mut out = first.clone();
        let mut total: Option<i64> = Some(0);
        for t in &types {
            let ts = t.shape.as_ref().unwrap();
            if ts.len() != first.len() {
                return Err(node_error(n, format!("inputs of rank {} and {}", first.len(), ts.len())));
            }
            let d = &ts[axis];
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
    let split =
        n.attr_ints("split").or_else(|| n.input.get(1).filter(|x| !x.is_empty()).and_then(|i| ints_of(g, s, i)));
    if let Some(sp) = &split {
        if sp.len() != k {
            return Err(node_error(n, format!("split has {} sizes for {k} outputs", sp.len())));
        }
    }
    let axis = match x.shape.as_ref() {
        Some(xs) => axis_in(n, n.attr_i("axis", 0), xs.len())?,
        None => 0,
    };
    for (j, o) in n.output.iter().enumerate() {
        let shape = x.shape.as_ref().map(|xs| {
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

/// Slice: each sliced axis gets its length; the other axes keep theirs. Starts and ends may be
/// symbolic (`x[:, :seq]`, a position table sliced to the sequence length): a slice from 0 with
/// step 1 to a symbolic end `e` has length `e` (the end is taken to lie within the axis, as it
/// does where a sequence indexes a table of positions; a run where it does not fails on the
/// shapes, never silently).
fn slice_shape(g: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let out0 = n.output.first().cloned().unwrap_or_default();
    let x = input_type(s, n, 0)?;
    let Some(xs) = x.shape.clone() else {
        set(s, &out0, x.dtype, None);
        return Ok(());
    };
    let operand = |i: usize| n.input.get(i).filter(|v| !v.is_empty());
    let starts = operand(1).and_then(|v| dims_of(g, s, v));
    let ends = operand(2).and_then(|v| dims_of(g, s, v));
    let axes: Option<Vec<i64>> = match operand(3) {
        Some(a) => ints_of(g, s, a),
        None => starts.as_ref().map(|st| (0..st.len() as i64).collect()),
    };
    let steps: Option<Vec<i64>> = match operand(4) {
        Some(a) => ints_of(g, s, a),
        None => axes.as_ref().map(|a| vec![1; a.len()]),
    };
    let (Some(starts), Some(ends), Some(axes), Some(steps)) = (starts, ends, axes, steps) else {
        // which axes are sliced is not known: every size is
        return unknown_rank_out(s, &out0, x.dtype, Some(xs.len()));
    };
    if starts.len() != axes.len() || ends.len() != axes.len() || steps.len() != axes.len() {
        return Err(node_error(
            n,
            format!(
                "starts, ends, axes and steps must have one entry per sliced axis (got {}, {}, {}, {})",
                starts.len(),
                ends.len(),
                axes.len(),
                steps.len()
            ),
        ));
    }
    let mut out = xs.clone();
    let mut val = s.values.get(&n.input[0]).cloned();
    for (j, &a) in axes.iter().enumerate() {
        let a = axis_in(n, a, xs.len())?;
        if steps[j] == 0 {
            return Err(node_error(n, "a step of 0"));
        }
        match (&xs[a], starts[j].known(), ends[j].known()) {
            (Dim::Known(d), Some(st), Some(en)) => {
                let (b, e, step) = slice_bounds(st, en, steps[j], *d);
                let len = if step > 0 {
                    ((e - b).max(0) + step - 1) / step
                } else {
                    ((b - e).max(0) + (-step) - 1) / (-step)
                };
                out[a] = Dim::Known(len);
                if let Some(v) = &mut val {
                    if xs.len() == 1 && step > 0 {
                        *v = v.iter().skip(b as usize).take(len as usize).step_by(step as usize).cloned().collect();
                    } else {
                        val = None;
                    }
                }
            }
            (Dim::Sym(sym), Some(0), Some(en)) if en >= i64::MAX / 2 && steps[j] == 1 => {
                out[a] = Dim::Sym(sym.clone());
                val = None;
            }
            (_, Some(0), None) if steps[j] == 1 => {
                out[a] = ends[j].clone();
                val = None;
            }
            _ => {
                out[a] = s.fresh_dim("slice");
                val = None;
            }
        }
    }
    if let Some(v) = val {
        s.values.insert(out0.clone(), v);
    }
    set(s, &out0, x.dtype, Some(out));
    Ok(())
}

fn expand_shape(_: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let out0 = n.output.first().cloned().unwrap_or_default();
    let x = input_type(s, n, 0)?;
    let shape = match (&x.shape, s.values.get(&n.input[1]).cloned()) {
        (Some(xs), Some(t)) => broadcast(&[xs, &t]),
        _ => None,
    };
    // a shape vector expanded to its own shape keeps its values
    if let (Some(v), Some(sh)) = (s.values.get(&n.input[0]).cloned(), &shape) {
        if x.shape.as_ref() == Some(sh) {
            s.values.insert(out0.clone(), v);
        }
    }
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

/// Pads for every axis [begins…, ends…] from a Pad node's pads and optional axes (opset 18).
fn full_pads(given: &[i64], axes: Option<&[i64]>, r: usize) -> Option<Vec<i64>> {
    match axes {
        None => (given.len() == 2 * r).then(|| given.to_vec()),
        Some(axes) => {
            if given.len() != 2 * axes.len() {
                return None;
            }
            let mut full = vec![0i64; 2 * r];
            for (k, &ax) in axes.iter().enumerate() {
                if ax < -(r as i64) || ax >= r as i64 {
                    return None;
                }
                let ax = norm_axis(ax, r);
                full[ax] = given[k];
                full[ax + r] = given[k + axes.len()];
            }
            Some(full)
        }
    }
}

fn pad_shape(g: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let out0 = n.output.first().cloned().unwrap_or_default();
    let x = input_type(s, n, 0)?;
    let given = n.attr_ints("pads").or_else(|| n.input.get(1).and_then(|p| ints_of(g, s, p)));
    let axes = match n.input.get(3).filter(|a| !a.is_empty()) {
        Some(a) => ints_of(g, s, a).map(Some),
        None => Some(None),
    };
    let pads = match (&x.shape, given, axes) {
        (Some(xs), Some(p), Some(a)) => full_pads(&p, a.as_deref(), xs.len()),
        _ => None,
    };
    let shape = match (&x.shape, pads) {
        (Some(xs), Some(p)) => {
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

/// y = squeeze(x, axes):  dx = unsqueeze(dy, axes), and the other way round (one node; a
/// reshape to x's shape needs its Shape too). Squeeze without axes: the axes of size 1 when
/// x's shape says which, else a reshape.
fn squeeze_back(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let given = n.attr_ints("axes").or_else(|| n.input.get(1).filter(|a| !a.is_empty()).and_then(|a| c.const_ints(a)));
    let xs = c.shape(&n.input[0])?.clone();
    let axes: Option<Vec<i64>> = match (n.op_type.as_str(), given) {
        ("Squeeze", Some(a)) => Some(axes_in(n, &a, xs.len())?.into_iter().map(|v| v as i64).collect()),
        ("Squeeze", None) => {
            let ones: Option<Vec<i64>> = xs
                .iter()
                .enumerate()
                .filter(|(_, d)| d.known() != Some(1))
                .map(|(_, d)| d.known().map(|_| 0))
                .collect::<Option<Vec<i64>>>()
                .map(|_| xs.iter().enumerate().filter(|(_, d)| d.known() == Some(1)).map(|(i, _)| i as i64).collect());
            ones
        }
        (_, Some(a)) => Some(axes_in(n, &a, xs.len() + a.len())?.into_iter().map(|v| v as i64).collect()),
        _ => None,
    };
    let dx = match axes {
        Some(mut a) if !a.is_empty() => {
            a.sort_unstable();
            if n.op_type == "Squeeze" {
                c.unsqueeze(&d, &a)
            } else {
                c.squeeze(&d, &a)
            }
        }
        _ => c.reshape_like(&d, &n.input[0]),
    };
    Ok(first_only(dx, n))
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
    axis_in(n, n.attr_i("axis", default), c.rank(&n.input[0])?)
}

/// y = concat(x₁…xₖ, axis):  dxᵢ = the slice of dy that xᵢ filled
/// y = concat(x₁…xₖ, axis):  dxᵢ = dy[…, offsetᵢ : offsetᵢ + lenᵢ, …] along the axis. Sizes known
/// only at run time (a cache of past keys, a sequence) are read off the inputs' shapes, so the
/// offsets are computed in the graph.
fn concat(n: &NodeProto, dys: &[Option<String>], need: &[bool], c: &mut Ctx) -> Result<Grads> {
    /// An offset along the axis: a number, or a value computed in the graph.
    enum Off {
        Known(i64),
        Value(String),
    }
    fn value(c: &mut Ctx, o: &Off) -> String {
        match o {
            Off::Known(v) => c.const_i64(&[*v]),
            Off::Value(v) => v.clone(),
        }
    }
    let d = dy(n, dys)?;
    let axis = axis_of(n, c, 0)?;
    let a = c.const_i64(&[axis as i64]);
    let mut start = Off::Known(0);
    let mut out = Vec::new();
    for (k, x) in n.input.iter().enumerate() {
        let len = c.shape(x)?.get(axis).and_then(|d| d.known());
        let end = match (&start, len) {
            (Off::Known(s0), Some(l)) => Off::Known(s0 + l),
            _ => {
                // the length along the axis from Shape(x) where only the run knows it
                let l = match len {
                    Some(l) => c.const_i64(&[l]),
                    None => {
                        let shape = c.shape_of(x);
                        let (s, e, z) = (c.const_i64(&[axis as i64]), c.const_i64(&[axis as i64 + 1]), c.const_i64(&[0]));
                        c.op("Slice", &[&shape, &s, &e, &z])
                    }
                };
                let b = value(c, &start);
                Off::Value(c.add(&b, &l))
            }
        };
        out.push(if need[k] {
            let (s, e) = (value(c, &start), value(c, &end));
            Some(c.op("Slice", &[&d, &s, &e, &a]))
        } else {
            None
        });
        start = end;
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

/// The indices along one axis that Slice(start, end, step) picks from `dim` (ONNX Slice-13's
/// clamping; negative steps walk backwards).
pub(crate) fn slice_indices(start: i64, end: i64, step: i64, dim: i64) -> Vec<i64> {
    let (b, e, _) = slice_bounds(start, end, step, dim);
    let mut out = Vec::new();
    let mut i = b;
    while (step > 0 && i < e) || (step < 0 && i > e) {
        out.push(i);
        i += step;
    }
    out
}

/// y = x[starts:ends:steps]:  dx = dy put back where it came from, zeros elsewhere — along
/// axes of step 1 a Pad, along the others the transposed selection matrix (`along_axis`)
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
    let steps = match ints(4) {
        Some(Some(st)) => st,
        Some(None) => return Err(node_error(n, "steps must be constant")),
        None => vec![1; starts.len()],
    };
    let mut pads = vec![0i64; 2 * r];
    let mut g = d;
    if starts.len() != axes.len() || ends.len() != axes.len() || steps.len() != axes.len() {
        return Err(node_error(n, "starts, ends, axes and steps must have one entry per sliced axis"));
    }
    for (k, &a) in axes.iter().enumerate() {
        let a = axis_in(n, a, r)?;
        let Some(dim) = xs[a].known() else {
            // the whole of a symbolic axis (the batch, `x[:, 0]` as the dynamo exporter writes it)
            if starts[k] == 0 && ends[k] >= i32::MAX as i64 && steps[k] == 1 {
                continue;
            }
            return Err(node_error(n, "sliced axis has a symbolic size"));
        };
        if steps[k] == 1 {
            let (b, e, _) = slice_bounds(starts[k], ends[k], 1, dim);
            pads[a] = b;
            pads[a + r] = dim - e.max(b);
        } else {
            let picked = slice_indices(starts[k], ends[k], steps[k], dim);
            let rows = picked.len() as i64;
            let mut m = vec![0.0f32; (rows * dim) as usize];
            for (row, &i) in picked.iter().enumerate() {
                m[row * dim as usize + i as usize] = 1.0;
            }
            g = super::along_axis(c, &g, a, r, (rows, dim), &m, true);
        }
    }
    if pads.iter().all(|&p| p == 0) {
        return Ok(first_only(g, n));
    }
    let p = c.const_i64(&pads);
    Ok(first_only(c.op("Pad", &[&g, &p]), n))
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

/// y = pad(x):  constant mode: dx = the unpadded window of dy. reflect / edge / wrap: each
/// padded axis is a linear map (every output cell copies one input cell), so dx = Mᵀ·dy axis by
/// axis (`along_axis`), which adds up the copies.
fn pad(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let mode = n.attr_s("mode").unwrap_or_else(|| "constant".into());
    let x = &n.input[0];
    let xs = c.shape(x)?.clone();
    let r = xs.len();
    let given = n
        .attr_ints("pads")
        .or_else(|| n.input.get(1).and_then(|p| c.const_ints(p)))
        .ok_or_else(|| node_error(n, "pads must be constant"))?;
    // the axes input (opset 18): pads for those axes only
    let axes = match n.input.get(3).filter(|s| !s.is_empty()) {
        Some(a) => Some(c.const_ints(a).ok_or_else(|| node_error(n, "axes must be constant"))?),
        None => None,
    };
    let pads = full_pads(&given, axes.as_deref(), r).ok_or_else(|| node_error(n, "pads do not match the axes"))?;
    if pads.iter().any(|&p| p < 0) {
        return Err(node_error(n, "negative pads are not supported"));
    }
    let mut starts = Vec::new();
    let mut ends = Vec::new();
    let mut axes = Vec::new();
    let mut g = d;
    for i in 0..r {
        if pads[i] == 0 && pads[i + r] == 0 {
            continue;
        }
        let dim = xs[i].known().ok_or_else(|| node_error(n, "padded axis has a symbolic size"))?;
        if mode == "constant" {
            starts.push(pads[i]);
            ends.push(pads[i] + dim);
            axes.push(i as i64);
            continue;
        }
        let out = dim + pads[i] + pads[i + r];
        let mut m = vec![0.0f32; (out * dim) as usize];
        for j in 0..out {
            let t = j - pads[i];
            let src = match mode.as_str() {
                "edge" => t.clamp(0, dim - 1),
                "wrap" => t.rem_euclid(dim),
                "reflect" => {
                    if dim == 1 {
                        0
                    } else {
                        let period = 2 * (dim - 1);
                        let u = t.rem_euclid(period);
                        if u < dim {
                            u
                        } else {
                            period - u
                        }
                    }
                }
                other => return Err(node_error(n, format!("pad mode '{other}' has no gradient rule"))),
            };
            m[(j * dim + src) as usize] = 1.0;
        }
        g = super::along_axis(c, &g, i, r, (out, dim), &m, true);
    }
    if axes.is_empty() {
        return Ok(first_only(g, n));
    }
    let (s, e, a) = (c.const_i64(&starts), c.const_i64(&ends), c.const_i64(&axes));
    Ok(first_only(c.op("Slice", &[&g, &s, &e, &a]), n))
}

/// y = triu/tril(x, k):  dx = the same triangle of dy
fn trilu(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let mut inputs: Vec<&str> = vec![&d];
    if let Some(k) = n.input.get(1).filter(|s| !s.is_empty()) {
        inputs.push(k);
    }
    let dx = c.g.add("Trilu", &inputs).int("upper", n.attr_i("upper", 1)).output();
    Ok(first_only(dx, n))
}

fn depth_to_space_shape(_: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let x = input_type(s, n, 0)?;
    let b = n.attr_i("blocksize", 1);
    let (c, h) = if n.op_type == "DepthToSpace" { ((1, b * b), (b, 1)) } else { ((b * b, 1), (1, b)) };
    let shape = match x.shape.as_ref().filter(|xs| xs.len() == 4) {
        Some(xs) => {
            let mut out = vec![xs[0].clone()];
            for (i, (mul, div)) in [(1, c), (2, h), (3, h)] {
                out.push(match xs[i] {
                    Dim::Known(v) => Dim::Known(v * mul / div),
                    Dim::Sym(_) => s.fresh_dim("blocks"),
                });
            }
            Some(out)
        }
        None => None,
    };
    set(s, &n.output[0], x.dtype, shape);
    Ok(())
}

fn space_to_depth_shape(g: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    depth_to_space_shape(g, n, s)
}

/// The 6-D reshape–transpose–reshape a block rearrangement is made of (ONNX DepthToSpace-13,
/// SpaceToDepth-13), undone for dy [N, C', H', W'] back to x's [N, C, H, W]: dy is reshaped
/// to the transposed 6-D shape `mid`, transposed by the inverse permutation, reshaped to x.
fn undo_blocks(c: &mut Ctx, d: &str, x: &str, mid: &[i64], perm: &[i64]) -> String {
    let mut inv = vec![0i64; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inv[p as usize] = i as i64;
    }
    let m = c.const_i64(mid);
    let r = c.reshape(d, &m);
    let t = c.transpose(&r, &inv);
    c.reshape_like(&t, x)
}

fn block_dims(n: &NodeProto, c: &Ctx) -> Result<(i64, i64, i64, i64)> {
    let s = c.shape(&n.input[0])?.clone();
    let known: Option<Vec<i64>> = s.get(1..4).and_then(|t| t.iter().map(|d| d.known()).collect());
    match known {
        Some(v) if s.len() == 4 => Ok((v[0], v[1], v[2], n.attr_i("blocksize", 1))),
        _ => Err(node_error(n, "the gradient needs a 4-D input with known C, H, W")),
    }
}

/// DepthToSpace(x [N, C, H, W], b): DCR = reshape [N, b, b, C/b², H, W], transpose
/// [0, 3, 4, 1, 5, 2]; CRD = reshape [N, C/b², b, b, H, W], transpose [0, 1, 4, 2, 5, 3]; both
/// then [N, C/b², H·b, W·b]. dx undoes it.
fn depth_to_space(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let (ch, h, w, b) = block_dims(n, c)?;
    let mid = [0, ch / (b * b), h, b, w, b];
    let perm: &[i64] =
        if n.attr_s("mode").as_deref() == Some("CRD") { &[0, 1, 4, 2, 5, 3] } else { &[0, 3, 4, 1, 5, 2] };
    Ok(first_only(undo_blocks(c, &d, &n.input[0], &mid, perm), n))
}

/// SpaceToDepth(x [N, C, H, W], b) = reshape [N, C, H/b, b, W/b, b], transpose
/// [0, 3, 5, 1, 2, 4], reshape [N, C·b², H/b, W/b]. dx undoes it.
fn space_to_depth(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let (ch, h, w, b) = block_dims(n, c)?;
    let mid = [0, b, b, ch, h / b, w / b];
    Ok(first_only(undo_blocks(c, &d, &n.input[0], &mid, &[0, 3, 5, 1, 2, 4]), n))
}

/// tract 0.23 turns a Slice with a step into its Downsample op and moves that above a Reshape
/// ("Pulling Downsample over Reshape: Invalid axis", LeViT's attention subsampling
/// `x.view(B, r, r, C)[:, ::2, ::2]`). Where a strided Slice reads a Reshape (or such a Slice),
/// each strided axis is taken with a Gather of the picked indices instead: the same values, and a
/// form both engines run. True when node `idx` was rewritten.
pub(crate) fn canonical_strided_slice(g: &mut Graph, s: &Shapes, idx: usize) -> bool {
    let n = &g.nodes[idx];
    if n.op_type != "Slice" || n.input.len() < 5 || n.input[4].is_empty() {
        return false;
    }
    let after_reshape = |v: &str| {
        let mut v = v.to_string();
        loop {
            match g.nodes.iter().find(|m| m.output.first() == Some(&v)) {
                Some(m) if m.op_type == "Reshape" => return true,
                Some(m) if m.op_type == "Slice" || m.op_type == "Gather" => v = m.input[0].clone(),
                _ => return false,
            }
        }
    };
    if !after_reshape(&n.input[0]) {
        return false;
    }
    let ints = |i: usize| crate::ir::constant_ints(g, &n.input[i]);
    let (Some(starts), Some(ends), Some(axes), Some(steps)) = (ints(1), ints(2), ints(3), ints(4)) else {
        return false;
    };
    let Some(xs) = s.shape(&n.input[0]) else { return false };
    let r = xs.len();
    if steps.iter().all(|&st| st == 1) || [ends.len(), axes.len(), steps.len()].iter().any(|&l| l != starts.len()) {
        return false;
    }
    let mut picks = Vec::new();
    for k in 0..starts.len() {
        let Some(a) = (if axes[k] < 0 { axes[k] + r as i64 } else { axes[k] }).try_into().ok().filter(|&a: &usize| a < r)
        else {
            return false;
        };
        let Some(dim) = xs[a].known() else { return false };
        if steps[k] == 0 {
            return false;
        }
        picks.push((a, slice_indices(starts[k], ends[k], steps[k], dim)));
    }
    // the node itself becomes the first Gather; the others follow it
    let out = g.nodes[idx].output[0].clone();
    let name = g.nodes[idx].name.clone();
    let mut v = g.nodes[idx].input[0].clone();
    for (k, (a, picked)) in picks.iter().enumerate() {
        let i = g.add_initializer("slice_indices", crate::onnx::tensor::from_i64("", &[picked.len() as i64], picked));
        let o = if k + 1 == picks.len() { out.clone() } else { g.fresh(&format!("{out}.gather{k}")) };
        if k == 0 {
            let n = &mut g.nodes[idx];
            n.op_type = "Gather".into();
            n.input = vec![v.clone(), i];
            n.output = vec![o.clone()];
            n.attribute = vec![crate::ir::attr_int("axis", *a as i64)];
        } else {
            g.add("Gather", &[&v, &i]).int("axis", *a as i64).name(&format!("{name}/gather{k}")).exact_outputs(&[&o]);
        }
        v = o;
    }
    true
}
