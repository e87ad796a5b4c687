//! Sequence plumbing the dynamo exporter emits for `torch.chunk`/`torch.split` without its
//! optimizer: `SplitToSequence` whose pieces are only taken out by `SequenceAt` at constant
//! positions is a `Split` (ONNX spec: SplitToSequence-11, Split-13). Rewritten so that the
//! graph holds tensors only, which autodiff and both engines handle.
use crate::ir::{constant_ints, Graph, NodeExt};
use crate::shapes::{self, Dim};
use crate::Result;

/// Rewrites every such SplitToSequence; returns how many. A split whose input's size is known
/// only once an earlier split is a `Split` (a chain of them, as timm's mixnet and efficientvit
/// write: SequenceAt has no shape rule) is rewritten in a later round, with the shapes inferred
/// again, until a round rewrites none.
pub fn split_sequences_to_split(g: &mut Graph) -> Result<usize> {
    let mut done = 0;
    loop {
        match rewrite_round(g)? {
            0 => return Ok(done),
            k => done += k,
        }
    }
}

/// One round over the graph with the shapes as inferred at its start.
fn rewrite_round(g: &mut Graph) -> Result<usize> {
    let candidates: Vec<usize> =
        g.nodes.iter().enumerate().filter(|(_, n)| n.op_type == "SplitToSequence").map(|(i, _)| i).collect();
    if candidates.is_empty() {
        return Ok(0);
    }
    let s = shapes::infer(g)?;
    let mut done = 0;
    let mut remove: Vec<usize> = Vec::new();
    for i in candidates {
        let n = g.nodes[i].clone();
        let seq = &n.output[0];
        let readers: Vec<usize> =
            g.nodes.iter().enumerate().filter(|(_, m)| m.input.contains(seq)).map(|(j, _)| j).collect();
        if g.outputs.iter().any(|o| &o.name == seq) || readers.iter().any(|&j| g.nodes[j].op_type != "SequenceAt") {
            continue;
        }
        let Some(xs) = s.shape(&n.input[0]) else { continue };
        let r = xs.len() as i64;
        let axis = n.attr_i("axis", 0);
        let axis = if axis < 0 { axis + r } else { axis };
        let Some(Dim::Known(len)) = xs.get(axis as usize) else { continue };
        let split = n.input.get(1).filter(|x| !x.is_empty()).map(|x| constant_ints(g, x));
        let (sizes, squeeze) = match split {
            Some(None) => continue, // a computed split: leave it
            Some(Some(v)) if s.rank(&n.input[1]) == Some(0) || v.len() == 1 && s.rank(&n.input[1]) != Some(1) => {
                let k = v[0].max(1);
                let mut sizes = vec![k; (*len / k) as usize];
                if len % k != 0 {
                    sizes.push(len % k);
                }
                (sizes, false)
            }
            Some(Some(v)) => (v, false),
            None => (vec![1; *len as usize], n.attr_i("keepdims", 1) == 0),
        };
        let count = sizes.len() as i64;
        let mut positions = Vec::new();
        for &j in &readers {
            let at = &g.nodes[j];
            match at.input.get(1).and_then(|p| constant_ints(g, p)).and_then(|v| v.first().copied()) {
                Some(p) if (-count..count).contains(&p) => positions.push((j, if p < 0 { p + count } else { p })),
                _ => break,
            }
        }
        if positions.len() != readers.len() {
            continue;
        }
        let split_sizes = g.add_initializer("split_sizes", crate::onnx::tensor::from_i64("", &[count], &sizes));
        let pieces: Vec<String> = (0..count).map(|k| g.fresh(&format!("{seq}_{k}"))).collect();
        let refs: Vec<&str> = pieces.iter().map(|p| p.as_str()).collect();
        g.add("Split", &[&n.input[0], &split_sizes]).int("axis", axis).exact_outputs(&refs);
        // the exporter's record of the split (its FX call names the parameter it splits, as
        // nn.MultiheadAttention splits in_proj_weight) goes with it
        if let Some(split) = g.nodes.last_mut() {
            split.metadata_props.extend(n.metadata_props.iter().filter(|p| p.key.starts_with("pkg.")).cloned());
        }
        for (j, p) in positions {
            let out = g.nodes[j].output[0].clone();
            let piece = pieces[p as usize].clone();
            if squeeze {
                let axes = g.add_initializer("squeeze_axes", crate::onnx::tensor::from_i64("", &[1], &[axis]));
                g.add("Squeeze", &[&piece, &axes]).exact_outputs(&[&out]);
            } else {
                g.add("Identity", &[&piece]).exact_outputs(&[&out]);
            }
            remove.push(j);
        }
        remove.push(i);
        done += 1;
    }
    let mut k = 0;
    g.nodes.retain(|_| {
        k += 1;
        !remove.contains(&(k - 1))
    });
    g.topo_sort()?;
    Ok(done)
}
