//! `onnxsam bench`: synthetic batches, warm-up, median step time; graphs side by side.
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use clap::Args;
use graph_passes::ir::Model;
use graph_passes::onnx::data_type as dt;
use graph_passes::shapes::{self, Dim};
use graph_passes::step;

use super::grad::GradGraphArgs;
use super::BackendArgs;
use crate::backend;
use crate::grad::{self as g, Batch};
use crate::tensor::HostTensor;

#[derive(Args)]
pub struct BenchArgs {
    /// The ONNX model
    model: PathBuf,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Timed runs (the median is reported)
    #[arg(long, default_value_t = 20)]
    steps: usize,
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    #[command(flatten)]
    graph: GradGraphArgs,
    #[command(flatten)]
    backend: BackendArgs,
    #[arg(long)]
    json: bool,
}

/// Random data for the model's inputs at `batch` and labels in range.
fn synthetic_batch(model: &Model, batch: usize, classes: usize) -> Result<(Vec<(String, HostTensor)>, HostTensor)> {
    let mut data = Vec::new();
    for v in model.graph.data_inputs() {
        let t = shapes::value_type_of(&v.r#type).ok_or_else(|| anyhow!("input '{}' has no tensor type", v.name))?;
        let shape: Vec<usize> = t
            .shape
            .ok_or_else(|| anyhow!("input '{}' has no shape", v.name))?
            .iter()
            .enumerate()
            .map(|(i, d)| match d {
                Dim::Known(k) => Ok(*k as usize),
                Dim::Sym(_) if i == 0 => Ok(batch),
                Dim::Sym(s) => Err(anyhow!(
                    "input '{}' has a symbolic dimension '{s}' besides the batch; bench needs it known",
                    v.name
                )),
            })
            .collect::<Result<_>>()?;
        let n = shape.iter().product();
        let u = g::uniform(1, &v.name, n);
        data.push((
            v.name.clone(),
            match t.dtype {
                dt::INT64 => HostTensor::i64(&shape, u.iter().map(|x| (x * 16.0) as i64).collect()),
                _ => HostTensor::f32(&shape, u.iter().map(|x| x * 2.0 - 1.0).collect()),
            },
        ));
    }
    let labels = HostTensor::i64(
        &[batch],
        g::uniform(2, "labels", batch).iter().map(|x| ((x * classes as f32) as i64).min(classes as i64 - 1)).collect(),
    );
    Ok((data, labels))
}

fn time_runs(
    session: &mut dyn backend::Session,
    feeds: &[(String, HostTensor)],
    warmup: usize,
    steps: usize,
) -> Result<f64> {
    let mut times = Vec::new();
    for i in 0..warmup + steps {
        let t0 = Instant::now();
        session.run(feeds)?;
        if i >= warmup {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Ok(times[times.len() / 2])
}

#[derive(serde::Serialize)]
struct Report {
    model: String,
    backend: String,
    batch_size: usize,
    forward_ms: f64,
    train_forward_ms: f64,
    forward_backward_ms: f64,
    ratio: f64,
    ratio_to_train_forward: f64,
    forward_nodes: usize,
    grad_nodes: usize,
    node_ratio: f64,
    grad_load_s: f64,
}

pub fn bench(a: BenchArgs) -> Result<i32> {
    let model = Model::load(&a.model)?;
    let spec = a.graph.spec()?;
    let (gm, c) = step::grad_graph(&model, &spec).map_err(|e| anyhow!("{}: {e}", a.model.display()))?;
    let s = shapes::infer(&gm.graph).map_err(|e| anyhow!("{e}"))?;
    let classes =
        c.logits.as_deref().and_then(|l| s.shape(l)).and_then(|sh| sh.get(1).and_then(|d| d.known())).unwrap_or(10)
            as usize;
    let (data, labels) = synthetic_batch(&model, a.batch_size, classes)?;
    let labels: HostTensor = labels;
    let be = backend::select(&a.backend.request(), true)?;
    let mut fwd = be.load(&model.to_proto()).with_context(|| a.model.display().to_string())?;
    let forward_ms = time_runs(fwd.as_mut(), &data, a.warmup, a.steps)?;
    // the same forward in training form: parameters as inputs, batch statistics, the loss
    let (lm, lc) = step::loss_graph(&model, &spec).map_err(|e| anyhow!("{}: {e}", a.model.display()))?;
    let mut lsess = be.load(&lm.to_proto())?;
    let lvalues = g::initial_values(&lc)?;
    let lbatch = Batch { data: data.clone(), labels: labels.clone() };
    let lfeeds = g::feeds(&lc, &lbatch, &lvalues, 0)?;
    let train_forward_ms = time_runs(lsess.as_mut(), &lfeeds, a.warmup, a.steps)?;
    let t0 = Instant::now();
    let mut grad = be.load(&gm.to_proto())?;
    let values = g::initial_values(&c)?;
    let batch = Batch { data: data.clone(), labels };
    let feeds = g::feeds(&c, &batch, &values, 0)?;
    grad.run(&feeds)?;
    let grad_load_s = t0.elapsed().as_secs_f64();
    let fb = time_runs(grad.as_mut(), &feeds, a.warmup, a.steps)?;
    let r = Report {
        model: a.model.display().to_string(),
        backend: be.describe(),
        batch_size: a.batch_size,
        forward_ms,
        train_forward_ms,
        forward_backward_ms: fb,
        ratio: fb / forward_ms,
        ratio_to_train_forward: fb / train_forward_ms,
        forward_nodes: model.graph.nodes.len(),
        grad_nodes: gm.graph.nodes.len(),
        node_ratio: gm.graph.nodes.len() as f64 / model.graph.nodes.len() as f64,
        grad_load_s,
    };
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{}: batch {}, forward {:.2} ms (training form {:.2} ms), forward+backward {:.2} ms ({:.2}× forward, {:.2}× training forward); nodes {} → {} ({:.2}×); gradient graph load {:.2} s",
            r.model,
            r.batch_size,
            r.forward_ms,
            r.train_forward_ms,
            r.forward_backward_ms,
            r.ratio,
            r.ratio_to_train_forward,
            r.forward_nodes,
            r.grad_nodes,
            r.node_ratio,
            r.grad_load_s
        );
    }
    Ok(0)
}
