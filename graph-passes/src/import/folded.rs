//! Import phase 4, folded BatchNorm: layers the exporter fused into convolutions (a trained
//! model's fold loses γ, β and the running statistics) are refused with the re-export that keeps
//! them, or trained folded with a warning (--allow-folded-bn); and the BatchNorm facts a user
//! should know.
use std::collections::HashSet;

use super::{summary, Read};
use crate::ir::{Graph, NodeExt};
use crate::onnx::metadata::{self, module_paths};
use crate::pass::ImportReport;
use crate::{bail, Result};

/// Checks the fold; returns the folded convolutions (indices: their tensors are named after
/// them, not after anything PyTorch has).
pub(super) fn check(
    g: &Graph,
    dynamo: bool,
    reads: &[Read],
    fresh: &super::fresh_bn::Restored,
    allow_folded_bn: bool,
    report: &mut ImportReport,
) -> Result<HashSet<usize>> {
    // 3. folded BatchNorm
    let (folded_bn, folded_nodes) = folded_batch_norms(g, dynamo, &reads);
    report.folded_bn = folded_bn;
    if !report.folded_bn.is_empty() {
        let list = summary(&report.folded_bn, 6);
        let fix = if dynamo {
            "re-export with torch.onnx.export(..., dynamo=True, optimize=False) or torch.onnx.export(..., dynamo=False, do_constant_folding=False)"
        } else {
            "re-export with torch.onnx.export(..., dynamo=False, do_constant_folding=False) or torch.onnx.export(..., dynamo=True, optimize=False)"
        };
        let unproven_fresh = &fresh.unproven;
        let mut fresh_hint = if unproven_fresh.is_empty() {
            String::new()
        } else {
            format!(
                " (a freshly built model, never trained, its BatchNorm at PyTorch's defaults: --assume-fresh-batchnorm gives {})",
                if unproven_fresh.len() == report.folded_bn.len() {
                    "them back".to_string()
                } else {
                    format!("back {}", summary(&unproven_fresh, 4))
                }
            )
        };
        // why the user's word cannot give some back
        for (layer, why) in fresh.cannot.iter().take(3) {
            fresh_hint.push_str(&format!("; --assume-fresh-batchnorm cannot give back {layer}: {why}"));
        }
        let what = if dynamo {
            let gemm = g.nodes.iter().any(|n| n.op_type == "Gemm" && metadata::fused_batch_norm(n));
            let into = if gemm { "convolutions or linear layers" } else { "convolutions" };
            format!("the exporter folded the BatchNorm layers {list} into the preceding {into}")
        } else {
            format!("the exporter folded BatchNorm into the convolutions {list}")
        };
        if !allow_folded_bn {
            bail!(
                "{what}: PyTorch trains those BatchNorm layers and this file no longer has them; {fix}{fresh_hint}, or pass --allow-folded-bn to train the folded network anyway"
            );
        }
        report.warnings.push(format!(
            "training the folded network: {what}, so batch statistics and the BatchNorm parameters are not trained as PyTorch would ({fix} to train the real network)"
        ));
    }
    Ok(folded_nodes)
}

/// BatchNorm layers the exporter fused into convolutions and linear layers: dynamo marks the
/// Conv, ConvTranspose or Gemm with the optimizer's rule (`FuseBatchNormIntoConv`, …); a legacy Conv whose weight constant folding computed
/// (`onnx::Conv_N`) had a BatchNorm folded into it (`_jit_pass_onnx_eval_peephole`).
pub(super) fn folded_batch_norms(g: &Graph, dynamo: bool, reads: &[Read]) -> (Vec<String>, HashSet<usize>) {
    let mut out = Vec::new();
    let mut nodes = HashSet::new();
    for (i, n) in g.nodes.iter().enumerate() {
        if !matches!(n.op_type.as_str(), "Conv" | "ConvTranspose" | "Gemm") {
            continue;
        }
        let layer = if dynamo {
            if !metadata::fused_batch_norm(n) {
                continue;
            }
            module_paths(n).first().cloned().unwrap_or_else(|| n.describe())
        } else {
            let folded =
                n.op_type == "Conv" && reads.iter().any(|r| r.node == i && r.slot == 1 && r.seen.starts_with("onnx::"));
            if !folded {
                continue;
            }
            metadata::legacy_module_path(&n.name).unwrap_or_else(|| n.describe())
        };
        nodes.insert(i);
        if !out.contains(&layer) {
            out.push(layer);
        }
    }
    (out, nodes)
}

/// BatchNorm facts a user should know: a training-mode export stores the running statistics its
/// own forward left (torch.onnx.export with training=TRAINING runs the model once, and PyTorch's
/// buffers move with it); ONNX momentum 1 keeps the running statistics as they are (PyTorch
/// momentum 0 — or momentum=None, a cumulative average the file does not carry).
pub(super) fn batch_norm_notes(g: &Graph) -> (Vec<String>, Vec<String>, Vec<String>) {
    let mut notes = Vec::new();
    let bns: Vec<&crate::onnx::NodeProto> = g.nodes.iter().filter(|n| n.op_type == "BatchNormalization").collect();
    let stateful = |n: &&crate::onnx::NodeProto| n.input.get(3).map(|m| g.initializer(m).is_some()).unwrap_or(false);
    if bns.iter().any(|n| n.attr_i("training_mode", 0) != 0 && stateful(n)) {
        notes.push(
            "a training-mode export: its running statistics are those after the export's own forward (PyTorch's buffers moved with it); training continues from the file's"
                .into(),
        );
    }
    let frozen: Vec<String> = bns
        .iter()
        .filter(|n| stateful(n) && n.attr_f("momentum", 0.9) >= 1.0)
        .map(|n| metadata::describe_layer(n))
        .collect();
    let mut warnings = Vec::new();
    if !frozen.is_empty() {
        warnings.push(format!(
            "BatchNorm {} {} momentum 1 in the file: running statistics stay as they are (PyTorch momentum=0); if the model used momentum=None (a cumulative average), the file does not carry it and onnxsam's running statistics will differ from PyTorch's — give it a momentum before exporting",
            summary(&frozen, 4),
            if frozen.len() == 1 { "has" } else { "have" }
        ));
    }
    (notes, warnings, frozen)
}
