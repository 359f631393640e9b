//! The run's pictures and availability figures: `latency.svg` (every operation's latency over time, by outcome,
//! with the fault windows shaded), `availability.json` (time without a leader, and the time from each fault to
//! the first acknowledged write after it) and `availability.svg`, the same over time: whether a leader was known
//! (leaderless stretches shaded), acknowledged writes per second, the fault windows shaded, and at each fault a
//! marker where its first acknowledged write landed, labelled with the time it took.
//!
//! Leaderless time comes from the observers' `status` samples (every replica asked about itself about four
//! times a second): each replica's latest answer holds until its next one, and a leader is known while some
//! replica's latest answer claims to lead (a replica that did not answer does not). It is approximate by the
//! sampling period, and "claims to lead" includes a deposed leader that has not noticed yet.

use std::collections::BTreeMap;
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

/// Writes `latency.svg`, `availability.json` and `availability.svg` into `dir`.
pub fn write(dir: &Path, history: &[Op], _verdicts: &[Verdict]) -> Result<()> {
    let windows = windows(history);
    plot_latency(&dir.join("latency.svg"), history, &windows)?;
    std::fs::write(dir.join("availability.json"), serde_json::to_vec_pretty(&availability(history, &windows))?)?;
    plot_availability(&dir.join("availability.svg"), history, &windows)?;
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

/// What the `status` samples say about leadership at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leadership {
    /// Some replica's fresh answer claims to lead.
    Known,
    /// Replicas answered (or failed to) recently, and none claims to lead.
    None,
    /// No replica's answer is fresh: the observers were waiting, nothing is known.
    Unobserved,
}

/// How long a replica's answer to `status` stands for its state.
const SAMPLE_FRESH_S: f64 = 1.0;
/// The resolution of the leadership timeline.
const STEP_S: f64 = 0.05;

/// The leadership timeline from the first `status` sample to the last, as maximal stretches
/// `(start_s, end_s, state)`, at [`STEP_S`] resolution: each replica's latest answer holds for
/// [`SAMPLE_FRESH_S`] (a failed one says it does not lead).
fn leadership(history: &[Op]) -> Vec<(f64, f64, Leadership)> {
    let mut samples: Vec<(f64, u64, bool)> = history
        .iter()
        .filter(|o| o.f == "status" && !o.is_invoke())
        .map(|o| {
            let leads = o.op_type == OpType::Ok && o.value["state"] == "Leader";
            (o.time_ns as f64 / 1e9, o.node.unwrap_or(u64::MAX), leads)
        })
        .collect();
    samples.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (Some(first), Some(last)) = (samples.first().map(|s| s.0), samples.last().map(|s| s.0)) else {
        return Vec::new();
    };
    let mut latest: BTreeMap<u64, (f64, bool)> = BTreeMap::new();
    let mut next = 0;
    let mut stretches: Vec<(f64, f64, Leadership)> = Vec::new();
    let steps = ((last - first) / STEP_S).ceil() as usize;
    for i in 0..steps {
        let t = first + i as f64 * STEP_S;
        while let Some((at, node, leads)) = samples.get(next).filter(|s| s.0 <= t) {
            latest.insert(*node, (*at, *leads));
            next += 1;
        }
        let fresh: Vec<bool> =
            latest.values().filter(|(at, _)| t - at <= SAMPLE_FRESH_S).map(|(_, leads)| *leads).collect();
        let state = match (fresh.is_empty(), fresh.contains(&true)) {
            (true, _) => Leadership::Unobserved,
            (false, true) => Leadership::Known,
            (false, false) => Leadership::None,
        };
        let end = (t + STEP_S).min(last);
        match stretches.last_mut() {
            Some(stretch) if stretch.2 == state => stretch.1 = end,
            _ => stretches.push((t, end, state)),
        }
    }
    stretches
}

/// The stretches of one state, `(start_s, end_s)`.
fn stretches_of(timeline: &[(f64, f64, Leadership)], state: Leadership) -> Vec<(f64, f64)> {
    timeline.iter().filter(|s| s.2 == state).map(|s| (s.0, s.1)).collect()
}

