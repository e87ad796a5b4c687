//! Gradient accumulation (`--accumulate K`): one optimizer step over a logical batch of K
//! micro-batches, so that memory scales with the micro-batch. The SAM family keeps its meaning
//! over the logical batch (graph_passes::step::AccumulateGraphs): RW-SAM's scores of every
//! micro-batch first and the Gibbs weights normalized over the whole batch; the ascent gradient
//! accumulated over all K; one ε; the gradient at θ + ε accumulated over all K; one base step.
//! BatchNorm normalizes each micro-batch with its own statistics and moves its running
//! statistics once per micro-batch, as PyTorch's accumulation loop does.
use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};
use graph_passes::passes::reweight::{ScoreNorm, WEIGHTS};
use graph_passes::passes::sam_update::{state_param, GRAD_ACC, LOSS_AT_EPS, MICRO_BATCHES, MICRO_WEIGHT};
use graph_passes::pass::Contract;
use graph_passes::step::{AccumulateGraphs, StepGraph, StepSpec};

use crate::backend::{Backend, Session};
use crate::distributed::{shares, Dist};
use crate::grad::{feeds_with, Batch, FeedOptions};
use crate::tensor::HostTensor;

/// The accumulation graphs with a session each.
pub struct AccRunner {
    pub graphs: AccumulateGraphs,
    scores: Option<Box<dyn Session>>,
    ascent: Box<dyn Session>,
    descent: Option<Box<dyn Session>>,
    apply: Box<dyn Session>,
}

/// Where one step's random inputs come from: the run's seed, the step (RW-SAM's directions: one
/// z for the whole logical batch), and the micro-batch (dropout noise of its own rows).
pub struct Draw<'a> {
    pub seed: u64,
    pub step: u64,
    pub hyper: &'a BTreeMap<String, f32>,
    pub fixed: &'a BTreeMap<String, HostTensor>,
}

fn load(backend: &dyn Backend, g: &StepGraph, what: &str) -> Result<Box<dyn Session>> {
    backend.load(&g.model.to_proto()).map_err(|e| anyhow!("loading the accumulation {what} graph: {e:#}"))
}

/// The sizes K micro-batches of a batch of `b` take (the first b mod K one larger).
pub fn micro_sizes(b: usize, k: usize) -> Result<Vec<usize>> {
    if k == 0 || k > b {
        bail!("--accumulate {k}: a batch of {b} samples cannot make {k} micro-batches");
    }
    Ok((0..k).map(|j| b / k + usize::from(j < b % k)).collect())
}

impl AccRunner {
    pub fn new(graphs: AccumulateGraphs, backend: &dyn Backend) -> Result<AccRunner> {
        let scores = graphs.scores.as_ref().map(|g| load(backend, g, "scores")).transpose()?;
        let ascent = load(backend, &graphs.ascent, "ascent")?;
        let descent = graphs.descent.as_ref().map(|g| load(backend, g, "descent")).transpose()?;
        let apply = load(backend, &graphs.apply, "apply")?;
        Ok(AccRunner { graphs, scores, ascent, descent, apply })
    }

