//! `grad`, `gradcheck` and `rewrite --grad-only`.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use graph_passes::ir::Model;
use graph_passes::onnx::SaveOptions;
use graph_passes::pass::Contract;
use graph_passes::step::{self, GradSpec};

use super::{check_failed, BackendArgs, GradGraphArgs};
use crate::backend::{self, Session};
use crate::grad::{self as g, Batch};
use crate::tensor::{read_npz, write_npz, HostTensor};

/// What `grad` and `gradcheck` share: a model, a batch, how to build and run the graph.
#[derive(Args)]
pub struct GradInput {
    /// The ONNX model
    model: PathBuf,
    /// .npz with the model's inputs by name (or `x`) and labels/targets `y`
    #[arg(long, value_name = "NPZ")]
    batch: PathBuf,
    #[command(flatten)]
    graph: GradGraphArgs,
    #[command(flatten)]
    backend: BackendArgs,
    /// Seed of the dropout masks
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl GradInput {
    /// The gradient graph's session and the checked batch.
    fn open(&self) -> Result<(GradRun, Batch)> {
        let mut spec = self.graph.spec()?;
        spec.labels_shape = g::labels_shape(&self.batch)?;
        // the batch is checked against the graph before an engine is chosen, so that bad data
        // gets its one error line and nothing else
        let (gm, contract, shown, note) = GradRun::build_at(&self.model, &spec, false, Some(&self.batch))?;
        let arrays = read_npz(&self.batch)?;
        let batch = g::batch_from_npz(&self.batch.display().to_string(), &gm, &contract, arrays)?;
        fixed_batch_fits(&Model::load(&self.model)?, &shown, &self.batch, batch.len())?;
        if let Some(note) = note {
            crate::error::say(format!("onnxsam: note: {shown}: {note}"));
        }
        Ok((GradRun::start(gm, contract, shown, &self.backend)?, batch))
    }
}

/// A batch the file fixes (train::fixed_batch) takes that many samples: said before an engine
/// stops on it in its own words.
fn fixed_batch_fits(model: &Model, shown: &str, batch: &Path, n: usize) -> Result<()> {
    match crate::train::fixed_batch(model) {
        Some(f) if f.batch != n as i64 => bail!(
            "{}: {n} samples, but {shown} fixes the batch at {} ({}): give a batch of {}, or {}",
            batch.display(),
            f.batch,
            f.what,
            f.batch,
            f.hint
        ),
        _ => Ok(()),
    }
}

#[derive(Args)]
pub struct GradArgs {
    #[command(flatten)]
    input: GradInput,
    /// Where to write loss, loss_per_sample, one gradient per parameter and bn_after/<stat>
    #[arg(long, value_name = "NPZ")]
    out: PathBuf,
}

/// A built gradient graph with a session, ready to run on batches.
pub struct GradRun {
    pub model: Model,
    pub contract: Contract,
    pub session: Box<dyn Session>,
    pub values: BTreeMap<String, HostTensor>,
    pub source: String,
}

impl GradRun {
    pub fn new(path: &Path, spec: &GradSpec, backend: &BackendArgs, loss_only: bool) -> Result<GradRun> {
        let (gm, contract, shown) = GradRun::build(path, spec, loss_only)?;
        GradRun::start(gm, contract, shown, backend)
    }

    /// The gradient (or loss) graph of the model at `path`, with its contract and how to name the file.
    pub fn build(path: &Path, spec: &GradSpec, loss_only: bool) -> Result<(Model, Contract, String)> {
        GradRun::build_at(path, spec, loss_only, None).map(|(m, c, s, _)| (m, c, s))
    }

    /// `build`, at the sizes of the arrays in `batch` where a rule needs sizes the file leaves
    /// to run time (grad::compile_at_sizes); with the note that says so.
    pub fn build_at(
        path: &Path,
        spec: &GradSpec,
        loss_only: bool,
        batch: Option<&Path>,
    ) -> Result<(Model, Contract, String, Option<String>)> {
        let model = Model::load(path)?;
        let shown = path.display().to_string();
        let sizes = || match batch {
            Some(b) => g::data_input_dims(b, &model, None),
            None => Ok(None),
        };
        let compile = |m: &Model| if loss_only { step::loss_graph(m, spec) } else { step::grad_graph(m, spec) };
        let ((gm, contract), fixed) = g::compile_at_sizes(&model, sizes, compile).map_err(|e| anyhow!("{shown}: {e}"))?;
        Ok((gm, contract, shown, fixed.map(|f| f.note())))
    }

    /// A session of a built graph on the chosen engine.
    pub fn start(gm: Model, contract: Contract, shown: String, backend: &BackendArgs) -> Result<GradRun> {
        g::warn_import(&contract);
        let be = backend::select(&backend.request(), true)?;
        let session = be.load(&gm.to_proto()).with_context(|| shown.clone())?;
        let values = g::initial_values(&contract)?;
        Ok(GradRun { model: gm, contract, session, values, source: shown })
    }

