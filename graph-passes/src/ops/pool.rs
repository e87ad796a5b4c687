//! MaxPool, AveragePool, LpPool, GlobalAveragePool, GlobalMaxPool.
use super::conv::window_shape;
use super::{dy, op, Family, Gradient as G, OpDef};
use crate::autodiff::{Ctx, Grads};
use crate::ir::{node_error, Graph, NodeExt};
use crate::onnx::NodeProto;
use crate::shapes::{input_type, set, Dim, Shapes};
use crate::Result;

pub const FAMILY: Family = Family { name: "pool", ops };

fn ops() -> Vec<OpDef> {
    vec![
        op("MaxPool", "12+", window_shape, G::Rule(max_pool))
            .notes("2-D; ties: the first maximum in scan order, as PyTorch; overlapping windows add up"),
        op("AveragePool", "11+", window_shape, G::Rule(average_pool)).notes("2-D; count_include_pad both ways"),
        op("LpPool", "11+", window_shape, G::Missing("no gradient rule yet")),
        op("GlobalAveragePool", "1+", global_shape, G::Rule(global_average_pool)),
        op("GlobalMaxPool", "1+", global_shape, G::Missing("no gradient rule yet")),
    ]
}

fn global_shape(_: &Graph, n: &NodeProto, s: &mut Shapes) -> Result<()> {
    let out0 = n.output.first().cloned().unwrap_or_default();
    let x = input_type(s, n, 0)?;
    let shape = x
        .shape
        .map(|xs| xs.iter().enumerate().map(|(i, d)| if i < 2 { d.clone() } else { Dim::Known(1) }).collect());
    set(s, &out0, x.dtype, shape);
    Ok(())
}

