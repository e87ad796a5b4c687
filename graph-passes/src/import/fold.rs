//! Integer inputs that only shape arithmetic computes (Reshape targets, Slice bounds, axes) and
//! whose values are known before running (shape inference tracks small integer tensors) become
//! constant initializers. Semantics stay; the engines then see constants where the exporters left
//! chains of Shape/Gather/Cast/Concat. Needed for tract: it reads
//! `Cast(Constant(9223372036854775807))` as a Slice end wrongly (the dynamo exporter's `x[:, 0]`
//! without its optimizer, torchvision ViT: a batch of 8 came out as 7 rows).
use std::collections::HashMap;

use crate::ir::{Graph, NodeExt};
use crate::onnx::TensorProto;
use crate::onnx::{data_type as dt, tensor};
use crate::shapes::{self, Dim};
use crate::Result;

/// The input slots that must be constant for the engines (shape, axes, bounds).
fn shape_slots(op: &str) -> &'static [usize] {
    match op {
        "Reshape" | "Expand" | "Tile" | "Unsqueeze" | "Squeeze" | "Split" | "SplitToSequence" => &[1],
        "Slice" => &[1, 2, 3, 4],
        "Pad" => &[1, 3],
        "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceSumSquare" | "ReduceL1"
        | "ReduceL2" | "ReduceLogSumExp" => &[1],
        "ConstantOfShape" => &[0],
        "Range" => &[0, 1, 2],
        _ => &[],
    }
}

/// Replaces computed integer inputs with known values by initializers; returns how many.
pub fn fold_known_integer_inputs(g: &mut Graph) -> Result<usize> {
    let s = shapes::infer(g)?;
    let produced: HashMap<String, usize> = g.producers().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    let mut folded: HashMap<String, String> = HashMap::new();
    let mut count = 0;
    for i in 0..g.nodes.len() {
        let slots = shape_slots(&g.nodes[i].op_type);
        for &k in slots {
            let Some(v) = g.nodes[i].input.get(k).filter(|v| !v.is_empty()).cloned() else { continue };
            if !produced.contains_key(&v) {
                continue; // already a constant or a graph input
            }
            if g.nodes[produced[&v]].op_type == "Constant" {
                continue;
            }
            let Some(t) = s.get(&v) else { continue };
            if t.dtype != dt::INT64 {
                continue;
            }
            let Some(vals) = s.values.get(&v).and_then(|d| d.iter().map(Dim::known).collect::<Option<Vec<i64>>>())
            else {
                continue;
            };
            let dims: Vec<i64> = match t.shape.as_deref() {
                Some([]) if vals.len() == 1 => vec![],
                Some([_]) => vec![vals.len() as i64],
                _ => continue,
            };
            let name = match folded.get(&v) {
                Some(n) => n.clone(),
                None => {
                    let n = g.add_initializer(&format!("{v}.const"), tensor::from_i64("", &dims, &vals));
                    folded.insert(v.clone(), n.clone());
                    n
                }
            };
            g.nodes[i].input[k] = name;
            count += 1;
        }
    }
    if count > 0 {
        g.remove_dead();
    }
    Ok(count)
}

/// A small integer (or boolean) tensor whose values are known before running: row-major data,
/// its shape and ONNX dtype (INT64, INT32 or BOOL; booleans held as 0/1).
#[derive(Clone, Debug, PartialEq)]
struct Ints {
    shape: Vec<usize>,
    data: Vec<i64>,
    dtype: i32,
}

/// The most elements a folded tensor may have (shape arithmetic is small; a constant the size
/// of an activation is not worth storing).
const FOLD_LIMIT: usize = 4096;

fn int_dtype(d: i32) -> bool {
    matches!(d, dt::INT64 | dt::INT32 | dt::BOOL)
}

/// Floats in shape arithmetic (timm's "same" padding as the legacy exporter writes it: a size
/// cast to float, divided, Ceil, Clip, cast back) are held as the bits of their f64 value, so the
/// ops that only move elements treat them as they treat integers.
fn float_dtype(d: i32) -> bool {
    matches!(d, dt::FLOAT | dt::DOUBLE)
}

