//! Running training-step graphs: one backend run per step (m-SAM: k micro-batch runs and an
//! apply run), with parameters, optimizer state and running statistics carried between steps
//! and the random inputs (Rademacher directions, dropout noise) drawn from a counter-based RNG
//! keyed by (seed, step, …), so a run is reproducible and can resume mid-way.
use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context, Result};
use graph_passes::ir::Model;
use graph_passes::passes::sam_update::{state_param, SCALAR_STATES};
use graph_passes::pass::Contract;
use graph_passes::step::{self, GradSpec, StepGraph, StepSpec};

use crate::backend::{Backend, Session};
use crate::distributed::Dist;
use crate::grad::{self as g, feeds_with, Batch, FeedOptions};
pub use crate::random::{rademacher, rademacher_signs};
use crate::tensor::{Data, HostTensor};

/// Rows [start, start + n) of a tensor's first axis.
pub fn take_rows(t: &HostTensor, start: usize, n: usize) -> HostTensor {
    let row: usize = t.shape.iter().skip(1).product();
    let (a, b) = (start * row, (start + n) * row);
    let data = match &t.data {
        Data::F32(v) => Data::F32(v[a..b].to_vec()),
        Data::F64(v) => Data::F64(v[a..b].to_vec()),
        Data::I64(v) => Data::I64(v[a..b].to_vec()),
        Data::I32(v) => Data::I32(v[a..b].to_vec()),
        Data::U8(v) => Data::U8(v[a..b].to_vec()),
        Data::Bool(v) => Data::Bool(v[a..b].to_vec()),
    };
    let mut shape = t.shape.clone();
    shape[0] = n;
    HostTensor { shape, data }
}

pub(crate) fn batch_rows(b: &Batch, start: usize, n: usize) -> Batch {
    Batch {
        data: b.data.iter().map(|(k, t)| (k.clone(), take_rows(t, start, n))).collect(),
        labels: b.labels.as_ref().map(|l| take_rows(l, start, n)),
    }
}

/// Exact per-sample gradients (slow: one backward per sample, with the train-mode forward of
/// the whole batch, so BatchNorm's batch statistics are differentiated too). For --score exact
/// and for measuring the finite-difference estimator.
pub struct PerSampleGrads {
    contract: Contract,
    session: Box<dyn Session>,
}

impl PerSampleGrads {
    pub fn new(model: &Model, spec: &GradSpec, backend: &dyn Backend) -> Result<PerSampleGrads> {
        let spec = GradSpec { weighted: true, train_mode: true, ..spec.clone() };
        let (gm, contract) = step::grad_graph(model, &spec).map_err(|e| anyhow!("{e}"))?;
        let session = backend.load(&gm.to_proto())?;
        Ok(PerSampleGrads { contract, session })
    }

    /// ∇ℓᵢ for every sample i: parameter → gradient.
    pub fn grads(
        &mut self,
        values: &BTreeMap<String, HostTensor>,
        batch: &Batch,
        seed: u64,
        step: u64,
    ) -> Result<Vec<BTreeMap<String, HostTensor>>> {
        let b = batch.len();
        let w = self.contract.sample_weights.clone().ok_or_else(|| anyhow!("no sample_weights input"))?;
        let o = FeedOptions { seed, step: Some(step), ..Default::default() };
        let base = feeds_with(&self.contract, Some(batch), values, &o)?;
        let mut out = Vec::with_capacity(b);
        for i in 0..b {
            let mut onehot = vec![0.0f32; b];
            onehot[i] = 1.0;
            let mut f = base.clone();
            f.push((w.clone(), HostTensor::f32(&[b], onehot)));
            let r: BTreeMap<String, HostTensor> = self.session.run(&f)?.into_iter().collect();
            let mut gi = BTreeMap::new();
            for (p, o) in &self.contract.grads {
                gi.insert(p.clone(), r.get(o).cloned().ok_or_else(|| anyhow!("no output '{o}'"))?);
            }
            out.push(gi);
        }
        Ok(out)
    }

