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

/// Elementwise binary ops of elementwise.cu (dense operands of one dtype).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    /// out = a + b
    Add,
    /// dx = y > 0 ? dy : 0 (a = y, the ReLU output; b = dy)
    ReluBwd,
}

/// Which averaging windows [`KernelLibrary::avgpool`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AvgMode {
    /// Sliding windows of `PoolDims`' kernel/stride/padding;
    /// `count_include_pad` divides by the padded window, else by the
    /// in-bounds count.
    Window { count_include_pad: bool },
    /// PyTorch's adaptive bins (which may differ in size and overlap);
    /// kernel/stride/padding are ignored.
    Adaptive,
}

/// A 2-D pooling window over NHWC x [N, H, W, C] -> y [N, OH, OW, C]
/// (pool.cu's PoolShape).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolDims {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub oh: usize,
    pub ow: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
}

impl PoolDims {
    /// The 12 int32 kernel arguments in pool.cu's order
    /// (N, H, W, C, OH, OW, KH, KW, SH, SW, PH, PW).
    pub fn args(&self) -> Result<[i32; 12]> {
        let v = [
            self.n,
            self.h,
            self.w,
            self.c,
            self.oh,
            self.ow,
            self.kernel[0],
            self.kernel[1],
            self.stride[0],
            self.stride[1],
            self.padding[0],
            self.padding[1],
        ];
        let mut out = [0i32; 12];
        for (o, &d) in out.iter_mut().zip(&v) {
            *o = int("pool dim", d)?;
        }
        Ok(out)
    }
    pub fn input_len(&self) -> usize {
        self.n * self.h * self.w * self.c
    }
    pub fn output_len(&self) -> usize {
        self.n * self.oh * self.ow * self.c
    }
}

/// Operands of softmax cross-entropy over logits [N, V] (softmax_xent.cu).
#[derive(Debug, Clone, Copy)]
pub struct Xent {
    pub logits: DevPtr,
    /// i64 [N]
    pub targets: DevPtr,
    pub n: usize,
    pub v: usize,
    pub label_smoothing: f32,
    pub ignore_index: Option<i64>,
    /// f32 [N] each: per-row loss and log-sum-exp (saved for backward).
    pub row_loss: DevPtr,
    pub lse: DevPtr,
    /// f32 [2]: mean loss, number of valid rows.
    pub stats: DevPtr,
    /// i32, zeroed by the caller before the forward; set to 1 when a target
    /// is out of range and not the ignore index.
    pub bad_target: DevPtr,
}

