//! Loading the CUBINs into a CUDA context and launching entry points over
//! raw device pointers. Needs a GPU, so CI only compiles this; the engine's
//! CUDA backend and its GPU parity check are what exercise it.
//!
//! cudarc's `CudaContext::new` PANICS when libcuda is missing: [`open`]
//! checks `is_culib_present()` and the device count first and returns
//! [`Error::NoGpu`] instead.

use crate::compile::Compiler;
use crate::error::{Error, Result};
use crate::launch::{self, Gpu, LaunchShape};
use crate::registry;
use cudarc::driver::{
    sys, CudaContext, CudaFunction, CudaModule, CudaStream, LaunchConfig, PushKernelArg,
};
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

fn driver(what: &str) -> impl FnOnce(cudarc::driver::DriverError) -> Error + '_ {
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
            known: "an entry point listed in kernels::registry::KERNELS".into(),
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

fn config(s: LaunchShape) -> LaunchConfig {
    LaunchConfig {
        grid_dim: s.grid,
        block_dim: s.block,
        shared_mem_bytes: s.shared_mem_bytes,
    }
}

fn int(what: &str, v: usize) -> Result<i32> {
    i32::try_from(v)
        .map_err(|_| Error::Shape(format!("{what} = {v} exceeds the kernels' int32 range")))
}

/// Floats of f32 workspace a BatchNorm forward or backward over [M, C]
/// needs (partials for any pack width, rounded to 16 bytes, + 3*C).
pub fn bn_workspace_floats(m: usize, c: usize, gpu: &Gpu) -> Result<usize> {
    let mut partial = 0;
    for pack in [1, launch::PACK] {
        partial = partial.max(launch::nhwc_channel_reduce(m, c, pack, gpu)?.partial_floats(c));
    }
    Ok(partial.next_multiple_of(4) + 3 * c)
}

/// Operands of a BatchNorm forward over x viewed as [M, C] (NHWC).
#[derive(Debug, Clone, Copy)]
pub struct BnForward {
    pub x: DevPtr,
    /// 0, or the residual of the add+ReLU variant (x's shape and dtype).
    pub residual: DevPtr,
    /// f32 [C] each; weight/bias may be 0 (no affine).
    pub weight: DevPtr,
    pub bias: DevPtr,
    /// f32 [C]; training: updated in place (0: not tracked); eval: read.
    pub running_mean: DevPtr,
    pub running_var: DevPtr,
    pub y: DevPtr,
    /// f32 [C] outputs saved for backward.
    pub mean: DevPtr,
    pub invstd: DevPtr,
    /// f32, `bn_workspace_floats(m, c)` long.
    pub workspace: DevPtr,
    pub m: usize,
    pub c: usize,
    pub momentum: f32,
    pub eps: f32,
    pub relu: bool,
    pub training: bool,
}

/// Operands of the matching backward.
#[derive(Debug, Clone, Copy)]
pub struct BnBackward {
    pub x: DevPtr,
    pub dy: DevPtr,
    /// The forward output y for the ReLU variants (its > 0 mask), else 0.
    pub out: DevPtr,
    /// add+ReLU: receives the residual's gradient (dy masked); else 0.
    pub dresidual: DevPtr,
    pub mean: DevPtr,
    pub invstd: DevPtr,
    pub weight: DevPtr,
    pub dx: DevPtr,
    /// f32 [C] or 0 (not needed).
    pub dweight: DevPtr,
    pub dbias: DevPtr,
    pub workspace: DevPtr,
    pub m: usize,
    pub c: usize,
    pub training: bool,
}

impl KernelLibrary {
    /// BatchNorm (+ReLU, +add+ReLU) forward: training runs stats ->
    /// finalize -> apply, eval runs prepare -> apply (batchnorm.cu).
    ///
    /// # Safety
    /// Every non-zero pointer must be a live device allocation of this
    /// context with the documented size and dtype, not written concurrently.
    pub unsafe fn bn_forward(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        a: &BnForward,
    ) -> Result<()> {
        let (m, c) = (a.m as i64, int("C", a.c)?);
        // Shapes mirror the kernels' own vector-path rules (speed only: the
        // kernels loop, any grid is correct).
        let stats_pack = launch::pack_width(&[a.x as usize], Some(a.c));
        let reduce = launch::nhwc_channel_reduce(a.m, a.c, stats_pack, &self.gpu)?;
        let pack = launch::pack_width(&[a.x as usize, a.y as usize], Some(a.c));
        let ws_floats = bn_workspace_floats(a.m, a.c, &self.gpu)?;
        let scale = a.workspace + ((ws_floats - 3 * a.c) * 4) as u64;
        let sfx = dtype.suffix();
        if a.training {
            let splits = reduce.splits as i32;
            let f = self.function(&format!("bn_fwd_stats_{sfx}"))?;
            let mut b = stream.launch_builder(&f);
            b.arg(&a.x).arg(&m).arg(&c).arg(&a.workspace);
            b.launch(config(reduce.launch))
                .map_err(driver("bn_fwd_stats"))?;

            let f = self.function(&format!("bn_fwd_finalize_{sfx}"))?;
            let mut b = stream.launch_builder(&f);
            b.arg(&a.x)
                .arg(&a.workspace)
                .arg(&splits)
                .arg(&m)
                .arg(&c)
                .arg(&a.weight);
            b.arg(&a.momentum)
                .arg(&a.eps)
                .arg(&a.mean)
                .arg(&a.invstd)
                .arg(&scale);
            b.arg(&a.running_mean).arg(&a.running_var);
            b.launch(config(launch::channel_finalize(a.c)))
                .map_err(driver("bn_fwd_finalize"))?;
        } else {
            let f = self.function("bn_eval_prepare")?;
            let mut b = stream.launch_builder(&f);
            b.arg(&a.running_mean)
                .arg(&a.running_var)
                .arg(&a.weight)
                .arg(&a.eps)
                .arg(&c);
            b.arg(&a.mean).arg(&a.invstd).arg(&scale);
            b.launch(config(launch::per_channel(a.c)))
                .map_err(driver("bn_eval_prepare"))?;
        }
        let Some(shape) = launch::elementwise(a.m * a.c, pack, &self.gpu) else {
            return Ok(());
        };
        let relu = a.relu as i32;
        let f = self.function(&format!("bn_fwd_apply_{sfx}"))?;
        let mut b = stream.launch_builder(&f);
        b.arg(&a.x)
            .arg(&a.residual)
            .arg(&a.mean)
            .arg(&scale)
            .arg(&a.bias)
            .arg(&a.y);
        b.arg(&m).arg(&c).arg(&relu);
        b.launch(config(shape)).map_err(driver("bn_fwd_apply"))?;
        Ok(())
    }

