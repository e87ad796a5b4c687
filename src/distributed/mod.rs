//! Data-parallel training over N processes (`mpirun -np N onnxsam train … --distributed mpi`).
//!
//! Every rank builds the same step graphs and reads its own rows of each global batch; the
//! training step is split where ranks must agree (graph run → all-reduce → graph run), so the
//! step graphs stay standard ONNX and the communication happens on the host between runs:
//!
//! - SGD, Adam(W): ascent graph (each rank's gradient share) → **all-reduce** → apply graph.
//! - SAM family, per-rank ascent (default, google-research/sam's): each rank's ε from its own
//!   gradient (m-SAM with m = the per-rank batch), its gradient at θ + ε → **all-reduce** → apply.
//! - `--sync-ascent`: ascent → **all-reduce** (one ε for the global batch) → descent →
//!   **all-reduce** → apply: SAM on the global batch.
//! - m-SAM: each rank's micro-batches → **all-reduce** of the summed micro-batch gradients → apply.
//!
//! Shares are weighted so that the all-reduce is a plain sum: a micro-batch of n rows of a global
//! batch of B rows contributes n/B of its mean gradient, so 2 ranks × b rows step exactly as 1
//! rank × 2b rows would (up to the order of float sums). Tensors are fused into buckets of a few
//! MB (`--bucket-mb`), one MPI call per bucket; the step's diagnostics (loss, metric, a
//! not-finite flag per rank, an interrupt flag) ride in the last bucket, so an SGD step makes one
//! all-reduce round and every rank learns of a NaN on any rank in the same round.
#[cfg(feature = "mpi")]
mod mpi_comm;

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{bail, Result};

use crate::tensor::{Data, HostTensor};

/// The collective operations data-parallel training needs: sums across ranks.
pub trait Comm {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// Elementwise sum across ranks, result on every rank.
    fn sum_f32(&mut self, buf: &mut [f32]) -> Result<()>;
    fn sum_f64(&mut self, buf: &mut [f64]) -> Result<()>;
    /// Waits until every rank is here.
    fn barrier(&mut self) -> Result<()>;
    /// Ends every rank's process now (a failure only this rank saw).
    fn abort(&self, code: i32) -> !;
}

/// How the SAM family is defined across ranks, and how the communication is cut.
#[derive(Clone, Debug)]
pub struct DistOptions {
    /// ε from the all-reduced ascent gradient (SAM on the global batch; two all-reduces a step).
    pub sync_ascent: bool,
    /// RW-SAM's Gibbs weights normalized over all ranks' samples instead of each rank's own.
    pub global_weights: bool,
    /// Largest all-reduce bucket, bytes.
    pub bucket_bytes: usize,
    /// Compare parameters and optimizer state across ranks every this many steps (0: only at
    /// checkpoints, where they are always compared).
    pub check_every: u64,
}

impl Default for DistOptions {
    fn default() -> Self {
        DistOptions { sync_ascent: false, global_weights: false, bucket_bytes: 4 << 20, check_every: 100 }
    }
}

/// The training steps' all-reduce traffic so far (evaluation, checks and checkpoints aside).
#[derive(Clone, Copy, Debug, Default)]
pub struct Traffic {
    /// MPI all-reduce calls.
    pub calls: u64,
    /// Bytes each rank contributed.
    pub bytes: u64,
    /// Seconds spent inside all-reduce calls.
    pub seconds: f64,
    /// Seconds a step's round waited for the slowest rank to arrive (a barrier before it), so
    /// that `seconds` is the transfer itself.
    pub wait_seconds: f64,
}

/// A rank's part in a data-parallel run.
pub struct Dist {
    comm: Box<dyn Comm>,
    pub opts: DistOptions,
    pub traffic: Traffic,
    /// This rank was interrupted (Ctrl-C); said to the others in the next step's round.
    pub interrupted: bool,
    /// What the last step's round told every rank.
    pub agreement: StepAgreement,
    scratch: Vec<f32>,
    /// A step's round is under way (its calls count as `traffic`).
    in_step: bool,
}

