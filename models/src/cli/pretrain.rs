//! `slmlp pretrain`.

use super::preset::{apply_pretrain, PretrainPreset};
use super::{bounded, bounded_opt, check_data, MAX_BATCH, MAX_COUNT};
use crate::data::MAX_IMAGE_SIZE;
use crate::net::MAX_WIDTH;
use crate::pretrain::{pretrain, PretrainArgs};
use engine::Result;

#[derive(Clone, Debug, clap::Args)]
pub struct PretrainCli {
    /// A recipe's settings (docs/RECIPE.md); flags given explicitly win.
    #[arg(long, value_enum)]
    preset: Option<PretrainPreset>,
    #[command(flatten)]
    pub args: PretrainArgs,
}

impl PretrainCli {
    pub fn apply_preset(&mut self, m: &clap::ArgMatches) {
        if let Some(p) = self.preset {
            apply_pretrain(p, &mut self.args, m);
        }
    }
}

/// The sizes on the command line within bounds (the projector's widths are
/// checked with the network's config, `NetConfig::check`).
fn check(a: &PretrainArgs) -> Result<()> {
    bounded("width", a.width, 1..=MAX_WIDTH)?;
    bounded_opt("image-size", a.image_size, 1..=MAX_IMAGE_SIZE)?;
    bounded("batch", a.batch, 1..=MAX_BATCH)?;
    bounded("epochs", a.epochs, 0..=MAX_COUNT)?;
    check_data(&a.data)
}

pub fn run(a: &PretrainArgs) -> Result<()> {
    check(a)?;
    let r = pretrain(a)?;
    let graph = r.graph_counts.map_or(String::new(), |(rec, rep)| {
        format!("; CUDA graph: {rep} steps replayed, {rec} recording(s)")
    });
    println!(
        "done in {:.0} s ({:.1} img/s with data loading, {:.1} img/s in the steps{graph}); weights in {}",
        r.seconds,
        r.images_per_s,
        r.step_images_per_s,
        r.model_path.display()
    );
    Ok(())
}
