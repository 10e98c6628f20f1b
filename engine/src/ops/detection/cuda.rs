//! Detection ops on the GPU: RoIAlign forward/backward (roi_align.cu) over
//! channels-last feature maps, box IoU (nms.cu), and NMS and batched NMS
//! with torchvision's CUDA design (IoU bit mask on the GPU, nms.cu; score
//! sort and greedy pass on the host, where K is at most a few thousand).

use super::{DetectionOps, RoiGeom};
use crate::backend::Cuda;
use crate::cuda::launch::cast;
use crate::cuda::launch::{kdtype, kerr, traced_sync};
use crate::cuda::tensor::{download, empty, gpu_of, ptr, to_default_layout, zeros};
use crate::ops::index::sort_order;
use crate::{DType, Error, Result, Tensor};
use kernels::device::{nms_col_blocks, nms_greedy, RoiAlignDims};

/// roi_align.cu's shape and settings.
fn dims(g: &RoiGeom) -> Result<RoiAlignDims> {
    let [n, c, h, w] = g.nchw;
    Ok(RoiAlignDims {
        n,
        c,
        h,
        w,
        k: g.k,
        ph: g.out[0],
        pw: g.out[1],
        // the CPU op rounds it to T (f32 for every GPU dtype) too
        spatial_scale: g.spatial_scale as f32,
        // the front-end bounds the samples per box by 2^28: a larger ratio
        // was rejected there
        sampling_ratio: i32::try_from(g.sampling_ratio.max(-1)).map_err(|_| {
            Error::arg(
                "roi_align",
                format!(
                    "sampling_ratio {} exceeds the GPU kernel's int32",
                    g.sampling_ratio
                ),
            )
        })?,
        aligned: g.aligned,
    })
}

impl DetectionOps for Cuda {
    /// Output in the default (channels-last) layout.
    fn roi_align(&self, x: &Tensor, boxes: &Tensor, g: &RoiGeom) -> Result<Tensor> {
        const OP: &str = "roi_align";
        crate::trace::kernel("roi_align_fwd");
        let d = dims(g)?;
        let gpu = gpu_of(x)?;
        let dt = kdtype(OP, x.dtype())?;
        let xd = to_default_layout(x)?;
        let boxes = to_default_layout(boxes)?;
        let y = empty(gpu, &[d.k, d.c, d.ph, d.pw], x.dtype())?;
        gpu.bind()?;
        // SAFETY: xd is NHWC [N, H, W, C] (default layout), boxes a dense
        // [K, 5] of x's dtype, y NHWC [K, PH, PW, C]; all on gpu.
        unsafe {
            gpu.kernels
                .roi_align_fwd(&gpu.stream, dt, ptr(&xd)?, ptr(&boxes)?, ptr(&y)?, &d)
        }
        .map_err(kerr(OP))?;
        traced_sync(gpu)?;
        Ok(y)
    }

    /// Scatters into dx with f32 atomics: dx is NOT bitwise deterministic
    /// (summation order varies between runs); it matches the CPU op to f32
    /// rounding.
    fn roi_align_backward(&self, dy: &Tensor, boxes: &Tensor, g: &RoiGeom) -> Result<Tensor> {
        const OP: &str = "roi_align";
        crate::trace::kernel("roi_align_bwd");
        let d = dims(g)?;
        let gpu = gpu_of(dy)?;
        let dtype = dy.dtype();
        let dt = kdtype(OP, dtype)?;
        let dy = to_default_layout(dy)?;
        let boxes = to_default_layout(boxes)?;
        // f32 accumulator (atomics), zeroed: the kernel only adds
        let acc = zeros(gpu, &g.nchw, DType::F32)?;
        gpu.bind()?;
        // SAFETY: dy NHWC [K, PH, PW, C] of x's dtype (the front-end checked
        // it), boxes a dense [K, 5] of that dtype, acc f32 NHWC [N, H, W, C].
        unsafe {
            gpu.kernels
                .roi_align_bwd(&gpu.stream, dt, ptr(&dy)?, ptr(&boxes)?, ptr(&acc)?, &d)
        }
        .map_err(kerr(OP))?;
        let dx = if dtype == DType::F32 {
            acc
        } else {
            cast(&acc, dtype)?
        };
        traced_sync(gpu)?;
        Ok(dx)
    }

