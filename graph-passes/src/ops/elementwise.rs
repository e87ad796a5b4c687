//! Elementwise arithmetic, casts and comparisons. Binary ops broadcast, so each input's gradient
//! is summed back to its shape; comparisons and logic carry no gradient; Floor, Ceil, Round and
//! Sign are piecewise constant (gradient zero, as PyTorch).
use super::{dy, one, op, Family, Gradient as G, OpDef};
use crate::ctx::{Ctx, Grads};
use crate::import::conventions::{self, ClipConvention};
use crate::ir::{constant_value, node_error, Graph, NodeExt};
use crate::onnx::{data_type as dt, tensor, NodeProto};
use crate::shapes::{
    broadcast, fold_binary, fold_where, input_type, same_as_input, set, shape_string, Dim, Shape, Shapes, ValueType,
};
use crate::Result;

pub const FAMILY: Family = Family { name: "elementwise", ops };

fn ops() -> Vec<OpDef> {
    vec![
        op("Add", "7+", broadcast_shape, G::Rule(add)),
        op("Sub", "7+", broadcast_shape, G::Rule(sub)),
        op("Mul", "7+", broadcast_shape, G::Rule(mul)),
        op("Div", "7+", broadcast_shape, G::Rule(div)),
        op("Pow", "7+", broadcast_shape, G::Rule(pow)).notes("a tensor exponent too: d/db = aᵇ·ln a, 0 where a = 0 and b ≥ 0 (as PyTorch)"),
        op("Mod", "10+", broadcast_shape, G::Rule(modulo))
            .notes("floats: d/da = 1, d/db = −floor(a/b) (fmod=0) or −trunc(a/b) (fmod=1), as torch.remainder/fmod; integers carry no gradient"),
        op("Neg", "6+", same_as_input, G::Rule(neg)),
        op("Sqrt", "6+", same_as_input, G::Rule(sqrt)),
        op("Exp", "6+", same_as_input, G::Rule(exp)),
        op("Log", "6+", same_as_input, G::Rule(log)),
        op("Abs", "6+", same_as_input, G::Rule(abs)).notes("at 0: gradient 0 (sign), as PyTorch"),
        op("Reciprocal", "6+", same_as_input, G::Rule(reciprocal)),
        op("Clip", "11+", same_as_input, G::Rule(clip)).notes(
            "at a bound: no gradient (torch 2.15's clamp with number bounds, hardtanh, relu6); half for clamp with tensor bounds (dynamo metadata); --clip-at-bounds pass gives all of it; bounds get no gradient",
        ),
        op("Min", "8+", broadcast_shape, G::Rule(min_max))
            .notes("ties share the gradient equally, as torch.minimum; torch.clamp's Min with a number bound (dynamo metadata): none at the bound"),
        op("Max", "8+", broadcast_shape, G::Rule(min_max))
            .notes("ties share the gradient equally, as torch.maximum; torch.clamp's Max with a number bound (dynamo metadata): none at the bound"),
        op("Sum", "8+", broadcast_shape, G::Rule(sum)),
        op("Mean", "8+", broadcast_shape, G::Rule(mean)),
        op("Where", "9+", broadcast_shape, G::Rule(where_)),
        op("Identity", "1+", identity_shape, G::Rule(identity)),
        op("Cast", "6+", cast_shape, G::Rule(cast)).notes("between float types; to or from integers: no gradient"),
        op("CastLike", "15+", cast_like_shape, G::Rule(cast_like)),
        op("Dropout", "12+", dropout_shape, G::Rule(dropout))
            .notes("training mode: the train-mode pass draws the mask (an input fed each step); the mask output must be unread"),
        op("Floor", "6+", same_as_input, G::Zero),
        op("Ceil", "6+", same_as_input, G::Zero),
        op("Round", "11+", same_as_input, G::Zero),
        op("Sign", "9+", same_as_input, G::Zero),
        op("Equal", "7+", broadcast_shape, G::None),
        op("Less", "7+", broadcast_shape, G::None),
        op("Greater", "7+", broadcast_shape, G::None),
        op("LessOrEqual", "12+", broadcast_shape, G::None),
        op("GreaterOrEqual", "12+", broadcast_shape, G::None),
        op("Not", "1+", same_as_input, G::None),
        op("And", "7+", broadcast_shape, G::None),
        op("Or", "7+", broadcast_shape, G::None),
        op("Xor", "7+", broadcast_shape, G::None),
        op("BitShift", "11+", broadcast_shape, G::None),
        op("IsNaN", "9+", bool_shape, G::None),
        op("IsInf", "10+", bool_shape, G::None),
    ]
}

