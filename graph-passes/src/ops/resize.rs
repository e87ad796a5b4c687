//! Resize (ONNX Resize-13/18/19) and Upsample-9. Every Resize mode is linear in x and
//! separable: along each resized axis, y = M·x with a constant matrix M [out, in] built here
//! from the interpolation weights exactly as the ONNX reference implementation defines them
//! (neighbours taken from the edge-padded input, `exclude_outside` renormalising, `antialias`
//! widening the filter when downsampling). The forward stays the engine's Resize; the gradient
//! is Mᵀ applied axis by axis (`along_axis`), which scatters and adds each output's gradient to
//! the input cells it was interpolated from.
//!
//! Covered: mode nearest (each nearest_mode), linear, cubic (cubic_coeff_a, exclude_outside);
//! coordinate_transformation_mode half_pixel, half_pixel_symmetric, pytorch_half_pixel,
//! align_corners, asymmetric; scales or sizes (constant); axes (opset 18); antialias.
//! Not covered (refused with the reason): tf_crop_and_resize, keep_aspect_ratio_policy other
//! than stretch, non-constant scales/sizes.
use super::{dy, op, Family, Gradient as G, OpDef};
use crate::ctx::{Ctx, Grads};
use crate::ir::{node_error, Graph, NodeExt};
use crate::onnx::{tensor, NodeProto};
use crate::shapes::{input_type, ints_of, set, Dim, Shapes};
use crate::Result;

pub const FAMILY: Family = Family { name: "resize", ops };

fn ops() -> Vec<OpDef> {
    vec![
        op("Resize", "13+", resize_shape, G::Rule(resize)).notes(
            "nearest (every nearest_mode), linear, cubic; every coordinate_transformation_mode but tf_crop_and_resize; constant scales or sizes; axes; antialias; exclude_outside",
        ),
        op("Upsample", "9", resize_shape, G::Rule(resize))
            .notes("nearest and linear (asymmetric coordinates)")
            .no_tract("tract 0.23 has no Upsample (deprecated since opset 10; exporters write Resize)"),
    ]
}

/// What a Resize/Upsample node does along each axis: (input size, output size, scale).
struct Plan {
    axes: Vec<(usize, i64, i64, f64)>,
}

/// The float values of a constant input (scales).
fn floats(g: &Graph, _: &Shapes, name: &str) -> Option<Vec<f64>> {
    crate::ir::constant_floats(g, name)
}

/// Input sizes, output sizes and scales per axis, from constant scales or sizes (with the
/// opset-18 `axes`). `dims` are x's dims (None where symbolic).
fn plan(g: &Graph, s: &Shapes, n: &NodeProto, dims: &[Option<i64>]) -> std::result::Result<Plan, String> {
    let r = dims.len();
    let upsample = n.op_type == "Upsample";
    let (scales_in, sizes_in) = if upsample {
        (n.input.get(1).filter(|v| !v.is_empty()), None)
    } else {
        (n.input.get(2).filter(|v| !v.is_empty()), n.input.get(3).filter(|v| !v.is_empty()))
    };
    let axes: Vec<usize> = match n.attr_ints("axes") {
        Some(a) => crate::shapes::axes_in(n, &a, r).map_err(|e| e.0)?,
        None => (0..r).collect(),
    };
    let policy = n.attr_s("keep_aspect_ratio_policy").unwrap_or_else(|| "stretch".into());
    let mut scale = vec![1.0f64; r];
    let mut out: Vec<Option<i64>> = dims.to_vec();
    match (sizes_in, scales_in) {
        (Some(sz), _) => {
            if policy != "stretch" {
                return Err(format!("keep_aspect_ratio_policy '{policy}' is not covered (stretch is)"));
            }
            let v = ints_of(g, s, sz).ok_or("sizes must be a constant")?;
            if v.len() != axes.len() {
                return Err("sizes do not match the axes".into());
            }
            for (k, &a) in axes.iter().enumerate() {
                out[a] = Some(v[k]);
                scale[a] = match dims[a] {
                    Some(d) => v[k] as f64 / d as f64,
                    None if v[k] == 1 => 1.0,
                    None => return Err(format!("axis {a} is resized but its size is symbolic")),
                };
            }
        }
        (None, Some(sc)) => {
            let v = floats(g, s, sc).ok_or("scales must be a constant")?;
            if v.len() != axes.len() {
                return Err("scales do not match the axes".into());
            }
            for (k, &a) in axes.iter().enumerate() {
                scale[a] = v[k];
                // floor(in·scale) in float32, as the engines compute it (5 × 1.4f32 = 7)
                out[a] = match dims[a] {
                    Some(d) => Some((d as f32 * v[k] as f32).floor() as i64),
                    None if v[k] == 1.0 => None,
                    None => return Err(format!("axis {a} is resized but its size is symbolic")),
                };
            }
        }
        (None, None) => return Err("neither scales nor sizes given".into()),
    }
    let mut plan = Plan { axes: Vec::new() };
    for a in 0..r {
        if let (Some(i), Some(o)) = (dims[a], out[a]) {
            plan.axes.push((a, i, o, scale[a]));
        }
    }
    Ok(plan)
}

