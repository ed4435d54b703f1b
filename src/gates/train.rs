//! Training one linear gate `s = W·x + b` on pooled stage features of a frozen backbone.
//!
//! Objectives (`W` is `classes × f`, the bias is never regularised):
//! - [`Loss::Hinge`], the paper's: `mean_i Σ_j max(0, 1 − y_ij·s_ij) + λ‖W‖²`, with
//!   `y_ij = +1` for the true class and `−1` otherwise (one-vs-rest);
//! - [`Loss::Ce`]: `mean_i (logsumexp_j s_ij − s_i,label) + λ‖W‖²`.
//!
//! Both are minimised by the same optimiser, so that a hinge-versus-CE comparison
//! differs in the loss only: mini-batch (sub)gradient descent with the Pegasos step
//! size started at an offset, `η_t = 1 / (2λ·(t + t₀))` with `t₀ = 1 / (2λ·η₀)`
//! (the factor 2 because the regulariser is `λ‖W‖²`, whose modulus of strong convexity
//! is `2λ`), i.e. `η_t = η₀ / (1 + 2λ·η₀·t)`. Plain Pegasos (`t₀ = 0`) takes steps of
//! `1/(2λ)` at first, which for small λ throws the unregularised bias far off; the
//! offset keeps the first steps at `η₀` and the tail at Pegasos' `1/(2λt)`. The returned
//! weights are the average of the iterates over the last half of the epochs (suffix
//! averaging, which gives the optimal O(1/T) rate for strongly convex subgradient
//! descent where the last iterate does not).
//!
//! Features are standardised internally (per-feature mean and standard deviation of the
//! training set) so that one range of `η₀` fits every stage; `η₀` is in units of
//! `1 / E‖z‖²` of the standardised rows (plus one for the bias), and by default it is
//! chosen per problem by short trial runs ([`choose_eta0`]). λ regularises the weights
//! of the standardised features. The returned gate has the standardisation folded in and
//! applies to raw features. Features that are constant over the training set (dead
//! ReLU channels) get weight zero.

use crate::plan::ExitRule;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// Loss a gate is trained with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Loss {
    /// One-vs-rest hinge (the paper's); confidence = max score.
    Hinge,
    /// Softmax cross-entropy; confidence = max softmax probability.
    Ce,
}

impl Loss {
    /// The exit rule that matches gates trained with this loss.
    pub fn rule(self) -> ExitRule {
        match self {
            Loss::Hinge => ExitRule::Hinge,
            Loss::Ce => ExitRule::Ce,
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "hinge" => Some(Loss::Hinge),
            "ce" => Some(Loss::Ce),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        self.rule().as_str()
    }
}

/// Hyper-parameters of [`train_gate`]. See the module documentation for the schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub loss: Loss,
    /// λ of `λ‖W‖²`; must be > 0.
    pub lambda: f32,
    pub epochs: usize,
    pub batch_size: usize,
    /// First step size, in units of `1 / E‖z‖²` (`z`: standardised row plus bias
    /// input); `None` chooses it with [`choose_eta0`].
    pub eta0: Option<f32>,
    /// Seed of the shuffling order; same seed, same data: bit-identical gate.
    pub seed: u64,
    /// Standardise features internally (recommended; the result applies to raw features
    /// either way).
    pub standardize: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            loss: Loss::Hinge,
            lambda: 1e-4,
            epochs: 30,
            batch_size: 256,
            eta0: None,
            seed: 0,
            standardize: true,
        }
    }
}

/// A trained gate: `s = W·x + b` on raw pooled features.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinearGate {
    /// `[classes][features]`, row-major.
    pub weight: Vec<f32>,
    /// `[classes]`.
    pub bias: Vec<f32>,
}

impl LinearGate {
    pub fn classes(&self) -> usize {
        self.bias.len()
    }

    pub fn features(&self) -> usize {
        self.weight.len().checked_div(self.bias.len()).unwrap_or(0)
    }