/// What the last step's reduction told every rank.
#[derive(Clone, Debug, Default)]
pub struct StepAgreement {
    /// Ranks whose loss was not finite.
    pub not_finite: Vec<usize>,
    /// Some rank was interrupted (Ctrl-C): every rank checkpoints and stops after this step.
    pub interrupted: bool,
}

/// An error every rank reached together (the same step, the same cause): the rank with
/// `report` says it, the others exit with `code` quietly.
#[derive(Debug)]
pub struct Stopped {
    pub report: bool,
    pub code: i32,
    pub message: String,
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Stopped {}

/// The MPI launcher's environment variable that gives the world size, if this process was
/// started by one: OpenMPI's mpirun, or a PMI launcher (MPICH's Hydra, Slurm's srun --mpi=pmi2).
/// (Slurm's own SLURM_NTASKS is not taken: a batch script's single process has it too.)
pub fn launched_size() -> Option<(String, usize)> {
    for v in ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"] {
        if let Some(n) = std::env::var(v).ok().and_then(|s| s.parse::<usize>().ok()) {
            return Some((v.to_string(), n));
        }
    }
    None
}

/// Joins the MPI world. `asked`: --distributed mpi was given; otherwise MPI is used when an MPI
/// launcher started more than one process (said in the log). None: a single process.
pub fn connect(asked: bool, opts: DistOptions) -> Result<Option<Dist>> {
    let launched = launched_size();
    let detected = matches!(&launched, Some((_, n)) if *n > 1);
    if !asked && !detected {
        return Ok(None);
    }
    #[cfg(feature = "mpi")]
    {
        let comm = mpi_comm::MpiComm::init()?;
        // a panic (a bug) on one rank must not leave the others waiting in a collective, nor
        // hang in MPI_Finalize while unwinding: after its one line, the process aborts, and the
        // launcher ends every rank (tract's guarded runs catch their own panics)
        let said = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            said(info);
            if !crate::backend::tract::GUARDED.load(std::sync::atomic::Ordering::Relaxed) {
                std::process::abort();
            }
        }));
        if !asked {
            if let Some((v, n)) = &launched {
                if comm.rank() == 0 {
                    println!("distributed: {v}={n} in the environment: training data-parallel over MPI");
                }
            }
        }
        Ok(Some(Dist::with_comm(Box::new(comm), opts)))
    }
    #[cfg(not(feature = "mpi"))]
    {
        let _ = opts;
        let how = match &launched {
            Some((v, n)) if *n > 1 => format!("an MPI launcher started {n} processes ({v}={n}) but "),
            _ => String::new(),
        };
        bail!(
            "{how}this onnxsam was built without MPI: rebuild with `cargo build --release --features mpi` (needs an MPI library and libclang; README: Data-parallel training over MPI)"
        )
    }
}

impl Dist {
    /// A run over an in-process communicator (tests).
    pub fn with_comm(comm: Box<dyn Comm>, opts: DistOptions) -> Dist {
        Dist {
            comm,
            opts,
            traffic: Traffic::default(),
            in_step: false,
            interrupted: false,
            agreement: StepAgreement::default(),
            scratch: Vec::new(),
        }
    }

    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    pub fn size(&self) -> usize {
        self.comm.size()
    }

    /// Waits until every rank is here.
    pub fn barrier(&mut self) -> Result<()> {
        self.comm.barrier()
    }

    pub fn abort(&self, code: i32) -> ! {
        self.comm.abort(code)
    }

    fn timed<T>(&mut self, bytes: usize, f: impl FnOnce(&mut dyn Comm) -> Result<T>) -> Result<T> {
        let t = Instant::now();
        let r = f(self.comm.as_mut());
        if self.in_step {
            self.traffic.calls += 1;
            self.traffic.bytes += bytes as u64;
            self.traffic.seconds += t.elapsed().as_secs_f64();
        }
        r
    }

    /// Sums small f64 vectors across ranks (diagnostics, fingerprints).
    pub fn sum_f64(&mut self, v: &mut [f64]) -> Result<()> {
        let n = v.len() * 8;
        self.timed(n, |c| c.sum_f64(v))
    }

