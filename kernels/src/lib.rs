//! CUDA C++ kernel sources, their NVRTC compilation and on-disk cache.
//!
//! This crate sits at the bottom of the layering (models -> engine ->
//! kernels) and knows nothing about tensors or autograd. It holds:
//! - [`families`]: one `<name>.cu` per kernel family, embedded with
//!   `include_str!`, and beside it `<name>.rs` with the family's registry
//!   entry (the entry points it exports), launch shapes and launchers, all
//!   collected into [`KERNELS`];
//! - [`source`]: the [`Kernel`] type, the shared headers and the `kernel!`
//!   macro the families declare their entries with;
//! - [`registry`]: lookup of a [`KERNELS`] entry by name or entry point;
//! - [`toolchain`]: finding and loading the pinned NVRTC (pip wheels, see
//!   scripts/install-nvrtc.sh) without ever letting cudarc panic;
//! - [`compile`]: NVRTC to an sm_XX CUBIN plus the compile log, through an
//!   on-disk [`cache`] keyed by a hash of source + options + arch;
//! - [`ptxas`]: the per-entry-point registers / stack / spills of the log;
//! - [`launch`]: the grid/block arithmetic the families share (pure, tested
//!   without a GPU);
//! - [`library`]: loading CUBINs into a CUDA context ([`device::KernelLibrary`]),
//!   the operand types and launch helpers every family's typed launchers
//!   share (needs a GPU: compiled in CI, run by the engine's GPU check);
//! - [`device`]: the facade callers use, re-exporting [`library`] and every
//!   family's launcher operand types in one place (nothing in the crate
//!   imports it).
//!
//! Imports go one way: families -> library, launch, source; library ->
//! registry -> the `KERNELS` list (families/mod.rs); device -> library,
//! families.
//!
//! docs/KERNELS.md tells how a kernel is added, compiled, cached and checked.

// First: its `kernel!` macro is used by the families.
#[macro_use]
pub mod source;

pub mod cache;
pub mod compile;
pub mod cuda_libs;
pub mod device;
pub mod error;
pub mod families;
pub mod launch;
pub mod library;
pub mod ptxas;
pub mod registry;
pub mod toolchain;

pub use cache::KernelCache;
pub use compile::{compile, CompiledKernel, Compiler};
pub use error::{Error, Result};
pub use families::KERNELS;
pub use ptxas::EntryStats;
pub use source::Kernel;
pub use toolchain::Toolchain;

/// The architecture CI compiles for: H100 (sm_90).
pub const DEFAULT_ARCH: u32 = 90;
