//! Structural diff of two models: nodes (matched by name, then by structure when names are
//! missing or regenerated), graph inputs/outputs, initializers (with the largest value change),
//! opsets. Added nodes are grouped by the pass that inserted them (`onnxsam.pass`).
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use serde::Serialize;

use crate::ir::{Model, NodeExt};
use crate::onnx::{attribute_type as at, tensor, AttributeProto, NodeProto, TensorProto, ValueInfoProto};
use crate::shapes::{shape_string, value_type_of};

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct NodeSummary {
    pub name: String,
    pub op_type: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub pass: Option<String>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct NodeChange {
    pub name: String,
    pub old_name: String,
    pub op_type: String,
    pub changes: Vec<String>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ItemChange {
    pub name: String,
    pub before: Option<String>,
    pub after: Option<String>,
    /// For initializers of equal dtype and shape: the largest |a − b|.
    pub max_abs_diff: Option<f64>,
}

#[derive(Serialize, Debug, Default, Clone, PartialEq)]
pub struct Diff {
    pub opset: Vec<ItemChange>,
    pub nodes_added: Vec<NodeSummary>,
    pub nodes_removed: Vec<NodeSummary>,
    pub nodes_changed: Vec<NodeChange>,
    pub nodes_unchanged: usize,
    pub inputs: Vec<ItemChange>,
    pub outputs: Vec<ItemChange>,
    pub initializers: Vec<ItemChange>,
    pub initializers_unchanged: usize,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.opset.is_empty()
            && self.nodes_added.is_empty()
            && self.nodes_removed.is_empty()
            && self.nodes_changed.is_empty()
            && self.inputs.is_empty()
            && self.outputs.is_empty()
            && self.initializers.is_empty()
    }

    /// Added nodes grouped by pass tag ("(untagged)" for none), in first-seen order.
    pub fn added_by_pass(&self) -> Vec<(String, Vec<&NodeSummary>)> {
        let mut groups: Vec<(String, Vec<&NodeSummary>)> = Vec::new();
        for n in &self.nodes_added {
            let key = n.pass.clone().unwrap_or_else(|| "(untagged)".into());
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, v)) => v.push(n),
                None => groups.push((key, vec![n])),
            }
        }
        groups
    }
}

fn summary(n: &NodeProto) -> NodeSummary {
    NodeSummary {
        name: n.name.clone(),
        op_type: n.op_type.clone(),
        inputs: n.input.clone(),
        outputs: n.output.clone(),
        pass: n.pass_tag().map(String::from),
    }
}

fn attr_string(a: &AttributeProto) -> String {
    match a.r#type {
        at::FLOAT => format!("{}", a.f.unwrap_or(0.0)),
        at::INT => format!("{}", a.i.unwrap_or(0)),
        at::STRING => format!("{:?}", String::from_utf8_lossy(a.s.as_deref().unwrap_or_default())),
        at::FLOATS => format!("{:?}", a.floats),
        at::INTS => format!("{:?}", a.ints),
        at::STRINGS => {
            format!("{:?}", a.strings.iter().map(|s| String::from_utf8_lossy(s).to_string()).collect::<Vec<_>>())
        }
        at::TENSOR => a.t.as_ref().map(tensor_desc_with_values).unwrap_or_default(),
        at::GRAPH => a.g.as_ref().map(|g| format!("graph({} nodes)", g.node.len())).unwrap_or_default(),
        _ => format!("type {}", a.r#type),
    }
}

fn tensor_desc(t: &TensorProto) -> String {
    format!("{} {:?}", tensor::dtype_name(t.data_type), t.dims)
}

fn tensor_desc_with_values(t: &TensorProto) -> String {
    match tensor::to_f64(t) {
        Ok(v) if v.len() <= 8 => format!("{} {:?}", tensor_desc(t), v),
        Ok(v) => {
            // a cheap fingerprint so equal large constants compare equal
            let h = v.iter().fold(0u64, |h, x| h.wrapping_mul(1099511628211).wrapping_add(x.to_bits()));
            format!("{} #{h:016x}", tensor_desc(t))
        }
        Err(_) => tensor_desc(t),
    }
}

