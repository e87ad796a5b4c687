use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use graph_passes::ir::Model;

use super::BackendArgs;
use crate::backend;
use crate::tensor::{read_npz, write_npz, HostTensor};

#[derive(Args)]
pub struct RunArgs {
    /// The ONNX model
    model: PathBuf,
    /// .npz with one array per model input, by name (a lone array may be named anything)
    #[arg(long, value_name = "NPZ")]
    input: PathBuf,
    /// Write the outputs to this .npz (else print a summary)
    #[arg(long, value_name = "NPZ")]
    output: Option<PathBuf>,
    #[command(flatten)]
    backend: BackendArgs,
    /// Time the run: N timed runs after --warmup, median printed (for benchmarks)
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    #[arg(long, default_value_t = 0)]
    warmup: usize,
}

/// Matches .npz arrays to the model's data inputs and checks their dtype and shape.
pub fn feeds_for(
    model: &Model,
    arrays: BTreeMap<String, HostTensor>,
    source: &str,
) -> Result<Vec<(String, HostTensor)>> {
    crate::grad::check_feeds(&model.graph.data_inputs(), arrays, source)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

pub fn run(a: RunArgs) -> Result<i32> {
    let mut model = Model::load(&a.model)?;
    // a training-mode export (BatchNormalization with training_mode=1) runs as its file says, in
    // ops both engines get right; shape arithmetic with known values becomes constants (tract
    // misreads some of the dynamo exporter's chains)
    graph_passes::passes::train_mode::decompose_training_batch_norms(&mut model)
        .and_then(|_| graph_passes::import::fold::fold_known_integer_inputs(&mut model.graph))
        .and_then(|_| graph_passes::ops::lower(&mut model))
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.model.display()))?;
    let arrays = read_npz(&a.input)?;
    let feeds = feeds_for(&model, arrays, &a.input.display().to_string())?;
    let backend = backend::select(&a.backend.request(), true)?;
    let mut session = backend.load(&model.to_proto()).with_context(|| a.model.display().to_string())?;
    let mut outputs = Vec::new();
    let mut times = Vec::new();
    for i in 0..a.warmup + a.repeat.max(1) {
        let t0 = Instant::now();
        outputs = session.run(&feeds).with_context(|| a.model.display().to_string())?;
        if i >= a.warmup {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    if a.repeat > 1 {
        println!(
            "median {:.3} ms over {} runs (min {:.3}, max {:.3})",
            median(times.clone()),
            times.len(),
            times.iter().cloned().fold(f64::INFINITY, f64::min),
            times.iter().cloned().fold(0.0, f64::max)
        );
    }
    match &a.output {
        Some(path) => {
            write_npz(path, &outputs)?;
            eprintln!("wrote {} outputs to {}", outputs.len(), path.display());
        }
        None if a.repeat <= 1 => {
            for (name, t) in &outputs {
                let v = t.to_f64();
                let head: Vec<String> = v.iter().take(6).map(|x| format!("{x:.5}")).collect();
                println!(
                    "{name}: {} {:?} [{}{}]",
                    t.dtype_name(),
                    t.shape,
                    head.join(", "),
                    if v.len() > 6 { ", …" } else { "" }
                );
            }
        }
        None => {}
    }
    Ok(0)
}
