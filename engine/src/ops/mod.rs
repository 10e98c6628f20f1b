//! Every op, one folder per family (docs/ENGINE.md): `mod.rs` checks the
//! arguments, traces and records autograd once over the family's trait of
//! primitives, which `cpu.rs` (the reference) and `cuda.rs` implement.
//!
//! CPU convention: compute in f32 (f64 for f64 tensors; f16/bf16 are
//! widened to f32 and the result rounded back).

pub mod augment;
pub mod batchnorm;
pub mod conv;
pub mod copy;
#[cfg(test)]
mod coverage;
pub mod detection;
pub mod elementwise;
pub mod index;
pub mod loss;
pub mod matmul;
pub mod optim;
pub mod pool;
pub mod reduce;
pub mod shape;
pub mod upsample;

pub use batchnorm::*;
pub use conv::{Conv2dParams, ConvTranspose2dParams};
pub use detection::{batched_nms, box_iou, nms};
pub use matmul::*;

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

/// Runs `$body` with `$T` = the element type stored for `$dtype`.
#[macro_export]
macro_rules! dispatch_any {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::DType::F64 => {
                type $T = f64;
                $body
            }
            $crate::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::DType::F16 => {
                type $T = half::f16;
                $body
            }
            $crate::DType::BF16 => {
                type $T = half::bf16;
                $body
            }
            $crate::DType::I64 => {
                type $T = i64;
                $body
            }
            $crate::DType::U8 => {
                type $T = u8;
                $body
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
    copy::parity::cases(&mut rng, &mut all);
    pool::parity::cases(&mut rng, &mut all);
    elementwise::parity::cases(&mut rng, &mut all);
    reduce::parity::cases(&mut rng, &mut all);
    matmul::parity::cases(&mut rng, &mut all);
    batchnorm::parity::cases(&mut rng, &mut all);
    loss::parity::cases(&mut rng, &mut all);
    detection::parity::cases(&mut rng, &mut all);
    optim::parity::cases(&mut rng, &mut all);
    conv::parity::cases(&mut rng, &mut all);
    index::parity::cases(&mut rng, &mut all);
    shape::parity::cases(&mut rng, &mut all);
    upsample::parity::cases(&mut rng, &mut all);
    augment::parity::cases(&mut rng, &mut all);
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

/// `x` as the f32 slice it is (for an f32-only SIMD path of a generic op).
///
/// # Safety
/// T must be f32.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn as_f32<T: crate::Float>(x: &[T]) -> &[f32] {
    debug_assert_eq!(T::DTYPE, crate::DType::F32);
    // SAFETY: T is f32 (the caller's promise): same size and alignment.
    unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<f32>(), x.len()) }
}

/// [`as_f32`] for a mutable slice.
///
/// # Safety
/// T must be f32.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn as_f32_mut<T: crate::Float>(x: &mut [T]) -> &mut [f32] {
    debug_assert_eq!(T::DTYPE, crate::DType::F32);
    // SAFETY: T is f32 (the caller's promise): same size and alignment.
    unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr().cast::<f32>(), x.len()) }
}

/// Elements per parallel piece of an elementwise pass: fewer are not worth
/// the threads.
const GRAIN: usize = 1 << 15;

/// `n` copies of `value`, written by the pool's threads together: filled on
/// one thread, a layer's output of several megabytes keeps the others idle.
pub(crate) fn par_filled<T: Copy + Send + Sync>(n: usize, value: T) -> Vec<T> {
    use rayon::prelude::*;
    let mut v = Vec::with_capacity(n);
    if n <= GRAIN {
        v.resize(n, value);
    } else {
        v.par_extend(rayon::iter::repeat_n(value, n));
    }
    v
}

/// Applies `f` to chunks of `out` in parallel when the work is large enough
/// to pay for the threads; `f` gets the chunk's start index.
pub(crate) fn par_chunks<T: Send>(out: &mut [T], f: impl Fn(usize, &mut [T]) + Sync) {
    use rayon::prelude::*;
    if out.len() <= GRAIN {
        f(0, out);
    } else {
        out.par_chunks_mut(GRAIN)
            .enumerate()
            .for_each(|(i, c)| f(i * GRAIN, c));
    }
}

