//! What a pass is and what the passes fill in: the `Pass` trait and `run_all`, the `Contract`
//! (the rewritten graph's inputs, outputs and regions) and the import report it carries. Its own
//! module, below import/ and passes/, so that neither depends on the other for it.
use std::collections::BTreeMap;

use serde::Serialize;

use crate::ir::Model;
use crate::onnx::{NodeProto, TensorProto};
use crate::Result;

/// What the rewritten graph expects and returns; filled in by the passes as they run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Contract {
    /// The model's own inputs (data).
    pub data: Vec<String>,
    /// Labels (cross-entropy) or targets (mse).
    pub labels: Option<String>,
    /// The task metric per sample [batch] and its name: `correct` (the fraction of a sample's
    /// positions classified right) or `abs_error` (regression: mean |y − t|).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<(String, String)>,
    /// Cross-entropy's ignore_index: labels of this value are padding, not classes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignore_index: Option<i64>,
    /// Cross-entropy's class axis in the logits: 1, or the last axis (classes last: language
    /// models).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class_axis: Option<i64>,
    /// Per-position labels with ignore_index under the default reduction: each graph run's loss
    /// is the mean over the kept positions of its batch, so batches (micro-batches, ranks,
    /// evaluation batches) combine in proportion to their kept positions, not their rows.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub position_mean: bool,
    /// How the loss reads per-position logits, for the log: the class axis and why, the reduction.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_note: Option<String>,
    /// Trainable parameters, as graph inputs, in order.
    pub params: Vec<String>,
    /// What the import pass found: PyTorch parameters and buffers, merges undone, layouts.
    pub import: ImportReport,
    /// State fed back each step (BatchNorm running statistics) → the output with its next value.
    pub state_next: BTreeMap<String, String>,
    /// State read but not updated (running statistics of an evaluation graph).
    pub state: Vec<String>,
    /// Inputs the runtime fills with uniform [0, 1) noise (dropout masks) → their shape
    /// (−1 stands for the batch size, or for a size `random_shapes` spells out).
    pub random_uniform: BTreeMap<String, Vec<i64>>,
    /// The shapes of noise inputs with sizes known only at run time beyond the batch: each size a
    /// number or a product of data-input sizes (`2·seq`), the symbols as `symbols` defines them.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub random_shapes: BTreeMap<String, Vec<String>>,
    /// A size symbol of the data inputs → (input, axis) that carries it at run time.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub symbols: BTreeMap<String, (String, usize)>,
    pub loss: Option<String>,
    pub loss_per_sample: Option<String>,
    pub logits: Option<String>,
    /// Optional per-sample weight input of a weighted loss.
    pub sample_weights: Option<String>,
    /// parameter → its gradient output
    pub grads: BTreeMap<String, String>,
    /// The softmax cross-entropy whose gradient autodiff writes in closed form.
    #[serde(skip)]
    pub cross_entropy: Option<CrossEntropyRegion>,
    /// Train-mode BatchNorms whose gradient autodiff writes in closed form.
    #[serde(skip)]
    pub batch_norms: Vec<BatchNormRegion>,
    /// A train-mode BatchNorm that normalizes over the batch axis alone (BatchNorm1d, or 1×1
    /// maps): a batch of one sample gives it one value per channel (PyTorch refuses that).
    #[serde(skip)]
    pub batch_norm_over_batch_only: Option<String>,
    /// Initial values of parameters and state, by name.
    #[serde(skip)]
    pub init: BTreeMap<String, TensorProto>,

    // --- training-step graphs (fd-branch, reweight, sam-update) ---
    /// The training-form forward (lift-params, train-mode, per-sample-loss), in topological
    /// order: what fd-branch and sam-update clone at perturbed parameters.
    #[serde(skip)]
    pub forward: Vec<NodeProto>,
    /// Hyperparameter inputs (scalars fed each step) → default value.
    pub hyper: BTreeMap<String, f32>,
    /// Rademacher direction inputs of the finite-difference branch.
    pub directions: Vec<Direction>,
    /// Per-sample scores sᵢ (fd-branch output, or the `scores` input with --score exact).
    pub scores: Option<String>,
    /// True when `scores` is an input the runtime fills with exact per-sample gradient norms.
    pub scores_fed: bool,
    /// Gibbs weights pᵢ (reweight).
    pub weights: Option<String>,
    /// The loss the ascent gradient differentiates (Σ pᵢ·ℓᵢ with reweight, else `loss`).
    #[serde(skip)]
    pub ascent_loss: Option<String>,
    /// Values autodiff treats as constants (the Gibbs weights).
    #[serde(skip)]
    pub stop_gradient: Vec<String>,
    /// Optimizer state inputs (momentum buffers, m-SAM gradient accumulators) → output with their next value.
    pub opt_state_next: BTreeMap<String, String>,
    /// Optimizer state this graph writes without reading (LookSAM's g_v on a full step): keys of
    /// `opt_state_next` that are not inputs, so nothing feeds them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub write_only: Vec<String>,
    /// Parameter → output with its next value.
    pub params_next: BTreeMap<String, String>,
    /// Diagnostic name → output (METHOD.md: loss, correct, grad_norm, sharpness, …).
    pub diagnostics: BTreeMap<String, String>,
}

