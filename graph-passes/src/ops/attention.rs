//! Attention and RotaryEmbedding (ONNX opset 23), written out in elementary ops before autodiff:
//! ONNX Runtime 1.31 runs both natively, tract 0.23 has no Attention; the written-out forms run
//! on both and autodiff differentiates them.
//!
//! Attention covered: 4-D Q/K/V [B, heads, S, D] and 3-D [B, S, heads·D] (q_num_heads,
//! kv_num_heads), grouped-query attention (q heads a multiple of kv heads), attn_mask boolean
//! (true: attend) or additive float, is_causal (upper-left aligned, as the spec), scale (default
//! 1/√D), softcap. Not covered: past_key/past_value (a KV cache is inference), the present_* and
//! qk_matmul_output outputs.
use super::{op, Family, Gradient as G, OpDef};
use crate::ctx::Ctx;
use crate::ir::{node_error, Graph, NodeExt};
use crate::onnx::{data_type as dt, NodeProto};
use crate::shapes::{input_type, set, Dim, Shapes};
use crate::Result;

pub const FAMILY: Family = Family { name: "attention", ops };

fn ops() -> Vec<OpDef> {
    vec![
        op("Attention", "23+", attention_shape, G::Lowered(attention_lower)).notes(
            "written out: softmax(Q·Kᵀ·scale + mask)·V; 3-D and 4-D, grouped-query, boolean or additive mask, is_causal, softcap; past_key/past_value and the present/qk outputs not covered",
        ),
        op("RotaryEmbedding", "23+", rotary_shape, G::Lowered(rotary_lower))
            .notes("written out; interleaved or not, rotary_embedding_dim, position_ids or per-position caches, 3-D and 4-D"),
    ]
}

fn rotary_shape(_: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let x = input_type(s, n, 0)?;
    set(s, &n.output[0], x.dtype, x.shape);
    Ok(())
}

/// Y: 4-D [B, q_heads, S_q, D_v], or 3-D [B, S_q, q_heads·D_v].
fn attention_shape(_: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let q = input_type(s, n, 0)?;
    let v = input_type(s, n, 2)?;
    let shape = match (&q.shape, &v.shape) {
        (Some(qs), Some(vs)) if qs.len() == 4 && vs.len() == 4 => {
            Some(vec![qs[0].clone(), qs[1].clone(), qs[2].clone(), vs[3].clone()])
        }
        (Some(qs), Some(vs)) if qs.len() == 3 && vs.len() == 3 => {
            let (qh, kvh) = (n.attr_i("q_num_heads", 0), n.attr_i("kv_num_heads", 0));
            let width = match vs[2] {
                Dim::Known(w) if kvh > 0 => Dim::Known(w / kvh * qh),
                _ => s.fresh_dim("attention"),
            };
            Some(vec![qs[0].clone(), qs[1].clone(), width])
        }
        _ => None,
    };
    set(s, &n.output[0], q.dtype, shape);
    Ok(())
}

/// [B, S, heads·D] → [B, heads, S, D]
fn heads(c: &mut Ctx, v: &str, h: i64) -> String {
    let s = c.const_i64(&[0, 0, h, -1]);
    let r = c.reshape(v, &s);
    c.transpose(&r, &[0, 2, 1, 3])
}

fn input(n: &NodeProto, k: usize) -> Option<&str> {
    n.input.get(k).map(|s| s.as_str()).filter(|s| !s.is_empty())
}

