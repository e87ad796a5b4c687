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

/// y = table[ids] (axis 0):  dtable = ScatterND(zeros, ids[..., None], dy, reduction = add)
fn gather(n: &NodeProto, dys: &[Option<String>], need: &[bool], c: &mut Ctx) -> Result<Grads> {
    if need.get(1).copied().unwrap_or(false) {
        return Err(node_error(n, "indices carry no gradient"));
    }
    let d = dy(n, dys)?;
    let axis = n.attr_i("axis", 0);
    if axis != 0 {
        return Err(node_error(n, format!("the Gather gradient handles axis 0 (embeddings), not axis {axis}")));
    }
    if c.opset < 16 {
        return Err(node_error(
            n,
            format!("the Gather gradient needs opset ≥ 16 (ScatterND reduction), the model has {}", c.opset),
        ));
    }
    let table = &n.input[0];
    let zeros = c.zeros_like(table);
    let ids = c.unsqueeze(&n.input[1], &[-1]);
    let dt = c.g.add("ScatterND", &[&zeros, &ids, &d]).string("reduction", "add").output();
    Ok(vec![Some(dt), None])
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
