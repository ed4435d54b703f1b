//! Decision gates off the network: training them on cached pooled features,
//! evaluating threshold settings on cached scores, calibrating thresholds, and
//! reporting the results.
//!
//! Everything here is pure: arrays in, arrays out. No model is loaded and no
//! network is run; the caller extracts pooled stage features and head logits once
//! and then trains, sweeps and calibrates as often as it likes.
//!
//! - [`train`]: one linear gate `s = W·x + b` on pooled features, hinge or
//!   cross-entropy, deterministic for a seed.
//! - [`eval`]: [`ScoreTable`] (per-sample gate scores and head logits) and
//!   [`simulate`], which replays the runtime's exit rule ([`crate::plan::decide`],
//!   "exit at the first gate whose confidence ≥ its threshold") without the network.
//! - [`calibrate`]: thresholds under an accuracy-drop or a FLOPs budget.
//! - [`report`] and [`plot`]: the paper's Table 1 as text, CSV and JSON, and an SVG
//!   plot of accuracy against GFLOPs.

pub mod calibrate;
pub mod eval;
pub mod pipeline;
pub mod plot;
pub mod report;
pub mod train;

pub use calibrate::{calibrate_flops_budget, calibrate_max_drop, frontier, threshold_candidates};
pub use eval::{
    accuracy_at_flops, grid, pareto_front, simulate, sweep, Outcome, ScoreTable, SweepPoint,
};
pub use plot::{plot_svg, PlotSeries};
pub use report::{config_label, table_csv, table_json, table_text, ReportRow};
pub use train::{
    ce_objective, choose_eta0, hinge_objective, train_gate, LinearGate, Loss, Objective,
    TrainConfig,
};