// ---- shape rules

/// Numpy broadcasting of every input; bool for comparisons and logic, the value input's type
/// for Where, else the first input's. Small integer vectors are folded (shape arithmetic).
fn broadcast_shape(_: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let op = n.op_type.as_str();
    let types: Vec<ValueType> = (0..n.input.len()).map(|i| input_type(s, n, i)).collect::<Result<_>>()?;
    let shape = if types.iter().all(|t| t.shape.is_some()) {
        let shapes: Vec<&Shape> = types.iter().map(|t| t.shape.as_ref().unwrap()).collect();
        Some(broadcast(&shapes).ok_or_else(|| {
            node_error(
                n,
                format!(
                    "cannot broadcast shapes {}",
                    types.iter().map(|t| shape_string(&t.shape)).collect::<Vec<_>>().join(" and ")
                ),
            )
        })?)
    } else {
        None
    };
    let dtype = match op {
        "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "And" | "Or" | "Xor" => dt::BOOL,
        "Where" => types[1].dtype,
        _ => types[0].dtype,
    };
    let out0 = n.output[0].clone();
    set(s, &out0, dtype, shape);
    // value propagation for shape arithmetic
    let vals: Option<Vec<Vec<Dim>>> = n.input.iter().map(|i| s.values.get(i).cloned()).collect();
    if let Some(vals) = vals {
        let folded = if op == "Where" { fold_where(&vals) } else { fold_binary(op, &vals) };
        if let Some(v) = folded {
            s.values.insert(out0, v);
        }
    }
    Ok(())
}

fn identity_shape(g: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    same_as_input(g, n, s)?;
    if let Some(v) = s.values.get(&n.input[0]).cloned() {
        s.values.insert(n.output[0].clone(), v);
    }
    Ok(())
}

fn cast_shape(g: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let t = input_type(s, n, 0)?;
    let to = n.attr_i("to", dt::FLOAT as i64) as i32;
    set(s, &n.output[0], to, t.shape);
    cast_values(g, n, s, to);
    Ok(())
}

fn cast_like_shape(g: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let t = input_type(s, n, 0)?;
    let like = input_type(s, n, 1)?;
    set(s, &n.output[0], like.dtype, t.shape);
    cast_values(g, n, s, like.dtype);
    Ok(())
}

/// Values cast to an integer type keep their (shape) values; so do small float constants of
/// whole numbers (the dynamo exporter writes `arange(0, n)`'s bounds as float constants cast
/// like n).
fn cast_values(g: &Graph, n: &NodeProto, s: &mut Shapes, to: i32) {
    if to != dt::INT64 && to != dt::INT32 {
        return;
    }
    let v = s.values.get(&n.input[0]).cloned().or_else(|| {
        let t = crate::ir::constant_value(g, &n.input[0])?;
        let f = crate::onnx::tensor::to_f32(t).ok()?;
        (t.dims.len() <= 1 && f.len() <= 64 && f.iter().all(|x| x.fract() == 0.0 && x.abs() < 1e9))
            .then(|| f.iter().map(|&x| Dim::Known(x as i64)).collect())
    });
    if let Some(v) = v {
        s.values.insert(n.output[0].clone(), v);
    }
}

fn dropout_shape(_: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let t = input_type(s, n, 0)?;
    if let Some(mask) = n.output.get(1) {
        set(s, mask, dt::BOOL, t.shape.clone());
    }
    set(s, &n.output[0], t.dtype, t.shape);
    Ok(())
}

fn bool_shape(_: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let t = input_type(s, n, 0)?;
    set(s, &n.output[0], dt::BOOL, t.shape);
    Ok(())
}

// ---- gradient rules

/// y = a + b:  da = dy,  db = dy   (summed over broadcast axes)
fn add(n: &NodeProto, dys: &[Option<String>], need: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let y = &n.output[0];
    let da = if need[0] { Some(c.unbroadcast(&d, &n.input[0], y)?) } else { None };
    let db = if need[1] { Some(c.unbroadcast(&d, &n.input[1], y)?) } else { None };
    Ok(vec![da, db])
}