impl KernelLibrary {
    /// out = a (op) b over n dense elements (elementwise.cu: add, relu_bwd).
    /// out may alias a.
    ///
    /// # Safety
    /// a, b, out: live device allocations of n elements of `dtype`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn binary(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        op: Binary,
        a: DevPtr,
        b: DevPtr,
        out: DevPtr,
        n: usize,
    ) -> Result<()> {
        let pack = launch::pack_width(&[a as usize, b as usize, out as usize], None);
        let Some(shape) = launch::elementwise(n, pack, &self.gpu) else {
            return Ok(());
        };
        let name = match op {
            Binary::Add => format!("add_{}", dtype.suffix()),
            Binary::ReluBwd => format!("relu_bwd_{}", dtype.suffix()),
        };
        let f = self.function(&name)?;
        let n = n as i64;
        let mut b_ = stream.launch_builder(&f);
        b_.arg(&a).arg(&b).arg(&out).arg(&n);
        b_.launch(config(shape)).map_err(driver(&name))?;
        Ok(())
    }

    /// out[i] = a[i] + b[i % inner], i < n (n a multiple of inner).
    ///
    /// # Safety
    /// a, out: n elements of `dtype`; b: inner elements.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn add_bcast(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        a: DevPtr,
        b: DevPtr,
        out: DevPtr,
        n: usize,
        inner: usize,
    ) -> Result<()> {
        if inner == 0 || !n.is_multiple_of(inner) {
            return Err(Error::Shape(format!(
                "broadcast add of {n} elements over rows of {inner}"
            )));
        }
        let Some(shape) = launch::elementwise(n, 1, &self.gpu) else {
            return Ok(());
        };
        let name = format!("add_bcast_{}", dtype.suffix());
        let f = self.function(&name)?;
        let (n, inner) = (n as i64, inner as i64);
        let mut b_ = stream.launch_builder(&f);
        b_.arg(&a).arg(&b).arg(&out).arg(&n).arg(&inner);
        b_.launch(config(shape)).map_err(driver(&name))?;
        Ok(())
    }

    /// out = a * s over n elements (elementwise.cu scale; out may alias a).
    ///
    /// # Safety
    /// a, out: live device allocations of n elements of `dtype`.
    pub unsafe fn scale(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        a: DevPtr,
        out: DevPtr,
        s: f32,
        n: usize,
    ) -> Result<()> {
        let pack = launch::pack_width(&[a as usize, out as usize], None);
        let Some(shape) = launch::elementwise(n, pack, &self.gpu) else {
            return Ok(());
        };
        let name = format!("scale_{}", dtype.suffix());
        let f = self.function(&name)?;
        let n = n as i64;
        let mut b = stream.launch_builder(&f);
        b.arg(&a).arg(&out).arg(&s).arg(&n);
        b.launch(config(shape)).map_err(driver(&name))?;
        Ok(())
    }

    /// out = max(a, 0) over n elements.
    ///
    /// # Safety
    /// a, out: live device allocations of n elements of `dtype`.
    pub unsafe fn relu_fwd(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        a: DevPtr,
        out: DevPtr,
        n: usize,
    ) -> Result<()> {
        let pack = launch::pack_width(&[a as usize, out as usize], None);
        let Some(shape) = launch::elementwise(n, pack, &self.gpu) else {
            return Ok(());
        };
        let name = format!("relu_fwd_{}", dtype.suffix());
        let f = self.function(&name)?;
        let n = n as i64;
        let mut b = stream.launch_builder(&f);
        b.arg(&a).arg(&out).arg(&n);
        b.launch(config(shape)).map_err(driver(&name))?;
        Ok(())
    }

    /// out[0] (f32) = sum of n elements of x: sum_partial then sum_finalize.
    /// n == 0 writes 0.
    ///
    /// # Safety
    /// x: n elements of `dtype`; partials: f32 workspace of
    /// `launch::SUM_MAX_PARTIALS` floats; out: one f32.
    pub unsafe fn sum_all(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        x: DevPtr,
        n: usize,
        partials: DevPtr,
        out: DevPtr,
    ) -> Result<()> {
        let count: i32 =
            match launch::sum_partial(n, launch::pack_width(&[x as usize], None), &self.gpu) {
                None => 0,
                Some(shape) => {
                    let name = format!("sum_partial_{}", dtype.suffix());
                    let f = self.function(&name)?;
                    let n = n as i64;
                    let mut b = stream.launch_builder(&f);
                    b.arg(&x).arg(&n).arg(&partials);
                    b.launch(config(shape)).map_err(driver(&name))?;
                    shape.grid.0 as i32
                }
            };
        let f = self.function("sum_finalize")?;
        let mut b = stream.launch_builder(&f);
        b.arg(&partials).arg(&count).arg(&out);
        b.launch(config(launch::single_block()))
            .map_err(driver("sum_finalize"))?;
        Ok(())
    }

    /// y[o, i] = sum over r of x[o, r, i] for x [outer, r, inner] row-major:
    /// sum_rows (a block per row) when inner == 1, else sum_cols (a thread
    /// per output).
    ///
    /// # Safety
    /// x: outer*r*inner elements of `dtype`; y: outer*inner.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn sum_axis(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        x: DevPtr,
        y: DevPtr,
        outer: usize,
        r: usize,
        inner: usize,
    ) -> Result<()> {
        let (o, rr, i) = (outer as i64, r as i64, inner as i64);
        if inner == 1 {
            let Some(shape) = launch::rows(outer) else {
                return Ok(());
            };
            let name = format!("sum_rows_{}", dtype.suffix());
            let f = self.function(&name)?;
            let mut b = stream.launch_builder(&f);
            b.arg(&x).arg(&y).arg(&o).arg(&rr);
            b.launch(config(shape)).map_err(driver(&name))?;
        } else {
            let Some(shape) = launch::elementwise(outer * inner, 1, &self.gpu) else {
                return Ok(());
            };
            let name = format!("sum_cols_{}", dtype.suffix());
            let f = self.function(&name)?;
            let mut b = stream.launch_builder(&f);
            b.arg(&x).arg(&y).arg(&o).arg(&rr).arg(&i);
            b.launch(config(shape)).map_err(driver(&name))?;
        }
        Ok(())
    }

    /// Global average pool: y [N, C] = mean over HW of NHWC x [N, HW, C].
    ///
    /// # Safety
    /// x: n*hw*c elements of `dtype`; y: n*c.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gap_fwd(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        x: DevPtr,
        y: DevPtr,
        n: usize,
        hw: usize,
        c: usize,
    ) -> Result<()> {
        let pack = launch::pack_width(&[x as usize], Some(c));
        let shape = launch::gap_fwd(n, hw, c, pack)?;
        let name = format!("gap_fwd_{}", dtype.suffix());
        let f = self.function(&name)?;
        let (hw, c) = (int("HW", hw)?, int("C", c)?);
        let mut b = stream.launch_builder(&f);
        b.arg(&x).arg(&y).arg(&hw).arg(&c);
        b.launch(config(shape)).map_err(driver(&name))?;
        Ok(())
    }

    /// dx [N, HW, C] = dy [N, C] / HW.
    ///
    /// # Safety
    /// dy: n*c elements of `dtype`; dx: n*hw*c.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gap_bwd(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        dy: DevPtr,
        dx: DevPtr,
        n: usize,
        hw: usize,
        c: usize,
    ) -> Result<()> {
        let pack = launch::pack_width(&[dy as usize, dx as usize], Some(c));
        let Some(shape) = launch::elementwise(n * hw * c, pack, &self.gpu) else {
            return Ok(());
        };
        let name = format!("gap_bwd_{}", dtype.suffix());
        let f = self.function(&name)?;
        let (n, hw, c) = (int("N", n)?, int("HW", hw)?, int("C", c)?);
        let mut b = stream.launch_builder(&f);
        b.arg(&dy).arg(&dx).arg(&n).arg(&hw).arg(&c);
        b.launch(config(shape)).map_err(driver(&name))?;
        Ok(())
    }

    /// Max pooling forward: y and argmax (int32 h*W + w) [N, OH, OW, C].
    ///
    /// # Safety
    /// x: `d.input_len()` elements of `dtype`; y: `d.output_len()`;
    /// argmax: `d.output_len()` int32.
    pub unsafe fn maxpool_fwd(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        x: DevPtr,
        y: DevPtr,
        argmax: DevPtr,
        d: &PoolDims,
    ) -> Result<()> {
        let a = d.args()?;
        let Some(shape) = launch::elementwise(d.output_len(), 1, &self.gpu) else {
            return Ok(());
        };
        let name = format!("maxpool_fwd_{}", dtype.suffix());
        let f = self.function(&name)?;
        let mut b = stream.launch_builder(&f);
        b.arg(&x).arg(&y).arg(&argmax);
        for v in &a {
            b.arg(v);
        }
        b.launch(config(shape)).map_err(driver(&name))?;
        Ok(())
    }

    /// Max pooling backward (a gather: dx fully overwritten).
    ///
    /// # Safety
    /// dy, argmax: `d.output_len()` elements; dx: `d.input_len()`.
    pub unsafe fn maxpool_bwd(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        dy: DevPtr,
        argmax: DevPtr,
        dx: DevPtr,
        d: &PoolDims,
    ) -> Result<()> {
        let a = d.args()?;
        let Some(shape) = launch::elementwise(d.input_len(), 1, &self.gpu) else {
            return Ok(());
        };
        let name = format!("maxpool_bwd_{}", dtype.suffix());
        let f = self.function(&name)?;
        let mut b = stream.launch_builder(&f);
        b.arg(&dy).arg(&argmax).arg(&dx);
        for v in &a {
            b.arg(v);
        }
        b.launch(config(shape)).map_err(driver(&name))?;
        Ok(())
    }

    /// Average pooling forward (backward = false: x -> y) or backward
    /// (backward = true: dy -> dx, a gather that overwrites dx).
    ///
    /// # Safety
    /// src/dst: `d.input_len()` / `d.output_len()` elements of `dtype`
    /// (swapped for backward).
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn avgpool(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        backward: bool,
        src: DevPtr,
        dst: DevPtr,
        d: &PoolDims,
        mode: AvgMode,
    ) -> Result<()> {
        let a = d.args()?;
        let (dir, threads) = if backward {
            ("bwd", d.input_len())
        } else {
            ("fwd", d.output_len())
        };
        let Some(shape) = launch::elementwise(threads, 1, &self.gpu) else {
            return Ok(());
        };
        let kind = match mode {
            AvgMode::Window { .. } => "avgpool",
            AvgMode::Adaptive => "adaptive_avgpool",
        };
        let name = format!("{kind}_{dir}_{}", dtype.suffix());
        let f = self.function(&name)?;
        let mut b = stream.launch_builder(&f);
        b.arg(&src).arg(&dst);
        for v in &a {
            b.arg(v);
        }
        let include;
        if let AvgMode::Window { count_include_pad } = mode {
            include = count_include_pad as i32;
            b.arg(&include);
        }
        b.launch(config(shape)).map_err(driver(&name))?;
        Ok(())
    }

    /// Cross-entropy forward: xent_fwd (per-row loss, lse, bad-target flag)
    /// then xent_finalize (stats = [mean loss, valid rows]).
    ///
    /// # Safety
    /// Every pointer of `a` live with the documented sizes; logits [N, V] of
    /// `dtype`, row-major; `bad_target` zeroed before.
    pub unsafe fn xent_forward(&self, stream: &CudaStream, dtype: Dtype, a: &Xent) -> Result<()> {
        let (n, v) = (int("N", a.n)?, int("V", a.v)?);
        let (has_ignore, ignore) = (a.ignore_index.is_some() as i32, a.ignore_index.unwrap_or(0));
        if let Some(shape) = launch::rows(a.n) {
            let name = format!("xent_fwd_{}", dtype.suffix());
            let f = self.function(&name)?;
            let mut b = stream.launch_builder(&f);
            b.arg(&a.logits).arg(&a.targets).arg(&n).arg(&v);
            b.arg(&a.label_smoothing).arg(&has_ignore).arg(&ignore);
            b.arg(&a.row_loss).arg(&a.lse).arg(&a.bad_target);
            b.launch(config(shape)).map_err(driver(&name))?;
        }
        let f = self.function("xent_finalize")?;
        let mut b = stream.launch_builder(&f);
        b.arg(&a.row_loss).arg(&a.targets).arg(&n).arg(&v);
        b.arg(&has_ignore).arg(&ignore).arg(&a.stats);
        b.launch(config(launch::single_block()))
            .map_err(driver("xent_finalize"))?;
        Ok(())
    }

    /// Cross-entropy backward: dx [N, V] = dloss[0] / valid * (softmax -
    /// smoothed one-hot), 0 on ignored rows.
    ///
    /// # Safety
    /// As [`KernelLibrary::xent_forward`] after it ran; dloss: one f32;
    /// dx: N*V elements of `dtype`.
    pub unsafe fn xent_backward(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        a: &Xent,
        dloss: DevPtr,
        dx: DevPtr,
    ) -> Result<()> {
        let (n, v) = (int("N", a.n)?, int("V", a.v)?);
        let (has_ignore, ignore) = (a.ignore_index.is_some() as i32, a.ignore_index.unwrap_or(0));
        let Some(shape) = launch::rows(a.n) else {
            return Ok(());
        };
        let name = format!("xent_bwd_{}", dtype.suffix());
        let f = self.function(&name)?;
        let mut b = stream.launch_builder(&f);
        b.arg(&a.logits)
            .arg(&a.targets)
            .arg(&a.lse)
            .arg(&dloss)
            .arg(&a.stats);
        b.arg(&n)
            .arg(&v)
            .arg(&a.label_smoothing)
            .arg(&has_ignore)
            .arg(&ignore);
        b.arg(&dx);
        b.launch(config(shape)).map_err(driver(&name))?;
        Ok(())
    }
}

