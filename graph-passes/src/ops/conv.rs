//! Conv (2-D): the input gradient is a ConvTranspose, the weight gradient a Conv of the input
//! with the output gradient (BACKEND-NOTES.md: both forms run correctly on ORT and tract).
use super::{dy, op, Family, Gradient as G, OpDef};
use crate::autodiff::{Ctx, Grads};
use crate::ir::{node_error, Graph, NodeExt};
use crate::onnx::{data_type as dt, NodeProto};
use crate::shapes::{conv_out, input_type, set, Dim, Shapes};
use crate::Result;

pub const FAMILY: Family = Family { name: "conv", ops };

fn ops() -> Vec<OpDef> {
    vec![
        op("Conv", "11+", window_shape, G::Rule(conv)).notes("2-D; auto_pad resolved to pads"),
        op("ConvTranspose", "11+", conv_transpose_shape, G::Missing("no gradient rule yet")),
    ]
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
                    Some(ws) => ws[2..].iter().map(|d| d.known().unwrap_or(1)).collect(),
                    None => n.attr_ints("kernel_shape").unwrap_or(vec![1; sp]),
                }
            } else {
                n.attr_ints("kernel_shape").ok_or_else(|| node_error(n, "kernel_shape missing"))?
            };
            let strides = n.attr_ints("strides").unwrap_or(vec![1; sp]);
            let dil = n.attr_ints("dilations").unwrap_or(vec![1; sp]);
            let mut pads = n.attr_ints("pads").unwrap_or(vec![0; 2 * sp]);
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
                    ("SAME_UPPER" | "SAME_LOWER", Dim::Known(h)) => {
                        Dim::Known((h + strides[i] - 1) / strides[i])
                    }
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
            let mut out = vec![
                xs[0].clone(),
                ws[1].known().map(|c| Dim::Known(c * group)).unwrap_or_else(|| s.fresh_dim("c")),
            ];
            if let Some(os) = n.attr_ints("output_shape") {
                out.extend(os.iter().map(|&v| Dim::Known(v)));
            } else {
                for i in 0..sp {
                    let k = ws[2 + i].known().unwrap_or(1);
                    out.push(match xs[2 + i] {
                        Dim::Known(h) => Dim::Known(
                            strides[i] * (h - 1) + opad[i] + (k - 1) * dil[i] + 1 - pads[i] - pads[i + sp],
                        ),
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
    /// [begin_h, begin_w, end_h, end_w]
    pub pads: Vec<i64>,
    pub group: i64,
}

/// Explicit geometry of a 2-D Conv (auto_pad resolved to pads).
pub fn geometry(n: &NodeProto, input: &[i64], kernel: &[i64]) -> Result<ConvGeom> {
    let strides = n.attr_ints("strides").unwrap_or(vec![1, 1]);
    let dilations = n.attr_ints("dilations").unwrap_or(vec![1, 1]);
    let mut pads = n.attr_ints("pads").unwrap_or(vec![0; 4]);
    match n.attr_s("auto_pad").as_deref() {
        None | Some("NOTSET") | Some("") => {}
        Some("VALID") => pads = vec![0; 4],
        Some(mode @ ("SAME_UPPER" | "SAME_LOWER")) => {
            for i in 0..2 {
                let out = (input[i] + strides[i] - 1) / strides[i];
                let total = ((out - 1) * strides[i] + dilations[i] * (kernel[i] - 1) + 1 - input[i]).max(0);
                let (small, big) = (total / 2, total - total / 2);
                if mode == "SAME_UPPER" {
                    pads[i] = small;
                    pads[i + 2] = big;
                } else {
                    pads[i] = big;
                    pads[i + 2] = small;
                }
            }
        }
        Some(other) => return Err(node_error(n, format!("auto_pad '{other}' is not supported"))),
    }
    Ok(ConvGeom { kernel: kernel.to_vec(), strides, dilations, pads, group: n.attr_i("group", 1) })
}

/// y = conv(x, W) + b, x [N, C, H, W], W [M, C/g, kh, kw]:
///   dx = ConvTranspose(dy, W) with the forward's strides/pads/dilations/group and the
///        output_padding that restores H, W
///   dW = Conv(x regrouped to [C/g, g·N, H, W], dyᵀ [M, N, Ho, Wo], strides = dilations,
///        dilations = strides, group = g)ᵀ, cropped to kh × kw
///   db = Σ_{n,h,w} dy
fn conv(n: &NodeProto, dys: &[Option<String>], need: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let (x, w, y) = (n.input[0].clone(), n.input[1].clone(), n.output[0].clone());
    let xs = c.known_dims(&x).or_else(|_| {
        // the batch may be symbolic: only C, H, W must be known
        let s = c.shape(&x)?.clone();
        Ok::<Vec<i64>, crate::Error>(
            s.iter().enumerate().map(|(i, d)| d.known().unwrap_or(if i == 0 { -1 } else { 0 })).collect(),
        )
    })?;
    if xs.len() != 4 || xs[1..].iter().any(|&v| v <= 0) {
        return Err(node_error(
            n,
            format!(
                "the gradient covers 2-D convolutions with known channels and size; this one's input is {}",
                crate::shapes::shape_string(&Some(c.shape(&x)?.clone()))
            ),
        ));
    }
    let ws = c.known_dims(&w).map_err(|e| node_error(n, e))?;
    let ys = c.shape(&y)?.clone();
    let (ho, wo) = (ys[2].known().unwrap_or(0), ys[3].known().unwrap_or(0));
    let geo = geometry(n, &xs[2..], &ws[2..])?;
    let (s, dl, p, g) = (&geo.strides, &geo.dilations, &geo.pads, geo.group);
    let mut out = vec![None, None];
    if need[0] {
        let stride_one = s.iter().all(|&v| v == 1);
        let dx = if stride_one {
            // stride 1: a plain Conv of dy with the flipped, channel-swapped kernel (ONNX Runtime's
            // Conv is several times faster than its ConvTranspose)
            let (m, cg, kh, kw) = (ws[0], ws[1], ws[2], ws[3]);
            let (st, en, ax, stp) = (
                c.const_i64(&[-1, -1]),
                c.const_i64(&[i64::MIN, i64::MIN]),
                c.const_i64(&[2, 3]),
                c.const_i64(&[-1, -1]),
            );
            let flipped = c.op("Slice", &[&w, &st, &en, &ax, &stp]);
            let wt = if g == 1 {
                c.transpose(&flipped, &[1, 0, 2, 3])
            } else {
                // [M, C/g, k, k] → [g, M/g, C/g, k, k] → [g, C/g, M/g, k, k] → [C, M/g, k, k]
                let s5 = c.const_i64(&[g, m / g, cg, kh, kw]);
                let w5 = c.reshape(&flipped, &s5);
                let t = c.g.add("Transpose", &[&w5]).ints("perm", &[0, 2, 1, 3, 4]).output();
                let s4 = c.const_i64(&[g * cg, m / g, kh, kw]);
                c.reshape(&t, &s4)
            };
            let pads: Vec<i64> = (0..4).map(|i| dl[i % 2] * (ws[2 + i % 2] - 1) - p[i]).collect();
            if pads.iter().any(|&v| v < 0) {
                None
            } else {
                Some(c.g.add("Conv", &[&d, &wt]).ints("pads", &pads).ints("dilations", dl).int("group", g).output())
            }
        } else {
            None
        };
        let dx = match dx {
            Some(dx) => dx,
            None => {
                let opad: Vec<i64> = (0..2)
                    .map(|i| {
                        let (hin, hout) = (xs[2 + i], if i == 0 { ho } else { wo });
                        hin - ((hout - 1) * s[i] - p[i] - p[i + 2] + dl[i] * (ws[2 + i] - 1) + 1)
                    })
                    .collect();
                if opad.iter().zip(s.iter().zip(dl.iter())).any(|(&o, (&st, &di))| o < 0 || o >= st.max(di)) {
                    return Err(node_error(n, format!("cannot express the input gradient (output_padding {opad:?})")));
                }
                c.g.add("ConvTranspose", &[&d, &w])
                    .ints("strides", s)
                    .ints("pads", p)
                    .ints("dilations", dl)
                    .int("group", g)
                    .ints("output_padding", &opad)
                    .output()
            }
        };
        out[0] = Some(dx);
    }
    if need[1] && g == 1 {
        out[1] = Some(weight_grad_im2col(c, &x, &d, &xs, &ws, (ho, wo), &geo));
    } else if need[1] {
        let (cin, h, wd) = (xs[1], xs[2], xs[3]);
        let cg = cin / g;
        // x [N, C, H, W] → [Cg, g·N, H, W]: channel (G, n) of the new "batch" c' holds x[n, G·Cg + c']
        let xr = if g == 1 {
            c.transpose(&x, &[1, 0, 2, 3])
        } else {
            let s5 = c.const_i64(&[0, g, cg, h, wd]);
            let x5 = c.reshape(&x, &s5);
            let t = c.g.add("Transpose", &[&x5]).ints("perm", &[2, 1, 0, 3, 4]).output();
            let s4 = c.const_i64(&[cg, -1, h, wd]);
            c.reshape(&t, &s4)
        };
        let dyt = c.transpose(&d, &[1, 0, 2, 3]);
        let gw =
            c.g.add("Conv", &[&xr, &dyt])
                .ints("strides", dl)
                .ints("dilations", s)
                .ints("pads", p)
                .int("group", g)
                .output();
        let gw = c.transpose(&gw, &[1, 0, 2, 3]);
        // the correlation may run past the kernel when (H + pads − 1) is not a multiple of the stride
        let full: Vec<i64> = (0..2)
            .map(|i| {
                let hin = xs[2 + i] + p[i] + p[i + 2];
                let hout = if i == 0 { ho } else { wo };
                (hin - s[i] * (hout - 1) - 1) / dl[i] + 1
            })
            .collect();
        let gw = if full[0] != ws[2] || full[1] != ws[3] || ho == 0 || wo == 0 {
            let starts = c.const_i64(&[0, 0]);
            let ends = c.const_i64(&[ws[2], ws[3]]);
            let axes = c.const_i64(&[2, 3]);
            c.op("Slice", &[&gw, &starts, &ends, &axes])
        } else {
            gw
        };
        out[1] = Some(gw);
    }
    if n.input.len() > 2 && !n.input[2].is_empty() {
        out.push(if need[2] { Some(c.reduce_sum(&d, &[0, 2, 3], false)) } else { None });
    }
    Ok(out)
}

/// dW by im2col: a depthwise Conv of the input with k² one-hot kernels per channel lays out every
/// window ([N, C·k², Ho, Wo], padding, strides and dilations included); then
/// dW = Σ_n cols[n]·dy[n]ᵀ is one batched MatMul. ONNX Runtime runs this far faster than a
/// Conv with an Ho×Wo kernel.
fn weight_grad_im2col(
    c: &mut Ctx,
    x: &str,
    d: &str,
    xs: &[i64],
    ws: &[i64],
    (ho, wo): (i64, i64),
    geo: &ConvGeom,
) -> String {
    let (m, cin, kh, kw) = (ws[0], xs[1], ws[2], ws[3]);
    let k2 = kh * kw;
    // depthwise: channel c·k² + t of the output is window offset t of input channel c
    let mut onehot = vec![0.0f32; (cin * k2 * k2) as usize];
    for ch in 0..cin {
        for t in 0..k2 {
            onehot[((ch * k2 + t) * k2 + t) as usize] = 1.0;
        }
    }
    let e = c.const_f32(&[cin * k2, 1, kh, kw], &onehot);
    let cols =
        c.g.add("Conv", &[x, &e])
            .ints("strides", &geo.strides)
            .ints("dilations", &geo.dilations)
            .ints("pads", &geo.pads)
            .int("group", cin)
            .output(); // [N, C·k², Ho, Wo]
    let s3 = c.const_i64(&[-1, cin * k2, ho * wo]);
    let cols = c.reshape(&cols, &s3); // [N, C·k², P]
    let d3s = c.const_i64(&[0, m, ho * wo]);
    let d3 = c.reshape(d, &d3s);
    let dt = c.transpose(&d3, &[0, 2, 1]); // [N, P, M]
    let prod = c.op("MatMul", &[&cols, &dt]); // [N, C·k², M]
    let sum = c.reduce_sum(&prod, &[0], false); // [C·k², M]
    let t = c.transpose(&sum, &[1, 0]);
    let s4 = c.const_i64(&[m, cin, kh, kw]);
    c.reshape(&t, &s4)
}
