//! MaxPool, AveragePool, LpPool, GlobalAveragePool, GlobalMaxPool, in 1-D, 2-D and 3-D.
//!
//! Convention at ties (PyTorch's max_pool and adaptive_max_pool): the first maximum of each
//! window in scan order gets the gradient; overlapping windows add up.
use super::conv::{dims_but_batch, geometry, window_shape};
use super::{dy, op, Family, Gradient as G, OpDef};
use crate::ctx::{Ctx, Grads};
use crate::ir::{node_error, Graph, NodeExt};
use crate::onnx::NodeProto;
use crate::shapes::{input_type, set, Dim, Shapes};
use crate::Result;

pub const FAMILY: Family = Family { name: "pool", ops };

fn ops() -> Vec<OpDef> {
    vec![
        op("MaxPool", "12+", window_shape, G::Rule(max_pool)).notes(
            "1-D, 2-D, 3-D; pads, strides, dilations, ceil_mode, overlapping windows; ties: the first maximum in scan order, as PyTorch; storage_order=1 not covered",
        ),
        op("AveragePool", "11+", window_shape, G::Rule(average_pool))
            .notes("1-D, 2-D, 3-D; count_include_pad both ways, ceil_mode, dilations (opset 19)"),
        op("LpPool", "11+", window_shape, G::Lowered(lp_pool_lower))
            .notes("written out as (K·AveragePool(|x|ᵖ))^(1/p); ceil_mode not covered"),
        op("GlobalAveragePool", "1+", global_shape, G::Rule(global_average_pool)),
        op("GlobalMaxPool", "1+", global_shape, G::Rule(global_max_pool)).notes("ties: the first maximum"),
    ]
}

fn global_shape(_: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let out0 = n.output.first().cloned().unwrap_or_default();
    let x = input_type(s, n, 0)?;
    let shape =
        x.shape.map(|xs| xs.iter().enumerate().map(|(i, d)| if i < 2 { d.clone() } else { Dim::Known(1) }).collect());
    set(s, &out0, x.dtype, shape);
    Ok(())
}

/// The pool's window geometry: (input dims with the batch maybe −1, output dims, kernel,
/// strides, dilations, pads [begins…, ends…]).
struct Pool {
    xs: Vec<i64>,
    ys: Vec<i64>,
    k: Vec<i64>,
    s: Vec<i64>,
    dl: Vec<i64>,
    p: Vec<i64>,
}

fn pool(n: &NodeProto, c: &Ctx) -> Result<Pool> {
    let xs = dims_but_batch(n, c, &n.input[0], "pools")?;
    let ys = dims_but_batch(n, c, &n.output[0], "pools")?;
    let k = n.attr_ints("kernel_shape").ok_or_else(|| node_error(n, "kernel_shape missing"))?;
    let mut shadow = n.clone();
    shadow.attribute.retain(|a| a.name != "group");
    let g = geometry(&shadow, &xs[2..], &k)?;
    Ok(Pool { xs, ys, k, s: g.strides, dl: g.dilations, p: g.pads })
}

