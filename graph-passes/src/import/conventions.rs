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
//! - **clip at its bounds**: where x equals a bound, torch 2.15 gives no gradient for Clip's
//!   sources — `torch.clamp` with number bounds, `F.hardtanh`, `F.relu6`/`nn.ReLU6` — and half of
//!   it for `torch.clamp` with tensor bounds (ties shared with the bound, as torch.maximum). The
//!   dynamo metadata says which (aten.clamp.Tensor with a bound that is no literal); a legacy
//!   Clip is taken for number bounds, and `--clip-at-bounds pass` gives the gradient at the
//!   bounds (an older PyTorch's clamp).
use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

use crate::onnx::metadata::fx_call;
use super::ImportReport;
use crate::ir::{constant_value, Graph, NodeExt};
use crate::onnx::{NodeProto, StringStringEntryProto};
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
    /// No gradient at the bounds (lo < x < hi): torch 2.15's clamp with number bounds, hardtanh, relu6.
    Zero,
    /// Half of it (ties shared with the bound): torch.clamp with tensor bounds.
    Half,
    /// The whole gradient at the bounds (lo ≤ x ≤ hi): an older PyTorch's clamp.
    Pass,
}

impl ClipConvention {
    pub fn name(self) -> &'static str {
        match self {
            ClipConvention::Zero => "zero",
            ClipConvention::Half => "half",
            ClipConvention::Pass => "pass",
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

/// How a Clip node (or clamp's Max/Min) passes the gradient at its bounds: the import's tag,
/// else the dynamo metadata (clamp with tensor bounds: half), else none (torch 2.15's clamp with
/// number bounds, hardtanh and relu6 alike).
pub fn clip_convention(n: &NodeProto) -> ClipConvention {
    match meta(n, CLIP_CONVENTION) {
        Some("zero") => return ClipConvention::Zero,
        Some("half") => return ClipConvention::Half,
        Some("pass") => return ClipConvention::Pass,
        _ => {}
    }
    match fx_call(n) {
        Some(c) if is_clamp(&c.op) && tensor_bounds(&c) => ClipConvention::Half,
        _ => ClipConvention::Zero,
    }
}

fn is_clamp(aten: &str) -> bool {
    aten.starts_with("clamp") || aten.starts_with("clip")
}

/// A clamp whose bounds are tensors of the program (a parameter, a computed value), not numbers the
/// exporter wrapped (`aten.scalar_tensor`, literals).
fn tensor_bounds(c: &crate::onnx::metadata::FxCall) -> bool {
    c.args.iter().skip(1).any(|a| match a {
        crate::onnx::metadata::FxArg::Value(v) => !v.starts_with("scalar_tensor"),
        crate::onnx::metadata::FxArg::Literal(_) => false,
    })
}

/// True for a Max/Min node the dynamo exporter wrote for torch.clamp (its first input is x, the
/// other a bound).
pub fn is_clamp_bound(n: &NodeProto) -> bool {
    (n.op_type == "Max" || n.op_type == "Min") && n.input.len() == 2 && fx_call(n).is_some_and(|c| is_clamp(&c.op))
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
    randomness(g, report, dynamo);
    Ok(())
}

/// Dropout a train-mode export keeps in a form other than Dropout, or drops: random ops
/// (Dropout2d, AlphaDropout: aten.bernoulli written as RandomUniformLike) are drawn from the run's
/// seeded RNG in training and in evaluation alike (they cannot be told from the model's other
/// computation); attention dropout inside scaled_dot_product_attention is lost by the dynamo
/// exporter (its dropout_p stays in the metadata only).
fn randomness(g: &Graph, report: &mut ImportReport, dynamo: bool) {
    let random: Vec<String> = g
        .nodes
        .iter()
        .filter(|n| crate::ops::RANDOM_OPS.contains(&n.op_type.as_str()))
        .map(|n| n.describe())
        .collect();
    if !random.is_empty() {
        report.warnings.push(format!(
            "{} draw{} random numbers (a train-mode export writes Dropout2d, AlphaDropout and other uses of aten.bernoulli so): onnxsam draws them from the run's seeded RNG in training, and in evaluation too, where PyTorch's eval mode would not — evaluate an eval-mode export for deterministic numbers",
            super::summary(&random, 3),
            if random.len() == 1 { "s" } else { "" }
        ));
    }
    if !dynamo {
        return;
    }
    let mut lost = Vec::new();
    for n in &g.nodes {
        let Some(call) = fx_call(n) else { continue };
        if call.op != "scaled_dot_product_attention" && call.op != "_scaled_dot_product_efficient_attention" {
            continue;
        }
        // aten.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, …)
        let p = match call.args.get(4) {
            Some(crate::onnx::metadata::FxArg::Literal(l)) => l.trim().parse::<f64>().unwrap_or(0.0),
            _ => 0.0,
        };
        // one FX node, several ONNX nodes: named by the FX node (`%scaled_dot_product_attention_3`)
        let fx_name = meta(n, crate::onnx::metadata::FX_NODE)
            .and_then(|v| v.split_whitespace().next())
            .unwrap_or("")
            .trim_start_matches('%')
            .to_string();
        let layer = match crate::onnx::metadata::module_paths(n).first() {
            Some(m) => format!("{m} ({fx_name})"),
            None => fx_name,
        };
        if p > 0.0 && !lost.iter().any(|(l, _)| *l == layer) {
            lost.push((layer, p));
        }
    }
    if !lost.is_empty() {
        let what: Vec<String> = lost.iter().map(|(l, p)| format!("{l}, dropout_p {p}")).collect();
        let line = format!(
            "the exporter dropped the attention dropout of {}: onnxsam trains without it; export with dynamo=False and training=torch.onnx.TrainingMode.TRAINING (which keeps it as Dropout), or set the attention dropout to 0",
            super::summary(&what, 3)
        );
        report.differences.push(line.clone());
        report.warnings.push(line);
    }
}

/// Gathers reading a trainable table along axis 0 (embeddings), each with whether the data
/// decides its indices (token ids, or values computed from them as RoBERTa's position ids are;
/// indices computed from constants and sizes alone — BERT's position ids, a buffer of token-type
/// ids — are no token ids, and their tables need no warning).
fn embedding_reads(g: &Graph, params: &HashSet<&str>) -> Vec<(usize, bool)> {
    let data: HashSet<&str> = g.data_inputs().iter().map(|v| v.name.as_str()).collect();
    let producer: std::collections::HashMap<&str, &NodeProto> =
        g.nodes.iter().flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n))).collect();
    // whether a value depends on a data input's values (Shape reads only its size)
    let depends_on_data = |v: &str| -> bool {
        let mut stack = vec![v];
        let mut seen: HashSet<&str> = HashSet::new();
        while let Some(x) = stack.pop() {
            if !seen.insert(x) {
                continue;
            }
            if data.contains(x) && !params.contains(x) {
                return true;
            }
            if let Some(n) = producer.get(x) {
                if n.op_type == "Shape" || n.op_type == "Size" {
                    continue;
                }
                stack.extend(n.input.iter().map(|s| s.as_str()).filter(|s| !s.is_empty()));
            }
        }
        false
    };
    (0..g.nodes.len())
        .filter(|&i| {
            let n = &g.nodes[i];
            n.op_type == "Gather"
                && n.attr_i("axis", 0) == 0
                && n.input.len() == 2
                && params.contains(n.input[0].as_str())
                && constant_value(g, &n.input[1]).is_none()
        })
        .map(|i| (i, depends_on_data(&g.nodes[i].input[1])))
        .collect()
}