    /// BatchNorm backward: reduce -> finalize -> dx (batchnorm.cu).
    ///
    /// # Safety
    /// As [`KernelLibrary::bn_forward`].
    pub unsafe fn bn_backward(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        a: &BnBackward,
    ) -> Result<()> {
        let (m, c) = (a.m as i64, int("C", a.c)?);
        let pack = launch::pack_width(&[a.x as usize, a.dy as usize, a.dx as usize], Some(a.c));
        let reduce = launch::nhwc_channel_reduce(a.m, a.c, pack, &self.gpu)?;
        let ws_floats = bn_workspace_floats(a.m, a.c, &self.gpu)?;
        let coef = a.workspace + ((ws_floats - 3 * a.c) * 4) as u64;
        let sfx = dtype.suffix();

        let f = self.function(&format!("bn_bwd_reduce_{sfx}"))?;
        let mut b = stream.launch_builder(&f);
        b.arg(&a.x)
            .arg(&a.dy)
            .arg(&a.out)
            .arg(&a.dresidual)
            .arg(&a.mean);
        b.arg(&m).arg(&c).arg(&a.workspace);
        b.launch(config(reduce.launch))
            .map_err(driver("bn_bwd_reduce"))?;

        let (splits, training) = (reduce.splits as i32, a.training as i32);
        let f = self.function("bn_bwd_finalize")?;
        let mut b = stream.launch_builder(&f);
        b.arg(&a.workspace)
            .arg(&splits)
            .arg(&m)
            .arg(&c)
            .arg(&a.weight)
            .arg(&a.invstd);
        b.arg(&training).arg(&a.dweight).arg(&a.dbias).arg(&coef);
        b.launch(config(launch::channel_finalize(a.c)))
            .map_err(driver("bn_bwd_finalize"))?;

        if a.dx == 0 {
            return Ok(());
        }
        // add+ReLU: the reduce already wrote the masked gradient to dresidual.
        let (g, mask) = if a.dresidual != 0 {
            (a.dresidual, 0u64)
        } else {
            (a.dy, a.out)
        };
        let Some(shape) = launch::elementwise(a.m * a.c, pack, &self.gpu) else {
            return Ok(());
        };
        let f = self.function(&format!("bn_bwd_dx_{sfx}"))?;
        let mut b = stream.launch_builder(&f);
        b.arg(&a.x)
            .arg(&g)
            .arg(&mask)
            .arg(&a.mean)
            .arg(&coef)
            .arg(&a.dx)
            .arg(&m)
            .arg(&c);
        b.launch(config(shape)).map_err(driver("bn_bwd_dx"))?;
        Ok(())
    }

    /// dst = src converted (round to nearest even), n elements.
    ///
    /// # Safety
    /// src/dst: live device allocations of n elements of their dtypes.
    pub unsafe fn cast(
        &self,
        stream: &CudaStream,
        from: Dtype,
        to: Dtype,
        src: DevPtr,
        dst: DevPtr,
        n: usize,
    ) -> Result<()> {
        if from == to {
            return Err(Error::Shape(format!(
                "cast from {from:?} to itself: copy instead"
            )));
        }
        let Some(shape) = launch::elementwise(
            n,
            launch::pack_width(&[src as usize, dst as usize], None),
            &self.gpu,
        ) else {
            return Ok(());
        };
        let name = format!("cast_{}_to_{}", from.suffix(), to.suffix());
        let f = self.function(&name)?;
        let n = n as i64;
        let mut b = stream.launch_builder(&f);
        b.arg(&src).arg(&dst).arg(&n);
        b.launch(config(shape)).map_err(driver(&name))?;
        Ok(())
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
    fn workspace_covers_both_pack_widths() {
        let g = Gpu::H100;
        let (m, c) = (256 * 56 * 56, 64);
        let w = bn_workspace_floats(m, c, &g).unwrap();
        for pack in [1, launch::PACK] {
            let r = launch::nhwc_channel_reduce(m, c, pack, &g).unwrap();
            assert!(w >= r.partial_floats(c) + 3 * c);
        }
        // the coefficient block starts 16-byte aligned
        assert_eq!((w - 3 * c) % 4, 0);
        assert_eq!(Dtype::Bf16.suffix(), "bf16");
        assert_eq!(Dtype::F32.size(), 4);
    }
}