/// y = maxpool(x):  the gradient goes to the first maximum of each window in scan order (as
/// PyTorch), overlapping windows adding up.
/// - Windows that tile the input (kernel = stride, no padding or dilation, sizes divisible):
///   dense ops — the windows laid out as a last axis, ArgMax (the first maximum), a one-hot mask
///   times dy, laid back; both engines run these faster than MaxPool's Indices with a scatter.
/// - Otherwise: the forward node gains its optional Indices output (flat indices into x, the
///   first maximum) and dy is scatter-added there.
fn max_pool(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    if n.attr_i("storage_order", 0) != 0 {
        return Err(node_error(n, "storage_order=1 is not supported"));
    }
    let x = n.input[0].clone();
    if let Some(dx) = max_pool_tiled(n, &d, c)? {
        return Ok(vec![Some(dx)]);
    }
    if c.opset < 16 {
        return Err(node_error(
            n,
            format!("the MaxPool gradient needs opset ≥ 16 (ScatterElements reduction), the model has {}", c.opset),
        ));
    }
    let indices = match n.output.get(1).filter(|s| !s.is_empty()) {
        Some(i) => i.clone(),
        None => {
            let name = c.g.fresh(&format!("{}_indices", n.output[0]));
            let node =
                c.g.nodes.iter_mut().find(|m| m.output.first() == n.output.first()).expect("forward node exists");
            node.output.resize(1, String::new());
            node.output.push(name.clone());
            name
        }
    };
    let flat = c.const_i64(&[-1]);
    let zeros = c.zeros_like(&x);
    let zeros_flat = c.reshape(&zeros, &flat);
    let idx = c.reshape(&indices, &flat);
    let upd = c.reshape(&d, &flat);
    let scattered =
        c.g.add("ScatterElements", &[&zeros_flat, &idx, &upd]).int("axis", 0).string("reduction", "add").output();
    Ok(vec![Some(c.reshape_like(&scattered, &x))])
}

/// The one-hot mask [.., K] of the first maximum along the last axis (K entries).
fn first_max_mask(c: &mut Ctx, v: &str, k: i64) -> String {
    let am = c.g.add("ArgMax", &[v]).int("axis", -1).int("keepdims", 1).int("select_last_index", 0).output();
    let range: Vec<i64> = (0..k).collect();
    let r = c.const_i64(&range);
    let eq = c.op("Equal", &[&am, &r]);
    c.mask(&eq)
}

/// Tiled windows (see `max_pool`): x [N, C, o₁·k₁, …] → [N, C, o₁, k₁, …] → [N, C, o…, k…] →
/// [N, C, o…, K]; dx = onehot(first argmax)·dy, laid back the same way.
fn max_pool_tiled(n: &NodeProto, d: &str, c: &mut Ctx) -> Result<Option<String>> {
    let k = n.attr_ints("kernel_shape").unwrap_or_default();
    let sp = k.len();
    let s = n.attr_ints("strides").unwrap_or(vec![1; sp]);
    let pads = n.attr_ints("pads").unwrap_or_default();
    let dil = n.attr_ints("dilations").unwrap_or_default();
    let auto = n.attr_s("auto_pad").unwrap_or_default();
    if sp == 0
        || k != s
        || pads.iter().any(|&p| p != 0)
        || dil.iter().any(|&v| v != 1)
        || !(auto.is_empty() || auto == "NOTSET" || auto == "VALID")
    {
        return Ok(None);
    }
    let xs = c.shape(&n.input[0])?.clone();
    if xs.len() != sp + 2 {
        return Ok(None);
    }
    let dims: Option<Vec<i64>> = xs[1..].iter().map(|d| d.known()).collect();
    let dims = match dims {
        Some(v) if (0..sp).all(|i| v[1 + i] % k[i] == 0) => v,
        _ => return Ok(None),
    };
    let ch = dims[0];
    let o: Vec<i64> = (0..sp).map(|i| dims[1 + i] / k[i]).collect();
    let kk: i64 = k.iter().product();
    // [N, C, o₁, k₁, o₂, k₂, …]
    let mut split = vec![0, ch];
    for i in 0..sp {
        split.push(o[i]);
        split.push(k[i]);
    }
    // → [N, C, o…, k…]
    let mut perm: Vec<i64> = vec![0, 1];
    perm.extend((0..sp).map(|i| 2 + 2 * i as i64));
    perm.extend((0..sp).map(|i| 3 + 2 * i as i64));
    let mut inv = vec![0i64; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inv[p as usize] = i as i64;
    }
    let mut windows = vec![0, ch];
    windows.extend_from_slice(&o);
    windows.push(kk);
    let mut laid = vec![0, ch];
    laid.extend_from_slice(&o);
    laid.extend_from_slice(&k);
    let split_c = c.const_i64(&split);
    let xw = c.reshape(&n.input[0], &split_c);
    let xt = c.transpose(&xw, &perm);
    let win_c = c.const_i64(&windows);
    let xk = c.reshape(&xt, &win_c);
    let mask = first_max_mask(c, &xk, kk);
    let du = c.unsqueeze(d, &[-1]);
    let g = c.mul(&mask, &du);
    let laid_c = c.const_i64(&laid);
    let gl = c.reshape(&g, &laid_c);
    let gt = c.transpose(&gl, &inv);
    Ok(Some(c.reshape_like(&gt, &n.input[0])))
}

