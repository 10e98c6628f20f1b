//! Finding and loading the NVRTC library and the CUDA headers.
//!
//! cudarc opens `libnvrtc` by name through the dynamic loader, and with no
//! library present it PANICS on first use. This module makes that never
//! happen: it finds an NVRTC 13.x (the pinned wheels of
//! scripts/install-nvrtc.sh, or any other), preloads its
//! `libnvrtc-builtins.so.13.*` and `libnvrtc.so.13` by absolute path, and
//! only then lets cudarc in. glibc's `dlopen("libnvrtc.so.13")` returns an
//! already-loaded object whose SONAME matches, so cudarc picks up ours and
//! LD_LIBRARY_PATH is not needed; libnvrtc's own `dlopen` of its builtins
//! library resolves the same way. If no folder is configured, the loader's
//! search (LD_LIBRARY_PATH, ld.so.cache) is tried, guarded by
//! `is_culib_present()`.
//!
//! Where it looks, first hit wins:
//! - libraries: `$SLMLP_NVRTC_LIB_DIR`, else `<home>/nvidia/cu13/lib`, else
//!   the folders of [`crate::cuda_libs`] (`LD_LIBRARY_PATH`, NVIDIA's pip
//!   wheels, `/usr/local/cuda*/lib64`), else the loader's search path;
//! - headers: `$SLMLP_CUDA_INCLUDE` (':'-separated), else
//!   `<home>/nvidia/cu13/include`, else the `include` folder beside the
//!   library folder found (`nvidia/cu13/include`, `/usr/local/cuda/include`);
//!   its `cccl/` subfolder (libcu++'s `<nv/target>`, which cuda_fp16.h
//!   includes) is added when present;
//! - `<home>` is `$SLMLP_NVRTC_HOME`, else `.cache/nvrtc` under the
//!   workspace this crate was built in, else `.cache/nvrtc` in the current
//!   directory.

use crate::cuda_libs::{self, NVRTC};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The NVRTC major the kernels are written for (docs/GPU.md): any 13.x
/// minor is accepted. Our CUBINs are SASS for one arch, so a 13.x NVRTC's
/// output loads on any CUDA 13 driver (580 or newer) under CUDA's minor
/// version compatibility; only PTX would need the newer driver.
pub const EXPECTED_MAJOR: i32 = 13;

pub const ENV_LIB_DIR: &str = "SLMLP_NVRTC_LIB_DIR";
pub const ENV_INCLUDE: &str = "SLMLP_CUDA_INCLUDE";
pub const ENV_HOME: &str = "SLMLP_NVRTC_HOME";

const WORKSPACE_HOME: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../.cache/nvrtc");

/// A loaded, version-checked NVRTC and the include folders to compile with.
#[derive(Debug, Clone)]
pub struct Toolchain {
    /// The folder the libraries were preloaded from; None when the dynamic
    /// loader found them (LD_LIBRARY_PATH).
    pub lib_dir: Option<PathBuf>,
    pub include_dirs: Vec<PathBuf>,
    /// NVRTC's own (major, minor).
    pub version: (i32, i32),
}

static LOADED: OnceLock<Toolchain> = OnceLock::new();

impl Toolchain {
    /// The process-wide toolchain, found and loaded on first call. A failure
    /// is not remembered: a later call (after installing) tries again.
    pub fn get() -> Result<&'static Toolchain> {
        if let Some(t) = LOADED.get() {
            return Ok(t);
        }
        let t = locate_and_load()?;
        let _ = LOADED.set(t);
        Ok(LOADED.get().expect("set above"))
    }

    /// "13.0" and where it came from, for logs and reports.
    pub fn describe(&self) -> String {
        let from = match &self.lib_dir {
            Some(d) => d.display().to_string(),
            None => "the dynamic loader's search path".to_string(),
        };
        format!("NVRTC {}.{} from {from}", self.version.0, self.version.1)
    }
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Install folders to look in, in order.
fn homes() -> Vec<PathBuf> {
    match env_path(ENV_HOME) {
        Some(h) => vec![h],
        None => {
            let ws = Path::new(WORKSPACE_HOME);
            vec![
                ws.canonicalize().unwrap_or_else(|_| ws.to_path_buf()),
                PathBuf::from(".cache/nvrtc"),
            ]
        }
    }
}

