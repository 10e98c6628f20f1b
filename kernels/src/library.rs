//! The base every kernel family's launchers build on: loading the CUBINs
//! into a CUDA context ([`KernelLibrary`]), the operand types ([`Dtype`],
//! [`DevPtr`]) and the launch helpers they share. Needs a GPU, so CI only
//! compiles this; the engine's CUDA backend and its GPU parity check are
//! what exercise it. It imports no family: each family's `impl
//! KernelLibrary` block lives in `families/<name>.rs` and imports this;
//! callers name it all through the [`crate::device`] facade.
//!
//! cudarc's `CudaContext::new` PANICS when libcuda is missing: [`open`]
//! checks `is_culib_present()` and the device count first and returns
//! [`Error::NoGpu`] instead.

use crate::compile::Compiler;
use crate::error::{Error, Result};
use crate::launch::{Gpu, LaunchShape};
use crate::registry;
use cudarc::driver::{sys, CudaContext, CudaFunction, CudaModule, LaunchConfig};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A raw device address (CUdeviceptr); 0 stands for an absent optional
/// operand (the kernels take null pointers for those).
pub type DevPtr = u64;

/// The data dtypes the kernels are instantiated for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    F32,
    F16,
    Bf16,
}

impl Dtype {
    /// The entry-point suffix: `bn_fwd_apply_bf16`.
    pub fn suffix(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
        }
    }
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
        }
    }
}

pub(crate) fn driver(what: &str) -> impl FnOnce(cudarc::driver::DriverError) -> Error + '_ {
    move |e| Error::Driver {
        what: what.to_string(),
        code: format!("{e:?}"),
    }
}

/// A CUDA context on GPU `ordinal`, or a clear error when there is no
/// driver library or no such device (never cudarc's panic).
pub fn open(ordinal: usize) -> Result<Arc<CudaContext>> {
    // SAFETY: only dlopens candidate library names.
    if !unsafe { sys::is_culib_present() } {
        return Err(Error::NoGpu(
            "the CUDA driver library (libcuda.so) is not installed or not on the loader path"
                .into(),
        ));
    }
    let count = CudaContext::device_count().map_err(driver("cuDeviceGetCount"))?;
    if ordinal >= count.max(0) as usize {
        return Err(Error::NoGpu(format!(
            "GPU {ordinal} requested, {count} visible (CUDA_VISIBLE_DEVICES?)"
        )));
    }
    CudaContext::new(ordinal).map_err(driver("cuCtx (primary context)"))
}

/// Every registry kernel for one context: compiled for its arch (through the
/// compiler's cache) and loaded on first use of any of its entry points.
pub struct KernelLibrary {
    ctx: Arc<CudaContext>,
    compiler: Compiler,
    arch: u32,
    gpu: Gpu,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<String, CudaFunction>>,
}

impl KernelLibrary {
    pub fn new(ctx: Arc<CudaContext>, compiler: Compiler) -> Result<KernelLibrary> {
        let (major, minor) = ctx
            .compute_capability()
            .map_err(driver("compute capability"))?;
        let sms = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(driver("multiprocessor count"))?;
        Ok(KernelLibrary {
            ctx,
            compiler,
            arch: (major * 10 + minor) as u32,
            gpu: Gpu {
                sm_count: sms.max(1) as u32,
            },
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
        })
    }

    pub fn arch(&self) -> u32 {
        self.arch
    }
    pub fn gpu(&self) -> Gpu {
        self.gpu
    }
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The entry point `name` (e.g. "bn_fwd_apply_bf16").
    pub fn function(&self, name: &str) -> Result<CudaFunction> {
        if let Some(f) = self.functions.lock().expect("lock").get(name) {
            return Ok(f.clone());
        }
        let kernel = registry::kernel_of_entry(name).ok_or_else(|| Error::UnknownKernel {
            name: name.to_string(),
            known: "an entry point listed in kernels::KERNELS".into(),
        })?;
        let module = {
            let mut modules = self.modules.lock().expect("lock");
            match modules.get(kernel.name) {
                Some(m) => m.clone(),
                None => {
                    let compiled = self.compiler.compile(kernel, self.arch)?;
                    let m = self
                        .ctx
                        .load_module(cudarc::nvrtc::Ptx::from_binary(compiled.cubin))
                        .map_err(driver("cuModuleLoadData"))?;
                    modules.insert(kernel.name, m.clone());
                    m
                }
            }
        };
        let f = module.load_function(name).map_err(driver(name))?;
        self.functions
            .lock()
            .expect("lock")
            .insert(name.to_string(), f.clone());
        Ok(f)
    }
}

pub(crate) fn config(s: LaunchShape) -> LaunchConfig {
    LaunchConfig {
        grid_dim: s.grid,
        block_dim: s.block,
        shared_mem_bytes: s.shared_mem_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_without_a_gpu_is_an_error_not_a_panic() {
        // On a GPU machine this opens device 0; on CI it must come back as
        // NoGpu (cudarc alone would panic inside CudaContext::new).
        match open(0) {
            Ok(ctx) => assert_eq!(ctx.ordinal(), 0),
            Err(e) => assert!(matches!(e, Error::NoGpu(_) | Error::Driver { .. }), "{e}"),
        }
        if let Err(e) = open(10_000) {
            assert!(
                e.to_string().contains("GPU") || e.to_string().contains("CUDA"),
                "{e}"
            );
        }
    }

    #[test]
    fn dtype_suffix_and_size() {
        assert_eq!(Dtype::Bf16.suffix(), "bf16");
        assert_eq!(Dtype::F32.size(), 4);
    }
}
