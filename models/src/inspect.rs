//! Forward passes for inspection: logits, pooled features and every traced
//! activation of a `SupervisedNet`, read from and written to safetensors —
//! what `slmlp forward` runs, and what the torchvision parity test compares
//! layer by layer.
//!
//! Activation names are the torch module names `SupervisedNet::forward_traced`
//! reports (`relu`, `maxpool`, `layer{s}.{b}`, `avgpool`, `projector.{i}`,
//! `fc`), so a dump lines up with forward hooks on the same modules in PyTorch.

use crate::net::SupervisedNet;
use engine::checkpoint;
use engine::nn::Module;
use engine::{no_grad, DType, Error, Result, Tensor};
use std::collections::BTreeMap;
use std::path::Path;

/// Value of the `format` metadata key of files `write_outputs` writes.
pub const OUTPUTS_FORMAT: &str = "slmlp-forward-v1";

/// Runs `net` on `input` [N, C, H, W] in eval mode (BN with running
/// statistics) under `no_grad`, and returns, in this order:
/// `("logits", [N, num_classes])`, `("features", [N, feature_dim])` (the
/// encoder's pooled features, the output of `avgpool`), and when
/// `dump_activations` is set `("act.<name>", ..)` for every activation
/// `forward_traced` reports, in the order it reports them.
///
/// `input` is cast to `dtype`, the dtype the network computes in (the
/// parameters' own dtype for an exact run; bf16 or f16 for mixed
/// precision). The net is left in eval mode.
pub fn forward_outputs(
    net: &SupervisedNet,
    input: &Tensor,
    dtype: DType,
    dump_activations: bool,
) -> Result<Vec<(String, Tensor)>> {
    if !input.dtype().is_float() {
        return Err(Error::dtype(
            "forward_outputs",
            "a float input batch",
            input.dtype(),
        ));
    }
    let x = input.to_dtype(dtype)?;
    net.set_training(false);
    let _guard = no_grad();
    let mut features = None;
    let mut acts = Vec::new();
    let logits = net.forward_traced(&x, &mut |name, t| {
        if name == "avgpool" {
            features = Some(t.clone());
        }
        if dump_activations {
            acts.push((format!("act.{name}"), t.clone()));
        }
        Ok(())
    })?;
    let features = features.ok_or_else(|| {
        Error::arg(
            "forward_outputs",
            "the network reported no `avgpool` output: cannot return features",
        )
    })?;
    let mut out = vec![
        ("logits".to_string(), logits),
        ("features".to_string(), features),
    ];
    out.extend(acts);
    Ok(out)
}

fn file_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.display().to_string(),
        msg: msg.into(),
    }
}

/// Reads an input batch from a safetensors file: the tensor named `input`,
/// or the file's only tensor. It must be f32, f64, bf16 or f16 and of rank 4
/// ([N, C, H, W], no zero dims); it is returned as f32.
pub fn read_input(path: &Path) -> Result<Tensor> {
    let ckpt = checkpoint::load(path)?;
    let (name, t) = match ckpt.tensors.get_key_value("input") {
        Some(kv) => kv,
        None if ckpt.tensors.len() == 1 => ckpt.tensors.iter().next().expect("one tensor"),
        None if ckpt.tensors.is_empty() => {
            return Err(file_err(
                path,
                "holds no tensors; expected the input batch as `input`",
            ))
        }
        None => {
            let names: Vec<&str> = ckpt.tensors.keys().map(String::as_str).collect();
            return Err(file_err(
                path,
                format!(
                    "has no tensor named `input` and {} others ({}); name the input batch `input`",
                    names.len(),
                    names.join(", ")
                ),
            ));
        }
    };
    match t.dtype() {
        DType::F32 | DType::F64 | DType::BF16 | DType::F16 => {}
        d => {
            return Err(file_err(
                path,
                format!("tensor `{name}` has dtype {d}; expected f32, f64, bf16 or f16"),
            ))
        }
    }
    if t.rank() != 4 || t.dims().contains(&0) {
        return Err(file_err(
            path,
            format!(
                "tensor `{name}` has shape {:?}; expected an image batch [N, C, H, W] with no zero dims",
                t.dims()
            ),
        ));
    }
    t.to_dtype(DType::F32)
}

/// Writes `outputs` as f32 tensors under their names to a safetensors file
/// (atomically, see `engine::checkpoint::save`), with metadata
/// `format = slmlp-forward-v1`. Non-float tensors are refused.
pub fn write_outputs(path: &Path, outputs: &[(String, Tensor)]) -> Result<()> {
    let tensors = outputs
        .iter()
        .map(|(name, t)| {
            if !t.dtype().is_float() {
                return Err(file_err(
                    path,
                    format!(
                        "output `{name}` has dtype {}; only float outputs are written",
                        t.dtype()
                    ),
                ));
            }
            Ok((name.clone(), t.detach().to_dtype(DType::F32)?))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = BTreeMap::from([("format".to_string(), OUTPUTS_FORMAT.to_string())]);
    checkpoint::save(path, &tensors, &meta)
}
