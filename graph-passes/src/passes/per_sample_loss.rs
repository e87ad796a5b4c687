//! per-sample-loss: exposes `loss_per_sample` [batch] and the scalar mean `loss`.
//!
//! Attached to the model's output (PyTorch's formulas, per sample the mean over the sample's
//! elements, the batch loss the mean over samples):
//! - cross-entropy: int64 labels [N] for logits [N, C], or [N, d₁, …] for [N, C, d₁, …] (per token
//!   or pixel: F.cross_entropy per position, averaged within each sample over the positions whose
//!   label is not `ignore_index`), optional label smoothing;
//! - mse, l1, huber (torch.nn.HuberLoss, delta), smooth-l1 (torch.nn.SmoothL1Loss, beta),
//!   bce-with-logits (torch.nn.BCEWithLogitsLoss, multi-label): float targets shaped as the output;
//! - the model's own loss: a per-sample vector [N] (`output`), or, when the graph already reduces
//!   a loss over the batch (SoftmaxCrossEntropyLoss/NegativeLogLikelihoodLoss with reduction
//!   mean/sum, or ReduceMean/ReduceSum over the batch axis), that reduction rewritten so the
//!   per-sample vector is exposed and the scalar stays equal.
//!
//! Cross-entropy uses the formulation both engines run: −GatherElements(LogSoftmax(x), labels).
use super::{value_info, Contract, CrossEntropyRegion, Pass};
use crate::autodiff::Ctx;
use crate::ir::{node_error, Model, NodeExt};
use crate::onnx::{data_type as dt, NodeProto};
use crate::shapes::{self, value_type_of};
use crate::{bail, Result};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Loss {
    /// F.cross_entropy; `ignore_index` positions (per-token/pixel labels) count in no average.
    CrossEntropy { label_smoothing: f32, ignore_index: Option<i64> },
    /// F.mse_loss: (y − t)².
    Mse,
    /// F.l1_loss: |y − t|.
    L1,
    /// F.huber_loss: ½d² where |d| < δ, else δ·(|d| − ½δ).
    Huber { delta: f32 },
    /// F.smooth_l1_loss: ½d²/β where |d| < β, else |d| − ½β.
    SmoothL1 { beta: f32 },
    /// F.binary_cross_entropy_with_logits: softplus(y) − y·t.
    BceWithLogits,
    /// The model's output is already the per-sample loss [N].
    Output,
}

impl Loss {
    /// Float targets shaped as the output (regression, multi-label) rather than class labels.
    pub fn has_float_targets(self) -> bool {
        !matches!(self, Loss::CrossEntropy { .. } | Loss::Output)
    }

    /// The name of the task metric the loss exposes per sample: `correct` (classification:
    /// the fraction of correct positions of a sample) or `abs_error` (regression: mean |y − t|).
    pub fn metric(self) -> Option<&'static str> {
        match self {
            Loss::CrossEntropy { .. } => Some("correct"),
            Loss::Mse | Loss::L1 | Loss::Huber { .. } | Loss::SmoothL1 { .. } => Some("abs_error"),
            Loss::BceWithLogits | Loss::Output => None,
        }
    }
}

pub struct PerSampleLoss {
    pub loss: Loss,
    /// Adds a `sample_weights` [batch] input and a `weighted_loss` = Σ wᵢ·ℓᵢ output.
    pub weighted: bool,
}

pub const LOSS: &str = "loss";
pub const LOSS_PER_SAMPLE: &str = "loss_per_sample";
pub const LABELS: &str = "labels";
pub const TARGETS: &str = "targets";

/// ℓᵢ = −(1 − ε)·log pᵢ,ₜᵢ − ε·mean_c log pᵢ,c  with p = softmax over axis 1.
fn cross_entropy_per_sample(c: &mut Ctx, scores_are_log_probs: bool, x: &str, labels: &str, smoothing: f32) -> String {
    let logp = if scores_are_log_probs { x.to_string() } else { c.g.add("LogSoftmax", &[x]).int("axis", 1).output() };
    let idx = c.unsqueeze(labels, &[1]);
    let picked = c.g.add("GatherElements", &[&logp, &idx]).int("axis", 1).output();
    let picked = c.squeeze(&picked, &[1]);
    let nll = c.neg(&picked);
    if smoothing == 0.0 {
        return nll;
    }
    let mean_logp = c.reduce_mean(&logp, &[1], false);
    let smooth = c.neg(&mean_logp);
    let (a, b) = (c.scalar(1.0 - smoothing), c.scalar(smoothing));
    let l = c.mul(&nll, &a);
    let r = c.mul(&smooth, &b);
    c.add(&l, &r)
}