fn resize_shape(g: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let x = input_type(s, n, 0)?;
    let shape = match &x.shape {
        Some(xs) => {
            let dims: Vec<Option<i64>> = xs.iter().map(|d| d.known()).collect();
            match plan(g, s, n, &dims) {
                Ok(p) => {
                    let mut out = xs.clone();
                    for &(a, _, o, _) in &p.axes {
                        out[a] = Dim::Known(o);
                    }
                    Some(out)
                }
                Err(_) => Some((0..xs.len()).map(|_| s.fresh_dim("resize")).collect()),
            }
        }
        None => None,
    };
    set(s, &n.output[0], x.dtype, shape);
    Ok(())
}

/// How one axis is interpolated.
struct Interp {
    mode: String,
    ctm: String,
    nearest: String,
    cubic_a: f64,
    exclude_outside: bool,
    antialias: bool,
}

/// The source coordinate of output cell x (ONNX Resize §coordinate_transformation_mode).
fn source_coordinate(ctm: &str, x: f64, scale: f64, input: i64, output: i64) -> std::result::Result<f64, String> {
    let out_w = scale * input as f64;
    Ok(match ctm {
        "half_pixel" => (x + 0.5) / scale - 0.5,
        "pytorch_half_pixel" => {
            if output == 1 {
                -0.5
            } else {
                (x + 0.5) / scale - 0.5
            }
        }
        // the output length, as PyTorch and ONNX Runtime divide (the reference implementation
        // and tract take in·scale; `canonical_form` gives such nodes sizes so that all agree)
        "align_corners" => {
            if output == 1 {
                0.0
            } else {
                x * (input - 1) as f64 / (output - 1) as f64
            }
        }
        "asymmetric" => x / scale,
        "half_pixel_symmetric" => {
            let adjustment = output as f64 / out_w;
            let center = input as f64 / 2.0;
            center * (1.0 - adjustment) + (x + 0.5) / scale - 0.5
        }
        other => return Err(format!("coordinate_transformation_mode '{other}' is not covered")),
    })
}

