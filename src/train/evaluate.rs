//! Evaluation of a dataset with the evaluation graph: mean loss, the task's metric (accuracy or
//! MAE), mean IoU of dense labels; and how a compiled graph takes a dataset (its inputs, labels,
//! class count, metric).
use std::collections::BTreeMap;

use anyhow::{anyhow, Result};
use graph_passes::ir::Model;
use graph_passes::shapes::{self, Dim};

use crate::data::{Dataset, InputSpec, TargetSpec};
use crate::step::Evaluator;
use crate::tensor::HostTensor;

/// The class count of a classifier: the size of the model output's class axis (1, or the last for
/// classes-last logits), when known.
pub(crate) fn output_classes(model: &Model, source: &str, c: &graph_passes::pass::Contract) -> Result<Option<usize>> {
    let s = shapes::infer(&model.graph).map_err(|e| anyhow!("{source}: {e}"))?;
    // the class axis the loss reads: 1, or the last (classes-last logits)
    let last = c.class_axis.map(|a| a > 1).unwrap_or(false);
    Ok(model
        .graph
        .outputs
        .first()
        .and_then(|o| s.shape(&o.name))
        .filter(|sh| sh.len() >= 2)
        .and_then(|sh| sh.get(if last { sh.len() - 1 } else { 1 }).and_then(Dim::known))
        .map(|c| c as usize))
}

