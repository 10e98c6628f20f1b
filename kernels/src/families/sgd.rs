//! The fused SGD steps (one param: `sgd_step_<t>`; many params in one
//! launch: `sgd_multi_<t>`) and LARS steps (sgd.cu). Their launchers are the
//! optimizer's, in engine/src/ops/optim/cuda.rs.

use crate::source::Kernel;

pub const KERNEL: Kernel = kernel!("sgd",
    typed ["sgd_step", "sgd_multi", "lars_step"]
    untyped ["lars_norms", "lars_trust"]);
