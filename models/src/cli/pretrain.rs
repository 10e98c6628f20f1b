//! `slmlp pretrain`.

use super::preset::{apply_pretrain, PretrainPreset};
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
