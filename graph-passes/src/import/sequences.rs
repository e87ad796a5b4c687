//! Sequences written as the tensors they hold (ONNX spec: SplitToSequence-11, SequenceAt-11,
//! SequenceConstruct-11, SequenceInsert-11, SequenceErase-11, SequenceLength-11,
//! ConcatFromSequence-11, Split-13). The exporters write lists of tensors this way: the dynamo
//! exporter without its optimizer for `torch.split`/`chunk`/`unbind`, the legacy exporter for
//! `tensor_split` and for lists it cannot unroll. Where a sequence's length and its elements are
//! known before running, it is a list of tensor names: SplitToSequence is a Split (Squeeze for
//! keepdims = 0 without split sizes), SequenceAt at a constant position is that element,
//! ConcatFromSequence a Concat (of Unsqueezed elements for new_axis = 1), SequenceLength a
//! constant. The graph then holds tensors only, which autodiff and both engines handle; a
//! sequence that stays (run-time length or position) stops autodiff with the op's reason.
use std::collections::HashMap;

use crate::ir::{constant_ints, Graph, NodeExt};
use crate::onnx::tensor;
use crate::shapes::{self, Dim};
use crate::Result;

/// Rewrites every sequence op it can; returns how many. A split whose input's size is known only
/// once an earlier split is a `Split` (a chain of them, as timm's mixnet and efficientvit write:
/// SequenceAt has no shape rule) is rewritten in a later round, with the shapes inferred again,
/// until a round rewrites none.
pub fn sequences_to_tensors(g: &mut Graph) -> Result<usize> {
    let mut done = 0;
    loop {
        match rewrite_round(g)? {
            0 => return Ok(done),
            k => done += k,
        }
    }
}

fn position(g: &Graph, n: &crate::onnx::NodeProto, slot: usize, len: usize, insert: bool) -> Option<usize> {
    let len = len as i64;
    let p = match n.input.get(slot).filter(|p| !p.is_empty()) {
        None if insert => return Some(len as usize),
        None => len - 1, // SequenceErase without a position: the last
        Some(p) => *constant_ints(g, p)?.first()?,
    };
    let hi = if insert { len } else { len - 1 };
    let p = if p < 0 { p + len } else { p };
    (0..=hi).contains(&p).then_some(p as usize)
}

/// One round over the graph with the shapes as inferred at its start.
fn rewrite_round(g: &mut Graph) -> Result<usize> {
    if !g.nodes.iter().any(|n| crate::ops::sequence::SEQUENCE_OPS.contains(&n.op_type.as_str())) {
        return Ok(0);
    }
    let s = shapes::infer(g)?;
    // sequence value → the tensors it holds, in order
    let mut lists: HashMap<String, Vec<String>> = HashMap::new();
    let mut done = 0;
    let mut remove: Vec<usize> = Vec::new();
    for i in g.topo_order()? {
        let n = g.nodes[i].clone();
        let list = |v: &str| lists.get(v).cloned();
        match n.op_type.as_str() {
            "SequenceConstruct" => {
                lists.insert(n.output[0].clone(), n.input.clone());
            }
            "SequenceEmpty" => {
                lists.insert(n.output[0].clone(), Vec::new());
            }
            "SequenceInsert" => {
                let Some(mut l) = list(&n.input[0]) else { continue };
                let Some(p) = position(g, &n, 2, l.len(), true) else { continue };
                l.insert(p, n.input[1].clone());
                lists.insert(n.output[0].clone(), l);
            }
            "SequenceErase" => {
                let Some(mut l) = list(&n.input[0]) else { continue };
                let Some(p) = position(g, &n, 1, l.len(), false) else { continue };
                l.remove(p);
                lists.insert(n.output[0].clone(), l);
            }
            "SplitToSequence" => {
                let Some(pieces) = split(g, &s, &n) else { continue };
                lists.insert(n.output[0].clone(), pieces);
            }
            "SequenceAt" => {
                let Some(l) = list(&n.input[0]) else { continue };
                let Some(p) = position(g, &n, 1, l.len(), false) else { continue };
                replace(g, &mut remove, i, "Identity", &[&l[p]]);
                done += 1;
            }
            "SequenceLength" => {
                let Some(l) = list(&n.input[0]) else { continue };
                let c = g.add_initializer("sequence_length", tensor::from_i64("", &[], &[l.len() as i64]));
                replace(g, &mut remove, i, "Identity", &[&c]);
                done += 1;
            }
            "ConcatFromSequence" => {
                let Some(l) = list(&n.input[0]) else { continue };
                if l.is_empty() {
                    continue; // ONNX leaves an empty concatenation undefined
                }
                // new_axis = 1 (stack): the axis counts in the output's rank, as Unsqueeze's and
                // then Concat's do
                let axis = n.attr_i("axis", 0);
                let parts: Vec<String> = if n.attr_i("new_axis", 0) == 1 {
                    let axes = g.add_initializer("stack_axis", tensor::from_i64("", &[1], &[axis]));
                    l.iter().map(|e| g.add("Unsqueeze", &[e, &axes]).output()).collect()
                } else {
                    l
                };
                let refs: Vec<&str> = parts.iter().map(|p| p.as_str()).collect();
                replace(g, &mut remove, i, "Concat", &refs);
                if let Some(c) = g.nodes.last_mut() {
                    c.attribute.push(crate::ir::attr_int("axis", axis));
                }
                done += 1;
            }
            _ => {}
        }
    }
    let mut k = 0;
    g.nodes.retain(|_| {
        k += 1;
        !remove.contains(&(k - 1))
    });
    g.remove_dead();
    g.topo_sort()?;
    Ok(done)
}