    /// Sums float tensors across ranks in place, fused into buckets of at most `bucket_bytes`;
    /// `extra` rides in the last bucket. Tensors that are not float32 are an internal error.
    pub fn sum_tensors(&mut self, tensors: &mut [(String, HostTensor)], extra: &mut [f32]) -> Result<()> {
        let cap = (self.opts.bucket_bytes / 4).max(1);
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut start = 0;
        let r = (|| {
            loop {
                // one bucket: tensors [start, end) (at least one), plus `extra` with the last
                let mut end = start;
                let mut len = 0;
                while end < tensors.len() && (end == start || len + tensors[end].1.len() <= cap) {
                    len += tensors[end].1.len();
                    end += 1;
                }
                let last = end == tensors.len();
                scratch.clear();
                for (name, t) in &tensors[start..end] {
                    match &t.data {
                        Data::F32(v) => scratch.extend_from_slice(v),
                        _ => bail!("internal: the all-reduce of '{name}' expected float32"),
                    }
                }
                if last {
                    scratch.extend_from_slice(extra);
                }
                let bytes = scratch.len() * 4;
                self.timed(bytes, |c| c.sum_f32(&mut scratch))?;
                let mut at = 0;
                for (_, t) in &mut tensors[start..end] {
                    if let Data::F32(v) = &mut t.data {
                        let n = v.len();
                        v.copy_from_slice(&scratch[at..at + n]);
                        at += n;
                    }
                }
                if last {
                    extra.copy_from_slice(&scratch[at..at + extra.len()]);
                    break;
                }
                start = end;
            }
            Ok(())
        })();
        self.scratch = scratch;
        r
    }

    /// Every rank's `local` (lengths `counts`, in rank order) on every rank, through one sum.
    pub fn gather_f64(&mut self, local: &[f64], counts: &[usize]) -> Result<Vec<f64>> {
        let offset: usize = counts[..self.rank()].iter().sum();
        let mut all = vec![0.0; counts.iter().sum()];
        all[offset..offset + local.len()].copy_from_slice(local);
        self.sum_f64(&mut all)?;
        Ok(all)
    }

    /// Every rank's 64-bit fingerprint of `what`; an error naming the ranks that differ from rank 0.
    pub fn agree(&mut self, what: &str, fingerprint: u64) -> Result<()> {
        let n = self.size();
        // four 16-bit pieces per rank: exact in f64 sums
        let pieces: Vec<f64> = (0..4).map(|i| ((fingerprint >> (16 * i)) & 0xffff) as f64).collect();
        let counts = vec![4; n];
        let all = self.gather_f64(&pieces, &counts)?;
        let of = |r: usize| &all[4 * r..4 * r + 4];
        let differ: Vec<String> = (1..n).filter(|&r| of(r) != of(0)).map(|r| r.to_string()).collect();
        if !differ.is_empty() {
            return Err(self.stopped(format!(
                "{what} differ across ranks: rank{} {} from rank 0",
                if differ.len() > 1 { "s" } else { "" },
                differ.join(", ")
            )));
        }
        Ok(())
    }

    /// Running statistics (BatchNorm's running mean and variance) averaged across ranks: each
    /// rank moves them from its own batches; every rank continues from the average, so that a
    /// checkpoint, an evaluation and the run that goes on after it agree.
    pub fn average_state(&mut self, values: &mut BTreeMap<String, HostTensor>, names: &[String]) -> Result<()> {
        let mut ts: Vec<(String, HostTensor)> = names
            .iter()
            .filter_map(|n| values.get(n).filter(|t| matches!(t.data, Data::F32(_))).map(|t| (n.clone(), t.clone())))
            .collect();
        if ts.is_empty() {
            return Ok(());
        }
        self.sum_tensors(&mut ts, &mut [])?;
        let k = 1.0 / self.size() as f32;
        for (n, mut t) in ts {
            if let Data::F32(v) = &mut t.data {
                v.iter_mut().for_each(|x| *x *= k);
            }
            values.insert(n, t);
        }
        Ok(())
    }

