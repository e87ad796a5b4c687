//! The node builder gradient rules, lowerings and passes write with: `c.mul(a, b)` emits a Mul
//! node and returns its output. Constants are initializers, shared by value; axes are always
//! constant initializers (tract requires them constant). It sits below both ops/ (the rules) and
//! autodiff (the sweep that calls them), so neither depends on the other for it.
use std::collections::HashMap;

use crate::ir::Graph;
use crate::onnx::{data_type as dt, tensor};
use crate::shapes::{shape_string, Dim, Shape, Shapes};
use crate::{bail, Result};

/// A rule's answer: one optional gradient per node input (None: no gradient flows there).
pub type Grads = Vec<Option<String>>;

pub struct Ctx<'g> {
    pub g: &'g mut Graph,
    /// Types of the forward graph's values (new values have none).
    pub shapes: Shapes,
    pub opset: i64,
    f32_consts: HashMap<(Vec<i64>, Vec<u32>), String>,
    i64_consts: HashMap<Vec<i64>, String>,
}

impl<'g> Ctx<'g> {
    pub fn new(g: &'g mut Graph, shapes: Shapes, opset: i64) -> Ctx<'g> {
        Ctx { g, shapes, opset, f32_consts: HashMap::new(), i64_consts: HashMap::new() }
    }

    pub fn op(&mut self, op: &str, inputs: &[&str]) -> String {
        self.g.add(op, inputs).output()
    }
    pub fn add(&mut self, a: &str, b: &str) -> String {
        self.op("Add", &[a, b])
    }
    pub fn sub(&mut self, a: &str, b: &str) -> String {
        self.op("Sub", &[a, b])
    }
    pub fn mul(&mut self, a: &str, b: &str) -> String {
        self.op("Mul", &[a, b])
    }
    pub fn div(&mut self, a: &str, b: &str) -> String {
        self.op("Div", &[a, b])
    }
    pub fn neg(&mut self, a: &str) -> String {
        self.op("Neg", &[a])
    }
    pub fn sqrt(&mut self, a: &str) -> String {
        self.op("Sqrt", &[a])
    }
    pub fn exp(&mut self, a: &str) -> String {
        self.op("Exp", &[a])
    }
    pub fn square(&mut self, a: &str) -> String {
        self.op("Mul", &[a, a])
    }
    pub fn where_(&mut self, c: &str, a: &str, b: &str) -> String {
        self.op("Where", &[c, a, b])
    }
    pub fn shape_of(&mut self, a: &str) -> String {
        self.op("Shape", &[a])
    }
    pub fn reshape(&mut self, a: &str, shape: &str) -> String {
        self.op("Reshape", &[a, shape])
    }
    /// x reshaped to the (run-time) shape of `like`.
    pub fn reshape_like(&mut self, x: &str, like: &str) -> String {
        let s = self.shape_of(like);
        self.reshape(x, &s)
    }
    pub fn expand_like(&mut self, x: &str, like: &str) -> String {
        let s = self.shape_of(like);
        self.op("Expand", &[x, &s])
    }
    pub fn cast(&mut self, a: &str, to: i32) -> String {
        self.g.add("Cast", &[a]).int("to", to as i64).output()
    }
    /// 1.0 where `cond` holds, else 0.0 (float32).
    pub fn mask(&mut self, cond: &str) -> String {
        self.cast(cond, dt::FLOAT)
    }
    pub fn transpose(&mut self, a: &str, perm: &[i64]) -> String {
        self.g.add("Transpose", &[a]).ints("perm", perm).output()
    }

    /// A float32 constant (shared between uses of equal value).
    pub fn const_f32(&mut self, dims: &[i64], data: &[f32]) -> String {
        let key = (dims.to_vec(), data.iter().map(|v| v.to_bits()).collect());
        if let Some(n) = self.f32_consts.get(&key) {
            return n.clone();
        }
        let name = self.g.add_initializer("const_f", tensor::from_f32("", dims, data));
        self.f32_consts.insert(key, name.clone());
        name
    }
    pub fn scalar(&mut self, v: f32) -> String {
        self.const_f32(&[], &[v])
    }
    pub fn const_i64(&mut self, data: &[i64]) -> String {
        if let Some(n) = self.i64_consts.get(data) {
            return n.clone();
        }
        let name = self.g.add_initializer("const_i", tensor::from_i64("", &[data.len() as i64], data));
        self.i64_consts.insert(data.to_vec(), name.clone());
        name
    }
    pub fn zeros_like(&mut self, x: &str) -> String {
        let s = self.shape_of(x);
        self.g.add("ConstantOfShape", &[&s]).tensor("value", tensor::from_f32("", &[1], &[0.0])).output()
    }

    pub fn reduce_sum(&mut self, x: &str, axes: &[i64], keepdims: bool) -> String {
        let a = self.const_i64(axes);
        self.g.add("ReduceSum", &[x, &a]).int("keepdims", keepdims as i64).output()
    }
    /// ReduceMean: axes as attribute before opset 18, as a constant input from 18.
    pub fn reduce_mean(&mut self, x: &str, axes: &[i64], keepdims: bool) -> String {
        self.reduce("ReduceMean", x, axes, keepdims)
    }
    /// Any Reduce* but ReduceSum (whose axes are an input from opset 13): axes as attribute
    /// before opset 18, as a constant input from 18.
    pub fn reduce(&mut self, op: &str, x: &str, axes: &[i64], keepdims: bool) -> String {
        if op == "ReduceSum" {
            return self.reduce_sum(x, axes, keepdims);
        }
        if self.opset >= 18 {
            let a = self.const_i64(axes);
            self.g.add(op, &[x, &a]).int("keepdims", keepdims as i64).output()
        } else {
            self.g.add(op, &[x]).ints("axes", axes).int("keepdims", keepdims as i64).output()
        }
    }
    pub fn unsqueeze(&mut self, x: &str, axes: &[i64]) -> String {
        let a = self.const_i64(axes);
        self.op("Unsqueeze", &[x, &a])
    }
    pub fn squeeze(&mut self, x: &str, axes: &[i64]) -> String {
        let a = self.const_i64(axes);
        self.op("Squeeze", &[x, &a])
    }

    /// Integer values known statically: a constant, or computed from constants and static shapes.
    pub fn const_ints(&self, v: &str) -> Option<Vec<i64>> {
        crate::ir::constant_ints(self.g, v)
            .or_else(|| self.shapes.values.get(v).and_then(|d| d.iter().map(|x| x.known()).collect()))
    }

    pub fn shape(&self, v: &str) -> Result<&Shape> {
        match self.shapes.shape(v) {
            Some(s) => Ok(s),
            None => bail!("the shape of '{v}' is unknown; onnxsam needs it to build the gradient"),
        }
    }
    pub fn rank(&self, v: &str) -> Result<usize> {
        Ok(self.shape(v)?.len())
    }
    /// Statically known dimensions of `v` (error naming the value otherwise).
    pub fn known_dims(&self, v: &str) -> Result<Vec<i64>> {
        let s = self.shape(v)?;
        s.iter().map(|d| d.known()).collect::<Option<Vec<i64>>>().ok_or_else(|| {
            crate::err!(
                "value '{v}' has a symbolic shape {}; this gradient needs it known",
                shape_string(&Some(s.clone()))
            )
        })
    }

    /// Undoes numpy broadcasting: sums `grad` (shaped like forward value `out`) down to the
    /// shape of forward value `target`, over constant axes. An axis is summed where `target` has
    /// size 1 and `out` may not; where `target`'s size is a symbol that `out` does not share (it
    /// may be 1 at run time, or not), whether the axis was broadcast cannot be known while the
    /// graph is built: an error says so rather than guess (summing, or not, would be wrong for
    /// one of the two).
    pub fn unbroadcast(&mut self, grad: &str, target: &str, out: &str) -> Result<String> {
        let (ts, os) = (self.shape(target)?.clone(), self.shape(out)?.clone());
        if ts == os {
            return Ok(grad.to_string());
        }
        if ts.len() > os.len() {
            bail!(
                "cannot undo broadcasting of '{target}' {} to {}: the result has fewer axes",
                shape_string(&Some(ts.clone())),
                shape_string(&Some(os.clone()))
            )
        }
        let lead = os.len() - ts.len();
        let mut axes: Vec<i64> = (0..lead as i64).collect();
        for (i, d) in ts.iter().enumerate() {
            let o = &os[lead + i];
            match (d, o) {
                (Dim::Known(1), Dim::Known(1)) => {}
                (Dim::Known(1), _) => axes.push((lead + i) as i64),
                (Dim::Known(a), Dim::Known(b)) if a != b => {
                    bail!(
                        "cannot undo broadcasting of '{target}' {} to {}",
                        shape_string(&Some(ts.clone())),
                        shape_string(&Some(os.clone()))
                    )
                }
                (Dim::Known(_), _) => {}
                (Dim::Sym(a), Dim::Sym(b)) if a == b => {}
                (Dim::Sym(a), _) => {
                    bail!(
                        "cannot tell whether '{target}' {} was broadcast along axis {i} to {}: its size '{a}' is known only at run time and may be 1; re-export with that size fixed, or with the tensor's shape spelled out (e.g. expand it to the full shape before the operation)",
                        shape_string(&Some(ts.clone())),
                        shape_string(&Some(os.clone()))
                    )
                }
            }
        }
        if axes.is_empty() {
            return Ok(grad.to_string());
        }
        if axes.len() == lead {
            // only leading axes: one ReduceSum without keepdims
            return Ok(self.reduce_sum(grad, &axes, false));
        }
        let summed = self.reduce_sum(grad, &axes, true);
        Ok(if lead > 0 { self.squeeze(&summed, &(0..lead as i64).collect::<Vec<_>>()) } else { summed })
    }
}
