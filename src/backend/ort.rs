//! ONNX Runtime through the `ort` crate, loaded at run time (`load-dynamic`).
use std::borrow::Cow;
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Result};
use graph_passes::onnx::ModelProto;
use ort::environment::Environment;
use ort::ep::ExecutionProvider;
use ort::session::{Session as OrtSession, SessionInputValue};
use ort::value::{DynValue, Tensor};
use prost::Message;

use super::discover::{OrtLibrary, NOT_FOUND_GPU};
use super::{Backend, Device, Held, Session};
use crate::tensor::{Data, HostTensor};

static ENV: OnceLock<std::result::Result<(Environment, String), String>> = OnceLock::new();

/// Loads the library once per process (ONNX Runtime allows one environment).
fn environment(lib: &OrtLibrary) -> Result<&'static Environment> {
    let r = ENV.get_or_init(|| {
        let builder = ort::init_from(&lib.path).map_err(|e| format!("{e}"))?;
        let env = builder.with_name("onnxsam").build().map_err(|e| format!("{e}"))?;
        // ONNX Runtime's own log lines (a failing kernel, initializers that are also inputs)
        // would precede onnxsam's one error line; the error itself comes back in the status
        env.set_log_level(ort::logging::LogLevel::Fatal);
        // without it each session keeps an arena of its own: more memory, nothing wrong
        SHARED_ARENA.set(share_cpu_arena(&env).is_ok()).ok();
        Ok((env, lib.path.display().to_string()))
    });
    match r {
        Ok((env, _)) => Ok(env),
        Err(e) => bail!("cannot load ONNX Runtime from {}: {e}; install a compatible version with `pip install onnxruntime==1.31.1`", lib.path.display()),
    }
}

/// One CPU arena for every session (registered with the environment; sessions opt in with
/// `session.use_env_allocators`). A step runs several sessions in turn — m-SAM's micro-batch and
/// apply graphs, `--accumulate`'s ascent and descent graphs, evaluation — and an arena never
/// returns memory: with one arena per session the peak is the sum of the sessions' peaks, with one
/// shared arena it is the largest (ResNet-18, SAM, batch 128 in 4 micro-batches: docs/benchmarks.md).
/// Whether the shared CPU arena is registered (sessions opt in only then).
static SHARED_ARENA: OnceLock<bool> = OnceLock::new();

fn share_cpu_arena(env: &Environment) -> std::result::Result<(), String> {
    use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
    use ort::AsPointer;
    let info = MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Arena, MemoryType::Default)
        .map_err(|e| format!("{e}"))?;
    // the arena grows by what a run asks for (kSameAsRequested), not by doubling: the default
    // rounds each growth up to a power of two, and the blocks between go unused (ResNet-18 SAM
    // step, batch 32: 75–130 MiB less peak, docs/benchmarks.md)
    let keys = [c"arena_extend_strategy".as_ptr()];
    let values = [1usize];
    let mut cfg: *mut ort::sys::OrtArenaCfg = std::ptr::null_mut();
    // SAFETY: keys and values are live arrays of one element each; cfg receives a new config
    let status = unsafe { (ort::api().CreateArenaCfgV2)(keys.as_ptr(), values.as_ptr(), 1, &mut cfg) };
    ort_status(status).map_err(|m| format!("configuring a shared CPU arena: {m}"))?;
    // SAFETY: both pointers are live for the call; the arena copies what it needs of cfg
    let status = unsafe { (ort::api().CreateAndRegisterAllocator)(env.ptr().cast_mut(), info.ptr(), cfg) };
    // SAFETY: cfg came from CreateArenaCfgV2 and is released once
    unsafe { (ort::api().ReleaseArenaCfg)(cfg) };
    ort_status(status).map_err(|m| format!("registering a shared CPU arena: {m}"))
}

/// Ok for a null status, else its message (the status released).
fn ort_status(status: ort::sys::OrtStatusPtr) -> std::result::Result<(), String> {
    if status.0.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null status holds a C string until it is released
    let msg = unsafe {
        let m = std::ffi::CStr::from_ptr((ort::api().GetErrorMessage)(status.0)).to_string_lossy().into_owned();
        (ort::api().ReleaseStatus)(status.0);
        m
    };
    Err(msg)
}

pub struct OrtBackend {
    lib: OrtLibrary,
    device: Device,
    threads: usize,
}

impl OrtBackend {
    pub fn new(lib: &OrtLibrary, device: Device, threads: usize) -> Result<OrtBackend> {
        environment(lib)?;
        if let Device::Cuda(_) = device {
            let available = ort::ep::CUDA::is_available().unwrap_or(false);
            if !available || lib.cuda_provider.is_none() {
                bail!(
                    "--device {device}: the ONNX Runtime at {} has no CUDA execution provider; {}",
                    lib.path.display(),
                    NOT_FOUND_GPU.replace("no ONNX Runtime library found; ", "")
                );
            }
        }
        Ok(OrtBackend { lib: lib.clone(), device, threads })
    }

