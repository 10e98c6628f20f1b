//! CUDA C++ kernel sources, their NVRTC compilation and on-disk cache.
//!
//! This crate sits at the bottom of the layering (models -> engine ->
//! kernels) and knows nothing about tensors or autograd. It holds:
//! - [`families`]: one `<name>.cu` per kernel family, embedded with
//!   `include_str!`, and beside it `<name>.rs` with the family's registry
//!   entry (the entry points it exports), launch shapes and launchers;
//! - [`registry`]: the [`Kernel`] type and [`KERNELS`], every family's entry;
//! - [`toolchain`]: finding and loading the pinned NVRTC (pip wheels, see
//!   scripts/install-nvrtc.sh) without ever letting cudarc panic;
//! - [`compile`]: NVRTC to an sm_XX CUBIN plus the compile log, through an
//!   on-disk [`cache`] keyed by a hash of source + options + arch;
//! - [`ptxas`]: the per-entry-point registers / stack / spills of the log;
//! - [`launch`]: the grid/block arithmetic the families share (pure, tested
//!   without a GPU);
//! - [`device`]: loading CUBINs into a CUDA context, and every family's
//!   typed launchers over raw device pointers re-exported in one place
//!   (needs a GPU: compiled in CI, run by the engine's GPU check).
//!
//! docs/KERNELS.md tells how a kernel is added, compiled, cached and checked.

// First: its `kernel!` macro is used by the families.
#[macro_use]
pub mod registry;

pub mod cache;
pub mod compile;
pub mod device;
pub mod error;
pub mod families;
pub mod launch;
pub mod ptxas;
pub mod toolchain;

pub use cache::KernelCache;
pub use compile::{compile, CompiledKernel, Compiler};
pub use error::{Error, Result};
pub use ptxas::EntryStats;
pub use registry::{Kernel, KERNELS};
pub use toolchain::Toolchain;

/// The architecture CI compiles for: H100 (sm_90).
pub const DEFAULT_ARCH: u32 = 90;
