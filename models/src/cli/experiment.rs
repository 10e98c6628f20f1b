//! `slmlp experiment [--detection]` (the library prints its tables).

use super::{bounded, bounded_opt, MAX_BATCH, MAX_COUNT, MAX_PLOT_PER_CLASS, MAX_THREADS};
use crate::data::MAX_IMAGE_SIZE;
use crate::experiment::{experiment, ExperimentArgs, SPLITS};
use crate::net::MAX_WIDTH;
use engine::Result;

/// The sizes on the command line within bounds.
fn check(a: &ExperimentArgs) -> Result<()> {
    bounded("width", a.width, 1..=MAX_WIDTH)?;
    bounded("batch", a.batch, 1..=MAX_BATCH)?;
    bounded("k", a.k, 1..=MAX_COUNT)?;
    bounded("workers", a.workers, 0..=MAX_THREADS)?;
    bounded("plot-per-class", a.plot_per_class, 1..=MAX_PLOT_PER_CLASS)?;
    bounded("pretrain-size", a.pretrain_size, 1..=MAX_IMAGE_SIZE)?;
    bounded_opt("splits", a.splits, 1..=SPLITS.len())?;
    for (flag, v) in [
        ("seeds", a.seeds),
        ("epochs", a.epochs),
        ("per-class", a.per_class),
        ("transfer-per-class", a.transfer_per_class),
        ("eval-per-class", a.eval_per_class),
        ("det-train", a.det_train),
        ("det-val", a.det_val),
        ("det-epochs", a.det_epochs),
    ] {
        bounded_opt(flag, v, 1..=MAX_COUNT)?;
    }
    Ok(())
}

pub fn run(a: &ExperimentArgs) -> Result<()> {
    check(a)?;
    experiment(a).map(|_| ())
}