/// What a compiled graph (its contract) takes from a dataset: its data inputs (name, dtype,
/// sample dims) and its labels (int64 class labels with their dims, or float targets).
pub(crate) fn binding(
    g: &Model,
    c: &graph_passes::pass::Contract,
    classes: Option<usize>,
) -> (Vec<InputSpec>, TargetSpec) {
    let ty = |name: &str| g.graph.inputs.iter().find(|v| v.name == name).and_then(|v| shapes::value_type_of(&v.r#type));
    let dims = |t: &Option<shapes::ValueType>| -> Vec<Option<i64>> {
        t.as_ref()
            .and_then(|t| t.shape.clone())
            .map(|s| s.iter().skip(1).map(|d| d.known().filter(|&k| k > 0)).collect())
            .unwrap_or_default()
    };
    let inputs = c
        .data
        .iter()
        .map(|n| {
            let t = ty(n);
            InputSpec {
                name: n.clone(),
                dtype: t.as_ref().map(|t| t.dtype).unwrap_or(0),
                dims: dims(&t),
                index_range: crate::data::index_range(g, c, n),
            }
        })
        .collect();
    let target = match &c.labels {
        None => TargetSpec::None,
        Some(l) => {
            let t = ty(l);
            if t.as_ref().map(|t| t.dtype) == Some(graph_passes::onnx::data_type::FLOAT) {
                TargetSpec::Values { dims: dims(&t) }
            } else {
                TargetSpec::Classes { dims: dims(&t), classes, ignore: c.ignore_index, ties: label_ties(g, c) }
            }
        }
    };
    (inputs, target)
}

/// Per-position labels' axes whose size the file leaves symbolic and ties to a data input's axis
/// (the logits [batch, seq, V] of input_ids [batch, seq]): (label axis, input, its axis).
fn label_ties(g: &Model, c: &graph_passes::pass::Contract) -> Vec<(usize, String, usize)> {
    let (Some(logits), Some(axis)) = (c.logits.as_deref(), c.class_axis) else { return vec![] };
    let Ok(s) = shapes::infer(&g.graph) else { return vec![] };
    let Some(shape) = s.shape(logits) else { return vec![] };
    if shape.len() < 3 {
        return vec![];
    }
    let label_dims: Vec<&Dim> = shape.iter().enumerate().filter(|&(i, _)| i != axis as usize).map(|(_, d)| d).collect();
    let mut ties = vec![];
    for (k, d) in label_dims.iter().enumerate().skip(1) {
        if !matches!(d, Dim::Sym(_)) {
            continue;
        }
        for input in &c.data {
            let dims = g
                .graph
                .inputs
                .iter()
                .find(|v| &v.name == input)
                .and_then(|v| shapes::value_type_of(&v.r#type))
                .and_then(|t| t.shape);
            if let Some(at) = dims.and_then(|ds| ds.iter().skip(1).position(|x| x == *d).map(|p| p + 1)) {
                ties.push((k, input.clone(), at));
                break;
            }
        }
    }
    ties
}

/// A batch size the file fixes: the PyTorch docs' default `torch.onnx.export(model, (x,), path)`
/// writes the example's batch into the data input's first axis (and the Reshape constants after
/// it) unless the batch axis is declared dynamic; a legacy export given `dynamic_axes` for its
/// input alone leaves the output's.
pub(crate) struct FixedBatch {
    /// "input 'x' is [1, 3, 32, 32]" or "output 'logits' is [1, 10]".
    pub what: String,
    pub batch: i64,
    /// The re-export that makes it dynamic, with the file's input and output names.
    pub hint: String,
}

pub(crate) fn fixed_batch(g: &Model) -> Option<FixedBatch> {
    let stored: std::collections::HashSet<&str> = g.graph.initializers.iter().map(|t| t.name.as_str()).collect();
    let first = |v: &graph_passes::onnx::ValueInfoProto, kind: &str| {
        let dims = shapes::value_type_of(&v.r#type)?.shape?;
        let b = dims.first()?.known()?;
        let shown: Vec<String> = dims.iter().map(|d| d.known().map(|k| k.to_string()).unwrap_or_else(|| "?".into())).collect();
        Some(FixedBatch {
            what: format!("{kind} '{}' is [{}]", v.name, shown.join(", ")),
            batch: b,
            hint: dynamic_batch_hint(g),
        })
    };
    let inputs = g.graph.inputs.iter().filter(|v| !stored.contains(v.name.as_str()));
    inputs.clone().find_map(|v| first(v, "input")).or_else(|| {
        // the inputs' batch is dynamic (or there is none to see): an output's fixed batch still
        // stops the step graph at another size
        (inputs.count() > 0).then_some(())?;
        g.graph.outputs.iter().find_map(|v| first(v, "output"))
    })
}

/// How to re-export a file whose batch is fixed, as one clause.
fn dynamic_batch_hint(g: &Model) -> String {
    // the file's own input and output names, each with its batch axis dynamic
    // (names the legacy exporter made up, `onnx::Flatten_0`, `8`, become x and logits)
    let chosen = |n: &str| !(n.starts_with("onnx::") || n.chars().all(|c| c.is_ascii_digit()));
    let data = g.graph.data_inputs();
    let inputs: Vec<String> = data
        .iter()
        .enumerate()
        .map(|(i, v)| match (chosen(&v.name), data.len()) {
            (true, _) => v.name.clone(),
            (false, 1) => "x".into(),
            (false, _) => format!("x{i}"),
        })
        .collect();
    let output =
        g.graph.outputs.first().map(|o| o.name.clone()).filter(|o| chosen(o)).unwrap_or_else(|| "logits".into());
    let inputs = if inputs.is_empty() { vec!["x".to_string()] } else { inputs };
    let shapes: Vec<String> = inputs.iter().map(|_| "{0: torch.export.Dim(\"batch\")}".to_string()).collect();
    let names: Vec<String> = inputs.iter().map(|n| format!("\"{n}\"")).collect();
    let axes: Vec<String> =
        inputs.iter().chain(std::iter::once(&output)).map(|n| format!("\"{n}\": {{0: \"batch\"}}")).collect();
    format!(
        "re-export with a dynamic batch: torch.onnx.export(..., dynamic_shapes=({},)) (dynamo=True), or torch.onnx.export(..., dynamo=False, input_names=[{}], output_names=[\"{output}\"], dynamic_axes={{{}}})",
        shapes.join(", "),
        names.join(", "),
        axes.join(", ")
    )
}

/// Why a file that fixes its batch cannot train as asked, or None where it can (--batch-size 1
/// on a file fixed at 1 with no BatchNorm over the batch).
pub(crate) fn fixed_batch_refusal(f: &FixedBatch, batch_size: Option<usize>, batch_norm: Option<&str>) -> Option<String> {
    let hint = &f.hint;
    match (f.batch, batch_norm) {
        (1, Some(bn)) => Some(format!(
            "the file fixes the batch at 1 ({}), and {bn} cannot normalize one sample per channel (PyTorch refuses it too); {hint}",
            f.what
        )),
        (1, None) if batch_size == Some(1) => None,
        (1, None) => Some(format!("the file fixes the batch at 1 ({}); {hint}, or train with --batch-size 1", f.what)),
        (b, _) => Some(format!("the file fixes the batch at {b} ({}); {hint}", f.what)),
    }
}

/// How a task's metric reads: the diagnostic the graph exposes (summed over a batch), the name
/// of its per-sample mean in metrics (acc: accuracy, per position for per-token/pixel labels;
/// mae: mean absolute error).
pub(crate) fn metric_of(c: &graph_passes::pass::Contract) -> Option<(&'static str, &'static str)> {
    match c.metric.as_ref().map(|(n, _)| n.as_str()) {
        Some("correct") => Some(("correct", "acc")),
        Some("abs_error") => Some(("abs_error", "mae")),
        _ => None,
    }
}

/// A dataset's evaluation: mean loss, mean metric (NaN without one), and for per-position class
/// labels (tokens, pixels) the mean IoU.
pub(crate) struct Evaluation {
    pub loss: f64,
    pub metric: f64,
    pub mean_iou: Option<f64>,
}

/// Evaluates `d` in batches of `bs`.
pub(crate) fn evaluate(
    ev: &mut Evaluator,
    values: &BTreeMap<String, HostTensor>,
    d: &Dataset,
    bs: usize,
    dist: Option<&mut crate::distributed::Dist>,
) -> Result<Evaluation> {
    let metric = metric_of(&ev.graph.contract).map(|m| m.0);
    let logits = ev.graph.contract.logits.clone();
    let ignore = ev.graph.contract.ignore_index;
    let dense = d.y.as_ref().map(|y| y.shape.len() >= 2).unwrap_or(false) && d.labels().is_some();
    let mut confusion: Option<ConfusionMatrix> = None;
    let (mut loss, mut sum) = (0.0, 0.0);
    let n = d.len();
    // data-parallel: each rank evaluates its contiguous share of the set; the sums are summed
    let (from, to) = match dist.as_ref().filter(|x| n >= x.size()) {
        Some(x) => {
            let s = crate::distributed::shares(n, x.size());
            let from: usize = s[..x.rank()].iter().sum();
            (from, from + s[x.rank()])
        }
        None => (0, n),
    };
    // what each batch weighs: its rows, or its kept positions where the loss is the mean over
    // the kept positions of each batch (F.cross_entropy's reduction='mean' with ignore_index)
    let (mut i, mut weight) = (from, 0.0);
    let class_last = ev.graph.contract.class_axis.map(|a| a > 1).unwrap_or(false);
    while i < to {
        let idx: Vec<usize> = (i..(i + bs).min(to)).collect();
        let b = d.try_batch(&idx)?;
        let out = ev.run(values, &b)?;
        let w = crate::grad::batch_weight(&ev.graph.contract, &b);
        weight += w;
        loss += out["loss"].to_f64()[0] * w;
        sum += metric.and_then(|m| out.get(m)).map(|c| c.to_f64()[0] / idx.len() as f64 * w).unwrap_or(f64::NAN);
        if let (true, Some(l), Some(HostTensor { data: crate::tensor::Data::I64(y), .. })) =
            (dense, logits.as_ref().and_then(|l| out.get(l)), b.labels.as_ref())
        {
            // per-position logits [N, C, d…] (language models' class-last logits get perplexity,
            // not a mean IoU)
            if l.shape.len() >= 3 && !class_last {
                let classes = l.shape[1];
                let positions: usize = l.shape[2..].iter().product();
                let cm = confusion.get_or_insert_with(|| ConfusionMatrix::new(classes, ignore));
                let v = l.to_f64();
                for s in 0..l.shape[0] {
                    for p in 0..positions {
                        let label = y[s * positions + p];
                        if Some(label) == ignore || label < 0 || label as usize >= classes {
                            continue;
                        }
                        let at = |c: usize| v[(s * classes + c) * positions + p];
                        let pred = (0..classes).fold(0, |best, c| if at(c) > at(best) { c } else { best });
                        cm.add(label as usize, pred);
                    }
                }
            }
        }
        i += bs;
    }
    if let Some(x) = dist.filter(|x| n >= x.size()) {
        let mut v = vec![loss, sum, weight];
        if let Some(c) = &confusion {
            v.extend(c.counts.iter().map(|&k| k as f64));
        }
        x.sum_f64(&mut v)?;
        (loss, sum, weight) = (v[0], v[1], v[2]);
        if let Some(c) = confusion.as_mut() {
            c.counts.iter_mut().zip(&v[3..]).for_each(|(k, &t)| *k = t as u64);
        }
    }
    // nothing kept (every label ignore_index): no loss to report, as PyTorch's NaN
    let weight = if weight > 0.0 { weight } else { f64::NAN };
    Ok(Evaluation { loss: loss / weight, metric: sum / weight, mean_iou: confusion.map(|c| c.mean_iou()) })
}

/// Counts of (label, prediction) pairs over the positions of a dense-prediction dataset.
struct ConfusionMatrix {
    classes: usize,
    counts: Vec<u64>,
    /// The ignore_index when it is a class index: left out of the mean (torchmetrics' ignore_index).
    ignore: Option<i64>,
}

impl ConfusionMatrix {
    fn new(classes: usize, ignore: Option<i64>) -> ConfusionMatrix {
        ConfusionMatrix { classes, counts: vec![0; classes * classes], ignore }
    }
    fn add(&mut self, label: usize, pred: usize) {
        self.counts[label * self.classes + pred] += 1;
    }
    /// Mean over classes with a non-empty union of |pred ∩ label| / |pred ∪ label| (as
    /// torchmetrics' JaccardIndex, macro average, classes absent from both left out).
    fn mean_iou(&self) -> f64 {
        let k = self.classes;
        let mut ious = Vec::new();
        for c in 0..k {
            if self.ignore == Some(c as i64) {
                continue;
            }
            let tp = self.counts[c * k + c] as f64;
            let row: u64 = (0..k).map(|p| self.counts[c * k + p]).sum();
            let col: u64 = (0..k).map(|l| self.counts[l * k + c]).sum();
            let union = row as f64 + col as f64 - tp;
            if union > 0.0 {
                ious.push(tp / union);
            }
        }
        if ious.is_empty() {
            f64::NAN
        } else {
            ious.iter().sum::<f64>() / ious.len() as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ConfusionMatrix;

    #[test]
    fn mean_iou_averages_the_classes_with_a_union() {
        // labels 0,0,1,1 predicted 0,1,1,1; class 2 never seen (left out)
        let mut c = ConfusionMatrix::new(3, None);
        for (l, p) in [(0, 0), (0, 1), (1, 1), (1, 1)] {
            c.add(l, p);
        }
        // class 0: 1 / (2 + 1 − 1) = 0.5; class 1: 2 / (2 + 3 − 2) = 2/3
        assert!((c.mean_iou() - (0.5 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
        // ignore_index 0 (e.g. background): class 0 left out
        let mut d = ConfusionMatrix::new(3, Some(0));
        d.counts = c.counts.clone();
        assert!((d.mean_iou() - 2.0 / 3.0).abs() < 1e-12);
    }
}
