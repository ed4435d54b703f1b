//! The paper's Table 1 (config, accuracy, average GFLOPs per sample, exit fraction per
//! gate, optionally latency) as aligned text, CSV and JSON.

use super::eval::{Outcome, SweepPoint};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// One row of Table 1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReportRow {
    /// Network name, e.g. `ResNet-101` (may be empty).
    pub model: String,
    /// `original`, `dg(1.0, 2.0)`, or any label.
    pub config: String,
    pub accuracy_pct: f64,
    /// Average GFLOPs per sample.
    pub gflops: f64,
    /// Per gate, the fraction of samples that left there.
    pub exit_fraction: Vec<f64>,
    /// Latency per batch or sample, when measured by the caller.
    pub ms: Option<f64>,
}

impl ReportRow {
    /// A row for a swept or calibrated setting, labelled with [`config_label`].
    pub fn from_point(model: &str, p: &SweepPoint) -> Self {
        ReportRow {
            model: model.to_string(),
            config: config_label(&p.thresholds),
            accuracy_pct: p.accuracy * 100.0,
            gflops: p.avg_flops / 1e9,
            exit_fraction: p.exit_fraction.clone(),
            ms: None,
        }
    }

    pub fn from_outcome(model: &str, o: &Outcome) -> Self {
        ReportRow {
            model: model.to_string(),
            config: config_label(&o.thresholds),
            accuracy_pct: o.accuracy * 100.0,
            gflops: o.avg_flops / 1e9,
            exit_fraction: o.exit_fraction.clone(),
            ms: None,
        }
    }
}

/// `original` when no gate can exit (every threshold `+∞`, or no gates), otherwise the
/// paper's `dg(t1, t2, …)` with up to three decimals (`inf` for a closed gate).
pub fn config_label(thresholds: &[f32]) -> String {
    if thresholds.iter().all(|&t| t == f32::INFINITY) {
        return "original".into();
    }
    let parts: Vec<String> = thresholds.iter().map(|&t| fmt_threshold(t)).collect();
    format!("dg({})", parts.join(", "))
}

fn fmt_threshold(t: f32) -> String {
    if t == f32::INFINITY {
        return "inf".into();
    }
    if t == f32::NEG_INFINITY {
        return "-inf".into();
    }
    let s = format!("{t:.3}");
    let s = s.trim_end_matches('0');
    if s.ends_with('.') {
        format!("{s}0")
    } else {
        s.to_string()
    }
}

fn max_gates(rows: &[ReportRow]) -> usize {
    rows.iter()
        .map(|r| r.exit_fraction.len())
        .max()
        .unwrap_or(0)
}

/// An aligned Markdown table.
pub fn table_text(rows: &[ReportRow]) -> String {
    let gates = max_gates(rows);
    let with_ms = rows.iter().any(|r| r.ms.is_some());
    let mut header: Vec<String> = vec![
        "model".into(),
        "config".into(),
        "accuracy".into(),
        "GFLOPs".into(),
    ];
    header.extend((1..=gates).map(|g| format!("exit@{g}")));
    if with_ms {
        header.push("ms".into());
    }
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut cells = vec![
                r.model.clone(),
                r.config.clone(),
                format!("{:.2}%", r.accuracy_pct),
                format!("{:.3}", r.gflops),
            ];
            cells.extend((0..gates).map(|g| match r.exit_fraction.get(g) {
                Some(f) => format!("{:.1}%", f * 100.0),
                None => "-".into(),
            }));
            if with_ms {
                cells.push(r.ms.map_or("-".into(), |m| format!("{m:.3}")));
            }
            cells
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            body.iter()
                .map(|r| r[c].chars().count())
                .chain([header[c].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| -> String {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            // Text columns left-aligned, numbers right-aligned.
            .map(|(c, (s, &w))| {
                if c < 2 {
                    format!("{s:<w$}")
                } else {
                    format!("{s:>w$}")
                }
            })
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut out = line(&header);
    let rule: Vec<String> = widths.iter().map(|&w| "-".repeat(w)).collect();
    out += &format!("|-{}-|\n", rule.join("-|-"));
    for r in &body {
        out += &line(r);
    }
    out
}

/// RFC 4180 CSV with a header; `exit_gate{g}` columns up to the most gates of any row
/// (empty where a row has fewer); accuracy in percent, exit fractions as fractions.
pub fn table_csv(rows: &[ReportRow]) -> String {
    let gates = max_gates(rows);
    let mut out = String::from("model,config,accuracy_pct,gflops");
    for g in 1..=gates {
        out += &format!(",exit_gate{g}");
    }
    out += ",ms\n";
    for r in rows {
        out += &format!(
            "{},{},{},{}",
            csv_field(&r.model),
            csv_field(&r.config),
            r.accuracy_pct,
            r.gflops
        );
        for g in 0..gates {
            out.push(',');
            if let Some(f) = r.exit_fraction.get(g) {
                out += &f.to_string();
            }
        }
        out.push(',');
        if let Some(m) = r.ms {
            out += &m.to_string();
        }
        out.push('\n');
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The rows as a pretty-printed JSON array.
pub fn table_json(rows: &[ReportRow]) -> Result<String> {
    serde_json::to_string_pretty(rows).map_err(|e| Error::Input(format!("report to JSON: {e}")))
}