    /// Scores of `n` raw feature rows (`n × features`), `n × classes` row-major.
    pub fn scores(&self, features: &[f32], n: usize) -> Result<Vec<f32>> {
        let (c, f) = (self.classes(), self.features());
        if c == 0 || f == 0 || self.weight.len() != c * f {
            return Err(Error::Config(format!(
                "gate weight has {} values for {c} classes: not a positive multiple",
                self.weight.len()
            )));
        }
        check_len("features", features.len(), n, f)?;
        let mut s = vec![0f32; n * c];
        for (x, row) in features.chunks_exact(f).zip(s.chunks_exact_mut(c)) {
            for ((o, w), &b) in row
                .iter_mut()
                .zip(self.weight.chunks_exact(f))
                .zip(&self.bias)
            {
                *o = b + dot(w, x);
            }
        }
        Ok(s)
    }

    /// Arg-max class of each row (ties to the lowest index, as [`crate::plan::decide`]).
    pub fn predict(&self, features: &[f32], n: usize) -> Result<Vec<usize>> {
        let c = self.classes();
        let s = self.scores(features, n)?;
        Ok(s.chunks_exact(c)
            .map(|r| crate::plan::decide(r, ExitRule::Hinge).0)
            .collect())
    }
}

/// Value and (sub)gradient of a training objective at `(W, b)`, in f64.
#[derive(Clone, Debug, PartialEq)]
pub struct Objective {
    pub loss: f64,
    /// `[classes][features]`.
    pub grad_w: Vec<f64>,
    pub grad_b: Vec<f64>,
}

/// The hinge objective `mean_i Σ_j max(0, 1 − y_ij·s_ij) + λ‖W‖²` and a subgradient,
/// on the features exactly as given (no standardisation). Shapes come from the
/// arguments: `classes = b.len()`, `f = w.len() / classes`, `n = y.len()`,
/// `x` is `n × f`. At a kink (`y·s = 1` exactly) the zero subgradient is taken.
pub fn hinge_objective(
    w: &[f32],
    b: &[f32],
    x: &[f32],
    y: &[u8],
    lambda: f32,
) -> Result<Objective> {
    objective(Loss::Hinge, w, b, x, y, lambda)
}

/// The cross-entropy objective `mean_i (logsumexp_j s_ij − s_i,y_i) + λ‖W‖²` and its
/// gradient; shapes as in [`hinge_objective`].
pub fn ce_objective(w: &[f32], b: &[f32], x: &[f32], y: &[u8], lambda: f32) -> Result<Objective> {
    objective(Loss::Ce, w, b, x, y, lambda)
}

fn objective(
    loss: Loss,
    w: &[f32],
    b: &[f32],
    x: &[f32],
    y: &[u8],
    lambda: f32,
) -> Result<Objective> {
    let c = b.len();
    if c == 0 || !w.len().is_multiple_of(c) {
        return Err(Error::Input(format!(
            "weight has {} values, not a multiple of {c} classes",
            w.len()
        )));
    }
    let f = w.len() / c;
    if f == 0 {
        return Err(Error::Input("weight has no features".into()));
    }
    let n = y.len();
    check_len("features", x.len(), n, f)?;
    check_labels(y, c)?;
    if n == 0 {
        return Err(Error::Input("no samples".into()));
    }
    let mut grad_w = vec![0f64; c * f];
    let mut grad_b = vec![0f64; c];
    let mut s = vec![0f64; c];
    let mut d = vec![0f64; c];
    let mut total = 0f64;
    for (xi, &yi) in x.chunks_exact(f).zip(y) {
        for (j, sj) in s.iter_mut().enumerate() {
            let wj = &w[j * f..(j + 1) * f];
            *sj = b[j] as f64
                + wj.iter()
                    .zip(xi)
                    .map(|(&a, &v)| a as f64 * v as f64)
                    .sum::<f64>();
        }
        total += loss_and_dscores(loss, &s, yi as usize, &mut d);
        for (j, &dj) in d.iter().enumerate() {
            if dj != 0.0 {
                grad_b[j] += dj;
                for (g, &v) in grad_w[j * f..(j + 1) * f].iter_mut().zip(xi) {
                    *g += dj * v as f64;
                }
            }
        }
    }
    let inv_n = 1.0 / n as f64;
    let lambda = lambda as f64;
    let mut reg = 0f64;
    for (g, &wv) in grad_w.iter_mut().zip(w) {
        reg += wv as f64 * wv as f64;
        *g = *g * inv_n + 2.0 * lambda * wv as f64;
    }
    grad_b.iter_mut().for_each(|g| *g *= inv_n);
    Ok(Objective {
        loss: total * inv_n + lambda * reg,
        grad_w,
        grad_b,
    })
}

