//! The two backends every op runs on, and the one place that picks one.
//!
//! An op is written once (`ops/<family>/mod.rs`: argument checks, the trace,
//! autograd) over a family trait of forward/backward primitives
//! (`PoolOps`, `ConvOps`, ...). Both backends implement every family trait:
//! [`Cpu`], the reference, in `ops/<family>/cpu.rs`; [`Cuda`] in
//! `ops/<family>/cuda.rs`. A primitive a backend does not override keeps the
//! trait's default body, which returns [`Error::Unsupported`]: "op X is not
//! implemented on device Y". docs/OPS.md lists what each device runs.
//!
//! Primitives take and return tensors without autograd; inputs are already
//! checked by the front-end and live on the backend's device.

use crate::{Device, Error, Result, Tensor};

/// What each family trait needs of a backend.
pub trait BackendInfo: Sync {
    /// "cpu" or "cuda": the trace's `ran` and the unsupported-op error.
    fn name(&self) -> &'static str;
}

/// The reference backend: host memory, rayon-parallel loops.
pub struct Cpu;
/// NVIDIA GPUs through cudarc: cuBLASLt, cuDNN and our NVRTC kernels.
pub struct Cuda;

impl BackendInfo for Cpu {
    fn name(&self) -> &'static str {
        "cpu"
    }
}
impl BackendInfo for Cuda {
    fn name(&self) -> &'static str {
        "cuda"
    }
}

/// The error a family trait's default method returns.
pub fn unsupported<B: BackendInfo + ?Sized>(b: &B, op: &'static str) -> Error {
    Error::unsupported(op, b.name())
}

/// Runs `$body` with `$b` bound to the backend of `$device` (`&Cpu` or
/// `&Cuda`, statically dispatched). The engine's one match on the device.
#[macro_export]
macro_rules! on_backend {
    ($device:expr, $b:ident => $body:expr) => {
        match $device {
            $crate::Device::Cpu => {
                let $b = &$crate::backend::Cpu;
                $body
            }
            $crate::Device::Cuda(_) => {
                let $b = &$crate::backend::Cuda;
                $body
            }
        }
    };
}

/// The one device all of `ts` live on, or a clear error naming `op`.
pub fn same_device(op: &'static str, ts: &[&Tensor]) -> Result<Device> {
    let dev = ts[0].device();
    if let Some(t) = ts.iter().find(|t| t.device() != dev) {
        return Err(Error::arg(
            op,
            format!(
                "operands on different devices: {:?} on {dev}, {:?} on {}",
                ts[0].dims(),
                t.dims(),
                t.device()
            ),
        ));
    }
    Ok(dev)
}

/// What a forward primitive keeps for its backward (argmax indices, saved
/// statistics), opaque to the front-end: each backend downcasts its own.
pub type Saved = Box<dyn std::any::Any + Send + Sync>;
