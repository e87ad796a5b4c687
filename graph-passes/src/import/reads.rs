//! Import phase 2, reads: every input slot of every node that reads a stored float tensor,
//! through the legacy exporter's Identity aliases, with what the file knows about each (the
//! dynamo exporter's FX calls and placeholders).
use std::collections::{HashMap, HashSet};

use super::{views, Read};
use crate::ir::Graph;
use crate::onnx::metadata::{fx_call, FxCall};
use crate::onnx::{data_type as dt, TensorProto};

/// What the reads phase found.
pub(super) struct Found {
    /// Float initializers by name (not graph inputs).
    pub stored: HashMap<String, TensorProto>,
    /// Identity aliases of stored tensors (legacy merges): alias → root.
    pub alias_root: HashMap<String, String>,
    /// The alias nodes (indices).
    pub alias_nodes: HashSet<usize>,
    pub reads: Vec<Read>,
    /// (node, slot) of constants by design (InstanceNormalization's ones and zeros).
    pub by_design: HashSet<(usize, usize)>,
    /// Names the file knows: initializers and aliases.
    pub known: Vec<String>,
    /// (dynamo) every placeholder the FX calls name.
    pub placeholders: HashSet<String>,
    pub node_names: Vec<String>,
    pub op_types: Vec<String>,
    /// (dynamo) each node's FX call.
    pub calls: Vec<Option<FxCall>>,
}

pub(super) fn collect(g: &Graph, dynamo: bool) -> Found {
    let graph_inputs: HashSet<String> = g.inputs.iter().map(|v| v.name.clone()).collect();
    let graph_outputs: HashSet<String> = g.outputs.iter().map(|v| v.name.clone()).collect();
    let stored: HashMap<String, TensorProto> = g
        .initializers
        .iter()
        .filter(|t| t.data_type == dt::FLOAT && !graph_inputs.contains(&t.name))
        .map(|t| (t.name.clone(), t.clone()))
        .collect();
    // Identity aliases of stored tensors (legacy merges): alias → root
    let mut alias_root: HashMap<String, String> = HashMap::new();
    let mut alias_nodes: HashSet<usize> = HashSet::new();
    loop {
        let mut grew = false;
        for (i, n) in g.nodes.iter().enumerate() {
            if n.op_type != "Identity" || alias_nodes.contains(&i) || graph_outputs.contains(&n.output[0]) {
                continue;
            }
            let root = if stored.contains_key(&n.input[0]) {
                n.input[0].clone()
            } else if let Some(r) = alias_root.get(&n.input[0]) {
                r.clone()
            } else {
                continue;
            };
            alias_root.insert(n.output[0].clone(), root);
            alias_nodes.insert(i);
            grew = true;
        }
        if !grew {
            break;
        }
    }
    let mut reads: Vec<Read> = Vec::new();
    for (i, n) in g.nodes.iter().enumerate() {
        if alias_nodes.contains(&i) {
            continue;
        }
        for (k, v) in n.input.iter().enumerate() {
            let root = if stored.contains_key(v) {
                v.clone()
            } else if let Some(r) = alias_root.get(v) {
                r.clone()
            } else {
                continue;
            };
            reads.push(Read { node: i, slot: k, root, seen: v.clone() });
        }
    }
    // InstanceNormalization's ones and zeros (GroupNorm, InstanceNorm without affine)
    let by_design: HashSet<(usize, usize)> = reads
        .iter()
        .filter(|r| views::constant_by_design(&g.nodes[r.node], r.slot, &stored[&r.root]))
        .map(|r| (r.node, r.slot))
        .collect();
    // names the file knows: initializers and aliases, and (dynamo) every placeholder
    let known: Vec<String> = stored.keys().chain(alias_root.keys()).cloned().collect();
    let placeholders: HashSet<String> = if dynamo {
        g.nodes
            .iter()
            .filter_map(fx_call)
            .flat_map(|c| c.placeholders().into_iter().map(String::from).collect::<Vec<_>>())
            .collect()
    } else {
        HashSet::new()
    };
    let node_names: Vec<String> =
        g.nodes.iter().map(|n| if n.name.is_empty() { n.output[0].clone() } else { n.name.clone() }).collect();
    let op_types: Vec<String> = g.nodes.iter().map(|n| n.op_type.clone()).collect();
    let calls: Vec<Option<FxCall>> = g.nodes.iter().map(|n| if dynamo { fx_call(n) } else { None }).collect();
    Found { stored, alias_root, alias_nodes, reads, by_design, known, placeholders, node_names, op_types, calls }
}
