//! Datasets: MNIST/Fashion-MNIST IDX (raw or .gz), CIFAR-10/100 binary batches, .npz/.npy — as
//! float32 samples with int64 labels; normalization, symmetric label noise, batches.
pub mod cifar;
pub mod idx;
pub mod loader;

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use crate::grad::Batch;
use crate::tensor::{Data, HostTensor};

/// A labelled dataset in memory: `x` [N, …] float32, `y` [N] int64.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub x: Vec<f32>,
    /// Shape of one sample.
    pub sample_shape: Vec<usize>,
    pub y: Vec<i64>,
    pub classes: usize,
    /// Where it came from (for messages).
    pub source: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum Format {
    /// MNIST-style IDX files (a folder with train-/t10k- files, raw or .gz)
    Idx,
    /// CIFAR-10/100 binary batches (a folder with data_batch_*.bin/test_batch.bin or train.bin/test.bin)
    Cifar,
    /// .npz with x, y (and optionally x_test, y_test), or a folder with x.npy and y.npy
    Npz,
}

/// Which known dataset a path holds (for default normalization).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    Mnist,
    FashionMnist,
    Cifar10,
    Cifar100,
    Other,
}

impl Kind {
    /// Per-channel mean and std that PyTorch examples use.
    pub fn normalization(self) -> Option<(Vec<f32>, Vec<f32>)> {
        match self {
            Kind::Mnist => Some((vec![0.1307], vec![0.3081])),
            Kind::FashionMnist => Some((vec![0.2860], vec![0.3530])),
            Kind::Cifar10 => Some((vec![0.4914, 0.4822, 0.4465], vec![0.2470, 0.2435, 0.2616])),
            Kind::Cifar100 => Some((vec![0.5071, 0.4865, 0.4409], vec![0.2673, 0.2564, 0.2762])),
            Kind::Other => None,
        }
    }
}

/// Per-channel input normalization (x − mean_c)/std_c.
#[derive(Clone, Debug, PartialEq)]
pub enum Normalize {
    /// The dataset's usual statistics (MNIST, Fashion-MNIST, CIFAR); none for other data.
    DatasetDefault,
    Off,
    /// One mean and std, or one per channel.
    Channels { mean: Vec<f32>, std: Vec<f32> },
}

impl Normalize {
    /// Per-channel (means, stds) for a dataset of `kind`, or None.
    pub fn resolve(&self, kind: Kind) -> Option<(Vec<f32>, Vec<f32>)> {
        match self {
            Normalize::DatasetDefault => kind.normalization(),
            Normalize::Off => None,
            Normalize::Channels { mean, std } => Some((mean.clone(), std.clone())),
        }
    }
}

/// A training set and, when the source has one, its test set.
pub struct Loaded {
    pub train: Dataset,
    pub test: Option<Dataset>,
    pub kind: Kind,
    pub format: Format,
}

/// The format a path holds, from its name and contents.
pub fn detect(path: &Path) -> Result<Format> {
    let name = path.file_name().and_then(|s| s.to_str()).unwrap_or("").to_lowercase();
    if path.is_dir() {
        let has = |f: &str| path.join(f).exists() || path.join(format!("{f}.gz")).exists();
        if has("train-images-idx3-ubyte") || has("t10k-images-idx3-ubyte") {
            return Ok(Format::Idx);
        }
        if path.join("data_batch_1.bin").exists()
            || path.join("train.bin").exists()
            || path.join("test_batch.bin").exists()
        {
            return Ok(Format::Cifar);
        }
        if path.join("x.npy").exists() {
            return Ok(Format::Npz);
        }
        bail!(
            "{}: no dataset recognised in this folder (MNIST IDX files, CIFAR .bin batches, or x.npy + y.npy); pass --data-format to force one",
            path.display()
        );
    }
    if !path.exists() {
        bail!("{}: no such file or folder (fetch data with tools/fetch-data.sh)", path.display());
    }
    if name.ends_with(".npz") || name.ends_with(".npy") {
        return Ok(Format::Npz);
    }
    if name.contains("ubyte") {
        return Ok(Format::Idx);
    }
    if name.ends_with(".bin") {
        return Ok(Format::Cifar);
    }
    bail!("{}: cannot tell the data format from the name; pass --data-format idx|cifar|npz", path.display())
}

