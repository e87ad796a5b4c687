//! import: undoes what PyTorch's exporters did to a model, so that onnxsam trains the network
//! PyTorch would train, under PyTorch's names — or says precisely why it cannot.
//!
//! What the exporters do (measured on torch 2.15, docs/models.md):
//! - **merged initializers**: equal tensors are stored once. The legacy exporter reads the
//!   others through `Identity` nodes named after them (`Identity(bn1.weight) → bn2.running_var`);
//!   the dynamo exporter's optimizer (`optimize=True`, the default) lets several nodes read one
//!   initializer, and only the nodes' metadata (`pkg.torch.onnx.fx_node`) still names the tensor
//!   each use stood for. Fresh BatchNorm layers make this common (weight = running_var = 1,
//!   bias = running_mean = 0), as do fresh LayerNorms and zero biases.
//! - **other names and layouts**: constant folding stores `Linear` weights transposed under new
//!   names (`onnx::MatMul_12` in legacy files, `val_30` in dynamo files), and a tied head as a
//!   transposed copy.
//! - **folded BatchNorm**: in an eval-mode export, the legacy exporter's constant folding and the
//!   dynamo exporter's optimizer fuse BatchNorm into the preceding Conv. The BatchNorm layers are
//!   gone from the file; training the folded network is not what PyTorch trains.
//!
//! The pass names every tensor a node reads after the PyTorch tensor it stands for (metadata,
//! `Identity` aliases, initializer names, the legacy exporter's scoped node names, and values: a
//! stored copy equal to the transpose of a named parameter is that parameter), gives each PyTorch
//! tensor one initializer in PyTorch's layout, and reads other layouts through `Transpose` nodes
//! tagged `onnxsam.pass = import` (so `export` can store the trained values back in the file's own
//! layout). Parameters and buffers come out listed in `Contract::import`.
pub mod conventions;
pub mod fold;
pub mod fresh_bn;
pub mod sequences;
pub mod views;

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::ir::{Graph, Model, NodeExt};
use crate::onnx::{data_type as dt, tensor, TensorProto};
use crate::pass::{Contract, Pass};
pub use crate::pass::{ImportReport, Stored};
use crate::{bail, Result};
use crate::onnx::metadata::{self, fx_call, is_dynamo_export, module_paths, placeholder_name, sanitize, FxCall};

/// How tensors that several nodes read are trained.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sharing {
    /// One parameter per PyTorch tensor: merged tensors that stood for distinct PyTorch tensors
    /// are untied; a tensor PyTorch itself uses several times stays one parameter.
    #[default]
    Auto,
    /// One parameter per stored tensor (the exporter's merges stay tied; BatchNorm running
    /// statistics are still kept apart from parameters).
    KeepTied,
    /// Every use its own parameter, even where PyTorch uses one tensor several times.
    UntieAll,
}

pub struct Import {
    pub sharing: Sharing,
    /// Train a graph whose BatchNorm layers the exporter folded into convolutions (with a warning).
    pub allow_folded_bn: bool,
    /// The model was freshly built (PyTorch's initial BatchNorm state) where the file cannot prove
    /// it: folded layers whose convolution has a bias are restored too (fresh_bn).
    pub assume_fresh_bn: bool,
    /// Parameters lift-params will keep constant (glob patterns): no warning about training them.
    pub freeze: Vec<String>,
    /// The user's padding rows of embedding tables (`--padding-idx TABLE=ROW|none`).
    pub padding_idx: conventions::PaddingRows,
    /// How Clip nodes the file does not describe pass the gradient at their bounds.
    pub clip_at_bounds: Option<conventions::ClipConvention>,
}


/// One input slot of one node that reads a stored float tensor.
#[derive(Clone, Debug)]
struct Read {
    node: usize,
    slot: usize,
    /// The initializer the value comes from (after Identity aliases).
    root: String,
    /// The name the read saw: the alias name, or the initializer's.
    seen: String,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Param,
    Buffer,
}

/// A read's PyTorch tensor: name, parameter or buffer, and the layout the file stores it in.
#[derive(Clone, Debug)]
struct Named {
    name: String,
    kind: Kind,
    perm: Vec<i64>,
}

