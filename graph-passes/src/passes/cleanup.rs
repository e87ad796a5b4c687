//! cleanup: Identity folding, Transpose∘Transpose and Reshape∘Reshape folding, shared constants and common subexpressions, dead nodes and
//! initializers, inputs nothing reads, topological order. Names are the builder's (derived from
//! pass, op and a counter), so the same spec always gives the same graph.
use std::collections::HashSet;

use crate::pass::{Contract, Pass};
use crate::ir::Model;
use crate::Result;

pub struct Cleanup;

impl Pass for Cleanup {
    fn name(&self) -> &'static str {
        "cleanup"
    }

    fn run(&self, m: &mut Model, c: &mut Contract) -> Result<()> {
        let g = &mut m.graph;
        g.value_info.clear();
        g.remove_identities();
        g.fold_transposes_and_reshapes();
        g.eliminate_common_subexpressions();
        g.remove_dead();
        let read: HashSet<String> = g
            .nodes
            .iter()
            .flat_map(|n| n.input.iter().cloned())
            .chain(g.outputs.iter().map(|o| o.name.clone()))
            .collect();
        let unread: Vec<String> = g.inputs.iter().map(|v| v.name.clone()).filter(|v| !read.contains(v)).collect();
        g.inputs.retain(|v| read.contains(&v.name));
        for v in &unread {
            c.data.retain(|d| d != v);
            if c.labels.as_deref() == Some(v) {
                c.labels = None;
            }
            c.state_next.remove(v);
            if c.opt_state_next.contains_key(v) && !c.write_only.contains(v) {
                c.write_only.push(v.clone());
            }
            c.state.retain(|s| s != v);
            c.random_uniform.remove(v);
            c.hyper.remove(v);
            c.directions.retain(|d| &d.input != v);
        }
        // the running-statistic outputs of a graph without the clean forward (m-SAM apply)
        let outputs: HashSet<String> = g.outputs.iter().map(|o| o.name.clone()).collect();
        c.state_next.retain(|_, o| outputs.contains(o));
        g.topo_sort()
    }
}
