//! torchvision's `RegionProposalNetwork.filter_proposals` after the
//! per-level top-n, as one op on the candidates' device: clip to the
//! image, drop small boxes and low scores, NMS within each FPN level, keep
//! the `post_n` best of every image. The CPU version ([`filter_cpu`]) is
//! the reference: the same values in the same order as the host path
//! (torchvision's `clip_boxes_to_image`, `remove_small_boxes`, the score
//! filter, `batched_nms` with the level as category, `[:post_n]`). The GPU
//! version (`cuda.rs`, proposals.cu) reads nothing back to the host.
pub(super) mod cuda;
pub(crate) mod parity;
#[cfg(test)]
mod tests;

use super::cpu::{nms_impl, rows};
use crate::backend::{same_device, BackendInfo};
use crate::ops::index::sort_order;
use crate::trace::Traced;
use crate::{on_backend, DType, Element, Error, Float, Result, Tensor};

/// The longest level segment (candidates of one level of one image) the op
/// takes: its IoU bit mask has `len * ceil(len / 64)` words (32 MiB at
/// this bound), and the GPU's scan holds a segment's `removed` bits in
/// shared memory.
pub const MAX_PROPOSAL_SEGMENT: usize = 16384;
/// The most candidates of a batch (B K) the op takes: every GPU index
/// stays inside an int32 and the GPU's ranking (one thread per candidate,
/// comparing it with every candidate of its image) stays bounded.
pub const MAX_PROPOSAL_CANDIDATES: usize = 1 << 24;
/// The most candidates of one image (K) the op takes (the GPU ranks each
/// kept candidate against all K of its image: K^2 comparisons).
pub const MAX_PROPOSAL_K: usize = 1 << 17;
/// The most level segments the op takes.
pub const MAX_PROPOSAL_LEVELS: usize = 64;
/// The most IoU mask words (u64) of a batch, sum over images and levels of
/// `len * ceil(len / 64)`: 1 GiB.
pub const MAX_PROPOSAL_MASK_WORDS: usize = 1 << 27;

/// What [`filter_proposals`] returns.
#[derive(Clone, Debug)]
pub struct Proposals {
    /// [B, P, 4], P = min(post_n, K): image b's proposals in rows
    /// 0..count_b, zeros after.
    pub boxes: Tensor,
    /// [B, P]: their scores (sigmoid of the logit), zeros after count_b.
    pub scores: Tensor,
    /// [B] i64: count_b.
    pub counts: Tensor,
}

impl Traced for Proposals {
    fn outputs(&self) -> Vec<&Tensor> {
        vec![&self.boxes, &self.scores, &self.counts]
    }
}

/// The checked arguments of one [`filter_proposals`].
#[derive(Clone, Debug, PartialEq)]
pub struct ProposalGeom {
    /// Images B.
    pub batch: usize,
    /// Candidates per image K.
    pub k: usize,
    /// The level segments (start, len): contiguous, in order, covering 0..K.
    pub levels: Vec<(usize, usize)>,
    /// (h, w) per image.
    pub image_sizes: Vec<(usize, usize)>,
    pub min_size: f64,
    pub score_thresh: f64,
    pub nms_thresh: f64,
    pub post_n: usize,
}

impl ProposalGeom {
    /// Rows of the output per image: min(post_n, K).
    pub fn p(&self) -> usize {
        self.post_n.min(self.k)
    }

    /// IoU mask words (u64) of one image: sum of len * ceil(len / 64).
    pub fn mask_words_per_image(&self) -> usize {
        self.levels.iter().map(|&(_, n)| n * n.div_ceil(64)).sum()
    }
}

