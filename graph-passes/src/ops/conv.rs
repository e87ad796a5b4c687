//! Conv and ConvTranspose in 1-D, 2-D and 3-D: Conv's input gradient is a ConvTranspose (a Conv
//! with the flipped kernel at stride 1), its weight gradient a correlation of the input with the
//! output gradient; ConvTranspose is Conv's adjoint, so its gradients are the same two forms
//! swapped (BACKEND-NOTES.md: all run correctly on ORT and tract).
use super::{dy, op, Family, Gradient as G, OpDef};
use crate::ctx::{Ctx, Grads};
use crate::ir::{node_error, Graph, NodeExt};
use crate::onnx::{data_type as dt, NodeProto};
use crate::shapes::{conv_out, input_type, set, Dim, Shapes};
use crate::Result;

pub const FAMILY: Family = Family { name: "conv", ops };

fn ops() -> Vec<OpDef> {
    vec![
        op("Conv", "11+", window_shape, G::Rule(conv))
            .notes("1-D, 2-D, 3-D; groups, strides, dilations, pads; auto_pad resolved to pads"),
        op("ConvTranspose", "11+", conv_transpose_shape, G::Rule(conv_transpose)).notes(
            "1-D, 2-D, 3-D with explicit pads and output_padding (as PyTorch exports it); output_shape and auto_pad are not covered",
        ),
    ]
}

/// Kernel, strides, dilations and pads of a sliding window: one per spatial axis (pads two),
/// strides and dilations ≥ 1, kernel sizes ≥ 1, pads ≥ 0 — an error naming the node otherwise.
pub(crate) fn check_window(n: &NodeProto, sp: usize, k: &[i64], s: &[i64], d: &[i64], p: &[i64]) -> Result<()> {
    let bad = k.len() != sp
        || s.len() != sp
        || d.len() != sp
        || p.len() != 2 * sp
        || k.iter().chain(s).chain(d).any(|&v| v < 1)
        || p.iter().any(|&v| v < 0);
    if bad {
        return Err(node_error(
            n,
            format!(
                "kernel_shape {k:?}, strides {s:?}, dilations {d:?}, pads {p:?} do not fit {sp} spatial axes (one each, two pads; sizes ≥ 1, pads ≥ 0)"
            ),
        ));
    }
    Ok(())
}

/// The output of a sliding window (Conv, MaxPool, AveragePool, LpPool) over the spatial axes:
/// (H + pads − dilation·(k − 1) − 1)/stride + 1, rounded down (or up with ceil_mode); auto_pad
/// SAME_* keeps ⌈H/stride⌉; MaxPool's Indices output has the same shape.
pub(crate) fn window_shape(_: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let op = n.op_type.as_str();
    let out0 = n.output.first().cloned().unwrap_or_default();
    let x = input_type(s, n, 0)?;
    let shape = match &x.shape {
        Some(xs) if xs.len() >= 3 => {
            let sp = xs.len() - 2;
            let kernel = if op == "Conv" {
                let w = input_type(s, n, 1)?;
                match w.shape {
                    Some(ws) if ws.len() == xs.len() => ws[2..].iter().map(|d| d.known().unwrap_or(1)).collect(),
                    Some(ws) => {
                        return Err(node_error(n, format!("a weight of rank {} for an input of rank {}", ws.len(), xs.len())))
                    }
                    None => n.attr_ints("kernel_shape").unwrap_or(vec![1; sp]),
                }
            } else {
                n.attr_ints("kernel_shape").ok_or_else(|| node_error(n, "kernel_shape missing"))?
            };
            let strides = n.attr_ints("strides").unwrap_or(vec![1; sp]);
            let dil = n.attr_ints("dilations").unwrap_or(vec![1; sp]);
            let mut pads = n.attr_ints("pads").unwrap_or(vec![0; 2 * sp]);
            check_window(n, sp, &kernel, &strides, &dil, &pads)?;
            let auto_pad = n.attr_s("auto_pad").unwrap_or_default();
            let ceil = n.attr_i("ceil_mode", 0) != 0;
            let mut out = vec![xs[0].clone()];
            out.push(if op == "Conv" {
                input_type(s, n, 1)?.shape.map(|w| w[0].clone()).unwrap_or_else(|| s.fresh_dim("c"))
            } else {
                xs[1].clone()
            });
            for i in 0..sp {
                let d = match (auto_pad.as_str(), &xs[2 + i]) {
                    ("SAME_UPPER" | "SAME_LOWER", Dim::Known(h)) => Dim::Known((h + strides[i] - 1) / strides[i]),
                    ("VALID", _) => {
                        pads = vec![0; 2 * sp];
                        conv_out(&xs[2 + i], kernel[i], strides[i], 0, 0, dil[i], ceil)
                    }
                    _ => conv_out(&xs[2 + i], kernel[i], strides[i], pads[i], pads[i + sp], dil[i], ceil),
                };
                out.push(d);
            }
            Some(out)
        }
        _ => None,
    };
    if let Some(ind) = n.output.get(1) {
        set(s, ind, dt::INT64, shape.clone());
    }
    set(s, &out0, x.dtype, shape);
    Ok(())
}

