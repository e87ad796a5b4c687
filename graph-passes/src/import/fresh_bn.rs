//! Fresh BatchNorm layers the dynamo exporter folded into convolutions (Conv, ConvTranspose) and
//! linear layers (Gemm), given back.
//!
//! `torch.onnx.export(model, (x,), path)` (dynamo, its optimizer on) folds every eval-mode
//! BatchNorm into the convolution before it (onnxscript `FuseBatchNormIntoConv`):
//! W′ = W·γ/√(σ² + ε), b′ = (b − μ)·γ/√(σ² + ε) + β. A trained model's γ, β, μ, σ² are then gone.
//! But people export a freshly built model to train it, and PyTorch's BatchNorm starts at γ = 1,
//! β = 0, μ = 0, σ² = 1: then W′ = W/√(1 + ε) and b′ = b/√(1 + ε), which invert exactly. The fused
//! node's metadata still records the BatchNorm call (`aten._native_batch_norm_legit_no_training(
//! conv, p_bn1_weight, p_bn1_bias, b_bn1_running_mean, b_bn1_running_var, momentum, eps)`): its
//! parameter and buffer names, momentum and ε.
//!
//! The file cannot prove the initial state: W′ = W·γ/√(σ² + ε) looks the same for any γ and σ²
//! (a weight drawn around 1, as DCGAN initializes BatchNorm, folds like a weight of 1), so only the
//! user's word restores a layer (`--assume-fresh-batchnorm`: the model was built and never
//! trained, its BatchNorm layers at PyTorch's defaults). What the file can show is used to refuse
//! the word where it is wrong: a convolution without bias has the folded bias
//! b′ = β − μ·γ/√(σ² + ε), exactly 0 at the initial state (the optimizer then removes it), so a
//! nonzero bias the fold made up (named `val_…`) shows a trained layer; a γ of 0 (torchvision's
//! `zero_init_residual`) shows as a filter of zeros. Neither is restored, and import refuses them.
use crate::onnx::metadata::{self, fx_call, module_paths, placeholder_name, FxArg};
use crate::ir::{Graph, NodeExt};
use crate::onnx::tensor;
use crate::Result;

