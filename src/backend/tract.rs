//! tract: pure Rust, embedded, CPU. Plans are built per input shape signature and cached, since
//! tract optimizes best with concrete shapes. tract panics on some malformed graphs; every call
//! into it is guarded so a user gets an error, not a crash.
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{anyhow, bail, Result};
use graph_passes::onnx::ModelProto;
use prost::Message;
use tract_onnx::prelude::*;

use super::{Backend, Session};
use crate::tensor::{Data, HostTensor};

pub struct TractBackend;

impl TractBackend {
    pub fn new() -> TractBackend {
        TractBackend
    }
}

impl Default for TractBackend {
    fn default() -> Self {
        Self::new()
    }
}

type Plan = Arc<TypedSimplePlan>;

/// Set while tract runs under `guarded`, so the panic hook stays quiet.
pub static GUARDED: AtomicBool = AtomicBool::new(false);

/// Runs `f`, turning a panic inside tract into an error.
fn guarded<T>(what: &str, f: impl FnOnce() -> TractResult<T>) -> Result<T> {
    GUARDED.store(true, Ordering::Relaxed);
    let r = catch_unwind(AssertUnwindSafe(f));
    GUARDED.store(false, Ordering::Relaxed);
    match r {
        Ok(Ok(v)) => Ok(v),
        // a gap of the engine, not of the model: ONNX Runtime may run it
        Ok(Err(e)) => bail!("tract cannot {what}: {}; try --backend ort", one_line(&format!("{e:#}"))),
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            bail!("tract failed to {what} (internal panic: {}); try --backend ort", one_line(&msg))
        }
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl Backend for TractBackend {
    fn describe(&self) -> String {
        "tract 0.23 (embedded, cpu)".to_string()
    }

    fn load(&self, model: &ModelProto) -> Result<Box<dyn Session>> {
        // Symbolic dims in value_info/output types (N) clash with the concrete input facts a
        // plan is built for; tract infers them itself.
        let mut model = model.clone();
        if let Some(g) = &mut model.graph {
            g.value_info.clear();
            for o in &mut g.output {
                if let Some(graph_passes::onnx::type_proto::Value::TensorType(t)) =
                    o.r#type.as_mut().and_then(|t| t.value.as_mut())
                {
                    t.shape = None;
                }
            }
        }
        // LogSoftmax as tract computes it is wrong for classes whose probability underflows
        // (ops::softmax_loss::max_shifted_log_softmax)
        if model.graph.as_ref().is_some_and(|g| g.node.iter().any(|n| n.op_type == "LogSoftmax")) {
            let mut m = graph_passes::ir::Model::from_proto(model);
            let opset = m.opset();
            graph_passes::ops::softmax_loss::max_shifted_log_softmax(&mut m.graph, opset);
            model = m.to_proto();
        }
        let model = &model;
        let bytes = model.encode_to_vec();
        let inference = guarded("load the model", || tract_onnx::onnx().model_for_read(&mut bytes.as_slice()))?;
        let input_names: Vec<String> =
            inference.input_outlets()?.iter().map(|o| inference.node(o.node).name.clone()).collect();
        let output_names: Vec<String> =
            model.graph.as_ref().map(|g| g.output.iter().map(|o| o.name.clone()).collect()).unwrap_or_default();
        Ok(Box::new(TractRunner { inference, input_names, output_names, plans: HashMap::new() }))
    }
}

struct TractRunner {
    inference: InferenceModel,
    input_names: Vec<String>,
    output_names: Vec<String>,
    plans: HashMap<Vec<(i32, Vec<usize>)>, Plan>,
}

fn datum(t: &HostTensor) -> DatumType {
    match t.data {
        Data::F32(_) => f32::datum_type(),
        Data::F64(_) => f64::datum_type(),
        Data::I64(_) => i64::datum_type(),
        Data::I32(_) => i32::datum_type(),
        Data::U8(_) => u8::datum_type(),
        Data::Bool(_) => bool::datum_type(),
    }
}

fn to_tensor(t: &HostTensor) -> Result<Tensor> {
    let r = match &t.data {
        Data::F32(v) => Tensor::from_shape(&t.shape, v),
        Data::F64(v) => Tensor::from_shape(&t.shape, v),
        Data::I64(v) => Tensor::from_shape(&t.shape, v),
        Data::I32(v) => Tensor::from_shape(&t.shape, v),
        Data::U8(v) => Tensor::from_shape(&t.shape, v),
        Data::Bool(v) => Tensor::from_shape(&t.shape, v),
    };
    r.map_err(|e| anyhow!("tract: {e}"))
}

fn from_tensor(name: &str, t: &Tensor) -> Result<HostTensor> {
    let shape = t.shape().to_vec();
    let dt = t.datum_type();
    let data = if dt == f32::datum_type() {
        Data::F32(t.try_as_plain_ram()?.as_slice::<f32>()?.to_vec())
    } else if dt == f64::datum_type() {
        Data::F64(t.try_as_plain_ram()?.as_slice::<f64>()?.to_vec())
    } else if dt == i64::datum_type() {
        Data::I64(t.try_as_plain_ram()?.as_slice::<i64>()?.to_vec())
    } else if dt == i32::datum_type() {
        Data::I32(t.try_as_plain_ram()?.as_slice::<i32>()?.to_vec())
    } else if dt == u8::datum_type() {
        Data::U8(t.try_as_plain_ram()?.as_slice::<u8>()?.to_vec())
    } else if dt == bool::datum_type() {
        Data::Bool(t.try_as_plain_ram()?.as_slice::<bool>()?.to_vec())
    } else {
        bail!("output '{name}' has type {dt:?}, which onnxsam cannot read back")
    };
    Ok(HostTensor { shape, data })
}

impl Session for TractRunner {
    fn run(&mut self, feeds: &[(String, HostTensor)]) -> Result<Vec<(String, HostTensor)>> {
        let mut ordered: Vec<&HostTensor> = Vec::with_capacity(self.input_names.len());
        for name in &self.input_names {
            let t = feeds
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t)
                .ok_or_else(|| anyhow!("no value fed for graph input '{name}'"))?;
            ordered.push(t);
        }
        let key: Vec<(i32, Vec<usize>)> = ordered.iter().map(|t| (t.onnx_dtype(), t.shape.clone())).collect();
        if !self.plans.contains_key(&key) {
            let mut model = self.inference.clone();
            let facts: Vec<InferenceFact> =
                ordered.iter().map(|t| InferenceFact::dt_shape(datum(t), &t.shape)).collect();
            let plan = guarded("optimize the model", move || {
                for (i, f) in facts.into_iter().enumerate() {
                    model.set_input_fact(i, f)?;
                }
                model.into_optimized()?.into_runnable()
            })?;
            self.plans.insert(key.clone(), plan);
        }
        let plan = &self.plans[&key];
        let inputs: TVec<TValue> = ordered.iter().map(|t| Ok(to_tensor(t)?.into())).collect::<Result<_>>()?;
        let outputs = guarded("run the model", || plan.run(inputs))?;
        let names: Vec<String> = if self.output_names.len() == outputs.len() {
            self.output_names.clone()
        } else {
            (0..outputs.len()).map(|i| format!("output{i}")).collect()
        };
        names.into_iter().zip(outputs.iter()).map(|(n, t)| Ok((n.clone(), from_tensor(&n, t)?))).collect()
    }
}