fn conv_transpose_shape(_: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let out0 = n.output.first().cloned().unwrap_or_default();
    let x = input_type(s, n, 0)?;
    let w = input_type(s, n, 1)?;
    let shape = match (&x.shape, &w.shape) {
        (Some(xs), Some(ws)) if xs.len() >= 3 => {
            let sp = xs.len() - 2;
            let group = n.attr_i("group", 1);
            let strides = n.attr_ints("strides").unwrap_or(vec![1; sp]);
            let dil = n.attr_ints("dilations").unwrap_or(vec![1; sp]);
            let pads = n.attr_ints("pads").unwrap_or(vec![0; 2 * sp]);
            let opad = n.attr_ints("output_padding").unwrap_or(vec![0; sp]);
            let mut out =
                vec![xs[0].clone(), ws[1].known().map(|c| Dim::Known(c * group)).unwrap_or_else(|| s.fresh_dim("c"))];
            if let Some(os) = n.attr_ints("output_shape") {
                out.extend(os.iter().map(|&v| Dim::Known(v)));
            } else {
                for i in 0..sp {
                    let k = ws[2 + i].known().unwrap_or(1);
                    out.push(match xs[2 + i] {
                        Dim::Known(h) => {
                            Dim::Known(strides[i] * (h - 1) + opad[i] + (k - 1) * dil[i] + 1 - pads[i] - pads[i + sp])
                        }
                        _ => s.fresh_dim("convT"),
                    });
                }
            }
            Some(out)
        }
        _ => None,
    };
    set(s, &out0, x.dtype, shape);
    Ok(())
}

pub struct ConvGeom {
    pub kernel: Vec<i64>,
    pub strides: Vec<i64>,
    pub dilations: Vec<i64>,
    /// [begin₀ … begin_{d−1}, end₀ … end_{d−1}]
    pub pads: Vec<i64>,
    pub group: i64,
}

/// Explicit geometry of a sliding window over `input` (the spatial sizes) with `kernel`
/// (auto_pad resolved to pads, ONNX Conv-11 §auto_pad).
pub fn geometry(n: &NodeProto, input: &[i64], kernel: &[i64]) -> Result<ConvGeom> {
    let sp = input.len();
    let strides = n.attr_ints("strides").unwrap_or(vec![1; sp]);
    let dilations = n.attr_ints("dilations").unwrap_or(vec![1; sp]);
    let mut pads = n.attr_ints("pads").unwrap_or(vec![0; 2 * sp]);
    if strides.len() != sp || dilations.len() != sp || pads.len() != 2 * sp || kernel.len() != sp {
        return Err(node_error(n, format!("strides, dilations, pads or kernel do not match its {sp} spatial axes")));
    }
    match n.attr_s("auto_pad").as_deref() {
        None | Some("NOTSET") | Some("") => {}
        Some("VALID") => pads = vec![0; 2 * sp],
        Some(mode @ ("SAME_UPPER" | "SAME_LOWER")) => {
            for i in 0..sp {
                let out = (input[i] + strides[i] - 1) / strides[i];
                let total = ((out - 1) * strides[i] + dilations[i] * (kernel[i] - 1) + 1 - input[i]).max(0);
                let (small, big) = (total / 2, total - total / 2);
                if mode == "SAME_UPPER" {
                    pads[i] = small;
                    pads[i + sp] = big;
                } else {
                    pads[i] = big;
                    pads[i + sp] = small;
                }
            }
        }
        Some(other) => return Err(node_error(n, format!("auto_pad '{other}' is not supported"))),
    }
    Ok(ConvGeom { kernel: kernel.to_vec(), strides, dilations, pads, group: n.attr_i("group", 1) })
}

