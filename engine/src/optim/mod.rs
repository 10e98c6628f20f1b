//! Optimizers and learning-rate schedules.
//!
//! An optimizer updates `Param`s in place from their accumulated gradients.
//! The arithmetic runs on plain slices (f32 for f32/f16/bf16 params, f64 for
//! f64 params), not through tensor ops: it records no graph and makes one
//! pass over the data. Momentum buffers live in the optimizer, keyed by
//! parameter name, and are exposed as `momentum.<param name>` tensors for
//! checkpoints. Params on a GPU are updated there (SGD: one fused kernel
//! per param, cuda::ops::optim) and keep their momentum on the GPU.

mod lars;
pub mod schedule;
mod sgd;

pub use lars::Lars;
pub use schedule::{Constant, Cosine, LrSchedule, StepDecay, Warmup};
pub use sgd::Sgd;

use crate::nn::Param;
use crate::{DType, Device, Error, Float, Result, Tensor};
use rayon::prelude::*;
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

/// Drops every param's gradient (PyTorch's `zero_grad(set_to_none=True)`).
pub fn zero_grad(params: &[Param]) {
    params.iter().for_each(|p| p.zero_grad())
}

/// A momentum buffer in the compute type of its parameter.
pub(crate) enum Buf {
    F32(Vec<f32>),
    F64(Vec<f64>),
    /// An f32 tensor on the GPU, with its parameter's layout (updated in
    /// place by the GPU step).
    Cuda(Tensor),
}

impl Buf {
    /// The buffer on the host (a GPU buffer is downloaded).
    fn into_host(self) -> Result<Buf> {
        match self {
            Buf::Cuda(t) => Ok(Buf::F32(
                t.to_device(Device::Cpu)?.float_data::<f32>()?.into_owned(),
            )),
            b => Ok(b),
        }
    }
}

/// Compute types the optimizers run in, with conversions from stored buffers
/// (a checkpoint written from f32 params can resume f64 ones and back).
pub(crate) trait OptFloat: Float {
    fn from_buf(b: Buf) -> Vec<Self>;
    fn into_buf(v: Vec<Self>) -> Buf;
}
impl OptFloat for f32 {
    fn from_buf(b: Buf) -> Vec<f32> {
        match b {
            Buf::F32(v) => v,
            Buf::F64(v) => v.into_iter().map(|x| x as f32).collect(),
            Buf::Cuda(_) => unreachable!("MomentumState::take downloads GPU buffers first"),
        }
    }
    fn into_buf(v: Vec<f32>) -> Buf {
        Buf::F32(v)
    }
}
impl OptFloat for f64 {
    fn from_buf(b: Buf) -> Vec<f64> {
        match b {
            Buf::F64(v) => v,
            Buf::F32(v) => v.into_iter().map(|x| x as f64).collect(),
            Buf::Cuda(_) => unreachable!("MomentumState::take downloads GPU buffers first"),
        }
    }
    fn into_buf(v: Vec<f64>) -> Buf {
        Buf::F64(v)
    }
}

/// Per-parameter momentum buffers keyed by parameter name.
#[derive(Default)]
pub(crate) struct MomentumState {
    bufs: BTreeMap<String, (Vec<usize>, Buf)>,
}

const PREFIX: &str = "momentum.";

impl MomentumState {
    /// Removes and returns the buffer of `name` (None before its first step),
    /// checking it still fits the parameter.
    fn take_buf(&mut self, op: &'static str, name: &str, dims: &[usize]) -> Result<Option<Buf>> {
        match self.bufs.get(name) {
            None => Ok(None),
            Some((d, _)) if d.as_slice() != dims => Err(Error::shape(
                op,
                format!("{PREFIX}{name} has shape {d:?} but the parameter is {dims:?} (state from another model?)"),
            )),
            Some(_) => Ok(self.bufs.remove(name).map(|(_, b)| b)),
        }
    }

    fn take<T: OptFloat>(
        &mut self,
        op: &'static str,
        name: &str,
        dims: &[usize],
    ) -> Result<Option<Vec<T>>> {
        match self.take_buf(op, name, dims)? {
            None => Ok(None),
            Some(b) => Ok(Some(T::from_buf(b.into_host()?))),
        }
    }

