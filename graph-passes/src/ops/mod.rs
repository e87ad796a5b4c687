//! Every op onnxsam knows, by family: one file per family holds each op's shape rule and its
//! gradient rule side by side, with the kink conventions written beside the rule. This file is
//! the one registry (what `onnxsam ops` prints and docs/ops.md lists). A new op goes into the
//! file of its family (or a new family file added to `FAMILIES`).
//!
//! Families: elementwise (arithmetic, comparisons, casts), activation (ReLU, GELU, HardSwish,
//! trigonometric…), matmul (Gemm, MatMul, Einsum), conv (Conv, ConvTranspose), pool, norm
//! (BatchNorm, LayerNorm, GroupNorm, InstanceNorm…), reduce (Reduce*, CumSum, TopK, ArgMax),
//! shape (Reshape, Transpose, Slice, Concat, Pad, DepthToSpace…), gather (Gather*, Scatter*),
//! softmax_loss, source (Constant, Shape, Range…), recurrent (LSTM, GRU, RNN), resize, attention
//! (Attention, RotaryEmbedding), sequence (SplitToSequence, ConcatFromSequence…: written as
//! tensors at import).
pub mod activation;
pub mod attention;
pub mod conv;
pub mod elementwise;
pub mod gather;
pub mod matmul;
pub mod norm;
pub mod pool;
pub mod recurrent;
pub mod reduce;
pub mod resize;
pub mod sequence;
pub mod shape;
pub mod softmax_loss;
pub mod source;

use std::collections::HashMap;
use std::sync::OnceLock;

use crate::ctx::{Ctx, Grads};
use crate::ir::{Graph, Model};
use crate::onnx::NodeProto;
use crate::shapes::Shapes;
use crate::Result;

/// Infers the types of a node's outputs into `s` (inputs are typed already).
pub type ShapeRule = fn(&Graph, &NodeProto, &mut Shapes) -> Result<()>;

/// A vector-Jacobian product: node, gradient of each output (None where none reached it), which
/// inputs need a gradient, the builder; one optional gradient per input.
pub type GradRule = fn(&NodeProto, &[Option<String>], &[bool], &mut Ctx) -> Result<Grads>;

/// Replaces a node by ops that have gradient rules (same values), before autodiff runs.
pub type LowerRule = fn(&NodeProto, &mut Ctx) -> Result<()>;

/// How a gradient goes through an op.
#[derive(Clone, Copy)]
pub enum Gradient {
    /// A vector-Jacobian product rule.
    Rule(GradRule),
    /// Written out in ops that have rules before autodiff (the `lower` pass); autodiff then
    /// differentiates those.
    Lowered(LowerRule),
    /// Piecewise constant (Floor, Sign, …): the gradient is zero wherever it exists, as PyTorch
    /// takes it; no gradient flows.
    Zero,
    /// Integers, booleans, shapes, indices: nothing to differentiate; no gradient flows.
    None,
    /// No rule yet: the reason.
    Missing(&'static str),
}

/// One op: its rules and what the coverage table says of it.
pub struct OpDef {
    pub op: &'static str,
    /// Opsets whose semantics the rules follow (PyTorch exports 17–21).
    pub opsets: &'static str,
    pub shape: ShapeRule,
    pub gradient: Gradient,
    /// Where tract cannot run the op (ONNX Runtime runs every op listed here).
    pub tract: Option<&'static str>,
    /// Forms not covered, and the convention at kinks (written where the rule is).
    pub notes: &'static str,
}

/// An op family: its name and its ops.
pub struct Family {
    pub name: &'static str,
    pub ops: fn() -> Vec<OpDef>,
}

/// Ops that draw random numbers in the engine (the dynamo exporter writes Dropout2d, AlphaDropout
/// and other aten.bernoulli uses of a train-mode model with them): unseeded there, so onnxsam
/// draws them itself from the run's seeded counter-based RNG, as Dropout's masks.
pub const RANDOM_OPS: &[&str] = &["RandomUniformLike", "RandomNormalLike", "RandomUniform", "RandomNormal", "Bernoulli"];

/// The standard-domain ops ONNX Runtime training registers a gradient for (onnxruntime 1.19.2,
/// its last training release: orttraining/core/graph/gradient_builder_registry.cc, ops of the
/// default ONNX domain). onnxsam's coverage is a superset (a test checks it; `onnxsam ops` says so).
pub const ORT_TRAINING_GRADIENTS: &[&str] = &[
    "Abs",
    "Add",
    "AveragePool",
    "Cast",
    "Clip",
    "Concat",
    "Conv",
    "ConvTranspose",
    "Cos",
    "Div",
    "Dropout",
    "Erf",
    "Exp",
    "Expand",
    "Flatten",
    "Gather",
    "GatherElements",
    "GatherND",
    "Gelu",
    "Gemm",
    "GlobalAveragePool",
    "Identity",
    "LayerNormalization",
    "LeakyRelu",
    "Log",
    "LogSoftmax",
    "MatMul",
    "Max",
    "MaxPool",
    "Min",
    "Mul",
    "Neg",
    "Pad",
    "Pow",
    "Reciprocal",
    "ReduceL2",
    "ReduceLogSumExp",
    "ReduceMean",
    "ReduceSum",
    "Relu",
    "Reshape",
    "Resize",
    "ScatterElements",
    "ScatterND",
    "Sigmoid",
    "Sin",
    "Slice",
    "Softmax",
    "SoftmaxCrossEntropyLoss",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Tanh",
    "Tile",
    "TopK",
    "Transpose",
    "Trilu",
    "Unsqueeze",
    "Where",
];

/// Every family, in the order `onnxsam ops` lists them.
pub const FAMILIES: &[Family] = &[
    elementwise::FAMILY,
    activation::FAMILY,
    matmul::FAMILY,
    conv::FAMILY,
    pool::FAMILY,
    norm::FAMILY,
    reduce::FAMILY,
    shape::FAMILY,
    gather::FAMILY,
    softmax_loss::FAMILY,
    source::FAMILY,
    recurrent::FAMILY,
    resize::FAMILY,
    attention::FAMILY,
    sequence::FAMILY,
];

fn registry() -> &'static HashMap<&'static str, (&'static str, OpDef)> {
    static R: OnceLock<HashMap<&'static str, (&'static str, OpDef)>> = OnceLock::new();
    R.get_or_init(|| {
        let mut m = HashMap::new();
        for f in FAMILIES {
            for d in (f.ops)() {
                let prev = m.insert(d.op, (f.name, d));
                debug_assert!(prev.is_none(), "op registered twice");
            }
        }
        m
    })
}