/// What was restored, and which folded layers could be restored on the user's word.
#[derive(Default)]
pub struct Restored {
    /// BatchNorm layers given back (PyTorch module paths).
    pub layers: Vec<String>,
    /// Folded layers the file does not show to be trained: restored with --assume-fresh-batchnorm.
    pub unproven: Vec<String>,
    /// Folded layers the word cannot give back, and why (the file shows a trained layer, or a
    /// form that has no fresh inverse).
    pub cannot: Vec<(String, &'static str)>,
}

/// Gives back the folded BatchNorm layers, with `assume` (the user's word that the model is
/// freshly built), where the file does not show them trained.
pub fn restore_fresh_batch_norms(g: &mut Graph, assume: bool) -> Result<Restored> {
    let mut out = Restored::default();
    let known: Vec<String> = g.initializers.iter().map(|t| t.name.clone()).collect();
    let known_refs: Vec<&str> = known.iter().map(|s| s.as_str()).collect();
    let mut i = 0;
    while i < g.nodes.len() {
        let n = &g.nodes[i];
        let fused = metadata::fused_batch_norm(n);
        let call = fx_call(n).filter(|c| c.op.contains("batch_norm"));
        let (Some(call), true) = (call, fused) else {
            i += 1;
            continue;
        };
        let layer = module_paths(n).first().cloned().unwrap_or_else(|| n.name.clone());
        let literal = |k: usize| match call.args.get(k) {
            Some(FxArg::Literal(v)) => v.trim().parse::<f32>().ok(),
            _ => None,
        };
        let names: Option<Vec<String>> = (1..5)
            .map(|k| call.placeholder(k).map(|p| placeholder_name(p, &module_paths(n), &known_refs)))
            .collect();
        let (Some(names), Some(momentum), Some(eps)) = (names, literal(5), literal(6)) else {
            if call.placeholder(3).is_some() && (call.placeholder(1).is_none() || call.placeholder(2).is_none()) {
                out.cannot.push((layer, "affine=False, no weight and bias for the fold to have divided"));
            }
            i += 1;
            continue;
        };
        let Some(w) = n.input.get(1).and_then(|w| g.initializer(w)).cloned() else {
            i += 1;
            continue;
        };
        // the weight's output-channel axis: Conv [C_out, C_in/g, k…], ConvTranspose (one group)
        // [C_in, C_out, k…], Gemm [C_out, C_in] with transB, else [C_in, C_out]
        let axis = match n.op_type.as_str() {
            "ConvTranspose" if n.attr_i("group", 1) != 1 => {
                out.cannot.push((layer, "a grouped ConvTranspose"));
                i += 1;
                continue;
            }
            "ConvTranspose" => 1,
            "Gemm" if n.attr_i("transB", 0) == 0 => 1,
            _ => 0,
        };
        // a filter of zeros is a BatchNorm weight of 0 (torchvision's zero_init_residual), not
        // PyTorch's initial 1: never restored (no random initialization gives it)
        let wv = tensor::to_f32(&w)?;
        if w.dims.len() <= axis || w.dims[axis] <= 0 || zero_channel(&wv, &w.dims, axis) {
            out.cannot.push((layer, "a filter of zeros, a BatchNorm weight of 0 (zero_init_residual), not PyTorch's initial 1"));
            i += 1;
            continue;
        }
        let bias = n.input.get(2).filter(|b| !b.is_empty()).and_then(|b| g.initializer(b)).cloned();
        let proven = match &bias {
            None => true,
            Some(b) => tensor::to_f32(b)?.iter().all(|&v| v == 0.0),
        };
        // a bias under a name the exporter made up is the fold's alone (the convolution has none
        // in PyTorch): nonzero, it shows the layer was not fresh
        let own_bias = bias.as_ref().map(|b| b.name.ends_with(".bias") && !b.name.starts_with("val_")).unwrap_or(false);
        if !proven && !own_bias {
            out.cannot.push((layer, "a nonzero bias the fold made up, which a fresh layer does not give: a trained model"));
            i += 1;
            continue;
        }
        // the file cannot show a weight of 1 and a running variance of 1 (a weight drawn around
        // 1, DCGAN's init, folds the same way): only the user's word restores a layer
        if !assume {
            out.unproven.push(layer);
            i += 1;
            continue;
        }
        // W = W′·√(1 + ε), b = b′·√(1 + ε); γ = 1, β = 0, μ = 0, σ² = 1
        let s = (1.0 + eps as f64).sqrt();
        let scale = |t: &crate::onnx::TensorProto| -> Result<crate::onnx::TensorProto> {
            let v: Vec<f32> = tensor::to_f32(t)?.iter().map(|&x| (x as f64 * s) as f32).collect();
            Ok(tensor::from_f32(&t.name, &t.dims, &v))
        };
        let channels = w.dims[axis];
        let mut new = vec![scale(&w)?];
        // the convolution's own bias (PyTorch's name) stays its parameter, zero or not
        match &bias {
            Some(b) if own_bias => new.push(scale(b)?),
            _ => {}
        }
        let c = channels.max(0) as usize;
        for (name, value) in names.iter().zip([1.0f32, 0.0, 0.0, 1.0]) {
            if g.initializer(name).is_none() {
                new.push(tensor::from_f32(name, &[channels], &vec![value; c]));
            }
        }
        for t in new {
            g.initializers.retain(|x| x.name != t.name);
            g.initializers.push(t);
        }
        // the convolution without the folded bias (a zero one: the convolution had none), the
        // BatchNorm after it with the call's metadata (its tensors are named from it)
        let out_name = g.nodes[i].output[0].clone();
        let conv_out = g.fresh(&format!("{out_name}_conv"));
        let n = &mut g.nodes[i];
        if !own_bias {
            n.input.truncate(2);
        }
        let meta = std::mem::take(&mut n.metadata_props);
        n.metadata_props =
            meta.iter().filter(|p| p.key != metadata::RULE_NAME && p.key != metadata::FX_NODE).cloned().collect();
        // the convolution's own call, as an unfolded export records it: its tensors keep the
        // file's names (conv1.weight), which are PyTorch's
        let arg = |k: usize| match n.input.get(k).filter(|x| !x.is_empty()) {
            Some(x) => format!("%p_{}", metadata::sanitize(x)),
            None => "None".to_string(),
        };
        let aten = if n.op_type == "Gemm" { "linear" } else { "convolution" };
        let fx = format!(
            "%{aten} : [num_users=1] = call_function[target=torch.ops.aten.{aten}.default](args = (%x, {}, {}), kwargs = {{}})",
            arg(1),
            arg(2)
        );
        n.metadata_props.push(crate::onnx::StringStringEntryProto { key: metadata::FX_NODE.into(), value: fx });
        n.output[0] = conv_out.clone();
        let bn_name = format!("{}_batchnorm", n.name);
        let inputs: Vec<&str> = std::iter::once(conv_out.as_str()).chain(names.iter().map(|s| s.as_str())).collect();
        let mut b = g.add("BatchNormalization", &inputs).name(&bn_name).float("epsilon", eps).float("momentum", 1.0 - momentum);
        for p in meta.iter().filter(|p| p.key != metadata::RULE_NAME) {
            b = b.meta(&p.key, &p.value);
        }
        b.exact_outputs(&[&out_name]);
        // BatchNormalization was appended: move it right after its convolution
        let bn = g.nodes.pop().expect("the node just added");
        g.nodes.insert(i + 1, bn);
        if !out.layers.contains(&layer) {
            out.layers.push(layer);
        }
        i += 2;
    }
    Ok(out)
}

/// Whether some output channel (index along `axis`) of a weight of `dims` is all zeros.
fn zero_channel(w: &[f32], dims: &[i64], axis: usize) -> bool {
    let d: Vec<usize> = dims.iter().map(|&x| x.max(0) as usize).collect();
    let inner: usize = d[axis + 1..].iter().product();
    let outer: usize = d[..axis].iter().product();
    (0..d[axis]).any(|c| (0..outer).all(|o| w[(o * d[axis] + c) * inner..(o * d[axis] + c + 1) * inner].iter().all(|&v| v == 0.0)))
}
