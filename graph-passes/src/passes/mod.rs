//! Graph passes, each a type with a name and a `run`, composed in one place (`step.rs`). Every
//! node a pass inserts carries `onnxsam.pass = <name>`.
pub mod autodiff;
pub mod lift_params;
pub mod per_sample_loss;
pub mod train_mode;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::ir::Model;
use crate::onnx::{TensorProto, ValueInfoProto};
use crate::Result;

/// What the rewritten graph expects and returns; filled in by the passes as they run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Contract {
    /// The model's own inputs (data).
    pub data: Vec<String>,
    /// Labels (cross-entropy) or targets (mse).
    pub labels: Option<String>,
    /// Trainable parameters, as graph inputs, in order.
    pub params: Vec<String>,
    /// Parameters that share one exported tensor (kept tied): tensor → the nodes reading it.
    pub tied: BTreeMap<String, Vec<String>>,
    /// Tensors the exporter merged that lift-params split: tensor → the names it now goes by.
    pub split: BTreeMap<String, Vec<String>>,
    /// State fed back each step (BatchNorm running statistics) → the output with its next value.
    pub state_next: BTreeMap<String, String>,
    /// Inputs the runtime fills with uniform [0, 1) noise (dropout masks) → their shape
    /// (−1 stands for the batch size).
    pub random_uniform: BTreeMap<String, Vec<i64>>,
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
    /// Initial values of parameters and state, by name.
    #[serde(skip)]
    pub init: BTreeMap<String, TensorProto>,
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

/// A tensor-typed ValueInfo with the given dims (negative dims become the symbol "N").
pub fn value_info(name: &str, elem_type: i32, dims: &[i64]) -> ValueInfoProto {
    use crate::onnx::{
        tensor_shape_proto::dimension::Value as D, tensor_shape_proto::Dimension, type_proto, TensorShapeProto,
        TypeProto,
    };
    let dim = dims
        .iter()
        .map(|&d| Dimension {
            value: Some(if d < 0 { D::DimParam("N".into()) } else { D::DimValue(d) }),
            denotation: String::new(),
        })
        .collect();
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type,
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: String::new(),
        }),
        ..Default::default()
    }
}

/// A ValueInfo with dtype only (shape left to the runtime).
pub fn value_info_untyped_shape(name: &str, elem_type: i32) -> ValueInfoProto {
    use crate::onnx::{type_proto, TypeProto};
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor { elem_type, shape: None })),
            denotation: String::new(),
        }),
        ..Default::default()
    }
}
