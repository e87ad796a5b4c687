//! Reverse-mode autodiff over standard ONNX. The sweep walks the forward graph backwards from a
//! scalar loss, sums gradient contributions where a value has several consumers, and asks each
//! op's rule (ops/, one file per family) for the vector-Jacobian product in ONNX ops that both
//! ONNX Runtime and tract execute (BACKEND-NOTES.md), written with the node builder `Ctx`
//! (ctx.rs, below both ops/ and autodiff).

use std::collections::{HashMap, HashSet};

use crate::ir::{node_error, Graph, NodeExt};
use crate::onnx::{data_type as dt, NodeProto};
use crate::shapes::{self, Shapes};
use crate::{bail, Result};

use crate::ctx::Ctx;

/// A gradient rule (ops/: one per op, beside its shape rule).
pub type Rule = crate::ops::GradRule;

/// Values that can carry a gradient: floating point.
fn is_float_value(s: &Shapes, v: &str) -> bool {
    s.get(v).map(|t| matches!(t.dtype, dt::FLOAT | dt::DOUBLE | dt::FLOAT16 | dt::BFLOAT16)).unwrap_or(false)
}

/// A region whose gradient is known in closed form: the gradient reaching `output` is turned
/// into gradients of the region's `inputs` by `build` (which gets the gradient of `output` and
/// which inputs need one), and the ops in between are not differentiated one by one (e.g.
/// cross-entropy: d logits = dℓ·(softmax − onehot)).
pub struct Shortcut {
    pub output: String,
    pub inputs: Vec<String>,
    pub build: Box<dyn Fn(&mut Ctx, &str, &[bool]) -> Result<Vec<Option<String>>>>,
}

/// Emits the gradient of scalar `loss` with respect to each of `wrt` (graph inputs or
/// intermediate values). Returns wrt name → gradient value name. A `wrt` value that the loss
/// does not depend on gets an explicit zero tensor.
pub fn gradients(g: &mut Graph, opset: i64, loss: &str, wrt: &[String]) -> Result<HashMap<String, String>> {
    gradients_with(g, opset, loss, wrt, &[], &[])
}

/// `gradients`, with closed-form shortcuts for some regions, and `stop` values treated as
/// constants (no gradient flows through them: stop-gradient).
pub fn gradients_with(
    g: &mut Graph,
    opset: i64,
    loss: &str,
    wrt: &[String],
    shortcuts: &[Shortcut],
    stop: &[String],
) -> Result<HashMap<String, String>> {
    // ops whose gradient is their lowering are written out first (a no-op after `ops::lower`)
    crate::ops::lower_graph(g, opset)?;
    let shapes = shapes::infer(g)?;
    let order = g.topo_order()?;
    let nodes: Vec<NodeProto> = order.iter().map(|&i| g.nodes[i].clone()).collect();
    // forward: values that depend on some wrt value through float paths
    let mut depends: HashSet<String> = wrt.iter().cloned().collect();
    for n in &nodes {
        if crate::ops::is_non_differentiable(&n.op_type) {
            continue;
        }
        if n.input.iter().enumerate().any(|(k, i)| carries_gradient(&n.op_type, k) && depends.contains(i)) {
            for o in &n.output {
                if is_float_value(&shapes, o) && !stop.contains(o) {
                    depends.insert(o.clone());
                }
            }
        }
    }
    if !depends.contains(loss) {
        bail!("the loss '{loss}' does not depend on any of the values to differentiate");
    }
    // backward: values the loss depends on
    let mut needed: HashSet<String> = HashSet::from([loss.to_string()]);
    for n in nodes.iter().rev() {
        if n.output.iter().any(|o| needed.contains(o)) {
            for i in &n.input {
                if depends.contains(i) {
                    needed.insert(i.clone());
                }
            }
        }
    }
    let active = |v: &str| depends.contains(v) && needed.contains(v);
    // the backward nodes a pass asks for are its own, but `diff` shows them apart from the rest
    // of what the pass adds: tagged "<pass>/autodiff"
    let outer = g.pass.clone();
    if let Some(p) = &outer {
        if p != "autodiff" {
            g.pass = Some(format!("{p}/autodiff"));
        }
    }
    let r = sweep(g, shapes, opset, loss, wrt, shortcuts, &nodes, &active);
    g.pass = outer;
    r
}

