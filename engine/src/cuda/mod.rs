//! The CUDA backend (cudarc 0.19, libraries opened at run time): the same
//! Tensor API as the CPU, with every op checked against the CPU op on the
//! GPU (docs/GPU_CHECK.md).
//!
//! - [`probe`] / [`resolve_device`]: is there a usable GPU, and if not,
//!   exactly which library is missing (never cudarc's panic);
//!   `--device auto` falls back to the CPU with a one-line notice;
//! - [`runtime`]: one [`Gpu`] per device: context, the one stream all work
//!   is queued on, the kernel library, pinned staging for copies, and the
//!   caching [`allocator`] (size-binned free lists, no cudaFree in the
//!   steady state; its bookkeeping is unit-tested without a GPU);
//! - [`tensor`]: device storage, the channels-last convention for 4-D
//!   tensors, uploads/downloads, strided copies;
//! - [`blas`] (cuBLASLt GEMMs), [`dnn`] (cuDNN convolutions with a per-shape
//!   algorithm search), [`math_mode`] (their one TF32 switch), and [`ops`]: the GPU side of each Tensor op, with
//!   its backward, dispatched from `crate::ops` when the input is on a GPU.

pub mod allocator;
pub mod blas;
pub mod dnn;
pub(crate) mod launch;
pub mod math_mode;
pub mod ops;
mod probe;
pub mod runtime;
pub mod tensor;

pub use allocator::{AllocatorStats, Backend, CachingAllocator, Pool, StreamId};
pub use probe::{probe, resolve_device, CudaInfo};
pub use runtime::{gpu, DeviceBlock, Gpu};
pub use tensor::{set_poison, DeviceStorage};