    pub fn batch(&self, path: &Path) -> Result<Batch> {
        let arrays = read_npz(path)?;
        g::batch_from_npz(&path.display().to_string(), &self.model, &self.contract, arrays)
    }

    pub fn run(&mut self, batch: &Batch, seed: u64) -> Result<BTreeMap<String, HostTensor>> {
        let feeds = g::feeds(&self.contract, batch, &self.values, seed)?;
        let out = self.session.run(&feeds).with_context(|| self.source.clone())?;
        Ok(out.into_iter().collect())
    }
}

pub fn grad(a: GradArgs) -> Result<i32> {
    let (mut r, batch) = a.input.open()?;
    let out = r.run(&batch, a.input.seed)?;
    let c = &r.contract;
    let get = |name: &str| out.get(name).cloned().ok_or_else(|| anyhow!("the graph produced no '{name}'"));
    let mut arrays = vec![
        ("loss".to_string(), get(c.loss.as_deref().unwrap_or("loss"))?),
        ("loss_per_sample".to_string(), get(c.loss_per_sample.as_deref().unwrap_or("loss_per_sample"))?),
    ];
    for (p, gname) in &c.grads {
        arrays.push((p.clone(), get(gname)?));
    }
    for (stat, next) in &c.state_next {
        arrays.push((format!("bn_after/{stat}"), get(next)?));
    }
    write_npz(&a.out, &arrays)?;
    let loss = arrays[0].1.to_f64()[0];
    eprintln!(
        "loss {loss:.6}; wrote {} gradients and {} running statistics to {}",
        c.grads.len(),
        c.state_next.len(),
        a.out.display()
    );
    Ok(0)
}

#[derive(Args)]
pub struct StepOnceArgs {
    #[command(flatten)]
    input: GradInput,
    #[command(flatten)]
    step: super::StepArgs,
    /// Where to write the next value of every parameter (by PyTorch name), its optimizer state
    /// (momentum_buffer/<p>, or exp_avg/<p>, exp_avg_sq/<p> and step for Adam),
    /// bn_after/<statistic> and the step's diagnostics (loss, grad_norm, …)
    #[arg(long, value_name = "NPZ")]
    out: PathBuf,
}

/// `onnxsam step`: one optimizer step on one batch, what a training step does, with everything
/// it changes written out (to compare with PyTorch, or to look at one step closely).
pub fn step_once(a: StepOnceArgs) -> Result<i32> {
    let i = &a.input;
    let mut spec = a.step.spec(&i.graph)?;
    spec.grad.labels_shape = g::labels_shape(&i.batch)?;
    let file_model = Model::load(&i.model)?;
    let shown = i.model.display().to_string();
    let sizes = || g::data_input_dims(&i.batch, &file_model, None);
    let (graphs, fixed) = g::compile_at_sizes(&file_model, sizes, |m| step::step_graphs(m, &spec))
        .map_err(|e| anyhow!("{shown}: {e}"))?;
    let mut note = None;
    let model = match fixed {
        Some(f) if spec.accumulate.unwrap_or(1) > 1 || spec.micro_batch.is_some() => bail!(
            "{shown}: {} needs a size the file computes from its inputs' shape: onnxsam compiles such a model for one batch size, and --accumulate and --micro-batch run several; step without them",
            f.node()
        ),
        Some(f) => {
            note = Some(f.note());
            f.model
        }
        None => file_model,
    };
    // the batch is checked before an engine is chosen: bad data gets one error line
    let source = i.batch.display().to_string();
    let batch = g::batch_from_npz(&source, &graphs.step.model, &graphs.step.contract, read_npz(&i.batch)?)?;
    fixed_batch_fits(&model, &shown, &i.batch, batch.len())?;
    if let Some(note) = note {
        crate::error::say(format!("onnxsam: note: {shown}: {note}"));
    }
    let be = backend::select(&i.backend.request(), true)?;
    let mut runner = crate::step::StepRunner::from_graphs(graphs, &model, &spec, be.as_ref(), i.seed)
        .with_context(|| shown.clone())?;
    let out = runner.step(&batch).with_context(|| shown.clone())?;
    runner.sync()?;
    let c = runner.contract().clone();
    let mut arrays: Vec<(String, HostTensor)> = Vec::new();
    for (name, o) in &c.diagnostics {
        if let Some(v) = out.get(o) {
            arrays.push((name.clone(), v.clone()));
        }
    }
    for p in &c.params {
        arrays.push((p.clone(), runner.values[p].clone()));
    }
    for (k, v) in &runner.values {
        if c.opt_state_next.contains_key(k) && !k.starts_with(graph_passes::passes::sam_update::GRAD_ACC) {
            arrays.push((k.clone(), v.clone()));
        }
    }
    for stat in c.state_next.keys() {
        arrays.push((format!("bn_after/{stat}"), runner.values[stat].clone()));
    }
    write_npz(&a.out, &arrays)?;
    let loss = out.get(c.diagnostics.get("loss").map(|s| s.as_str()).unwrap_or("loss")).map(|t| t.to_f64()[0]);
    eprintln!(
        "loss {}; wrote {} parameters after one step to {}",
        loss.map(|l| format!("{l:.6}")).unwrap_or_else(|| "?".into()),
        c.params.len(),
        a.out.display()
    );
    Ok(0)
}

#[derive(Args)]
pub struct GradcheckArgs {
    #[command(flatten)]
    input: GradInput,
    /// Random coordinates perturbed per parameter
    #[arg(long, default_value_t = 32)]
    samples: usize,
    /// Finite-difference step, relative to the parameter's RMS (at least this much absolute)
    #[arg(long, default_value_t = 1e-2)]
    step: f32,
    /// Largest relative error accepted
    #[arg(long, default_value_t = 2e-2)]
    tolerance: f64,
    #[arg(long)]
    json: bool,
}

/// Σ of per-sample losses in f64 (less rounding than the float32 mean).
fn loss_sum(out: &BTreeMap<String, HostTensor>, c: &Contract) -> Result<f64> {
    let lps =
        out.get(c.loss_per_sample.as_deref().unwrap_or("")).ok_or_else(|| anyhow!("no loss_per_sample output"))?;
    Ok(lps.to_f64().iter().sum::<f64>() / lps.len() as f64)
}

#[derive(serde::Serialize, Debug)]
pub struct Row {
    pub parameter: String,
    pub autodiff: f64,
    pub finite_difference: f64,
    pub relative_error: f64,
    pub ok: bool,
}

/// Finite-difference settings of a gradient check.
#[derive(Clone, Copy, Debug)]
pub struct CheckSettings {
    pub samples: usize,
    pub step: f32,
    pub tolerance: f64,
    pub seed: u64,
}

/// Compares `grads` (normally the graph's own) with central finite differences of the loss,
/// one directional derivative per parameter over random coordinates.
pub fn check_gradients(
    r: &mut GradRun,
    batch: &Batch,
    grads: &BTreeMap<String, HostTensor>,
    set: CheckSettings,
) -> Result<Vec<Row>> {
    let seed = set.seed;
    let base = r.run(batch, seed)?;
    let mut rows = Vec::new();
    let params = r.contract.params.clone();
    for p in params.iter() {
        let theta = r.values[p].clone();
        let v0 = theta.as_f32().ok_or_else(|| anyhow!("parameter '{p}' is not float32"))?.to_vec();
        let n = v0.len();
        let rms = (v0.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / n.max(1) as f64).sqrt() as f32;
        let h = set.step * rms.max(1e-1);
        // random coordinates, moved along the sign of their gradient: a directional derivative
        // large enough to stand above float32 rounding of the loss. Half of them among the entries
        // the batch touches (a nonzero gradient: the rows of an embedding table the batch's ids
        // pick, which uniform probes of a large table would almost never hit), half anywhere
        let gv = grads[p].as_f32().ok_or_else(|| anyhow!("gradient of '{p}' is not float32"))?;
        let mut coords: Vec<(usize, f32)> = Vec::new();
        let noise = g::uniform(seed, &format!("gradcheck/{p}"), set.samples);
        let touched: Vec<usize> = (0..n).filter(|&i| gv[i] != 0.0).collect();
        for s in 0..set.samples.min(n) {
            let c = if n <= set.samples {
                s
            } else if s % 2 == 0 && !touched.is_empty() {
                touched[((noise[s] as f64) * touched.len() as f64) as usize % touched.len()]
            } else {
                ((noise[s] as f64) * n as f64) as usize % n
            };
            if !coords.iter().any(|(i, _)| *i == c) {
                coords.push((c, if gv[c] < 0.0 { -1.0 } else { 1.0 }));
            }
        }
        let ad: f64 = coords.iter().map(|&(i, s)| gv[i] as f64 * s as f64).sum();
        let mut eval = |sign: f32| -> Result<f64> {
            let mut v = v0.clone();
            for &(i, s) in &coords {
                v[i] += sign * h * s;
            }
            r.values.insert(p.clone(), HostTensor::f32(&theta.shape, v));
            let out = r.run(batch, seed)?;
            loss_sum(&out, &r.contract)
        };
        // Two steps: a large one (kinks of ReLU/MaxPool blur it) and a small one (float32
        // rounding of the loss blurs it); a wrong gradient fails both.
        let (lp, lm) = (eval(1.0)?, eval(-1.0)?);
        let (sp, sm) = (eval(0.25)?, eval(-0.25)?);
        r.values.insert(p.clone(), theta.clone());
        let fd_big = (lp - lm) / (2.0 * h as f64);
        let fd_small = (sp - sm) / (0.5 * h as f64);
        // rounding noise of a float32 loss difference over the small step
        let loss_scale = loss_sum(&base, &r.contract)?.abs().max(1e-3);
        let noise = 8.0 * f32::EPSILON as f64 * loss_scale / (0.5 * h as f64);
        let rel = |fd: f64| ((fd - ad).abs() - noise).max(0.0) / fd.abs().max(ad.abs()).max(1e-12);
        let (fd, rel) = if rel(fd_big) <= rel(fd_small) { (fd_big, rel(fd_big)) } else { (fd_small, rel(fd_small)) };
        rows.push(Row {
            parameter: p.clone(),
            autodiff: ad,
            finite_difference: fd,
            relative_error: rel,
            ok: rel <= set.tolerance,
        });
    }
    Ok(rows)
}

pub fn gradcheck(a: GradcheckArgs) -> Result<i32> {
    let (mut r, batch) = a.input.open()?;
    let set = CheckSettings { samples: a.samples, step: a.step, tolerance: a.tolerance, seed: a.input.seed };
    let base = r.run(&batch, set.seed)?;
    let grads: BTreeMap<String, HostTensor> =
        r.contract.grads.iter().map(|(p, gname)| (p.clone(), base[gname].clone())).collect();
    let rows = check_gradients(&mut r, &batch, &grads, set)?;
    let failed = rows.iter().filter(|r| !r.ok).count();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!("{:<40} {:>14} {:>14} {:>10}", "parameter", "autodiff", "finite diff", "rel err");
        for row in &rows {
            println!(
                "{:<40} {:>14.6e} {:>14.6e} {:>10.2e}{}",
                row.parameter,
                row.autodiff,
                row.finite_difference,
                row.relative_error,
                if row.ok { "" } else { "  FAIL" }
            );
        }
        println!("{} parameters, {} failed (tolerance {})", rows.len(), failed, a.tolerance);
    }
    if failed > 0 {
        return Err(check_failed(format!(
            "{}: {failed} of {} parameters fail the gradient check",
            a.input.model.display(),
            rows.len()
        )));
    }
    Ok(0)
}