impl Pass for PerSampleLoss {
    fn name(&self) -> &'static str {
        "per-sample-loss"
    }

    fn run(&self, m: &mut Model, c: &mut Contract) -> Result<()> {
        let opset = m.opset();
        if opset < 13 {
            bail!("opset {opset} is too old for training (onnxsam needs ≥ 13; re-export with opset_version=17)");
        }
        // the names this pass gives its outputs belong to it: a model value called `loss`
        // (a model computing its own loss) is renamed, so that `loss` is the batch mean
        for reserved in [LOSS, LOSS_PER_SAMPLE, "weighted_loss"] {
            if m.graph.nodes.iter().any(|n| n.output.iter().any(|o| o == reserved)) {
                let new = m.graph.fresh(&format!("model_{reserved}"));
                m.graph.rename_value(reserved, &new);
                for v in c.state_next.values_mut() {
                    if v == reserved {
                        *v = new.clone();
                    }
                }
            }
        }
        let s = shapes::infer(&m.graph)?;
        let float_outputs: Vec<String> = m
            .graph
            .outputs
            .iter()
            .filter(|o| s.get(&o.name).map(|t| t.dtype == dt::FLOAT).unwrap_or(false))
            .map(|o| o.name.clone())
            .collect();
        // outputs the train-mode pass added (next running statistics) are not the model's
        let model_outputs: Vec<String> =
            float_outputs.into_iter().filter(|o| !c.state_next.values().any(|v| v == o)).collect();
        let [out] = model_outputs.as_slice() else {
            bail!(
                "the model has {} float outputs ({}); onnxsam trains a model with one output (the logits or a loss)",
                model_outputs.len(),
                model_outputs.join(", ")
            );
        };
        let out = out.clone();
        let producer = m.graph.nodes.iter().find(|n| n.output.first() == Some(&out)).cloned();
        let out_rank = s.rank(&out);
        let mut ctx = Ctx::new(&mut m.graph, s, opset);
        let (lps, loss) = match producer {
            // the model's output is its per-sample loss, whichever ops compute it
            Some(n)
                if self.loss == Loss::Output
                    && matches!(n.op_type.as_str(), "SoftmaxCrossEntropyLoss" | "NegativeLogLikelihoodLoss")
                    && n.attr_s("reduction").as_deref() == Some("none") =>
            {
                per_sample_loss_op(&n, &mut ctx)?
            }
            _ if self.loss == Loss::Output => attach(&out, self.loss, &mut ctx, c)?,
            Some(n) if matches!(n.op_type.as_str(), "SoftmaxCrossEntropyLoss" | "NegativeLogLikelihoodLoss") => {
                rewrite_loss_op(&n, &mut ctx, c)?
            }
            Some(n) if out_rank == Some(0) && matches!(n.op_type.as_str(), "ReduceMean" | "ReduceSum") => {
                rewrite_reduction(&n, &mut ctx)?
            }
            _ if out_rank == Some(0) => {
                bail!("the model outputs a scalar '{out}' that onnxsam does not recognise as a batch-reduced loss")
            }
            _ => attach(&out, self.loss, &mut ctx, c)?,
        };
        let lps = ctx.g.add("Identity", &[&lps]).named_outputs(&[LOSS_PER_SAMPLE]).remove(0);
        let loss = ctx.g.add("Identity", &[&loss]).named_outputs(&[LOSS]).remove(0);
        if c.logits.as_deref() != Some(out.as_str()) {
            // a loss the model computes is exposed as loss / loss_per_sample; not again under the
            // model's name
            ctx.g.outputs.retain(|o| o.name != out);
        }
        let mut outputs = vec![value_info(&loss, dt::FLOAT, &[]), value_info(&lps, dt::FLOAT, &[-1])];
        if self.weighted {
            let w = ctx.g.fresh("sample_weights");
            ctx.g.inputs.push(value_info(&w, dt::FLOAT, &[-1]));
            let p = ctx.mul(&lps, &w);
            let wl = ctx.reduce_sum(&p, &[0], false);
            let wl = ctx.g.add("Identity", &[&wl]).named_outputs(&["weighted_loss"]).remove(0);
            outputs.push(value_info(&wl, dt::FLOAT, &[]));
            c.sample_weights = Some(w);
        }
        // keep the other outputs (logits, next running statistics)
        let old: Vec<_> = ctx.g.outputs.drain(..).collect();
        outputs.extend(old.into_iter().filter(|o| o.name != loss));
        ctx.g.outputs = outputs;
        c.loss = Some(loss);
        c.loss_per_sample = Some(lps);
        m.graph.topo_sort()
    }
}

