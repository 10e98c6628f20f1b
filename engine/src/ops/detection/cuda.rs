//! Detection ops on the GPU: RoIAlign forward/backward over one map or FPN
//! levels (roi_align.cu) over channels-last feature maps, box coding
//! (box_coder.cu), box IoU (nms.cu), NMS and batched NMS
//! with torchvision's CUDA design (IoU bit mask on the GPU, nms.cu; score
//! sort and greedy pass on the host, where K is at most a few thousand),
//! and the mask paste (paste_masks.cu, from host-built tap tables).

use super::cpu::paste_taps;
use super::{DetectionOps, PasteBox, PasteGeom, RoiGeom};
use super::{ProposalGeom, Proposals};
use crate::backend::Cuda;
use crate::cuda::launch::cast;
use crate::cuda::launch::{kdtype, kerr, traced_sync};
use crate::cuda::runtime::{DeviceBlock, Gpu};
use crate::cuda::tensor::{alloc, download, empty, gpu_of, ptr, to_default_layout, zeros};
use crate::ops::index::sort_order;
use crate::{DType, Error, Result, Tensor};
use kernels::device::{
    nms_col_blocks, nms_greedy, PasteDims, PasteTables, PasteTaps, RoiAlignDims, RoiLevel, Tap,
    ROI_MAX_LEVELS,
};

