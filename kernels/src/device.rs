//! The public facade of the GPU side, what the engine names as
//! `kernels::device::...`: [`KernelLibrary`] and the shared operand types
//! from [`crate::library`], and every family's public launcher operand
//! types from `families/<name>.rs` (whose `impl KernelLibrary` blocks hold
//! the typed launchers). Only re-exports: nothing in the crate imports this
//! module, so it closes no import cycle.

pub use crate::library::{open, DevPtr, Dtype, KernelLibrary};

pub use crate::families::augment::{CropRecord, CropTable};
pub use crate::families::batchnorm::{
    bn_bwd_workspace_floats, bn_fwd_workspace_floats, BnBackward, BnForward,
};
pub use crate::families::bn1d_relu::{Bn1dBackward, Bn1dForward};
pub use crate::families::copy::{StridedPair, StridedView, COPY_MAX_RANK};
pub use crate::families::elementwise::{BcastView, Binary, Unary, BCAST_MAX_RANK};
pub use crate::families::index::{sort_padded_len, IndexDims, SORT_MAX_ROW};
pub use crate::families::loss::{PointwiseLoss, SoftmaxDims};
pub use crate::families::matching::{
    sample_scratch_bytes, sample_scratch_zeroed, SAMPLE_MAX_LABELS,
};
pub use crate::families::nms::{nms_col_blocks, nms_greedy, nms_launch, NMS_BLOCK};
pub use crate::families::paste_masks::{PasteDims, PasteTables, PasteTaps};
pub use crate::families::pool::{AvgMode, PoolDims};
pub use crate::families::proposals::{
    PropDtype, ProposalDims, PROPOSAL_MAX_CANDIDATES, PROPOSAL_MAX_IMAGES, PROPOSAL_MAX_LEVELS,
    PROPOSAL_MAX_SEGMENT,
};
pub use crate::families::roi_align::{RoiAlignDims, RoiLevel, ROI_MAX_LEVELS};
pub use crate::families::softmax_xent::Xent;
pub use crate::families::upsample::{ResizeDims, ResizeTables, Tap};
