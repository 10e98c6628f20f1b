//! `slmlp experiment [--detection]` (the library prints its tables).

use crate::experiment::{experiment, ExperimentArgs};
use engine::Result;

pub fn run(a: &ExperimentArgs) -> Result<()> {
    experiment(a).map(|_| ())
}