/// The op's definition, if onnxsam knows it.
pub fn lookup(op: &str) -> Option<&'static OpDef> {
    registry().get(op).map(|(_, d)| d)
}

/// The op's family name.
pub fn family_of(op: &str) -> Option<&'static str> {
    registry().get(op).map(|(f, _)| *f)
}

/// The gradient rule of an op with one.
pub fn rule_for(op: &str) -> Option<GradRule> {
    match lookup(op)?.gradient {
        Gradient::Rule(r) => Some(r),
        _ => None,
    }
}

/// True when no gradient flows through the op (integer/shape ops, piecewise constants).
pub fn is_non_differentiable(op: &str) -> bool {
    matches!(lookup(op).map(|d| d.gradient), Some(Gradient::None | Gradient::Zero))
}

/// True when a gradient can pass the op (a rule, or a lowering into ops with rules).
pub fn is_differentiable(op: &str) -> bool {
    matches!(lookup(op).map(|d| d.gradient), Some(Gradient::Rule(_) | Gradient::Lowered(_)))
}

/// Why no gradient can pass the op, for an op on a gradient path: its Missing reason ("has no
/// gradient rule yet", "control flow is not differentiated"), or that onnxsam does not know it.
/// None where a gradient passes (a rule or a lowering) or none is meant to (integers, zero).
pub fn why_no_gradient(op: &str) -> Option<String> {
    match lookup(op).map(|d| d.gradient) {
        Some(Gradient::Rule(_) | Gradient::Lowered(_) | Gradient::Zero | Gradient::None) => None,
        Some(Gradient::Missing("no gradient rule yet")) | None => Some("has no gradient rule yet".into()),
        Some(Gradient::Missing(why)) => Some(format!("cannot be differentiated: {why}")),
    }
}

/// Why tract cannot run the op, if it cannot.
pub fn tract_limitation(op: &str) -> Option<&'static str> {
    lookup(op).and_then(|d| d.tract)
}

/// Every op, by family, in table order.
pub fn all() -> Vec<(&'static str, &'static OpDef)> {
    let r = registry();
    let mut out = Vec::new();
    for f in FAMILIES {
        let mut ops: Vec<&'static str> = (f.ops)().iter().map(|d| d.op).collect();
        ops.sort_unstable();
        for op in ops {
            out.push((f.name, &r[op].1));
        }
    }
    out
}

/// lower: every node whose gradient is a lowering is written out in ops with rules, in place
/// (same values), so that autodiff and both engines see only those. Returns how many.
pub fn lower(m: &mut Model) -> Result<usize> {
    let opset = m.opset();
    lower_graph(&mut m.graph, opset)
}

