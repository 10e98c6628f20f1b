//! Batch normalisation layer for [N, C] and [N, C, H, W] inputs (PyTorch's
//! `nn.BatchNorm1d` and `nn.BatchNorm2d`: one type, statistics over every
//! dim but the channel dim 1).
//!
//! In training, the statistics can be those of the whole batch of a
//! data-parallel run ([`StatSync`], PyTorch's `SyncBatchNorm`).

use crate::autograd::record;
use crate::nn::{join, Buffer, Module, Param};
use crate::ops::batchnorm::param_dtype_fits;
use crate::ops::{BatchNormArgs, BatchNormOutput, Fuse};
use crate::{DType, Error, Result, Tensor};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

/// The sum over the ranks of a data-parallel run, through which BatchNorm
/// layers share their batch statistics. Every rank calls it in the same
/// order (forward and backward visit the layers in the same order on every
/// rank).
pub trait StatSync: Send + Sync {
    /// Element-wise sum over the ranks of the flat f32 `t`.
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor>;
}

pub struct BatchNorm {
    /// Scale gamma [C], initialised to 1; excluded from weight decay.
    pub weight: Param,
    /// Shift beta [C], initialised to 0; excluded from weight decay.
    pub bias: Param,
    /// [C], initialised to 0.
    pub running_mean: Buffer,
    /// [C], initialised to 1 (unbiased batch variances are averaged in).
    pub running_var: Buffer,
    /// `running = (1 - momentum) * running + momentum * batch_stat`.
    pub momentum: f64,
    pub eps: f64,
    training: AtomicBool,
    /// Training statistics over all ranks when set (`set_batch_norm_sync`).
    sync: RwLock<Option<Arc<dyn StatSync>>>,
}

impl BatchNorm {
    /// f32 parameters and statistics, momentum 0.1, eps 1e-5, train mode.
    pub fn new(prefix: &str, channels: usize) -> Result<BatchNorm> {
        BatchNorm::new_dtype(prefix, channels, DType::F32)
    }

    pub fn new_dtype(prefix: &str, channels: usize, dtype: DType) -> Result<BatchNorm> {
        if !dtype.is_float() {
            return Err(Error::dtype("BatchNorm::new", "a float dtype", dtype));
        }
        let c = [channels];
        Ok(BatchNorm {
            weight: Param::new(join(prefix, "weight"), Tensor::ones(&c, dtype), true)?,
            bias: Param::new(join(prefix, "bias"), Tensor::zeros(&c, dtype), true)?,
            running_mean: Buffer::new(join(prefix, "running_mean"), Tensor::zeros(&c, dtype)),
            running_var: Buffer::new(join(prefix, "running_var"), Tensor::ones(&c, dtype)),
            momentum: 0.1,
            eps: 1e-5,
            training: AtomicBool::new(true),
            sync: RwLock::new(None),
        })
    }

    /// Sets gamma to 0, so a residual branch ending in this BN starts as the
    /// identity ("zero_init_residual", Goyal et al. 2017).
    pub fn zero_init(&self) -> Result<()> {
        let w = self.weight.get();
        self.weight.set(Tensor::zeros(w.dims(), w.dtype()))
    }

    pub fn channels(&self) -> usize {
        self.weight.dims()[0]
    }

    pub fn is_training(&self) -> bool {
        self.training.load(Ordering::Relaxed)
    }

    /// `relu(bn(x))` in one pass.
    pub fn forward_relu(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, None, Fuse::Relu)
    }

    /// `relu(bn(x) + residual)` in one pass (the end of a residual block).
    pub fn forward_add_relu(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.run(x, Some(residual), Fuse::AddRelu)
    }

    /// Calls the op with this layer's state (or, synchronised in training,
    /// [`BatchNorm::synced`]) and, in train mode, stores the updated
    /// running statistics. Like PyTorch, train mode updates them even under
    /// `no_grad`.
    fn run(&self, x: &Tensor, residual: Option<&Tensor>, fuse: Fuse) -> Result<Tensor> {
        let c = self.channels();
        if x.rank() < 2 || x.dims()[1] != c {
            return Err(Error::shape(
                "BatchNorm",
                format!(
                    "{}: input must be [N, {c}, ...], got {:?}",
                    self.weight.name(),
                    x.dims()
                ),
            ));
        }
        let (w, b) = (self.weight.get(), self.bias.get());
        let (rm, rv) = (self.running_mean.get(), self.running_var.get());
        // The op takes state in x's dtype, or f32 state with a half x (mixed
        // precision). Anything else (an f64 input to an f32 layer) is cast
        // to x's dtype; the weight casts carry the gradient back.
        let xd = x.dtype();
        let (w, b, rm, rv) = if param_dtype_fits(xd, w.dtype()) {
            (w, b, rm, rv)
        } else {
            (
                w.to_dtype(xd)?,
                b.to_dtype(xd)?,
                rm.to_dtype(xd)?,
                rv.to_dtype(xd)?,
            )
        };
        let training = self.is_training();
        let args = BatchNormArgs {
            weight: &w,
            bias: &b,
            running_mean: &rm,
            running_var: &rv,
            training,
            momentum: self.momentum,
            eps: self.eps,
        };
        let sync = self.sync.read().unwrap().clone();
        let out = match (fuse, residual, sync) {
            (_, _, Some(sync)) if training => synced(x, residual, fuse, &args, &sync)?,
            (Fuse::None, _, _) => x.batch_norm(&args)?,
            (Fuse::Relu, _, _) => x.batch_norm_relu(&args)?,
            (Fuse::AddRelu, Some(r), _) => x.batch_norm_add_relu(r, &args)?,
            (Fuse::AddRelu, None, _) => {
                return Err(Error::arg("BatchNorm", "AddRelu without a residual"))
            }
        };
        if let (true, Some((m, v))) = (training, out.running) {
            let _ng = crate::no_grad();
            self.running_mean
                .set(m.to_dtype(self.running_mean.get().dtype())?)?;
            self.running_var
                .set(v.to_dtype(self.running_var.get().dtype())?)?;
        }
        Ok(out.out)
    }
}

