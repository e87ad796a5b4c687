//! Import phase 3, naming: the PyTorch tensor each read stands for — by the dynamo exporter's
//! metadata (FX calls, placeholders), the legacy exporter's initializer names and scopes, and by
//! value (a stored copy equal to the transpose of a named parameter is that parameter) — and the
//! layout the file stores it in.
use std::collections::{BTreeMap, HashMap, HashSet};

use super::reads::Found;
use super::{unlayout, Kind, Named, Read};
use crate::ir::{Graph, NodeExt};
use crate::onnx::metadata::{self, module_paths, placeholder_name, sanitize, FxCall};
use crate::onnx::{tensor, TensorProto};
use crate::Result;

/// What the naming phase found: each read's tensor (None: unnamed), and the roots that hold
/// lifted constants of the program (dynamo `c_…` placeholders).
pub(super) struct Names {
    pub named: Vec<Option<Named>>,
    pub lifted: HashSet<String>,
}

pub(super) fn name_reads(g: &Graph, found: &Found, dynamo: bool) -> Result<Names> {
    let Found { stored, alias_root, reads, known, placeholders, calls, .. } = found;
    let known_refs: Vec<&str> = known.iter().map(|s| s.as_str()).collect();
    // 1. name each read
    let mut named: Vec<Option<Named>> = reads
        .iter()
        .map(|r| {
            if dynamo {
                name_dynamo(g, r, calls[r.node].as_ref(), &placeholders, &known_refs, &reads)
            } else {
                name_legacy(g, r, &stored, &alias_root)
            }
        })
        .collect();
    // dynamo: tensors of lifted constants (`c_…` placeholders: a literal torch.tensor in the
    // forward) are constants of the program, not parameters the file no longer names
    let lifted: HashSet<String> = if dynamo {
        reads
            .iter()
            .filter(|r| {
                let by_name = [&r.seen, &r.root].iter().any(|v| placeholders.contains(&format!("c_{}", sanitize(v))));
                let by_call = calls[r.node].as_ref().is_some_and(|c| {
                    let ph = c.placeholders();
                    let roots: HashSet<&str> =
                        reads.iter().filter(|x| x.node == r.node).map(|x| x.root.as_str()).collect();
                    !ph.is_empty() && ph.iter().all(|p| p.starts_with("c_")) && roots.len() == 1
                });
                by_name || by_call
            })
            .map(|r| r.root.clone())
            .collect()
    } else {
        HashSet::new()
    };
    // 2. stored copies equal to the transpose of a named parameter are that parameter
    let mut values: BTreeMap<String, TensorProto> = BTreeMap::new();
    for (r, n) in reads.iter().zip(named.iter()) {
        if let Some(n) = n {
            if !values.contains_key(&n.name) {
                values.insert(n.name.clone(), unlayout(&stored[&r.root], &n.perm, &n.name)?);
            }
        }
    }
    for (r, slot) in reads.iter().zip(named.iter_mut()) {
        if slot.is_some() {
            continue;
        }
        let t = &stored[&r.root];
        if t.dims.len() == 2 {
            let tr = unlayout(t, &[1, 0], "")?;
            let hits: Vec<&String> = values
                .iter()
                .filter(|(_, v)| {
                    v.dims == tr.dims && !is_constant(v) && tensor::raw_bytes(v).ok() == tensor::raw_bytes(&tr).ok()
                })
                .map(|(k, _)| k)
                .collect();
            if let [hit] = hits.as_slice() {
                *slot = Some(Named { name: (*hit).clone(), kind: Kind::Param, perm: vec![1, 0] });
            }
        }
    }
    // 2b. (legacy) a Linear without bias: constant folding stored Wᵀ as `onnx::MatMul_N` and
    // no bias names it; the MatMul's module scope does (`/score/MatMul` → score.weight)
    if !dynamo {
        let taken: HashSet<String> = named.iter().flatten().map(|n| n.name.clone()).collect();
        for (r, slot) in reads.iter().zip(named.iter_mut()) {
            let n = &g.nodes[r.node];
            if slot.is_some() || n.op_type != "MatMul" || r.slot != 1 || !r.seen.starts_with("onnx::") {
                continue;
            }
            let Some(module) = metadata::legacy_module_path(&n.name) else { continue };
            let name = format!("{module}.weight");
            if stored[&r.root].dims.len() == 2 && !taken.contains(&name) {
                *slot = Some(Named { name, kind: Kind::Param, perm: vec![1, 0] });
            }
        }
    }
    Ok(Names { named, lifted })
}

