//! Is there a usable CUDA GPU? Answered without ever letting cudarc panic.
//!
//! cudarc (dynamic-loading) opens the CUDA libraries by name through the
//! dynamic loader and PANICS on first use when one is missing. [`probe`]
//! first checks the driver library loads, then preloads cuBLAS, cuBLASLt and
//! cuDNN from wherever they are installed (`kernels::cuda_libs`:
//! `LD_LIBRARY_PATH`, NVIDIA's pip wheels, `/usr/local/cuda*/lib64`; see
//! docs/GPU.md), asks each whether it can be loaded (`is_culib_present()`
//! of cudarc's modules; NVRTC through `kernels::Toolchain`, which searches
//! the same way), and only then initialises the driver, inside
//! `catch_unwind` as a second line of defence. A panic caught there is turned
//! into an error; the default panic hook may still print its message to
//! stderr (the hook is process-global and is not swapped here).

use crate::{Device, Error, Result};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// What the driver says about one GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaInfo {
    pub ordinal: usize,
    /// GPUs visible to this process (after CUDA_VISIBLE_DEVICES).
    pub device_count: usize,
    pub name: String,
    /// (major, minor): (9, 0) for an H100.
    pub compute_capability: (i32, i32),
    pub total_memory: usize,
    pub free_memory: usize,
    pub sm_count: u32,
    /// The CUDA version the driver speaks, (major, minor): (13, 0) for driver 580.
    pub driver_version: (i32, i32),
    /// cudnnGetVersion(): 91000 for 9.10.0.
    pub cudnn_version: usize,
    /// Which NVRTC was loaded and from where.
    pub nvrtc: String,
}

impl CudaInfo {
    /// One line for logs: "cuda:0 NVIDIA H100 80GB HBM3 (sm_90, 132 SMs, 79.1 GiB, driver CUDA 13.0, cuDNN 91000)".
    pub fn summary(&self) -> String {
        format!(
            "cuda:{} {} (sm_{}{}, {} SMs, {} total / {} free, driver CUDA {}.{}, cuDNN {}, {})",
            self.ordinal,
            self.name,
            self.compute_capability.0,
            self.compute_capability.1,
            self.sm_count,
            super::allocator::format_bytes(self.total_memory),
            super::allocator::format_bytes(self.free_memory),
            self.driver_version.0,
            self.driver_version.1,
            self.cudnn_version,
            self.nvrtc
        )
    }
}

/// A failed probe: a short reason (for the `--device auto` notice) and the
/// full advice (for the error).
pub(crate) struct Failure {
    pub short: String,
    pub help: String,
}

const LD_HINT: &str =
    "install them (docs/GPU.md) or put the folders holding them on LD_LIBRARY_PATH";

struct Lib {
    what: &'static str,
    file: &'static str,
    from: &'static str,
    present: unsafe fn() -> bool,
}

fn libraries() -> [Lib; 4] {
    [
        Lib {
            what: "the CUDA driver",
            file: "libcuda.so.1",
            from: "the NVIDIA GPU driver (not a pip wheel); without it there is no GPU to use",
            present: cudarc::driver::sys::is_culib_present,
        },
        Lib {
            what: "cuBLAS",
            file: "libcublas.so.13",
            from: "pip wheel nvidia-cublas (CUDA 13), nvidia/cu13/lib",
            present: cudarc::cublas::sys::is_culib_present,
        },
        Lib {
            what: "cuBLASLt",
            file: "libcublasLt.so.13",
            from: "pip wheel nvidia-cublas (CUDA 13), nvidia/cu13/lib",
            present: cudarc::cublaslt::sys::is_culib_present,
        },
        Lib {
            what: "cuDNN",
            file: "libcudnn.so.9",
            from: "pip wheel nvidia-cudnn-cu13, nvidia/cudnn/lib",
            present: cudarc::cudnn::sys::is_culib_present,
        },
    ]
}

fn present(lib: &Lib) -> bool {
    // SAFETY: only dlopens candidate library names, then closes them.
    catch_unwind(|| unsafe { (lib.present)() }).unwrap_or(false)
}

pub(crate) fn probe_inner(ordinal: usize) -> std::result::Result<CudaInfo, Failure> {
    let mut missing = Vec::new();
    let mut details = Vec::new();
    let [driver, libs @ ..] = libraries();
    // Without the driver there is no GPU to use, so the other libraries are
    // not searched for (loading cuDNN maps hundreds of MB).
    if !present(&driver) {
        return Err(Failure {
            short: format!("missing CUDA libraries: {} ({})", driver.file, driver.what),
            help: format!("{} comes from {}; {LD_HINT}", driver.file, driver.from),
        });
    }
    let preloaded = catch_unwind(kernels::cuda_libs::preload).ok();
    for lib in libs {
        if !present(&lib) {
            missing.push(format!("{} ({})", lib.file, lib.what));
            details.push(format!("{} comes from {}", lib.file, lib.from));
        }
    }
    let nvrtc = match catch_unwind(kernels::Toolchain::get) {
        Ok(Ok(t)) => Some(t.describe()),
        Ok(Err(e)) => {
            missing.push("libnvrtc.so.13 (NVRTC)".into());
            details.push(format!(
                "NVRTC: {e} (pip wheels nvidia-cuda-nvrtc + nvidia-cuda-runtime 13.x; scripts/install-nvrtc.sh)"
            ));
            None
        }
        Err(_) => {
            missing.push("libnvrtc.so.13 (NVRTC)".into());
            details.push("NVRTC: loading it panicked".into());
            None
        }
    };
    if !missing.is_empty() {
        let searched = match preloaded {
            Some(p) => {
                let failed: String = p
                    .not_found
                    .iter()
                    .map(|(lib, why)| format!("{} {}: {why}; ", lib.what, lib.soname()))
                    .collect();
                format!(
                    "{failed}searched {} and the loader's path",
                    kernels::cuda_libs::describe_dirs(&p.searched)
                )
            }
            None => "searching for them panicked".into(),
        };
        return Err(Failure {
            short: format!("missing CUDA libraries: {}", missing.join(", ")),
            help: format!("{}; {searched}; {LD_HINT}", details.join("; ")),
        });
    }
    let nvrtc = nvrtc.unwrap_or_default();
    match catch_unwind(AssertUnwindSafe(|| query_device(ordinal, nvrtc))) {
        Ok(r) => r,
        Err(p) => {
            let what = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(Failure {
                short: "the CUDA driver could not be initialised".into(),
                help: format!("cudarc panicked while opening the device: {what}"),
            })
        }
    }
}

