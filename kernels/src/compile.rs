//! NVRTC compilation of a registry kernel to a CUBIN, with the ptxas log.

use crate::cache::{CacheEntry, KernelCache};
use crate::error::{Error, Result};
use crate::ptxas::{parse_ptxas_log, EntryStats};
use crate::source::{Kernel, HEADERS};
use crate::toolchain::Toolchain;
use cudarc::nvrtc::sys;
use sha2::{Digest, Sha256};
use std::ffi::{c_char, CString};
use std::time::{Duration, Instant};

/// The options every kernel is compiled with, apart from include folders
/// (machine-specific paths, kept out of the cache key).
/// `--ptxas-options=-v` puts registers / stack / spills per entry point in
/// the log; `-lineinfo` lets profilers map SASS to source at no run-time cost.
pub fn portable_options(arch: u32) -> Vec<String> {
    vec![
        format!("-arch=sm_{arch}"),
        "--ptxas-options=-v".to_string(),
        "-std=c++17".to_string(),
        "-lineinfo".to_string(),
    ]
}

/// A kernel file compiled for one GPU architecture.
#[derive(Debug, Clone)]
pub struct CompiledKernel {
    pub kernel: &'static str,
    pub arch: u32,
    /// SASS for sm_<arch>: what cuModuleLoadData takes.
    pub cubin: Vec<u8>,
    /// NVRTC's program log: warnings and the ptxas -v report.
    pub log: String,
    /// Per entry point (and per non-inlined device function) ptxas figures.
    pub entries: Vec<EntryStats>,
    pub cache_hit: bool,
    /// Wall time of this call (compile, or cache read).
    pub elapsed: Duration,
}

/// The cache key: everything that changes the CUBIN.
pub fn cache_key(kernel: &Kernel, options: &[String], arch: u32, nvrtc: (i32, i32)) -> String {
    let mut h = Sha256::new();
    // length-prefixed fields: ("ab", "c") and ("a", "bc") must not collide
    let mut field = |data: &[u8]| {
        h.update((data.len() as u64).to_le_bytes());
        h.update(data);
    };
    field(b"slmlp-kernels-cache-v1");
    field(kernel.name.as_bytes());
    field(kernel.source.as_bytes());
    for (name, src) in HEADERS {
        field(name.as_bytes());
        field(src.as_bytes());
    }
    for o in options {
        field(o.as_bytes());
    }
    field(&arch.to_le_bytes());
    field(format!("nvrtc {}.{}", nvrtc.0, nvrtc.1).as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Compiles kernels, reading and filling an on-disk cache when it has one.
pub struct Compiler {
    cache: Option<KernelCache>,
}

impl Compiler {
    pub fn new(cache: Option<KernelCache>) -> Compiler {
        Compiler { cache }
    }

    /// With the default cache folder (`KernelCache::default_dir`), if any.
    pub fn with_default_cache() -> Compiler {
        Compiler::new(KernelCache::default_dir().map(KernelCache::new))
    }

    pub fn cache(&self) -> Option<&KernelCache> {
        self.cache.as_ref()
    }

    pub fn compile(&self, kernel: &Kernel, arch: u32) -> Result<CompiledKernel> {
        let start = Instant::now();
        let tc = Toolchain::get()?;
        let options = portable_options(arch);
        let key = cache_key(kernel, &options, arch, tc.version);
        let cached = match &self.cache {
            Some(cache) => cache.get(kernel.name, arch, &key)?,
            None => None,
        };
        let cache_hit = cached.is_some();
        let entry = match cached {
            Some(entry) => entry,
            None => {
                let (cubin, log) = nvrtc_compile(kernel, arch, &options, tc)?;
                let entry = CacheEntry { cubin, log };
                if let Some(cache) = &self.cache {
                    cache.put(kernel.name, arch, &key, &entry)?;
                }
                entry
            }
        };
        Ok(CompiledKernel {
            kernel: kernel.name,
            arch,
            entries: parse_ptxas_log(&entry.log),
            cubin: entry.cubin,
            log: entry.log,
            cache_hit,
            elapsed: start.elapsed(),
        })
    }
}

/// `Compiler::with_default_cache().compile(kernel, arch)`.
pub fn compile(kernel: &Kernel, arch: u32) -> Result<CompiledKernel> {
    Compiler::with_default_cache().compile(kernel, arch)
}

/// Destroys the program on every exit path.
struct Program(sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: created by nvrtcCreateProgram, destroyed only here.
        unsafe {
            sys::nvrtcDestroyProgram(&mut self.0);
        }
    }
}

fn check(kernel: &Kernel, call: &'static str, rc: sys::nvrtcResult) -> Result<()> {
    if rc == sys::nvrtcResult::NVRTC_SUCCESS {
        Ok(())
    } else {
        Err(Error::Nvrtc {
            kernel: kernel.name.to_string(),
            call,
            code: format!("{rc:?}"),
        })
    }
}

fn cstring(kernel: &Kernel, what: &str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::Nvrtc {
        kernel: kernel.name.to_string(),
        call: "CString::new",
        code: format!("{what} contains a NUL byte"),
    })
}