    /// ‖∇ℓᵢ‖ over all parameters, for every sample.
    pub fn norms(
        &mut self,
        values: &BTreeMap<String, HostTensor>,
        batch: &Batch,
        seed: u64,
        step: u64,
    ) -> Result<Vec<f32>> {
        Ok(self
            .grads(values, batch, seed, step)?
            .iter()
            .map(|gi| gi.values().flat_map(|t| t.to_f64()).map(|x| x * x).sum::<f64>().sqrt() as f32)
            .collect())
    }
}

/// A compiled optimizer with its sessions and the values it carries between steps.
pub struct StepRunner {
    pub spec: StepSpec,
    pub graphs: step::StepGraphs,
    session: Box<dyn Session>,
    apply_session: Option<Box<dyn Session>>,
    /// LookSAM's graph of the steps between full ones.
    between_session: Option<Box<dyn Session>>,
    /// Late-phase SAM (--sam-from-epoch): the base optimizer's graph and session, run while
    /// `sam_active` is false; it shares parameters and the base optimizer's state.
    before: Option<(StepGraph, Box<dyn Session>)>,
    pub sam_active: bool,
    exact: Option<PerSampleGrads>,
    /// Parameters, running statistics and optimizer state, by input name.
    pub values: BTreeMap<String, HostTensor>,
    pub hyper: BTreeMap<String, f32>,
    pub seed: u64,
    /// Steps taken so far (the RNG counter).
    pub step: u64,
    /// Inputs fed as given instead of generated (e.g. a reference's directions).
    pub fixed: BTreeMap<String, HostTensor>,
    /// Keep parameters, optimizer state and running statistics with the engine between steps
    /// (ONNX Runtime: on its device, outputs bound to the next step's inputs); `values` is then
    /// brought up to date by `sync`. Engines that cannot (tract) ignore it.
    pub keep_on_device: bool,
    on_device: bool,
    /// --accumulate K (K > 1), or any data-parallel step but m-SAM's: the accumulation graphs
    /// (split where ranks sum their shares) and their sessions.
    acc: Option<crate::accumulate::AccRunner>,
    /// Data-parallel training: steps are split where ranks sum ([`StepRunner::distribute`]).
    distributed: bool,
}

impl StepRunner {
    pub fn new(model: &Model, spec: &StepSpec, backend: &dyn Backend, seed: u64) -> Result<StepRunner> {
        let graphs = step::step_graphs(model, spec).map_err(|e| anyhow!("{e}"))?;
        StepRunner::from_graphs(graphs, model, spec, backend, seed)
    }

    /// A runner of step graphs already compiled from `model` and `spec` (so that a caller can
    /// check a batch against them before choosing an engine).
    pub fn from_graphs(
        graphs: step::StepGraphs,
        model: &Model,
        spec: &StepSpec,
        backend: &dyn Backend,
        seed: u64,
    ) -> Result<StepRunner> {
        g::warn_import(&graphs.step.contract);
        let session = backend.load(&graphs.step.model.to_proto()).context("loading the step graph")?;
        let apply_session = match &graphs.apply {
            Some(a) => Some(backend.load(&a.model.to_proto()).context("loading the m-SAM apply graph")?),
            None => None,
        };
        let between_session = match &graphs.between {
            Some(a) => Some(backend.load(&a.model.to_proto()).context("loading LookSAM's graph of the steps between")?),
            None => None,
        };
        let exact =
            if graphs.step.contract.scores_fed { Some(PerSampleGrads::new(model, &spec.grad, backend)?) } else { None };
        let c = &graphs.step.contract;
        let mut values = g::initial_values(c)?;
        let mut hyper = c.hyper.clone();
        let others = graphs.apply.iter().chain(graphs.between.iter()).map(|a| &a.contract);
        for cc in std::iter::once(c).chain(others) {
            for k in cc.opt_state_next.keys() {
                if SCALAR_STATES.contains(&k.as_str()) {
                    values.entry(k.clone()).or_insert(HostTensor::f32(&[], vec![0.0]));
                } else if let Some(t) = values.get(state_param(k)) {
                    let z = zeros_like(t);
                    values.entry(k.clone()).or_insert(z);
                }
            }
            for (k, v) in &cc.hyper {
                hyper.entry(k.clone()).or_insert(*v);
            }
        }
        let acc = match spec.accumulate.filter(|&k| k > 1) {
            Some(_) => {
                let ag = step::accumulate_graphs(model, spec).map_err(|e| anyhow!("{e}"))?;
                for g in ag.scores.iter().chain(std::iter::once(&ag.ascent)).chain(ag.descent.iter()) {
                    for (k, v) in &g.contract.hyper {
                        hyper.entry(k.clone()).or_insert(*v);
                    }
                }
                Some(crate::accumulate::AccRunner::new(ag, backend)?)
            }
            None => None,
        };
        Ok(StepRunner {
            spec: spec.clone(),
            graphs,
            session,
            apply_session,
            between_session,
            before: None,
            sam_active: true,
            exact,
            values,
            hyper,
            seed,
            step: 0,
            fixed: BTreeMap::new(),
            keep_on_device: false,
            on_device: false,
            acc,
            distributed: false,
        })
    }

