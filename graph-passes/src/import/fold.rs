//! Integer inputs that only shape arithmetic computes (Reshape targets, Slice bounds, axes) and
//! whose values are known before running (shape inference tracks small integer tensors) become
//! constant initializers. Semantics stay; the engines then see constants where the exporters left
//! chains of Shape/Gather/Cast/Concat. Needed for tract: it reads
//! `Cast(Constant(9223372036854775807))` as a Slice end wrongly (the dynamo exporter's `x[:, 0]`
//! without its optimizer, torchvision ViT: a batch of 8 came out as 7 rows).
use std::collections::HashMap;

use crate::ir::Graph;
use crate::onnx::{data_type as dt, tensor};
use crate::shapes::{self, Dim};
use crate::Result;

/// The input slots that must be constant for the engines (shape, axes, bounds).
fn shape_slots(op: &str) -> &'static [usize] {
    match op {
        "Reshape" | "Expand" | "Tile" | "Unsqueeze" | "Squeeze" | "Split" => &[1],
        "Slice" => &[1, 2, 3, 4],
        "Pad" => &[1, 3],
        "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceSumSquare" | "ReduceL1"
        | "ReduceL2" | "ReduceLogSumExp" => &[1],
        "ConstantOfShape" => &[0],
        "Range" => &[0, 1, 2],
        _ => &[],
    }
}

/// Replaces computed integer inputs with known values by initializers; returns how many.
pub fn fold_known_integer_inputs(g: &mut Graph) -> Result<usize> {
    let s = shapes::infer(g)?;
    let produced: HashMap<String, usize> = g.producers().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    let mut folded: HashMap<String, String> = HashMap::new();
    let mut count = 0;
    for i in 0..g.nodes.len() {
        let slots = shape_slots(&g.nodes[i].op_type);
        for &k in slots {
            let Some(v) = g.nodes[i].input.get(k).filter(|v| !v.is_empty()).cloned() else { continue };
            if !produced.contains_key(&v) {
                continue; // already a constant or a graph input
            }
            if g.nodes[produced[&v]].op_type == "Constant" {
                continue;
            }
            let Some(t) = s.get(&v) else { continue };
            if t.dtype != dt::INT64 {
                continue;
            }
            let Some(vals) = s.values.get(&v).and_then(|d| d.iter().map(Dim::known).collect::<Option<Vec<i64>>>())
            else {
                continue;
            };
            let dims: Vec<i64> = match t.shape.as_deref() {
                Some([]) if vals.len() == 1 => vec![],
                Some([_]) => vec![vals.len() as i64],
                _ => continue,
            };
            let name = match folded.get(&v) {
                Some(n) => n.clone(),
                None => {
                    let n = g.add_initializer(&format!("{v}.const"), tensor::from_i64("", &dims, &vals));
                    folded.insert(v.clone(), n.clone());
                    n
                }
            };
            g.nodes[i].input[k] = name;
            count += 1;
        }
    }
    if count > 0 {
        g.remove_dead();
    }
    Ok(count)
}