/// A rayon pool of its own, as large as the global one, for a loop of CPU
/// ops such as a training step. The CPU ops split their work with rayon:
/// called from a thread outside any pool, each split hands its parts to the
/// pool's threads and sleeps until they finish, so every op pays for waking
/// another thread and being woken, one thread or many. Run on a pool
/// thread, an op's parts start on the calling thread and the others steal
/// what they can (docs/PERF.md, "CPU ops run on the pool's threads"). The
/// pool is the caller's alone: a thread of the global pool, waiting inside
/// one loop, could steal another caller's whole loop and run it under the
/// first one's thread-local state (`no_grad`, the trace's nesting).
pub struct CpuPool(rayon::ThreadPool);

impl CpuPool {
    /// A pool of `rayon::current_num_threads()` threads.
    pub fn new() -> crate::Result<CpuPool> {
        rayon::ThreadPoolBuilder::new()
            .num_threads(rayon::current_num_threads())
            .thread_name(|i| format!("slmlp-cpu-{i}"))
            // as deep as a main thread's: whole commands run here
            .stack_size(8 << 20)
            .build()
            .map(CpuPool)
            .map_err(|e| crate::Error::arg("cpu pool", format!("cannot start its threads: {e}")))
    }

    /// Runs `f` on one of the pool's threads, or in place when the caller
    /// is already on a rayon pool's thread (whose pool then does the work).
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        if on_pool_thread() {
            f()
        } else {
            self.0.install(f)
        }
    }
}

/// Whether the caller is one of a rayon pool's threads (any pool's), where
/// the CPU ops' splits start in place (see [`CpuPool`]).
pub fn on_pool_thread() -> bool {
    rayon::current_thread_index().is_some()
}

/// What the gradient of an op's output must be: the output's dtype, device
/// and shape (captured by backward closures instead of the output itself).
pub(crate) struct GradSpec {
    dtype: crate::DType,
    device: crate::Device,
    shape: Vec<usize>,
}

impl GradSpec {
    pub(crate) fn of(y: &Tensor) -> GradSpec {
        GradSpec::new(y.dtype(), y.device(), y.dims())
    }

    pub(crate) fn new(dtype: crate::DType, device: crate::Device, shape: &[usize]) -> GradSpec {
        GradSpec {
            dtype,
            device,
            shape: shape.to_vec(),
        }
    }

    /// `dy` as the gradient of that output, or a clear error naming `op`.
    pub(crate) fn check(&self, op: &'static str, dy: &Tensor) -> Result<()> {
        if dy.dtype() != self.dtype || dy.device() != self.device || dy.dims() != self.shape {
            return Err(Error::arg(
                op,
                format!(
                    "gradient {:?} {} on {} for an output {:?} {} on {}",
                    dy.dims(),
                    dy.dtype(),
                    dy.device(),
                    self.shape,
                    self.dtype,
                    self.device
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    /// `par_filled` fills every element, below and above its parallel threshold.
    #[test]
    fn par_filled_fills_every_element() {
        for n in [0, 7, super::GRAIN, super::GRAIN + 1, 300_001] {
            let v = super::par_filled(n, 0.0f32);
            assert_eq!(v.len(), n);
            assert!(v.iter().all(|x| x.to_bits() == 0), "n = {n}");
        }
        assert_eq!(super::par_filled(40_000, 3u8), vec![3u8; 40_000]);
    }

    /// `CpuPool::run` moves its closure onto one of its own threads, and
    /// runs it in place when already on a pool thread.
    #[test]
    fn cpu_pool_runs_on_its_own_threads() {
        assert_eq!(rayon::current_thread_index(), None);
        let pool = super::CpuPool::new().unwrap();
        let (name, same_thread) = pool.run(|| {
            let me = std::thread::current();
            let inner = pool.run(|| std::thread::current().id());
            (me.name().map(str::to_owned), inner == me.id())
        });
        assert!(name.is_some_and(|n| n.starts_with("slmlp-cpu-")));
        assert!(same_thread);
    }
}
