//! train-mode: BatchNormalization uses batch statistics and outputs updated running statistics
//! with PyTorch semantics; Dropout draws its mask from a uniform input the runtime feeds.
//!
//! BatchNormalization is decomposed into elementary ops: ONNX Runtime's training_mode kernel
//! computes wrong results when initializers share values, and tract does not run it
//! (BACKEND-NOTES.md). ONNX's momentum m: running ← m·running + (1 − m)·batch (PyTorch's
//! momentum is 1 − m); the running variance takes the unbiased batch variance, as PyTorch does.
use std::collections::BTreeMap;

use super::{value_info, value_info_untyped_shape};
use crate::pass::{BatchNormRegion, Contract, Pass};
use crate::ctx::Ctx;
use crate::ir::{node_error, Model, NodeExt};
use crate::onnx::{data_type as dt, NodeProto};
use crate::shapes::{self, Dim};
use crate::Result;

pub struct TrainMode;

impl Pass for TrainMode {
    fn name(&self) -> &'static str {
        "train-mode"
    }

    fn run(&self, m: &mut Model, c: &mut Contract) -> Result<()> {
        pool_before_relu(&mut m.graph)?;
        rewrite_each(m, &["BatchNormalization", "Dropout"], |n, ctx| match n.op_type.as_str() {
            "BatchNormalization" => batch_norm(n, ctx, c),
            _ => dropout(n, ctx, c),
        })?;
        rewrite_each(m, crate::ops::RANDOM_OPS, |n, ctx| random_op(n, ctx, c))
    }
}


/// A random op as uniform noise inputs the runtime feeds: RandomUniform(Like) = low + (high −
/// low)·u; RandomNormal(Like) = mean + scale·√(−2 ln(1 − u₁))·cos(2π·u₂) (Box–Muller); Bernoulli(p)
/// = [u < p]; cast to the op's dtype.
fn random_op(n: &NodeProto, ctx: &mut Ctx, c: &mut Contract) -> Result<()> {
    let shape: Vec<Dim> = match n.op_type.as_str() {
        "RandomUniform" | "RandomNormal" => {
            n.attr_ints("shape").ok_or_else(|| node_error(n, "no shape"))?.into_iter().map(Dim::Known).collect()
        }
        _ => ctx.shape(&n.input[0])?.clone(),
    };
    let base = if n.name.is_empty() { n.op_type.to_lowercase() } else { n.name.clone() };
    let mut noise = |ctx: &mut Ctx, k: usize| -> Result<String> {
        let u = ctx.g.fresh(&format!("{base}.uniform{}", if k == 0 { String::new() } else { k.to_string() }));
        noise_input(ctx.g, c, &u, &shape).map_err(|e| node_error(n, e))?;
        Ok(u)
    };
    let y = match n.op_type.as_str() {
        "RandomUniformLike" | "RandomUniform" => {
            let u = noise(ctx, 0)?;
            let (lo, hi) = (n.attr_f("low", 0.0), n.attr_f("high", 1.0));
            if lo == 0.0 && hi == 1.0 {
                ctx.op("Identity", &[&u])
            } else {
                let (a, b) = (ctx.scalar(hi - lo), ctx.scalar(lo));
                let t = ctx.mul(&u, &a);
                ctx.add(&t, &b)
            }
        }
        "RandomNormalLike" | "RandomNormal" => {
            let (u1, u2) = (noise(ctx, 0)?, noise(ctx, 1)?);
            let one = ctx.scalar(1.0);
            let v = ctx.sub(&one, &u1); // in (0, 1]: log finite
            let l = ctx.op("Log", &[&v]);
            let m2 = ctx.scalar(-2.0);
            let r = ctx.mul(&l, &m2);
            let r = ctx.sqrt(&r);
            let tau = ctx.scalar(2.0 * std::f32::consts::PI);
            let a = ctx.mul(&u2, &tau);
            let cs = ctx.op("Cos", &[&a]);
            let z = ctx.mul(&r, &cs);
            let (mean, scale) = (ctx.scalar(n.attr_f("mean", 0.0)), ctx.scalar(n.attr_f("scale", 1.0)));
            let z = ctx.mul(&z, &scale);
            ctx.add(&z, &mean)
        }
        _ => {
            // Bernoulli(p): 1 where u < p
            let u = noise(ctx, 0)?;
            let below = ctx.op("Less", &[&u, &n.input[0]]);
            ctx.cast(&below, n.attr_i("dtype", dt::FLOAT as i64) as i32)
        }
    };
    let to = n.attr("dtype").and_then(|a| a.i).map(|v| v as i32);
    let y = match (n.op_type.as_str(), to) {
        ("Bernoulli", _) | (_, None) | (_, Some(dt::FLOAT)) => y,
        (_, Some(t)) => ctx.cast(&y, t),
    };
    remove(ctx, n);
    rename_into(ctx, &y, &n.output[0]);
    Ok(())
}

