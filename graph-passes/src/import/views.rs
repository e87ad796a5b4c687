//! Tensors the exporters folded into another layout, recognized by the op that reads them, given
//! back their PyTorch names and layouts.
//!
//! - **Recurrent layers**: PyTorch keeps `weight_ih_l{k}`, `weight_hh_l{k}`, `bias_ih_l{k}`,
//!   `bias_hh_l{k}` (`_reverse` for the second direction) with the gates in its order (LSTM: i, f,
//!   g, o; GRU: r, z, n); ONNX's LSTM/GRU/RNN read W [D, G·h, I], R [D, G·h, h], B [D, 2·G·h] with
//!   the gates in ONNX's order (LSTM: i, o, f, c; GRU: z, r, h). Without constant folding the
//!   exporters compute W, R, B from the PyTorch tensors with Slice/Concat/Unsqueeze nodes; with
//!   it (the legacy default, the dynamo optimizer) W, R, B are stored as computed
//!   (`onnx::LSTM_193`, `val_43`). The layer is known from the node (dynamo: its module path in
//!   the metadata; legacy: the scoped node name `/rnn/LSTM_1`, the k-th recurrent node of module
//!   `rnn` being layer k).
//! - **GroupNorm's affine**: the exporters write GroupNorm as InstanceNormalization over groups,
//!   then `Mul(weight [C, 1, 1])`, `Add(bias [C, 1, 1])`; folding stores those reshaped copies
//!   (dynamo: the Mul/Add metadata says aten.group_norm with p_<module>_weight/bias; legacy: the
//!   Mul/Add of a scope that holds an InstanceNormalization).
//!
//! Each such tensor becomes a view — Slice/Concat/Unsqueeze/Reshape nodes tagged `import` — of new
//! initializers in PyTorch's layout under PyTorch's names, so training moves PyTorch's
//! parameters; `fold_views` computes the file's tensors back from the trained values on export.
use std::collections::HashMap;

use crate::ir::{Graph, NodeExt};
use crate::onnx::{data_type as dt, tensor, NodeProto, TensorProto};
use crate::{bail, Result};

use crate::onnx::metadata::{fx_call, legacy_module_path, module_paths};

/// ONNX gate block j holds PyTorch's gate block `ORDER[j]`.
fn gate_order(op: &str) -> &'static [usize] {
    match op {
        "LSTM" => &[0, 3, 1, 2],
        "GRU" => &[1, 0, 2],
        _ => &[0],
    }
}

/// An initializer read directly (not computed by a node), float, that names no PyTorch tensor.
fn folded<'a>(g: &'a Graph, v: &str, dynamo: bool) -> Option<&'a TensorProto> {
    let t = g.initializer(v)?;
    if t.data_type != dt::FLOAT || g.is_graph_input(v) {
        return None;
    }
    let computed = if dynamo { v.starts_with("val_") || v.starts_with("_val_") } else { v.starts_with("onnx::") };
    computed.then_some(t)
}

/// The module path of a node (dynamo metadata or the legacy scoped name).
fn module_of(n: &NodeProto, dynamo: bool) -> Option<String> {
    if dynamo {
        module_paths(n).into_iter().next()
    } else {
        legacy_module_path(&n.name)
    }
}

/// Rows of a [rows, cols] f32 matrix in blocks: the blocks of `src` (block size `b`) reordered
/// so that block j of the result is block `order[j]` of the source (or the inverse).
fn permute_blocks(src: &[f32], cols: usize, b: usize, order: &[usize], inverse: bool) -> Vec<f32> {
    let mut out = vec![0.0f32; src.len()];
    for (j, &o) in order.iter().enumerate() {
        let (from, to) = if inverse { (j, o) } else { (o, j) };
        out[to * b * cols..(to + 1) * b * cols].copy_from_slice(&src[from * b * cols..(from + 1) * b * cols]);
    }
    out
}

/// Builds, tagged `import`, the file's tensor `out` from the PyTorch tensors: per direction d,
/// Concat over the ONNX gate blocks of Slice(torch[d], block rows) (for a bias, the same for
/// bias_ih then bias_hh, concatenated), Unsqueeze(0), then Concat over the directions.
fn gate_view(g: &mut Graph, out: &str, per_dir: &[Vec<String>], order: &[usize], block: i64) {
    let axis0 = g.add_initializer("view_axis0", tensor::from_i64("", &[1], &[0]));
    let mut dirs = Vec::new();
    for parts in per_dir {
        let mut pieces = Vec::new();
        for p in parts {
            for &o in order {
                let (s, e) = (
                    g.add_initializer("view_start", tensor::from_i64("", &[1], &[o as i64 * block])),
                    g.add_initializer("view_end", tensor::from_i64("", &[1], &[(o as i64 + 1) * block])),
                );
                pieces.push(g.add("Slice", &[p, &s, &e, &axis0]).output());
            }
        }
        let refs: Vec<&str> = pieces.iter().map(|s| s.as_str()).collect();
        let cat = g.add("Concat", &refs).int("axis", 0).output();
        dirs.push(g.add("Unsqueeze", &[&cat, &axis0]).output());
    }
    let refs: Vec<&str> = dirs.iter().map(|s| s.as_str()).collect();
    g.add("Concat", &refs).int("axis", 0).exact_outputs(&[out]);
}