fn kind_of(path: &Path, format: Format, classes: usize) -> Kind {
    let p = path.display().to_string().to_lowercase();
    match format {
        Format::Idx if p.contains("fashion") => Kind::FashionMnist,
        Format::Idx => Kind::Mnist,
        Format::Cifar if classes > 10 => Kind::Cifar100,
        Format::Cifar => Kind::Cifar10,
        Format::Npz => Kind::Other,
    }
}

/// Loads a dataset (format detected unless given).
pub fn load(path: &Path, format: Option<Format>) -> Result<Loaded> {
    let format = match format {
        Some(f) => f,
        None => detect(path)?,
    };
    let (train, test) = match format {
        Format::Idx => idx::load(path)?,
        Format::Cifar => cifar::load(path)?,
        Format::Npz => load_npz(path)?,
    };
    let kind = kind_of(path, format, train.classes);
    Ok(Loaded { train, test, kind, format })
}

fn to_dataset(x: HostTensor, y: HostTensor, source: &str) -> Result<Dataset> {
    if x.shape.is_empty() {
        bail!("{source}: x must have a batch axis, got a scalar");
    }
    let n = x.shape[0];
    let dtype = x.dtype_name();
    let xs: Vec<f32> = match x.data {
        Data::F32(v) => v,
        Data::F64(v) => v.into_iter().map(|a| a as f32).collect(),
        Data::U8(v) => v.into_iter().map(|a| a as f32 / 255.0).collect(),
        _ => bail!(
            "{source}: x is {dtype}; onnxsam train reads float32, float64 or uint8 samples (token-id models: onnxsam grad and step take int64 inputs, train does not yet)"
        ),
    };
    if let Some(i) = xs.iter().position(|v| !v.is_finite()) {
        bail!(
            "{source}: x holds a NaN or infinite value (sample {}); clean the data first",
            i / (xs.len() / n.max(1)).max(1)
        );
    }
    let ys: Vec<i64> = match y.data {
        Data::I64(v) => v,
        Data::I32(v) => v.into_iter().map(|a| a as i64).collect(),
        Data::U8(v) => v.into_iter().map(|a| a as i64).collect(),
        _ => bail!("{source}: y must hold integer class labels (int64, int32 or uint8)"),
    };
    if ys.len() != n {
        bail!("{source}: x has {n} samples but y has {} labels", ys.len());
    }
    if let Some(bad) = ys.iter().find(|&&l| l < 0) {
        bail!("{source}: negative label {bad}");
    }
    let classes = ys.iter().copied().max().map(|m| m as usize + 1).unwrap_or(0);
    Ok(Dataset { x: xs, sample_shape: x.shape[1..].to_vec(), y: ys, classes, source: source.to_string() })
}