/// roi_align.cu's shape and settings (the same for every level).
fn dims(g: &RoiGeom) -> Result<RoiAlignDims> {
    let [n, c, _, _] = g.nchw;
    Ok(RoiAlignDims {
        n,
        c,
        k: g.k,
        ph: g.out[0],
        pw: g.out[1],
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

/// The kernels' view of the maps `maps` (default layout) of geometries `geoms`.
fn roi_levels(op: &'static str, maps: &[Tensor], geoms: &[RoiGeom]) -> Result<Vec<RoiLevel>> {
    if maps.len() > ROI_MAX_LEVELS {
        return Err(Error::arg(
            op,
            format!(
                "the GPU kernel pools from at most {ROI_MAX_LEVELS} levels, got {}",
                maps.len()
            ),
        ));
    }
    maps.iter()
        .zip(geoms)
        .map(|(m, g)| {
            Ok(RoiLevel {
                map: ptr(m)?,
                h: g.nchw[2],
                w: g.nchw[3],
                // the CPU op rounds it to T (f32 for every GPU dtype) too
                spatial_scale: g.spatial_scale as f32,
            })
        })
        .collect()
}

/// The boxes' level indices as a device int32 block, or None when every
/// box is on level 0 (one level: the kernels then read no levels).
fn upload_levels(
    gpu: &'static Gpu,
    levels: &[usize],
    n_levels: usize,
) -> Result<Option<DeviceBlock>> {
    if n_levels == 1 || levels.is_empty() {
        return Ok(None);
    }
    // the front-end mapped every box into [0, n_levels) <= ROI_MAX_LEVELS
    let v: Vec<i32> = levels.iter().map(|&l| l as i32).collect();
    // int32 has no tensor dtype: a raw block
    let d = gpu.alloc(v.len() * 4)?;
    d.upload_queued_at(0, bytemuck::cast_slice(&v))?;
    Ok(Some(d))
}

/// Box `b`'s in-image rows and columns and their taps, in the kernel's
/// form: the CPU backend's own taps (`paste_taps::<f32>`, the compute type
/// of every GPU dtype).
fn paste_box_taps(b: &PasteBox, g: &PasteGeom) -> PasteTaps {
    let taps = |axis: usize| -> Vec<Tap> {
        paste_taps::<f32>(b, g, axis)
            .into_iter()
            .map(crate::ops::upsample::cuda_tap)
            .collect()
    };
    PasteTaps {
        rows: b.rows,
        cols: b.cols,
        row_taps: taps(0),
        col_taps: taps(1),
    }
}

impl DetectionOps for Cuda {
    /// f32 / f16 / bf16 (f64 has no GPU kernels: a dtype error). The host
    /// builds each box's taps with the CPU's function and uploads them with
    /// the box headers in one copy (at most K (H + W) taps of 16 bytes);
    /// one launch writes every output pixel, equal to the CPU's bit for bit
    /// (paste_masks.cu). Output [K, 1, H, W] dense (the default layout:
    /// one channel).
    fn paste_masks(&self, masks: &Tensor, boxes: &[PasteBox], g: &PasteGeom) -> Result<Tensor> {
        const OP: &str = "paste_masks";
        crate::trace::kernel("paste_masks");
        let gpu = gpu_of(masks)?;
        let dtype = masks.dtype();
        let dt = kdtype(OP, dtype)?;
        let [h, w] = g.img;
        let out = empty(gpu, &[g.k, 1, h, w], dtype)?;
        if g.k * h * w == 0 {
            return Ok(out);
        }
        let d = PasteDims {
            k: g.k,
            mh: g.mh,
            mw: g.mw,
            padding: g.padding,
            h,
            w,
        };
        let per_box: Vec<PasteTaps> = boxes.iter().map(|b| paste_box_taps(b, g)).collect();
        let t = PasteTables::new(&d, &per_box).map_err(kerr(OP))?;
        let tables = alloc(gpu, DType::U8, t.bytes.len())?;
        tables.block().upload_queued_at(0, &t.bytes)?;
        // [K, 1, Mh, Mw]: one channel, so the default (NHWC) layout is the
        // dense [K, Mh, Mw] the kernel reads
        let masks = to_default_layout(masks)?;
        gpu.bind()?;
        // SAFETY: masks dense K*Mh*Mw of dt, out dense K*H*W of dt, tables
        // holds t.bytes, checked against d; all on gpu.
        unsafe {
            gpu.kernels.paste_masks(
                &gpu.stream,
                dt,
                &d,
                &t,
                tables.ptr(),
                ptr(&masks)?,
                ptr(&out)?,
            )
        }
        .map_err(kerr(OP))?;
        traced_sync(gpu)?;
        Ok(out)
    }

    /// One launch over every level; output in the default (channels-last)
    /// layout.
    fn multiscale_roi_align(
        &self,
        xs: &[Tensor],
        boxes: &Tensor,
        levels: &[usize],
        geoms: &[RoiGeom],
    ) -> Result<Tensor> {
        const OP: &str = "roi_align";
        crate::trace::kernel("roi_align_fwd");
        let d = dims(&geoms[0])?;
        let gpu = gpu_of(&xs[0])?;
        let dtype = xs[0].dtype();
        let dt = kdtype(OP, dtype)?;
        let xd = xs
            .iter()
            .map(to_default_layout)
            .collect::<Result<Vec<_>>>()?;
        let maps = roi_levels(OP, &xd, geoms)?;
        let boxes = to_default_layout(boxes)?;
        let lv = upload_levels(gpu, levels, xs.len())?;
        let y = empty(gpu, &[d.k, d.c, d.ph, d.pw], dtype)?;
        gpu.bind()?;
        // SAFETY: every map is NHWC [N, H_l, W_l, C] (default layout) of
        // dt, boxes a dense [K, 5] of dt, lv null or K int32 levels in
        // range, y NHWC [K, PH, PW, C]; all on gpu.
        unsafe {
            gpu.kernels.roi_align_fwd(
                &gpu.stream,
                dt,
                &d,
                &maps,
                ptr(&boxes)?,
                lv.as_ref().map_or(0, |b| b.ptr()),
                ptr(&y)?,
            )
        }
        .map_err(kerr(OP))?;
        traced_sync(gpu)?;
        Ok(y)
    }

    /// Scatters into f32 accumulators with atomics: dx is NOT bitwise
    /// deterministic (summation order varies between runs); it matches the
    /// CPU op to f32 rounding.
    fn multiscale_roi_align_backward(
        &self,
        dy: &Tensor,
        boxes: &Tensor,
        levels: &[usize],
        geoms: &[RoiGeom],
    ) -> Result<Vec<Tensor>> {
        const OP: &str = "roi_align";
        crate::trace::kernel("roi_align_bwd");
        let d = dims(&geoms[0])?;
        let gpu = gpu_of(dy)?;
        let dtype = dy.dtype();
        let dt = kdtype(OP, dtype)?;
        let dy = to_default_layout(dy)?;
        let boxes = to_default_layout(boxes)?;
        // f32 accumulators (atomics), zeroed: the kernel only adds
        let accs = geoms
            .iter()
            .map(|g| zeros(gpu, &g.nchw, DType::F32))
            .collect::<Result<Vec<_>>>()?;
        let maps = roi_levels(OP, &accs, geoms)?;
        let lv = upload_levels(gpu, levels, geoms.len())?;
        gpu.bind()?;
        // SAFETY: dy NHWC [K, PH, PW, C] of x's dtype (the front-end checked
        // it), boxes a dense [K, 5] of that dtype, lv null or K int32 levels
        // in range, every acc f32 NHWC [N, H_l, W_l, C].
        unsafe {
            gpu.kernels.roi_align_bwd(
                &gpu.stream,
                dt,
                &d,
                &maps,
                ptr(&dy)?,
                ptr(&boxes)?,
                lv.as_ref().map_or(0, |b| b.ptr()),
            )
        }
        .map_err(kerr(OP))?;
        let dxs = if dtype == DType::F32 {
            accs
        } else {
            accs.iter().map(|a| cast(a, dtype)).collect::<Result<_>>()?
        };
        traced_sync(gpu)?;
        Ok(dxs)
    }

    /// f32 only (f64 has no GPU kernels); see box_coder.cu for how close it
    /// is to the CPU op.
    fn box_encode(
        &self,
        reference: &Tensor,
        proposals: &Tensor,
        weights: [f64; 4],
    ) -> Result<Tensor> {
        const OP: &str = "box_encode";
        crate::trace::kernel("box_encode");
        coder_f32(OP, reference)?;
        let n = reference.dims()[0];
        let gpu = gpu_of(reference)?;
        let (r, p) = (to_default_layout(reference)?, to_default_layout(proposals)?);
        let out = empty(gpu, &[n, 4], DType::F32)?;
        gpu.bind()?;
        // SAFETY: r, p and out are dense [N, 4] f32 (2-D: the default
        // layout is row-major) on gpu.
        unsafe {
            gpu.kernels.box_encode(
                &gpu.stream,
                ptr(&r)?,
                ptr(&p)?,
                ptr(&out)?,
                n,
                weights.map(|w| w as f32),
            )
        }
        .map_err(kerr(OP))?;
        traced_sync(gpu)?;
        Ok(out)
    }

    /// f32 only, as `box_encode`.
    fn box_decode(
        &self,
        rel_codes: &Tensor,
        boxes: &Tensor,
        weights: [f64; 4],
        bbox_xform_clip: f64,
    ) -> Result<Tensor> {
        const OP: &str = "box_decode";
        crate::trace::kernel("box_decode");
        coder_f32(OP, rel_codes)?;
        let (n, codes) = (rel_codes.dims()[0], rel_codes.dims()[1]);
        let gpu = gpu_of(rel_codes)?;
        let (r, b) = (to_default_layout(rel_codes)?, to_default_layout(boxes)?);
        let out = empty(gpu, &[n, codes], DType::F32)?;
        gpu.bind()?;
        // SAFETY: r and out are dense [N, 4K] f32, b dense [N, 4] f32 (2-D:
        // row-major), on gpu.
        unsafe {
            gpu.kernels.box_decode(
                &gpu.stream,
                ptr(&r)?,
                ptr(&b)?,
                ptr(&out)?,
                n,
                codes / 4,
                weights.map(|w| w as f32),
                bbox_xform_clip as f32,
            )
        }
        .map_err(kerr(OP))?;
        traced_sync(gpu)?;
        Ok(out)
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

    /// proposals.cu: four launches, no upload or host read (see
    /// `proposals/cuda.rs`).
    fn filter_proposals(
        &self,
        boxes: &Tensor,
        logits: &Tensor,
        g: &ProposalGeom,
    ) -> Result<Proposals> {
        super::proposals::cuda::filter(boxes, logits, g)
    }

    // matching / sampling (matching/cuda.rs)
    fn match_boxes(
        &self,
        quality: &Tensor,
        rule: super::MatchRule,
        gt_labels: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        super::matching::cuda::match_boxes(quality, rule, gt_labels)
    }

    fn sample_balanced(
        &self,
        labels: &Tensor,
        batch_size_per_image: usize,
        target: usize,
        seed: u64,
    ) -> Result<super::BalancedSample> {
        super::matching::cuda::sample_balanced(labels, batch_size_per_image, target, seed)
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
    order_dev.upload_queued_at(0, bytemuck::cast_slice(&order_i32))?;
    let cats_dev = match cats {
        Some(c) => {
            let d = g.alloc(k * 8)?;
            d.upload_queued_at(0, bytemuck::cast_slice(c))?;
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

/// Box coding on the GPU is f32: f64 has no GPU kernels.
fn coder_f32(op: &'static str, t: &Tensor) -> Result<()> {
    if t.dtype() == DType::F32 {
        Ok(())
    } else {
        Err(Error::dtype(op, "f32 on the GPU", t.dtype()))
    }
}
