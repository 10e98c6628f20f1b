//! How a data-parallel run is launched: `--grad-accum K`, `--ranks K`
//! (threads of this process), or one process per rank started by torchrun
//! (or by hand) with `WORLD_SIZE`, `RANK`, `LOCAL_RANK`, `MASTER_ADDR`,
//! `MASTER_PORT` in the environment and `--dist-backend nccl|tcp`.

use super::hub::{default_timeout, tcp, threads};
use super::{error, nccl, Communicator, Single};
use engine::{Device, Result};

/// The most ranks or micro-batches a run may ask for.
const MAX_RANKS: usize = 4096;
const MAX_ACCUM: usize = 1 << 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// NVIDIA's collectives on the GPUs (libnccl.so.2).
    Nccl,
    /// Sums on the host over TCP (std::net), through rank 0.
    Tcp,
}

/// The data-parallel options of a training command.
#[derive(Clone, Debug, clap::Args)]
pub struct DistArgs {
    /// Micro-batches of --batch images per optimizer step on each rank
    /// (gradient accumulation).
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Run this many ranks as threads of this process (on the CPU, or one
    /// per GPU from --device cuda:N on).
    #[arg(long, default_value_t = 1)]
    pub ranks: usize,
    /// Collectives between ranks: nccl (default on cuda) or tcp (default on
    /// the CPU). With --ranks, threads sum on the host unless nccl is asked.
    #[arg(long, value_enum)]
    pub dist_backend: Option<Backend>,
}

impl Default for DistArgs {
    /// One rank, one micro-batch per step.
    fn default() -> Self {
        DistArgs {
            grad_accum: 1,
            ranks: 1,
            dist_backend: None,
        }
    }
}

/// The images of a global batch: `batch` per micro-batch, `grad_accum`
/// micro-batches per rank, `world` ranks (at most 2^24).
pub fn global_batch(batch: usize, grad_accum: usize, world: usize) -> Result<usize> {
    batch
        .checked_mul(grad_accum)
        .and_then(|b| b.checked_mul(world))
        .filter(|g| *g <= 1 << 24)
        .ok_or_else(|| error("--batch x --grad-accum x ranks is above 2^24"))
}

/// One process of a torchrun-style launch, from its environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Env {
    pub rank: usize,
    pub world: usize,
    pub local_rank: usize,
    pub addr: String,
    pub port: u16,
}

/// Reads the launch environment; `None` when `WORLD_SIZE` is unset.
pub fn env() -> Result<Option<Env>> {
    let Ok(world) = std::env::var("WORLD_SIZE") else {
        return Ok(None);
    };
    let num = |k: &str, v: &str, max: usize| -> Result<usize> {
        v.trim()
            .parse::<usize>()
            .ok()
            .filter(|n| *n <= max)
            .ok_or_else(|| error(format!("{k}={v:?}: expected an integer in 0..={max}")))
    };
    let var = |k: &str| {
        std::env::var(k).map_err(|_| error(format!("WORLD_SIZE is set but {k} is not (torchrun sets WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)")))
    };
    let world = num("WORLD_SIZE", &world, MAX_RANKS)?;
    let rank = num("RANK", &var("RANK")?, MAX_RANKS)?;
    if world == 0 || rank >= world {
        return Err(error(format!(
            "RANK={rank} is not below WORLD_SIZE={world}"
        )));
    }
    let local_rank = match std::env::var("LOCAL_RANK") {
        Ok(v) => num("LOCAL_RANK", &v, MAX_RANKS)?,
        Err(_) => 0,
    };
    let port = num("MASTER_PORT", &var("MASTER_PORT")?, u16::MAX as usize)? as u16;
    Ok(Some(Env {
        rank,
        world,
        local_rank,
        addr: var("MASTER_ADDR")?,
        port,
    }))
}

/// The ranks this process runs: each with its communicator and device.
pub struct Ranks {
    pub members: Vec<(Box<dyn Communicator>, Device)>,
    pub grad_accum: usize,
}

