//! Anchor / proposal matching and balanced sampling (matching.cu): the
//! launchers of `engine::ops::detection::match_boxes` and
//! `sample_balanced` on the GPU.

use crate::error::{Error, Result};
use crate::launch;
use crate::library::{config, driver, DevPtr, Dtype, KernelLibrary};
use crate::source::Kernel;
use cudarc::driver::{CudaStream, PushKernelArg};

pub const KERNEL: Kernel = kernel!("matching",
    typed ["match_rows", "match_cols"]
    untyped ["match_rows_f64", "match_cols_f64", "sample_hist", "sample_select",
             "sample_chunk_counts", "sample_scan", "sample_scatter", "sample_fill"]);

/// `SAMPLE_CHUNK` in matching.cu: labels per compaction chunk.
pub const SAMPLE_CHUNK: usize = 2048;
/// The radix passes of the key select: one per byte of the u64 key.
const SAMPLE_PASSES: i32 = 8;
/// Bytes of the sampler's state (8 u64) and of its histogram (2 x 256 u32)
/// at the start of its scratch.
const SAMPLE_STATE_BYTES: usize = 64;
const SAMPLE_HIST_BYTES: usize = 2 * 256 * 4;

/// The compaction chunks of `n` labels.
pub fn sample_chunks(n: usize) -> usize {
    n.div_ceil(SAMPLE_CHUNK)
}

/// Bytes of the scratch [`KernelLibrary::sample_balanced`] takes for `n`
/// labels (state, histogram, two u32 per chunk); the caller zeroes its
/// first [`sample_scratch_zeroed`] bytes.
pub fn sample_scratch_bytes(n: usize) -> usize {
    SAMPLE_STATE_BYTES + SAMPLE_HIST_BYTES + 8 * sample_chunks(n)
}

/// The leading scratch bytes that must be zero before the launch.
pub fn sample_scratch_zeroed() -> usize {
    SAMPLE_STATE_BYTES + SAMPLE_HIST_BYTES
}

/// The most labels the sampler takes (its chunk offsets are u32).
pub const SAMPLE_MAX_LABELS: usize = 1 << 31;