/// Relu → MaxPool becomes MaxPool → Relu where the ReLU's output feeds only that (single-output)
/// MaxPool: a max over a window commutes with the monotone ReLU, so the forward computes the same
/// values, while the ReLU — and the mask its gradient multiplies by — runs on the pooled tensor
/// (k² times smaller), and the MaxPool gradient lands on the convolution's output directly. The
/// gradient is the same too: where the window's maximum is positive it flows to that element,
/// whose ReLU passes it; where it is not, both forms give zero. The two nodes keep their names
/// and only exchange inputs and outputs. Returns how many pairs it swapped.
pub fn pool_before_relu(g: &mut crate::ir::Graph) -> Result<usize> {
    let graph_outputs: std::collections::HashSet<&str> = g.outputs.iter().map(|o| o.name.as_str()).collect();
    let consumers = g.consumers();
    let mut swaps = Vec::new();
    for (i, n) in g.nodes.iter().enumerate() {
        if n.op_type != "Relu"
            || !(n.domain.is_empty() || n.domain == "ai.onnx")
            || graph_outputs.contains(n.output[0].as_str())
        {
            continue;
        }
        let Some(&[j]) = consumers.get(n.output[0].as_str()).map(|v| v.as_slice()) else { continue };
        let p = &g.nodes[j];
        let single = p.output.len() == 1 || p.output[1..].iter().all(|o| o.is_empty());
        if p.op_type == "MaxPool"
            && (p.domain.is_empty() || p.domain == "ai.onnx")
            && single
            && p.input[0] == n.output[0]
        {
            swaps.push((i, j));
        }
    }
    for &(i, j) in &swaps {
        let (x, r, y) = (g.nodes[i].input[0].clone(), g.nodes[i].output[0].clone(), g.nodes[j].output[0].clone());
        g.value_info.retain(|v| v.name != r);
        g.nodes[j].input[0] = x;
        g.nodes[j].output[0] = r.clone();
        g.nodes[i].input[0] = r;
        g.nodes[i].output[0] = y;
    }
    if !swaps.is_empty() {
        g.topo_sort()?;
    }
    Ok(swaps.len())
}

/// Rewrites every BatchNormalization with `training_mode=1` into elementary ops with the ONNX
/// semantics (ONNX operator spec, BatchNormalization-15): Y from the batch's mean and biased
/// variance; the optional outputs running_mean = input_mean·momentum + batch_mean·(1 − momentum)
/// and running_var likewise with the biased batch variance. What `run` does before handing a
/// training-mode export to an engine: tract cannot run the op with three outputs, and ONNX
/// Runtime's kernel goes wrong when initializers share values (BACKEND-NOTES.md). Returns how
/// many nodes it rewrote.
pub fn decompose_training_batch_norms(m: &mut Model) -> Result<usize> {
    let targets =
        m.graph.nodes.iter().filter(|n| n.op_type == "BatchNormalization" && n.attr_i("training_mode", 0) != 0).count();
    if targets == 0 {
        return Ok(0);
    }
    m.graph.pass = Some("train-mode".into());
    let r = rewrite_each(m, &["BatchNormalization"], |n, ctx| {
        if n.attr_i("training_mode", 0) == 0 {
            return Ok(());
        }
        let outs: Vec<String> = n.output.clone();
        let (mean, var) = (n.input[3].clone(), n.input[4].clone());
        let momentum = n.attr_f("momentum", 0.9);
        let BatchStats { mu, bvar, .. } = batch_statistics(n, ctx)?;
        let flat = ctx.const_i64(&[-1]);
        let (mm, om) = (ctx.scalar(momentum), ctx.scalar(1.0 - momentum));
        for (k, (input, batch)) in [(mean, mu), (var, bvar)].into_iter().enumerate() {
            let Some(out) = outs.get(k + 1).filter(|o| !o.is_empty()) else { continue };
            let b = ctx.reshape(&batch, &flat);
            let kept = ctx.mul(&input, &mm);
            let new = ctx.mul(&b, &om);
            let next = ctx.add(&kept, &new);
            rename_into(ctx, &next, out);
        }
        Ok(())
    });
    m.graph.pass = None;
    r.map(|_| targets)
}

