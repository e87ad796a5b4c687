//! dtype and shape of every value, with symbolic dimensions (the batch dimension of an export
//! is a `dim_param`). Small integer tensors (shapes, axes, indices) are tracked by value too,
//! because exporters compute Reshape targets with Shape → Gather → Concat chains.
use std::collections::HashMap;
use std::fmt;

use crate::ir::{constant_value, Graph, NodeExt};
use crate::onnx::proto::{data_type as dt, tensor_shape_proto::dimension, type_proto, NodeProto, TypeProto};
use crate::onnx::tensor;
use crate::{bail, ir::node_error, Result};

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
        Some(s) => format!("[{}]", s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
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
    fn fresh_dim(&mut self, hint: &str) -> Dim {
        self.counter += 1;
        Dim::Sym(format!("{hint}{}", self.counter))
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

fn norm_axis(axis: i64, rank: usize) -> usize {
    if axis < 0 {
        (axis + rank as i64).max(0) as usize
    } else {
        axis as usize
    }
}

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
                // a known size > 1 against a symbol: the known size (the symbol must equal it)
                (Dim::Known(_), Dim::Sym(_)) => d.clone(),
                (x, _) => x.clone(),
            };
        }
        out.push(d);
    }
    Some(out)
}

fn conv_out(size: &Dim, k: i64, stride: i64, pad_begin: i64, pad_end: i64, dilation: i64, ceil: bool) -> Dim {
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

fn set(s: &mut Shapes, name: &str, dtype: i32, shape: Option<Shape>) {
    if !name.is_empty() {
        s.types.insert(name.to_string(), ValueType { dtype, shape });
    }
}

fn input_type(s: &Shapes, n: &NodeProto, i: usize) -> Result<ValueType> {
    let name = n.input.get(i).filter(|x| !x.is_empty()).ok_or_else(|| node_error(n, format!("missing input {i}")))?;
    s.types
        .get(name)
        .cloned()
        .ok_or_else(|| node_error(n, format!("input '{name}' has no known type (is it produced or declared?)")))
}

fn ints_of(g: &Graph, s: &Shapes, name: &str) -> Option<Vec<i64>> {
    if let Some(v) = s.values.get(name) {
        return v.iter().map(|d| d.known()).collect();
    }
    constant_value(g, name).and_then(|t| tensor::to_i64(t).ok())
}

/// Axes from the attribute (older opsets) or the second input (newer ones).
fn axes_of(g: &Graph, s: &Shapes, n: &NodeProto, input: usize) -> Option<Vec<i64>> {
    n.attr_ints("axes").or_else(|| n.input.get(input).filter(|x| !x.is_empty()).and_then(|a| ints_of(g, s, a)))
}

fn infer_node(g: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let op = n.op_type.as_str();
    let out0 = n.output.first().cloned().unwrap_or_default();
    macro_rules! same_as_input {
        () => {{
            let t = input_type(s, n, 0)?;
            set(s, &out0, t.dtype, t.shape);
        }};
    }
    match op {
        "Relu"
        | "Sigmoid"
        | "Tanh"
        | "Exp"
        | "Log"
        | "Sqrt"
        | "Neg"
        | "Abs"
        | "Reciprocal"
        | "Erf"
        | "Gelu"
        | "LeakyRelu"
        | "Softmax"
        | "LogSoftmax"
        | "Identity"
        | "Clip"
        | "Elu"
        | "Selu"
        | "HardSigmoid"
        | "HardSwish"
        | "Softplus"
        | "Floor"
        | "Ceil"
        | "Round"
        | "Sign"
        | "Sin"
        | "Cos"
        | "Mish"
        | "PRelu"
        | "Celu"
        | "Not"
        | "LpNormalization"
        | "InstanceNormalization"
        | "ScatterElements"
        | "ScatterND"
        | "Trilu"
        | "CumSum" => {
            same_as_input!();
            if op == "Identity" {
                if let Some(v) = s.values.get(&n.input[0]).cloned() {
                    s.values.insert(out0.clone(), v);
                }
            }
        }
        "Dropout" => {
            let t = input_type(s, n, 0)?;
            if let Some(mask) = n.output.get(1) {
                set(s, mask, dt::BOOL, t.shape.clone());
            }
            set(s, &out0, t.dtype, t.shape);
        }
        "IsNaN" | "IsInf" => {
            let t = input_type(s, n, 0)?;
            set(s, &out0, dt::BOOL, t.shape);
        }
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Max" | "Min" | "Sum" | "Mean" | "Mod" | "Equal" | "Less"
        | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "And" | "Or" | "Xor" | "Where" | "BitShift" => {
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
            set(s, &out0, dtype, shape);
            // value propagation for shape arithmetic
            let vals: Option<Vec<Vec<Dim>>> = n.input.iter().map(|i| s.values.get(i).cloned()).collect();
            if let Some(vals) = vals {
                let folded = if op == "Where" { fold_where(&vals) } else { fold_binary(op, &vals) };
                if let Some(v) = folded {
                    s.values.insert(out0.clone(), v);
                }
            }
        }
        "Cast" => {
            let t = input_type(s, n, 0)?;
            let to = n.attr_i("to", dt::FLOAT as i64) as i32;
            set(s, &out0, to, t.shape);
            if to == dt::INT64 || to == dt::INT32 {
                if let Some(v) = s.values.get(&n.input[0]).cloned() {
                    s.values.insert(out0.clone(), v);
                }
            }
        }
        "CastLike" => {
            let t = input_type(s, n, 0)?;
            let like = input_type(s, n, 1)?;
            set(s, &out0, like.dtype, t.shape);
        }
        "Constant" => {
            let a = n.attribute.first().ok_or_else(|| node_error(n, "Constant without a value"))?;
            match a.name.as_str() {
                "value" => {
                    let t = a.t.as_ref().ok_or_else(|| node_error(n, "Constant value is not a tensor"))?;
                    set(s, &out0, t.data_type, Some(t.dims.iter().map(|&d| Dim::Known(d)).collect()));
                    if matches!(t.data_type, dt::INT64 | dt::INT32) && t.dims.len() <= 1 && tensor::numel(t) <= 64 {
                        if let Ok(v) = tensor::to_i64(t) {
                            s.values.insert(out0.clone(), v.into_iter().map(Dim::Known).collect());
                        }
                    }
                }
                "value_int" => {
                    set(s, &out0, dt::INT64, Some(vec![]));
                    s.values.insert(out0.clone(), vec![Dim::Known(a.i.unwrap_or(0))]);
                }
                "value_ints" => {
                    set(s, &out0, dt::INT64, Some(vec![Dim::Known(a.ints.len() as i64)]));
                    s.values.insert(out0.clone(), a.ints.iter().map(|&v| Dim::Known(v)).collect());
                }
                "value_float" => set(s, &out0, dt::FLOAT, Some(vec![])),
                "value_floats" => set(s, &out0, dt::FLOAT, Some(vec![Dim::Known(a.floats.len() as i64)])),
                other => bail!("{}: Constant attribute '{other}' is not supported", n.describe()),
            }
        }
        "Shape" => {
            let t = input_type(s, n, 0)?;
            match t.shape {
                Some(shape) => {
                    let r = shape.len() as i64;
                    let clampi = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
                    let start = clampi(n.attr_i("start", 0));
                    let end = clampi(n.attr_i("end", r));
                    let v: Vec<Dim> = shape[start..end.max(start)].to_vec();
                    set(s, &out0, dt::INT64, Some(vec![Dim::Known(v.len() as i64)]));
                    s.values.insert(out0.clone(), v);
                }
                None => set(s, &out0, dt::INT64, None),
            }
        }
        "Size" => set(s, &out0, dt::INT64, Some(vec![])),
        "Gemm" => {
            let a = input_type(s, n, 0)?;
            let b = input_type(s, n, 1)?;
            let (ta, tb) = (n.attr_i("transA", 0) != 0, n.attr_i("transB", 0) != 0);
            let shape = match (&a.shape, &b.shape) {
                (Some(sa), Some(sb)) if sa.len() == 2 && sb.len() == 2 => Some(vec![
                    if ta { sa[1].clone() } else { sa[0].clone() },
                    if tb { sb[0].clone() } else { sb[1].clone() },
                ]),
                _ => None,
            };
            set(s, &out0, a.dtype, shape);
        }
        "MatMul" => {
            let a = input_type(s, n, 0)?;
            let b = input_type(s, n, 1)?;
            let shape = match (&a.shape, &b.shape) {
                (Some(sa), Some(sb)) => Some(matmul_shape(sa, sb).ok_or_else(|| {
                    node_error(n, format!("MatMul of shapes {} and {}", shape_string(&a.shape), shape_string(&b.shape)))
                })?),
                _ => None,
            };
            set(s, &out0, a.dtype, shape);
        }
        "Conv" | "MaxPool" | "AveragePool" | "LpPool" => {
            let x = input_type(s, n, 0)?;
            let shape = match &x.shape {
                Some(xs) if xs.len() >= 3 => {
                    let sp = xs.len() - 2;
                    let kernel = if op == "Conv" {
                        let w = input_type(s, n, 1)?;
                        match w.shape {
                            Some(ws) => ws[2..].iter().map(|d| d.known().unwrap_or(1)).collect(),
                            None => n.attr_ints("kernel_shape").unwrap_or(vec![1; sp]),
                        }
                    } else {
                        n.attr_ints("kernel_shape").ok_or_else(|| node_error(n, "kernel_shape missing"))?
                    };
                    let strides = n.attr_ints("strides").unwrap_or(vec![1; sp]);
                    let dil = n.attr_ints("dilations").unwrap_or(vec![1; sp]);
                    let mut pads = n.attr_ints("pads").unwrap_or(vec![0; 2 * sp]);
                    let auto_pad = n.attr_s("auto_pad").unwrap_or_default();
                    let ceil = n.attr_i("ceil_mode", 0) != 0;
                    let mut out = vec![xs[0].clone()];
                    out.push(if op == "Conv" {
                        input_type(s, n, 1)?.shape.map(|w| w[0].clone()).unwrap_or_else(|| s.fresh_dim("c"))
                    } else {
                        xs[1].clone()
                    });
                    for i in 0..sp {
                        let d = match (auto_pad.as_str(), &xs[2 + i]) {
                            ("SAME_UPPER" | "SAME_LOWER", Dim::Known(h)) => {
                                Dim::Known((h + strides[i] - 1) / strides[i])
                            }
                            ("VALID", _) => {
                                pads = vec![0; 2 * sp];
                                conv_out(&xs[2 + i], kernel[i], strides[i], 0, 0, dil[i], ceil)
                            }
                            _ => conv_out(&xs[2 + i], kernel[i], strides[i], pads[i], pads[i + sp], dil[i], ceil),
                        };
                        out.push(d);
                    }
                    Some(out)
                }
                _ => None,
            };
            if let Some(ind) = n.output.get(1) {
                set(s, ind, dt::INT64, shape.clone());
            }
            set(s, &out0, x.dtype, shape);
        }
        "ConvTranspose" => {
            let x = input_type(s, n, 0)?;
            let w = input_type(s, n, 1)?;
            let shape = match (&x.shape, &w.shape) {
                (Some(xs), Some(ws)) if xs.len() >= 3 => {
                    let sp = xs.len() - 2;
                    let group = n.attr_i("group", 1);
                    let strides = n.attr_ints("strides").unwrap_or(vec![1; sp]);
                    let dil = n.attr_ints("dilations").unwrap_or(vec![1; sp]);
                    let pads = n.attr_ints("pads").unwrap_or(vec![0; 2 * sp]);
                    let opad = n.attr_ints("output_padding").unwrap_or(vec![0; sp]);
                    let mut out = vec![
                        xs[0].clone(),
                        ws[1].known().map(|c| Dim::Known(c * group)).unwrap_or_else(|| s.fresh_dim("c")),
                    ];
                    if let Some(os) = n.attr_ints("output_shape") {
                        out.extend(os.iter().map(|&v| Dim::Known(v)));
                    } else {
                        for i in 0..sp {
                            let k = ws[2 + i].known().unwrap_or(1);
                            out.push(match xs[2 + i] {
                                Dim::Known(h) => Dim::Known(
                                    strides[i] * (h - 1) + opad[i] + (k - 1) * dil[i] + 1 - pads[i] - pads[i + sp],
                                ),
                                _ => s.fresh_dim("convT"),
                            });
                        }
                    }
                    Some(out)
                }
                _ => None,
            };
            set(s, &out0, x.dtype, shape);
        }
        "GlobalAveragePool" | "GlobalMaxPool" => {
            let x = input_type(s, n, 0)?;
            let shape = x
                .shape
                .map(|xs| xs.iter().enumerate().map(|(i, d)| if i < 2 { d.clone() } else { Dim::Known(1) }).collect());
            set(s, &out0, x.dtype, shape);
        }
        "BatchNormalization" => {
            let x = input_type(s, n, 0)?;
            let c = x.shape.as_ref().map(|xs| vec![xs[1].clone()]);
            for o in n.output.iter().skip(1) {
                set(s, o, x.dtype, c.clone());
            }
            set(s, &out0, x.dtype, x.shape);
        }
        "LayerNormalization" => {
            let x = input_type(s, n, 0)?;
            if let Some(xs) = &x.shape {
                let axis = norm_axis(n.attr_i("axis", -1), xs.len());
                let red: Shape =
                    xs.iter().enumerate().map(|(i, d)| if i < axis { d.clone() } else { Dim::Known(1) }).collect();
                for o in n.output.iter().skip(1) {
                    set(s, o, dt::FLOAT, Some(red.clone()));
                }
            }
            set(s, &out0, x.dtype, x.shape);
        }
        "Flatten" => {
            let x = input_type(s, n, 0)?;
            let shape = x.shape.as_ref().map(|xs| {
                let axis = norm_axis(n.attr_i("axis", 1), xs.len());
                vec![dims_product(&xs[..axis]), dims_product(&xs[axis..])]
            });
            set(s, &out0, x.dtype, shape);
        }
        "Reshape" => {
            let x = input_type(s, n, 0)?;
            let target = s.values.get(&n.input[1]).cloned();
            let shape = match (target, &x.shape) {
                (Some(t), xs) => Some(reshape_shape(n, xs.as_ref(), &t, n.attr_i("allowzero", 0) != 0)?),
                (None, _) => {
                    let r =
                        s.rank(&n.input[1]).and(s.shape(&n.input[1]).and_then(|sh| sh.first()).and_then(|d| d.known()));
                    r.map(|r| (0..r).map(|_| s.fresh_dim("r")).collect())
                }
            };
            if let (Some(v), Some(sh)) = (s.values.get(&n.input[0]).cloned(), &shape) {
                if sh.len() <= 1 {
                    s.values.insert(out0.clone(), v);
                }
            }
            set(s, &out0, x.dtype, shape);
        }
        "Transpose" => {
            let x = input_type(s, n, 0)?;
            let shape = x.shape.map(|xs| {
                let perm = n.attr_ints("perm").unwrap_or_else(|| (0..xs.len() as i64).rev().collect());
                perm.iter().map(|&p| xs[p as usize].clone()).collect()
            });
            set(s, &out0, x.dtype, shape);
        }
        "Squeeze" | "Unsqueeze" => {
            let x = input_type(s, n, 0)?;
            let axes = axes_of(g, s, n, 1);
            let shape = match (&x.shape, axes) {
                (Some(xs), Some(axes)) if op == "Unsqueeze" => {
                    let r = xs.len() + axes.len();
                    let mut ax: Vec<usize> = axes.iter().map(|&a| norm_axis(a, r)).collect();
                    ax.sort();
                    let mut out = Vec::with_capacity(r);
                    let mut it = xs.iter();
                    for i in 0..r {
                        out.push(if ax.contains(&i) {
                            Dim::Known(1)
                        } else {
                            it.next().cloned().unwrap_or(Dim::Known(1))
                        });
                    }
                    Some(out)
                }
                (Some(xs), Some(axes)) => {
                    let ax: Vec<usize> = axes.iter().map(|&a| norm_axis(a, xs.len())).collect();
                    Some(xs.iter().enumerate().filter(|(i, _)| !ax.contains(i)).map(|(_, d)| d.clone()).collect())
                }
                (Some(xs), None) if op == "Squeeze" => {
                    Some(xs.iter().filter(|d| **d != Dim::Known(1)).cloned().collect())
                }
                _ => None,
            };
            if let Some(v) = s.values.get(&n.input[0]).cloned() {
                s.values.insert(out0.clone(), v);
            }
            set(s, &out0, x.dtype, shape);
        }
        "Concat" => {
            let types: Vec<ValueType> = (0..n.input.len()).map(|i| input_type(s, n, i)).collect::<Result<_>>()?;
            let shape = if types.iter().all(|t| t.shape.is_some()) {
                let first = types[0].shape.clone().unwrap();
                let axis = norm_axis(n.attr_i("axis", 0), first.len());
                let mut out = first.clone();
                let mut total: Option<i64> = Some(0);
                for t in &types {
                    let d = &t.shape.as_ref().unwrap()[axis];
                    total = total.and_then(|acc| d.known().map(|v| acc + v));
                }
                out[axis] = total.map(Dim::Known).unwrap_or_else(|| s.fresh_dim("cat"));
                Some(out)
            } else {
                None
            };
            let vals: Option<Vec<Vec<Dim>>> = n.input.iter().map(|i| s.values.get(i).cloned()).collect();
            if let Some(vals) = vals {
                s.values.insert(out0.clone(), vals.concat());
            }
            set(s, &out0, types[0].dtype, shape);
        }
        "Split" => {
            let x = input_type(s, n, 0)?;
            let k = n.output.len();
            let split = n
                .attr_ints("split")
                .or_else(|| n.input.get(1).filter(|x| !x.is_empty()).and_then(|i| ints_of(g, s, i)));
            for (j, o) in n.output.iter().enumerate() {
                let shape = x.shape.as_ref().map(|xs| {
                    let axis = norm_axis(n.attr_i("axis", 0), xs.len());
                    let mut out = xs.clone();
                    out[axis] = match (&split, &xs[axis]) {
                        (Some(sp), _) => Dim::Known(sp[j]),
                        (None, Dim::Known(d)) => Dim::Known((d + k as i64 - 1) / k as i64).clone(),
                        _ => Dim::Sym(format!("split{j}")),
                    };
                    if split.is_none() {
                        if let Dim::Known(d) = xs[axis] {
                            let chunk = (d + k as i64 - 1) / k as i64;
                            out[axis] = Dim::Known(if j + 1 == k { d - chunk * (k as i64 - 1) } else { chunk });
                        }
                    }
                    out
                });
                set(s, o, x.dtype, shape);
            }
        }
        "Slice" => {
            let x = input_type(s, n, 0)?;
            let starts = ints_of(g, s, &n.input[1]);
            let ends = ints_of(g, s, &n.input[2]);
            let axes = n.input.get(3).filter(|x| !x.is_empty()).map(|a| ints_of(g, s, a));
            let steps = n.input.get(4).filter(|x| !x.is_empty()).map(|a| ints_of(g, s, a));
            let shape = match (&x.shape, starts, ends) {
                (Some(xs), Some(st), Some(en)) => {
                    let axes = match axes {
                        Some(Some(a)) => a,
                        Some(None) => return unknown_rank_out(s, &out0, x.dtype, Some(xs.len())),
                        None => (0..st.len() as i64).collect(),
                    };
                    let steps = match steps {
                        Some(Some(a)) => a,
                        Some(None) => return unknown_rank_out(s, &out0, x.dtype, Some(xs.len())),
                        None => vec![1; st.len()],
                    };
                    let mut out = xs.clone();
                    let mut val = s.values.get(&n.input[0]).cloned();
                    for (j, &a) in axes.iter().enumerate() {
                        let a = norm_axis(a, xs.len());
                        match &xs[a] {
                            Dim::Known(d) => {
                                let (b, e, step) = slice_bounds(st[j], en[j], steps[j], *d);
                                let len = if step > 0 {
                                    ((e - b).max(0) + step - 1) / step
                                } else {
                                    ((b - e).max(0) + (-step) - 1) / (-step)
                                };
                                out[a] = Dim::Known(len);
                                if let Some(v) = &mut val {
                                    if xs.len() == 1 && step > 0 {
                                        *v = v
                                            .iter()
                                            .skip(b as usize)
                                            .take(len as usize)
                                            .step_by(step as usize)
                                            .cloned()
                                            .collect();
                                    } else {
                                        val = None;
                                    }
                                }
                            }
                            Dim::Sym(sym) => {
                                out[a] = if st[j] == 0 && en[j] >= i64::MAX / 2 && steps[j] == 1 {
                                    Dim::Sym(sym.clone())
                                } else {
                                    s.fresh_dim("slice")
                                };
                                val = None;
                            }
                        }
                    }
                    if let Some(v) = val {
                        s.values.insert(out0.clone(), v);
                    }
                    Some(out)
                }
                (Some(xs), _, _) => Some((0..xs.len()).map(|_| s.fresh_dim("slice")).collect()),
                _ => None,
            };
            set(s, &out0, x.dtype, shape);
        }
        "Gather" => {
            let x = input_type(s, n, 0)?;
            let idx = input_type(s, n, 1)?;
            let shape = match (&x.shape, &idx.shape) {
                (Some(xs), Some(is)) => {
                    let axis = norm_axis(n.attr_i("axis", 0), xs.len());
                    let mut out = xs[..axis].to_vec();
                    out.extend(is.iter().cloned());
                    out.extend(xs[axis + 1..].iter().cloned());
                    Some(out)
                }
                _ => None,
            };
            if let (Some(v), Some(i)) = (s.values.get(&n.input[0]).cloned(), ints_of(g, s, &n.input[1])) {
                let picked: Option<Vec<Dim>> = i
                    .iter()
                    .map(|&k| v.get(if k < 0 { (k + v.len() as i64) as usize } else { k as usize }).cloned())
                    .collect();
                if let Some(p) = picked {
                    s.values.insert(out0.clone(), p);
                }
            }
            set(s, &out0, x.dtype, shape);
        }
        "GatherElements" => {
            let x = input_type(s, n, 0)?;
            let idx = input_type(s, n, 1)?;
            set(s, &out0, x.dtype, idx.shape);
        }
        "Expand" => {
            let x = input_type(s, n, 0)?;
            let shape = match (&x.shape, s.values.get(&n.input[1]).cloned()) {
                (Some(xs), Some(t)) => broadcast(&[xs, &t]),
                _ => None,
            };
            set(s, &out0, x.dtype, shape);
        }
        "Tile" => {
            let x = input_type(s, n, 0)?;
            let shape = match (&x.shape, ints_of(g, s, &n.input[1])) {
                (Some(xs), Some(r)) => Some(
                    xs.iter()
                        .zip(r.iter())
                        .map(|(d, &k)| match d {
                            Dim::Known(v) => Dim::Known(v * k),
                            Dim::Sym(sym) if k == 1 => Dim::Sym(sym.clone()),
                            _ => Dim::Sym(format!("tile({d})")),
                        })
                        .collect(),
                ),
                _ => None,
            };
            set(s, &out0, x.dtype, shape);
        }
        "Pad" => {
            let x = input_type(s, n, 0)?;
            let pads = n.attr_ints("pads").or_else(|| n.input.get(1).and_then(|p| ints_of(g, s, p)));
            let shape = match (&x.shape, pads) {
                (Some(xs), Some(p)) if n.input.get(3).map(|a| a.is_empty()).unwrap_or(true) => {
                    let r = xs.len();
                    Some(
                        xs.iter()
                            .enumerate()
                            .map(|(i, d)| match d {
                                Dim::Known(v) => Dim::Known(v + p[i] + p[i + r]),
                                Dim::Sym(sym) if p[i] + p[i + r] == 0 => Dim::Sym(sym.clone()),
                                _ => Dim::Sym(format!("pad({d})")),
                            })
                            .collect(),
                    )
                }
                (Some(xs), _) => Some((0..xs.len()).map(|_| s.fresh_dim("pad")).collect()),
                _ => None,
            };
            set(s, &out0, x.dtype, shape);
        }
        "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceL2" | "ReduceL1"
        | "ReduceLogSumExp" | "ReduceSumSquare" | "ArgMax" | "ArgMin" => {
            let x = input_type(s, n, 0)?;
            let keep = n.attr_i("keepdims", 1) != 0;
            let arg = op.starts_with("Arg");
            let axes = if arg { Some(vec![n.attr_i("axis", 0)]) } else { axes_of(g, s, n, 1) };
            let has_axes_input = n.input.get(1).map(|a| !a.is_empty()).unwrap_or(false) || n.attr("axes").is_some();
            let shape = match (&x.shape, axes) {
                (Some(xs), Some(ax)) => {
                    let ax: Vec<usize> = ax.iter().map(|&a| norm_axis(a, xs.len())).collect();
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
                (None, None) if !has_axes_input && !keep && !arg && n.attr_i("noop_with_empty_axes", 0) == 0 => {
                    Some(vec![])
                }
                _ => None,
            };
            set(s, &out0, if arg { dt::INT64 } else { x.dtype }, shape);
        }
        "ConstantOfShape" => {
            let dtype = n.attr("value").and_then(|a| a.t.as_ref()).map(|t| t.data_type).unwrap_or(dt::FLOAT);
            let shape = s.values.get(&n.input[0]).cloned().or_else(|| {
                let r = s.shape(&n.input[0])?.first()?.known()?;
                Some((0..r).map(|i| Dim::Sym(format!("cos{i}"))).collect())
            });
            // a small integer vector of known length (exporters build `expand` targets this way)
            let fill = n.attr("value").and_then(|a| a.t.as_ref()).and_then(|t| tensor::to_i64(t).ok()).map(|v| v[0]);
            if let (Some(sh), true) = (&shape, matches!(dtype, dt::INT64 | dt::INT32)) {
                if let ([Dim::Known(len)], Some(v)) = (sh.as_slice(), fill.or(Some(0))) {
                    if *len <= 64 {
                        s.values.insert(out0.clone(), vec![Dim::Known(v); *len as usize]);
                    }
                }
            }
            set(s, &out0, dtype, shape);
        }
        "Range" => {
            let t = input_type(s, n, 0)?;
            let len = match (ints_of(g, s, &n.input[0]), ints_of(g, s, &n.input[1]), ints_of(g, s, &n.input[2])) {
                (Some(a), Some(b), Some(c)) if c[0] != 0 => {
                    Dim::Known(((b[0] - a[0]) as f64 / c[0] as f64).ceil().max(0.0) as i64)
                }
                _ => s.fresh_dim("range"),
            };
            set(s, &out0, t.dtype, Some(vec![len]));
        }
        "OneHot" => {
            let idx = input_type(s, n, 0)?;
            let vals = input_type(s, n, 2)?;
            let depth = ints_of(g, s, &n.input[1]).map(|d| Dim::Known(d[0])).unwrap_or_else(|| s.fresh_dim("depth"));
            let shape = idx.shape.map(|is| {
                let axis = norm_axis(n.attr_i("axis", -1), is.len() + 1);
                let mut out = is.clone();
                out.insert(axis, depth);
                out
            });
            set(s, &out0, vals.dtype, shape);
        }
        "SoftmaxCrossEntropyLoss" | "NegativeLogLikelihoodLoss" => {
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
        }
        "RandomUniformLike" | "RandomNormalLike" => {
            let x = input_type(s, n, 0)?;
            let dtype = n.attr("dtype").and_then(|a| a.i).map(|i| i as i32).unwrap_or(x.dtype);
            set(s, &out0, dtype, x.shape);
        }
        "Einsum" | "If" | "Loop" | "Scan" | "NonZero" | "TopK" | "Resize" | "Unique" | "NonMaxSuppression" => {
            // outputs depend on data or subgraphs: known dtype where obvious, unknown shape
            let dtype = n.input.first().and_then(|i| s.types.get(i)).map(|t| t.dtype).unwrap_or(dt::FLOAT);
            for o in &n.output {
                set(s, o, if op == "NonZero" { dt::INT64 } else { dtype }, None);
            }
        }
        _ => {
            if !s.unknown_ops.contains(&n.op_type) {
                s.unknown_ops.push(n.op_type.clone());
            }
            let dtype = n.input.first().and_then(|i| s.types.get(i)).map(|t| t.dtype).unwrap_or(dt::FLOAT);
            for o in &n.output {
                set(s, o, dtype, None);
            }
        }
    }
    Ok(())
}

fn unknown_rank_out(s: &mut Shapes, out: &str, dtype: i32, rank: Option<usize>) -> Result<()> {
    let shape = rank.map(|r| (0..r).map(|_| s.fresh_dim("d")).collect());
    set(s, out, dtype, shape);
    Ok(())
}

/// Python-style clamped slice bounds for one axis of size `d`.
pub fn slice_bounds(start: i64, end: i64, step: i64, d: i64) -> (i64, i64, i64) {
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

fn reduce_shape(xs: &Shape, axes: &[usize], keep: bool) -> Shape {
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

fn dims_product(ds: &[Dim]) -> Dim {
    let mut p = 1i64;
    let mut syms = Vec::new();
    for d in ds {
        match d {
            Dim::Known(v) => p *= v,
            Dim::Sym(x) => syms.push(x.clone()),
        }
    }
    match syms.len() {
        0 => Dim::Known(p),
        1 if p == 1 => Dim::Sym(syms[0].clone()),
        _ => Dim::Sym(format!("{}*{}", syms.join("*"), p)),
    }
}

fn matmul_shape(a: &Shape, b: &Shape) -> Option<Shape> {
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

fn reshape_shape(n: &NodeProto, xs: Option<&Shape>, target: &[Dim], allowzero: bool) -> Result<Shape> {
    let mut out: Vec<Dim> = target
        .iter()
        .enumerate()
        .map(|(i, d)| match (d, xs) {
            (Dim::Known(0), Some(xs)) if !allowzero => xs.get(i).cloned().unwrap_or(Dim::Known(0)),
            _ => d.clone(),
        })
        .collect();
    if let Some(pos) = out.iter().position(|d| *d == Dim::Known(-1)) {
        let inferred = xs.and_then(|xs| {
            let total: Option<i64> = xs.iter().map(|d| d.known()).product();
            let rest: Option<i64> = out.iter().enumerate().filter(|(i, _)| *i != pos).map(|(_, d)| d.known()).product();
            match (total, rest) {
                (Some(t), Some(r)) if r != 0 => Some(Dim::Known(t / r)),
                _ => {
                    // symbolic batch: x = [N, ...known], target = [N or -1, known...]
                    let xs_known: i64 = xs.iter().filter_map(|d| d.known()).product();
                    let xs_syms: Vec<&Dim> = xs.iter().filter(|d| d.known().is_none()).collect();
                    let out_known: i64 =
                        out.iter().enumerate().filter(|(i, _)| *i != pos).filter_map(|(_, d)| d.known()).product();
                    let out_syms: Vec<&Dim> = out
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| *i != pos)
                        .filter(|(_, d)| d.known().is_none())
                        .map(|(_, d)| d)
                        .collect();
                    if out_syms.is_empty()
                        && xs_syms.len() == 1
                        && xs_known % out_known.max(1) == 0
                        && xs_known / out_known.max(1) == 1
                    {
                        Some(xs_syms[0].clone())
                    } else if xs_syms == out_syms && out_known != 0 {
                        Some(Dim::Known(xs_known / out_known))
                    } else {
                        None
                    }
                }
            }
        });
        out[pos] = inferred.unwrap_or_else(|| Dim::Sym(format!("reshape{}", n.name)));
    }
    Ok(out)
}

/// Where(cond, a, b) over small integer vectors (cond as 0/1).
fn fold_where(vals: &[Vec<Dim>]) -> Option<Vec<Dim>> {
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

fn fold_binary(op: &str, vals: &[Vec<Dim>]) -> Option<Vec<Dim>> {
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
