//! metrics.jsonl (one JSON object a line) and metrics.csv (the same rows, fixed columns).
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{Map, Value};

pub const COLUMNS: &[&str] = &[
    "kind",
    "step",
    "epoch",
    "lr",
    "rho",
    "sam",
    "loss",
    "acc",
    "grad_norm",
    "sharpness",
    "weight_entropy",
    "ess",
    "lambda",
    "max_weight",
    "trace_v",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "test_loss",
    "test_acc",
    "data_wait",
    "allreduce_mib",
    "allreduce_ms",
    "allreduce_wait_ms",
    "seconds",
];

pub struct Metrics {
    jsonl: PathBuf,
    csv: PathBuf,
    pub lines: usize,
    /// False on data-parallel ranks other than 0: rows are counted, not written.
    writes: bool,
}

fn csv_line(row: &Map<String, Value>) -> String {
    COLUMNS
        .iter()
        .map(|c| match row.get(*c) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(v) => v.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl Metrics {
    /// Opens the run's metrics, keeping the first `keep` rows (a resumed run drops rows written
    /// after its checkpoint, so the files read as one uninterrupted run).
    pub fn open(run: &Path, keep: usize) -> Result<Metrics> {
        let jsonl = run.join("metrics.jsonl");
        let csv = run.join("metrics.csv");
        let old = std::fs::read_to_string(&jsonl).unwrap_or_default();
        let rows: Vec<&str> = old.lines().take(keep).collect();
        let mut j = String::new();
        let mut c = COLUMNS.join(",") + "\n";
        for r in &rows {
            j += r;
            j += "\n";
            let v: Map<String, Value> = serde_json::from_str(r).unwrap_or_default();
            c += &csv_line(&v);
            c += "\n";
        }
        std::fs::write(&jsonl, j).with_context(|| format!("cannot write {}", jsonl.display()))?;
        std::fs::write(&csv, c).with_context(|| format!("cannot write {}", csv.display()))?;
        Ok(Metrics { jsonl, csv, lines: rows.len(), writes: true })
    }

    /// The metrics of a data-parallel rank other than 0: counted as rank 0 writes them.
    pub fn counted(run: &Path, keep: usize) -> Metrics {
        Metrics { jsonl: run.join("metrics.jsonl"), csv: run.join("metrics.csv"), lines: keep, writes: false }
    }

    pub fn write(&mut self, row: &Map<String, Value>) -> Result<()> {
        if !self.writes {
            self.lines += 1;
            return Ok(());
        }
        let mut f = std::fs::OpenOptions::new().append(true).open(&self.jsonl)?;
        writeln!(f, "{}", Value::Object(row.clone()))?;
        let mut f = std::fs::OpenOptions::new().append(true).open(&self.csv)?;
        writeln!(f, "{}", csv_line(row))?;
        self.lines += 1;
        Ok(())
    }
}

/// Rows of a run's metrics.jsonl.
pub fn read(run: &Path) -> Result<Vec<Map<String, Value>>> {
    let p = run.join("metrics.jsonl");
    let text = std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
    text.lines().map(|l| serde_json::from_str(l).with_context(|| format!("{}: bad line", p.display()))).collect()
}
