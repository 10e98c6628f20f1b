//! The CUDA backend (cudarc 0.19, libraries opened at run time).
//!
//! What exists today is the part that needs no GPU to build and test:
//! - [`probe`]: is there a usable GPU, and if not, exactly which library is
//!   missing and how to provide it (never cudarc's panic);
//! - [`resolve_device`]: the `--device auto|cpu|cuda|cuda:N` flag, where
//!   `auto` falls back to the CPU with a one-line notice;
//! - [`allocator`]: the caching device allocator's bookkeeping, generic over
//!   the raw allocate/free calls so it is unit-tested with a simulated
//!   address space (engine/tests/cuda_host.rs).
//!
//! Device tensor storage, cuBLASLt, cuDNN and the kernels come next; until
//! then `Tensor::to_device(Device::Cuda(i))` returns the probe's error, or
//! says the GPU storage is not implemented when the probe succeeds.

pub mod allocator;
pub mod blas;
pub mod dnn;
mod probe;
mod runtime;
pub mod ops;
pub mod tensor;

pub use allocator::{AllocatorStats, Backend, CachingAllocator, Pool, StreamId};
pub use probe::{probe, resolve_device, CudaInfo};
pub use runtime::{gpu, DeviceBlock, Gpu};
pub use tensor::{set_poison, DeviceStorage};
