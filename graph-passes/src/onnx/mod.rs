//! ONNX files: load (with external data, confined to the model's folder), checks, save.
pub mod metadata;
pub mod proto;
pub mod tensor;

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::{Component, Path, PathBuf};

use prost::Message;

use crate::{bail, err, Result};
pub use proto::*;

/// Opset domains onnxsam knows; others must be defined by the model's own functions.
pub const KNOWN_DOMAINS: &[&str] = &["", "ai.onnx", "ai.onnx.ml", "com.microsoft"];
/// Default-domain opsets we test against (PyTorch exports 17–21); others load with a note.
pub const TESTED_OPSETS: std::ops::RangeInclusive<i64> = 17..=21;

/// Why a file could not be opened or read, in words (no OS error codes in messages).
pub fn io_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::NotFound => "no such file".into(),
        K::PermissionDenied => "permission denied".into(),
        K::IsADirectory => "it is a folder, not a file".into(),
        K::AlreadyExists => "it already exists".into(),
        K::NotADirectory => "a part of the path is a file, not a folder".into(),
        K::StorageFull => "the disk is full".into(),
        _ => {
            let s = e.to_string();
            s.split(" (os error").next().unwrap_or(&s).to_string()
        }
    }
}

/// Reads and checks a model; tensors stored as external data are read into `raw_data`.
pub fn load_model(path: &Path) -> Result<ModelProto> {
    let shown = path.display();
    let bytes = fs::read(path).map_err(|e| err!("{shown}: cannot read: {}", io_reason(&e)))?;
    if bytes.is_empty() {
        bail!("{shown}: file is empty, not an ONNX model");
    }
    // decoded from a shared buffer: tensors' raw_data are slices of it, not copies
    let shared = prost::bytes::Bytes::from(bytes);
    let mut model =
        ModelProto::decode(shared.clone()).map_err(|e| err!("{shown}: {}", explain_decode_error(&shared, &e)))?;
    check_model(&model).map_err(|e| err!("{shown}: {e}"))?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
    resolve_external_data(&mut model, &dir).map_err(|e| err!("{shown}: {e}"))?;
    check_contents(&mut model).map_err(|e| err!("{shown}: {e}"))?;
    Ok(model)
}

/// What a well-formed file has and a damaged one may not: every node an output, every tensor
/// dims ≥ 0 whose element count its data matches (a tensor of 2⁴⁰ elements with no data is not
/// allocated on trust).
fn check_contents(model: &mut ModelProto) -> Result<()> {
    if let Some(g) = &model.graph {
        for n in &g.node {
            if n.output.iter().all(|o| o.is_empty()) {
                bail!("node '{}' (op {}) has no output; the file is damaged: export the model again", n.name, n.op_type);
            }
        }
    }
    for_each_tensor_mut(model, &mut |t| {
        let what = || if t.name.is_empty() { "a constant tensor".to_string() } else { format!("tensor '{}'", t.name) };
        if t.dims.iter().any(|&d| d < 0) {
            bail!("{} has a negative dimension {:?}; the file is damaged: export the model again", what(), t.dims);
        }
        let numel = t.dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
        let Some(numel) = numel else { bail!("{} has dimensions {:?} too large to hold; the file is damaged", what(), t.dims) };
        let Some(size) = tensor::elem_size(t.data_type) else { return Ok(()) };
        let held = if !t.raw_data.is_empty() {
            Some(t.raw_data.len() as u64 / size as u64)
        } else {
            match t.data_type {
                data_type::FLOAT => Some(t.float_data.len() as u64),
                data_type::DOUBLE => Some(t.double_data.len() as u64),
                data_type::INT64 => Some(t.int64_data.len() as u64),
                data_type::UINT64 | data_type::UINT32 => Some(t.uint64_data.len() as u64),
                _ => Some(t.int32_data.len() as u64),
            }
        };
        let raw_exact = t.raw_data.is_empty() || t.raw_data.len() % size == 0;
        if held != Some(numel) || !raw_exact {
            bail!(
                "{} has dimensions {:?} ({numel} elements) but its data holds {}; the file is damaged or truncated: export the model again",
                what(),
                t.dims,
                match held {
                    Some(h) if raw_exact => format!("{h}"),
                    _ => format!("{} bytes", t.raw_data.len()),
                }
            );
        }
        Ok(())
    })
}

/// Why bytes that failed to decode as a ModelProto are not a model, in words.
fn explain_decode_error(bytes: &[u8], e: &prost::DecodeError) -> String {
    match scan_wire_format(bytes) {
        WireScan::Valid => format!("valid protobuf but not an ONNX model ({e}); is it a tensor or another message? export the model with torch.onnx.export"),
        WireScan::Truncated => "truncated ONNX file (the protobuf ends in the middle of a field); copy or download it again".to_string(),
        WireScan::Invalid => "not an ONNX model: the bytes are not protobuf (corrupt file or another format)".to_string(),
    }
}

enum WireScan {
    Valid,
    Truncated,
    Invalid,
}

