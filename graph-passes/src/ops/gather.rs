//! Gather (embeddings), GatherElements, GatherND: gradients scatter-add back, so repeated indices
//! accumulate. ScatterElements, ScatterND: the written cells' gradient goes to the updates.
use super::{dy, op, Family, Gradient as G, OpDef};
use crate::ctx::{Ctx, Grads};
use crate::import::conventions;
use crate::ir::{node_error, Graph, NodeExt};
use crate::onnx::NodeProto;
use crate::shapes::{axis_in, data_dependent, input_type, ints_of, same_as_input, set, Dim, Shapes};
use crate::Result;

pub const FAMILY: Family = Family { name: "gather", ops };

fn ops() -> Vec<OpDef> {
    vec![
        op("Gather", "13+", gather_shape, G::Rule(gather))
            .notes("any axis, negative indices; nn.Embedding's padding_idx (no gradient for that row) and scale_grad_by_freq"),
        op("GatherElements", "13+", gather_elements_shape, G::Rule(gather_elements)),
        op("GatherND", "13+", gather_nd_shape, G::Rule(gather_nd))
            .notes("batch_dims 0 and 1; repeated indices add up; negative indices (tract 0.23's GatherND fails on them: ONNX Runtime)"),
        op("ScatterElements", "16+", same_as_input, G::Rule(scatter_elements))
            .notes("reduction none and add (mul/max/min not covered)"),
        op("ScatterND", "16+", same_as_input, G::Rule(scatter_nd)).notes("reduction none and add (mul/max/min not covered)"),
        op("OneHot", "11+", one_hot_shape, G::None),
        op("NonZero", "13+", data_dependent, G::None),
    ]
}

fn gather_shape(g: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let out0 = n.output.first().cloned().unwrap_or_default();
    let x = input_type(s, n, 0)?;
    let idx = input_type(s, n, 1)?;
    let shape = match (&x.shape, &idx.shape) {
        (Some(xs), Some(is)) => {
            let axis = axis_in(n, n.attr_i("axis", 0), xs.len())?;
            let mut out = xs[..axis].to_vec();
            out.extend(is.iter().cloned());
            out.extend(xs[axis + 1..].iter().cloned());
            Some(out)
        }
        _ => None,
    };
    if let (Some(v), Some(i)) = (s.values.get(&n.input[0]).cloned(), ints_of(g, s, &n.input[1])) {
        let picked: Option<Vec<Dim>> =
            i.iter().map(|&k| v.get(if k < 0 { (k + v.len() as i64) as usize } else { k as usize }).cloned()).collect();
        if let Some(p) = picked {
            s.values.insert(out0.clone(), p);
        }
    }
    set(s, &out0, x.dtype, shape);
    Ok(())
}

fn gather_elements_shape(_: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let out0 = n.output.first().cloned().unwrap_or_default();
    let x = input_type(s, n, 0)?;
    let idx = input_type(s, n, 1)?;
    set(s, &out0, x.dtype, idx.shape);
    Ok(())
}

fn one_hot_shape(g: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let out0 = n.output.first().cloned().unwrap_or_default();
    let idx = input_type(s, n, 0)?;
    let vals = input_type(s, n, 2)?;
    let depth = ints_of(g, s, &n.input[1]).map(|d| Dim::Known(d[0])).unwrap_or_else(|| s.fresh_dim("depth"));
    let shape = match idx.shape {
        Some(is) => {
            let axis = axis_in(n, n.attr_i("axis", -1), is.len() + 1)?;
            let mut out = is.clone();
            out.insert(axis, depth);
            Some(out)
        }
        None => None,
    };
    set(s, &out0, vals.dtype, shape);
    Ok(())
}

/// GatherND(data [d₀…], indices [i₀…, q], batch_dims b): indices[:-1] ++ data[b + q:] (the batch
/// axes once).
fn gather_nd_shape(_: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let x = input_type(s, n, 0)?;
    let i = input_type(s, n, 1)?;
    let b = n.attr_i("batch_dims", 0) as usize;
    let shape = match (&x.shape, &i.shape) {
        (Some(xs), Some(is)) if !is.is_empty() => match is.last().and_then(|d| d.known()) {
            Some(q) if b + (q as usize) <= xs.len() => {
                let mut out = is[..is.len() - 1].to_vec();
                out.extend(xs[b + q as usize..].iter().cloned());
                Some(out)
            }
            _ => None,
        },
        _ => None,
    };
    set(s, &n.output[0], x.dtype, shape);
    Ok(())
}