    /// Whether this library's build lists the CUDA execution provider.
    pub fn cuda_available() -> bool {
        ort::ep::CUDA::is_available().unwrap_or(false)
    }
}

impl Backend for OrtBackend {
    fn describe(&self) -> String {
        format!(
            "ort (ONNX Runtime {} from {}, {}), {}",
            self.lib.version.as_deref().unwrap_or("?"),
            self.lib.path.display(),
            self.lib.source,
            self.device
        )
    }

    fn load(&self, model: &ModelProto) -> Result<Box<dyn Session>> {
        let bytes = model.encode_to_vec();
        let graph = model.graph.as_ref();
        let initializers: std::collections::HashSet<&str> =
            graph.map(|g| g.initializer.iter().map(|t| t.name.as_str()).collect()).unwrap_or_default();
        // each graph input's symbolic dims: axis → name
        let symbols: Vec<(String, Vec<(usize, String)>)> = graph
            .map(|g| {
                g.input
                    .iter()
                    .filter(|v| !initializers.contains(v.name.as_str()))
                    .map(|v| (v.name.clone(), symbolic_dims(v)))
                    .collect()
            })
            .unwrap_or_default();
        let nodes = graph.map(|g| g.node.len()).unwrap_or(0);
        let cfg = OrtConfig { lib: self.lib.clone(), device: self.device.clone(), threads: self.threads };
        // ONNX Runtime's allocation planner takes time quadratic in the graph's size when shapes
        // are symbolic (a 4,600-node step graph: 8.7 s; with the batch fixed: 0.9 s). Large
        // graphs are committed on first run, per set of concrete dims; small ones at once, so a
        // model ONNX Runtime rejects is reported on loading.
        let lazy = nodes > LAZY_NODES && symbols.iter().any(|(_, s)| !s.is_empty());
        let sessions = if lazy { Vec::new() } else { vec![(Vec::new(), cfg.commit(&bytes, &[])?)] };
        let (inputs, outputs) = match sessions.first() {
            Some((_, s)) => (
                s.inputs().iter().map(|i| i.name().to_string()).collect(),
                s.outputs().iter().map(|o| o.name().to_string()).collect(),
            ),
            None => (
                symbols.iter().map(|(n, _)| n.clone()).collect(),
                graph.map(|g| g.output.iter().map(|o| o.name.clone()).collect()).unwrap_or_default(),
            ),
        };
        let device = match self.device {
            Device::Cpu => (ort::memory::AllocationDevice::CPU, 0),
            Device::Cuda(id) => (ort::memory::AllocationDevice::CUDA, id),
        };
        Ok(Box::new(OrtRunner {
            cfg,
            bytes: if lazy { bytes } else { Vec::new() },
            lazy,
            symbols,
            sessions,
            inputs,
            outputs,
            device,
            held: std::collections::HashMap::new(),
        }))
    }
}

/// Graphs above this many nodes are committed per concrete batch size (see `load`).
const LAZY_NODES: usize = 1500;

