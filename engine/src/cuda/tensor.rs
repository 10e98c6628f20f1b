//! Tensors on the GPU: their storage, allocation, layouts and the copies
//! between host and device.
//!
//! Layout convention (PyTorch's `channels_last`): a 4-D tensor on the GPU is
//! stored NHWC while its logical shape stays NCHW, i.e. its strides are
//! `[H*W*C, 1, W*C, C]`. That is what cuDNN's fast bf16/f16 convolutions and
//! our BatchNorm kernels read and write. Every other rank is row-major.
//! `Tensor::to_device` applies the convention on upload and undoes it on
//! download; GPU ops keep it.

use super::queued_read::QueuedDownload;
use super::runtime::{gpu, DeviceBlock, Gpu};
use super::storage::DeviceStorage;
use crate::layout::{contiguous_strides, gpu_strides, Layout};
use crate::{CpuStorage, DType, Device, Error, Result, Storage, Tensor};
use std::sync::atomic::{AtomicBool, Ordering};

static POISON: AtomicBool = AtomicBool::new(false);

/// When on, every new device buffer is filled with 0xFF bytes (NaN in every
/// float dtype) before use, so an op that forgets to write part of its
/// output fails the parity check instead of passing on stale zeros.
pub fn set_poison(on: bool) {
    POISON.store(on, Ordering::Relaxed);
}

/// Uninitialised storage for `len` elements of `dtype` (poisoned when
/// [`set_poison`] is on).
pub fn alloc(gpu: &'static Gpu, dtype: DType, len: usize) -> Result<DeviceStorage> {
    let bytes = len.checked_mul(dtype.size_in_bytes()).ok_or_else(|| {
        Error::arg(
            "cuda alloc",
            format!("{len} elements of {dtype} overflow the address space"),
        )
    })?;
    let block = gpu.alloc(bytes)?;
    if POISON.load(Ordering::Relaxed) {
        block.memset(0xFF)?;
    }
    Ok(DeviceStorage::new(block, dtype, len))
}

/// A new uninitialised GPU tensor with the default layout.
pub fn empty(gpu: &'static Gpu, shape: &[usize], dtype: DType) -> Result<Tensor> {
    let n = shape.iter().product();
    let s = alloc(gpu, dtype, n)?;
    Ok(Tensor::from_device_parts(
        s,
        Layout {
            shape: shape.to_vec(),
            strides: gpu_strides(shape),
            offset: 0,
        },
    ))
}

/// A new GPU tensor of zeros with the default layout.
pub fn zeros(gpu: &'static Gpu, shape: &[usize], dtype: DType) -> Result<Tensor> {
    let t = empty(gpu, shape, dtype)?;
    storage_of(&t)?.block().memset(0)?;
    Ok(t)
}

/// The runtime of the GPU `t` lives on (an error for a host tensor).
pub fn gpu_of(t: &Tensor) -> Result<&'static Gpu> {
    match t.device() {
        Device::Cuda(i) => gpu(i),
        Device::Cpu => Err(Error::arg(
            "cuda",
            "a host tensor was passed where a GPU tensor is needed; move it with to_device",
        )),
    }
}

/// The device storage behind `t`.
pub fn storage_of(t: &Tensor) -> Result<&DeviceStorage> {
    match t.storage().as_ref() {
        Storage::Cuda(d) => Ok(d),
        _ => Err(Error::arg(
            "cuda",
            "a host tensor was passed where a GPU tensor is needed; move it with to_device",
        )),
    }
}

/// Address of `t`'s first element (its layout offset applied).
pub fn ptr(t: &Tensor) -> Result<u64> {
    let (block, offset) = block_of(t)?;
    Ok(block.ptr() + offset as u64)
}

/// The block behind `t` and the byte offset of `t`'s first element in it
/// (for the block's checked copies).
pub fn block_of(t: &Tensor) -> Result<(&DeviceBlock, usize)> {
    let s = storage_of(t)?;
    Ok((s.block(), t.layout().offset * s.dtype().size_in_bytes()))
}

/// Copies the GPU tensor `src` over the dense GPU tensor `dst` of the same
/// shape and dtype, in place (queued): how state that a step replaces
/// reaches the storage a CUDA graph recorded (`nn::Buffer::set`).
pub fn overwrite(dst: &Tensor, src: &Tensor) -> Result<()> {
    if dst.dims() != src.dims() || dst.dtype() != src.dtype() || !is_dense(dst.layout()) {
        return Err(Error::arg(
            "cuda overwrite",
            format!(
                "{:?} {} over a {:?} {} tensor (dense: {})",
                src.dims(),
                src.dtype(),
                dst.dims(),
                dst.dtype(),
                is_dense(dst.layout())
            ),
        ));
    }
    let same = src.strides() == dst.strides() && is_dense(src.layout());
    let src = if same {
        src.clone()
    } else {
        copy_to_strides(src, dst.strides())?
    };
    let (to, at) = block_of(dst)?;
    let (from, from_at) = block_of(&src)?;
    to.copy_from(at, from, from_at, dst.numel() * dst.dtype().size_in_bytes())
}