    /// One step over `batch` in `k` micro-batches: `values` (parameters, state) updated in
    /// place; returns the step's outputs as the one-graph step names them (loss, the metric,
    /// grad_norm, sharpness, loss_per_sample, RW-SAM's weights and their diagnostics).
    ///
    /// `dist`: this rank's part of a data-parallel step whose global batch has that many rows
    /// (crate::distributed): shares are weighted by rows of the global batch and summed across
    /// ranks before the base step (and, with --sync-ascent, before ε). Loss, metric and sharpness
    /// come back over the global batch; grad_norm is the ascent gradient's (global where it is
    /// summed: SGD, Adam, --sync-ascent); RW-SAM's weights and their diagnostics are this rank's
    /// (over all ranks with --global-weights).
    pub fn step(
        &mut self,
        spec: &StepSpec,
        values: &mut BTreeMap<String, HostTensor>,
        batch: &Batch,
        k: usize,
        draw: &Draw,
        mut dist: Option<(&mut Dist, usize)>,
    ) -> Result<BTreeMap<String, HostTensor>> {
        let b = batch.len();
        let sizes = micro_sizes(b, k)?;
        let starts: Vec<usize> = sizes.iter().scan(0, |s, &n| Some(std::mem::replace(s, *s + n))).collect();
        let parts: Vec<Batch> =
            starts.iter().zip(&sizes).map(|(&s, &n)| crate::step::batch_rows(batch, s, n)).collect();
        let mut out = BTreeMap::new();
        // the global batch: its rows, every rank's share of them, this rank
        let (global, rank_rows, rank, ranks) = match &dist {
            Some((d, g)) => (*g, shares(*g, d.size()), d.rank(), d.size()),
            None => (b, vec![b], 0, 1),
        };
        // what each micro-batch weighs (its rows, or its kept positions where each graph run's
        // loss is the mean over its kept positions: then shares combine as the mean over the
        // kept positions of the global batch, F.cross_entropy's reduction='mean'); rel[j]: a
        // micro-batch's kept positions per row against the global batch's (1 by rows), which
        // turns its per-sample losses into the whole batch's
        let ac = &self.graphs.ascent.contract;
        let mass: Vec<f64> = parts.iter().map(|mb| crate::grad::batch_weight(ac, mb)).collect();
        let local_mass: f64 = mass.iter().sum();
        let global_mass = match dist.as_mut() {
            Some((d, _)) if ac.position_mean => d.gather_f64(&[local_mass], &vec![1; d.size()])?.iter().sum(),
            Some((_, g)) if !ac.position_mean => *g as f64,
            _ => local_mass,
        };
        let per_row = |m: f64, rows: usize| if rows == 0 { 1.0 } else { m / rows as f64 };
        let rel_to = |reference: f64| -> Vec<f64> {
            (0..parts.len()).map(|j| per_row(mass[j], sizes[j]) / reference.max(f64::MIN_POSITIVE)).collect()
        };
        let rel = if ac.position_mean { rel_to(per_row(global_mass, global)) } else { vec![1.0; parts.len()] };
        let sync = dist.as_ref().map(|(d, _)| d.opts.sync_ascent).unwrap_or(false);
        let global_weights = dist.as_ref().map(|(d, _)| d.opts.global_weights).unwrap_or(false);
        // the ascent gradient is summed across ranks (SGD's is the descent gradient; SAM's with
        // --sync-ascent), else it is this rank's own (per-rank ε)
        let summed_ascent = dist.is_some() && (sync || self.descent.is_none());
        let ascent_mass = if summed_ascent { global_mass } else { local_mass };
        // dropout noise of its own for every micro-batch of every rank (one rank: step·k + j)
        let noise_key = |j: usize| (draw.step * ranks as u64 + rank as u64) * k as u64 + j as u64;
        let opts = |c: &Contract,
                    values: &BTreeMap<String, HostTensor>,
                    hyper: &BTreeMap<String, f32>,
                    extra: &[(String, HostTensor)],
                    j: usize,
                    mb: &Batch| {
            let o = FeedOptions {
                hyper: Some(hyper),
                seed: draw.seed,
                step: Some(draw.step),
                noise_step: Some(noise_key(j)),
                fixed: Some(draw.fixed),
                extra,
                held: &[],
            };
            feeds_with(c, Some(mb), values, &o)
        };
        // each micro-batch's per-sample losses (so its scores) as the batch RW-SAM's weights
        // are over forms them: this rank's, or all ranks' with --global-weights
        let over = if ac.position_mean && !global_weights { rel_to(per_row(local_mass, b)) } else { rel.clone() };
        // 1. RW-SAM: scores of every micro-batch, weights over the logical batch
        let weights = match (&mut self.scores, &self.graphs.scores, &spec.reweight) {
            (Some(s), Some(g), Some(r)) => {
                let mut scores = Vec::with_capacity(b);
                let mut trace_v = 0.0;
                for (j, mb) in parts.iter().enumerate() {
                    let f = opts(&g.contract, values, draw.hyper, &[], j, mb)?;
                    let o: BTreeMap<String, HostTensor> = s.run(&f)?.into_iter().collect();
                    let sc =
                        g.contract.scores.as_ref().and_then(|n| o.get(n)).ok_or_else(|| anyhow!("no scores output"))?;
                    scores.extend(sc.to_f64().into_iter().map(|x| x * over[j]));
                    if let Some(t) = o.get("trace_v") {
                        trace_v += t.to_f64()[0] * sizes[j] as f64 / b as f64;
                    }
                }
                let lambda = draw.hyper.get("lambda").copied().unwrap_or(r.lambda) as f64;
                let target = r.target_ess.map(|f| draw.hyper.get("target_ess").copied().unwrap_or(f) as f64);
                // the weights over this rank's samples, or over all ranks' (--global-weights),
                // scaled so that their ascent shares sum to what the ascent gradient means: the
                // weighted gradient of the global batch (summed ascent), else this rank's ε from
                // its own samples — with global weights, their part of the global weights × B/b,
                // so that λ = 0 is per-rank SAM (USAM's ε then grows with the rank's weight mass)
                let offset: usize = rank_rows[..rank].iter().sum();
                let (p, chosen, scale) = match dist.as_mut() {
                    Some((d, _)) if global_weights => {
                        let all = d.gather_f64(&scores, &rank_rows)?;
                        let (p, l) = gibbs(&all, lambda, target, r.score_norm);
                        (p, l, if summed_ascent { 1.0 } else { global as f64 / b as f64 })
                    }
                    _ => {
                        let (p, l) = gibbs(&scores, lambda, target, r.score_norm);
                        (p, l, if summed_ascent { b as f64 / global as f64 } else { 1.0 })
                    }
                };
                if target.is_some() {
                    out.insert("lambda".into(), HostTensor::f32(&[], vec![chosen as f32]));
                }
                let ess = 1.0 / p.iter().map(|x| x * x).sum::<f64>();
                let h = -p.iter().filter(|&&x| x > 0.0).map(|x| x * x.ln()).sum::<f64>();
                let maxw = p.iter().cloned().fold(0.0, f64::max);
                let scalar = |v: f64| HostTensor::f32(&[], vec![v as f32]);
                out.insert("scores".into(), HostTensor::f32(&[b], scores.iter().map(|&x| x as f32).collect()));
                out.insert("trace_v".into(), scalar(trace_v));
                out.insert("ess".into(), scalar(ess));
                out.insert("weight_entropy".into(), scalar(h));
                out.insert("max_weight".into(), scalar(maxw));
                let own: Vec<f64> = if p.len() == b { p } else { p[offset..offset + b].to_vec() };
                out.insert(WEIGHTS.into(), HostTensor::f32(&[b], own.iter().map(|&x| x as f32).collect()));
                let row_rel: Vec<f64> = (0..parts.len()).flat_map(|j| std::iter::repeat(over[j]).take(sizes[j])).collect();
                Some(own.iter().zip(&row_rel).map(|(x, r)| x * scale * r).collect::<Vec<f64>>())
            }
            _ => None,
        };
        // 2. the ascent gradient's shares at θ (the clean pass: running statistics move)
        let acc_names: Vec<String> = ac.opt_state_next.keys().cloned().collect();
        let mut acc: Vec<(String, HostTensor)> = acc_names.iter().map(|a| (a.clone(), zeros_of(values, a))).collect();
        let (mut loss, mut metric, mut lps) = (0.0f64, 0.0f64, Vec::with_capacity(b));
        let metric_name = ac.metric.as_ref().map(|(n, _)| n.clone());
        for (j, mb) in parts.iter().enumerate() {
            let mut hyper = draw.hyper.clone();
            hyper.insert(MICRO_WEIGHT.into(), (mass[j] / ascent_mass.max(f64::MIN_POSITIVE)) as f32);
            let mut extra = acc.clone();
            if let Some(p) = &weights {
                let w: Vec<f32> = p[starts[j]..starts[j] + sizes[j]].iter().map(|&x| x as f32).collect();
                extra.push((WEIGHTS.into(), HostTensor::f32(&[sizes[j]], w)));
            }
            let f = opts(ac, values, &hyper, &extra, j, mb)?;
            let o: BTreeMap<String, HostTensor> = self.ascent.run(&f)?.into_iter().collect();
            for (a, t) in acc.iter_mut() {
                *t = o[&ac.opt_state_next[a]].clone();
            }
            for (i, n) in &ac.state_next {
                values.insert(i.clone(), o[n].clone());
            }
            loss += o["loss"].to_f64()[0] * mass[j] / local_mass.max(f64::MIN_POSITIVE);
            if let Some(m) = metric_name.as_ref().and_then(|n| o.get(n)) {
                metric += m.to_f64()[0] * rel[j];
            }
            if let Some(l) = o.get("loss_per_sample") {
                lps.extend(l.to_f64().into_iter().map(|x| x * rel[j]));
            }
        }
        let scalar = |v: f64| HostTensor::f32(&[], vec![v as f32]);
        // data-parallel: loss and metric summed across ranks in the step's first round (with
        // the not-finite flags, so that no rank goes on past a NaN on another)
        let local_loss = loss;
        let diagnostics = [loss * local_mass / global_mass.max(f64::MIN_POSITIVE), metric];
        let mut reduced = false;
        if let Some((d, _)) = dist.as_mut().filter(|_| summed_ascent) {
            let g = d.reduce_step(&mut acc, &diagnostics)?;
            d.check_finite(draw.step + 1)?;
            (loss, metric, reduced) = (g[0], g[1], true);
        }
        out.insert("loss".into(), scalar(loss));
        if let Some(n) = &metric_name {
            out.insert(n.clone(), scalar(metric));
        }
        if lps.len() == b {
            out.insert("loss_per_sample".into(), HostTensor::f32(&[b], lps.iter().map(|&x| x as f32).collect()));
        }
        // 3. SAM family: one ε from the whole ascent gradient, the gradient's shares at θ + ε
        let grad_acc: Vec<(String, HostTensor)> = match (&mut self.descent, &self.graphs.descent) {
            (Some(s), Some(g)) => {
                let dc = &g.contract;
                let names: Vec<String> = dc.opt_state_next.keys().cloned().collect();
                let mut gacc: Vec<(String, HostTensor)> =
                    names.iter().map(|a| (a.clone(), zeros_of(values, a))).collect();
                let ascent: Vec<(String, HostTensor)> = acc.clone();
                let mut at_eps = 0.0;
                for (j, mb) in parts.iter().enumerate() {
                    let mut hyper = draw.hyper.clone();
                    hyper.insert(MICRO_WEIGHT.into(), (mass[j] / global_mass.max(f64::MIN_POSITIVE)) as f32);
                    let mut extra = gacc.clone();
                    extra.extend(ascent.iter().cloned());
                    let f = opts(dc, values, &hyper, &extra, j, mb)?;
                    let o: BTreeMap<String, HostTensor> = s.run(&f)?.into_iter().collect();
                    for (a, t) in gacc.iter_mut() {
                        *t = o[&dc.opt_state_next[a]].clone();
                    }
                    at_eps += o[LOSS_AT_EPS].to_f64()[0] * mass[j] / local_mass.max(f64::MIN_POSITIVE);
                    if j == 0 {
                        out.insert("grad_norm".into(), o["grad_norm"].clone());
                    }
                }
                if let Some((d, _)) = dist.as_mut() {
                    // the gradient at θ + ε summed across ranks; the step's diagnostics with it
                    // unless the ascent's round carried them
                    let sharp = (at_eps - local_loss) * local_mass / global_mass.max(f64::MIN_POSITIVE);
                    let shares = if reduced { vec![sharp] } else { vec![sharp, diagnostics[0], diagnostics[1]] };
                    let g = d.reduce_step(&mut gacc, &shares)?;
                    d.check_finite(draw.step + 1)?;
                    out.insert("sharpness".into(), scalar(g[0]));
                    if !reduced {
                        out.insert("loss".into(), scalar(g[1]));
                        if let Some(n) = &metric_name {
                            out.insert(n.clone(), scalar(g[2]));
                        }
                    }
                } else {
                    out.insert("sharpness".into(), scalar(at_eps - local_loss));
                }
                gacc
            }
            _ => {
                // SGD, Adam: the accumulated gradient is the descent gradient
                let n2: f64 = acc.iter().flat_map(|(_, t)| t.to_f64()).map(|x| x * x).sum();
                out.insert("grad_norm".into(), scalar(n2.sqrt()));
                acc.into_iter().filter(|(a, _)| a.starts_with(GRAD_ACC)).collect()
            }
        };
        // 4. the base step
        let pc = &self.graphs.apply.contract;
        let mut hyper = draw.hyper.clone();
        hyper.insert(MICRO_BATCHES.into(), 1.0);
        let o = FeedOptions {
            hyper: Some(&hyper),
            seed: draw.seed,
            step: Some(draw.step),
            noise_step: None,
            fixed: Some(draw.fixed),
            extra: &grad_acc,
            held: &[],
        };
        let f = feeds_with(pc, None, values, &o)?;
        let r: BTreeMap<String, HostTensor> = self.apply.run(&f)?.into_iter().collect();
        for (i, n) in pc.params_next.iter().chain(&pc.opt_state_next) {
            let v = r.get(n).ok_or_else(|| anyhow!("the apply graph has no output '{n}'"))?;
            values.insert(i.clone(), v.clone());
        }
        Ok(out)
    }
}

