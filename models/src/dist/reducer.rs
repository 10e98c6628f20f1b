//! Gradients of a data-parallel step: summed over a rank's micro-batches
//! ([`Accumulator`]), then over the ranks in buckets ([`GradReducer`]).
//!
//! Both sums add in a fixed order (micro-batch 0 + 1 + ..., then rank 0 +
//! 1 + ...), so `--grad-accum K` on one rank and `K` ranks of one
//! micro-batch each add the same values in the same order: bit-identical
//! gradients. A parameter without a gradient counts as zeros, so that every
//! rank sends the same buckets.
//!
//! [`GradReducer::reduce_during`] overlaps the reduction with the backward
//! pass of a step's last micro-batch: an autograd hook
//! (`engine::autograd::on_grad_ready`) hears of each parameter as soon as
//! its gradient is final, and a bucket is summed over the ranks as soon as
//! all its gradients are final and the buckets before it are summed. The
//! buckets and the values summed are those of [`GradReducer::reduce`]
//! after the backward pass, in the same order: the same bits. A bucket's
//! sum is started from the thread of the backward pass (so every rank
//! starts the collectives in the same order) with
//! `Communicator::all_reduce_sum_start`: the host communicators sum at
//! once (the backward pass waits for the other ranks' parts), NCCL queues
//! the sum on a second stream beside the backward kernels; the sums are
//! taken back into the gradients after the backward pass.

use super::{Communicator, PendingSum, Shared};
use engine::autograd::on_grad_ready;
use engine::nn::Param;
use engine::{no_grad, DType, Result, Tensor};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The bucket size PyTorch DDP uses by default.
pub const BUCKET_BYTES: usize = 25 << 20;

/// The running sum of the gradients of a rank's micro-batches.
#[derive(Default)]
pub struct Accumulator {
    sums: Vec<Option<Tensor>>,
}

impl Accumulator {
    /// Adds the parameters' current gradients to the sums (in call order)
    /// and clears them for the next micro-batch.
    pub fn add(&mut self, params: &[Param]) -> Result<()> {
        let _ng = no_grad();
        self.sums.resize(params.len(), None);
        for (s, p) in self.sums.iter_mut().zip(params) {
            if let Some(g) = p.grad() {
                *s = Some(match s.take() {
                    Some(acc) => acc.add(&g)?,
                    None => g,
                });
            }
            p.zero_grad();
        }
        Ok(())
    }

    /// Puts the sums back as the parameters' gradients; a parameter that
    /// got none gets zeros (as it does when the ranks' gradients are
    /// summed), so that one rank and several step alike.
    pub fn finish(mut self, params: &[Param]) -> Result<()> {
        self.sums.resize(params.len(), None);
        for (s, p) in self.sums.into_iter().zip(params) {
            p.set_grad(Some(match s {
                Some(g) => g,
                None => zeros_like(&p.get())?,
            }));
        }
        Ok(())
    }
}

/// Zeros of `p`'s shape, dtype and device.
fn zeros_like(p: &Tensor) -> Result<Tensor> {
    Tensor::zeros(p.dims(), p.dtype()).to_device(p.device())
}

/// Sums the gradients over the ranks, in buckets of about `BUCKET_BYTES`
/// taken in reverse parameter order (the order backward produces them).
pub struct GradReducer {
    /// Parameter indices of each bucket.
    buckets: Vec<Vec<usize>>,
}

impl GradReducer {
    pub fn new(params: &[Param], bucket_bytes: usize) -> GradReducer {
        let mut buckets: Vec<Vec<usize>> = Vec::new();
        let mut bytes = 0;
        for i in (0..params.len()).rev() {
            let n = 4 * params[i].get().numel();
            match buckets.last_mut() {
                Some(b) if bytes + n <= bucket_bytes || b.is_empty() => {
                    b.push(i);
                    bytes += n;
                }
                _ => {
                    buckets.push(vec![i]);
                    bytes = n;
                }
            }
        }
        GradReducer { buckets }
    }

    pub fn buckets(&self) -> &[Vec<usize>] {
        &self.buckets
    }

    /// Replaces every gradient by its sum over the ranks of `comm`.
    pub fn reduce(&self, params: &[Param], comm: &mut dyn Communicator) -> Result<()> {
        for k in 0..self.buckets.len() {
            if let Some(p) = self.start_bucket(k, params, comm)? {
                self.finish_bucket(k, params, comm, p)?;
            }
        }
        Ok(())
    }

