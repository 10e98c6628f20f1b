//! CPU reference implementations of every op, each with its backward.
//!
//! Convention: an op checks its arguments and returns a clear error, computes
//! in f32 (f64 for f64 tensors; f16/bf16 are widened to f32 and the result
//! rounded back), then `autograd::record`s a closure that computes the input
//! gradients with other ops. One file per family of ops.

pub mod batchnorm;
pub mod binary;
pub mod conv;
pub mod loss;
pub mod matmul;
pub mod nms;
pub mod pool;
pub mod reduce;
pub mod roi_align;
pub mod shape;
pub mod unary;
pub mod upsample;

pub use batchnorm::*;
pub use conv::{Conv2dParams, ConvTranspose2dParams};
pub use matmul::*;
pub use nms::{batched_nms, box_iou, nms};

/// Runs `$body` with `$T` = the compute type for `$dtype` (f64 or f32), or
/// returns a dtype error naming `$op` for integer dtypes.
#[macro_export]
macro_rules! dispatch_float {
    ($op:expr, $dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::DType::F64 => {
                type $T = f64;
                $body
            }
            $crate::DType::F32 | $crate::DType::F16 | $crate::DType::BF16 => {
                type $T = f32;
                $body
            }
            d => {
                return Err($crate::Error::dtype(
                    $op,
                    "a float dtype (f64, f32, f16, bf16)",
                    d,
                ))
            }
        }
    };
}

use crate::{Error, Result, Rng, Tensor};

/// Every op family's GPU parity cases (`<family>/parity.rs`), in a fixed
/// order; `seed` draws each case's own seed.
pub fn parity_cases(seed: u64) -> Vec<crate::parity::Case> {
    let mut rng = Rng::new(seed);
    let mut all = Vec::new();
    pool::parity::cases(&mut rng, &mut all);
    conv::parity::cases(&mut rng, &mut all);
    all
}

/// Every tensor must have `a`'s dtype.
pub(crate) fn same_dtype(op: &'static str, ts: &[&Tensor]) -> Result<()> {
    let d = ts[0].dtype();
    for t in &ts[1..] {
        if t.dtype() != d {
            return Err(Error::dtype(
                op,
                format!("{d} (like the first operand)"),
                t.dtype(),
            ));
        }
    }
    Ok(())
}

/// The tensor must have exactly `rank` dims.
pub(crate) fn expect_rank(op: &'static str, what: &str, t: &Tensor, rank: usize) -> Result<()> {
    if t.rank() != rank {
        return Err(Error::shape(
            op,
            format!("{what} must have {rank} dims, got shape {:?}", t.dims()),
        ));
    }
    Ok(())
}

/// Applies `f` to chunks of `out` in parallel when the work is large enough
/// to pay for the threads; `f` gets the chunk's start index.
pub(crate) fn par_chunks<T: Send>(out: &mut [T], f: impl Fn(usize, &mut [T]) + Sync) {
    use rayon::prelude::*;
    const GRAIN: usize = 1 << 15;
    if out.len() <= GRAIN {
        f(0, out);
    } else {
        out.par_chunks_mut(GRAIN)
            .enumerate()
            .for_each(|(i, c)| f(i * GRAIN, c));
    }
}