/// y = gather(x, idx, axis a):  dx = zeros with dy scattered back (added) along a.
/// - a constant scalar index k (`x[:, 0]`, ViT's class token): dx = Pad(Unsqueeze(dy, a)) with k
///   zeros before and (s − k − 1) after along a;
/// - axis 0 (embeddings): ScatterND(zeros, idx[..., None], dy, reduction = add);
/// - other axes: the same with a moved to the front, x's dims (a, …) and dy's (idx dims, …),
///   and moved back.
///
/// Negative indices count from the end (ONNX Gather-13), so they are taken modulo s first.
fn gather(n: &NodeProto, dys: &[Option<String>], need: &[bool], c: &mut Ctx) -> Result<Grads> {
    if need.get(1).copied().unwrap_or(false) {
        return Err(node_error(n, "indices carry no gradient"));
    }
    let d = dy(n, dys)?;
    let table = &n.input[0];
    let r = c.rank(table)? as i64;
    let a = axis_in(n, n.attr_i("axis", 0), r as usize)? as i64;
    let s = c.shape(table)?[a as usize].known();
    let idx_rank = c.rank(&n.input[1])? as i64;
    // constant scalar index: pad
    if let (Some(s), Some(k), 0) = (s, c.const_ints(&n.input[1]).and_then(|v| v.first().copied()), idx_rank) {
        if k < -s || k >= s {
            return Err(node_error(n, format!("index {k} is out of range for an axis of size {s}")));
        }
        let k = if k < 0 { k + s } else { k };
        let u = c.unsqueeze(&d, &[a]);
        let mut pads = vec![0i64; 2 * r as usize];
        pads[a as usize] = k;
        pads[(a + r) as usize] = s - k - 1;
        let p = c.const_i64(&pads);
        return Ok(vec![Some(c.op("Pad", &[&u, &p])), None]);
    }
    if c.opset < 16 {
        return Err(node_error(
            n,
            format!("the Gather gradient needs opset ≥ 16 (ScatterND reduction), the model has {}", c.opset),
        ));
    }
    // indices in [0, s)
    let ids = match s {
        Some(s) => {
            let zero = c.g.add_initializer("zero_i", crate::onnx::tensor::from_i64("", &[], &[0]));
            let size = c.g.add_initializer("size_i", crate::onnx::tensor::from_i64("", &[], &[s]));
            let neg = c.op("Less", &[&n.input[1], &zero]);
            let wrapped = c.op("Add", &[&n.input[1], &size]);
            c.where_(&neg, &wrapped, &n.input[1])
        }
        None => n.input[1].clone(),
    };
    let ids = if c.shapes.get(&n.input[1]).map(|t| t.dtype) == Some(crate::onnx::data_type::INT32) {
        c.cast(&ids, crate::onnx::data_type::INT64)
    } else {
        ids
    };
    let ids = c.unsqueeze(&ids, &[-1]);
    if a == 0 {
        let zeros = c.zeros_like(table);
        let mut dt = c.g.add("ScatterND", &[&zeros, &ids, &d]).string("reduction", "add").output();
        if conventions::scale_grad_by_freq(n) {
            dt = by_inverse_frequency(n, c, &dt, &ids)?;
        }
        if let Some(k) = conventions::padding_idx(n) {
            dt = zero_row(n, c, &dt, k)?;
        }
        return Ok(vec![Some(dt), None]);
    }
    // x: [d0 … d(a−1), s, rest] → [s, d0 … d(a−1), rest]
    let xperm: Vec<i64> = std::iter::once(a).chain(0..a).chain(a + 1..r).collect();
    let xt = c.transpose(table, &xperm);
    // dy: [d0 … d(a−1), i0 … i(q−1), rest] → [i…, d0 … d(a−1), rest]
    let q = idx_rank;
    let ry = r - 1 + q;
    let yperm: Vec<i64> = (a..a + q).chain(0..a).chain(a + q..ry).collect();
    let dyt = c.transpose(&d, &yperm);
    let zeros = c.zeros_like(&xt);
    let g = c.g.add("ScatterND", &[&zeros, &ids, &dyt]).string("reduction", "add").output();
    let mut inv = vec![0i64; r as usize];
    for (i, &p) in xperm.iter().enumerate() {
        inv[p as usize] = i as i64;
    }
    Ok(vec![Some(c.transpose(&g, &inv)), None])
}

