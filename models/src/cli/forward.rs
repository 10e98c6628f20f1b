//! `slmlp forward`: a checkpoint run on an input batch, for diffing against
//! PyTorch.

use crate::device::DeviceArg;
use crate::inspect::{forward_outputs, read_input, write_outputs};
use crate::pretrain::load_trained;
use engine::amp::Precision;
use engine::{DType, Device, Result};
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
    /// cpu, cuda, cuda:N or auto (auto falls back to the CPU).
    #[arg(long, default_value = "cpu")]
    device: DeviceArg,
    /// f32, bf16 or f16: the dtype the network computes in (outputs are
    /// written as f32).
    #[arg(long, default_value = "f32")]
    precision: Precision,
}

pub fn run(a: &ForwardArgs) -> Result<()> {
    let device = a.device.open()?;
    let loaded = load_trained(&a.checkpoint, device)?;
    let input = read_input(&a.input)?.to_device(device)?;
    let dtype = a.precision.compute_dtype();
    let outputs = forward_outputs(&loaded.net, &input, dtype, a.dump_activations)?
        .into_iter()
        .map(|(name, t)| Ok((name, t.to_dtype(DType::F32)?.to_device(Device::Cpu)?)))
        .collect::<Result<Vec<_>>>()?;
    write_outputs(&a.output, &outputs)?;
    for (name, t) in &outputs {
        println!("{name:<24} {:?}", t.dims());
    }
    println!("wrote {}", a.output.display());
    Ok(())
}
