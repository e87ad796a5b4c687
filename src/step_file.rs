//! Writing compiled graphs: step.onnx (+ OUTPUT.apply.onnx for m-SAM, OUTPUT.between.onnx for
//! LookSAM) with parameter, state and
//! hyperparameter defaults as initializers, and step.json describing every input and output.
use std::path::Path;

use anyhow::Result;
use graph_passes::ir::Model;
use graph_passes::onnx::SaveOptions;
use graph_passes::step::{self, StepGraph, StepSpec};

/// The metadata key of a compiled graph's contract (the same JSON as step.json's part for it).
pub const CONTRACT_KEY: &str = "onnxsam.contract";
/// The metadata key of the optimizer spec a step graph was compiled from.
pub const SPEC_KEY: &str = "onnxsam.spec";

/// step.json's description of one graph.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct GraphJson {
    pub kind: String,
    pub file: String,
    pub inputs: Vec<step::Io>,
    pub outputs: Vec<step::Io>,
}

fn graph_json(g: &StepGraph, kind: &str, file: &str) -> GraphJson {
    let (inputs, outputs) = step::io_roles(g);
    GraphJson { kind: kind.into(), file: file.into(), inputs, outputs }
}

/// Saves a compiled graph: parameter, state and hyperparameter defaults as initializers (any
/// runtime may override them as inputs), the contract in the model's metadata.
pub fn save_graph(
    g: &StepGraph,
    json: &GraphJson,
    spec: Option<&StepSpec>,
    path: &Path,
    external_data: bool,
) -> Result<()> {
    let mut m: Model = g.model.clone();
    for t in g.contract.init.values() {
        if m.graph.inputs.iter().any(|v| v.name == t.name) {
            m.graph.initializers.push(t.clone());
        }
    }
    // optimizer state (momentum buffers, Adam's moments and step count, m-SAM accumulators) starts at zero
    for k in g.contract.opt_state_next.keys().filter(|k| !g.contract.write_only.contains(k)) {
        if let Some(dims) = graph_passes::passes::sam_update::state_dims(&g.contract, k) {
            let n: i64 = dims.iter().product();
            m.graph.initializers.push(graph_passes::onnx::tensor::from_f32(k, &dims, &vec![0.0; n as usize]));
        }
    }
    for (k, v) in &g.contract.hyper {
        m.graph.initializers.push(graph_passes::onnx::tensor::from_f32(k, &[], &[*v]));
    }
    m.meta.metadata_props.retain(|p| p.key != CONTRACT_KEY && p.key != SPEC_KEY);
    m.meta.metadata_props.push(graph_passes::onnx::StringStringEntryProto {
        key: CONTRACT_KEY.into(),
        value: serde_json::to_string(json)?,
    });
    if let Some(spec) = spec {
        m.meta.metadata_props.push(graph_passes::onnx::StringStringEntryProto {
            key: SPEC_KEY.into(),
            value: serde_json::to_string(spec)?,
        });
    }
    m.graph.rest.doc_string = format!("onnxsam {} graph", json.kind);
    let opts = SaveOptions { external_data: external_data.then_some(true), ..Default::default() };
    m.save(path, &opts)?;
    Ok(())
}

/// step.json: the optimizer spec and every graph's inputs and outputs with their roles.
#[derive(serde::Serialize)]
pub struct StepJson<'a> {
    pub format: &'static str,
    pub spec: &'a StepSpec,
    pub graphs: Vec<GraphJson>,
}

/// Writes step.onnx (+ step.apply.onnx for m-SAM, step.between.onnx for LookSAM) and step.json
/// beside it; returns a summary line.
pub fn write_step(graphs: &step::StepGraphs, spec: &StepSpec, out: &Path, external_data: bool) -> Result<String> {
    let stem = out.file_stem().and_then(|s| s.to_str()).unwrap_or("step").to_string();
    let file = |suffix: &str| format!("{stem}{suffix}.onnx");
    let step_kind = if graphs.apply.is_some() { "micro" } else { "step" };
    let mut jsons = vec![graph_json(&graphs.step, step_kind, &file(""))];
    save_graph(&graphs.step, &jsons[0], Some(spec), out, external_data)?;
    let mut line = format!(
        "wrote {} ({} nodes, {} parameters)",
        out.display(),
        graphs.step.model.graph.nodes.len(),
        graphs.step.contract.params.len()
    );
    // m-SAM's apply graph; LookSAM's graph of the steps t with t mod k ≠ 0 (its g_v is the full
    // step's output)
    for (g, kind) in [(&graphs.apply, "apply"), (&graphs.between, "between")] {
        let Some(g) = g else { continue };
        let name = file(&format!(".{kind}"));
        let path = out.with_file_name(&name);
        let j = graph_json(g, kind, &name);
        save_graph(g, &j, Some(spec), &path, external_data)?;
        line += &format!(", {} ({} nodes)", path.display(), g.model.graph.nodes.len());
        jsons.push(j);
    }
    let json_path = out.with_extension("json");
    let j = StepJson { format: "onnxsam-step/1", spec, graphs: jsons };
    graph_passes::onnx::write_atomic(&json_path, serde_json::to_string_pretty(&j)?.as_bytes())?;
    Ok(format!("{line} and {}", json_path.display()))
}

/// Writes the evaluation graph and its JSON.
pub fn write_eval(g: &StepGraph, out: &Path, external_data: bool) -> Result<String> {
    let name = out.file_name().and_then(|s| s.to_str()).unwrap_or("eval.onnx").to_string();
    let j = graph_json(g, "eval", &name);
    save_graph(g, &j, None, out, external_data)?;
    let json_path = out.with_extension("json");
    graph_passes::onnx::write_atomic(&json_path, serde_json::to_string_pretty(&j)?.as_bytes())?;
    Ok(format!("wrote {} ({} nodes) and {}", out.display(), g.model.graph.nodes.len(), json_path.display()))
}
