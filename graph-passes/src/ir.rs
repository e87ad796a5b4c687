//! The mutable graph every pass works on. Values are named by strings (ONNX's own convention);
//! nodes keep their NodeProto so that load → save loses nothing. Use-def maps are computed on
//! demand, so passes never see stale indexes.
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;

use crate::onnx::{self, tensor, AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto};
use crate::onnx::{attribute_type as at, StringStringEntryProto};
use crate::{bail, err, Result};

/// The metadata key under which a pass tags every node it inserts.
pub const PASS_KEY: &str = "onnxsam.pass";

#[derive(Clone, Debug)]
pub struct Model {
    /// Everything of the ModelProto but the graph (opsets, producer, metadata, functions…).
    pub meta: ModelProto,
    pub graph: Graph,
}

impl Model {
    pub fn load(path: &Path) -> Result<Model> {
        Ok(Model::from_proto(onnx::load_model(path)?))
    }

    pub fn from_proto(mut proto: ModelProto) -> Model {
        let graph = Graph::from_proto(proto.graph.take().unwrap_or_default());
        Model { meta: proto, graph }
    }

    pub fn to_proto(&self) -> ModelProto {
        let mut p = self.meta.clone();
        p.graph = Some(self.graph.to_proto());
        p
    }

    pub fn save(&self, path: &Path, opts: &onnx::SaveOptions) -> Result<()> {
        onnx::save_model(&self.to_proto(), path, opts)
    }

    /// Version of the default (ai.onnx) opset.
    pub fn opset(&self) -> i64 {
        onnx::default_opset(&self.meta)
    }
}

#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub nodes: Vec<NodeProto>,
    pub inputs: Vec<ValueInfoProto>,
    pub outputs: Vec<ValueInfoProto>,
    pub value_info: Vec<ValueInfoProto>,
    pub initializers: Vec<TensorProto>,
    /// The remaining GraphProto fields (name, doc, sparse initializers, annotations, metadata).
    pub rest: GraphProto,
    /// The pass now emitting nodes; the builder tags each node with it.
    pub pass: Option<String>,
    used_names: HashSet<String>,
    counter: usize,
}

impl Graph {
    pub fn from_proto(mut p: GraphProto) -> Graph {
        let mut g = Graph {
            nodes: std::mem::take(&mut p.node),
            inputs: std::mem::take(&mut p.input),
            outputs: std::mem::take(&mut p.output),
            value_info: std::mem::take(&mut p.value_info),
            initializers: std::mem::take(&mut p.initializer),
            rest: p,
            ..Default::default()
        };
        g.reindex_names();
        g
    }

    pub fn to_proto(&self) -> GraphProto {
        let mut p = self.rest.clone();
        p.node = self.nodes.clone();
        p.input = self.inputs.clone();
        p.output = self.outputs.clone();
        p.value_info = self.value_info.clone();
        p.initializer = self.initializers.clone();
        p
    }

    fn reindex_names(&mut self) {
        let mut names = HashSet::new();
        for n in &self.nodes {
            names.insert(n.name.clone());
            names.extend(n.input.iter().cloned());
            names.extend(n.output.iter().cloned());
        }
        names.extend(self.inputs.iter().map(|v| v.name.clone()));
        names.extend(self.outputs.iter().map(|v| v.name.clone()));
        names.extend(self.initializers.iter().map(|t| t.name.clone()));
        self.used_names = names;
    }

    pub fn name(&self) -> &str {
        &self.rest.name
    }

    /// Renames the value `from` to `to` wherever it appears: node inputs and outputs, graph
    /// inputs, outputs and value_info, initializers; `from` becomes free.
    pub fn rename_value(&mut self, from: &str, to: &str) {
        for n in self.nodes.iter_mut() {
            for v in n.input.iter_mut().chain(n.output.iter_mut()) {
                if v == from {
                    *v = to.to_string();
                }
            }
        }
        for v in self.inputs.iter_mut().chain(self.outputs.iter_mut()).chain(self.value_info.iter_mut()) {
            if v.name == from {
                v.name = to.to_string();
            }
        }
        for t in self.initializers.iter_mut() {
            if t.name == from {
                t.name = to.to_string();
            }
        }
        self.used_names.remove(from);
        self.used_names.insert(to.to_string());
    }

