//! Import phase 6, rewrite: stored tensors and aliases that are all named go; one initializer
//! per PyTorch tensor under its name; reads of other layouts through one Transpose per (tensor,
//! layout), tagged as import's, so that `export` can store trained values back in the file's
//! layout. Returns the tensors' names.
use std::collections::{HashMap, HashSet};

use super::naming::Names;
use super::reads::Found;
use super::tensors::Tensors;
use super::Kind;
use crate::ir::Graph;
use crate::pass::ImportReport;

pub(super) fn apply(g: &mut Graph, found: &Found, names: &Names, t: &mut Tensors, report: &mut ImportReport) -> HashSet<String> {
    let Found { alias_root, alias_nodes, reads, .. } = found;
    let named = &names.named;
    let Tensors { key_of, tensors, index } = t;
    // 5. rewrite: stored tensors and aliases that are all named go; one initializer per tensor
    let unresolved_roots: HashSet<String> =
        reads.iter().zip(key_of.iter()).filter(|(_, k)| k.is_none()).map(|(r, _)| r.root.clone()).collect();
    // aliases of unnamed tensors stay (their readers keep reading the stored tensor)
    let drop_alias: HashSet<usize> = alias_nodes
        .iter()
        .copied()
        .filter(|&i| !unresolved_roots.contains(&alias_root[&g.nodes[i].output[0]]))
        .collect();
    let mut free: HashSet<String> = reads
        .iter()
        .zip(key_of.iter())
        .filter(|(r, k)| k.is_some() && !unresolved_roots.contains(&r.root))
        .map(|(r, _)| r.root.clone())
        .collect();
    free.extend(drop_alias.iter().map(|&i| g.nodes[i].output[0].clone()));
    g.initializers.retain(|t| !free.contains(&t.name));
    let taken: HashSet<String> = g
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| !drop_alias.contains(i))
        .flat_map(|(_, n)| n.output.iter().cloned())
        .chain(g.inputs.iter().map(|v| v.name.clone()))
        .chain(g.initializers.iter().map(|t| t.name.clone()))
        .collect();
    for (t, v) in tensors.iter_mut() {
        if taken.contains(&t.name) {
            let fresh = g.fresh(&t.name);
            report.warnings.push(format!(
                "the PyTorch tensor '{}' is called '{fresh}' here: the file uses its name for another value",
                t.name
            ));
            t.name = fresh;
        }
        v.name = t.name.clone();
        g.initializers.push(v.clone());
        match t.kind {
            Kind::Param => report.params.push(t.name.clone()),
            Kind::Buffer => report.buffers.push(t.name.clone()),
        }
    }
    let tensor_names: HashSet<String> = tensors.iter().map(|(t, _)| t.name.clone()).collect();
    // reads of other layouts go through one Transpose per (tensor, layout); the view takes
    // the stored name when free, so the file's readers and `export` see the file's names
    let node_count = g.nodes.len();
    let mut views: HashMap<(String, Vec<i64>), String> = HashMap::new();
    g.pass = Some("import".into());
    for (i, r) in reads.iter().enumerate() {
        let Some(key) = &key_of[i] else { continue };
        let (t, _) = &tensors[index[key]];
        let perm = named[i].as_ref().map(|n| n.perm.clone()).unwrap_or_default();
        // the file's name, where it names no PyTorch tensor, stays as a view (Identity or
        // Transpose) of the parameter, so that `export` writes the trained value under it
        let keeps_file_name =
            free.contains(&r.seen) && !tensor_names.contains(&r.seen) && !views.values().any(|v| v == &r.seen);
        let value = if let Some(v) = views.get(&(t.name.clone(), perm.clone())) {
            v.clone()
        } else if perm.is_empty() && !keeps_file_name {
            t.name.clone()
        } else {
            let out = if keeps_file_name { r.seen.clone() } else { g.fresh(&format!("{}.stored", t.name)) };
            if perm.is_empty() {
                g.add("Identity", &[&t.name]).exact_outputs(&[&out]);
            } else {
                g.add("Transpose", &[&t.name]).ints("perm", &perm).exact_outputs(&[&out]);
            }
            views.insert((t.name.clone(), perm.clone()), out.clone());
            out
        };
        g.nodes[r.node].input[r.slot] = value;
    }
    g.pass = None;
    let mut k = 0;
    g.nodes.retain(|_| {
        k += 1;
        !(k - 1 < node_count && drop_alias.contains(&(k - 1)))
    });
    tensor_names
}
