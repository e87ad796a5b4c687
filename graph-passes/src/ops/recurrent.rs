//! Recurrent layers: LSTM, GRU, RNN (ONNX LSTM-14, GRU-14, RNN-14), written out step by step
//! before autodiff (the `lower` pass), so that both engines run the same unrolled graph and its
//! gradient is backpropagation through time:
//! - the input projections of every step at once: X·Wᵀ + biases, one MatMul [T, B, G·h];
//! - then for each step t (in reverse for the reverse direction) the recurrence on [B, h]
//!   tensors with the gates as the spec writes them;
//! - `sequence_lens`: at steps t ≥ len_b the state of batch row b is carried unchanged and its
//!   output row is 0 (the reverse direction starts at len_b − 1 with the initial state), as ONNX
//!   Runtime computes it;
//! - initial states (zeros when absent), both directions, `layout` 0 and 1, `clip`, the
//!   activations and their alpha/beta, LSTM peepholes and `input_forget`, GRU
//!   `linear_before_reset` 0 and 1.
//!
//! The sequence length T must be known (the unrolled graph has T steps): export with a fixed
//! sequence length.
use super::{op, Family, Gradient as G, OpDef};
use crate::ctx::Ctx;
use crate::ir::{node_error, Graph, NodeExt};
use crate::onnx::{data_type as dt, NodeProto};
use crate::shapes::{input_type, set, Dim, Shapes};
use crate::Result;

pub const FAMILY: Family = Family { name: "recurrent", ops };

fn ops() -> Vec<OpDef> {
    const NOTES: &str = "written out step by step (fixed sequence length); initial states, both directions, sequence_lens, layout 0/1, clip, activations";
    vec![
        op("LSTM", "14+", recurrent_shape, G::Lowered(lstm_lower)).notes(NOTES),
        op("GRU", "14+", recurrent_shape, G::Lowered(gru_lower))
            .notes("as LSTM; linear_before_reset 0 and 1 (PyTorch exports 1)"),
        op("RNN", "14+", recurrent_shape, G::Lowered(rnn_lower)).notes(NOTES),
    ]
}

