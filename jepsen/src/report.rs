//! The run's pictures and availability figures: `latency.svg` (every operation's latency over time, by outcome,
//! with the fault windows shaded) and `availability.json` (time without a leader, and the time from each fault to
//! the first acknowledged write after it).

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use serde_json::json;

use crate::checker::Verdict;
use crate::history::{pair, Op, OpType};

/// A fault window, in seconds since the start.
#[derive(Debug, Clone)]
pub struct Window {
    /// What it was.
    pub fault: String,
    /// When it started.
    pub start_s: f64,
    /// When it was healed (the end of the run if never).
    pub end_s: f64,
}

/// The nemesis windows of a history.
pub fn windows(history: &[Op]) -> Vec<Window> {
    let end_s = history.last().map_or(0.0, |o| o.time_ns as f64 / 1e9);
    let mut open: Vec<Window> = Vec::new();
    let mut done = Vec::new();
    for op in history.iter().filter(|o| o.f == "nemesis" && o.is_invoke()) {
        let fault = op.key.clone().unwrap_or_default();
        let at = op.time_ns as f64 / 1e9;
        if op.value == "start" {
            open.push(Window { fault, start_s: at, end_s });
        } else if let Some(i) = open.iter().position(|w| w.fault == fault) {
            let mut w = open.remove(i);
            w.end_s = at;
            done.push(w);
        }
    }
    done.extend(open);
    done.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
    done
}

/// Writes `latency.svg` and `availability.json` into `dir`.
pub fn write(dir: &Path, history: &[Op], _verdicts: &[Verdict]) -> Result<()> {
    let windows = windows(history);
    plot_latency(&dir.join("latency.svg"), history, &windows)?;
    std::fs::write(dir.join("availability.json"), serde_json::to_vec_pretty(&availability(history, &windows))?)?;
    Ok(())
}

fn plot_latency(path: &Path, history: &[Op], windows: &[Window]) -> Result<()> {
    let points: Vec<(f64, f64, OpType, String)> = pair(history)
        .into_iter()
        .filter(|c| c.invoke.f != "nemesis")
        .filter_map(|c| {
            let end = c.completion?;
            let start_s = c.invoke.time_ns as f64 / 1e9;
            let latency_ms = (end.time_ns.saturating_sub(c.invoke.time_ns)) as f64 / 1e6;
            Some((start_s, latency_ms.max(0.01), end.op_type, c.invoke.f.clone()))
        })
        .collect();
    let max_s = history.last().map_or(1.0, |o| o.time_ns as f64 / 1e9).max(1.0);
    let max_ms = points.iter().map(|p| p.1).fold(1.0f64, f64::max) * 1.5;
    let root = SVGBackend::new(path, (1400, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .caption("Operation latency over time (shaded: faults)", ("sans-serif", 20))
        .build_cartesian_2d(0.0..max_s, (0.01..max_ms).log_scale())
        .map_err(|e| anyhow!("{e}"))?;
    chart.configure_mesh().x_desc("seconds since start").y_desc("latency (ms)").draw().map_err(|e| anyhow!("{e}"))?;
    for w in windows {
        let shade = RGBColor(255, 200, 120).mix(0.3).filled();
        chart
            .draw_series(std::iter::once(Rectangle::new([(w.start_s, 0.01), (w.end_s, max_ms)], shade)))
            .map_err(|e| anyhow!("{e}"))?;
    }
    for (kind, color) in [(OpType::Ok, GREEN), (OpType::Fail, RED), (OpType::Info, BLUE)] {
        let series = points.iter().filter(|p| p.2 == kind).map(|p| Circle::new((p.0, p.1), 2, color.filled()));
        chart
            .draw_series(series)
            .map_err(|e| anyhow!("{e}"))?
            .label(format!("{kind:?}").to_lowercase())
            .legend(move |(x, y)| Circle::new((x, y), 4, color.filled()));
    }
    chart.configure_series_labels().border_style(BLACK).draw().map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// Time without a leader (from the `status` observations: no replica claimed to lead) and, per fault, the time
/// from its start to the first write acknowledged after it.
pub fn availability(history: &[Op], windows: &[Window]) -> serde_json::Value {
    // The observer asks every replica about itself about four times a second; a 250 ms bucket in which replicas
    // answered and none claimed to lead counts as leaderless. Approximate by a bucket, and blind while no replica
    // answers at all (everything killed): those buckets are counted too, as nobody leads then.
    const BUCKET_NS: u64 = 250_000_000;
    let mut buckets: std::collections::BTreeMap<u64, bool> = std::collections::BTreeMap::new();
    for op in history.iter().filter(|o| o.f == "status" && !o.is_invoke()) {
        let leads = op.op_type == OpType::Ok && op.value["state"] == "Leader";
        *buckets.entry(op.time_ns / BUCKET_NS).or_insert(false) |= leads;
    }
    let leaderless_s = buckets.values().filter(|led| !**led).count() as f64 * BUCKET_NS as f64 / 1e9;
    let acked_writes: Vec<f64> = pair(history)
        .into_iter()
        .filter(|c| matches!(c.invoke.f.as_str(), "write" | "submit" | "cancel") && c.outcome() == OpType::Ok)
        .filter_map(|c| c.end_ns().map(|ns| ns as f64 / 1e9))
        .collect();
    let recoveries: Vec<serde_json::Value> = windows
        .iter()
        .map(|w| {
            let first = acked_writes.iter().copied().filter(|t| *t >= w.start_s).fold(f64::INFINITY, f64::min);
            json!({
                "fault": w.fault,
                "start_s": w.start_s,
                "healed_s": w.end_s,
                "first_ack_after_s": first.is_finite().then_some(first - w.start_s),
            })
        })
        .collect();
    json!({ "approx_leaderless_s": leaderless_s, "faults": recoveries })
}