fn f(bits: i64) -> f64 {
    f64::from_bits(bits as u64)
}

fn bits(v: f64) -> i64 {
    v.to_bits() as i64
}

impl Ints {
    fn numel(shape: &[usize]) -> usize {
        shape.iter().product()
    }
    fn strides(shape: &[usize]) -> Vec<usize> {
        let mut st = vec![1; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            st[i] = st[i + 1] * shape[i + 1];
        }
        st
    }
    fn tensor(&self, name: &str) -> TensorProto {
        let dims: Vec<i64> = self.shape.iter().map(|&d| d as i64).collect();
        match self.dtype {
            dt::BOOL => tensor::from_bool(name, &dims, &self.data.iter().map(|&v| v != 0).collect::<Vec<_>>()),
            dt::INT32 => TensorProto {
                name: name.to_string(),
                dims,
                data_type: dt::INT32,
                raw_data: self.data.iter().flat_map(|&v| (v as i32).to_le_bytes()).collect::<Vec<u8>>().into(),
                ..Default::default()
            },
            _ => tensor::from_i64(name, &dims, &self.data),
        }
    }
    /// The values at the multi-index of an output of shape `out` broadcast from this tensor.
    fn broadcast_to(&self, out: &[usize]) -> Option<Vec<i64>> {
        let r = out.len();
        if self.shape.len() > r {
            return None;
        }
        let pad = r - self.shape.len();
        let shape: Vec<usize> = std::iter::repeat_n(1, pad).chain(self.shape.iter().copied()).collect();
        if shape.iter().zip(out).any(|(&a, &b)| a != b && a != 1) {
            return None;
        }
        let st = Ints::strides(&shape);
        let ost = Ints::strides(out);
        Some(
            (0..Ints::numel(out))
                .map(|flat| {
                    let mut k = 0;
                    for a in 0..r {
                        let i = flat / ost[a] % out[a];
                        if shape[a] != 1 {
                            k += i * st[a];
                        }
                    }
                    self.data[k]
                })
                .collect(),
        )
    }
}

/// numpy's multidirectional broadcast of shapes.
fn broadcast_shapes(shapes: &[&[usize]]) -> Option<Vec<usize>> {
    let r = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![1usize; r];
    for s in shapes {
        for (k, &d) in s.iter().enumerate() {
            let o = &mut out[r - s.len() + k];
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                return None;
            }
        }
    }
    Some(out)
}

/// The known value of `name`: a constant of an integer type, or a small tensor shape inference
/// tracked with every element known.
fn known(g: &Graph, s: &shapes::Shapes, folded: &HashMap<String, Ints>, name: &str) -> Option<Ints> {
    if let Some(v) = folded.get(name) {
        return Some(v.clone());
    }
    if let Some(t) = crate::ir::constant_value(g, name) {
        if float_dtype(t.data_type) && g.initializer(name).is_none() {
            let data: Vec<i64> = tensor::to_f64(t).ok()?.into_iter().map(bits).collect();
            let shape: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
            return (Ints::numel(&shape) == data.len()).then_some(Ints { shape, data, dtype: t.data_type });
        }
        if !int_dtype(t.data_type) {
            return None;
        }
        let data = tensor::to_i64(t).ok()?;
        let shape: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
        return (Ints::numel(&shape) == data.len()).then_some(Ints { shape, data, dtype: t.data_type });
    }
    if let Some(v) = crate::ir::constant_ints(g, name) {
        // Constant value_int / value_ints
        let producer = g.nodes.iter().find(|n| n.op_type == "Constant" && n.output.first().is_some_and(|o| o == name))?;
        let scalar = producer.attr("value_int").is_some();
        return Some(Ints { shape: if scalar { vec![] } else { vec![v.len()] }, data: v, dtype: dt::INT64 });
    }
    let t = s.get(name)?;
    if !int_dtype(t.dtype) {
        return None;
    }
    let vals: Vec<i64> = s.values.get(name)?.iter().map(Dim::known).collect::<Option<_>>()?;
    let shape: Vec<usize> = match t.shape.as_deref()? {
        [] if vals.len() == 1 => vec![],
        [Dim::Known(k)] if *k as usize == vals.len() => vec![vals.len()],
        _ => return None,
    };
    Some(Ints { shape, data: vals, dtype: t.dtype })
}

