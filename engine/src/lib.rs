//! slmlp engine: tensors, ops written once over two backends (the CPU
//! reference and CUDA; `backend`, `ops/<family>/`), reverse-mode autograd,
//! nn layers, optimizers, mixed precision and safetensors checkpoints.

pub mod amp;
pub mod autograd;
pub mod backend;
pub mod checkpoint;
pub mod cuda;
mod device;
mod dtype;
mod error;
pub mod gradcheck;
pub mod host_memory;
pub mod layout;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod parity;
pub mod profile;
mod rng;
mod setting;
mod storage;
mod tensor;
pub mod trace;

pub use autograd::{is_grad_enabled, no_grad, NoGradGuard};
pub use device::Device;
pub use dtype::DType;
pub use error::{Error, Result};
pub use rng::Rng;
pub use storage::{CpuStorage, Element, Float, Storage};
pub use tensor::Tensor;