/// The dims of `v` with the batch (axis 0) allowed unknown (−1); every other axis must be known.
pub(crate) fn dims_but_batch(n: &NodeProto, c: &Ctx, v: &str, what: &str) -> Result<Vec<i64>> {
    let s = c.shape(v)?.clone();
    let dims: Vec<i64> = s.iter().enumerate().map(|(i, d)| d.known().unwrap_or(if i == 0 { -1 } else { 0 })).collect();
    if dims.len() < 3 || dims.len() > 5 || dims[1..].iter().any(|&v| v <= 0) {
        return Err(node_error(
            n,
            format!(
                "the gradient covers 1-D, 2-D and 3-D {what} with known channels and sizes; this one's input is {}{}",
                crate::shapes::shape_string(&Some(s.clone())),
                if s.iter().skip(1).any(|d| d.known().is_none()) {
                    " (sizes the file computes at run time, e.g. a 'same' padding computed from the \
                     input's shape); re-export with torch.onnx.export(..., dynamo=True, optimize=False), \
                     which writes them as numbers"
                } else {
                    ""
                }
            ),
        ));
    }
    Ok(dims)
}

/// (0, 1, 2, …, r − 1) with the first two swapped: [1, 0, 2, …].
fn swap01(r: usize) -> Vec<i64> {
    let mut p: Vec<i64> = (0..r as i64).collect();
    p.swap(0, 1);
    p
}

/// y = conv(x, W) + b, x [N, C, d…], W [M, C/g, k…] (d = 1, 2, 3 spatial axes):
///   dx = ConvTranspose(dy, W) with the forward's strides/pads/dilations/group and the
///        output_padding that restores the input size (a Conv with the flipped kernel at stride 1)
///   dW = correlation of x with dy (`weight_grad`)
///   db = Σ_{n, d…} dy
fn conv(n: &NodeProto, dys: &[Option<String>], need: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let (x, w, y) = (n.input[0].clone(), n.input[1].clone(), n.output[0].clone());
    let xs = dims_but_batch(n, c, &x, "convolutions")?;
    let sp = xs.len() - 2;
    let ws = c.known_dims(&w).map_err(|e| node_error(n, e))?;
    let ys = dims_but_batch(n, c, &y, "convolutions")?;
    let geo = geometry(n, &xs[2..], &ws[2..])?;
    let mut out = vec![None, None];
    if need[0] {
        out[0] = Some(conv_input_grad(n, c, &d, &w, &xs, &ws, &ys, &geo)?);
    }
    if need[1] {
        out[1] = Some(weight_grad(c, &x, &d, &xs, &ws, &ys[2..], &geo));
    }
    if n.input.len() > 2 && !n.input[2].is_empty() {
        let axes: Vec<i64> = std::iter::once(0).chain(2..2 + sp as i64).collect();
        out.push(if need[2] { Some(c.reduce_sum(&d, &axes, false)) } else { None });
    }
    Ok(out)
}