/// Calls `f` on every node of the given ops (as they were before the pass), with a builder over
/// the graph and the forward's shapes, then restores topological order.
fn rewrite_each(m: &mut Model, ops: &[&str], mut f: impl FnMut(&NodeProto, &mut Ctx) -> Result<()>) -> Result<()> {
    let opset = m.opset();
    let s = shapes::infer(&m.graph)?;
    let targets: Vec<NodeProto> = m.graph.nodes.iter().filter(|n| ops.contains(&n.op_type.as_str())).cloned().collect();
    let mut ctx = Ctx::new(&mut m.graph, s, opset);
    for n in &targets {
        f(n, &mut ctx)?;
    }
    m.graph.topo_sort()
}

/// eval-mode: BatchNormalization with its running statistics, written out in elementary ops
/// (tract runs the BatchNormalization op only with constant scale and bias, and lifted
/// parameters are inputs); Dropout becomes the identity (also where a training-mode export's
/// training_mode input would switch it on).
pub struct EvalMode;

impl Pass for EvalMode {
    fn name(&self) -> &'static str {
        "eval-mode"
    }

    fn run(&self, m: &mut Model, c: &mut Contract) -> Result<()> {
        pool_before_relu(&mut m.graph)?;
        rewrite_each(m, &["BatchNormalization", "Dropout"], |n, ctx| {
            if n.op_type == "Dropout" {
                // PyTorch's eval mode: the identity, whatever a training-mode export's
                // training_mode input says
                let y = ctx.op("Identity", &[&n.input[0]]);
                remove(ctx, n);
                rename_into(ctx, &y, &n.output[0]);
                return Ok(());
            }
            let (mean, var) = (&n.input[3], &n.input[4]);
            if !stats_are_state(ctx, n) {
                // statistics computed in the graph (track_running_stats=False): PyTorch uses the
                // batch's in evaluation too
                return if n.attr_i("training_mode", 0) != 0 {
                    batch_statistics(n, ctx).map(|_| ())
                } else {
                    normalize_with(n, ctx, mean, var)
                };
            }
            // running statistics become inputs (read, not updated), so trained values can be fed
            for stat in [mean, var] {
                if let Some(t) = ctx.g.initializer(stat).cloned() {
                    ctx.g.initializers.retain(|i| i.name != *stat);
                    ctx.g.inputs.push(value_info(stat, t.data_type, &t.dims));
                    c.init.insert(stat.clone(), t);
                    c.state.push(stat.clone());
                }
            }
            normalize_with(n, ctx, mean, var)
        })?;
        // random ops cannot be told from the model's other computation, so evaluation draws them
        // too (from the seeded RNG, reproducibly; import warns)
        rewrite_each(m, crate::ops::RANDOM_OPS, |n, ctx| random_op(n, ctx, c))
    }
}

/// True when a BatchNormalization's mean and variance inputs are running statistics (an
/// initializer or a graph input), false when the graph computes them (a BatchNorm with
/// `track_running_stats=False`: both exporters compute the batch's statistics and feed them in).
fn stats_are_state(ctx: &Ctx, n: &NodeProto) -> bool {
    [&n.input[3], &n.input[4]].iter().all(|s| ctx.g.initializer(s).is_some() || ctx.g.is_graph_input(s))
}