/// All elements equal (a fresh bias, a ones vector): no evidence of identity by value.
fn is_constant(t: &TensorProto) -> bool {
    match tensor::raw_bytes(t) {
        Ok(b) => b.chunks(4).all(|c| c == &b[..4.min(b.len())]),
        Err(_) => true,
    }
}

/// Which argument of the FX call a node's input slot is, for nodes that translate one ATen op,
/// with the layout the slot sees the tensor in (`aten.linear` becomes MatMul of Wᵀ, or Gemm).
fn fx_slot(op_type: &str, n: &crate::onnx::NodeProto, aten: &str, slot: usize) -> Option<(usize, Vec<i64>)> {
    let same = |i: usize| Some((i, vec![]));
    match (aten, op_type) {
        (a, "Conv" | "ConvTranspose") if a.starts_with("conv") || a == "convolution" => {
            (slot <= 2).then(|| (slot, vec![]))
        }
        (a, "BatchNormalization") if a.contains("batch_norm") => (slot <= 4).then(|| (slot, vec![])),
        ("layer_norm", "LayerNormalization") | ("group_norm", "GroupNormalization") => match slot {
            1 => same(2),
            2 => same(3),
            _ => None,
        },
        ("instance_norm", "InstanceNormalization") => (1..=2).contains(&slot).then(|| (slot, vec![])),
        ("linear", "Gemm") => match slot {
            1 => Some((1, if n.attr_i("transB", 0) != 0 { vec![] } else { vec![1, 0] })),
            2 => same(2),
            _ => None,
        },
        ("linear", "MatMul") => (slot == 1).then(|| (1, vec![1, 0])),
        ("linear", "Transpose") => (slot == 0).then(|| (1, vec![])),
        ("linear", "Add") => same(2),
        ("embedding", "Gather") => (slot == 0).then(|| (0, vec![])),
        _ => None,
    }
}

fn name_dynamo(
    g: &Graph,
    r: &Read,
    call: Option<&FxCall>,
    placeholders: &HashSet<String>,
    known: &[&str],
    reads: &[Read],
) -> Option<Named> {
    let n = &g.nodes[r.node];
    let mods = module_paths(n);
    let kind_of = |p: &str| if p.starts_with("b_") { Kind::Buffer } else { Kind::Param };
    let from = |p: &str, perm: Vec<i64>| -> Option<Named> {
        if p.starts_with("c_") {
            return None;
        }
        Some(Named { name: placeholder_name(p, &mods, known), kind: kind_of(p), perm })
    };
    // a Conv the optimizer fused a BatchNorm into (metadata of the BatchNorm): the weight keeps
    // the convolution's name, the fused bias belongs to the convolution (for --allow-folded-bn)
    if metadata::fused_batch_norm(n) {
        let weight = n.input.get(1).filter(|w| w.contains('.')).cloned();
        // a Gemm without transB reads the Linear weight transposed
        let perm = if n.op_type == "Gemm" && n.attr_i("transB", 0) == 0 { vec![1, 0] } else { vec![] };
        return match (r.slot, weight) {
            (1, Some(w)) => Some(Named { name: w, kind: Kind::Param, perm }),
            (2, Some(w)) => {
                let module = w.strip_suffix(".weight").unwrap_or(&w).to_string();
                Some(Named { name: format!("{module}.bias"), kind: Kind::Param, perm: vec![] })
            }
            _ => None,
        };
    }
    if let Some(call) = call {
        if let Some((arg, perm)) = fx_slot(&n.op_type, n, &call.op, r.slot) {
            if let Some(p) = call.placeholder(arg) {
                return from(p, perm);
            }
        }
        // one tensor argument, one stored tensor read by the node: they are the same
        let ph = call.placeholders();
        let roots: HashSet<&str> = reads.iter().filter(|x| x.node == r.node).map(|x| x.root.as_str()).collect();
        if let ([p], 1) = (ph.as_slice(), roots.len()) {
            return from(p, vec![]);
        }
        // the stored name itself is among the call's tensors
        if let Some(p) = ph.iter().find(|p| q_rest(p) == sanitize(&r.seen)) {
            return from(p, vec![]);
        }
    }
    // a stored name that some node's metadata names as a parameter or buffer
    placeholders.iter().find(|p| q_rest(p) == sanitize(&r.seen)).and_then(|p| {
        if p.starts_with("c_") {
            None
        } else {
            Some(Named { name: r.seen.clone(), kind: kind_of(p), perm: vec![] })
        }
    })
}

