//! Softmax, log-softmax and the losses (cross-entropy, BCE-with-logits,
//! smooth-L1), each with a direct backward: the checks, trace and autograd
//! of each op, over the [`LossOps`] primitives of the backends (`cpu.rs`,
//! `cuda.rs`). Losses are means returned as 0-d tensors; targets never get
//! a gradient.

mod cpu;
mod cuda;
pub(crate) mod parity;
#[cfg(test)]
mod tests;

use super::expect_rank;
use crate::autograd::record;
use crate::backend::{same_device, unsupported, BackendInfo, Saved};
use crate::ops::GradSpec;
use crate::{on_backend, DType, Device, Error, Result, Tensor};

/// A softmax over `dim` of a tensor viewed as [outer, size, inner].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftmaxGeom {
    pub outer: usize,
    pub size: usize,
    pub inner: usize,
    /// log_softmax rather than softmax.
    pub log: bool,
}

/// A cross-entropy over logits [n, c] (PyTorch's F.cross_entropy, mean
/// over the rows whose target is not `ignore_index`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct XentGeom {
    pub n: usize,
    pub c: usize,
    pub label_smoothing: f64,
    pub ignore_index: Option<i64>,
}

/// The elementwise losses (mean over all elements).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pointwise {
    /// max(x,0) - x*t + log(1 + exp(-|x|)).
    BceWithLogits,
    /// 0.5 d²/beta if |d| < beta else |d| - 0.5 beta, d = x - t.
    SmoothL1 { beta: f64 },
}

impl SoftmaxGeom {
    fn name(self) -> &'static str {
        if self.log {
            "log_softmax"
        } else {
            "softmax"
        }
    }
}

impl Pointwise {
    fn name(self) -> &'static str {
        match self {
            Pointwise::BceWithLogits => "bce_with_logits",
            Pointwise::SmoothL1 { .. } => "smooth_l1",
        }
    }
}

/// The loss primitives a backend implements.
pub trait LossOps: BackendInfo {
    /// softmax or log_softmax of x.
    fn softmax(&self, x: &Tensor, g: &SoftmaxGeom) -> Result<Tensor> {
        let _ = (x, g);
        Err(unsupported(self, "softmax"))
    }
    /// dx from the forward output y and its gradient dy.
    fn softmax_backward(&self, y: &Tensor, dy: &Tensor, g: &SoftmaxGeom) -> Result<Tensor> {
        let _ = (y, dy, g);
        Err(unsupported(self, "softmax_backward"))
    }
    /// The mean loss (0-d, the logits' dtype) and what the backward needs;
    /// fails with [`target_rows`]'s errors on bad targets.
    fn cross_entropy(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        g: &XentGeom,
    ) -> Result<(Tensor, Saved)> {
        let _ = (logits, targets, g);
        Err(unsupported(self, "cross_entropy"))
    }
    /// d loss / d logits for the loss gradient `dloss` (0-d).
    fn cross_entropy_backward(
        &self,
        dloss: &Tensor,
        saved: &Saved,
        g: &XentGeom,
    ) -> Result<Tensor> {
        let _ = (dloss, saved, g);
        Err(unsupported(self, "cross_entropy_backward"))
    }
    /// The mean of the elementwise loss `kind` (0-d, x's dtype).
    fn pointwise_loss(&self, x: &Tensor, t: &Tensor, kind: Pointwise) -> Result<Tensor> {
        let _ = (x, t, kind);
        Err(unsupported(self, kind.name()))
    }
    /// d loss / d x for the loss gradient `dloss` (0-d).
    fn pointwise_loss_backward(
        &self,
        x: &Tensor,
        t: &Tensor,
        dloss: &Tensor,
        kind: Pointwise,
    ) -> Result<Tensor> {
        let _ = (x, t, dloss, kind);
        Err(unsupported(self, "pointwise_loss_backward"))
    }
}