/// Writes `bytes` (host, in `t`'s dtype and storage order) over the dense
/// GPU tensor `t` in place: a queued upload into its storage, so work
/// recorded against `t` (a CUDA graph) reads the new values.
pub fn write_bytes(t: &Tensor, bytes: &[u8]) -> Result<()> {
    if !is_dense(t.layout()) || bytes.len() != t.numel() * t.dtype().size_in_bytes() {
        return Err(Error::arg(
            "cuda write",
            format!(
                "{} B for a {:?} {} tensor (dense: {})",
                bytes.len(),
                t.dims(),
                t.dtype(),
                is_dense(t.layout())
            ),
        ));
    }
    let (block, offset) = block_of(t)?;
    block.upload_queued_at(offset, bytes)
}

/// Dims sorted outermost-first by stride: the permutation that lists `l`'s
/// dims in its physical order.
fn physical_order(l: &Layout) -> Vec<usize> {
    let mut perm: Vec<usize> = (0..l.shape.len()).collect();
    // stable: equal strides (size-1 dims) keep their logical order
    perm.sort_by(|&a, &b| l.strides[b].cmp(&l.strides[a]));
    perm
}

/// Whether the view covers `numel` consecutive elements exactly (in some
/// dim order): what a kernel over a flat buffer can read directly.
pub fn is_dense(l: &Layout) -> bool {
    let mut expected = 1;
    for &d in physical_order(l).iter().rev() {
        if l.shape[d] == 1 {
            continue;
        }
        if l.strides[d] != expected {
            return false;
        }
        expected *= l.shape[d];
    }
    true
}

/// `x` copied on the GPU into a fresh buffer whose layout has `strides`
/// (which must be dense for x's shape). No autograd.
pub fn copy_to_strides(x: &Tensor, strides: &[usize]) -> Result<Tensor> {
    let g = gpu_of(x)?;
    let dtype = x.dtype();
    let n = x.numel();
    let s = alloc(g, dtype, n)?;
    let out = Layout {
        shape: x.dims().to_vec(),
        strides: strides.to_vec(),
        offset: 0,
    };
    if !is_dense(&out) {
        return Err(Error::arg(
            "copy",
            format!("strides {strides:?} are not dense for shape {:?}", x.dims()),
        ));
    }
    let order = physical_order(&out);
    let shape: Vec<usize> = order.iter().map(|&d| x.dims()[d]).collect();
    let src_strides: Vec<usize> = order.iter().map(|&d| x.strides()[d]).collect();
    let view = kernels::device::StridedView::new(&shape, &src_strides)
        .map_err(|e| Error::arg("copy", e.to_string()))?;
    g.bind()?;
    // SAFETY: x's storage holds every element its layout addresses; the
    // new buffer holds n elements.
    unsafe {
        g.kernels
            .strided_copy(&g.stream, dtype.size_in_bytes(), ptr(x)?, s.ptr(), n, &view)
    }
    .map_err(|e| Error::arg("copy", e.to_string()))?;
    Ok(Tensor::from_device_parts(s, out))
}

/// `x` itself when it has the GPU default layout, else a copy that has it.
/// No autograd.
pub fn to_default_layout(x: &Tensor) -> Result<Tensor> {
    if x.layout().has_gpu_strides() {
        return Ok(x.clone());
    }
    copy_to_strides(x, &gpu_strides(x.dims()))
}

/// A row-major copy of a GPU tensor (no autograd).
pub fn contiguous(x: &Tensor) -> Result<Tensor> {
    copy_to_strides(x, &contiguous_strides(x.dims()))
}

fn host_bytes(s: &CpuStorage) -> &[u8] {
    crate::with_storage!(s, v => bytemuck::cast_slice(v))
}

/// A host tensor copied to GPU `ordinal` with the default layout.
pub fn upload(x: &Tensor, ordinal: usize) -> Result<Tensor> {
    let g = gpu(ordinal)?;
    // 4-D: reorder to NHWC on the host, then copy the bytes as they are.
    let host = if x.rank() == 4 {
        x.detach().permute(&[0, 2, 3, 1])?.contiguous()?
    } else {
        x.detach().contiguous()?
    };
    let size = x.dtype().size_in_bytes();
    let start = host.layout().offset * size;
    let bytes = &host_bytes(host.storage().cpu("upload")?)[start..start + x.numel() * size];
    let s = alloc(g, x.dtype(), x.numel())?;
    s.block().upload_queued_at(0, bytes)?;
    Ok(Tensor::from_device_parts(
        s,
        Layout {
            shape: x.dims().to_vec(),
            strides: gpu_strides(x.dims()),
            offset: 0,
        },
    ))
}