fn driver_fail(call: &str, e: impl std::fmt::Debug) -> Failure {
    Failure {
        short: format!("CUDA driver call {call} failed ({e:?})"),
        help: "check that the NVIDIA driver is loaded (nvidia-smi) and that this process may use the GPU (CUDA_VISIBLE_DEVICES, container device access)".into(),
    }
}

fn query_device(ordinal: usize, nvrtc: String) -> std::result::Result<CudaInfo, Failure> {
    use cudarc::driver::{sys, CudaContext};
    let count = CudaContext::device_count().map_err(|e| {
        if format!("{e:?}").contains("NO_DEVICE") {
            Failure {
                short: "no CUDA device found".into(),
                help: "the driver library loads but reports no GPU (is CUDA_VISIBLE_DEVICES empty? does nvidia-smi list one?)".into(),
            }
        } else {
            driver_fail("cuInit/cuDeviceGetCount", e)
        }
    })?;
    let count = count.max(0) as usize;
    if ordinal >= count {
        let visible = std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_else(|_| "unset".into());
        return Err(Failure {
            short: if count == 0 {
                "no CUDA device found".into()
            } else {
                format!("no CUDA device {ordinal}: {count} visible")
            },
            help: format!(
                "ask for cuda:0..cuda:{} (CUDA_VISIBLE_DEVICES={visible})",
                count.saturating_sub(1)
            ),
        });
    }
    let ctx = CudaContext::new(ordinal).map_err(|e| driver_fail("cuDevicePrimaryCtxRetain", e))?;
    let name = ctx.name().map_err(|e| driver_fail("cuDeviceGetName", e))?;
    let compute_capability = ctx
        .compute_capability()
        .map_err(|e| driver_fail("cuDeviceGetAttribute", e))?;
    let (free_memory, total_memory) = ctx
        .mem_get_info()
        .map_err(|e| driver_fail("cuMemGetInfo", e))?;
    let sms = ctx
        .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .map_err(|e| driver_fail("cuDeviceGetAttribute", e))?;
    let mut v: std::ffi::c_int = 0;
    // SAFETY: libcuda is loaded (checked), plain out-parameter.
    let rc = unsafe { sys::cuDriverGetVersion(&mut v) };
    if rc != sys::CUresult::CUDA_SUCCESS {
        return Err(driver_fail("cuDriverGetVersion", rc));
    }
    // SAFETY: libcudnn is loaded (checked); takes no arguments.
    let cudnn_version = unsafe { cudarc::cudnn::sys::cudnnGetVersion() };
    Ok(CudaInfo {
        ordinal,
        device_count: count,
        name,
        compute_capability,
        total_memory,
        free_memory,
        sm_count: sms.max(0) as u32,
        driver_version: (v / 1000, (v % 1000) / 10),
        cudnn_version,
        nvrtc,
    })
}

/// The GPU `ordinal` and what the driver says about it, or
/// `Error::DeviceUnavailable` saying which library is missing and how to
/// provide it, or that there is no such device. Never panics.
pub fn probe(ordinal: usize) -> Result<CudaInfo> {
    probe_inner(ordinal).map_err(|f| Error::DeviceUnavailable {
        device: Device::Cuda(ordinal),
        msg: format!("{}; {}", f.short, f.help),
    })
}

/// The device a `--device auto|cpu|cuda|cuda:N` flag asks for, and a one-line
/// notice for the caller to print when `auto` fell back to the CPU.
/// `cuda`/`cuda:N` on a machine without a usable GPU is an error.
pub fn resolve_device(requested: &str) -> Result<(Device, Option<String>)> {
    let r = requested.trim();
    if r.eq_ignore_ascii_case("auto") {
        return Ok(match probe_inner(0) {
            Ok(_) => (Device::Cuda(0), None),
            Err(f) => (
                Device::Cpu,
                Some(format!(
                    "notice: --device auto: no usable CUDA GPU ({}); running on the CPU",
                    f.short
                )),
            ),
        });
    }
    let device: Device = r.to_ascii_lowercase().parse().map_err(|_| {
        Error::arg(
            "--device",
            format!("unknown device {requested:?}; expected auto, cpu, cuda or cuda:N"),
        )
    })?;
    match device {
        Device::Cpu => Ok((Device::Cpu, None)),
        Device::Cuda(i) => probe(i).map(|_| (device, None)),
    }
}
