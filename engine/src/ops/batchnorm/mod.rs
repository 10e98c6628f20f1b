//! Batch normalisation over channel dim 1 (statistics over every other dim),
//! plain and fused with ReLU / residual-add + ReLU: the checks, trace and
//! autograd of each op, over the [`BatchNormOps`] primitives of the
//! backends (`cpu.rs`, `cuda.rs`).

mod cpu;
mod cuda;
pub(crate) mod parity;
#[cfg(test)]
mod tests;

use crate::autograd::record;
use crate::backend::{same_device, unsupported, BackendInfo, Saved};
use crate::ops::GradSpec;
use crate::{on_backend, DType, Device, Error, Result, Tensor};

pub struct BatchNormArgs<'a> {
    pub weight: &'a Tensor,       // [C]
    pub bias: &'a Tensor,         // [C]
    pub running_mean: &'a Tensor, // [C], never requires grad
    pub running_var: &'a Tensor,  // [C]
    pub training: bool,
    /// PyTorch convention: new = (1-m)*old + m*batch_stat.
    pub momentum: f64,
    pub eps: f64,
}

pub struct BatchNormOutput {
    pub out: Tensor,
    /// Updated (running_mean, running_var) in training mode, None in eval.
    /// running_var uses the UNBIASED batch variance (n/(n-1)), normalisation
    /// the biased one — exactly PyTorch.
    pub running: Option<(Tensor, Tensor)>,
}

/// What follows the normalisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fuse {
    None,
    Relu,
    /// relu(bn(x) + residual): the residual is the op's fourth input.
    AddRelu,
}

impl Fuse {
    fn name(self) -> &'static str {
        match self {
            Fuse::None => "batch_norm",
            Fuse::Relu => "batch_norm_relu",
            Fuse::AddRelu => "batch_norm_add_relu",
        }
    }
}

/// One batch norm: x viewed as [n, c, s] (s = product of the spatial
/// dims) and its settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BnGeom {
    pub n: usize,
    pub c: usize,
    pub s: usize,
    pub fuse: Fuse,
    pub training: bool,
    pub momentum: f64,
    pub eps: f64,
}

/// Which inputs want a gradient: x, weight, bias, residual.
pub type Needs = [bool; 4];

/// The batch-norm primitives a backend implements.
pub trait BatchNormOps: BackendInfo {
    /// [relu](bn(x) [+ residual]) with the batch statistics (training) or
    /// the running ones (eval); training also returns the updated running
    /// statistics as new tensors of their dtypes.
    #[allow(clippy::type_complexity)]
    fn batch_norm(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        a: &BatchNormArgs,
        g: &BnGeom,
    ) -> Result<(Tensor, Option<(Tensor, Tensor)>, Saved)> {
        let _ = (x, residual, a, g);
        Err(unsupported(self, "batch_norm"))
    }
    /// The gradients [dx, dweight, dbias] (+ [dresidual] for AddRelu), each
    /// None unless `needs` asks for it.
    fn batch_norm_backward(
        &self,
        dy: &Tensor,
        saved: &Saved,
        g: &BnGeom,
        needs: Needs,
    ) -> Result<Vec<Option<Tensor>>> {
        let _ = (dy, saved, g, needs);
        Err(unsupported(self, "batch_norm_backward"))
    }
}

/// Whether parameters or statistics of dtype `p` go with an x of dtype `x`:
/// the same dtype, or f32 with a half x (mixed precision).
pub(crate) fn param_dtype_fits(x: DType, p: DType) -> bool {
    p == x || (p == DType::F32 && matches!(x, DType::F16 | DType::BF16))
}

