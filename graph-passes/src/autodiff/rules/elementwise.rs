//! Elementwise ops. Binary ops broadcast, so each input's gradient is summed back to its shape.
use std::f32::consts::PI;

use super::{dy, one};
use crate::autodiff::{Ctx, Grads, Rule};
use crate::ir::{constant_value, node_error, NodeExt};
use crate::onnx::{data_type as dt, tensor, NodeProto};
use crate::Result;

pub fn rule(op: &str) -> Option<Rule> {
    Some(match op {
        "Add" => add,
        "Sub" => sub,
        "Mul" => mul,
        "Div" => div,
        "Neg" => neg,
        "Pow" => pow,
        "Sqrt" => sqrt,
        "Exp" => exp,
        "Log" => log,
        "Abs" => abs,
        "Reciprocal" => reciprocal,
        "Relu" => relu,
        "LeakyRelu" => leaky_relu,
        "Sigmoid" => sigmoid,
        "Tanh" => tanh,
        "Erf" => erf,
        "Gelu" => gelu,
        "Clip" => clip,
        "Min" | "Max" => min_max,
        "Where" => where_,
        "Identity" => identity,
        "Cast" => cast,
        "CastLike" => cast_like,
        "Dropout" => dropout,
        _ => return None,
    })
}

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
    if need.get(1).copied().unwrap_or(false) {
        return Err(node_error(n, "gradient with respect to a non-constant exponent is not supported"));
    }
    let d = dy(n, dys)?;
    let p = constant_value(c.g, &n.input[1])
        .and_then(|t| tensor::to_f64(t).ok())
        .filter(|v| v.len() == 1)
        .ok_or_else(|| node_error(n, "exponent must be a constant scalar"))?[0] as f32;
    let x = &n.input[0];
    let local = if p == 2.0 {
        let two = c.scalar(2.0);
        c.mul(x, &two)
    } else {
        let pm1 = c.scalar(p - 1.0);
        let xp = c.op("Pow", &[x, &pm1]);
        let ps = c.scalar(p);
        c.mul(&xp, &ps)
    };
    let dx = c.mul(&d, &local);
    Ok(vec![Some(c.unbroadcast(&dx, x, &n.output[0])?), None])
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

/// y = max(x, 0):  dx = dy · [y > 0]   (a multiply by a 0/1 mask: ONNX Runtime's Where and
/// Sign are slower). The mask reads the output, [y > 0] = [x > 0], so that x feeds nothing but
/// the ReLU and ONNX Runtime can fuse a Conv with the ReLU after it.
fn relu(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let zero = c.scalar(0.0);
    let pos = c.op("Greater", &[&n.output[0], &zero]);
    let m = c.mask(&pos);
    Ok(one(c.mul(&d, &m)))
}

/// y = x if x > 0 else α·x:  dx = dy where x > 0, else α·dy
fn leaky_relu(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let alpha = c.scalar(n.attr_f("alpha", 0.01));
    let zero = c.scalar(0.0);
    let pos = c.op("Greater", &[&n.input[0], &zero]);
    let ad = c.mul(&d, &alpha);
    Ok(one(c.where_(&pos, &d, &ad)))
}

/// y = σ(x):  dx = dy · y · (1 − y)
fn sigmoid(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let y = &n.output[0];
    let one_ = c.scalar(1.0);
    let omy = c.sub(&one_, y);
    let t = c.mul(y, &omy);
    Ok(one(c.mul(&d, &t)))
}

/// y = tanh(x):  dx = dy · (1 − y²)
fn tanh(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let one_ = c.scalar(1.0);
    let y2 = c.square(&n.output[0]);
    let t = c.sub(&one_, &y2);
    Ok(one(c.mul(&d, &t)))
}

/// y = erf(x):  dx = dy · 2/√π · e^(−x²)
fn erf(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let x2 = c.square(&n.input[0]);
    let nx2 = c.neg(&x2);
    let e = c.exp(&nx2);
    let k = c.scalar(2.0 / PI.sqrt());
    let t = c.mul(&e, &k);
    Ok(one(c.mul(&d, &t)))
}

/// y = x·Φ(x):  dx = dy · (Φ(x) + x·φ(x)),  Φ(x) = ½(1 + erf(x/√2)),  φ(x) = e^(−x²/2)/√(2π)
/// approximate="tanh": y = ½x(1 + t), t = tanh(√(2/π)(x + 0.044715x³)):
///   dx = dy · (½(1 + t) + ½x(1 − t²)·√(2/π)(1 + 3·0.044715x²))
fn gelu(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let x = &n.input[0];
    let half = c.scalar(0.5);
    let one_ = c.scalar(1.0);
    let x2 = c.square(x);
    let local = if n.attr_s("approximate").as_deref() == Some("tanh") {
        let k = c.scalar((2.0 / PI).sqrt());
        let a = c.scalar(0.044715);
        let x3 = c.mul(&x2, x);
        let ax3 = c.mul(&x3, &a);
        let inner = c.add(x, &ax3);
        let u = c.mul(&inner, &k);
        let t = c.op("Tanh", &[&u]);
        let opt = c.add(&one_, &t);
        let left = c.mul(&opt, &half);
        let t2 = c.square(&t);
        let omt2 = c.sub(&one_, &t2);
        let a3 = c.scalar(3.0 * 0.044715);
        let a3x2 = c.mul(&x2, &a3);
        let du = c.add(&one_, &a3x2);
        let du = c.mul(&du, &k);
        let right = c.mul(&omt2, &du);
        let right = c.mul(&right, x);
        let right = c.mul(&right, &half);
        c.add(&left, &right)
    } else {
        let inv_sqrt2 = c.scalar(std::f32::consts::FRAC_1_SQRT_2);
        let xs = c.mul(x, &inv_sqrt2);
        let e = c.op("Erf", &[&xs]);
        let ope = c.add(&one_, &e);
        let cdf = c.mul(&ope, &half);
        let nx2h = c.mul(&x2, &half);
        let nx2h = c.neg(&nx2h);
        let ex = c.exp(&nx2h);
        let k = c.scalar(1.0 / (2.0 * PI).sqrt());
        let pdf = c.mul(&ex, &k);
        let xpdf = c.mul(x, &pdf);
        c.add(&cdf, &xpdf)
    };
    Ok(one(c.mul(&d, &local)))
}

/// y = clip(x, lo, hi):  dx = dy where lo ≤ x ≤ hi (PyTorch's clamp), else 0
fn clip(n: &NodeProto, dys: &[Option<String>], need: &[bool], c: &mut Ctx) -> Result<Grads> {
    if need.iter().skip(1).any(|&b| b) {
        return Err(node_error(n, "gradient with respect to the clip bounds is not supported"));
    }
    let d = dy(n, dys)?;
    let x = &n.input[0];
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
    if let Some(lo) = lo {
        let ok = c.op("GreaterOrEqual", &[x, &lo]);
        g = c.where_(&ok, &g, &zero);
    }
    if let Some(hi) = hi {
        let ok = c.op("LessOrEqual", &[x, &hi]);
        g = c.where_(&ok, &g, &zero);
    }
    let mut out = vec![Some(g)];
    out.resize(n.input.len(), None);
    Ok(out)
}

/// y = max(x₁…xₖ) (or min):  dxᵢ = dy · [xᵢ = y] / #{j : xⱼ = y}   (ties share, as PyTorch)
fn min_max(n: &NodeProto, dys: &[Option<String>], need: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let y = &n.output[0];
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
