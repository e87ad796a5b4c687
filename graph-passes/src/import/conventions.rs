//! What a PyTorch op does to gradients that its ONNX form does not say, recovered from the file or
//! taken from the user, and written onto the nodes (`onnxsam.*` metadata) for the gradient rules:
//!
//! - **padding rows**: `nn.Embedding(padding_idx=k)` never trains row k (its gradient is zero in
//!   every backward; weight decay still applies, as torch.optim applies it to the whole tensor).
//!   The dynamo exporter records the argument in each embedding node's metadata
//!   (`aten.embedding(%weight, %ids, k)`); the legacy exporter drops it, so `--padding-idx
//!   TABLE=ROW` says it, and a warning names every table whose padding row is unknown.
//!   `scale_grad_by_freq=True` (the fourth argument) scales each row's gradient by one over its
//!   count in the batch.
//! - **clip at its bounds**: `torch.clamp` passes the gradient where x equals a bound,
//!   `F.hardtanh`/`F.relu6`/`nn.ReLU6` do not; both export as Clip (the dynamo exporter without
//!   its optimizer writes clamp as Max and Min). Dynamo metadata names the ATen op; a legacy Clip
//!   with bounds (0, 6) is taken for ReLU6 and any other for torch.clamp, unless
//!   `--clip-at-bounds` says which.
use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

use super::metadata::fx_call;
use super::ImportReport;
use crate::ir::{constant_value, Graph, NodeExt};
use crate::onnx::{tensor, NodeProto, StringStringEntryProto};
use crate::{bail, Result};

/// Node metadata: the padding row of the table a Gather reads.
pub const PADDING_IDX: &str = "onnxsam.padding_idx";
/// Node metadata: "1" where a Gather's gradient is scaled by inverse index frequency.
pub const SCALE_GRAD_BY_FREQ: &str = "onnxsam.scale_grad_by_freq";
/// Node metadata on Clip (and clamp's Max/Min): "clamp" or "hardtanh".
pub const CLIP_CONVENTION: &str = "onnxsam.clip";

/// How Clip's gradient behaves where x equals a bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClipConvention {
    /// torch.clamp: the gradient passes at the bounds (lo ≤ x ≤ hi).
    Clamp,
    /// F.hardtanh, F.relu6, nn.ReLU6: it does not (lo < x < hi).
    Hardtanh,
}

impl ClipConvention {
    pub fn name(self) -> &'static str {
        match self {
            ClipConvention::Clamp => "clamp",
            ClipConvention::Hardtanh => "hardtanh",
        }
    }
}

/// The user's word on padding rows: table → row (None: the table has none).
pub type PaddingRows = Vec<(String, Option<i64>)>;

fn meta<'a>(n: &'a NodeProto, key: &str) -> Option<&'a str> {
    n.metadata_props.iter().find(|p| p.key == key).map(|p| p.value.as_str())
}

fn set_meta(n: &mut NodeProto, key: &str, value: String) {
    n.metadata_props.retain(|p| p.key != key);
    n.metadata_props.push(StringStringEntryProto { key: key.into(), value });
}

/// The padding row a Gather node's gradient skips, if any.
pub fn padding_idx(n: &NodeProto) -> Option<i64> {
    meta(n, PADDING_IDX).and_then(|v| v.parse().ok())
}

/// True where a Gather node's gradient is scaled by inverse index frequency.
pub fn scale_grad_by_freq(n: &NodeProto) -> bool {
    meta(n, SCALE_GRAD_BY_FREQ) == Some("1")
}

/// How a Clip node (or clamp's Max/Min) passes the gradient at its bounds: the import's tag, else
/// the dynamo metadata, else torch.clamp's.
pub fn clip_convention(n: &NodeProto) -> ClipConvention {
    match meta(n, CLIP_CONVENTION) {
        Some("hardtanh") => return ClipConvention::Hardtanh,
        Some("clamp") => return ClipConvention::Clamp,
        _ => {}
    }
    match fx_call(n).map(|c| c.op) {
        Some(op) if is_hardtanh(&op) => ClipConvention::Hardtanh,
        _ => ClipConvention::Clamp,
    }
}

