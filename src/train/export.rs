//! The trained model: the original graph (after import, which splits tensors the exporter merged
//! and names parameters the way PyTorch does) with trained parameters and running statistics as initializers — loadable by any
//! ONNX runtime and by `onnxsam run`.
use std::collections::BTreeMap;

use anyhow::{anyhow, Result};
use graph_passes::ir::Model;
use graph_passes::passes::{run_all, Contract};
use graph_passes::step::GradSpec;

use crate::grad::proto_from_host;
use crate::tensor::HostTensor;

pub fn export(original: &Model, spec: &GradSpec, values: &BTreeMap<String, HostTensor>) -> Result<Model> {
    let mut m = original.clone();
    let mut c = Contract::default();
    let (import, lift) = spec.front();
    run_all(&mut m, &mut c, &[&import, &lift]).map_err(|e| anyhow!("{e}"))?;
    for p in &c.params {
        m.graph.inputs.retain(|v| &v.name != p);
        let v = values.get(p).ok_or_else(|| anyhow!("no trained value for parameter '{p}'"))?;
        m.graph.initializers.retain(|t| &t.name != p);
        m.graph.initializers.push(proto_from_host(p, v)?);
    }
    for t in m.graph.initializers.iter_mut() {
        if let Some(v) = values.get(&t.name) {
            *t = proto_from_host(&t.name, v)?;
        }
    }
    // parameters the file stores in another layout go back to its names and layouts
    graph_passes::import::fold_views(&mut m.graph).map_err(|e| anyhow!("{e}"))?;
    for n in m.graph.nodes.iter_mut() {
        n.metadata_props.retain(|p| p.key != graph_passes::ir::PASS_KEY);
    }
    Ok(m)
}