/// Most dims a strided copy handles (`SLMLP_COPY_MAX_RANK` in copy.cu).
pub const COPY_MAX_RANK: usize = 8;

/// copy.cu's `StridedView`, passed by value.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct StridedView {
    pub rank: i32,
    pub shape: [i64; COPY_MAX_RANK],
    pub src_strides: [i64; COPY_MAX_RANK],
}

// SAFETY: plain old data with the same C layout as copy.cu's struct.
unsafe impl cudarc::driver::DeviceRepr for StridedView {}

impl StridedView {
    /// `shape` / `src_strides` in the destination's physical order
    /// (outermost first).
    pub fn new(shape: &[usize], src_strides: &[usize]) -> Result<StridedView> {
        if shape.len() != src_strides.len() || shape.len() > COPY_MAX_RANK {
            return Err(Error::Shape(format!(
                "strided copy of rank {} (strides {}): at most {COPY_MAX_RANK} dims",
                shape.len(),
                src_strides.len()
            )));
        }
        let mut v = StridedView {
            rank: shape.len() as i32,
            shape: [1; COPY_MAX_RANK],
            src_strides: [0; COPY_MAX_RANK],
        };
        for (i, (&d, &s)) in shape.iter().zip(src_strides).enumerate() {
            v.shape[i] = d as i64;
            v.src_strides[i] = s as i64;
        }
        Ok(v)
    }
}