/// W [M, C/g, k…] with every spatial axis reversed. Reversing every axis of a C-ordered block of
/// K = Πk cells reverses its flat index (i ↦ K − 1 − i), so for float32 weights with K ≤ 27 (up
/// to 3×3×3) the flip is one MatMul of W viewed as [M·C/g, K] with the K×K anti-identity: a GEMM
/// ONNX Runtime's CPU runs about 5× faster than a Slice with negative steps (512×512×3×3: ~1.5
/// vs ~10 ms; a Gather is slower still), exact in float32 (each output is one weight times 1
/// plus zeros). Where a GPU runs float32 MatMuls in TF32 (ONNX Runtime CUDA's use_tf32), the
/// weights are rounded to TF32 as that convolution's own TF32 math rounds them. Larger kernels
/// (the GEMM grows with K²) and other dtypes take the Slice; a 1×1 kernel needs neither.
fn flip_kernel(c: &mut Ctx, w: &str, ws: &[i64]) -> String {
    let sp = ws.len() - 2;
    let cells: i64 = ws[2..].iter().product();
    if cells == 1 {
        return w.to_string();
    }
    let is_f32 = c.shapes.get(w).map(|t| t.dtype == dt::FLOAT).unwrap_or(false);
    if is_f32 && cells <= 27 {
        let k = cells as usize;
        let mut anti = vec![0f32; k * k];
        for i in 0..k {
            anti[i * k + (k - 1 - i)] = 1.0;
        }
        let anti = c.const_f32(&[cells, cells], &anti);
        let flat = c.const_i64(&[ws[0] * ws[1], cells]);
        let w2 = c.reshape(w, &flat);
        let r = c.op("MatMul", &[&w2, &anti]);
        let back = c.const_i64(ws);
        return c.reshape(&r, &back);
    }
    let (st, en, ax, stp) = (
        c.const_i64(&vec![-1; sp]),
        c.const_i64(&vec![i64::MIN; sp]),
        c.const_i64(&(2..2 + sp as i64).collect::<Vec<_>>()),
        c.const_i64(&vec![-1; sp]),
    );
    c.op("Slice", &[w, &st, &en, &ax, &stp])
}

/// The input gradient of a Conv: ConvTranspose(dy, W), or at stride 1 a Conv of dy with the
/// flipped, channel-swapped kernel (ONNX Runtime's Conv is several times faster than its
/// ConvTranspose).
#[allow(clippy::too_many_arguments)]
fn conv_input_grad(
    n: &NodeProto,
    c: &mut Ctx,
    d: &str,
    w: &str,
    xs: &[i64],
    ws: &[i64],
    ys: &[i64],
    geo: &ConvGeom,
) -> Result<String> {
    let sp = xs.len() - 2;
    let (s, dl, p, g) = (&geo.strides, &geo.dilations, &geo.pads, geo.group);
    let k = &ws[2..];
    if s.iter().all(|&v| v == 1) {
        let pads: Vec<i64> = (0..2 * sp).map(|i| dl[i % sp] * (k[i % sp] - 1) - p[i]).collect();
        if pads.iter().all(|&v| v >= 0) {
            let (m, cg) = (ws[0], ws[1]);
            let flipped = flip_kernel(c, w, ws);
            let wt = if g == 1 {
                c.transpose(&flipped, &swap01(sp + 2))
            } else {
                // [M, C/g, k…] → [g, M/g, C/g, k…] → [g, C/g, M/g, k…] → [C, M/g, k…]
                let mut s5 = vec![g, m / g, cg];
                s5.extend_from_slice(k);
                let s5 = c.const_i64(&s5);
                let w5 = c.reshape(&flipped, &s5);
                let mut perm = vec![0i64, 2, 1];
                perm.extend(3..3 + sp as i64);
                let t = c.transpose(&w5, &perm);
                let mut s4 = vec![g * cg, m / g];
                s4.extend_from_slice(k);
                let s4 = c.const_i64(&s4);
                c.reshape(&t, &s4)
            };
            return Ok(c.g.add("Conv", &[d, &wt]).ints("pads", &pads).ints("dilations", dl).int("group", g).output());
        }
    }
    let opad: Vec<i64> =
        (0..sp).map(|i| xs[2 + i] - ((ys[2 + i] - 1) * s[i] - p[i] - p[i + sp] + dl[i] * (k[i] - 1) + 1)).collect();
    if opad.iter().zip(s.iter().zip(dl.iter())).any(|(&o, (&st, &di))| o < 0 || o >= st.max(di)) {
        return Err(node_error(n, format!("cannot express the input gradient (output_padding {opad:?})")));
    }
    Ok(c.g
        .add("ConvTranspose", &[d, w])
        .ints("strides", s)
        .ints("pads", p)
        .ints("dilations", dl)
        .int("group", g)
        .ints("output_padding", &opad)
        .output())
}