#[allow(clippy::too_many_arguments)]
fn sweep(
    g: &mut Graph,
    shapes: Shapes,
    opset: i64,
    loss: &str,
    wrt: &[String],
    shortcuts: &[Shortcut],
    nodes: &[NodeProto],
    active: &dyn Fn(&str) -> bool,
) -> Result<HashMap<String, String>> {
    let mut ctx = Ctx::new(g, shapes, opset);
    let one = ctx.scalar(1.0);
    let mut contributions: HashMap<String, Vec<String>> = HashMap::from([(loss.to_string(), vec![one])]);
    for n in nodes.iter().rev() {
        if !n.output.iter().any(|o| contributions.contains_key(o)) {
            continue;
        }
        if let Some(sc) = shortcuts.iter().find(|sc| n.output.first() == Some(&sc.output)) {
            let need: Vec<bool> = sc.inputs.iter().map(|i| active(i)).collect();
            if need.iter().any(|&b| b) {
                let d = take_sum(&mut ctx, &mut contributions, &sc.output).expect("checked above");
                let grads = (sc.build)(&mut ctx, &d, &need)?;
                for (k, gr) in grads.into_iter().enumerate() {
                    if let (Some(gr), true) = (gr, need[k]) {
                        contributions.entry(sc.inputs[k].clone()).or_default().push(gr);
                    }
                }
            }
            continue;
        }
        let need: Vec<bool> = n.input.iter().map(|i| !i.is_empty() && active(i)).collect();
        if !need.iter().any(|&b| b) {
            continue;
        }
        let rule = crate::ops::rule_for(&n.op_type).ok_or_else(|| node_error(n, "has no gradient rule yet"))?;
        let dys: Vec<Option<String>> = n.output.iter().map(|o| take_sum(&mut ctx, &mut contributions, o)).collect();
        let grads = rule(n, &dys, &need, &mut ctx).map_err(|e| naming_node(n, e))?;
        for (k, gr) in grads.into_iter().enumerate() {
            if let (Some(gr), true) = (gr, need.get(k).copied().unwrap_or(false)) {
                contributions.entry(n.input[k].clone()).or_default().push(gr);
            }
        }
    }
    let mut out = HashMap::new();
    for w in wrt {
        let grad = match take_sum(&mut ctx, &mut contributions, w) {
            Some(gr) => gr,
            None => ctx.zeros_like(w),
        };
        out.insert(w.clone(), grad);
    }
    Ok(out)
}

/// A rule's error, prefixed with the node it came from unless it names one already.
fn naming_node(n: &NodeProto, e: crate::Error) -> crate::Error {
    if e.0.contains("(node ") {
        e
    } else {
        crate::ir::node_error(n, e.0)
    }
}

/// False for inputs through which no gradient flows into the node's outputs: CastLike's second
/// input only lends its type.
pub fn carries_gradient(op: &str, input: usize) -> bool {
    !(op == "CastLike" && input == 1)
}

/// True when `n` reads one of `values` through an input that carries a gradient.
pub fn reads_through_gradient(n: &NodeProto, values: &HashSet<&str>) -> bool {
    n.input.iter().enumerate().any(|(k, v)| carries_gradient(&n.op_type, k) && values.contains(v.as_str()))
}

/// The summed gradient of `v`: the one contribution, an Add of two, or one Sum node over three or
/// more (a recurrent weight read at every time step gets one contribution per step; one Sum kernel
/// is cheaper than a chain of Adds).
fn take_sum(ctx: &mut Ctx, contributions: &mut HashMap<String, Vec<String>>, v: &str) -> Option<String> {
    let parts = contributions.remove(v)?;
    let acc = match parts.len() {
        0 => return None,
        1 => parts[0].clone(),
        2 => ctx.add(&parts[0], &parts[1]),
        _ => {
            let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
            ctx.op("Sum", &refs)
        }
    };
    contributions.insert(v.to_string(), vec![acc.clone()]);
    Some(acc)
}

/// Ops in `g` on a differentiable path that have no rule, as "op X (node Y)" lines.
pub fn unsupported_ops(g: &Graph) -> Vec<String> {
    let mut seen = HashSet::new();
    g.nodes
        .iter()
        .filter_map(|n| crate::ops::why_no_gradient(&n.op_type).map(|why| (n, why)))
        .filter(|(n, _)| seen.insert(n.op_type.clone()))
        .map(|(n, why)| format!("{} {why}", n.describe()))
        .collect()
}
