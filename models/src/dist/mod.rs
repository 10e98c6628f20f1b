//! Data-parallel training: gradient accumulation spread over ranks.
//!
//! `--batch` is the per-rank micro-batch. Step `s` of an epoch reads the
//! global batch `s` of the epoch's order (`data::DataLoader::shard`), split so
//! that rank `r` processes its slice; within a rank `--grad-accum K` splits
//! the slice into `K` micro-batches. Each micro-batch's mean loss is
//! weighted by its share of the global batch (`b / G`), so the gradients
//! summed over micro-batches and ranks are those of the global batch's mean
//! loss. Sums run in a fixed order (micro-batches in order, then ranks in
//! rank order), so `--ranks K`, `--grad-accum K` and `K` processes end with
//! bit-identical parameters (see docs/DISTRIBUTED.md).
//!
//! - [`Communicator`]: all-reduce (sum), broadcast, all-gather, barrier over
//!   flat f32 tensors; [`Single`] (one rank), [`hub::threads`] (ranks as
//!   threads), [`hub::tcp`] (processes, std::net), and on CUDA
//!   [`nccl::Nccl`];
//! - [`reducer`]: micro-batch accumulation and bucketed gradient all-reduce,
//!   overlapped with the last micro-batch's backward pass;
//! - [`DataParallel`]: the data-parallel step of every trainer, and
//!   `--sync-bn` ([`Shared`] lets BatchNorm layers use the communicator);
//! - [`launch`]: the torchrun-style environment and the `--ranks` /
//!   `--dist-backend` options.

mod data_parallel;
pub mod hub;
pub mod launch;
pub mod nccl;
pub mod reducer;

pub use data_parallel::{DataParallel, GlobalBatch};
use engine::nn::StatSync;
use engine::{Error, Result, Tensor};
use std::sync::{Arc, Mutex, MutexGuard};

/// A group of ranks exchanging flat f32 tensors. Every rank calls the same
/// operations in the same order with the same lengths; a rank that fails,
/// exits or falls silent makes the others' calls return an error (never a
/// panic, never a hang past the timeout).
pub trait Communicator: Send {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// Element-wise sum over the ranks of the flat f32 `t`, added in rank
    /// order (`((t0 + t1) + t2) ...`); on `t`'s device.
    fn all_reduce_sum(&mut self, t: &Tensor) -> Result<Tensor>;
    /// Rank `root`'s `t` on every rank (all `t` have the same length).
    fn broadcast(&mut self, t: &Tensor, root: usize) -> Result<Tensor>;
    /// Every rank's `t` (same length on all), concatenated in rank order.
    fn all_gather(&mut self, t: &Tensor) -> Result<Tensor>;
    /// Returns once every rank has called it.
    fn barrier(&mut self) -> Result<()>;
    /// Starts `all_reduce_sum(t)` so that it may run beside the caller's
    /// next work (NCCL: on a second stream); [`Communicator::finish`]
    /// returns the sum. By default the sum is computed here and now.
    fn all_reduce_sum_start(&mut self, t: &Tensor) -> Result<PendingSum> {
        self.all_reduce_sum(t).map(PendingSum::Ready)
    }
    /// The sum of a [`Communicator::all_reduce_sum_start`] of this
    /// communicator.
    fn finish(&mut self, p: PendingSum) -> Result<Tensor> {
        match p {
            PendingSum::Ready(t) => Ok(t),
            PendingSum::Nccl(_) => Err(error("an NCCL sum was handed to another communicator")),
        }
    }
}

/// A sum of [`Communicator::all_reduce_sum_start`].
pub enum PendingSum {
    Ready(Tensor),
    Nccl(engine::cuda::nccl::PendingSum),
}

/// The one-rank group: every operation is the identity.
pub struct Single;

impl Communicator for Single {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn all_reduce_sum(&mut self, t: &Tensor) -> Result<Tensor> {
        flat_f32(t).map(|_| t.clone())
    }
    fn broadcast(&mut self, t: &Tensor, root: usize) -> Result<Tensor> {
        check_root(root, 1)?;
        flat_f32(t).map(|_| t.clone())
    }
    fn all_gather(&mut self, t: &Tensor) -> Result<Tensor> {
        flat_f32(t).map(|_| t.clone())
    }
    fn barrier(&mut self) -> Result<()> {
        Ok(())
    }
}

/// A communicator shared by a rank's gradient reducer and its BatchNorm
/// layers (`--sync-bn`): one collective at a time, in the order the rank's
/// thread calls them.
#[derive(Clone)]
pub struct Shared {
    comm: Arc<Mutex<Box<dyn Communicator>>>,
    rank: usize,
    world: usize,
}

impl Shared {
    pub fn new(comm: Box<dyn Communicator>) -> Shared {
        let (rank, world) = (comm.rank(), comm.world());
        Shared {
            comm: Arc::new(Mutex::new(comm)),
            rank,
            world,
        }
    }
    pub fn rank(&self) -> usize {
        self.rank
    }
    pub fn world(&self) -> usize {
        self.world
    }
    pub fn lock(&self) -> Result<MutexGuard<'_, Box<dyn Communicator>>> {
        self.comm
            .lock()
            .map_err(|_| error("a collective panicked earlier on this rank"))
    }
}

impl StatSync for Shared {
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        self.lock()?.all_reduce_sum(t)
    }
}

/// The error of a communication failure (`dist: ...`).
pub fn error(msg: impl Into<String>) -> Error {
    Error::arg("dist", msg)
}

/// Whether `e` is a communication failure, i.e. possibly only the echo of
/// another rank's own error.
pub fn is_comm_error(e: &Error) -> bool {
    matches!(e, Error::InvalidArgument { op: "dist", .. })
}

/// The length of a flat f32 tensor; anything else is an error.
fn flat_f32(t: &Tensor) -> Result<usize> {
    if t.rank() != 1 || t.dtype() != engine::DType::F32 {
        return Err(error(format!(
            "collectives take flat f32 tensors, got {:?} {:?}",
            t.dtype(),
            t.dims()
        )));
    }
    Ok(t.numel())
}

fn check_root(root: usize, world: usize) -> Result<()> {
    if root >= world {
        return Err(error(format!(
            "broadcast root {root} is not a rank of a group of {world}"
        )));
    }
    Ok(())
}
