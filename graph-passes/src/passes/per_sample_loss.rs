//! per-sample-loss: exposes `loss_per_sample` [batch] and the scalar mean `loss`.
//!
//! Attached to the model's output (PyTorch's formulas, per sample the mean over the sample's
//! elements, the batch loss the mean over samples):
//! - cross-entropy: int64 labels [N] for logits [N, C]; per position (tokens, pixels) labels
//!   [N, d₁, …] for logits [N, C, d₁, …] (PyTorch's layout) or [N, d₁, …, C] (classes last: language
//!   models, Hugging Face token classifiers), the class axis chosen by the labels' shape
//!   ([`ClassAxis`]); positions whose label is `ignore_index` count in no average; the batch loss is
//!   F.cross_entropy(reduction='mean') over all kept positions ([`Reduction::Mean`], per-sample
//!   losses formed so that their mean is it) or the mean over samples of each sample's mean
//!   ([`Reduction::SampleMean`]); optional label smoothing;
//! - mse, l1, huber (torch.nn.HuberLoss, delta), smooth-l1 (torch.nn.SmoothL1Loss, beta),
//!   bce-with-logits (torch.nn.BCEWithLogitsLoss, multi-label): float targets shaped as the output;
//! - the model's own loss: a per-sample vector [N] (`output`), or, when the graph already reduces
//!   a loss over the batch (SoftmaxCrossEntropyLoss/NegativeLogLikelihoodLoss with reduction
//!   mean/sum, or ReduceMean/ReduceSum over the batch axis), that reduction rewritten so the
//!   per-sample vector is exposed and the scalar stays equal.
//!
//! Cross-entropy uses the formulation both engines run: −GatherElements(LogSoftmax(x), labels).
use super::value_info;
use crate::pass::{Contract, CrossEntropyRegion, Pass};
use crate::ctx::Ctx;
use crate::ir::{node_error, Model, NodeExt};
use crate::onnx::{data_type as dt, NodeProto};
use crate::shapes::{self, value_type_of};
use crate::{bail, Result};

/// Where cross-entropy's logits hold the classes, for per-position labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ClassAxis {
    /// Decided by the labels' shape: the layout whose other axes the labels match; without a
    /// labels shape, the last axis when axis 1 has no fixed size and the last has, else axis 1.
    #[default]
    Auto,
    /// Axis 1, as F.cross_entropy takes them: logits [N, C, d₁, …].
    Second,
    /// The last axis: logits [N, d₁, …, C] (`logits.view(-1, C)` in the training code).
    Last,
}

/// How per-position cross-entropy becomes the batch loss (one label per sample: both the mean).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Reduction {
    /// F.cross_entropy(reduction='mean'): the mean over every kept position of the batch. Sample
    /// i's loss is ℓᵢ = Σₜ kᵢₜ·CEᵢₜ / k̄ with kᵢₜ = 1 where the label is kept and k̄ = Σⱼₜ kⱼₜ / N
    /// the batch's mean kept positions per sample, so that mean ℓᵢ is that loss and a sample
    /// weighs in proportion to its kept positions (RW-SAM's weights multiply these ℓᵢ).
    #[default]
    Mean,
    /// Each sample's mean over its kept positions, then the mean over samples (every sample
    /// weighs the same, however many positions it keeps; a sample keeping none adds 0).
    SampleMean,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Loss {
    /// F.cross_entropy; `ignore_index` positions (per-token/pixel labels) count in no average.
    CrossEntropy { label_smoothing: f32, ignore_index: Option<i64>, class_axis: ClassAxis, reduction: Reduction },
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
    /// The labels' sample dims (without the batch axis) when the data is known: they choose
    /// cross-entropy's class axis ([`ClassAxis::Auto`]).
    pub labels_shape: Option<Vec<usize>>,
}

pub const LOSS: &str = "loss";
pub const LOSS_PER_SAMPLE: &str = "loss_per_sample";
pub const LABELS: &str = "labels";
pub const TARGETS: &str = "targets";