/// One sample's data loss and `∂loss/∂s` (written to `d`). Shared by the objective
/// functions above and the training loop, so the finite-difference test covers both.
fn loss_and_dscores(loss: Loss, s: &[f64], label: usize, d: &mut [f64]) -> f64 {
    match loss {
        Loss::Hinge => {
            let mut l = 0.0;
            for (j, (&sj, dj)) in s.iter().zip(d.iter_mut()).enumerate() {
                let y = if j == label { 1.0 } else { -1.0 };
                let m = y * sj;
                if m < 1.0 {
                    l += 1.0 - m;
                    *dj = -y;
                } else {
                    *dj = 0.0;
                }
            }
            l
        }
        Loss::Ce => {
            let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let mut z = 0.0;
            for (&sj, dj) in s.iter().zip(d.iter_mut()) {
                *dj = (sj - m).exp();
                z += *dj;
            }
            for dj in d.iter_mut() {
                *dj /= z;
            }
            d[label] -= 1.0;
            m + z.ln() - s[label]
        }
    }
}

/// Trains one gate on `n × f` raw features (row-major) with labels in `0..classes`.
/// `progress(epoch, loss)` is called after each epoch (epochs counted from 1) with the
/// mean mini-batch data loss seen during the epoch plus `λ‖W‖²` of the current iterate
/// (in the standardised space the optimiser works in). With `cfg.eta0 == None` the
/// step size is first chosen by [`choose_eta0`].
pub fn train_gate(
    features: &[f32],
    labels: &[u8],
    n: usize,
    f: usize,
    classes: usize,
    cfg: &TrainConfig,
    progress: &mut dyn FnMut(usize, f64),
) -> Result<LinearGate> {
    let p = Problem::new(features, labels, n, f, classes, cfg)?;
    let eta0 = match cfg.eta0 {
        Some(e) => e,
        None => p.tune_eta0(cfg.seed),
    };
    let rows: Vec<usize> = (0..n).collect();
    let (w, b) = p.run(&rows, eta0, cfg.epochs, cfg.seed, progress);
    Ok(p.fold(&w, &b))
}

/// Step sizes [`choose_eta0`] tries, in units of `1 / E‖z‖²`.
pub const ETA0_CANDIDATES: [f32; 6] = [1.0, 4.0, 16.0, 64.0, 256.0, 1024.0];
/// Rows of the subsample [`choose_eta0`] tunes on.
pub const TUNE_ROWS: usize = 8192;
/// Epochs of each tuning run, and the fewest mini-batch steps it takes.
pub const TUNE_EPOCHS: usize = 10;
pub const TUNE_MIN_STEPS: usize = 300;

/// The step size `η₀` that [`train_gate`] uses when `cfg.eta0` is `None`, following
/// Bottou's recipe ("Stochastic Gradient Descent Tricks", 2012): train briefly from
/// scratch with each of [`ETA0_CANDIDATES`] on a seeded subsample of at most
/// [`TUNE_ROWS`] rows ([`TUNE_EPOCHS`] epochs, at least [`TUNE_MIN_STEPS`] steps) and
/// keep the one whose averaged iterate reaches the lowest objective on that subsample.
/// Costs about as much as ten epochs on 50,000 rows. Short runs favour large steps
/// (their noise floor has not yet mattered); ten epochs was the shortest tuning run
/// that chose within a factor of 4 of the best step for a 30-epoch run on synthetic
/// 10-class data.
pub fn choose_eta0(
    features: &[f32],
    labels: &[u8],
    n: usize,
    f: usize,
    classes: usize,
    cfg: &TrainConfig,
) -> Result<f32> {
    Ok(Problem::new(features, labels, n, f, classes, cfg)?.tune_eta0(cfg.seed))
}

/// A validated training problem in standardised coordinates `z = (x − μ)·σ⁻¹`.
struct Problem<'a> {
    x: &'a [f32],
    labels: &'a [u8],
    f: usize,
    c: usize,
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    /// E‖z‖² + 1 (the 1 is the bias' constant input): the unit of `η₀`.
    mean_sq_norm: f64,
    loss: Loss,
    lambda: f64,
    batch: usize,
}

