use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use graph_passes::import::ImportReport;
use graph_passes::ir::{Model, NodeExt};
use graph_passes::onnx::{self, tensor, TESTED_OPSETS};
use graph_passes::shapes::{self, shape_string, value_type_of};
use graph_passes::step::{self, GradSpec};
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
    /// Path to libonnxruntime.so (--backends, and the engine check of the verdict)
    #[arg(long, value_name = "PATH")]
    ort_lib: Option<PathBuf>,
    /// Build the verdict without running the gradient graph on the engines (faster on large
    /// models; then "trains as PyTorch" does not say that an engine runs it)
    #[arg(long)]
    no_engine_check: bool,
    #[command(flatten)]
    import: super::args::ImportArgs,
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
    /// "trains as PyTorch", "trains, but perhaps not as PyTorch: …", "trains as PyTorch on
    /// <engine> only: …" or "cannot: … (what to do)".
    verdict: String,
    /// Engine → "runs the gradient graph", "cannot run it: …" or "not checked: …".
    engines: BTreeMap<String, String>,
    /// What is worth knowing before training (dropout an eval-mode export removed, …).
    notes: Vec<String>,
    /// What the import pass found and did: merges undone, renamed or transposed tensors.
    import: Vec<String>,
    /// The exporter that wrote the file (dynamo, legacy, other), as import saw it.
    exporter: String,
    /// One line per thing onnxsam or an engine cannot handle.
    limitations: Vec<String>,
    node_metadata: bool,
    /// A graph onnxsam compiled (step, m-SAM micro/apply, eval): its contract and optimizer.
    #[serde(skip_serializing_if = "Option::is_none")]
    onnxsam_graph: Option<CompiledGraph>,
}

#[derive(Serialize)]
struct CompiledGraph {
    contract: crate::step_file::GraphJson,
    #[serde(skip_serializing_if = "Option::is_none")]
    spec: Option<serde_json::Value>,
}

