//! The IoU bit mask of NMS on the GPU (nms.cu) and the greedy pass over it
//! on the host; the IoU matrix of two box sets.

use crate::library::{config, driver, DevPtr, Dtype, KernelLibrary};
use crate::error::{Error, Result};
use crate::launch::{self, to_i32, LaunchShape};
use crate::source::Kernel;
use cudarc::driver::{CudaStream, PushKernelArg};

pub const KERNEL: Kernel = kernel!("nms",
    typed ["nms_mask", "box_iou"]
    untyped []);

/// Boxes per NMS mask block: one 64-bit word of the mask.
pub const NMS_BLOCK: usize = 64;

/// Words per mask row for K boxes.
pub fn nms_col_blocks(k: usize) -> usize {
    k.div_ceil(NMS_BLOCK)
}

/// The nms_mask launch for K boxes: a (col_blocks x col_blocks) grid of
/// 64-thread blocks; None when K == 0.
pub fn nms_launch(k: usize) -> Result<Option<LaunchShape>> {
    if k == 0 {
        return Ok(None);
    }
    let cb = nms_col_blocks(k);
    // grid.y is limited to 65535 blocks
    if cb > 65535 || to_i32("nms boxes", k).is_err() {
        return Err(Error::Shape(format!(
            "nms over {k} boxes exceeds the mask kernel's grid (at most {} boxes)",
            65535 * NMS_BLOCK
        )));
    }
    Ok(Some(LaunchShape {
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
    /// The NMS IoU mask: u64 [K, nms_col_blocks(K)], row i bit b of word w
    /// set when box order[i] and box order[w*64 + b] (> i) have IoU >
    /// `threshold` and, when `cats` is not null (0), the same category
    /// (batched NMS). Words before row i's own block are left unwritten.
    ///
    /// # Safety
    /// boxes: 4*K elements of `dtype`; order: K int32 in [0, K); cats: null
    /// or K i64; mask: K * nms_col_blocks(K) u64.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn nms_mask(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        boxes: DevPtr,
        order: DevPtr,
        cats: DevPtr,
        mask: DevPtr,
        k: usize,
        threshold: f64,
    ) -> Result<()> {
        let Some(shape) = nms_launch(k)? else {
            return Ok(());
        };
        let name = format!("nms_mask_{}", dtype.suffix());
        let f = self.function(&name)?;
        let k = to_i32("nms boxes", k)?;
        let mut b = stream.launch_builder(&f);
        b.arg(&boxes).arg(&order).arg(&cats).arg(&mask).arg(&k).arg(&threshold);
        b.launch(config(shape)).map_err(driver(&name))?;
        Ok(())
    }

    /// out [N, M] (`dtype`, row-major) = IoU of boxes a [N, 4] and b [M, 4].
    ///
    /// # Safety
    /// a: 4*N elements of `dtype`; b: 4*M; out: N*M.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn box_iou(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        a: DevPtr,
        b: DevPtr,
        out: DevPtr,
        n: usize,
        m: usize,
    ) -> Result<()> {
        let Some(shape) = launch::elementwise(n * m, 1, &self.gpu()) else {
            return Ok(());
        };
        let name = format!("box_iou_{}", dtype.suffix());
        let f = self.function(&name)?;
        let (n, m) = (n as i64, m as i64);
        let mut l = stream.launch_builder(&f);
        l.arg(&a).arg(&b).arg(&out).arg(&n).arg(&m);
        l.launch(config(shape)).map_err(driver(&name))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
