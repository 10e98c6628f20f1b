//! Linear probe: a single Linear layer trained with our engine's SGD on
//! frozen features, the standard linear-evaluation protocol for transfer;
//! and the tuned probe, which picks the learning rate and weight decay on a
//! held-out part of the train features.

use super::{check_pair, dim_moments, Features};
use engine::nn::{Linear, Module};
use engine::optim::{zero_grad, Cosine, LrSchedule, Optimizer, Sgd};
use engine::{no_grad, Error, Result, Rng, Tensor};

/// Hyperparameters of `linear_probe`. Momentum is fixed at 0.9 and the
/// learning rate follows a half-cosine from `lr` to 0 over all steps.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeOptions {
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    /// L2 decay on the weight matrix only (the bias is not decayed).
    pub weight_decay: f64,
    /// Seeds the weight init and the per-epoch shuffles.
    pub seed: u64,
    /// Standardise both sets with the train set's per-dim mean and std
    /// (true), or train on the raw features (false).
    pub standardize: bool,
}

impl Default for ProbeOptions {
    /// 30 epochs, batch 256, lr 0.1, weight decay 5e-4, seed 0,
    /// standardised: on standardised features this converges well within
    /// the budget.
    fn default() -> Self {
        ProbeOptions {
            epochs: 30,
            batch: 256,
            lr: 0.1,
            weight_decay: 5e-4,
            seed: 0,
            standardize: true,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ProbeResult {
    /// Accuracy of the final model on the whole train set.
    pub train_accuracy: f64,
    pub test_accuracy: f64,
    /// Mean cross-entropy over the samples of the last epoch (each batch's
    /// loss at the weights it was computed with).
    pub final_loss: f64,
}

const MOMENTUM: f64 = 0.9;
/// Rows per forward pass when measuring accuracy.
const EVAL_CHUNK: usize = 4096;

/// Trains `Linear(d -> num_classes)` (PyTorch default init from `seed`)
/// with softmax cross-entropy on `train` and reports train/test accuracy.
///
/// With `standardize` (the default) both sets are standardised with the
/// train set's per-dim mean and population std (dims with std 0 are only
/// centred), so one learning rate suits any feature scale. Each epoch visits the train rows in a fresh
/// `engine::Rng` shuffle, in batches of `batch` (the last one may be
/// smaller); SGD with momentum 0.9, decay on the weight only, and a cosine
/// rate per step. Predictions are the argmax logit (ties: lowest class).
/// Deterministic for a given seed.
///
/// Errors if the sets differ in `d` or class list, either set is empty, a
/// label is `>= num_classes`, an option is out of range, or the loss stops
/// being finite (learning rate too high).
pub fn linear_probe(
    train: &Features,
    test: &Features,
    num_classes: usize,
    opts: &ProbeOptions,
) -> Result<ProbeResult> {
    const OP: &str = "linear_probe";
    check_inputs(OP, train, test, num_classes)?;
    check_options(OP, opts)?;
    let (xtr, xte) = inputs(train, test, opts.standardize);
    match fit(&xtr, train, num_classes, opts)? {
        Fit::Trained { linear, final_loss } => Ok(ProbeResult {
            train_accuracy: accuracy(&linear, &xtr, &train.labels, train.d)?,
            test_accuracy: accuracy(&linear, &xte, &test.labels, test.d)?,
            final_loss,
        }),
        Fit::Diverged { loss, epoch, step } => Err(Error::arg(
            OP,
            format!(
                "loss became {loss} at epoch {epoch}, step {step}: lower lr (now {})",
                opts.lr
            ),
        )),
    }
}

/// Both sets: same width and class list, not empty, labels below
/// `num_classes`.
fn check_inputs(
    op: &'static str,
    train: &Features,
    test: &Features,
    num_classes: usize,
) -> Result<()> {
    check_pair(op, train, test)?;
    if train.n == 0 || test.n == 0 {
        return Err(Error::arg(
            op,
            format!("train ({}) and test ({}) need samples", train.n, test.n),
        ));
    }
    for (set, f) in [("train", train), ("test", test)] {
        if let Some(l) = f.labels.iter().find(|&&l| l >= num_classes) {
            return Err(Error::arg(
                op,
                format!("{set} label {l} is out of range for num_classes = {num_classes}"),
            ));
        }
    }
    Ok(())
}

/// The two sets as the probe sees them: standardised with `train`'s
/// statistics, or as they are.
fn inputs(train: &Features, test: &Features, standardize: bool) -> (Vec<f32>, Vec<f32>) {
    if standardize {
        let (mean, scale) = standardizer(train);
        (
            standardize_with(train, &mean, &scale),
            standardize_with(test, &mean, &scale),
        )
    } else {
        (train.x.clone(), test.x.clone())
    }
}

enum Fit {
    Trained {
        linear: Linear,
        final_loss: f64,
    },
    /// The loss stopped being finite (learning rate too high).
    Diverged {
        loss: f64,
        epoch: usize,
        step: usize,
    },
}

/// Trains the probe on the `train.n` rows of `x` (`train.d` wide) with
/// `train`'s labels; the loop `linear_probe` documents.
fn fit(x: &[f32], train: &Features, num_classes: usize, opts: &ProbeOptions) -> Result<Fit> {
    let d = train.d;
    let mut rng = Rng::new(opts.seed);
    let linear = Linear::new("probe", d, num_classes, true, &mut rng)?;
    let params = linear.params();
    let mut opt = Sgd::new(opts.lr, MOMENTUM, opts.weight_decay).with_exclude_no_wd(true);
    let steps_per_epoch = train.n.div_ceil(opts.batch);
    let schedule = Cosine {
        base_lr: opts.lr,
        total_steps: opts.epochs * steps_per_epoch,
        final_lr: 0.0,
    };
    let mut order: Vec<usize> = (0..train.n).collect();
    let mut step = 0;
    let mut final_loss = f64::NAN;
    for epoch in 0..opts.epochs {
        rng.shuffle(&mut order);
        let mut loss_sum = 0.0f64;
        for idx in order.chunks(opts.batch) {
            let mut xb = Vec::with_capacity(idx.len() * d);
            for &i in idx {
                xb.extend_from_slice(&x[i * d..(i + 1) * d]);
            }
            let yb: Vec<i64> = idx.iter().map(|&i| train.labels[i] as i64).collect();
            let xb = Tensor::from_vec(xb, &[idx.len(), d])?;
            let y = Tensor::from_vec(yb, &[idx.len()])?;
            zero_grad(&params);
            let loss = linear.forward(&xb)?.cross_entropy(&y, 0.0, None)?;
            let value = loss.item()?;
            if !value.is_finite() {
                return Ok(Fit::Diverged {
                    loss: value,
                    epoch,
                    step,
                });
            }
            loss.backward()?;
            opt.set_lr(schedule.lr(step));
            opt.step(&params)?;
            loss_sum += value * idx.len() as f64;
            step += 1;
        }
        final_loss = loss_sum / train.n as f64;
    }
    Ok(Fit::Trained { linear, final_loss })
}

/// Options of `tuned_linear_probe`: the grid searched and the split used.
#[derive(Clone, Debug, PartialEq)]
pub struct TuneOptions {
    /// Candidate learning rates (outer loop of the grid).
    pub lrs: Vec<f64>,
    /// Candidate weight decays (inner loop).
    pub weight_decays: Vec<f64>,
    /// Fraction of each class's train rows held out for the selection.
    pub holdout: f64,
    /// Of every probe trained, as in `ProbeOptions`.
    pub epochs: usize,
    pub batch: usize,
    /// Seeds the held-out draw, the weight init and the shuffles.
    pub seed: u64,
    /// Standardise with the fitted rows' statistics (true) or not.
    pub standardize: bool,
}

impl Default for TuneOptions {
    /// lr in {0.01, 0.03, 0.1, 0.3} x weight decay in {0, 1e-4, 1e-3,
    /// 1e-2}, 20 % held out; epochs, batch, seed and standardisation as
    /// `ProbeOptions::default()`.
    fn default() -> Self {
        let p = ProbeOptions::default();
        TuneOptions {
            lrs: vec![0.01, 0.03, 0.1, 0.3],
            weight_decays: vec![0.0, 1e-4, 1e-3, 1e-2],
            holdout: 0.2,
            epochs: p.epochs,
            batch: p.batch,
            seed: p.seed,
            standardize: p.standardize,
        }
    }
}

impl TuneOptions {
    /// The probe options of one grid point.
    fn probe(&self, lr: f64, weight_decay: f64) -> ProbeOptions {
        ProbeOptions {
            epochs: self.epochs,
            batch: self.batch,
            lr,
            weight_decay,
            seed: self.seed,
            standardize: self.standardize,
        }
    }
}

/// Most grid points `tuned_linear_probe` accepts (each trains one probe).
pub const MAX_GRID_POINTS: usize = 64;

/// One candidate of the grid and how it did on the held-out rows.
#[derive(Clone, Debug, PartialEq)]
pub struct GridPoint {
    pub lr: f64,
    pub weight_decay: f64,
    /// `None` when training diverged (the loss stopped being finite).
    pub holdout_accuracy: Option<f64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TunedProbe {
    /// The chosen learning rate and weight decay.
    pub lr: f64,
    pub weight_decay: f64,
    /// Whether the features were standardised.
    pub standardize: bool,
    /// Accuracy of the chosen candidate on the held-out train rows.
    pub holdout_accuracy: f64,
    /// Rows held out of the train set for the selection.
    pub holdout_rows: usize,
    /// Of the probe retrained with the choice on all train rows, as in
    /// `ProbeResult`.
    pub train_accuracy: f64,
    pub test_accuracy: f64,
    pub final_loss: f64,
    /// Every candidate, in grid order (lr outer, weight decay inner).
    pub grid: Vec<GridPoint>,
}

impl TunedProbe {
    /// Every field, the grid as `[{lr, weight_decay, holdout_accuracy}]`
    /// (`null` accuracy: diverged).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "standardize": self.standardize,
            "holdout_accuracy": self.holdout_accuracy,
            "holdout_rows": self.holdout_rows,
            "train_accuracy": self.train_accuracy,
            "test_accuracy": self.test_accuracy,
            "final_loss": self.final_loss,
            "grid": self.grid.iter().map(|g| serde_json::json!({
                "lr": g.lr,
                "weight_decay": g.weight_decay,
                "holdout_accuracy": g.holdout_accuracy,
            })).collect::<Vec<_>>(),
        })
    }
}

/// A linear probe whose learning rate and weight decay are chosen on the
/// train set alone, then evaluated once on `test`.
///
/// 1. Split `train` per class: of a class's `n_c` rows, `max(1,
///    round(holdout * n_c))` (at most `n_c - 1`; none when `n_c = 1`) are
///    held out, drawn by an `engine::Rng` shuffle seeded from
///    `opts.seed`, so the held-out part is stratified and fixed.
/// 2. For each (lr, weight decay) of the grid, train the probe of
///    `linear_probe` (same epochs, batch, seed and standardisation; the
///    statistics from the fitting part only) on the rest and measure its
///    accuracy on the held-out rows. A candidate whose loss diverges scores
///    nothing.
/// 3. Pick the highest held-out accuracy (ties: the first in grid order,
///    lr outer and ascending as given, weight decay inner), retrain with it
///    on all of `train` and report `linear_probe`'s result on `test`.
///
/// `test` is used only in step 3: the choice is a function of `train` and
/// `opts` alone. Errors as `linear_probe` does, and when the grid is empty
/// or has more than `MAX_GRID_POINTS` points, a candidate is not a valid
/// rate or decay, `holdout` is not in (0, 1), no row can be held out (every
/// class has one row), or every candidate diverges.
pub fn tuned_linear_probe(
    train: &Features,
    test: &Features,
    num_classes: usize,
    opts: &TuneOptions,
) -> Result<TunedProbe> {
    const OP: &str = "tuned_linear_probe";
    check_inputs(OP, train, test, num_classes)?;
    let (grid, holdout_rows) = select(OP, train, num_classes, opts)?;
    let best = grid
        .iter()
        .filter_map(|g| g.holdout_accuracy.map(|a| (g, a)))
        // max_by keeps the last of equal maxima; iterate reversed for the first
        .rev()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .ok_or_else(|| {
            Error::arg(
                OP,
                "every candidate of the grid diverged on the held-out split: lower the rates",
            )
        })?;
    let (lr, weight_decay, holdout_accuracy) = (best.0.lr, best.0.weight_decay, best.1);
    let r = linear_probe(train, test, num_classes, &opts.probe(lr, weight_decay))?;
    Ok(TunedProbe {
        lr,
        weight_decay,
        standardize: opts.standardize,
        holdout_accuracy,
        holdout_rows,
        train_accuracy: r.train_accuracy,
        test_accuracy: r.test_accuracy,
        final_loss: r.final_loss,
        grid,
    })
}

/// Steps 1 and 2 of `tuned_linear_probe`: every grid point scored on the
/// held-out part of `train` (no test set in sight), and how many rows that
/// part has.
fn select(
    op: &'static str,
    train: &Features,
    num_classes: usize,
    opts: &TuneOptions,
) -> Result<(Vec<GridPoint>, usize)> {
    let points = opts.lrs.len() * opts.weight_decays.len();
    if points == 0 || points > MAX_GRID_POINTS {
        return Err(Error::arg(
            op,
            format!(
                "the grid has {} rates x {} decays = {points} points; expected 1..={MAX_GRID_POINTS}",
                opts.lrs.len(),
                opts.weight_decays.len()
            ),
        ));
    }
    if !(opts.holdout > 0.0 && opts.holdout < 1.0) {
        return Err(Error::arg(
            op,
            format!("holdout must be in (0, 1), got {}", opts.holdout),
        ));
    }
    let (fit_part, held) = holdout_split(train, opts)?;
    if held.n == 0 {
        return Err(Error::arg(
            op,
            format!(
                "no train row can be held out: each of the {} rows is its class's only one",
                train.n
            ),
        ));
    }
    // every candidate checked before any is trained
    let candidates = opts
        .lrs
        .iter()
        .flat_map(|&lr| {
            opts.weight_decays
                .iter()
                .map(move |&weight_decay| opts.probe(lr, weight_decay))
        })
        .map(|o| check_options(op, &o).map(|()| o))
        .collect::<Result<Vec<_>>>()?;
    let (xf, xh) = inputs(&fit_part, &held, opts.standardize);
    let mut grid = Vec::with_capacity(points);
    for o in candidates {
        let holdout_accuracy = match fit(&xf, &fit_part, num_classes, &o)? {
            Fit::Trained { linear, .. } => Some(accuracy(&linear, &xh, &held.labels, held.d)?),
            Fit::Diverged { .. } => None,
        };
        grid.push(GridPoint {
            lr: o.lr,
            weight_decay: o.weight_decay,
            holdout_accuracy,
        });
    }
    Ok((grid, held.n))
}

/// Step 1 of `tuned_linear_probe`: (the rows fitted, the rows held out),
/// both in `train`'s row order.
fn holdout_split(train: &Features, opts: &TuneOptions) -> Result<(Features, Features)> {
    let mut by_class = vec![Vec::new(); train.classes.len()];
    for (i, &l) in train.labels.iter().enumerate() {
        by_class[l].push(i);
    }
    let mut rng = Rng::new(opts.seed ^ HOLDOUT_SALT);
    let mut held = vec![false; train.n];
    for rows in &mut by_class {
        let n_c = rows.len();
        if n_c < 2 {
            continue;
        }
        let k = ((opts.holdout * n_c as f64).round() as usize).clamp(1, n_c - 1);
        rng.shuffle(rows);
        rows[..k].iter().for_each(|&i| held[i] = true);
    }
    let part = |keep: bool| {
        let rows: Vec<usize> = (0..train.n).filter(|&i| held[i] == keep).collect();
        Features::new(
            rows.iter()
                .flat_map(|&i| train.row(i).iter().copied())
                .collect(),
            rows.len(),
            train.d,
            rows.iter().map(|&i| train.labels[i]).collect(),
            train.classes.clone(),
        )
    };
    Ok((part(false)?, part(true)?))
}

/// Keeps the held-out draw independent of the weight init's stream.
const HOLDOUT_SALT: u64 = 0x686f_6c64_6f75_7421;

fn check_options(op: &'static str, o: &ProbeOptions) -> Result<()> {
    if o.epochs == 0 || o.batch == 0 {
        return Err(Error::arg(
            op,
            format!("epochs ({}) and batch ({}) must be >= 1", o.epochs, o.batch),
        ));
    }
    if !(o.lr.is_finite() && o.lr > 0.0) {
        return Err(Error::arg(
            op,
            format!("lr must be finite and > 0, got {}", o.lr),
        ));
    }
    if !(o.weight_decay.is_finite() && o.weight_decay >= 0.0) {
        return Err(Error::arg(
            op,
            format!(
                "weight_decay must be finite and >= 0, got {}",
                o.weight_decay
            ),
        ));
    }
    Ok(())
}

/// Per-dim mean and 1/std of the train set (1 where std is 0).
fn standardizer(f: &Features) -> (Vec<f64>, Vec<f64>) {
    let (mean, std) = dim_moments(f);
    let scale = std
        .iter()
        .map(|&s| if s > 0.0 { 1.0 / s } else { 1.0 })
        .collect();
    (mean, scale)
}

fn standardize_with(f: &Features, mean: &[f64], scale: &[f64]) -> Vec<f32> {
    let mut out = Vec::with_capacity(f.x.len());
    for i in 0..f.n {
        out.extend(
            f.row(i)
                .iter()
                .zip(mean.iter().zip(scale))
                .map(|(&v, (m, s))| ((v as f64 - m) * s) as f32),
        );
    }
    out
}

fn accuracy(linear: &Linear, x: &[f32], labels: &[usize], d: usize) -> Result<f64> {
    let _ng = no_grad();
    let c = linear.out_features();
    let mut correct = 0usize;
    for (rows, lab) in x.chunks(EVAL_CHUNK * d).zip(labels.chunks(EVAL_CHUNK)) {
        let logits = linear
            .forward(&Tensor::from_slice(rows, &[lab.len(), d])?)?
            .to_vec::<f32>()?;
        for (z, &l) in logits.chunks(c).zip(lab) {
            let mut best = 0;
            for j in 1..c {
                if z[j] > z[best] {
                    best = j;
                }
            }
            correct += (best == l) as usize;
        }
    }
    Ok(correct as f64 / labels.len() as f64)
}
