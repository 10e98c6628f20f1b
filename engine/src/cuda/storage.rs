//! GPU memory as a tensor's storage: a block from the caching allocator and
//! the dtype and count of the elements in it.

use super::runtime::{DeviceBlock, Gpu};
use crate::DType;
use std::sync::Arc;

/// Elements of one dtype in a block of device memory, shared by reference
/// count: views of one tensor point at the same block. Ops write only their
/// fresh outputs, except the explicit in-place primitives (the optimizer's
/// parameter / momentum updates, the loss scaler's gradient unscaling),
/// which write the shared block through its address, ordered by the stream.
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
    /// The block holding the elements (its checked copies, record_stream).
    pub fn block(&self) -> &DeviceBlock {
        &self.block
    }
    pub fn gpu(&self) -> &'static Gpu {
        self.block.gpu()
    }
}
