//! Tables in CSV (comma) or TSV (tab, for .tsv/.tab files): the first line names the columns,
//! every other line is one sample. One column is the target; every other column is a numeric
//! feature, in file order. A target column that is all numbers is read as values (regression);
//! any other is a class name per row, numbered in sorted order as sklearn's `LabelEncoder` does.
//! Features are standardized with training-split statistics as sklearn's `StandardScaler` does
//! (population std; a constant column is left unscaled).
use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, bail, Result};
use graph_passes::onnx::io_reason;

/// The target column of a table.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// A non-numeric target column: `y` [N] int64 class indices into `names`, which are the
    /// distinct cells sorted in byte order.
    Classes { y: Vec<i64>, names: Vec<String> },
    /// A numeric target column, as written: [N] float32.
    Values(Vec<f32>),
}

/// A table read by [`load`].
#[derive(Clone, Debug)]
pub struct Table {
    /// Feature column names in file order, [F].
    pub feature_names: Vec<String>,
    /// [N × F] row-major float32.
    pub x: Vec<f32>,
    pub target: Target,
    pub target_name: String,
}

impl Table {
    /// N, the number of rows.
    pub fn rows(&self) -> usize {
        self.x.len() / self.feature_names.len().max(1)
    }
}

/// Tab for .tsv/.tab files, comma for anything else.
fn delimiter(path: &Path) -> u8 {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    if matches!(ext.as_deref(), Some("tsv" | "tab")) {
        b'\t'
    } else {
        b','
    }
}

/// A cell or column name for a message: one line, at most 40 characters.
fn one_line(cell: &str) -> String {
    let flat: String = cell.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if flat.chars().count() > 40 {
        format!("{}…", flat.chars().take(40).collect::<String>())
    } else {
        flat
    }
}

fn quoted(cell: &str) -> String {
    format!("'{}'", one_line(cell))
}

fn csv_error(shown: &str, e: &csv::Error) -> anyhow::Error {
    match e.kind() {
        csv::ErrorKind::Io(io) => anyhow!("{shown}: cannot read: {}", io_reason(io)),
        csv::ErrorKind::Utf8 { pos: Some(p), .. } => {
            anyhow!("{shown}: line {}: not valid UTF-8 text; save the file as UTF-8", p.line())
        }
        csv::ErrorKind::Utf8 { pos: None, .. } => anyhow!("{shown}: not valid UTF-8 text; save the file as UTF-8"),
        _ => anyhow!("{shown}: cannot parse as CSV ({}); check the quoting", e.to_string().replace(['\n', '\r'], " ")),
    }
}

/// A cell as a finite float32, or why not.
fn number(cell: &str) -> std::result::Result<f32, String> {
    if cell.is_empty() {
        return Err("empty cell; fill it in or drop the row".into());
    }
    let v: f64 = cell.trim().parse().map_err(|_| {
        format!("{} is not a number; feature columns must be numeric (encode categories first)", quoted(cell))
    })?;
    if !v.is_finite() {
        return Err(format!("{} is not a finite number; replace NaN/inf values or drop the row", quoted(cell)));
    }
    let f = v as f32;
    if !f.is_finite() {
        return Err(format!("{} is outside the float32 range; rescale the column", quoted(cell)));
    }
    Ok(f)
}

