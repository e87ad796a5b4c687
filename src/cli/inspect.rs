use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use graph_passes::ir::{Model, NodeExt};
use graph_passes::onnx::{self, tensor, TESTED_OPSETS};
use graph_passes::passes::lift_params::LiftParams;
use graph_passes::passes::{Contract, Pass};
use graph_passes::shapes::{self, shape_string, value_type_of};
use graph_passes::support;
use serde::Serialize;

use crate::backend::discover;

#[derive(Args)]
pub struct InspectArgs {
    /// The ONNX model
    model: Option<PathBuf>,
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
    /// Say which engines are available: the ONNX Runtime library found, its version, CUDA
    #[arg(long)]
    backends: bool,
    /// Path to libonnxruntime.so for --backends
    #[arg(long, value_name = "PATH")]
    ort_lib: Option<PathBuf>,
}

#[derive(Serialize)]
struct Io {
    name: String,
    dtype: String,
    shape: String,
}

#[derive(Serialize)]
struct Report {
    file: String,
    ir_version: i64,
    opsets: BTreeMap<String, i64>,
    producer: String,
    graph_name: String,
    inputs: Vec<Io>,
    outputs: Vec<Io>,
    initializers: usize,
    initializer_bytes: usize,
    trainable_tensors: usize,
    trainable_parameters: usize,
    trainable_bytes: usize,
    running_statistics: Vec<String>,
    nodes: usize,
    ops: BTreeMap<String, usize>,
    modes: Vec<String>,
    /// One line per thing onnxsam or an engine cannot handle.
    limitations: Vec<String>,
    node_metadata: bool,
    /// A graph onnxsam compiled (step, m-SAM micro/apply, eval): its contract and optimizer.
    #[serde(skip_serializing_if = "Option::is_none")]
    onnxsam_graph: Option<CompiledGraph>,
}

#[derive(Serialize)]
struct CompiledGraph {
    contract: super::step::GraphJson,
    #[serde(skip_serializing_if = "Option::is_none")]
    spec: Option<serde_json::Value>,
}

fn compiled_graph(model: &Model) -> Option<CompiledGraph> {
    let get = |k: &str| model.meta.metadata_props.iter().find(|p| p.key == k).map(|p| p.value.clone());
    let contract: super::step::GraphJson = serde_json::from_str(&get(super::step::CONTRACT_KEY)?).ok()?;
    let spec = get(super::step::SPEC_KEY).and_then(|s| serde_json::from_str(&s).ok());
    Some(CompiledGraph { contract, spec })
}

