//! The `train-gates`, `sweep` and `calibrate` subcommands (binary side).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use dgate_rt::data::Dataset;
use dgate_rt::engine::{BackendChoice, Engine};
use dgate_rt::gates::{self, pipeline, PlotSeries, ReportRow, ScoreTable, TrainConfig};
use dgate_rt::model::Model;
use dgate_rt::weights::Weights;

use super::{data_root, CalibrateArgs, DataArgs, SweepArgs, TrainArgs};

fn load_data(a: &DataArgs, train: bool) -> Result<(Dataset, String)> {
    let files: Vec<PathBuf> = if !a.data.is_empty() {
        a.data.clone()
    } else if train {
        (1..=5)
            .map(|i| data_root().join(format!("cifar10/data_batch_{i}.bin")))
            .collect()
    } else {
        vec![data_root().join("cifar10/test_batch.bin")]
    };
    let ds = Dataset::load_cifar(&files, a.limit)?;
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    Ok((ds, names.join(", ")))
}

fn cache(a: &DataArgs) -> Option<PathBuf> {
    if a.no_cache {
        None
    } else {
        a.cache.clone().or_else(dgate_rt::features::cache_dir)
    }
}

/// Progress on stderr when it is a terminal (or always with DGATE_PROGRESS=1), one line
/// rewritten in place.
struct Progress {
    on: bool,
    t0: Instant,
    last: f64,
}

impl Progress {
    fn new(quiet: bool) -> Self {
        let on = !quiet
            && (std::io::stderr().is_terminal() || std::env::var_os("DGATE_PROGRESS").is_some());
        Progress {
            on,
            t0: Instant::now(),
            last: -1.0,
        }
    }
    fn tick(&mut self, phase: &str, done: usize, total: usize) {
        let t = self.t0.elapsed().as_secs_f64();
        if !self.on || (done < total && t - self.last < 0.5) {
            return;
        }
        self.last = t;
        eprint!("\r{phase}: {done}/{total} ({t:.0} s)   ");
        if done == total {
            eprintln!();
        }
    }
}

fn parse_range(s: &str, n: usize) -> Result<(usize, usize)> {
    let (a, b) = s
        .split_once("..")
        .with_context(|| format!("range `{s}` is not A..B"))?;
    let a: usize = a.trim().parse().with_context(|| format!("range `{s}`"))?;
    let b: usize = if b.trim().is_empty() {
        n
    } else {
        b.trim().parse().with_context(|| format!("range `{s}`"))?
    };
    if a >= b || b > n {
        bail!("range {a}..{b} is empty or beyond the {n} images");
    }
    Ok((a, b))
}

pub fn train(a: &TrainArgs) -> Result<()> {
    let w = Weights::load(&a.weights)?;
    let (ds, desc) = load_data(&a.data, true)?;
    let after: Vec<usize> = super::parse_list(&a.after, "after")?;
    let cfg = TrainConfig {
        loss: gates::Loss::parse(&a.loss).context("--loss")?,
        lambda: a.lambda,
        epochs: a.epochs,
        batch_size: a.batch_size,
        seed: a.seed,
        ..TrainConfig::default()
    };
    let mut p = Progress::new(a.data.quiet);
    let t0 = Instant::now();
    let out = pipeline::train_gates(
        &w,
        &ds,
        &after,
        &cfg,
        cache(&a.data).as_deref(),
        &mut |ph, d, t| p.tick(ph, d, t),
    )?;
    out.save(&a.out)?;
    // Training accuracy of each gate alone, as a sanity figure.
    let model = Model::from_weights(&out)?;
    println!("backbone    {} ({})", model.plan.arch, a.weights.display());
    println!("data        {desc}: {} images", ds.len());
    println!(
        "gates       {} loss after stage(s) {}, lambda {}, {} epochs, seed {}",
        cfg.loss.as_str(),
        a.after,
        cfg.lambda,
        cfg.epochs,
        cfg.seed
    );
    println!("wrote       {} ({:.1} s); thresholds are unset (+inf): choose them with `dgate-rt calibrate` or --thresholds", a.out.display(), t0.elapsed().as_secs_f64());
    Ok(())
}

fn table_for(
    path: &PathBuf,
    d: &DataArgs,
    ds: &Dataset,
    p: &mut Progress,
) -> Result<(Weights, Model, ScoreTable)> {
    let w = Weights::load(path)?;
    let model = Model::from_weights(&w)?;
    let t = pipeline::score_table(&w, &model, ds, cache(d).as_deref(), &mut |x, y| {
        p.tick("features", x, y)
    })?;
    Ok((w, model, t))
}