impl KernelLibrary {
    /// dst[i] = src[offset of the i-th element of `view`], i < n, elements
    /// of `elem_bytes` (1, 2, 4 or 8) bytes (copy.cu).
    ///
    /// # Safety
    /// src must hold every element the view addresses, dst n elements.
    pub unsafe fn strided_copy(
        &self,
        stream: &CudaStream,
        elem_bytes: usize,
        src: DevPtr,
        dst: DevPtr,
        n: usize,
        view: &StridedView,
    ) -> Result<()> {
        if !matches!(elem_bytes, 1 | 2 | 4 | 8) {
            return Err(Error::Shape(format!(
                "strided copy of {elem_bytes}-byte elements: 1, 2, 4 or 8 only"
            )));
        }
        let Some(shape) = launch::elementwise(n, 1, &self.gpu) else {
            return Ok(());
        };
        let name = format!("strided_copy_{elem_bytes}");
        let f = self.function(&name)?;
        let n = n as i64;
        let mut b = stream.launch_builder(&f);
        b.arg(&src).arg(&dst).arg(&n).arg(view);
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

    #[test]
    fn pool_args_follow_pool_cu_order() {
        let d = PoolDims {
            n: 2,
            h: 112,
            w: 110,
            c: 64,
            oh: 56,
            ow: 55,
            kernel: [3, 2],
            stride: [2, 1],
            padding: [1, 0],
        };
        assert_eq!(
            d.args().unwrap(),
            [2, 112, 110, 64, 56, 55, 3, 2, 2, 1, 1, 0]
        );
        assert_eq!(d.input_len(), 2 * 112 * 110 * 64);
        assert_eq!(d.output_len(), 2 * 56 * 55 * 64);
        let huge = PoolDims { c: 1 << 31, ..d };
        assert!(huge.args().is_err());
    }
}

// ---- detection: RoIAlign (roi_align.cu) and the NMS IoU mask (nms.cu) -------

/// A RoIAlign over NHWC x [N, H, W, C] and boxes [K, 5] -> [K, PH, PW, C]
/// (roi_align.cu's RoiShape).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoiAlignDims {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub ph: usize,
    pub pw: usize,
    pub spatial_scale: f32,
    /// <= 0: adaptive (ceil(bin size) samples a side).
    pub sampling_ratio: i32,
    pub aligned: bool,
}