/// Walks protobuf wire format without a schema. "Truncated" when it starts like a model (known
/// ModelProto field numbers) and runs past the end.
fn scan_wire_format(b: &[u8]) -> WireScan {
    fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *b.get(*i)?;
            *i += 1;
            v |= ((byte & 0x7f) as u64) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    // ModelProto's fields with their wire types: ir_version and model_version are varints
    let model_field = |field: u64, wire: u64| match field {
        1 | 5 => wire == 0,
        2 | 3 | 4 | 6 | 7 | 8 | 14 | 20 | 25 => wire == 2,
        _ => false,
    };
    let mut i = 0;
    let mut model_like = 0;
    let mut consistent = true;
    while i < b.len() {
        let truncated = |model_like: usize, consistent: bool| {
            if model_like >= 2 && consistent {
                WireScan::Truncated
            } else {
                WireScan::Invalid
            }
        };
        let Some(key) = varint(b, &mut i) else {
            return truncated(model_like, consistent);
        };
        let (field, wire) = (key >> 3, key & 7);
        if field == 0 {
            return WireScan::Invalid;
        }
        let ok = match wire {
            0 => varint(b, &mut i).is_some(),
            1 => {
                i += 8;
                i <= b.len()
            }
            5 => {
                i += 4;
                i <= b.len()
            }
            2 => match varint(b, &mut i) {
                Some(len) => {
                    i = i.saturating_add(len as usize);
                    i <= b.len()
                }
                None => false,
            },
            _ => return WireScan::Invalid,
        };
        consistent &= model_field(field, wire);
        if !ok {
            return truncated(model_like, consistent);
        }
        model_like += 1;
    }
    WireScan::Valid
}

/// Decodes a model held in memory (no external data allowed).
pub fn decode_model(bytes: &[u8]) -> Result<ModelProto> {
    let model = ModelProto::decode(bytes).map_err(|e| err!("not a valid ONNX protobuf ({e})"))?;
    check_model(&model)?;
    Ok(model)
}

/// Structural checks that tell a model from any other protobuf, and known opset domains.
pub fn check_model(model: &ModelProto) -> Result<()> {
    let Some(graph) = &model.graph else {
        bail!("valid protobuf but not an ONNX model (it has no graph); export the model with torch.onnx.export");
    };
    if model.ir_version <= 0 || model.opset_import.is_empty() {
        bail!(
            "valid protobuf but not an ONNX model (ir_version {}, {} opset imports); export the model with torch.onnx.export",
            model.ir_version,
            model.opset_import.len()
        );
    }
    if model.ir_version > 12 {
        bail!("IR version {} is newer than onnxsam reads (≤ 12); export with an older onnx package", model.ir_version);
    }
    let function_domains: HashSet<&str> = model.functions.iter().map(|f| f.domain.as_str()).collect();
    for op in &model.opset_import {
        if !KNOWN_DOMAINS.contains(&op.domain()) && !function_domains.contains(op.domain()) {
            bail!(
                "unknown opset domain '{}' (version {}); onnxsam runs ai.onnx ops and the model's own functions",
                op.domain(),
                op.version
            );
        }
    }
    let imported: HashSet<&str> = model.opset_import.iter().map(|o| o.domain()).collect();
    for node in &graph.node {
        let d = if node.domain == "ai.onnx" { "" } else { node.domain.as_str() };
        if !imported.contains(d) && !(d.is_empty() && imported.contains("ai.onnx")) {
            bail!(
                "node '{}' (op {}) uses domain '{}' which the model does not import",
                node.name,
                node.op_type,
                node.domain
            );
        }
    }
    Ok(())
}

pub fn default_opset(model: &ModelProto) -> i64 {
    model.opset_import.iter().find(|o| o.domain().is_empty() || o.domain() == "ai.onnx").map(|o| o.version).unwrap_or(0)
}

fn external_field<'a>(t: &'a TensorProto, key: &str) -> Option<&'a str> {
    t.external_data.iter().find(|e| e.key == key).map(|e| e.value.as_str())
}

/// Every TensorProto of the model, subgraphs and Constant attributes included.
pub fn for_each_tensor_mut(model: &mut ModelProto, f: &mut dyn FnMut(&mut TensorProto) -> Result<()>) -> Result<()> {
    fn graph(g: &mut GraphProto, f: &mut dyn FnMut(&mut TensorProto) -> Result<()>) -> Result<()> {
        for t in &mut g.initializer {
            f(t)?;
        }
        for s in &mut g.sparse_initializer {
            if let Some(v) = &mut s.values {
                f(v)?;
            }
        }
        for n in &mut g.node {
            for a in &mut n.attribute {
                if let Some(t) = &mut a.t {
                    f(t)?;
                }
                for t in &mut a.tensors {
                    f(t)?;
                }
                if let Some(sub) = &mut a.g {
                    graph(sub, f)?;
                }
                for sub in &mut a.graphs {
                    graph(sub, f)?;
                }
            }
        }
        Ok(())
    }
    if let Some(g) = &mut model.graph {
        graph(g, f)?;
    }
    Ok(())
}