/// y = a − b:  da = dy,  db = −dy
fn sub(n: &NodeProto, dys: &[Option<String>], need: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let y = &n.output[0];
    let da = if need[0] { Some(c.unbroadcast(&d, &n.input[0], y)?) } else { None };
    let db = if need[1] {
        let nd = c.neg(&d);
        Some(c.unbroadcast(&nd, &n.input[1], y)?)
    } else {
        None
    };
    Ok(vec![da, db])
}

/// y = a · b:  da = dy · b,  db = dy · a
fn mul(n: &NodeProto, dys: &[Option<String>], need: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let (a, b, y) = (&n.input[0], &n.input[1], &n.output[0]);
    let da = if need[0] {
        let t = c.mul(&d, b);
        Some(c.unbroadcast(&t, a, y)?)
    } else {
        None
    };
    let db = if need[1] {
        let t = c.mul(&d, a);
        Some(c.unbroadcast(&t, b, y)?)
    } else {
        None
    };
    Ok(vec![da, db])
}

/// y = a / b:  da = dy / b,  db = −dy · y / b
fn div(n: &NodeProto, dys: &[Option<String>], need: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let (a, b, y) = (&n.input[0], &n.input[1], &n.output[0]);
    let da = if need[0] {
        let t = c.div(&d, b);
        Some(c.unbroadcast(&t, a, y)?)
    } else {
        None
    };
    let db = if need[1] {
        let t = c.mul(&d, y);
        let t = c.div(&t, b);
        let t = c.neg(&t);
        Some(c.unbroadcast(&t, b, y)?)
    } else {
        None
    };
    Ok(vec![da, db])
}

/// y = −x:  dx = −dy
fn neg(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    Ok(one(c.neg(&d)))
}

/// y = x^p (p constant):  dx = dy · p · x^(p−1)
fn pow(n: &NodeProto, dys: &[Option<String>], need: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let (x, e, y) = (&n.input[0], &n.input[1], &n.output[0]);
    let constant =
        constant_value(c.g, e).and_then(|t| tensor::to_f64(t).ok()).filter(|v| v.len() == 1).map(|v| v[0] as f32);
    let mut out = vec![None, None];
    if need[0] {
        let local = match constant {
            Some(2.0) => {
                let two = c.scalar(2.0);
                c.mul(x, &two)
            }
            Some(p) => {
                let pm1 = c.scalar(p - 1.0);
                let xp = c.op("Pow", &[x, &pm1]);
                let ps = c.scalar(p);
                c.mul(&xp, &ps)
            }
            None => {
                // b·a^(b−1) with the exponent a tensor
                let one_ = c.scalar(1.0);
                let em1 = c.sub(e, &one_);
                let xp = c.op("Pow", &[x, &em1]);
                c.mul(&xp, e)
            }
        };
        let dx = c.mul(&d, &local);
        out[0] = Some(c.unbroadcast(&dx, x, y)?);
    }
    if need.get(1).copied().unwrap_or(false) {
        // d/db = aᵇ·ln a, and 0 where a = 0 and b ≥ 0 (PyTorch's pow_backward_exponent)
        let zero = c.scalar(0.0);
        let ln = c.op("Log", &[x]);
        let t = c.mul(y, &ln);
        let a0 = c.op("Equal", &[x, &zero]);
        let b0 = c.op("GreaterOrEqual", &[e, &zero]);
        let both = c.op("And", &[&a0, &b0]);
        let local = c.where_(&both, &zero, &t);
        let de = c.mul(&d, &local);
        out[1] = Some(c.unbroadcast(&de, e, y)?);
    }
    Ok(out)
}

/// y = √x:  dx = dy · 0.5 / y
fn sqrt(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let half = c.scalar(0.5);
    let t = c.div(&half, &n.output[0]);
    Ok(one(c.mul(&d, &t)))
}

/// y = eˣ:  dx = dy · y
fn exp(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    Ok(one(c.mul(&d, &n.output[0])))
}

/// y = ln x:  dx = dy / x
fn log(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    Ok(one(c.div(&d, &n.input[0])))
}

/// y = |x|:  dx = dy · sign(x)
fn abs(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let s = c.op("Sign", &[&n.input[0]]);
    Ok(one(c.mul(&d, &s)))
}

/// y = 1/x:  dx = −dy · y²
fn reciprocal(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let y2 = c.square(&n.output[0]);
    let t = c.mul(&d, &y2);
    Ok(one(c.neg(&t)))
}

