//! Finding the CUDA 13 libraries (cuBLAS, cuBLASLt, cuDNN 9, NVRTC) where
//! users actually have them, so no `LD_LIBRARY_PATH` has to be set by hand.
//!
//! cudarc opens each library by name through the dynamic loader, which only
//! looks in `LD_LIBRARY_PATH` and ld.so.cache; NVIDIA's pip wheels put them
//! under `site-packages/nvidia/*/lib`, the CUDA toolkit under
//! `/usr/local/cuda*/lib64`. [`preload`] finds each one in [`search_dirs`]
//! and dlopens it by absolute path with `RTLD_GLOBAL`: glibc's later
//! `dlopen("libcublas.so.13")` from cudarc returns the already-loaded object
//! whose SONAME matches. A library found nowhere is left to the loader's own
//! search; the caller's `is_culib_present()` check then reports it, with the
//! folders listed here.
//!
//! Search order, first hit wins:
//! 1. `LD_LIBRARY_PATH`, in its order (the user's explicit choice);
//! 2. NVIDIA's pip wheels: `nvidia/*/lib` under the site-packages of
//!    `$VIRTUAL_ENV`, `$CONDA_PREFIX`, `~/.local` and the system Python;
//! 3. the CUDA toolkit: `$CUDA_HOME/lib64`, `$CUDA_PATH/lib64`,
//!    `/usr/local/cuda/lib64`, then `/usr/local/cuda-*/lib64`, newest first.
//!
//! A library's name is its SONAME, `libcublas.so.13`; a folder that has only
//! a fully versioned file (`libcublas.so.13.1.0.3`, as some packages ship)
//! is accepted too, the highest version first. Any minor of the major asked
//! for is accepted; another major (`libcublas.so.12`) never is.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// One library: its file stem (`libcublas.so`) and the major version whose
/// SONAME the backend needs (`13`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CudaLib {
    pub what: &'static str,
    pub stem: &'static str,
    pub major: u32,
}

impl CudaLib {
    const fn new(what: &'static str, stem: &'static str, major: u32) -> CudaLib {
        CudaLib { what, stem, major }
    }

    /// `libcublas.so.13`.
    pub fn soname(&self) -> String {
        format!("{}.{}", self.stem, self.major)
    }
}

pub const CUBLAS_LT: CudaLib = CudaLib::new("cuBLASLt", "libcublasLt.so", 13);
pub const CUBLAS: CudaLib = CudaLib::new("cuBLAS", "libcublas.so", 13);
pub const CUDNN: CudaLib = CudaLib::new("cuDNN", "libcudnn.so", 9);
pub const NVRTC: CudaLib = CudaLib::new("NVRTC", "libnvrtc.so", 13);

/// The version numbers after `<stem>.<major>` in `name` (`[]` for the bare
/// SONAME, `[1, 0, 3]` for `libcublas.so.13.1.0.3`), or None when `name` is
/// not this library at this major.
fn version_suffix(lib: &CudaLib, name: &str) -> Option<Vec<u32>> {
    let rest = name.strip_prefix(&lib.soname())?;
    if rest.is_empty() {
        return Some(Vec::new());
    }
    rest.strip_prefix('.')?
        .split('.')
        .map(|p| p.parse().ok())
        .collect()
}

/// The file for `lib` in `dir`: its SONAME if present, else its most
/// versioned name of the same major.
pub fn find_in(dir: &Path, lib: &CudaLib) -> Option<PathBuf> {
    let exact = dir.join(lib.soname());
    if exact.is_file() {
        return Some(exact);
    }
    let entries = std::fs::read_dir(dir).ok()?;
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let v = version_suffix(lib, &name)?;
            e.path().is_file().then(|| (v, e.path()))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, p)| p)
}

/// The first folder of `dirs` holding `lib`, and that file.
pub fn find(dirs: &[PathBuf], lib: &CudaLib) -> Option<PathBuf> {
    dirs.iter().find_map(|d| find_in(d, lib))
}