/// Attention-23: Y = softmax(softcap(Q·Kᵀ·scale) + mask)·V per head, K and V heads repeated
/// for grouped-query attention.
fn attention_lower(n: &NodeProto, c: &mut Ctx) -> Result<()> {
    if input(n, 4).is_some() || input(n, 5).is_some() {
        return Err(node_error(n, "past_key/past_value (a KV cache) are not covered: training has none"));
    }
    if n.output.iter().skip(1).any(|o| !o.is_empty()) {
        return Err(node_error(n, "the present_key/present_value/qk_matmul_output outputs are not covered"));
    }
    let dims = |c: &Ctx, v: &str| -> Result<Vec<Option<i64>>> { Ok(c.shape(v)?.iter().map(|d| d.known()).collect()) };
    let (qd, kd) = (dims(c, &n.input[0])?, dims(c, &n.input[1])?);
    let three_d = qd.len() == 3;
    // heads, head size, sequence lengths, from the inputs' shapes
    let (qh, kvh, d, sq, skv) = if three_d {
        let (qh, kvh) = (n.attr_i("q_num_heads", 0), n.attr_i("kv_num_heads", 0));
        if qh <= 0 || kvh <= 0 {
            return Err(node_error(n, "3-D inputs need q_num_heads and kv_num_heads"));
        }
        (qh, kvh, qd[2].map(|w| w / qh), qd[1], kd[1])
    } else {
        let (Some(qh), Some(kvh)) = (qd[1], kd[1]) else {
            return Err(node_error(n, "the numbers of heads must be known"));
        };
        (qh, kvh, qd[3], qd[2], kd[2])
    };
    let d = d.ok_or_else(|| node_error(n, "the head size must be known"))?;
    if qh % kvh != 0 {
        return Err(node_error(n, "the query heads must be a multiple of the key/value heads"));
    }
    let (q, k, v) = if three_d {
        (heads(c, &n.input[0], qh), heads(c, &n.input[1], kvh), heads(c, &n.input[2], kvh))
    } else {
        (n.input[0].clone(), n.input[1].clone(), n.input[2].clone())
    };
    // grouped-query attention: each key/value head serves qh/kvh query heads
    let vd = dims(c, &n.input[2])?;
    let dv = if three_d { vd[2].map(|w| w / kvh) } else { vd[3] };
    let dv = dv.ok_or_else(|| node_error(n, "the value head size must be known"))?;
    let repeat = |c: &mut Ctx, x: &str, last: i64| -> String {
        if qh == kvh {
            return x.to_string();
        }
        let g = qh / kvh;
        let u = c.unsqueeze(x, &[2]); // [B, kvh, 1, S, D]
        let shape = c.shape_of(&u);
        let times = c.const_i64(&[1, 1, g, 1, 1]);
        let target = c.op("Mul", &[&shape, &times]);
        let e = c.op("Expand", &[&u, &target]);
        let s = c.const_i64(&[0, qh, -1, last]);
        c.reshape(&e, &s)
    };
    let k = repeat(c, &k, d);
    let v = repeat(c, &v, dv);
    let kt = c.transpose(&k, &[0, 1, 3, 2]);
    let qk = c.op("MatMul", &[&q, &kt]); // [B, H, Sq, Skv]
    let scale = n.attr("scale").and_then(|a| a.f).unwrap_or(1.0 / (d as f32).sqrt());
    let sc = c.scalar(scale);
    let mut logits = c.mul(&qk, &sc);
    let softcap = n.attr_f("softcap", 0.0);
    if softcap > 0.0 {
        let cap = c.scalar(softcap);
        let inv = c.scalar(1.0 / softcap);
        let t = c.mul(&logits, &inv);
        let th = c.op("Tanh", &[&t]);
        logits = c.mul(&th, &cap);
    }
    let neg_inf = c.scalar(f32::NEG_INFINITY);
    let zero = c.scalar(0.0);
    if let Some(mask) = input(n, 3) {
        let is_bool = c.shapes.get(mask).map(|t| t.dtype) == Some(dt::BOOL);
        let additive = if is_bool { c.where_(mask, &zero, &neg_inf) } else { mask.to_string() };
        logits = c.add(&logits, &additive);
    }
    if n.attr_i("is_causal", 0) != 0 {
        let (Some(sq), Some(skv)) = (sq, skv) else {
            return Err(node_error(n, "is_causal needs the sequence lengths known"));
        };
        // upper-left aligned: query i sees keys j ≤ i
        let bias: Vec<f32> =
            (0..sq).flat_map(|i| (0..skv).map(move |j| if j <= i { 0.0 } else { f32::NEG_INFINITY })).collect();
        let b = c.const_f32(&[sq, skv], &bias);
        logits = c.add(&logits, &b);
    }
    let p = c.g.add("Softmax", &[&logits]).int("axis", -1).output();
    let y = c.op("MatMul", &[&p, &v]); // [B, H, Sq, Dv]
    let y = if three_d {
        let t = c.transpose(&y, &[0, 2, 1, 3]);
        let s = c.const_i64(&[0, 0, -1]);
        c.reshape(&t, &s)
    } else {
        y
    };
    super::replace_output(c, n, 0, &y);
    Ok(())
}