    /// One sum that says whether every rank got through `ok` (a write only rank 0 makes, …).
    pub fn all_ok(&mut self, ok: bool) -> Result<bool> {
        let mut v = [if ok { 0.0 } else { 1.0 }];
        self.sum_f64(&mut v)?;
        Ok(v[0] == 0.0)
    }

    /// A step's all-reduce round: `tensors` summed (in buckets), with the step's diagnostics
    /// riding in the last bucket — `shares` (each rank's part of a global sum: its share of the
    /// loss, its metric count, …), the interrupt flag and a not-finite flag per rank. Returns the
    /// summed shares; `self.agreement` says which ranks had a non-finite share and whether any
    /// rank was interrupted.
    pub fn reduce_step(&mut self, tensors: &mut [(String, HostTensor)], shares: &[f64]) -> Result<Vec<f64>> {
        let (k, n) = (shares.len(), self.size());
        let mut extra = vec![0.0f32; k + 1 + n];
        for (e, &s) in extra.iter_mut().zip(shares) {
            // a non-finite share is flagged, and left out so that the others stay readable
            *e = if s.is_finite() { s as f32 } else { 0.0 };
        }
        extra[k] = f32::from(u8::from(self.interrupted));
        extra[k + 1 + self.rank()] = f32::from(u8::from(shares.iter().any(|s| !s.is_finite())));
        let t = Instant::now();
        self.comm.barrier()?;
        self.traffic.wait_seconds += t.elapsed().as_secs_f64();
        self.in_step = true;
        let r = self.sum_tensors(tensors, &mut extra);
        self.in_step = false;
        r?;
        self.agreement.interrupted |= extra[k] != 0.0;
        self.agreement.not_finite =
            extra[k + 1..].iter().enumerate().filter(|(_, &x)| x != 0.0).map(|(r, _)| r).collect();
        Ok(extra[..k].iter().map(|&x| x as f64).collect())
    }

    /// The error every rank stops with when some rank's loss was not finite at `step`.
    pub fn check_finite(&self, step: u64) -> Result<()> {
        let bad = &self.agreement.not_finite;
        if bad.is_empty() {
            return Ok(());
        }
        let ranks: Vec<String> = bad.iter().map(|r| r.to_string()).collect();
        Err(self.stopped(format!(
            "step {step}: the loss is not finite on rank{} {} of {} (diverged: lower --lr or --rho, or check that rank's data)",
            if bad.len() > 1 { "s" } else { "" },
            ranks.join(", "),
            self.size()
        )))
    }

    /// An error every rank stops with together; rank 0 reports it.
    pub fn stopped(&self, message: String) -> anyhow::Error {
        Stopped { report: self.rank() == 0, code: 1, message }.into()
    }

    /// A phase every rank goes through on its own (start-up): Ok on every rank, or every rank
    /// stops. The error said is rank 0's (the usual case: the same on every rank), else the
    /// first failing rank's, with its rank; the other ranks exit quietly.
    pub fn settle<T>(&mut self, r: Result<T>) -> Result<T> {
        let n = self.size();
        // each rank's exit code (0: went through), so that every rank exits with the reported one
        let mut codes = vec![0.0; n];
        if let Err(e) = &r {
            codes[self.rank()] = e.downcast_ref::<crate::error::Failure>().map(|f| f.code).unwrap_or(2).max(1) as f64;
        }
        self.sum_f64(&mut codes)?;
        let Some(first) = codes.iter().position(|&x| x != 0.0) else { return r };
        let code = codes[first] as i32;
        let (report, message) = match &r {
            Err(e) if first == self.rank() => {
                let at = if first == 0 { String::new() } else { format!("rank {first} of {n}: ") };
                (true, format!("{at}{e:#}"))
            }
            _ => (false, String::new()),
        };
        Err(Stopped { report, code, message }.into())
    }
}

/// Rows of `rows` each of `n` ranks takes (as even as possible, the first ones one larger).
pub fn shares(rows: usize, n: usize) -> Vec<usize> {
    (0..n).map(|r| rows / n + usize::from(r < rows % n)).collect()
}

