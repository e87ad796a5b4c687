//! What a training run is: a plain configuration the library trains from. The command line builds
//! it (cli/train.rs), as would any other front end; it holds no argument-parser types.
use std::path::PathBuf;

use graph_passes::step::StepSpec;

use super::schedule::Schedule;
use crate::backend::BackendRequest;
use crate::data::{Format, Normalize};

#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// The ONNX model (its output: logits, or a loss).
    pub model: PathBuf,
    /// Training data (and the test split beside it, when the source has one).
    pub data: PathBuf,
    /// Test data replacing the source's own test split.
    pub test: Option<PathBuf>,
    /// The data format (None: detected from the path).
    pub data_format: Option<Format>,
    /// The label/target column of a CSV/TSV table.
    pub target: Option<String>,
    /// An ImageFolder larger than this (MB, decoded) is decoded batch by batch (None: 2048).
    pub image_cache_mb: Option<u64>,
    pub normalize: Normalize,
    /// The optimizer compiled into the step graph, with the gradient graph's spec.
    pub spec: StepSpec,
    /// Length of the run: `max_steps` wins over `epochs`; one of them is needed.
    pub epochs: Option<usize>,
    pub max_steps: Option<usize>,
    pub batch_size: usize,
    pub lr_schedule: Schedule,
    /// ρ follows the learning rate's schedule (ρ_t = ρ_min + (ρ − ρ_min)·lr_t/lr, GSAM's).
    pub rho_follows_lr: bool,
    pub rho_min: f64,
    /// At the end, tr V of the gradient noise over this many training samples (0: not measured).
    pub trace_v_samples: usize,
    /// Late-phase SAM: the base optimizer before this epoch (1-based), the SAM variant from it.
    pub sam_from_epoch: Option<usize>,
    /// Symmetric label noise: this fraction of the training labels gets another class.
    pub label_noise: Option<f64>,
    pub label_noise_seed: u64,
    /// Random crop (4-pixel padding) and horizontal flip of image samples.
    pub crop_flip: bool,
    /// Fraction of the training data held out for validation.
    pub val_split: Option<f64>,
    pub seed: u64,
    pub drop_last: bool,
    pub keep_checkpoints: usize,
    pub eval_batch_size: usize,
    pub backend: BackendRequest,
    /// The run folder: config.json, metrics, checkpoints/, model.onnx.
    pub run: PathBuf,
    /// Continue the run in `run` from its last checkpoint.
    pub resume: bool,
    /// How the run was asked for (stored in config.json so that it can be resumed).
    pub command_line: Vec<String>,
    /// --distributed mpi: one rank of a data-parallel run (also when an MPI launcher started
    /// several processes).
    pub distributed: bool,
    pub dist_opts: crate::distributed::DistOptions,
}