/// A random-direction input z_q for one parameter tensor (fd-branch).
#[derive(Clone, Debug, Serialize)]
pub struct Direction {
    pub input: String,
    pub param: String,
    pub q: usize,
}

/// ℓ = per_sample, computed from logits [N, C] and labels by softmax cross-entropy with label
/// smoothing: d logits = dℓ·(softmax(logits) − (1 − ε)·onehot(labels) − ε/C).
#[derive(Clone, Debug)]
pub struct CrossEntropyRegion {
    pub per_sample: String,
    pub logits: String,
    pub labels: String,
    pub smoothing: f32,
    pub classes: i64,
}

/// The values of a decomposed train-mode BatchNormalization (see train_mode.rs).
#[derive(Clone, Debug)]
pub struct BatchNormRegion {
    pub x: String,
    pub scale: String,
    pub bias: String,
    pub y: String,
    /// x − μ
    pub centered: String,
    /// √(σ² + ε), [1, C, 1, …]
    pub std: String,
    /// γ/√(σ² + ε), [1, C, 1, …]
    pub factor: String,
    /// elements per channel (float scalar)
    pub count: String,
    pub axes: Vec<i64>,
    pub rank: i64,
}

pub trait Pass {
    fn name(&self) -> &'static str;
    fn run(&self, m: &mut Model, c: &mut Contract) -> Result<()>;
}

/// Runs passes in order, tagging each one's nodes with its name.
pub fn run_all(m: &mut Model, c: &mut Contract, passes: &[&dyn Pass]) -> Result<()> {
    for p in passes {
        m.graph.pass = Some(p.name().to_string());
        let r = p.run(m, c);
        m.graph.pass = None;
        r?;
    }
    Ok(())
}

/// How the file stores a PyTorch tensor when not under its name and in its layout.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Stored {
    /// The initializer (or Identity alias) in the file.
    pub name: String,
    /// The file holds PyTorch's tensor transposed by this permutation (empty: same layout).
    pub perm: Vec<i64>,
}

/// What import found and did; `inspect` prints it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ImportReport {
    /// dynamo, legacy (TorchScript) or other.
    pub exporter: String,
    /// Parameters (trainable), by PyTorch name, in the order the graph first reads them.
    pub params: Vec<String>,
    /// Buffers (BatchNorm running statistics and others PyTorch does not train).
    pub buffers: Vec<String>,
    /// Stored tensor → the distinct PyTorch tensors it stood for, now apart.
    pub untied: BTreeMap<String, Vec<String>>,
    /// Parameter → the nodes that read it, for tensors PyTorch itself uses several times (or all
    /// shared tensors with `Sharing::KeepTied`).
    pub tied: BTreeMap<String, Vec<String>>,
    /// PyTorch tensor → how the file stores it, where not under its own name and layout.
    pub stored_as: BTreeMap<String, Vec<Stored>>,
    /// A tied parameter named after its first use → the name the exporter gave it (both are its
    /// names in PyTorch's state_dict; named_parameters() lists the first).
    pub aliases: BTreeMap<String, String>,
    /// BatchNorm layers the exporter folded into convolutions.
    pub folded_bn: Vec<String>,
    /// Zero biases the dynamo exporter's optimizer removed (`RemoveOptionalBiasFromConv`/`Gemm`),
    /// given back to their layers: PyTorch trains them.
    pub restored: Vec<String>,
    /// What is worth knowing about the file (inspect prints these; nothing is wrong).
    pub notes: Vec<String>,
    /// Float initializers computed at export that name no PyTorch tensor (kept constant).
    pub unnamed: Vec<String>,
    /// Embedding table → its padding row (nn.Embedding's padding_idx: never trained).
    pub padding_rows: BTreeMap<String, i64>,
    /// Embedding tables whose padding row the file does not say (legacy exports).
    pub padding_unknown: Vec<String>,
    /// BatchNorm layers with momentum 1 in the file: PyTorch's momentum=0, or momentum=None (a
    /// cumulative average the file does not carry); the file cannot say which.
    pub momentum_unknown: Vec<String>,
    /// Embedding tables whose gradient is scaled by inverse index frequency (scale_grad_by_freq).
    pub scale_grad_by_freq: Vec<String>,
    /// How Clip nodes the file does not describe were read (the gradient at a bound).
    pub clip: Option<String>,
    /// What onnxsam knows it trains differently from PyTorch, and cannot help (the exporter
    /// dropped it): each also a warning.
    pub differences: Vec<String>,
    pub warnings: Vec<String>,
}

/// A parameter-name pattern (`--freeze`, read by import and lift-params): `*` matches any run,
/// `?` one character.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn rec(p: &[char], s: &[char]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some('*'), _) => rec(&p[1..], s) || (!s.is_empty() && rec(p, &s[1..])),
            (Some('?'), Some(_)) => rec(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => rec(&p[1..], &s[1..]),
            _ => false,
        }
    }
    let (p, s): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    rec(&p, &s)
}