fn load_npz(path: &Path) -> Result<(Dataset, Option<Dataset>)> {
    let shown = path.display().to_string();
    if path.is_dir() {
        let read = |f: &str| -> Result<HostTensor> {
            let p: PathBuf = path.join(f);
            crate::tensor::read_npy(&p).with_context(|| format!("{}", p.display()))
        };
        return Ok((to_dataset(read("x.npy")?, read("y.npy")?, &shown)?, None));
    }
    let mut a = crate::tensor::read_npz(path)?;
    let x = a.remove("x").ok_or_else(|| anyhow!("{shown}: no array 'x' (samples) in the .npz"))?;
    let y = a.remove("y").ok_or_else(|| anyhow!("{shown}: no array 'y' (labels) in the .npz"))?;
    let train = to_dataset(x, y, &shown)?;
    let test = match (a.remove("x_test"), a.remove("y_test")) {
        (Some(x), Some(y)) => Some(to_dataset(x, y, &format!("{shown} (x_test, y_test)"))?),
        _ => None,
    };
    Ok((train, test))
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.y.len()
    }
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }
    pub fn sample_len(&self) -> usize {
        self.sample_shape.iter().product()
    }

    /// (x − mean_c)/std_c per channel (axis 0 of a sample; one value: every element).
    pub fn normalize_channels(&mut self, mean: &[f32], std: &[f32]) -> Result<()> {
        let channels = if mean.len() == 1 { 1 } else { self.sample_shape.first().copied().unwrap_or(1) };
        if mean.len() != channels || std.len() != channels {
            bail!("{}: --normalize gives {} means for samples of {} channels", self.source, mean.len(), channels);
        }
        let per = self.sample_len() / channels;
        for (i, v) in self.x.iter_mut().enumerate() {
            let c = if channels == 1 { 0 } else { (i / per) % channels };
            *v = (*v - mean[c]) / std[c];
        }
        Ok(())
    }

    /// The values of samples `idx`, one after the other.
    fn gather(&self, idx: &[usize]) -> Vec<f32> {
        let s = self.sample_len();
        let mut x = Vec::with_capacity(idx.len() * s);
        for &i in idx {
            x.extend_from_slice(&self.x[i * s..(i + 1) * s]);
        }
        x
    }

    /// A batch of samples `x` (already gathered, [idx.len(), …]) with the labels of `idx`.
    pub fn batch_of(&self, input: &str, idx: &[usize], x: Vec<f32>) -> Batch {
        let mut shape = vec![idx.len()];
        shape.extend(&self.sample_shape);
        Batch {
            data: vec![(input.to_string(), HostTensor::f32(&shape, x))],
            labels: HostTensor::i64(&[idx.len()], idx.iter().map(|&i| self.y[i]).collect()),
        }
    }

    /// The batch of samples `idx`, fed to the model input `input`.
    pub fn batch(&self, input: &str, idx: &[usize]) -> Batch {
        self.batch_of(input, idx, self.gather(idx))
    }

    /// The samples `idx` as a new dataset.
    pub fn subset(&self, idx: &[usize]) -> Dataset {
        Dataset { x: self.gather(idx), y: idx.iter().map(|&i| self.y[i]).collect(), ..self.clone() }
    }

    /// The first `n` samples.
    pub fn head(&self, n: usize) -> Result<Dataset> {
        if n > self.len() {
            bail!("asked for {n} samples of a dataset of {}", self.len());
        }
        Ok(self.subset(&(0..n).collect::<Vec<_>>()))
    }

    /// Symmetric label noise: exactly round(fraction·N) samples, chosen from `seed`, get a label
    /// drawn uniformly from the other classes. Returns the indices flipped.
    pub fn add_label_noise(&mut self, fraction: f64, seed: u64) -> Result<Vec<usize>> {
        if !(0.0..=1.0).contains(&fraction) {
            bail!("--label-noise must be a fraction in [0, 1], got {fraction}");
        }
        if self.classes < 2 {
            bail!("{}: label noise needs at least 2 classes", self.source);
        }
        let n = self.len();
        let k = (fraction * n as f64).round() as usize;
        let order = loader::permutation(n, seed, "label-noise");
        let mut flipped: Vec<usize> = order[..k].to_vec();
        flipped.sort_unstable();
        let r = crate::grad::random_words(seed, "label-noise/new", k);
        for (j, &i) in flipped.iter().enumerate() {
            let other = (r[j] % (self.classes as u64 - 1)) as i64;
            let old = self.y[i];
            self.y[i] = if other >= old { other + 1 } else { other };
        }
        Ok(flipped)
    }
}