    /// A name not used by any value or node yet, derived from `base`.
    pub fn fresh(&mut self, base: &str) -> String {
        // inputs, outputs and initializers may have been pushed directly: count them as taken
        let taken = |g: &Graph, n: &str| {
            g.inputs.iter().any(|v| v.name == n)
                || g.outputs.iter().any(|v| v.name == n)
                || g.initializers.iter().any(|t| t.name == n)
        };
        if !base.is_empty() && !taken(self, base) && self.used_names.insert(base.to_string()) {
            return base.to_string();
        }
        loop {
            self.counter += 1;
            let name = format!("{base}_{}", self.counter);
            if !taken(self, &name) && self.used_names.insert(name.clone()) {
                return name;
            }
        }
    }

    pub fn initializer(&self, name: &str) -> Option<&TensorProto> {
        self.initializers.iter().find(|t| t.name == name)
    }

    pub fn initializer_mut(&mut self, name: &str) -> Option<&mut TensorProto> {
        self.initializers.iter_mut().find(|t| t.name == name)
    }

    pub fn is_graph_input(&self, name: &str) -> bool {
        self.inputs.iter().any(|v| v.name == name)
    }

    /// Graph inputs that are not also initializers (IR < 4 lists initializers as inputs).
    pub fn data_inputs(&self) -> Vec<&ValueInfoProto> {
        let inits: HashSet<&str> = self.initializers.iter().map(|t| t.name.as_str()).collect();
        self.inputs.iter().filter(|v| !inits.contains(v.name.as_str())).collect()
    }

    /// Adds an initializer under a fresh name derived from `base`; returns the name.
    pub fn add_initializer(&mut self, base: &str, mut t: TensorProto) -> String {
        let name = self.fresh(base);
        t.name = name.clone();
        self.initializers.push(t);
        name
    }