/// ℓᵢ = −(1 − ε)·log pᵢ,ₜᵢ − ε·mean_c log pᵢ,c  with p = softmax over the class axis `axis`
/// (1, or the last axis of class-last logits), at every position: labels are the logits' shape
/// without that axis.
fn cross_entropy_per_sample(
    c: &mut Ctx,
    scores_are_log_probs: bool,
    x: &str,
    labels: &str,
    smoothing: f32,
    axis: i64,
) -> String {
    let logp = if scores_are_log_probs { x.to_string() } else { c.g.add("LogSoftmax", &[x]).int("axis", axis).output() };
    let idx = c.unsqueeze(labels, &[axis]);
    let picked = c.g.add("GatherElements", &[&logp, &idx]).int("axis", axis).output();
    let picked = c.squeeze(&picked, &[axis]);
    let nll = c.neg(&picked);
    if smoothing == 0.0 {
        return nll;
    }
    let mean_logp = c.reduce_mean(&logp, &[axis], false);
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
            _ if self.loss == Loss::Output => attach(&out, self.loss, None, &mut ctx, c)?,
            Some(n) if matches!(n.op_type.as_str(), "SoftmaxCrossEntropyLoss" | "NegativeLogLikelihoodLoss") => {
                rewrite_loss_op(&n, &mut ctx, c)?
            }
            Some(n) if out_rank == Some(0) && matches!(n.op_type.as_str(), "ReduceMean" | "ReduceSum") => {
                rewrite_reduction(&n, &mut ctx)?
            }
            _ if out_rank == Some(0) => {
                bail!("the model outputs a scalar '{out}' that onnxsam does not recognise as a batch-reduced loss")
            }
            _ => attach(&out, self.loss, self.labels_shape.as_deref(), &mut ctx, c)?,
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

fn attach(
    logits: &str,
    loss: Loss,
    labels_shape: Option<&[usize]>,
    c: &mut Ctx,
    contract: &mut Contract,
) -> Result<(String, String)> {
    let shape = c.shape(logits)?.clone();
    let shown = crate::shapes::shape_string(&Some(shape.clone()));
    contract.logits = Some(logits.to_string());
    let rest: Vec<i64> = (1..shape.len() as i64).collect();
    let lps = match loss {
        Loss::CrossEntropy { label_smoothing, ignore_index, class_axis, reduction } => {
            if shape.len() < 2 {
                bail!(
                    "cross-entropy needs logits [batch, classes], [batch, classes, d1, …] or [batch, d1, …, classes]; the output '{logits}' has shape {shown} (a regression output: --loss mse; the model's own per-sample loss: --loss output)"
                );
            }
            let axis = if shape.len() == 2 { 1 } else { class_axis_of(&shape, class_axis, labels_shape, logits)? };
            if shape.len() > 2 {
                let why = match (class_axis, labels_shape) {
                    (ClassAxis::Auto, Some(l)) => format!(
                        "the labels [N{}] fit it; --class-axis {} for the other layout",
                        l.iter().map(|n| format!(", {n}")).collect::<String>(),
                        if axis == 1 { "-1" } else { "1" }
                    ),
                    (ClassAxis::Auto, None) => "no labels to go by; --class-axis says otherwise".into(),
                    _ => "--class-axis".into(),
                };
                let mean = match (ignore_index, reduction) {
                    (None, _) => "the mean over all positions".to_string(),
                    (Some(i), Reduction::Mean) => format!("the mean over the positions not labelled {i} (F.cross_entropy's reduction='mean'; --loss-reduction sample-mean weighs samples equally)"),
                    (Some(i), Reduction::SampleMean) => format!("the mean over samples of each sample's mean over its positions not labelled {i} (--loss-reduction sample-mean)"),
                };
                contract.loss_note = Some(format!(
                    "cross-entropy per position, classes on {} of '{logits}' {shown} ({why}); batch loss: {mean}",
                    if axis == 1 { "axis 1".to_string() } else { "the last axis".to_string() }
                ));
            }
            let labels = c.g.fresh(LABELS);
            let mut ldims: Vec<i64> = shape.iter().map(|d| d.known().unwrap_or(-1)).collect();
            ldims.remove(axis);
            ldims[0] = -1;
            c.g.inputs.push(value_info(&labels, dt::INT64, &ldims));
            contract.labels = Some(labels.clone());
            contract.ignore_index = ignore_index;
            contract.class_axis = Some(axis as i64);
            if shape.len() == 2 && ignore_index.is_some() {
                bail!(
                    "--ignore-index applies to per-position labels (logits [batch, classes, d1, …] or [batch, d1, …, classes]); with one label per sample, drop the rows to ignore from the data"
                );
            }
            if shape.len() == 2 {
                let lps = cross_entropy_per_sample(c, false, logits, &labels, label_smoothing, 1);
                if let Some(classes) = shape[1].known() {
                    contract.cross_entropy = Some(CrossEntropyRegion {
                        per_sample: lps.clone(),
                        logits: logits.to_string(),
                        labels: labels.clone(),
                        smoothing: label_smoothing,
                        classes,
                    });
                }
                contract.metric = Some(("correct".into(), hits(c, logits, &labels, 1)));
                lps
            } else {
                contract.position_mean = ignore_index.is_some() && reduction == Reduction::Mean;
                let ce = PositionalCe { axis: axis as i64, rank: shape.len(), smoothing: label_smoothing, ignore_index, reduction };
                positional_cross_entropy(c, contract, logits, &labels, &ce)
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

/// The class axis of per-position logits `shape` (rank ≥ 3): as asked, or (Auto) the layout
/// whose other axes the labels' sample dims match and whose class axis has a fixed size
/// (ambiguous: an error naming --class-axis; matching neither: as without labels).
fn class_axis_of(shape: &crate::shapes::Shape, asked: ClassAxis, labels: Option<&[usize]>, logits: &str) -> Result<usize> {
    let last = shape.len() - 1;
    let shown = crate::shapes::shape_string(&Some(shape.clone()));
    match asked {
        ClassAxis::Second => return Ok(1),
        ClassAxis::Last => return Ok(last),
        ClassAxis::Auto => {}
    }
    // the labels' sample dims as each layout needs them (None: any size)
    let wants = |axis: usize| -> Vec<Option<i64>> {
        shape.iter().enumerate().skip(1).filter(|&(i, _)| i != axis).map(|(_, d)| d.known()).collect()
    };
    let fits = |axis: usize, l: &[usize]| -> bool {
        let w = wants(axis);
        w.len() == l.len() && w.iter().zip(l).all(|(w, &n)| w.map(|w| w as usize == n).unwrap_or(true))
    };
    // no data to go by: classes are the axis with a fixed size where the other has none
    let by_logits = if shape[1].known().is_none() && shape[last].known().is_some() { last } else { 1 };
    let Some(l) = labels else {
        return Ok(by_logits);
    };
    let ld = format!("[N{}]", l.iter().map(|n| format!(", {n}")).collect::<String>());
    // a model's class count is fixed: an axis whose size varies (a sequence) holds no classes
    let fixed = |axis: usize| shape[axis].known().is_some();
    let (second, final_) = match (fits(1, l), fits(last, l)) {
        (true, true) => (fixed(1), fixed(last)),
        other => other,
    };
    match (second, final_) {
        (true, false) => Ok(1),
        (false, true) => Ok(last),
        // labels fitting neither: the layout the logits suggest, and the data binding names
        // the file and the shape it needs
        (false, false) if !fits(1, l) => Ok(by_logits),
        _ => bail!(
            "labels {ld} fit logits '{logits}' {shown} with the classes on axis 1 (PyTorch's [N, C, d1, …]) and on the last axis ([N, d1, …, C], language models); say which with --class-axis 1 or --class-axis -1"
        ),
    }
}

/// 1.0 where the argmax over the class axis of `logits` is the label, else 0.0 (float, labels' shape).
fn hits(c: &mut Ctx, logits: &str, labels: &str, axis: i64) -> String {
    let am = c.g.add("ArgMax", &[logits]).int("axis", axis).int("keepdims", 0).output();
    let eq = c.op("Equal", &[&am, labels]);
    c.mask(&eq)
}

/// Per-position cross-entropy's settings.
struct PositionalCe {
    /// The class axis: 1, or the last (rank − 1).
    axis: i64,
    rank: usize,
    smoothing: f32,
    ignore_index: Option<i64>,
    reduction: Reduction,
}

/// Cross-entropy per position of logits [N, C, d₁, …] or [N, d₁, …, C] with labels [N, d₁, …],
/// positions labelled `ignore_index` left out. Per sample (see [`Reduction`]): Σₜ kᵢₜ·CEᵢₜ / k̄
/// (mean: the batch's mean kept positions per sample; without ignore_index every sample keeps
/// all, and that is each sample's mean) or Σₜ kᵢₜ·CEᵢₜ / max(Σₜ kᵢₜ, 1) (sample-mean). The metric
/// `correct` is formed the same way from the argmax hits, so that its batch mean is the accuracy
/// over kept positions (mean) or the mean of the samples' accuracies (sample-mean).
fn positional_cross_entropy(c: &mut Ctx, contract: &mut Contract, logits: &str, labels: &str, ce: &PositionalCe) -> String {
    // the positions of the per-position tensors [N, d₁, …]
    let positions: Vec<i64> = (1..ce.rank as i64 - 1).collect();
    let (safe, keep) = match ce.ignore_index {
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
    // −log p at every position [N, d₁, …]
    let per_pos = cross_entropy_per_sample(c, false, logits, &safe, ce.smoothing, ce.axis);
    let hit = hits(c, logits, labels, ce.axis);
    // what each sample's kept sum is divided by
    let den = keep.as_ref().map(|k| {
        let counts = c.reduce_sum(k, &positions, false);
        let (den, floor) = match ce.reduction {
            Reduction::Mean => (c.reduce_mean(&counts, &[0], false), c.scalar(1e-12)),
            Reduction::SampleMean => (counts, c.scalar(1.0)),
        };
        c.op("Max", &[&den, &floor])
    });
    let mean_over = |c: &mut Ctx, v: &str| -> String {
        match (&keep, &den) {
            (Some(k), Some(den)) => {
                let kv = c.mul(v, k);
                let num = c.reduce_sum(&kv, &positions, false);
                c.div(&num, den)
            }
            _ => c.reduce_mean(v, &positions, false),
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
    let lps = cross_entropy_per_sample(c, n.op_type == "NegativeLogLikelihoodLoss", &n.input[0], &labels, 0.0, 1);
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
    let lps = cross_entropy_per_sample(c, n.op_type == "NegativeLogLikelihoodLoss", &n.input[0], &n.input[1], 0.0, 1);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shapes::Dim;

    fn shape(dims: &[&str]) -> crate::shapes::Shape {
        dims.iter().map(|d| d.parse::<i64>().map(Dim::Known).unwrap_or_else(|_| Dim::Sym(d.to_string()))).collect()
    }

    /// The class axis comes from the labels' shape; a sequence axis holds no classes; T = C asks
    /// for --class-axis; without labels the fixed-size axis is the classes'.
    #[test]
    fn the_labels_shape_chooses_the_class_axis() {
        let auto = ClassAxis::Auto;
        let at = |s: &[&str], l: Option<&[usize]>| class_axis_of(&shape(s), auto, l, "logits");
        // PyTorch's layout and the language models'
        assert_eq!(at(&["N", "5", "16"], Some(&[16])).unwrap(), 1);
        assert_eq!(at(&["N", "5", "16"], Some(&[5])).unwrap(), 2);
        assert_eq!(at(&["N", "4", "8", "8"], Some(&[8, 8])).unwrap(), 1);
        assert_eq!(at(&["batch", "seq", "48"], Some(&[12])).unwrap(), 2);
        // vocabulary = sequence length: the symbolic axis is the sequence
        assert_eq!(at(&["batch", "seq", "32"], Some(&[32])).unwrap(), 2);
        assert_eq!(at(&["batch", "32", "seq"], Some(&[32])).unwrap(), 1);
        // both fixed and equal: the user says which
        let e = at(&["N", "12", "12"], Some(&[12])).unwrap_err().to_string();
        assert!(e.contains("--class-axis 1 or --class-axis -1"), "{e}");
        // fitting neither: the logits' own suggestion (the binding then names the data file)
        assert_eq!(at(&["N", "5", "16"], Some(&[7])).unwrap(), 1);
        // no labels to go by
        assert_eq!(at(&["batch", "seq", "48"], None).unwrap(), 2);
        assert_eq!(at(&["N", "4", "H", "W"], None).unwrap(), 1);
        // asked
        assert_eq!(class_axis_of(&shape(&["N", "12", "12"]), ClassAxis::Last, Some(&[12]), "l").unwrap(), 2);
        assert_eq!(class_axis_of(&shape(&["N", "12", "12"]), ClassAxis::Second, Some(&[12]), "l").unwrap(), 1);
    }
}