/// `lower` on a graph of the given default-domain opset. Also gives ops the one form on which
/// the engines agree where they read an op differently (`resize::canonical_form`,
/// `reduce::canonical_cumsum`, `shape::canonical_strided_slice`).
pub fn lower_graph(g: &mut Graph, opset: i64) -> Result<usize> {
    let targets: Vec<NodeProto> = g
        .nodes
        .iter()
        .filter(|n| matches!(lookup(&n.op_type).map(|d| d.gradient), Some(Gradient::Lowered(_))))
        .cloned()
        .collect();
    let mut changed = 0;
    if g.nodes.iter().any(|n| matches!(n.op_type.as_str(), "Resize" | "CumSum" | "Slice")) {
        let s = crate::shapes::infer(g)?;
        for i in 0..g.nodes.len() {
            changed += resize::canonical_form(g, &s, i) as usize;
            changed += reduce::canonical_cumsum(g, &s, i) as usize;
            changed += shape::canonical_strided_slice(g, &s, i) as usize;
        }
    }
    if targets.is_empty() {
        if changed > 0 {
            g.topo_sort()?;
        }
        return Ok(changed);
    }
    let s = crate::shapes::infer(g)?;
    let mut ctx = Ctx::new(g, s, opset);
    for n in &targets {
        if let Some(Gradient::Lowered(f)) = lookup(&n.op_type).map(|d| d.gradient) {
            f(n, &mut ctx)?;
        }
    }
    g.topo_sort()?;
    Ok(targets.len() + changed)
}

/// The gradient reaching a node's first output (an error naming the node if none did).
pub(crate) fn dy(n: &NodeProto, dys: &[Option<String>]) -> Result<String> {
    dys.first().cloned().flatten().ok_or_else(|| crate::ir::node_error(n, "no gradient reached its output"))
}

/// The gradient of an op with one input.
pub(crate) fn one(g: String) -> Grads {
    vec![Some(g)]
}

/// Removes node `n` and gives `value` (the output of its replacement) the name of its output
/// `k`: what a lowering does once it has built the replacement.
pub(crate) fn replace_output(ctx: &mut Ctx, n: &NodeProto, k: usize, value: &str) {
    let name = &n.output[k];
    ctx.g.nodes.retain(|m| !(m.output == n.output && m.op_type == n.op_type));
    for m in ctx.g.nodes.iter_mut() {
        for o in m.output.iter_mut().chain(m.input.iter_mut()) {
            if o == value {
                *o = name.clone();
            }
        }
    }
}

/// `OpDef` with the usual defaults: `op(name, opsets, shape, gradient)` then `.notes(…)`,
/// `.no_tract(…)`.
pub(crate) fn op(name: &'static str, opsets: &'static str, shape: ShapeRule, gradient: Gradient) -> OpDef {
    OpDef { op: name, opsets, shape, gradient, tract: None, notes: "" }
}

impl OpDef {
    pub(crate) fn notes(mut self, notes: &'static str) -> OpDef {
        self.notes = notes;
        self
    }
    pub(crate) fn no_tract(mut self, why: &'static str) -> OpDef {
        self.tract = Some(why);
        self
    }
}

/// A linear map along one axis: y = M·v over axis `axis` of `v` (rank `rank`), with M a constant
/// [rows, cols] matrix (row-major `m`), cols = v's size on that axis; the other axes untouched.
/// Resize, Pad (reflect/edge/wrap) and strided Slice are such maps per axis, so their
/// gradients are Mᵀ applied the same way (`transpose_m` true).
pub(crate) fn along_axis(
    c: &mut Ctx,
    v: &str,
    axis: usize,
    rank: usize,
    (rows, cols): (i64, i64),
    m: &[f32],
    transpose_m: bool,
) -> String {
    // the matrix applied: A [out, in]
    let (out, inn) = if transpose_m { (cols, rows) } else { (rows, cols) };
    let a: Vec<f32> = if transpose_m {
        (0..out).flat_map(|i| (0..inn).map(move |j| (i, j))).map(|(i, j)| m[(j * cols + i) as usize]).collect()
    } else {
        m.to_vec()
    };
    if axis + 2 == rank {
        // [.., in, w] → A·v
        let am = c.const_f32(&[out, inn], &a);
        return c.op("MatMul", &[&am, v]);
    }
    // Aᵀ [in, out], multiplied from the right on the last axis
    let at: Vec<f32> =
        (0..inn).flat_map(|j| (0..out).map(move |i| (i, j))).map(|(i, j)| a[(i * inn + j) as usize]).collect();
    let atm = c.const_f32(&[inn, out], &at);
    if axis + 1 == rank {
        return c.op("MatMul", &[v, &atm]);
    }
    let mut perm: Vec<i64> = (0..rank as i64).filter(|&i| i != axis as i64).collect();
    perm.push(axis as i64);
    let mut inv = vec![0i64; rank];
    for (i, &p) in perm.iter().enumerate() {
        inv[p as usize] = i as i64;
    }
    let t = c.transpose(v, &perm);
    let p = c.op("MatMul", &[&t, &atm]);
    c.transpose(&p, &inv)
}