impl DistArgs {
    /// The ranks of this process, given the device of `--device` (rank
    /// `r` of `--ranks`, or `LOCAL_RANK` `r`, uses `cuda:N+r`).
    pub fn ranks(&self, device: Device) -> Result<Ranks> {
        if self.grad_accum == 0 || self.grad_accum > MAX_ACCUM {
            return Err(error(format!(
                "--grad-accum {}: expected 1..={MAX_ACCUM}",
                self.grad_accum
            )));
        }
        if self.ranks == 0 || self.ranks > MAX_RANKS {
            return Err(error(format!(
                "--ranks {}: expected 1..={MAX_RANKS}",
                self.ranks
            )));
        }
        let shifted = |r: usize| match device {
            Device::Cuda(i) => Device::Cuda(i + r),
            Device::Cpu => Device::Cpu,
        };
        let backend = self.dist_backend.unwrap_or(match device {
            Device::Cuda(_) => Backend::Nccl,
            Device::Cpu => Backend::Tcp,
        });
        if backend == Backend::Nccl && device == Device::Cpu {
            return Err(error(
                "--dist-backend nccl needs --device cuda; use tcp on the CPU",
            ));
        }
        let members: Vec<(Box<dyn Communicator>, Device)> = match env()? {
            Some(_) if self.ranks > 1 => {
                return Err(error(
                    "--ranks starts ranks as threads; under a multi-process launch (WORLD_SIZE set) leave it at 1",
                ))
            }
            Some(e) => {
                let dev = shifted(e.local_rank);
                let comm: Box<dyn Communicator> = match backend {
                    _ if e.world == 1 => Box::new(Single),
                    Backend::Tcp => Box::new(tcp(e.rank, e.world, &e.addr, e.port, default_timeout()?)?),
                    Backend::Nccl => Box::new(nccl::Nccl::for_process(&e, dev)?),
                };
                vec![(comm, dev)]
            }
            None if self.ranks == 1 => vec![(Box::new(Single), device)],
            None => {
                let devices: Vec<Device> = (0..self.ranks).map(shifted).collect();
                if self.dist_backend == Some(Backend::Nccl) {
                    nccl::Nccl::for_devices(&devices)?
                        .into_iter()
                        .zip(devices)
                        .map(|(c, d)| (Box::new(c) as Box<dyn Communicator>, d))
                        .collect()
                } else {
                    threads(self.ranks, default_timeout()?)?
                        .into_iter()
                        .zip(devices)
                        .map(|(c, d)| (Box::new(c) as Box<dyn Communicator>, d))
                        .collect()
                }
            }
        };
        Ok(Ranks {
            members,
            grad_accum: self.grad_accum,
        })
    }
}

/// Runs `rank(comm, device)` for each rank of `ranks`: inline for one, on
/// one thread each for several. Returns rank 0's result; when ranks fail,
/// the first error that is not only the echo of another rank's failure.
pub fn run_ranks<T: Send>(
    ranks: Ranks,
    rank: impl Fn(Box<dyn Communicator>, Device) -> Result<T> + Sync,
) -> Result<T> {
    let mut members = ranks.members;
    if members.len() == 1 {
        let (comm, device) = members.remove(0);
        return rank(comm, device);
    }
    let results: Vec<Result<T>> = std::thread::scope(|s| {
        let rank = &rank;
        let handles: Vec<_> = members
            .into_iter()
            .enumerate()
            .map(|(r, (comm, device))| {
                std::thread::Builder::new()
                    .name(format!("rank-{r}"))
                    .spawn_scoped(s, move || rank(comm, device))
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(r, h)| match h {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|_| Err(error(format!("rank {r} panicked")))),
                Err(e) => Err(error(format!("cannot start rank {r}'s thread: {e}"))),
            })
            .collect()
    });
    let mut first_err = None;
    let mut rank0 = None;
    for (r, res) in results.into_iter().enumerate() {
        match res {
            Ok(v) if r == 0 => rank0 = Some(v),
            Ok(_) => {}
            Err(e) => {
                let root_cause = !super::is_comm_error(&e);
                match &first_err {
                    Some((true, _)) => {}
                    _ if first_err.is_none() || root_cause => first_err = Some((root_cause, e)),
                    _ => {}
                }
            }
        }
    }
    match (first_err, rank0) {
        (Some((_, e)), _) => Err(e),
        (None, Some(v)) => Ok(v),
        (None, None) => Err(error("rank 0 returned nothing")),
    }
}