/// Checks x, the parameters, the residual and the settings as the op's
/// contract says and returns the geometry.
fn check_args(
    fuse: Fuse,
    x: &Tensor,
    residual: Option<&Tensor>,
    a: &BatchNormArgs,
) -> Result<BnGeom> {
    let op = fuse.name();
    let xd = x.dtype();
    if !xd.is_float() {
        return Err(Error::dtype(
            op,
            "a float dtype (f64, f32, f16, bf16) for x",
            xd,
        ));
    }
    if x.rank() < 2 {
        return Err(Error::shape(
            op,
            format!(
                "x must be [N, C, ...] (at least 2 dims), got {:?}",
                x.dims()
            ),
        ));
    }
    let g = BnGeom {
        n: x.dims()[0],
        c: x.dims()[1],
        s: x.dims()[2..].iter().product(),
        fuse,
        training: a.training,
        momentum: a.momentum,
        eps: a.eps,
    };
    for (name, t) in [
        ("weight", a.weight),
        ("bias", a.bias),
        ("running_mean", a.running_mean),
        ("running_var", a.running_var),
    ] {
        if t.dims() != [g.c] {
            return Err(Error::shape(
                op,
                format!(
                    "{name} must be [{}] (x's channel dim 1 of {:?}), got {:?}",
                    g.c,
                    x.dims(),
                    t.dims()
                ),
            ));
        }
        if !param_dtype_fits(xd, t.dtype()) {
            let expected = if xd == DType::F32 || xd == DType::F64 {
                format!("{xd} for {name} (like x)")
            } else {
                format!("{xd} or f32 for {name} (x is {xd})")
            };
            return Err(Error::dtype(op, expected, t.dtype()));
        }
    }
    if a.weight.dtype() != a.bias.dtype() {
        return Err(Error::dtype(
            op,
            format!("{} for bias (like weight)", a.weight.dtype()),
            a.bias.dtype(),
        ));
    }
    if let Some(r) = residual {
        if r.dims() != x.dims() {
            return Err(Error::shape(
                op,
                format!("residual {:?} must have x's shape {:?}", r.dims(), x.dims()),
            ));
        }
        if r.dtype() != xd {
            return Err(Error::dtype(
                op,
                format!("{xd} for residual (like x)"),
                r.dtype(),
            ));
        }
    }
    if !(a.eps.is_finite() && a.eps >= 0.0) {
        return Err(Error::arg(
            op,
            format!("eps must be finite and >= 0, got {}", a.eps),
        ));
    }
    if !a.momentum.is_finite() {
        return Err(Error::arg(
            op,
            format!("momentum must be finite, got {}", a.momentum),
        ));
    }
    if a.training && g.n * g.s <= 1 {
        return Err(Error::arg(
            op,
            format!(
                "training needs more than one value per channel, got input shape {:?}",
                x.dims()
            ),
        ));
    }
    Ok(g)
}

/// The gradient of a batch-norm output: x's shape, dtype and device.
fn check_grad(op: &'static str, dy: &Tensor, x: &(Vec<usize>, DType, Device)) -> Result<()> {
    GradSpec::new(x.1, x.2, &x.0).check(op, dy)
}

fn batch_norm_op(
    x: &Tensor,
    residual: Option<&Tensor>,
    a: &BatchNormArgs,
    fuse: Fuse,
) -> Result<BatchNormOutput> {
    let op = fuse.name();
    let g = check_args(fuse, x, residual, a)?;
    let mut inputs = vec![x, a.weight, a.bias];
    inputs.extend(residual);
    let mut all = inputs.clone();
    all.extend([a.running_mean, a.running_var]);
    same_device(op, &all)?;
    on_backend!(x.device(), b => crate::trace::op(op, "forward", b.name(), &[x, a.weight, a.bias], || {
        let (y, running, saved) = b.batch_norm(x, residual, a, &g)?;
        let mut needs = [false; 4];
        for (n, t) in needs.iter_mut().zip(&inputs) {
            *n = t.requires_grad();
        }
        let xs = (x.dims().to_vec(), x.dtype(), x.device());
        let out = record(y, op, &inputs, move |dy| {
            check_grad(op, dy, &xs)?;
            b.batch_norm_backward(dy, &saved, &g, needs)
        });
        Ok(BatchNormOutput { out, running })
    }))
}

impl Tensor {
    /// x is [N, C], [N, C, L] or [N, C, H, W]; statistics over every dim but 1.
    pub fn batch_norm(&self, a: &BatchNormArgs) -> Result<BatchNormOutput> {
        batch_norm_op(self, None, a, Fuse::None)
    }

    /// relu(batch_norm(x)) in one pass (forward and backward).
    pub fn batch_norm_relu(&self, a: &BatchNormArgs) -> Result<BatchNormOutput> {
        batch_norm_op(self, None, a, Fuse::Relu)
    }

    /// relu(batch_norm(x) + residual), residual has x's shape and dtype.
    pub fn batch_norm_add_relu(
        &self,
        residual: &Tensor,
        a: &BatchNormArgs,
    ) -> Result<BatchNormOutput> {
        batch_norm_op(self, Some(residual), a, Fuse::AddRelu)
    }
}

impl crate::trace::Traced for BatchNormOutput {
    fn outputs(&self) -> Vec<&Tensor> {
        let mut v = vec![&self.out];
        if let Some((m, var)) = &self.running {
            v.extend([m, var]);
        }
        v
    }
}