/// The interpolation weights of one output cell: ratio in (0, 1] (1 at integer coordinates).
fn coefficients(ip: &Interp, ratio: f64, scale: f64) -> Vec<f64> {
    let a = ip.cubic_a;
    let down = ip.antialias && scale < 1.0;
    match ip.mode.as_str() {
        "nearest" => {
            if ratio == 1.0 {
                return vec![0.0, 1.0];
            }
            let up = match ip.nearest.as_str() {
                "round_prefer_ceil" => ratio >= 0.5,
                "floor" => false,
                "ceil" => true,
                _ => ratio > 0.5,
            };
            if up {
                vec![0.0, 1.0]
            } else {
                vec![1.0, 0.0]
            }
        }
        "linear" if down => {
            let start = (-1.0 / scale).floor() as i64 + 1;
            let footprint = 2 - 2 * start;
            let c: Vec<f64> = (start..start + footprint)
                .map(|i| (1.0 - ((i as f64 - ratio) * scale).abs()).clamp(0.0, 1.0))
                .collect();
            let sum: f64 = c.iter().sum();
            c.iter().map(|v| v / sum).collect()
        }
        "linear" => vec![1.0 - ratio, ratio],
        _ if down => {
            let k = |x: f64| {
                let x = x.abs();
                if x <= 1.0 {
                    (a + 2.0) * x * x * x - (a + 3.0) * x * x + 1.0
                } else if x < 2.0 {
                    a * x * x * x - 5.0 * a * x * x + 8.0 * a * x - 4.0 * a
                } else {
                    0.0
                }
            };
            let start = (-2.0 / scale).floor() as i64 + 1;
            let c: Vec<f64> = (start..2 - start).map(|i| k(scale * (i as f64 - ratio))).collect();
            let sum: f64 = c.iter().sum();
            c.iter().map(|v| v / sum).collect()
        }
        _ => {
            let r = ratio;
            vec![
                ((a * (r + 1.0) - 5.0 * a) * (r + 1.0) + 8.0 * a) * (r + 1.0) - 4.0 * a,
                ((a + 2.0) * r - (a + 3.0)) * r * r + 1.0,
                ((a + 2.0) * (1.0 - r) - (a + 3.0)) * (1.0 - r) * (1.0 - r) + 1.0,
                ((a * ((1.0 - r) + 1.0) - 5.0 * a) * ((1.0 - r) + 1.0) + 8.0 * a) * ((1.0 - r) + 1.0) - 4.0 * a,
            ]
        }
    }
}

/// M [out, in] of one axis (row-major): row x holds the weights output cell x gives the input
/// cells. Neighbours are the n cells nearest the source coordinate in the edge-padded input
/// (ties to the smaller index), clamped into the input.
fn matrix(ip: &Interp, input: i64, output: i64, scale: f64) -> std::result::Result<Vec<f32>, String> {
    let mut m = vec![0.0f32; (output * input) as usize];
    for x in 0..output {
        let xo = source_coordinate(&ip.ctm, x as f64, scale, input, output)?;
        let ratio = if xo == xo.floor() { 1.0 } else { xo - xo.floor() };
        let mut c = coefficients(ip, ratio, scale);
        let nn = c.len() as i64;
        let pad = (nn + 1) / 2;
        let padded_len = input + 2 * pad;
        let center = xo + pad as f64;
        // the n nearest padded indexes, ties to the smaller
        let lo = (center.floor() as i64 - nn).max(0);
        let hi = (center.floor() as i64 + nn + 1).min(padded_len);
        let mut cand: Vec<i64> = (lo..hi).collect();
        cand.sort_by(|&p, &q| {
            let (dp, dq) = ((center - p as f64).abs(), (center - q as f64).abs());
            dp.partial_cmp(&dq).unwrap_or(std::cmp::Ordering::Equal).then(p.cmp(&q))
        });
        let mut idx: Vec<i64> = cand.into_iter().take(nn as usize).collect();
        idx.sort_unstable();
        let orig: Vec<i64> = idx.iter().map(|&i| i - pad).collect();
        if ip.exclude_outside {
            for (k, &o) in orig.iter().enumerate() {
                if o < 0 || o >= input {
                    c[k] = 0.0;
                }
            }
            let sum: f64 = c.iter().sum();
            if sum != 0.0 {
                c.iter_mut().for_each(|v| *v /= sum);
            }
        }
        for (k, &o) in orig.iter().enumerate() {
            let src = o.clamp(0, input - 1);
            m[(x * input + src) as usize] += c[k] as f32;
        }
    }
    Ok(m)
}