/// y = (x − μ)·γ/√(σ² + ε) + β with the given per-channel μ, σ² (values of the graph: running
/// statistics, or statistics the graph computed, whose gradient then flows through them).
fn normalize_with(n: &NodeProto, ctx: &mut Ctx, mean: &str, var: &str) -> Result<()> {
    let (x, scale, bias) = (&n.input[0], &n.input[1], &n.input[2]);
    if n.output.iter().skip(1).any(|o| !o.is_empty() && ctx.g.nodes.iter().any(|m| m.input.contains(o))) {
        return Err(node_error(n, "its running-statistic outputs are read by the graph; onnxsam cannot train that"));
    }
    let r = ctx.rank(x)? as i64;
    let spatial: Vec<i64> = (1..r - 1).collect();
    let e = ctx.scalar(n.attr_f("epsilon", 1e-5));
    let ve = ctx.add(var, &e);
    let sd = ctx.sqrt(&ve);
    let k = ctx.div(scale, &sd);
    let (kr, mr, br) = (ctx.unsqueeze(&k, &spatial), ctx.unsqueeze(mean, &spatial), ctx.unsqueeze(bias, &spatial));
    let xc = ctx.sub(x, &mr);
    let xs = ctx.mul(&xc, &kr);
    let y = ctx.add(&xs, &br);
    remove(ctx, n);
    rename_into(ctx, &y, &n.output[0]);
    Ok(())
}

/// Removes node `n` from the graph; its outputs will be produced by the replacement.
fn remove(ctx: &mut Ctx, n: &NodeProto) {
    ctx.g.nodes.retain(|m| !(m.output == n.output && m.op_type == n.op_type));
}

/// Makes `name` (a graph input or the node that produced `from`) carry value `from`.
fn rename_into(ctx: &mut Ctx, from: &str, to: &str) {
    for m in ctx.g.nodes.iter_mut() {
        for o in m.output.iter_mut() {
            if o == from {
                *o = to.to_string();
            }
        }
    }
}

/// The batch-statistics form of a BatchNormalization, in place of the node:
/// y = (x − μ)·k + β with k = γ/√(σ² + ε) [1, C, 1, 1] (the per-channel factor is formed on the
/// small tensors, so the forward and its derivative touch the activations fewer times); μ, σ²
/// the batch's mean and (biased) variance over all axes but the channel.
struct BatchStats {
    mu: String,
    xc: String,
    bvar: String,
    sd: String,
    k: String,
    axes: Vec<i64>,
    rank: i64,
}

fn batch_statistics(n: &NodeProto, ctx: &mut Ctx) -> Result<BatchStats> {
    let (x, scale, bias) = (&n.input[0], &n.input[1], &n.input[2]);
    let r = ctx.rank(x)? as i64;
    let axes: Vec<i64> = std::iter::once(0).chain(2..r).collect();
    let spatial: Vec<i64> = (1..r - 1).collect();
    let mu = ctx.reduce_mean(x, &axes, true);
    let xc = ctx.sub(x, &mu);
    let sq = ctx.square(&xc);
    let bvar = ctx.reduce_mean(&sq, &axes, true);
    let e = ctx.scalar(n.attr_f("epsilon", 1e-5));
    let ve = ctx.add(&bvar, &e);
    let sd = ctx.sqrt(&ve);
    let sc = ctx.unsqueeze(scale, &spatial);
    let k = ctx.div(&sc, &sd);
    let b = ctx.unsqueeze(bias, &spatial);
    let ys = ctx.mul(&xc, &k);
    let y = ctx.add(&ys, &b);
    remove(ctx, n);
    rename_into(ctx, &y, &n.output[0]);
    Ok(BatchStats { mu, xc, bvar, sd, k, axes, rank: r })
}

