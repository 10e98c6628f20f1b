//! The RPN's proposal filter on the GPU (proposals.cu): clip + score +
//! validity, the per-(image, level) IoU bit masks, the greedy NMS scan per
//! (image, level) and the ranking of the kept into the output rows; f32
//! and f64. The level table and image sizes travel by value in the launch
//! arguments: nothing is uploaded or read back.

use crate::error::{Error, Result};
use crate::launch::{self, LaunchShape, BLOCK_THREADS};
use crate::library::{config, driver, DevPtr, KernelLibrary};
use crate::source::Kernel;
use cudarc::driver::{CudaStream, DeviceRepr, PushKernelArg};

pub const KERNEL: Kernel = kernel!("proposals",
    typed []
    untyped [
        "proposals_prep_f32",
        "proposals_prep_f64",
        "proposals_mask_f32",
        "proposals_mask_f64",
        "proposals_rank_f32",
        "proposals_rank_f64",
        "proposals_scan",
    ]);

/// The most level segments (proposals.cu's PROP_MAX_LEVELS).
pub const PROPOSAL_MAX_LEVELS: usize = 64;
/// Images per prep launch (PROP_MAX_IMAGES); more take several launches.
pub const PROPOSAL_MAX_IMAGES: usize = 64;
/// The longest segment: the scan's shared bit sets hold 256 words
/// (PROP_MAX_WORDS).
pub const PROPOSAL_MAX_SEGMENT: usize = 256 * 64;
/// Columns per mask word and threads of a mask block (PROP_MASK_BLOCK).
pub const PROPOSAL_MASK_BLOCK: usize = 64;
/// The most candidates of a batch (B K): every index fits an int32.
pub const PROPOSAL_MAX_CANDIDATES: usize = i32::MAX as usize / 4;

/// The float width of a launch: the kernels exist in f32 and f64.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PropDtype {
    F32,
    F64,
}

impl PropDtype {
    fn suffix(self) -> &'static str {
        match self {
            PropDtype::F32 => "f32",
            PropDtype::F64 => "f64",
        }
    }
}

/// The checked shape of one filter: `batch` images of `k` candidates in
/// level segments `levels` (start, len), `p` output rows per image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProposalDims {
    pub batch: usize,
    pub k: usize,
    pub levels: Vec<(usize, usize)>,
    pub p: usize,
}

/// proposals.cu's `PropLevels`.
#[repr(C)]
#[derive(Clone, Copy)]
struct PropLevelsArg {
    n: i32,
    start: [i32; PROPOSAL_MAX_LEVELS],
    len: [i32; PROPOSAL_MAX_LEVELS],
    off: [i32; PROPOSAL_MAX_LEVELS],
}

// SAFETY: plain old data with the C layout of proposals.cu's struct.
unsafe impl DeviceRepr for PropLevelsArg {}

/// proposals.cu's `PropSizes<T>`.
#[repr(C)]
#[derive(Clone, Copy)]
struct PropSizesArg<T> {
    h: [T; PROPOSAL_MAX_IMAGES],
    w: [T; PROPOSAL_MAX_IMAGES],
}

// SAFETY: plain old data with the C layout of proposals.cu's struct.
unsafe impl DeviceRepr for PropSizesArg<f32> {}
// SAFETY: as above.
unsafe impl DeviceRepr for PropSizesArg<f64> {}

impl ProposalDims {
    /// Checks the segments (at most [`PROPOSAL_MAX_LEVELS`], each at most
    /// [`PROPOSAL_MAX_SEGMENT`], contiguous, covering 0..k), B K at most
    /// [`PROPOSAL_MAX_CANDIDATES`] and p <= k.
    pub fn new(
        batch: usize,
        k: usize,
        levels: &[(usize, usize)],
        p: usize,
    ) -> Result<ProposalDims> {
        if levels.len() > PROPOSAL_MAX_LEVELS {
            return Err(Error::Shape(format!(
                "proposals: {} level segments, at most {PROPOSAL_MAX_LEVELS}",
                levels.len()
            )));
        }
        let mut next = 0;
        for &(s, n) in levels {
            if s != next || n > PROPOSAL_MAX_SEGMENT {
                return Err(Error::Shape(format!(
                    "proposals: segments {levels:?} must be contiguous from 0, each at most \
                     {PROPOSAL_MAX_SEGMENT} long"
                )));
            }
            next += n;
        }
        if next != k || p > k || batch.saturating_mul(k) > PROPOSAL_MAX_CANDIDATES {
            return Err(Error::Shape(format!(
                "proposals: segments covering {next} of {k} columns, {p} rows of output, \
                 {batch} images (at most {PROPOSAL_MAX_CANDIDATES} candidates a batch)"
            )));
        }
        Ok(ProposalDims {
            batch,
            k,
            levels: levels.to_vec(),
            p,
        })
    }

