//! `slmlp transfer`.

use super::{bounded, check_data, MAX_BATCH, MAX_COUNT};
use crate::transfer::{transfer, TransferArgs};
use engine::Result;

/// The sizes on the command line within bounds (the checkpoint's metadata
/// is checked against its tensors by `load_trained` before a network is
/// built from it).
fn check(a: &TransferArgs) -> Result<()> {
    bounded("batch", a.batch, 1..=MAX_BATCH)?;
    bounded("k", a.k, 1..=MAX_COUNT)?;
    bounded("probe-epochs", a.probe_epochs, 0..=MAX_COUNT)?;
    bounded("finetune-epochs", a.finetune_epochs, 0..=MAX_COUNT)?;
    check_data(&a.data)
}

pub fn run(a: &TransferArgs) -> Result<()> {
    check(a)?;
    let r = transfer(a)?;
    println!(
        "transfer to {} classes ({} train / {} test images):",
        r.classes.len(),
        r.train_images,
        r.test_images
    );
    if let Some(p) = &r.linear {
        println!(
            "  linear probe: test {:.2}%  (train {:.2}%)",
            100.0 * p.test_accuracy,
            100.0 * p.train_accuracy
        );
    }
    if let Some(k) = r.knn {
        println!("  k-NN: {:.2}%", 100.0 * k);
    }
    if let Some(f) = r.finetune {
        println!("  fine-tune: {:.2}%", 100.0 * f);
    }
    Ok(())
}
