//! The CUDA backend's machinery (cudarc 0.19, libraries opened at run
//! time). The ops themselves are written once in `crate::ops::<family>`;
//! each family's `cuda.rs` implements its primitives for
//! [`crate::backend::Cuda`] with what lives here, and an op without a CUDA
//! primitive is an `Error::Unsupported` (docs/OPS.md lists the coverage).
//! Every CUDA primitive is checked against the CPU one on a GPU by
//! `slmlp-gpu-check` (docs/GPU_CHECK.md).
//!
//! - [`probe`] / [`resolve_device`]: is there a usable GPU, and if not,
//!   exactly which library is missing (never cudarc's panic);
//!   `--device auto` falls back to the CPU with a one-line notice;
//! - [`runtime`]: one [`Gpu`] per device: context, the stream all work is
//!   queued on, the kernel library, pinned staging for copies, and the
//!   caching [`allocator`] (size-binned free lists, no cudaFree in the
//!   steady state; its bookkeeping is unit-tested without a GPU);
//! - [`storage`] and [`tensor`]: device memory as tensor storage, the
//!   channels-last convention for 4-D tensors, uploads/downloads, strided
//!   copies; [`queued_read`]: downloads the host waits for only when it
//!   takes the bytes;
//! - [`blas`] (cuBLASLt GEMMs), [`dnn`] (cuDNN convolutions with a per-shape
//!   algorithm search), [`math_mode`] (their one TF32 switch) and `launch`
//!   (what every GPU primitive shares: dtypes, operand layouts, raw casts);
//! - [`graph`]: CUDA graphs (a training step recorded once, replayed with
//!   one launch) and their graph-private memory pool;
//! - [`nccl`]: NCCL collectives for data-parallel training (libnccl.so.2
//!   opened at run time).

pub mod allocator;
pub mod blas;
pub mod dnn;
pub mod dnn_graph;
pub mod graph;
pub(crate) mod launch;
pub mod math_mode;
pub mod nccl;

mod probe;
pub mod queued_read;
pub mod runtime;
pub mod storage;
pub mod tensor;
mod upload_ring;

pub use allocator::{AllocatorStats, Backend, CachingAllocator, Pool, StreamId};
pub use probe::{probe, resolve_device, CudaInfo};
pub use runtime::{gpu, lasting, DeviceBlock, Gpu};
pub use storage::DeviceStorage;
pub use tensor::set_poison;
