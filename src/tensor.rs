//! Host tensors (what backends take and return) and .npz files of them.
use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use graph_passes::onnx::{data_type as dt, tensor::dtype_name};
use ndarray::{ArrayD, IxDyn};
use ndarray_npy::{NpzReader, NpzWriter};

#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    U8(Vec<u8>),
    Bool(Vec<bool>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Data,
}

impl HostTensor {
    pub fn f32(shape: &[usize], v: Vec<f32>) -> HostTensor {
        HostTensor { shape: shape.to_vec(), data: Data::F32(v) }
    }
    pub fn i64(shape: &[usize], v: Vec<i64>) -> HostTensor {
        HostTensor { shape: shape.to_vec(), data: Data::I64(v) }
    }
    /// The ONNX TensorProto.DataType of the data.
    pub fn onnx_dtype(&self) -> i32 {
        match self.data {
            Data::F32(_) => dt::FLOAT,
            Data::F64(_) => dt::DOUBLE,
            Data::I64(_) => dt::INT64,
            Data::I32(_) => dt::INT32,
            Data::U8(_) => dt::UINT8,
            Data::Bool(_) => dt::BOOL,
        }
    }
    pub fn dtype_name(&self) -> &'static str {
        dtype_name(self.onnx_dtype())
    }
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Values as f64, whatever the type (for comparisons and reports).
    pub fn to_f64(&self) -> Vec<f64> {
        match &self.data {
            Data::F32(v) => v.iter().map(|&x| x as f64).collect(),
            Data::F64(v) => v.clone(),
            Data::I64(v) => v.iter().map(|&x| x as f64).collect(),
            Data::I32(v) => v.iter().map(|&x| x as f64).collect(),
            Data::U8(v) => v.iter().map(|&x| x as f64).collect(),
            Data::Bool(v) => v.iter().map(|&x| x as u8 as f64).collect(),
        }
    }
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            Data::F32(v) => Some(v),
            _ => None,
        }
    }
    /// Largest |a − b| over two tensors of equal shape.
    pub fn max_abs_diff(&self, other: &HostTensor) -> Option<f64> {
        if self.shape != other.shape {
            return None;
        }
        Some(self.to_f64().iter().zip(other.to_f64()).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max))
    }
}

fn to_array<T: Clone>(shape: &[usize], v: &[T]) -> ArrayD<T> {
    ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).expect("shape matches data length")
}

/// Reads every array of an .npz file, keyed by name (without the `.npy` suffix).
pub fn read_npz(path: &Path) -> Result<BTreeMap<String, HostTensor>> {
    let shown = path.display();
    let file = open(path)?;
    let mut npz = NpzReader::new(file).map_err(|e| anyhow!("{shown}: not a valid .npz file ({e})"))?;
    let names = npz.names().map_err(|e| anyhow!("{shown}: not a valid .npz file ({e})"))?;
    let mut out = BTreeMap::new();
    for name in names {
        let key = name.trim_end_matches(".npy").to_string();
        let t = read_entry(&mut npz, &name).with_context(|| format!("{shown}: array '{key}'"))?;
        out.insert(key, t);
    }
    Ok(out)
}

/// One array of a .npz file by name (without `.npy`), None when the file has no such array;
/// the other arrays are not read.
pub fn read_npz_array(path: &Path, key: &str) -> Result<Option<HostTensor>> {
    let shown = path.display();
    let file = open(path)?;
    let mut npz = NpzReader::new(file).map_err(|e| anyhow!("{shown}: not a valid .npz file ({e})"))?;
    let names = npz.names().map_err(|e| anyhow!("{shown}: not a valid .npz file ({e})"))?;
    let Some(name) = names.into_iter().find(|n| n.trim_end_matches(".npy") == key) else {
        return Ok(None);
    };
    Ok(Some(read_entry(&mut npz, &name).with_context(|| format!("{shown}: array '{key}'"))?))
}