fn attrs_map(n: &NodeProto) -> BTreeMap<String, String> {
    n.attribute.iter().map(|a| (a.name.clone(), attr_string(a))).collect()
}

fn io_desc(v: &ValueInfoProto) -> String {
    match value_type_of(&v.r#type) {
        Some(t) => format!("{} {}", tensor::dtype_name(t.dtype), shape_string(&t.shape)),
        None => "non-tensor".into(),
    }
}

fn diff_io(a: &[ValueInfoProto], b: &[ValueInfoProto]) -> Vec<ItemChange> {
    let mut out = Vec::new();
    let bmap: HashMap<&str, &ValueInfoProto> = b.iter().map(|v| (v.name.as_str(), v)).collect();
    let amap: HashMap<&str, &ValueInfoProto> = a.iter().map(|v| (v.name.as_str(), v)).collect();
    for v in a {
        match bmap.get(v.name.as_str()) {
            None => {
                out.push(ItemChange { name: v.name.clone(), before: Some(io_desc(v)), after: None, max_abs_diff: None })
            }
            Some(w) if io_desc(v) != io_desc(w) => out.push(ItemChange {
                name: v.name.clone(),
                before: Some(io_desc(v)),
                after: Some(io_desc(w)),
                max_abs_diff: None,
            }),
            _ => {}
        }
    }
    for w in b {
        if !amap.contains_key(w.name.as_str()) {
            out.push(ItemChange { name: w.name.clone(), before: None, after: Some(io_desc(w)), max_abs_diff: None });
        }
    }
    out
}

fn diff_initializers(a: &[TensorProto], b: &[TensorProto]) -> (Vec<ItemChange>, usize) {
    let mut out = Vec::new();
    let mut same = 0;
    let bmap: HashMap<&str, &TensorProto> = b.iter().map(|t| (t.name.as_str(), t)).collect();
    let amap: HashSet<&str> = a.iter().map(|t| t.name.as_str()).collect();
    for t in a {
        match bmap.get(t.name.as_str()) {
            None => out.push(ItemChange {
                name: t.name.clone(),
                before: Some(tensor_desc(t)),
                after: None,
                max_abs_diff: None,
            }),
            Some(u) => {
                if t.data_type != u.data_type || t.dims != u.dims {
                    out.push(ItemChange {
                        name: t.name.clone(),
                        before: Some(tensor_desc(t)),
                        after: Some(tensor_desc(u)),
                        max_abs_diff: None,
                    });
                    continue;
                }
                let diff = match (tensor::to_f64(t), tensor::to_f64(u)) {
                    (Ok(x), Ok(y)) => x
                        .iter()
                        .zip(&y)
                        .map(|(p, q)| if p.is_nan() && q.is_nan() { 0.0 } else { (p - q).abs() })
                        .fold(0.0, f64::max),
                    _ => {
                        if tensor::raw_bytes(t).ok() == tensor::raw_bytes(u).ok() {
                            0.0
                        } else {
                            f64::NAN
                        }
                    }
                };
                if diff != 0.0 {
                    out.push(ItemChange {
                        name: t.name.clone(),
                        before: Some(tensor_desc(t)),
                        after: Some(tensor_desc(u)),
                        max_abs_diff: Some(diff),
                    });
                } else {
                    same += 1;
                }
            }
        }
    }
    for u in b {
        if !amap.contains(u.name.as_str()) {
            out.push(ItemChange {
                name: u.name.clone(),
                before: None,
                after: Some(tensor_desc(u)),
                max_abs_diff: None,
            });
        }
    }
    (out, same)
}