fn compiled_graph(model: &Model) -> Option<CompiledGraph> {
    let get = |k: &str| model.meta.metadata_props.iter().find(|p| p.key == k).map(|p| p.value.clone());
    let contract: crate::step_file::GraphJson = serde_json::from_str(&get(crate::step_file::CONTRACT_KEY)?).ok()?;
    let spec = get(crate::step_file::SPEC_KEY).and_then(|s| serde_json::from_str(&s).ok());
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

/// The verdict and what each engine did with the gradient graph.
fn verdict(a: &InspectArgs, model: &Model, spec: &GradSpec, imported: &ImportReport) -> (String, BTreeMap<String, String>) {
    use crate::backend::{select, BackendKind, BackendRequest, Device};
    let mut engines = BTreeMap::new();
    let fixed = crate::train::fixed_batch(model);
    let (m, c) = match step::grad_graph(model, spec) {
        Ok(g) => g,
        Err(e) => {
            // an export that fixed the batch may have folded what a dynamic one keeps
            let also = fixed
                .as_ref()
                .map(|f| format!("; the file also fixes the batch at {} ({}): {}", f.batch, f.what, f.hint))
                .unwrap_or_default();
            // a size the file computes from its inputs' shape: train, grad and step compile
            // at the data's sizes (grad::compile_at_sizes)
            let compiles = |size| {
                let probe = graph_passes::sizes::probe_dims(model, size);
                step::grad_graph(&graph_passes::sizes::specialize(model, &probe), spec).is_ok().then_some(probe)
            };
            if let Some(probe) = fixed.is_none().then(|| [8, 32, 128].into_iter().find_map(compiles)).flatten() {
                let node = crate::grad::rule_node(&e.0);
                return (
                    format!(
                        "trains at the data's sizes only: {node} needs a size the file computes from its inputs' shape; train, grad and step compile the graph for the data's shape and --batch-size (tried here at {}; train then drops a smaller last batch, and runs without --accumulate, --micro-batch or --distributed)",
                        graph_passes::sizes::describe(&probe)
                    ),
                    engines,
                );
            }
            return (format!("cannot: {e}{also}"), engines);
        }
    };
    if let Some(why) =
        fixed.as_ref().filter(|f| f.batch == 1).and_then(|f| crate::train::fixed_batch_refusal(f, Some(1), c.batch_norm_over_batch_only.as_deref()))
    {
        // a batch of one is all the file allows, and BatchNorm cannot train on it
        return (format!("cannot: {why}"), engines);
    }
    let mut ok: Vec<&str> = Vec::new();
    let mut failed: Vec<(&str, String)> = Vec::new();
    if !a.no_engine_check {
        for (kind, name) in [(BackendKind::Tract, "tract"), (BackendKind::Ort, "ort")] {
            let req = BackendRequest { kind, ort_lib: a.ort_lib.clone(), device: Device::Cpu, threads: Some(1) };
            let result = match select(&req, false) {
                Ok(be) => crate::probe::runs(&m, &c, be.as_ref()).map_err(|e| format!("{e:#}")),
                Err(e) => {
                    engines.insert(name.into(), format!("not checked: {e:#}"));
                    continue;
                }
            };
            match result {
                Ok(()) => {
                    engines.insert(name.into(), "runs the gradient graph".into());
                    ok.push(name);
                }
                Err(e) => {
                    engines.insert(name.into(), format!("cannot run it: {e}"));
                    failed.push((name, e));
                }
            }
        }
    }
    let engine_name = |e: &str| if e == "ort" { "ONNX Runtime" } else { "tract" };
    if !failed.is_empty() && ok.is_empty() {
        let (e, why) = &failed[0];
        return (format!("cannot: {} cannot run the gradient graph: {why}", engine_name(e)), engines);
    }
    // what the file leaves open that changes the gradient and that a flag can say: a padding row it
    // does not record (other warnings, such as names the legacy exporter cannot tell buffers by,
    // are listed under import: there the default is what PyTorch usually does)
    let base = if let Some(d) = imported.differences.first() {
        format!("trains, but not as PyTorch: {}", d.split(": ").next().unwrap_or(d))
    } else if !imported.momentum_unknown.is_empty() && imported.padding_unknown.is_empty() {
        format!(
            "trains, but perhaps not as PyTorch: BatchNorm {} {} momentum 1 in the file, PyTorch's momentum=0 or momentum=None (a cumulative average the file does not carry; see the warning under import)",
            graph_passes::import::summary(&imported.momentum_unknown, 3),
            if imported.momentum_unknown.len() == 1 { "has" } else { "have" }
        )
    } else if imported.padding_unknown.is_empty() {
        "trains as PyTorch".to_string()
    } else {
        format!(
            "trains, but perhaps not as PyTorch: the file does not say whether {} {} a padding row (--padding-idx TABLE=ROW|none; see the warning under import)",
            graph_passes::import::summary(&imported.padding_unknown, 3),
            if imported.padding_unknown.len() == 1 { "has" } else { "have" }
        )
    };
    // a batch the file fixes: the engines ran the probe at that batch, training at another stops
    let base = match fixed {
        Some(f) if f.batch == 1 => {
            format!("{base}; only at --batch-size 1: the file fixes the batch ({}); {}", f.what, f.hint)
        }
        Some(f) => format!(
            "{base} on batches of {b} only (grad, step, eval --batch-size {b}); train needs a dynamic batch: the file fixes it at {b} ({}); {}",
            f.what,
            f.hint,
            b = f.batch
        ),
        None => base,
    };
    let verdict = match failed.first() {
        Some((e, why)) => format!(
            "{base} on {} only; {} cannot run it: {why}",
            engine_name(ok[0]),
            engine_name(e)
        ),
        None => base,
    };
    (verdict, engines)
}

fn report(a: &InspectArgs, path: &std::path::Path) -> Result<Report> {
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
    // what training would see: the import pass and the gradient graph itself, on a copy
    let mut spec = GradSpec::default();
    a.import.apply(&mut spec)?;
    // the import report also where the verdict is a refusal (folded BatchNorm)
    let lenient = GradSpec { allow_folded_bn: true, ..spec.clone() };
    let (report, trainable, untrainable, imported) = match step::imported(&model, &lenient, false) {
        Ok((m, c)) => {
            let ops = step::untrainable_ops(&m.graph, &c.params).unwrap_or_default();
            let trainable = c.params.iter().filter_map(|p| c.init.get(p).cloned()).collect::<Vec<_>>();
            (c.import.clone(), trainable, ops, Some(m))
        }
        // a flag the file contradicts (--padding-idx) is the command line's error
        Err(e) if e.0.starts_with("--") => bail!("{}: {e}", path.display()),
        Err(_) => (ImportReport::default(), vec![], vec![], None),
    };
    let (verdict, engines) = verdict(a, &model, &spec, &report);
    let mut import = Vec::new();
    for (table, row) in &report.padding_rows {
        import.push(format!(
            "embedding table '{table}' has padding row {row} (nn.Embedding's padding_idx): that row gets no gradient in any pass, as PyTorch's"
        ));
    }
    for table in &report.scale_grad_by_freq {
        import.push(format!(
            "embedding table '{table}': scale_grad_by_freq, each row's gradient divided by its count in the batch"
        ));
    }
    if let Some(clip) = &report.clip {
        import.push(clip.clone());
    }
    for (root, names) in &report.untied {
        import.push(format!(
            "initializer '{root}' stood for {} distinct PyTorch tensors the exporter merged ({}); untied: each is trained (or kept as a running statistic) on its own (--keep-tied keeps the merge)",
            names.len(),
            names.join(", ")
        ));
    }
    for (p, users) in &report.tied {
        import.push(format!(
            "tied weights: '{p}' is read by {} nodes ({}) as one tensor; one parameter, the gradients of all uses summed (--untie-shared gives each use its own)",
            users.len(),
            users.join(", ")
        ));
    }
    for (p, stored) in &report.stored_as {
        for s in stored {
            import.push(if s.perm.is_empty() {
                format!("'{p}' is stored as '{}'; trained, checkpointed and reported as '{p}'", s.name)
            } else {
                format!(
                    "'{p}' is stored transposed (perm {:?}) as '{}'; trained in PyTorch's layout as '{p}', written back as '{}'",
                    s.perm, s.name, s.name
                )
            });
        }
    }
    if !report.restored.is_empty() {
        import.push(format!(
            "zero biases the exporter's optimizer removed are given back to their layers (PyTorch trains them): {}",
            graph_passes::import::summary(&report.restored, 6)
        ));
    }
    for u in &report.unnamed {
        import.push(format!("'{u}' was computed at export and names no PyTorch tensor; kept constant"));
    }
    for note in &report.notes {
        import.push(note.clone());
    }
    // (the folded-network warning is what --allow-folded-bn would print; the verdict says it)
    for w in report.warnings.iter().filter(|w| !w.starts_with("training the folded network")) {
        import.push(format!("warning: {w}"));
    }
    let mut modes = Vec::new();
    let mut limitations = Vec::new();
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
            }
            "Dropout" => {
                // opset ≥ 12: the ratio is input 1 (default 0.5); before, an attribute
                let ratio = match n.input.get(1).filter(|s| !s.is_empty()) {
                    Some(r) => graph_passes::ir::constant_value(g, r)
                        .and_then(|t| tensor::to_f64(t).ok())
                        .and_then(|v| v.first().copied())
                        .map(|v| format!("{}", v as f32))
                        .unwrap_or_else(|| format!("from '{r}' (not a constant)")),
                    None => format!("{}", n.attr_f("ratio", 0.5)),
                };
                let training = n.input.get(2).map(|s| !s.is_empty()).unwrap_or(false);
                modes.push(format!(
                    "{}: Dropout ratio {ratio}{}",
                    n.name,
                    if training { ", training_mode input" } else { " (inactive at inference)" }
                ));
            }
            _ => {}
        }
        if let Some(why) = graph_passes::ops::tract_limitation(&n.op_type) {
            limitations.push(format!("{}: {why}; use --backend ort", n.describe()));
        }
    }
    for u in untrainable {
        limitations.push(format!("{u} (training through it is not possible)"));
    }
    // shapes as training sees them: after the import pass (which turns the exporters' sequence
    // plumbing into tensors), else the file's
    match shapes::infer(imported.as_ref().map(|m| &m.graph).unwrap_or(g)) {
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
    let mut notes = Vec::new();
    if let Some(n) = crate::grad::dropout_note(&model) {
        notes.push(n);
    }
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
        running_statistics: {
            let mut b = report.buffers.clone();
            b.sort();
            b
        },
        nodes: g.nodes.len(),
        ops,
        modes,
        limitations,
        verdict,
        engines,
        notes,
        import,
        exporter: report.exporter.clone(),
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
        "between" => "LookSAM graph of the steps between full ones (steps t with t mod k ≠ 0; one forward-backward)",
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
            let lambda = match rw.get("target_ess").and_then(|f| f.as_f64()) {
                Some(f) => format!("λ auto, ESS {f} of the batch"),
                None => format!("λ = {}", rw["lambda"]),
            };
            parts.push(format!("reweight {lambda} (scores {score}, norm {})", rw["score_norm"].as_str().unwrap_or("")));
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
    println!("exporter: {}", r.exporter);
    if !r.import.is_empty() {
        println!("import:");
        for l in &r.import {
            println!("  {l}");
        }
    }
    if r.limitations.is_empty() {
        println!("limitations: none — every op on the way to the loss has a gradient rule, and every op runs on both engines");
    } else {
        println!("limitations:");
        for l in &r.limitations {
            println!("  {l}");
        }
    }
    for n in &r.notes {
        println!("note: {n}");
    }
    for (e, what) in &r.engines {
        println!("engine {e}: {what}");
    }
    println!("verdict: {}", r.verdict);
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
    let r = report(&a, path)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_text(&r);
    }
    Ok(0)
}