fn batch_norm(n: &NodeProto, ctx: &mut Ctx, c: &mut Contract) -> Result<()> {
    let (x, scale, bias, mean, var) = (&n.input[0], &n.input[1], &n.input[2], &n.input[3], &n.input[4]);
    let state = stats_are_state(ctx, n);
    // batch statistics over the batch axis alone (BatchNorm1d, 1×1 maps; also where the graph
    // computes them itself): one sample is one value per channel
    let spatial_one = ctx.shape(x)?.iter().skip(2).all(|d| d.known() == Some(1));
    if spatial_one && c.batch_norm_over_batch_only.is_none() {
        c.batch_norm_over_batch_only =
            Some(format!("the BatchNorm layer {}", crate::onnx::metadata::describe_layer(n)));
    }
    if !state && n.attr_i("training_mode", 0) == 0 {
        // the graph computes the statistics it normalizes with (dynamo, track_running_stats=False)
        return normalize_with(n, ctx, mean, var);
    }
    if !state && n.output.iter().skip(1).any(|o| !o.is_empty() && ctx.g.nodes.iter().any(|m| m.input.contains(o))) {
        return Err(node_error(n, "its running-statistic outputs are read by the graph; onnxsam cannot train that"));
    }
    let momentum = n.attr_f("momentum", 0.9);
    let BatchStats { mu, xc, bvar, sd, k, axes, rank: r } = batch_statistics(n, ctx)?;
    // running statistics become state: inputs now, next values as outputs (unless the graph
    // computes them: track_running_stats=False, legacy exporter: no state, batch statistics)
    for stat in [mean, var].iter().filter(|_| state) {
        if let Some(t) = ctx.g.initializer(stat).cloned() {
            ctx.g.initializers.retain(|i| i.name != **stat);
            ctx.g.inputs.push(value_info(stat, t.data_type, &t.dims));
            c.init.insert(stat.to_string(), t);
        }
    }
    // unbiased: var · n/(n − 1), n = elements per channel (the batch may be symbolic)
    let count = match batch_count(ctx, c, x, &axes)? {
        Some(count) => count,
        None => {
            let shape = ctx.shape_of(x);
            let idx = ctx.const_i64(&axes);
            let picked = ctx.g.add("Gather", &[&shape, &idx]).int("axis", 0).output();
            let count = ctx.g.add("ReduceProd", &[&picked]).int("keepdims", 0).output();
            ctx.cast(&count, dt::FLOAT)
        }
    };
    c.batch_norms.push(BatchNormRegion {
        x: x.clone(),
        scale: scale.clone(),
        bias: bias.clone(),
        y: n.output[0].clone(),
        centered: xc.clone(),
        std: sd.clone(),
        factor: k.clone(),
        count: count.clone(),
        axes: axes.clone(),
        rank: r,
    });
    if !state {
        return Ok(());
    }
    let one = ctx.scalar(1.0);
    let cm1 = ctx.sub(&count, &one);
    let ratio = ctx.div(&count, &cm1);
    let flat = ctx.const_i64(&[-1]);
    let mu_c = ctx.reshape(&mu, &flat);
    let var_c = ctx.reshape(&bvar, &flat);
    let var_u = ctx.mul(&var_c, &ratio);
    let (mm, om) = (ctx.scalar(momentum), ctx.scalar(1.0 - momentum));
    for (stat, batch) in [(mean, mu_c), (var, var_u)] {
        let kept = ctx.mul(stat, &mm);
        let new = ctx.mul(&batch, &om);
        let next = ctx.add(&kept, &new);
        let out = ctx.g.add("Identity", &[&next]).named_outputs(&[&format!("{stat}.next")]).remove(0);
        ctx.g.outputs.push(value_info_untyped_shape(&out, dt::FLOAT));
        c.state_next.insert(stat.clone(), out);
    }
    Ok(())
}

/// n = N·H·W when only the batch N is symbolic and it is the batch of a data input: read from
/// that input's shape, so every BatchNorm shares it (common-subexpression elimination merges
/// the equal nodes) instead of computing its own.
fn batch_count(ctx: &mut Ctx, c: &Contract, x: &str, axes: &[i64]) -> Result<Option<String>> {
    let xs = ctx.shape(x)?.clone();
    let Some(Dim::Sym(batch)) = xs.first() else { return Ok(None) };
    let rest: Option<i64> = axes.iter().skip(1).map(|&a| xs[a as usize].known()).product();
    let Some(rest) = rest else { return Ok(None) };
    let source = c
        .data
        .iter()
        .find(|d| ctx.shapes.shape(d).and_then(|s| s.first().cloned()) == Some(Dim::Sym(batch.clone())))
        .cloned();
    let Some(source) = source else { return Ok(None) };
    let shape = ctx.shape_of(&source);
    let zero = ctx.const_i64(&[0]);
    let n = ctx.g.add("Gather", &[&shape, &zero]).int("axis", 0).output();
    let n = ctx.cast(&n, dt::FLOAT);
    let k = ctx.const_f32(&[1], &[rest as f32]);
    Ok(Some(ctx.mul(&n, &k)))
}

