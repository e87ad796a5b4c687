//! Gemm, MatMul and Einsum.
use super::{dy, op, Family, Gradient as G, OpDef};
use crate::ctx::{Ctx, Grads};
use crate::ir::{node_error, Graph, NodeExt};
use crate::onnx::NodeProto;
use crate::shapes::{input_type, matmul_shape, set, shape_string, Dim, Shapes};
use crate::Result;

pub const FAMILY: Family = Family { name: "matmul", ops };

fn ops() -> Vec<OpDef> {
    vec![
        op("Gemm", "11+", gemm_shape, G::Rule(gemm)),
        op("MatMul", "9+", matmul_shape_rule, G::Rule(matmul)).notes("numpy broadcasting of batch axes, 1-D operands"),
        op("Einsum", "12+", einsum_shape, G::Rule(einsum)).notes(
            "explicit or implicit output, '...'; a letter repeated within one operand (a diagonal) is not covered",
        ),
    ]
}

fn gemm_shape(_: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let out0 = n.output.first().cloned().unwrap_or_default();
    let a = input_type(s, n, 0)?;
    let b = input_type(s, n, 1)?;
    let (ta, tb) = (n.attr_i("transA", 0) != 0, n.attr_i("transB", 0) != 0);
    let shape = match (&a.shape, &b.shape) {
        (Some(sa), Some(sb)) if sa.len() == 2 && sb.len() == 2 => {
            Some(vec![if ta { sa[1].clone() } else { sa[0].clone() }, if tb { sb[0].clone() } else { sb[1].clone() }])
        }
        _ => None,
    };
    set(s, &out0, a.dtype, shape);
    Ok(())
}

fn matmul_shape_rule(_: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let out0 = n.output.first().cloned().unwrap_or_default();
    let a = input_type(s, n, 0)?;
    let b = input_type(s, n, 1)?;
    let shape = match (&a.shape, &b.shape) {
        (Some(sa), Some(sb)) => Some(matmul_shape(sa, sb).ok_or_else(|| {
            node_error(n, format!("MatMul of shapes {} and {}", shape_string(&a.shape), shape_string(&b.shape)))
        })?),
        _ => None,
    };
    set(s, &out0, a.dtype, shape);
    Ok(())
}

/// Einsum's equation parsed: one subscript string per operand and the output's, '...' replaced by
/// capital letters (one per broadcast axis, rank from the operands' shapes).
fn einsum_subscripts(n: &NodeProto, ranks: &[usize]) -> Result<(Vec<Vec<char>>, Vec<char>)> {
    let eq: String = n.attr_s("equation").unwrap_or_default().chars().filter(|c| !c.is_whitespace()).collect();
    let (lhs, rhs) = match eq.split_once("->") {
        Some((l, r)) => (l.to_string(), Some(r.to_string())),
        None => (eq.clone(), None),
    };
    let terms: Vec<&str> = lhs.split(',').collect();
    if terms.len() != ranks.len() {
        return Err(node_error(n, format!("equation '{eq}' has {} operands, the node {}", terms.len(), ranks.len())));
    }
    let ell_rank = terms
        .iter()
        .zip(ranks)
        .filter(|(t, _)| t.contains("..."))
        .map(|(t, r)| r.saturating_sub(t.replace("...", "").len()))
        .max()
        .unwrap_or(0);
    let ell: Vec<char> = ('A'..='Z').take(ell_rank).collect();
    let expand = |t: &str, r: usize| -> Vec<char> {
        match t.split_once("...") {
            Some((a, b)) => {
                let k = r.saturating_sub(a.len() + b.len());
                a.chars().chain(ell[ell.len() - k..].iter().copied()).chain(b.chars()).collect()
            }
            None => t.chars().collect(),
        }
    };
    let ins: Vec<Vec<char>> = terms.iter().zip(ranks).map(|(t, &r)| expand(t, r)).collect();
    let out = match rhs {
        Some(r) => match r.split_once("...") {
            Some((a, b)) => a.chars().chain(ell.iter().copied()).chain(b.chars()).collect(),
            None => r.chars().collect(),
        },
        None => {
            // implicit: the broadcast axes, then the letters that appear once, in order
            let mut once: Vec<char> = ins
                .iter()
                .flatten()
                .copied()
                .filter(|c| c.is_ascii_lowercase())
                .filter(|c| ins.iter().flatten().filter(|d| *d == c).count() == 1)
                .collect();
            once.sort_unstable();
            ell.iter().copied().chain(once).collect()
        }
    };
    Ok((ins, out))
}

fn einsum_shape(_: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let types: Vec<_> = (0..n.input.len()).map(|i| input_type(s, n, i)).collect::<Result<_>>()?;
    let shapes: Option<Vec<Vec<Dim>>> = types.iter().map(|t| t.shape.clone()).collect();
    let shape = match shapes {
        Some(shapes) => {
            let ranks: Vec<usize> = shapes.iter().map(|x| x.len()).collect();
            let (ins, out) = einsum_subscripts(n, &ranks)?;
            let mut size: std::collections::HashMap<char, Dim> = std::collections::HashMap::new();
            for (sub, sh) in ins.iter().zip(&shapes) {
                for (c, d) in sub.iter().zip(sh) {
                    // a size-1 broadcast axis gives way to the other operand's
                    match size.get(c) {
                        Some(Dim::Known(k)) if *k != 1 => {}
                        Some(Dim::Sym(_)) if *d == Dim::Known(1) => {}
                        _ => {
                            size.insert(*c, d.clone());
                        }
                    }
                }
            }
            out.iter().map(|c| size.get(c).cloned()).collect::<Option<Vec<Dim>>>()
        }
        None => None,
    };
    set(s, &n.output[0], types[0].dtype, shape);
    Ok(())
}

