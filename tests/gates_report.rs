//! Table 1 as text, CSV and JSON, and the SVG plot: well-formed and complete.

use dgate_rt::gates::{
    config_label, plot_svg, table_csv, table_json, table_text, PlotSeries, ReportRow, SweepPoint,
};

fn rows() -> Vec<ReportRow> {
    let point = SweepPoint {
        thresholds: vec![1.0, 2.0],
        accuracy: 0.93,
        exit_fraction: vec![0.5, 0.3],
        avg_flops: 3.07e9,
    };
    let mut dg = ReportRow::from_point("ResNet-101", &point);
    dg.ms = Some(5.397);
    vec![
        ReportRow {
            model: "ResNet-101".into(),
            config: "original".into(),
            accuracy_pct: 94.7,
            gflops: 5.02,
            exit_fraction: vec![0.0, 0.0],
            ms: Some(8.724),
        },
        dg,
        ReportRow {
            model: "odd \"name\", with comma".into(),
            config: config_label(&[2.5, f32::INFINITY, 0.125]),
            accuracy_pct: 90.0,
            gflops: 1.0,
            exit_fraction: vec![0.25, 0.0, 0.5],
            ms: None,
        },
    ]
}

#[test]
fn gates_config_labels_follow_the_paper() {
    assert_eq!(config_label(&[1.0, 2.0]), "dg(1.0, 2.0)");
    assert_eq!(config_label(&[2.5, 2.5]), "dg(2.5, 2.5)");
    assert_eq!(config_label(&[0.98765, f32::INFINITY]), "dg(0.988, inf)");
    assert_eq!(config_label(&[f32::NEG_INFINITY]), "dg(-inf)");
    assert_eq!(config_label(&[f32::INFINITY, f32::INFINITY]), "original");
    assert_eq!(config_label(&[]), "original");
}

/// RFC 4180 record splitting, enough for one line without embedded newlines.
fn csv_fields(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', false) => quoted = true,
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                out.last_mut().unwrap().push('"');
            }
            ('"', true) => quoted = false,
            (',', false) => out.push(String::new()),
            (c, _) => out.last_mut().unwrap().push(c),
        }
    }
    assert!(!quoted, "unterminated quote in {line}");
    out
}

#[test]
fn gates_csv_is_rectangular_and_round_trips_fields() {
    let r = rows();
    let csv = table_csv(&r);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), r.len() + 1);
    let header = csv_fields(lines[0]);
    assert_eq!(
        header,
        [
            "model",
            "config",
            "accuracy_pct",
            "gflops",
            "exit_gate1",
            "exit_gate2",
            "exit_gate3",
            "ms"
        ]
    );
    for (line, row) in lines[1..].iter().zip(&r) {
        let f = csv_fields(line);
        assert_eq!(f.len(), header.len(), "{line}");
        assert_eq!(f[0], row.model);
        assert_eq!(f[1], row.config);
        assert_eq!(f[2].parse::<f64>().unwrap(), row.accuracy_pct);
        assert_eq!(f[3].parse::<f64>().unwrap(), row.gflops);
        for g in 0..3 {
            match row.exit_fraction.get(g) {
                Some(&v) => assert_eq!(f[4 + g].parse::<f64>().unwrap(), v),
                None => assert_eq!(f[4 + g], ""),
            }
        }
        assert_eq!(f[7].parse::<f64>().ok(), row.ms);
    }
    assert_eq!(csv_fields(lines[2])[1], "dg(1.0, 2.0)");
}

#[test]
fn gates_json_round_trips() {
    let r = rows();
    let json = table_json(&r).unwrap();
    let back: Vec<ReportRow> = serde_json::from_str(&json).unwrap();
    assert_eq!(back, r);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[1]["config"], "dg(1.0, 2.0)");
    assert_eq!(v[1]["gflops"], 3.07);
}

#[test]
fn gates_text_table_is_aligned() {
    let text = table_text(&rows());
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2 + 3);
    let width = lines[0].chars().count();
    for l in &lines {
        assert!(l.starts_with('|') && l.ends_with('|'), "{l}");
        assert_eq!(l.chars().count(), width, "{l}");
    }
    assert!(
        lines[0].contains("accuracy") && lines[0].contains("GFLOPs") && lines[0].contains("exit@3")
    );
    assert!(
        lines[3].contains("dg(1.0, 2.0)")
            && lines[3].contains("93.00%")
            && lines[3].contains("3.070")
    );
    assert!(lines[3].contains("50.0%") && lines[3].contains("30.0%"));
}