/// Gives folded recurrent weights and GroupNorm affines back their PyTorch names and layouts
/// (see the module doc). Returns one line per layer for the import report.
pub fn unfold(g: &mut Graph, dynamo: bool) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    let mut layer_count: HashMap<String, usize> = HashMap::new();
    let outer = g.pass.replace("import".into());
    let r = unfold_inner(g, dynamo, &mut notes, &mut layer_count);
    g.pass = outer;
    r.map(|_| notes)
}

fn unfold_inner(
    g: &mut Graph,
    dynamo: bool,
    notes: &mut Vec<String>,
    layer_count: &mut HashMap<String, usize>,
) -> Result<()> {
    // the folded tensors as stored, before views replace them: one stored tensor may stand for
    // several layers' affines (fresh GroupNorms all hold ones and zeros; the exporters keep one)
    let originals: HashMap<String, TensorProto> = g
        .initializers
        .iter()
        .filter(|t| folded(g, &t.name, dynamo).is_some())
        .map(|t| (t.name.clone(), t.clone()))
        .collect();
    for i in 0..g.nodes.len() {
        let n = g.nodes[i].clone();
        match n.op_type.as_str() {
            "LSTM" | "GRU" | "RNN" => {
                let Some(module) = module_of(&n, dynamo) else { continue };
                let k = layer_count.entry(module.clone()).or_default();
                let layer = *k;
                *k += 1;
                unfold_recurrent(g, &n, &module, layer, dynamo, notes)?;
            }
            "Mul" | "Add" => unfold_group_norm(g, i, &originals, dynamo, notes),
            _ => {}
        }
    }
    Ok(())
}

fn unfold_recurrent(
    g: &mut Graph,
    n: &NodeProto,
    module: &str,
    layer: usize,
    dynamo: bool,
    notes: &mut Vec<String>,
) -> Result<()> {
    let dirs = if n.attr_s("direction").as_deref() == Some("bidirectional") { 2 } else { 1 };
    let reverse_only = n.attr_s("direction").as_deref() == Some("reverse");
    let h = n.attr_i("hidden_size", 0) as usize;
    let order = gate_order(&n.op_type);
    let gates = order.len();
    if h == 0 {
        return Ok(());
    }
    let suffix = |d: usize| if d == 1 || reverse_only { "_reverse" } else { "" };
    // dynamo: the call's tensors must include the names built here
    if dynamo {
        let call = fx_call(n);
        let ph: Vec<String> =
            call.map(|c| c.placeholders().iter().map(|p| p.to_string()).collect()).unwrap_or_default();
        let want = crate::onnx::metadata::sanitize(&format!("{module}.weight_ih_l{layer}{}", suffix(0)));
        if !ph.iter().any(|p| p.get(2..) == Some(want.as_str())) {
            return Ok(());
        }
    }
    let mut done = Vec::new();
    for (slot, what) in [(1usize, "weight_ih"), (2, "weight_hh"), (3, "bias")] {
        let Some(v) = n.input.get(slot).filter(|v| !v.is_empty()).cloned() else { continue };
        let Some(t) = folded(g, &v, dynamo).cloned() else { continue };
        let data = tensor::to_f32(&t)?;
        let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
        let per_dir = data.len() / dirs;
        let mut names_per_dir = Vec::new();
        for d in 0..dirs {
            let chunk = &data[d * per_dir..(d + 1) * per_dir];
            if what == "bias" {
                // [2·G·h]: Wb then Rb, each in ONNX gate order
                if dims != [dirs, 2 * gates * h] {
                    bail!("'{v}' ({}'s B) has shape {dims:?}, expected [{dirs}, {}]", n.describe(), 2 * gates * h);
                }
                let mut names = Vec::new();
                for (half, torch_name) in ["bias_ih", "bias_hh"].iter().enumerate() {
                    let part = &chunk[half * gates * h..(half + 1) * gates * h];
                    let torch = permute_blocks(part, 1, h, order, true);
                    let name = format!("{module}.{torch_name}_l{layer}{}", suffix(d));
                    add_param(g, &name, &[(gates * h) as i64], &torch)?;
                    names.push(name);
                }
                names_per_dir.push(names);
            } else {
                let cols = dims.get(2).copied().unwrap_or(0);
                if dims.len() != 3 || dims[0] != dirs || dims[1] != gates * h {
                    bail!("'{v}' ({}'s {what}) has shape {dims:?}", n.describe());
                }
                let torch = permute_blocks(chunk, cols, h, order, true);
                let name = format!("{module}.{what}_l{layer}{}", suffix(d));
                add_param(g, &name, &[(gates * h) as i64, cols as i64], &torch)?;
                names_per_dir.push(vec![name]);
            }
        }
        g.initializers.retain(|x| x.name != v);
        gate_view(g, &v, &names_per_dir, order, h as i64);
        done.extend(names_per_dir.into_iter().flatten());
    }
    if !done.is_empty() {
        notes.push(format!(
            "{} stored by the exporter in ONNX's gate order (computed at export): trained as PyTorch's {}",
            n.describe(),
            done.join(", ")
        ));
    }
    Ok(())
}