    /// Makes this runner one rank of a data-parallel run: its steps then take this rank's rows of
    /// each global batch ([`StepRunner::step_global`]) and sum gradients across ranks. Every step
    /// but m-SAM's runs as the accumulation graphs (K = --accumulate, default 1), split where the
    /// sums happen; m-SAM sums its micro-batches' gradients before its apply graph.
    pub fn distribute(&mut self, model: &Model, backend: &dyn Backend) -> Result<()> {
        if matches!(self.spec.reweight.map(|r| r.score), Some(step::Score::Exact)) {
            bail!("data-parallel RW-SAM takes finite-difference scores (--score fd), not --score exact");
        }
        if self.spec.micro_batch.is_none() && self.acc.is_none() {
            let ag = step::accumulate_graphs(model, &self.spec).map_err(|e| anyhow!("--distributed: {e}"))?;
            for g in ag.scores.iter().chain(std::iter::once(&ag.ascent)).chain(ag.descent.iter()) {
                for (k, v) in &g.contract.hyper {
                    self.hyper.entry(k.clone()).or_insert(*v);
                }
            }
            self.acc = Some(crate::accumulate::AccRunner::new(ag, backend)?);
        }
        self.distributed = true;
        Ok(())
    }

    /// One optimizer step of a data-parallel run: `batch` is this rank's rows of a global batch
    /// of `global_rows`; returns the outputs with loss and metric over the global batch.
    pub fn step_global(
        &mut self,
        batch: &Batch,
        global_rows: usize,
        dist: &mut Dist,
    ) -> Result<BTreeMap<String, HostTensor>> {
        if !self.distributed {
            bail!("internal: a data-parallel step on a runner not made distributed");
        }
        self.step_on(batch, Some((dist, global_rows)))
    }

    pub fn contract(&self) -> &Contract {
        &self.graphs.step.contract
    }

    /// A batch .npz's arrays checked against the step graph (labels in range, shapes).
    pub fn batch(&self, source: &str, arrays: BTreeMap<String, HostTensor>) -> Result<Batch> {
        g::batch_from_npz(source, &self.graphs.step.model, &self.graphs.step.contract, arrays)
    }

    /// Brings `values` up to date with what the engine holds (after steps with `keep_on_device`).
    pub fn sync(&mut self) -> Result<()> {
        if self.on_device {
            let c = &self.graphs.step.contract;
            let names: Vec<String> = match &self.graphs.apply {
                None => carried(c).into_iter().map(|(i, _)| i).collect(),
                // m-SAM: running statistics with the micro-batch session, parameters and momentum
                // with the apply session (the accumulated gradient is not kept between steps)
                Some(a) => {
                    let ac = &a.contract;
                    c.state_next.keys().chain(ac.params_next.keys()).chain(ac.opt_state_next.keys()).cloned().collect()
                }
            };
            for n in names {
                let v = if self.session.holds(&n) {
                    self.session.fetch(&n)?
                } else if let Some(a) = self.apply_session.as_mut().filter(|a| a.holds(&n)) {
                    a.fetch(&n)?
                } else {
                    bail!("internal: the engine holds no '{n}' after a step kept on the device")
                };
                self.values.insert(n, v);
            }
        }
        Ok(())
    }