impl RoiAlignDims {
    /// The 7 int32 shape arguments in roi_align.cu's order (N, C, H, W, K,
    /// PH, PW), checked to fit, with the element counts the kernels index.
    pub fn args(&self) -> Result<[i32; 7]> {
        let v = [self.n, self.c, self.h, self.w, self.k, self.ph, self.pw];
        let mut out = [0i32; 7];
        for (o, &d) in out.iter_mut().zip(&v) {
            *o = int("roi_align dim", d)?;
        }
        // the kernels' pixel offsets (y*W + x) are int32
        int("roi_align H*W", self.h * self.w)?;
        Ok(out)
    }
    pub fn input_len(&self) -> usize {
        self.n * self.h * self.w * self.c
    }
    pub fn output_len(&self) -> usize {
        self.k * self.ph * self.pw * self.c
    }
}

/// Boxes per NMS mask block: one 64-bit word of the mask.
pub const NMS_BLOCK: usize = 64;

/// Words per mask row for K boxes.
pub fn nms_col_blocks(k: usize) -> usize {
    k.div_ceil(NMS_BLOCK)
}

/// The nms_mask launch for K boxes: a (col_blocks x col_blocks) grid of
/// 64-thread blocks; None when K == 0.
pub fn nms_launch(k: usize) -> Result<Option<launch::LaunchShape>> {
    if k == 0 {
        return Ok(None);
    }
    let cb = nms_col_blocks(k);
    // grid.y is limited to 65535 blocks
    if cb > 65535 || int("nms boxes", k).is_err() {
        return Err(Error::Shape(format!(
            "nms over {k} boxes exceeds the mask kernel's grid (at most {} boxes)",
            65535 * NMS_BLOCK
        )));
    }
    Ok(Some(launch::LaunchShape {
        grid: (cb as u32, cb as u32, 1),
        block: (NMS_BLOCK as u32, 1, 1),
        shared_mem_bytes: 0,
    }))
}

