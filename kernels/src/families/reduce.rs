//! Whole-tensor and axis sums and global average pooling (reduce.cu). Its
//! all-finite / unscale / found_to_f32 / amp_update_scale entry points are launched by the
//! engine's loss scaling and finite checks (engine/src/ops/optim/cuda.rs).

use crate::library::{config, driver, DevPtr, Dtype, KernelLibrary};
use crate::error::{Error, Result};
use crate::launch::{self, column_block, elementwise, to_i32, Gpu, LaunchShape};
use crate::source::Kernel;
use cudarc::driver::{CudaStream, PushKernelArg};

pub const KERNEL: Kernel = kernel!("reduce",
    typed ["sum_partial", "all_finite_multi", "gap_fwd", "gap_bwd", "sum_cols", "sum_rows"]
    untyped ["sum_finalize", "unscale_check_f32", "found_to_f32", "amp_update_scale"]);

/// Most blocks (= f32 partials) of the two-launch whole-tensor sum: few
/// enough that sum_finalize's single block adds them quickly, enough to
/// fill an H100 several times over.
pub const SUM_MAX_PARTIALS: u32 = 1024;

/// sum_partial over `n` elements moved `pack` at a time: the elementwise
/// shape capped at [`SUM_MAX_PARTIALS`] blocks (grid.x = partial count).
/// None when n == 0.
pub fn sum_partial(n: usize, pack: usize, gpu: &Gpu) -> Option<LaunchShape> {
    let mut s = elementwise(n, pack, gpu)?;
    s.grid.0 = s.grid.0.min(SUM_MAX_PARTIALS);
    Some(s)
}

/// gap_fwd over x [N, HW, C]: the column-reduction block, grid (channel
/// groups, N).
pub fn gap_fwd_shape(n: usize, hw: usize, c: usize, pack: usize) -> Result<LaunchShape> {
    if n == 0 || hw == 0 || c == 0 {
        return Err(Error::Shape(format!(
            "global average pool over an empty [N={n}, HW={hw}, C={c}]"
        )));
    }
    to_i32("HW", hw)?;
    to_i32("C", c)?;
    if n > 65535 {
        return Err(Error::Shape(format!(
            "N = {n} exceeds grid.y (65535); split the batch"
        )));
    }
    let (bx, by) = column_block(c, pack);
    let groups = c.div_ceil(bx as usize * pack.max(1));
    Ok(LaunchShape::new((groups as u32, n as u32, 1), (bx, by, 1)))
}

impl KernelLibrary {
    /// out[0] (f32) = sum of n elements of x: sum_partial then sum_finalize.
    /// n == 0 writes 0.
    ///
    /// # Safety
    /// x: n elements of `dtype`; partials: f32 workspace of
    /// [`SUM_MAX_PARTIALS`] floats; out: one f32.
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
            match sum_partial(n, launch::pack_width(&[x as usize], None), &self.gpu()) {
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
        self.sum_finalize(stream, partials, count, out)
    }

    /// out[0] (f32) = the sum (in double) of `count` f32 partials.
    ///
    /// # Safety
    /// partials: `count` f32; out: one f32.
    pub(crate) unsafe fn sum_finalize(
        &self,
        stream: &CudaStream,
        partials: DevPtr,
        count: i32,
        out: DevPtr,
    ) -> Result<()> {
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
            let Some(shape) = launch::elementwise(outer * inner, 1, &self.gpu()) else {
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
        let shape = gap_fwd_shape(n, hw, c, pack)?;
        let name = format!("gap_fwd_{}", dtype.suffix());
        let f = self.function(&name)?;
        let (hw, c) = (to_i32("HW", hw)?, to_i32("C", c)?);
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
        let Some(shape) = launch::elementwise(n * hw * c, pack, &self.gpu()) else {
            return Ok(());
        };
        let name = format!("gap_bwd_{}", dtype.suffix());
        let f = self.function(&name)?;
        let (n, hw, c) = (to_i32("N", n)?, to_i32("HW", hw)?, to_i32("C", c)?);
        let mut b = stream.launch_builder(&f);
        b.arg(&dy).arg(&dx).arg(&n).arg(&hw).arg(&c);
        b.launch(config(shape)).map_err(driver(&name))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const G: Gpu = Gpu::H100;

    #[test]
    fn sum_partial_caps_the_partial_count() {
        assert_eq!(sum_partial(0, 8, &G), None);
        assert_eq!(sum_partial(10, 8, &G).unwrap().grid.0, 1);
        // 256 * 8 * 300 elements: 300 blocks, under the cap
        assert_eq!(sum_partial(256 * 8 * 300, 8, &G).unwrap().grid.0, 300);
        let big = sum_partial(1 << 30, 8, &G).unwrap();
        assert_eq!(big.grid.0, SUM_MAX_PARTIALS);
        assert_eq!(big.threads_per_block(), launch::BLOCK_THREADS);
    }

    #[test]
    fn gap_fwd_block_per_image() {
        let s = gap_fwd_shape(256, 49, 2048, 8).unwrap();
        assert_eq!((s.grid, s.block), ((8, 256, 1), (32, 8, 1)));
        assert!(gap_fwd_shape(70000, 49, 2048, 8).is_err());
    }
}
