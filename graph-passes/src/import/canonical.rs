//! Import phase 1, canonical: what the exporters rewrote that the naming phases read through —
//! fresh BatchNorm layers the dynamo optimizer folded (fresh_bn.rs, on the user's word), zero
//! biases it removed, integer shape arithmetic known before running (fold.rs), sequences
//! (sequences.rs), and the exporters' views of parameters (views.rs) — undone before anything
//! is named. Returns what fresh_bn found: the folded BatchNorm layers the user's word would give
//! back, and those it cannot.
use super::{fold, fresh_bn, sequences, summary, views};
use crate::ir::{Graph, NodeExt};
use crate::onnx::metadata::{self, fx_call, module_paths, placeholder_name};
use crate::onnx::tensor;
use crate::pass::ImportReport;
use crate::Result;

pub(super) fn run(
    g: &mut Graph,
    dynamo: bool,
    legacy: bool,
    assume_fresh_bn: bool,
    report: &mut ImportReport,
) -> Result<fresh_bn::Restored> {
    let mut unproven_fresh = fresh_bn::Restored::default();
    if dynamo {
        // fresh BatchNorm layers first: their convolution's zero bias is the fold's, not a
        // bias of its own
        let fresh = fresh_bn::restore_fresh_batch_norms(g, assume_fresh_bn)?;
        if !fresh.layers.is_empty() {
            report.notes.push(format!(
                "BatchNorm {} folded into the convolutions: restored at PyTorch's initial state (--assume-fresh-batchnorm: weight 1, bias 0, running mean 0, variance 1) under {} names and trained as PyTorch trains {}",
                summary(&fresh.layers, 6),
                if fresh.layers.len() == 1 { "its" } else { "their" },
                if fresh.layers.len() == 1 { "it" } else { "them" }
            ));
        }
        unproven_fresh = fresh;
        report.restored = restore_removed_biases(g);
    }
    g.pass = Some("import".into());
    let canonical = fold::fold_integer_constants(g)
        .and_then(|_| sequences::sequences_to_tensors(g))
        .and_then(|_| fold::fold_integer_constants(g))
        .and_then(|_| fold::fold_known_integer_inputs(g));
    g.pass = None;
    canonical?;
    if dynamo || legacy {
        report.notes.extend(views::unfold(g, dynamo)?);
    }
    Ok(unproven_fresh)
}

/// The dynamo exporter's optimizer drops a Conv, ConvTranspose or Gemm bias that is all zeros
/// (onnxscript `RemoveOptionalBiasFrom*`; a fresh layer's bias often is). PyTorch trains that
/// bias, and the node's metadata still names it (`aten.conv2d(x, p_w, p_b, …)`,
/// `aten.addmm(p_b, x, p_w)`): it comes back as a zero initializer under that name. Returns the
/// names given back.
fn restore_removed_biases(g: &mut Graph) -> Vec<String> {
    let mut out = Vec::new();
    let known: Vec<String> = g.initializers.iter().map(|t| t.name.clone()).collect();
    let known_refs: Vec<&str> = known.iter().map(|s| s.as_str()).collect();
    for i in 0..g.nodes.len() {
        let n = &g.nodes[i];
        let rules = metadata::rewrite_rules(n);
        if !rules.iter().any(|r| r.starts_with("RemoveOptionalBiasFrom"))
            || n.input.get(2).is_some_and(|b| !b.is_empty())
        {
            continue;
        }
        let Some(call) = fx_call(n) else { continue };
        let conv = n.op_type == "Conv" && (call.op.starts_with("conv") || call.op == "convolution");
        let convt = n.op_type == "ConvTranspose" && call.op.starts_with("conv_transpose");
        // nn.Linear: linear(x, w, b); torch.addmm(b, x, w) (Hugging Face's Conv1D: GPT-2)
        let gemm = n.op_type == "Gemm" && (call.op == "linear" || call.op == "addmm");
        if !(conv || convt || gemm) {
            continue;
        }
        let bias_arg = if call.op == "addmm" { 0 } else { 2 };
        let Some(p) = call.placeholder(bias_arg).filter(|p| p.starts_with("p_")) else { continue };
        let Some(w) = n.input.get(1).and_then(|w| g.initializer(w)) else { continue };
        let len = if conv {
            w.dims[0]
        } else if convt {
            w.dims.get(1).copied().unwrap_or(0) * n.attr_i("group", 1)
        } else if n.attr_i("transB", 0) != 0 {
            w.dims[0]
        } else {
            w.dims.get(1).copied().unwrap_or(0)
        };
        let name = placeholder_name(p, &module_paths(n), &known_refs);
        if g.initializer(&name).is_none() {
            g.initializers.push(tensor::from_f32(&name, &[len], &vec![0.0; len.max(0) as usize]));
        }
        let n = &mut g.nodes[i];
        n.input.resize(2, String::new());
        n.input.push(name.clone());
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}