    /// value name → index of the node producing it.
    pub fn producers(&self) -> HashMap<&str, usize> {
        let mut m = HashMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            for o in &n.output {
                if !o.is_empty() {
                    m.insert(o.as_str(), i);
                }
            }
        }
        m
    }

    /// value name → indexes of the nodes reading it (a node reading it twice appears twice).
    pub fn consumers(&self) -> HashMap<&str, Vec<usize>> {
        let mut m: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            for v in n.input.iter().filter(|v| !v.is_empty()) {
                m.entry(v.as_str()).or_default().push(i);
            }
            for sub in subgraph_free_inputs(n) {
                m.entry(self.leak_name(&sub)).or_default().push(i);
            }
        }
        m
    }

    fn leak_name<'a>(&'a self, name: &str) -> &'a str {
        // free variables of subgraphs are values of this graph; find the stored name
        self.nodes
            .iter()
            .flat_map(|n| n.output.iter())
            .chain(self.inputs.iter().map(|v| &v.name))
            .chain(self.initializers.iter().map(|t| &t.name))
            .find(|v| v.as_str() == name)
            .map(|s| s.as_str())
            .unwrap_or("")
    }

    /// Node indexes in an order where every producer comes before its consumers.
    pub fn topo_order(&self) -> Result<Vec<usize>> {
        let producers = self.producers();
        let mut indegree = vec![0usize; self.nodes.len()];
        let mut users: Vec<Vec<usize>> = vec![Vec::new(); self.nodes.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            let mut deps: Vec<usize> = n
                .input
                .iter()
                .filter_map(|v| producers.get(v.as_str()).copied())
                .chain(subgraph_free_inputs(n).iter().filter_map(|v| producers.get(v.as_str()).copied()))
                .collect();
            deps.sort_unstable();
            deps.dedup();
            for d in deps {
                if d != i {
                    indegree[i] += 1;
                    users[d].push(i);
                }
            }
        }
        let mut queue: VecDeque<usize> = (0..self.nodes.len()).filter(|&i| indegree[i] == 0).collect();
        let mut order = Vec::with_capacity(self.nodes.len());
        while let Some(i) = queue.pop_front() {
            order.push(i);
            for &u in &users[i] {
                indegree[u] -= 1;
                if indegree[u] == 0 {
                    queue.push_back(u);
                }
            }
        }
        if order.len() != self.nodes.len() {
            let stuck = (0..self.nodes.len()).find(|&i| indegree[i] > 0).unwrap_or(0);
            let n = &self.nodes[stuck];
            bail!("graph has a cycle through node '{}' (op {})", n.name, n.op_type);
        }
        Ok(order)
    }

    /// Reorders nodes topologically (stable for graphs already in order).
    pub fn topo_sort(&mut self) -> Result<()> {
        let order = self.topo_order()?;
        let mut old: Vec<Option<NodeProto>> = std::mem::take(&mut self.nodes).into_iter().map(Some).collect();
        self.nodes = order.into_iter().map(|i| old[i].take().expect("each index once")).collect();
        Ok(())
    }

    /// Removes nodes and initializers no graph output depends on; returns how many nodes went.
    pub fn remove_dead(&mut self) -> usize {
        let producers = self.producers();
        let mut live_values: HashSet<String> = self.outputs.iter().map(|v| v.name.clone()).collect();
        let mut live_nodes = vec![false; self.nodes.len()];
        let mut stack: Vec<String> = live_values.iter().cloned().collect();
        while let Some(v) = stack.pop() {
            if let Some(&i) = producers.get(v.as_str()) {
                if !live_nodes[i] {
                    live_nodes[i] = true;
                    let n = &self.nodes[i];
                    for inp in n.input.iter().cloned().chain(subgraph_free_inputs(n)) {
                        if !inp.is_empty() && live_values.insert(inp.clone()) {
                            stack.push(inp);
                        }
                    }
                }
            }
        }
        let before = self.nodes.len();
        let mut k = 0;
        self.nodes.retain(|_| {
            k += 1;
            live_nodes[k - 1]
        });
        let graph_inputs: HashSet<String> = self.inputs.iter().map(|v| v.name.clone()).collect();
        self.initializers.retain(|t| live_values.contains(&t.name) || graph_inputs.contains(&t.name));
        self.value_info.retain(|v| live_values.contains(&v.name));
        before - self.nodes.len()
    }

    /// Folds a Transpose of a Transpose into one (composing the perms; where they cancel, readers
    /// take the original value) and a Reshape of a Reshape into one (when the outer target shape
    /// is a constant without 0 entries, which would copy a dimension of the inner result). The
    /// inner nodes stay for their other readers; `remove_dead` takes those left unread. Exact:
    /// both only move the same elements. Returns how many nodes it rewired.
    pub fn fold_transposes_and_reshapes(&mut self) -> usize {
        let graph_outputs: HashSet<String> = self.outputs.iter().map(|v| v.name.clone()).collect();
        let mut folded = 0;
        loop {
            let producers: HashMap<String, usize> =
                self.producers().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            // (node, its rewritten form) or (node to drop, the value its readers take instead)
            let mut change: Option<(usize, std::result::Result<NodeProto, String>)> = None;
            for (j, n) in self.nodes.iter().enumerate() {
                let Some(&i) = producers.get(&n.input.first().cloned().unwrap_or_default()) else { continue };
                let inner = &self.nodes[i];
                if n.op_type != inner.op_type || !n.domain.is_empty() || !inner.domain.is_empty() {
                    continue;
                }
                if n.op_type == "Transpose" {
                    let (Some(p1), Some(p2)) = (inner.attr_ints("perm"), n.attr_ints("perm")) else { continue };
                    if p1.len() != p2.len() {
                        continue;
                    }
                    let q: Vec<i64> = p2.iter().map(|&k| p1[k as usize]).collect();
                    let identity = q.iter().enumerate().all(|(k, &v)| v == k as i64);
                    if identity && !graph_outputs.contains(&n.output[0]) {
                        change = Some((j, Err(inner.input[0].clone())));
                    } else if !identity {
                        let mut m = n.clone();
                        m.input[0] = inner.input[0].clone();
                        m.attribute.retain(|a| a.name != "perm");
                        m.attribute.push(attr_ints("perm", &q));
                        change = Some((j, Ok(m)));
                    } else {
                        continue;
                    }
                    break;
                }
                if n.op_type == "Reshape" && n.input.len() == 2 {
                    let Some(t) = self.initializer(&n.input[1]) else { continue };
                    let Ok(shape) = crate::onnx::tensor::to_i64(t) else { continue };
                    if shape.contains(&0) {
                        continue;
                    }
                    let mut m = n.clone();
                    m.input[0] = inner.input[0].clone();
                    change = Some((j, Ok(m)));
                    break;
                }
            }
            let Some((j, m)) = change else { break };
            match m {
                Ok(m) => self.nodes[j] = m,
                Err(to) => {
                    let from = self.nodes.remove(j).output.swap_remove(0);
                    for n in self.nodes.iter_mut() {
                        for x in n.input.iter_mut().filter(|x| **x == from) {
                            *x = to.clone();
                        }
                    }
                }
            }
            folded += 1;
        }
        folded
    }

    /// Removes Identity nodes whose input is computed by another node: their output name is kept
    /// (it may be a graph output or a name the user knows) and given to the producer instead.
    /// Returns how many went.
    pub fn remove_identities(&mut self) -> usize {
        let mut removed = 0;
        loop {
            let outputs: HashSet<&str> = self.outputs.iter().map(|v| v.name.as_str()).collect();
            let producers = self.producers();
            let found = self.nodes.iter().position(|n| {
                n.op_type == "Identity"
                    && n.output.len() == 1
                    && producers.contains_key(n.input[0].as_str())
                    && !outputs.contains(n.input[0].as_str())
                    && subgraph_free_inputs(n).is_empty()
            });
            let Some(i) = found else { break };
            let n = self.nodes.remove(i);
            let (from, to) = (n.input[0].clone(), n.output[0].clone());
            for m in self.nodes.iter_mut() {
                for o in m.output.iter_mut().filter(|o| **o == from) {
                    *o = to.clone();
                }
                for inp in m.input.iter_mut().filter(|x| **x == from) {
                    *inp = to.clone();
                }
            }
            removed += 1;
        }
        removed
    }

    /// Merges equal constants (initializers of equal type, shape and bytes) and nodes that
    /// compute the same op of the same inputs with the same attributes. Returns nodes removed.
    pub fn eliminate_common_subexpressions(&mut self) -> usize {
        let inputs: HashSet<String> = self.inputs.iter().map(|v| v.name.clone()).collect();
        let outputs: HashSet<String> = self.outputs.iter().map(|v| v.name.clone()).collect();
        let mut rename: HashMap<String, String> = HashMap::new();
        let mut seen_consts: HashMap<(i32, Vec<i64>, Vec<u8>), String> = HashMap::new();
        for t in &self.initializers {
            if inputs.contains(&t.name) || outputs.contains(&t.name) {
                continue;
            }
            let Ok(bytes) = tensor::raw_bytes(t) else { continue };
            let key = (t.data_type, t.dims.clone(), bytes);
            match seen_consts.get(&key) {
                Some(first) => {
                    rename.insert(t.name.clone(), first.clone());
                }
                None => {
                    seen_consts.insert(key, t.name.clone());
                }
            }
        }
        self.initializers.retain(|t| !rename.contains_key(&t.name));
        let Ok(order) = self.topo_order() else { return 0 };
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut dead = vec![false; self.nodes.len()];
        for &i in &order {
            for inp in self.nodes[i].input.iter_mut() {
                if let Some(r) = rename.get(inp) {
                    *inp = r.clone();
                }
            }
            let n = &self.nodes[i];
            let random = n.op_type.starts_with("Random") || n.op_type == "Bernoulli" || n.op_type == "Multinomial";
            if random
                || n.attribute.iter().any(|a| a.g.is_some() || !a.graphs.is_empty())
                || n.output.iter().any(|o| outputs.contains(o))
            {
                continue;
            }
            let key = format!("{}|{}|{:?}|{:?}|{}", n.op_type, n.domain, n.input, n.attribute, n.output.len());
            match seen.get(&key) {
                Some(&j) => {
                    for (o, keep) in self.nodes[i].output.clone().into_iter().zip(self.nodes[j].output.clone()) {
                        rename.insert(o, keep);
                    }
                    dead[i] = true;
                }
                None => {
                    seen.insert(key, i);
                }
            }
        }
        let mut k = 0;
        self.nodes.retain(|_| {
            k += 1;
            !dead[k - 1]
        });
        dead.iter().filter(|&&d| d).count()
    }

    /// Starts a node; `.output()` / `.outputs(n)` adds it to the graph.
    pub fn add(&mut self, op: &str, inputs: &[&str]) -> NodeBuilder<'_> {
        let mut node = NodeProto {
            op_type: op.to_string(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        if let Some(pass) = &self.pass {
            node.metadata_props.push(StringStringEntryProto { key: PASS_KEY.into(), value: pass.clone() });
        }
        NodeBuilder { g: self, node }
    }
}

