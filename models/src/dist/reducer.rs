//! Gradients of a data-parallel step: summed over a rank's micro-batches
//! ([`Accumulator`]), then over the ranks in buckets ([`GradReducer`]).
//!
//! Both sums add in a fixed order (micro-batch 0 + 1 + ..., then rank 0 +
//! 1 + ...), so `--grad-accum K` on one rank and `K` ranks of one
//! micro-batch each add the same values in the same order: bit-identical
//! gradients. A parameter without a gradient counts as zeros, so that every
//! rank sends the same buckets.
//!
//! The reduction runs after the backward pass (the host communicators
//! copy each bucket to the host anyway, so there is nothing to overlap).

use super::Communicator;
use engine::nn::Param;
use engine::{no_grad, DType, Result, Tensor};

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
        if comm.world() == 1 {
            return Ok(());
        }
        let _ng = no_grad();
        for bucket in &self.buckets {
            let mut flat = Vec::with_capacity(bucket.len());
            for &i in bucket {
                let p = params[i].get();
                let g = match p.grad() {
                    Some(g) => g.to_dtype(DType::F32)?,
                    None => zeros_like(&p)?.to_dtype(DType::F32)?,
                };
                flat.push(g.contiguous()?.reshape(&[g.numel()])?);
            }
            let summed = comm.all_reduce_sum(&Tensor::cat(&flat, 0)?)?;
            let mut at = 0;
            for &i in bucket {
                let p = params[i].get();
                let n = p.numel();
                let g = summed.narrow(0, at, n)?.contiguous()?.reshape(p.dims())?;
                p.set_grad(Some(g));
                at += n;
            }
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
