//! Softmax, LogSoftmax and the loss ops (opset ≥ 13 semantics: one axis).
use super::{dy, op, Family, Gradient as G, OpDef};
use crate::ctx::{Ctx, Grads};
use crate::ir::{node_error, Graph, NodeExt};
use crate::onnx::{data_type as dt, NodeProto};
use crate::shapes::{input_type, same_as_input, set, Shapes};
use crate::Result;

pub const FAMILY: Family = Family { name: "softmax_loss", ops };

fn ops() -> Vec<OpDef> {
    const LOSS: &str =
        "not implemented in tract (the per-sample-loss pass rewrites a loss at the output into ops it runs)";
    vec![
        op("Softmax", "13+", same_as_input, G::Rule(softmax)),
        op("LogSoftmax", "13+", same_as_input, G::Rule(log_softmax)),
        op("SoftmaxCrossEntropyLoss", "13+", loss_shape, G::Rule(softmax_cross_entropy))
            .notes("[N, C] scores, no class weights, ignore_index outside the classes")
            .no_tract(LOSS),
        op("NegativeLogLikelihoodLoss", "13+", loss_shape, G::Rule(nll_loss))
            .notes("[N, C] scores, no class weights, ignore_index outside the classes")
            .no_tract(LOSS),
    ]
}

fn loss_shape(_: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let out0 = n.output.first().cloned().unwrap_or_default();
    let x = input_type(s, n, 0)?;
    let red = n.attr_s("reduction").unwrap_or_else(|| "mean".into());
    let shape = if red == "none" {
        x.shape.as_ref().map(|xs| {
            let mut o = vec![xs[0].clone()];
            o.extend(xs[2..].iter().cloned());
            o
        })
    } else {
        Some(vec![])
    };
    set(s, &out0, x.dtype, shape);
    if let Some(lp) = n.output.get(1) {
        set(s, lp, x.dtype, x.shape.clone());
    }
    Ok(())
}

fn axis(n: &NodeProto, c: &Ctx) -> Result<i64> {
    if c.opset < 13 {
        return Err(node_error(
            n,
            "Softmax before opset 13 (2-D coercion) has no gradient rule; re-export with opset ≥ 13",
        ));
    }
    Ok(n.attr_i("axis", -1))
}

/// y = softmax(x):  dx = y·(dy − Σ_axis dy·y)
fn softmax(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let a = axis(n, c)?;
    let y = &n.output[0];
    let p = c.mul(&d, y);
    let s = c.reduce_sum(&p, &[a], true);
    let t = c.sub(&d, &s);
    Ok(vec![Some(c.mul(y, &t))])
}

/// y = log softmax(x):  dx = dy − eʸ·Σ_axis dy
fn log_softmax(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let a = axis(n, c)?;
    let s = c.reduce_sum(&d, &[a], true);
    let e = c.exp(&n.output[0]);
    let t = c.mul(&e, &s);
    Ok(vec![Some(c.sub(&d, &t))])
}

/// One-hot rows of `labels` [N] over `classes` (float32 [N, C]).
pub fn one_hot(c: &mut Ctx, labels: &str, classes: i64) -> String {
    let range: Vec<i64> = (0..classes).collect();
    let r = c.const_i64(&range);
    let l = c.unsqueeze(labels, &[1]);
    let eq = c.op("Equal", &[&l, &r]);
    c.mask(&eq)
}

/// The per-sample gradient weights of a reduced loss: dy broadcast to [N, 1].
fn per_sample_weight(n: &NodeProto, d: &str, c: &mut Ctx) -> Result<String> {
    let red = n.attr_s("reduction").unwrap_or_else(|| "mean".into());
    Ok(match red.as_str() {
        "none" => c.unsqueeze(d, &[1]),
        "sum" => d.to_string(),
        "mean" => {
            let labels = &n.input[1];
            let shape = c.shape_of(labels);
            let zero = c.const_i64(&[0]);
            let count = c.g.add("Gather", &[&shape, &zero]).int("axis", 0).output();
            let count = c.cast(&count, dt::FLOAT);
            c.div(d, &count)
        }
        other => return Err(node_error(n, format!("reduction '{other}' is not supported"))),
    })
}