/// (axis, name) of the symbolic dims of a graph input.
fn symbolic_dims(v: &graph_passes::onnx::ValueInfoProto) -> Vec<(usize, String)> {
    use graph_passes::onnx::proto::{tensor_shape_proto::dimension::Value, type_proto};
    let Some(type_proto::Value::TensorType(t)) = v.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return Vec::new();
    };
    t.shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .enumerate()
                .filter_map(|(i, d)| match &d.value {
                    Some(Value::DimParam(p)) if !p.is_empty() => Some((i, p.clone())),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// What every session of one model is built with.
struct OrtConfig {
    lib: OrtLibrary,
    device: Device,
    threads: usize,
}

impl OrtConfig {
    /// A session of `bytes`, its symbolic dims fixed to `dims` (name, size).
    fn commit(&self, bytes: &[u8], dims: &[(String, i64)]) -> Result<OrtSession> {
        let env = environment(&self.lib)?;
        let map = |e: ort::Error<ort::session::builder::SessionBuilder>| anyhow!("ONNX Runtime: {e}");
        let mut builder = OrtSession::builder(env).map_err(|e| anyhow!("ONNX Runtime: {e}"))?;
        builder = builder.with_intra_threads(self.threads).map_err(map)?;
        builder = builder.with_inter_threads(1).map_err(map)?;
        // a training step runs several sessions in turn (step, m-SAM apply, evaluation): threads
        // that spin after a run would steal the cores the next session needs
        builder = builder.with_intra_op_spinning(false).map_err(map)?;
        if self.device == Device::Cpu {
            // the memory pattern pre-plans one block for every intermediate of a run: with step
            // graphs that is ~0.8 GB more peak memory at ResNet-18 / batch 32 and no faster
            // (docs/benchmarks.md); intermediates are freed after their last reader either way
            builder = builder.with_memory_pattern(false).map_err(map)?;
            if SHARED_ARENA.get().copied().unwrap_or(false) {
                builder = builder.with_env_allocators().map_err(map)?;
            }
        }
        for (name, size) in dims {
            builder = builder.with_dimension_override(name, *size).map_err(map)?;
        }
        if let Device::Cuda(id) = self.device {
            use ort::ep::ArbitrarilyConfigurableExecutionProvider;
            let mut ep = ort::ep::CUDA::default().with_device_id(id);
            // CUDA execution provider settings to try (tools/bench/cuda_check.sh): e.g.
            // ONNXSAM_CUDA_OPTIONS=cudnn_conv_algo_search=EXHAUSTIVE,use_tf32=1,prefer_nhwc=1
            for (k, v) in cuda_options()? {
                ep = ep.with_arbitrary_config(k, v);
            }
            builder = builder.with_execution_providers([ep.build().error_on_failure()]).map_err(map)?;
        }
        builder
            .commit_from_memory(bytes)
            .map_err(|e| anyhow!("ONNX Runtime cannot load the model: {}", one_line(&e.to_string())))
    }
}

/// KEY=VALUE pairs of ONNXSAM_CUDA_OPTIONS (comma-separated), for the CUDA execution provider.
fn cuda_options() -> Result<Vec<(String, String)>> {
    let Ok(s) = std::env::var("ONNXSAM_CUDA_OPTIONS") else { return Ok(vec![]) };
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| anyhow!("ONNXSAM_CUDA_OPTIONS: '{p}' is no KEY=VALUE (e.g. cudnn_conv_algo_search=HEURISTIC)"))
        })
        .collect()
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

struct OrtRunner {
    cfg: OrtConfig,
    /// The model, kept where sessions are committed per concrete dims.
    bytes: Vec<u8>,
    lazy: bool,
    /// Graph inputs' symbolic dims: (input, [(axis, name)]).
    symbols: Vec<(String, Vec<(usize, String)>)>,
    /// Sessions by the concrete sizes of the symbolic dims (one, keyed [], when not lazy).
    sessions: Vec<(Vec<(String, i64)>, OrtSession)>,
    inputs: Vec<String>,
    outputs: Vec<String>,
    /// Where carried values live (the execution provider's device).
    device: (ort::memory::AllocationDevice<'static>, i32),
    /// Carried inputs' current values, on `device`.
    held: std::collections::HashMap<String, DynValue>,
}

fn to_value(t: &HostTensor) -> Result<SessionInputValue<'static>> {
    Ok(to_dyn(t)?.into())
}

fn to_dyn(t: &HostTensor) -> Result<DynValue> {
    let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
    let e = |e: ort::Error| anyhow!("ONNX Runtime: {e}");
    Ok(match &t.data {
        Data::F32(v) => Tensor::from_array((shape, v.clone())).map_err(e)?.into_dyn(),
        Data::F64(v) => Tensor::from_array((shape, v.clone())).map_err(e)?.into_dyn(),
        Data::I64(v) => Tensor::from_array((shape, v.clone())).map_err(e)?.into_dyn(),
        Data::I32(v) => Tensor::from_array((shape, v.clone())).map_err(e)?.into_dyn(),
        Data::U8(v) => Tensor::from_array((shape, v.clone())).map_err(e)?.into_dyn(),
        Data::Bool(v) => Tensor::from_array((shape, v.clone())).map_err(e)?.into_dyn(),
    })
}

/// A value's data on the host: values on a device are copied to the CPU first.
fn to_host(name: &str, v: &DynValue) -> Result<HostTensor> {
    let t =
        v.view().downcast::<ort::value::DynTensorValueType>().map_err(|e| anyhow!("ONNX Runtime: '{name}': {e}"))?;
    if t.memory_info().is_cpu_accessible() {
        return from_value(name, v);
    }
    let h = t
        .to(ort::memory::AllocationDevice::CPU, 0)
        .map_err(|e| anyhow!("ONNX Runtime: copying '{name}' to the host: {e}"))?;
    from_value(name, &h.into_dyn())
}

fn from_value(name: &str, v: &DynValue) -> Result<HostTensor> {
    macro_rules! attempt {
        ($t:ty, $variant:ident) => {
            if let Ok((shape, data)) = v.try_extract_tensor::<$t>() {
                let shape = shape.iter().map(|&d| d as usize).collect();
                return Ok(HostTensor { shape, data: Data::$variant(data.to_vec()) });
            }
        };
    }
    attempt!(f32, F32);
    attempt!(i64, I64);
    attempt!(f64, F64);
    attempt!(i32, I32);
    attempt!(bool, Bool);
    attempt!(u8, U8);
    bail!("output '{name}' has a type onnxsam cannot read back")
}

