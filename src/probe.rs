//! Whether an engine can run a compiled graph: one run on a tiny made-up batch (every size known
//! only at run time set to 2, zeros for data and labels). What `inspect` rests its verdict on, so
//! that "trains as PyTorch" is never said of a graph an engine would refuse at the first step.
use std::collections::BTreeMap;

use anyhow::{bail, Result};
use graph_passes::ir::Model;
use graph_passes::onnx::data_type as dt;
use graph_passes::pass::Contract;
use graph_passes::shapes::{value_type_of, Dim};

use crate::backend::Backend;
use crate::grad::{feeds_with, initial_values, Batch, FeedOptions};
use crate::tensor::{Data, HostTensor};

/// Sizes of a made-up input: the batch axis takes `batch`, other symbols (a sequence length) 2.
fn dims_of(m: &Model, name: &str, batch: usize) -> Option<(i32, Vec<usize>)> {
    let v = m.graph.inputs.iter().find(|v| v.name == name)?;
    let t = value_type_of(&v.r#type)?;
    let shape = t
        .shape?
        .iter()
        .enumerate()
        .map(|(i, d)| match d {
            Dim::Known(k) => (*k).max(0) as usize,
            _ if i == 0 => batch,
            _ => 2,
        })
        .collect();
    Some((t.dtype, shape))
}

/// The batch a made-up run takes: a data input's fixed batch where the file has one (an export
/// with a static batch), else 2.
fn batch_size(m: &Model, c: &Contract) -> usize {
    c.data
        .iter()
        .filter_map(|n| m.graph.inputs.iter().find(|v| &v.name == n))
        .filter_map(|v| value_type_of(&v.r#type)?.shape?.first()?.known())
        .next()
        .map(|k| k.max(1) as usize)
        .unwrap_or(2)
}

fn zeros(dtype: i32, shape: &[usize]) -> Result<HostTensor> {
    let n = shape.iter().product();
    let data = match dtype {
        dt::FLOAT => Data::F32(vec![0.0; n]),
        dt::DOUBLE => Data::F64(vec![0.0; n]),
        dt::INT64 => Data::I64(vec![0; n]),
        dt::INT32 => Data::I32(vec![0; n]),
        dt::UINT8 => Data::U8(vec![0; n]),
        dt::BOOL => Data::Bool(vec![true; n]),
        other => bail!("an input of type {} cannot be made up", graph_passes::onnx::tensor::dtype_name(other)),
    };
    Ok(HostTensor { shape: shape.to_vec(), data })
}

/// One run of `m` (compiled with contract `c`) on `backend`; Ok where the engine loads and runs it.
pub fn runs(m: &Model, c: &Contract, backend: &dyn Backend) -> Result<()> {
    let b = batch_size(m, c);
    let mut data = Vec::new();
    for name in &c.data {
        let Some((dtype, shape)) = dims_of(m, name, b) else { continue };
        data.push((name.clone(), zeros(dtype, &shape)?));
    }
    let labels = match &c.labels {
        Some(l) => match dims_of(m, l, b) {
            Some((dtype, shape)) => Some(zeros(dtype, &shape)?),
            None => None,
        },
        None => None,
    };
    let batch = Batch { data, labels };
    let values: BTreeMap<String, HostTensor> = initial_values(c)?;
    let hyper: BTreeMap<String, f32> = c.hyper.clone().into_iter().collect();
    let feeds = feeds_with(c, Some(&batch), &values, &FeedOptions { hyper: Some(&hyper), ..Default::default() })?;
    let mut s = backend.load(&m.to_proto())?;
    s.run(&feeds)?;
    Ok(())
}