fn add_param(g: &mut Graph, name: &str, dims: &[i64], v: &[f32]) -> Result<()> {
    if g.initializer(name).is_some() || g.nodes.iter().any(|n| n.output.iter().any(|o| o == name)) {
        bail!("'{name}' appears twice: as a tensor in the file and inside a folded recurrent weight");
    }
    g.initializers.push(tensor::from_f32(name, dims, v));
    Ok(())
}

/// The stored tensor a value is, through the legacy exporter's Identity aliases.
fn alias_root<'a>(g: &'a Graph, v: &'a str) -> &'a str {
    let mut v = v;
    for _ in 0..64 {
        match g.nodes.iter().find(|m| m.op_type == "Identity" && m.output.first().map(|o| o.as_str()) == Some(v)) {
            Some(m) => v = m.input[0].as_str(),
            None => break,
        }
    }
    v
}

/// GroupNorm's weight/bias stored [C, 1, …] by folding: read back as PyTorch's [C] through a
/// Reshape view, one parameter per layer even where the file stores one tensor for several
/// (fresh layers' equal ones and zeros: the dynamo optimizer lets both nodes read one
/// initializer, the legacy exporter reads it through Identity aliases).
fn unfold_group_norm(
    g: &mut Graph,
    i: usize,
    originals: &HashMap<String, TensorProto>,
    dynamo: bool,
    notes: &mut Vec<String>,
) {
    let n = g.nodes[i].clone();
    let Some((slot, stored)) = n.input.iter().enumerate().find_map(|(k, v)| {
        let root = alias_root(g, v);
        originals.get(root).map(|t| (k, t.clone()))
    }) else {
        return;
    };
    let t = stored;
    if t.dims.len() < 2 || t.dims[1..].iter().any(|&d| d != 1) {
        return;
    }
    let what = if n.op_type == "Mul" { "weight" } else { "bias" };
    let name = if dynamo {
        let Some(call) = fx_call(&n) else { return };
        if call.op != "group_norm" {
            return;
        }
        // aten.group_norm(input, num_groups, weight, bias, eps, cudnn_enabled)
        let Some(p) = call.placeholder(if what == "weight" { 2 } else { 3 }) else { return };
        let mods = module_paths(&n);
        crate::onnx::metadata::placeholder_name(p, &mods, &[])
    } else {
        let Some(module) = legacy_module_path(&n.name) else { return };
        let has_in = g
            .nodes
            .iter()
            .any(|m| m.op_type == "InstanceNormalization" && legacy_module_path(&m.name).as_deref() == Some(&module));
        if !has_in {
            return;
        }
        format!("{module}.{what}")
    };
    if g.initializer(&name).is_some() {
        return;
    }
    let Ok(data) = tensor::to_f32(&t) else { return };
    let v = n.input[slot].clone();
    g.initializers.push(tensor::from_f32(&name, &[t.dims[0]], &data));
    let shape = g.add_initializer("view_shape", tensor::from_i64("", &[t.dims.len() as i64], &t.dims));
    // the view takes the stored name while it is free (so export writes the trained value back
    // under it); a second layer reading the same stored tensor gets a view of its own
    let still_stored = g.initializer(&t.name).is_some();
    let view = if still_stored && v == t.name {
        g.initializers.retain(|x| x.name != t.name);
        g.add("Reshape", &[&name, &shape]).exact_outputs(&[&v]);
        v.clone()
    } else {
        let out = g.fresh(&format!("{name}.stored"));
        g.add("Reshape", &[&name, &shape]).exact_outputs(&[&out]);
        g.nodes[i].input[slot] = out.clone();
        out
    };
    notes.push(format!(
        "'{}' is GroupNorm's {name} stored as {:?} (computed at export): trained as {name}{}",
        t.name,
        t.dims,
        if view == t.name { String::new() } else { " (the file stores it once for several layers: each is its own parameter)".into() }
    ));
}

