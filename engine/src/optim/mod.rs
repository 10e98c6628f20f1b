//! Optimizers and learning-rate schedules.
//!
//! An optimizer updates `Param`s in place from their accumulated gradients
//! through the in-place primitives of `ops::optim` (`OptimOps`), run on
//! the param's backend: no tensor ops, no graph, one pass over the data
//! (on the host in f32 for f32/f16/bf16 params, f64 for f64; on a GPU one
//! fused SGD kernel per param). Momentum buffers live in the optimizer,
//! keyed by parameter name, on the device of their param's last step, and
//! are exposed as `momentum.<param name>` tensors for checkpoints.

mod lars;
pub mod schedule;
mod sgd;

pub use lars::Lars;
pub use schedule::{Constant, Cosine, LrSchedule, StepDecay, Warmup};
pub use sgd::Sgd;

use crate::nn::{Buffer, Param};
use crate::ops::optim::OptimOps;
use crate::{on_backend, DType, Device, Error, Result, Tensor};
use std::collections::{BTreeMap, HashSet};

pub trait Optimizer: Send {
    /// One update of every param that has a gradient (others are skipped and
    /// keep their state).
    fn step(&mut self, params: &[Param]) -> Result<()>;
    fn set_lr(&mut self, lr: f64);
    fn lr(&self) -> f64;
    /// Named state tensors (`momentum.<param name>`), sorted by name.
    fn state(&self) -> Vec<(String, Tensor)>;
    /// Replaces all state with what `state()` returned.
    fn load_state(&mut self, state: Vec<(String, Tensor)>) -> Result<()>;
}

/// Fails with an error naming the first parameter or buffer that holds a
/// NaN or an infinity (and how many of its values are), so a diverged run
/// stops instead of training on (and saving) a broken model. One
/// `all_finite` pass per device (on a GPU one sync); only on failure are
/// the tensors copied to the host to find the culprit.
pub fn check_finite(params: &[Param], buffers: &[Buffer]) -> Result<()> {
    let named: Vec<(&str, Tensor)> = params
        .iter()
        .map(|p| (p.name(), p.get()))
        .chain(buffers.iter().map(|b| (b.name(), b.get())))
        .collect();
    let (host, gpu): (Vec<Tensor>, Vec<Tensor>) = named
        .iter()
        .map(|(_, t)| t.clone())
        .partition(|t| t.device() == Device::Cpu);
    let mut finite = true;
    for group in [host, gpu] {
        if let Some(t) = group.first() {
            finite &= on_backend!(t.device(), b => b.all_finite(&group))?;
        }
    }
    if finite {
        return Ok(());
    }
    for (name, t) in named.iter().filter(|(_, t)| t.dtype().is_float()) {
        let values = t.to_device(Device::Cpu)?.to_vec_f64()?;
        let bad = values.iter().filter(|v| !v.is_finite()).count();
        if bad > 0 {
            return Err(Error::arg(
                "train",
                format!(
                    "{name} holds {bad} of {} non-finite values (NaN or infinity): the run diverged; lower the learning rate or momentum",
                    values.len()
                ),
            ));
        }
    }
    Ok(())
}

/// [`check_finite`]'s pass queued and not read: an f32 [1] tensor on
/// `device`, above 0 when a float param or buffer holds a NaN or an
/// infinity (then [`check_finite`] names it). On one GPU this adds no host
/// wait, so a trainer reads it with the step's loss; tensors on another
/// device are checked there and their flag moved to `device`.
pub fn non_finite_flag(params: &[Param], buffers: &[Buffer], device: Device) -> Result<Tensor> {
    let tensors: Vec<Tensor> = params
        .iter()
        .map(|p| p.get())
        .chain(buffers.iter().map(|b| b.get()))
        .collect();
    let mut devices: Vec<Device> = Vec::new();
    for t in &tensors {
        if !devices.contains(&t.device()) {
            devices.push(t.device());
        }
    }
    let mut flag: Option<Tensor> = None;
    for d in devices {
        let group: Vec<Tensor> = tensors
            .iter()
            .filter(|t| t.device() == d)
            .cloned()
            .collect();
        let found = on_backend!(d, b => b.non_finite_found(&group))?.to_device(device)?;
        flag = Some(match flag {
            Some(f) => f.add(&found)?,
            None => found,
        });
    }
    match flag {
        Some(f) => Ok(f),
        None => Tensor::from_vec(vec![0.0f32], &[1])?.to_device(device),
    }
}

/// Drops every param's gradient (PyTorch's `zero_grad(set_to_none=True)`).
pub fn zero_grad(params: &[Param]) {
    params.iter().for_each(|p| p.zero_grad())
}

/// Per-parameter momentum buffers keyed by parameter name: tensors in the
/// param's compute dtype (f64 for f64 params, else f32) on its device. A
/// GPU step updates its buffer in place.
#[derive(Default)]
pub(crate) struct MomentumState {
    bufs: BTreeMap<String, Tensor>,
}

const PREFIX: &str = "momentum.";

