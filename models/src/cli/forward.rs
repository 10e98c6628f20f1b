//! `slmlp forward`: a checkpoint run on an input batch, for diffing against
//! PyTorch.

use crate::device::DeviceArg;
use crate::inspect::{forward_outputs, read_input, write_outputs};
use crate::pretrain::load_trained;
use engine::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ForwardArgs {
    /// model.safetensors or checkpoint.safetensors from pretrain.
    #[arg(long)]
    checkpoint: PathBuf,
    /// safetensors file with the input batch [N, C, H, W] as tensor "input".
    #[arg(long)]
    input: PathBuf,
    /// Output safetensors: "logits", "features" and, with
    /// --dump-activations, "act.<torch module name>" for every layer.
    #[arg(long)]
    output: PathBuf,
    #[arg(long)]
    dump_activations: bool,
    /// cpu, or auto (falls back to the CPU): this command runs on the CPU.
    #[arg(long, default_value = "cpu")]
    device: DeviceArg,
}

pub fn run(a: &ForwardArgs) -> Result<()> {
    a.device.cpu_only()?;
    crate::net::check_checkpoint(&a.checkpoint)?;
    let loaded = load_trained(&a.checkpoint)?;
    let input = read_input(&a.input)?;
    let outputs = forward_outputs(&loaded.net, &input, a.dump_activations)?;
    write_outputs(&a.output, &outputs)?;
    for (name, t) in &outputs {
        println!("{name:<24} {:?}", t.dims());
    }
    println!("wrote {}", a.output.display());
    Ok(())
}
