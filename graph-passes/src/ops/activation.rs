//! Activations and other smooth elementwise functions, with PyTorch's convention at every kink
//! (written beside each rule): ReLU at 0 gives 0; LeakyReLU/PReLU at 0 the negative slope;
//! HardSwish, HardSigmoid and ThresholdedReLU as aten's *_backward.
use std::f32::consts::PI;

use super::{dy, one, op, Family, Gradient as G, OpDef};
use crate::ctx::{Ctx, Grads};
use crate::ir::NodeExt;
use crate::onnx::NodeProto;
use crate::shapes::same_as_input;
use crate::Result;

pub const FAMILY: Family = Family { name: "activation", ops };

fn ops() -> Vec<OpDef> {
    vec![
        op("Relu", "6+", same_as_input, G::Rule(relu)).notes("at 0: 0"),
        op("LeakyRelu", "6+", same_as_input, G::Rule(leaky_relu)).notes("at 0: alpha"),
        op("PRelu", "9+", same_as_input, G::Rule(prelu))
            .notes("slope broadcast as ONNX (unidirectional); at 0: the slope"),
        op("Sigmoid", "6+", same_as_input, G::Rule(sigmoid)),
        op("Tanh", "6+", same_as_input, G::Rule(tanh)),
        op("Erf", "9+", same_as_input, G::Rule(erf)),
        op("Gelu", "20+", same_as_input, G::Rule(gelu)).notes("approximate none and tanh"),
        op("HardSigmoid", "6+", same_as_input, G::Rule(hard_sigmoid))
            .notes("at the ends of the linear part (αx+β = 0 or 1): 0, as hardsigmoid_backward"),
        op("HardSwish", "14+", same_as_input, G::Rule(hard_swish))
            .notes("x ≤ −3: 0, −3 < x < 3: x/3 + 1/2, x ≥ 3: 1, as torch 2.15's hardswish_backward"),
        op("Softplus", "1+", same_as_input, G::Rule(softplus)),
        op("Softsign", "1+", same_as_input, G::Rule(softsign)),
        op("Elu", "6+", same_as_input, G::Rule(elu)).notes("at 0: alpha, as elu_backward"),
        op("Selu", "6+", same_as_input, G::Rule(selu)).notes("at 0: gamma·alpha"),
        op("Celu", "12+", same_as_input, G::Lowered(celu_lower))
            .notes("written out as max(0, x) + min(0, α(e^(x/α) − 1)): tract 0.23 drops the α factor for α ≠ 1"),
        op("Mish", "18+", same_as_input, G::Rule(mish)),
        op("ThresholdedRelu", "10+", same_as_input, G::Rule(thresholded_relu)).notes("at alpha: 0"),
        op("Sin", "7+", same_as_input, G::Rule(sin)),
        op("Cos", "7+", same_as_input, G::Rule(cos)),
        op("Tan", "7+", same_as_input, G::Rule(tan)),
        op("Asin", "7+", same_as_input, G::Rule(asin)),
        op("Acos", "7+", same_as_input, G::Rule(acos)),
        op("Atan", "7+", same_as_input, G::Rule(atan)),
        op("Sinh", "9+", same_as_input, G::Rule(sinh)),
        op("Cosh", "9+", same_as_input, G::Rule(cosh)),
    ]
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

/// y = x·relu6(x + 3)/6:  dx = dy·0 for x ≤ −3, dy·(x/3 + 1/2) for −3 < x < 3, dy for x ≥ 3
/// (torch 2.15's hardswish_backward at the kinks: 0 at −3, 1 at 3)
fn hard_swish(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let x = &n.input[0];
    let (lo, hi) = (c.scalar(-3.0), c.scalar(3.0));
    let (third, half, zero, one_) = (c.scalar(1.0 / 3.0), c.scalar(0.5), c.scalar(0.0), c.scalar(1.0));
    let mid = c.mul(x, &third);
    let mid = c.add(&mid, &half);
    let below = c.op("LessOrEqual", &[x, &lo]);
    let within = c.op("Less", &[x, &hi]);
    let upper = c.where_(&within, &mid, &one_);
    let slope = c.where_(&below, &zero, &upper);
    Ok(one(c.mul(&d, &slope)))
}

/// y = max(0, min(1, αx + β)):  dx = dy·α where 0 < αx + β < 1, else 0
fn hard_sigmoid(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let (alpha, beta) = (n.attr_f("alpha", 0.2), n.attr_f("beta", 0.5));
    let x = &n.input[0];
    let (a, b) = (c.scalar(alpha), c.scalar(beta));
    let ax = c.mul(x, &a);
    let z = c.add(&ax, &b);
    let (zero, one_) = (c.scalar(0.0), c.scalar(1.0));
    let above = c.op("Greater", &[&z, &zero]);
    let below = c.op("Less", &[&z, &one_]);
    let inside = c.op("And", &[&above, &below]);
    let m = c.mask(&inside);
    let da = c.mul(&d, &a);
    Ok(one(c.mul(&da, &m)))
}

/// y = ln(1 + eˣ):  dx = dy·σ(x)
fn softplus(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let s = c.op("Sigmoid", &[&n.input[0]]);
    Ok(one(c.mul(&d, &s)))
}

/// y = x/(1 + |x|):  dx = dy/(1 + |x|)²
fn softsign(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let a = c.op("Abs", &[&n.input[0]]);
    let one_ = c.scalar(1.0);
    let den = c.add(&a, &one_);
    let den2 = c.square(&den);
    Ok(one(c.div(&d, &den2)))
}

/// y = x (x > 0), α(eˣ − 1) (x ≤ 0):  dx = dy (x > 0), dy·α·eˣ (x ≤ 0)
fn elu(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let x = &n.input[0];
    let alpha = c.scalar(n.attr_f("alpha", 1.0));
    let zero = c.scalar(0.0);
    let pos = c.op("Greater", &[x, &zero]);
    let e = c.exp(x);
    let neg = c.mul(&e, &alpha);
    let one_ = c.scalar(1.0);
    let slope = c.where_(&pos, &one_, &neg);
    Ok(one(c.mul(&d, &slope)))
}

/// y = γx (x > 0), γα(eˣ − 1) (x ≤ 0):  dx = dy·γ (x > 0), dy·γα·eˣ (x ≤ 0)
fn selu(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let x = &n.input[0];
    let alpha = n.attr_f("alpha", 1.673_263_2);
    let gamma = n.attr_f("gamma", 1.050_701);
    let zero = c.scalar(0.0);
    let pos = c.op("Greater", &[x, &zero]);
    let e = c.exp(x);
    let ga = c.scalar(gamma * alpha);
    let neg = c.mul(&e, &ga);
    let g = c.scalar(gamma);
    let slope = c.where_(&pos, &g, &neg);
    Ok(one(c.mul(&d, &slope)))
}

/// y = max(0, x) + min(0, α(e^(x/α) − 1)) in elementary ops (ONNX Celu-12; tract 0.23 computes
/// e^(x/α) − 1 without the factor α), which autodiff differentiates: dx = dy (x > 0), dy·e^(x/α)
fn celu_lower(n: &NodeProto, c: &mut Ctx) -> Result<()> {
    let x = &n.input[0];
    let alpha = n.attr_f("alpha", 1.0);
    let (zero, one_, a, inv) = (c.scalar(0.0), c.scalar(1.0), c.scalar(alpha), c.scalar(1.0 / alpha));
    let xa = c.mul(x, &inv);
    let e = c.exp(&xa);
    let em1 = c.sub(&e, &one_);
    let neg = c.mul(&em1, &a);
    let lo = c.op("Min", &[&zero, &neg]);
    let hi = c.op("Max", &[&zero, x]);
    let y = c.add(&hi, &lo);
    super::replace_output(c, n, 0, &y);
    Ok(())
}

/// y = x (x > 0), s·x (x ≤ 0), s broadcast to x:  dx = dy (x > 0), s·dy (x ≤ 0);
/// ds = Σ dy·x over x ≤ 0, summed to s's shape
fn prelu(n: &NodeProto, dys: &[Option<String>], need: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let (x, slope, y) = (&n.input[0], &n.input[1], &n.output[0]);
    let zero = c.scalar(0.0);
    let pos = c.op("Greater", &[x, &zero]);
    let dx = if need[0] {
        let sd = c.mul(&d, slope);
        let g = c.where_(&pos, &d, &sd);
        Some(c.unbroadcast(&g, x, y)?)
    } else {
        None
    };
    let ds = if need.get(1).copied().unwrap_or(false) {
        let xd = c.mul(&d, x);
        let g = c.where_(&pos, &zero, &xd);
        Some(c.unbroadcast(&g, slope, y)?)
    } else {
        None
    };
    Ok(vec![dx, ds])
}

/// y = x·tanh(softplus(x)):  dx = dy·(t + x·(1 − t²)·σ(x)), t = tanh(softplus(x))
fn mish(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let x = &n.input[0];
    let sp = c.op("Softplus", &[x]);
    let t = c.op("Tanh", &[&sp]);
    let one_ = c.scalar(1.0);
    let t2 = c.square(&t);
    let omt2 = c.sub(&one_, &t2);
    let s = c.op("Sigmoid", &[x]);
    let r = c.mul(&omt2, &s);
    let r = c.mul(&r, x);
    let slope = c.add(&t, &r);
    Ok(one(c.mul(&d, &slope)))
}

/// y = x (x > α), 0 otherwise:  dx = dy·[x > α]
fn thresholded_relu(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let a = c.scalar(n.attr_f("alpha", 1.0));
    let above = c.op("Greater", &[&n.input[0], &a]);
    let m = c.mask(&above);
    Ok(one(c.mul(&d, &m)))
}

/// y = sin x:  dx = dy·cos x
fn sin(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let cs = c.op("Cos", &[&n.input[0]]);
    Ok(one(c.mul(&d, &cs)))
}

/// y = cos x:  dx = −dy·sin x
fn cos(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let sn = c.op("Sin", &[&n.input[0]]);
    let t = c.mul(&d, &sn);
    Ok(one(c.neg(&t)))
}

/// y = tan x:  dx = dy·(1 + y²)
fn tan(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let y2 = c.square(&n.output[0]);
    let one_ = c.scalar(1.0);
    let t = c.add(&one_, &y2);
    Ok(one(c.mul(&d, &t)))
}

/// y = asin x:  dx = dy/√(1 − x²)
fn asin(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let r = inv_sqrt_one_minus_square(c, &n.input[0]);
    Ok(one(c.mul(&d, &r)))
}

/// y = acos x:  dx = −dy/√(1 − x²)
fn acos(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let r = inv_sqrt_one_minus_square(c, &n.input[0]);
    let t = c.mul(&d, &r);
    Ok(one(c.neg(&t)))
}

fn inv_sqrt_one_minus_square(c: &mut Ctx, x: &str) -> String {
    let x2 = c.square(x);
    let one_ = c.scalar(1.0);
    let t = c.sub(&one_, &x2);
    let sq = c.sqrt(&t);
    c.op("Reciprocal", &[&sq])
}

/// y = atan x:  dx = dy/(1 + x²)
fn atan(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let x2 = c.square(&n.input[0]);
    let one_ = c.scalar(1.0);
    let t = c.add(&one_, &x2);
    Ok(one(c.div(&d, &t)))
}

/// y = sinh x:  dx = dy·cosh x
fn sinh(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let t = c.op("Cosh", &[&n.input[0]]);
    Ok(one(c.mul(&d, &t)))
}

/// y = cosh x:  dx = dy·sinh x
fn cosh(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let t = c.op("Sinh", &[&n.input[0]]);
    Ok(one(c.mul(&d, &t)))
}