fn attach(logits: &str, loss: Loss, c: &mut Ctx, contract: &mut Contract) -> Result<(String, String)> {
    let shape = c.shape(logits)?.clone();
    let shown = crate::shapes::shape_string(&Some(shape.clone()));
    contract.logits = Some(logits.to_string());
    let rest: Vec<i64> = (1..shape.len() as i64).collect();
    let lps = match loss {
        Loss::CrossEntropy { label_smoothing, ignore_index } => {
            if shape.len() < 2 {
                bail!(
                    "cross-entropy needs logits [batch, classes] or [batch, classes, d1, …]; the output '{logits}' has shape {shown} (a regression output: --loss mse; the model's own per-sample loss: --loss output)"
                );
            }
            let labels = c.g.fresh(LABELS);
            let mut ldims: Vec<i64> = shape.iter().map(|d| d.known().unwrap_or(-1)).collect();
            ldims.remove(1);
            ldims[0] = -1;
            c.g.inputs.push(value_info(&labels, dt::INT64, &ldims));
            contract.labels = Some(labels.clone());
            contract.ignore_index = ignore_index;
            if shape.len() == 2 && ignore_index.is_some() {
                bail!(
                    "--ignore-index applies to per-position labels (logits [batch, classes, d1, …]); with one label per sample, drop the rows to ignore from the data"
                );
            }
            if shape.len() == 2 {
                let lps = cross_entropy_per_sample(c, false, logits, &labels, label_smoothing);
                if let Some(classes) = shape[1].known() {
                    contract.cross_entropy = Some(CrossEntropyRegion {
                        per_sample: lps.clone(),
                        logits: logits.to_string(),
                        labels: labels.clone(),
                        smoothing: label_smoothing,
                        classes,
                    });
                }
                contract.metric = Some(("correct".into(), hits(c, logits, &labels)));
                lps
            } else {
                positional_cross_entropy(c, contract, logits, &labels, shape.len(), label_smoothing, ignore_index)
            }
        }
        Loss::Output => {
            if shape.len() != 1 {
                bail!("--loss output needs the model's output to be the per-sample loss [batch]; '{logits}' has shape {shown}");
            }
            contract.logits = None;
            return Ok((logits.to_string(), c.reduce_mean(logits, &[0], false)));
        }
        regression => {
            let targets = c.g.fresh(TARGETS);
            let mut dims: Vec<i64> = shape.iter().map(|d| d.known().unwrap_or(-1)).collect();
            if let Some(d) = dims.first_mut() {
                *d = -1;
            }
            c.g.inputs.push(value_info(&targets, dt::FLOAT, &dims));
            contract.labels = Some(targets.clone());
            let d = c.sub(logits, &targets);
            let elem = match regression {
                Loss::Mse => c.square(&d),
                Loss::L1 => c.op("Abs", &[&d]),
                Loss::Huber { delta } | Loss::SmoothL1 { beta: delta } => {
                    let huber = matches!(regression, Loss::Huber { .. });
                    let a = c.op("Abs", &[&d]);
                    let dl = c.scalar(delta);
                    let inside = c.op("Less", &[&a, &dl]);
                    let sq = c.square(&d);
                    let half = c.scalar(if huber { 0.5 } else { 0.5 / delta });
                    let quad = c.mul(&sq, &half);
                    let hd = c.scalar(0.5 * delta);
                    let lin = c.sub(&a, &hd);
                    let lin = if huber { c.mul(&lin, &dl) } else { lin };
                    c.op("Where", &[&inside, &quad, &lin])
                }
                Loss::BceWithLogits => {
                    // softplus(y) − y·t with softplus taken where it cannot overflow (tract
                    // computes ln(eˣ + 1)): y + softplus(−y) for y > 0; the gradient is σ(y) − t
                    // everywhere, 0 included
                    let zero = c.scalar(0.0);
                    let pos = c.op("Greater", &[logits, &zero]);
                    let neg = c.neg(logits);
                    let sp_neg = c.op("Softplus", &[&neg]);
                    let upper = c.add(logits, &sp_neg);
                    let lower = c.op("Softplus", &[logits]);
                    let sp = c.op("Where", &[&pos, &upper, &lower]);
                    let yt = c.mul(logits, &targets);
                    c.sub(&sp, &yt)
                }
                Loss::CrossEntropy { .. } | Loss::Output => unreachable!("handled above"),
            };
            if matches!(regression, Loss::Mse | Loss::L1 | Loss::Huber { .. } | Loss::SmoothL1 { .. }) {
                let a = c.op("Abs", &[&d]);
                let mae = if rest.is_empty() { a } else { c.reduce_mean(&a, &rest, false) };
                contract.metric = Some(("abs_error".into(), mae));
            }
            if rest.is_empty() {
                elem
            } else {
                c.reduce_mean(&elem, &rest, false)
            }
        }
    };
    let loss = c.reduce_mean(&lps, &[0], false);
    Ok((lps, loss))
}