/// Pairs nodes of `a` with nodes of `b`: by unique name first, then structurally.
fn match_nodes(a: &[NodeProto], b: &[NodeProto]) -> Vec<(usize, usize)> {
    let unique = |nodes: &[NodeProto]| -> HashMap<String, usize> {
        let mut count: HashMap<&str, usize> = HashMap::new();
        for n in nodes {
            *count.entry(n.name.as_str()).or_default() += 1;
        }
        nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| !n.name.is_empty() && count[n.name.as_str()] == 1)
            .map(|(i, n)| (n.name.clone(), i))
            .collect()
    };
    let (ua, ub) = (unique(a), unique(b));
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    let mut a_used = vec![false; a.len()];
    let mut b_used = vec![false; b.len()];
    for (name, &j) in &ub {
        if let Some(&i) = ua.get(name) {
            if a[i].op_type == b[j].op_type {
                pairs.push((i, j));
                a_used[i] = true;
                b_used[j] = true;
            }
        }
    }
    // value map a → b through matched nodes' outputs; other names map to themselves
    let mut vmap: HashMap<String, String> = HashMap::new();
    let extend = |vmap: &mut HashMap<String, String>, i: usize, j: usize| {
        for (x, y) in a[i].output.iter().zip(&b[j].output) {
            vmap.insert(x.clone(), y.clone());
        }
    };
    for &(i, j) in &pairs {
        extend(&mut vmap, i, j);
    }
    let key = |n: &NodeProto, inputs: Vec<String>| (n.op_type.clone(), n.domain.clone(), attrs_map(n), inputs);
    // equal keys (e.g. two Identity nodes reading one initializer) pair in file order
    for _round in 0..b.len().max(1) {
        let mut progress = false;
        let mut by_key: HashMap<_, Vec<usize>> = HashMap::new();
        for (i, n) in a.iter().enumerate().filter(|(i, _)| !a_used[*i]) {
            let mapped = n.input.iter().map(|v| vmap.get(v).cloned().unwrap_or_else(|| v.clone())).collect();
            by_key.entry(key(n, mapped)).or_default().push(i);
        }
        for j in 0..b.len() {
            if b_used[j] {
                continue;
            }
            let k = key(&b[j], b[j].input.clone());
            if let Some(cands) = by_key.get_mut(&k) {
                if let Some(i) = cands.iter().position(|&i| !a_used[i]).map(|p| cands.remove(p)) {
                    a_used[i] = true;
                    b_used[j] = true;
                    pairs.push((i, j));
                    extend(&mut vmap, i, j);
                    progress = true;
                }
            }
        }
        if !progress {
            break;
        }
    }
    pairs.sort();
    pairs
}

pub fn diff(a: &Model, b: &Model) -> Diff {
    let mut d = Diff::default();
    // opsets
    let ops = |m: &Model| -> BTreeMap<String, i64> {
        m.meta
            .opset_import
            .iter()
            .map(|o| (if o.domain().is_empty() { "ai.onnx".into() } else { o.domain().to_string() }, o.version))
            .collect()
    };
    let (oa, ob) = (ops(a), ops(b));
    for (dom, v) in &oa {
        if ob.get(dom) != Some(v) {
            d.opset.push(ItemChange {
                name: dom.clone(),
                before: Some(v.to_string()),
                after: ob.get(dom).map(|v| v.to_string()),
                max_abs_diff: None,
            });
        }
    }
    for (dom, v) in &ob {
        if !oa.contains_key(dom) {
            d.opset.push(ItemChange {
                name: dom.clone(),
                before: None,
                after: Some(v.to_string()),
                max_abs_diff: None,
            });
        }
    }
    let (na, nb) = (&a.graph.nodes, &b.graph.nodes);
    let b_order = b.graph.topo_order().unwrap_or_else(|_| (0..nb.len()).collect());
    let pairs = match_nodes(na, nb);
    let mut vmap: HashMap<&str, &str> = HashMap::new();
    for &(i, j) in &pairs {
        for (x, y) in na[i].output.iter().zip(&nb[j].output) {
            vmap.insert(x, y);
        }
    }
    let (mut a_used, mut b_used) = (vec![false; na.len()], vec![false; nb.len()]);
    for &(i, j) in &pairs {
        a_used[i] = true;
        b_used[j] = true;
        let (x, y) = (&na[i], &nb[j]);
        let mut changes = Vec::new();
        if x.name != y.name {
            changes.push(format!("renamed from '{}'", x.name));
        }
        if x.op_type != y.op_type {
            changes.push(format!("op {} → {}", x.op_type, y.op_type));
        }
        let mapped: Vec<&str> = x.input.iter().map(|v| *vmap.get(v.as_str()).unwrap_or(&v.as_str())).collect();
        for k in 0..mapped.len().max(y.input.len()) {
            let (p, q) = (mapped.get(k).copied().unwrap_or(""), y.input.get(k).map(|s| s.as_str()).unwrap_or(""));
            if p != q {
                changes.push(format!("input {k}: '{}' → '{q}'", x.input.get(k).map(|s| s.as_str()).unwrap_or("")));
            }
        }
        let (aa, ab) = (attrs_map(x), attrs_map(y));
        for (k, v) in &aa {
            match ab.get(k) {
                None => changes.push(format!("attribute {k} removed (was {v})")),
                Some(w) if w != v => changes.push(format!("attribute {k}: {v} → {w}")),
                _ => {}
            }
        }
        for (k, w) in &ab {
            if !aa.contains_key(k) {
                changes.push(format!("attribute {k} added: {w}"));
            }
        }
        if changes.is_empty() {
            d.nodes_unchanged += 1;
        } else {
            d.nodes_changed.push(NodeChange {
                name: y.name.clone(),
                old_name: x.name.clone(),
                op_type: y.op_type.clone(),
                changes,
            });
        }
    }
    d.nodes_removed = na.iter().enumerate().filter(|(i, _)| !a_used[*i]).map(|(_, n)| summary(n)).collect();
    d.nodes_added = b_order.iter().filter(|&&j| !b_used[j]).map(|&j| summary(&nb[j])).collect();
    d.inputs = diff_io(&a.graph.inputs, &b.graph.inputs);
    d.outputs = diff_io(&a.graph.outputs, &b.graph.outputs);
    let (inits, same) = diff_initializers(&a.graph.initializers, &b.graph.initializers);
    d.initializers = inits;
    d.initializers_unchanged = same;
    d
}