/// y = maxpool(x):  dx = scatter-add of dy at the argmax indices. The forward node gains its
/// optional Indices output (flat indices into x); overlapping windows repeat indices, hence "add".
fn max_pool(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    if c.opset < 16 {
        return Err(node_error(
            n,
            format!("the MaxPool gradient needs opset ≥ 16 (ScatterElements reduction), the model has {}", c.opset),
        ));
    }
    if n.attr_i("storage_order", 0) != 0 {
        return Err(node_error(n, "storage_order=1 is not supported"));
    }
    let x = n.input[0].clone();
    if let Some(dx) = max_pool_tiled(n, &d, c)? {
        return Ok(vec![Some(dx)]);
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

/// Non-overlapping windows (kernel = stride, no padding, sizes divisible): the gradient goes to
/// the cells equal to their window's maximum, shared when several are (a subgradient; PyTorch
/// gives it to one of them, and after a ReLU tied zeros get nothing either way). Dense 4-D ops
/// (nearest Resize, Equal, AveragePool) run faster on both engines than MaxPool's Indices
/// output with a scatter.
fn max_pool_tiled(n: &NodeProto, d: &str, c: &mut Ctx) -> Result<Option<String>> {
    let k = n.attr_ints("kernel_shape").unwrap_or_default();
    let s = n.attr_ints("strides").unwrap_or(vec![1; k.len()]);
    let pads = n.attr_ints("pads").unwrap_or_default();
    let dil = n.attr_ints("dilations").unwrap_or_default();
    let auto = n.attr_s("auto_pad").unwrap_or_default();
    if k.len() != 2
        || k != s
        || pads.iter().any(|&p| p != 0)
        || dil.iter().any(|&v| v != 1)
        || !(auto.is_empty() || auto == "NOTSET")
    {
        return Ok(None);
    }
    let xs = c.shape(&n.input[0])?.clone();
    let dims: Option<Vec<i64>> = xs[2..].iter().map(|d| d.known()).collect();
    match dims {
        Some(hw) if hw[0] % k[0] == 0 && hw[1] % k[1] == 0 => {}
        _ => return Ok(None),
    }
    let scales = c.const_f32(&[4], &[1.0, 1.0, k[0] as f32, k[1] as f32]);
    let up = |c: &mut Ctx, v: &str| -> String {
        c.g.add("Resize", &[v, "", &scales])
            .string("mode", "nearest")
            .string("coordinate_transformation_mode", "asymmetric")
            .string("nearest_mode", "floor")
            .output()
    };
    let y_up = up(c, &n.output[0]);
    let eq = c.op("Equal", &[&n.input[0], &y_up]);
    let mask = c.mask(&eq);
    let avg = c.g.add("AveragePool", &[&mask]).ints("kernel_shape", &k).ints("strides", &k).output();
    let area = c.scalar((k[0] * k[1]) as f32);
    let count = c.mul(&avg, &area);
    let share = c.div(d, &count);
    let share_up = up(c, &share);
    Ok(Some(c.mul(&mask, &share_up)))
}

fn pool_geometry(n: &NodeProto, c: &Ctx) -> Result<(Vec<i64>, Vec<i64>, Vec<i64>, Vec<i64>, Vec<i64>)> {
    let xs = c.shape(&n.input[0])?.clone();
    let ys = c.shape(&n.output[0])?.clone();
    let dims = |s: &crate::shapes::Shape| -> Option<Vec<i64>> { s[1..].iter().map(|d| d.known()).collect() };
    let (xd, yd) = match (dims(&xs), dims(&ys)) {
        (Some(a), Some(b)) if a.len() == 3 => (a, b),
        _ => return Err(node_error(n, "gradient needs a 2-D pool with known channels and size")),
    };
    let k = n.attr_ints("kernel_shape").ok_or_else(|| node_error(n, "kernel_shape missing"))?;
    let s = n.attr_ints("strides").unwrap_or(vec![1, 1]);
    let p = n.attr_ints("pads").unwrap_or(vec![0; 4]);
    if n.attr_s("auto_pad").map(|a| a != "NOTSET" && !a.is_empty()).unwrap_or(false) {
        return Err(node_error(n, "auto_pad is not supported for the AveragePool gradient; export with explicit pads"));
    }
    Ok((xd, yd, k, s, p))
}

/// y = avgpool(x):  dx = depthwise ConvTranspose of dy with weights 1/(kh·kw); with
/// count_include_pad=0, dy is first divided by each window's count of real (unpadded) cells.
fn average_pool(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let (xd, yd, k, s, p) = pool_geometry(n, c)?;
    let (ch, h, w, ho, wo) = (xd[0], xd[1], xd[2], yd[1], yd[2]);
    let include_pad = n.attr_i("count_include_pad", 0) != 0 || p.iter().all(|&v| v == 0);
    let area = (k[0] * k[1]) as f32;
    let (dy, weight) = if include_pad {
        (d, vec![1.0 / area; (ch * k[0] * k[1]) as usize])
    } else {
        // count of unpadded cells in each output window
        let mut counts = Vec::with_capacity((ho * wo) as usize);
        for i in 0..ho {
            for j in 0..wo {
                let rows = (i * s[0] - p[0]..i * s[0] - p[0] + k[0]).filter(|&r| r >= 0 && r < h).count();
                let cols = (j * s[1] - p[1]..j * s[1] - p[1] + k[1]).filter(|&q| q >= 0 && q < w).count();
                counts.push((rows * cols).max(1) as f32);
            }
        }
        let cm = c.const_f32(&[1, 1, ho, wo], &counts);
        (c.div(&d, &cm), vec![1.0; (ch * k[0] * k[1]) as usize])
    };
    let wt = c.const_f32(&[ch, 1, k[0], k[1]], &weight);
    let opad: Vec<i64> = (0..2)
        .map(|i| {
            let (hin, hout) = if i == 0 { (h, ho) } else { (w, wo) };
            hin - ((hout - 1) * s[i] - p[i] - p[i + 2] + k[i])
        })
        .collect();
    if opad.iter().zip(&s).any(|(&o, &st)| o < 0 || o >= st.max(1)) {
        return Err(node_error(n, format!("cannot express the gradient (output_padding {opad:?}; ceil_mode?)")));
    }
    let dx =
        c.g.add("ConvTranspose", &[&dy, &wt])
            .ints("strides", &s)
            .ints("pads", &p)
            .int("group", ch)
            .ints("output_padding", &opad)
            .output();
    Ok(vec![Some(dx)])
}

/// y = mean over H, W:  dx = expand(dy) / (H·W)
fn global_average_pool(n: &NodeProto, dys: &[Option<String>], _: &[bool], c: &mut Ctx) -> Result<Grads> {
    let d = dy(n, dys)?;
    let x = &n.input[0];
    let xs = c.shape(x)?.clone();
    let area: Option<i64> = xs[2..].iter().map(|d| d.known()).product();
    let area = area.ok_or_else(|| node_error(n, "gradient needs the spatial size known"))?;
    let e = c.expand_like(&d, x);
    let k = c.scalar(1.0 / area as f32);
    Ok(vec![Some(c.mul(&e, &k))])
}