/// y = einsum(eq, x₁…xₖ):  dxᵢ = einsum(out, x_j (j ≠ i) -> subᵢ)(dy, …), with the letters of
/// subᵢ that appear nowhere else (summed over in the forward) brought back by Expand; broadcast
/// size-1 axes summed back to xᵢ's shape.
fn einsum(n: &NodeProto, dys: &[Option<String>], need: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let ranks: Vec<usize> = n.input.iter().map(|x| c.rank(x)).collect::<Result<_>>()?;
    let (ins, out) = einsum_subscripts(n, &ranks)?;
    if ins.iter().any(|t| t.iter().enumerate().any(|(i, ch)| t[..i].contains(ch))) {
        return Err(node_error(n, "a subscript repeated within one operand (a diagonal) has no gradient rule yet"));
    }
    let mut grads = Vec::new();
    for (k, sub) in ins.iter().enumerate() {
        if !need[k] {
            grads.push(None);
            continue;
        }
        let others: Vec<usize> = (0..ins.len()).filter(|&j| j != k).collect();
        let present = |ch: &char| out.contains(ch) || others.iter().any(|&j| ins[j].contains(ch));
        let kept: Vec<char> = sub.iter().copied().filter(|ch| present(ch)).collect();
        let mut eq: String = out.iter().collect();
        for &j in &others {
            eq.push(',');
            eq.extend(ins[j].iter());
        }
        eq.push_str("->");
        eq.extend(kept.iter());
        let mut operands: Vec<String> = vec![d.clone()];
        operands.extend(others.iter().map(|&j| n.input[j].clone()));
        let refs: Vec<&str> = operands.iter().map(|x| x.as_str()).collect();
        let mut g = c.g.add("Einsum", &refs).string("equation", &eq).output();
        // letters summed away in the forward come back as broadcast axes
        let missing: Vec<i64> = sub.iter().enumerate().filter(|(_, ch)| !present(ch)).map(|(i, _)| i as i64).collect();
        if !missing.is_empty() {
            g = c.unsqueeze(&g, &missing);
        }
        // every axis to x's size (broadcast ones summed back first)
        let x = &n.input[k];
        let xs = c.shape(x)?.clone();
        let gshape: Vec<Dim> = sub
            .iter()
            .map(|ch| {
                // the size the gradient has along this letter: the largest among the operands
                let mut best = Dim::Known(1);
                for (t, r) in ins.iter().zip(&n.input) {
                    if let Some(p) = t.iter().position(|x| x == ch) {
                        if let Some(sh) = c.shapes.shape(r) {
                            if sh[p] != Dim::Known(1) {
                                best = sh[p].clone();
                            }
                        }
                    }
                }
                best
            })
            .collect();
        let ones: Vec<i64> = xs
            .iter()
            .zip(&gshape)
            .enumerate()
            .filter(|(i, (a, b))| **a == Dim::Known(1) && **b != Dim::Known(1) && !missing.contains(&(*i as i64)))
            .map(|(i, _)| i as i64)
            .collect();
        if !ones.is_empty() {
            g = c.reduce_sum(&g, &ones, true);
        }
        if !missing.is_empty() {
            g = c.expand_like(&g, x);
        }
        grads.push(Some(g));
    }
    Ok(grads)
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
    if ra == 2 && rb == 2 {
        // matrices: dA = dY·Bᵀ, dB = Aᵀ·dY as Gemms with transposed operands (no Transpose nodes)
        if need[0] {
            out[0] = Some(gemm_node(c, &d, &b, false, true, 1.0));
        }
        if need[1] {
            out[1] = Some(gemm_node(c, &a, &d, true, false, 1.0));
        }
        return Ok(out);
    }
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
        use crate::shapes::Dim;
        for i in 0..xb {
            let oi = (i + ob).checked_sub(xb);
            let Some(other_dim) = oi.and_then(|k| os.get(k)) else { continue };
            match (&xs[i], other_dim) {
                (Dim::Known(1), Dim::Known(1)) => {}
                (Dim::Known(1), _) => axes.push((lead + i) as i64),
                (Dim::Sym(a), Dim::Sym(b)) if a != b => {
                    // either may be 1 at run time: whether x was broadcast cannot be known
                    crate::bail!(
                        "cannot tell whether '{x}' was broadcast along batch axis {i} of a MatMul: its size '{a}' and the other operand's '{b}' are known only at run time and either may be 1; re-export with those sizes fixed"
                    )
                }
                (Dim::Sym(a), Dim::Known(k)) if *k != 1 => {
                    crate::bail!(
                        "cannot tell whether '{x}' was broadcast along batch axis {i} of a MatMul: its size '{a}' is known only at run time and may be 1 (the other operand's is {k}); re-export with that size fixed"
                    )
                }
                _ => {}
            }
        }
    }
    if axes.is_empty() {
        return Ok(g.to_string());
    }
    let s = c.reduce_sum(g, &axes, true);
    Ok(if lead > 0 { c.squeeze(&s, &(0..lead as i64).collect::<Vec<_>>()) } else { s })
}
