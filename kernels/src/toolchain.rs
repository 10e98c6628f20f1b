//! Finding and loading the NVRTC library and the CUDA headers.
//!
//! cudarc opens `libnvrtc` by name through the dynamic loader, and with no
//! library present it PANICS on first use. This module makes that never
//! happen: it finds the pinned wheels (scripts/install-nvrtc.sh), preloads
//! `libnvrtc-builtins.so.13.0` and `libnvrtc.so.13` by absolute path, and
//! only then lets cudarc in. glibc's `dlopen("libnvrtc.so.13")` returns an
//! already-loaded object whose SONAME matches, so cudarc picks up ours and
//! LD_LIBRARY_PATH is not needed; libnvrtc's own `dlopen` of its builtins
//! library resolves the same way. If no folder is configured, the loader's
//! search (LD_LIBRARY_PATH, ld.so.cache) is tried, guarded by
//! `is_culib_present()`.
//!
//! Where it looks, first hit wins:
//! - libraries: `$SLMLP_NVRTC_LIB_DIR`, else `<home>/nvidia/cu13/lib`, else
//!   the loader's search path;
//! - headers: `$SLMLP_CUDA_INCLUDE` (':'-separated), else
//!   `<home>/nvidia/cu13/include`; its `cccl/` subfolder (libcu++'s
//!   `<nv/target>`, which cuda_fp16.h includes) is added when present;
//! - `<home>` is `$SLMLP_NVRTC_HOME`, else `.cache/nvrtc` under the
//!   workspace this crate was built in, else `.cache/nvrtc` in the current
//!   directory.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The NVRTC major.minor the project pins (DESIGN.md §3): the driver in use
/// (580) speaks CUDA 13.0, so CUBINs from a newer NVRTC could fail to load.
pub const EXPECTED_VERSION: (i32, i32) = (13, 0);

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

fn has_nvrtc(dir: &Path) -> bool {
    dir.join("libnvrtc.so.13").is_file()
}

fn locate_lib_dir(searched: &mut Vec<String>) -> Result<Option<PathBuf>> {
    if let Some(d) = env_path(ENV_LIB_DIR) {
        searched.push(format!("${ENV_LIB_DIR}={}", d.display()));
        if has_nvrtc(&d) {
            return Ok(Some(d));
        }
        return Err(Error::NvrtcNotFound {
            reason: format!("${ENV_LIB_DIR} is set but {:?} has no libnvrtc.so.13", d),
            searched: searched.join(", "),
        });
    }
    for h in homes() {
        let d = h.join("nvidia/cu13/lib");
        searched.push(d.display().to_string());
        if has_nvrtc(&d) {
            return Ok(Some(d));
        }
    }
    Ok(None)
}

fn locate_includes(searched: &mut Vec<String>) -> Result<Vec<PathBuf>> {
    let base: Vec<PathBuf> = match std::env::var_os(ENV_INCLUDE).filter(|v| !v.is_empty()) {
        Some(v) => {
            let dirs: Vec<PathBuf> = std::env::split_paths(&v).collect();
            searched.push(format!("${ENV_INCLUDE}={}", v.to_string_lossy()));
            dirs
        }
        None => homes()
            .into_iter()
            .map(|h| h.join("nvidia/cu13/include"))
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

/// dlopen by absolute path with RTLD_GLOBAL, never unloaded.
fn preload(path: &Path) -> Result<()> {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    // SAFETY: NVIDIA's libraries have no initialisers with preconditions.
    let lib = unsafe { Library::open(Some(path), RTLD_NOW | RTLD_GLOBAL) }.map_err(|e| {
        Error::NvrtcNotFound {
            reason: format!("dlopen({}) failed: {e}", path.display()),
            searched: path.display().to_string(),
        }
    })?;
    // Kept for the life of the process: cudarc holds function pointers into it.
    std::mem::forget(lib);
    Ok(())
}

fn locate_and_load() -> Result<Toolchain> {
    let mut searched = Vec::new();
    let lib_dir = locate_lib_dir(&mut searched)?;
    let include_dirs = locate_includes(&mut searched)?;
    if let Some(dir) = &lib_dir {
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
        preload(&dir.join("libnvrtc.so.13"))?;
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
    if (major, minor) != EXPECTED_VERSION {
        return Err(Error::NvrtcVersion {
            found: format!("{major}.{minor}"),
            expected: format!("{}.{}", EXPECTED_VERSION.0, EXPECTED_VERSION.1),
            lib_dir,
        });
    }
    Ok(Toolchain {
        lib_dir,
        include_dirs,
        version: (major, minor),
    })
}