/// The path of an external data file, refused unless it stays inside `dir`.
pub fn confined_path(dir: &Path, location: &str) -> Result<PathBuf> {
    let rel = Path::new(location);
    if location.is_empty() {
        bail!("external data entry has an empty location");
    }
    if rel.is_absolute() || rel.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
        bail!(
            "external data location '{location}' leaves the model's folder; refused (keep data files beside the model)"
        );
    }
    let full = dir.join(rel);
    let canon_dir = dir.canonicalize().map_err(|e| err!("cannot resolve folder {}: {e}", dir.display()))?;
    let canon = full
        .canonicalize()
        .map_err(|_| err!("external data file '{location}' is missing (looked in {})", dir.display()))?;
    if !canon.starts_with(&canon_dir) {
        bail!("external data location '{location}' points outside the model's folder (symbolic link?); refused");
    }
    Ok(canon)
}

fn resolve_external_data(model: &mut ModelProto, dir: &Path) -> Result<()> {
    let mut cache: std::collections::HashMap<PathBuf, prost::bytes::Bytes> = Default::default();
    for_each_tensor_mut(model, &mut |t| {
        if t.data_location != data_location::EXTERNAL {
            return Ok(());
        }
        let location = external_field(t, "location")
            .ok_or_else(|| err!("tensor '{}' is marked external but names no location", t.name))?
            .to_string();
        let path = confined_path(dir, &location)?;
        if !cache.contains_key(&path) {
            let data = fs::read(&path).map_err(|e| err!("external data file '{location}': {e}"))?;
            cache.insert(path.clone(), data.into());
        }
        let data = &cache[&path];
        let parse = |key: &str| -> Result<Option<usize>> {
            external_field(t, key)
                .map(|v| v.parse::<usize>().map_err(|_| err!("tensor '{}': bad external {key} '{v}'", t.name)))
                .transpose()
        };
        let offset = parse("offset")?.unwrap_or(0);
        let expected = tensor::numel(t) * tensor::elem_size(t.data_type).unwrap_or(0);
        let length = parse("length")?.unwrap_or(expected);
        if offset + length > data.len() {
            bail!(
                "tensor '{}': external data file '{location}' holds {} bytes, but the tensor needs bytes {}..{}; the data file is truncated or belongs to another model",
                t.name,
                data.len(),
                offset,
                offset + length
            );
        }
        if length != expected {
            bail!(
                "tensor '{}': external data length {length} does not match its shape {:?} ({expected} bytes)",
                t.name,
                t.dims
            );
        }
        t.raw_data = data.slice(offset..offset + length);
        t.external_data.clear();
        t.data_location = data_location::DEFAULT;
        Ok(())
    })
}

#[derive(Clone, Debug)]
pub struct SaveOptions {
    /// None: external data only when the model would exceed `threshold_bytes`.
    pub external_data: Option<bool>,
    pub threshold_bytes: usize,
    /// Tensors smaller than this stay inline (ONNX's own convention: 1024 bytes).
    pub min_external_tensor: usize,
}

impl Default for SaveOptions {
    fn default() -> Self {
        SaveOptions { external_data: None, threshold_bytes: 1 << 30, min_external_tensor: 1024 }
    }
}

/// Writes `path` (and `path.data` when weights go beside it), each atomically: temp file + rename.
pub fn save_model(model: &ModelProto, path: &Path, opts: &SaveOptions) -> Result<()> {
    let shown = path.display();
    let file_name = path.file_name().ok_or_else(|| err!("{shown}: not a file path"))?.to_string_lossy().to_string();
    let total: usize = model.encoded_len();
    let external = opts.external_data.unwrap_or(total > opts.threshold_bytes);
    let mut model = model.clone();
    if external {
        let data_name = format!("{file_name}.data");
        let mut blob: Vec<u8> = Vec::new();
        for_each_tensor_mut(&mut model, &mut |t| {
            if t.data_type == data_type::STRING || tensor::data_bytes(t) < opts.min_external_tensor {
                return Ok(());
            }
            tensor::make_raw(t)?;
            while blob.len() % 64 != 0 {
                blob.push(0);
            }
            let offset = blob.len();
            blob.extend_from_slice(&t.raw_data);
            let entry = |k: &str, v: String| StringStringEntryProto { key: k.into(), value: v };
            t.external_data = vec![
                entry("location", data_name.clone()),
                entry("offset", offset.to_string()),
                entry("length", t.raw_data.len().to_string()),
            ];
            t.data_location = data_location::EXTERNAL;
            t.raw_data.clear();
            Ok(())
        })?;
        write_atomic(&path.with_file_name(&data_name), &blob)?;
    }
    write_atomic(path, &model.encode_to_vec())
}

/// Temp file in the same folder, fsync, rename: a crash leaves the old file or the new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let shown = path.display();
    let tmp = path.with_file_name(format!(
        ".{}.tmp{}",
        path.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default(),
        std::process::id()
    ));
    let result = (|| -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        bail!("{shown}: cannot write: {}", io_reason(&e));
    }
    Ok(())
}
