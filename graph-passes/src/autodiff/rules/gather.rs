//! Gather (embeddings) and GatherElements: gradients scatter-add back, so repeated indices
//! accumulate.
use super::dy;
use crate::autodiff::{Ctx, Grads, Rule};
use crate::ir::{node_error, NodeExt};
use crate::onnx::NodeProto;
use crate::Result;

pub fn rule(op: &str) -> Option<Rule> {
    Some(match op {
        "Gather" => gather,
        "GatherElements" => gather_elements,
        _ => return None,
    })
}

/// y = gather(x, idx, axis a):  dx = zeros with dy scattered back (added) along a.
/// - a constant scalar index k (`x[:, 0]`, ViT's class token): dx = Pad(Unsqueeze(dy, a)) with k
///   zeros before and (s − k − 1) after along a;
/// - axis 0 (embeddings): ScatterND(zeros, idx[..., None], dy, reduction = add);
/// - other axes: the same with a moved to the front, x's dims (a, …) and dy's (idx dims, …),
///   and moved back.
///
/// Negative indices count from the end (ONNX Gather-13), so they are taken modulo s first.
fn gather(n: &NodeProto, dys: &[Option<String>], need: &[bool], c: &mut Ctx) -> Result<Grads> {
    if need.get(1).copied().unwrap_or(false) {
        return Err(node_error(n, "indices carry no gradient"));
    }
    let d = dy(n, dys)?;
    let table = &n.input[0];
    let r = c.rank(table)? as i64;
    let a = {
        let a = n.attr_i("axis", 0);
        if a < 0 {
            a + r
        } else {
            a
        }
    };
    let s = c.shape(table)?[a as usize].known();
    let idx_rank = c.rank(&n.input[1])? as i64;
    // constant scalar index: pad
    if let (Some(s), Some(k), 0) = (s, c.const_ints(&n.input[1]).and_then(|v| v.first().copied()), idx_rank) {
        let k = if k < 0 { k + s } else { k };
        let u = c.unsqueeze(&d, &[a]);
        let mut pads = vec![0i64; 2 * r as usize];
        pads[a as usize] = k;
        pads[(a + r) as usize] = s - k - 1;
        let p = c.const_i64(&pads);
        return Ok(vec![Some(c.op("Pad", &[&u, &p])), None]);
    }
    if c.opset < 16 {
        return Err(node_error(
            n,
            format!("the Gather gradient needs opset ≥ 16 (ScatterND reduction), the model has {}", c.opset),
        ));
    }
    // indices in [0, s)
    let ids = match s {
        Some(s) => {
            let zero = c.g.add_initializer("zero_i", crate::onnx::tensor::from_i64("", &[], &[0]));
            let size = c.g.add_initializer("size_i", crate::onnx::tensor::from_i64("", &[], &[s]));
            let neg = c.op("Less", &[&n.input[1], &zero]);
            let wrapped = c.op("Add", &[&n.input[1], &size]);
            c.where_(&neg, &wrapped, &n.input[1])
        }
        None => n.input[1].clone(),
    };
    let ids = if c.shapes.get(&n.input[1]).map(|t| t.dtype) == Some(crate::onnx::data_type::INT32) {
        c.cast(&ids, crate::onnx::data_type::INT64)
    } else {
        ids
    };
    let ids = c.unsqueeze(&ids, &[-1]);
    if a == 0 {
        let zeros = c.zeros_like(table);
        let dt = c.g.add("ScatterND", &[&zeros, &ids, &d]).string("reduction", "add").output();
        return Ok(vec![Some(dt), None]);
    }
    // x: [d0 … d(a−1), s, rest] → [s, d0 … d(a−1), rest]
    let xperm: Vec<i64> = std::iter::once(a).chain(0..a).chain(a + 1..r).collect();
    let xt = c.transpose(table, &xperm);
    // dy: [d0 … d(a−1), i0 … i(q−1), rest] → [i…, d0 … d(a−1), rest]
    let q = idx_rank;
    let ry = r - 1 + q;
    let yperm: Vec<i64> = (a..a + q).chain(0..a).chain(a + q..ry).collect();
    let dyt = c.transpose(&d, &yperm);
    let zeros = c.zeros_like(&xt);
    let g = c.g.add("ScatterND", &[&zeros, &ids, &dyt]).string("reduction", "add").output();
    let mut inv = vec![0i64; r as usize];
    for (i, &p) in xperm.iter().enumerate() {
        inv[p as usize] = i as i64;
    }
    Ok(vec![Some(c.transpose(&g, &inv)), None])
}

/// y = gather_elements(x, idx, axis):  dx = ScatterElements(zeros, idx, dy, axis, add)
fn gather_elements(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    if c.opset < 16 {
        return Err(node_error(n, format!("the GatherElements gradient needs opset ≥ 16, the model has {}", c.opset)));
    }
    let zeros = c.zeros_like(&n.input[0]);
    let dx =
        c.g.add("ScatterElements", &[&zeros, &n.input[1], &d])
            .int("axis", n.attr_i("axis", 0))
            .string("reduction", "add")
            .output();
    Ok(vec![Some(dx), None])
}