/// The greedy pass over an nms_mask result (torchvision's host loop): row i
/// (the i-th box in score order) is kept unless an earlier kept row's bits
/// suppress it. Returns the kept rows in order.
pub fn nms_greedy(mask: &[u64], k: usize) -> Vec<usize> {
    let cb = nms_col_blocks(k);
    let mut removed = vec![0u64; cb];
    let mut keep = Vec::new();
    for i in 0..k {
        let (word, bit) = (i / NMS_BLOCK, i % NMS_BLOCK);
        if removed[word] & (1u64 << bit) != 0 {
            continue;
        }
        keep.push(i);
        let row = &mask[i * cb..(i + 1) * cb];
        // only words at or after i's own block were written by the kernel
        for (r, &m) in removed[word..].iter_mut().zip(&row[word..]) {
            *r |= m;
        }
    }
    keep
}

impl KernelLibrary {
    /// RoIAlign forward: y [K, PH, PW, C] (dtype) from x [N, H, W, C] and
    /// boxes [K, 5] (dtype).
    ///
    /// # Safety
    /// x: `d.input_len()` elements of `dtype`; boxes: 5*K; y: `d.output_len()`.
    pub unsafe fn roi_align_fwd(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        x: DevPtr,
        boxes: DevPtr,
        y: DevPtr,
        d: &RoiAlignDims,
    ) -> Result<()> {
        self.roi_align(stream, "roi_align_fwd", dtype, x, boxes, y, d)
    }

    /// RoIAlign backward: atomically adds dy's contributions into the f32
    /// dx [N, H, W, C], which the caller must have zeroed. Summation order
    /// varies between runs (atomics), so dx is not bitwise deterministic.
    ///
    /// # Safety
    /// dy: `d.output_len()` elements of `dtype`; boxes: 5*K of `dtype`;
    /// dx: `d.input_len()` f32.
    pub unsafe fn roi_align_bwd(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        dy: DevPtr,
        boxes: DevPtr,
        dx: DevPtr,
        d: &RoiAlignDims,
    ) -> Result<()> {
        self.roi_align(stream, "roi_align_bwd", dtype, dy, boxes, dx, d)
    }