fn counts(items: &[ItemChange]) -> (usize, usize, usize) {
    let added = items.iter().filter(|c| c.before.is_none()).count();
    let removed = items.iter().filter(|c| c.after.is_none()).count();
    (added, removed, items.len() - added - removed)
}

fn bar(added: usize, removed: usize, changed: usize) -> String {
    let total = added + removed + changed;
    let scale = |x: usize| {
        if total > 40 {
            (x * 40).div_ceil(total)
        } else {
            x
        }
    };
    format!("{}{}{}", "+".repeat(scale(added)), "-".repeat(scale(removed)), "~".repeat(scale(changed)))
}

fn item_line(c: &ItemChange) -> String {
    match (&c.before, &c.after) {
        (None, Some(b)) => format!("  + {} {b}", c.name),
        (Some(a), None) => format!("  - {} {a}", c.name),
        (Some(a), Some(b)) => match c.max_abs_diff {
            Some(d) => format!("  ~ {} {b}: values changed, max |Δ| = {d:.3e}", c.name),
            None => format!("  ~ {} {a} → {b}", c.name),
        },
        (None, None) => String::new(),
    }
}

fn node_line(sign: char, n: &NodeSummary) -> String {
    format!("  {sign} {:<22} {}  ({}) → ({})", n.op_type, n.name, n.inputs.join(", "), n.outputs.join(", "))
}