/// Tries `$read` with `$t` standing for each element type onnxsam stores, in order; the first
/// that reads is the answer (.npy/.npz files carry their dtype, but ndarray-npy reads by type).
macro_rules! read_any_dtype {
    (|$t:ident| $read:expr) => {{
        let mut out: Option<HostTensor> = None;
        read_any_dtype!(@one out, $t, $read, f32, F32);
        read_any_dtype!(@one out, $t, $read, f64, F64);
        read_any_dtype!(@one out, $t, $read, i64, I64);
        read_any_dtype!(@one out, $t, $read, i32, I32);
        read_any_dtype!(@one out, $t, $read, u8, U8);
        read_any_dtype!(@one out, $t, $read, bool, Bool);
        out
    }};
    (@one $out:ident, $t:ident, $read:expr, $ty:ty, $variant:ident) => {
        if $out.is_none() {
            #[allow(dead_code)]
            type $t = $ty;
            if let Ok(a) = $read {
                let shape = a.shape().to_vec();
                $out = Some(HostTensor { shape, data: Data::$variant(a.as_standard_layout().iter().cloned().collect()) });
            }
        }
    };
}

fn read_entry(npz: &mut NpzReader<File>, name: &str) -> Result<HostTensor> {
    read_any_dtype!(|T| npz.by_name::<ndarray::OwnedRepr<T>, IxDyn>(name)).ok_or_else(|| {
        anyhow!("unsupported dtype (onnxsam reads float32, float64, int64, int32, uint8 and bool arrays)")
    })
}

/// Writes tensors to an .npz file atomically (temp file + rename).
pub fn write_npz(path: &Path, tensors: &[(String, HostTensor)]) -> Result<()> {
    let tmp = path.with_file_name(format!(".{}.tmp", path.file_name().unwrap_or_default().to_string_lossy()));
    {
        let file = File::create(&tmp)
            .map_err(|e| anyhow!("{}: cannot write: {}", path.display(), graph_passes::onnx::io_reason(&e)))?;
        let mut npz = NpzWriter::new(file);
        for (name, t) in tensors {
            let r = match &t.data {
                Data::F32(v) => npz.add_array(name.as_str(), &to_array(&t.shape, v)),
                Data::F64(v) => npz.add_array(name.as_str(), &to_array(&t.shape, v)),
                Data::I64(v) => npz.add_array(name.as_str(), &to_array(&t.shape, v)),
                Data::I32(v) => npz.add_array(name.as_str(), &to_array(&t.shape, v)),
                Data::U8(v) => npz.add_array(name.as_str(), &to_array(&t.shape, v)),
                Data::Bool(v) => npz.add_array(name.as_str(), &to_array(&t.shape, v)),
            };
            r.map_err(|e| anyhow!("{}: cannot write array '{name}': {e}", path.display()))?;
        }
        let f = npz.finish().map_err(|e| anyhow!("{}: cannot write: {e}", path.display()))?;
        f.sync_all()?;
    }
    if path.is_dir() {
        let _ = std::fs::remove_file(&tmp);
        bail!("{}: cannot write: it is a folder", path.display());
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow!("{}: cannot write: {}", path.display(), graph_passes::onnx::io_reason(&e))
    })?;
    Ok(())
}

/// Opens a data file, saying in words why not (a folder, missing, no permission).
fn open(path: &Path) -> Result<File> {
    let f = File::open(path)
        .map_err(|e| anyhow!("{}: cannot open: {}", path.display(), graph_passes::onnx::io_reason(&e)))?;
    if path.is_dir() {
        bail!("{}: cannot open: it is a folder, not a file", path.display());
    }
    Ok(f)
}

/// Reads one .npy file.
pub fn read_npy(path: &Path) -> Result<HostTensor> {
    use ndarray_npy::ReadNpyExt;
    let shown = path.display();
    open(path)?;
    read_any_dtype!(|T| File::open(path)
        .map_err(|e| e.to_string())
        .and_then(|f| ArrayD::<T>::read_npy(f).map_err(|e| e.to_string())))
    .ok_or_else(|| anyhow!("{shown}: not a .npy file of float32, float64, int64, int32, uint8 or bool"))
}
