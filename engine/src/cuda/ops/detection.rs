//! Detection ops on the GPU with the CPU ops' semantics (engine/src/ops/
//! roi_align.rs, nms.rs): RoIAlign forward/backward (roi_align.cu) over
//! channels-last feature maps, and NMS with torchvision's CUDA design (IoU
//! bit mask on the GPU, nms.cu; score sort and greedy pass on the host,
//! where K is at most a few thousand).
//!
//! The public ops in crate::ops validate their arguments (the CPU op's own
//! checks, boxes read on the host) before dispatching here.

use super::cast;
use crate::autograd::record;
use crate::cuda::launch::{kdtype, kerr};
use crate::cuda::launch::{on_device, same_gpu, traced_sync};
use crate::cuda::tensor::{download, empty, ptr, to_default_layout, zeros};
use crate::{DType, Device, Error, Result, Tensor};
use kernels::device::{nms_col_blocks, nms_greedy, RoiAlignDims};

/// RoIAlign of x [N, C, H, W] over boxes [K, 5], already validated by
/// `Tensor::roi_align` (which documents the semantics). Returns [K, C, ph,
/// pw] in the default (channels-last) layout; backward scatters into dx with
/// f32 atomics, so dx is NOT bitwise deterministic on the GPU (summation
/// order varies between runs); it matches the CPU op to f32 rounding.
pub fn roi_align(
    x: &Tensor,
    boxes: &Tensor,
    output_size: [usize; 2],
    spatial_scale: f64,
    sampling_ratio: i64,
    aligned: bool,
) -> Result<Tensor> {
    const OP: &str = "roi_align";
    crate::trace::op(OP, "forward", "cuda:roi_align_fwd", &[x, boxes], || {
        let [n, c, h, w] = match *x.dims() {
            [n, c, h, w] => [n, c, h, w],
            _ => {
                return Err(Error::shape(
                    OP,
                    format!("input must be [N, C, H, W], got {:?}", x.dims()),
                ))
            }
        };
        let dev = x.device();
        let boxes = to_default_layout(&on_device(&boxes.detach(), dev)?)?;
        let g = same_gpu(OP, &[x, &boxes])?;
        let dt = kdtype(OP, x.dtype())?;
        let d = RoiAlignDims {
            n,
            c,
            h,
            w,
            k: boxes.dims()[0],
            ph: output_size[0],
            pw: output_size[1],
            // the CPU op rounds it to T (f32 for every GPU dtype) too
            spatial_scale: spatial_scale as f32,
            // validate() bounds the samples per box by 2^28: a larger ratio
            // was rejected there
            sampling_ratio: i32::try_from(sampling_ratio.max(-1)).map_err(|_| {
                Error::arg(
                    OP,
                    format!("sampling_ratio {sampling_ratio} exceeds the GPU kernel's int32"),
                )
            })?,
            aligned,
        };
        let xd = to_default_layout(x)?;
        let y = empty(g, &[d.k, c, d.ph, d.pw], x.dtype())?;
        g.bind()?;
        // SAFETY: xd is NHWC [N, H, W, C] (default layout), boxes a dense
        // [K, 5] of x's dtype, y NHWC [K, PH, PW, C]; all on g.
        unsafe {
            g.kernels
                .roi_align_fwd(&g.stream, dt, ptr(&xd)?, ptr(&boxes)?, ptr(&y)?, &d)
        }
        .map_err(kerr(OP))?;
        traced_sync(g)?;
        let dtype = x.dtype();
        Ok(record(y, OP, &[x], move |dy| {
            crate::trace::op(OP, "backward", "cuda:roi_align_bwd", &[dy], || {
                let y_shape = [d.k, c, d.ph, d.pw];
                if dy.dims() != y_shape {
                    return Err(Error::shape(
                        OP,
                        format!(
                            "gradient {:?} for an output of shape {y_shape:?}",
                            dy.dims()
                        ),
                    ));
                }
                // the kernel reads dy in x's dtype (the CPU op converts too)
                let dy = cast(&on_device(dy, dev)?, dtype)?;
                let dy = to_default_layout(&dy)?;
                // f32 accumulator (atomics), zeroed: the kernel only adds
                let acc = zeros(g, &[n, c, h, w], DType::F32)?;
                g.bind()?;
                // SAFETY: dy NHWC [K, PH, PW, C] of x's dtype, boxes as in
                // the forward, acc f32 NHWC [N, H, W, C].
                unsafe {
                    g.kernels
                        .roi_align_bwd(&g.stream, dt, ptr(&dy)?, ptr(&boxes)?, ptr(&acc)?, &d)
                }
                .map_err(kerr(OP))?;
                let dx = if dtype == DType::F32 {
                    acc
                } else {
                    cast(&acc, dtype)?
                };
                traced_sync(g)?;
                Ok(vec![Some(dx)])
            })
        }))
    })
}

