//! Dense elementwise ops and dtype casts (elementwise.cu).

use crate::library::{config, driver, DevPtr, Dtype, KernelLibrary};
use crate::error::{Error, Result};
use crate::launch;
use crate::source::Kernel;
use cudarc::driver::{CudaStream, PushKernelArg};

pub const KERNEL: Kernel = kernel!("elementwise",
    typed ["add", "scale", "relu_fwd", "relu_bwd", "add_bcast"]
    untyped ["cast_f32_to_f16", "cast_f32_to_bf16", "cast_f16_to_f32", "cast_bf16_to_f32",
             "cast_f16_to_bf16", "cast_bf16_to_f16"]);

/// Elementwise binary ops of elementwise.cu (dense operands of one dtype).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    /// out = a + b
    Add,
    /// dx = y > 0 ? dy : 0 (a = y, the ReLU output; b = dy)
    ReluBwd,
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
        let Some(shape) = launch::elementwise(n, pack, &self.gpu()) else {
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
        let Some(shape) = launch::elementwise(n, 1, &self.gpu()) else {
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
        let Some(shape) = launch::elementwise(n, pack, &self.gpu()) else {
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
        let Some(shape) = launch::elementwise(n, pack, &self.gpu()) else {
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
            &self.gpu(),
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