/// Names a node's subgraphs (If/Loop/Scan bodies) read from the enclosing scope.
pub fn subgraph_free_inputs(n: &NodeProto) -> Vec<String> {
    let mut out = Vec::new();
    for a in &n.attribute {
        for g in a.g.iter().map(|b| b.as_ref()).chain(a.graphs.iter()) {
            let mut defined: HashSet<&str> = g.input.iter().map(|v| v.name.as_str()).collect();
            defined.extend(g.initializer.iter().map(|t| t.name.as_str()));
            for sn in &g.node {
                defined.extend(sn.output.iter().map(|s| s.as_str()));
            }
            for sn in &g.node {
                for i in &sn.input {
                    if !i.is_empty() && !defined.contains(i.as_str()) {
                        out.push(i.clone());
                    }
                }
                out.extend(subgraph_free_inputs(sn).into_iter().filter(|i| !defined.contains(i.as_str())));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

pub struct NodeBuilder<'g> {
    g: &'g mut Graph,
    node: NodeProto,
}

impl<'g> NodeBuilder<'g> {
    pub fn name(mut self, name: &str) -> Self {
        self.node.name = self.g.fresh(name);
        self
    }
    pub fn domain(mut self, domain: &str) -> Self {
        self.node.domain = domain.to_string();
        self
    }
    pub fn attr(mut self, a: AttributeProto) -> Self {
        self.node.attribute.push(a);
        self
    }
    pub fn int(self, name: &str, v: i64) -> Self {
        self.attr(attr_int(name, v))
    }
    pub fn ints(self, name: &str, v: &[i64]) -> Self {
        self.attr(attr_ints(name, v))
    }
    pub fn float(self, name: &str, v: f32) -> Self {
        self.attr(attr_float(name, v))
    }
    pub fn string(self, name: &str, v: &str) -> Self {
        self.attr(attr_string(name, v))
    }
    pub fn tensor(self, name: &str, t: TensorProto) -> Self {
        self.attr(attr_tensor(name, t))
    }
    /// A metadata_props entry (what exporters and import record about the node).
    pub fn meta(mut self, key: &str, value: &str) -> Self {
        self.node.metadata_props.push(StringStringEntryProto { key: key.into(), value: value.into() });
        self
    }
    /// Adds the node with `n` fresh outputs named after the op.
    pub fn outputs(mut self, n: usize) -> Vec<String> {
        if self.node.name.is_empty() {
            let base = format!("{}_{}", self.g.pass.as_deref().unwrap_or("node"), self.node.op_type);
            self.node.name = self.g.fresh(&base);
        }
        let outs: Vec<String> = (0..n).map(|i| self.g.fresh(&format!("{}_out{i}", self.node.name))).collect();
        self.node.output = outs.clone();
        self.g.nodes.push(self.node);
        outs
    }
    /// Adds the node with outputs of the given names (made unique when taken).
    pub fn named_outputs(mut self, names: &[&str]) -> Vec<String> {
        if self.node.name.is_empty() {
            let base = format!("{}_{}", self.g.pass.as_deref().unwrap_or("node"), self.node.op_type);
            self.node.name = self.g.fresh(&base);
        }
        let outs: Vec<String> = names.iter().map(|n| self.g.fresh(n)).collect();
        self.node.output = outs.clone();
        self.g.nodes.push(self.node);
        outs
    }
    /// Adds the node with outputs of exactly these names (the caller knows they are free).
    pub fn exact_outputs(mut self, names: &[&str]) {
        if self.node.name.is_empty() {
            let base = format!("{}_{}", self.g.pass.as_deref().unwrap_or("node"), self.node.op_type);
            self.node.name = self.g.fresh(&base);
        }
        for n in names {
            self.g.used_names.insert(n.to_string());
        }
        self.node.output = names.iter().map(|n| n.to_string()).collect();
        self.g.nodes.push(self.node);
    }
    pub fn output(self) -> String {
        self.outputs(1).remove(0)
    }
}

/// Attribute accessors on a node, with defaults as the ONNX spec gives them.
pub trait NodeExt {
    fn attr(&self, name: &str) -> Option<&AttributeProto>;
    fn attr_i(&self, name: &str, default: i64) -> i64 {
        self.attr(name).and_then(|a| a.i).unwrap_or(default)
    }
    fn attr_f(&self, name: &str, default: f32) -> f32 {
        self.attr(name).and_then(|a| a.f).unwrap_or(default)
    }
    fn attr_ints(&self, name: &str) -> Option<Vec<i64>> {
        self.attr(name).map(|a| a.ints.clone())
    }
    fn attr_s(&self, name: &str) -> Option<String> {
        self.attr(name).and_then(|a| a.s.as_ref()).map(|s| String::from_utf8_lossy(s).to_string())
    }
    fn pass_tag(&self) -> Option<&str>;
    /// "op X (node Y)", how errors name a node.
    fn describe(&self) -> String;
}

impl NodeExt for NodeProto {
    fn attr(&self, name: &str) -> Option<&AttributeProto> {
        self.attribute.iter().find(|a| a.name == name)
    }
    fn pass_tag(&self) -> Option<&str> {
        self.metadata_props.iter().find(|m| m.key == PASS_KEY).map(|m| m.value.as_str())
    }
    fn describe(&self) -> String {
        let name =
            if self.name.is_empty() { self.output.first().map(|s| s.as_str()).unwrap_or("?") } else { &self.name };
        format!("op {} (node {})", self.op_type, name)
    }
}

pub fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: at::INT, i: Some(v), ..Default::default() }
}
pub fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: at::INTS, ints: v.to_vec(), ..Default::default() }
}
pub fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: at::FLOAT, f: Some(v), ..Default::default() }
}
pub fn attr_string(name: &str, v: &str) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: at::STRING, s: Some(v.as_bytes().to_vec()), ..Default::default() }
}
pub fn attr_tensor(name: &str, t: TensorProto) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: at::TENSOR, t: Some(t), ..Default::default() }
}