/// RotaryEmbedding-23 (X, cos_cache, sin_cache, position_ids): on the first
/// rotary_embedding_dim features of each head, pairs (x₁, x₂) — halves, or even/odd features
/// when interleaved — become (cos·x₁ − sin·x₂, sin·x₁ + cos·x₂); the rest pass.
fn rotary_lower(n: &NodeProto, c: &mut Ctx) -> Result<()> {
    let x = &n.input[0];
    let r = c.rank(x)?;
    let interleaved = n.attr_i("interleaved", 0) != 0;
    // work in [B, S, H, D]
    let xb = if r == 4 {
        c.transpose(x, &[0, 2, 1, 3])
    } else {
        let h = n.attr_i("num_heads", 0);
        if h <= 0 {
            return Err(node_error(n, "a 3-D input needs num_heads"));
        }
        let s = c.const_i64(&[0, 0, h, -1]);
        c.reshape(x, &s)
    };
    let xd: Vec<Option<i64>> = c.shape(x)?.iter().map(|d| d.known()).collect();
    let head = if r == 4 { xd[3] } else { xd[2].map(|w| w / n.attr_i("num_heads", 1).max(1)) };
    let head = head.ok_or_else(|| node_error(n, "the head size must be known"))?;
    let rd = match n.attr_i("rotary_embedding_dim", 0) {
        0 => head,
        v => v,
    };
    let slice = |c: &mut Ctx, v: &str, from: i64, to: i64, step: i64| -> String {
        let (s, e, a, st) = (c.const_i64(&[from]), c.const_i64(&[to]), c.const_i64(&[-1]), c.const_i64(&[step]));
        c.op("Slice", &[v, &s, &e, &a, &st])
    };
    let rot = if rd == head { xb.clone() } else { slice(c, &xb, 0, rd, 1) };
    let (x1, x2) = if interleaved {
        (slice(c, &rot, 0, rd, 2), slice(c, &rot, 1, rd, 2))
    } else {
        (slice(c, &rot, 0, rd / 2, 1), slice(c, &rot, rd / 2, rd, 1))
    };
    // cos/sin [B, S, rd/2] (gathered by position_ids when given) → [B, S, 1, rd/2]
    let table = |c: &mut Ctx, t: &str| -> String {
        let v = match input(n, 3) {
            Some(pos) => c.g.add("Gather", &[t, pos]).int("axis", 0).output(),
            None => t.to_string(),
        };
        c.unsqueeze(&v, &[2])
    };
    let cos = table(c, &n.input[1]);
    let sin = table(c, &n.input[2]);
    let a = c.mul(&cos, &x1);
    let b = c.mul(&sin, &x2);
    let real = c.sub(&a, &b);
    let a = c.mul(&sin, &x1);
    let b = c.mul(&cos, &x2);
    let imag = c.add(&a, &b);
    let rotated = if interleaved {
        let ru = c.unsqueeze(&real, &[-1]);
        let iu = c.unsqueeze(&imag, &[-1]);
        let pairs = c.g.add("Concat", &[&ru, &iu]).int("axis", -1).output();
        let s = c.const_i64(&[0, 0, 0, rd]);
        c.reshape(&pairs, &s)
    } else {
        c.g.add("Concat", &[&real, &imag]).int("axis", -1).output()
    };
    let full = if rd == head {
        rotated
    } else {
        let rest = slice(c, &xb, rd, head, 1);
        c.g.add("Concat", &[&rotated, &rest]).int("axis", -1).output()
    };
    let y = if r == 4 {
        c.transpose(&full, &[0, 2, 1, 3])
    } else {
        let s = c.const_i64(&[0, 0, -1]);
        c.reshape(&full, &s)
    };
    super::replace_output(c, n, 0, &y);
    Ok(())
}
