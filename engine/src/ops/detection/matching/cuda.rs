//! Matching and balanced sampling on the GPU (kernels/src/families/
//! matching.cu): integer outputs decided by the CPU's exact comparisons,
//! so equal to the CPU's element for element; nothing is read back to the
//! host (the launches are queued on the tensors' stream).

use super::{threshold_in, BalancedSample, MatchRule};
use crate::cuda::launch::{kdtype, kerr, traced_sync};
use crate::cuda::tensor::{contiguous, empty, gpu_of, ptr, zeros};
use crate::{DType, Result, Tensor};
use kernels::device::{sample_scratch_bytes, sample_scratch_zeroed};

/// `x` itself when row-major, else a row-major copy.
fn row_major(x: &Tensor) -> Result<Tensor> {
    if x.is_contiguous() {
        Ok(x.clone())
    } else {
        contiguous(x)
    }
}

/// `super::match_boxes` on checked GPU tensors: the rows' maxima (only with
/// low-quality matches), then one thread per column. f32 / f16 / bf16
/// compare in f32 (exact for the widened values and the thresholds rounded
/// to the dtype), f64 in double.
pub(crate) fn match_boxes(
    quality: &Tensor,
    rule: MatchRule,
    gt_labels: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "match_boxes";
    crate::trace::kernel("match_boxes");
    let gpu = gpu_of(quality)?;
    let dtype = quality.dtype();
    let (g, n) = (quality.dims()[0], quality.dims()[1]);
    let matches = empty(gpu, &[n], DType::I64)?;
    let labels = empty(gpu, &[n], DType::I64)?;
    if n == 0 {
        return Ok((matches, labels));
    }
    let kd = if dtype == DType::F64 {
        None
    } else {
        Some(kdtype(OP, dtype)?)
    };
    let q = row_major(quality)?;
    let gl = gt_labels.map(row_major).transpose()?;
    // the rows' maxima in the compute type (f32, or f64 for f64)
    let best = gpu.alloc(g.max(1) * if kd.is_none() { 8 } else { 4 })?;
    let high = threshold_in(dtype, rule.high_threshold);
    let low = threshold_in(dtype, rule.low_threshold);
    gpu.bind()?;
    // SAFETY: q row-major [G, N] of the dtype; best G compute-type values;
    // gl null or G i64; matches / labels N i64; all on gpu.
    unsafe {
        gpu.kernels.match_boxes(
            &gpu.stream,
            kd,
            ptr(&q)?,
            best.ptr(),
            gl.as_ref().map_or(Ok(0), ptr)?,
            ptr(&matches)?,
            ptr(&labels)?,
            g,
            n,
            high,
            low,
            rule.allow_low_quality_matches,
        )
    }
    .map_err(kerr(OP))?;
    traced_sync(gpu)?;
    Ok((matches, labels))
}

/// `super::sample_balanced` on checked GPU labels: an 8-pass radix select of
/// the keys per class, then a chunked compaction (no host read).
pub(crate) fn sample_balanced(
    labels: &Tensor,
    batch_size_per_image: usize,
    target: usize,
    seed: u64,
) -> Result<BalancedSample> {
    const OP: &str = "sample_balanced";
    crate::trace::kernel("sample_balanced");
    let gpu = gpu_of(labels)?;
    let n = labels.dims()[0];
    let (cap_pos, cap_neg) = (target.min(n), batch_size_per_image.min(n));
    let positive = empty(gpu, &[cap_pos], DType::I64)?;
    let negative = empty(gpu, &[cap_neg], DType::I64)?;
    if n == 0 {
        let counts = zeros(gpu, &[2], DType::I64)?;
        return Ok(BalancedSample {
            positive,
            negative,
            counts,
        });
    }
    let counts = empty(gpu, &[2], DType::I64)?;
    let l = row_major(labels)?;
    let scratch = gpu.alloc(sample_scratch_bytes(n))?;
    scratch.memset_at(0, sample_scratch_zeroed(), 0)?;
    gpu.bind()?;
    // SAFETY: l n i64; scratch sample_scratch_bytes(n) with its leading
    // state and histogram zeroed; positive / negative cap_pos / cap_neg i64
    // (min(target, n), min(batch, n)); counts 2 i64; all on gpu.
    unsafe {
        gpu.kernels.sample_balanced(
            &gpu.stream,
            ptr(&l)?,
            n,
            seed,
            cap_pos,
            cap_neg,
            scratch.ptr(),
            ptr(&positive)?,
            cap_pos,
            ptr(&negative)?,
            cap_neg,
            ptr(&counts)?,
        )
    }
    .map_err(kerr(OP))?;
    traced_sync(gpu)?;
    Ok(BalancedSample {
        positive,
        negative,
        counts,
    })
}
