//! The kernel families: one `<name>.cu` file of CUDA C++ with its
//! `<name>.rs` beside it, which holds the family's registry entry
//! (`pub const KERNEL`), its launch-shape rules and its typed launchers
//! (`impl KernelLibrary` blocks). `common.cuh` is the header every `.cu`
//! includes. Adding a family: the two files and its name in the list below.

use crate::source::Kernel;

macro_rules! families {
    ($($family:ident),* $(,)?) => {
        $(pub mod $family;)*

        /// Every kernel file the crate ships, in the order of the list.
        pub const KERNELS: &[Kernel] = &[$($family::KERNEL),*];
    };
}

families!(
    batchnorm,
    bn1d_relu,
    elementwise,
    reduce,
    pool,
    softmax_xent,
    sgd,
    copy,
    roi_align,
    nms,
    box_coder,
    index,
    loss,
    upsample,
    paste_masks,
    proposals,
    matching,
    augment,
);
