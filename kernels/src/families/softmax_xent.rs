//! Softmax cross-entropy over logits [N, V] (softmax_xent.cu).

use crate::library::{config, driver, DevPtr, Dtype, KernelLibrary};
use crate::error::Result;
use crate::launch::{self, to_i32};
use crate::source::Kernel;
use cudarc::driver::{CudaStream, PushKernelArg};

pub const KERNEL: Kernel = kernel!("softmax_xent",
    typed ["xent_fwd", "xent_bwd"]
    untyped ["xent_finalize"]);

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
    /// Cross-entropy forward: xent_fwd (per-row loss, lse, bad-target flag)
    /// then xent_finalize (stats = [mean loss, valid rows]).
    ///
    /// # Safety
    /// Every pointer of `a` live with the documented sizes; logits [N, V] of
    /// `dtype`, row-major; `bad_target` zeroed before.
    pub unsafe fn xent_forward(&self, stream: &CudaStream, dtype: Dtype, a: &Xent) -> Result<()> {
        let (n, v) = (to_i32("N", a.n)?, to_i32("V", a.v)?);
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
        let (n, v) = (to_i32("N", a.n)?, to_i32("V", a.v)?);
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