/// y = convT(x, W) + b, x [N, C, d…], W [C, M/g, k…]: ConvTranspose is the adjoint of the Conv
/// with the same geometry and weight (ONNX ConvTranspose-11), so
///   dx = Conv(dy, W) (strides, pads, dilations, group as the forward)
///   dW = the Conv weight gradient with dy as the input and x as the output gradient
///   db = Σ_{n, d…} dy
fn conv_transpose(n: &NodeProto, dys: &[Option<String>], need: &[bool], c: &mut Ctx) -> Result<Grads> {
    if n.attr("output_shape").is_some() || n.attr_s("auto_pad").is_some_and(|a| !a.is_empty() && a != "NOTSET") {
        return Err(node_error(
            n,
            "the gradient covers explicit pads and output_padding; export without output_shape/auto_pad (PyTorch's ConvTranspose exports that way)",
        ));
    }
    let d = dy(n, dys)?;
    let (x, w, y) = (n.input[0].clone(), n.input[1].clone(), n.output[0].clone());
    let xs = dims_but_batch(n, c, &x, "transposed convolutions")?;
    let sp = xs.len() - 2;
    let ws = c.known_dims(&w).map_err(|e| node_error(n, e))?;
    let ys = dims_but_batch(n, c, &y, "transposed convolutions")?;
    let geo = geometry(n, &ys[2..], &ws[2..])?;
    let mut out = vec![None, None];
    if need[0] {
        out[0] = Some(
            c.g.add("Conv", &[&d, &w])
                .ints("strides", &geo.strides)
                .ints("pads", &geo.pads)
                .ints("dilations", &geo.dilations)
                .int("group", geo.group)
                .output(),
        );
    }
    if need[1] {
        out[1] = Some(weight_grad(c, &d, &x, &ys, &ws, &xs[2..], &geo));
    }
    if n.input.len() > 2 && !n.input[2].is_empty() {
        let axes: Vec<i64> = std::iter::once(0).chain(2..2 + sp as i64).collect();
        out.push(if need[2] { Some(c.reduce_sum(&d, &axes, false)) } else { None });
    }
    Ok(out)
}

/// dW of y = conv(x, W) given dy: x [N, C, d…] (`xs`, batch may be −1), W [M, C/g, k…] (`ws`),
/// dy [N, M, o…] (`os` = o…). g = 1: im2col (`weight_grad_im2col`); groups: a Conv of x
/// regrouped to [C/g, g·N, d…] with dyᵀ [M, N, o…], strides = dilations and dilations = strides,
/// transposed back and cropped to k… where the correlation runs past the kernel.
fn weight_grad(c: &mut Ctx, x: &str, d: &str, xs: &[i64], ws: &[i64], os: &[i64], geo: &ConvGeom) -> String {
    let sp = xs.len() - 2;
    let (s, dl, p, g) = (&geo.strides, &geo.dilations, &geo.pads, geo.group);
    if g == 1 {
        return weight_grad_im2col(c, x, d, xs, ws, os, geo);
    }
    let cg = xs[1] / g;
    let spatial = &xs[2..];
    // x [N, C, d…] → [C/g, g·N, d…]: channel (G, n) of the new "batch" c' holds x[n, G·C/g + c']
    let mut s5 = vec![0, g, cg];
    s5.extend_from_slice(spatial);
    let s5 = c.const_i64(&s5);
    let x5 = c.reshape(x, &s5);
    let mut perm = vec![2i64, 1, 0];
    perm.extend(3..3 + sp as i64);
    let t = c.transpose(&x5, &perm);
    let mut s4 = vec![cg, -1];
    s4.extend_from_slice(spatial);
    let s4 = c.const_i64(&s4);
    let xr = c.reshape(&t, &s4);
    let dyt = c.transpose(d, &swap01(sp + 2));
    let gw =
        c.g.add("Conv", &[&xr, &dyt]).ints("strides", dl).ints("dilations", s).ints("pads", p).int("group", g).output();
    let gw = c.transpose(&gw, &swap01(sp + 2));
    // the correlation may run past the kernel when (d + pads − 1) is not a multiple of the stride
    let full: Vec<i64> =
        (0..sp).map(|i| (spatial[i] + p[i] + p[i + sp] - s[i] * (os[i] - 1) - 1) / dl[i] + 1).collect();
    if full.iter().zip(&ws[2..]).any(|(a, b)| a != b) {
        let starts = c.const_i64(&vec![0; sp]);
        let ends = c.const_i64(&ws[2..]);
        let axes = c.const_i64(&(2..2 + sp as i64).collect::<Vec<_>>());
        c.op("Slice", &[&gw, &starts, &ends, &axes])
    } else {
        gw
    }
}

