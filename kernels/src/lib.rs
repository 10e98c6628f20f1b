//! CUDA C++ kernel sources, their NVRTC compilation and on-disk cache.
//!
//! This crate sits at the bottom of the layering (models -> engine ->
//! kernels) and knows nothing about tensors or autograd. It holds:
//! - `cuda/*.cu`: one file per kernel family, embedded with `include_str!`
//!   and listed in [`registry::KERNELS`] with the entry points each exports;
//! - [`toolchain`]: finding and loading the pinned NVRTC (pip wheels, see
//!   scripts/install-nvrtc.sh) without ever letting cudarc panic;
//! - [`compile`]: NVRTC to an sm_XX CUBIN plus the compile log, through an
//!   on-disk [`cache`] keyed by a hash of source + options + arch;
//! - [`ptxas`]: the per-entry-point registers / stack / spills of the log;
//! - [`launch`]: the grid/block arithmetic every launcher uses (pure, tested
//!   without a GPU);
//! - [`device`]: loading CUBINs into a CUDA context and typed launchers over
//!   raw device pointers (needs a GPU: compiled in CI, run by the engine's
//!   GPU check).
//!
//! docs/KERNELS.md tells how a kernel is added, compiled, cached and checked.

pub mod cache;
pub mod compile;
pub mod device;
pub mod error;
pub mod launch;
pub mod ptxas;
pub mod registry;
pub mod toolchain;

pub use cache::KernelCache;
pub use compile::{compile, CompiledKernel, Compiler};
pub use error::{Error, Result};
pub use ptxas::EntryStats;
pub use registry::{Kernel, KERNELS};
pub use toolchain::Toolchain;

/// The architecture CI compiles for: H100 (sm_90).
pub const DEFAULT_ARCH: u32 = 90;
