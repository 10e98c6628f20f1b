//! `slmlp detection-data`: the built-in detection benchmark written to a
//! folder (OUT/train from Fashion-MNIST's training items, OUT/val from its
//! test items).

use super::{bounded, MAX_COUNT};
use crate::data::MAX_IMAGE_SIZE;
use crate::data::{
    default_fashion_mnist_dir, fashion_mnist, parse_classes, Split, FASHION_MNIST_CLASSES,
};
use crate::detection::synth::{generate, SynthOptions};
use engine::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct DetectionDataArgs {
    #[arg(long)]
    out: PathBuf,
    /// Training images (items from Fashion-MNIST's training split).
    #[arg(long, default_value_t = 2000)]
    train: usize,
    /// Validation images (items from Fashion-MNIST's test split).
    #[arg(long, default_value_t = 500)]
    val: usize,
    /// Canvas side in pixels.
    #[arg(long, default_value_t = 128)]
    canvas: usize,
    /// Each image gets 1..=N items.
    #[arg(long, default_value_t = 4)]
    max_objects: usize,
    /// Fashion-MNIST classes to draw items from (default all).
    #[arg(long)]
    classes: Option<String>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Most items pasted on one canvas.
const MAX_OBJECTS: usize = 1024;

/// The sizes on the command line within bounds.
fn check(a: &DetectionDataArgs) -> Result<()> {
    bounded("train", a.train, 0..=MAX_COUNT)?;
    bounded("val", a.val, 0..=MAX_COUNT)?;
    bounded("canvas", a.canvas, 1..=MAX_IMAGE_SIZE)?;
    bounded("max-objects", a.max_objects, 1..=MAX_OBJECTS)
}

pub fn run(a: &DetectionDataArgs) -> Result<()> {
    check(a)?;
    let names: Vec<String> = FASHION_MNIST_CLASSES
        .iter()
        .map(|s| s.to_string())
        .collect();
    let classes = match &a.classes {
        Some(c) => Some(parse_classes(c, &names)?),
        None => None,
    };
    for (split, source, n, seed) in [
        ("train", Split::Train, a.train, a.seed),
        ("val", Split::Test, a.val, a.seed.wrapping_add(1)),
    ] {
        let source = fashion_mnist(&default_fashion_mnist_dir(), source)?;
        let opts = SynthOptions {
            images: n,
            canvas: (a.canvas, a.canvas),
            max_objects: a.max_objects,
            classes: classes.clone(),
            seed,
            ..SynthOptions::default()
        };
        let s = generate(&source, &opts, &a.out, split)?;
        println!(
            "{split}: {} images, {} instances ({} dropped as occluded, {} not placed) -> {}",
            s.images,
            s.instances,
            s.occluded,
            s.unplaced,
            s.annotations.display()
        );
    }
    Ok(())
}