/// The libnvrtc file to preload, or None to leave it to the loader.
fn locate_lib(searched: &mut Vec<String>) -> Result<Option<PathBuf>> {
    if let Some(d) = env_path(ENV_LIB_DIR) {
        searched.push(format!("${ENV_LIB_DIR}={}", d.display()));
        return match cuda_libs::find_in(&d, &NVRTC) {
            Some(f) => Ok(Some(f)),
            None => Err(Error::NvrtcNotFound {
                reason: format!("${ENV_LIB_DIR} is set but {:?} has no libnvrtc.so.13", d),
                searched: searched.join(", "),
            }),
        };
    }
    let mut dirs: Vec<PathBuf> = homes().iter().map(|h| h.join("nvidia/cu13/lib")).collect();
    for d in cuda_libs::search_dirs(&cuda_libs::SearchEnv::from_process()) {
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    searched.push(cuda_libs::describe_dirs(&dirs));
    Ok(cuda_libs::find(&dirs, &NVRTC))
}

fn locate_includes(searched: &mut Vec<String>, lib_dir: Option<&Path>) -> Result<Vec<PathBuf>> {
    let base: Vec<PathBuf> = match std::env::var_os(ENV_INCLUDE).filter(|v| !v.is_empty()) {
        Some(v) => {
            let dirs: Vec<PathBuf> = std::env::split_paths(&v).collect();
            searched.push(format!("${ENV_INCLUDE}={}", v.to_string_lossy()));
            dirs
        }
        None => homes()
            .into_iter()
            .map(|h| h.join("nvidia/cu13/include"))
            .chain(lib_dir.and_then(Path::parent).map(|p| p.join("include")))
            .inspect(|d| searched.push(d.display().to_string()))
            .filter(|d| d.join("cuda_bf16.h").is_file())
            .take(1)
            .collect(),
    };
    if !base.iter().any(|d| d.join("cuda_bf16.h").is_file()) {
        return Err(Error::NvrtcNotFound {
            reason: "no include folder with cuda_fp16.h / cuda_bf16.h (wheel nvidia-cuda-runtime)"
                .into(),
            searched: searched.join(", "),
        });
    }
    let mut dirs = Vec::new();
    for d in base {
        let cccl = d.join("cccl");
        dirs.push(d);
        if cccl.is_dir() {
            dirs.push(cccl);
        }
    }
    Ok(dirs)
}

fn preload(path: &Path) -> Result<()> {
    cuda_libs::dlopen_global(path).map_err(|reason| Error::NvrtcNotFound {
        reason,
        searched: path.display().to_string(),
    })
}

fn locate_and_load() -> Result<Toolchain> {
    let mut searched = Vec::new();
    let lib = locate_lib(&mut searched)?;
    let lib_dir = lib.as_deref().and_then(Path::parent).map(Path::to_path_buf);
    let include_dirs = locate_includes(&mut searched, lib_dir.as_deref())?;
    if let (Some(dir), Some(lib)) = (&lib_dir, &lib) {
        // The builtins first: libnvrtc dlopens it by SONAME at compile time.
        let mut builtins: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::NvrtcNotFound {
                reason: format!("cannot list {}: {e}", dir.display()),
                searched: searched.join(", "),
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("libnvrtc-builtins.so"))
            })
            .collect();
        builtins.sort();
        let Some(b) = builtins.first() else {
            return Err(Error::NvrtcNotFound {
                reason: format!(
                    "{} has libnvrtc.so.13 but no libnvrtc-builtins.so.* (NVRTC cannot compile without it)",
                    dir.display()
                ),
                searched: searched.join(", "),
            });
        };
        preload(b)?;
        preload(lib)?;
    }
    // SAFETY: only dlopens candidate names; never panics.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        searched.push("the dynamic loader's path (LD_LIBRARY_PATH, ld.so.cache)".into());
        return Err(Error::NvrtcNotFound {
            reason: "no libnvrtc.so.13 could be loaded".into(),
            searched: searched.join(", "),
        });
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is loaded (checked just above); plain out-params.
    let rc = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    if rc != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(Error::Nvrtc {
            kernel: "-".into(),
            call: "nvrtcVersion",
            code: format!("{rc:?}"),
        });
    }
    if major != EXPECTED_MAJOR {
        return Err(Error::NvrtcVersion {
            found: format!("{major}.{minor}"),
            expected: format!("{EXPECTED_MAJOR}.x"),
            lib_dir,
        });
    }
    Ok(Toolchain {
        lib_dir,
        include_dirs,
        version: (major, minor),
    })
}