fn is_hardtanh(aten: &str) -> bool {
    matches!(aten, "hardtanh" | "hardtanh_" | "relu6" | "relu6_")
}

/// True for a Max/Min node the dynamo exporter wrote for torch.clamp (its first input is x, the
/// other a bound): x gets the whole gradient wherever it is kept, ties included.
pub fn is_clamp_bound(n: &NodeProto) -> bool {
    (n.op_type == "Max" || n.op_type == "Min")
        && n.input.len() == 2
        && fx_call(n).is_some_and(|c| c.op.starts_with("clamp") || c.op.starts_with("clip"))
}

/// Tags the graph's Gather and Clip nodes; fills `report.padding_rows`, `report.clip` and
/// warnings. `params`: the trainable tensors (PyTorch names) after import.
pub fn apply(
    g: &mut Graph,
    report: &mut ImportReport,
    dynamo: bool,
    padding: &PaddingRows,
    clip: Option<ClipConvention>,
) -> Result<()> {
    padding_rows(g, report, dynamo, padding)?;
    clip_conventions(g, report, dynamo, clip);
    Ok(())
}

/// Gathers reading a trainable table by data-dependent indices along axis 0: embeddings.
fn embedding_reads(g: &Graph, params: &HashSet<&str>) -> Vec<usize> {
    (0..g.nodes.len())
        .filter(|&i| {
            let n = &g.nodes[i];
            n.op_type == "Gather"
                && n.attr_i("axis", 0) == 0
                && n.input.len() == 2
                && params.contains(n.input[0].as_str())
                && constant_value(g, &n.input[1]).is_none()
        })
        .collect()
}

fn padding_rows(g: &mut Graph, report: &mut ImportReport, dynamo: bool, given: &PaddingRows) -> Result<()> {
    let params: HashSet<&str> = report.params.iter().map(|s| s.as_str()).collect();
    let reads = embedding_reads(g, &params);
    let tables: Vec<String> = {
        let mut t: Vec<String> = reads.iter().map(|&i| g.nodes[i].input[0].clone()).collect();
        t.dedup();
        let mut seen = HashSet::new();
        t.retain(|x| seen.insert(x.clone()));
        t
    };
    for (table, row) in given {
        if !tables.contains(table) {
            let known = if tables.is_empty() {
                "this model reads no embedding table (a trainable tensor indexed by token ids)".to_string()
            } else {
                format!("its embedding tables are {}", tables.join(", "))
            };
            bail!("--padding-idx {table}=…: no embedding table '{table}' in this model; {known}");
        }
        if let Some(r) = row {
            let rows = g.initializer(table).and_then(|t| t.dims.first().copied()).unwrap_or(0);
            if *r < -rows || *r >= rows {
                bail!("--padding-idx {table}={r}: the table has {rows} rows (0 … {}); give a row in that range", rows - 1);
            }
        }
    }
    let mut rows: BTreeMap<String, i64> = BTreeMap::new();
    let mut unknown: Vec<String> = Vec::new();
    let mut by_freq: Vec<String> = Vec::new();
    for &i in &reads {
        let table = g.nodes[i].input[0].clone();
        let size = g.initializer(&table).and_then(|t| t.dims.first().copied()).unwrap_or(0);
        let (row, freq) = match given.iter().find(|(t, _)| *t == table) {
            Some((_, row)) => (*row, false),
            None if dynamo => match fx_call(&g.nodes[i]).filter(|c| c.op == "embedding") {
                Some(call) => (call_padding(&call, size), call_flag(&call, 3)),
                None => (None, false),
            },
            None => {
                if !unknown.contains(&table) {
                    unknown.push(table.clone());
                }
                (None, false)
            }
        };
        let n = &mut g.nodes[i];
        if let Some(r) = row {
            let r = if r < 0 { r + size } else { r };
            set_meta(n, PADDING_IDX, r.to_string());
            rows.insert(table.clone(), r);
        }
        if freq {
            set_meta(n, SCALE_GRAD_BY_FREQ, "1".into());
            if !by_freq.contains(&table) {
                by_freq.push(table);
            }
        }
    }
    if !unknown.is_empty() {
        report.warnings.push(format!(
            "the file does not say whether the embedding table{} {} {} a padding row (nn.Embedding's padding_idx, which PyTorch never trains; the legacy exporter drops it): onnxsam trains every row; pass --padding-idx {}=ROW (or {}=none) to say, or export with dynamo=True, which records it",
            if unknown.len() == 1 { "" } else { "s" },
            unknown.join(", "),
            if unknown.len() == 1 { "has" } else { "have" },
            unknown[0],
            unknown[0],
        ));
    }
    report.padding_rows = rows;
    report.padding_unknown = unknown;
    report.scale_grad_by_freq = by_freq;
    Ok(())
}