/// y = clip(x, lo, hi):  dx = dy where lo < x < hi, else 0 — torch 2.15's clamp with number
/// bounds, hardtanh and relu6 (no gradient where x equals a bound); half of dy at a bound for
/// torch.clamp with tensor bounds (dynamo metadata), all of it with `--clip-at-bounds pass`
/// (`import::conventions`). Bounds get no gradient.
fn clip(n: &NodeProto, dys: &[Option<String>], need: &[bool], c: &mut Ctx) -> Result<Grads> {
    if need.iter().skip(1).any(|&b| b) {
        return Err(node_error(n, "gradient with respect to the clip bounds is not supported"));
    }
    let d = dy(n, dys)?;
    let x = &n.input[0];
    let conv = conventions::clip_convention(n);
    let lo = n
        .input
        .get(1)
        .filter(|s| !s.is_empty())
        .cloned()
        .or_else(|| n.attr("min").map(|_| c.scalar(n.attr_f("min", f32::MIN))));
    let hi = n
        .input
        .get(2)
        .filter(|s| !s.is_empty())
        .cloned()
        .or_else(|| n.attr("max").map(|_| c.scalar(n.attr_f("max", f32::MAX))));
    let zero = c.scalar(0.0);
    let mut g = d;
    for (bound, strict, inclusive) in [(lo, "Greater", "GreaterOrEqual"), (hi, "Less", "LessOrEqual")] {
        let Some(b) = bound else { continue };
        g = match conv {
            ClipConvention::Zero => {
                let ok = c.op(strict, &[x, &b]);
                c.where_(&ok, &g, &zero)
            }
            ClipConvention::Pass => {
                let ok = c.op(inclusive, &[x, &b]);
                c.where_(&ok, &g, &zero)
            }
            ClipConvention::Half => {
                // 1 inside, ½ at the bound, 0 outside
                let inside = c.op(strict, &[x, &b]);
                let at = c.op("Equal", &[x, &b]);
                let (one_, half) = (c.scalar(1.0), c.scalar(0.5));
                let w = c.where_(&at, &half, &zero);
                let w = c.where_(&inside, &one_, &w);
                c.mul(&g, &w)
            }
        };
    }
    let mut out = vec![Some(g)];
    out.resize(n.input.len(), None);
    Ok(out)
}

/// y = max(x₁…xₖ) (or min):  dxᵢ = dy · [xᵢ = y] / #{j : xⱼ = y}   (ties share, as PyTorch)
/// torch.clamp written as Max(x, lo) / Min(x, hi) (the dynamo exporter without its optimizer):
/// with number bounds dx = dy · [x > lo] (or [x < hi]), none at the bound, as torch 2.15's
/// clamp_backward; dlo = dy · [lo > x]. With tensor bounds ties share, as the rule above.
fn min_max(n: &NodeProto, dys: &[Option<String>], need: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let y = &n.output[0];
    if conventions::is_clamp_bound(n) && conventions::clip_convention(n) != ClipConvention::Half {
        let (x, b) = (&n.input[0], &n.input[1]);
        let keep = c.op(if n.op_type == "Max" { "Greater" } else { "Less" }, &[x, b]);
        let zero = c.scalar(0.0);
        let dx = if need[0] {
            let t = c.where_(&keep, &d, &zero);
            Some(c.unbroadcast(&t, x, y)?)
        } else {
            None
        };
        let db = if need[1] {
            let t = c.where_(&keep, &zero, &d);
            Some(c.unbroadcast(&t, b, y)?)
        } else {
            None
        };
        return Ok(vec![dx, db]);
    }
    let masks: Vec<String> = n
        .input
        .iter()
        .map(|x| {
            let e = c.op("Equal", &[x, y]);
            c.mask(&e)
        })
        .collect();
    let mut count = masks[0].clone();
    for m in &masks[1..] {
        count = c.add(&count, m);
    }
    let share = c.div(&d, &count);
    let mut out = Vec::new();
    for (k, x) in n.input.iter().enumerate() {
        out.push(if need[k] {
            let t = c.mul(&share, &masks[k]);
            Some(c.unbroadcast(&t, x, y)?)
        } else {
            None
        });
    }
    Ok(out)
}

/// y = where(cond, a, b):  da = dy where cond, db = dy where not cond
fn where_(n: &NodeProto, dys: &[Option<String>], need: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let (cond, y) = (&n.input[0], &n.output[0]);
    let zero = c.scalar(0.0);
    let da = if need[1] {
        let t = c.where_(cond, &d, &zero);
        Some(c.unbroadcast(&t, &n.input[1], y)?)
    } else {
        None
    };
    let db = if need[2] {
        let t = c.where_(cond, &zero, &d);
        Some(c.unbroadcast(&t, &n.input[2], y)?)
    } else {
        None
    };
    Ok(vec![None, da, db])
}