/// dW by im2col: a depthwise Conv of the input with K = Πk one-hot kernels per channel lays out
/// every window ([N, C·K, o…], padding, strides and dilations included); then
/// dW = Σ_n cols[n]·dy[n]ᵀ is one batched MatMul. ONNX Runtime runs this far faster than a
/// Conv with an o…-sized kernel.
fn weight_grad_im2col(c: &mut Ctx, x: &str, d: &str, xs: &[i64], ws: &[i64], os: &[i64], geo: &ConvGeom) -> String {
    let (m, cin) = (ws[0], xs[1]);
    let k = &ws[2..];
    let kk: i64 = k.iter().product();
    let p: i64 = os.iter().product();
    // depthwise: channel c·K + t of the output is window offset t of input channel c
    let mut onehot = vec![0.0f32; (cin * kk * kk) as usize];
    for ch in 0..cin {
        for t in 0..kk {
            onehot[((ch * kk + t) * kk + t) as usize] = 1.0;
        }
    }
    let mut edims = vec![cin * kk, 1];
    edims.extend_from_slice(k);
    let e = c.const_f32(&edims, &onehot);
    let cols =
        c.g.add("Conv", &[x, &e])
            .ints("strides", &geo.strides)
            .ints("dilations", &geo.dilations)
            .ints("pads", &geo.pads)
            .int("group", cin)
            .output(); // [N, C·K, o…]
    let s3 = c.const_i64(&[-1, cin * kk, p]);
    let cols = c.reshape(&cols, &s3); // [N, C·K, P]
    let d3s = c.const_i64(&[0, m, p]);
    let d3 = c.reshape(d, &d3s); // [N, M, P]
    let mut s4 = vec![m, cin];
    s4.extend_from_slice(k);
    let s4 = c.const_i64(&s4);
    if one_gemm(cin * kk, m, p) {
        // one GEMM over N·P: dW [M, C·K] = dy [M, N·P] · colsᵀ [N·P, C·K] — no per-sample
        // [N, C·K, M] product and no batch sum (wide layers on small maps: 512 channels, 4×4)
        let ct = c.transpose(&cols, &[1, 0, 2]); // [C·K, N, P]
        let cs = c.const_i64(&[cin * kk, -1]);
        let c2 = c.reshape(&ct, &cs); // [C·K, N·P]
        let dt = c.transpose(&d3, &[1, 0, 2]); // [M, N, P]
        let ds = c.const_i64(&[m, -1]);
        let d2 = c.reshape(&dt, &ds); // [M, N·P]
        let w2 = c.g.add("Gemm", &[&d2, &c2]).int("transB", 1).output(); // [M, C·K]
        return c.reshape(&w2, &s4);
    }
    let dt = c.transpose(&d3, &[0, 2, 1]); // [N, P, M]
    let prod = c.op("MatMul", &[&cols, &dt]); // [N, C·K, M]
    let sum = c.reduce_sum(&prod, &[0], false); // [C·K, M]
    let t = c.transpose(&sum, &[1, 0]);
    c.reshape(&t, &s4)
}

/// Whether a weight gradient takes one GEMM over N·P (transposing the columns [N, C·K, P] and
/// dy [N, M, P], elements ∝ (C·K + M)·P per sample) rather than a batched product and a batch
/// sum (a [N, C·K, M] tensor): whichever moves fewer elements per sample.
fn one_gemm(ck: i64, m: i64, p: i64) -> bool {
    ck * m > (ck + m) * p
}