/// A 64-bit fingerprint of tensors' bits (FNV-1a over 32-bit words), in name order.
pub fn fingerprint<'a>(tensors: impl IntoIterator<Item = (&'a String, &'a HostTensor)>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut mix = |w: u64| h = (h ^ w).wrapping_mul(0x100_0000_01b3);
    for (name, t) in tensors {
        name.bytes().for_each(|b| mix(b as u64));
        t.shape.iter().for_each(|&d| mix(d as u64));
        match &t.data {
            Data::F32(v) => v.iter().for_each(|x| mix(x.to_bits() as u64)),
            Data::F64(v) => v.iter().for_each(|x| mix(x.to_bits())),
            Data::I64(v) => v.iter().for_each(|&x| mix(x as u64)),
            Data::I32(v) => v.iter().for_each(|&x| mix(x as u64)),
            Data::U8(v) => v.iter().for_each(|&x| mix(x as u64)),
            Data::Bool(v) => v.iter().for_each(|&x| mix(x as u64)),
        }
    }
    h
}

/// Bytes' fingerprint (FNV-1a).
pub fn fingerprint_bytes(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| (h ^ x as u64).wrapping_mul(0x100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One rank whose "sum" doubles every value, so that the bucketing's bookkeeping (every value
    /// sent once and put back in its place) shows.
    struct Solo;
    impl Comm for Solo {
        fn rank(&self) -> usize {
            0
        }
        fn size(&self) -> usize {
            1
        }
        fn sum_f32(&mut self, buf: &mut [f32]) -> Result<()> {
            buf.iter_mut().for_each(|x| *x *= 2.0);
            Ok(())
        }
        fn sum_f64(&mut self, _: &mut [f64]) -> Result<()> {
            Ok(())
        }
        fn barrier(&mut self) -> Result<()> {
            Ok(())
        }
        fn abort(&self, code: i32) -> ! {
            std::process::exit(code)
        }
    }

    #[test]
    fn buckets_cover_every_tensor_once_and_carry_the_extra_slots() {
        let mut d = Dist::with_comm(Box::new(Solo), DistOptions { bucket_bytes: 40, ..Default::default() });
        // 3 + 12 + 5 + 2 floats in buckets of at most 10 (a larger tensor is a bucket of its own)
        let mut ts: Vec<(String, HostTensor)> = [3usize, 12, 5, 2]
            .iter()
            .enumerate()
            .map(|(i, &n)| (format!("t{i}"), HostTensor::f32(&[n], (0..n).map(|x| (x + 100 * i) as f32).collect())))
            .collect();
        let shares = d.reduce_step(&mut ts, &[7.0, 8.0]).unwrap();
        for (i, (_, t)) in ts.iter().enumerate() {
            let want: Vec<f32> = (0..t.len()).map(|x| 2.0 * (x + 100 * i) as f32).collect();
            assert_eq!(t.as_f32().unwrap(), &want[..]);
        }
        assert_eq!(shares, vec![14.0, 16.0]);
        assert_eq!(d.traffic.calls, 3, "buckets [t0], [t1], [t2, t3 + the step's slots]");
        assert!(d.agreement.not_finite.is_empty() && !d.agreement.interrupted);
        // nothing but the slots: one call; a NaN share is flagged (this rank's slot) and left out
        let mut none: Vec<(String, HostTensor)> = vec![];
        let shares = d.reduce_step(&mut none, &[1.0, f64::NAN]).unwrap();
        assert_eq!((shares, d.traffic.calls), (vec![2.0, 0.0], 4));
        assert_eq!(d.agreement.not_finite, vec![0]);
        // calls outside a step's round (evaluation, checks) are not the step's traffic
        d.average_state(&mut BTreeMap::from([("bn.running_mean".to_string(), HostTensor::f32(&[2], vec![1.0, 2.0]))]), &["bn.running_mean".into()]).unwrap();
        assert_eq!(d.traffic.calls, 4);
    }

    #[test]
    fn shares_split_rows_evenly() {
        assert_eq!(shares(10, 4), vec![3, 3, 2, 2]);
        assert_eq!(shares(8, 2), vec![4, 4]);
        assert_eq!(shares(1, 2), vec![1, 0]);
    }
}