    #[allow(clippy::too_many_arguments)]
    unsafe fn roi_align(
        &self,
        stream: &CudaStream,
        kernel: &str,
        dtype: Dtype,
        src: DevPtr,
        boxes: DevPtr,
        dst: DevPtr,
        d: &RoiAlignDims,
    ) -> Result<()> {
        let a = d.args()?;
        let Some(shape) = launch::elementwise(d.output_len(), 1, &self.gpu) else {
            return Ok(());
        };
        let name = format!("{kernel}_{}", dtype.suffix());
        let f = self.function(&name)?;
        let aligned = d.aligned as i32;
        let mut b = stream.launch_builder(&f);
        b.arg(&src).arg(&boxes).arg(&dst);
        for v in &a {
            b.arg(v);
        }
        b.arg(&d.spatial_scale).arg(&d.sampling_ratio).arg(&aligned);
        b.launch(config(shape)).map_err(driver(&name))?;
        Ok(())
    }

    /// The NMS IoU mask: u64 [K, nms_col_blocks(K)], row i bit b of word w
    /// set when box order[i] and box order[w*64 + b] (> i) have IoU >
    /// `threshold`. Words before row i's own block are left unwritten.
    ///
    /// # Safety
    /// boxes: 4*K elements of `dtype`; order: K int32 in [0, K); mask:
    /// K * nms_col_blocks(K) u64.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn nms_mask(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        boxes: DevPtr,
        order: DevPtr,
        mask: DevPtr,
        k: usize,
        threshold: f64,
    ) -> Result<()> {
        let Some(shape) = nms_launch(k)? else {
            return Ok(());
        };
        let name = format!("nms_mask_{}", dtype.suffix());
        let f = self.function(&name)?;
        let k = int("nms boxes", k)?;
        let mut b = stream.launch_builder(&f);
        b.arg(&boxes).arg(&order).arg(&mask).arg(&k).arg(&threshold);
        b.launch(config(shape)).map_err(driver(&name))?;
        Ok(())
    }
}

#[cfg(test)]
mod detection_tests {
    use super::*;

    #[test]
    fn roi_align_args_follow_roi_align_cu_order() {
        let d = RoiAlignDims {
            n: 2,
            c: 256,
            h: 50,
            w: 68,
            k: 300,
            ph: 7,
            pw: 6,
            spatial_scale: 0.0625,
            sampling_ratio: 2,
            aligned: true,
        };
        assert_eq!(d.args().unwrap(), [2, 256, 50, 68, 300, 7, 6]);
        assert_eq!(d.input_len(), 2 * 50 * 68 * 256);
        assert_eq!(d.output_len(), 300 * 7 * 6 * 256);
        assert!(RoiAlignDims { c: 1 << 31, ..d }.args().is_err());
        assert!(RoiAlignDims {
            h: 1 << 16,
            w: 1 << 16,
            ..d
        }
        .args()
        .is_err());
    }

    #[test]
    fn nms_launch_covers_every_block_pair() {
        assert!(nms_launch(0).unwrap().is_none());
        let s = nms_launch(1).unwrap().unwrap();
        assert_eq!((s.grid, s.block), ((1, 1, 1), (64, 1, 1)));
        let s = nms_launch(129).unwrap().unwrap();
        assert_eq!(s.grid, (3, 3, 1));
        assert_eq!(nms_col_blocks(128), 2);
        assert!(nms_launch(65536 * 64).is_err());
    }

    #[test]
    fn nms_greedy_follows_kept_rows_only() {
        // 3 boxes: 0 suppresses 1; 1 would suppress 2 but is itself removed
        let mask = [0b010u64, 0b100, 0];
        assert_eq!(nms_greedy(&mask, 3), vec![0, 2]);
        // 70 boxes (two words): row 0 suppresses row 65 in word 1
        let mut mask = vec![0u64; 70 * 2];
        mask[1] = 1 << 1;
        let keep = nms_greedy(&mask, 70);
        assert_eq!(keep.len(), 69);
        assert!(!keep.contains(&65));
    }
}
