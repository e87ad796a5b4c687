//! Finding the ONNX Runtime library: `--ort-lib PATH`, then `ORT_DYLIB_PATH`, then a pip-installed
//! `onnxruntime` / `onnxruntime-gpu` in the active `python3` (its `onnxruntime/capi/libonnxruntime.so.*`).
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Result};
use serde::Serialize;

pub const NOT_FOUND: &str = "no ONNX Runtime library found: pass --ort-lib PATH, set ORT_DYLIB_PATH, or `pip install onnxruntime` (CPU) / `pip install onnxruntime-gpu` (CUDA); or use --backend tract";
pub const NOT_FOUND_GPU: &str = "no ONNX Runtime library found; `pip install onnxruntime-gpu` (CUDA 13 build) or pass --ort-lib PATH to its libonnxruntime.so";

#[derive(Clone, Debug, Serialize)]
pub struct OrtLibrary {
    pub path: PathBuf,
    /// Where it was found: "--ort-lib", "ORT_DYLIB_PATH" or "python3 (pip onnxruntime)".
    pub source: String,
    /// From the file name (libonnxruntime.so.1.31.1), when it carries one.
    pub version: Option<String>,
    /// The CUDA execution provider library beside it, if any.
    pub cuda_provider: Option<PathBuf>,
}

fn describe_lib(path: PathBuf, source: &str) -> OrtLibrary {
    let name = path.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    let version = name
        .split(".so.")
        .nth(1)
        .or_else(|| name.strip_prefix("libonnxruntime.").and_then(|s| s.strip_suffix(".dylib")))
        .map(String::from);
    let cuda = path.parent().map(|d| d.join("libonnxruntime_providers_cuda.so")).filter(|p| p.exists());
    OrtLibrary { path, source: source.to_string(), version, cuda_provider: cuda }
}

fn check_file(path: &Path, source: &str) -> Result<OrtLibrary> {
    if !path.is_file() {
        bail!("{source} names {}, which is not a file; point it at libonnxruntime.so", path.display());
    }
    Ok(describe_lib(path.to_path_buf(), source))
}

/// The library in a pip-installed onnxruntime (found without importing it).
fn from_python() -> Option<OrtLibrary> {
    let script = "import importlib.util as u\ns=u.find_spec('onnxruntime')\nprint(list(s.submodule_search_locations)[0] if s and s.submodule_search_locations else '')";
    let out = Command::new("python3").args(["-c", script]).output().ok()?;
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if dir.is_empty() {
        return None;
    }
    let capi = Path::new(&dir).join("capi");
    let mut libs: Vec<PathBuf> = std::fs::read_dir(&capi)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
            n.starts_with("libonnxruntime.so")
                || n == "libonnxruntime.dylib"
                || (n.starts_with("libonnxruntime.") && n.ends_with(".dylib"))
        })
        .collect();
    libs.sort_by_key(|p| std::cmp::Reverse(p.to_string_lossy().len()));
    libs.into_iter().next().map(|p| describe_lib(p, "python3 (pip onnxruntime)"))
}

/// Finds the library; Ok(None) when none is installed, Err when an explicit path is wrong.
pub fn find_ort(explicit: Option<&Path>) -> Result<Option<OrtLibrary>> {
    if let Some(p) = explicit {
        return check_file(p, "--ort-lib").map(Some);
    }
    if let Ok(p) = std::env::var("ORT_DYLIB_PATH") {
        if !p.is_empty() {
            return check_file(Path::new(&p), "ORT_DYLIB_PATH").map(Some);
        }
    }
    Ok(from_python())
}
