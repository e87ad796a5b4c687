//! Batches for training: a per-epoch order drawn from the seed, optional crop-flip
//! augmentation, prepared (and lazily decoded images decoded) on a background thread so the step
//! never waits on data.
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::Dataset;
use crate::grad::{random_words, Batch};

/// A permutation of 0..n from (seed, key) (Fisher–Yates over counter-based random words).
pub fn permutation(n: usize, seed: u64, key: &str) -> Vec<usize> {
    let r = random_words(seed, key, n);
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (r[i] % (i as u64 + 1)) as usize;
        p.swap(i, j);
    }
    p
}

/// Number of batches an epoch of `n` samples gives.
pub fn batches_per_epoch(n: usize, batch_size: usize, drop_last: bool) -> usize {
    if drop_last {
        n / batch_size
    } else {
        n.div_ceil(batch_size)
    }
}

/// Global batches an epoch of `n` samples gives over `ranks` ranks (`batch_size`: the global
/// batch): a last partial batch of fewer rows than ranks is dropped (some rank would have none).
pub fn global_batches_per_epoch(n: usize, batch_size: usize, drop_last: bool, ranks: usize) -> usize {
    let full = batches_per_epoch(n, batch_size, drop_last);
    if !drop_last && n % batch_size != 0 && n % batch_size < ranks {
        full - 1
    } else {
        full
    }
}

/// Random crop with zero padding (`pad` pixels, the padding value being raw 0 after
/// normalization, per channel) and horizontal flip, as torchvision's RandomCrop + RandomHorizontalFlip.
#[derive(Clone, Debug)]
pub struct CropFlip {
    pub pad: usize,
    /// Per channel: the normalized value of a zero pixel.
    pub fill: Vec<f32>,
}

impl CropFlip {
    fn apply(&self, x: &[f32], shape: &[usize], r: u64, out: &mut Vec<f32>) {
        let (c, h, w) = (shape[0], shape[1], shape[2]);
        let p = self.pad as i64;
        let span = 2 * p as u64 + 1;
        let dy = (r % span) as i64 - p;
        let dx = ((r / span) % span) as i64 - p;
        let flip = (r >> 40) & 1 == 1;
        for ch in 0..c {
            let fill = self.fill.get(ch).copied().unwrap_or(0.0);
            for i in 0..h as i64 {
                for j in 0..w as i64 {
                    let jj = if flip { w as i64 - 1 - j } else { j };
                    let (si, sj) = (i + dy, jj + dx);
                    out.push(if si >= 0 && si < h as i64 && sj >= 0 && sj < w as i64 {
                        x[ch * h * w + si as usize * w + sj as usize]
                    } else {
                        fill
                    });
                }
            }
        }
    }
}

/// One epoch's batches, prepared ahead on a thread.
pub struct Prefetch {
    rx: Receiver<anyhow::Result<Batch>>,
    handle: Option<JoinHandle<()>>,
}

pub struct EpochSpec {
    pub order: Vec<usize>,
    pub batch_size: usize,
    pub drop_last: bool,
    /// Batches already done (resuming mid-epoch).
    pub skip: usize,
    pub augment: Option<CropFlip>,
    pub seed: u64,
    pub epoch: usize,
    /// Data-parallel: (rank, ranks). `batch_size` is then the global batch, and this rank takes
    /// its contiguous share of each global batch (crate::distributed::shares), so that the
    /// ranks' batches together are the one-process batch of the same size, augmentation included.
    pub shard: Option<(usize, usize)>,
}

impl Prefetch {
    pub fn start(data: Arc<Dataset>, spec: EpochSpec) -> Prefetch {
        let (tx, rx) = sync_channel(3);
        let handle = std::thread::spawn(move || {
            let ranks = spec.shard.map(|s| s.1).unwrap_or(1);
            let n = global_batches_per_epoch(spec.order.len(), spec.batch_size, spec.drop_last, ranks);
            for b in spec.skip..n {
                let global = &spec.order[b * spec.batch_size..((b + 1) * spec.batch_size).min(spec.order.len())];
                // this rank's rows of the global batch
                let (from, idx) = match spec.shard {
                    Some((rank, ranks)) => {
                        let s = crate::distributed::shares(global.len(), ranks);
                        let from: usize = s[..rank].iter().sum();
                        (from, &global[from..from + s[rank]])
                    }
                    None => (0, global),
                };
                let mut batch = match data.try_batch(idx) {
                    Ok(b) => b,
                    Err(e) => {
                        // an image that fails to decode ends the epoch with its error
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                if let Some(aug) = &spec.augment {
                    // crop-flip the image array [N, C, H, W] (the first float input)
                    if let Some((_, t)) =
                        batch.data.iter_mut().find(|(_, t)| t.shape.len() == 4 && t.as_f32().is_some())
                    {
                        let r = random_words(spec.seed, &format!("augment/{}/{b}", spec.epoch), global.len());
                        let r = &r[from..from + idx.len()];
                        let sample = t.shape[1..].to_vec();
                        let s: usize = sample.iter().product();
                        let src = t.as_f32().unwrap_or(&[]).to_vec();
                        let mut x = Vec::with_capacity(src.len());
                        for k in 0..idx.len() {
                            aug.apply(&src[k * s..(k + 1) * s], &sample, r[k], &mut x);
                        }
                        *t = crate::tensor::HostTensor::f32(&t.shape.clone(), x);
                    }
                }
                if tx.send(Ok(batch)).is_err() {
                    return;
                }
            }
        });
        Prefetch { rx, handle: Some(handle) }
    }
}

impl Iterator for Prefetch {
    type Item = anyhow::Result<Batch>;
    fn next(&mut self) -> Option<anyhow::Result<Batch>> {
        self.rx.recv().ok()
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        // unblock the thread (it stops at its next send) and wait for it
        let (_tx, rx) = sync_channel(0);
        drop(std::mem::replace(&mut self.rx, rx));
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