/// Reads a CSV/TSV table whose column `target` is the target: delimiter tab for .tsv/.tab files,
/// else comma; the first row is the header; cells are trimmed. Features: every other column in
/// file order, x [N × F] float32. Target: `Values` if every cell is a finite number, else
/// `Classes` (sorted distinct names → index).
///
/// Errors (one line, naming the file, the line as an editor numbers it — header = line 1 — and
/// the column): no column `target`; `target` is the only column; a row whose field count differs
/// from the header's; an empty, non-numeric, NaN/inf or out-of-float32-range feature cell; an
/// empty target cell; a header without rows; unreadable or non-UTF-8 files.
pub fn load(path: &Path, target: &str) -> Result<Table> {
    let shown = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| anyhow!("{shown}: cannot read: {}", io_reason(&e)))?;
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(delimiter(path))
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(file);
    let header: Vec<String> = rdr.headers().map_err(|e| csv_error(&shown, &e))?.iter().map(str::to_string).collect();
    if header.iter().all(|h| h.is_empty()) {
        bail!("{shown}: no header; the first line must name the columns (e.g. a,b,{target})");
    }
    let hits: Vec<usize> = (0..header.len()).filter(|&i| header[i] == target).collect();
    let t = match hits[..] {
        [i] => i,
        [] => bail!(
            "{shown}: no column {} (columns: {}); pass --target with one of them",
            quoted(target),
            header.iter().map(|h| one_line(h)).collect::<Vec<_>>().join(", ")
        ),
        _ => bail!("{shown}: {} columns are named {}; rename all but one", hits.len(), quoted(target)),
    };
    let features: Vec<usize> = (0..header.len()).filter(|&i| i != t).collect();
    if features.is_empty() {
        bail!("{shown}: {} is the only column; add feature columns besides the target", quoted(target));
    }

    let mut x = Vec::new();
    let mut cells: Vec<String> = Vec::new();
    let mut lines: Vec<u64> = Vec::new();
    let mut record = csv::StringRecord::new();
    loop {
        match rdr.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(csv_error(&shown, &e)),
        }
        // csv numbers lines from 1 with the header on line 1, as an editor does.
        let line = record.position().map(|p| p.line()).unwrap_or(cells.len() as u64 + 2);
        if record.len() != header.len() {
            bail!(
                "{shown}: line {line} has {} fields but the header has {}; give every row one value per column (quote values holding the delimiter)",
                record.len(),
                header.len()
            );
        }
        for &i in &features {
            let v = number(&record[i])
                .map_err(|why| anyhow!("{shown}: line {line}, column {}: {why}", quoted(&header[i])))?;
            x.push(v);
        }
        if record[t].is_empty() {
            bail!("{shown}: line {line}, column {}: empty target cell; fill it in or drop the row", quoted(target));
        }
        cells.push(record[t].to_string());
        lines.push(line);
    }
    if cells.is_empty() {
        bail!("{shown}: a header but no rows; add rows of data below the header line");
    }

    // numeric (every cell a number: NaN/inf refused) or categorical (no cell a number); a column
    // mixing both is a data error, not a category set
    let parses = |c: &str| c.trim().parse::<f64>().is_ok();
    let numeric = cells.iter().filter(|c| parses(c)).count();
    if numeric > 0 && numeric < cells.len() {
        let (k, c) =
            cells.iter().enumerate().find(|(_, c)| !parses(c)).map(|(k, c)| (k, c.clone())).unwrap_or_default();
        bail!(
            "{shown}: line {}, column {}: {} is not a number but the column's other cells are; clean the target column",
            lines.get(k).copied().unwrap_or(0),
            quoted(target),
            quoted(&c)
        );
    }
    let target_column = if numeric > 0 {
        let mut v = Vec::with_capacity(cells.len());
        for (k, c) in cells.iter().enumerate() {
            v.push(number(c).map_err(|why| {
                anyhow!("{shown}: line {}, column {}: {why}", lines.get(k).copied().unwrap_or(0), quoted(target))
            })?);
        }
        Target::Values(v)
    } else {
        {
            let mut rows_of: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
            for (r, c) in cells.iter().enumerate() {
                rows_of.entry(c.as_str()).or_default().push(r);
            }
            let mut y = vec![0i64; cells.len()];
            for (k, rows) in rows_of.values().enumerate() {
                for &r in rows {
                    y[r] = k as i64;
                }
            }
            Target::Classes { y, names: rows_of.into_keys().map(str::to_string).collect() }
        }
    };
    Ok(Table {
        feature_names: features.iter().map(|&i| header[i].clone()).collect(),
        x,
        target: target_column,
        target_name: target.to_string(),
    })
}