/// y = avgpool(x) = S(x)·r, S the window sums over the real (unpadded) cells, r = 1/divisor per
/// output cell:  dx = Sᵀ(dy·r). Sᵀ is a depthwise ConvTranspose with a kernel of ones (strides,
/// dilations, begin pads as the forward; the end cropped or zero-padded back to the input size,
/// which covers ceil_mode's windows that hang past the end). r is read off the engine's own
/// forward: r = AveragePool(ones)/S(ones), with S(ones) the count of real cells (a constant), so
/// count_include_pad and ceil_mode divide exactly as the forward does.
fn average_pool(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let Pool { xs, ys, k, s, dl, p } = pool(n, c)?;
    let sp = k.len();
    let (ch, xsp, ysp) = (xs[1], &xs[2..], &ys[2..]);
    if dl.iter().any(|&v| v != 1) && c.opset < 19 {
        return Err(node_error(n, "dilations on AveragePool need opset ≥ 19"));
    }
    // counts of real cells per output window, per axis, multiplied out
    let per_axis: Vec<Vec<f32>> = (0..sp)
        .map(|i| {
            (0..ysp[i])
                .map(|o| {
                    (0..k[i]).filter(|&t| (0..xsp[i]).contains(&(o * s[i] - p[i] + t * dl[i]))).count().max(1) as f32
                })
                .collect()
        })
        .collect();
    let mut counts = vec![1.0f32];
    for a in &per_axis {
        counts = counts.iter().flat_map(|&v| a.iter().map(move |&w| v * w)).collect();
    }
    let mut one_dims = vec![1, 1];
    one_dims.extend_from_slice(xsp);
    let ones = c.const_f32(&one_dims, &vec![1.0; xsp.iter().product::<i64>() as usize]);
    let avg_name = same_window(c, n, "AveragePool", &ones, &[]);
    let mut cdims = vec![1, 1];
    cdims.extend_from_slice(ysp);
    let cm = c.const_f32(&cdims, &counts);
    let r = c.div(&avg_name, &cm);
    let dyr = c.mul(&d, &r);
    // Sᵀ: full size (o − 1)·s + dl·(k − 1) + 1 − begin pad, then cropped or padded at the end
    let mut pads = p[..sp].to_vec();
    let mut tail = vec![0i64; sp];
    let mut opad = vec![0i64; sp];
    for i in 0..sp {
        let full = (ysp[i] - 1) * s[i] + dl[i] * (k[i] - 1) + 1 - p[i];
        if full >= xsp[i] {
            pads.push(0);
            tail[i] = full - xsp[i];
        } else if xsp[i] - full < s[i] {
            pads.push(0);
            opad[i] = xsp[i] - full;
        } else {
            pads.push(0);
            tail[i] = full - xsp[i];
        }
    }
    for i in 0..sp {
        if tail[i] > 0 {
            pads[sp + i] = tail[i];
        }
    }
    let mut wdims = vec![ch, 1];
    wdims.extend_from_slice(&k);
    let wt = c.const_f32(&wdims, &vec![1.0; (ch * k.iter().product::<i64>()) as usize]);
    let dx =
        c.g.add("ConvTranspose", &[&dyr, &wt])
            .ints("strides", &s)
            .ints("dilations", &dl)
            .ints("pads", &pads)
            .int("group", ch)
            .ints("output_padding", &opad)
            .output();
    // a shortfall of a stride or more: zeros at the end
    let short: Vec<i64> = tail.iter().map(|&t| if t < 0 { -t } else { 0 }).collect();
    let dx = if short.iter().any(|&v| v > 0) {
        let mut pv = vec![0i64; 2 * (sp + 2)];
        for i in 0..sp {
            pv[sp + 2 + 2 + i] = short[i];
        }
        let pc = c.const_i64(&pv);
        c.op("Pad", &[&dx, &pc])
    } else {
        dx
    };
    Ok(vec![Some(dx)])
}

