//! Sequences (lists of tensors), as the exporters write `torch.split`/`chunk`/`unbind`/
//! `tensor_split` and `torch.cat`/`stack` of lists: no engine differentiates a sequence, and
//! onnxsam does not either. Import writes every sequence whose length and element sizes are known
//! before running as the tensors it holds (import/sequences.rs): SplitToSequence becomes Split
//! (and Squeeze for keepdims = 0), SequenceAt the element, ConcatFromSequence a Concat (of
//! Unsqueezed elements for new_axis = 1), SequenceLength a constant. Those ops have rules, so the
//! gradient of a sequence is theirs: dx of a split is the pieces' gradients concatenated, the
//! gradient of a concatenation is split back.
use super::{op, Family, Gradient as G, OpDef};
use crate::ir::{Graph, NodeExt};
use crate::onnx::{data_type as dt, NodeProto};
use crate::shapes::{set, Shapes};
use crate::Result;

pub const FAMILY: Family = Family { name: "sequence", ops };

const WHY: &str = "a sequence whose length or element sizes are known only at run time; torch.onnx.export(..., dynamo=True) with its optimizer on (the default) writes lists of tensors as tensors";
const NOTE: &str = "written as tensors at import where its length and element sizes are known before running";

/// The ops of the family (import/sequences.rs rewrites them).
pub const SEQUENCE_OPS: [&str; 8] = [
    "SplitToSequence",
    "SequenceAt",
    "SequenceConstruct",
    "SequenceEmpty",
    "SequenceInsert",
    "SequenceErase",
    "SequenceLength",
    "ConcatFromSequence",
];

fn ops() -> Vec<OpDef> {
    SEQUENCE_OPS
        .into_iter()
    .map(|name| op(name, "11+", sequence_shape, G::Missing(WHY)).notes(NOTE))
    .collect()
}

/// The element type of a sequence value: the type of the tensors that went into it.
fn element_dtype(g: &Graph, s: &Shapes, seq: &str) -> Option<i32> {
    let n = g.nodes.iter().find(|n| n.output.iter().any(|o| o == seq))?;
    match n.op_type.as_str() {
        "SplitToSequence" | "SequenceConstruct" => s.get(n.input.first()?).map(|t| t.dtype),
        "SequenceInsert" => s.get(n.input.get(1)?).map(|t| t.dtype),
        "SequenceErase" => element_dtype(g, s, n.input.first()?),
        "SequenceEmpty" => Some(n.attr_i("dtype", dt::FLOAT as i64) as i32),
        _ => None,
    }
}

/// Tensors out of a sequence get its element type, of unknown shape; sequence values have no
/// tensor type.
fn sequence_shape(g: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    match n.op_type.as_str() {
        "SequenceLength" => set(s, &n.output[0], dt::INT64, Some(vec![])),
        "SequenceAt" | "ConcatFromSequence" => {
            let dtype = element_dtype(g, s, &n.input[0]).unwrap_or(dt::FLOAT);
            set(s, &n.output[0], dtype, None)
        }
        _ => {}
    }
    Ok(())
}