impl<'a> Problem<'a> {
    fn new(
        x: &'a [f32],
        labels: &'a [u8],
        n: usize,
        f: usize,
        classes: usize,
        cfg: &TrainConfig,
    ) -> Result<Self> {
        validate_config(cfg)?;
        if n == 0 || f == 0 {
            return Err(Error::Input(format!(
                "no data to train on ({n} samples × {f} features)"
            )));
        }
        if classes < 2 {
            return Err(Error::Config(format!(
                "a gate needs at least 2 classes, got {classes}"
            )));
        }
        check_len("features", x.len(), n, f)?;
        if labels.len() != n {
            return Err(Error::Input(format!(
                "{} labels for {n} samples",
                labels.len()
            )));
        }
        check_labels(labels, classes)?;
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(Error::Input(format!(
                "feature {} of sample {} is not finite ({})",
                i % f,
                i / f,
                x[i]
            )));
        }
        let (mean, inv_std) = if cfg.standardize {
            standardisation(x, n, f)
        } else {
            (vec![0f32; f], vec![1f32; f])
        };
        let mut acc = 0f64;
        for row in x.chunks_exact(f) {
            for ((&v, &m), &s) in row.iter().zip(&mean).zip(&inv_std) {
                let z = ((v - m) * s) as f64;
                acc += z * z;
            }
        }
        Ok(Problem {
            x,
            labels,
            f,
            c: classes,
            mean,
            inv_std,
            mean_sq_norm: acc / n as f64 + 1.0,
            loss: cfg.loss,
            lambda: cfg.lambda as f64,
            batch: cfg.batch_size,
        })
    }

    /// Standardised copies of `rows`, one after another, into `out`.
    fn gather(&self, rows: &[usize], out: &mut [f32]) {
        let f = self.f;
        for (dst, &i) in out.chunks_exact_mut(f).zip(rows) {
            let x = &self.x[i * f..(i + 1) * f];
            for (((z, &v), &mu), &s) in dst.iter_mut().zip(x).zip(&self.mean).zip(&self.inv_std) {
                *z = (v - mu) * s;
            }
        }
    }

    /// `S = Z·Wᵀ` for `m` gathered rows (bias not added).
    fn scores(&self, m: usize, z: &[f32], w: &[f32], s: &mut [f32]) {
        let (f, c) = (self.f, self.c);
        assert!(z.len() >= m * f && w.len() >= c * f && s.len() >= m * c);
        // SAFETY: the assert above bounds every access; the strides describe row-major
        // Z (m × f), Wᵀ read from row-major W (c × f), and row-major S (m × c).
        unsafe {
            matrixmultiply::sgemm(
                m,
                f,
                c,
                1.0,
                z.as_ptr(),
                f as isize,
                1,
                w.as_ptr(),
                1,
                f as isize,
                0.0,
                s.as_mut_ptr(),
                c as isize,
                1,
            );
        }
    }

    /// Mini-batch (sub)gradient descent over `rows` (see the module documentation);
    /// returns the suffix-averaged `(W, b)` in standardised coordinates.
    fn run(
        &self,
        rows: &[usize],
        eta0_units: f32,
        epochs: usize,
        seed: u64,
        progress: &mut dyn FnMut(usize, f64),
    ) -> (Vec<f64>, Vec<f64>) {
        let (f, c, lambda) = (self.f, self.c, self.lambda);
        let n = rows.len();
        let bs = self.batch.min(n);
        let eta0 = eta0_units as f64 / self.mean_sq_norm;
        // Suffix averaging over the last half of the epochs (all of them if there is one).
        let avg_from_epoch = epochs / 2;

        let mut w = vec![0f32; c * f];
        let mut b = vec![0f32; c];
        let mut w_avg = vec![0f64; c * f];
        let mut b_avg = vec![0f64; c];
        let mut averaged = 0u64;

        let mut order = rows.to_vec();
        let mut rng = SplitMix64::new(seed);
        let mut zb = vec![0f32; bs * f];
        let mut sb = vec![0f32; bs * c];
        let mut db = vec![0f32; bs * c];
        let mut s64 = vec![0f64; c];
        let mut d64 = vec![0f64; c];
        let mut gb = vec![0f64; c];
        let mut t = 0u64;

        for epoch in 0..epochs {
            rng.shuffle(&mut order);
            let mut epoch_loss = 0f64;
            for batch in order.chunks(bs) {
                let m = batch.len();
                self.gather(batch, &mut zb);
                self.scores(m, &zb, &w, &mut sb);
                gb.iter_mut().for_each(|g| *g = 0.0);
                for ((srow, drow), &i) in sb.chunks_exact(c).zip(db.chunks_exact_mut(c)).zip(batch)
                {
                    for ((s, &v), &bj) in s64.iter_mut().zip(srow).zip(&b) {
                        *s = (v + bj) as f64;
                    }
                    epoch_loss +=
                        loss_and_dscores(self.loss, &s64, self.labels[i] as usize, &mut d64);
                    for ((o, &dv), g) in drow.iter_mut().zip(&d64).zip(gb.iter_mut()) {
                        *o = dv as f32;
                        *g += dv;
                    }
                }

                t += 1;
                let eta = eta0 / (1.0 + 2.0 * lambda * eta0 * t as f64);
                // Positive for every t ≥ 1: 2λη = 2λη₀ / (1 + 2λη₀t) < 1.
                let shrink = (1.0 - 2.0 * lambda * eta) as f32;
                w.iter_mut().for_each(|v| *v *= shrink);
                // W += −η/m · Dᵀ·Z  (c × m · m × f), accumulated in place.
                // SAFETY: db holds m × c, zb m × f and w c × f floats (bs ≥ m); Dᵀ is
                // read from row-major D, Z and W are row-major.
                unsafe {
                    matrixmultiply::sgemm(
                        c,
                        m,
                        f,
                        (-eta / m as f64) as f32,
                        db.as_ptr(),
                        1,
                        c as isize,
                        zb.as_ptr(),
                        f as isize,
                        1,
                        1.0,
                        w.as_mut_ptr(),
                        f as isize,
                        1,
                    );
                }
                for (bj, g) in b.iter_mut().zip(&gb) {
                    *bj -= (eta * g / m as f64) as f32;
                }

                if epoch >= avg_from_epoch {
                    averaged += 1;
                    let k = 1.0 / averaged as f64;
                    for (a, &v) in w_avg.iter_mut().zip(&w) {
                        *a += (v as f64 - *a) * k;
                    }
                    for (a, &v) in b_avg.iter_mut().zip(&b) {
                        *a += (v as f64 - *a) * k;
                    }
                }
            }
            let reg: f64 = w.iter().map(|&v| v as f64 * v as f64).sum();
            progress(epoch + 1, epoch_loss / n as f64 + lambda * reg);
        }
        (w_avg, b_avg)
    }

    /// The objective over `rows` at `(W, b)` in standardised coordinates.
    fn objective(&self, rows: &[usize], w: &[f64], b: &[f64]) -> f64 {
        let (f, c) = (self.f, self.c);
        let w32: Vec<f32> = w.iter().map(|&v| v as f32).collect();
        let chunk = 1024;
        let mut z = vec![0f32; chunk * f];
        let mut s = vec![0f32; chunk * c];
        let (mut s64, mut d64) = (vec![0f64; c], vec![0f64; c]);
        let mut total = 0f64;
        for part in rows.chunks(chunk) {
            self.gather(part, &mut z);
            self.scores(part.len(), &z, &w32, &mut s);
            for (srow, &i) in s.chunks_exact(c).zip(part) {
                for ((o, &v), &bj) in s64.iter_mut().zip(srow).zip(b) {
                    *o = v as f64 + bj;
                }
                total += loss_and_dscores(self.loss, &s64, self.labels[i] as usize, &mut d64);
            }
        }
        let reg: f64 = w.iter().map(|v| v * v).sum();
        total / rows.len() as f64 + self.lambda * reg
    }

    fn tune_eta0(&self, seed: u64) -> f32 {
        let n = self.labels.len();
        let mut rows: Vec<usize> = (0..n).collect();
        let mut rng = SplitMix64::new(seed ^ 0x5EED_E7A0);
        rng.shuffle(&mut rows);
        rows.truncate(TUNE_ROWS);
        let steps_per_epoch = rows.len().div_ceil(self.batch.min(rows.len()));
        let epochs = TUNE_MIN_STEPS.div_ceil(steps_per_epoch).max(TUNE_EPOCHS);
        let mut best = (f64::INFINITY, ETA0_CANDIDATES[0]);
        for &eta in &ETA0_CANDIDATES {
            let (w, b) = self.run(&rows, eta, epochs, seed, &mut |_, _| {});
            let obj = self.objective(&rows, &w, &b);
            // A diverged run gives NaN or ∞ and loses every comparison.
            if obj < best.0 {
                best = (obj, eta);
            }
        }
        best.1
    }

    /// Folds the standardisation into raw-feature weights:
    /// `W·((x − μ)·σ⁻¹) + b = (W·σ⁻¹)·x + (b − Σ W·σ⁻¹·μ)`.
    fn fold(&self, w: &[f64], b: &[f64]) -> LinearGate {
        let (f, c) = (self.f, self.c);
        let mut weight = vec![0f32; c * f];
        let mut bias = vec![0f32; c];
        for j in 0..c {
            let mut bj = b[j];
            for k in 0..f {
                let wk = w[j * f + k] * self.inv_std[k] as f64;
                weight[j * f + k] = wk as f32;
                bj -= wk * self.mean[k] as f64;
            }
            bias[j] = bj as f32;
        }
        LinearGate { weight, bias }
    }
}