pub fn sweep(a: &SweepArgs) -> Result<()> {
    let (ds, desc) = load_data(&a.data, false)?;
    let mut p = Progress::new(a.data.quiet || a.json);
    let mut rows: Vec<ReportRow> = Vec::new();
    let mut series = Vec::new();
    let mut fronts: Vec<(String, Vec<gates::SweepPoint>, f64)> = Vec::new();
    for path in &a.weights {
        let (_, model, table) = table_for(path, &a.data, &ds, &mut p)?;
        let loss = table.rule.as_str();
        let name = format!(
            "{} {loss}",
            model.plan.arch.split(' ').next().unwrap_or("model")
        );
        let mut configs: Vec<Vec<f32>> = vec![vec![f32::INFINITY; table.gates()]];
        match &a.configs {
            Some(s) => {
                for c in s.split(';').filter(|c| !c.trim().is_empty()) {
                    configs.push(
                        dgate_rt::data::parse_thresholds(c)
                            .map_err(|e| anyhow::anyhow!("--configs: {e}"))?,
                    );
                }
            }
            None => {
                if table.rule == dgate_rt::plan::ExitRule::Hinge && table.gates() == 2 {
                    configs.push(vec![1.0, 2.0]);
                    configs.push(vec![2.5, 2.5]);
                }
            }
        }
        let front = gates::frontier(&table, a.candidates)?;
        let full = *table.flops_per_exit.last().unwrap_or(&1) as f64;
        fronts.push((loss.to_string(), front.clone(), full));
        series.push(PlotSeries {
            label: format!(
                "{loss} gates ({})",
                path.file_name()
                    .map(|f| f.to_string_lossy().to_string())
                    .unwrap_or_default()
            ),
            points: front
                .iter()
                .map(|q| (q.avg_flops / 1e9, 100.0 * q.accuracy))
                .collect(),
        });
        if a.configs.is_none() && a.curve_rows > 0 && front.len() > 1 {
            let step = (front.len() - 1) as f64 / (a.curve_rows.max(2) - 1) as f64;
            for i in 0..a.curve_rows.max(2) {
                configs.push(
                    front[((i as f64 * step).round() as usize).min(front.len() - 1)]
                        .thresholds
                        .clone(),
                );
            }
            configs.dedup();
        }
        let mut engine = if a.time {
            Some(Engine::new(
                model.clone(),
                BackendChoice::Auto,
                dgate_rt::backend::Precision::F32,
            )?)
        } else {
            None
        };
        for c in &configs {
            let o = gates::simulate(&table, c)?;
            let mut row = ReportRow::from_outcome(&name, &o);
            if let Some(e) = engine.as_mut() {
                e.set_thresholds(c)?;
                let t0 = Instant::now();
                let mut res = Vec::with_capacity(ds.len());
                for (k, chunk) in ds.pixels.chunks(256 * dgate_rt::data::IMAGE).enumerate() {
                    let m = chunk.len() / dgate_rt::data::IMAGE;
                    res.extend(e.run_u8(chunk, m).with_context(|| format!("batch {k}"))?);
                }
                row.ms = Some(t0.elapsed().as_secs_f64() * 1e3 / ds.len() as f64);
                let agree = res
                    .iter()
                    .zip(&o.classes)
                    .filter(|(r, &c)| r.class == c)
                    .count();
                if agree != ds.len() {
                    eprintln!(
                        "warning: {}: the run and the simulation disagree on {} images",
                        row.config,
                        ds.len() - agree
                    );
                }
            }
            rows.push(row);
        }
    }
    if let Some(f) = &a.csv {
        std::fs::write(f, gates::table_csv(&rows)).with_context(|| f.display().to_string())?;
    }
    if let Some(f) = &a.plot {
        let svg = gates::plot_svg(
            &format!("Accuracy vs GFLOPs on {} images", ds.len()),
            "average GFLOPs per image",
            "top-1 accuracy (%)",
            &series,
        )?;
        std::fs::write(f, svg).with_context(|| f.display().to_string())?;
    }
    // The trade-off curves compared at equal cost: best accuracy within each FLOPs budget.
    let budgets = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95];
    let equal: Vec<serde_json::Value> = budgets
        .iter()
        .map(|&b| {
            let mut v = serde_json::json!({"flops_fraction": b});
            for (label, front, full) in &fronts {
                v[label.as_str()] =
                    serde_json::json!(gates::accuracy_at_flops(front, b * full).map(|x| 100.0 * x));
            }
            v
        })
        .collect();
    if a.json {
        let doc = serde_json::json!({"data": desc, "images": ds.len(), "rows": rows, "equal_flops": equal});
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    let timing = if a.time {
        "; ms = wall time per image of a real run"
    } else {
        ""
    };
    println!("data: {desc}, {} images{timing}\n", ds.len());
    print!("{}", gates::table_text(&rows));
    if fronts.len() > 1 {
        println!("\nbest accuracy (%) within a FLOPs budget, from each file's trade-off curve on these images:\n");
        let labels: Vec<&str> = fronts.iter().map(|f| f.0.as_str()).collect();
        println!("| FLOPs budget | {} |", labels.join(" | "));
        println!("|---:|{}", "---:|".repeat(labels.len()));
        for e in &equal {
            let cells: Vec<String> = labels
                .iter()
                .map(|l| e[*l].as_f64().map_or("-".into(), |x| format!("{x:.2}")))
                .collect();
            println!(
                "| {:.0}% | {} |",
                100.0 * e["flops_fraction"].as_f64().unwrap_or(0.0),
                cells.join(" | ")
            );
        }
    }
    Ok(())
}