fn total_s(stretches: &[(f64, f64)]) -> f64 {
    stretches.iter().fold(0.0, |total, (start, end)| total + (end - start))
}

/// When each acknowledged write (`write`, `submit`, `cancel` completed `ok`) completed, in seconds, ascending.
fn acked_writes(history: &[Op]) -> Vec<f64> {
    let mut acked: Vec<f64> = pair(history)
        .into_iter()
        .filter(|c| matches!(c.invoke.f.as_str(), "write" | "submit" | "cancel") && c.outcome() == OpType::Ok)
        .filter_map(|c| c.end_ns().map(|ns| ns as f64 / 1e9))
        .collect();
    acked.sort_by(f64::total_cmp);
    acked
}

/// Seconds from the window's start to the first acknowledged write completed after it, if any.
fn first_ack_after(acked: &[f64], window: &Window) -> Option<f64> {
    acked.iter().find(|t| **t >= window.start_s).map(|t| t - window.start_s)
}

/// Time without a leader (from the `status` observations: no replica claimed to lead), time the observers saw
/// nothing, and, per fault, the time from its start to the first write acknowledged after it.
pub fn availability(history: &[Op], windows: &[Window]) -> serde_json::Value {
    let timeline = leadership(history);
    let leaderless_s = total_s(&stretches_of(&timeline, Leadership::None));
    let unobserved_s = total_s(&stretches_of(&timeline, Leadership::Unobserved));
    let acked = acked_writes(history);
    let recoveries: Vec<serde_json::Value> = windows
        .iter()
        .map(|w| {
            json!({
                "fault": w.fault,
                "start_s": w.start_s,
                "healed_s": w.end_s,
                "first_ack_after_s": first_ack_after(&acked, w),
            })
        })
        .collect();
    json!({ "approx_leaderless_s": leaderless_s, "unobserved_s": unobserved_s, "faults": recoveries })
}