/// nn.Embedding(padding_idx=k): row k of the table's gradient is zero (PyTorch's
/// embedding_backward skips it): dW[k] = 0, written over with ScatterND (reduction none).
fn zero_row(n: &NodeProto, c: &mut Ctx, dt: &str, k: i64) -> Result<String> {
    let d = c.shape(&n.input[0])?.get(1..).map(|r| r.to_vec()).unwrap_or_default();
    let mut dims = vec![1i64];
    for x in &d {
        dims.push(x.known().ok_or_else(|| node_error(n, "an embedding table with a padding row must have a known shape"))?);
    }
    let zeros = c.const_f32(&dims, &vec![0.0; dims.iter().product::<i64>() as usize]);
    let row = c.g.add_initializer("padding_row", crate::onnx::tensor::from_i64("", &[1, 1], &[k]));
    Ok(c.op("ScatterND", &[dt, &row, &zeros]))
}

/// nn.Embedding(scale_grad_by_freq=True): each row's gradient divided by the number of times
/// its index occurs in the batch: dW[r] = Σ dy[i : idx_i = r] / #{i : idx_i = r}.
fn by_inverse_frequency(n: &NodeProto, c: &mut Ctx, dt: &str, ids: &str) -> Result<String> {
    let rows = c.shape(&n.input[0])?.first().and_then(|d| d.known());
    let Some(rows) = rows else { return Err(node_error(n, "scale_grad_by_freq needs the table's row count")) };
    let zeros = c.const_f32(&[rows], &vec![0.0; rows as usize]);
    // one count per index: ones shaped like the indices (without the trailing 1)
    let flat_ids = c.squeeze(ids, &[-1]);
    let shape = c.shape_of(&flat_ids);
    let one = c.const_f32(&[1], &[1.0]);
    let ones = c.op("Expand", &[&one, &shape]);
    let counts = c.g.add("ScatterND", &[&zeros, ids, &ones]).string("reduction", "add").output();
    let floor = c.scalar(1.0);
    let counts = c.op("Max", &[&counts, &floor]);
    let r = c.rank(&n.input[0])? as i64;
    let counts = c.unsqueeze(&counts, &(1..r).collect::<Vec<_>>());
    Ok(c.div(dt, &counts))
}

/// y = gather_elements(x, idx, axis):  dx = ScatterElements(zeros, idx, dy, axis, add)
fn gather_elements(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    if c.opset < 16 {
        return Err(node_error(n, format!("the GatherElements gradient needs opset ≥ 16, the model has {}", c.opset)));
    }
    let zeros = c.zeros_like(&n.input[0]);
    let dx =
        c.g.add("ScatterElements", &[&zeros, &n.input[1], &d])
            .int("axis", n.attr_i("axis", 0))
            .string("reduction", "add")
            .output();
    Ok(vec![Some(dx), None])
}

/// GatherND's indices made batch_dims = 0 and non-negative: indices [b₀, i…, q] with
/// batch_dims = 1 gain the batch coordinate in front ([b₀, i…, 1 + q]).
fn nd_indices(n: &NodeProto, c: &mut Ctx) -> Result<String> {
    let data = &n.input[0];
    let idx = &n.input[1];
    let ir = c.rank(idx)?;
    let q = c.shape(idx)?[ir - 1].known().ok_or_else(|| node_error(n, "the last axis of indices must be known"))?;
    let b = n.attr_i("batch_dims", 0);
    let idx = if c.shapes.get(idx).map(|t| t.dtype) == Some(crate::onnx::data_type::INT32) {
        c.cast(idx, crate::onnx::data_type::INT64)
    } else {
        idx.clone()
    };
    // negative indices count from the end of their data axis
    let ds = c.shape(data)?.clone();
    if b < 0 || q < 0 || (b + q) as usize > ds.len() {
        return Err(node_error(n, format!("batch_dims {b} and index depth {q} do not fit data of rank {}", ds.len())));
    }
    let dims: Option<Vec<i64>> = ds[b as usize..(b + q) as usize].iter().map(|d| d.known()).collect();
    let size = match dims {
        Some(dims) => c.g.add_initializer("nd_sizes", crate::onnx::tensor::from_i64("", &[q], &dims)),
        // sizes known at run time (a sequence length): read off the data's shape
        None => {
            let shape = c.shape_of(data);
            let (st, en, ax) = (c.const_i64(&[b]), c.const_i64(&[b + q]), c.const_i64(&[0]));
            c.op("Slice", &[&shape, &st, &en, &ax])
        }
    };
    let zero = c.g.add_initializer("zero_i", crate::onnx::tensor::from_i64("", &[], &[0]));
    let neg = c.op("Less", &[&idx, &zero]);
    let wrapped = c.op("Add", &[&idx, &size]);
    let idx = c.where_(&neg, &wrapped, &idx);
    match b {
        0 => Ok(idx),
        1 => {
            // the batch coordinate: Range(0, B) shaped [B, 1, …, 1], expanded to [B, i…, 1]
            let shape = c.shape_of(&idx);
            let (s0, e1, ax0) = (c.const_i64(&[0]), c.const_i64(&[1]), c.const_i64(&[0]));
            let bsz = c.op("Slice", &[&shape, &s0, &e1, &ax0]);
            let bsc = c.squeeze(&bsz, &[0]);
            let (zero_s, one_s) = (
                c.g.add_initializer("zero_s", crate::onnx::tensor::from_i64("", &[], &[0])),
                c.g.add_initializer("one_s", crate::onnx::tensor::from_i64("", &[], &[1])),
            );
            let range = c.op("Range", &[&zero_s, &bsc, &one_s]);
            let tail: Vec<i64> = (1..ir as i64).collect();
            let col = c.unsqueeze(&range, &tail);
            let r1 = ir as i64 - 1;
            let (st, en, ax) = (c.const_i64(&[0]), c.const_i64(&[r1]), c.const_i64(&[0]));
            let lead = c.op("Slice", &[&shape, &st, &en, &ax]);
            let one = c.const_i64(&[1]);
            let target = c.g.add("Concat", &[&lead, &one]).int("axis", 0).output();
            let bcol = c.op("Expand", &[&col, &target]);
            Ok(c.g.add("Concat", &[&bcol, &idx]).int("axis", -1).output())
        }
        _ => Err(node_error(n, format!("the gradient covers batch_dims 0 and 1, this node has {b}"))),
    }
}