    fn write_back(&mut self, c: &Contract, out: &BTreeMap<String, HostTensor>) -> Result<()> {
        for (i, o) in c.params_next.iter().chain(&c.opt_state_next).chain(&c.state_next) {
            let v = out.get(o).ok_or_else(|| anyhow!("the step graph has no output '{o}'"))?;
            self.values.insert(i.clone(), v.clone());
        }
        Ok(())
    }

    fn feed_options<'a>(
        &'a self,
        step: u64,
        hyper: &'a BTreeMap<String, f32>,
        extra: &'a [(String, HostTensor)],
        held: &'a [String],
    ) -> FeedOptions<'a> {
        FeedOptions {
            hyper: Some(hyper),
            seed: self.seed,
            step: Some(step),
            noise_step: None,
            fixed: Some(&self.fixed),
            extra,
            held,
        }
    }

    /// One optimizer step on `batch`; returns the step graph's outputs (m-SAM: diagnostics
    /// averaged over micro-batches, `correct` summed, per-sample outputs concatenated).
    pub fn step(&mut self, batch: &Batch) -> Result<BTreeMap<String, HostTensor>> {
        self.step_on(batch, None)
    }

    fn step_on(&mut self, batch: &Batch, dist: Option<(&mut Dist, usize)>) -> Result<BTreeMap<String, HostTensor>> {
        let b = batch.len();
        if self.acc.is_some() {
            let k = self.spec.accumulate.unwrap_or(1);
            self.sync()?;
            self.on_device = false;
            let draw =
                crate::accumulate::Draw { seed: self.seed, step: self.step, hyper: &self.hyper, fixed: &self.fixed };
            let acc = self.acc.as_mut().expect("checked");
            let out = acc.step(&self.spec, &mut self.values, batch, k.min(b), &draw, dist)?;
            check_finite(&out, self.step + 1)?;
            self.step += 1;
            return Ok(out);
        }
        if let Some(which) = self.alternate() {
            let out = self.plain_step(batch, which)?;
            check_finite(&out, self.step + 1)?;
            self.step += 1;
            return Ok(out);
        }
        let out = match self.spec.micro_batch {
            None => {
                let mut extra = Vec::new();
                if let Some(ex) = &mut self.exact {
                    let s = ex.norms(&self.values, batch, self.seed, self.step)?;
                    extra.push((step::SCORES_INPUT.to_string(), HostTensor::f32(&[b], s)));
                }
                let c = &self.graphs.step.contract;
                // (steps that alternate graphs go through the host)
                let alternating = self.graphs.between.is_some() || self.before.is_some();
                let carry = self.keep_on_device && self.exact.is_none() && self.session.can_carry() && !alternating;
                // what the engine holds from the last step is neither copied nor fed
                let held: Vec<String> =
                    if self.on_device { carried(c).into_iter().map(|(i, _)| i).collect() } else { vec![] };
                let o = self.feed_options(self.step, &self.hyper, &extra, &held);
                let f = feeds_with(c, Some(batch), &self.values, &o)?;
                if carry {
                    let carry = carried(c);
                    let out: BTreeMap<String, HostTensor> =
                        self.session.run_carrying(&f, &carry)?.into_iter().collect();
                    self.on_device = true;
                    out
                } else {
                    let out: BTreeMap<String, HostTensor> = self.session.run(&f)?.into_iter().collect();
                    let c = c.clone();
                    self.write_back(&c, &out)?;
                    out
                }
            }
            Some(m) => self.micro_step(batch, m, dist.map(|(d, _)| d))?,
        };
        check_finite(&out, self.step + 1)?; // 1-based, as the metrics count steps
        self.step += 1;
        Ok(out)
    }

    /// The graph other than the step graph that takes this step, if any: the base optimizer's
    /// before late-phase SAM starts, LookSAM's between its full steps (t mod k ≠ 0).
    fn alternate(&self) -> Option<Alternate> {
        if !self.sam_active && self.before.is_some() {
            return Some(Alternate::Before);
        }
        let k = self.spec.variant.looksam_k as u64;
        (self.between_session.is_some() && self.step % k != 0).then_some(Alternate::Between)
    }

    /// One step on an alternate graph, through the host (what the engine held is synced first).
    fn plain_step(&mut self, batch: &Batch, which: Alternate) -> Result<BTreeMap<String, HostTensor>> {
        self.sync()?;
        self.on_device = false;
        let (contract, session) = match which {
            Alternate::Before => {
                let (g, s) = self.before.as_mut().expect("checked");
                (&g.contract, s.as_mut())
            }
            Alternate::Between => (
                &self.graphs.between.as_ref().expect("LookSAM has a between graph").contract,
                self.between_session.as_mut().expect("checked").as_mut(),
            ),
        };
        let o = FeedOptions {
            hyper: Some(&self.hyper),
            seed: self.seed,
            step: Some(self.step),
            noise_step: None,
            fixed: Some(&self.fixed),
            extra: &[],
            held: &[],
        };
        let f = feeds_with(contract, Some(batch), &self.values, &o)?;
        let out: BTreeMap<String, HostTensor> = session.run(&f)?.into_iter().collect();
        let contract = contract.clone();
        self.write_back(&contract, &out)?;
        Ok(out)
    }

    /// Late-phase SAM: the base optimizer's step graph, run until `sam_active` is set.
    pub fn set_before(&mut self, model: &Model, backend: &dyn Backend) -> Result<()> {
        let spec = StepSpec {
            optimizer: graph_passes::passes::sam_update::Optimizer::Sgd,
            reweight: None,
            micro_batch: None,
            ..self.spec.clone()
        };
        let g = step::step_graphs(model, &spec).map_err(|e| anyhow!("{e}"))?;
        for (k, v) in &g.step.contract.hyper {
            self.hyper.entry(k.clone()).or_insert(*v);
        }
        let session = backend.load(&g.step.model.to_proto()).context("loading the base optimizer's step graph")?;
        self.before = Some((g.step, session));
        self.sam_active = false;
        Ok(())
    }

    fn micro_step(&mut self, batch: &Batch, m: usize, dist: Option<&mut Dist>) -> Result<BTreeMap<String, HostTensor>> {
        let b = batch.len();
        if m == 0 || b % m != 0 {
            bail!("--micro-batch {m} does not divide the batch size {b}");
        }
        let k = b / m;
        let c = self.graphs.step.contract.clone();
        let ac = self.graphs.apply.as_ref().expect("m-SAM has an apply graph").contract.clone();
        let mut apply = self.apply_session.take().expect("m-SAM has an apply session");
        let r = self.micro_runs(batch, m, k, &c, &ac, apply.as_mut(), dist);
        self.apply_session = Some(apply);
        let (out, merged) = r?;
        let mut result: BTreeMap<String, HostTensor> = out;
        for (name, parts) in merged {
            let t = if parts[0].shape.is_empty() {
                let vals: Vec<f64> = parts.iter().map(|p| p.to_f64()[0]).collect();
                // task metrics are batch sums (correct, abs_error); the rest are means
                let summed = matches!(name.as_str(), "correct" | "abs_error");
                let v = if summed { vals.iter().sum::<f64>() } else { vals.iter().sum::<f64>() / k as f64 };
                HostTensor::f32(&[], vec![v as f32])
            } else if parts[0].shape.len() == 1 && parts[0].shape[0] == m {
                let v: Vec<f32> = parts.iter().flat_map(|p| p.to_f64().into_iter().map(|x| x as f32)).collect();
                HostTensor::f32(&[b], v)
            } else {
                continue;
            };
            result.insert(name, t);
        }
        Ok(result)
    }

    /// m-SAM's k micro-batch runs and its apply run. With `keep_on_device` (and an engine that
    /// can), nothing carried visits the host: the accumulated gradient stays with the micro-batch
    /// session between its runs and then moves to the apply session; the parameters move from
    /// the apply session (which updates them) to the micro-batch session and back each step;
    /// running statistics stay with the micro-batch session, momentum with the apply session.
    fn micro_runs(
        &mut self,
        batch: &Batch,
        m: usize,
        k: usize,
        c: &Contract,
        ac: &Contract,
        apply: &mut dyn Session,
        dist: Option<&mut Dist>,
    ) -> Result<(Outputs, BTreeMap<String, Vec<HostTensor>>)> {
        // data-parallel: the accumulated gradient is summed across ranks on the host
        let on_device = self.keep_on_device && self.session.can_carry() && apply.can_carry() && dist.is_none();
        // data-parallel: dropout noise of its own for every rank's micro-batch (one rank: step·k + j)
        let rank_of = dist.as_ref().map(|d| (d.rank() as u64, d.size() as u64));
        let acc_names: Vec<String> = c.opt_state_next.keys().cloned().collect();
        let zero_acc: Vec<(String, HostTensor)> =
            acc_names.iter().map(|a| (a.clone(), zeros_like(&self.values[state_param(a)]))).collect();
        let mut acc = zero_acc.clone();
        if on_device {
            for p in ac.params_next.keys() {
                if let Some(v) = apply.take(p) {
                    self.session.give(p, v)?;
                }
            }
            // each step's accumulation starts from zeros fed from the host
            for a in &acc_names {
                drop(self.session.take(a));
            }
        }
        let micro_carry: Vec<(String, String)> =
            c.opt_state_next.iter().chain(&c.state_next).map(|(i, o)| (i.clone(), o.clone())).collect();
        let mut merged: BTreeMap<String, Vec<HostTensor>> = BTreeMap::new();
        for j in 0..k {
            let mb = batch_rows(batch, j * m, m);
            let out: BTreeMap<String, HostTensor> = if on_device {
                let held: Vec<String> = all_inputs(c).filter(|n| self.session.holds(n)).collect();
                let extra = if j == 0 { zero_acc.clone() } else { vec![] };
                let o = self.feed_options(self.step * k as u64 + j as u64, &self.hyper, &extra, &held);
                let f = feeds_with(c, Some(&mb), &self.values, &o)?;
                self.session.run_carrying(&f, &micro_carry)?.into_iter().collect()
            } else {
                let o = self.feed_options(self.step * k as u64 + j as u64, &self.hyper, &acc, &[]);
                let noise_step = rank_of.map(|(r, n)| (self.step * n + r) * k as u64 + j as u64);
                let o = FeedOptions { noise_step, ..o };
                let f = feeds_with(c, Some(&mb), &self.values, &o)?;
                let out: BTreeMap<String, HostTensor> = self.session.run(&f)?.into_iter().collect();
                for (i, o) in &c.state_next {
                    self.values.insert(i.clone(), out[o].clone());
                }
                for (a, t) in acc.iter_mut() {
                    *t = out[&c.opt_state_next[a]].clone();
                }
                out
            };
            for (name, t) in out {
                merged.entry(name).or_default().push(t);
            }
        }
        let mut hyper = self.hyper.clone();
        let mut micro_batches = k;
        if let Some(d) = dist {
            // every rank's micro-batch gradients summed; the apply graph divides by their count
            // (m-SAM drops partial batches, so every rank has k)
            let n = d.size();
            let losses: Vec<f64> =
                merged.get("loss").map(|v| v.iter().map(|t| t.to_f64()[0]).collect()).unwrap_or_default();
            let metric_name = c.metric.as_ref().map(|(n, _)| n.clone());
            let metric: f64 = metric_name
                .as_ref()
                .and_then(|m| merged.get(m))
                .map(|v| v.iter().map(|t| t.to_f64()[0]).sum())
                .unwrap_or(0.0);
            let loss_share = losses.iter().sum::<f64>() / (k * n) as f64;
            let g = d.reduce_step(&mut acc, &[loss_share, metric])?;
            d.check_finite(self.step + 1)?;
            merged.insert("loss".into(), vec![HostTensor::f32(&[], vec![g[0] as f32]); k]);
            if let Some(m) = metric_name {
                merged.insert(m, vec![HostTensor::f32(&[], vec![(g[1] / k as f64) as f32]); k]);
            }
            micro_batches = k * n;
        }
        hyper.insert(graph_passes::passes::sam_update::MICRO_BATCHES.into(), micro_batches as f32);
        let out: BTreeMap<String, HostTensor> = if on_device {
            for name in acc_names.iter().chain(ac.params_next.keys()) {
                if let Some(v) = self.session.take(name) {
                    apply.give(name, v)?;
                }
            }
            let held: Vec<String> = all_inputs(ac).filter(|n| apply.holds(n)).collect();
            let f = feeds_with(ac, None, &self.values, &self.feed_options(self.step, &hyper, &[], &held))?;
            let out = apply.run_carrying(&f, &carried(ac))?.into_iter().collect();
            self.on_device = true;
            out
        } else {
            let f = feeds_with(ac, None, &self.values, &self.feed_options(self.step, &hyper, &acc, &[]))?;
            let out = apply.run(&f)?.into_iter().collect();
            self.write_back(ac, &out)?;
            out
        };
        Ok((out, merged))
    }
}