/// torchvision's `RegionProposalNetwork.filter_proposals` after the
/// per-level top-n, for a batch: `boxes` [B, K, 4] decoded candidates (x1,
/// y1, x2, y2), `logits` [B, K] their objectness logits, same float dtype
/// (f32 or f64) and device; `levels` the K columns' level segments
/// [(start, len)], contiguous, in order, covering 0..K, the same for every
/// image, each segment's logits non-increasing (as [`Tensor::topk`] returns
/// them: NaN first); `image_sizes` [(h, w)] per image.
///
/// Per image: clip every box to [0, w] x [0, h] (NaN stays NaN); keep the
/// boxes with (x2 - x1) >= min_size and (y2 - y1) >= min_size whose score
/// sigmoid(logit) >= score_thresh (both compared in the dtype; NaN fails);
/// NMS within each level (IoU > nms_thresh suppresses, in the order of
/// decreasing score; levels never suppress each other); order the kept by
/// decreasing score (ties: lower column first); keep the first post_n.
///
/// Returns [`Proposals`] on the inputs' device, in their dtype (counts
/// i64). No gradient (torchvision filters detached values).
///
/// The CPU is the reference and equals the host composition (clip,
/// `remove_small_boxes`, the score filter, [`super::batched_nms`] with the
/// level as category, take post_n) value for value and in order; it
/// always runs one NMS per level, as `batched_nms` does beyond 1000 boxes
/// (up to 1000, `batched_nms` shifts the coordinates by category instead,
/// which can differ only by the rounding of the shifted coordinates). On
/// the CPU a segment whose non-NaN logits increase somewhere is an error;
/// the GPU reads nothing back to check it and visits each segment in
/// column order, which is the score order exactly when the precondition
/// holds.
///
/// Bounds (errors beyond): a segment at most [`MAX_PROPOSAL_SEGMENT`]
/// candidates, K at most [`MAX_PROPOSAL_K`], B K at most
/// [`MAX_PROPOSAL_CANDIDATES`], at most [`MAX_PROPOSAL_LEVELS`] segments,
/// and the batch's IoU masks at most [`MAX_PROPOSAL_MASK_WORDS`] u64 words.
/// The thresholds and min_size must not be NaN.
#[allow(clippy::too_many_arguments)]
pub fn filter_proposals(
    boxes: &Tensor,
    logits: &Tensor,
    levels: &[(usize, usize)],
    image_sizes: &[(usize, usize)],
    min_size: f64,
    score_thresh: f64,
    nms_thresh: f64,
    post_n: usize,
) -> Result<Proposals> {
    const OP: &str = "filter_proposals";
    let g = check(
        boxes,
        logits,
        levels,
        image_sizes,
        [min_size, score_thresh, nms_thresh],
        post_n,
    )?;
    let dev = same_device(OP, &[boxes, logits])?;
    let (boxes, logits) = (boxes.detach(), logits.detach());
    on_backend!(dev, b => crate::trace::op(OP, "forward", b.name(), &[&boxes, &logits], || {
        super::DetectionOps::filter_proposals(b, &boxes, &logits, &g)
    }))
}

