//! Executing graphs: one small trait, two engines. tract is embedded and always there; ONNX
//! Runtime is loaded at run time from a library the user has (see `discover`).
pub mod discover;
pub mod ort;
pub mod tract;

use std::fmt;
use std::path::PathBuf;

use anyhow::{bail, Result};
use graph_passes::onnx::ModelProto;

use crate::tensor::HostTensor;

pub trait Session {
    /// Runs the graph; returns every graph output, in the graph's order.
    fn run(&mut self, feeds: &[(String, HostTensor)]) -> Result<Vec<(String, HostTensor)>>;

    /// Whether `run_carrying` keeps values on the engine's device between runs.
    fn can_carry(&self) -> bool {
        false
    }

    /// Like `run`, but each (input, output) pair of `carry` stays on the engine's device: the
    /// input is read from `feeds` while the session holds no value for it, and afterwards the
    /// previous run's output is bound to it without a copy to the host (parameters, optimizer
    /// state and running statistics of a training step). Returns the other outputs.
    fn run_carrying(
        &mut self,
        _feeds: &[(String, HostTensor)],
        _carry: &[(String, String)],
    ) -> Result<Vec<(String, HostTensor)>> {
        bail!("this engine does not keep values between runs")
    }

    /// The value the session holds for a carried input (copied to the host).
    fn fetch(&mut self, name: &str) -> Result<HostTensor> {
        bail!("this engine holds no value '{name}'")
    }

    /// Whether the session holds a value for this input (it is then not fed).
    fn holds(&self, _name: &str) -> bool {
        false
    }

    /// Removes the value held for an input, still on the device, to `give` it to another
    /// session of the same backend (m-SAM's micro-batch and apply graphs share parameters and
    /// the accumulated gradient this way).
    fn take(&mut self, _name: &str) -> Option<Held> {
        None
    }

    /// Holds `value` (from `take`) for input `name`: runs with `run_carrying` bind it.
    fn give(&mut self, name: &str, _value: Held) -> Result<()> {
        bail!("this engine cannot hold '{name}'")
    }
}

/// A value one session held on the engine's device, moving to another session.
pub struct Held(pub Box<dyn std::any::Any>);

pub trait Backend {
    /// A short description: engine, version, device.
    fn describe(&self) -> String;
    fn load(&self, model: &ModelProto) -> Result<Box<dyn Session>>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// ONNX Runtime when a library is found, else tract
    Auto,
    /// ONNX Runtime (CPU or CUDA)
    Ort,
    /// tract, embedded (pure Rust, CPU)
    Tract,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(i32),
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => match s.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
                Some(n) => Ok(Device::Cuda(n)),
                None => Err(format!("unknown device '{s}' (use cpu, cuda or cuda:N)")),
            },
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// What the user asked for on the command line.
#[derive(Clone, Debug)]
pub struct BackendRequest {
    pub kind: BackendKind,
    pub ort_lib: Option<PathBuf>,
    pub device: Device,
    pub threads: Option<usize>,
}

/// Picks the engine; says which on stderr when `announce`.
pub fn select(req: &BackendRequest, announce: bool) -> Result<Box<dyn Backend>> {
    let threads = req.threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let backend: Box<dyn Backend> = match req.kind {
        BackendKind::Tract => {
            if req.device != Device::Cpu {
                bail!(
                    "--backend tract runs on the CPU only; use --backend ort with onnxruntime-gpu for {}",
                    req.device
                );
            }
            Box::new(tract::TractBackend::new())
        }
        BackendKind::Ort => {
            let lib = discover::find_ort(req.ort_lib.as_deref())?
                .ok_or_else(|| anyhow::anyhow!("{}", discover::NOT_FOUND))?;
            Box::new(ort::OrtBackend::new(&lib, req.device.clone(), threads)?)
        }
        BackendKind::Auto => match discover::find_ort(req.ort_lib.as_deref())? {
            Some(lib) => Box::new(ort::OrtBackend::new(&lib, req.device.clone(), threads)?),
            None if req.device != Device::Cpu => {
                bail!("--device {} needs ONNX Runtime with CUDA: {}", req.device, discover::NOT_FOUND_GPU)
            }
            None => Box::new(tract::TractBackend::new()),
        },
    };
    if announce {
        crate::error::say(format!("backend: {}", backend.describe()));
    }
    Ok(backend)
}
