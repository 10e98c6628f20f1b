//! The fused SGD step (sgd.cu). Its launcher is the optimizer's, in
//! engine/src/ops/optim/cuda.rs.

use crate::source::Kernel;

pub const KERNEL: Kernel = kernel!("sgd",
    typed ["sgd_step"]
    untyped []);