/// 1.0 where the argmax over axis 1 of `logits` is the label, else 0.0 (float, labels' shape).
fn hits(c: &mut Ctx, logits: &str, labels: &str) -> String {
    let am = c.g.add("ArgMax", &[logits]).int("axis", 1).int("keepdims", 0).output();
    let eq = c.op("Equal", &[&am, labels]);
    c.mask(&eq)
}

/// Cross-entropy per position of logits [N, C, d₁, …] with labels [N, d₁, …], averaged within
/// each sample over the positions not ignored (a sample with every position ignored contributes
/// 0); the metric is the fraction of those positions whose argmax is the label.
fn positional_cross_entropy(
    c: &mut Ctx,
    contract: &mut Contract,
    logits: &str,
    labels: &str,
    rank: usize,
    smoothing: f32,
    ignore_index: Option<i64>,
) -> String {
    let positions: Vec<i64> = (1..rank as i64 - 1).collect();
    let (safe, keep) = match ignore_index {
        Some(ii) => {
            let iiv = c.const_i64(&[ii]);
            let is_ignored = c.op("Equal", &[labels, &iiv]);
            let kept = c.op("Not", &[&is_ignored]);
            let zero = c.const_i64(&[0]);
            let safe = c.op("Where", &[&kept, labels, &zero]);
            (safe, Some(c.mask(&kept)))
        }
        None => (labels.to_string(), None),
    };
    // −log p at every position [N, d₁, …] (cross_entropy_per_sample works along axis 1 at any rank)
    let per_pos = cross_entropy_per_sample(c, false, logits, &safe, smoothing);
    let hit = hits(c, logits, labels);
    let mean_over = |c: &mut Ctx, v: &str| -> String {
        match &keep {
            Some(k) => {
                let kv = c.mul(v, k);
                let num = c.reduce_sum(&kv, &positions, false);
                let den = c.reduce_sum(k, &positions, false);
                let one = c.scalar(1.0);
                let den = c.op("Max", &[&den, &one]);
                c.div(&num, &den)
            }
            None => c.reduce_mean(v, &positions, false),
        }
    };
    let lps = mean_over(c, &per_pos);
    let acc = mean_over(c, &hit);
    contract.metric = Some(("correct".into(), acc));
    lps
}