/// Node `i` gives way to `op(inputs)` with the same output (appended last; the caller removes
/// node `i` and sorts).
fn replace(g: &mut Graph, remove: &mut Vec<usize>, i: usize, op: &str, inputs: &[&str]) {
    let out = g.nodes[i].output[0].clone();
    let meta: Vec<_> = g.nodes[i].metadata_props.iter().filter(|p| p.key.starts_with("pkg.")).cloned().collect();
    remove.push(i);
    g.add(op, inputs).exact_outputs(&[&out]);
    if let Some(r) = g.nodes.last_mut() {
        r.metadata_props.extend(meta);
    }
}

/// The pieces of a SplitToSequence whose sizes are known before running, written as a Split
/// (and Squeeze for keepdims = 0 without split sizes); None where they are not known.
fn split(g: &mut Graph, s: &shapes::Shapes, n: &crate::onnx::NodeProto) -> Option<Vec<String>> {
    let xs = s.shape(&n.input[0])?;
    let r = xs.len() as i64;
    let axis = n.attr_i("axis", 0);
    let axis = if axis < 0 { axis + r } else { axis };
    let Some(Dim::Known(len)) = xs.get(usize::try_from(axis).ok()?) else { return None };
    let len = *len;
    let split = n.input.get(1).filter(|x| !x.is_empty());
    let (sizes, squeeze) = match split {
        Some(x) => {
            let v = constant_ints(g, x)?;
            if s.rank(x) == Some(0) || v.len() == 1 && s.rank(x) != Some(1) {
                // a scalar: pieces of that size, the last one smaller
                let k = v[0].max(1);
                let mut sizes = vec![k; (len / k) as usize];
                if len % k != 0 {
                    sizes.push(len % k);
                }
                (sizes, false)
            } else {
                (v, false)
            }
        }
        None => (vec![1; len as usize], n.attr_i("keepdims", 1) == 0),
    };
    if sizes.iter().any(|&k| k < 0) || sizes.iter().sum::<i64>() != len {
        return None;
    }
    let seq = &n.output[0];
    let count = sizes.len() as i64;
    let split_sizes = g.add_initializer("split_sizes", tensor::from_i64("", &[count], &sizes));
    let pieces: Vec<String> = (0..count).map(|k| g.fresh(&format!("{seq}_{k}"))).collect();
    let refs: Vec<&str> = pieces.iter().map(|p| p.as_str()).collect();
    g.add("Split", &[&n.input[0], &split_sizes]).int("axis", axis).exact_outputs(&refs);
    // the exporter's record of the split (its FX call names the parameter it splits, as
    // nn.MultiheadAttention splits in_proj_weight) goes with it
    if let Some(sp) = g.nodes.last_mut() {
        sp.metadata_props.extend(n.metadata_props.iter().filter(|p| p.key.starts_with("pkg.")).cloned());
    }
    if !squeeze {
        return Some(pieces);
    }
    let axes = g.add_initializer("squeeze_axes", tensor::from_i64("", &[1], &[axis]));
    Some(pieces.iter().map(|p| g.add("Squeeze", &[p, &axes]).output()).collect())
}