    /// The buffer of `name` as an f32 tensor on `device` (uploaded when it
    /// was loaded from a checkpoint or last used on the host); None before
    /// the param's first step. Its layout is the GPU default for `dims`.
    fn take_device(
        &mut self,
        op: &'static str,
        name: &str,
        dims: &[usize],
        device: Device,
    ) -> Result<Option<Tensor>> {
        let t = match self.take_buf(op, name, dims)? {
            None => return Ok(None),
            Some(Buf::Cuda(t)) if t.dtype() == DType::F32 => t,
            Some(Buf::Cuda(t)) => t.to_dtype(DType::F32)?.detach(),
            Some(Buf::F32(v)) => Tensor::from_vec(v, dims)?,
            Some(Buf::F64(v)) => {
                Tensor::from_vec(v.into_iter().map(|x| x as f32).collect::<Vec<_>>(), dims)?
            }
        };
        Ok(Some(t.to_device(device)?))
    }

    fn put<T: OptFloat>(&mut self, name: &str, dims: &[usize], v: Vec<T>) {
        self.bufs
            .insert(name.to_string(), (dims.to_vec(), T::into_buf(v)));
    }

    fn put_device(&mut self, name: &str, t: Tensor) {
        self.bufs
            .insert(name.to_string(), (t.dims().to_vec(), Buf::Cuda(t)));
    }

    /// The buffers as tensors; GPU buffers stay on the GPU (checkpoint
    /// saving downloads them) and are shared, not copied: the next GPU step
    /// updates them in place.
    fn to_tensors(&self) -> Vec<(String, Tensor)> {
        self.bufs
            .iter()
            .map(|(name, (dims, b))| {
                let t = match b {
                    Buf::F32(v) => Tensor::from_vec(v.clone(), dims),
                    Buf::F64(v) => Tensor::from_vec(v.clone(), dims),
                    Buf::Cuda(t) => Ok(t.detach()),
                };
                (
                    format!("{PREFIX}{name}"),
                    t.expect("buffer length matches its dims"),
                )
            })
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
            let t = t.to_device(Device::Cpu)?;
            let buf = match t.dtype() {
                DType::F64 => Buf::F64(t.to_vec::<f64>()?),
                d if d.is_float() => Buf::F32(t.float_data::<f32>()?.into_owned()),
                d => return Err(Error::dtype(op, format!("a float dtype for {key}"), d)),
            };
            bufs.insert(name.to_string(), (t.dims().to_vec(), buf));
        }
        Ok(MomentumState { bufs })
    }
}

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

/// Runs `f(start, out_chunk, buf_chunk)` over matching chunks of `out` and
/// `buf` in parallel; `buf` may be empty (no momentum), then `f` gets an
/// empty slice.
pub(crate) fn par_update<T: Send>(
    out: &mut [T],
    buf: &mut [T],
    f: impl Fn(usize, &mut [T], &mut [T]) + Sync,
) {
    const GRAIN: usize = 1 << 15;
    if out.len() <= GRAIN {
        return f(0, out, buf);
    }
    if buf.is_empty() {
        out.par_chunks_mut(GRAIN)
            .enumerate()
            .for_each(|(i, o)| f(i * GRAIN, o, &mut []));
    } else {
        out.par_chunks_mut(GRAIN)
            .zip(buf.par_chunks_mut(GRAIN))
            .enumerate()
            .for_each(|(i, (o, b))| f(i * GRAIN, o, b));
    }
}

/// Sum of squares in f64 (norms for LARS; f32 accumulation loses digits on
/// million-element layers). Eight independent accumulators let the loop
/// vectorise; chunks are combined in a fixed order, so the result does not
/// depend on thread scheduling.
pub(crate) fn sum_sq<T: Float>(x: &[T]) -> f64 {
    fn chunk<T: Float>(c: &[T]) -> f64 {
        let mut acc = [0.0f64; 8];
        let mut it = c.chunks_exact(8);
        for lanes in &mut it {
            for (a, &v) in acc.iter_mut().zip(lanes) {
                let v = crate::Element::to_f64(v);
                *a += v * v;
            }
        }
        let tail: f64 = it
            .remainder()
            .iter()
            .map(|&v| crate::Element::to_f64(v).powi(2))
            .sum();
        acc.iter().sum::<f64>() + tail
    }
    let parts: Vec<f64> = x.par_chunks(1 << 15).map(chunk).collect();
    parts.iter().sum()
}