/// Checks the arguments of [`filter_proposals`]; returns its geometry.
fn check(
    boxes: &Tensor,
    logits: &Tensor,
    levels: &[(usize, usize)],
    image_sizes: &[(usize, usize)],
    [min_size, score_thresh, nms_thresh]: [f64; 3],
    post_n: usize,
) -> Result<ProposalGeom> {
    const OP: &str = "filter_proposals";
    let d = boxes.dims();
    if d.len() != 3 || d[2] != 4 {
        return Err(Error::shape(
            OP,
            format!("boxes must be [B, K, 4] rows of (x1, y1, x2, y2), got shape {d:?}"),
        ));
    }
    let (batch, k) = (d[0], d[1]);
    if logits.dims() != [batch, k] {
        return Err(Error::shape(
            OP,
            format!(
                "logits must be [B, K] = [{batch}, {k}] (one per candidate box), got shape {:?}",
                logits.dims()
            ),
        ));
    }
    for t in [boxes, logits] {
        if !matches!(t.dtype(), DType::F32 | DType::F64) {
            return Err(Error::dtype(OP, "f32 or f64", t.dtype()));
        }
    }
    if boxes.dtype() != logits.dtype() {
        return Err(Error::arg(
            OP,
            format!(
                "boxes are {:?} but logits {:?}: they must share a dtype",
                boxes.dtype(),
                logits.dtype()
            ),
        ));
    }
    if image_sizes.len() != batch {
        return Err(Error::arg(
            OP,
            format!(
                "got {} image sizes for a batch of {batch} images",
                image_sizes.len()
            ),
        ));
    }
    for (name, v) in [
        ("min_size", min_size),
        ("score_thresh", score_thresh),
        ("nms_thresh", nms_thresh),
    ] {
        if v.is_nan() {
            return Err(Error::arg(OP, format!("{name} must not be NaN")));
        }
    }
    if levels.len() > MAX_PROPOSAL_LEVELS {
        return Err(Error::arg(
            OP,
            format!(
                "got {} level segments; at most {MAX_PROPOSAL_LEVELS}",
                levels.len()
            ),
        ));
    }
    let mut next = 0usize;
    for (l, &(start, len)) in levels.iter().enumerate() {
        if start != next {
            return Err(Error::arg(
                OP,
                format!(
                    "level segment {l} starts at column {start} but the previous ones end at \
                     {next}: segments must be contiguous and in order, covering 0..K"
                ),
            ));
        }
        if len > MAX_PROPOSAL_SEGMENT {
            return Err(Error::arg(
                OP,
                format!("level segment {l} has {len} candidates; at most {MAX_PROPOSAL_SEGMENT}"),
            ));
        }
        next = start + len;
    }
    if next != k {
        return Err(Error::arg(
            OP,
            format!("the level segments cover columns 0..{next} but there are K = {k}"),
        ));
    }
    if k > MAX_PROPOSAL_K {
        return Err(Error::arg(
            OP,
            format!("{k} candidates per image; at most {MAX_PROPOSAL_K}"),
        ));
    }
    let g = ProposalGeom {
        batch,
        k,
        levels: levels.to_vec(),
        image_sizes: image_sizes.to_vec(),
        min_size,
        score_thresh,
        nms_thresh,
        post_n,
    };
    // k <= 2^17 and one image's mask words <= 2^17 * 2^8: no overflow
    if batch.saturating_mul(k) > MAX_PROPOSAL_CANDIDATES
        || batch.saturating_mul(g.mask_words_per_image()) > MAX_PROPOSAL_MASK_WORDS
    {
        return Err(Error::arg(
            OP,
            format!(
                "a batch of {batch} x {k} candidates (IoU masks of {} words an image) exceeds \
                 the bounds: at most {MAX_PROPOSAL_CANDIDATES} candidates and \
                 {MAX_PROPOSAL_MASK_WORDS} mask words a batch",
                g.mask_words_per_image()
            ),
        ));
    }
    Ok(g)
}

/// torch.sigmoid in `T`: 1 / (1 + e^-x), as the host path computes it.
pub(crate) fn sigmoid<T: Float>(x: T) -> T {
    T::one() / (T::one() + (-x).exp())
}

/// torch.clamp(x, lo, hi) in `T`: NaN stays NaN.
fn clamp_nan<T: Float>(x: T, lo: T, hi: T) -> T {
    if x < lo {
        lo
    } else if x > hi {
        hi
    } else {
        x
    }
}

/// The error for a segment whose non-NaN logits increase somewhere.
fn check_order<T: Float>(logits: &[T], g: &ProposalGeom) -> Result<()> {
    for (b, row) in logits.chunks_exact(g.k.max(1)).enumerate() {
        for (l, &(start, len)) in g.levels.iter().enumerate() {
            let mut prev: Option<(usize, T)> = None;
            for (c, &v) in row[start..start + len].iter().enumerate() {
                if v.is_nan() {
                    continue;
                }
                if let Some((pc, pv)) = prev {
                    if v > pv {
                        return Err(Error::arg(
                            "filter_proposals",
                            format!(
                                "image {b}, level segment {l}: logit {} at column {} follows {} \
                                 at column {}; each segment's logits must be non-increasing \
                                 (as Tensor::topk returns them)",
                                Element::to_f64(v),
                                start + c,
                                Element::to_f64(pv),
                                start + pc
                            ),
                        ));
                    }
                }
                prev = Some((c, v));
            }
        }
    }
    Ok(())
}

