//! The crate's error type: each variant says what was wrong and what to do.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable NVRTC library / headers: nothing was loaded, nothing panicked.
    #[error(
        "NVRTC 13.x not found: {reason}. Searched: {searched}. Run scripts/install-nvrtc.sh \
         (pinned pip wheels into .cache/nvrtc), or set SLMLP_NVRTC_LIB_DIR to the folder \
         holding libnvrtc.so.13 and SLMLP_CUDA_INCLUDE to the one holding cuda_bf16.h"
    )]
    NvrtcNotFound { reason: String, searched: String },

    /// An NVRTC of another major than 13: the kernels and the CUDA 13
    /// libraries they run beside are built for 13.x.
    #[error("NVRTC {found} found in {lib_dir:?}, expected {expected}")]
    NvrtcVersion {
        found: String,
        expected: String,
        lib_dir: Option<PathBuf>,
    },

    /// nvrtcCompileProgram failed: the log has the compiler's messages.
    #[error("kernel {kernel}: NVRTC compile for sm_{arch} failed:\n{log}")]
    Compile {
        kernel: String,
        arch: u32,
        log: String,
    },

    /// Any other NVRTC call failed.
    #[error("kernel {kernel}: {call} failed with {code}")]
    Nvrtc {
        kernel: String,
        call: &'static str,
        code: String,
    },

    #[error("kernel cache {path:?}: {what}: {source}")]
    Cache {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },

    #[error("unknown kernel {name:?}; known: {known}")]
    UnknownKernel { name: String, known: String },

    /// No CUDA driver / no such GPU: asked for the GPU on a machine without one.
    #[error("no GPU: {0}")]
    NoGpu(String),

    /// A CUDA driver call failed (module load, launch, ...).
    #[error("CUDA driver: {what} failed with {code}")]
    Driver { what: String, code: String },

    /// A launch-shape request that no kernel can serve (zero channels, ...).
    #[error("launch shape: {0}")]
    Shape(String),
}
