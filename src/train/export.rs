//! The trained model: the original graph (after import, which splits tensors the exporter merged
//! and names parameters the way PyTorch does) with trained parameters and running statistics as initializers — loadable by any
//! ONNX runtime and by `onnxsam run`.
use std::collections::BTreeMap;

use anyhow::{anyhow, Result};
use graph_passes::ir::Model;
use graph_passes::pass::{run_all, Contract};
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

/// The trained tensors as PyTorch's `model.state_dict()` holds them, for
/// `model.load_state_dict(safetensors.torch.load_file(path), strict=True)`: every parameter and
/// buffer import names, under PyTorch's names and in PyTorch's layouts (untransposed, unmerged);
/// a parameter PyTorch ties under each of its names (GPT-2's `transformer.wte.weight` and
/// `lm_head.weight`); each BatchNorm's `num_batches_tracked` (int64: `batches`, the training
/// forwards that moved its running statistics, counted from 0). Sorted by name.
pub fn state_dict(
    original: &Model,
    spec: &GradSpec,
    values: &BTreeMap<String, HostTensor>,
    batches: i64,
) -> Result<Vec<(String, HostTensor)>> {
    let mut m = original.clone();
    let mut c = Contract::default();
    let (import, lift) = spec.front();
    run_all(&mut m, &mut c, &[&import, &lift]).map_err(|e| anyhow!("{e}"))?;
    let r = &c.import;
    let mut out: BTreeMap<String, HostTensor> = BTreeMap::new();
    for name in r.params.iter().chain(&r.buffers) {
        // trained (parameters, running statistics), else as the file holds it (frozen, constant)
        let v = match values.get(name) {
            Some(v) => v.clone(),
            None => {
                let t = c
                    .init
                    .get(name)
                    .or_else(|| m.graph.initializers.iter().find(|t| &t.name == name))
                    .ok_or_else(|| anyhow!("no value for '{name}'"))?;
                crate::grad::host_from_proto(t)?
            }
        };
        out.insert(name.clone(), v);
    }
    // a tied parameter's other names: the exporter's (dynamo), the other modules reading it
    // (legacy node names /lm_head/MatMul)
    let mut other_names: Vec<(String, String)> = r.aliases.iter().map(|(a, b)| (a.clone(), b.clone())).collect();
    for (p, nodes) in &r.tied {
        let attr = p.rsplit('.').next().unwrap_or(p);
        for n in nodes {
            if let Some(module) = graph_passes::onnx::metadata::legacy_module_path(n) {
                other_names.push((p.clone(), format!("{module}.{attr}")));
            }
        }
    }
    for (p, alias) in other_names {
        if let Some(v) = out.get(&p).cloned() {
            out.entry(alias).or_insert(v);
        }
    }
    let bns: Vec<String> =
        out.keys().filter_map(|k| k.strip_suffix(".running_mean").map(|b| format!("{b}.num_batches_tracked"))).collect();
    for k in bns {
        out.entry(k).or_insert(HostTensor::i64(&[], vec![batches]));
    }
    Ok(out.into_iter().collect())
}

/// `state_dict` as a .safetensors file (the `safetensors` crate's format, which
/// `safetensors.torch.load_file` reads), written atomically.
pub fn write_safetensors(path: &std::path::Path, tensors: &[(String, HostTensor)]) -> Result<()> {
    use crate::tensor::Data;
    use safetensors::{tensor::TensorView, Dtype};
    let bytes: Vec<(Dtype, Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| {
            Ok(match &t.data {
                Data::F32(v) => (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                Data::F64(v) => (Dtype::F64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                Data::I64(v) => (Dtype::I64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                Data::I32(v) => (Dtype::I32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                Data::U8(v) => (Dtype::U8, v.clone()),
                Data::Bool(v) => (Dtype::BOOL, v.iter().map(|&b| b as u8).collect()),
                #[allow(unreachable_patterns)]
                _ => anyhow::bail!("'{n}': a {} tensor has no safetensors dtype here", t.dtype_name()),
            })
        })
        .collect::<Result<_>>()?;
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, t), (dt, b))| {
            TensorView::new(*dt, t.shape.clone(), b).map(|v| (n.clone(), v)).map_err(|e| anyhow!("'{n}': {e}"))
        })
        .collect::<Result<_>>()?;
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let data = safetensors::serialize(views, Some(meta)).map_err(|e| anyhow!("{e}"))?;
    graph_passes::onnx::write_atomic(path, &data).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok(())
}