/// The reference: per image, the clipped boxes, the filter, one NMS per
/// level ([`nms_impl`], the CPU's `nms` and `batched_nms` kernel) and the
/// kept sorted by decreasing score (stable: ties by lower column), cut to
/// P. Returns (boxes B*P*4, scores B*P, counts B), zeros after each count.
pub(crate) fn filter_cpu<T: Float>(
    boxes: &[T],
    logits: &[T],
    g: &ProposalGeom,
) -> Result<(Vec<T>, Vec<T>, Vec<i64>)> {
    check_order(logits, g)?;
    let (k, p) = (g.k, g.p());
    let mut out_boxes = vec![T::zero(); g.batch * p * 4];
    let mut out_scores = vec![T::zero(); g.batch * p];
    let mut counts = vec![0i64; g.batch];
    let m = <T as Element>::from_f64(g.min_size);
    let thresh = <T as Element>::from_f64(g.score_thresh);
    for b in 0..g.batch {
        let (h, w) = g.image_sizes[b];
        let (h, w) = (
            <T as Element>::from_f64(h as f64),
            <T as Element>::from_f64(w as f64),
        );
        let clipped: Vec<[T; 4]> = rows(&boxes[b * k * 4..(b + 1) * k * 4])
            .into_iter()
            .map(|r| {
                [
                    clamp_nan(r[0], T::zero(), w),
                    clamp_nan(r[1], T::zero(), h),
                    clamp_nan(r[2], T::zero(), w),
                    clamp_nan(r[3], T::zero(), h),
                ]
            })
            .collect();
        let scores: Vec<T> = logits[b * k..(b + 1) * k]
            .iter()
            .map(|&x| sigmoid(x))
            .collect();
        let valid = |c: usize| {
            let r = clipped[c];
            r[2] - r[0] >= m && r[3] - r[1] >= m && scores[c] >= thresh
        };
        let mut kept = Vec::new();
        for &(start, len) in &g.levels {
            let members: Vec<usize> = (start..start + len).filter(|&c| valid(c)).collect();
            let cb: Vec<[T; 4]> = members.iter().map(|&c| clipped[c]).collect();
            let cs: Vec<T> = members.iter().map(|&c| scores[c]).collect();
            kept.extend(
                nms_impl(&cb, &cs, g.nms_thresh)
                    .into_iter()
                    .map(|j| members[j]),
            );
        }
        kept.sort_unstable();
        let ks: Vec<T> = kept.iter().map(|&c| scores[c]).collect();
        let order = sort_order(&ks, true);
        let n = order.len().min(p);
        for (r, &j) in order[..n].iter().enumerate() {
            let c = kept[j];
            out_boxes[(b * p + r) * 4..(b * p + r + 1) * 4].copy_from_slice(&clipped[c]);
            out_scores[b * p + r] = scores[c];
        }
        counts[b] = n as i64;
    }
    Ok((out_boxes, out_scores, counts))
}

/// The CPU primitive: [`filter_cpu`] in the inputs' dtype (f32 or f64).
pub(super) fn cpu(boxes: &Tensor, logits: &Tensor, g: &ProposalGeom) -> Result<Proposals> {
    crate::trace::kernel("filter_proposals");
    let p = g.p();
    let dtype = boxes.dtype();
    macro_rules! run {
        ($t:ty) => {{
            let (bx, sc, counts) =
                filter_cpu::<$t>(&boxes.float_data::<$t>()?, &logits.float_data::<$t>()?, g)?;
            Proposals {
                boxes: Tensor::from_compute(bx, &[g.batch, p, 4], dtype),
                scores: Tensor::from_compute(sc, &[g.batch, p], dtype),
                counts: Tensor::from_vec(counts, &[g.batch])?,
            }
        }};
    }
    Ok(match dtype {
        DType::F64 => run!(f64),
        DType::F32 => run!(f32),
        other => return Err(Error::dtype("filter_proposals", "f32 or f64", other)),
    })
}