fn validate_config(cfg: &TrainConfig) -> Result<()> {
    if !(cfg.lambda.is_finite() && cfg.lambda > 0.0) {
        return Err(Error::Config(format!(
            "lambda must be > 0, got {}",
            cfg.lambda
        )));
    }
    if let Some(e) = cfg.eta0 {
        if !(e.is_finite() && e > 0.0) {
            return Err(Error::Config(format!("eta0 must be > 0, got {e}")));
        }
    }
    if cfg.epochs == 0 {
        return Err(Error::Config("epochs must be at least 1".into()));
    }
    if cfg.batch_size == 0 {
        return Err(Error::Config("batch size must be at least 1".into()));
    }
    Ok(())
}

/// Per-feature mean and 1/std over the rows; 1/std = 0 for (numerically) constant
/// features, which then contribute nothing and keep a zero weight.
fn standardisation(x: &[f32], n: usize, f: usize) -> (Vec<f32>, Vec<f32>) {
    let mut sum = vec![0f64; f];
    for row in x.chunks_exact(f) {
        for (s, &v) in sum.iter_mut().zip(row) {
            *s += v as f64;
        }
    }
    let mean: Vec<f64> = sum.iter().map(|s| s / n as f64).collect();
    let mut var = vec![0f64; f];
    for row in x.chunks_exact(f) {
        for ((s, &v), &m) in var.iter_mut().zip(row).zip(&mean) {
            let d = v as f64 - m;
            *s += d * d;
        }
    }
    let inv_std = var
        .iter()
        .zip(&mean)
        .map(|(&v, &m)| {
            let sd = (v / n as f64).sqrt();
            if sd > 1e-6 * m.abs().max(1e-12) && sd > 1e-30 {
                (1.0 / sd) as f32
            } else {
                0.0
            }
        })
        .collect();
    (mean.iter().map(|&m| m as f32).collect(), inv_std)
}

pub(crate) fn check_len(what: &str, len: usize, rows: usize, cols: usize) -> Result<()> {
    match rows.checked_mul(cols) {
        Some(want) if want == len => Ok(()),
        _ => Err(Error::Input(format!(
            "{what}: expected {rows} × {cols} values, got {len}"
        ))),
    }
}

pub(crate) fn check_labels(labels: &[u8], classes: usize) -> Result<()> {
    match labels.iter().position(|&l| l as usize >= classes) {
        Some(i) => Err(Error::Input(format!(
            "label {} of sample {i} is out of range for {classes} classes",
            labels[i]
        ))),
        None => Ok(()),
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// splitmix64 (Steele, Lea & Flood): tiny, seedable, good enough to shuffle.
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (`bound > 0`), by Lemire's multiply-shift (bias < 2⁻³²
    /// for the sizes used here, irrelevant for shuffling).
    fn below(&mut self, bound: usize) -> usize {
        ((self.next_u64() as u128 * bound as u128) >> 64) as usize
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}
