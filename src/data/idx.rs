//! IDX files (MNIST, Fashion-MNIST), raw or gzip-compressed: a big-endian header — two zero
//! bytes, a type code (0x08 = unsigned byte), the number of dimensions — then the dimensions as
//! u32 and the data.
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use super::Dataset;

/// The bytes of a file, gunzipped when it is gzip.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("{}: cannot read: {}", path.display(), graph_passes::onnx::io_reason(&e)))?;
    if bytes.len() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .map_err(|e| anyhow::anyhow!("{}: broken gzip data ({e}); fetch it again", path.display()))?;
        return Ok(out);
    }
    Ok(bytes)
}

/// Dimensions and bytes of an unsigned-byte IDX file.
pub fn read_u8(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let bytes = read_maybe_gz(path)?;
    let shown = path.display();
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        bail!("{shown}: not an IDX file (the header must start with two zero bytes)");
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
    let n = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let body = &bytes[4 + 4 * nd..];
    if n != Some(body.len()) {
        bail!(
            "{shown}: corrupt IDX header: it announces dimensions {dims:?} but the file holds {} values (fetch it again with tools/fetch-data.sh)",
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
    Ok(Dataset::images(
        px.iter().map(|&p| p as f32 / 255.0).collect(),
        &[1, dims[1], dims[2]],
        lb.iter().map(|&l| l as i64).collect(),
        classes,
        images.display().to_string(),
    ))
}

fn find(dir: &Path, name: &str) -> Option<PathBuf> {
    [dir.join(name), dir.join(format!("{name}.gz"))].into_iter().find(|p| p.exists())
}

/// MNIST-style folder: train-images-idx3-ubyte + train-labels-idx1-ubyte (raw or .gz); t10k-…
/// become the test set. A path to an images file reads it with its labels file beside it.
pub fn read_mnist_dir(dir: &Path, test: bool) -> Result<Dataset> {
    let p = if test { "t10k" } else { "train" };
    let images = find(dir, &format!("{p}-images-idx3-ubyte"));
    let labels = find(dir, &format!("{p}-labels-idx1-ubyte"));
    match (images, labels) {
        (Some(i), Some(l)) => read_pair(&i, &l),
        _ => bail!("{}: no {p}-images-idx3-ubyte and {p}-labels-idx1-ubyte (raw or .gz) here", dir.display()),
    }
}

pub fn load(path: &Path) -> Result<(Dataset, Option<Dataset>)> {
    if path.is_dir() {
        let train = read_mnist_dir(path, false)?;
        let test =
            if find(path, "t10k-images-idx3-ubyte").is_some() { Some(read_mnist_dir(path, true)?) } else { None };
        return Ok((train, test));
    }
    let name = path.file_name().and_then(|s| s.to_str()).unwrap_or("");
    if !name.contains("images") {
        bail!("{}: give the images file (…-images-idx3-ubyte) or the folder holding it", path.display());
    }
    let labels = path.with_file_name(name.replace("images-idx3", "labels-idx1"));
    Ok((read_pair(path, &labels)?, None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn gzip_compressed_idx_reads_like_raw() {
        let dir = tempfile::tempdir().unwrap();
        let mut img = vec![0u8, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2];
        img.extend([0, 255, 128, 1, 2, 3, 4, 5]);
        let lab = vec![0u8, 0, 8, 1, 0, 0, 0, 2, 7, 1];
        let gz = |b: &[u8]| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(b).unwrap();
            e.finish().unwrap()
        };
        std::fs::write(dir.path().join("train-images-idx3-ubyte.gz"), gz(&img)).unwrap();
        std::fs::write(dir.path().join("train-labels-idx1-ubyte.gz"), gz(&lab)).unwrap();
        let (d, test) = load(dir.path()).unwrap();
        assert!(test.is_none());
        assert_eq!(d.labels().unwrap(), &[7, 1]);
        assert_eq!(d.float_samples().unwrap().1, &[1, 2, 2]);
        assert_eq!(d.float_samples().unwrap().0[1], 1.0);
        // truncated gzip: an error naming the file
        let broken = gz(&img);
        std::fs::write(dir.path().join("train-images-idx3-ubyte.gz"), &broken[..broken.len() / 2]).unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("train-images-idx3-ubyte.gz"), "{e}");
    }
}
