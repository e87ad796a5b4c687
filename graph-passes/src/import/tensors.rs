//! Import phase 5, tensors: reads grouped into PyTorch tensors (one per tensor, or as --sharing
//! says), each with one value in PyTorch's layout that every read must agree on; a tensor
//! PyTorch ties named after its first use.
use std::collections::{BTreeMap, HashMap, HashSet};

use super::naming::Names;
use super::reads::Found;
use super::{moves_data_only, unlayout, Kind, Named, Sharing};
use crate::ir::Graph;
use crate::onnx::metadata::module_paths;
use crate::onnx::{tensor, TensorProto};
use crate::pass::ImportReport;
use crate::{bail, Result};

/// The tensors: each read's group key (None: unnamed), the tensors with their values, and each
/// key's index among them.
pub(super) struct Tensors {
    pub key_of: Vec<Option<String>>,
    pub tensors: Vec<(Named, TensorProto)>,
    pub index: HashMap<String, usize>,
}

pub(super) fn group(
    g: &Graph,
    found: &Found,
    names: &Names,
    sharing: Sharing,
    dynamo: bool,
    report: &mut ImportReport,
) -> Result<Tensors> {
    let Found { stored, reads, op_types, .. } = found;
    let named = &names.named;
    // 4. group reads into tensors
    let mut key_of: Vec<Option<String>> = vec![None; reads.len()];
    let mut groups: BTreeMap<String, Named> = BTreeMap::new(); // key → tensor
    let mut order: Vec<String> = Vec::new();
    let mut uses: HashMap<String, usize> = HashMap::new();
    for (i, (r, n)) in reads.iter().zip(named.iter()).enumerate() {
        let Some(n) = n else { continue };
        let mut t = n.clone();
        let passive = crate::ops::is_non_differentiable(&g.nodes[r.node].op_type)
            || moves_data_only(&g.nodes[r.node].op_type);
        let key = match (sharing, n.kind) {
            (Sharing::KeepTied, Kind::Param) => format!("{}\u{0}{:?}", r.root, n.perm),
            (Sharing::UntieAll, Kind::Param) if !passive => {
                let k = uses.entry(n.name.clone()).or_default();
                *k += 1;
                if *k > 1 {
                    t.name = format!("{}.tied{}", n.name, *k - 1);
                }
                t.name.clone()
            }
            _ => n.name.clone(),
        };
        if !groups.contains_key(&key) {
            groups.insert(key.clone(), t);
            order.push(key.clone());
        }
        key_of[i] = Some(key);
    }
    // a tensor's value: its stored tensor in PyTorch layout; every read must agree
    let mut tensors: Vec<(Named, TensorProto)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for key in &order {
        let t = groups[key].clone();
        let members: Vec<usize> = (0..reads.len()).filter(|&i| key_of[i].as_ref() == Some(key)).collect();
        let perm_of = |i: usize| named[i].as_ref().map(|n| n.perm.clone()).unwrap_or_default();
        let first = members[0];
        let v = unlayout(&stored[&reads[first].root], &perm_of(first), &t.name)?;
        for &j in &members[1..] {
            if reads[j].root == reads[first].root {
                continue;
            }
            let v2 = unlayout(&stored[&reads[j].root], &perm_of(j), &t.name)?;
            if v2.dims != v.dims || tensor::raw_bytes(&v2)? != tensor::raw_bytes(&v)? {
                bail!(
                    "'{}' and '{}' both stand for the PyTorch tensor '{}' but hold different values; onnxsam cannot tell which one PyTorch trains",
                    reads[first].root,
                    reads[j].root,
                    t.name
                );
            }
        }
        index.insert(key.clone(), tensors.len());
        tensors.push((t, v));
    }
    // a tensor PyTorch ties (a head sharing the embedding's weight) is one Parameter under two
    // module names; torch.export names the placeholder after one of them, named_parameters()
    // after the module registered first, which is nearly always the one that runs first: the
    // name of the first use (legacy exports carry named_parameters()'s name already)
    if dynamo && sharing == Sharing::Auto {
        let taken: HashSet<String> = tensors.iter().map(|(t, _)| t.name.clone()).collect();
        for key in &order {
            let (t, v) = &mut tensors[index[key]];
            if t.kind != Kind::Param {
                continue;
            }
            let attr = t.name.rsplit('.').next().unwrap_or(&t.name).to_string();
            let mut by_use: Vec<String> = Vec::new();
            for (i, r) in reads.iter().enumerate() {
                if key_of[i].as_ref() != Some(key) || crate::ops::is_non_differentiable(&op_types[r.node]) {
                    continue;
                }
                if let Some(scope) = module_paths(&g.nodes[r.node]).first() {
                    let name = format!("{scope}.{attr}");
                    if !by_use.contains(&name) {
                        by_use.push(name);
                    }
                }
            }
            if by_use.len() >= 2 && by_use[0] != t.name && by_use.contains(&t.name) && !taken.contains(&by_use[0]) {
                report.aliases.insert(by_use[0].clone(), t.name.clone());
                t.name = by_use[0].clone();
                v.name = t.name.clone();
            }
        }
    }
    Ok(Tensors { key_of, tensors, index })
}