impl Pass for Import {
    fn name(&self) -> &'static str {
        "import"
    }

    fn run(&self, m: &mut Model, c: &mut Contract) -> Result<()> {
        let g = &mut m.graph;
        let dynamo = is_dynamo_export(&g.nodes);
        let legacy = !dynamo && m.meta.producer_name == "pytorch";
        let mut report = ImportReport {
            exporter: if dynamo {
                "dynamo"
            } else if legacy {
                "legacy"
            } else {
                "other"
            }
            .into(),
            ..Default::default()
        };
        let mut unproven_fresh = vec![];
        if dynamo {
            // fresh BatchNorm layers first: their convolution's zero bias is the fold's, not a
            // bias of its own
            let fresh = fresh_bn::restore_fresh_batch_norms(g, self.assume_fresh_bn)?;
            if !fresh.layers.is_empty() {
                report.notes.push(format!(
                    "BatchNorm {} folded into the convolutions: restored at PyTorch's initial state (--assume-fresh-batchnorm: weight 1, bias 0, running mean 0, variance 1) under {} names and trained as PyTorch trains {}",
                    summary(&fresh.layers, 6),
                    if fresh.layers.len() == 1 { "its" } else { "their" },
                    if fresh.layers.len() == 1 { "it" } else { "them" }
                ));
            }
            unproven_fresh = fresh.unproven;
            report.restored = restore_removed_biases(g);
        }
        g.pass = Some(self.name().into());
        let canonical = fold::fold_integer_constants(g)
            .and_then(|_| sequences::sequences_to_tensors(g))
            .and_then(|_| fold::fold_integer_constants(g))
            .and_then(|_| fold::fold_known_integer_inputs(g));
        g.pass = None;
        canonical?;
        if dynamo || legacy {
            report.notes.extend(views::unfold(g, dynamo)?);
        }
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
        let known_refs: Vec<&str> = known.iter().map(|s| s.as_str()).collect();
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
        for (r, n) in reads.iter().zip(&named) {
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
        // 3. folded BatchNorm
        let (folded_bn, folded_nodes) = folded_batch_norms(g, dynamo, &reads);
        report.folded_bn = folded_bn;
        if !report.folded_bn.is_empty() {
            let list = summary(&report.folded_bn, 6);
            let fix = if dynamo {
                "re-export with torch.onnx.export(..., dynamo=True, optimize=False) or torch.onnx.export(..., dynamo=False, do_constant_folding=False)"
            } else {
                "re-export with torch.onnx.export(..., dynamo=False, do_constant_folding=False) or torch.onnx.export(..., dynamo=True, optimize=False)"
            };
            let fresh_hint = if unproven_fresh.is_empty() {
                String::new()
            } else {
                format!(
                    " (a freshly built model, never trained, its BatchNorm at PyTorch's defaults: --assume-fresh-batchnorm gives {})",
                    if unproven_fresh.len() == report.folded_bn.len() {
                        "them back".to_string()
                    } else {
                        format!("back {}", summary(&unproven_fresh, 4))
                    }
                )
            };
            let what = if dynamo {
                format!("the exporter folded the BatchNorm layers {list} into the preceding convolutions")
            } else {
                format!("the exporter folded BatchNorm into the convolutions {list}")
            };
            if !self.allow_folded_bn {
                bail!(
                    "{what}: PyTorch trains those BatchNorm layers and this file no longer has them; {fix}{fresh_hint}, or pass --allow-folded-bn to train the folded network anyway"
                );
            }
            report.warnings.push(format!(
                "training the folded network: {what}, so batch statistics and the BatchNorm parameters are not trained as PyTorch would ({fix} to train the real network)"
            ));
        }
        // 4. group reads into tensors
        let mut key_of: Vec<Option<String>> = vec![None; reads.len()];
        let mut groups: BTreeMap<String, Named> = BTreeMap::new(); // key → tensor
        let mut order: Vec<String> = Vec::new();
        let mut uses: HashMap<String, usize> = HashMap::new();
        for (i, (r, n)) in reads.iter().zip(&named).enumerate() {
            let Some(n) = n else { continue };
            let mut t = n.clone();
            let passive = crate::ops::is_non_differentiable(&g.nodes[r.node].op_type)
                || moves_data_only(&g.nodes[r.node].op_type);
            let key = match (self.sharing, n.kind) {
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
        if dynamo && self.sharing == Sharing::Auto {
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
        // 5. rewrite: stored tensors and aliases that are all named go; one initializer per tensor
        let unresolved_roots: HashSet<String> =
            reads.iter().zip(&key_of).filter(|(_, k)| k.is_none()).map(|(r, _)| r.root.clone()).collect();
        // aliases of unnamed tensors stay (their readers keep reading the stored tensor)
        let drop_alias: HashSet<usize> = alias_nodes
            .iter()
            .copied()
            .filter(|&i| !unresolved_roots.contains(&alias_root[&g.nodes[i].output[0]]))
            .collect();
        let mut free: HashSet<String> = reads
            .iter()
            .zip(&key_of)
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
        g.pass = Some(self.name().into());
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
        for (r, n) in reads.iter().zip(&named) {
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
        let (notes, warnings) = batch_norm_notes(g);
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
                    let frozen = self.freeze.iter().any(|f| crate::pass::glob_match(f, p));
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
        conventions::apply(g, &mut report, dynamo, &self.padding_idx, self.clip_at_bounds)?;
        c.import = report;
        Ok(())
    }
}

/// The dynamo exporter's optimizer drops a Conv, ConvTranspose or Gemm bias that is all zeros
/// (onnxscript `RemoveOptionalBiasFrom*`; a fresh layer's bias often is). PyTorch trains that
/// bias, and the node's metadata still names it (`aten.conv2d(x, p_w, p_b, …)`,
/// `aten.addmm(p_b, x, p_w)`): it comes back as a zero initializer under that name. Returns the
/// names given back.
fn restore_removed_biases(g: &mut Graph) -> Vec<String> {
    let mut out = Vec::new();
    let known: Vec<String> = g.initializers.iter().map(|t| t.name.clone()).collect();
    let known_refs: Vec<&str> = known.iter().map(|s| s.as_str()).collect();
    for i in 0..g.nodes.len() {
        let n = &g.nodes[i];
        let rules = metadata::rewrite_rules(n);
        if !rules.iter().any(|r| r.starts_with("RemoveOptionalBiasFrom"))
            || n.input.get(2).is_some_and(|b| !b.is_empty())
        {
            continue;
        }
        let Some(call) = fx_call(n) else { continue };
        let conv = n.op_type == "Conv" && (call.op.starts_with("conv") || call.op == "convolution");
        let convt = n.op_type == "ConvTranspose" && call.op.starts_with("conv_transpose");
        // nn.Linear: linear(x, w, b); torch.addmm(b, x, w) (Hugging Face's Conv1D: GPT-2)
        let gemm = n.op_type == "Gemm" && (call.op == "linear" || call.op == "addmm");
        if !(conv || convt || gemm) {
            continue;
        }
        let bias_arg = if call.op == "addmm" { 0 } else { 2 };
        let Some(p) = call.placeholder(bias_arg).filter(|p| p.starts_with("p_")) else { continue };
        let Some(w) = n.input.get(1).and_then(|w| g.initializer(w)) else { continue };
        let len = if conv {
            w.dims[0]
        } else if convt {
            w.dims.get(1).copied().unwrap_or(0) * n.attr_i("group", 1)
        } else if n.attr_i("transB", 0) != 0 {
            w.dims[0]
        } else {
            w.dims.get(1).copied().unwrap_or(0)
        };
        let name = placeholder_name(p, &module_paths(n), &known_refs);
        if g.initializer(&name).is_none() {
            g.initializers.push(tensor::from_f32(&name, &[len], &vec![0.0; len.max(0) as usize]));
        }
        let n = &mut g.nodes[i];
        n.input.resize(2, String::new());
        n.input.push(name.clone());
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

/// The stored tensor in PyTorch's layout: transposed back by the inverse of `perm`.
fn unlayout(t: &TensorProto, perm: &[i64], name: &str) -> Result<TensorProto> {
    let mut out = t.clone();
    out.name = name.to_string();
    if perm.is_empty() {
        return Ok(out);
    }
    if perm != [1, 0] || t.dims.len() != 2 {
        bail!("initializer '{}': only 2-D transposes are undone, not perm {perm:?}", t.name);
    }
    let v = tensor::to_f32(t)?;
    let (r, c) = (t.dims[0] as usize, t.dims[1] as usize);
    let mut w = vec![0f32; v.len()];
    for i in 0..r {
        for j in 0..c {
            w[j * r + i] = v[i * c + j];
        }
    }
    Ok(tensor::from_f32(name, &[c as i64, r as i64], &w))
}

/// Stores parameters back the way the file had them: every view the import pass added (Identity,
/// Transpose, and the Slice/Concat/Unsqueeze/Reshape of `views`) whose inputs are initializers
/// becomes an initializer under the view's (the file's) name, and a parameter initializer nothing
/// else reads goes. What `export` does to a trained graph.
pub fn fold_views(g: &mut Graph) -> Result<()> {
    use crate::ir::PASS_KEY;
    loop {
        let found = g.nodes.iter().position(|n| {
            n.metadata_props.iter().any(|p| p.key == PASS_KEY && p.value == "import")
                && !n.input.is_empty()
                && n.input.iter().all(|i| i.is_empty() || g.initializer(i).is_some())
                && matches!(n.op_type.as_str(), "Transpose" | "Identity" | "Slice" | "Concat" | "Unsqueeze" | "Reshape")
        });
        let Some(i) = found else { break };
        let n = g.nodes.remove(i);
        let value = if n.op_type == "Transpose" {
            let t = g.initializer(&n.input[0]).expect("checked").clone();
            Some(unlayout(&t, &n.attr_ints("perm").unwrap_or_default(), &n.output[0])?)
        } else {
            let inputs: Vec<&TensorProto> =
                n.input.iter().filter(|i| !i.is_empty()).map(|i| g.initializer(i).expect("checked")).collect();
            views::evaluate(&n, &inputs, &n.output[0])?
        };
        let Some(value) = value else {
            bail!("cannot compute the file's tensor '{}' back from the trained values ({})", n.output[0], n.describe());
        };
        g.initializers.push(value);
        for input in n.input.iter().filter(|i| !i.is_empty()) {
            if !g.nodes.iter().any(|m| m.input.contains(input)) && !g.outputs.iter().any(|o| &o.name == input) {
                g.initializers.retain(|x| &x.name != input);
            }
        }
    }
    Ok(())
}

/// Ops that only move a tensor's elements (the exporters' own views of a parameter: the gate
/// slices of a recurrent weight): several of them reading one parameter is no tie.
fn moves_data_only(op: &str) -> bool {
    matches!(
        op,
        "Slice" | "Split" | "Concat" | "Reshape" | "Unsqueeze" | "Squeeze" | "Flatten" | "Transpose" | "Identity"
    )
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
    if n.op_type == "Conv" && metadata::rewrite_rules(n).iter().any(|x| x.contains("FuseBatchNormIntoConv")) {
        let weight = n.input.get(1).filter(|w| w.contains('.')).cloned();
        return match (r.slot, weight) {
            (1, Some(w)) => Some(Named { name: w, kind: Kind::Param, perm: vec![] }),
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

/// BatchNorm layers the exporter fused into convolutions: dynamo marks the Conv with the
/// optimizer's rule `FuseBatchNormIntoConv`; a legacy Conv whose weight constant folding computed
/// (`onnx::Conv_N`) had a BatchNorm folded into it (`_jit_pass_onnx_eval_peephole`).
fn folded_batch_norms(g: &Graph, dynamo: bool, reads: &[Read]) -> (Vec<String>, HashSet<usize>) {
    let mut out = Vec::new();
    let mut nodes = HashSet::new();
    for (i, n) in g.nodes.iter().enumerate() {
        if n.op_type != "Conv" {
            continue;
        }
        let layer = if dynamo {
            if !metadata::rewrite_rules(n).iter().any(|r| r.contains("FuseBatchNormIntoConv")) {
                continue;
            }
            module_paths(n).first().cloned().unwrap_or_else(|| n.describe())
        } else {
            let folded = reads.iter().any(|r| r.node == i && r.slot == 1 && r.seen.starts_with("onnx::"));
            if !folded {
                continue;
            }
            metadata::legacy_module_path(&n.name).unwrap_or_else(|| n.describe())
        };
        nodes.insert(i);
        if !out.contains(&layer) {
            out.push(layer);
        }
    }
    (out, nodes)
}

/// BatchNorm facts a user should know: a training-mode export stores the running statistics its
/// own forward left (torch.onnx.export with training=TRAINING runs the model once, and PyTorch's
/// buffers move with it); ONNX momentum 1 keeps the running statistics as they are (PyTorch
/// momentum 0 — or momentum=None, a cumulative average the file does not carry).
fn batch_norm_notes(g: &Graph) -> (Vec<String>, Vec<String>) {
    let mut notes = Vec::new();
    let bns: Vec<&crate::onnx::NodeProto> = g.nodes.iter().filter(|n| n.op_type == "BatchNormalization").collect();
    let stateful = |n: &&crate::onnx::NodeProto| n.input.get(3).map(|m| g.initializer(m).is_some()).unwrap_or(false);
    if bns.iter().any(|n| n.attr_i("training_mode", 0) != 0 && stateful(n)) {
        notes.push(
            "a training-mode export: its running statistics are those after the export's own forward (PyTorch's buffers moved with it); training continues from the file's"
                .into(),
        );
    }
    let frozen: Vec<String> = bns
        .iter()
        .filter(|n| stateful(n) && n.attr_f("momentum", 0.9) >= 1.0)
        .map(|n| metadata::describe_layer(n))
        .collect();
    let mut warnings = Vec::new();
    if !frozen.is_empty() {
        warnings.push(format!(
            "BatchNorm {} {} momentum 1 in the file: running statistics stay as they are (PyTorch momentum=0); if the model used momentum=None (a cumulative average), the file does not carry it and onnxsam's running statistics will differ from PyTorch's — give it a momentum before exporting",
            summary(&frozen, 4),
            if frozen.len() == 1 { "has" } else { "have" }
        ));
    }
    (notes, warnings)
}

/// "a, b, c, … (12 in all)"
pub fn summary(items: &[String], show: usize) -> String {
    if items.len() <= show {
        items.join(", ")
    } else {
        format!("{}, … ({} in all)", items[..show].join(", "), items.len())
    }
}
