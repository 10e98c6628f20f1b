//! The data-parallel step shared by the trainers (`train::Trainer`,
//! `detect::DetectTask`; see the module notes of `dist`).

use super::reducer::{Accumulator, GradReducer, BUCKET_BYTES};
use super::{error, Communicator, Shared};
use engine::nn::{Module, Param};
use engine::{Device, Result, Tensor};
use std::sync::Arc;

/// A trainer's rank of a data-parallel run.
pub struct DataParallel {
    comm: Shared,
    grad_accum: usize,
    reducer: Arc<GradReducer>,
    /// Whether the ranks were found to start from the same weights.
    checked: bool,
}

/// What [`DataParallel::gradients`] leaves besides the gradients.
pub struct GlobalBatch {
    /// Images of the global batch (all ranks, all micro-batches).
    pub images: usize,
    /// The micro-batches' values (e.g. loss, accuracy), averaged over the
    /// global batch's images.
    pub means: Vec<f64>,
}

impl DataParallel {
    pub fn new(comm: Box<dyn Communicator>, grad_accum: usize, params: &[Param]) -> Self {
        DataParallel {
            comm: Shared::new(comm),
            grad_accum: grad_accum.max(1),
            reducer: Arc::new(GradReducer::new(params, BUCKET_BYTES)),
            checked: false,
        }
    }

    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    /// Makes `model`'s BatchNorm layers normalise with the statistics of
    /// each global micro-batch (`--sync-bn`); a no-op on one rank.
    pub fn sync_batch_norm(&self, model: &dyn Module) {
        if self.comm.world() > 1 {
            model.set_batch_norm_sync(Some(Arc::new(self.comm.clone())));
        }
    }

    /// `values` of every rank on the host, rank after rank.
    fn gather(&mut self, values: Vec<f32>, device: Device) -> Result<Vec<f32>> {
        let n = values.len();
        let t = Tensor::from_vec(values, &[n])?.to_device(device)?;
        self.comm
            .lock()?
            .all_gather(&t)?
            .to_device(Device::Cpu)?
            .to_vec()
    }

    /// Fails unless every rank holds the same parameters (they all start
    /// from the same seed, or read the same checkpoint).
    fn check_same_weights(&mut self, params: &[Param], device: Device) -> Result<()> {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for p in params {
            for x in p.get().to_device(Device::Cpu)?.to_vec::<f32>()? {
                h = (h ^ x.to_bits() as u64).wrapping_mul(0x100_0000_01b3);
            }
        }
        // 24-bit pieces travel exactly as f32 values
        let mine: Vec<f32> = (0..3)
            .map(|k| ((h >> (24 * k)) & 0xFF_FFFF) as f32)
            .collect();
        let all = self.gather(mine.clone(), device)?;
        if let Some(r) = all.chunks(3).position(|c| c != mine.as_slice()) {
            return Err(error(format!(
                "rank {r} starts from other weights than rank {}: every rank needs the same --seed and, to resume, the same checkpoint",
                self.rank()
            )));
        }
        Ok(())
    }

    /// The gradients of optimizer step `step` (0-based) of the global
    /// batch, left in `params` (the same on every rank). This rank holds
    /// `b` images, cut into `--grad-accum` micro-batches;
    /// `micro(m, start, n, weight)` runs the forward and backward of global
    /// micro-batch `m` (images `start..start + n` of this rank's) with its
    /// mean loss weighted by `weight` (its share of the global batch), and
    /// returns its mean values (loss, ...), as many on every call.
    pub fn gradients(
        &mut self,
        params: &[Param],
        device: Device,
        step: usize,
        b: usize,
        mut micro: impl FnMut(usize, usize, usize, f64) -> Result<Vec<f64>>,
    ) -> Result<GlobalBatch> {
        if !self.checked {
            self.check_same_weights(params, device)?;
            self.checked = true;
        }
        // the global batch size, and a check that the ranks are in step
        let all = self.gather(vec![b as f32, step as f32], device)?;
        if let Some(r) = all.chunks(2).position(|c| c[1] != step as f32) {
            return Err(error(format!(
                "rank {r} is at another step than rank {}'s {step} (a batch of unreadable images was left out on one rank)",
                self.rank(),
            )));
        }
        if let Some(r) = all.chunks(2).position(|c| c[0] == 0.0) {
            return Err(error(format!(
                "rank {r} has no readable image in step {step}"
            )));
        }
        let global: f64 = all.chunks(2).map(|c| c[0] as f64).sum();
        let size = b.div_ceil(self.grad_accum);
        let starts: Vec<usize> = (0..b).step_by(size).collect();
        let mut acc = Accumulator::default();
        let mut sums: Vec<f64> = Vec::new();
        for (k, &start) in starts.iter().enumerate() {
            let n = size.min(b - start);
            let m = self.rank() * self.grad_accum + k;
            let mut run = || micro(m, start, n, n as f64 / global);
            // the last micro-batch's backward overlaps the reduction
            let values = if k + 1 == starts.len() {
                let earlier = std::mem::take(&mut acc);
                self.reducer
                    .reduce_during(params, &self.comm, earlier, run)?
            } else {
                let v = run()?;
                acc.add(params)?;
                v
            };
            sums.resize(values.len(), 0.0);
            for (s, v) in sums.iter_mut().zip(values) {
                *s += v * n as f64;
            }
        }
        // the logged values are the global batch's
        let n = sums.len();
        let t =
            Tensor::from_vec(sums.iter().map(|&s| s as f32).collect(), &[n])?.to_device(device)?;
        let sums = self
            .comm
            .lock()?
            .all_reduce_sum(&t)?
            .to_device(Device::Cpu)?
            .to_vec::<f32>()?;
        Ok(GlobalBatch {
            images: global as usize,
            means: sums.iter().map(|&s| s as f64 / global).collect(),
        })
    }
}
