//! GPU memory as a tensor's storage: a block from the caching allocator and
//! the dtype and count of the elements in it.

use super::runtime::{DeviceBlock, Gpu};
use crate::DType;
use std::sync::Arc;

/// Elements of one dtype in a block of device memory. Shared (immutable)
/// like host storage: views of one tensor point at the same block.
#[derive(Clone)]
pub struct DeviceStorage {
    block: Arc<DeviceBlock>,
    dtype: DType,
    len: usize,
}

impl std::fmt::Debug for DeviceStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DeviceStorage({} x {}, {:?})",
            self.len, self.dtype, self.block
        )
    }
}

impl DeviceStorage {
    /// `len` elements of `dtype` in `block` (which holds at least that).
    pub(crate) fn new(block: DeviceBlock, dtype: DType, len: usize) -> DeviceStorage {
        debug_assert!(block.bytes() >= len * dtype.size_in_bytes());
        DeviceStorage {
            block: Arc::new(block),
            dtype,
            len,
        }
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Address of element 0.
    pub fn ptr(&self) -> u64 {
        self.block.ptr()
    }
    pub fn gpu(&self) -> &'static Gpu {
        self.block.gpu()
    }
}