impl MomentumState {
    /// Removes and returns the buffer of `name` for `param` (None before
    /// its first step), checking it still fits and converting it to the
    /// param's compute dtype and device (a checkpoint written from f32
    /// params can resume f64 ones and back, one from a GPU run a host one).
    fn take(&mut self, op: &'static str, name: &str, param: &Tensor) -> Result<Option<Tensor>> {
        let dims = param.dims();
        let Some(t) = self.bufs.get(name) else {
            return Ok(None);
        };
        if t.dims() != dims {
            return Err(Error::shape(
                op,
                format!(
                    "{PREFIX}{name} has shape {:?} but the parameter is {dims:?} (state from another model?)",
                    t.dims()
                ),
            ));
        }
        let dtype = if param.dtype() == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        // converted before it leaves the map: a failed conversion loses nothing
        let t = t.to_dtype(dtype)?.to_device(param.device())?;
        self.bufs.remove(name);
        Ok(Some(t))
    }

    /// [`MomentumState::take`] for each of `params` in order, all or none:
    /// on an error the buffers already taken are put back.
    fn take_all(&mut self, op: &'static str, params: &[&Param]) -> Result<Vec<Option<Tensor>>> {
        let mut out = Vec::with_capacity(params.len());
        for p in params {
            match self.take(op, p.name(), &p.get()) {
                Ok(b) => out.push(b),
                Err(e) => {
                    self.put_all(&params[..out.len()], out);
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    /// Keeps the buffer each step left for its param (`bufs[i]` is
    /// `params[i]`'s; None keeps nothing).
    fn put_all(&mut self, params: &[&Param], bufs: Vec<Option<Tensor>>) {
        for (p, b) in params.iter().zip(bufs) {
            if let Some(b) = b {
                self.put(p.name(), b);
            }
        }
    }

    fn put(&mut self, name: &str, t: Tensor) {
        self.bufs.insert(name.to_string(), t);
    }

    /// Runs `step` on the buffer of `p` (see [`MomentumState::take`]) and
    /// keeps what it leaves there, even when it fails.
    fn step(
        &mut self,
        op: &'static str,
        p: &Param,
        step: impl FnOnce(&mut Option<Tensor>) -> Result<()>,
    ) -> Result<()> {
        let mut buf = self.take(op, p.name(), &p.get())?;
        let r = step(&mut buf);
        if let Some(b) = buf {
            self.put(p.name(), b);
        }
        r
    }

    /// The buffers as tensors; GPU buffers stay on the GPU (checkpoint
    /// saving downloads them) and are shared, not copied: the next GPU step
    /// updates them in place.
    fn to_tensors(&self) -> Vec<(String, Tensor)> {
        self.bufs
            .iter()
            .map(|(name, t)| (format!("{PREFIX}{name}"), t.detach()))
            .collect()
    }

    fn load(op: &'static str, state: Vec<(String, Tensor)>) -> Result<MomentumState> {
        let mut bufs = BTreeMap::new();
        for (key, t) in state {
            let name = key.strip_prefix(PREFIX).ok_or_else(|| {
                Error::arg(
                    op,
                    format!(
                        "unknown optimizer state entry {key:?}; expected `{PREFIX}<param name>`"
                    ),
                )
            })?;
            // state taken from a GPU run: a host copy, never a second owner
            // of a buffer the GPU step updates in place
            let t = t.detach().to_device(Device::Cpu)?;
            let buf = match t.dtype() {
                DType::F64 => t,
                d if d.is_float() => t.to_dtype(DType::F32)?,
                d => return Err(Error::dtype(op, format!("a float dtype for {key}"), d)),
            };
            bufs.insert(name.to_string(), buf);
        }
        Ok(MomentumState { bufs })
    }
}

/// The `Optimizer` methods every momentum optimizer shares: the `lr` field
/// and the `state: MomentumState` field, saved under `$op`.
macro_rules! lr_and_momentum_state {
    ($op:literal) => {
        fn set_lr(&mut self, lr: f64) {
            self.lr = lr;
        }
        fn lr(&self) -> f64 {
            self.lr
        }
        fn state(&self) -> Vec<(String, Tensor)> {
            self.state.to_tensors()
        }
        fn load_state(&mut self, state: Vec<(String, Tensor)>) -> Result<()> {
            self.state = MomentumState::load($op, state)?;
            Ok(())
        }
    };
}
use lr_and_momentum_state;

/// Hyperparameters must be finite and non-negative; a clear error beats a
/// silently diverging run.
pub(crate) fn check_hyper(op: &'static str, what: &str, v: f64) -> Result<()> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(Error::arg(
            op,
            format!("{what} must be finite and >= 0, got {v}"),
        ))
    }
}

/// The params that have a gradient, with it; rejects duplicate names (they
/// would share one momentum buffer) and gradients that do not fit.
pub(crate) fn with_grads(op: &'static str, params: &[Param]) -> Result<Vec<(Param, Tensor)>> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(params.len());
    for p in params {
        if !seen.insert(p.name()) {
            return Err(Error::arg(
                op,
                format!("parameter {:?} is listed twice", p.name()),
            ));
        }
        let Some(g) = p.grad() else { continue };
        let v = p.get();
        if g.device() != v.device() {
            return Err(Error::arg(
                op,
                format!(
                    "{}: gradient is on {} but the parameter is on {}",
                    p.name(),
                    g.device(),
                    v.device()
                ),
            ));
        }
        if g.dims() != v.dims() || g.dtype() != v.dtype() {
            return Err(Error::shape(
                op,
                format!(
                    "{}: gradient {:?} {} does not match the parameter {:?} {}",
                    p.name(),
                    g.dims(),
                    g.dtype(),
                    v.dims(),
                    v.dtype()
                ),
            ));
        }
        out.push((p.clone(), g));
    }
    Ok(out)
}
