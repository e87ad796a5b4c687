//! Binding a dataset to a compiled graph: each model input takes its array (by name; a lone array
//! feeds a lone input) converted to the input's dtype, sample shapes and token ids checked; the
//! labels or targets checked against what the loss expects.
use anyhow::{anyhow, bail, Result};

use super::{Dataset, LazyImages};
use graph_passes::ir::Model;
use crate::tensor::{Data, HostTensor};

/// A model input a dataset is bound to: its name, dtype (ONNX data type) and sample dims (None: any).
pub struct InputSpec {
    pub name: String,
    pub dtype: i32,
    pub dims: Vec<Option<i64>>,
    /// Integer inputs that index a table (an embedding's Gather): the valid range.
    pub index_range: Option<IndexRange>,
}

/// The [C, H, W] an ImageFolder is decoded to: the first input's sample shape, when it is three
/// known dims.
pub fn image_shape(inputs: &[InputSpec]) -> Option<Vec<usize>> {
    inputs
        .first()
        .filter(|i| i.dims.len() == 3 && i.dims.iter().all(|d| d.is_some()))
        .map(|i| i.dims.iter().map(|d| d.unwrap_or(0) as usize).collect())
}

/// What the loss expects of `y`.
pub enum TargetSpec {
    /// int64 class labels shaped [N, …dims] with values in 0..classes (or `ignore`); `ties`:
    /// (label axis, model input, its axis) whose sizes must be equal (a sequence length the
    /// file leaves symbolic: one label per token).
    Classes { dims: Vec<Option<i64>>, classes: Option<usize>, ignore: Option<i64>, ties: Vec<(usize, String, usize)> },
    /// float32 targets shaped [N, …dims].
    Values { dims: Vec<Option<i64>> },
    /// No labels (the model computes its loss).
    None,
}

fn dims_match(shape: &[usize], want: &[Option<i64>]) -> bool {
    shape.len() == want.len()
        && shape.iter().zip(want).all(|(&n, w)| w.map(|w| w <= 0 || w as usize == n).unwrap_or(true))
}

fn shape_of(shape: &[usize]) -> String {
    format!("[{}]", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))
}

fn dims_string(want: &[Option<i64>]) -> String {
    let w: Vec<String> = want.iter().map(|d| d.map(|x| x.to_string()).unwrap_or("?".into())).collect();
    format!("[N, {}]", w.join(", "))
}

/// `t` as the ONNX dtype `want`: float32 from float64 or uint8 (images: /255); int64 from int32
/// or uint8; int32 from int64 (checked range); bool as is. None: no sensible conversion.
fn convert(t: HostTensor, want: i32) -> Option<HostTensor> {
    use graph_passes::onnx::data_type as dt;
    let shape = t.shape.clone();
    Some(match (want, t.data) {
        (dt::FLOAT, Data::F32(v)) => HostTensor::f32(&shape, v),
        (dt::FLOAT, Data::F64(v)) => HostTensor::f32(&shape, v.into_iter().map(|a| a as f32).collect()),
        (dt::FLOAT, Data::U8(v)) => HostTensor::f32(&shape, v.into_iter().map(|a| a as f32 / 255.0).collect()),
        (dt::INT64, Data::I64(v)) => HostTensor::i64(&shape, v),
        (dt::INT64, Data::I32(v)) => HostTensor::i64(&shape, v.into_iter().map(|a| a as i64).collect()),
        (dt::INT64, Data::U8(v)) => HostTensor::i64(&shape, v.into_iter().map(|a| a as i64).collect()),
        (dt::INT32, Data::I32(v)) => HostTensor { shape, data: Data::I32(v) },
        (dt::INT32, Data::I64(v)) if v.iter().all(|&a| i32::try_from(a).is_ok()) => {
            HostTensor { shape, data: Data::I32(v.into_iter().map(|a| a as i32).collect()) }
        }
        (dt::BOOL, Data::Bool(v)) => HostTensor { shape, data: Data::Bool(v) },
        (dt::DOUBLE, Data::F64(v)) => HostTensor { shape, data: Data::F64(v) },
        _ => return None,
    })
}