fn q_rest(p: &str) -> String {
    p.get(2..).unwrap_or("").to_string()
}

/// Legacy (TorchScript) and other files: initializer and alias names are PyTorch's, except those
/// constant folding made (`onnx::…`). Of those, a Linear's transposed weight is recognized by
/// the bias its product gets (MatMul → Add of `X.bias`, or Gemm's C): the weight is `X.weight`
/// (`in_proj_bias` → `in_proj_weight`), stored transposed; a folded Conv's weight and bias are
/// named after the Conv's module (what --allow-folded-bn trains). Anything else stays unnamed.
fn name_legacy(
    g: &Graph,
    r: &Read,
    stored: &HashMap<String, TensorProto>,
    alias_root: &HashMap<String, String>,
) -> Option<Named> {
    let n = &g.nodes[r.node];
    let stat = n.op_type == "BatchNormalization" && (r.slot == 3 || r.slot == 4);
    let t = &stored[&r.root];
    if !r.seen.starts_with("onnx::") {
        if t.dims.is_empty() && !stat {
            return None; // exporter scalars
        }
        // ±inf or NaN (an additive attention mask): a buffer, no parameter
        if !stat && !tensor::to_f32(t).map(|v| v.iter().all(|x| x.is_finite())).unwrap_or(true) {
            return None;
        }
        return Some(Named { name: r.seen.clone(), kind: if stat { Kind::Buffer } else { Kind::Param }, perm: vec![] });
    }
    let transposed = |bias: &str| -> Option<Named> {
        let bias_dims =
            stored.get(bias).or_else(|| alias_root.get(bias).and_then(|root| stored.get(root)))?.dims.clone();
        let stem = bias.strip_suffix("bias")?;
        (t.dims.len() == 2 && bias_dims == [t.dims[1]] && !bias.starts_with("onnx::")).then(|| Named {
            name: format!("{stem}weight"),
            kind: Kind::Param,
            perm: vec![1, 0],
        })
    };
    match (n.op_type.as_str(), r.slot) {
        ("MatMul", 1) => {
            let out = &n.output[0];
            let readers: Vec<&crate::onnx::NodeProto> = g.nodes.iter().filter(|m| m.input.contains(out)).collect();
            let [add] = readers.as_slice() else { return None };
            if add.op_type != "Add" {
                return None;
            }
            let bias = add.input.iter().find(|i| *i != out)?;
            transposed(bias)
        }
        ("Gemm", 1) if n.attr_i("transB", 0) == 0 => transposed(n.input.get(2)?),
        ("Conv", 1 | 2) => {
            let module = metadata::legacy_module_path(&n.name)?;
            let what = if r.slot == 1 { "weight" } else { "bias" };
            Some(Named { name: format!("{module}.{what}"), kind: Kind::Param, perm: vec![] })
        }
        _ => None,
    }
}
