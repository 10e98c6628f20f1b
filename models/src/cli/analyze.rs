//! `slmlp analyze` (the library prints its table).

use super::{bounded, check_data, MAX_BATCH, MAX_PLOT_PER_CLASS};
use crate::analyze::{analyze, AnalyzeArgs};
use engine::Result;

/// The sizes on the command line within bounds (each checkpoint's metadata
/// is checked against its tensors by `load_trained` before a network is
/// built from it).
fn check(a: &AnalyzeArgs) -> Result<()> {
    bounded("batch", a.batch, 1..=MAX_BATCH)?;
    bounded("plot-per-class", a.plot_per_class, 1..=MAX_PLOT_PER_CLASS)?;
    check_data(&a.data)
}

pub fn run(a: &AnalyzeArgs) -> Result<()> {
    check(a)?;
    analyze(a).map(|_| ())
}