/// InstanceNormalization's scale of ones and bias of zeros that the exporters write for GroupNorm
/// (and InstanceNorm without affine): constants of the op's formula, not parameters.
pub fn constant_by_design(n: &NodeProto, slot: usize, t: &TensorProto) -> bool {
    if n.op_type != "InstanceNormalization" || !(slot == 1 || slot == 2) {
        return false;
    }
    let want = if slot == 1 { 1.0 } else { 0.0 };
    tensor::to_f32(t).map(|v| !v.is_empty() && v.iter().all(|&x| x == want)).unwrap_or(false)
}

/// The value of an import-tagged view node whose inputs are all constants, if it is one of the
/// ops views use (Identity, Transpose, Reshape, Unsqueeze, Slice on one axis, Concat).
pub fn evaluate(n: &NodeProto, inputs: &[&TensorProto], out: &str) -> Result<Option<TensorProto>> {
    let ints = |k: usize| -> Result<Vec<i64>> { tensor::to_i64(inputs[k]) };
    let f = |k: usize| -> Result<(Vec<f32>, Vec<i64>)> { Ok((tensor::to_f32(inputs[k])?, inputs[k].dims.clone())) };
    Ok(Some(match n.op_type.as_str() {
        "Identity" => {
            let (v, d) = f(0)?;
            tensor::from_f32(out, &d, &v)
        }
        "Reshape" => {
            let (v, d) = f(0)?;
            let mut shape = ints(1)?;
            for (k, s) in shape.iter_mut().enumerate() {
                if *s == 0 {
                    *s = d[k];
                }
            }
            if let Some(p) = shape.iter().position(|&s| s == -1) {
                let known: i64 = shape.iter().filter(|&&s| s != -1).product();
                shape[p] = v.len() as i64 / known.max(1);
            }
            tensor::from_f32(out, &shape, &v)
        }
        "Unsqueeze" => {
            let (v, mut d) = f(0)?;
            let mut axes = ints(1)?;
            let r = d.len() + axes.len();
            for a in axes.iter_mut() {
                if *a < 0 {
                    *a += r as i64;
                }
            }
            axes.sort_unstable();
            for a in axes {
                d.insert(a as usize, 1);
            }
            tensor::from_f32(out, &d, &v)
        }
        "Slice" => {
            let (v, d) = f(0)?;
            let (s, e) = (ints(1)?, ints(2)?);
            let axes = if inputs.len() > 3 { ints(3)? } else { vec![0] };
            if s.len() != 1 || axes.len() != 1 {
                return Ok(None);
            }
            let a = if axes[0] < 0 { axes[0] + d.len() as i64 } else { axes[0] } as usize;
            let (b, en, _) = crate::shapes::slice_bounds(s[0], e[0], 1, d[a]);
            let inner: i64 = d[a + 1..].iter().product();
            let outer: i64 = d[..a].iter().product();
            let mut w = Vec::new();
            for o in 0..outer {
                let base = o * d[a] * inner;
                w.extend_from_slice(&v[(base + b * inner) as usize..(base + en * inner) as usize]);
            }
            let mut nd = d.clone();
            nd[a] = en - b;
            tensor::from_f32(out, &nd, &w)
        }
        "Concat" => {
            let parts: Vec<(Vec<f32>, Vec<i64>)> = (0..inputs.len()).map(f).collect::<Result<_>>()?;
            let r = parts[0].1.len() as i64;
            if parts.iter().any(|(_, d)| d.len() != r as usize) {
                bail!("{}: Concat of tensors of different ranks", n.describe());
            }
            let a = crate::shapes::axis_in(n, n.attr_i("axis", 0), r as usize)?;
            let outer: i64 = parts[0].1[..a].iter().product();
            let mut w = Vec::new();
            for o in 0..outer {
                for (v, d) in &parts {
                    let chunk: i64 = d[a..].iter().product();
                    w.extend_from_slice(&v[(o * chunk) as usize..((o + 1) * chunk) as usize]);
                }
            }
            let mut nd = parts[0].1.clone();
            nd[a] = parts.iter().map(|(_, d)| d[a]).sum();
            tensor::from_f32(out, &nd, &w)
        }
        _ => return Ok(None),
    }))
}
