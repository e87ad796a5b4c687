//! Reading and building TensorProto values: dtype facts, raw bytes, typed views.
use super::proto::{data_type as dt, TensorProto};
use crate::{bail, Result};

/// Bytes per element, None for strings and sub-byte types.
pub fn elem_size(data_type: i32) -> Option<usize> {
    Some(match data_type {
        dt::FLOAT | dt::INT32 | dt::UINT32 => 4,
        dt::DOUBLE | dt::INT64 | dt::UINT64 | dt::COMPLEX64 => 8,
        dt::COMPLEX128 => 16,
        dt::UINT8 | dt::INT8 | dt::BOOL => 1,
        dt::UINT16 | dt::INT16 | dt::FLOAT16 | dt::BFLOAT16 => 2,
        17..=20 => 1, // float8 variants
        _ => return None,
    })
}

pub fn dtype_name(data_type: i32) -> &'static str {
    match data_type {
        dt::FLOAT => "float32",
        dt::UINT8 => "uint8",
        dt::INT8 => "int8",
        dt::UINT16 => "uint16",
        dt::INT16 => "int16",
        dt::INT32 => "int32",
        dt::INT64 => "int64",
        dt::STRING => "string",
        dt::BOOL => "bool",
        dt::FLOAT16 => "float16",
        dt::DOUBLE => "float64",
        dt::UINT32 => "uint32",
        dt::UINT64 => "uint64",
        dt::COMPLEX64 => "complex64",
        dt::COMPLEX128 => "complex128",
        dt::BFLOAT16 => "bfloat16",
        17..=20 => "float8",
        21 => "uint4",
        22 => "int4",
        23 => "float4e2m1",
        _ => "undefined",
    }
}

pub fn is_float(data_type: i32) -> bool {
    matches!(data_type, dt::FLOAT | dt::DOUBLE | dt::FLOAT16 | dt::BFLOAT16)
}

pub fn numel(t: &TensorProto) -> usize {
    t.dims.iter().map(|&d| d.max(0) as usize).product()
}

/// The tensor's data as little-endian raw bytes, whichever field holds it.
pub fn raw_bytes(t: &TensorProto) -> Result<Vec<u8>> {
    if !t.raw_data.is_empty() || numel(t) == 0 {
        return Ok(t.raw_data.to_vec());
    }
    let mut out = Vec::new();
    match t.data_type {
        dt::FLOAT => t.float_data.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        dt::DOUBLE => t.double_data.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        dt::INT64 => t.int64_data.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        dt::UINT64 => t.uint64_data.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        dt::UINT32 => t.uint64_data.iter().for_each(|v| out.extend_from_slice(&(*v as u32).to_le_bytes())),
        dt::INT32 => t.int32_data.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        // int32_data holds the smaller integer types and float16 bit patterns, one per entry
        dt::INT16 | dt::UINT16 | dt::FLOAT16 | dt::BFLOAT16 => {
            t.int32_data.iter().for_each(|v| out.extend_from_slice(&(*v as u16).to_le_bytes()))
        }
        dt::INT8 | dt::UINT8 | dt::BOOL => t.int32_data.iter().for_each(|v| out.push(*v as u8)),
        other => bail!("tensor '{}': cannot read data of type {}", t.name, dtype_name(other)),
    }
    Ok(out)
}

/// Moves typed data fields into raw_data (what external data and backends expect).
pub fn make_raw(t: &mut TensorProto) -> Result<()> {
    if t.data_type == dt::STRING || !t.raw_data.is_empty() {
        return Ok(());
    }
    t.raw_data = raw_bytes(t)?.into();
    t.float_data.clear();
    t.double_data.clear();
    t.int32_data.clear();
    t.int64_data.clear();
    t.uint64_data.clear();
    Ok(())
}

fn check_len(t: &TensorProto, bytes: &[u8], size: usize) -> Result<()> {
    if bytes.len() != numel(t) * size {
        bail!(
            "tensor '{}': holds {} bytes of data but its shape {:?} needs {}",
            t.name,
            bytes.len(),
            t.dims,
            numel(t) * size
        );
    }
    Ok(())
}

/// Values as f64 for any numeric type (used for comparisons and constants).
pub fn to_f64(t: &TensorProto) -> Result<Vec<f64>> {
    let b = raw_bytes(t)?;
    let size = elem_size(t.data_type).unwrap_or(0);
    check_len(t, &b, size)?;
    Ok(match t.data_type {
        dt::FLOAT => b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
        dt::DOUBLE => b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect(),
        dt::INT64 => b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
        dt::INT32 => b.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
        dt::UINT64 => b.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
        dt::UINT32 => b.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
        dt::INT16 => b.chunks_exact(2).map(|c| i16::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
        dt::UINT16 => b.chunks_exact(2).map(|c| u16::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
        dt::INT8 => b.iter().map(|&v| v as i8 as f64).collect(),
        dt::UINT8 | dt::BOOL => b.iter().map(|&v| v as f64).collect(),
        other => bail!("tensor '{}': cannot read {} values", t.name, dtype_name(other)),
    })
}

pub fn to_f32(t: &TensorProto) -> Result<Vec<f32>> {
    if t.data_type == dt::FLOAT {
        let b = raw_bytes(t)?;
        check_len(t, &b, 4)?;
        return Ok(b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect());
    }
    Ok(to_f64(t)?.into_iter().map(|v| v as f32).collect())
}

pub fn to_i64(t: &TensorProto) -> Result<Vec<i64>> {
    match t.data_type {
        dt::INT64 => {
            let b = raw_bytes(t)?;
            check_len(t, &b, 8)?;
            Ok(b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect())
        }
        dt::INT32 | dt::INT16 | dt::INT8 | dt::UINT8 | dt::UINT16 | dt::UINT32 | dt::BOOL => {
            Ok(to_f64(t)?.into_iter().map(|v| v as i64).collect())
        }
        other => bail!("tensor '{}': expected integer values, found {}", t.name, dtype_name(other)),
    }
}

pub fn from_f32(name: &str, dims: &[i64], data: &[f32]) -> TensorProto {
    TensorProto {
        name: name.to_string(),
        dims: dims.to_vec(),
        data_type: dt::FLOAT,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>().into(),
        ..Default::default()
    }
}

pub fn from_i64(name: &str, dims: &[i64], data: &[i64]) -> TensorProto {
    TensorProto {
        name: name.to_string(),
        dims: dims.to_vec(),
        data_type: dt::INT64,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>().into(),
        ..Default::default()
    }
}

pub fn from_bool(name: &str, dims: &[i64], data: &[bool]) -> TensorProto {
    TensorProto {
        name: name.to_string(),
        dims: dims.to_vec(),
        data_type: dt::BOOL,
        raw_data: data.iter().map(|&v| v as u8).collect::<Vec<u8>>().into(),
        ..Default::default()
    }
}

/// Bytes the tensor's data takes (for reports).
pub fn data_bytes(t: &TensorProto) -> usize {
    numel(t) * elem_size(t.data_type).unwrap_or(0)
}