/// The row classes of cross-entropy targets (None: the ignore index), or
/// the error for the first target outside [0, c), or for every row ignored.
pub(crate) fn target_rows(
    targets: &[i64],
    c: usize,
    ignore_index: Option<i64>,
) -> Result<Vec<Option<usize>>> {
    const OP: &str = "cross_entropy";
    let mut rows = Vec::with_capacity(targets.len());
    for (i, &t) in targets.iter().enumerate() {
        if Some(t) == ignore_index {
            rows.push(None);
        } else if (0..c as i64).contains(&t) {
            rows.push(Some(t as usize));
        } else {
            let ign = ignore_index.map_or(String::new(), |v| {
                format!(" and is not the ignore index {v}")
            });
            return Err(Error::arg(
                OP,
                format!("target[{i}] = {t} is outside [0, {c}){ign}"),
            ));
        }
    }
    if rows.iter().all(|r| r.is_none()) {
        return Err(Error::arg(
            OP,
            format!(
                "every one of the {} rows is ignored (ignore index {ignore_index:?}): \
                 the mean is undefined (PyTorch returns NaN)",
                targets.len()
            ),
        ));
    }
    Ok(rows)
}

/// (outer, size, inner) of `dims` split around `dim`.
fn split_dims(op: &'static str, dims: &[usize], dim: usize) -> Result<(usize, usize, usize)> {
    if dim >= dims.len() {
        return Err(Error::shape(
            op,
            format!("dim {dim} out of range for shape {dims:?}"),
        ));
    }
    Ok((
        dims[..dim].iter().product(),
        dims[dim],
        dims[dim + 1..].iter().product(),
    ))
}

/// A prediction/target pair for the elementwise losses: same shape, same
/// float dtype, not empty.
fn check_pair(op: &'static str, x: &Tensor, t: &Tensor) -> Result<()> {
    if !x.dtype().is_float() {
        return Err(Error::dtype(
            op,
            "a float dtype (f64, f32, f16, bf16) for the prediction",
            x.dtype(),
        ));
    }
    if t.dtype() != x.dtype() {
        return Err(Error::dtype(
            op,
            format!("{} for the target (like the prediction)", x.dtype()),
            t.dtype(),
        ));
    }
    if x.dims() != t.dims() {
        return Err(Error::shape(
            op,
            format!("prediction {:?} and target {:?} differ", x.dims(), t.dims()),
        ));
    }
    if x.numel() == 0 {
        return Err(Error::arg(
            op,
            format!("empty input {:?}: the mean is undefined", x.dims()),
        ));
    }
    same_device(op, &[x, t])?;
    Ok(())
}

/// Logits [N, C] of a float dtype, i64 targets [N], label smoothing in
/// [0, 1].
fn check_cross_entropy(
    logits: &Tensor,
    targets: &Tensor,
    label_smoothing: f64,
    ignore_index: Option<i64>,
) -> Result<XentGeom> {
    const OP: &str = "cross_entropy";
    if !logits.dtype().is_float() {
        return Err(Error::dtype(
            OP,
            "a float dtype (f64, f32, f16, bf16) for the logits",
            logits.dtype(),
        ));
    }
    expect_rank(OP, "logits", logits, 2)?;
    let (n, c) = (logits.dims()[0], logits.dims()[1]);
    if targets.dtype() != DType::I64 {
        return Err(Error::dtype(
            OP,
            "i64 class indices for targets",
            targets.dtype(),
        ));
    }
    if targets.dims() != [n] {
        return Err(Error::shape(
            OP,
            format!(
                "targets must be [{n}] for logits {:?}, got {:?}",
                logits.dims(),
                targets.dims()
            ),
        ));
    }
    if !(0.0..=1.0).contains(&label_smoothing) {
        return Err(Error::arg(
            OP,
            format!("label_smoothing must be in [0, 1], got {label_smoothing}"),
        ));
    }
    Ok(XentGeom {
        n,
        c,
        label_smoothing,
        ignore_index,
    })
}