/// One NVRTC compile: (CUBIN, log). Needs a loaded toolchain (the
/// `Toolchain::get` above), so cudarc never sees a missing library.
fn nvrtc_compile(
    kernel: &Kernel,
    arch: u32,
    options: &[String],
    tc: &Toolchain,
) -> Result<(Vec<u8>, String)> {
    let src = cstring(kernel, "source", kernel.source)?;
    let name = cstring(kernel, "file name", kernel.file)?;
    let hdr_src: Vec<CString> = HEADERS
        .iter()
        .map(|(n, s)| cstring(kernel, n, s))
        .collect::<Result<_>>()?;
    let hdr_name: Vec<CString> = HEADERS
        .iter()
        .map(|(n, _)| cstring(kernel, n, n))
        .collect::<Result<_>>()?;
    let hdr_src_p: Vec<*const c_char> = hdr_src.iter().map(|s| s.as_ptr()).collect();
    let hdr_name_p: Vec<*const c_char> = hdr_name.iter().map(|s| s.as_ptr()).collect();

    let mut opts: Vec<String> = options.to_vec();
    opts.extend(
        tc.include_dirs
            .iter()
            .map(|d| format!("--include-path={}", d.display())),
    );
    let opts_c: Vec<CString> = opts
        .iter()
        .map(|o| cstring(kernel, "option", o))
        .collect::<Result<_>>()?;
    let opts_p: Vec<*const c_char> = opts_c.iter().map(|s| s.as_ptr()).collect();

    let mut prog = std::mem::MaybeUninit::uninit();
    // SAFETY: all pointers outlive the program (dropped at the end of this
    // function, after `Program`); counts match the arrays.
    let rc = unsafe {
        sys::nvrtcCreateProgram(
            prog.as_mut_ptr(),
            src.as_ptr(),
            name.as_ptr(),
            HEADERS.len() as i32,
            hdr_src_p.as_ptr(),
            hdr_name_p.as_ptr(),
        )
    };
    check(kernel, "nvrtcCreateProgram", rc)?;
    // SAFETY: nvrtcCreateProgram succeeded, so prog is initialised.
    let prog = Program(unsafe { prog.assume_init() });

    // SAFETY: valid program and option array.
    let compile_rc =
        unsafe { sys::nvrtcCompileProgram(prog.0, opts_p.len() as i32, opts_p.as_ptr()) };
    let log = program_log(kernel, &prog)?;
    if compile_rc != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(Error::Compile {
            kernel: kernel.name.to_string(),
            arch,
            log: format!("{compile_rc:?}\n{log}"),
        });
    }
    let mut size = 0usize;
    // SAFETY: valid, compiled program; out-param.
    check(kernel, "nvrtcGetCUBINSize", unsafe {
        sys::nvrtcGetCUBINSize(prog.0, &mut size)
    })?;
    let mut cubin = vec![0u8; size];
    // SAFETY: the buffer has the size NVRTC asked for.
    check(kernel, "nvrtcGetCUBIN", unsafe {
        sys::nvrtcGetCUBIN(prog.0, cubin.as_mut_ptr() as *mut c_char)
    })?;
    if cubin.is_empty() {
        return Err(Error::Nvrtc {
            kernel: kernel.name.to_string(),
            call: "nvrtcGetCUBIN",
            code: format!("empty CUBIN: is -arch=sm_{arch} a real (not compute_) architecture?"),
        });
    }
    Ok((cubin, log))
}

fn program_log(kernel: &Kernel, prog: &Program) -> Result<String> {
    let mut size = 0usize;
    // SAFETY: valid program; out-param.
    check(kernel, "nvrtcGetProgramLogSize", unsafe {
        sys::nvrtcGetProgramLogSize(prog.0, &mut size)
    })?;
    let mut buf = vec![0u8; size.max(1)];
    // SAFETY: the buffer has the size NVRTC asked for.
    check(kernel, "nvrtcGetProgramLog", unsafe {
        sys::nvrtcGetProgramLog(prog.0, buf.as_mut_ptr() as *mut c_char)
    })?;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KERNELS;

    #[test]
    fn key_changes_with_arch_options_source_and_nvrtc() {
        let k = &KERNELS[0];
        let base = cache_key(k, &portable_options(90), 90, (13, 0));
        assert_eq!(base.len(), 64);
        assert_eq!(
            base,
            cache_key(k, &portable_options(90), 90, (13, 0)),
            "stable"
        );
        assert_ne!(
            base,
            cache_key(k, &portable_options(80), 80, (13, 0)),
            "arch"
        );
        let mut opts = portable_options(90);
        opts.push("--use_fast_math".into());
        assert_ne!(base, cache_key(k, &opts, 90, (13, 0)), "options");
        assert_ne!(
            base,
            cache_key(k, &portable_options(90), 90, (13, 1)),
            "nvrtc version"
        );
        let edited = Kernel {
            source: "// edited\n",
            ..*k
        };
        assert_ne!(
            base,
            cache_key(&edited, &portable_options(90), 90, (13, 0)),
            "source"
        );
        let other = cache_key(&KERNELS[1], &portable_options(90), 90, (13, 0));
        assert_ne!(base, other, "kernel");
    }

    #[test]
    fn options_are_the_documented_ones() {
        let o = portable_options(90);
        assert!(o.contains(&"-arch=sm_90".to_string()));
        assert!(o.contains(&"--ptxas-options=-v".to_string()));
        assert!(o.contains(&"-std=c++17".to_string()));
        assert!(
            !o.iter().any(|s| s.starts_with("--include-path")),
            "paths stay out of the key"
        );
    }
}