/// aten.embedding(weight, indices, padding_idx = −1, scale_grad_by_freq, sparse): a padding row
/// where the third argument is a row of the table (−1, the default, is none).
fn call_padding(call: &super::metadata::FxCall, rows: i64) -> Option<i64> {
    let lit = match call.args.get(2)? {
        super::metadata::FxArg::Literal(l) => l,
        _ => return None,
    };
    let v: i64 = lit.trim().parse().ok()?;
    (v >= 0 && (rows == 0 || v < rows)).then_some(v)
}

fn call_flag(call: &super::metadata::FxCall, i: usize) -> bool {
    matches!(call.args.get(i), Some(super::metadata::FxArg::Literal(l)) if l.trim() == "True")
}

/// The bounds of a Clip node where they are constants.
fn clip_bounds(g: &Graph, n: &NodeProto) -> (Option<f32>, Option<f32>) {
    let bound = |i: usize, attr: &str| -> Option<f32> {
        match n.input.get(i).filter(|v| !v.is_empty()) {
            Some(v) => constant_value(g, v).and_then(|t| tensor::to_f32(t).ok()).and_then(|x| x.first().copied()),
            None => n.attr(attr).and_then(|a| a.f),
        }
    };
    (bound(1, "min"), bound(2, "max"))
}

fn clip_conventions(g: &mut Graph, report: &mut ImportReport, dynamo: bool, given: Option<ClipConvention>) {
    let mut relu6 = 0;
    let mut clamp = 0;
    for i in 0..g.nodes.len() {
        let n = &g.nodes[i];
        // the dynamo metadata names the ATen op: nothing to guess or choose
        if n.op_type != "Clip" || (dynamo && fx_call(n).is_some()) {
            continue;
        }
        let conv = given.unwrap_or_else(|| match clip_bounds(g, n) {
            (Some(lo), Some(hi)) if lo == 0.0 && hi == 6.0 => ClipConvention::Hardtanh,
            _ => ClipConvention::Clamp,
        });
        match conv {
            ClipConvention::Hardtanh => relu6 += 1,
            ClipConvention::Clamp => clamp += 1,
        }
        set_meta(&mut g.nodes[i], CLIP_CONVENTION, conv.name().into());
    }
    if relu6 + clamp == 0 {
        return;
    }
    report.clip = Some(match given {
        Some(c) => format!(
            "{} Clip node{} take{} {} at the bounds (--clip-at-bounds {})",
            relu6 + clamp,
            if relu6 + clamp == 1 { "" } else { "s" },
            if relu6 + clamp == 1 { "s" } else { "" },
            describe(c),
            c.name()
        ),
        None => {
            let mut parts = Vec::new();
            if relu6 > 0 {
                parts.push(format!("{relu6} with bounds (0, 6) taken for ReLU6: {}", describe(ClipConvention::Hardtanh)));
            }
            if clamp > 0 {
                parts.push(format!("{clamp} other{} taken for torch.clamp: {}", if clamp == 1 { "" } else { "s" }, describe(ClipConvention::Clamp)));
            }
            format!(
                "this export does not say whether a Clip was torch.clamp or F.hardtanh/F.relu6 (they differ only where x equals a bound): {}; --clip-at-bounds clamp|hardtanh picks one for all",
                parts.join("; ")
            )
        }
    });
}

fn describe(c: ClipConvention) -> &'static str {
    match c {
        ClipConvention::Clamp => "the gradient passes at the bounds",
        ClipConvention::Hardtanh => "no gradient at the bounds",
    }
}
