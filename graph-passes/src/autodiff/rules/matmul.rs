//! Gemm and MatMul.
use super::dy;
use crate::autodiff::{Ctx, Grads, Rule};
use crate::ir::NodeExt;
use crate::onnx::NodeProto;
use crate::Result;

pub fn rule(op: &str) -> Option<Rule> {
    Some(match op {
        "Gemm" => gemm,
        "MatMul" => matmul,
        _ => return None,
    })
}

fn gemm_node(c: &mut Ctx, a: &str, b: &str, ta: bool, tb: bool, alpha: f32) -> String {
    let mut nb = c.g.add("Gemm", &[a, b]);
    if ta {
        nb = nb.int("transA", 1);
    }
    if tb {
        nb = nb.int("transB", 1);
    }
    if alpha != 1.0 {
        nb = nb.float("alpha", alpha);
    }
    nb.output()
}

/// Y = α·A'·B' + β·C with A' = Aᵀ if transA, B' = Bᵀ if transB:
///   dA' = α·dY·B'ᵀ,  dB' = α·A'ᵀ·dY,  dC = β·dY (summed to C's shape)
fn gemm(n: &NodeProto, dys: &[Option<String>], need: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let (a, b) = (&n.input[0], &n.input[1]);
    let (ta, tb) = (n.attr_i("transA", 0) != 0, n.attr_i("transB", 0) != 0);
    let (alpha, beta) = (n.attr_f("alpha", 1.0), n.attr_f("beta", 1.0));
    let da = need[0].then(|| match (ta, tb) {
        (false, false) => gemm_node(c, &d, b, false, true, alpha),
        (false, true) => gemm_node(c, &d, b, false, false, alpha),
        (true, false) => gemm_node(c, b, &d, false, true, alpha),
        (true, true) => gemm_node(c, b, &d, true, true, alpha),
    });
    let db = need[1].then(|| match (ta, tb) {
        (false, false) => gemm_node(c, a, &d, true, false, alpha),
        (true, false) => gemm_node(c, a, &d, false, false, alpha),
        (false, true) => gemm_node(c, &d, a, true, false, alpha),
        (true, true) => gemm_node(c, &d, a, true, true, alpha),
    });
    let mut out = vec![da, db];
    if n.input.len() > 2 && !n.input[2].is_empty() {
        out.push(if need[2] {
            let scaled = if beta != 1.0 {
                let s = c.scalar(beta);
                c.mul(&d, &s)
            } else {
                d.clone()
            };
            Some(c.unbroadcast(&scaled, &n.input[2], &n.output[0])?)
        } else {
            None
        });
    }
    Ok(out)
}

fn swap_last_two(rank: usize) -> Vec<i64> {
    let mut p: Vec<i64> = (0..rank as i64).collect();
    p.swap(rank - 1, rank - 2);
    p
}

/// Y = A @ B (numpy semantics):  dA = dY @ Bᵀ,  dB = Aᵀ @ dY, each summed over broadcast batch
/// axes; 1-D operands are treated as a row (A) or column (B) vector.
fn matmul(n: &NodeProto, dys: &[Option<String>], need: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let (a, b) = (n.input[0].clone(), n.input[1].clone());
    let (ra, rb) = (c.rank(&a)?, c.rank(&b)?);
    // lift vectors to matrices; dY gets the matching unit axes
    let (a2, mut d2) = if ra == 1 { (c.unsqueeze(&a, &[0]), c.unsqueeze(&d, &[-2])) } else { (a.clone(), d.clone()) };
    let b2 = if rb == 1 {
        d2 = c.unsqueeze(&d2, &[-1]);
        c.unsqueeze(&b, &[-1])
    } else {
        b.clone()
    };
    let (ra2, rb2) = (ra.max(2), rb.max(2));
    let ry = ra2.max(rb2);
    let mut out = vec![None, None];
    if need[0] {
        let bt = c.transpose(&b2, &swap_last_two(rb2));
        let g = c.op("MatMul", &[&d2, &bt]);
        // sum over batch axes that A broadcast along, then drop the unit axis we added
        let g = sum_to_rank(c, &g, ry, ra2, &a, &b)?;
        out[0] = Some(if ra == 1 { c.squeeze(&g, &[0]) } else { g });
    }
    if need[1] && rb == 2 && ra > 2 {
        // a weight shared by every batch row: fold the batch axes into one GEMM,
        // dB = A₂ᵀ·dY₂ with A₂ = A as [rows, K], dY₂ = dY as [rows, N]
        let k = c.shape(&b)?[0].known();
        let nn = c.shape(&b)?[1].known();
        if let (Some(k), Some(nn)) = (k, nn) {
            let (sa, sd) = (c.const_i64(&[-1, k]), c.const_i64(&[-1, nn]));
            let (a_rows, d_rows) = (c.reshape(&a, &sa), c.reshape(&d, &sd));
            out[1] = Some(gemm_node(c, &a_rows, &d_rows, true, false, 1.0));
            return Ok(out);
        }
    }
    if need[1] {
        let at = c.transpose(&a2, &swap_last_two(ra2));
        let g = c.op("MatMul", &[&at, &d2]);
        let g = sum_to_rank(c, &g, ry, rb2, &b, &a)?;
        out[1] = Some(if rb == 1 { c.squeeze(&g, &[-1]) } else { g });
    }
    Ok(out)
}

/// Sums a gradient of rank `ry` over the leading batch axes that operand `x` (rank `rx`) lacks
/// or broadcast (size 1 where the other operand has more).
fn sum_to_rank(c: &mut Ctx, g: &str, ry: usize, rx: usize, x: &str, other: &str) -> Result<String> {
    let lead = ry - rx;
    let mut axes: Vec<i64> = (0..lead as i64).collect();
    let xs = c.shape(x)?.clone();
    let os = c.shape(other)?.clone();
    // batch axes of x (all but the last two) that are 1 while the other operand's are not
    if xs.len() > 2 {
        let ob = os.len().saturating_sub(2);
        let xb = xs.len() - 2;
        for i in 0..xb {
            let oi = (i + ob).checked_sub(xb);
            let other_dim = oi.and_then(|k| os.get(k));
            if xs[i] == crate::shapes::Dim::Known(1)
                && other_dim.map(|d| *d != crate::shapes::Dim::Known(1)).unwrap_or(false)
            {
                axes.push((lead + i) as i64);
            }
        }
    }
    if axes.is_empty() {
        return Ok(g.to_string());
    }
    let s = c.reduce_sum(g, &axes, true);
    Ok(if lead > 0 { c.squeeze(&s, &(0..lead as i64).collect::<Vec<_>>()) } else { s })
}