/// `t` summed over the ranks, as an op of the graph: the gradient of a sum
/// over the ranks is the sum over the ranks of the gradients (each rank's
/// loss is its share of the global loss).
fn all_reduce(sync: &Arc<dyn StatSync>, t: &Tensor) -> Result<Tensor> {
    let out = sync.all_reduce_sum(&t.detach())?;
    let sync = sync.clone();
    Ok(record(out, "all_reduce_sum", &[t], move |dy| {
        Ok(vec![Some(sync.all_reduce_sum(dy)?)])
    }))
}

/// Training-mode batch norm with the statistics of the global batch
/// (SyncBatchNorm), composed of differentiable ops in f32: the channel
/// sums and element count are summed over the ranks, then the sums of
/// squared deviations from the global mean (two passes, as the fused
/// kernels). The backward runs through the same two sums, which is
/// PyTorch's all-reduce of the sums of dy and dy * xhat.
fn synced(
    x: &Tensor,
    residual: Option<&Tensor>,
    fuse: Fuse,
    a: &BatchNormArgs,
    sync: &Arc<dyn StatSync>,
) -> Result<BatchNormOutput> {
    let (n, c) = (x.dims()[0], x.dims()[1]);
    let s: usize = x.dims()[2..].iter().product();
    let f32 = |t: &Tensor| t.to_dtype(DType::F32);
    let per_channel = |t: &Tensor| t.reshape(&[1, c, 1]);
    let xf = f32(x)?.reshape(&[n, c, s])?;
    let local = Tensor::from_vec(vec![(n * s) as f32], &[1])?.to_device(x.device())?;
    let sums = all_reduce(
        sync,
        &Tensor::cat(&[xf.sum_dims(&[0, 2], false)?, local], 0)?,
    )?;
    let count = sums
        .narrow(0, c, 1)?
        .to_device(crate::Device::Cpu)?
        .item()?;
    if count <= 1.0 {
        return Err(Error::arg(
            "BatchNorm",
            format!("training needs more than one value per channel over the ranks, got {count}"),
        ));
    }
    let mean = sums.narrow(0, 0, c)?.scale(1.0 / count)?;
    let xc = xf.sub(&per_channel(&mean)?)?;
    let var = all_reduce(sync, &xc.mul(&xc)?.sum_dims(&[0, 2], false)?)?.scale(1.0 / count)?;
    let inv_std = var.add_scalar(a.eps)?.powf(-0.5)?;
    let scale = inv_std.mul(&f32(a.weight)?)?;
    let mut y = xc
        .mul(&per_channel(&scale)?)?
        .add(&per_channel(&f32(a.bias)?)?)?
        .reshape(x.dims())?;
    if let Some(r) = residual {
        y = y.add(&f32(r)?)?;
    }
    if fuse != Fuse::None {
        y = y.relu()?;
    }
    let running = {
        let _ng = crate::no_grad();
        let m = a.momentum;
        let update = |old: &Tensor, batch: &Tensor| -> Result<Tensor> {
            f32(old)?
                .scale(1.0 - m)?
                .add(&batch.scale(m)?)?
                .to_dtype(old.dtype())
        };
        let unbiased = var.detach().scale(count / (count - 1.0))?;
        (
            update(a.running_mean, &mean.detach())?,
            update(a.running_var, &unbiased)?,
        )
    };
    Ok(BatchNormOutput {
        out: y.to_dtype(x.dtype())?,
        running: Some(running),
    })
}

impl Module for BatchNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, None, Fuse::None)
    }
    fn params(&self) -> Vec<Param> {
        vec![self.weight.clone(), self.bias.clone()]
    }
    fn buffers(&self) -> Vec<Buffer> {
        vec![self.running_mean.clone(), self.running_var.clone()]
    }
    fn set_training(&self, training: bool) {
        self.training.store(training, Ordering::Relaxed)
    }
    fn set_batch_norm_sync(&self, sync: Option<Arc<dyn StatSync>>) {
        *self.sync.write().unwrap() = sync;
    }
}
