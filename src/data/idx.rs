//! IDX files (MNIST, Fashion-MNIST): a big-endian header — two zero bytes, a type code (0x08 =
//! unsigned byte), the number of dimensions — then the dimensions as u32 and the data.
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::Dataset;

/// Dimensions and bytes of an unsigned-byte IDX file.
pub fn read_u8(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let shown = path.display();
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        bail!("{shown}: not an IDX file (the header must start with two zero bytes); is it gzip-compressed or another format?");
    }
    if bytes[2] != 0x08 {
        bail!("{shown}: IDX type code 0x{:02x}; onnxsam reads unsigned-byte IDX (0x08) as MNIST uses", bytes[2]);
    }
    let nd = bytes[3] as usize;
    if nd == 0 || bytes.len() < 4 + 4 * nd {
        bail!("{shown}: truncated IDX header ({nd} dimensions, {} bytes)", bytes.len());
    }
    let dims: Vec<usize> = (0..nd)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize)
        .collect();
    let n: usize = dims.iter().product();
    let body = &bytes[4 + 4 * nd..];
    if body.len() != n {
        bail!(
            "{shown}: the header announces {dims:?} = {n} values but the file holds {} (truncated or corrupt; fetch it again with tools/fetch-data.sh)",
            body.len()
        );
    }
    Ok((dims, body.to_vec()))
}

/// An images file [N, H, W] and a labels file [N] as a dataset of [1, H, W] samples scaled to [0, 1].
pub fn read_pair(images: &Path, labels: &Path) -> Result<Dataset> {
    let (dims, px) = read_u8(images)?;
    if dims.len() != 3 {
        bail!("{}: an images IDX file has 3 dimensions [N, H, W], this one {dims:?}", images.display());
    }
    let (ldims, lb) = read_u8(labels)?;
    if ldims.len() != 1 || ldims[0] != dims[0] {
        bail!("{}: {ldims:?} labels for {} images in {}", labels.display(), dims[0], images.display());
    }
    let classes = lb.iter().copied().max().map(|m| m as usize + 1).unwrap_or(0).max(10);
    Ok(Dataset {
        x: px.iter().map(|&p| p as f32 / 255.0).collect(),
        sample_shape: vec![1, dims[1], dims[2]],
        y: lb.iter().map(|&l| l as i64).collect(),
        classes,
    })
}

/// MNIST-style folder: train-images-idx3-ubyte + train-labels-idx1-ubyte (or t10k-… for `test`).
pub fn read_mnist_dir(dir: &Path, test: bool) -> Result<Dataset> {
    let p = if test { "t10k" } else { "train" };
    read_pair(&dir.join(format!("{p}-images-idx3-ubyte")), &dir.join(format!("{p}-labels-idx1-ubyte")))
}