/// y = x:  dx = dy
fn identity(n: &NodeProto, dys: &[Option<String>], _: &[bool], _c: &mut Ctx) -> Result<Grads> {
    Ok(one(dy(n, dys)?))
}

/// y = cast(x) between float types:  dx = cast(dy) back to x's type
fn cast(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let from = c.shapes.get(&n.input[0]).map(|t| t.dtype).unwrap_or(dt::FLOAT);
    if !tensor::is_float(from) {
        return Ok(vec![None]);
    }
    let to = n.attr_i("to", dt::FLOAT as i64) as i32;
    Ok(one(if to == from { d } else { c.cast(&d, from) }))
}

/// y = castlike(x, like) (x cast to like's type; the dynamo exporter wraps scalar constants in
/// it):  dx = cast(dy) back to x's type; `like` only lends its type and gets no gradient
fn cast_like(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let from = c.shapes.get(&n.input[0]).map(|t| t.dtype).unwrap_or(dt::FLOAT);
    if !tensor::is_float(from) {
        return Ok(vec![None, None]);
    }
    let to = c.shapes.get(&n.input[1]).map(|t| t.dtype).unwrap_or(from);
    Ok(vec![Some(if to == from { d } else { c.cast(&d, from) }), None])
}

/// Dropout at inference (no training_mode input): y = x,  dx = dy. The train-mode pass replaces
/// training Dropout by an explicit mask multiplication before autodiff runs.
fn dropout(n: &NodeProto, dys: &[Option<String>], _: &[bool], _c: &mut Ctx) -> Result<Grads> {
    if n.input.get(2).map(|s| !s.is_empty()).unwrap_or(false) {
        return Err(node_error(n, "Dropout with a training_mode input: run the train-mode pass first"));
    }
    let mut out = one(dy(n, dys)?);
    out.resize(n.input.len(), None);
    Ok(out)
}

/// y = x₁ + … + xₖ (broadcasting):  dxᵢ = dy summed to xᵢ's shape
fn sum(n: &NodeProto, dys: &[Option<String>], need: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let y = &n.output[0];
    n.input.iter().zip(need).map(|(x, &k)| if k { c.unbroadcast(&d, x, y).map(Some) } else { Ok(None) }).collect()
}

/// y = (x₁ + … + xₖ)/k:  dxᵢ = dy/k summed to xᵢ's shape
fn mean(n: &NodeProto, dys: &[Option<String>], need: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let k = c.scalar(1.0 / n.input.len() as f32);
    let dk = c.mul(&d, &k);
    let y = &n.output[0];
    n.input.iter().zip(need).map(|(x, &k)| if k { c.unbroadcast(&dk, x, y).map(Some) } else { Ok(None) }).collect()
}

/// y = a mod b on floats, y = a − b·q with q = floor(a/b) (fmod = 0, torch.remainder) or
/// trunc(a/b) (fmod = 1, torch.fmod):  da = dy,  db = −dy·q   (q piecewise constant)
fn modulo(n: &NodeProto, dys: &[Option<String>], need: &[bool], c: &mut Ctx) -> Result<Grads> {
    let float = c.shapes.get(&n.input[0]).map(|t| tensor::is_float(t.dtype)).unwrap_or(false);
    if !float {
        return Ok(vec![None, None]);
    }
    let d = dy(n, dys)?;
    let (a, b, y) = (&n.input[0], &n.input[1], &n.output[0]);
    let da = if need[0] { Some(c.unbroadcast(&d, a, y)?) } else { None };
    let db = if need[1] {
        let ratio = c.div(a, b);
        let q = if n.attr_i("fmod", 0) != 0 {
            // trunc(r) = sign(r)·floor(|r|)
            let abs = c.op("Abs", &[&ratio]);
            let fl = c.op("Floor", &[&abs]);
            let sg = c.op("Sign", &[&ratio]);
            c.mul(&sg, &fl)
        } else {
            c.op("Floor", &[&ratio])
        };
        let t = c.mul(&d, &q);
        let t = c.neg(&t);
        Some(c.unbroadcast(&t, b, y)?)
    } else {
        None
    };
    Ok(vec![da, db])
}
