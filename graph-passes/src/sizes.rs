//! Sizes known only at run time. Some models compute a size a gradient rule needs from their
//! input's shape (`F.pad(y, (0, (4 - y.shape[-1] % 4) % 4))`, `y[: y.shape[0] // 2]`): the
//! file leaves it to run time, so the rule has no number. Once the sizes a graph will run at are
//! known (the data's), the file's symbolic dims can be given those values; import then computes
//! every such size (import/fold.rs) and the rules have their numbers. The graph is then for
//! those sizes only.
use std::collections::BTreeMap;

use crate::ir::Model;
use crate::onnx::proto::tensor_shape_proto::dimension;
use crate::onnx::proto::type_proto;

/// The model with its data inputs' dims set to `dims` (by input name; inputs not named keep
/// theirs). Only symbolic dims change: a dim the file fixes at another value is an error the
/// caller's data check reports, so it is left as it is.
pub fn specialize(model: &Model, dims: &BTreeMap<String, Vec<i64>>) -> Model {
    let mut m = model.clone();
    for v in m.graph.inputs.iter_mut() {
        let Some(want) = dims.get(&v.name) else { continue };
        let Some(type_proto::Value::TensorType(tt)) = v.r#type.as_mut().and_then(|t| t.value.as_mut()) else {
            continue;
        };
        let Some(shape) = tt.shape.as_mut() else { continue };
        if shape.dim.len() != want.len() {
            continue;
        }
        for (d, &w) in shape.dim.iter_mut().zip(want) {
            if !matches!(d.value, Some(dimension::Value::DimValue(_))) {
                d.value = Some(dimension::Value::DimValue(w));
            }
        }
    }
    m
}

/// `dims` as users read them: x [16, 2, 9], mask [16, 9].
pub fn describe(dims: &BTreeMap<String, Vec<i64>>) -> String {
    dims.iter()
        .map(|(k, v)| format!("{k} [{}]", v.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Sizes to try a model at when no data says them: its data inputs' dims, symbolic ones set to
/// 2 on the batch axis and `size` elsewhere (inspect tries a few: a long kernel needs a long
/// input).
pub fn probe_dims(model: &Model, size: i64) -> BTreeMap<String, Vec<i64>> {
    let mut out = BTreeMap::new();
    for v in model.graph.data_inputs() {
        let Some(t) = crate::shapes::value_type_of(&v.r#type) else { continue };
        let Some(shape) = t.shape else { continue };
        let dims = shape.iter().enumerate().map(|(i, d)| d.known().unwrap_or(if i == 0 { 2 } else { size })).collect();
        out.insert(v.name.clone(), dims);
    }
    out
}