fn check_plain(n: &NodeProto, c: &Ctx) -> Result<i64> {
    if n.input.len() > 2 && !n.input[2].is_empty() {
        return Err(node_error(n, "class weights are not supported by the gradient rule"));
    }
    let xs = c.shape(&n.input[0])?;
    if xs.len() != 2 {
        return Err(node_error(n, "the gradient rule handles [N, C] scores only"));
    }
    check_ignore_index(n, c)?;
    c.shape(&n.input[0])?[1].known().ok_or_else(|| node_error(n, "the number of classes must be known"))
}

/// An ignore_index outside [0, classes) never matches a valid label (PyTorch exports −100),
/// and onnxsam checks labels are in range before running; one inside the range is refused.
pub fn check_ignore_index(n: &NodeProto, c: &Ctx) -> Result<()> {
    if let Some(ix) = n.attr("ignore_index").and_then(|a| a.i) {
        let classes = c.shape(&n.input[0])?.get(1).and_then(|d| d.known());
        if ix >= 0 && classes.map(|k| ix < k).unwrap_or(true) {
            return Err(node_error(
                n,
                format!("ignore_index {ix} is a valid class; ignoring samples is not supported"),
            ));
        }
    }
    Ok(())
}

/// ℓᵢ = −log softmax(x)ᵢ,ₜᵢ:  dx = (softmax(x) − onehot(t))·dℓ
fn softmax_cross_entropy(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    if dys.get(1).cloned().flatten().is_some() {
        return Err(node_error(n, "gradient through the log_prob output is not supported"));
    }
    let d = dy(n, dys)?;
    let classes = check_plain(n, c)?;
    let sm = c.g.add("Softmax", &[&n.input[0]]).int("axis", 1).output();
    let oh = one_hot(c, &n.input[1], classes);
    let diff = c.sub(&sm, &oh);
    let w = per_sample_weight(n, &d, c)?;
    Ok(vec![Some(c.mul(&diff, &w)), None])
}

/// ℓᵢ = −x_{i,tᵢ}:  dx = −onehot(t)·dℓ
fn nll_loss(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let classes = check_plain(n, c)?;
    let oh = one_hot(c, &n.input[1], classes);
    let w = per_sample_weight(n, &d, c)?;
    let t = c.mul(&oh, &w);
    Ok(vec![Some(c.neg(&t)), None])
}

/// tract 0.23's LogSoftmax is wrong for a class whose probability underflows float32 (a logit
/// more than ~87 below the largest: a confident wrong prediction): about −87.5 where PyTorch
/// gives x − logsumexp(x) = −100, and an infinite cross-entropy in a model's loss. Written as
/// (x − max) − log Σ exp(x − max) instead: the same values, finite wherever they are, in ops
/// every engine runs. The gradient graph is unchanged (its rule reads only the output). For the
/// tract backend (opset ≥ 13, one axis); returns how many nodes it rewrote.
pub fn max_shifted_log_softmax(g: &mut Graph, opset: i64) -> usize {
    if opset < 13 {
        return 0;
    }
    let targets: Vec<usize> =
        g.nodes.iter().enumerate().filter(|(_, n)| n.op_type == "LogSoftmax" && n.domain.is_empty()).map(|(i, _)| i).collect();
    for &i in &targets {
        let x = g.nodes[i].input[0].clone();
        let a = g.nodes[i].attr_i("axis", -1);
        let mut c = Ctx::new(g, Shapes::default(), opset);
        let m = c.reduce("ReduceMax", &x, &[a], true);
        let shifted = c.sub(&x, &m);
        let e = c.exp(&shifted);
        let z = c.reduce_sum(&e, &[a], true);
        let l = c.op("Log", &[&z]);
        let n = &mut g.nodes[i];
        n.op_type = "Sub".into();
        n.input = vec![shifted, l];
        n.attribute.clear();
    }
    if !targets.is_empty() {
        // the new nodes were appended after their reader
        let _ = g.topo_sort();
    }
    targets.len()
}