/// A GPU tensor copied to a row-major host tensor (waits for queued work).
pub fn download(x: &Tensor) -> Result<Tensor> {
    let dense = if is_dense(x.layout()) {
        x.clone()
    } else {
        contiguous(x)?
    };
    let dtype = x.dtype();
    let mut bytes = vec![0u8; x.numel() * dtype.size_in_bytes()];
    let (block, offset) = block_of(&dense)?;
    block.download_at(offset, &mut bytes)?;
    // The same strides on the host, over a buffer that starts at the
    // view's first element; then make it row-major there.
    let l = dense.layout();
    let host = host_tensor(dtype, &[x.numel()], &bytes)?;
    let view = host.view(Layout {
        shape: l.shape.clone(),
        strides: l.strides.clone(),
        offset: 0,
    });
    Ok(view.host_contiguous())
}

/// A GPU tensor's values, row-major, queued for the host
/// (`Tensor::queue_to_host`; [`host_tensor`] makes the tensor of them).
pub fn download_queued(x: &Tensor) -> Result<QueuedDownload> {
    // a row-major copy first unless it is one (1-D reads always are); the
    // copy may be freed at once (stream-ordered reuse)
    let dense = if x.is_contiguous() {
        x.clone()
    } else {
        contiguous(x)?
    };
    let (block, offset) = block_of(&dense)?;
    block.download_queued_at(offset, x.numel() * x.dtype().size_in_bytes())
}

/// Host bytes of `dims` `dtype` values, row-major, as a host tensor.
pub fn host_tensor(dtype: DType, dims: &[usize], bytes: &[u8]) -> Result<Tensor> {
    let storage = CpuStorage::from_bytes(dtype, bytes)
        .ok_or_else(|| Error::arg("download", "byte count does not match the dtype"))?;
    Tensor::from_storage(Storage::Cpu(storage), dims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(shape: &[usize], strides: &[usize], offset: usize) -> Layout {
        Layout {
            shape: shape.to_vec(),
            strides: strides.to_vec(),
            offset,
        }
    }

    #[test]
    fn four_d_tensors_default_to_channels_last() {
        assert_eq!(gpu_strides(&[2, 3, 4, 5]), vec![60, 1, 15, 3]);
        assert_eq!(gpu_strides(&[2, 3]), vec![3, 1]);
        assert_eq!(gpu_strides(&[7]), vec![1]);
        assert_eq!(gpu_strides(&[2, 3, 4]), vec![12, 4, 1]);
    }

    #[test]
    fn physical_order_lists_dims_outermost_first() {
        let nhwc = layout(&[2, 3, 4, 5], &[60, 1, 15, 3], 0);
        assert_eq!(physical_order(&nhwc), vec![0, 2, 3, 1]);
        let t = layout(&[4, 6], &[1, 4], 0);
        assert_eq!(physical_order(&t), vec![1, 0]);
    }

    #[test]
    fn dense_means_a_compact_run_of_elements() {
        assert!(is_dense(&layout(&[2, 3, 4, 5], &[60, 1, 15, 3], 0)));
        assert!(is_dense(&layout(&[2, 3, 4, 5], &[60, 20, 5, 1], 7)));
        // a transposed matrix is dense (a permutation of row-major)
        assert!(is_dense(&layout(&[4, 6], &[1, 4], 0)));
        // size-1 dims may carry any stride
        assert!(is_dense(&layout(&[8, 16, 1, 1], &[16, 1, 16, 16], 0)));
        // a narrowed view skips elements: not dense
        assert!(!is_dense(&layout(&[4, 3], &[6, 1], 0)));
        // a broadcast (stride 0) repeats elements: not dense
        assert!(!is_dense(&layout(&[4, 3], &[0, 1], 0)));
    }

    #[test]
    fn host_tensors_are_refused_where_a_gpu_tensor_is_needed() {
        let t = Tensor::zeros(&[2, 2], DType::F32);
        let e = gpu_of(&t).unwrap_err().to_string();
        assert!(e.contains("host tensor"), "{e}");
        assert!(storage_of(&t).is_err());
        assert!(ptr(&t).is_err());
    }

    #[test]
    fn moving_to_a_missing_gpu_is_a_clear_error() {
        // On a machine without CUDA the probe names what is missing; on a
        // GPU machine the round trip must give back the same values.
        let t = Tensor::from_vec((0..24).map(|i| i as f32).collect(), &[1, 2, 3, 4]).unwrap();
        match t.to_device(Device::Cuda(0)) {
            Err(e) => assert!(matches!(e, Error::DeviceUnavailable { .. }), "{e}"),
            Ok(d) => {
                assert!(d.layout().has_gpu_strides());
                let back = d.to_device(Device::Cpu).unwrap();
                assert_eq!(back.to_vec::<f32>().unwrap(), t.to_vec::<f32>().unwrap());
            }
        }
    }
}
