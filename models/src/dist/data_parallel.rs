//! The data-parallel training step of a `train::Trainer` (see the module
//! notes of `dist`).

use super::reducer::{Accumulator, GradReducer, BUCKET_BYTES};
use super::{error, Communicator};
use crate::train::{StepLog, Trainer};
use engine::nn::Param;
use engine::{Device, Result, Tensor};
use std::time::Instant;

/// A trainer's rank of a data-parallel run.
pub struct DataParallel {
    comm: Box<dyn Communicator>,
    grad_accum: usize,
    reducer: GradReducer,
    /// Whether the ranks were found to start from the same weights.
    checked: bool,
}

impl DataParallel {
    pub fn new(comm: Box<dyn Communicator>, grad_accum: usize, params: &[Param]) -> Self {
        DataParallel {
            comm,
            grad_accum: grad_accum.max(1),
            reducer: GradReducer::new(params, BUCKET_BYTES),
            checked: false,
        }
    }

    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    /// `values` of every rank on the host, rank after rank.
    fn gather(&mut self, values: Vec<f32>, device: Device) -> Result<Vec<f32>> {
        let n = values.len();
        let t = Tensor::from_vec(values, &[n])?.to_device(device)?;
        self.comm.all_gather(&t)?.to_device(Device::Cpu)?.to_vec()
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

    /// One optimizer step on this rank's `images` / `labels`: the
    /// micro-batches' gradients, each weighted by its share of the global
    /// batch, summed here and then over the ranks.
    pub(crate) fn step(
        &mut self,
        tr: &mut Trainer,
        images: &Tensor,
        labels: &Tensor,
    ) -> Result<StepLog> {
        let t0 = Instant::now();
        let device = tr.device();
        if !self.checked {
            self.check_same_weights(tr.params(), device)?;
            self.checked = true;
        }
        let b = images.dims()[0];
        // the global batch size, and a check that the ranks are in step
        let all = self.gather(vec![b as f32, tr.step as f32], device)?;
        if let Some(r) = all.chunks(2).position(|c| c[1] != tr.step as f32) {
            return Err(error(format!(
                "rank {r} is at another step than rank {}'s {} (a batch of unreadable images was left out on one rank)",
                self.rank(),
                tr.step
            )));
        }
        let global: f64 = all.chunks(2).map(|c| c[0] as f64).sum();
        let micro = b.div_ceil(self.grad_accum).max(1);
        let mut acc = Accumulator::default();
        let (mut loss, mut hits) = (0.0, 0.0);
        for start in (0..b).step_by(micro) {
            let n = micro.min(b - start);
            let (l, a) = tr.forward_backward(
                &images.narrow(0, start, n)?,
                &labels.narrow(0, start, n)?,
                n as f64 / global,
            )?;
            loss += l * n as f64;
            hits += a * n as f64;
            acc.add(tr.params())?;
        }
        acc.finish(tr.params());
        self.reducer.reduce(tr.params(), self.comm.as_mut())?;
        // the logged loss and accuracy are the global batch's
        let sums = Tensor::from_vec(vec![loss as f32, hits as f32], &[2])?.to_device(device)?;
        let sums = self
            .comm
            .all_reduce_sum(&sums)?
            .to_device(Device::Cpu)?
            .to_vec::<f32>()?;
        let (lr, stepped) = tr.apply()?;
        Ok(StepLog {
            step: tr.step,
            loss: sums[0] as f64 / global,
            lr,
            batch: global as usize,
            images_per_s: global / t0.elapsed().as_secs_f64(),
            parts: vec![("accuracy", sums[1] as f64 / global)],
            skipped: Some(!stepped),
        })
    }
}