    /// The same set and order as the CPU op (IoU in f32, same operation
    /// order, compared in f64 with `iou_threshold`).
    fn nms(&self, boxes: &Tensor, scores: &Tensor, iou_threshold: f64) -> Result<Vec<usize>> {
        mask_nms("nms", boxes, scores, None, iou_threshold)
    }

    /// One mask over all boxes where boxes of different categories never
    /// overlap: the CPU's per-category path (more than 1000 boxes) exactly;
    /// up to 1000 boxes the CPU shifts coordinates by category instead
    /// (torchvision's trick), which can differ from this only by the
    /// rounding of the shifted coordinates.
    fn batched_nms(
        &self,
        boxes: &Tensor,
        scores: &Tensor,
        idxs: &[i64],
        iou_threshold: f64,
    ) -> Result<Vec<usize>> {
        mask_nms("batched_nms", boxes, scores, Some(idxs), iou_threshold)
    }

    /// IoU in f32 in the CPU op's operation order, rounded once to the
    /// boxes' dtype: equal to the CPU's bit for bit.
    fn box_iou(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        const OP: &str = "box_iou";
        crate::trace::kernel("box_iou");
        let (n, m) = (a.dims()[0], b.dims()[0]);
        let g = gpu_of(a)?;
        let dt = kdtype(OP, a.dtype())?;
        let (a, b) = (to_default_layout(a)?, to_default_layout(b)?);
        let out = empty(g, &[n, m], a.dtype())?;
        g.bind()?;
        // SAFETY: a dense [N, 4], b dense [M, 4] of dt, out [N, M] (2-D:
        // the default layout is row-major).
        unsafe {
            g.kernels
                .box_iou(&g.stream, dt, ptr(&a)?, ptr(&b)?, ptr(&out)?, n, m)
        }
        .map_err(kerr(OP))?;
        traced_sync(g)?;
        Ok(out)
    }
}

/// NMS through nms.cu's mask, boxes of different `cats` (when given: one
/// per box) never suppressing each other; the kept indices in visiting
/// order (decreasing score, ties by lower index, NaN first).
fn mask_nms(
    op: &'static str,
    boxes: &Tensor,
    scores: &Tensor,
    cats: Option<&[i64]>,
    iou_threshold: f64,
) -> Result<Vec<usize>> {
    crate::trace::kernel("nms_mask");
    let k = boxes.dims()[0];
    let g = gpu_of(boxes)?;
    let dt = kdtype(op, boxes.dtype())?;
    // K scores: sorted on the host with the CPU op's exact rule; f64
    // orders every GPU dtype's values exactly
    let order = sort_order(&download(scores)?.to_vec_f64()?, true);
    if k == 0 {
        return Ok(Vec::new());
    }
    let order_i32: Vec<i32> = order.iter().map(|&i| i as i32).collect();
    // int32 has no tensor dtype: a raw block
    let order_dev = g.alloc(k * 4)?;
    order_dev.upload_at(0, bytemuck::cast_slice(&order_i32))?;
    let cats_dev = match cats {
        Some(c) => {
            let d = g.alloc(k * 8)?;
            d.upload_at(0, bytemuck::cast_slice(c))?;
            Some(d)
        }
        None => None,
    };
    let boxes = to_default_layout(boxes)?;
    let words = k * nms_col_blocks(k);
    let mask = g.alloc(words * 8)?;
    g.bind()?;
    // SAFETY: boxes dense [K, 4] of dt, order K int32 in [0, K), cats null
    // or K i64, mask holds K * col_blocks u64.
    unsafe {
        g.kernels.nms_mask(
            &g.stream,
            dt,
            ptr(&boxes)?,
            order_dev.ptr(),
            cats_dev.as_ref().map_or(0, |d| d.ptr()),
            mask.ptr(),
            k,
            iou_threshold,
        )
    }
    .map_err(kerr(op))?;
    let mut host = vec![0u64; words];
    mask.download_at(0, bytemuck::cast_slice_mut(&mut host))?;
    Ok(nms_greedy(&host, k).into_iter().map(|r| order[r]).collect())
}
