//! Sources of values no gradient flows through: constants, shapes, ranges, random tensors; and
//! control flow and data-dependent ops onnxsam does not differentiate.
use super::{op, Family, Gradient as G, OpDef};
use crate::ir::{node_error, Graph, NodeExt};
use crate::onnx::{data_type as dt, tensor, NodeProto};
use crate::shapes::{data_dependent, input_type, ints_of, set, Dim, Shapes};
use crate::{bail, Result};

pub const FAMILY: Family = Family { name: "source", ops };

fn ops() -> Vec<OpDef> {
    vec![
        op("Constant", "13+", constant_shape, G::None),
        op("ConstantOfShape", "9+", constant_of_shape_shape, G::None),
        op("Shape", "15+", shape_shape, G::None),
        op("Size", "13+", size_shape, G::None),
        op("Range", "11+", range_shape, G::None),
        op("RandomUniformLike", "1+", random_like_shape, G::None).no_tract("tract checks the node name ends in 'Like'"),
        op("RandomNormalLike", "1+", random_like_shape, G::None).no_tract("tract checks the node name ends in 'Like'"),
        op("Bernoulli", "15+", random_like_shape, G::None).no_tract("not implemented in tract"),
        op("If", "13+", data_dependent, G::Missing("control flow is not differentiated")),
        op("Loop", "13+", data_dependent, G::Missing("control flow is not differentiated")),
        op("Scan", "16+", data_dependent, G::Missing("control flow is not differentiated")),
        op("Unique", "11+", data_dependent, G::None),
        op("NonMaxSuppression", "11+", data_dependent, G::None),
    ]
}

fn size_shape(_: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    set(s, &n.output[0], dt::INT64, Some(vec![]));
    Ok(())
}

fn constant_shape(_: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let out0 = n.output.first().cloned().unwrap_or_default();
    let a = n.attribute.first().ok_or_else(|| node_error(n, "Constant without a value"))?;
    match a.name.as_str() {
        "value" => {
            let t = a.t.as_ref().ok_or_else(|| node_error(n, "Constant value is not a tensor"))?;
            set(s, &out0, t.data_type, Some(t.dims.iter().map(|&d| Dim::Known(d)).collect()));
            if matches!(t.data_type, dt::INT64 | dt::INT32) && t.dims.len() <= 1 && tensor::numel(t) <= 64 {
                if let Ok(v) = tensor::to_i64(t) {
                    s.values.insert(out0.clone(), v.into_iter().map(Dim::Known).collect());
                }
            }
        }
        "value_int" => {
            set(s, &out0, dt::INT64, Some(vec![]));
            s.values.insert(out0.clone(), vec![Dim::Known(a.i.unwrap_or(0))]);
        }
        "value_ints" => {
            set(s, &out0, dt::INT64, Some(vec![Dim::Known(a.ints.len() as i64)]));
            s.values.insert(out0.clone(), a.ints.iter().map(|&v| Dim::Known(v)).collect());
        }
        "value_float" => set(s, &out0, dt::FLOAT, Some(vec![])),
        "value_floats" => set(s, &out0, dt::FLOAT, Some(vec![Dim::Known(a.floats.len() as i64)])),
        other => bail!("{}: Constant attribute '{other}' is not supported", n.describe()),
    }
    Ok(())
}

fn shape_shape(_: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let out0 = n.output.first().cloned().unwrap_or_default();
    let t = input_type(s, n, 0)?;
    match t.shape {
        Some(shape) => {
            let r = shape.len() as i64;
            let clampi = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
            let start = clampi(n.attr_i("start", 0));
            let end = clampi(n.attr_i("end", r));
            let v: Vec<Dim> = shape[start..end.max(start)].to_vec();
            set(s, &out0, dt::INT64, Some(vec![Dim::Known(v.len() as i64)]));
            s.values.insert(out0.clone(), v);
        }
        None => set(s, &out0, dt::INT64, None),
    }
    Ok(())
}

fn constant_of_shape_shape(_: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let out0 = n.output.first().cloned().unwrap_or_default();
    let dtype = n.attr("value").and_then(|a| a.t.as_ref()).map(|t| t.data_type).unwrap_or(dt::FLOAT);
    let shape = s.values.get(&n.input[0]).cloned().or_else(|| {
        let r = s.shape(&n.input[0])?.first()?.known()?;
        Some((0..r).map(|i| Dim::Sym(format!("cos{i}"))).collect())
    });
    // a small integer vector of known length (exporters build `expand` targets this way)
    let fill = n.attr("value").and_then(|a| a.t.as_ref()).and_then(|t| tensor::to_i64(t).ok()).map(|v| v[0]);
    if let (Some(sh), true) = (&shape, matches!(dtype, dt::INT64 | dt::INT32)) {
        if let ([Dim::Known(len)], Some(v)) = (sh.as_slice(), fill.or(Some(0))) {
            if *len <= 64 {
                s.values.insert(out0.clone(), vec![Dim::Known(v); *len as usize]);
            }
        }
    }
    set(s, &out0, dtype, shape);
    Ok(())
}

fn range_shape(g: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let out0 = n.output.first().cloned().unwrap_or_default();
    let t = input_type(s, n, 0)?;
    let len = match (ints_of(g, s, &n.input[0]), ints_of(g, s, &n.input[1]), ints_of(g, s, &n.input[2])) {
        (Some(a), Some(b), Some(c)) if c[0] != 0 && !a.is_empty() && !b.is_empty() => {
            let k = ((b[0] - a[0]) as f64 / c[0] as f64).ceil().max(0.0) as i64;
            // a small integer range is a value later ops read (Unsqueeze axes, Gather indices)
            if crate::shapes::is_int(t.dtype) && k <= 64 {
                s.values.insert(out0.clone(), (0..k).map(|i| Dim::Known(a[0] + i * c[0])).collect());
            }
            Dim::Known(k)
        }
        _ => {
            // arange(n): 0 to a symbolic limit by 1 has the limit's length
            let dims = |i: usize| crate::shapes::dims_of(g, s, &n.input[i]).and_then(|v| v.first().cloned());
            match (dims(0), dims(1), dims(2)) {
                (Some(Dim::Known(0)), Some(limit @ Dim::Sym(_)), Some(Dim::Known(1))) => limit,
                _ => s.fresh_dim("range"),
            }
        }
    };
    set(s, &out0, t.dtype, Some(vec![len]));
    Ok(())
}

fn random_like_shape(_: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let out0 = n.output.first().cloned().unwrap_or_default();
    let x = input_type(s, n, 0)?;
    let dtype = n.attr("dtype").and_then(|a| a.i).map(|i| i as i32).unwrap_or(x.dtype);
    set(s, &out0, dtype, x.shape);
    Ok(())
}