/// A small well-formedness check: tags nest and close, attribute values are quoted,
/// and text has no raw `<` or unescaped `&`.
fn check_xml(s: &str) -> Vec<String> {
    let mut stack: Vec<String> = Vec::new();
    let mut seen = Vec::new();
    let mut rest = s.trim();
    assert!(rest.starts_with("<svg"), "not an svg document");
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('<') {
            let end = after.find('>').expect("unterminated tag");
            let tag = &after[..end];
            rest = &after[end + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(
                    stack.pop().as_deref(),
                    Some(name.trim()),
                    "mismatched </{name}>"
                );
                continue;
            }
            let self_closing = tag.ends_with('/');
            let body = tag.trim_end_matches('/');
            let name = body
                .split_whitespace()
                .next()
                .expect("empty tag")
                .to_string();
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric()),
                "odd tag name {name}"
            );
            // Attributes: name="value" pairs, values free of '<' and of bare '&'.
            let mut attrs = body[name.len()..].trim();
            while !attrs.is_empty() {
                let eq = attrs.find("=\"").expect("attribute without a quoted value");
                let close = attrs[eq + 2..].find('"').expect("unterminated attribute") + eq + 2;
                check_text(&attrs[eq + 2..close]);
                attrs = attrs[close + 1..].trim_start();
            }
            seen.push(name.clone());
            if !self_closing {
                stack.push(name);
            }
        } else {
            let end = rest.find('<').unwrap_or(rest.len());
            check_text(&rest[..end]);
            assert!(
                !stack.is_empty() || rest[..end].trim().is_empty(),
                "text outside the root"
            );
            rest = &rest[end..];
        }
    }
    assert!(stack.is_empty(), "unclosed {stack:?}");
    seen
}

fn check_text(t: &str) {
    assert!(
        !t.contains('<') && !t.contains('>'),
        "raw angle bracket in {t:?}"
    );
    for (i, _) in t.match_indices('&') {
        let ent = &t[i..];
        assert!(
            ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                .iter()
                .any(|e| ent.starts_with(e)),
            "bare & in {t:?}"
        );
    }
}

#[test]
fn gates_svg_is_well_formed_with_one_curve_per_series() {
    let series = vec![
        PlotSeries {
            label: "hinge".into(),
            points: vec![(3.07, 93.0), (5.02, 94.7), (4.35, 94.7), (f64::NAN, 1.0)],
        },
        PlotSeries {
            label: "ce <& \"quoted\">".into(),
            points: vec![(3.2, 92.1), (4.4, 94.0), (5.02, 94.7)],
        },
        PlotSeries {
            label: "single".into(),
            points: vec![(4.0, 93.5)],
        },
    ];
    let svg = plot_svg(
        "ResNet-101 & gates",
        "GFLOPs per sample",
        "accuracy (%)",
        &series,
    )
    .unwrap();
    let tags = check_xml(&svg);
    assert_eq!(tags.iter().filter(|t| *t == "polyline").count(), 2);
    assert_eq!(tags.iter().filter(|t| *t == "circle").count(), 3 + 3 + 1);
    assert!(tags.iter().filter(|t| *t == "text").count() >= 3 + 3 + 6);
    for needle in [
        "GFLOPs per sample",
        "accuracy (%)",
        "hinge",
        "ce &lt;&amp; &quot;quoted&quot;&gt;",
        "ResNet-101 &amp; gates",
    ] {
        assert!(svg.contains(needle), "missing {needle}");
    }
    // Every coordinate lies inside the canvas.
    for attr in ["cx=\"", "cy=\""] {
        for (i, _) in svg.match_indices(attr) {
            let v: f64 = svg[i + attr.len()..]
                .split('"')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert!((0.0..=720.0).contains(&v), "{attr}{v}");
        }
    }
}

#[test]
fn gates_svg_handles_degenerate_input() {
    let one = [PlotSeries {
        label: "one".into(),
        points: vec![(2.0, 90.0)],
    }];
    check_xml(&plot_svg("", "x", "y", &one).unwrap());
    let none = [PlotSeries {
        label: "empty".into(),
        points: vec![(f64::INFINITY, 1.0)],
    }];
    assert!(plot_svg("t", "x", "y", &none).is_err());
    assert!(plot_svg("t", "x", "y", &[]).is_err());
}