/// A graph other than the step graph.
#[derive(Clone, Copy)]
enum Alternate {
    Before,
    Between,
}

/// A run's outputs by name.
type Outputs = BTreeMap<String, HostTensor>;

/// Optimizer state starts at zero.
fn zeros_like(t: &HostTensor) -> HostTensor {
    HostTensor::f32(&t.shape, vec![0.0; t.len()])
}

/// Every parameter and state input of a graph.
fn all_inputs(c: &Contract) -> impl Iterator<Item = String> + '_ {
    c.params.iter().chain(c.state_next.keys()).chain(c.opt_state_next.keys()).chain(&c.state).cloned()
}

/// (input, output with its next value) of everything a step carries to the next.
fn carried(c: &Contract) -> Vec<(String, String)> {
    c.params_next.iter().chain(&c.opt_state_next).chain(&c.state_next).map(|(i, o)| (i.clone(), o.clone())).collect()
}

/// A NaN/Inf loss stops training with the step that produced it.
fn check_finite(out: &BTreeMap<String, HostTensor>, step: u64) -> Result<()> {
    if let Some(l) = out.get("loss") {
        if l.to_f64().iter().any(|x| !x.is_finite()) {
            bail!("step {step}: the loss is {} (diverged: lower --lr or --rho, or check the data)", l.to_f64()[0]);
        }
    }
    Ok(())
}

/// The evaluation graph with a session: loss, per-sample losses, correct count.
pub struct Evaluator {
    pub graph: StepGraph,
    session: Box<dyn Session>,
}

impl Evaluator {
    pub fn new(model: &Model, spec: &GradSpec, backend: &dyn Backend) -> Result<Evaluator> {
        let graph = step::eval_graph(model, spec).map_err(|e| anyhow!("{e}"))?;
        let session = backend.load(&graph.model.to_proto())?;
        Ok(Evaluator { graph, session })
    }

    pub fn run(
        &mut self,
        values: &BTreeMap<String, HostTensor>,
        batch: &Batch,
    ) -> Result<BTreeMap<String, HostTensor>> {
        let f = feeds_with(
            &self.graph.contract,
            Some(batch),
            values,
            &FeedOptions { step: Some(0), ..Default::default() },
        )?;
        Ok(self.session.run(&f)?.into_iter().collect())
    }
}