/// y = mean over the spatial axes:  dx = expand(dy) / (number of cells); the number of cells
/// read from x's shape at run time where the file leaves a spatial size symbolic.
fn global_average_pool(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let x = &n.input[0];
    let xs = c.shape(x)?.clone();
    let area: Option<i64> = xs[2..].iter().map(|d| d.known()).product();
    let e = c.expand_like(&d, x);
    let k = match area {
        Some(area) => c.scalar(1.0 / area as f32),
        None => {
            let s = c.shape_of(x);
            let (start, end) = (c.const_i64(&[2]), c.const_i64(&[xs.len() as i64]));
            let spatial = c.op("Slice", &[&s, &start, &end]);
            let f = c.cast(&spatial, crate::onnx::data_type::FLOAT);
            let cells = c.reduce("ReduceProd", &f, &[0], false);
            let one = c.scalar(1.0);
            c.div(&one, &cells)
        }
    };
    Ok(vec![Some(c.mul(&e, &k))])
}

/// y = max over the spatial axes:  dx = dy at the first maximum of each channel (scan order, as
/// adaptive_max_pool), 0 elsewhere.
fn global_max_pool(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let x = &n.input[0];
    let xs = c.shape(x)?.clone();
    let area: Option<i64> = xs[2..].iter().map(|d| d.known()).product();
    let area = area.ok_or_else(|| node_error(n, "gradient needs the spatial size known"))?;
    let flat = c.const_i64(&[0, 0, area]);
    let x3 = c.reshape(x, &flat);
    let mask = first_max_mask(c, &x3, area);
    let d3s = c.const_i64(&[0, 0, 1]);
    let d3 = c.reshape(&d, &d3s);
    let g = c.mul(&mask, &d3);
    Ok(vec![Some(c.reshape_like(&g, x))])
}

/// LpPool(x; p, kernel, strides, pads, dilations) = (Σ_window |x|ᵖ)^(1/p) with padded cells 0:
/// written out as (K·AveragePool(|x|ᵖ, count_include_pad = 1))^(1/p), K the window size.
fn lp_pool_lower(n: &NodeProto, c: &mut Ctx) -> Result<()> {
    if n.attr_i("ceil_mode", 0) != 0 {
        return Err(node_error(n, "LpPool with ceil_mode=1 is not covered"));
    }
    let p = n.attr_i("p", 2);
    let k = n.attr_ints("kernel_shape").ok_or_else(|| node_error(n, "kernel_shape missing"))?;
    let x = &n.input[0];
    let a = c.op("Abs", &[x]);
    let pe = c.scalar(p as f32);
    let ap = c.g.add("Pow", &[&a, &pe]).output();
    let avg_out = same_window(c, n, "AveragePool", &ap, &["p"]);
    c.g.nodes.last_mut().expect("just added").attribute.push(crate::ir::attr_int("count_include_pad", 1));
    let kk = c.scalar(k.iter().product::<i64>() as f32);
    let sum = c.mul(&avg_out, &kk);
    let inv = c.scalar(1.0 / p as f32);
    let y = c.g.add("Pow", &[&sum, &inv]).output();
    super::replace_output(c, n, 0, &y);
    Ok(())
}

/// A node `op` on `input` with `n`'s attributes (but those in `drop`): the same windows.
fn same_window(c: &mut Ctx, n: &NodeProto, op: &str, input: &str, drop: &[&str]) -> String {
    let mut b = c.g.add(op, &[input]);
    for a in n.attribute.iter().filter(|a| !drop.contains(&a.name.as_str())) {
        b = b.attr(a.clone());
    }
    b.output()
}
