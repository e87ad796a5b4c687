//! `onnxsam plot RUN_DIR`: train/test loss and accuracy, learning rate (and ρ), effective sample
//! size, adaptive λ and tr V per step (and tr V at the end), and a histogram of the last step's RW
//! weights — one PNG.
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use serde_json::{Map, Value};

use crate::train::metrics;

const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSansMono.ttf");

fn series(rows: &[Map<String, Value>], kind: &str, key: &str) -> Vec<(f64, f64)> {
    rows.iter()
        .filter(|r| r.get("kind").and_then(|k| k.as_str()) == Some(kind))
        .filter_map(|r| Some((r.get("step")?.as_f64()?, r.get(key)?.as_f64()?)))
        .filter(|(_, v)| v.is_finite())
        .collect()
}

/// Moving average over `w` points (per-step curves are noisy).
fn smooth(p: &[(f64, f64)], w: usize) -> Vec<(f64, f64)> {
    if p.len() <= w {
        return p.to_vec();
    }
    let mut out = Vec::with_capacity(p.len());
    let mut acc = 0.0;
    for (i, &(x, y)) in p.iter().enumerate() {
        acc += y;
        if i >= w {
            acc -= p[i - w].1;
        }
        let n = (i + 1).min(w) as f64;
        out.push((x, acc / n));
    }
    out
}

fn bounds(curves: &[&[(f64, f64)]], log: bool) -> (f64, f64, f64, f64) {
    let pts: Vec<&(f64, f64)> = curves.iter().flat_map(|c| c.iter()).filter(|(_, y)| !log || *y > 0.0).collect();
    let x1 = pts.iter().map(|p| p.0).fold(1.0, f64::max);
    let (mut y0, mut y1) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    if pts.is_empty() {
        (y0, y1) = (0.0, 1.0);
    }
    if (y1 - y0).abs() < 1e-12 {
        y1 = y0 + 1.0;
    }
    let pad = 0.05 * (y1 - y0);
    (0.0, x1, if log { y0 } else { y0 - pad }, y1 + pad)
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

fn panel(area: &Area, title: &str, curves: &[(&str, &[(f64, f64)], RGBColor)]) -> Result<()> {
    let e = |e: &dyn std::fmt::Display| anyhow!("plot: {e}");
    let all: Vec<&[(f64, f64)]> = curves.iter().map(|c| c.1).collect();
    if all.iter().all(|c| c.is_empty()) {
        area.titled(&format!("{title}: not recorded"), ("sans-serif", 18)).map_err(|x| e(&x))?;
        return Ok(());
    }
    let (x0, x1, y0, y1) = bounds(&all, false);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|x| e(&x))?;
    chart.configure_mesh().x_desc("step").light_line_style(WHITE).draw().map_err(|x| e(&x))?;
    for (label, pts, color) in curves {
        if pts.is_empty() {
            continue;
        }
        let c = *color;
        // a lone point (one evaluation, the end-of-run tr V) is a marker; a line needs two
        if pts.len() == 1 {
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 5, c.filled())))
                .map_err(|x| e(&x))?
                .label(*label)
                .legend(move |(x, y)| Circle::new((x + 10, y), 5, c.filled()));
            continue;
        }
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
            .map_err(|x| e(&x))?
            .label(*label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|x| e(&x))?;
    Ok(())
}

/// Histogram of log₁₀(b·pᵢ) (0 = the uniform weight 1/b).
fn weights_panel(area: &Area, w: Option<Vec<f64>>) -> Result<()> {
    let e = |e: &dyn std::fmt::Display| anyhow!("plot: {e}");
    let Some(w) = w.filter(|w| !w.is_empty()) else {
        area.titled("RW weights: no reweighting in this run", ("sans-serif", 18)).map_err(|x| e(&x))?;
        return Ok(());
    };
    let b = w.len() as f64;
    let v: Vec<f64> = w.iter().map(|p| (p * b).max(1e-12).log10()).collect();
    let (lo, hi) = v.iter().fold((f64::MAX, f64::MIN), |(a, c), &x| (a.min(x), c.max(x)));
    let (lo, hi) = if hi - lo < 1e-9 { (lo - 0.5, hi + 0.5) } else { (lo, hi) };
    let bins = 30;
    let width = (hi - lo) / bins as f64;
    let mut counts = vec![0usize; bins];
    for x in &v {
        counts[(((x - lo) / width) as usize).min(bins - 1)] += 1;
    }
    let top = *counts.iter().max().unwrap_or(&1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption("last step's RW weights: log10(b·p)", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(lo..hi, 0.0..top * 1.1)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("log10(b·p), 0 = uniform")
        .y_desc("samples")
        .light_line_style(WHITE)
        .draw()
        .map_err(|x| e(&x))?;
    chart
        .draw_series(counts.iter().enumerate().map(|(i, &c)| {
            let x = lo + i as f64 * width;
            Rectangle::new([(x, 0.0), (x + width * 0.9, c as f64)], BLUE.filled())
        }))
        .map_err(|x| e(&x))?;
    Ok(())
}

pub fn plot(run: &Path, out: Option<&Path>) -> Result<PathBuf> {
    let rows = metrics::read(run)?;
    let path = out.map(Path::to_path_buf).unwrap_or_else(|| run.join("curves.png"));
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    let e = |e: &dyn std::fmt::Display| anyhow!("plot: {e}");
    {
        let root = BitMapBackend::new(&path, (2000, 900)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let areas = root.split_evenly((2, 4));
        let train_loss = smooth(&series(&rows, "step", "loss"), 20);
        let train_acc = smooth(&series(&rows, "step", "acc"), 20);
        panel(
            &areas[0],
            "loss",
            &[
                ("train (per step, smoothed)", &train_loss, BLUE),
                ("val", &series(&rows, "epoch", "val_loss"), GREEN),
                ("test", &series(&rows, "epoch", "test_loss"), RED),
            ],
        )?;
        panel(
            &areas[1],
            "accuracy",
            &[
                ("train (per step, smoothed)", &train_acc, BLUE),
                ("val", &series(&rows, "epoch", "val_acc"), GREEN),
                ("test", &series(&rows, "epoch", "test_acc"), RED),
            ],
        )?;
        panel(
            &areas[2],
            "learning rate and rho",
            &[("lr", &series(&rows, "step", "lr"), BLUE), ("rho", &series(&rows, "step", "rho"), RED)],
        )?;
        panel(
            &areas[3],
            "effective sample size (RW weights)",
            &[("ESS", &smooth(&series(&rows, "step", "ess"), 20), BLUE)],
        )?;
        // --reweight auto: the λ each step chose (unsmoothed: it is the quantity being steered)
        panel(&areas[4], "lambda (--reweight auto)", &[("lambda", &series(&rows, "step", "lambda"), RED)])?;
        panel(
            &areas[5],
            "tr V",
            &[
                ("estimate per step (RW-SAM)", &smooth(&series(&rows, "step", "trace_v"), 20), BLUE),
                ("exact, end (--trace-v)", &series(&rows, "trace_v", "trace_v"), RED),
            ],
        )?;
        let w = crate::tensor::read_npz(&run.join("sample_weights.npz"))
            .ok()
            .and_then(|a| a.get("sample_weights").map(|t| t.to_f64()));
        weights_panel(&areas[6], w)?;
        root.present().map_err(|x| e(&x))?;
    }
    Ok(path)
}