fn padding_rows(g: &mut Graph, report: &mut ImportReport, dynamo: bool, given: &PaddingRows) -> Result<()> {
    let params: HashSet<&str> = report.params.iter().map(|s| s.as_str()).collect();
    let reads = embedding_reads(g, &params);
    let tables: Vec<String> = {
        let mut t: Vec<String> = reads.iter().map(|&(i, _)| g.nodes[i].input[0].clone()).collect();
        t.dedup();
        let mut seen = HashSet::new();
        t.retain(|x| seen.insert(x.clone()));
        t
    };
    for (k, (table, _)) in given.iter().enumerate() {
        if given[..k].iter().any(|(t, _)| t == table) {
            bail!("--padding-idx {table}=… is given twice; give each table's padding row once");
        }
    }
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
    for &(i, token_ids) in &reads {
        let table = g.nodes[i].input[0].clone();
        let size = g.initializer(&table).and_then(|t| t.dims.first().copied()).unwrap_or(0);
        let recorded = match fx_call(&g.nodes[i]).filter(|c| dynamo && c.op == "embedding") {
            Some(call) => Some((call_padding(&g.nodes[i], &call, size)?, call_flag(&call, 3))),
            None => None,
        };
        let (row, freq) = match (given.iter().find(|(t, _)| *t == table), recorded) {
            (Some((_, row)), Some((file_row, freq))) => {
                let norm = |r: Option<i64>| r.map(|r| if r < 0 { r + size } else { r });
                if norm(*row) != file_row {
                    let say = |r: Option<i64>| r.map(|r| r.to_string()).unwrap_or_else(|| "none".into());
                    bail!(
                        "--padding-idx {table}={}: the file records padding row {} for it ({}); drop the flag, or re-export the model you mean",
                        say(*row),
                        say(file_row),
                        g.nodes[i].describe()
                    );
                }
                (file_row, freq)
            }
            (Some((_, row)), None) => (*row, false),
            (None, Some(rec)) => rec,
            (None, None) if dynamo => (None, false),
            (None, None) => {
                if token_ids && !unknown.contains(&table) {
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
            "the file does not say whether the embedding table{} {} {} a padding row (nn.Embedding's padding_idx, which PyTorch never trains; the legacy exporter drops it, and scale_grad_by_freq with it): onnxsam trains every row; pass --padding-idx {}=ROW (or {}=none) to say, or export with dynamo=True, which records both",
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
/// where the third argument is a row of the table (−1, the default, is none); anything else in
/// the file is an error naming the node.
fn call_padding(n: &NodeProto, call: &crate::onnx::metadata::FxCall, rows: i64) -> Result<Option<i64>> {
    let lit = match call.args.get(2) {
        None => return Ok(None),
        Some(crate::onnx::metadata::FxArg::Literal(l)) => l.trim(),
        Some(crate::onnx::metadata::FxArg::Value(v)) => {
            bail!("{}: its padding_idx is a value of the program ('{v}'), not a number; onnxsam cannot honour it", n.describe())
        }
    };
    let Ok(v) = lit.parse::<i64>() else {
        bail!("{}: its metadata gives padding_idx '{lit}', which is no row number", n.describe());
    };
    if v == -1 {
        return Ok(None);
    }
    if v < 0 || (rows > 0 && v >= rows) {
        bail!("{}: its metadata gives padding_idx {v}, outside the table's {rows} rows", n.describe());
    }
    Ok(Some(v))
}

fn call_flag(call: &crate::onnx::metadata::FxCall, i: usize) -> bool {
    matches!(call.args.get(i), Some(crate::onnx::metadata::FxArg::Literal(l)) if l.trim() == "True")
}

fn clip_conventions(g: &mut Graph, report: &mut ImportReport, dynamo: bool, given: Option<ClipConvention>) {
    let mut tagged = 0;
    let mut described = 0;
    for i in 0..g.nodes.len() {
        let n = &g.nodes[i];
        if n.op_type != "Clip" {
            continue;
        }
        // the dynamo metadata names the ATen op: nothing to choose
        if dynamo && fx_call(n).is_some() {
            described += 1;
            continue;
        }
        let conv = given.unwrap_or(ClipConvention::Zero);
        set_meta(&mut g.nodes[i], CLIP_CONVENTION, conv.name().into());
        tagged += 1;
    }
    if tagged > 0 {
        report.clip = Some(format!(
            "{tagged} Clip node{} the file does not describe (torch.clamp, F.hardtanh and F.relu6 export alike): {} where x equals a bound{}",
            if tagged == 1 { "" } else { "s" },
            match given.unwrap_or(ClipConvention::Zero) {
                ClipConvention::Zero => "no gradient",
                ClipConvention::Half => "half the gradient",
                ClipConvention::Pass => "the whole gradient",
            },
            if given.is_some() {
                " (--clip-at-bounds)".to_string()
            } else {
                ", as torch 2.15's clamp with number bounds, hardtanh and relu6 give; --clip-at-bounds pass for a PyTorch whose clamp passes it".to_string()
            }
        ));
    } else if given.is_some() && described > 0 {
        report.warnings.push(
            "--clip-at-bounds has no effect here: every Clip node's dynamo metadata names the PyTorch op it came from".into(),
        );
    }
}