fn io_list(vs: &[&onnx::ValueInfoProto]) -> Vec<Io> {
    vs.iter()
        .map(|v| {
            let t = value_type_of(&v.r#type);
            Io {
                name: v.name.clone(),
                dtype: t
                    .as_ref()
                    .map(|t| tensor::dtype_name(t.dtype).to_string())
                    .unwrap_or_else(|| "non-tensor".into()),
                shape: t.map(|t| shape_string(&t.shape)).unwrap_or_else(|| "?".into()),
            }
        })
        .collect()
}

fn report(path: &std::path::Path) -> Result<Report> {
    let model = Model::load(path)?;
    let g = &model.graph;
    let mut ops: BTreeMap<String, usize> = BTreeMap::new();
    for n in &g.nodes {
        let key = if n.domain.is_empty() || n.domain == "ai.onnx" {
            n.op_type.clone()
        } else {
            format!("{}::{}", n.domain, n.op_type)
        };
        *ops.entry(key).or_default() += 1;
    }
    // running statistics: BatchNormalization inputs 3 and 4
    let stats: HashSet<&str> = g
        .nodes
        .iter()
        .filter(|n| n.op_type == "BatchNormalization")
        .flat_map(|n| n.input.iter().skip(3).take(2).map(|s| s.as_str()))
        .collect();
    let mut running: Vec<String> = stats.iter().map(|s| s.to_string()).collect();
    running.sort();
    // what training would lift: the lift-params pass itself, on a copy
    let mut lifted = model.clone();
    let mut contract = Contract::default();
    let lift = LiftParams::default();
    let mut shared = Vec::new();
    if let Err(e) = lift.run(&mut lifted, &mut contract) {
        shared.push(format!("no parameters to train: {e}"));
    }
    let trainable: Vec<&onnx::TensorProto> = contract.params.iter().filter_map(|p| contract.init.get(p)).collect();
    for (root, aliases) in &contract.split {
        let mut aliases = aliases.clone();
        aliases.sort();
        shared.push(format!(
            "initializer '{root}' also stands for {} tensors the exporter merged into it ({}); training gives each its own (parameters and running statistics apart)",
            aliases.len(),
            aliases.join(", ")
        ));
    }
    for (tensor, users) in &contract.tied {
        shared.push(format!(
            "tied weights: '{tensor}' is read by {} nodes ({}); kept as one parameter (--untie-shared gives each its own)",
            users.len(),
            users.join(", ")
        ));
    }
    let mut modes = Vec::new();
    let mut limitations = shared;
    for n in &g.nodes {
        match n.op_type.as_str() {
            "BatchNormalization" => {
                let train = n.attr_i("training_mode", 0) != 0;
                modes.push(format!(
                    "{}: BatchNormalization {} mode, momentum {}, epsilon {}",
                    n.name,
                    if train { "training" } else { "inference" },
                    n.attr_f("momentum", 0.9),
                    n.attr_f("epsilon", 1e-5)
                ));
                if train {
                    limitations.push(format!("{}: training_mode=1 BatchNormalization runs wrongly on ONNX Runtime with shared initializers and not at all on tract; onnxsam's train-mode pass decomposes it", n.describe()));
                }
            }
            "Dropout" => {
                let ratio = n.attr_f("ratio", 0.5);
                let training = n.input.get(2).map(|s| !s.is_empty()).unwrap_or(false);
                modes.push(format!(
                    "{}: Dropout ratio {ratio}{}",
                    n.name,
                    if training { ", training_mode input" } else { " (inactive at inference)" }
                ));
            }
            _ => {}
        }
        if let Some(why) = support::tract_limitation(&n.op_type) {
            limitations.push(format!("{}: {why}; use --backend ort", n.describe()));
        }
    }
    let mut seen = HashSet::new();
    for n in &g.nodes {
        if !support::has_gradient_rule(&n.op_type) && seen.insert(n.op_type.clone()) {
            limitations
                .push(format!("{} has no gradient rule yet (training through it is not possible)", n.describe()));
        }
    }
    match shapes::infer(g) {
        Ok(s) => {
            for op in s.unknown_ops {
                limitations.push(format!("op {op}: no shape rule; shapes after it are unknown to onnxsam"));
            }
        }
        Err(e) => limitations.push(format!("shape inference failed: {e}")),
    }
    let opset = model.opset();
    if !TESTED_OPSETS.contains(&opset) {
        limitations.push(format!(
            "opset {opset} is outside the tested range {}–{}",
            TESTED_OPSETS.start(),
            TESTED_OPSETS.end()
        ));
    }
    let node_metadata = g.nodes.iter().any(|n| !n.metadata_props.is_empty());
    Ok(Report {
        file: path.display().to_string(),
        ir_version: model.meta.ir_version,
        opsets: model
            .meta
            .opset_import
            .iter()
            .map(|o| (if o.domain().is_empty() { "ai.onnx".into() } else { o.domain().to_string() }, o.version))
            .collect(),
        producer: format!("{} {}", model.meta.producer_name, model.meta.producer_version).trim().to_string(),
        graph_name: g.name().to_string(),
        inputs: io_list(&g.data_inputs()),
        outputs: io_list(&g.outputs.iter().collect::<Vec<_>>()),
        initializers: g.initializers.len(),
        initializer_bytes: g.initializers.iter().map(tensor::data_bytes).sum(),
        trainable_tensors: trainable.len(),
        trainable_parameters: trainable.iter().map(|t| tensor::numel(t)).sum(),
        trainable_bytes: trainable.iter().map(|t| tensor::data_bytes(t)).sum(),
        running_statistics: running,
        nodes: g.nodes.len(),
        ops,
        modes,
        limitations,
        node_metadata,
        onnxsam_graph: compiled_graph(&model),
    })
}

fn human_bytes(b: usize) -> String {
    if b >= 1 << 20 {
        format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
    } else if b >= 1 << 10 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        format!("{b} B")
    }
}

fn print_compiled(c: &CompiledGraph) {
    let kind = match c.contract.kind.as_str() {
        "step" => "training-step graph (one run per step)",
        "micro" => "m-SAM micro-batch graph (one run per micro-batch; then the apply graph)",
        "apply" => "m-SAM apply graph (the base optimizer step)",
        "eval" => "evaluation graph",
        other => other,
    };
    println!("onnxsam {kind}");
    if let Some(s) = &c.spec {
        let mut parts = vec![format!("optimizer {}", s["optimizer"].as_str().unwrap_or("?"))];
        if let Some(rw) = s.get("reweight").filter(|v| !v.is_null()) {
            let score = match rw["score"]["kind"].as_str() {
                Some("fd") => format!("fd, Q = {}, {}", rw["score"]["q"], rw["score"]["scheme"].as_str().unwrap_or("")),
                other => other.unwrap_or("?").to_string(),
            };
            parts.push(format!(
                "reweight λ = {} (scores {score}, norm {})",
                rw["lambda"],
                rw["score_norm"].as_str().unwrap_or("")
            ));
        }
        if let Some(m) = s.get("micro_batch").filter(|v| !v.is_null()) {
            parts.push(format!("micro-batch M = {m}"));
        }
        parts.push(format!("loss {}", s["loss"].as_str().unwrap_or("?")));
        println!("  {}", parts.join(" · "));
    }
    let group = |ios: &[graph_passes::step::Io]| {
        let mut by: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for io in ios {
            let label = match io.default {
                Some(d) => format!("{} = {d}", io.name),
                None => io.name.clone(),
            };
            by.entry(io.role.as_str()).or_default().push(label);
        }
        for (role, names) in by {
            let shown = if names.len() > 6 {
                format!("{} … ({} in all)", names[..4].join(", "), names.len())
            } else {
                names.join(", ")
            };
            println!("    {role:<17} {shown}");
        }
    };
    println!("  inputs by role:");
    group(&c.contract.inputs);
    println!("  outputs by role:");
    group(&c.contract.outputs);
}