    /// Mask words per row of a segment of `len` columns.
    pub fn col_blocks(len: usize) -> usize {
        len.div_ceil(PROPOSAL_MASK_BLOCK)
    }

    /// Each segment's first word in its image's mask.
    pub fn mask_offsets(&self) -> Vec<usize> {
        let mut off = 0;
        self.levels
            .iter()
            .map(|&(_, n)| {
                let o = off;
                off += n * Self::col_blocks(n);
                o
            })
            .collect()
    }

    /// u64 words of one image's mask (every segment's).
    pub fn mask_words_per_image(&self) -> usize {
        self.levels
            .iter()
            .map(|&(_, n)| n * Self::col_blocks(n))
            .sum()
    }

    /// The longest segment's mask words per row.
    fn cbmax(&self) -> usize {
        self.levels
            .iter()
            .map(|&(_, n)| Self::col_blocks(n))
            .max()
            .unwrap_or(0)
    }

    fn levels_arg(&self) -> Result<PropLevelsArg> {
        let mut a = PropLevelsArg {
            n: self.levels.len() as i32,
            start: [0; PROPOSAL_MAX_LEVELS],
            len: [0; PROPOSAL_MAX_LEVELS],
            off: [0; PROPOSAL_MAX_LEVELS],
        };
        for (l, (&(s, n), o)) in self.levels.iter().zip(self.mask_offsets()).enumerate() {
            a.start[l] = i32(s)?;
            a.len[l] = i32(n)?;
            a.off[l] = i32(o)?;
        }
        Ok(a)
    }

    /// The mask launch: grid (cbmax, cbmax x levels, images up to 65535),
    /// 64 threads; None when there is nothing to compare.
    pub fn mask_launch(&self) -> Option<LaunchShape> {
        let cb = self.cbmax();
        if cb == 0 || self.batch == 0 {
            return None;
        }
        Some(LaunchShape {
            grid: (
                cb as u32,
                (cb * self.levels.len()) as u32,
                self.batch.min(65535) as u32,
            ),
            block: (PROPOSAL_MASK_BLOCK as u32, 1, 1),
            shared_mem_bytes: 0,
        })
    }

    /// The scan launch: grid (levels, images up to 65535), 256 threads.
    pub fn scan_launch(&self) -> Option<LaunchShape> {
        if self.levels.is_empty() || self.batch == 0 || self.k == 0 {
            return None;
        }
        Some(LaunchShape {
            grid: (self.levels.len() as u32, self.batch.min(65535) as u32, 1),
            block: (BLOCK_THREADS, 1, 1),
            shared_mem_bytes: 0,
        })
    }

    /// The rank launch: grid (ceil(K / 256), images up to 65535), 256
    /// threads; None when no row is written.
    pub fn rank_launch(&self) -> Option<LaunchShape> {
        if self.batch == 0 || self.k == 0 || self.p == 0 {
            return None;
        }
        Some(LaunchShape {
            grid: (
                self.k.div_ceil(BLOCK_THREADS as usize) as u32,
                self.batch.min(65535) as u32,
                1,
            ),
            block: (BLOCK_THREADS, 1, 1),
            shared_mem_bytes: 0,
        })
    }
}

fn i32(v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::Shape(format!("proposals: {v} exceeds int32")))
}

