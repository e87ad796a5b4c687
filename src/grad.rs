//! Running gradient graphs: feeding parameters, state, data, labels and random inputs.
use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};
use graph_passes::ir::Model;
use graph_passes::onnx::tensor::dtype_name;
use graph_passes::onnx::ValueInfoProto;
use graph_passes::onnx::{data_type as dt, tensor, TensorProto};
use graph_passes::pass::Contract;
use graph_passes::shapes::{self, shape_string, value_type_of, Dim};

pub use crate::random::{random_words, uniform};
use crate::tensor::{Data, HostTensor};

/// A TensorProto's value as a host tensor (float32, int64 and a few others).
pub fn host_from_proto(t: &TensorProto) -> Result<HostTensor> {
    let shape: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    Ok(match t.data_type {
        dt::FLOAT => HostTensor::f32(&shape, tensor::to_f32(t)?),
        dt::INT64 => HostTensor::i64(&shape, tensor::to_i64(t)?),
        dt::DOUBLE => HostTensor { shape, data: Data::F64(tensor::to_f64(t)?) },
        other => bail!("tensor '{}' of type {} cannot be fed", t.name, tensor::dtype_name(other)),
    })
}

pub fn proto_from_host(name: &str, t: &HostTensor) -> Result<TensorProto> {
    let dims: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
    Ok(match &t.data {
        Data::F32(v) => tensor::from_f32(name, &dims, v),
        Data::I64(v) => tensor::from_i64(name, &dims, v),
        _ => bail!("'{name}': only float32 and int64 values are stored"),
    })
}

/// The batch's arrays: model inputs by name (a lone data input may be called `x`) and labels `y`.
pub struct Batch {
    pub data: Vec<(String, HostTensor)>,
    /// Labels or targets; None for a model that computes its own loss.
    pub labels: Option<HostTensor>,
}

impl Batch {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.data.first().map(|(_, t)| t.shape[0]).or(self.labels.as_ref().map(|l| l.shape[0])).unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}


/// What a batch weighs where batches are combined (evaluation batches, micro-batches, ranks):
/// its kept positions where each graph run's loss is the mean over the kept positions of its
/// batch (Contract::position_mean), else its rows.
pub fn batch_weight(c: &Contract, b: &Batch) -> f64 {
    match (c.position_mean, c.ignore_index, &b.labels) {
        (true, Some(ii), Some(HostTensor { data: crate::tensor::Data::I64(y), .. })) => {
            y.iter().filter(|&&l| l != ii).count() as f64
        }
        _ => b.len() as f64,
    }
}

/// A shape as users read it: [24, 16].
fn dims_of(shape: &[usize]) -> String {
    format!("[{}]", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))
}

/// The sample dims of a batch .npz's labels (`y`, `labels` or `targets`), which choose
/// cross-entropy's class axis; None without labels.
pub fn labels_shape(path: &std::path::Path) -> Result<Option<Vec<usize>>> {
    for k in ["y", "labels", "targets"] {
        if let Some(t) = crate::tensor::read_npz_array(path, k)? {
            return Ok(Some(t.shape.get(1..).unwrap_or(&[]).to_vec()));
        }
    }
    Ok(None)
}

/// Matches a batch .npz to the graph's contract: the one binding path datasets take
/// (data::Dataset::bind: arrays by input name or a lone array, dtypes converted, sample shapes,
/// token ids and labels checked against the loss), the labels found under `y`, `labels`,
/// `targets` or the graph's own label name.
pub fn batch_from_npz(
    source: &str,
    model: &Model,
    c: &Contract,
    mut arrays: BTreeMap<String, HostTensor>,
) -> Result<Batch> {
    let y = c.labels.as_deref().and_then(|l| ["y", "labels", "targets", l].iter().find_map(|k| arrays.remove(*k)));
    let d = crate::data::Dataset {
        columns: arrays.into_iter().collect(),
        y,
        classes: 0,
        class_names: vec![],
        source: source.to_string(),
        lazy: None,
    };
    // the class count the labels are checked against: the logits' class axis
    let s = shapes::infer(&model.graph).map_err(|e| anyhow!("{e}"))?;
    let axis = c.class_axis.unwrap_or(1) as usize;
    let classes = c.logits.as_deref().and_then(|l| s.shape(l)).and_then(|l| l.get(axis)?.known()).map(|k| k as usize);
    let (inputs, target) = crate::train::binding(model, c, classes);
    let d = d.bind(&inputs, &target, "the model")?;
    let all: Vec<usize> = (0..d.len()).collect();
    d.try_batch(&all)
}