    /// Runs `backward`, the backward pass of a step's last micro-batch
    /// (`earlier` holds the sums of the micro-batches before it), and sums
    /// the gradients over the ranks of `comm` bucket by bucket while it
    /// runs; afterwards the parameters hold what `earlier.add(params)`,
    /// `finish` and [`GradReducer::reduce`] would have left, bit for bit.
    pub fn reduce_during<T>(
        self: &Arc<Self>,
        params: &[Param],
        comm: &Shared,
        earlier: Accumulator,
        backward: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let mut sums = earlier.sums;
        sums.resize(params.len(), None);
        let state = Arc::new(Mutex::new(Overlap {
            reducer: self.clone(),
            slots: params
                .iter()
                .enumerate()
                .filter_map(|(i, p)| Some((p.get().grad_slot_id()?, i)))
                .collect(),
            params: params.to_vec(),
            sums,
            ready: vec![false; params.len()],
            next: 0,
            pending: Vec::new(),
            comm: comm.clone(),
        }));
        let hook = state.clone();
        let out = on_grad_ready(
            Box::new(move |slot| hook.lock().unwrap().ready(slot)),
            backward,
        )?;
        // parameters the pass did not reach, then the buckets left
        let mut s = state.lock().unwrap();
        for i in 0..params.len() {
            if !s.ready[i] {
                s.finish_param(i)?;
            }
        }
        s.launch()?;
        let pending = std::mem::take(&mut s.pending);
        let mut comm = s.comm.lock()?;
        for (k, p) in pending {
            self.finish_bucket(k, params, &mut **comm, p)?;
        }
        Ok(out)
    }

    /// Starts the sum over the ranks of bucket `k`'s gradients (None on
    /// one rank).
    fn start_bucket(
        &self,
        k: usize,
        params: &[Param],
        comm: &mut dyn Communicator,
    ) -> Result<Option<PendingSum>> {
        if comm.world() == 1 {
            return Ok(None);
        }
        let _ng = no_grad();
        let bucket = &self.buckets[k];
        let mut flat = Vec::with_capacity(bucket.len());
        for &i in bucket {
            let p = params[i].get();
            let g = match p.grad() {
                Some(g) => g.to_dtype(DType::F32)?,
                None => zeros_like(&p)?.to_dtype(DType::F32)?,
            };
            flat.push(g.contiguous()?.reshape(&[g.numel()])?);
        }
        comm.all_reduce_sum_start(&Tensor::cat(&flat, 0)?).map(Some)
    }

    /// Replaces the gradients of bucket `k` by the sum `p` started for it.
    fn finish_bucket(
        &self,
        k: usize,
        params: &[Param],
        comm: &mut dyn Communicator,
        p: PendingSum,
    ) -> Result<()> {
        let _ng = no_grad();
        let summed = comm.finish(p)?;
        let mut at = 0;
        for &i in &self.buckets[k] {
            let p = params[i].get();
            let n = p.numel();
            let g = summed.narrow(0, at, n)?.contiguous()?.reshape(p.dims())?;
            p.set_grad(Some(g));
            at += n;
        }
        Ok(())
    }
}

/// The state of [`GradReducer::reduce_during`].
struct Overlap {
    reducer: Arc<GradReducer>,
    /// Parameter index of each gradient slot.
    slots: HashMap<usize, usize>,
    params: Vec<Param>,
    /// The earlier micro-batches' sums, until added to the last one's.
    sums: Vec<Option<Tensor>>,
    /// Whether a parameter's gradient is final (and summed over the
    /// micro-batches).
    ready: Vec<bool>,
    /// The first bucket not yet started.
    next: usize,
    /// The sums started, by bucket.
    pending: Vec<(usize, PendingSum)>,
    comm: Shared,
}

impl Overlap {
    /// The gradient slot `slot` is final: adds its parameter's gradient to
    /// the earlier sum and sums the buckets that are complete.
    fn ready(&mut self, slot: usize) -> Result<()> {
        match self.slots.get(&slot) {
            Some(&i) => {
                self.finish_param(i)?;
                self.launch()
            }
            None => Ok(()),
        }
    }

    /// `Accumulator::add` then `finish` for parameter `i`.
    fn finish_param(&mut self, i: usize) -> Result<()> {
        let p = &self.params[i];
        let total = match (self.sums[i].take(), p.grad()) {
            (Some(acc), Some(g)) => acc.add(&g)?,
            (Some(acc), None) => acc,
            (None, Some(g)) => g,
            (None, None) => zeros_like(&p.get())?,
        };
        p.set_grad(Some(total));
        self.ready[i] = true;
        Ok(())
    }

    /// Starts the sums over the ranks, in bucket order, of the buckets
    /// whose gradients are all final.
    fn launch(&mut self) -> Result<()> {
        let buckets = self.reducer.buckets();
        while self.next < buckets.len() && buckets[self.next].iter().all(|&i| self.ready[i]) {
            let mut comm = self.comm.lock()?;
            if let Some(p) = self
                .reducer
                .start_bucket(self.next, &self.params, &mut **comm)?
            {
                self.pending.push((self.next, p));
            }
            self.next += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_param_once_in_reverse_order() {
        let params: Vec<Param> = [10usize, 300, 20, 20, 5]
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                Param::new(format!("p{i}"), Tensor::zeros(&[n], DType::F32), false).unwrap()
            })
            .collect();
        // 100 floats per bucket: a too-large param gets its own bucket
        let r = GradReducer::new(&params, 400);
        assert_eq!(r.buckets(), &[vec![4, 3, 2], vec![1], vec![0]]);
    }
}