/// The gradient of an output: `shape`, x's dtype and device.
fn check_grad(op: &'static str, dy: &Tensor, shape: &[usize], x: (DType, Device)) -> Result<()> {
    GradSpec::new(x.0, x.1, shape).check(op, dy)
}

fn softmax_op(x: &Tensor, dim: usize, log: bool) -> Result<Tensor> {
    let op = if log { "log_softmax" } else { "softmax" };
    let (outer, size, inner) = split_dims(op, x.dims(), dim)?;
    let g = SoftmaxGeom {
        outer,
        size,
        inner,
        log,
    };
    on_backend!(x.device(), b => crate::trace::op(op, "forward", b.name(), &[x], || {
        let y = b.softmax(x, &g)?;
        let ys = y.detach();
        Ok(record(y, op, &[x], move |dy| {
            check_grad(op, dy, ys.dims(), (ys.dtype(), ys.device()))?;
            Ok(vec![Some(b.softmax_backward(&ys, dy, &g)?)])
        }))
    }))
}

/// The mean elementwise loss `kind` of x against t, with its backward.
fn pointwise_op(x: &Tensor, t: &Tensor, kind: Pointwise) -> Result<Tensor> {
    let op = kind.name();
    check_pair(op, x, t)?;
    on_backend!(x.device(), b => crate::trace::op(op, "forward", b.name(), &[x, t], || {
        let loss = b.pointwise_loss(x, t, kind)?;
        let (xs, ts) = (x.detach(), t.detach());
        Ok(record(loss, op, &[x, t], move |dl| {
            check_grad(op, dl, &[], (xs.dtype(), xs.device()))?;
            Ok(vec![Some(b.pointwise_loss_backward(&xs, &ts, dl, kind)?), None])
        }))
    }))
}

impl Tensor {
    pub fn log_softmax(&self, dim: usize) -> Result<Tensor> {
        softmax_op(self, dim, true)
    }

    pub fn softmax(&self, dim: usize) -> Result<Tensor> {
        softmax_op(self, dim, false)
    }

    /// logits [N, C] (self), targets i64 [N]; mean over non-ignored rows;
    /// PyTorch's F.cross_entropy semantics incl. label_smoothing and
    /// ignore_index. Error if a target is out of range (and not the ignore
    /// index), or if every row is ignored (PyTorch gives NaN).
    pub fn cross_entropy(
        &self,
        targets: &Tensor,
        label_smoothing: f64,
        ignore_index: Option<i64>,
    ) -> Result<Tensor> {
        const OP: &str = "cross_entropy";
        let g = check_cross_entropy(self, targets, label_smoothing, ignore_index)?;
        on_backend!(self.device(), b => crate::trace::op(OP, "forward", b.name(), &[self, targets], || {
            let (loss, saved) = b.cross_entropy(self, targets, &g)?;
            let xs = (self.dtype(), self.device());
            Ok(record(loss, OP, &[self, targets], move |dl| {
                check_grad(OP, dl, &[], xs)?;
                Ok(vec![Some(b.cross_entropy_backward(dl, &saved, &g)?), None])
            }))
        }))
    }

    /// Mean over all elements of BCE-with-logits (numerically stable form),
    /// targets float, same shape.
    pub fn bce_with_logits(&self, targets: &Tensor) -> Result<Tensor> {
        pointwise_op(self, targets, Pointwise::BceWithLogits)
    }

    /// Mean smooth-L1 (PyTorch: 0.5 d^2/beta if |d|<beta else |d|-0.5 beta;
    /// beta=0 is plain L1), target same shape.
    pub fn smooth_l1(&self, target: &Tensor, beta: f64) -> Result<Tensor> {
        if !(beta.is_finite() && beta >= 0.0) {
            return Err(Error::arg(
                "smooth_l1",
                format!("beta must be finite and >= 0, got {beta}"),
            ));
        }
        pointwise_op(self, target, Pointwise::SmoothL1 { beta })
    }
}
