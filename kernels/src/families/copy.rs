//! Gathering a strided view into a dense buffer, and writing one strided
//! view into another (copy.cu).

use crate::library::{config, driver, DevPtr, KernelLibrary};
use crate::error::{Error, Result};
use crate::launch;
use crate::source::Kernel;
use cudarc::driver::{CudaStream, DeviceRepr, PushKernelArg};

pub const KERNEL: Kernel = kernel!("copy",
    typed []
    untyped ["strided_copy_1", "strided_copy_2", "strided_copy_4", "strided_copy_8",
             "strided_assign_1", "strided_assign_2", "strided_assign_4", "strided_assign_8"]);

/// Most dims a strided copy handles (`SLMLP_COPY_MAX_RANK` in copy.cu).
pub const COPY_MAX_RANK: usize = 8;

/// copy.cu's `StridedView`, passed by value.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct StridedView {
    pub rank: i32,
    pub shape: [i64; COPY_MAX_RANK],
    pub src_strides: [i64; COPY_MAX_RANK],
}

// SAFETY: plain old data with the same C layout as copy.cu's struct.
unsafe impl DeviceRepr for StridedView {}

/// `v` (at most N values, checked by the caller) as a kernel argument
/// array, the unused tail set to `fill`.
pub(crate) fn padded<const N: usize>(v: &[usize], fill: i64) -> [i64; N] {
    std::array::from_fn(|i| v.get(i).map_or(fill, |&x| x as i64))
}

impl StridedView {
    /// `shape` / `src_strides` in the destination's physical order
    /// (outermost first).
    pub fn new(shape: &[usize], src_strides: &[usize]) -> Result<StridedView> {
        if shape.len() != src_strides.len() || shape.len() > COPY_MAX_RANK {
            return Err(Error::Shape(format!(
                "strided copy of rank {} (strides {}): at most {COPY_MAX_RANK} dims",
                shape.len(),
                src_strides.len()
            )));
        }
        Ok(StridedView {
            rank: shape.len() as i32,
            shape: padded(shape, 1),
            src_strides: padded(src_strides, 0),
        })
    }
}

/// copy.cu's `StridedPair`, passed by value: dims in the destination's
/// physical order (outermost first) with both sides' element strides.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct StridedPair {
    pub rank: i32,
    pub shape: [i64; COPY_MAX_RANK],
    pub src_strides: [i64; COPY_MAX_RANK],
    pub dst_strides: [i64; COPY_MAX_RANK],
}

// SAFETY: plain old data with the same C layout as copy.cu's struct.
unsafe impl DeviceRepr for StridedPair {}

impl StridedPair {
    /// `shape` with the source's and destination's strides, all in the
    /// destination's physical order.
    pub fn new(shape: &[usize], src_strides: &[usize], dst_strides: &[usize]) -> Result<StridedPair> {
        let rank = shape.len();
        if src_strides.len() != rank || dst_strides.len() != rank || rank > COPY_MAX_RANK {
            return Err(Error::Shape(format!(
                "strided assign of rank {rank} (strides {} and {}): at most {COPY_MAX_RANK} dims",
                src_strides.len(),
                dst_strides.len()
            )));
        }
        Ok(StridedPair {
            rank: rank as i32,
            shape: padded(shape, 1),
            src_strides: padded(src_strides, 0),
            dst_strides: padded(dst_strides, 0),
        })
    }
}

impl KernelLibrary {
    /// dst[dst offset of element i] = src[src offset of element i] for the
    /// n elements of `view`, elements of `elem_bytes` (1, 2, 4 or 8) bytes
    /// (copy.cu strided_assign).
    ///
    /// # Safety
    /// src and dst must hold every element the view's strides address from
    /// them, and no two elements of the destination may share an offset.
    pub unsafe fn strided_assign(
        &self,
        stream: &CudaStream,
        elem_bytes: usize,
        src: DevPtr,
        dst: DevPtr,
        n: usize,
        view: &StridedPair,
    ) -> Result<()> {
        self.strided(stream, "assign", elem_bytes, src, dst, n, view)
    }

    /// dst[i] = src[offset of the i-th element of `view`], i < n, elements
    /// of `elem_bytes` (1, 2, 4 or 8) bytes (copy.cu).
    ///
    /// # Safety
    /// src must hold every element the view addresses, dst n elements.
    pub unsafe fn strided_copy(
        &self,
        stream: &CudaStream,
        elem_bytes: usize,
        src: DevPtr,
        dst: DevPtr,
        n: usize,
        view: &StridedView,
    ) -> Result<()> {
        self.strided(stream, "copy", elem_bytes, src, dst, n, view)
    }

    /// Launches `strided_<kind>_<elem_bytes>` over n elements.
    ///
    /// # Safety
    /// As [`KernelLibrary::strided_copy`] / [`KernelLibrary::strided_assign`].
    #[allow(clippy::too_many_arguments)]
    unsafe fn strided<V: DeviceRepr>(
        &self,
        stream: &CudaStream,
        kind: &str,
        elem_bytes: usize,
        src: DevPtr,
        dst: DevPtr,
        n: usize,
        view: &V,
    ) -> Result<()> {
        if !matches!(elem_bytes, 1 | 2 | 4 | 8) {
            return Err(Error::Shape(format!(
                "strided {kind} of {elem_bytes}-byte elements: 1, 2, 4 or 8 only"
            )));
        }
        let Some(shape) = launch::elementwise(n, 1, &self.gpu()) else {
            return Ok(());
        };
        let name = format!("strided_{kind}_{elem_bytes}");
        let f = self.function(&name)?;
        let n = n as i64;
        let mut b = stream.launch_builder(&f);
        b.arg(&src).arg(&dst).arg(&n).arg(view);
        b.launch(config(shape)).map_err(driver(&name))?;
        Ok(())
    }
}
