//! Checkpoints: RUN_DIR/checkpoints/step-NNNNNNNN.npz (parameters, optimizer state, running
//! statistics) and .json (where the run stands), each written to a temp file and renamed, the
//! .json last — a checkpoint exists once its .json does, so a write that dies midway leaves the
//! previous one as the latest.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use crate::tensor::{read_npz, write_npz, HostTensor};

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Position {
    /// Optimizer steps taken.
    pub step: u64,
    /// The epoch in progress (0-based) and how many of its batches are done.
    pub epoch: usize,
    pub batch_in_epoch: usize,
    /// Lines of metrics.jsonl written up to this point.
    pub metrics_lines: usize,
    /// Training time so far (for the metrics' seconds column).
    pub seconds: f64,
    /// The epoch in progress so far: Σ loss·n, Σ correct, n (so that a run resumed mid-epoch
    /// reports the same epoch averages as an uninterrupted one).
    #[serde(default)]
    pub epoch_sums: (f64, f64, usize),
    /// Data-parallel ranks the run trains on (1: one process); a resumed run needs as many.
    #[serde(default = "one")]
    pub ranks: usize,
}

fn one() -> usize {
    1
}

pub fn dir(run: &Path) -> PathBuf {
    run.join("checkpoints")
}

fn stem(step: u64) -> String {
    format!("step-{step:08}")
}

/// Writes a checkpoint; keeps the newest `keep`.
pub fn save(run: &Path, pos: &Position, values: &BTreeMap<String, HostTensor>, keep: usize) -> Result<PathBuf> {
    let d = dir(run);
    std::fs::create_dir_all(&d)
        .map_err(|e| anyhow!("{}: cannot create: {}", d.display(), graph_passes::onnx::io_reason(&e)))?;
    let npz = d.join(format!("{}.npz", stem(pos.step)));
    let arrays: Vec<(String, HostTensor)> = values.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    if std::env::var("ONNXSAM_FAIL_CHECKPOINT").is_ok() {
        // tests: a write that dies midway (a partial temp file, no rename)
        std::fs::write(d.join(format!(".{}.npz.tmp", stem(pos.step))), b"PK\x03\x04partial")?;
        bail!("{}: checkpoint write failed (ONNXSAM_FAIL_CHECKPOINT is set)", npz.display());
    }
    write_npz(&npz, &arrays)?;
    let json = d.join(format!("{}.json", stem(pos.step)));
    graph_passes::onnx::write_atomic(&json, serde_json::to_string_pretty(pos)?.as_bytes())?;
    let all = list(run)?;
    if all.len() > keep.max(1) {
        for (_, p) in &all[..all.len() - keep.max(1)] {
            let _ = std::fs::remove_file(p.with_extension("npz"));
            let _ = std::fs::remove_file(p);
        }
    }
    Ok(npz)
}

/// Complete checkpoints (step, .json path), oldest first.
pub fn list(run: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let d = dir(run);
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(&d) else { return Ok(out) };
    for e in entries.flatten() {
        let p = e.path();
        let name = p.file_name().and_then(|s| s.to_str()).unwrap_or("").to_string();
        if let Some(step) =
            name.strip_prefix("step-").and_then(|s| s.strip_suffix(".json")).and_then(|s| s.parse().ok())
        {
            if p.with_extension("npz").exists() {
                out.push((step, p));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The newest complete checkpoint (or the one at `step`).
pub fn load(run: &Path, step: Option<u64>) -> Result<(Position, BTreeMap<String, HostTensor>)> {
    let all = list(run)?;
    let (_, json) = match step {
        Some(s) => all
            .iter()
            .find(|(k, _)| *k == s)
            .ok_or_else(|| anyhow!("{}: no checkpoint at step {s}", dir(run).display()))?,
        None => all.last().ok_or_else(|| anyhow!("{}: no checkpoint to resume from", dir(run).display()))?,
    };
    let pos: Position = serde_json::from_str(&std::fs::read_to_string(json)?)
        .with_context(|| format!("{}: not a checkpoint description", json.display()))?;
    let values = read_npz(&json.with_extension("npz"))?;
    Ok((pos, values))
}
