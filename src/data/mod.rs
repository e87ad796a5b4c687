//! Datasets: MNIST/Fashion-MNIST IDX (raw or .gz), CIFAR-10/100 binary batches, ImageFolder
//! (PNG/JPEG), CSV/TSV tables, .npz/.npy — as sample arrays of any dtype (one per model input)
//! with labels or targets; binding to a model's inputs, normalization, label noise, batches.
mod bind;
pub mod cifar;
pub mod idx;
pub mod image_folder;
pub mod loader;
pub mod table;

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use crate::grad::Batch;
use crate::tensor::{Data, HostTensor};
pub use bind::{image_shape, index_range, IndexRange, InputSpec, TargetSpec};

/// A dataset in memory: sample arrays [N, …] of any dtype, each named for the model input it
/// feeds (`x` where a lone array feeds a lone input), and labels or targets `y` [N, …] (int64
/// class labels, float32 targets; none when the model computes its own loss).
#[derive(Clone, Debug)]
pub struct Dataset {
    pub columns: Vec<(String, HostTensor)>,
    pub y: Option<HostTensor>,
    /// Number of classes seen in integer labels (max + 1).
    pub classes: usize,
    /// Class names by index, where the source names them (ImageFolder folders, CSV categories).
    pub class_names: Vec<String>,
    /// Where it came from (for messages).
    pub source: String,
    /// An image array decoded batch by batch (a large ImageFolder), by the input name it feeds.
    pub lazy: Option<(String, LazyImages)>,
}

/// Image files decoded when a batch needs them: float32 [C, H, W] each in [0, 1] (as
/// image_folder::decode), then normalized per channel.
#[derive(Clone, Debug)]
pub struct LazyImages {
    pub files: Vec<PathBuf>,
    pub shape: [usize; 3],
    pub norm: Option<(Vec<f32>, Vec<f32>)>,
}

