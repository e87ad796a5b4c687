use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use graph_passes::ir::Model;
use graph_passes::onnx::tensor::dtype_name;
use graph_passes::onnx::ValueInfoProto;
use graph_passes::shapes::{shape_string, value_type_of, Dim};

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
    check_feeds(&model.graph.data_inputs(), arrays, source)
}

/// Matches arrays to `inputs` by name (a lone array may be named anything); checks dtype and shape.
pub fn check_feeds(
    inputs: &[&ValueInfoProto],
    arrays: BTreeMap<String, HostTensor>,
    source: &str,
) -> Result<Vec<(String, HostTensor)>> {
    let mut feeds = Vec::new();
    let lone = arrays.len() == 1 && inputs.len() == 1;
    let mut arrays = arrays;
    for v in inputs.iter() {
        let t = match arrays.remove(&v.name) {
            Some(t) => t,
            None if lone => arrays.pop_first().map(|(_, t)| t).expect("one array"),
            None => bail!(
                "{source}: no array named '{}' (the model's inputs: {}; the file has: {})",
                v.name,
                inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", "),
                arrays.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        };
        if let Some(vt) = value_type_of(&v.r#type) {
            if vt.dtype != t.onnx_dtype() {
                bail!(
                    "{source}: array '{}' is {} but the model's input '{}' is {}; convert it (e.g. x.astype(np.{}))",
                    v.name,
                    t.dtype_name(),
                    v.name,
                    dtype_name(vt.dtype),
                    dtype_name(vt.dtype)
                );
            }
            if let Some(shape) = &vt.shape {
                let ok = shape.len() == t.shape.len()
                    && shape.iter().zip(&t.shape).all(|(d, &s)| match d {
                        Dim::Known(k) => *k == s as i64 || *k <= 0,
                        Dim::Sym(_) => true,
                    });
                if !ok {
                    bail!(
                        "{source}: array '{}' has shape {:?} but the model's input '{}' is {}",
                        v.name,
                        t.shape,
                        v.name,
                        shape_string(&vt.shape)
                    );
                }
            }
        }
        feeds.push((v.name.clone(), t));
    }
    Ok(feeds)
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
