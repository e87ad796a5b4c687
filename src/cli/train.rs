//! `eval` and `export` (and the entry of `train`, which lives in crate::train).
use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use clap::Args;
use graph_passes::ir::Model;

use super::grad::GradGraphArgs;
use super::BackendArgs;
use crate::backend;
use crate::data::{self, Format};
use crate::step::Evaluator;

#[derive(Args)]
pub struct EvalArgs {
    /// The ONNX model (e.g. a run's model.onnx)
    model: PathBuf,
    /// Dataset (its test split when it has one, else the whole set; see --split)
    #[arg(long, value_name = "DATASET")]
    data: PathBuf,
    #[arg(long, value_enum)]
    data_format: Option<Format>,
    /// test (default when the dataset has one) or train
    #[arg(long)]
    split: Option<String>,
    /// Per-channel normalization MEAN,STD (or M1,…,S1,…), or `none`; default per dataset
    #[arg(long)]
    normalize: Option<String>,
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    #[command(flatten)]
    graph: GradGraphArgs,
    #[command(flatten)]
    backend: BackendArgs,
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct EvalReport {
    model: String,
    data: String,
    samples: usize,
    loss: f64,
    accuracy: f64,
    per_class_accuracy: Vec<Option<f64>>,
}

pub fn eval(a: EvalArgs) -> Result<i32> {
    let model = Model::load(&a.model)?;
    let shown = a.model.display().to_string();
    let loaded = data::load(&a.data, a.data_format)?;
    let mut d = match a.split.as_deref() {
        Some("train") => loaded.train,
        Some("test") => loaded.test.ok_or_else(|| anyhow!("{}: no test split here", a.data.display()))?,
        Some(other) => bail!("--split {other}: expected test or train"),
        None => loaded.test.unwrap_or(loaded.train),
    };
    if let Some((m, s)) = crate::train::normalization(a.normalize.as_deref(), loaded.kind)? {
        d.normalize_channels(&m, &s)?;
    }
    let spec = a.graph.spec()?;
    let be = backend::select(&a.backend.request(), true)?;
    let mut ev = Evaluator::new(&model, &spec, be.as_ref()).map_err(|e| anyhow!("{shown}: {e:#}"))?;
    let (input, want, _) = crate::train::model_io(&model, &shown)?;
    crate::train::check_data(&d, &want, &input, None, &shown)?;
    let values = crate::grad::initial_values(&ev.graph.contract)?;
    let classes = d.classes.max(1);
    let (mut hit, mut count) = (vec![0usize; classes], vec![0usize; classes]);
    let mut loss = 0.0;
    let mut i = 0;
    while i < d.len() {
        let idx: Vec<usize> = (i..(i + a.batch_size).min(d.len())).collect();
        let b = d.batch(&input, &idx);
        let out = ev.run(&values, &b)?;
        loss += out["loss"].to_f64()[0] * idx.len() as f64;
        let logits = out.values().find(|t| t.shape.len() == 2 && t.shape[0] == idx.len()).map(|t| t.to_f64());
        if let Some(l) = logits {
            let c = l.len() / idx.len();
            for (k, &s) in idx.iter().enumerate() {
                let row = &l[k * c..(k + 1) * c];
                let arg = (0..c)
                    .max_by(|&p, &q| row[p].partial_cmp(&row[q]).unwrap_or(std::cmp::Ordering::Equal))
                    .unwrap_or(0);
                let y = d.y[s] as usize;
                if y < classes {
                    count[y] += 1;
                    hit[y] += (arg == y) as usize;
                }
            }
        }
        i += a.batch_size;
    }
    let n = d.len();
    let r = EvalReport {
        model: shown,
        data: a.data.display().to_string(),
        samples: n,
        loss: loss / n as f64,
        accuracy: hit.iter().sum::<usize>() as f64 / n as f64,
        per_class_accuracy: hit.iter().zip(&count).map(|(&h, &c)| (c > 0).then(|| h as f64 / c as f64)).collect(),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("{}: {} samples of {}: loss {:.4}, accuracy {:.4}", r.model, r.samples, r.data, r.loss, r.accuracy);
        let per: Vec<String> =
            r.per_class_accuracy.iter().enumerate().filter_map(|(c, a)| a.map(|a| format!("{c}: {a:.3}"))).collect();
        println!("per class: {}", per.join(", "));
    }
    Ok(0)
}

#[derive(Args)]
pub struct ExportArgs {
    /// A training run's folder
    run: PathBuf,
    /// The checkpoint's step (default: the newest)
    #[arg(long)]
    step: Option<u64>,
    #[arg(short = 'o', long = "output", value_name = "ONNX")]
    output: PathBuf,
}

pub fn export(a: ExportArgs) -> Result<i32> {
    let (model, spec) = crate::train::run_source(&a.run)?;
    let (pos, values) = crate::train::checkpoint::load(&a.run, a.step)?;
    let m = crate::train::export::export(&model, &spec, &values)?;
    m.save(&a.output, &Default::default())?;
    eprintln!("wrote {} (checkpoint at step {})", a.output.display(), pos.step);
    Ok(0)
}
