//! Datasets: samples as float32 [N, …] with int64 labels, and batches of them.
pub mod idx;

use anyhow::{bail, Result};

use crate::grad::Batch;
use crate::tensor::HostTensor;

/// A labelled dataset in memory: `x` [N, …] float32, `y` [N] int64.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub x: Vec<f32>,
    /// Shape of one sample.
    pub sample_shape: Vec<usize>,
    pub y: Vec<i64>,
    pub classes: usize,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.y.len()
    }
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }
    fn sample_len(&self) -> usize {
        self.sample_shape.iter().product()
    }

    /// (x − mean)/std for every value (one channel) — e.g. MNIST's 0.1307, 0.3081.
    pub fn normalize(&mut self, mean: f32, std: f32) {
        for v in self.x.iter_mut() {
            *v = (*v - mean) / std;
        }
    }

    /// The batch of samples `idx`, fed to the model input `input`.
    pub fn batch(&self, input: &str, idx: &[usize]) -> Batch {
        let s = self.sample_len();
        let mut x = Vec::with_capacity(idx.len() * s);
        for &i in idx {
            x.extend_from_slice(&self.x[i * s..(i + 1) * s]);
        }
        let mut shape = vec![idx.len()];
        shape.extend(&self.sample_shape);
        Batch {
            data: vec![(input.to_string(), HostTensor::f32(&shape, x))],
            labels: HostTensor::i64(&[idx.len()], idx.iter().map(|&i| self.y[i]).collect()),
        }
    }

    /// The first `n` samples.
    pub fn head(&self, n: usize) -> Result<Dataset> {
        if n > self.len() {
            bail!("asked for {n} samples of a dataset of {}", self.len());
        }
        let s = self.sample_len();
        Ok(Dataset { x: self.x[..n * s].to_vec(), y: self.y[..n].to_vec(), ..self.clone() })
    }
}