/// Y [T, D, B, h] (layout 1: [B, T, D, h]), Y_h and Y_c [D, B, h] (layout 1: [B, D, h]).
fn recurrent_shape(_: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let x = input_type(s, n, 0)?;
    let h = Dim::Known(n.attr_i("hidden_size", 0));
    let d = Dim::Known(if n.attr_s("direction").as_deref() == Some("bidirectional") { 2 } else { 1 });
    let layout = n.attr_i("layout", 0);
    let (y, state) = match &x.shape {
        Some(xs) if xs.len() == 3 => {
            let (t, b) = if layout == 0 { (xs[0].clone(), xs[1].clone()) } else { (xs[1].clone(), xs[0].clone()) };
            if layout == 0 {
                (Some(vec![t, d.clone(), b.clone(), h.clone()]), Some(vec![d, b, h]))
            } else {
                (Some(vec![b.clone(), t, d.clone(), h.clone()]), Some(vec![b, d, h]))
            }
        }
        _ => (None, None),
    };
    for (k, o) in n.output.iter().enumerate() {
        if !o.is_empty() {
            set(s, o, x.dtype, if k == 0 { y.clone() } else { state.clone() });
        }
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Kind {
    Lstm,
    Gru,
    Rnn,
}

impl Kind {
    /// The spec's default activations per direction.
    fn default_activations(self) -> &'static [&'static str] {
        match self {
            Kind::Lstm => &["Sigmoid", "Tanh", "Tanh"],
            Kind::Gru => &["Sigmoid", "Tanh"],
            Kind::Rnn => &["Tanh"],
        }
    }
}

/// One activation with its alpha/beta (ONNX's RNN activation list).
struct Act {
    name: String,
    alpha: Option<f32>,
    beta: Option<f32>,
}

/// The activations of each direction: the `activations` attribute (or the defaults), with
/// activation_alpha / activation_beta consumed in order by the activations that take them.
fn activations(n: &NodeProto, kind: Kind, dirs: usize) -> Result<Vec<Vec<Act>>> {
    let per = kind.default_activations().len();
    let names: Vec<String> = match n.attr("activations") {
        Some(a) if !a.strings.is_empty() => a.strings.iter().map(|s| String::from_utf8_lossy(s).to_string()).collect(),
        _ => (0..dirs).flat_map(|_| kind.default_activations().iter().map(|s| s.to_string())).collect(),
    };
    if names.len() != per * dirs {
        return Err(node_error(n, format!("expects {} activations, has {}", per * dirs, names.len())));
    }
    let mut alphas = n.attr("activation_alpha").map(|a| a.floats.clone()).unwrap_or_default().into_iter();
    let mut betas = n.attr("activation_beta").map(|a| a.floats.clone()).unwrap_or_default().into_iter();
    let mut out = Vec::new();
    for name in names {
        let (takes_alpha, takes_beta) = match name.to_ascii_lowercase().as_str() {
            "sigmoid" | "tanh" | "relu" | "softsign" | "softplus" => (false, false),
            "leakyrelu" | "thresholdedrelu" | "elu" => (true, false),
            "affine" | "scaledtanh" | "hardsigmoid" => (true, true),
            other => return Err(node_error(n, format!("activation '{other}' is not an ONNX RNN activation"))),
        };
        out.push(Act {
            name,
            alpha: if takes_alpha { alphas.next() } else { None },
            beta: if takes_beta { betas.next() } else { None },
        });
    }
    let mut by_dir = Vec::new();
    let mut it = out.into_iter();
    for _ in 0..dirs {
        by_dir.push((&mut it).take(per).collect());
    }
    Ok(by_dir)
}

/// f(x) for an RNN activation, in ops with gradient rules.
fn activate(c: &mut Ctx, a: &Act, x: &str) -> String {
    let alpha = |d: f32| a.alpha.unwrap_or(d);
    let beta = |d: f32| a.beta.unwrap_or(d);
    match a.name.to_ascii_lowercase().as_str() {
        "sigmoid" => c.op("Sigmoid", &[x]),
        "tanh" => c.op("Tanh", &[x]),
        "relu" => c.op("Relu", &[x]),
        "softsign" => c.op("Softsign", &[x]),
        "softplus" => c.op("Softplus", &[x]),
        "leakyrelu" => c.g.add("LeakyRelu", &[x]).float("alpha", alpha(0.01)).output(),
        "thresholdedrelu" => c.g.add("ThresholdedRelu", &[x]).float("alpha", alpha(1.0)).output(),
        "elu" => c.g.add("Elu", &[x]).float("alpha", alpha(1.0)).output(),
        "hardsigmoid" => c.g.add("HardSigmoid", &[x]).float("alpha", alpha(0.2)).float("beta", beta(0.5)).output(),
        "affine" => {
            let (al, be) = (c.scalar(alpha(1.0)), c.scalar(beta(0.0)));
            let t = c.mul(x, &al);
            c.add(&t, &be)
        }
        // ScaledTanh: α·tanh(β·x)
        _ => {
            let (al, be) = (c.scalar(alpha(1.0)), c.scalar(beta(1.0)));
            let t = c.mul(x, &be);
            let th = c.op("Tanh", &[&t]);
            c.mul(&th, &al)
        }
    }
}

/// The pieces every recurrent node shares, read and checked once.
struct Setup {
    hidden: i64,
    dirs: usize,
    /// direction of each: false forward, true reverse
    reverse: Vec<bool>,
    t: i64,
    layout: i64,
    /// X in [T, B, I]
    x: String,
    clip: Option<f32>,
    acts: Vec<Vec<Act>>,
    /// sequence_lens as int64 [B], if given
    lens: Option<String>,
}

fn input(n: &NodeProto, k: usize) -> Option<&str> {
    n.input.get(k).map(|s| s.as_str()).filter(|s| !s.is_empty())
}

fn setup(n: &NodeProto, c: &mut Ctx, kind: Kind) -> Result<Setup> {
    let hidden = n.attr_i("hidden_size", 0);
    if hidden <= 0 {
        return Err(node_error(n, "hidden_size missing"));
    }
    let direction = n.attr_s("direction").unwrap_or_else(|| "forward".into());
    let reverse = match direction.as_str() {
        "forward" => vec![false],
        "reverse" => vec![true],
        "bidirectional" => vec![false, true],
        other => return Err(node_error(n, format!("direction '{other}' is not ONNX's"))),
    };
    let layout = n.attr_i("layout", 0);
    let xs = c.shape(&n.input[0])?.clone();
    if xs.len() != 3 {
        return Err(node_error(n, "X must be 3-D"));
    }
    let t = xs[if layout == 0 { 0 } else { 1 }].known().ok_or_else(|| {
        node_error(n, "the sequence length is symbolic: onnxsam writes the layer out step by step and needs it fixed; export with a fixed sequence length (no dynamic axis on the time dimension)")
    })?;
    let x = if layout == 0 { n.input[0].clone() } else { c.transpose(&n.input[0], &[1, 0, 2]) };
    let lens = input(n, 4).map(|l| c.cast(l, dt::INT64));
    let clip = n.attr("clip").and_then(|a| a.f);
    let acts = activations(n, kind, reverse.len())?;
    Ok(Setup { hidden, dirs: reverse.len(), reverse, t, layout, x, clip, acts, lens })
}

/// v[d] of a [D, …] tensor (a constant index: its gradient is a Pad).
fn pick(c: &mut Ctx, v: &str, d: usize) -> String {
    let i = c.g.add_initializer("dir", crate::onnx::tensor::from_i64("", &[], &[d as i64]));
    c.g.add("Gather", &[v, &i]).int("axis", 0).output()
}

/// The last axis cut into consecutive parts of the given sizes (one Split: its gradient is one
/// Concat, where separate Slices would each need a Pad and a sum).
fn split_last(c: &mut Ctx, v: &str, sizes: &[i64]) -> Vec<String> {
    let s = c.const_i64(sizes);
    c.g.add("Split", &[v, &s]).int("axis", -1).outputs(sizes.len())
}

/// Columns [from, to) of the last axis.
fn cols(c: &mut Ctx, v: &str, from: i64, to: i64) -> String {
    let (s, e, a) = (c.const_i64(&[from]), c.const_i64(&[to]), c.const_i64(&[-1]));
    c.op("Slice", &[v, &s, &e, &a])
}

/// The initial state of direction d: [B, h] from a [D, B, h] input (layout 1: [B, D, h]), or
/// zeros [B, h] when absent.
fn initial(c: &mut Ctx, su: &Setup, given: Option<&str>, d: usize) -> String {
    match given {
        Some(v) => {
            let i = c.g.add_initializer("dir", crate::onnx::tensor::from_i64("", &[], &[d as i64]));
            c.g.add("Gather", &[v, &i]).int("axis", if su.layout == 0 { 0 } else { 1 }).output()
        }
        None => {
            let shape = c.shape_of(&su.x);
            let (s, e) = (c.const_i64(&[1]), c.const_i64(&[2]));
            let b = c.op("Slice", &[&shape, &s, &e]);
            let h = c.const_i64(&[su.hidden]);
            let bh = c.g.add("Concat", &[&b, &h]).int("axis", 0).output();
            // the value given explicitly: tract 0.23 types a ConstantOfShape without it as f64
            c.g.add("ConstantOfShape", &[&bh]).tensor("value", crate::onnx::tensor::from_f32("", &[1], &[0.0])).output()
        }
    }
}

/// The per-step pieces of the input projection XW [T, B, k]: T tensors [B, k].
fn steps(c: &mut Ctx, xw: &str, t: i64) -> Vec<String> {
    if t == 1 {
        return vec![c.squeeze(xw, &[0])];
    }
    let split = c.const_i64(&vec![1; t as usize]);
    let parts = c.g.add("Split", &[xw, &split]).int("axis", 0).outputs(t as usize);
    parts.iter().map(|p| c.squeeze(p, &[0])).collect()
}

/// X·Wᵀ + bias for all steps: X [T, B, I], W [k, I], bias [k] → [T, B, k].
fn project(c: &mut Ctx, x: &str, w: &str, bias: Option<&str>) -> String {
    let wt = c.transpose(w, &[1, 0]);
    let p = c.op("MatMul", &[x, &wt]);
    match bias {
        Some(b) => c.add(&p, b),
        None => p,
    }
}

/// Clip to [−clip, clip] where the node asks for it.
fn clipped(c: &mut Ctx, su: &Setup, v: String) -> String {
    match su.clip {
        Some(k) => {
            let (lo, hi) = (c.scalar(-k), c.scalar(k));
            c.op("Clip", &[&v, &lo, &hi])
        }
        None => v,
    }
}

/// The mask of step t: [B, 1] float, 1 where t < len_b (None without sequence_lens).
fn step_mask(c: &mut Ctx, su: &Setup, t: i64) -> Option<String> {
    let lens = su.lens.clone()?;
    let tc = c.g.add_initializer("step", crate::onnx::tensor::from_i64("", &[], &[t]));
    let lt = c.op("Less", &[&tc, &lens]);
    let m = c.mask(&lt);
    Some(c.unsqueeze(&m, &[1]))
}

/// m·new + (1 − m)·old: the state carried where the sequence has ended.
fn carry(c: &mut Ctx, m: &Option<String>, new: String, old: &str) -> String {
    match m {
        None => new,
        Some(m) => {
            let one = c.scalar(1.0);
            let keep = c.sub(&one, m);
            let a = c.mul(m, &new);
            let b = c.mul(&keep, old);
            c.add(&a, &b)
        }
    }
}

/// Writes the outputs: Y from the per-direction step outputs (time order), Y_h / Y_c from the
/// final states; removes the node.
fn finish(c: &mut Ctx, n: &NodeProto, su: &Setup, ys: Vec<Vec<String>>, finals: Vec<Vec<String>>) {
    let want = |k: usize| n.output.get(k).is_some_and(|o| !o.is_empty());
    let mut outs: Vec<(usize, String)> = Vec::new();
    if want(0) {
        // [T, D, B, h]
        let per_dir: Vec<String> = ys
            .iter()
            .map(|steps| {
                let stacked: Vec<String> = steps.iter().map(|y| c.unsqueeze(y, &[0, 1])).collect();
                let refs: Vec<&str> = stacked.iter().map(|s| s.as_str()).collect();
                if refs.len() == 1 {
                    stacked[0].clone()
                } else {
                    c.g.add("Concat", &refs).int("axis", 0).output()
                }
            })
            .collect();
        let refs: Vec<&str> = per_dir.iter().map(|s| s.as_str()).collect();
        let y = if refs.len() == 1 { per_dir[0].clone() } else { c.g.add("Concat", &refs).int("axis", 1).output() };
        let y = if su.layout == 0 { y } else { c.transpose(&y, &[2, 0, 1, 3]) };
        outs.push((0, y));
    }
    for (k, states) in finals.iter().enumerate() {
        if !want(k + 1) {
            continue;
        }
        let axis = if su.layout == 0 { 0 } else { 1 };
        let stacked: Vec<String> = states.iter().map(|h| c.unsqueeze(h, &[axis])).collect();
        let refs: Vec<&str> = stacked.iter().map(|s| s.as_str()).collect();
        let v = if refs.len() == 1 { stacked[0].clone() } else { c.g.add("Concat", &refs).int("axis", axis).output() };
        outs.push((k + 1, v));
    }
    for (k, v) in outs {
        super::replace_output(c, n, k, &v);
    }
    c.g.nodes.retain(|m| !(m.output == n.output && m.op_type == n.op_type));
}

/// LSTM-14 (gates i, o, f, c in W, R, B; peepholes P = [Pi, Po, Pf]):
///   i = f(x·Wiᵀ + h·Riᵀ + Pi⊙c + Wbi + Rbi), f likewise (or 1 − i with input_forget),
///   c̃ = g(x·Wcᵀ + h·Rcᵀ + Wbc + Rbc), c' = f⊙c + i⊙c̃,
///   o = f(x·Woᵀ + h·Roᵀ + Po⊙c' + Wbo + Rbo), h' = o⊙h(c')
fn lstm_lower(n: &NodeProto, c: &mut Ctx) -> Result<()> {
    let su = setup(n, c, Kind::Lstm)?;
    let h = su.hidden;
    let couple = n.attr_i("input_forget", 0) != 0;
    let (mut ys, mut hs, mut cs) = (Vec::new(), Vec::new(), Vec::new());
    for d in 0..su.dirs {
        let w = pick(c, &n.input[1], d);
        let r = pick(c, &n.input[2], d);
        let bias = input(n, 3).map(|b| {
            let bd = pick(c, b, d);
            let wb = cols(c, &bd, 0, 4 * h);
            let rb = cols(c, &bd, 4 * h, 8 * h);
            c.add(&wb, &rb)
        });
        let xw = project(c, &su.x, &w, bias.as_deref());
        let xs = steps(c, &xw, su.t);
        let rt = c.transpose(&r, &[1, 0]);
        let peep = input(n, 7).map(|p| {
            let pd = pick(c, p, d);
            (cols(c, &pd, 0, h), cols(c, &pd, h, 2 * h), cols(c, &pd, 2 * h, 3 * h))
        });
        let mut hp = initial(c, &su, input(n, 5), d);
        let mut cp = initial(c, &su, input(n, 6), d);
        let mut out = vec![String::new(); su.t as usize];
        let acts = &su.acts[d];
        // PyTorch's LSTM (no peepholes, no coupling): one activation over the i, o, f gates
        let fused = peep.is_none() && !couple;
        for s in 0..su.t {
            let t = if su.reverse[d] { su.t - 1 - s } else { s };
            let hr = c.op("MatMul", &[&hp, &rt]);
            let gates = c.add(&xs[t as usize], &hr);
            let (o, cn);
            if fused {
                let gates = clipped(c, &su, gates);
                let parts = split_last(c, &gates, &[3 * h, h]);
                let iof = activate(c, &acts[0], &parts[0]);
                let cand = activate(c, &acts[1], &parts[1]);
                let g3 = split_last(c, &iof, &[h, h, h]);
                let (i, f) = (g3[0].clone(), g3[2].clone());
                o = g3[1].clone();
                let fc = c.mul(&f, &cp);
                let ic = c.mul(&i, &cand);
                cn = c.add(&fc, &ic);
            } else {
                let g4 = split_last(c, &gates, &[h, h, h, h]);
                let (gi, go, gf, gc) = (g4[0].clone(), g4[1].clone(), g4[2].clone(), g4[3].clone());
                let (gi, gf) = match &peep {
                    Some((pi, _, pf)) => {
                        let a = c.mul(pi, &cp);
                        let b = c.mul(pf, &cp);
                        (c.add(&gi, &a), c.add(&gf, &b))
                    }
                    None => (gi, gf),
                };
                let gi = clipped(c, &su, gi);
                let i = activate(c, &acts[0], &gi);
                let f = if couple {
                    let one = c.scalar(1.0);
                    c.sub(&one, &i)
                } else {
                    let gf = clipped(c, &su, gf);
                    activate(c, &acts[0], &gf)
                };
                let gc = clipped(c, &su, gc);
                let cand = activate(c, &acts[1], &gc);
                let fc = c.mul(&f, &cp);
                let ic = c.mul(&i, &cand);
                cn = c.add(&fc, &ic);
                let go = match &peep {
                    Some((_, po, _)) => {
                        let a = c.mul(po, &cn);
                        c.add(&go, &a)
                    }
                    None => go,
                };
                let go = clipped(c, &su, go);
                o = activate(c, &acts[0], &go);
            }
            let hc = activate(c, &acts[2], &cn);
            let hn = c.mul(&o, &hc);
            let m = step_mask(c, &su, t);
            out[t as usize] = match &m {
                Some(m) => c.mul(m, &hn),
                None => hn.clone(),
            };
            hp = carry(c, &m, hn, &hp);
            cp = carry(c, &m, cn, &cp);
        }
        ys.push(out);
        hs.push(hp);
        cs.push(cp);
    }
    finish(c, n, &su, ys, vec![hs, cs]);
    Ok(())
}

/// GRU-14 (gates z, r, h in W, R, B):
///   z = f(x·Wzᵀ + h·Rzᵀ + Wbz + Rbz), r likewise,
///   h̃ = g(x·Whᵀ + (r⊙h)·Rhᵀ + Rbh + Wbh)        (linear_before_reset = 0)
///   h̃ = g(x·Whᵀ + r⊙(h·Rhᵀ + Rbh) + Wbh)        (linear_before_reset ≠ 0, PyTorch's GRU)
///   h' = (1 − z)⊙h̃ + z⊙h
fn gru_lower(n: &NodeProto, c: &mut Ctx) -> Result<()> {
    let su = setup(n, c, Kind::Gru)?;
    let h = su.hidden;
    let lbr = n.attr_i("linear_before_reset", 0) != 0;
    let (mut ys, mut hs) = (Vec::new(), Vec::new());
    for d in 0..su.dirs {
        let w = pick(c, &n.input[1], d);
        let r = pick(c, &n.input[2], d);
        // input-side bias: Wb (all gates) + Rb of z and r; Rbh stays with the recurrent term
        let (bias, rbh) = match input(n, 3) {
            Some(b) => {
                let bd = pick(c, b, d);
                let wb = cols(c, &bd, 0, 3 * h);
                let rzr = cols(c, &bd, 3 * h, 5 * h);
                let zero = c.const_f32(&[h], &vec![0.0; h as usize]);
                let rzr0 = c.g.add("Concat", &[&rzr, &zero]).int("axis", 0).output();
                (Some(c.add(&wb, &rzr0)), Some(cols(c, &bd, 5 * h, 6 * h)))
            }
            None => (None, None),
        };
        let xw = project(c, &su.x, &w, bias.as_deref());
        let xs = steps(c, &xw, su.t);
        let rzr_t = {
            let rzr = cols_rows(c, &r, 0, 2 * h);
            c.transpose(&rzr, &[1, 0])
        };
        let rh_t = {
            let rh = cols_rows(c, &r, 2 * h, 3 * h);
            c.transpose(&rh, &[1, 0])
        };
        let mut hp = initial(c, &su, input(n, 5), d);
        let mut out = vec![String::new(); su.t as usize];
        let acts = &su.acts[d];
        for s in 0..su.t {
            let t = if su.reverse[d] { su.t - 1 - s } else { s };
            let xparts = split_last(c, &xs[t as usize], &[2 * h, h]);
            let (xzr, xh) = (&xparts[0], &xparts[1]);
            let hzr = c.op("MatMul", &[&hp, &rzr_t]);
            let gzr = c.add(xzr, &hzr);
            let gzr = clipped(c, &su, gzr);
            // one activation over the z and r gates
            let zr = activate(c, &acts[0], &gzr);
            let zr = split_last(c, &zr, &[h, h]);
            let (z, rr) = (zr[0].clone(), zr[1].clone());
            let rec = if lbr {
                let hr = c.op("MatMul", &[&hp, &rh_t]);
                let hr = match &rbh {
                    Some(b) => c.add(&hr, b),
                    None => hr,
                };
                c.mul(&rr, &hr)
            } else {
                let rh = c.mul(&rr, &hp);
                let p = c.op("MatMul", &[&rh, &rh_t]);
                match &rbh {
                    Some(b) => c.add(&p, b),
                    None => p,
                }
            };
            let gh = c.add(xh, &rec);
            let gh = clipped(c, &su, gh);
            let cand = activate(c, &acts[1], &gh);
            let one = c.scalar(1.0);
            let keep = c.sub(&one, &z);
            let a = c.mul(&keep, &cand);
            let b = c.mul(&z, &hp);
            let hn = c.add(&a, &b);
            let m = step_mask(c, &su, t);
            out[t as usize] = match &m {
                Some(m) => c.mul(m, &hn),
                None => hn.clone(),
            };
            hp = carry(c, &m, hn, &hp);
        }
        ys.push(out);
        hs.push(hp);
    }
    finish(c, n, &su, ys, vec![hs]);
    Ok(())
}

/// Rows [from, to) of a 2-D matrix.
fn cols_rows(c: &mut Ctx, v: &str, from: i64, to: i64) -> String {
    let (s, e, a) = (c.const_i64(&[from]), c.const_i64(&[to]), c.const_i64(&[0]));
    c.op("Slice", &[v, &s, &e, &a])
}

/// RNN-14:  h' = f(x·Wᵀ + h·Rᵀ + Wb + Rb)
fn rnn_lower(n: &NodeProto, c: &mut Ctx) -> Result<()> {
    let su = setup(n, c, Kind::Rnn)?;
    let h = su.hidden;
    let (mut ys, mut hs) = (Vec::new(), Vec::new());
    for d in 0..su.dirs {
        let w = pick(c, &n.input[1], d);
        let r = pick(c, &n.input[2], d);
        let bias = input(n, 3).map(|b| {
            let bd = pick(c, b, d);
            let wb = cols(c, &bd, 0, h);
            let rb = cols(c, &bd, h, 2 * h);
            c.add(&wb, &rb)
        });
        let xw = project(c, &su.x, &w, bias.as_deref());
        let xs = steps(c, &xw, su.t);
        let rt = c.transpose(&r, &[1, 0]);
        let mut hp = initial(c, &su, input(n, 5), d);
        let mut out = vec![String::new(); su.t as usize];
        for s in 0..su.t {
            let t = if su.reverse[d] { su.t - 1 - s } else { s };
            let hr = c.op("MatMul", &[&hp, &rt]);
            let g = c.add(&xs[t as usize], &hr);
            let g = clipped(c, &su, g);
            let hn = activate(c, &su.acts[d][0], &g);
            let m = step_mask(c, &su, t);
            out[t as usize] = match &m {
                Some(m) => c.mul(m, &hn),
                None => hn.clone(),
            };
            hp = carry(c, &m, hn, &hp);
        }
        ys.push(out);
        hs.push(hp);
    }
    finish(c, n, &su, ys, vec![hs]);
    Ok(())
}
