//! [`super::filter_proposals`] on the GPU (kernels' proposals.cu): four
//! kernels queued on the stream, nothing uploaded or read back (the level
//! table and image sizes are launch arguments). Scratch: the clipped boxes
//! and scores (B K of the dtype), two B K byte flags and the IoU masks (B x
//! sum of len ceil(len / 64) u64, bounded by the front-end).

use super::{ProposalGeom, Proposals};
use crate::cuda::launch::{kerr, traced_sync};
use crate::cuda::tensor::{contiguous, empty, gpu_of, ptr, zeros};
use crate::{DType, Error, Result, Tensor};
use kernels::device::{PropDtype, ProposalDims};

/// `x` itself when row-major, else a row-major copy.
fn row_major(x: &Tensor) -> Result<Tensor> {
    if x.is_contiguous() {
        Ok(x.clone())
    } else {
        contiguous(x)
    }
}

/// The GPU primitive: f32 or f64 boxes [B, K, 4] and logits [B, K] on one
/// GPU (the front-end checked shapes, dtypes and bounds). The outputs are
/// row-major (rank 2 and 3: the GPU default layout).
pub(in crate::ops::detection) fn filter(
    boxes: &Tensor,
    logits: &Tensor,
    g: &ProposalGeom,
) -> Result<Proposals> {
    const OP: &str = "filter_proposals";
    crate::trace::kernel("proposals");
    let gpu = gpu_of(boxes)?;
    let dtype = boxes.dtype();
    let dt = match dtype {
        DType::F32 => PropDtype::F32,
        DType::F64 => PropDtype::F64,
        other => return Err(Error::dtype(OP, "f32 or f64", other)),
    };
    let (b, k, p) = (g.batch, g.k, g.p());
    let d = ProposalDims::new(b, k, &g.levels, p).map_err(kerr(OP))?;
    let out_boxes = zeros(gpu, &[b, p, 4], dtype)?;
    let out_scores = zeros(gpu, &[b, p], dtype)?;
    let counts = zeros(gpu, &[b], DType::I64)?;
    let out = Proposals {
        boxes: out_boxes,
        scores: out_scores,
        counts,
    };
    if b * k == 0 || p == 0 {
        return Ok(out);
    }
    let (bx, lg) = (row_major(boxes)?, row_major(logits)?);
    let clipped = empty(gpu, &[b, k, 4], dtype)?;
    let scores = empty(gpu, &[b, k], dtype)?;
    let valid = empty(gpu, &[b, k], DType::U8)?;
    let kept = zeros(gpu, &[b, k], DType::U8)?;
    // u64 words; the front-end bounds them by MAX_PROPOSAL_MASK_WORDS
    let mask = gpu.alloc(b * d.mask_words_per_image() * 8)?;
    gpu.bind()?;
    // SAFETY: bx row-major [B, K, 4] and lg [B, K] of dtype; clipped,
    // scores, valid, kept, out_* and counts fresh row-major tensors of the
    // sizes the launchers name; mask holds B x mask_words_per_image u64;
    // all on gpu; d checked against the same segments.
    unsafe {
        gpu.kernels
            .proposals_prep(
                &gpu.stream,
                dt,
                &d,
                &g.image_sizes,
                g.min_size,
                g.score_thresh,
                ptr(&bx)?,
                ptr(&lg)?,
                ptr(&clipped)?,
                ptr(&scores)?,
                ptr(&valid)?,
            )
            .map_err(kerr(OP))?;
        gpu.kernels
            .proposals_nms(
                &gpu.stream,
                dt,
                &d,
                g.nms_thresh,
                ptr(&clipped)?,
                ptr(&valid)?,
                mask.ptr(),
                ptr(&kept)?,
            )
            .map_err(kerr(OP))?;
        gpu.kernels
            .proposals_rank(
                &gpu.stream,
                dt,
                &d,
                ptr(&clipped)?,
                ptr(&scores)?,
                ptr(&kept)?,
                ptr(&out.boxes)?,
                ptr(&out.scores)?,
                ptr(&out.counts)?,
            )
            .map_err(kerr(OP))?;
    }
    traced_sync(gpu)?;
    Ok(out)
}
