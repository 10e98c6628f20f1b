//! `slmlp pretrain`.

use crate::pretrain::{pretrain, PretrainArgs};
use engine::Result;

pub fn run(a: &PretrainArgs) -> Result<()> {
    let r = pretrain(a)?;
    println!(
        "done in {:.0} s ({:.1} img/s); weights in {}",
        r.seconds,
        r.images_per_s,
        r.model_path.display()
    );
    Ok(())
}