/// The sizes of images `b0..b0 + n` (n <= PROPOSAL_MAX_IMAGES) in T, as the
/// CPU converts them (usize -> f64 -> T).
fn sizes_arg<T: Copy + Default>(
    sizes: &[(usize, usize)],
    conv: impl Fn(f64) -> T,
) -> PropSizesArg<T> {
    let mut a = PropSizesArg {
        h: [T::default(); PROPOSAL_MAX_IMAGES],
        w: [T::default(); PROPOSAL_MAX_IMAGES],
    };
    for (i, &(h, w)) in sizes.iter().enumerate() {
        a.h[i] = conv(h as f64);
        a.w[i] = conv(w as f64);
    }
    a
}

impl KernelLibrary {
    /// clipped [B, K, 4], scores [B, K] (dtype) and valid [B, K] (u8) of
    /// boxes [B, K, 4] and logits [B, K] (dtype): every box clamped to [0,
    /// w] x [0, h] of its image (`image_sizes`, one per image), score =
    /// sigmoid(logit), valid = width and height >= `min_size` and score >=
    /// `score_thresh` (both rounded to dtype). One launch per 64 images.
    ///
    /// # Safety
    /// boxes, clipped: 4 B K of dtype; logits, scores: B K of dtype; valid:
    /// B K bytes; `image_sizes.len() == d.batch`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn proposals_prep(
        &self,
        stream: &CudaStream,
        dtype: PropDtype,
        d: &ProposalDims,
        image_sizes: &[(usize, usize)],
        min_size: f64,
        score_thresh: f64,
        boxes: DevPtr,
        logits: DevPtr,
        clipped: DevPtr,
        scores: DevPtr,
        valid: DevPtr,
    ) -> Result<()> {
        if image_sizes.len() != d.batch {
            return Err(Error::Shape(format!(
                "proposals: {} image sizes for {} images",
                image_sizes.len(),
                d.batch
            )));
        }
        let name = format!("proposals_prep_{}", dtype.suffix());
        let f = self.function(&name)?;
        let k = d.k as i64;
        for (c, chunk) in image_sizes.chunks(PROPOSAL_MAX_IMAGES).enumerate() {
            let Some(shape) = launch::elementwise(chunk.len() * d.k, 1, &self.gpu()) else {
                continue;
            };
            let b0 = (c * PROPOSAL_MAX_IMAGES) as i64;
            let nb = chunk.len() as i32;
            let mut b = stream.launch_builder(&f);
            b.arg(&boxes)
                .arg(&logits)
                .arg(&clipped)
                .arg(&scores)
                .arg(&valid)
                .arg(&b0)
                .arg(&nb)
                .arg(&k);
            match dtype {
                PropDtype::F32 => {
                    let s = sizes_arg(chunk, |v| v as f32);
                    let (m, t) = (min_size as f32, score_thresh as f32);
                    b.arg(&s).arg(&m).arg(&t);
                    b.launch(config(shape)).map_err(driver(&name))?;
                }
                PropDtype::F64 => {
                    let s = sizes_arg(chunk, |v| v);
                    b.arg(&s).arg(&min_size).arg(&score_thresh);
                    b.launch(config(shape)).map_err(driver(&name))?;
                }
            }
        }
        Ok(())
    }

    /// The greedy NMS of every (image, level) segment: mask (u64, B x
    /// `d.mask_words_per_image()` words, scratch) gets the IoU bits (IoU >
    /// `threshold`) of the clipped boxes, then kept [B, K] (u8, zeroed by
    /// the caller) gets 1 at every column the scan of its segment, in
    /// column order over the valid columns, keeps.
    ///
    /// # Safety
    /// clipped: 4 B K of dtype; valid, kept: B K bytes; mask: B x
    /// `d.mask_words_per_image()` u64.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn proposals_nms(
        &self,
        stream: &CudaStream,
        dtype: PropDtype,
        d: &ProposalDims,
        threshold: f64,
        clipped: DevPtr,
        valid: DevPtr,
        mask: DevPtr,
        kept: DevPtr,
    ) -> Result<()> {
        let levels = d.levels_arg()?;
        let (b, k) = (d.batch as i64, d.k as i64);
        let wpi = d.mask_words_per_image() as i64;
        if let Some(shape) = d.mask_launch() {
            let name = format!("proposals_mask_{}", dtype.suffix());
            let f = self.function(&name)?;
            let cbmax = d.cbmax() as i32;
            let mut l = stream.launch_builder(&f);
            l.arg(&clipped)
                .arg(&mask)
                .arg(&b)
                .arg(&k)
                .arg(&wpi)
                .arg(&cbmax)
                .arg(&levels)
                .arg(&threshold);
            l.launch(config(shape)).map_err(driver(&name))?;
        }
        if let Some(shape) = d.scan_launch() {
            let name = "proposals_scan";
            let f = self.function(name)?;
            let mut l = stream.launch_builder(&f);
            l.arg(&valid)
                .arg(&mask)
                .arg(&kept)
                .arg(&b)
                .arg(&k)
                .arg(&wpi)
                .arg(&levels);
            l.launch(config(shape)).map_err(driver(name))?;
        }
        Ok(())
    }

    /// Rows 0..min(P, kept) of out_boxes [B, P, 4] / out_scores [B, P]
    /// (dtype, zeroed by the caller): image b's kept candidates in
    /// decreasing score, ties to the lower column; counts [B] (i64, zeroed)
    /// their number.
    ///
    /// # Safety
    /// clipped: 4 B K of dtype; scores: B K of dtype; kept: B K bytes;
    /// out_boxes: 4 B P; out_scores: B P; counts: B i64.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn proposals_rank(
        &self,
        stream: &CudaStream,
        dtype: PropDtype,
        d: &ProposalDims,
        clipped: DevPtr,
        scores: DevPtr,
        kept: DevPtr,
        out_boxes: DevPtr,
        out_scores: DevPtr,
        counts: DevPtr,
    ) -> Result<()> {
        let Some(shape) = d.rank_launch() else {
            return Ok(());
        };
        let name = format!("proposals_rank_{}", dtype.suffix());
        let f = self.function(&name)?;
        let (b, k, p) = (d.batch as i64, d.k as i64, d.p as i64);
        let mut l = stream.launch_builder(&f);
        l.arg(&clipped)
            .arg(&scores)
            .arg(&kept)
            .arg(&b)
            .arg(&k)
            .arg(&p)
            .arg(&out_boxes)
            .arg(&out_scores)
            .arg(&counts);
        l.launch(config(shape)).map_err(driver(&name))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dims_check_the_segments() {
        let d = ProposalDims::new(2, 200, &[(0, 130), (130, 70)], 50).unwrap();
        assert_eq!(d.mask_offsets(), vec![0, 130 * 3]);
        assert_eq!(d.mask_words_per_image(), 130 * 3 + 70 * 2);
        let s = d.mask_launch().unwrap();
        assert_eq!((s.grid, s.block), ((3, 6, 2), (64, 1, 1)));
        assert_eq!(d.scan_launch().unwrap().grid, (2, 2, 1));
        assert_eq!(d.rank_launch().unwrap().grid, (1, 2, 1));
        for (k, lv, p) in [
            (200, vec![(0, 130), (131, 69)], 5),
            (200, vec![(0, 130)], 5),
            (200, vec![(0, 130), (130, 70)], 201),
            (20000, vec![(0, 20000)], 5),
        ] {
            assert!(ProposalDims::new(2, k, &lv, p).is_err(), "{lv:?}");
        }
        let many: Vec<(usize, usize)> = (0..65).map(|i| (i, 1)).collect();
        assert!(ProposalDims::new(1, 65, &many, 1).is_err());
        assert!(ProposalDims::new(1 << 20, 1 << 10, &[(0, 1 << 10)], 1).is_err());
        let empty = ProposalDims::new(3, 0, &[], 0).unwrap();
        assert!(empty.mask_launch().is_none() && empty.scan_launch().is_none());
        assert!(empty.rank_launch().is_none());
    }

    #[test]
    fn by_value_arguments_have_the_c_layout() {
        // int n + 3 x 64 int; 2 x 64 T
        assert_eq!(std::mem::size_of::<PropLevelsArg>(), 4 + 3 * 64 * 4);
        assert_eq!(std::mem::size_of::<PropSizesArg<f32>>(), 2 * 64 * 4);
        assert_eq!(std::mem::size_of::<PropSizesArg<f64>>(), 2 * 64 * 8);
        let a = sizes_arg(&[(3, 5), (7, 11)], |v| v as f32);
        assert_eq!((a.h[1], a.w[1], a.h[2]), (7.0, 11.0, 0.0));
    }
}