/// Draws `availability.svg`: on top whether a leader was known (a step line, leaderless stretches shaded red),
/// below acknowledged writes per second; fault windows shaded in both, and per fault a marker at its first
/// acknowledged write, labelled with the fault and the time it took ("no ack" if none came).
fn plot_availability(path: &Path, history: &[Op], windows: &[Window]) -> Result<()> {
    // The final reads after the heal can take long and say nothing about availability: end 10 s after the heal.
    let end_s = history.last().map_or(1.0, |o| o.time_ns as f64 / 1e9);
    let heal_s = windows.iter().filter(|w| w.fault == "heal").map(|w| w.end_s + 10.0).fold(f64::INFINITY, f64::min);
    let max_s = end_s.min(heal_s).max(1.0);
    let timeline = leadership(history);
    let stretches = stretches_of(&timeline, Leadership::None);
    let unobserved = stretches_of(&timeline, Leadership::Unobserved);
    let acked = acked_writes(history);
    let seconds = max_s.ceil() as usize + 1;
    let mut per_second = vec![0u32; seconds];
    for t in acked.iter().filter(|t| **t <= max_s) {
        per_second[(*t as usize).min(seconds - 1)] += 1;
    }
    // The top 45% of the rate panel holds the fault labels.
    let rate_top = f64::from(per_second.iter().copied().max().unwrap_or(0).max(1)) * 1.05;
    let max_rate = rate_top / 0.55;
    let (leaderless_s, unobserved_s) = (total_s(&stretches), total_s(&unobserved));
    let fault_shade = RGBColor(255, 200, 120).mix(0.3).filled();
    let leaderless_shade = RGBColor(230, 60, 60).mix(0.35).filled();
    let unobserved_shade = RGBColor(120, 120, 120).mix(0.3).filled();
    let err = |e: &dyn std::fmt::Display| anyhow!("{e}");

    let root = SVGBackend::new(path, (1400, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(230);

    let mut leader = ChartBuilder::on(&top)
        .margin(20)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .caption(
            format!(
                "Leader known (red: leaderless, {leaderless_s:.1} s in all; grey: unobserved, {unobserved_s:.1} s; \
                 orange: faults)"
            ),
            ("sans-serif", 20),
        )
        .build_cartesian_2d(0.0..max_s, -0.1..1.3)
        .map_err(|e| err(&e))?;
    leader
        .configure_mesh()
        .y_labels(3)
        .y_label_formatter(&|y| match *y {
            y if y > 0.75 => "leader".into(),
            y if y > 0.25 => "unobserved".into(),
            _ => "none".into(),
        })
        .disable_y_mesh()
        .draw()
        .map_err(|e| err(&e))?;
    leader
        .draw_series(windows.iter().map(|w| Rectangle::new([(w.start_s, -0.1), (w.end_s, 1.3)], fault_shade)))
        .map_err(|e| err(&e))?;
    leader
        .draw_series(stretches.iter().map(|(a, b)| Rectangle::new([(*a, -0.1), (*b, 1.3)], leaderless_shade)))
        .map_err(|e| err(&e))?
        .label("leaderless")
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], leaderless_shade));
    leader
        .draw_series(unobserved.iter().map(|(a, b)| Rectangle::new([(*a, -0.1), (*b, 1.3)], unobserved_shade)))
        .map_err(|e| err(&e))?
        .label("unobserved (no fresh status sample)")
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], unobserved_shade));
    let steps = timeline.iter().flat_map(|(start, end, state)| {
        let y = match state {
            Leadership::Known => 1.0,
            Leadership::Unobserved => 0.5,
            Leadership::None => 0.0,
        };
        [(*start, y), (*end, y)]
    });
    leader
        .draw_series(LineSeries::new(steps, BLUE.stroke_width(2)))
        .map_err(|e| err(&e))?
        .label("a replica claims to lead")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 10, y)], BLUE.stroke_width(2)));
    leader.configure_series_labels().border_style(BLACK).background_style(WHITE).draw().map_err(|e| err(&e))?;

    let mut writes = ChartBuilder::on(&bottom)
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .caption(
            "Acknowledged writes per second (red triangles: the first acknowledged write after each fault)",
            ("sans-serif", 20),
        )
        .build_cartesian_2d(0.0..max_s, 0.0..max_rate)
        .map_err(|e| err(&e))?;
    writes
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc("acknowledged writes / s")
        .draw()
        .map_err(|e| err(&e))?;
    writes
        .draw_series(windows.iter().map(|w| Rectangle::new([(w.start_s, 0.0), (w.end_s, max_rate)], fault_shade)))
        .map_err(|e| err(&e))?;
    writes
        .draw_series(stretches.iter().map(|(a, b)| Rectangle::new([(*a, 0.0), (*b, max_rate)], leaderless_shade)))
        .map_err(|e| err(&e))?;
    writes
        .draw_series(unobserved.iter().map(|(a, b)| Rectangle::new([(*a, 0.0), (*b, max_rate)], unobserved_shade)))
        .map_err(|e| err(&e))?;
    let rate = per_second.iter().enumerate().map(|(second, n)| (second as f64 + 0.5, f64::from(*n)));
    writes
        .draw_series(LineSeries::new(rate, GREEN.stroke_width(2)))
        .map_err(|e| err(&e))?
        .label("acknowledged writes / s")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 10, y)], GREEN.stroke_width(2)));
    // One marker per fault, at its first acknowledged write, with its label written upwards from there, so that
    // neighbouring faults stay readable.
    let label_font = ("sans-serif", 11).into_font().transform(FontTransform::Rotate270);
    for w in windows {
        let (x, text) = match first_ack_after(&acked, w) {
            Some(after) => (w.start_s + after, format!("{}: {after:.2} s", w.fault)),
            None => (w.start_s, format!("{}: no ack", w.fault)),
        };
        writes
            .draw_series([
                TriangleMarker::new((x, rate_top), 5, RED.filled()),
                TriangleMarker::new((x, 0.0), 4, RED.filled()),
            ])
            .map_err(|e| err(&e))?;
        writes
            .draw_series(std::iter::once(Text::new(text, (x, rate_top * 1.04), label_font.clone())))
            .map_err(|e| err(&e))?;
    }
    writes.configure_series_labels().border_style(BLACK).background_style(WHITE).draw().map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(process, type, f, key, value, seconds)`.
    type Event<'a> = (u64, OpType, &'a str, Option<&'a str>, serde_json::Value, f64);

    /// A history built at explicit times.
    fn history(events: &[Event<'_>]) -> Vec<Op> {
        let mut events = events.to_vec();
        events.sort_by(|a, b| a.5.total_cmp(&b.5));
        events
            .into_iter()
            .enumerate()
            .map(|(index, (process, op_type, f, key, value, at_s))| Op {
                index,
                process,
                op_type,
                f: f.to_string(),
                key: key.map(str::to_string),
                value,
                time_ns: (at_s * 1e9) as u64,
                node: Some(1),
                error: None,
            })
            .collect()
    }

    /// 20 s: a leader except from 5 s to 7 s; writes acknowledged every 100 ms except from 5 s to 7.5 s and after
    /// 19 s; faults `kill-leader 1` (5–8 s), `partition-ring` (12–14 s) and `restart-all` (19.5–20 s); the heal at
    /// 20.1 s and a final read until 90 s.
    fn synthetic() -> Vec<Op> {
        let mut events = Vec::new();
        for n in 0..80 {
            let at = n as f64 * 0.25 + 0.01;
            let state = if (5.0..7.0).contains(&at) { "Candidate" } else { "Leader" };
            events.push((1, OpType::Invoke, "status", None, json!(null), at));
            events.push((1, OpType::Ok, "status", None, json!({"term": 1, "leader": 1, "state": state}), at + 0.005));
        }
        for n in 0..190 {
            let at = n as f64 * 0.1 + 0.02;
            if (4.9..7.4).contains(&at) {
                continue;
            }
            let process = 10 + n;
            events.push((process, OpType::Invoke, "write", Some("r0"), json!(n), at));
            events.push((process, OpType::Ok, "write", Some("r0"), json!(n), at + 0.05));
        }
        // The final reads end long after the heal; the plot ends 10 s after it.
        events.push((9, OpType::Invoke, "read-jobs", None, json!(null), 20.2));
        events.push((9, OpType::Ok, "read-jobs", None, json!({"jobs": []}), 90.0));
        for (fault, start, stop) in [
            ("kill-leader 1", 5.0, 8.0),
            ("partition-ring", 12.0, 14.0),
            ("restart-all", 19.5, 20.0),
            ("heal", 20.1, 20.1),
        ] {
            events.push((0, OpType::Invoke, "nemesis", Some(fault), json!("start"), start));
            events.push((0, OpType::Invoke, "nemesis", Some(fault), json!("stop"), stop));
        }
        history(&events)
    }

    /// Whether `(start, end)` is within one timeline step of the expected one.
    fn near(actual: (f64, f64), expected: (f64, f64)) -> bool {
        (actual.0 - expected.0).abs() <= STEP_S + 1e-9 && (actual.1 - expected.1).abs() <= STEP_S + 1e-9
    }

    #[test]
    fn leaderless_time_runs_from_the_first_sample_without_a_leader_to_the_next_with_one() {
        let timeline = leadership(&synthetic());
        let states: Vec<Leadership> = timeline.iter().map(|s| s.2).collect();
        assert_eq!(states, [Leadership::Known, Leadership::None, Leadership::Known], "{timeline:?}");
        let leaderless = stretches_of(&timeline, Leadership::None);
        assert!(near(leaderless[0], (5.015, 7.015)), "{leaderless:?}");
    }

    #[test]
    fn a_leader_is_known_while_any_replica_claims_it_and_nothing_is_known_without_fresh_samples() {
        let mut events = Vec::new();
        // Replica 1 leads, then stops answering at 2 s; replica 2 follows until it leads at 3 s. No sample at all
        // from 5 s to 8 s; then both claim to lead (replica 1 in an older term, not having noticed).
        for n in (0..20).chain(32..36) {
            let at = n as f64 * 0.25;
            let one = if !(2.0..8.0).contains(&at) { "Leader" } else { "" };
            let two = if at < 3.0 { "Follower" } else { "Leader" };
            for (node, state) in [(1, one), (2, two)] {
                let outcome = if state.is_empty() { OpType::Fail } else { OpType::Ok };
                let at = at + 0.01 * node as f64;
                events.push((node, OpType::Invoke, "status", None, json!(null), at));
                events.push((node, outcome, "status", None, json!({"state": state}), at + 0.001));
            }
        }
        let mut history = history(&events);
        for op in &mut history {
            op.node = Some(op.process);
        }
        let timeline = leadership(&history);
        let leaderless = stretches_of(&timeline, Leadership::None);
        assert_eq!(leaderless.len(), 1, "{timeline:?}");
        assert!(near(leaderless[0], (2.011, 3.021)), "{leaderless:?}");
        // The last samples before the gap are at 4.77 s; they stand for a second.
        let unobserved = stretches_of(&timeline, Leadership::Unobserved);
        assert_eq!(unobserved.len(), 1, "{timeline:?}");
        assert!(near(unobserved[0], (5.771, 8.011)), "{unobserved:?}");
        let figures = availability(&history, &[]);
        assert!((figures["unobserved_s"].as_f64().unwrap() - 2.24).abs() < 0.1, "{figures}");
    }

    #[test]
    fn the_availability_plot_shows_leaderless_time_write_rate_faults_and_recovery_labels() {
        let history = synthetic();
        let windows = windows(&history);
        assert_eq!(windows.len(), 4);
        let dir = std::env::temp_dir().join(format!("jepsen-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write(&dir, &history, &[]).unwrap();
        let svg = std::fs::read_to_string(dir.join("availability.svg")).unwrap();
        let figures: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("availability.json")).unwrap()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();

        // Each fault labelled with the time to its first acknowledged write (7.45 s - 5 s; 12.02 + 0.05 - 12 s),
        // or with none.
        assert!(svg.contains("kill-leader 1: 2.47 s"), "{svg}");
        assert!(svg.contains("partition-ring: 0.07 s"), "{svg}");
        assert!(svg.contains("restart-all: no ack"), "{svg}");
        let caption = "leaderless, 2.0 s in all; grey: unobserved, 0.0 s";
        assert!(svg.contains(caption), "the caption gives the totals: {}", &svg[..svg.len().min(3000)]);
        assert_eq!(figures["faults"][0]["first_ack_after_s"].as_f64().map(|s| (s * 100.0).round()), Some(247.0));
        assert!((figures["approx_leaderless_s"].as_f64().unwrap() - 2.0).abs() < 1e-6, "{figures}");
        // Two series: the leader step line (two points per stretch: led, leaderless, led) and the write rate (one
        // point per second).
        let polylines: Vec<usize> = svg
            .split("<polyline")
            .skip(1)
            .map(|p| {
                p.split("points=\"").nth(1).and_then(|p| p.split('"').next()).unwrap_or("").split_whitespace().count()
            })
            .collect();
        assert!(polylines.contains(&6), "no leader step line: {polylines:?}");
        assert!(polylines.iter().any(|points| (29..=33).contains(points)), "no write rate line to 30 s: {polylines:?}");
        // Fault windows (4 in each panel) and the leaderless stretch (once in each panel) are shaded; the labels
        // are written upwards.
        assert_eq!(svg.matches("rotate(270").count(), 4 + 1, "4 labels and the y axis description: {svg}");
        assert!(svg.matches("<rect").count() >= 4 * 2 + 2, "{svg}");
        // Red triangle markers: two per fault.
        assert!(svg.matches("<polygon").count() >= 8, "{svg}");
    }
}