/// Declares `name` a uniform-noise input shaped like a value of shape `shape`: −1 where the size
/// is the batch; other sizes known only at run time are spelled out in `random_shapes` as
/// products of data-input sizes (a sequence length, …), which the runtime reads off the batch.
pub(crate) fn noise_input(g: &mut crate::ir::Graph, c: &mut Contract, name: &str, shape: &[Dim]) -> std::result::Result<(), String> {
    let data_dims = data_symbols(g, c);
    let batch = data_dims.iter().find(|(_, (_, axis))| *axis == 0).map(|(s, _)| s.clone());
    let mut dims = Vec::new();
    let mut spelled = Vec::new();
    let mut needs_spelling = false;
    for d in shape {
        match d {
            Dim::Known(k) => {
                dims.push(*k);
                spelled.push(k.to_string());
            }
            Dim::Sym(s) => {
                let (_, syms) = crate::shapes::monomial(d);
                if let Some(unknown) = syms.iter().find(|x| !data_dims.contains_key(*x)) {
                    return Err(format!(
                        "Dropout over a size ('{unknown}') that no input of the model carries: onnxsam cannot draw its mask; export with that size fixed"
                    ));
                }
                if Some(s) != batch.as_ref() {
                    needs_spelling = true;
                }
                for x in &syms {
                    c.symbols.insert(x.clone(), data_dims[x].clone());
                }
                dims.push(-1);
                spelled.push(s.clone());
            }
        }
    }
    g.inputs.push(crate::passes::value_info_dims(name, dt::FLOAT, shape));
    c.random_uniform.insert(name.to_string(), dims);
    if needs_spelling {
        c.random_shapes.insert(name.to_string(), spelled);
    }
    Ok(())
}

/// Size symbols of the graph's data inputs (not parameters, state or initializers) → (input, axis).
fn data_symbols(g: &crate::ir::Graph, c: &Contract) -> BTreeMap<String, (String, usize)> {
    let inits: std::collections::HashSet<&str> = g.initializers.iter().map(|t| t.name.as_str()).collect();
    let mut out = BTreeMap::new();
    for v in &g.inputs {
        if inits.contains(v.name.as_str())
            || c.params.contains(&v.name)
            || c.state_next.contains_key(&v.name)
            || c.random_uniform.contains_key(&v.name)
        {
            continue;
        }
        if let Some(shape) = crate::shapes::value_type_of(&v.r#type).and_then(|t| t.shape) {
            for (axis, d) in shape.iter().enumerate() {
                if let Dim::Sym(s) = d {
                    out.entry(s.clone()).or_insert((v.name.clone(), axis));
                }
            }
        }
    }
    out
}

fn dropout(n: &NodeProto, ctx: &mut Ctx, c: &mut Contract) -> Result<()> {
    let ratio = match n.input.get(1).filter(|s| !s.is_empty()) {
        Some(r) => crate::ir::constant_value(ctx.g, r)
            .and_then(|t| crate::onnx::tensor::to_f64(t).ok())
            .map(|v| v[0] as f32)
            .ok_or_else(|| node_error(n, "ratio must be a constant"))?,
        None => n.attr_f("ratio", 0.5),
    };
    let x = &n.input[0];
    let y = if ratio <= 0.0 {
        ctx.op("Identity", &[x])
    } else {
        let u = ctx.g.fresh(&format!("{}.uniform", if n.name.is_empty() { "dropout" } else { &n.name }));
        let shape = ctx.shape(x)?.clone();
        noise_input(ctx.g, c, &u, &shape).map_err(|e| node_error(n, e))?;
        let r = ctx.scalar(ratio);
        let keep = ctx.op("GreaterOrEqual", &[&u, &r]);
        let mask = ctx.mask(&keep);
        let kept = ctx.mul(x, &mask);
        let k = ctx.scalar(1.0 / (1.0 - ratio));
        ctx.mul(&kept, &k)
    };
    remove(ctx, n);
    rename_into(ctx, &y, &n.output[0]);
    // a training-mode export names the mask output; only a mask the graph reads is a problem
    if let Some(mask_out) = n.output.get(1).filter(|s| !s.is_empty()) {
        let read =
            ctx.g.nodes.iter().any(|m| m.input.contains(mask_out)) || ctx.g.outputs.iter().any(|o| &o.name == mask_out);
        if read {
            return Err(node_error(
                n,
                format!("the Dropout mask output '{mask_out}' is read by the graph; onnxsam cannot train through it"),
            ));
        }
    }
    Ok(())
}