/// How `feeds_with` fills the inputs besides data, labels, parameters and state.
#[derive(Default)]
pub struct FeedOptions<'a> {
    /// Values of the hyperparameter inputs.
    pub hyper: Option<&'a BTreeMap<String, f32>>,
    pub seed: u64,
    /// The optimizer step, which keys random inputs (dropout noise, directions) besides their
    /// name; None keys them by name alone (`grad`, `gradcheck`).
    pub step: Option<u64>,
    /// Keys the dropout noise instead of `step` where given (a micro-batch of an accumulated
    /// step draws masks of its own, while the step's directions stay one).
    pub noise_step: Option<u64>,
    /// Inputs fed as given instead of generated (e.g. a reference's directions).
    pub fixed: Option<&'a BTreeMap<String, HostTensor>>,
    /// Further inputs, fed as they are (they replace carried state of the same name).
    pub extra: &'a [(String, HostTensor)],
    /// Inputs the engine already holds between runs: not fed.
    pub held: &'a [String],
}

/// Every input of a compiled graph: data, labels, parameters, state, hyperparameters, random
/// directions and noise.
pub fn feeds_with(
    c: &Contract,
    batch: Option<&Batch>,
    values: &BTreeMap<String, HostTensor>,
    o: &FeedOptions,
) -> Result<Vec<(String, HostTensor)>> {
    let mut f: Vec<(String, HostTensor)> = Vec::new();
    if let Some(batch) = batch {
        f.extend(batch.data.iter().filter(|(k, _)| c.data.contains(k)).cloned());
        if let (Some(l), Some(t)) = (&c.labels, &batch.labels) {
            f.push((l.clone(), t.clone()));
        }
    }
    let state = c.state_next.keys().chain(c.opt_state_next.keys()).chain(&c.state);
    for name in c.params.iter().chain(state) {
        if o.held.contains(name) || o.extra.iter().any(|(e, _)| e == name) || c.write_only.contains(name) {
            continue;
        }
        let v = values.get(name).ok_or_else(|| anyhow!("no value for '{name}'"))?;
        f.push((name.clone(), v.clone()));
    }
    for name in c.hyper.keys() {
        let v = o.hyper.and_then(|h| h.get(name)).ok_or_else(|| anyhow!("no value for hyperparameter '{name}'"))?;
        f.push((name.clone(), HostTensor::f32(&[], vec![*v])));
    }
    for d in &c.directions {
        let p = values.get(&d.param).ok_or_else(|| anyhow!("no value for '{}'", d.param))?;
        let signs = crate::random::rademacher_signs(o.seed, o.step.unwrap_or(0), d.q, &d.param, p.len());
        f.push((d.input.clone(), HostTensor { shape: p.shape.clone(), data: Data::Bool(signs) }));
    }
    let batch_size = batch.map(|b| b.len()).unwrap_or(0);
    if let (Some(bn), Some(1)) = (&c.batch_norm_over_batch_only, batch.map(|b| b.len())) {
        bail!(
            "a batch of one sample: {bn} would normalize one value per channel (PyTorch: 'Expected more than 1 value per channel when training'); use batches of at least 2 samples (train: --drop-last drops a last batch of 1)"
        );
    }
    for (name, dims) in &c.random_uniform {
        let shape: Vec<usize> = match c.random_shapes.get(name) {
            Some(spelled) => spelled.iter().map(|d| size_of(c, batch, d)).collect::<Result<_>>()?,
            None => dims.iter().map(|&d| if d < 0 { batch_size } else { d as usize }).collect(),
        };
        let n = shape.iter().product();
        let key = match o.noise_step.or(o.step) {
            Some(step) => format!("{name}/{step}"),
            None => name.clone(),
        };
        f.push((name.clone(), HostTensor::f32(&shape, uniform(o.seed, &key, n))));
    }
    f.extend(o.extra.iter().cloned());
    for (k, v) in o.fixed.into_iter().flatten() {
        if let Some(slot) = f.iter_mut().find(|(n, _)| n == k) {
            slot.1 = v.clone();
        }
    }
    Ok(f)
}

/// A size a noise input's shape spells out: a number, or a product of data-input sizes
/// (`2·seq`) read off the batch.
fn size_of(c: &Contract, batch: Option<&Batch>, spelled: &str) -> Result<usize> {
    let mut size = 1usize;
    for factor in spelled.split(graph_passes::shapes::MONOMIAL_SEP) {
        if let Ok(k) = factor.parse::<usize>() {
            size *= k;
            continue;
        }
        let (input, axis) = c.symbols.get(factor).ok_or_else(|| anyhow!("no input carries the size '{factor}'"))?;
        let t = batch
            .and_then(|b| b.data.iter().find(|(n, _)| n == input))
            .map(|(_, t)| t)
            .ok_or_else(|| anyhow!("the size '{factor}' is input '{input}'s, which this run does not feed"))?;
        size *= t.shape.get(*axis).copied().ok_or_else(|| anyhow!("input '{input}' has no axis {axis}"))?;
    }
    Ok(size)
}

/// Every input of the gradient graph: data, labels, parameters, state, random noise.
pub fn feeds(
    c: &Contract,
    batch: &Batch,
    values: &BTreeMap<String, HostTensor>,
    seed: u64,
) -> Result<Vec<(String, HostTensor)>> {
    feeds_with(c, Some(batch), values, &FeedOptions { seed, ..Default::default() })
}