impl KernelLibrary {
    /// torchvision's Matcher on quality [G, N] (row-major, `dtype`; None
    /// means f64) with the RPN's (`gt_labels` 0) or the ROI heads' label
    /// rule: matches [N] and labels [N] i64. `best` is scratch of G
    /// elements of the compute type (f32, f64 for f64): read only with
    /// `allow_low`. `high` / `low` are the thresholds already rounded to
    /// the dtype.
    ///
    /// # Safety
    /// quality: G*N elements of the dtype; best: G * (8 for f64, else 4)
    /// bytes; gt_labels: 0 or G i64; matches, labels: N i64 each.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn match_boxes(
        &self,
        stream: &CudaStream,
        dtype: Option<Dtype>,
        quality: DevPtr,
        best: DevPtr,
        gt_labels: DevPtr,
        matches: DevPtr,
        labels: DevPtr,
        g: usize,
        n: usize,
        high: f64,
        low: f64,
        allow_low: bool,
    ) -> Result<()> {
        let Some(cols) = launch::elementwise(n, 1, &self.gpu()) else {
            return Ok(());
        };
        let sfx = dtype.map_or("f64", Dtype::suffix);
        let (gi, ni) = (g as i64, n as i64);
        if allow_low {
            if let Some(rows) = launch::rows(g) {
                let name = format!("match_rows_{sfx}");
                let f = self.function(&name)?;
                let mut b = stream.launch_builder(&f);
                b.arg(&quality).arg(&best).arg(&gi).arg(&ni);
                b.launch(config(rows)).map_err(driver(&name))?;
            }
        }
        let name = format!("match_cols_{sfx}");
        let f = self.function(&name)?;
        let allow = allow_low as i32;
        let (h32, l32) = (high as f32, low as f32);
        let mut b = stream.launch_builder(&f);
        b.arg(&quality).arg(&best).arg(&gt_labels).arg(&matches).arg(&labels);
        b.arg(&gi).arg(&ni);
        if dtype.is_none() {
            b.arg(&high).arg(&low);
        } else {
            b.arg(&h32).arg(&l32);
        }
        b.arg(&allow);
        b.launch(config(cols)).map_err(driver(&name))?;
        Ok(())
    }

    /// torchvision's balanced sampler on labels [n] i64 (n >= 1) with the
    /// keys of `seed`: positive [cap_pos] and negative [cap_neg] i64 (the
    /// chosen indices increasing, then n), counts [2] i64 (num_pos,
    /// num_neg). `target` and `batch` are the positive target and the
    /// batch, each at most n (min(x, n) counts the same). `scratch` holds
    /// [`sample_scratch_bytes`]`(n)` bytes, the first
    /// [`sample_scratch_zeroed`] of them zero.
    ///
    /// # Safety
    /// labels: n i64; scratch as above; positive: cap_pos i64; negative:
    /// cap_neg i64; counts: 2 i64; cap_pos >= min(target, n), cap_neg >=
    /// min(batch, n).
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn sample_balanced(
        &self,
        stream: &CudaStream,
        labels: DevPtr,
        n: usize,
        seed: u64,
        target: usize,
        batch: usize,
        scratch: DevPtr,
        positive: DevPtr,
        cap_pos: usize,
        negative: DevPtr,
        cap_neg: usize,
        counts: DevPtr,
    ) -> Result<()> {
        if n == 0 || n > SAMPLE_MAX_LABELS || target > n || batch > n || target > batch {
            return Err(Error::Shape(format!(
                "sample_balanced of {n} labels (1..={SAMPLE_MAX_LABELS}) with target {target} \
                 and batch {batch} (target <= batch <= n)"
            )));
        }
        let gpu = self.gpu();
        let all = launch::elementwise(n, 1, &gpu).expect("n >= 1");
        let one = launch::single_block();
        let st = scratch;
        let hist = scratch + SAMPLE_STATE_BYTES as u64;
        let offsets = hist + SAMPLE_HIST_BYTES as u64;
        let (ni, ti, bi) = (n as i64, target as i64, batch as i64);
        for pass in 0..SAMPLE_PASSES {
            let f = self.function("sample_hist")?;
            let mut b = stream.launch_builder(&f);
            b.arg(&labels).arg(&ni).arg(&seed).arg(&st).arg(&hist).arg(&pass);
            b.launch(config(all)).map_err(driver("sample_hist"))?;
            let f = self.function("sample_select")?;
            let mut b = stream.launch_builder(&f);
            b.arg(&st).arg(&hist).arg(&counts).arg(&ti).arg(&bi).arg(&pass);
            b.launch(config(one)).map_err(driver("sample_select"))?;
        }
        let chunks = sample_chunks(n);
        let ci = chunks as i64;
        let per_chunk = launch::rows(chunks).expect("n >= 1");
        let f = self.function("sample_chunk_counts")?;
        let mut b = stream.launch_builder(&f);
        b.arg(&labels).arg(&ni).arg(&seed).arg(&st).arg(&offsets).arg(&ci);
        b.launch(config(per_chunk)).map_err(driver("sample_chunk_counts"))?;
        let f = self.function("sample_scan")?;
        let mut b = stream.launch_builder(&f);
        b.arg(&offsets).arg(&ci);
        b.launch(config(one)).map_err(driver("sample_scan"))?;
        let f = self.function("sample_scatter")?;
        let mut b = stream.launch_builder(&f);
        b.arg(&labels).arg(&ni).arg(&seed).arg(&st).arg(&offsets).arg(&ci);
        b.arg(&positive).arg(&negative);
        b.launch(config(per_chunk)).map_err(driver("sample_scatter"))?;
        if let Some(tail) = launch::elementwise(cap_pos + cap_neg, 1, &gpu) {
            let (cp, cn) = (cap_pos as i64, cap_neg as i64);
            let f = self.function("sample_fill")?;
            let mut b = stream.launch_builder(&f);
            b.arg(&st).arg(&ni).arg(&positive).arg(&cp).arg(&negative).arg(&cn);
            b.launch(config(tail)).map_err(driver("sample_fill"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_holds_state_histogram_and_two_offsets_a_chunk() {
        assert_eq!(sample_chunks(1), 1);
        assert_eq!(sample_chunks(SAMPLE_CHUNK), 1);
        assert_eq!(sample_chunks(SAMPLE_CHUNK + 1), 2);
        assert_eq!(sample_scratch_bytes(268_569), 64 + 2048 + 8 * 132);
        assert_eq!(sample_scratch_zeroed(), 64 + 2048);
    }

    #[test]
    fn the_cu_chunk_is_the_launchers() {
        let src = KERNEL.source;
        assert!(src.contains(&format!("#define SAMPLE_CHUNK {SAMPLE_CHUNK}")));
    }
}
