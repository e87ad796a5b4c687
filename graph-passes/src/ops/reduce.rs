//! Reductions (Reduce*), ArgMax/ArgMin, CumSum, TopK, Hardmax.
use super::{dy, op, Family, Gradient as G, OpDef};
use crate::ctx::{Ctx, Grads};
use crate::ir::{node_error, Graph, NodeExt};
use crate::onnx::{data_type as dt, NodeProto};
use crate::shapes::{axes_of, input_type, ints_of, reduce_shape, same_as_input, set, Dim, Shapes};
use crate::Result;

pub const FAMILY: Family = Family { name: "reduce", ops };

fn ops() -> Vec<OpDef> {
    vec![
        op("ReduceSum", "13+", reduce_shape_rule, G::Rule(reduce_sum)).notes("axes constant (attribute or input)"),
        op("ReduceMean", "13+", reduce_shape_rule, G::Rule(reduce_mean)).notes("axes constant (attribute or input)"),
        op("ReduceMax", "13+", reduce_shape_rule, G::Rule(reduce_max_min)).notes(
            "ties share the gradient equally (torch.amax, torch.max without dim); torch.max(x, dim) in dynamo metadata: the first maximum, as its index",
        ),
        op("ReduceMin", "13+", reduce_shape_rule, G::Rule(reduce_max_min))
            .notes("ties as ReduceMax (torch.amin; torch.min(x, dim): the first minimum)"),
        op("ReduceProd", "13+", reduce_shape_rule, G::Rule(reduce_prod))
            .notes("zeros handled exactly: one zero gets the product of the others, two or more give 0"),
        op("ReduceL1", "13+", reduce_shape_rule, G::Rule(reduce_l1)).notes("at 0: 0 (sign), as torch.norm(p=1)"),
        op("ReduceL2", "13+", reduce_shape_rule, G::Rule(reduce_l2)).notes("a zero norm gives 0, as torch.linalg.vector_norm"),
        op("ReduceSumSquare", "13+", reduce_shape_rule, G::Rule(reduce_sum_square)),
        op("ReduceLogSumExp", "13+", reduce_shape_rule, G::Rule(reduce_log_sum_exp)),
        op("ArgMax", "13+", reduce_shape_rule, G::None),
        op("ArgMin", "13+", reduce_shape_rule, G::None),
        op("Hardmax", "13+", same_as_input, G::None),
        op("CumSum", "14+", same_as_input, G::Rule(cum_sum)).notes("exclusive and reverse both ways"),
        op("TopK", "11+", top_k_shape, G::Rule(top_k)).notes("values; indices carry no gradient"),
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
            let ax: Vec<usize> = crate::shapes::axes_in(n, &ax, xs.len())?;
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
        (None, None) if !has_axes_input && !keep && !arg && n.attr_i("noop_with_empty_axes", 0) == 0 => Some(vec![]),
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
        Some(a) if !a.is_empty() => {
            crate::shapes::axes_in(n, &a, r as usize)?.into_iter().map(|v| v as i64).collect()
        }
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

/// The gradient list of a Reduce node: dx, and nothing for the axes input.
fn first(dx: String, n: &NodeProto) -> Grads {
    let mut out = vec![Some(dx)];
    out.resize(n.input.len(), None);
    out
}

/// y = max_axes x (or min):  dx = dy·[x = y] / #{x = y} — ties share equally, as torch.amax and
/// torch.max(x) without dim. Where the dynamo metadata says torch.max(x, dim) (aten.max.dim,
/// whose gradient goes through its index), the first extreme in the reduced axes gets it all.
fn reduce_max_min(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let ax = axes(n, c)?;
    let x = n.input[0].clone();
    let y = spread(n, &n.output[0], &ax, c)?;
    let eq = c.op("Equal", &[&x, &y]);
    let mask = c.mask(&eq);
    let by_index = crate::onnx::metadata::fx_call(n)
        .is_some_and(|call| matches!(call.op.as_str(), "max" | "min") && call.args.len() >= 2);
    let dx = if by_index && ax.len() == 1 {
        // the first maximum along the axis: mask minus every tie after an earlier one
        let a = ax[0];
        // CumSum's axis is a 0-D tensor (ONNX CumSum-14; tract insists)
        let axis = c.g.add_initializer("cumsum_axis", crate::onnx::tensor::from_i64("", &[], &[a]));
        let cum = c.g.add("CumSum", &[&mask, &axis]).int("exclusive", 1).output();
        let zero = c.scalar(0.0);
        let none_before = c.op("Equal", &[&cum, &zero]);
        let nb = c.mask(&none_before);
        let firsts = c.mul(&mask, &nb);
        let e = spread(n, &d, &ax, c)?;
        c.mul(&firsts, &e)
    } else {
        let keep = c.reduce_sum(&mask, &ax, true);
        let count = c.expand_like(&keep, &x);
        let e = spread(n, &d, &ax, c)?;
        let share = c.div(&e, &count);
        c.mul(&mask, &share)
    };
    Ok(first(dx, n))
}

/// y = Π_axes x:  dx = dy·Π_{others}. Computed without dividing by zero: with z = [x = 0] and
/// P' = the product of the non-zero entries, dx = dy·P'/x where no entry is 0, dy·P' at the only
/// zero, and 0 where there are two or more zeros (as PyTorch's prod_backward).
fn reduce_prod(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let ax = axes(n, c)?;
    let x = n.input[0].clone();
    let (zero, one_) = (c.scalar(0.0), c.scalar(1.0));
    let z = c.op("Equal", &[&x, &zero]);
    let zf = c.mask(&z);
    let nonzero = c.where_(&z, &one_, &x);
    let p = c.reduce("ReduceProd", &nonzero, &ax, true);
    let p = c.expand_like(&p, &x);
    let zeros = c.reduce_sum(&zf, &ax, true);
    let zeros = c.expand_like(&zeros, &x);
    let none = c.op("Equal", &[&zeros, &zero]);
    let single = c.op("Equal", &[&zeros, &one_]);
    let others_nz = c.div(&p, &nonzero);
    let at_zero = c.where_(&z, &p, &zero);
    let one_zero = c.where_(&single, &at_zero, &zero);
    let local = c.where_(&none, &others_nz, &one_zero);
    let e = spread(n, &d, &ax, c)?;
    Ok(first(c.mul(&local, &e), n))
}

/// y = Σ_axes |x|:  dx = dy·sign(x)   (0 at 0, as torch.norm(p=1))
fn reduce_l1(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let ax = axes(n, c)?;
    let s = c.op("Sign", &[&n.input[0]]);
    let e = spread(n, &d, &ax, c)?;
    Ok(first(c.mul(&s, &e), n))
}

/// y = √(Σ_axes x²):  dx = dy·x/y, and 0 where y = 0 (as torch.linalg.vector_norm's backward)
fn reduce_l2(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let ax = axes(n, c)?;
    let x = n.input[0].clone();
    let y = spread(n, &n.output[0], &ax, c)?;
    let zero = c.scalar(0.0);
    let one_ = c.scalar(1.0);
    let z = c.op("Equal", &[&y, &zero]);
    let safe = c.where_(&z, &one_, &y);
    let e = spread(n, &d, &ax, c)?;
    let q = c.div(&x, &safe);
    let g = c.mul(&q, &e);
    Ok(first(c.where_(&z, &zero, &g), n))
}

/// y = Σ_axes x²:  dx = 2·x·dy
fn reduce_sum_square(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let ax = axes(n, c)?;
    let two = c.scalar(2.0);
    let tx = c.mul(&n.input[0], &two);
    let e = spread(n, &d, &ax, c)?;
    Ok(first(c.mul(&tx, &e), n))
}

/// y = log Σ_axes eˣ:  dx = dy·e^(x − y)   (softmax over the reduced axes)
fn reduce_log_sum_exp(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let ax = axes(n, c)?;
    let y = spread(n, &n.output[0], &ax, c)?;
    let diff = c.sub(&n.input[0], &y);
    let p = c.exp(&diff);
    let e = spread(n, &d, &ax, c)?;
    Ok(first(c.mul(&p, &e), n))
}

/// y = cumsum(x, axis) (exclusive, reverse as given):  dx = cumsum(dy, axis) in the other
/// direction with the same exclusivity (the transpose of a triangular sum).
fn cum_sum(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let rev = n.attr_i("reverse", 0) != 0;
    let dx =
        c.g.add("CumSum", &[&d, &n.input[1]])
            .int("exclusive", n.attr_i("exclusive", 0))
            .int("reverse", if rev { 0 } else { 1 })
            .output();
    Ok(vec![Some(dx), None])
}

/// TopK(x, K, axis): values [.., K, ..] and indices (int64), the same shape.
fn top_k_shape(g: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let x = input_type(s, n, 0)?;
    let k = ints_of(g, s, &n.input[1]).and_then(|v| v.first().copied());
    let a = match &x.shape {
        Some(xs) => crate::shapes::axis_in(n, n.attr_i("axis", -1), xs.len())?,
        None => 0,
    };
    let shape = x.shape.as_ref().map(|xs| {
        let mut out = xs.clone();
        out[a] = match k {
            Some(k) => Dim::Known(k),
            None => s.fresh_dim("k"),
        };
        out
    });
    if let Some(o) = n.output.first() {
        set(s, o, x.dtype, shape.clone());
    }
    if let Some(o) = n.output.get(1) {
        set(s, o, dt::INT64, shape);
    }
    Ok(())
}

/// values = topk(x, K, axis):  dx = zeros with dy scattered to the chosen indices along the axis
/// (distinct indices: no reduction needed)
fn top_k(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let indices = match n.output.get(1).filter(|s| !s.is_empty()) {
        Some(i) => i.clone(),
        None => return Err(node_error(n, "TopK without its Indices output")),
    };
    let zeros = c.zeros_like(&n.input[0]);
    let dx = c.g.add("ScatterElements", &[&zeros, &indices, &d]).int("axis", n.attr_i("axis", -1)).output();
    Ok(vec![Some(dx), None])
}

/// tract 0.23 fails on a CumSum over int64 values cast from int32 ("TDim is not a number": the
/// dynamo export of RoBERTa's position ids, `mask.int()` cast to int64 and summed along the
/// sequence). Where that int32 is itself a cast of a bool (a mask, so the sum is at most the axis
/// length), the sum runs on the int32 values and is cast to int64 after: the same numbers, and a
/// form both engines run. True when node `idx` was rewritten.
pub(crate) fn canonical_cumsum(g: &mut Graph, s: &Shapes, idx: usize) -> bool {
    let n = &g.nodes[idx];
    if n.op_type != "CumSum" || s.get(&n.output[0]).map(|t| t.dtype) != Some(dt::INT64) {
        return false;
    }
    let producer = |v: &str| g.nodes.iter().find(|m| m.output.iter().any(|o| o == v));
    let Some(to64) = producer(&n.input[0]).filter(|m| m.op_type == "Cast") else { return false };
    let narrow = to64.input[0].clone();
    let from_bool = producer(&narrow).is_some_and(|m| {
        m.op_type == "Cast" && s.get(&m.input[0]).map(|t| t.dtype) == Some(dt::BOOL)
    });
    if s.get(&narrow).map(|t| t.dtype) != Some(dt::INT32) || !from_bool {
        return false;
    }
    let out = n.output[0].clone();
    let summed = g.fresh(&format!("{out}.int32"));
    let n = &mut g.nodes[idx];
    n.input[0] = narrow;
    n.output[0] = summed.clone();
    g.add("Cast", &[&summed]).int("to", dt::INT64 as i64).exact_outputs(&[&out]);
    true
}
