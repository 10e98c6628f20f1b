//! torchvision's BoxCoder encode / decode on the GPU, f32 (box_coder.cu).

use crate::error::Result;
use crate::launch;
use crate::library::{config, driver, DevPtr, KernelLibrary};
use crate::source::Kernel;
use cudarc::driver::{CudaStream, PushKernelArg};

pub const KERNEL: Kernel = kernel!("box_coder",
    typed []
    untyped ["box_encode_f32", "box_decode_f32"]);

impl KernelLibrary {
    /// out [N, 4] = the encoding of reference boxes `reference` [N, 4]
    /// against `proposals` [N, 4] with `weights` (wx, wy, ww, wh), all f32.
    ///
    /// # Safety
    /// reference, proposals, out: 4*N f32 each.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn box_encode(
        &self,
        stream: &CudaStream,
        reference: DevPtr,
        proposals: DevPtr,
        out: DevPtr,
        n: usize,
        weights: [f32; 4],
    ) -> Result<()> {
        let Some(shape) = launch::elementwise(n, 1, &self.gpu()) else {
            return Ok(());
        };
        let name = "box_encode_f32";
        let f = self.function(name)?;
        let n = n as i64;
        let mut b = stream.launch_builder(&f);
        b.arg(&reference).arg(&proposals).arg(&out).arg(&n);
        for w in &weights {
            b.arg(w);
        }
        b.launch(config(shape)).map_err(driver(name))?;
        Ok(())
    }

    /// out [N, 4K] = `rel_codes` [N, 4K] decoded against `boxes` [N, 4]
    /// with `weights` and dw / dh clamped above at `clip`, all f32.
    ///
    /// # Safety
    /// rel_codes, out: 4*N*K f32; boxes: 4*N f32.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn box_decode(
        &self,
        stream: &CudaStream,
        rel_codes: DevPtr,
        boxes: DevPtr,
        out: DevPtr,
        n: usize,
        k: usize,
        weights: [f32; 4],
        clip: f32,
    ) -> Result<()> {
        let Some(shape) = launch::elementwise(n * k, 1, &self.gpu()) else {
            return Ok(());
        };
        let name = "box_decode_f32";
        let f = self.function(name)?;
        let (n, k) = (n as i64, k as i64);
        let mut b = stream.launch_builder(&f);
        b.arg(&rel_codes).arg(&boxes).arg(&out).arg(&n).arg(&k);
        for w in &weights {
            b.arg(w);
        }
        b.arg(&clip);
        b.launch(config(shape)).map_err(driver(name))?;
        Ok(())
    }
}