/// The sub-folders of `parent` whose names start with `prefix`, sorted by
/// name (an unreadable or absent parent gives none).
fn children(parent: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(parent)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// `nvidia/*/lib` under each site-packages folder, in the given order.
pub fn wheel_lib_dirs(site_packages: &[PathBuf]) -> Vec<PathBuf> {
    site_packages
        .iter()
        .flat_map(|s| children(&s.join("nvidia"), ""))
        .map(|d| d.join("lib"))
        .filter(|d| d.is_dir())
        .collect()
}

/// The site-packages folders of the Python environments a user may have
/// installed NVIDIA's wheels into, under `prefixes` (`$VIRTUAL_ENV`,
/// `$CONDA_PREFIX`, `~/.local`, `/usr/local`, `/usr`).
fn site_packages(prefixes: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in prefixes {
        for py in children(&p.join("lib"), "python3") {
            for sub in ["site-packages", "dist-packages"] {
                let d = py.join(sub);
                if d.is_dir() {
                    out.push(d);
                }
            }
        }
    }
    out
}

/// The CUDA toolkit's library folders: the given homes' `lib64`, then
/// `/usr/local/cuda-*` newest first.
fn toolkit_dirs(homes: &[PathBuf], versioned_root: &Path) -> Vec<PathBuf> {
    let mut versioned = children(versioned_root, "cuda-");
    versioned.reverse();
    homes
        .iter()
        .cloned()
        .chain(versioned)
        .map(|h| h.join("lib64"))
        .collect()
}

/// What [`search_dirs`] reads from the environment, so tests can supply it.
#[derive(Debug, Default, Clone)]
pub struct SearchEnv {
    pub ld_library_path: Option<std::ffi::OsString>,
    /// Python prefixes whose `lib/python3*/{site,dist}-packages` are searched.
    pub python_prefixes: Vec<PathBuf>,
    /// `$CUDA_HOME`, `$CUDA_PATH`, `/usr/local/cuda`.
    pub cuda_homes: Vec<PathBuf>,
    /// Where `cuda-13.0`-style toolkit folders live (`/usr/local`).
    pub cuda_root: PathBuf,
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

impl SearchEnv {
    /// This process's environment.
    pub fn from_process() -> SearchEnv {
        let home = env_path("HOME");
        SearchEnv {
            ld_library_path: std::env::var_os("LD_LIBRARY_PATH"),
            python_prefixes: [
                env_path("VIRTUAL_ENV"),
                env_path("CONDA_PREFIX"),
                home.map(|h| h.join(".local")),
                Some(PathBuf::from("/usr/local")),
                Some(PathBuf::from("/usr")),
            ]
            .into_iter()
            .flatten()
            .collect(),
            cuda_homes: [
                env_path("CUDA_HOME"),
                env_path("CUDA_PATH"),
                Some(PathBuf::from("/usr/local/cuda")),
            ]
            .into_iter()
            .flatten()
            .collect(),
            cuda_root: PathBuf::from("/usr/local"),
        }
    }
}

/// Every folder searched, in order (module docs), without duplicates.
pub fn search_dirs(env: &SearchEnv) -> Vec<PathBuf> {
    let ld = env
        .ld_library_path
        .as_deref()
        .map(|v| {
            std::env::split_paths(v)
                .filter(|p| !p.as_os_str().is_empty())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let roots = site_packages(&env.python_prefixes);
    let mut out: Vec<PathBuf> = Vec::new();
    for d in ld
        .into_iter()
        .chain(wheel_lib_dirs(&roots))
        .chain(toolkit_dirs(&env.cuda_homes, &env.cuda_root))
    {
        if !out.contains(&d) {
            out.push(d);
        }
    }
    out
}

/// The folders as one line for error messages.
pub fn describe_dirs(dirs: &[PathBuf]) -> String {
    if dirs.is_empty() {
        return "no candidate folder exists".into();
    }
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// dlopen by absolute path with RTLD_GLOBAL, never unloaded.
pub(crate) fn dlopen_global(path: &Path) -> Result<(), String> {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    // SAFETY: NVIDIA's libraries have no initialisers with preconditions.
    let lib = unsafe { Library::open(Some(path), RTLD_NOW | RTLD_GLOBAL) }
        .map_err(|e| format!("dlopen({}) failed: {e}", path.display()))?;
    // Kept for the life of the process: cudarc holds function pointers into it.
    std::mem::forget(lib);
    Ok(())
}

/// The outcome of [`preload`]: where each library came from, and the
/// folders searched (for the message when one is still missing).
#[derive(Debug, Clone)]
pub struct Preloaded {
    pub found: Vec<(CudaLib, PathBuf)>,
    /// Libraries found in no folder, or whose file failed to load (with why).
    pub not_found: Vec<(CudaLib, String)>,
    pub searched: Vec<PathBuf>,
}

/// Finds and loads cuBLASLt, cuBLAS and cuDNN (first cuDNN's sub-libraries
/// `libcudnn_*.so.9` from the same folder, which libcudnn opens by name)
/// once per process. NVRTC is [`crate::Toolchain`]'s.
pub fn preload() -> &'static Preloaded {
    static DONE: std::sync::OnceLock<Preloaded> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let searched = search_dirs(&SearchEnv::from_process());
        let mut found = Vec::new();
        let mut not_found = Vec::new();
        for lib in [CUBLAS_LT, CUBLAS, CUDNN] {
            let Some(path) = find(&searched, &lib) else {
                not_found.push((lib, "not in any searched folder".to_string()));
                continue;
            };
            if lib == CUDNN {
                preload_parts(cudnn_parts(&path));
            }
            match dlopen_global(&path) {
                Ok(()) => found.push((lib, path)),
                Err(e) => not_found.push((lib, e)),
            }
        }
        Preloaded {
            found,
            not_found,
            searched,
        }
    })
}

/// Loads cuDNN's parts in passes until no more load: a part whose
/// dependency on another part cannot be resolved yet loads in a later pass.
/// One that never loads is left to libcudnn's own lazy `dlopen` by name,
/// which reports it when (if ever) that part is needed.
fn preload_parts(mut parts: Vec<PathBuf>) {
    loop {
        let before = parts.len();
        parts.retain(|p| dlopen_global(p).is_err());
        if parts.is_empty() || parts.len() == before {
            return;
        }
    }
}

/// cuDNN 9's sub-libraries beside `libcudnn`: `libcudnn_graph.so.9`, ...
fn cudnn_parts(libcudnn: &Path) -> Vec<PathBuf> {
    let Some(dir) = libcudnn.parent() else {
        return Vec::new();
    };
    let mut parts: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name().and_then(OsStr::to_str).is_some_and(|n| {
                        n.starts_with("libcudnn_") && n.ends_with(&format!(".so.{}", CUDNN.major))
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    // libcudnn_graph first: the engines link against it.
    parts.sort_by_key(|p| (!p.to_string_lossy().contains("libcudnn_graph"), p.clone()));
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh folder under the system temp dir, removed on drop.
    struct Scratch(PathBuf);
    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let d = std::env::temp_dir().join(format!(
                "slmlp-cuda-libs-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Scratch(d)
        }
        fn file(&self, rel: &str) -> PathBuf {
            let p = self.0.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, b"").unwrap();
            p
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn versioned_names_of_the_right_major_only() {
        let s = Scratch::new("names");
        let d = &s.0;
        s.file("libcublas.so.12");
        s.file("libcublasLt.so.13");
        assert_eq!(find_in(d, &CUBLAS), None, "12 or Lt is not cuBLAS 13");
        s.file("libcublas.so.13.0.2.14");
        let newest = s.file("libcublas.so.13.1.0.3");
        s.file("libcublas.so.13.bak");
        assert_eq!(find_in(d, &CUBLAS), Some(newest), "highest 13.x wins");
        let exact = s.file("libcublas.so.13");
        assert_eq!(find_in(d, &CUBLAS), Some(exact), "the SONAME wins");
        assert_eq!(find_in(d, &CUBLAS_LT), Some(d.join("libcublasLt.so.13")));
        assert_eq!(find_in(d, &CUDNN), None);
        assert_eq!(find_in(&d.join("absent"), &CUDNN), None);
    }

    #[test]
    fn ld_library_path_then_wheels_then_toolkit() {
        let s = Scratch::new("order");
        let r = &s.0;
        let venv_lib = s.file("venv/lib/python3.12/site-packages/nvidia/cu13/lib/libcublas.so.13");
        let cudnn = s.file("venv/lib/python3.12/site-packages/nvidia/cudnn/lib/libcudnn.so.9");
        let nvrtc = s.file("venv/lib/python3.12/site-packages/nvidia/cu13/lib/libnvrtc.so.13");
        let toolkit = s.file("usr-local/cuda-13.1/lib64/libcublas.so.13");
        s.file("usr-local/cuda-13.0/lib64/libcublas.so.13");
        let ld = r.join("ld");
        let mut env = SearchEnv {
            ld_library_path: None,
            python_prefixes: vec![r.join("venv"), r.join("no-such-prefix")],
            cuda_homes: vec![r.join("no-cuda-home")],
            cuda_root: r.join("usr-local"),
        };
        let dirs = search_dirs(&env);
        assert_eq!(
            dirs,
            vec![
                r.join("venv/lib/python3.12/site-packages/nvidia/cu13/lib"),
                r.join("venv/lib/python3.12/site-packages/nvidia/cudnn/lib"),
                r.join("no-cuda-home/lib64"),
                r.join("usr-local/cuda-13.1/lib64"),
                r.join("usr-local/cuda-13.0/lib64"),
            ]
        );
        assert_eq!(find(&dirs, &CUBLAS), Some(venv_lib.clone()));
        assert_eq!(find(&dirs, &CUDNN), Some(cudnn));
        assert_eq!(find(&dirs, &NVRTC), Some(nvrtc));

        // LD_LIBRARY_PATH comes first; a folder listed twice is searched once.
        let ld_lib = s.file("ld/libcublas.so.13.0.0.19");
        env.ld_library_path = Some(std::env::join_paths([&ld, &ld]).unwrap());
        let dirs = search_dirs(&env);
        assert_eq!(dirs[0], ld);
        assert_eq!(dirs.iter().filter(|d| **d == ld).count(), 1);
        assert_eq!(find(&dirs, &CUBLAS), Some(ld_lib));

        // Without the wheels, the newest toolkit.
        env.ld_library_path = None;
        env.python_prefixes.clear();
        assert_eq!(find(&search_dirs(&env), &CUBLAS), Some(toolkit));
        assert!(describe_dirs(&search_dirs(&env)).contains("cuda-13.1/lib64"));
    }

    #[test]
    fn cudnn_sub_libraries_graph_first() {
        let s = Scratch::new("cudnn");
        let main = s.file("libcudnn.so.9");
        s.file("libcudnn_ops.so.9");
        s.file("libcudnn_graph.so.9");
        s.file("libcudnn_cnn.so.8");
        let parts = cudnn_parts(&main);
        let names: Vec<_> = parts
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["libcudnn_graph.so.9", "libcudnn_ops.so.9"]);
    }
}