/// Zeros shaped like the parameter an accumulator belongs to.
fn zeros_of(values: &BTreeMap<String, HostTensor>, acc: &str) -> HostTensor {
    let shape = values.get(state_param(acc)).map(|t| t.shape.clone()).unwrap_or_default();
    let n = shape.iter().product();
    HostTensor::f32(&shape, vec![0.0; n])
}

/// RW-SAM's Gibbs weights over the logical batch, as the reweight pass forms them, and λ:
/// pᵢ = softmax(λ·sᵢ/c), c = mean s + 1e-12 (score-norm mean) or 1 (none), λ = `lambda` or
/// (`target` F) the adaptive λ whose weights keep an ESS of F·b; in float64.
pub fn gibbs(s: &[f64], lambda: f64, target: Option<f64>, norm: ScoreNorm) -> (Vec<f64>, f64) {
    let c = match norm {
        ScoreNorm::Mean => s.iter().sum::<f64>() / s.len().max(1) as f64 + 1e-12,
        ScoreNorm::None => 1.0,
    };
    let a: Vec<f64> = s.iter().map(|x| x / c).collect();
    let lambda = match target {
        Some(f) => graph_passes::passes::reweight::auto_lambda(&a, f),
        None => lambda,
    };
    let a: Vec<f64> = a.iter().map(|x| lambda * x).collect();
    let mx = a.iter().cloned().fold(f64::MIN, f64::max);
    let e: Vec<f64> = a.iter().map(|x| (x - mx).exp()).collect();
    let z: f64 = e.iter().sum();
    (e.iter().map(|x| x / z).collect(), lambda)
}