fn axis(a: i64, r: usize) -> Option<usize> {
    let a = if a < 0 { a + r as i64 } else { a };
    (0..r as i64).contains(&a).then_some(a as usize)
}

/// Evaluates one node on known integer inputs; None where the op is not covered or the inputs
/// do not fit it (then the node stays).
fn eval(n: &crate::onnx::NodeProto, x: &[Option<Ints>]) -> Option<Vec<Ints>> {
    let arg = |i: usize| x.get(i).and_then(|v| v.clone());
    let a = || arg(0);
    let same = |v: &Ints, shape: Vec<usize>, data: Vec<i64>| Ints { shape, data, dtype: v.dtype };
    let out = match n.op_type.as_str() {
        "Identity" => a()?,
        "Size" => Ints { shape: vec![], data: vec![a()?.data.len() as i64], dtype: dt::INT64 },
        "Cast" => {
            let to = n.attr_i("to", 0) as i32;
            let v = a()?;
            if float_dtype(v.dtype) {
                // float → integer truncates toward zero, as the engines cast
                let t: Vec<f64> = v.data.iter().map(|&e| f(e).trunc()).collect();
                return match to {
                    dt::INT64 | dt::INT32 if t.iter().all(|x| x.abs() < 9.0e15) => {
                        Some(vec![Ints { dtype: to, data: t.iter().map(|&x| x as i64).collect(), ..v }])
                    }
                    dt::FLOAT | dt::DOUBLE => Some(vec![Ints { dtype: to, ..v }]),
                    _ => None,
                };
            }
            match to {
                dt::FLOAT | dt::DOUBLE if v.dtype != dt::BOOL => {
                    Ints { dtype: to, data: v.data.iter().map(|&e| bits(e as f64)).collect(), ..v }
                }
                dt::INT64 => Ints { dtype: to, ..v },
                dt::INT32 => Ints { dtype: to, data: v.data.iter().map(|&e| e as i32 as i64).collect(), ..v },
                dt::BOOL => Ints { dtype: to, data: v.data.iter().map(|&e| (e != 0) as i64).collect(), ..v },
                _ => return None,
            }
        }
        "Reshape" => {
            let v = a()?;
            let target = arg(1)?;
            let mut shape = Vec::new();
            let mut infer = None;
            for (k, &d) in target.data.iter().enumerate() {
                match d {
                    -1 => {
                        infer = Some(k);
                        shape.push(1)
                    }
                    0 if n.attr_i("allowzero", 0) == 0 => shape.push(*v.shape.get(k)?),
                    d if d >= 0 => shape.push(d as usize),
                    _ => return None,
                }
            }
            if let Some(k) = infer {
                let rest = Ints::numel(&shape);
                if rest == 0 || v.data.len() % rest != 0 {
                    return None;
                }
                shape[k] = v.data.len() / rest;
            }
            if Ints::numel(&shape) != v.data.len() {
                return None;
            }
            same(&v, shape, v.data.clone())
        }
        "Squeeze" | "Unsqueeze" => {
            let v = a()?;
            let axes = match arg(1) {
                Some(t) => t.data,
                None => n.attr_ints("axes").unwrap_or_default(),
            };
            let mut shape = v.shape.clone();
            if n.op_type == "Squeeze" {
                let r = shape.len();
                let mut ax: Vec<usize> = if axes.is_empty() {
                    (0..r).filter(|&i| shape[i] == 1).collect()
                } else {
                    axes.iter().map(|&q| axis(q, r)).collect::<Option<_>>()?
                };
                ax.sort_unstable();
                for &q in ax.iter().rev() {
                    if shape[q] != 1 {
                        return None;
                    }
                    shape.remove(q);
                }
            } else {
                let r = shape.len() + axes.len();
                let mut ax: Vec<usize> = axes.iter().map(|&q| axis(q, r)).collect::<Option<_>>()?;
                ax.sort_unstable();
                for q in ax {
                    shape.insert(q, 1);
                }
            }
            same(&v, shape, v.data.clone())
        }
        "Transpose" => {
            let v = a()?;
            let r = v.shape.len();
            let perm: Vec<usize> = match n.attr_ints("perm") {
                Some(p) => p.iter().map(|&q| axis(q, r)).collect::<Option<_>>()?,
                None => (0..r).rev().collect(),
            };
            if perm.len() != r {
                return None;
            }
            let shape: Vec<usize> = perm.iter().map(|&p| v.shape[p]).collect();
            let st = Ints::strides(&v.shape);
            let ost = Ints::strides(&shape);
            let data = (0..v.data.len())
                .map(|flat| {
                    let k: usize = (0..r).map(|o| (flat / ost[o] % shape[o]) * st[perm[o]]).sum();
                    v.data[k]
                })
                .collect();
            same(&v, shape, data)
        }
        "Slice" => {
            let v = a()?;
            let r = v.shape.len();
            let (starts, ends) = (arg(1)?.data, arg(2)?.data);
            let axes: Vec<i64> = match arg(3) {
                Some(t) => t.data,
                None if n.input.get(3).is_some_and(|s| !s.is_empty()) => return None,
                None => (0..starts.len() as i64).collect(),
            };
            let steps: Vec<i64> = match arg(4) {
                Some(t) => t.data,
                None if n.input.get(4).is_some_and(|s| !s.is_empty()) => return None,
                None => vec![1; starts.len()],
            };
            if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
                return None;
            }
            // the indices each axis keeps
            let mut picks: Vec<Vec<usize>> = v.shape.iter().map(|&d| (0..d).collect()).collect();
            for k in 0..axes.len() {
                let q = axis(axes[k], r)?;
                if steps[k] == 0 {
                    return None;
                }
                let idx = crate::ops::shape::slice_indices(starts[k], ends[k], steps[k], v.shape[q] as i64);
                picks[q] = idx.into_iter().map(|i| i as usize).collect();
            }
            let shape: Vec<usize> = picks.iter().map(|p| p.len()).collect();
            let st = Ints::strides(&v.shape);
            let ost = Ints::strides(&shape);
            let data = (0..Ints::numel(&shape))
                .map(|flat| v.data[(0..r).map(|o| picks[o][flat / ost[o] % shape[o]] * st[o]).sum::<usize>()])
                .collect();
            same(&v, shape, data)
        }
        "Concat" => {
            let parts: Vec<Ints> = x.iter().cloned().collect::<Option<_>>()?;
            let first = parts.first()?;
            let r = first.shape.len();
            let q = axis(n.attr_i("axis", 0), r)?;
            if parts.iter().any(|p| p.shape.len() != r || (0..r).any(|o| o != q && p.shape[o] != first.shape[o])) {
                return None;
            }
            let outer: usize = first.shape[..q].iter().product();
            let mut shape = first.shape.clone();
            shape[q] = parts.iter().map(|p| p.shape[q]).sum();
            let mut data = Vec::with_capacity(Ints::numel(&shape));
            for o in 0..outer {
                for p in &parts {
                    let inner: usize = p.shape[q..].iter().product();
                    data.extend_from_slice(&p.data[o * inner..(o + 1) * inner]);
                }
            }
            same(first, shape, data)
        }
        "Gather" => {
            let v = a()?;
            let idx = arg(1)?;
            let r = v.shape.len();
            let q = axis(n.attr_i("axis", 0), r)?;
            let d = v.shape[q] as i64;
            let outer: usize = v.shape[..q].iter().product();
            let inner: usize = v.shape[q + 1..].iter().product();
            let mut shape: Vec<usize> = v.shape[..q].to_vec();
            shape.extend(&idx.shape);
            shape.extend(&v.shape[q + 1..]);
            let mut data = Vec::with_capacity(Ints::numel(&shape));
            for o in 0..outer {
                for &i in &idx.data {
                    let i = if i < 0 { i + d } else { i };
                    if !(0..d).contains(&i) {
                        return None;
                    }
                    let base = (o * v.shape[q] + i as usize) * inner;
                    data.extend_from_slice(&v.data[base..base + inner]);
                }
            }
            same(&v, shape, data)
        }
        "ConstantOfShape" => {
            let shape: Vec<usize> = a()?.data.iter().map(|&d| usize::try_from(d).ok()).collect::<Option<_>>()?;
            let (dtype, value) = match n.attr("value").and_then(|t| t.t.as_ref()) {
                Some(t) if int_dtype(t.data_type) => (t.data_type, *tensor::to_i64(t).ok()?.first()?),
                _ => return None, // float zeros (the default): not shape arithmetic
            };
            if Ints::numel(&shape) > FOLD_LIMIT {
                return None;
            }
            Ints { data: vec![value; Ints::numel(&shape)], shape, dtype }
        }
        "Expand" | "Tile" => {
            let v = a()?;
            let b = arg(1)?;
            if n.op_type == "Expand" {
                let target: Vec<usize> = b.data.iter().map(|&d| usize::try_from(d).ok()).collect::<Option<_>>()?;
                let shape = broadcast_shapes(&[&v.shape, &target])?;
                if Ints::numel(&shape) > FOLD_LIMIT {
                    return None;
                }
                same(&v, shape.clone(), v.broadcast_to(&shape)?)
            } else {
                let reps: Vec<usize> = b.data.iter().map(|&d| usize::try_from(d).ok()).collect::<Option<_>>()?;
                if reps.len() != v.shape.len() {
                    return None;
                }
                let shape: Vec<usize> = v.shape.iter().zip(&reps).map(|(d, r)| d * r).collect();
                if Ints::numel(&shape) > FOLD_LIMIT {
                    return None;
                }
                let st = Ints::strides(&v.shape);
                let ost = Ints::strides(&shape);
                let data = (0..Ints::numel(&shape))
                    .map(|flat| {
                        v.data[(0..shape.len()).map(|o| (flat / ost[o] % shape[o]) % v.shape[o] * st[o]).sum::<usize>()]
                    })
                    .collect();
                same(&v, shape, data)
            }
        }
        "Range" => {
            let (s0, l, d) = (a()?, arg(1)?, arg(2)?);
            let (start, limit, delta) = (*s0.data.first()?, *l.data.first()?, *d.data.first()?);
            if delta == 0 {
                return None;
            }
            let count = ((limit - start) as f64 / delta as f64).ceil().max(0.0) as usize;
            if count > FOLD_LIMIT {
                return None;
            }
            Ints { shape: vec![count], data: (0..count as i64).map(|i| start + i * delta).collect(), dtype: s0.dtype }
        }
        "Neg" | "Abs" | "Ceil" | "Floor" | "Sqrt" if float_dtype(a()?.dtype) => {
            let v = a()?;
            let g = |e: f64| match n.op_type.as_str() {
                "Neg" => -e,
                "Abs" => e.abs(),
                "Ceil" => e.ceil(),
                "Floor" => e.floor(),
                _ => e.sqrt(),
            };
            Ints { data: v.data.iter().map(|&e| bits(g(f(e)))).collect(), ..v }
        }
        "Clip" if float_dtype(a()?.dtype) => {
            let v = a()?;
            let lo = arg(1).and_then(|t| t.data.first().map(|&e| f(e))).unwrap_or(f64::NEG_INFINITY);
            let hi = arg(2).and_then(|t| t.data.first().map(|&e| f(e))).unwrap_or(f64::INFINITY);
            Ints { data: v.data.iter().map(|&e| bits(f(e).max(lo).min(hi))).collect(), ..v }
        }
        "Neg" | "Abs" | "Not" => {
            let v = a()?;
            let f = |e: i64| match n.op_type.as_str() {
                "Neg" => -e,
                "Abs" => e.abs(),
                _ => (e == 0) as i64,
            };
            Ints { data: v.data.iter().map(|&e| f(e)).collect(), ..v }
        }
        "Add" | "Sub" | "Mul" | "Div" | "Mod" | "Max" | "Min" | "Equal" | "Less" | "LessOrEqual" | "Greater"
        | "GreaterOrEqual" | "And" | "Or" | "Where" => {
            let vs: Vec<Ints> = x.iter().cloned().collect::<Option<_>>()?;
            if vs.len() < 2 || (n.op_type != "Where" && !matches!(n.op_type.as_str(), "Max" | "Min") && vs.len() != 2)
            {
                return None;
            }
            let shapes: Vec<&[usize]> = vs.iter().map(|v| v.shape.as_slice()).collect();
            let shape = broadcast_shapes(&shapes)?;
            if Ints::numel(&shape) > FOLD_LIMIT {
                return None;
            }
            let cols: Vec<Vec<i64>> = vs.iter().map(|v| v.broadcast_to(&shape)).collect::<Option<_>>()?;
            if vs.iter().any(|v| float_dtype(v.dtype)) {
                return float_binary(n, &vs, &cols, shape).map(|v| vec![v]);
            }
            let fmod = n.attr_i("fmod", 0) == 1;
            let mut data = Vec::with_capacity(cols[0].len());
            for k in 0..cols[0].len() {
                let (p, q) = (cols[0][k], cols[1][k]);
                data.push(match n.op_type.as_str() {
                    "Add" => p.checked_add(q)?,
                    "Sub" => p.checked_sub(q)?,
                    "Mul" => p.checked_mul(q)?,
                    // integer Div truncates toward zero (ONNX Runtime, C++)
                    "Div" => p.checked_div(q)?,
                    "Mod" if fmod => p.checked_rem(q)?,
                    // fmod = 0: the remainder takes the divisor's sign (Python's %)
                    "Mod" => {
                        let m = p.checked_rem(q)?;
                        if m != 0 && (m < 0) != (q < 0) {
                            m + q
                        } else {
                            m
                        }
                    }
                    "Max" => cols.iter().map(|c| c[k]).max()?,
                    "Min" => cols.iter().map(|c| c[k]).min()?,
                    "Equal" => (p == q) as i64,
                    "Less" => (p < q) as i64,
                    "LessOrEqual" => (p <= q) as i64,
                    "Greater" => (p > q) as i64,
                    "GreaterOrEqual" => (p >= q) as i64,
                    "And" => (p != 0 && q != 0) as i64,
                    "Or" => (p != 0 || q != 0) as i64,
                    _ => {
                        if p != 0 {
                            q
                        } else {
                            cols[2][k]
                        }
                    }
                });
            }
            let dtype = match n.op_type.as_str() {
                "Equal" | "Less" | "LessOrEqual" | "Greater" | "GreaterOrEqual" | "And" | "Or" => dt::BOOL,
                "Where" => vs[1].dtype,
                _ => vs[0].dtype,
            };
            Ints { shape, data, dtype }
        }
        _ => return None,
    };
    (out.data.len() <= FOLD_LIMIT && Ints::numel(&out.shape) == out.data.len()).then(|| vec![out])
}

