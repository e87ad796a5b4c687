//! dtype and shape of every value, with symbolic dimensions (the batch dimension of an export
//! is a `dim_param`). Small integer tensors (shapes, axes, indices) are tracked by value too,
//! because exporters compute Reshape targets with Shape → Gather → Concat chains.
use std::collections::HashMap;
use std::fmt;

use crate::ir::{constant_value, Graph, NodeExt};
use crate::onnx::proto::{data_type as dt, tensor_shape_proto::dimension, type_proto, NodeProto, TypeProto};
use crate::onnx::tensor;
use crate::{ir::node_error, Result};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    Known(i64),
    Sym(String),
}

impl Dim {
    pub fn known(&self) -> Option<i64> {
        match self {
            Dim::Known(v) => Some(*v),
            Dim::Sym(_) => None,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Known(v) => write!(f, "{v}"),
            Dim::Sym(s) => f.write_str(s),
        }
    }
}

pub type Shape = Vec<Dim>;

pub fn shape_string(s: &Option<Shape>) -> String {
    match s {
        None => "?".into(),
        // a size computed from other sizes can be a long expression: "?" in a message
        Some(s) => format!(
            "[{}]",
            s.iter()
                .map(|d| match d {
                    Dim::Sym(t) if t.chars().count() > 24 || t.starts_with('?') => "?".to_string(),
                    d => d.to_string(),
                })
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ValueType {
    pub dtype: i32,
    /// None when the rank is unknown.
    pub shape: Option<Shape>,
}

/// dtype + shape from a ValueInfoProto's type (tensors only).
pub fn value_type_of(t: &Option<TypeProto>) -> Option<ValueType> {
    match t.as_ref()?.value.as_ref()? {
        type_proto::Value::TensorType(tt) => Some(ValueType {
            dtype: tt.elem_type,
            shape: tt.shape.as_ref().map(|s| {
                s.dim
                    .iter()
                    .enumerate()
                    .map(|(i, d)| match &d.value {
                        Some(dimension::Value::DimValue(v)) => Dim::Known(*v),
                        Some(dimension::Value::DimParam(p)) => Dim::Sym(p.clone()),
                        None => Dim::Sym(format!("?{i}")),
                    })
                    .collect()
            }),
        }),
        _ => None,
    }
}

/// The result of inference: a type for every value it could type, and the ops it had no rule for.
#[derive(Default, Debug)]
pub struct Shapes {
    pub types: HashMap<String, ValueType>,
    /// Known contents of small integer tensors (one Dim per element, rank ≤ 1).
    pub values: HashMap<String, Vec<Dim>>,
    pub unknown_ops: Vec<String>,
    counter: usize,
}

impl Shapes {
    pub fn get(&self, v: &str) -> Option<&ValueType> {
        self.types.get(v)
    }
    pub fn shape(&self, v: &str) -> Option<&Shape> {
        self.types.get(v).and_then(|t| t.shape.as_ref())
    }
    pub fn rank(&self, v: &str) -> Option<usize> {
        self.shape(v).map(|s| s.len())
    }
    /// A size inference could not tell: a symbol of its own, which messages show as "?".
    pub(crate) fn fresh_dim(&mut self, hint: &str) -> Dim {
        self.counter += 1;
        Dim::Sym(format!("?{hint}{}", self.counter))
    }
}

/// Infers types of every value in topological order.
pub fn infer(g: &Graph) -> Result<Shapes> {
    let mut s = Shapes::default();
    for v in g.inputs.iter().chain(g.value_info.iter()) {
        if let Some(t) = value_type_of(&v.r#type) {
            s.types.insert(v.name.clone(), t);
        }
    }
    for t in &g.initializers {
        s.types.insert(
            t.name.clone(),
            ValueType { dtype: t.data_type, shape: Some(t.dims.iter().map(|&d| Dim::Known(d)).collect()) },
        );
        if t.data_type == dt::INT64 && t.dims.len() <= 1 && tensor::numel(t) <= 64 {
            if let Ok(v) = tensor::to_i64(t) {
                s.values.insert(t.name.clone(), v.into_iter().map(Dim::Known).collect());
            }
        }
    }
    for i in g.topo_order()? {
        let n = &g.nodes[i];
        infer_node(g, n, &mut s)?;
    }
    Ok(s)
}

/// An axis attribute or input of node `n` in [−rank, rank), as an index; an error naming the
/// node otherwise (a file can say anything).
pub(crate) fn axis_in(n: &NodeProto, axis: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    if axis < -r || axis >= r {
        return Err(node_error(n, format!("axis {axis} is out of range for a tensor of rank {rank}")));
    }
    Ok(if axis < 0 { (axis + r) as usize } else { axis as usize })
}

/// Every axis of a list through `axis_in`.
pub(crate) fn axes_in(n: &NodeProto, axes: &[i64], rank: usize) -> Result<Vec<usize>> {
    axes.iter().map(|&a| axis_in(n, a, rank)).collect()
}

pub(crate) fn norm_axis(axis: i64, rank: usize) -> usize {
    if axis < 0 {
        (axis + rank as i64).max(0) as usize
    } else {
        axis as usize
    }
}

/// The symbol `broadcast` gives a dimension where two different symbols meet.
pub const BROADCAST_SYM: &str = "max";

/// numpy broadcasting of shapes.
pub fn broadcast(shapes: &[&Shape]) -> Option<Shape> {
    let rank = shapes.iter().map(|s| s.len()).max()?;
    let mut out = Vec::with_capacity(rank);
    for i in 0..rank {
        let mut d = Dim::Known(1);
        for s in shapes {
            if i + s.len() < rank {
                continue;
            }
            let sd = &s[i + s.len() - rank];
            d = match (&d, sd) {
                (Dim::Known(1), x) => x.clone(),
                (x, Dim::Known(1)) => x.clone(),
                (Dim::Known(a), Dim::Known(b)) if a != b => return None,
                (Dim::Known(_), Dim::Known(_)) => d.clone(),
                // a known size > 1 against a symbol: the known size (the symbol must equal it)
                (Dim::Known(_), Dim::Sym(_)) => d.clone(),
                (Dim::Sym(_), Dim::Known(_)) => sd.clone(),
                (Dim::Sym(a), Dim::Sym(b)) if a == b => d.clone(),
                // two different symbols: either may be 1 at run time, so the result is neither
                // (`unbroadcast` must not take it for one of them)
                (Dim::Sym(a), Dim::Sym(b)) => broadcast_sym(a, b),
            };
        }
        out.push(d);
    }
    Some(out)
}

/// `max(a,b,…)` of two symbols, flattened, deduplicated and sorted: residual sums of symbols
/// that are themselves broadcasts (x + f(x) in every block of a transformer whose sequence length
/// the file computes) would otherwise nest, and the name double with each block.
fn broadcast_sym(a: &str, b: &str) -> Dim {
    let mut atoms: Vec<&str> = broadcast_atoms(a);
    atoms.extend(broadcast_atoms(b));
    atoms.sort_unstable();
    atoms.dedup();
    match atoms.as_slice() {
        [one] => Dim::Sym(one.to_string()),
        _ => Dim::Sym(format!("{BROADCAST_SYM}({})", atoms.join(","))),
    }
}

/// The operands of a `max(…)` symbol (split at its top-level commas), or the symbol itself.
fn broadcast_atoms(s: &str) -> Vec<&str> {
    let inner = match s.strip_prefix(BROADCAST_SYM).and_then(|r| r.strip_prefix('(')).and_then(|r| r.strip_suffix(')')) {
        Some(inner) => inner,
        None => return vec![s],
    };
    let (mut out, mut depth, mut start) = (Vec::new(), 0i32, 0usize);
    for (i, c) in inner.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if depth < 0 {
            return vec![s]; // not one max(…): "max(a)(b)"
        }
    }
    out.push(&inner[start..]);
    out
}

pub(crate) fn conv_out(
    size: &Dim,
    k: i64,
    stride: i64,
    pad_begin: i64,
    pad_end: i64,
    dilation: i64,
    ceil: bool,
) -> Dim {
    match size {
        Dim::Known(h) => {
            let eff = dilation * (k - 1) + 1;
            let num = h + pad_begin + pad_end - eff;
            let o = if ceil { (num + stride - 1) / stride + 1 } else { num / stride + 1 };
            Dim::Known(o)
        }
        Dim::Sym(s) => Dim::Sym(format!("conv({s})")),
    }
}

pub(crate) fn set(s: &mut Shapes, name: &str, dtype: i32, shape: Option<Shape>) {
    if !name.is_empty() {
        s.types.insert(name.to_string(), ValueType { dtype, shape });
    }
}

pub(crate) fn input_type(s: &Shapes, n: &NodeProto, i: usize) -> Result<ValueType> {
    let name = n.input.get(i).filter(|x| !x.is_empty()).ok_or_else(|| node_error(n, format!("missing input {i}")))?;
    s.types
        .get(name)
        .cloned()
        .ok_or_else(|| node_error(n, format!("input '{name}' has no known type (is it produced or declared?)")))
}

pub(crate) fn ints_of(g: &Graph, s: &Shapes, name: &str) -> Option<Vec<i64>> {
    if let Some(v) = s.values.get(name) {
        return v.iter().map(|d| d.known()).collect();
    }
    constant_value(g, name).and_then(|t| tensor::to_i64(t).ok())
}

/// A small integer tensor's values, symbolic where they come from a symbolic shape.
pub(crate) fn dims_of(g: &Graph, s: &Shapes, name: &str) -> Option<Vec<Dim>> {
    if let Some(v) = s.values.get(name) {
        return Some(v.clone());
    }
    constant_value(g, name).and_then(|t| tensor::to_i64(t).ok()).map(|v| v.into_iter().map(Dim::Known).collect())
}

/// Axes from the attribute (older opsets) or the second input (newer ones).
pub(crate) fn axes_of(g: &Graph, s: &Shapes, n: &NodeProto, input: usize) -> Option<Vec<i64>> {
    n.attr_ints("axes").or_else(|| n.input.get(input).filter(|x| !x.is_empty()).and_then(|a| ints_of(g, s, a)))
}

/// Types the outputs of one node by its op's shape rule (ops/); an op without one gets outputs of
/// unknown shape (typed like its first input) and is listed in `unknown_ops`.
fn infer_node(g: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    if let Some(d) = crate::ops::lookup(&n.op_type) {
        return (d.shape)(g, n, s);
    }
    if !s.unknown_ops.contains(&n.op_type) {
        s.unknown_ops.push(n.op_type.clone());
    }
    let dtype = n.input.first().and_then(|i| s.types.get(i)).map(|t| t.dtype).unwrap_or(dt::FLOAT);
    for o in &n.output {
        set(s, o, dtype, None);
    }
    Ok(())
}

/// The output has its first input's type (elementwise unary ops and the like).
pub(crate) fn same_as_input(_: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let t = input_type(s, n, 0)?;
    set(s, &n.output[0], t.dtype, t.shape);
    Ok(())
}

/// Outputs of unknown shape, typed like the first input (ops whose output shape depends on data).
pub(crate) fn data_dependent(_: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let dtype = n.input.first().and_then(|i| s.types.get(i)).map(|t| t.dtype).unwrap_or(dt::FLOAT);
    for o in &n.output {
        set(s, o, dtype, None);
    }
    Ok(())
}

pub(crate) fn unknown_rank_out(s: &mut Shapes, out: &str, dtype: i32, rank: Option<usize>) -> Result<()> {
    let shape = rank.map(|r| (0..r).map(|_| s.fresh_dim("d")).collect());
    set(s, out, dtype, shape);
    Ok(())
}

/// Python-style clamped slice bounds for one axis of size `d`.
pub fn slice_bounds(start: i64, end: i64, step: i64, d: i64) -> (i64, i64, i64) {
    let d = d.max(0);
    let fix = |v: i64, lo: i64, hi: i64| {
        let v = if v < 0 { v.saturating_add(d) } else { v };
        v.clamp(lo, hi)
    };
    if step > 0 {
        (fix(start, 0, d), fix(end, 0, d), step)
    } else {
        (fix(start, -1, d - 1), fix(end, -1, d - 1), step)
    }
}

pub(crate) fn reduce_shape(xs: &Shape, axes: &[usize], keep: bool) -> Shape {
    xs.iter()
        .enumerate()
        .filter_map(|(i, d)| {
            if axes.contains(&i) {
                if keep {
                    Some(Dim::Known(1))
                } else {
                    None
                }
            } else {
                Some(d.clone())
            }
        })
        .collect()
}

/// A size as a monomial: coefficient × symbols (sorted). Products of sizes are written
/// `16·batch` (`MONOMIAL_SEP` between factors), so that a Reshape's −1 and shape arithmetic can
/// divide them again.
pub const MONOMIAL_SEP: char = '·';

pub(crate) fn monomial(d: &Dim) -> (i64, Vec<String>) {
    match d {
        Dim::Known(v) => (*v, vec![]),
        Dim::Sym(s) => {
            let mut coef = 1i64;
            let mut syms = Vec::new();
            for part in s.split(MONOMIAL_SEP) {
                match part.parse::<i64>() {
                    Ok(k) => coef = coef.saturating_mul(k),
                    Err(_) => syms.push(part.to_string()),
                }
            }
            syms.sort();
            (coef, syms)
        }
    }
}

pub(crate) fn from_monomial(coef: i64, mut syms: Vec<String>) -> Dim {
    if syms.is_empty() {
        return Dim::Known(coef);
    }
    syms.sort();
    let mut parts: Vec<String> = Vec::new();
    if coef != 1 {
        parts.push(coef.to_string());
    }
    parts.extend(syms);
    Dim::Sym(parts.join(&MONOMIAL_SEP.to_string()))
}

/// a · b
pub(crate) fn mul_dims(a: &Dim, b: &Dim) -> Dim {
    let (ca, mut sa) = monomial(a);
    let (cb, sb) = monomial(b);
    sa.extend(sb);
    from_monomial(ca.saturating_mul(cb), sa)
}

/// a / b where it divides exactly (as monomials).
pub(crate) fn div_dims(a: &Dim, b: &Dim) -> Option<Dim> {
    let (ca, mut sa) = monomial(a);
    let (cb, sb) = monomial(b);
    if cb == 0 || ca % cb != 0 {
        return None;
    }
    for x in sb {
        let i = sa.iter().position(|y| *y == x)?;
        sa.remove(i);
    }
    Some(from_monomial(ca / cb, sa))
}

pub(crate) fn dims_product(ds: &[Dim]) -> Dim {
    ds.iter().fold(Dim::Known(1), |acc, d| mul_dims(&acc, d))
}

pub(crate) fn matmul_shape(a: &Shape, b: &Shape) -> Option<Shape> {
    let (mut a, mut b) = (a.clone(), b.clone());
    let (a1, b1) = (a.len() == 1, b.len() == 1);
    if a1 {
        a.insert(0, Dim::Known(1));
    }
    if b1 {
        b.push(Dim::Known(1));
    }
    let (m, n) = (a[a.len() - 2].clone(), b[b.len() - 1].clone());
    let batch = broadcast(&[&a[..a.len() - 2].to_vec(), &b[..b.len() - 2].to_vec()])?;
    let mut out = batch;
    if !a1 {
        out.push(m);
    }
    if !b1 {
        out.push(n);
    }
    Some(out)
}

pub(crate) fn reshape_shape(n: &NodeProto, xs: Option<&Shape>, target: &[Dim], allowzero: bool) -> Result<Shape> {
    let mut out: Vec<Dim> = target
        .iter()
        .enumerate()
        .map(|(i, d)| match (d, xs) {
            (Dim::Known(0), Some(xs)) if !allowzero => xs.get(i).cloned().unwrap_or(Dim::Known(0)),
            _ => d.clone(),
        })
        .collect();
    if let Some(pos) = out.iter().position(|d| *d == Dim::Known(-1)) {
        // −1 = (product of x's sizes) / (product of the other target sizes), as monomials
        let inferred = xs.and_then(|xs| {
            let rest: Vec<Dim> = out.iter().enumerate().filter(|(i, _)| *i != pos).map(|(_, d)| d.clone()).collect();
            div_dims(&dims_product(xs), &dims_product(&rest))
        });
        out[pos] = inferred.unwrap_or_else(|| Dim::Sym(format!("reshape{}", n.name)));
    }
    Ok(out)
}

/// Where(cond, a, b) over small integer vectors (cond as 0/1).
pub(crate) fn fold_where(vals: &[Vec<Dim>]) -> Option<Vec<Dim>> {
    let [c, a, b] = vals else { return None };
    let len = c.len().max(a.len()).max(b.len());
    let at = |v: &Vec<Dim>, i: usize| v.get(if v.len() == 1 { 0 } else { i }).cloned();
    (0..len)
        .map(|i| match at(c, i)?.known()? {
            0 => at(b, i),
            _ => at(a, i),
        })
        .collect()
}

pub(crate) fn fold_binary(op: &str, vals: &[Vec<Dim>]) -> Option<Vec<Dim>> {
    if vals.len() != 2 {
        return None;
    }
    let (a, b) = (&vals[0], &vals[1]);
    let len = a.len().max(b.len());
    if !(a.len() == len || a.len() == 1) || !(b.len() == len || b.len() == 1) {
        return None;
    }
    (0..len)
        .map(|i| {
            let x = &a[if a.len() == 1 { 0 } else { i }];
            let y = &b[if b.len() == 1 { 0 } else { i }];
            match (x.known(), y.known()) {
                (Some(x), Some(y)) => Some(Dim::Known(match op {
                    "Add" => x + y,
                    "Sub" => x - y,
                    "Mul" => x * y,
                    "Div" if y != 0 => x / y,
                    // integer Mod (fmod = 0): the sign follows the divisor, as Python's %
                    "Equal" => (x == y) as i64,
                    "Less" => (x < y) as i64,
                    "Greater" => (x > y) as i64,
                    "Mod" if y != 0 => x.rem_euclid(y) + if y < 0 && x.rem_euclid(y) != 0 { y } else { 0 },
                    _ => return None,
                })),
                _ => match (op, y.known()) {
                    ("Mul" | "Div", Some(1)) | ("Add" | "Sub", Some(0)) => Some(x.clone()),
                    // symbolic sizes multiply and divide as monomials (batch·heads, …)
                    ("Mul", _) => Some(mul_dims(x, y)),
                    ("Div", _) => div_dims(x, y),
                    // a symbolic size is never negative: unequal to any negative constant
                    ("Equal", Some(k)) if k < 0 => Some(Dim::Known(0)),
                    _ => match (op, x.known()) {
                        ("Equal", Some(k)) if k < 0 => Some(Dim::Known(0)),
                        _ => None,
                    },
                },
            }
        })
        .collect()
}

/// True for the integer element types (shape and index values).
pub(crate) fn is_int(dtype: i32) -> bool {
    matches!(dtype, dt::INT64 | dt::INT32 | dt::INT16 | dt::INT8 | dt::UINT8 | dt::UINT16 | dt::UINT32 | dt::UINT64)
}
