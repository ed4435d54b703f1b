//! Accuracy against GFLOPs as a self-contained SVG, one curve per series (e.g. hinge
//! and cross-entropy gates), with ticks, axis labels and a legend. Written by hand:
//! the picture is a few dozen elements and a plotting dependency would dwarf it.

use crate::{Error, Result};
use std::fmt::Write;

/// One labelled curve: `(x, y)` points, e.g. (GFLOPs, accuracy %). Points are joined
/// in increasing `x`; non-finite points are skipped.
#[derive(Clone, Debug, PartialEq)]
pub struct PlotSeries {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 460.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 44.0;
const BOTTOM: f64 = 64.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// Renders the series. Fails when no series has a finite point.
pub fn plot_svg(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[PlotSeries],
) -> Result<String> {
    let finite = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite();
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied().filter(finite))
        .collect();
    if all.is_empty() {
        return Err(Error::Input("nothing to plot: no finite points".into()));
    }
    let (x0, x1) = pad(span(all.iter().map(|p| p.0)));
    let (y0, y1) = pad(span(all.iter().map(|p| p.1)));
    let (xt, xstep) = ticks(x0, x1);
    let (yt, ystep) = ticks(y0, y1);
    // The axes run from the first to the last tick, so every point lies inside.
    let (xa, xb) = (xt[0], xt[xt.len() - 1]);
    let (ya, yb) = (yt[0], yt[yt.len() - 1]);
    let pw = WIDTH - LEFT - RIGHT;
    let ph = HEIGHT - TOP - BOTTOM;
    let sx = |x: f64| LEFT + (x - xa) / (xb - xa) * pw;
    let sy = |y: f64| TOP + ph - (y - ya) / (yb - ya) * ph;

    let mut s = String::new();
    // Writing to a String cannot fail; the results are ignored for that reason.
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle" font-size="15">{}</text>"#,
        WIDTH / 2.0,
        TOP / 2.0 + 5.0,
        esc(title)
    );
    // Grid and ticks.
    let _ = writeln!(s, r##"<g stroke="#dddddd" stroke-width="1">"##);
    for &x in &xt {
        let _ = writeln!(
            s,
            r#"<line x1="{0:.2}" y1="{1:.2}" x2="{0:.2}" y2="{2:.2}"/>"#,
            sx(x),
            TOP,
            TOP + ph
        );
    }
    for &y in &yt {
        let _ = writeln!(
            s,
            r#"<line x1="{1:.2}" y1="{0:.2}" x2="{2:.2}" y2="{0:.2}"/>"#,
            sy(y),
            LEFT,
            LEFT + pw
        );
    }
    let _ = writeln!(s, "</g>");
    let _ = writeln!(
        s,
        r#"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
    );
    for &x in &xt {
        let _ = writeln!(
            s,
            r#"<line x1="{0:.2}" y1="{1:.2}" x2="{0:.2}" y2="{2:.2}" stroke="black"/><text x="{0:.2}" y="{3:.2}" text-anchor="middle">{4}</text>"#,
            sx(x),
            TOP + ph,
            TOP + ph + 5.0,
            TOP + ph + 19.0,
            tick_label(x, xstep)
        );
    }
    for &y in &yt {
        let _ = writeln!(
            s,
            r#"<line x1="{1:.2}" y1="{0:.2}" x2="{2:.2}" y2="{0:.2}" stroke="black"/><text x="{3:.2}" y="{4:.2}" text-anchor="end">{5}</text>"#,
            sy(y),
            LEFT - 5.0,
            LEFT,
            LEFT - 8.0,
            sy(y) + 4.0,
            tick_label(y, ystep)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        LEFT + pw / 2.0,
        HEIGHT - 18.0,
        esc(x_label)
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{0}" text-anchor="middle" transform="rotate(-90 18 {0})">{1}</text>"#,
        TOP + ph / 2.0,
        esc(y_label)
    );
    // Curves.
    for (k, se) in series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let mut pts: Vec<(f64, f64)> = se.points.iter().copied().filter(finite).collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
        let _ = writeln!(s, r#"<g class="series" fill="{color}" stroke="{color}">"#);
        if pts.len() > 1 {
            let path: Vec<String> = pts
                .iter()
                .map(|&(x, y)| format!("{:.2},{:.2}", sx(x), sy(y)))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke-width="2" points="{}"/>"#,
                path.join(" ")
            );
        }
        for &(x, y) in &pts {
            let _ = writeln!(s, r#"<circle cx="{:.2}" cy="{:.2}" r="3"/>"#, sx(x), sy(y));
        }
        let _ = writeln!(s, "</g>");
    }
    // Legend, top left inside the plot (curves of accuracy against cost rise to the right).
    let lx = LEFT + 12.0;
    let mut ly = TOP + 16.0;
    for (k, se) in series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2"/><text x="{}" y="{}">{}</text>"#,
            lx + 22.0,
            lx + 28.0,
            ly + 4.0,
            esc(&se.label)
        );
        ly += 18.0;
    }
    s.push_str("</svg>\n");
    Ok(s)
}

/// Data range, widened when degenerate so that the axis has a length.
fn span(v: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = v.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    if hi - lo > 1e-12 * hi.abs().max(lo.abs()).max(1e-300) {
        (lo, hi)
    } else {
        let d = (lo.abs() * 0.05).max(1e-3);
        (lo - d, hi + d)
    }
}

/// 3% of the range on each side, so that no marker sits on the frame.
fn pad((lo, hi): (f64, f64)) -> (f64, f64) {
    let d = 0.03 * (hi - lo);
    (lo - d, hi + d)
}

/// About five "nice" ticks (1, 2, 2.5 or 5 × 10^k apart) covering `[lo, hi]`.
fn ticks(lo: f64, hi: f64) -> (Vec<f64>, f64) {
    let raw = (hi - lo) / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).floor();
    let last = (hi / step).ceil();
    let n = ((last - first) as usize).clamp(1, 100);
    ((0..=n).map(|i| (first + i as f64) * step).collect(), step)
}

fn tick_label(v: f64, step: f64) -> String {
    let decimals = (-step.log10().floor()).max(0.0) as usize
        + usize::from((step / 10f64.powf(step.log10().floor()) - 2.5).abs() < 1e-9);
    let v = if v.abs() < step * 1e-9 { 0.0 } else { v };
    format!("{v:.decimals$}")
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            _ => o.push(c),
        }
    }
    o
}