/// Reads like `git diff --stat` followed by the details.
pub fn to_text(d: &Diff, a_name: &str, b_name: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "diff {a_name} → {b_name}");
    if d.is_empty() {
        let _ = writeln!(
            s,
            "no changes ({} nodes, {} initializers identical)",
            d.nodes_unchanged, d.initializers_unchanged
        );
        return s;
    }
    let (na, nr, nc) = (d.nodes_added.len(), d.nodes_removed.len(), d.nodes_changed.len());
    let _ = writeln!(s, " nodes        | +{na} -{nr} ~{nc} ({} unchanged) {}", d.nodes_unchanged, bar(na, nr, nc));
    for (label, items) in
        [("inputs", &d.inputs), ("outputs", &d.outputs), ("initializers", &d.initializers), ("opset", &d.opset)]
    {
        let (a, r, c) = counts(items);
        if a + r + c > 0 {
            let _ = writeln!(s, " {label:<12} | +{a} -{r} ~{c} {}", bar(a, r, c));
        }
    }
    if !d.opset.is_empty() {
        let _ = writeln!(s, "\nopset:");
        for c in &d.opset {
            let _ = writeln!(
                s,
                "  {} {} → {}",
                c.name,
                c.before.as_deref().unwrap_or("none"),
                c.after.as_deref().unwrap_or("none")
            );
        }
    }
    if !d.nodes_added.is_empty() {
        let _ = writeln!(s, "\nadded nodes, by pass:");
        for (pass, nodes) in d.added_by_pass() {
            let mut hist: BTreeMap<&str, usize> = BTreeMap::new();
            for n in &nodes {
                *hist.entry(n.op_type.as_str()).or_default() += 1;
            }
            let hist: Vec<String> = hist.iter().map(|(k, v)| format!("{k}×{v}")).collect();
            let _ = writeln!(s, "  {pass} ({} nodes: {})", nodes.len(), hist.join(", "));
            for n in nodes {
                let _ = writeln!(s, "  {}", node_line('+', n));
            }
        }
    }
    if !d.nodes_removed.is_empty() {
        let _ = writeln!(s, "\nremoved nodes:");
        for n in &d.nodes_removed {
            let _ = writeln!(s, "{}", node_line('-', n));
        }
    }
    if !d.nodes_changed.is_empty() {
        let _ = writeln!(s, "\nchanged nodes:");
        for c in &d.nodes_changed {
            let _ = writeln!(s, "  ~ {:<22} {}: {}", c.op_type, c.name, c.changes.join("; "));
        }
    }
    for (label, items) in [("inputs", &d.inputs), ("outputs", &d.outputs), ("initializers", &d.initializers)] {
        if !items.is_empty() {
            let _ = writeln!(s, "\n{label}:");
            for c in items {
                let _ = writeln!(s, "{}", item_line(c));
            }
        }
    }
    s
}

fn dot_id(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Graphviz of B with A's removed nodes: added green, removed red, changed orange.
pub fn to_dot(d: &Diff, a: &Model, b: &Model) -> String {
    let added: HashSet<&str> = d.nodes_added.iter().map(|n| n.name.as_str()).collect();
    let changed: HashSet<&str> = d.nodes_changed.iter().map(|n| n.name.as_str()).collect();
    let mut s = String::from(
        "digraph diff {\n  rankdir=TB;\n  node [shape=box, style=filled, fillcolor=white, fontname=\"monospace\"];\n",
    );
    let mut producer: HashMap<String, String> = HashMap::new();
    let emit = |s: &mut String, id: String, n: &NodeProto, color: &str, producer: &mut HashMap<String, String>| {
        let _ = writeln!(
            s,
            "  {} [label={}, fillcolor=\"{color}\"];",
            dot_id(&id),
            dot_id(&format!("{}\n{}", n.op_type, n.name))
        );
        for o in &n.output {
            producer.insert(o.clone(), id.clone());
        }
    };
    for (i, n) in b.graph.nodes.iter().enumerate() {
        let color = if added.contains(n.name.as_str()) {
            "palegreen"
        } else if changed.contains(n.name.as_str()) {
            "orange"
        } else {
            "white"
        };
        emit(&mut s, format!("b{i}"), n, color, &mut producer);
    }
    let removed: HashSet<&str> = d.nodes_removed.iter().map(|n| n.name.as_str()).collect();
    let mut removed_nodes = Vec::new();
    for (i, n) in a.graph.nodes.iter().enumerate() {
        if removed.contains(n.name.as_str()) {
            let mut p = HashMap::new();
            emit(&mut s, format!("a{i}"), n, "lightcoral", &mut p);
            removed_nodes.push((format!("a{i}"), n));
        }
    }
    for (i, n) in b.graph.nodes.iter().enumerate() {
        for v in &n.input {
            if let Some(p) = producer.get(v) {
                let _ = writeln!(s, "  {} -> {};", dot_id(p), dot_id(&format!("b{i}")));
            }
        }
    }
    for (id, n) in removed_nodes {
        for v in &n.input {
            if let Some(p) = producer.get(v) {
                let _ = writeln!(s, "  {} -> {} [style=dashed, color=red];", dot_id(p), dot_id(&id));
            }
        }
    }
    s.push_str("}\n");
    s
}