/// The constant value of `name` if it is an initializer or a Constant node's output.
pub fn constant_value<'a>(g: &'a Graph, name: &str) -> Option<&'a TensorProto> {
    if let Some(t) = g.initializer(name) {
        if !g.is_graph_input(name) {
            return Some(t);
        }
        return None;
    }
    g.nodes
        .iter()
        .find(|n| n.op_type == "Constant" && n.output.first().map(|o| o == name).unwrap_or(false))
        .and_then(|n| n.attr("value").and_then(|a| a.t.as_ref()))
}

/// Integer constant values of `name` (shapes, axes), if known statically.
pub fn constant_ints(g: &Graph, name: &str) -> Option<Vec<i64>> {
    if let Some(v) = g.nodes.iter().find(|n| n.op_type == "Constant" && n.output.first().is_some_and(|o| o == name)) {
        if let Some(a) = v.attr("value_ints") {
            return Some(a.ints.clone());
        }
        if let Some(a) = v.attr("value_int") {
            return a.i.map(|i| vec![i]);
        }
    }
    tensor::to_i64(constant_value(g, name)?).ok()
}

/// Float values of `name` known before running: an initializer, a Constant node (value,
/// value_float(s), value_int(s)), or a Concat / Cast / Identity of such (the exporters write
/// Resize scales all these ways).
pub fn constant_floats(g: &Graph, name: &str) -> Option<Vec<f64>> {
    if let Some(t) = constant_value(g, name) {
        return tensor::to_f64(t)
            .ok()
            .or_else(|| tensor::to_i64(t).ok().map(|v| v.iter().map(|&x| x as f64).collect()));
    }
    let n = g.nodes.iter().find(|n| n.output.first().is_some_and(|o| o == name))?;
    match n.op_type.as_str() {
        "Constant" => {
            if let Some(a) = n.attr("value_floats") {
                return Some(a.floats.iter().map(|&f| f as f64).collect());
            }
            if let Some(f) = n.attr("value_float").and_then(|a| a.f) {
                return Some(vec![f as f64]);
            }
            constant_ints(g, name).map(|v| v.iter().map(|&x| x as f64).collect())
        }
        "Concat" => {
            let mut out = Vec::new();
            for i in &n.input {
                out.extend(constant_floats(g, i)?);
            }
            Some(out)
        }
        "Cast" | "Identity" => constant_floats(g, &n.input[0]),
        _ => None,
    }
}

/// Error for a node, as every pass reports one.
pub fn node_error(n: &NodeProto, msg: impl std::fmt::Display) -> crate::Error {
    err!("{}: {msg}", n.describe())
}
