//! From a model and a data set to trained gates and score tables: the glue between the
//! network ([`crate::features`]) and the pure gate math of this module.

use std::path::Path;

use super::{train_gate, ScoreTable, TrainConfig};
use crate::backend::cpu::linear;
use crate::data::Dataset;
use crate::features::extract;
use crate::model::Model;
use crate::weights::Weights;
use crate::{Error, Result};

/// Trains one gate after each 1-based stage in `after` on the features of `train`, and
/// returns the backbone's tensors unchanged plus `gates.K.*` and their metadata.
/// `progress(phase, done, total)` reports feature extraction and training epochs.
pub fn train_gates(
    w: &Weights,
    train: &Dataset,
    after: &[usize],
    cfg: &TrainConfig,
    cache: Option<&Path>,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<Weights> {
    let mut base = w.clone();
    base.remove_prefix("gates.");
    for k in ["gate_after", "thresholds", "gate_loss"] {
        base.metadata.remove(k);
    }
    let model = Model::from_weights(&base)?;
    if after.is_empty() || after.windows(2).any(|p| p[0] >= p[1]) {
        return Err(Error::Config(format!(
            "gate positions {after:?} must be increasing stage numbers"
        )));
    }
    if let Some(&s) = after
        .iter()
        .find(|&&s| s == 0 || s >= model.plan.stages.len())
    {
        return Err(Error::Config(format!(
            "a gate after stage {s}: gates go after stages 1..{} of this {}-stage model",
            model.plan.stages.len() - 1,
            model.plan.stages.len()
        )));
    }
    let stages: Vec<usize> = after.iter().map(|s| s - 1).collect();
    let feats = extract(&base, &model, train, &stages, cache, &mut |d, t| {
        progress("features", d, t)
    })?;
    let mut out = base;
    for (k, (f, &c)) in feats.features.iter().zip(&feats.channels).enumerate() {
        let phase = format!("gate {} training", k + 1);
        let gate = train_gate(
            f,
            &train.labels,
            feats.n,
            c,
            feats.classes,
            cfg,
            &mut |e, _| progress(&phase, e, cfg.epochs),
        )?;
        out.insert(
            &format!("gates.{k}.weight"),
            vec![feats.classes, c],
            gate.weight,
        );
        out.insert(&format!("gates.{k}.bias"), vec![feats.classes], gate.bias);
    }
    let list: Vec<String> = after.iter().map(|s| s.to_string()).collect();
    out.metadata.insert("gate_after".into(), list.join(","));
    out.metadata
        .insert("gate_loss".into(), cfg.loss.as_str().into());
    out.metadata.insert(
        "gate_training".into(),
        format!(
            "{} loss, lambda {}, {} epochs, batch {}, seed {}, standardize {}, {} images",
            cfg.loss.as_str(),
            cfg.lambda,
            cfg.epochs,
            cfg.batch_size,
            cfg.seed,
            cfg.standardize,
            train.len()
        ),
    );
    Ok(out)
}

/// Per-sample scores of every gate of `model` (loaded from `w`) and its head on `ds`.
pub fn score_table(
    w: &Weights,
    model: &Model,
    ds: &Dataset,
    cache: Option<&Path>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<ScoreTable> {
    let plan = &model.plan;
    if plan.gates.is_empty() {
        return Err(Error::Config(format!(
            "{}: the model has no gates (train some with `dgate-rt train-gates`)",
            w.file
        )));
    }
    let stages: Vec<usize> = plan.gates.iter().map(|g| g.after_stage).collect();
    let feats = extract(w, model, ds, &stages, cache, progress)?;
    let gate_scores = plan
        .gates
        .iter()
        .zip(&feats.features)
        .map(|(g, f)| linear(f, feats.n, g.input.channels, &g.weight, &g.bias))
        .collect();
    Ok(ScoreTable {
        n: feats.n,
        classes: plan.classes,
        labels: ds.labels.clone(),
        gate_scores,
        head_logits: feats.logits,
        rule: plan.gates[0].rule,
        flops_per_exit: ScoreTable::flops_per_exit(plan),
    })
}
