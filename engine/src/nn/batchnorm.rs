//! Batch normalisation layer for [N, C] and [N, C, H, W] inputs (PyTorch's
//! `nn.BatchNorm1d` and `nn.BatchNorm2d`: one type, statistics over every
//! dim but the channel dim 1).

use crate::nn::{join, Buffer, Module, Param};
use crate::ops::batchnorm::param_dtype_fits;
use crate::ops::{BatchNormArgs, BatchNormOutput};
use crate::{DType, Error, Result, Tensor};
use std::sync::atomic::{AtomicBool, Ordering};

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
        self.run(x, |x, a| x.batch_norm_relu(a))
    }

    /// `relu(bn(x) + residual)` in one pass (the end of a residual block).
    pub fn forward_add_relu(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.run(x, |x, a| x.batch_norm_add_relu(residual, a))
    }

    /// Calls the op with this layer's state and, in train mode, stores the
    /// updated running statistics. Like PyTorch, train mode updates them
    /// even under `no_grad`.
    fn run(
        &self,
        x: &Tensor,
        op: impl FnOnce(&Tensor, &BatchNormArgs) -> Result<BatchNormOutput>,
    ) -> Result<Tensor> {
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
        let out = op(x, &args)?;
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

impl Module for BatchNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, |x, a| x.batch_norm(a))
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
}
