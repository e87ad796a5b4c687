//! Import phase 7, report: what import did (untied, tied, stored under other names or
//! layouts, unnamed tensors, BatchNorm facts, the legacy exporter's unmarked buffers), and the
//! refusal of a graph whose gradient would flow into a tensor the file no longer names.
use std::collections::{BTreeMap, HashSet};

use super::naming::Names;
use super::reads::Found;
use super::tensors::Tensors;
use super::{folded, moves_data_only, summary, Kind};
use crate::ir::Graph;
use crate::onnx::tensor;
use crate::pass::{ImportReport, Stored};
use crate::{bail, Result};

#[allow(clippy::too_many_arguments)]
pub(super) fn finish(
    g: &mut Graph,
    found: &Found,
    names: &Names,
    t: &Tensors,
    tensor_names: &HashSet<String>,
    folded_nodes: &HashSet<usize>,
    (dynamo, legacy): (bool, bool),
    freeze: &[String],
    report: &mut ImportReport,
) -> Result<()> {
    let Found { stored, reads, by_design, node_names, op_types, .. } = found;
    let Names { named, lifted } = names;
    let Tensors { key_of, tensors, index } = t;
    // 6. report: untied, tied, stored under other names or layouts, unnamed
    let mut by_root: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut readers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (i, r) in reads.iter().enumerate() {
        let Some(key) = &key_of[i] else { continue };
        // a folded convolution's tensors are named after it, not after anything PyTorch has
        if folded_nodes.contains(&r.node) {
            continue;
        }
        let (t, _) = &tensors[index[key]];
        let names = by_root.entry(r.root.as_str()).or_default();
        if !names.contains(&t.name) {
            names.push(t.name.clone());
        }
        if t.kind == Kind::Param
            && !crate::ops::is_non_differentiable(&op_types[r.node])
            && !moves_data_only(&op_types[r.node])
        {
            let n = &node_names[r.node];
            let list = readers.entry(t.name.clone()).or_default();
            if !list.contains(n) {
                list.push(n.clone());
            }
        }
        let perm = named[i].as_ref().map(|n| n.perm.clone()).unwrap_or_default();
        if !perm.is_empty() || !tensor_names.contains(&r.seen) {
            let s = Stored { name: r.seen.clone(), perm };
            let list = report.stored_as.entry(t.name.clone()).or_default();
            if !list.contains(&s) {
                list.push(s);
            }
        }
    }
    for (root, names) in by_root {
        if names.len() > 1 {
            report.untied.insert(root.to_string(), names);
        }
    }
    report.tied = readers.into_iter().filter(|(_, who)| who.len() > 1).collect();
    for (r, n) in reads.iter().zip(named.iter()) {
        if by_design.contains(&(r.node, r.slot)) {
            continue;
        }
        // a tensor holding ±inf or NaN (an attention mask) is no parameter of anybody's
        let finite = tensor::to_f32(&stored[&r.root]).map(|v| v.iter().all(|x| x.is_finite())).unwrap_or(false);
        if n.is_none()
            && finite
            && tensor::numel(&stored[&r.root]) > 1
            && !lifted.contains(&r.root)
            && !report.unnamed.contains(&r.root)
        {
            report.unnamed.push(r.root.clone());
        }
    }
    let (notes, warnings, frozen) = folded::batch_norm_notes(g);
    report.momentum_unknown = frozen;
    report.notes.extend(notes);
    report.warnings.extend(warnings);
    if legacy {
        // the legacy exporter stores registered buffers like parameters; names that are not a
        // layer's weight or bias may be either
        let unusual: Vec<String> = report
            .params
            .iter()
            .filter(|p| {
                let last = p.rsplit('.').next().unwrap_or(p);
                let frozen = freeze.iter().any(|f| crate::pass::glob_match(f, p));
                // weight, bias, and the recurrent layers' weight_ih_l0, bias_hh_l0_reverse…
                let named = ["weight", "bias"].iter().any(|w| last.ends_with(w) || last.starts_with(w));
                !(named || frozen)
            })
            .cloned()
            .collect();
        if !unusual.is_empty() {
            report.warnings.push(format!(
                "the legacy exporter does not mark buffers (register_buffer), so {} {} trained as parameters; --freeze what is a buffer, or export with dynamo=True (which marks them)",
                summary(&unusual, 4),
                if unusual.len() == 1 { "is" } else { "are" }
            ));
        }
    }
    g.topo_sort()?;
    let blocking = unnamed_on_gradient_path(g, &report.unnamed);
    if !blocking.is_empty() {
        let fix = if dynamo {
            "re-export with torch.onnx.export(..., dynamo=True, optimize=False)"
        } else {
            "re-export with torch.onnx.export(..., dynamo=False, do_constant_folding=False)"
        };
        bail!(
            "{} computed at export from tensors this file no longer names, and the gradient would flow into it: onnxsam cannot tell which PyTorch parameter it stands for, or whether PyTorch trains it; {fix}",
            summary(&blocking, 3)
        );
    }
    Ok(())
}

/// Unnamed float tensors (computed at export from tensors the file no longer names) that a
/// gradient would flow into: onnxsam cannot tell whether PyTorch trains them. Returns
/// "'X' (read by node Y)" for each.
fn unnamed_on_gradient_path(g: &Graph, unnamed: &[String]) -> Vec<String> {
    use crate::ops::{is_non_differentiable, rule_for};
    let outputs: HashSet<&str> = g.outputs.iter().map(|o| o.name.as_str()).collect();
    let order = match g.topo_order() {
        Ok(o) => o,
        Err(_) => return vec![],
    };
    let mut out = Vec::new();
    for u in unnamed {
        let mut reached: HashSet<&str> = HashSet::from([u.as_str()]);
        let mut reader: Option<&str> = None;
        let mut hits_output = false;
        for &i in &order {
            let n = &g.nodes[i];
            // ops without any rule still pass values on
            if !crate::autodiff::reads_through_gradient(n, &reached) || is_non_differentiable(&n.op_type) {
                continue;
            }
            if reader.is_none() && (rule_for(&n.op_type).is_some() || n.op_type == "Identity") {
                reader = Some(if n.name.is_empty() { &n.output[0] } else { &n.name });
            }
            for o in &n.output {
                reached.insert(o.as_str());
                hits_output |= outputs.contains(o.as_str());
            }
        }
        if hits_output {
            out.push(format!("'{u}' (read by {})", reader.unwrap_or("?")));
        }
    }
    out
}
