//! `onnxsam bench`: synthetic batches, warm-up, median step time; graphs side by side.
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use clap::Args;
use graph_passes::ir::Model;
use graph_passes::onnx::data_type as dt;
use graph_passes::shapes::{self, Dim};
use graph_passes::step;

use super::BackendArgs;
use super::GradGraphArgs;
use crate::backend;
use crate::grad::{self as g, Batch};
use crate::tensor::HostTensor;

#[derive(Args)]
pub struct BenchArgs {
    /// The ONNX model
    model: PathBuf,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Timed runs (the median is reported)
    #[arg(long, default_value_t = 20)]
    steps: usize,
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    #[command(flatten)]
    graph: GradGraphArgs,
    /// With --optimizer: time training steps of that optimizer beside SGD's (interleaved rounds)
    #[command(flatten)]
    step: super::StepArgs,
    /// Time the standard set side by side: SGD, SAM, RW-SAM (λ = 1, Q = 1), m-SAM with M = 16 and 4
    #[arg(long, conflicts_with = "optimizer")]
    suite: bool,
    /// Time the SAM variants side by side: SGD, SAM, RW-SAM (λ = 1 and --reweight auto), GSAM,
    /// WSAM, F-SAM, LookSAM (one timing = a cycle of k steps, over k), Momentum-SAM
    #[arg(long, conflicts_with_all = ["optimizer", "suite"])]
    variants: bool,
    /// Time each optimizer's steps back to back, as a training run takes them (its warm-up
    /// first), instead of in interleaved rounds; what tools/bench/train_vs_torch.py compares with
    /// PyTorch, which also runs each optimizer's steps back to back
    #[arg(long)]
    consecutive: bool,
    #[command(flatten)]
    backend: BackendArgs,
    #[arg(long)]
    json: bool,
}

/// The logits' class count of a compiled graph (10 when unknown), for synthetic labels.
fn classes_of(m: &Model, c: &graph_passes::pass::Contract) -> Result<usize> {
    let s = shapes::infer(&m.graph).map_err(|e| anyhow!("{e}"))?;
    let known = c.logits.as_deref().and_then(|l| s.shape(l)).and_then(|sh| sh.get(1).and_then(|d| d.known()));
    Ok(known.unwrap_or(10) as usize)
}