/// SoftmaxCrossEntropyLoss / NegativeLogLikelihoodLoss with reduction mean or sum.
fn rewrite_loss_op(n: &NodeProto, c: &mut Ctx, contract: &mut Contract) -> Result<(String, String)> {
    if n.input.len() > 2 && !n.input[2].is_empty() {
        return Err(node_error(n, "class weights are not supported"));
    }
    if c.rank(&n.input[0])? != 2 {
        return Err(node_error(n, "only [batch, classes] scores are supported"));
    }
    crate::ops::softmax_loss::check_ignore_index(n, c)?;
    let reduction = n.attr_s("reduction").unwrap_or_else(|| "mean".into());
    let labels = n.input[1].clone();
    contract.labels = Some(labels.clone());
    contract.data.retain(|d| *d != labels);
    if n.output.get(1).map(|o| !o.is_empty()).unwrap_or(false) {
        return Err(node_error(n, "the log_prob output is not supported"));
    }
    let lps = cross_entropy_per_sample(c, n.op_type == "NegativeLogLikelihoodLoss", &n.input[0], &labels, 0.0);
    if n.op_type == "SoftmaxCrossEntropyLoss" {
        if let Some(classes) = c.shape(&n.input[0])?[1].known() {
            contract.cross_entropy = Some(CrossEntropyRegion {
                per_sample: lps.clone(),
                logits: n.input[0].clone(),
                labels: labels.clone(),
                smoothing: 0.0,
                classes,
            });
        }
    }
    let loss = match reduction.as_str() {
        "mean" => c.reduce_mean(&lps, &[0], false),
        "sum" => c.reduce_sum(&lps, &[0], false),
        other => {
            return Err(node_error(n, format!("reduction '{other}': the graph must reduce the loss over the batch")))
        }
    };
    c.g.nodes.retain(|m| m.output != n.output);
    rename_output(c, &loss, &n.output[0]);
    Ok((lps, n.output[0].clone()))
}

/// SoftmaxCrossEntropyLoss / NegativeLogLikelihoodLoss with reduction none, the model's output
/// (F.cross_entropy(…, reduction="none")): written as −GatherElements(LogSoftmax) so that both
/// engines run it; its labels stay the model's input.
fn per_sample_loss_op(n: &NodeProto, c: &mut Ctx) -> Result<(String, String)> {
    if n.input.len() > 2 && !n.input[2].is_empty() {
        return Err(node_error(n, "class weights are not supported"));
    }
    if c.rank(&n.input[0])? != 2 {
        return Err(node_error(n, "only [batch, classes] scores are supported"));
    }
    crate::ops::softmax_loss::check_ignore_index(n, c)?;
    let lps = cross_entropy_per_sample(c, n.op_type == "NegativeLogLikelihoodLoss", &n.input[0], &n.input[1], 0.0);
    c.g.nodes.retain(|m| m.output != n.output);
    rename_output(c, &lps, &n.output[0]);
    let out = n.output[0].clone();
    let loss = c.reduce_mean(&out, &[0], false);
    Ok((out, loss))
}

/// A ReduceMean/ReduceSum of per-element losses [batch, …] down to a scalar.
fn rewrite_reduction(n: &NodeProto, c: &mut Ctx) -> Result<(String, String)> {
    let v = n.input[0].clone();
    let shape = c.shape(&v)?.clone();
    let r = shape.len() as i64;
    if r == 0 {
        return Err(node_error(n, "reduces a scalar"));
    }
    let given = n
        .attr_ints("axes")
        .or_else(|| n.input.get(1).filter(|a| !a.is_empty()).and_then(|a| crate::ir::constant_ints(c.g, a)));
    let all: Vec<i64> = (0..r).collect();
    let axes: Vec<i64> =
        given.map(|a| a.into_iter().map(|x| if x < 0 { x + r } else { x }).collect()).unwrap_or(all.clone());
    if axes.len() as i64 != r {
        return Err(node_error(n, "the scalar loss must reduce every axis"));
    }
    let mean = n.op_type == "ReduceMean";
    let rest: Vec<i64> = (1..r).collect();
    let lps = if rest.is_empty() {
        v.clone()
    } else if mean {
        c.reduce_mean(&v, &rest, false)
    } else {
        c.reduce_sum(&v, &rest, false)
    };
    let loss = if mean { c.reduce_mean(&lps, &[0], false) } else { c.reduce_sum(&lps, &[0], false) };
    c.g.nodes.retain(|m| m.output != n.output);
    rename_output(c, &loss, &n.output[0]);
    Ok((lps, n.output[0].clone()))
}

fn rename_output(c: &mut Ctx, from: &str, to: &str) {
    for m in c.g.nodes.iter_mut() {
        for o in m.output.iter_mut() {
            if o == from {
                *o = to.to_string();
            }
        }
    }
}

/// The dtype and static shape of a graph input (for label checks at run time).
pub fn input_type(m: &Model, name: &str) -> Option<crate::shapes::ValueType> {
    m.graph.inputs.iter().find(|v| v.name == name).and_then(|v| value_type_of(&v.r#type))
}