fn print_text(r: &Report) {
    println!("{}", r.file);
    if let Some(c) = &r.onnxsam_graph {
        print_compiled(c);
    }
    let opsets: Vec<String> = r.opsets.iter().map(|(d, v)| format!("{d} {v}")).collect();
    println!(
        "  IR {} · opset {} · producer {} · graph '{}'",
        r.ir_version,
        opsets.join(", "),
        if r.producer.is_empty() { "?" } else { &r.producer },
        r.graph_name
    );
    println!("inputs:");
    for io in &r.inputs {
        println!("  {:<24} {:<8} {}", io.name, io.dtype, io.shape);
    }
    println!("outputs:");
    for io in &r.outputs {
        println!("  {:<24} {:<8} {}", io.name, io.dtype, io.shape);
    }
    println!(
        "initializers: {} ({}); trainable: {} tensors, {} parameters ({}); running statistics: {}",
        r.initializers,
        human_bytes(r.initializer_bytes),
        r.trainable_tensors,
        r.trainable_parameters,
        human_bytes(r.trainable_bytes),
        r.running_statistics.len()
    );
    let hist: Vec<String> = r.ops.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!("nodes: {} — {}", r.nodes, hist.join(", "));
    if r.node_metadata {
        println!("nodes carry metadata_props (new exporter)");
    }
    if !r.modes.is_empty() {
        println!("modes:");
        for m in &r.modes {
            println!("  {m}");
        }
    }
    if r.limitations.is_empty() {
        println!("limitations: none — every op runs on both engines and has a gradient rule");
    } else {
        println!("limitations:");
        for l in &r.limitations {
            println!("  {l}");
        }
    }
}

#[derive(Serialize)]
struct BackendsReport {
    tract: String,
    ort: Option<discover::OrtLibrary>,
    ort_loads: Option<bool>,
    ort_error: Option<String>,
    cuda_execution_provider: bool,
}

fn backends(a: &InspectArgs) -> Result<i32> {
    let lib = discover::find_ort(a.ort_lib.as_deref())?;
    let (loads, error, cuda) = match &lib {
        Some(l) => match crate::backend::ort::OrtBackend::new(l, crate::backend::Device::Cpu, 1) {
            Ok(_) => (Some(true), None, crate::backend::ort::OrtBackend::cuda_available() && l.cuda_provider.is_some()),
            Err(e) => (Some(false), Some(format!("{e:#}")), false),
        },
        None => (None, None, false),
    };
    let r = BackendsReport {
        tract: "tract-onnx 0.23.9 (embedded, cpu)".into(),
        ort: lib,
        ort_loads: loads,
        ort_error: error,
        cuda_execution_provider: cuda,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(0);
    }
    println!("tract: {} — always available", r.tract);
    match &r.ort {
        Some(l) => {
            println!(
                "ort:   ONNX Runtime {} at {} (found via {}){}",
                l.version.as_deref().unwrap_or("?"),
                l.path.display(),
                l.source,
                if r.ort_loads == Some(true) { ", loads" } else { "" }
            );
            if let Some(e) = &r.ort_error {
                println!("       cannot load: {e}");
            }
            println!(
                "       CUDA execution provider: {}",
                if r.cuda_execution_provider {
                    "available"
                } else {
                    "not available (pip install onnxruntime-gpu for CUDA)"
                }
            );
        }
        None => println!("ort:   not found — {}", discover::NOT_FOUND),
    }
    println!("--backend auto picks: {}", if r.ort_loads == Some(true) { "ort" } else { "tract" });
    Ok(0)
}

pub fn run(a: InspectArgs) -> Result<i32> {
    if a.backends {
        return backends(&a);
    }
    let Some(path) = &a.model else {
        bail!("inspect needs a MODEL (or --backends)");
    };
    let r = report(path)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_text(&r);
    }
    Ok(0)
}