/// y = gather_nd(x, idx):  dx = ScatterND(zeros, idx, dy, reduction = add) (repeated indices
/// add up); batch_dims = 1 by indexing the batch explicitly
fn gather_nd(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    if c.opset < 16 {
        return Err(node_error(
            n,
            format!("the GatherND gradient needs opset ≥ 16 (ScatterND reduction), the model has {}", c.opset),
        ));
    }
    let idx = nd_indices(n, c)?;
    let zeros = c.zeros_like(&n.input[0]);
    let dx = c.g.add("ScatterND", &[&zeros, &idx, &d]).string("reduction", "add").output();
    Ok(vec![Some(dx), None])
}

/// The reduction of a Scatter node: none or add (others refused).
fn scatter_reduction(n: &NodeProto) -> Result<bool> {
    match n.attr_s("reduction").as_deref() {
        None | Some("none") | Some("") => Ok(false),
        Some("add") => Ok(true),
        Some(other) => Err(node_error(n, format!("reduction '{other}' has no gradient rule (none and add do)"))),
    }
}

/// y = scatter_elements(x, idx, u, axis):  reduction none: dx = dy with the written cells
/// zeroed, du = gather_elements(dy, idx); add: dx = dy, du = gather_elements(dy, idx)
fn scatter_elements(n: &NodeProto, dys: &[Option<String>], need: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let add = scatter_reduction(n)?;
    let axis = n.attr_i("axis", 0);
    let (idx, u) = (&n.input[1], &n.input[2]);
    let dx = if !need[0] {
        None
    } else if add {
        Some(d.clone())
    } else {
        let z = c.zeros_like(u);
        Some(c.g.add("ScatterElements", &[&d, idx, &z]).int("axis", axis).output())
    };
    let du = if need.get(2).copied().unwrap_or(false) {
        Some(c.g.add("GatherElements", &[&d, idx]).int("axis", axis).output())
    } else {
        None
    };
    Ok(vec![dx, None, du])
}

/// y = scatter_nd(x, idx, u):  reduction none: dx = dy with the written cells zeroed,
/// du = gather_nd(dy, idx); add: dx = dy, du = gather_nd(dy, idx)
fn scatter_nd(n: &NodeProto, dys: &[Option<String>], need: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let add = scatter_reduction(n)?;
    let (idx, u) = (&n.input[1], &n.input[2]);
    let dx = if !need[0] {
        None
    } else if add {
        Some(d.clone())
    } else {
        let z = c.zeros_like(u);
        Some(c.op("ScatterND", &[&d, idx, &z]))
    };
    let du = if need.get(2).copied().unwrap_or(false) { Some(c.op("GatherND", &[&d, idx])) } else { None };
    Ok(vec![dx, None, du])
}