impl Dataset {
    /// The dataset as `inputs` and `target` expect it: one array per model input (by name; a
    /// lone array feeds a lone input), converted to the input's dtype, sample shapes checked;
    /// labels or targets checked and converted (integer targets become float32 for a
    /// regression loss). Float samples must be finite. Errors name the dataset, the array and
    /// the model input, and say what to do.
    pub fn bind(self, inputs: &[InputSpec], target: &TargetSpec, model: &str) -> Result<Dataset> {
        let src = self.source.clone();
        let mut columns = self.columns;
        let mut lazy = self.lazy;
        let names: Vec<String> =
            columns.iter().map(|(n, _)| n.clone()).chain(lazy.iter().map(|(n, _)| n.clone())).collect();
        let lone = names.len() == 1 && inputs.len() == 1;
        let mut bound = Vec::new();
        let mut lazy_bound = None;
        for want in inputs {
            if let Some((name, images)) = lazy.take() {
                if name == want.name || lone {
                    let dims: Vec<usize> = images.shape.to_vec();
                    if want.dtype != graph_passes::onnx::data_type::FLOAT || !dims_match(&dims, &want.dims) {
                        bail!(
                            "{src}: images decoded to {dims:?} float32 do not fit the model's input '{}' {} ({model})",
                            want.name,
                            dims_string(&want.dims)
                        );
                    }
                    lazy_bound = Some((want.name.clone(), images));
                    continue;
                }
                lazy = Some((name, images));
            }
            let k = match columns.iter().position(|(n, _)| *n == want.name) {
                Some(k) => k,
                None if lone => 0,
                None => bail!(
                    "{src}: no array '{}' for the model's input '{}' ({model}); the data has: {}",
                    want.name,
                    want.name,
                    names.join(", ")
                ),
            };
            let (name, t) = columns.remove(k);
            let have = t.dtype_name();
            let t = convert(t, want.dtype).ok_or_else(|| {
                anyhow!(
                    "{src}: '{name}' is {have} but the model's input '{}' is {} ({model}); store it as {}",
                    want.name,
                    graph_passes::onnx::tensor::dtype_name(want.dtype),
                    graph_passes::onnx::tensor::dtype_name(want.dtype)
                )
            })?;
            if !dims_match(&t.shape[1..], &want.dims) {
                bail!(
                    "{src}: samples of '{name}' have shape {} and do not fit the model's input '{}' {} ({model}); use data of that shape",
                    shape_of(&t.shape[1..]),
                    want.name,
                    dims_string(&want.dims)
                );
            }
            if let Some(v) = t.as_f32() {
                if let Some(i) = v.iter().position(|v| !v.is_finite()) {
                    let per = v.len() / t.shape[0].max(1);
                    bail!(
                        "{src}: '{name}' holds a NaN or infinite value (sample {}); clean the data first",
                        i / per.max(1)
                    );
                }
            }
            if let Some((first, n0)) = bound.first().map(|(n, t): &(String, HostTensor)| (n.clone(), t.shape[0])) {
                if t.shape[0] != n0 {
                    bail!(
                        "{src}: '{name}' has {} rows but '{first}' has {n0}; every array needs one row per sample",
                        t.shape[0]
                    );
                }
            }
            if let Some(check) = &want.index_range {
                check.check(&src, &name, &t)?;
            }
            bound.push((want.name.clone(), t));
        }
        let rows = bound
            .first()
            .map(|(_, t)| t.shape[0])
            .or(lazy_bound.as_ref().map(|(_, l): &(String, LazyImages)| l.files.len()))
            .or(self.y.as_ref().map(|y| y.shape[0]))
            .unwrap_or(0);
        if rows == 0 {
            bail!("{src}: the data has no samples");
        }
        let y = match (target, self.y) {
            (TargetSpec::None, _) => None,
            (_, None) => bail!("{src}: no labels: add an array 'y' (class labels or float targets), or --loss output for a model that computes its own per-sample loss"),
            (TargetSpec::Classes { dims, classes, ignore, ties }, Some(y)) => {
                // int32 and uint8 class labels are int64's values
                let y = match y.data {
                    Data::I32(_) | Data::U8(_) => convert(y, graph_passes::onnx::data_type::INT64).unwrap_or_else(|| unreachable!()),
                    _ => y,
                };
                let Data::I64(v) = &y.data else {
                    bail!(
                        "{src}: labels 'y' are {} but cross-entropy needs int64 class labels (y.astype(np.int64)); for float targets choose a regression loss (--loss mse|l1|huber|smooth-l1|bce-with-logits)",
                        y.dtype_name()
                    )
                };
                if y.shape[0] != rows {
                    bail!("{src}: 'y' has {} rows but the samples are {rows}", y.shape[0]);
                }
                if !dims_match(&y.shape[1..], dims) {
                    bail!(
                        "{src}: labels 'y' have shape {} but the model's output needs {} ({model}: [N] for logits [N, C], [N, d1, …] per position for [N, C, d1, …] or [N, d1, …, C])",
                        shape_of(&y.shape),
                        dims_string(dims)
                    );
                }
                for (axis, input, at) in ties {
                    let Some((name, t)) = bound.iter().find(|(n, _)| n == input) else { continue };
                    let (want, have) = (t.shape.get(*at).copied(), y.shape.get(*axis).copied());
                    if want.is_some() && want != have {
                        bail!(
                            "{src}: labels 'y' have shape {} but '{name}' is {}: {model} takes one label per position of its axis {at}; make 'y' [N, …] with {} positions there (padding labelled with --ignore-index)",
                            shape_of(&y.shape),
                            shape_of(&t.shape),
                            want.unwrap_or(0)
                        );
                    }
                }
                if let Some(c) = classes {
                    let per = v.len() / y.shape[0].max(1);
                    if let Some((i, &bad)) =
                        v.iter().enumerate().find(|(_, &l)| Some(l) != *ignore && (l < 0 || l as usize >= *c))
                    {
                        let hint = if bad < 0 && ignore.is_none() && per > 1 {
                            format!("; labels of padding positions? pass --ignore-index {bad}")
                        } else if bad < 0 && per == 1 {
                            "; to leave a sample out, drop its row (--ignore-index applies to per-position labels)".to_string()
                        } else {
                            String::new()
                        };
                        bail!(
                            "{src}: label {bad} (sample {}) is out of range: {model} has {c} classes (0..{}){hint}",
                            i / per.max(1),
                            c - 1
                        );
                    }
                }
                Some(y)
            }
            (TargetSpec::Values { dims }, Some(y)) => {
                let y = match y.data {
                    Data::F32(_) => y,
                    Data::I64(v) => HostTensor::f32(&y.shape, v.into_iter().map(|a| a as f32).collect()),
                    Data::Bool(v) => HostTensor::f32(&y.shape, v.into_iter().map(|a| a as u8 as f32).collect()),
                    _ => y,
                };
                // a lone target per sample fits an output [N, 1]
                let y = if y.shape.len() == 1 && dims.len() == 1 && dims[0].unwrap_or(1) == 1 {
                    HostTensor { shape: vec![y.shape[0], 1], data: y.data }
                } else {
                    y
                };
                if !dims_match(&y.shape[1..], dims) {
                    bail!(
                        "{src}: targets 'y' have shape {} but the model's output is {} ({model}); targets must be shaped as the output",
                        shape_of(&y.shape),
                        dims_string(dims)
                    );
                }
                if let Some(v) = y.as_f32() {
                    if let Some(i) = v.iter().position(|v| !v.is_finite()) {
                        bail!("{src}: targets 'y' hold a NaN or infinite value (element {i}); clean the data first");
                    }
                }
                Some(y)
            }
        };
        Ok(Dataset {
            columns: bound,
            y,
            classes: self.classes,
            class_names: self.class_names,
            source: src,
            lazy: lazy_bound,
        })
    }
}