/// y = resize(x) = (⊗ₐ Mₐ) x:  dx = Mₐᵀ dy along each resized axis.
fn resize(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let x = &n.input[0];
    let xs = c.shape(x)?.clone();
    let dims: Vec<Option<i64>> = xs.iter().map(|d| d.known()).collect();
    let p = plan(c.g, &c.shapes, n, &dims).map_err(|e| node_error(n, e))?;
    let upsample = n.op_type == "Upsample";
    let mode = n.attr_s("mode").unwrap_or_else(|| "nearest".into());
    let ip = Interp {
        ctm: if upsample {
            "asymmetric".into()
        } else {
            n.attr_s("coordinate_transformation_mode").unwrap_or_else(|| "half_pixel".into())
        },
        nearest: if upsample {
            "floor".into()
        } else {
            n.attr_s("nearest_mode").unwrap_or_else(|| "round_prefer_floor".into())
        },
        cubic_a: n.attr_f("cubic_coeff_a", -0.75) as f64,
        exclude_outside: n.attr_i("exclude_outside", 0) != 0,
        antialias: n.attr_i("antialias", 0) != 0,
        mode: if upsample && mode == "bilinear" { "linear".into() } else { mode },
    };
    if !matches!(ip.mode.as_str(), "nearest" | "linear" | "cubic") {
        return Err(node_error(n, format!("mode '{}' is not ONNX's", ip.mode)));
    }
    let r = xs.len();
    let mut mats = Vec::new();
    for &(a, input, output, scale) in &p.axes {
        if input == output && scale == 1.0 {
            continue;
        }
        mats.push((a, input, output, matrix(&ip, input, output, scale).map_err(|e| node_error(n, e))?));
    }
    // nearest upsampling by whole factors that copies each cell into a block (PyTorch's
    // nn.Upsample(mode="nearest")): dx = the sum over each block of dy, a strided AveragePool
    // times the block size — far cheaper than the matrices
    let blocks: Option<Vec<(usize, i64)>> = mats
        .iter()
        .map(|(a, input, output, m)| {
            let f = output / input;
            let block = *a >= 2
                && *output == input * f
                && (0..*output)
                    .all(|x| (0..*input).all(|i| m[(x * input + i) as usize] == if i == x / f { 1.0 } else { 0.0 }));
            block.then_some((*a, f))
        })
        .collect();
    if let Some(blocks) = blocks.filter(|b| !b.is_empty() && r >= 3) {
        let mut k = vec![1i64; r - 2];
        for &(a, f) in &blocks {
            k[a - 2] = f;
        }
        let pooled = c.g.add("AveragePool", &[&d]).ints("kernel_shape", &k).ints("strides", &k).output();
        let area = c.scalar(k.iter().product::<i64>() as f32);
        let mut out = vec![Some(c.mul(&pooled, &area))];
        out.resize(n.input.len(), None);
        return Ok(out);
    }
    let mut g = d;
    for (a, input, output, m) in &mats {
        g = super::along_axis(c, &g, *a, r, (*output, *input), m, true);
    }
    let mut out = vec![Some(g)];
    out.resize(n.input.len(), None);
    Ok(out)
}

/// Resize with align_corners and scales where in·scale is not a whole number: PyTorch and ONNX
/// Runtime map coordinates with the output length, tract with in·scale. Given by sizes instead
/// (the same output size), every engine computes PyTorch's values. Returns whether it changed
/// the node.
pub(crate) fn canonical_form(g: &mut Graph, s: &Shapes, idx: usize) -> bool {
    let n = &g.nodes[idx];
    if n.op_type != "Resize"
        || n.attr_s("coordinate_transformation_mode").as_deref() != Some("align_corners")
        || n.input.get(3).is_some_and(|v| !v.is_empty())
    {
        return false;
    }
    let Some(xs) = s.shape(&n.input[0]) else { return false };
    let dims: Vec<Option<i64>> = xs.iter().map(|d| d.known()).collect();
    let Ok(p) = plan(g, s, n, &dims) else { return false };
    if p.axes.iter().all(|&(_, i, o, sc)| (i as f64 * sc - o as f64).abs() < 1e-9) {
        return false;
    }
    let r = dims.len();
    let axes: Vec<usize> = match n.attr_ints("axes") {
        Some(a) => match crate::shapes::axes_in(n, &a, r) {
            Ok(a) => a,
            Err(_) => return false,
        },
        None => (0..r).collect(),
    };
    let mut sizes = Vec::new();
    for a in axes {
        match p.axes.iter().find(|t| t.0 == a) {
            Some(&(_, _, o, _)) => sizes.push(o),
            None => return false,
        }
    }
    let name = g.add_initializer("resize_sizes", tensor::from_i64("", &[sizes.len() as i64], &sizes));
    let n = &mut g.nodes[idx];
    n.input.resize(4, String::new());
    n.input[2] = String::new();
    n.input[3] = name;
    true
}
