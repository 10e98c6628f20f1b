//! Linear probe: a single Linear layer trained with our engine's SGD on
//! frozen features, the standard linear-evaluation protocol for transfer.

use super::{check_pair, Features};
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
}

impl Default for ProbeOptions {
    /// 30 epochs, batch 256, lr 0.1, weight decay 5e-4, seed 0: on
    /// standardised features this converges well within the budget.
    fn default() -> Self {
        ProbeOptions {
            epochs: 30,
            batch: 256,
            lr: 0.1,
            weight_decay: 5e-4,
            seed: 0,
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
/// Both sets are standardised with the train set's per-dim mean and
/// population std (dims with std 0 are only centred), so one learning rate
/// suits any feature scale. Each epoch visits the train rows in a fresh
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
    check_pair(OP, train, test)?;
    check_options(OP, opts)?;
    if train.n == 0 || test.n == 0 {
        return Err(Error::arg(
            OP,
            format!("train ({}) and test ({}) need samples", train.n, test.n),
        ));
    }
    for (set, f) in [("train", train), ("test", test)] {
        if let Some(l) = f.labels.iter().find(|&&l| l >= num_classes) {
            return Err(Error::arg(
                OP,
                format!("{set} label {l} is out of range for num_classes = {num_classes}"),
            ));
        }
    }
    let d = train.d;
    let (mean, scale) = standardizer(train);
    let xtr = standardize(train, &mean, &scale);
    let xte = standardize(test, &mean, &scale);

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
                xb.extend_from_slice(&xtr[i * d..(i + 1) * d]);
            }
            let yb: Vec<i64> = idx.iter().map(|&i| train.labels[i] as i64).collect();
            let x = Tensor::from_vec(xb, &[idx.len(), d])?;
            let y = Tensor::from_vec(yb, &[idx.len()])?;
            zero_grad(&params);
            let loss = linear.forward(&x)?.cross_entropy(&y, 0.0, None)?;
            let value = loss.item()?;
            if !value.is_finite() {
                return Err(Error::arg(
                    OP,
                    format!(
                        "loss became {value} at epoch {epoch}, step {step}: lower lr (now {})",
                        opts.lr
                    ),
                ));
            }
            loss.backward()?;
            opt.set_lr(schedule.lr(step));
            opt.step(&params)?;
            loss_sum += value * idx.len() as f64;
            step += 1;
        }
        final_loss = loss_sum / train.n as f64;
    }
    Ok(ProbeResult {
        train_accuracy: accuracy(&linear, &xtr, &train.labels, d)?,
        test_accuracy: accuracy(&linear, &xte, &test.labels, d)?,
        final_loss,
    })
}

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
    let mut mean = vec![0.0f64; f.d];
    for i in 0..f.n {
        mean.iter_mut()
            .zip(f.row(i))
            .for_each(|(m, &v)| *m += v as f64);
    }
    mean.iter_mut().for_each(|m| *m /= f.n as f64);
    let mut var = vec![0.0f64; f.d];
    for i in 0..f.n {
        for ((s, &v), m) in var.iter_mut().zip(f.row(i)).zip(&mean) {
            *s += (v as f64 - m).powi(2);
        }
    }
    let scale = var
        .iter()
        .map(|s| {
            let std = (s / f.n as f64).sqrt();
            if std > 0.0 {
                1.0 / std
            } else {
                1.0
            }
        })
        .collect();
    (mean, scale)
}

fn standardize(f: &Features, mean: &[f64], scale: &[f64]) -> Vec<f32> {
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