/// Prints what the import pass warns about (one line each, on stderr): training a graph that is
/// not quite PyTorch's must never be silent.
pub fn warn_import(c: &Contract) {
    for w in &c.import.warnings {
        crate::error::say(format!("onnxsam: warning: {w}"));
    }
}

/// Where the file has no Dropout: an eval-mode export removes nn.Dropout (and stochastic depth),
/// so the network trains without it; said once by `inspect` and `train`.
pub fn dropout_note(model: &Model) -> Option<String> {
    let g = &model.graph;
    let random = |op: &str| op == "Dropout" || graph_passes::ops::RANDOM_OPS.contains(&op);
    if g.nodes.iter().any(|n| random(&n.op_type)) || model.meta.producer_name != "pytorch" {
        return None;
    }
    Some(
        "the file has no Dropout: an eval-mode export (model.eval(), as the PyTorch docs export) removes nn.Dropout and stochastic depth, so onnxsam trains without them; if the PyTorch model has any, export after model.train() to keep them (torch.onnx.export(..., dynamo=True), or dynamo=False with training=torch.onnx.TrainingMode.TRAINING)".into(),
    )
}

/// Initial values of parameters and state from the contract.
pub fn initial_values(c: &Contract) -> Result<BTreeMap<String, HostTensor>> {
    c.init.iter().map(|(k, t)| Ok((k.clone(), host_from_proto(t)?))).collect()
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
                        "{source}: array '{}' has shape {} but the model's input '{}' is {}",
                        v.name,
                        dims_of(&t.shape),
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


/// The sizes a graph runs at, by data input: each input's array in `path` (a .npz by input
/// name, or a lone input's `x`; a folder of .npy files likewise), with the batch axis set to
/// `batch` where given (train's per-step batch). None where the data does not say.
pub fn data_input_dims(
    path: &std::path::Path,
    model: &Model,
    batch: Option<usize>,
) -> Result<Option<BTreeMap<String, Vec<i64>>>> {
    let inputs: Vec<String> = model.graph.data_inputs().iter().map(|v| v.name.clone()).collect();
    let read = |key: &str| -> Result<Option<HostTensor>> {
        if path.is_dir() {
            let p = path.join(format!("{key}.npy"));
            return if p.exists() { crate::tensor::read_npy(&p).map(Some) } else { Ok(None) };
        }
        if path.extension().and_then(|e| e.to_str()) != Some("npz") {
            return Ok(None);
        }
        crate::tensor::read_npz_array(path, key)
    };
    let mut out = BTreeMap::new();
    for name in &inputs {
        let t = match read(name)? {
            Some(t) => t,
            None if inputs.len() == 1 => match read("x")? {
                Some(t) => t,
                None => return Ok(None),
            },
            None => return Ok(None),
        };
        let mut dims: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
        if let (Some(b), Some(d0)) = (batch, dims.first_mut()) {
            *d0 = b as i64;
        }
        out.insert(name.clone(), dims);
    }
    Ok(Some(out))
}

/// The node a rule's error names ("op Pad (node node_pad)" of "op Pad (node node_pad): pads must
/// be constant"); the whole error where it names none.
pub fn rule_node(why: &str) -> &str {
    match why.find("): ") {
        Some(i) => &why[..i + 1],
        None => why,
    }
}

/// A graph compiled at the sizes it runs at, because a rule needs a size the file leaves to run
/// time (graph_passes::sizes).
pub struct FixedSizes {
    /// The model with those sizes in its inputs.
    pub model: Model,
    /// The rule's error at the file's own sizes.
    pub why: String,
    pub dims: BTreeMap<String, Vec<i64>>,
}

impl FixedSizes {
    /// The node whose rule needed a size: "op Pad (node node_pad)", from the rule's error.
    pub fn node(&self) -> &str {
        rule_node(&self.why)
    }

    /// What the log says about it.
    pub fn note(&self) -> String {
        format!(
            "sizes: {} needs a size the file computes from its inputs' shape; compiled for {} (the data's), and every step runs at exactly these sizes",
            self.node(),
            graph_passes::sizes::describe(&self.dims)
        )
    }
}

/// Compiles the model as the file gives it; where that fails and it compiles at `sizes` (the
/// data's, read only then), those graphs and how they were made. The file's own error where the
/// sizes do not help.
pub fn compile_at_sizes<T>(
    model: &Model,
    sizes: impl FnOnce() -> Result<Option<BTreeMap<String, Vec<i64>>>>,
    compile: impl Fn(&Model) -> graph_passes::Result<T>,
) -> std::result::Result<(T, Option<FixedSizes>), graph_passes::Error> {
    let first = match compile(model) {
        Ok(t) => return Ok((t, None)),
        Err(e) => e,
    };
    let Ok(Some(dims)) = sizes() else { return Err(first) };
    let fixed = graph_passes::sizes::specialize(model, &dims);
    match compile(&fixed) {
        Ok(t) => Ok((t, Some(FixedSizes { model: fixed, why: first.to_string(), dims }))),
        Err(_) => Err(first),
    }
}