/// Elementwise arithmetic and comparisons on floats (shape arithmetic only: see float_dtype).
fn float_binary(n: &crate::onnx::NodeProto, vs: &[Ints], cols: &[Vec<i64>], shape: Vec<usize>) -> Option<Ints> {
    let op = n.op_type.as_str();
    if op == "Where" || op == "Mod" || op == "And" || op == "Or" || vs.iter().any(|v| !float_dtype(v.dtype)) {
        return None;
    }
    let mut data = Vec::with_capacity(cols[0].len());
    for k in 0..cols[0].len() {
        let (p, q) = (f(cols[0][k]), f(cols[1][k]));
        data.push(match op {
            "Add" => bits(p + q),
            "Sub" => bits(p - q),
            "Mul" => bits(p * q),
            "Div" => bits(p / q),
            "Max" => bits(cols.iter().map(|c| f(c[k])).fold(f64::NEG_INFINITY, f64::max)),
            "Min" => bits(cols.iter().map(|c| f(c[k])).fold(f64::INFINITY, f64::min)),
            "Equal" => (p == q) as i64,
            "Less" => (p < q) as i64,
            "LessOrEqual" => (p <= q) as i64,
            "Greater" => (p > q) as i64,
            "GreaterOrEqual" => (p >= q) as i64,
            _ => return None,
        });
    }
    let dtype = if matches!(op, "Equal" | "Less" | "LessOrEqual" | "Greater" | "GreaterOrEqual") { dt::BOOL } else { vs[0].dtype };
    Some(Ints { shape, data, dtype })
}

