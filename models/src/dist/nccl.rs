//! The NCCL [`Communicator`] (`engine::cuda::nccl`): one per process,
//! joined through a TCP rendezvous at MASTER_ADDR:MASTER_PORT that carries
//! NCCL's unique id from rank 0 to the others; or one per GPU for ranks
//! that are threads of one process.
//!
//! Gradient buckets are summed with `all_reduce_sum_start` (a second
//! stream, overlapped with the backward pass; see `engine::cuda::nccl`).
//!
//! NCCL adds in its own order (rings, trees), not in rank order: its sums
//! are bit-identical to `--grad-accum` only for two ranks (a + b is
//! commutative). Unverified on a GPU.

use super::hub::{default_timeout, tcp};
use super::launch::Env;
use super::{error, Communicator, PendingSum};
use engine::cuda::nccl::{unique_id, NcclComm, UniqueId};
use engine::{Device, Result, Tensor};

pub struct Nccl(NcclComm);

fn ordinal(device: Device) -> Result<usize> {
    match device {
        Device::Cuda(i) => Ok(i),
        Device::Cpu => Err(error(
            "--dist-backend nccl needs --device cuda; use tcp on the CPU",
        )),
    }
}

impl Nccl {
    /// This process's rank of a torchrun-style launch, on `device`.
    pub fn for_process(env: &Env, device: Device) -> Result<Nccl> {
        let ordinal = ordinal(device)?;
        let timeout = default_timeout()?;
        let mut boot = tcp(env.rank, env.world, &env.addr, env.port, timeout)?;
        let id = if env.rank == 0 {
            unique_id()?.0
        } else {
            [0; 128]
        };
        // the id's bytes travel as f32 bit patterns (the hub never adds them)
        let words: Vec<f32> = id
            .chunks_exact(4)
            .map(|c| f32::from_bits(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect();
        let got = boot
            .broadcast(&Tensor::from_vec(words, &[32])?, 0)?
            .to_vec::<f32>()?;
        let mut id = [0u8; 128];
        for (c, w) in id.chunks_exact_mut(4).zip(got) {
            c.copy_from_slice(&w.to_bits().to_le_bytes());
        }
        let comm = NcclComm::init_rank(UniqueId(id), env.rank, env.world, ordinal, timeout)?;
        Ok(Nccl(comm))
    }

    /// One communicator per device, rank `r` on `devices[r]`.
    pub fn for_devices(devices: &[Device]) -> Result<Vec<Nccl>> {
        let ordinals = devices
            .iter()
            .map(|&d| ordinal(d))
            .collect::<Result<Vec<_>>>()?;
        Ok(NcclComm::init_all(&ordinals, default_timeout()?)?
            .into_iter()
            .map(Nccl)
            .collect())
    }
}

impl Communicator for Nccl {
    fn rank(&self) -> usize {
        self.0.rank()
    }
    fn world(&self) -> usize {
        self.0.world()
    }
    fn all_reduce_sum(&mut self, t: &Tensor) -> Result<Tensor> {
        self.0.all_reduce_sum(t)
    }
    fn broadcast(&mut self, t: &Tensor, root: usize) -> Result<Tensor> {
        self.0.broadcast(t, root)
    }
    fn all_gather(&mut self, t: &Tensor) -> Result<Tensor> {
        self.0.all_gather(t)
    }
    fn barrier(&mut self) -> Result<()> {
        self.0.barrier()
    }
    fn all_reduce_sum_start(&mut self, t: &Tensor) -> Result<PendingSum> {
        self.0.all_reduce_sum_start(t).map(PendingSum::Nccl)
    }
    fn finish(&mut self, p: PendingSum) -> Result<Tensor> {
        match p {
            PendingSum::Nccl(p) => self.0.finish(p),
            PendingSum::Ready(t) => Ok(t),
        }
    }
}
