//! Options that compile an optimizer into step graphs (`rewrite`, `bench`, later `train`), and
//! writing step.onnx + step.json.
use std::path::Path;

use anyhow::{anyhow, bail, Result};
use clap::{Args, ValueEnum};
use graph_passes::ir::Model;
use graph_passes::onnx::SaveOptions;
use graph_passes::passes::fd_branch::FdScheme;
use graph_passes::passes::reweight::ScoreNorm;
use graph_passes::passes::sam_update::{Optimizer, WeightDecayMode};
use graph_passes::step::{self, GradSpec, ReweightSpec, Score, StepGraph, StepSpec};

use super::grad::GradGraphArgs;

#[derive(Clone, Copy, ValueEnum, Debug, PartialEq)]
pub enum OptimizerArg {
    Sgd,
    Sam,
    Usam,
    Asam,
}

#[derive(Clone, Copy, ValueEnum, Debug, PartialEq)]
pub enum ScoreArg {
    /// Finite differences along random directions (one extra forward per direction)
    Fd,
    /// Exact per-sample gradient norms (one backward per sample; for measuring the estimator)
    Exact,
}

#[derive(Clone, Copy, ValueEnum, Debug, PartialEq)]
pub enum ScoreNormArg {
    Mean,
    None,
}

#[derive(Clone, Copy, ValueEnum, Debug, PartialEq)]
pub enum FdSchemeArg {
    Forward,
    Central,
}

#[derive(Clone, Copy, ValueEnum, Debug, PartialEq)]
pub enum WdModeArg {
    /// PyTorch SGD: g ← g + wd·θ on the descent gradient
    Coupled,
    /// wd/2·‖θ‖² is part of the loss (also in the ascent gradient), as google-research/sam
    Loss,
    /// θ ← θ − lr·wd·θ separately
    Decoupled,
}

/// The optimizer and its hyperparameters (defaults of the step graph's scalar inputs).
#[derive(Args, Clone, Debug)]
pub struct StepArgs {
    /// sgd (default), sam, usam or asam
    #[arg(long, value_enum)]
    pub optimizer: Option<OptimizerArg>,
    /// RW-SAM: reweight samples by pᵢ ∝ exp(λ·sᵢ/c) in the ascent step (λ = LAMBDA)
    #[arg(long, value_name = "LAMBDA", allow_hyphen_values = true)]
    pub reweight: Option<f32>,
    /// m-SAM: perturb per micro-batch of M samples (M must divide the batch size)
    #[arg(long, value_name = "M")]
    pub micro_batch: Option<usize>,
    /// Perturbation radius ρ (ASAM: typically 0.5–1.0)
    #[arg(long, default_value_t = 0.05, allow_hyphen_values = true)]
    pub rho: f32,
    /// ASAM's η
    #[arg(long, default_value_t = 0.01)]
    pub eta: f32,
    #[arg(long, default_value_t = 0.1, allow_hyphen_values = true)]
    pub lr: f32,
    #[arg(long, default_value_t = 0.9, allow_hyphen_values = true)]
    pub momentum: f32,
    #[arg(long)]
    pub nesterov: bool,
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    pub weight_decay: f32,
    #[arg(long, value_enum, default_value = "coupled")]
    pub weight_decay_mode: WdModeArg,
    /// No weight decay on biases and normalization parameters (tensors of rank ≤ 1)
    #[arg(long)]
    pub no_decay_bias_norm: bool,
    /// Where RW-SAM's per-sample scores come from
    #[arg(long, value_enum, default_value = "fd")]
    pub score: ScoreArg,
    /// c in λ·sᵢ/c: mean score (scale-free λ) or 1 (the paper's formula)
    #[arg(long, value_enum, default_value = "mean")]
    pub score_norm: ScoreNormArg,
    /// Finite-difference step δ (good window 1e-3 … 1e-2 for the models here)
    #[arg(long, default_value_t = 3e-3)]
    pub fd_delta: f32,
    /// Number of random directions Q
    #[arg(long, default_value_t = 1)]
    pub fd_q: usize,
    #[arg(long, value_enum, default_value = "forward")]
    pub fd_scheme: FdSchemeArg,
}

impl StepArgs {
    pub fn spec(&self, graph: &GradGraphArgs) -> Result<StepSpec> {
        let grad: GradSpec = graph.spec()?;
        if !grad.train_mode {
            bail!(
                "--eval-mode: step graphs train with batch statistics; use `rewrite --eval` for the evaluation graph"
            );
        }
        let optimizer = match self.optimizer.unwrap_or(OptimizerArg::Sgd) {
            OptimizerArg::Sgd => Optimizer::Sgd,
            OptimizerArg::Sam => Optimizer::Sam,
            OptimizerArg::Usam => Optimizer::Usam,
            OptimizerArg::Asam => Optimizer::Asam,
        };
        let reweight = self.reweight.map(|lambda| ReweightSpec {
            lambda,
            score: match self.score {
                ScoreArg::Fd => Score::Fd {
                    q: self.fd_q,
                    scheme: match self.fd_scheme {
                        FdSchemeArg::Forward => FdScheme::Forward,
                        FdSchemeArg::Central => FdScheme::Central,
                    },
                },
                ScoreArg::Exact => Score::Exact,
            },
            score_norm: match self.score_norm {
                ScoreNormArg::Mean => ScoreNorm::Mean,
                ScoreNormArg::None => ScoreNorm::None,
            },
        });
        let spec = StepSpec {
            loss: match grad.loss {
                graph_passes::passes::per_sample_loss::Loss::CrossEntropy { label_smoothing }
                    if label_smoothing > 0.0 =>
                {
                    format!("cross-entropy (label smoothing {label_smoothing})")
                }
                graph_passes::passes::per_sample_loss::Loss::CrossEntropy { .. } => "cross-entropy".into(),
                graph_passes::passes::per_sample_loss::Loss::Mse => "mse".into(),
            },
            grad,
            optimizer,
            reweight,
            micro_batch: self.micro_batch,
            lr: self.lr,
            momentum: self.momentum,
            nesterov: self.nesterov,
            weight_decay: self.weight_decay,
            weight_decay_mode: match self.weight_decay_mode {
                WdModeArg::Coupled => WeightDecayMode::Coupled,
                WdModeArg::Loss => WeightDecayMode::Loss,
                WdModeArg::Decoupled => WeightDecayMode::Decoupled,
            },
            no_decay_bias_norm: self.no_decay_bias_norm,
            rho: self.rho,
            eta: self.eta,
            fd_delta: self.fd_delta,
        };
        spec.check().map_err(|e| anyhow!("{e}"))?;
        Ok(spec)
    }
}

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
    // optimizer state (momentum buffers, m-SAM accumulators) starts at zero
    for k in g.contract.opt_state_next.keys() {
        if let Some(t) = g.contract.init.get(graph_passes::passes::sam_update::state_param(k)) {
            let n: i64 = t.dims.iter().product();
            m.graph.initializers.push(graph_passes::onnx::tensor::from_f32(k, &t.dims, &vec![0.0; n as usize]));
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

/// Writes step.onnx (+ step.apply.onnx for m-SAM) and step.json beside it; returns a summary line.
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
    if let Some(a) = &graphs.apply {
        let path = out.with_file_name(file(".apply"));
        let j = graph_json(a, "apply", &file(".apply"));
        save_graph(a, &j, Some(spec), &path, external_data)?;
        line += &format!(", {} ({} nodes)", path.display(), a.model.graph.nodes.len());
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