/// Integer arithmetic whose every input is known before running (shape computations: the legacy
/// exporter's `F.pad` with a list, timm's "same" padding, `torch.tensor_split` and `chunk`
/// sizes) is computed once and stored as constants, so that the values reach the rules that
/// need them (Pad's pads, Split's sizes) however the exporter wrote them. Only integer and
/// boolean results are stored; floats enter only from Constant nodes and sizes cast to float
/// (never an initializer: a parameter is one), and only on the way to an integer. Returns how
/// many nodes it folded. A size known only once an earlier one is (the next block's "same"
/// padding reads the size the previous padding gives) is folded in a later round, with the
/// shapes inferred again, until a round folds none.
pub fn fold_integer_constants(g: &mut Graph) -> Result<usize> {
    let mut done = 0;
    loop {
        match fold_round(g)? {
            0 => return Ok(done),
            k => done += k,
        }
    }
}

/// One round of `fold_integer_constants` with the shapes as inferred at its start.
fn fold_round(g: &mut Graph) -> Result<usize> {
    let s = shapes::infer(g)?;
    let outputs: std::collections::HashSet<String> = g.outputs.iter().map(|o| o.name.clone()).collect();
    let mut folded: HashMap<String, Ints> = HashMap::new();
    let mut remove = Vec::new();
    for i in g.topo_order()? {
        let n = &g.nodes[i];
        if n.op_type == "Constant" || n.output.len() != 1 || n.output.iter().any(|o| outputs.contains(o)) {
            continue;
        }
        if !n.domain.is_empty() || !s.get(&n.output[0]).is_some_and(|t| int_dtype(t.dtype) || float_dtype(t.dtype))
        {
            continue;
        }
        let x: Vec<Option<Ints>> =
            n.input.iter().map(|v| if v.is_empty() { None } else { known(g, &s, &folded, v) }).collect();
        if n.input.iter().zip(&x).any(|(v, k)| !v.is_empty() && k.is_none()) {
            continue;
        }
        let Some(outs) = eval(n, &x) else { continue };
        // a float result is only carried to the integers computed from it (a float initializer
        // would look like a tensor the file computed at export): the node stays until nothing
        // reads it
        let float = outs.iter().any(|v| float_dtype(v.dtype));
        for (o, v) in n.output.iter().zip(outs) {
            folded.insert(o.clone(), v);
        }
        if !float {
            remove.push(i);
        }
    }
    if remove.is_empty() {
        return Ok(0);
    }
    let names: Vec<String> = remove.iter().map(|&i| g.nodes[i].output[0].clone()).collect();
    let removed: std::collections::HashSet<usize> = remove.iter().copied().collect();
    let mut k = 0;
    g.nodes.retain(|_| {
        k += 1;
        !removed.contains(&(k - 1))
    });
    for name in &names {
        let t = folded[name].tensor(name);
        g.initializers.push(t);
    }
    g.remove_dead();
    Ok(names.len())
}
