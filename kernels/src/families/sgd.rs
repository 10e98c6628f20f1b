//! The fused SGD and LARS steps (sgd.cu). Their launchers are the
//! optimizer's, in engine/src/ops/optim/cuda.rs.

use crate::source::Kernel;

pub const KERNEL: Kernel = kernel!("sgd",
    typed ["sgd_step", "lars_step"]
    untyped ["lars_norms", "lars_trust"]);