/// Ids that index a table of `size` rows through `node` (an embedding): valid in 0..size, as
/// torch.nn.Embedding requires (ONNX Gather would wrap negative ids from the end).
pub struct IndexRange {
    pub node: String,
    pub size: i64,
}

impl IndexRange {
    /// Checks every id of `t` (int64/int32 [N, …]; other dtypes pass) against 0..size. Errors:
    /// the first id outside, with its sample, the table and what to do.
    pub fn check(&self, src: &str, name: &str, t: &HostTensor) -> Result<()> {
        let vals: Vec<i64> = match &t.data {
            Data::I64(v) => v.clone(),
            Data::I32(v) => v.iter().map(|&a| a as i64).collect(),
            _ => return Ok(()),
        };
        let per = vals.len() / t.shape.first().copied().unwrap_or(1).max(1);
        if let Some((i, bad)) = vals.iter().enumerate().find(|(_, &v)| v < 0 || v >= self.size) {
            bail!(
                "{src}: '{name}' holds id {bad} (sample {}), outside the {} rows of the table that {} reads (ids 0..{}); fix the data or the vocabulary size",
                i / per.max(1),
                self.size,
                self.node,
                self.size - 1
            );
        }
        Ok(())
    }
}

/// The table an integer input indexes (a Gather reading it as indices, directly or through a
/// Cast, from a parameter or constant table) and the table's size along the gathered axis.
pub fn index_range(g: &Model, c: &graph_passes::pass::Contract, input: &str) -> Option<IndexRange> {
    use graph_passes::ir::NodeExt;
    // the ids as they reach the table: through casts and shape-only ops (GPT-2 views its ids
    // as [-1, seq] first)
    let mut names = vec![input.to_string()];
    loop {
        let before = names.len();
        for n in &g.graph.nodes {
            let moves = matches!(n.op_type.as_str(), "Cast" | "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" | "Identity");
            if moves && n.input.first().map(|i| names.contains(i)).unwrap_or(false) {
                for o in &n.output {
                    if !names.contains(o) {
                        names.push(o.clone());
                    }
                }
            }
        }
        if names.len() == before {
            break;
        }
    }
    g.graph.nodes.iter().find_map(|n| {
        if n.op_type != "Gather" || !n.input.get(1).map(|i| names.contains(i)).unwrap_or(false) {
            return None;
        }
        // the table, through the Identity that keeps a tied table's other name
        let mut table = &n.input[0];
        while let Some(p) = g.graph.nodes.iter().find(|p| p.op_type == "Identity" && p.output.first() == Some(table)) {
            table = &p.input[0];
        }
        let dims = c
            .init
            .get(table)
            .map(|t| t.dims.clone())
            .or_else(|| g.graph.initializers.iter().find(|t| &t.name == table).map(|t| t.dims.clone()))
?;
        let axis = n.attr_i("axis", 0);
        let axis = if axis < 0 { axis + dims.len() as i64 } else { axis };
        let size = *dims.get(axis as usize)?;
        Some(IndexRange { node: n.describe(), size })
    })
}