/// Random data for the model's inputs at `batch` and labels in range.
fn synthetic_batch(model: &Model, batch: usize, classes: usize) -> Result<(Vec<(String, HostTensor)>, HostTensor)> {
    let mut data = Vec::new();
    for v in model.graph.data_inputs() {
        let t = shapes::value_type_of(&v.r#type).ok_or_else(|| anyhow!("input '{}' has no tensor type", v.name))?;
        let shape: Vec<usize> = t
            .shape
            .ok_or_else(|| anyhow!("input '{}' has no shape", v.name))?
            .iter()
            .enumerate()
            .map(|(i, d)| match d {
                Dim::Known(k) => Ok(*k as usize),
                Dim::Sym(_) if i == 0 => Ok(batch),
                Dim::Sym(s) => Err(anyhow!(
                    "input '{}' has a symbolic dimension '{s}' besides the batch; bench needs it known",
                    v.name
                )),
            })
            .collect::<Result<_>>()?;
        let n = shape.iter().product();
        let u = g::uniform(1, &v.name, n);
        data.push((
            v.name.clone(),
            match t.dtype {
                dt::INT64 => HostTensor::i64(&shape, u.iter().map(|x| (x * 16.0) as i64).collect()),
                _ => HostTensor::f32(&shape, u.iter().map(|x| x * 2.0 - 1.0).collect()),
            },
        ));
    }
    let labels = HostTensor::i64(
        &[batch],
        g::uniform(2, "labels", batch).iter().map(|x| ((x * classes as f32) as i64).min(classes as i64 - 1)).collect(),
    );
    Ok((data, labels))
}

fn time_runs(
    session: &mut dyn backend::Session,
    feeds: &[(String, HostTensor)],
    warmup: usize,
    steps: usize,
) -> Result<f64> {
    let mut times = Vec::new();
    for i in 0..warmup + steps {
        let t0 = Instant::now();
        session.run(feeds)?;
        if i >= warmup {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Ok(times[times.len() / 2])
}

#[derive(serde::Serialize)]
struct Report {
    model: String,
    backend: String,
    batch_size: usize,
    forward_ms: f64,
    train_forward_ms: f64,
    forward_backward_ms: f64,
    ratio: f64,
    ratio_to_train_forward: f64,
    forward_nodes: usize,
    grad_nodes: usize,
    node_ratio: f64,
    grad_load_s: f64,
}

pub fn bench(a: BenchArgs) -> Result<i32> {
    if a.suite || a.variants || a.step.optimizer.is_some() {
        return bench_steps(&a);
    }
    let model = Model::load(&a.model)?;
    let spec = a.graph.spec()?;
    let (gm, c) = step::grad_graph(&model, &spec).map_err(|e| anyhow!("{}: {e}", a.model.display()))?;
    let classes = classes_of(&gm, &c)?;
    let (data, labels) = synthetic_batch(&model, a.batch_size, classes)?;
    let labels: HostTensor = labels;
    let be = backend::select(&a.backend.request(), true)?;
    let mut fwd = be.load(&model.to_proto()).with_context(|| a.model.display().to_string())?;
    let forward_ms = time_runs(fwd.as_mut(), &data, a.warmup, a.steps)?;
    // the same forward in training form: parameters as inputs, batch statistics, the loss
    let (lm, lc) = step::loss_graph(&model, &spec).map_err(|e| anyhow!("{}: {e}", a.model.display()))?;
    let mut lsess = be.load(&lm.to_proto())?;
    let lvalues = g::initial_values(&lc)?;
    let lbatch = Batch { data: data.clone(), labels: Some(labels.clone()) };
    let lfeeds = g::feeds(&lc, &lbatch, &lvalues, 0)?;
    let train_forward_ms = time_runs(lsess.as_mut(), &lfeeds, a.warmup, a.steps)?;
    let t0 = Instant::now();
    let mut grad = be.load(&gm.to_proto())?;
    let values = g::initial_values(&c)?;
    let batch = Batch { data: data.clone(), labels: Some(labels) };
    let feeds = g::feeds(&c, &batch, &values, 0)?;
    grad.run(&feeds)?;
    let grad_load_s = t0.elapsed().as_secs_f64();
    let fb = time_runs(grad.as_mut(), &feeds, a.warmup, a.steps)?;
    let r = Report {
        model: a.model.display().to_string(),
        backend: be.describe(),
        batch_size: a.batch_size,
        forward_ms,
        train_forward_ms,
        forward_backward_ms: fb,
        ratio: fb / forward_ms,
        ratio_to_train_forward: fb / train_forward_ms,
        forward_nodes: model.graph.nodes.len(),
        grad_nodes: gm.graph.nodes.len(),
        node_ratio: gm.graph.nodes.len() as f64 / model.graph.nodes.len() as f64,
        grad_load_s,
    };
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{}: batch {}, forward {:.2} ms (training form {:.2} ms), forward+backward {:.2} ms ({:.2}× forward, {:.2}× training forward); nodes {} → {} ({:.2}×); gradient graph load {:.2} s",
            r.model,
            r.batch_size,
            r.forward_ms,
            r.train_forward_ms,
            r.forward_backward_ms,
            r.ratio,
            r.ratio_to_train_forward,
            r.forward_nodes,
            r.grad_nodes,
            r.node_ratio,
            r.grad_load_s
        );
    }
    Ok(0)
}

#[derive(serde::Serialize)]
struct StepTiming {
    name: String,
    nodes: usize,
    load_s: f64,
    median_ms: f64,
    ratio_to_sgd: f64,
    /// Peak resident memory while this optimizer's graphs were loaded and run, MiB (--consecutive:
    /// each optimizer alone, its runner built after the peak was reset and dropped after; else
    /// the process's peak with every optimizer loaded).
    peak_rss_mib: Option<f64>,
}

#[derive(serde::Serialize)]
struct StepReport {
    model: String,
    backend: String,
    batch_size: usize,
    steps: usize,
    optimizers: Vec<StepTiming>,
}

/// Training steps of several optimizers on one synthetic batch, timed in interleaved rounds (so
/// machine noise hits all alike) or back to back (`--consecutive`); lr is fed as 0 so that
/// parameters stay put and no run diverges.
fn bench_steps(a: &BenchArgs) -> Result<i32> {
    use crate::step::StepRunner;
    use graph_passes::passes::fd_branch::FdScheme;
    use graph_passes::passes::reweight::ScoreNorm;
    use graph_passes::passes::sam_update::Optimizer;
    use graph_passes::step::{ReweightSpec, Score, StepSpec};
    let model = Model::load(&a.model)?;
    let shown = a.model.display().to_string();
    let user = a.step.spec(&a.graph)?;
    let sgd = StepSpec { optimizer: Optimizer::Sgd, reweight: None, micro_batch: None, ..user.clone() };
    let acc = user.accumulate.filter(|&k| k > 1).map(|k| format!(" acc={k}")).unwrap_or_default();
    let mut configs: Vec<(String, StepSpec)> = vec![(format!("sgd{acc}"), sgd.clone())];
    if a.suite {
        let sam = StepSpec { optimizer: Optimizer::Sam, ..sgd.clone() };
        let rw = StepSpec {
            reweight: Some(ReweightSpec {
                target_ess: None,
                lambda: 1.0,
                score: Score::Fd { q: 1, scheme: FdScheme::Forward },
                score_norm: ScoreNorm::Mean,
            }),
            ..sam.clone()
        };
        configs.push((format!("sam{acc}"), sam.clone()));
        configs.push((format!("rw-sam{acc}"), rw));
        for m in [16, 4].iter().filter(|_| acc.is_empty()) {
            configs.push((format!("m-sam M={m}"), StepSpec { micro_batch: Some(*m), ..sam.clone() }));
        }
    } else if a.variants {
        let sam = StepSpec { optimizer: Optimizer::Sam, ..sgd.clone() };
        let rw = |target_ess| ReweightSpec {
            target_ess,
            lambda: 1.0,
            score: Score::Fd { q: 1, scheme: FdScheme::Forward },
            score_norm: ScoreNorm::Mean,
        };
        configs.push(("sam".into(), sam.clone()));
        configs.push(("rw-sam".into(), StepSpec { reweight: Some(rw(None)), ..sam.clone() }));
        configs.push(("rw-sam auto".into(), StepSpec { reweight: Some(rw(Some(0.5))), ..sam.clone() }));
        for o in [Optimizer::Gsam, Optimizer::Wsam, Optimizer::Fsam, Optimizer::LookSam, Optimizer::MomentumSam] {
            configs.push((o.name().into(), StepSpec { optimizer: o, ..sam.clone() }));
        }
    } else if user.optimizer != Optimizer::Sgd || user.reweight.is_some() {
        let mut name = user.optimizer.name().to_string();
        if user.reweight.is_some() {
            name = format!("rw-{name}");
        }
        if let Some(m) = user.micro_batch {
            name = format!("m-{name} M={m}");
        }
        configs.push((format!("{name}{acc}"), user.clone()));
    }
    for (name, c) in &configs {
        if let Some(m) = c.micro_batch {
            if m == 0 || a.batch_size % m != 0 {
                anyhow::bail!("{name}: --micro-batch {m} does not divide --batch-size {}", a.batch_size);
            }
        }
    }
    let be = backend::select(&a.backend.request(), true)?;
    let build = |name: &str, c: &StepSpec| -> Result<(StepRunner, usize, f64)> {
        let t0 = Instant::now();
        let mut r = StepRunner::new(&model, c, be.as_ref(), 0).with_context(|| format!("{shown} ({name})"))?;
        r.hyper.insert("lr".into(), 0.0);
        r.keep_on_device = true; // as `train` runs it
        let nodes = r.graphs.step.model.graph.nodes.len();
        Ok((r, nodes, t0.elapsed().as_secs_f64()))
    };
    let batch = {
        let probe = step::step_graphs(&model, &configs[0].1).map_err(|e| anyhow!("{shown}: {e}"))?;
        let classes = classes_of(&probe.step.model, &probe.step.contract)?;
        let (data, labels) = synthetic_batch(&model, a.batch_size, classes)?;
        Batch { data, labels: Some(labels) }
    };
    let n = a.warmup + a.steps;
    // LookSAM alternates graphs: one timing is a whole cycle of k steps, over k
    let reps = |c: &StepSpec| if c.optimizer == Optimizer::LookSam { c.variant.looksam_k.max(1) } else { 1 };
    let median = |t: &mut Vec<f64>| {
        t.sort_by(|a, b| a.partial_cmp(b).unwrap());
        t[t.len() / 2]
    };
    if a.consecutive {
        // each optimizer alone: built after the peak memory is reset, timed, dropped
        let mut timings = Vec::new();
        for (name, c) in &configs {
            let measured = crate::memory::reset_peak();
            let (mut r, nodes, mut load_s) = build(name, c)?;
            let mut times = Vec::new();
            for i in 0..n {
                let t0 = Instant::now();
                for _ in 0..reps(c) {
                    r.step(&batch).with_context(|| format!("{shown} ({name})"))?;
                }
                if i >= a.warmup {
                    times.push(t0.elapsed().as_secs_f64() * 1e3 / reps(c) as f64);
                }
                if i == 0 {
                    load_s += t0.elapsed().as_secs_f64();
                }
            }
            let peak = crate::memory::peak_rss_bytes().filter(|_| measured).map(crate::memory::mib);
            drop(r);
            timings.push(StepTiming {
                name: name.clone(),
                nodes,
                load_s,
                median_ms: median(&mut times),
                ratio_to_sgd: 0.0,
                peak_rss_mib: peak,
            });
        }
        return report_steps(a, shown, be.describe(), timings);
    }
    let mut runners = Vec::new();
    for (name, c) in &configs {
        let (r, nodes, load_s) = build(name, c)?;
        runners.push((name.clone(), r, nodes, load_s, Vec::new(), reps(c)));
    }
    // interleaved: round by round, every optimizer once
    let order: Vec<(usize, usize)> = (0..n).flat_map(|i| (0..runners.len()).map(move |k| (i, k))).collect();
    for (i, k) in order {
        let (name, r, _, load_s, times, reps) = &mut runners[k];
        let t0 = Instant::now();
        for _ in 0..*reps {
            r.step(&batch).with_context(|| format!("{shown} ({name})"))?;
        }
        if i >= a.warmup {
            times.push(t0.elapsed().as_secs_f64() * 1e3 / *reps as f64);
        }
        if i == 0 {
            // large graphs are committed by ONNX Runtime on their first run: load includes it
            *load_s += t0.elapsed().as_secs_f64();
        }
    }
    let peak = crate::memory::peak_rss_bytes().map(crate::memory::mib);
    let timings: Vec<StepTiming> = runners
        .iter_mut()
        .map(|(name, _, nodes, load_s, times, _)| StepTiming {
            name: name.clone(),
            nodes: *nodes,
            load_s: *load_s,
            median_ms: median(times),
            ratio_to_sgd: 0.0,
            peak_rss_mib: peak,
        })
        .collect();
    report_steps(a, shown, be.describe(), timings)
}

fn report_steps(a: &BenchArgs, shown: String, backend: String, mut timings: Vec<StepTiming>) -> Result<i32> {
    let base = timings[0].median_ms;
    for t in timings.iter_mut() {
        t.ratio_to_sgd = t.median_ms / base;
    }
    let r = StepReport {
        model: shown,
        backend,
        batch_size: a.batch_size,
        steps: a.steps,
        optimizers: timings,
    };
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(0);
    }
    println!("{}: batch {}, {}, median of {} steps", r.model, r.batch_size, r.backend, r.steps);
    println!(
        "  {:<12} {:>10} {:>8} {:>7} {:>8} {:>10}",
        "optimizer", "ms/step", "÷ SGD", "nodes", "load s", if a.consecutive { "peak MiB" } else { "proc MiB" }
    );
    for t in &r.optimizers {
        let mem = t.peak_rss_mib.map(|m| format!("{m:.0}")).unwrap_or_else(|| "?".into());
        println!(
            "  {:<12} {:>10.2} {:>8.2} {:>7} {:>8.2} {:>10}",
            t.name, t.median_ms, t.ratio_to_sgd, t.nodes, t.load_s, mem
        );
    }
    if !a.consecutive {
        println!("  (peak memory: the process with every optimizer loaded; --consecutive measures each alone)");
    }
    let get = |n: &str| r.optimizers.iter().find(|t| t.name == n).map(|t| t.median_ms);
    if let (Some(sam), Some(rw), None) = (get("sam"), get("rw-sam"), get("rw-sam auto")) {
        print!("  SAM/SGD {:.2}, RW-SAM/SAM {:.2}", sam / base, rw / sam);
        for m in [16, 4] {
            if let Some(ms) = get(&format!("m-sam M={m}")) {
                print!(", m-SAM(M={m})/RW-SAM {:.2}", ms / rw);
            }
        }
        println!();
    }
    if let (Some(sam), Some(rw), Some(auto)) = (get("sam"), get("rw-sam"), get("rw-sam auto")) {
        println!("  SAM/SGD {:.2}, RW-SAM/SAM {:.3}, RW-SAM auto/RW-SAM {:.3}", sam / base, rw / sam, auto / rw);
    }
    Ok(0)
}