/// `crate::ops::nms` on the GPU (arguments already validated: boxes [K, 4],
/// scores [K], one float dtype): the kept indices in decreasing score order,
/// the same set and order as the CPU op (IoU in f32, same operation order,
/// compared in f64 with `iou_threshold`).
pub fn nms(boxes: &Tensor, scores: &Tensor, iou_threshold: f64) -> Result<Vec<usize>> {
    const OP: &str = "nms";
    let keep = crate::trace::op(OP, "forward", "cuda:nms_mask", &[boxes, scores], || {
        let k = boxes.dims()[0];
        let dev = boxes.device();
        let Device::Cuda(ordinal) = dev else {
            return Err(Error::arg(OP, "boxes must be on a GPU here"));
        };
        let g = crate::cuda::gpu(ordinal)?;
        let dt = kdtype(OP, boxes.dtype())?;
        // K scores: sorted on the host with the CPU op's exact rule
        let host_scores = if scores.device() == Device::Cpu {
            scores.to_vec_f64()
        } else {
            download(scores)?.to_vec_f64()
        };
        // f64 orders every GPU dtype's values exactly
        let order = crate::ops::nms::order_desc(&host_scores);
        if k == 0 {
            return Ok(index_tensor(Vec::new()));
        }
        let order_i32: Vec<i32> = order.iter().map(|&i| i as i32).collect();
        // int32 has no tensor dtype: a raw block
        let order_dev = g.alloc(k * 4)?;
        order_dev.upload_at(0, bytemuck::cast_slice(&order_i32))?;
        let boxes = to_default_layout(&on_device(&boxes.detach(), dev)?)?;
        let words = k * nms_col_blocks(k);
        let mask = g.alloc(words * 8)?;
        g.bind()?;
        // SAFETY: boxes dense [K, 4] of dt, order K int32 in [0, K), mask
        // holds K * col_blocks u64.
        unsafe {
            g.kernels.nms_mask(
                &g.stream,
                dt,
                ptr(&boxes)?,
                order_dev.ptr(),
                mask.ptr(),
                k,
                iou_threshold,
            )
        }
        .map_err(kerr(OP))?;
        let mut host = vec![0u64; words];
        mask.download_at(0, bytemuck::cast_slice_mut(&mut host))?;
        let keep = nms_greedy(&host, k).into_iter().map(|r| order[r]).collect();
        Ok(index_tensor(keep))
    })?;
    Ok(keep.to_vec_f64().into_iter().map(|v| v as usize).collect())
}

/// The kept indices as an i64 [n] host tensor (what the trace logs).
fn index_tensor(keep: Vec<usize>) -> Tensor {
    let n = keep.len();
    let v: Vec<i64> = keep.into_iter().map(|i| i as i64).collect();
    Tensor::from_vec(v, &[n]).expect("a [n] vector of n indices")
}

#[cfg(test)]
mod tests {
    use crate::ops::nms::order_desc;

    #[test]
    fn order_is_descending_stable_nan_first() {
        let s = [0.5, f64::NAN, 0.9, 0.5, f64::NAN, -1.0];
        assert_eq!(order_desc(&s), vec![1, 4, 2, 0, 3, 5]);
    }
}