impl OrtRunner {
    /// The session for these feeds: the only one, or (lazy) the one committed for the feeds'
    /// sizes of the symbolic dims, committed now if new.
    fn session_for(&mut self, feeds: &[(String, HostTensor)]) -> Result<usize> {
        if !self.lazy {
            return Ok(0);
        }
        let mut dims: Vec<(String, i64)> = Vec::new();
        for (input, syms) in &self.symbols {
            let shape: Option<Vec<i64>> = feeds
                .iter()
                .find(|(n, _)| n == input)
                .map(|(_, t)| t.shape.iter().map(|&d| d as i64).collect())
                .or_else(|| self.held.get(input).and_then(held_shape));
            let Some(shape) = shape else { continue };
            for (axis, name) in syms {
                if let Some(&d) = shape.get(*axis) {
                    if !dims.iter().any(|(n, _)| n == name) {
                        dims.push((name.clone(), d));
                    }
                }
            }
        }
        dims.sort();
        if let Some(i) = self.sessions.iter().position(|(k, _)| *k == dims) {
            return Ok(i);
        }
        let s = self.cfg.commit(&self.bytes, &dims)?;
        self.sessions.push((dims, s));
        Ok(self.sessions.len() - 1)
    }
}

/// The shape of a value ONNX Runtime holds.
fn held_shape(v: &DynValue) -> Option<Vec<i64>> {
    v.view().downcast::<ort::value::DynTensorValueType>().ok().map(|t| t.shape().iter().copied().collect())
}

impl Session for OrtRunner {
    fn run(&mut self, feeds: &[(String, HostTensor)]) -> Result<Vec<(String, HostTensor)>> {
        let k = self.session_for(feeds)?;
        let inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
            feeds.iter().map(|(n, t)| Ok((Cow::from(n.as_str()), to_value(t)?))).collect::<Result<_>>()?;
        let out = self.sessions[k].1.run(inputs).map_err(|e| anyhow!("ONNX Runtime: {}", one_line(&e.to_string())))?;
        self.outputs.iter().map(|n| Ok((n.clone(), to_host(n, &out[n.as_str()])?))).collect()
    }

    fn can_carry(&self) -> bool {
        true
    }

    fn run_carrying(
        &mut self,
        feeds: &[(String, HostTensor)],
        carry: &[(String, String)],
    ) -> Result<Vec<(String, HostTensor)>> {
        let err = |e: ort::Error| anyhow!("ONNX Runtime: {}", one_line(&e.to_string()));
        let k = self.session_for(feeds)?;
        let mut binding = self.sessions[k].1.create_binding().map_err(err)?;
        for (n, t) in feeds {
            if !self.held.contains_key(n) {
                binding.bind_input(n.as_str(), &to_dyn(t)?).map_err(err)?;
            }
        }
        for (i, v) in &self.held {
            binding.bind_input(i.as_str(), v).map_err(err)?;
        }
        let mem = ort::memory::MemoryInfo::new(
            self.device.0.clone(),
            self.device.1,
            ort::memory::AllocatorType::Device,
            ort::memory::MemoryType::Default,
        )
        .map_err(err)?;
        for o in &self.outputs {
            binding.bind_output_to_device(o.as_str(), &mem).map_err(err)?;
        }
        let mut out = self.sessions[k].1.run_binding(&binding).map_err(err)?;
        let mut result = Vec::new();
        for o in &self.outputs {
            let v = out.remove(o.as_str()).ok_or_else(|| anyhow!("ONNX Runtime returned no '{o}'"))?;
            match carry.iter().find(|(_, c)| c == o) {
                Some((i, _)) => {
                    self.held.insert(i.clone(), v);
                }
                None => result.push((o.clone(), to_host(o, &v)?)),
            }
        }
        Ok(result)
    }

    fn fetch(&mut self, name: &str) -> Result<HostTensor> {
        let v = self.held.get(name).ok_or_else(|| anyhow!("ONNX Runtime holds no value '{name}'"))?;
        to_host(name, v)
    }

    fn holds(&self, name: &str) -> bool {
        self.held.contains_key(name)
    }

    fn take(&mut self, name: &str) -> Option<Held> {
        self.held.remove(name).map(|v| Held(Box::new(v)))
    }

    fn give(&mut self, name: &str, value: Held) -> Result<()> {
        if !self.inputs.iter().any(|i| i == name) {
            bail!("the graph has no input '{name}' to hold");
        }
        let v = value.0.downcast::<DynValue>().map_err(|_| anyhow!("'{name}' was held by another engine"))?;
        self.held.insert(name.to_string(), *v);
        Ok(())
    }
}
