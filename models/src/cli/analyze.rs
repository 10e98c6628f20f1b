//! `slmlp analyze` (the library prints its table).

use crate::analyze::{analyze, AnalyzeArgs};
use engine::Result;

pub fn run(a: &AnalyzeArgs) -> Result<()> {
    analyze(a).map(|_| ())
}