impl LazyImages {
    /// The images `idx`, decoded: [idx.len(), C, H, W] float32. Errors: the file that fails to decode.
    pub fn decode(&self, idx: &[usize]) -> Result<HostTensor> {
        let [c, h, w] = self.shape;
        let per = c * h * w;
        let mut x = Vec::with_capacity(idx.len() * per);
        for &i in idx {
            let mut v = image_folder::decode(&self.files[i], c, h, w)?;
            if let Some((m, s)) = &self.norm {
                let plane = h * w;
                for (k, val) in v.iter_mut().enumerate() {
                    let ch = if m.len() == 1 { 0 } else { k / plane };
                    *val = (*val - m[ch]) / s[ch];
                }
            }
            x.extend(v);
        }
        Ok(HostTensor::f32(&[idx.len(), c, h, w], x))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum Format {
    /// MNIST-style IDX files (a folder with train-/t10k- files, raw or .gz)
    Idx,
    /// CIFAR-10/100 binary batches (a folder with data_batch_*.bin/test_batch.bin or train.bin/test.bin)
    Cifar,
    /// .npz with x (or one array per model input, by name), y (and optionally *_test), or a folder with x.npy and y.npy
    Npz,
    /// torchvision ImageFolder: ROOT/<class>/<image>.png|jpg (or ROOT/train/<class>/…, ROOT/test/…)
    ImageFolder,
    /// A CSV/TSV table with a header row; --target names the label/target column
    Csv,
}

/// What loading needs to know besides the path.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// The model's sample shape [C, H, W] (ImageFolder decodes and resizes to it).
    pub sample_shape: Option<Vec<usize>>,
    /// The target column of a table.
    pub target: Option<String>,
    /// An ImageFolder whose decoded images take more bytes than this is decoded batch by batch on
    /// the prefetch thread instead of all up front (None: 2 GiB).
    pub image_cache_bytes: Option<u64>,
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
    Channels {
        mean: Vec<f32>,
        std: Vec<f32>,
    },
    /// Per feature: the training split's mean and (population) std, as sklearn's StandardScaler.
    Standard,
}

impl Normalize {
    /// Per-channel (means, stds) for a dataset of `kind`, or None.
    pub fn resolve(&self, kind: Kind) -> Option<(Vec<f32>, Vec<f32>)> {
        match self {
            Normalize::DatasetDefault => kind.normalization(),
            Normalize::Off => None,
            Normalize::Channels { mean, std } => Some((mean.clone(), std.clone())),
            Normalize::Standard => None,
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
        if path.join("train").is_dir() || image_folder::scan(path).is_ok() {
            return Ok(Format::ImageFolder);
        }
        bail!(
            "{}: no dataset recognised in this folder (MNIST IDX files, CIFAR .bin batches, x.npy + y.npy, or ImageFolder class folders of PNG/JPEG files); pass --data-format to force one",
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
    if [".csv", ".tsv", ".tab"].iter().any(|e| name.ends_with(e)) {
        return Ok(Format::Csv);
    }
    bail!(
        "{}: cannot tell the data format from the name; pass --data-format idx|cifar|npz|image-folder|csv",
        path.display()
    )
}

fn kind_of(path: &Path, format: Format, classes: usize) -> Kind {
    let p = path.display().to_string().to_lowercase();
    match format {
        Format::Idx if p.contains("fashion") => Kind::FashionMnist,
        Format::Idx => Kind::Mnist,
        Format::Cifar if classes > 10 => Kind::Cifar100,
        Format::Cifar => Kind::Cifar10,
        Format::Npz | Format::ImageFolder | Format::Csv => Kind::Other,
    }
}

/// Loads a dataset (format detected unless given).
pub fn load(path: &Path, format: Option<Format>, opts: &LoadOptions) -> Result<Loaded> {
    let format = match format {
        Some(f) => f,
        None => detect(path)?,
    };
    if format != Format::Csv && opts.target.is_some() {
        bail!("--target names the label column of a CSV/TSV table; {} is not one", path.display());
    }
    let (train, test) = match format {
        Format::Idx => idx::load(path)?,
        Format::Cifar => cifar::load(path)?,
        Format::Npz => load_npz(path)?,
        Format::ImageFolder => load_image_folder(path, opts)?,
        Format::Csv => {
            let target = opts.target.as_deref().ok_or_else(|| {
                anyhow!("{}: a table needs --target COLUMN (the label or target column)", path.display())
            })?;
            (load_table(path, target, None)?, None)
        }
    };
    let kind = kind_of(path, format, train.classes);
    Ok(Loaded { train, test, kind, format })
}

/// The sample dims of a dataset's labels (without the batch axis), read before the dataset is:
/// an .npz's `y` (a folder's y.npy), [] for the formats with one label per sample (IDX, CIFAR,
/// ImageFolder, a table); None where there are none (an .npz without `y`). They choose
/// cross-entropy's class axis before the graph is built.
pub fn label_dims(path: &Path, format: Option<Format>) -> Result<Option<Vec<usize>>> {
    let format = match format {
        Some(f) => f,
        None => detect(path)?,
    };
    if format != Format::Npz {
        return Ok(Some(vec![]));
    }
    let y = if path.is_dir() {
        let p = path.join("y.npy");
        if p.exists() {
            Some(crate::tensor::read_npy(&p).with_context(|| format!("{}", p.display()))?)
        } else {
            None
        }
    } else {
        crate::tensor::read_npz_array(path, "y")?
    };
    Ok(y.map(|t| t.shape.get(1..).unwrap_or(&[]).to_vec()))
}

/// A table's feature columns as one float32 array `x` [N, F] and its target as `y`: class
/// indices (a non-numeric column; `names` fixes the mapping, e.g. the training split's) or
/// float32 values.
pub fn load_table(path: &Path, target: &str, names: Option<&[String]>) -> Result<Dataset> {
    let t = table::load(path, target)?;
    let shown = path.display().to_string();
    let n = t.rows();
    let f = t.feature_names.len();
    let x = HostTensor::f32(&[n, f], t.x);
    let (y, class_names) = match t.target {
        // whole numbers may be class indices (cross-entropy) as well as values (regression: bind
        // converts them back to float32)
        table::Target::Values(v) if v.iter().all(|x| x.fract() == 0.0 && x.abs() < 1e15) => {
            (HostTensor::i64(&[n], v.into_iter().map(|x| x as i64).collect()), vec![])
        }
        table::Target::Values(v) => (HostTensor::f32(&[n], v), vec![]),
        table::Target::Classes { y, names: own } => match names {
            None => (HostTensor::i64(&[n], y), own),
            Some(train_names) => {
                let mapped = remap_classes(&y, &own, train_names).map_err(|name| {
                    anyhow!(
                        "{shown}: class '{name}' of column '{target}' is not among the training data's classes ({}); the test table must use the training table's categories",
                        train_names.join(", ")
                    )
                })?;
                (HostTensor::i64(&[n], mapped), train_names.to_vec())
            }
        },
    };
    let classes = match &y.data {
        Data::I64(v) if class_names.is_empty() => {
            v.iter().copied().max().map(|m| (m.max(-1) + 1) as usize).unwrap_or(0)
        }
        _ => class_names.len(),
    };
    Ok(Dataset { columns: vec![("x".into(), x)], y: Some(y), classes, class_names, source: shown, lazy: None })
}

/// Class indices `y` into `own` names, re-indexed into `train` names (a test split's classes as
/// the training split numbers them). Err: the first name `train` lacks.
fn remap_classes(y: &[i64], own: &[String], train: &[String]) -> std::result::Result<Vec<i64>, String> {
    y.iter()
        .map(|&i| {
            let name = &own[i as usize];
            train.iter().position(|t| t == name).map(|k| k as i64).ok_or_else(|| name.clone())
        })
        .collect()
}

/// An ImageFolder (or ROOT/train and ROOT/test or ROOT/val ImageFolders), decoded and resized to
/// the model's [C, H, W] on every core.
fn load_image_folder(path: &Path, opts: &LoadOptions) -> Result<(Dataset, Option<Dataset>)> {
    let Some(shape) = opts.sample_shape.as_ref().filter(|s| s.len() == 3) else {
        bail!(
            "{}: an ImageFolder is decoded to the model's input [N, C, H, W]; this model's input has no such fixed shape",
            path.display()
        );
    };
    let (c, h, w) = (shape[0], shape[1], shape[2]);
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let limit = opts.image_cache_bytes.unwrap_or(2 << 30);
    let one = |root: &Path, names: Option<&[String]>| -> Result<Dataset> {
        let t0 = std::time::Instant::now();
        let found = image_folder::scan(root)?;
        let n = found.files.len();
        let bytes = (n * c * h * w * 4) as u64;
        let (x, lazy, scan) = if bytes <= limit {
            let (x, scan) = image_folder::load(root, c, h, w, threads)?;
            crate::error::say(format!(
                "{}: decoded {n} images to {c}×{h}×{w} in {:.2} s on {threads} threads",
                root.display(),
                t0.elapsed().as_secs_f64()
            ));
            (Some(x), None, scan)
        } else {
            image_folder::check_headers(&found.files, threads)?;
            crate::error::say(format!(
                "{}: {n} images ({} MB decoded, over the {} MB cache) are decoded batch by batch on the prefetch thread; headers checked in {:.2} s",
                root.display(),
                bytes >> 20,
                limit >> 20,
                t0.elapsed().as_secs_f64()
            ));
            (None, Some(found.files.clone()), found)
        };
        let (y, class_names) = match names {
            None => (scan.y, scan.classes),
            Some(train) => {
                let y = remap_classes(&scan.y, &scan.classes, train).map_err(|name| {
                    anyhow!(
                        "{}: class folder '{name}' is not among the training classes ({})",
                        root.display(),
                        train.join(", ")
                    )
                })?;
                (y, train.to_vec())
            }
        };
        Ok(Dataset {
            columns: x.map(|x| vec![("x".into(), HostTensor::f32(&[n, c, h, w], x))]).unwrap_or_default(),
            y: Some(HostTensor::i64(&[n], y)),
            classes: class_names.len(),
            class_names,
            source: root.display().to_string(),
            lazy: lazy.map(|files| ("x".to_string(), LazyImages { files, shape: [c, h, w], norm: None })),
        })
    };
    let train_dir = path.join("train");
    if !train_dir.is_dir() {
        return Ok((one(path, None)?, None));
    }
    let train = one(&train_dir, None)?;
    let test_dir = ["test", "val"].iter().map(|d| path.join(d)).find(|p| p.is_dir());
    let test = match test_dir {
        Some(t) => Some(one(&t, Some(&train.class_names))?),
        None => None,
    };
    Ok((train, test))
}

fn to_dataset(columns: Vec<(String, HostTensor)>, y: Option<HostTensor>, source: &str) -> Result<Dataset> {
    let Some((_, first)) = columns.first() else { bail!("{source}: no sample arrays") };
    if first.shape.is_empty() {
        bail!("{source}: x must have a batch axis, got a scalar");
    }
    // row counts are checked by bind, over the arrays the model reads (others are ignored)
    let n = first.shape[0];
    let Some(y) = y else {
        // a model that computes its own loss takes no labels
        return Ok(Dataset {
            columns,
            y: None,
            classes: 0,
            class_names: vec![],
            source: source.to_string(),
            lazy: None,
        });
    };
    if y.shape.first() != Some(&n) {
        bail!("{source}: x has {n} samples but y has {} rows", y.shape.first().copied().unwrap_or(0));
    }
    let y = match y.data {
        Data::I64(_) => y,
        Data::I32(v) => HostTensor::i64(&y.shape, v.into_iter().map(|a| a as i64).collect()),
        Data::U8(v) => HostTensor::i64(&y.shape, v.into_iter().map(|a| a as i64).collect()),
        Data::F32(_) => y,
        Data::F64(v) => HostTensor::f32(&y.shape, v.into_iter().map(|a| a as f32).collect()),
        Data::Bool(_) => y,
    };
    let classes = match &y.data {
        Data::I64(v) => v.iter().copied().max().map(|m| (m.max(-1) + 1) as usize).unwrap_or(0),
        _ => 0,
    };
    Ok(Dataset { columns, y: Some(y), classes, class_names: vec![], source: source.to_string(), lazy: None })
}

fn load_npz(path: &Path) -> Result<(Dataset, Option<Dataset>)> {
    let shown = path.display().to_string();
    if path.is_dir() {
        let read = |f: &str| -> Result<HostTensor> {
            let p: PathBuf = path.join(f);
            crate::tensor::read_npy(&p).with_context(|| format!("{}", p.display()))
        };
        return Ok((to_dataset(vec![("x".into(), read("x.npy")?)], Some(read("y.npy")?), &shown)?, None));
    }
    let a = crate::tensor::read_npz(path)?;
    let (mut train, mut test): (Vec<(String, HostTensor)>, Vec<(String, HostTensor)>) = (vec![], vec![]);
    let (mut y, mut y_test) = (None, None);
    for (k, v) in a {
        match k.as_str() {
            "y" => y = Some(v),
            "y_test" => y_test = Some(v),
            _ => match k.strip_suffix("_test") {
                Some(base) => test.push((base.to_string(), v)),
                None => train.push((k, v)),
            },
        }
    }
    if train.is_empty() {
        bail!("{shown}: no sample arrays: add 'x' (or one array per model input, by name)");
    }
    // without y: a model that computes its own loss (bind says so if the model needs labels)
    let train = to_dataset(train, y, &shown)?;
    let test = if test.is_empty() { None } else { Some(to_dataset(test, y_test, &format!("{shown} (test arrays)"))?) };
    Ok((train, test))
}

/// Rows `idx` of a tensor's first axis, one after the other.
pub fn gather_rows(t: &HostTensor, idx: &[usize]) -> HostTensor {
    let s: usize = t.shape.iter().skip(1).product();
    fn pick<T: Clone>(v: &[T], idx: &[usize], s: usize) -> Vec<T> {
        let mut out = Vec::with_capacity(idx.len() * s);
        for &i in idx {
            out.extend_from_slice(&v[i * s..(i + 1) * s]);
        }
        out
    }
    let data = match &t.data {
        Data::F32(v) => Data::F32(pick(v, idx, s)),
        Data::F64(v) => Data::F64(pick(v, idx, s)),
        Data::I64(v) => Data::I64(pick(v, idx, s)),
        Data::I32(v) => Data::I32(pick(v, idx, s)),
        Data::U8(v) => Data::U8(pick(v, idx, s)),
        Data::Bool(v) => Data::Bool(pick(v, idx, s)),
    };
    let mut shape = t.shape.clone();
    if let Some(n) = shape.first_mut() {
        *n = idx.len();
    }
    HostTensor { shape, data }
}

impl Dataset {
    /// Images [N, …sample_shape] (float32 in [0, 1]) with int64 class labels.
    pub fn images(x: Vec<f32>, sample_shape: &[usize], y: Vec<i64>, classes: usize, source: String) -> Dataset {
        let mut shape = vec![y.len()];
        shape.extend(sample_shape);
        let n = y.len();
        Dataset {
            columns: vec![("x".into(), HostTensor::f32(&shape, x))],
            y: Some(HostTensor::i64(&[n], y)),
            classes,
            class_names: vec![],
            source,
            lazy: None,
        }
    }

    pub fn len(&self) -> usize {
        self.columns
            .first()
            .map(|(_, t)| t.shape[0])
            .or(self.lazy.as_ref().map(|(_, l)| l.files.len()))
            .or(self.y.as_ref().map(|y| y.shape[0]))
            .unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// int64 labels (class indices), if that is what `y` holds.
    pub fn labels(&self) -> Option<&[i64]> {
        match self.y.as_ref().map(|y| &y.data) {
            Some(Data::I64(v)) => Some(v),
            _ => None,
        }
    }

    /// The first float32 sample array's values and sample shape (images, features): the array
    /// --normalize applies to.
    pub fn float_samples(&self) -> Option<(&[f32], &[usize])> {
        let (_, t) = self.columns.iter().find(|(_, t)| t.as_f32().is_some())?;
        t.as_f32().map(|v| (v, &t.shape[1..]))
    }

    /// (x − mean_c)/std_c per channel of the float32 sample array (axis 0 of a sample, or the
    /// feature axis of a table; one value: every element).
    pub fn normalize_channels(&mut self, mean: &[f32], std: &[f32]) -> Result<()> {
        let src = self.source.clone();
        if let Some((_, images)) = self.lazy.as_mut() {
            let c = images.shape[0];
            if mean.len() != 1 && mean.len() != c {
                bail!("{src}: --normalize gives {} means for images of {c} channels", mean.len());
            }
            images.norm = Some((mean.to_vec(), std.to_vec()));
            return Ok(());
        }
        let Some((_, t)) = self.columns.iter_mut().find(|(_, t)| t.as_f32().is_some()) else {
            bail!("{src}: --normalize applies to float samples; this data has none");
        };
        let sample: Vec<usize> = t.shape[1..].to_vec();
        let channels = if mean.len() == 1 { 1 } else { sample.first().copied().unwrap_or(1) };
        if mean.len() != channels || std.len() != channels {
            bail!("{src}: --normalize gives {} means for samples of {} channels", mean.len(), channels);
        }
        let per = sample.iter().product::<usize>() / channels.max(1);
        if let Data::F32(x) = &mut t.data {
            for (i, v) in x.iter_mut().enumerate() {
                let c = if channels == 1 { 0 } else { (i / per) % channels };
                *v = (*v - mean[c]) / std[c];
            }
        }
        Ok(())
    }

    /// The batch of samples `idx` (arrays named for the model inputs they feed), images of a
    /// lazily decoded folder decoded now. Errors: an image that fails to decode.
    pub fn try_batch(&self, idx: &[usize]) -> Result<Batch> {
        let mut data: Vec<(String, HostTensor)> =
            self.columns.iter().map(|(k, t)| (k.clone(), gather_rows(t, idx))).collect();
        if let Some((name, images)) = &self.lazy {
            data.insert(0, (name.clone(), images.decode(idx)?));
        }
        Ok(Batch { data, labels: self.y.as_ref().map(|y| gather_rows(y, idx)) })
    }

    /// The batch of samples `idx` of a dataset held in memory (no lazily decoded images).
    pub fn batch(&self, idx: &[usize]) -> Batch {
        Batch {
            data: self.columns.iter().map(|(k, t)| (k.clone(), gather_rows(t, idx))).collect(),
            labels: self.y.as_ref().map(|y| gather_rows(y, idx)),
        }
    }

    /// The samples `idx` (each < len()) as a new dataset.
    pub fn subset(&self, idx: &[usize]) -> Dataset {
        Dataset {
            columns: self.columns.iter().map(|(k, t)| (k.clone(), gather_rows(t, idx))).collect(),
            y: self.y.as_ref().map(|y| gather_rows(y, idx)),
            lazy: self.lazy.as_ref().map(|(n, l)| {
                (n.clone(), LazyImages { files: idx.iter().map(|&i| l.files[i].clone()).collect(), ..l.clone() })
            }),
            classes: self.classes,
            class_names: self.class_names.clone(),
            source: self.source.clone(),
        }
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
        let classes = self.classes as u64;
        let Some(HostTensor { shape, data: Data::I64(y) }) = self.y.as_mut() else {
            bail!("{}: label noise needs integer class labels", self.source);
        };
        if shape.len() != 1 {
            bail!("{}: label noise applies to one class label per sample", self.source);
        }
        let k = (fraction * n as f64).round() as usize;
        let order = loader::permutation(n, seed, "label-noise");
        let mut flipped: Vec<usize> = order[..k].to_vec();
        flipped.sort_unstable();
        let r = crate::grad::random_words(seed, "label-noise/new", k);
        for (j, &i) in flipped.iter().enumerate() {
            let other = (r[j] % (classes - 1)) as i64;
            let old = y[i];
            y[i] = if other >= old { other + 1 } else { other };
        }
        Ok(flipped)
    }
}
