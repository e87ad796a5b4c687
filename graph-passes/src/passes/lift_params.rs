//! lift-params: trainable floating-point initializers become graph inputs under their names.
//!
//! PyTorch's exporters merge initializers with equal values: fresh BatchNorm weights (1) share a
//! tensor with running variances (1), biases (0) with running means (0), reached through
//! `Identity` nodes named after the PyTorch parameters. Training that as it stands would move the
//! running statistics with the weights. So every Identity alias of an initializer becomes its own
//! tensor named after the alias (a parameter, or a running statistic kept constant), and a tensor
//! read both as a parameter and as a running statistic is split. Plain sharing between trainable
//! uses stays tied (one parameter) unless `untie_shared`.
use std::collections::{BTreeMap, HashMap, HashSet};

use super::{value_info, Contract, Pass};
use crate::ir::Model;
use crate::onnx::{data_type as dt, TensorProto};
use crate::{bail, Result};

#[derive(Default)]
pub struct LiftParams {
    /// Glob patterns (`*`, `?`) of parameter names to keep constant.
    pub freeze: Vec<String>,
    pub untie_shared: bool,
}

/// `*` matches any run, `?` one character.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn rec(p: &[char], s: &[char]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some('*'), _) => rec(&p[1..], s) || (!s.is_empty() && rec(p, &s[1..])),
            (Some('?'), Some(_)) => rec(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => rec(&p[1..], &s[1..]),
            _ => false,
        }
    }
    let (p, s): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    rec(&p, &s)
}

/// Initializers that are model constants rather than parameters: exporter-made names and scalars.
fn is_exporter_constant(t: &TensorProto) -> bool {
    t.name.starts_with("onnx::") || t.dims.is_empty()
}

impl Pass for LiftParams {
    fn name(&self) -> &'static str {
        "lift-params"
    }

    fn run(&self, m: &mut Model, c: &mut Contract) -> Result<()> {
        let g = &mut m.graph;
        c.data = g.data_inputs().iter().map(|v| v.name.clone()).collect();
        let graph_inputs: HashSet<String> = g.inputs.iter().map(|v| v.name.clone()).collect();
        let candidates: HashMap<String, TensorProto> = g
            .initializers
            .iter()
            .filter(|t| t.data_type == dt::FLOAT && !graph_inputs.contains(&t.name) && !is_exporter_constant(t))
            .map(|t| (t.name.clone(), t.clone()))
            .collect();
        // 1. Identity aliases of candidates become tensors of their own, named after the alias
        let mut alias_root: HashMap<String, String> = HashMap::new();
        loop {
            let found = g.nodes.iter().position(|n| {
                n.op_type == "Identity"
                    && (candidates.contains_key(&n.input[0]) || alias_root.contains_key(&n.input[0]))
                    && !g.outputs.iter().any(|o| o.name == n.output[0])
            });
            let Some(i) = found else { break };
            let n = g.nodes.remove(i);
            let root = alias_root.get(&n.input[0]).cloned().unwrap_or_else(|| n.input[0].clone());
            alias_root.insert(n.output[0].clone(), root);
        }
        let mut tensors: BTreeMap<String, TensorProto> = BTreeMap::new(); // name → value, for every lifted tensor
        for (alias, root) in &alias_root {
            c.split.entry(root.clone()).or_default().push(alias.clone());
            let mut t = candidates[root].clone();
            t.name = alias.clone();
            tensors.insert(alias.clone(), t);
        }
        // 2. classify every use: (node, slot) reading a candidate or alias
        let is_stat = |op: &str, slot: usize| op == "BatchNormalization" && (slot == 3 || slot == 4);
        let mut uses: BTreeMap<String, Vec<(usize, usize, bool)>> = BTreeMap::new();
        for (i, n) in g.nodes.iter().enumerate() {
            for (k, v) in n.input.iter().enumerate() {
                if candidates.contains_key(v) || alias_root.contains_key(v) {
                    uses.entry(v.clone()).or_default().push((i, k, is_stat(&n.op_type, k)));
                }
            }
        }
        let mut params: Vec<String> = Vec::new();
        let mut constants: Vec<TensorProto> = Vec::new();
        for (name, us) in &uses {
            let value = tensors.get(name).cloned().unwrap_or_else(|| candidates[name].clone());
            let (stat_uses, param_uses): (Vec<_>, Vec<_>) = us.iter().partition(|u| u.2);
            let frozen = self.freeze.iter().any(|p| glob_match(p, name));
            if param_uses.is_empty() || frozen {
                constants.push(value);
                continue;
            }
            // a running statistic sharing the tensor gets a copy of its own
            if !stat_uses.is_empty() {
                let mut t = value.clone();
                t.name = g.fresh(&format!("{name}.running_stat"));
                c.split.entry(name.clone()).or_default().push(t.name.clone());
                for &(i, k, _) in &stat_uses {
                    g.nodes[i].input[k] = t.name.clone();
                }
                constants.push(t);
            }
            if param_uses.len() > 1 && self.untie_shared {
                for (j, &(i, k, _)) in param_uses.iter().enumerate() {
                    let pname = if j == 0 { name.clone() } else { g.fresh(&format!("{name}.tied{j}")) };
                    g.nodes[i].input[k] = pname.clone();
                    let mut t = value.clone();
                    t.name = pname.clone();
                    c.init.insert(pname.clone(), t);
                    params.push(pname);
                }
            } else {
                if param_uses.len() > 1 {
                    let users: Vec<String> = param_uses.iter().map(|&(i, _, _)| g.nodes[i].name.clone()).collect();
                    c.tied.insert(name.clone(), users);
                }
                c.init.insert(name.clone(), value);
                params.push(name.clone());
            }
        }
        // 3. rewrite the initializer list: parameters leave it (they become inputs); aliases and
        //    split statistics join it as constants
        let lifted: HashSet<&String> = params.iter().collect();
        let alias_names: HashSet<&String> = alias_root.keys().collect();
        g.initializers.retain(|t| !lifted.contains(&t.name) && !alias_names.contains(&t.name));
        for t in constants {
            if g.initializer(&t.name).is_none() {
                g.initializers.push(t);
            }
        }
        // drop initializers nothing reads any more (merged roots whose aliases all moved)
        let read: HashSet<String> = g.nodes.iter().flat_map(|n| n.input.iter().cloned()).collect();
        g.initializers.retain(|t| read.contains(&t.name) || graph_inputs.contains(&t.name));
        for p in &params {
            let t = &c.init[p];
            g.inputs.push(value_info(p, t.data_type, &t.dims));
        }
        if params.is_empty() {
            bail!("no trainable parameters found (every float initializer is frozen or constant)");
        }
        c.params = params;
        Ok(())
    }
}
