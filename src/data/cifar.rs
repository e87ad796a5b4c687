//! CIFAR-10/100 binary batches: each record is the label byte(s) then 3072 pixel bytes
//! (1024 red, 1024 green, 1024 blue; 32×32). CIFAR-10: 1 label byte (3073 bytes a record);
//! CIFAR-100: coarse and fine label bytes (3074; onnxsam trains on the fine label).
use std::path::Path;

use anyhow::{bail, Result};

use super::Dataset;

pub fn read_batches(files: &[std::path::PathBuf], hundred: bool) -> Result<Dataset> {
    let rec = if hundred { 3074 } else { 3073 };
    let mut x = Vec::new();
    let mut y = Vec::new();
    for f in files {
        let bytes = std::fs::read(f)
            .map_err(|e| anyhow::anyhow!("{}: cannot read: {}", f.display(), graph_passes::onnx::io_reason(&e)))?;
        if bytes.is_empty() || bytes.len() % rec != 0 {
            bail!(
                "{}: {} bytes is not a whole number of {rec}-byte CIFAR-{} records (truncated, or the other CIFAR?)",
                f.display(),
                bytes.len(),
                if hundred { 100 } else { 10 }
            );
        }
        for r in bytes.chunks(rec) {
            y.push(r[rec - 3073] as i64);
            x.extend(r[rec - 3072..].iter().map(|&p| p as f32 / 255.0));
        }
    }
    let classes = if hundred { 100 } else { 10 };
    if let Some(bad) = y.iter().find(|&&l| l as usize >= classes) {
        bail!("{}: label {bad} in a CIFAR-{classes} file (is it CIFAR-100?)", files[0].display());
    }
    Ok(Dataset::images(x, &[3, 32, 32], y, classes, files[0].display().to_string()))
}

pub fn load(path: &Path) -> Result<(Dataset, Option<Dataset>)> {
    if !path.is_dir() {
        let hundred =
            path.file_name().and_then(|s| s.to_str()).map(|s| s == "train.bin" || s == "test.bin").unwrap_or(false);
        return Ok((read_batches(&[path.to_path_buf()], hundred)?, None));
    }
    if path.join("train.bin").exists() {
        let test = path.join("test.bin");
        let t = if test.exists() { Some(read_batches(&[test], true)?) } else { None };
        return Ok((read_batches(&[path.join("train.bin")], true)?, t));
    }
    let train: Vec<_> = (1..=5).map(|i| path.join(format!("data_batch_{i}.bin"))).filter(|p| p.exists()).collect();
    let test = path.join("test_batch.bin");
    let t = if test.exists() { Some(read_batches(&[test.clone()], false)?) } else { None };
    if train.is_empty() {
        match t {
            Some(t) => return Ok((t, None)),
            None => bail!("{}: no data_batch_*.bin or test_batch.bin", path.display()),
        }
    }
    Ok((read_batches(&train, false)?, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(label: u8, base: u8, hundred: bool) -> Vec<u8> {
        let mut r = if hundred { vec![label / 10, label] } else { vec![label] };
        r.extend((0..3072).map(|i| base.wrapping_add((i % 251) as u8)));
        r
    }

    #[test]
    fn cifar_records_are_read_as_labels_and_planar_rgb() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("data_batch_1.bin");
        let bytes: Vec<u8> = [record(3, 0, false), record(9, 7, false)].concat();
        std::fs::write(&f, &bytes).unwrap();
        let (d, test) = load(dir.path()).unwrap();
        assert!(test.is_none());
        assert_eq!(d.labels().unwrap(), &[3, 9]);
        assert_eq!(d.float_samples().unwrap().1, &[3, 32, 32]);
        assert_eq!(d.float_samples().unwrap().0[1024], (1024 % 251) as f32 / 255.0, "green plane starts at 1024");
        assert_eq!(d.float_samples().unwrap().0[3072], 7.0 / 255.0, "second record");
        // CIFAR-100: coarse and fine label bytes; the fine one is the label
        let g = dir.path().join("train.bin");
        std::fs::write(&g, record(57, 0, true)).unwrap();
        let (d, _) = load(dir.path()).unwrap();
        assert_eq!(d.labels().unwrap(), &[57]);
        assert_eq!(d.classes, 100);
        // a truncated file: one line naming it
        std::fs::write(&f, &bytes[..5000]).unwrap();
        std::fs::remove_file(&g).unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("data_batch_1.bin") && e.contains("not a whole number"), "{e}");
    }
}