#[derive(Args)]
pub struct RewriteArgs {
    /// The ONNX model
    model: PathBuf,
    /// Write the forward + loss + gradient graph instead of a training step
    #[arg(long, conflicts_with = "eval")]
    grad_only: bool,
    /// Write the evaluation graph (eval-mode forward, per-sample loss, correct count)
    #[arg(long)]
    eval: bool,
    #[command(flatten)]
    graph: GradGraphArgs,
    #[command(flatten)]
    step: super::StepArgs,
    /// Output file (step.json is written beside it; m-SAM also writes OUTPUT.apply.onnx, LookSAM
    /// OUTPUT.between.onnx)
    #[arg(short = 'o', long = "output", value_name = "ONNX")]
    output: PathBuf,
    /// Write weights to OUTPUT.data beside the graph
    #[arg(long)]
    external_data: bool,
}

pub fn rewrite(a: RewriteArgs) -> Result<i32> {
    let model = Model::load(&a.model)?;
    let shown = a.model.display().to_string();
    if a.eval {
        let spec = a.graph.spec()?;
        let g = step::eval_graph(&model, &spec).map_err(|e| anyhow!("{shown}: {e}"))?;
        eprintln!("{}", crate::step_file::write_eval(&g, &a.output, a.external_data)?);
        return Ok(0);
    }
    if !a.grad_only {
        let spec = a.step.spec(&a.graph)?;
        let graphs = step::step_graphs(&model, &spec).map_err(|e| anyhow!("{shown}: {e}"))?;
        eprintln!("{}", crate::step_file::write_step(&graphs, &spec, &a.output, a.external_data)?);
        return Ok(0);
    }
    let spec = a.graph.spec()?;
    let (mut gm, c) = step::grad_graph(&model, &spec).map_err(|e| anyhow!("{shown}: {e}"))?;
    // parameter and state values travel as initializers: defaults any runtime may override
    for t in c.init.values() {
        gm.graph.initializers.push(t.clone());
    }
    let opts = SaveOptions { external_data: a.external_data.then_some(true), ..Default::default() };
    gm.save(&a.output, &opts)?;
    let json_path = a.output.with_extension("json");
    let json = serde_json::to_string_pretty(&c)?;
    graph_passes::onnx::write_atomic(&json_path, json.as_bytes())?;
    eprintln!(
        "wrote {} ({} nodes, {} parameters) and {}",
        a.output.display(),
        gm.graph.nodes.len(),
        c.params.len(),
        json_path.display()
    );
    Ok(0)
}
