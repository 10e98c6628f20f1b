//! `slmlp transfer`.

use crate::transfer::{transfer, TransferArgs};
use engine::Result;

pub fn run(a: &TransferArgs) -> Result<()> {
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