/// Per-feature mean and std of x [rows × features] row-major (a trailing partial row is ignored),
/// for standardizing with training-split statistics: mean = Σx/N, std = √(Σ(x − mean)²/N)
/// (population std, ddof 0, as sklearn's StandardScaler). A constant column gets std 1, so it
/// maps to 0 instead of dividing by zero (sklearn does the same). No rows: mean 0, std 1.
pub fn standardize_stats(x: &[f32], features: usize) -> (Vec<f32>, Vec<f32>) {
    let rows = x.len().checked_div(features).unwrap_or(0);
    let row = |r: usize| &x[r * features..(r + 1) * features];
    let mut sum = vec![0f64; features];
    let mut constant = vec![true; features];
    for r in 0..rows {
        for (j, &v) in row(r).iter().enumerate() {
            sum[j] += v as f64;
            constant[j] &= v == x[j];
        }
    }
    let n = rows.max(1) as f64;
    let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
    let mut sq = vec![0f64; features];
    for r in 0..rows {
        for (j, &v) in row(r).iter().enumerate() {
            sq[j] += (v as f64 - mean[j]).powi(2);
        }
    }
    // Tested on the values, not on std == 0: Σx/N of a constant column can be off by an ulp.
    let std = (0..features).map(|j| if rows == 0 || constant[j] { 1.0 } else { (sq[j] / n).sqrt() as f32 }).collect();
    (mean.iter().map(|&m| m as f32).collect(), std)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn error(name: &str, text: &str, target: &str) -> String {
        let d = tempfile::tempdir().unwrap();
        let e = load(&write(&d, name, text), target).unwrap_err().to_string();
        assert!(e.contains(name) && !e.contains('\n'), "{e}");
        e
    }

    #[test]
    fn numeric_target_is_read_as_values_and_other_columns_as_features() {
        let d = tempfile::tempdir().unwrap();
        let p = write(&d, "houses.csv", "rooms, price ,area\n 3 ,250.5,80\n4,300,1e2\n");
        let t = load(&p, "price").unwrap();
        assert_eq!(t.feature_names, ["rooms", "area"]);
        assert_eq!(t.x, [3.0, 80.0, 4.0, 100.0]);
        assert_eq!(t.target, Target::Values(vec![250.5, 300.0]));
        assert_eq!(t.target_name, "price");
        assert_eq!(t.rows(), 2);
    }

    #[test]
    fn text_target_maps_sorted_names_to_indices() {
        let d = tempfile::tempdir().unwrap();
        let p = write(&d, "pets.tsv", "weight\tkind\n4\tcat\n30\tdog\n5\tcat\n0.1\tant\n");
        let t = load(&p, "kind").unwrap();
        assert_eq!(t.x, [4.0, 30.0, 5.0, 0.1]);
        let names = vec!["ant".to_string(), "cat".into(), "dog".into()];
        assert_eq!(t.target, Target::Classes { y: vec![1, 2, 1, 0], names });
    }

    #[test]
    fn a_target_mixing_numbers_and_text_or_holding_nan_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let p = write(&d, "t.csv", "a,y\n1,2\n2,10\n3,x\n");
        let e = format!("{:#}", load(&p, "y").unwrap_err());
        assert!(e.contains("line 4, column 'y': 'x' is not a number"), "{e}");
        let p = write(&d, "n.csv", "a,y\n1,2\n2,nan\n");
        let e = format!("{:#}", load(&p, "y").unwrap_err());
        assert!(e.contains("line 3, column 'y'") && e.contains("finite"), "{e}");
    }

    #[test]
    fn missing_target_column_lists_the_columns() {
        let e = error("t.csv", "a,b,c\n1,2,3\n", "price");
        assert!(e.contains("no column 'price' (columns: a, b, c); pass --target"), "{e}");
    }

    #[test]
    fn a_ragged_row_names_its_line() {
        let e = error("t.csv", "a,b,y\n1,2,3\n1,2\n", "y");
        assert!(e.contains("line 3 has 2 fields but the header has 3"), "{e}");
    }

    #[test]
    fn a_non_numeric_feature_names_line_and_column() {
        let e = error("people.csv", "age,y\n1,0\n2,1\nabc,1\n", "y");
        assert!(e.contains("line 4, column 'age': 'abc' is not a number; feature columns must be numeric"), "{e}");
    }

    #[test]
    fn line_numbers_count_newlines_inside_quoted_cells() {
        let e = error("t.csv", "a,b,y\n\"1\n\",2,3\nx,2,3\n", "y");
        assert!(e.contains("line 4, column 'a'"), "{e}");
    }

    #[test]
    fn an_empty_feature_cell_is_an_error() {
        let e = error("t.csv", "a,b,y\n1, ,3\n", "y");
        assert!(e.contains("line 2, column 'b': empty cell"), "{e}");
    }

    #[test]
    fn nan_and_inf_features_are_errors() {
        let e = error("t.csv", "a,y\nNaN,3\n", "y");
        assert!(e.contains("line 2, column 'a': 'NaN' is not a finite number"), "{e}");
        let e = error("t.csv", "a,y\n1,3\n-inf,3\n", "y");
        assert!(e.contains("line 3, column 'a': '-inf' is not a finite number"), "{e}");
    }

    #[test]
    fn an_empty_target_cell_is_an_error() {
        let e = error("t.csv", "a,y\n1,3\n2,\n", "y");
        assert!(e.contains("line 3, column 'y': empty target cell"), "{e}");
    }

    #[test]
    fn a_header_without_rows_is_an_error() {
        let e = error("t.csv", "a,y\n", "y");
        assert!(e.contains("a header but no rows"), "{e}");
    }

    #[test]
    fn standardize_stats_uses_population_std_and_keeps_constant_columns() {
        // Columns: [1, 3] → mean 2, std 1; [0.1, 0.1] constant → std 1.
        let (m, s) = standardize_stats(&[1.0, 0.1, 3.0, 0.1], 2);
        assert_eq!(m, [2.0, 0.1]);
        assert_eq!(s, [1.0, 1.0]);
        let (m, s) = standardize_stats(&[0.0, 0.0, 6.0], 1);
        assert_eq!(m, [2.0]);
        assert!((s[0] - 8f32.sqrt()).abs() < 1e-6, "{s:?}");
    }
}