pub fn calibrate(a: &CalibrateArgs) -> Result<()> {
    let (ds, desc) = load_data(&a.data, false)?;
    let n = ds.len();
    let (c0, c1) = parse_range(a.calib.as_deref().unwrap_or(&format!("0..{}", n / 2)), n)?;
    let (r0, r1) = parse_range(a.report.as_deref().unwrap_or(&format!("{}..{n}", n / 2)), n)?;
    if c0 < r1 && r0 < c1 {
        eprintln!("warning: the calibration and report ranges overlap: the reported figures are not held out");
    }
    let mut p = Progress::new(a.data.quiet || a.json);
    let (mut w, model, full) = table_for(&a.weights, &a.data, &ds, &mut p)?;
    let pick = |t: &ScoreTable, lo: usize, hi: usize| -> ScoreTable {
        let c = t.classes;
        ScoreTable {
            n: hi - lo,
            classes: c,
            labels: t.labels[lo..hi].to_vec(),
            gate_scores: t
                .gate_scores
                .iter()
                .map(|s| s[lo * c..hi * c].to_vec())
                .collect(),
            head_logits: t.head_logits[lo * c..hi * c].to_vec(),
            rule: t.rule,
            flops_per_exit: t.flops_per_exit.clone(),
        }
    };
    let (cal, rep) = (pick(&full, c0, c1), pick(&full, r0, r1));
    let (goal, t) = match (a.max_drop, a.max_gflops) {
        (Some(d), _) => (
            format!("fewest FLOPs with at most {d} points accuracy drop"),
            gates::calibrate_max_drop(&cal, d)?,
        ),
        (None, Some(g)) => (
            format!("best accuracy with at most {g} GFLOPs per image"),
            gates::calibrate_flops_budget(&cal, g * 1e9)?,
        ),
        (None, None) => bail!("give --max-drop POINTS or --max-gflops GFLOPS"),
    };
    let on_cal = gates::simulate(&cal, &t)?;
    let on_rep = gates::simulate(&rep, &t)?;
    let base_cal = cal.backbone_accuracy()?;
    let base_rep = rep.backbone_accuracy()?;
    let full_g = *full.flops_per_exit.last().unwrap_or(&0) as f64 / 1e9;
    if let Some(out) = &a.out {
        let list: Vec<String> = t.iter().map(|x| x.to_string()).collect();
        w.metadata.insert("thresholds".into(), list.join(","));
        w.metadata.insert(
            "calibration".into(),
            format!("{goal}; images {c0}..{c1} of {desc}"),
        );
        w.save(out)?;
    }
    if a.json {
        let doc = serde_json::json!({
            "model": model.plan.arch, "goal": goal, "thresholds": t.iter().map(|x| if x.is_finite() { serde_json::json!(x) } else { serde_json::json!(x.to_string()) }).collect::<Vec<_>>(),
            "calibration": {"images": [c0, c1], "backbone_accuracy_pct": 100.0 * base_cal, "accuracy_pct": 100.0 * on_cal.accuracy, "avg_gflops": on_cal.avg_flops / 1e9, "exit_fraction": on_cal.exit_fraction},
            "report": {"images": [r0, r1], "backbone_accuracy_pct": 100.0 * base_rep, "accuracy_pct": 100.0 * on_rep.accuracy, "avg_gflops": on_rep.avg_flops / 1e9, "exit_fraction": on_rep.exit_fraction},
            "full_gflops": full_g, "out": a.out,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!(
        "model        {} ({} gates)",
        model.plan.arch,
        full.rule.as_str()
    );
    println!("goal         {goal}");
    println!("thresholds   {}", gates::config_label(&t));
    for (label, (lo, hi), base, o) in [
        ("calibrated", (c0, c1), base_cal, &on_cal),
        ("held out", (r0, r1), base_rep, &on_rep),
    ] {
        let ex: Vec<String> = o
            .exit_fraction
            .iter()
            .map(|f| format!("{:.1}%", 100.0 * f))
            .collect();
        println!(
            "{label:<12} images {lo}..{hi}: accuracy {:.2}% (backbone {:.2}%, {:+.2} points), {:.4} GFLOPs/image ({:.1}% of {full_g:.4}), exits {}",
            100.0 * o.accuracy,
            100.0 * base,
            100.0 * (o.accuracy - base),
            o.avg_flops / 1e9,
            100.0 * o.avg_flops / 1e9 / full_g,
            ex.join(" / ")
        );
    }
    if let Some(out) = &a.out {
        println!(
            "wrote        {} (thresholds in its metadata)",
            out.display()
        );
    }
    Ok(())
}
