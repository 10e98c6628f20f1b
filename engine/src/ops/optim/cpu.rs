//! The optimizer primitives on the CPU: vectorised loops over plain slices
//! in the param's compute type (f32 for f32/f16/bf16 params, f64 for f64),
//! parallel over chunks. Host storage is immutable, so "in place" means the
//! param and momentum get new tensors with the results.

use super::{
    check_scale_state, check_scale_update, sgd_step_each, LarsHyper, OptimOps, ScaleHyper,
    SgdHyper, SgdItem, SCALE_STATE,
};
use crate::backend::Cpu;
use crate::nn::Param;
use crate::{dispatch_float, Device, Float, Result, Tensor};
use rayon::prelude::*;

impl OptimOps for Cpu {
    fn sgd_step(&self, p: &Param, g: &Tensor, m: &mut Option<Tensor>, h: &SgdHyper) -> Result<()> {
        dispatch_float!("sgd", g.dtype(), T => sgd::<T>(p, g, m, h))
    }

    /// The per-param loop: each param's step is its own `sgd_step`, bit
    /// for bit.
    fn sgd_step_many(&self, items: &mut [SgdItem<'_>]) -> Result<()> {
        sgd_step_each(self, items)
    }

    fn lars_step(
        &self,
        p: &Param,
        g: &Tensor,
        buf: &mut Option<Tensor>,
        h: &LarsHyper,
    ) -> Result<()> {
        dispatch_float!("lars", g.dtype(), T => lars::<T>(p, g, buf, h))
    }

    fn unscale_and_check_finite(&self, grads: &[(Param, Tensor)], inv_scale: f64) -> Result<bool> {
        let mut finite = true;
        for (p, g) in grads {
            let (unscaled, ok) =
                dispatch_float!("LossScaler::unscale", g.dtype(), T => unscale::<T>(g, inv_scale)?);
            finite &= ok;
            p.set_grad(Some(unscaled));
        }
        Ok(finite)
    }

    /// The scale's reciprocal in f32, as the GPU's `unscale_check_f32`
    /// takes it.
    fn unscale_found(&self, grads: &[(Param, Tensor)], state: &Tensor) -> Result<Tensor> {
        check_scale_state("unscale_found", state, Device::Cpu)?;
        let inv = 1.0 / state.to_vec::<f32>()?[0];
        let finite = self.unscale_and_check_finite(grads, f64::from(inv))?;
        Tensor::from_vec(vec![f32::from(u8::from(!finite))], &[1])
    }

    /// reduce.cu's `amp_update_scale`, in the same f32 operations.
    fn update_scale(&self, state: &mut Tensor, found: &Tensor, h: &ScaleHyper) -> Result<()> {
        check_scale_update(state, found, h)?;
        let v = state.to_vec::<f32>()?;
        let (mut scale, mut clean, mut skipped) = (v[0], v[1], v[2]);
        if found.to_vec::<f32>()?[0] != 0.0 {
            scale *= h.backoff_factor as f32;
            clean = 0.0;
            skipped += 1.0;
        } else {
            skipped = 0.0;
            clean += 1.0;
            if clean >= h.growth_interval as f32 {
                let grown = scale * h.growth_factor as f32;
                if grown.is_finite() {
                    scale = grown;
                }
                clean = 0.0;
            }
        }
        *state = Tensor::from_vec(vec![scale, clean, skipped], &[SCALE_STATE.len()])?;
        Ok(())
    }

    fn all_finite(&self, tensors: &[Tensor]) -> Result<bool> {
        for t in tensors.iter().filter(|t| t.dtype().is_float()) {
            let ok = dispatch_float!("all_finite", t.dtype(), T => {
                t.float_data::<T>()?.par_iter().all(|x| x.is_finite())
            });
            if !ok {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn non_finite_found(&self, tensors: &[Tensor]) -> Result<Tensor> {
        let found = !self.all_finite(tensors)?;
        Tensor::from_vec(vec![f32::from(u8::from(found))], &[1])
    }
}

/// The momentum buffer's elements, zeros before the first step.
fn momentum<T: Float>(buf: &Option<Tensor>, n: usize) -> Result<Vec<T>> {
    Ok(match buf {
        Some(b) => b.float_data::<T>()?.into_owned(),
        None => vec![T::zero(); n],
    })
}

/// Installs a step's results: the new value (rounded to the param's dtype)
/// and momentum.
fn commit<T: Float>(p: &Param, out: Vec<T>, buf: &mut Option<Tensor>, b: Vec<T>) -> Result<()> {
    let value = p.get();
    p.set(Tensor::from_compute(out, value.dims(), value.dtype()))?;
    *buf = Some(Tensor::from_vec(b, value.dims())?);
    Ok(())
}

fn sgd<T: Float>(p: &Param, grad: &Tensor, buf: &mut Option<Tensor>, h: &SgdHyper) -> Result<()> {
    let value = p.get();
    let (w, g) = (value.float_data::<T>()?, grad.float_data::<T>()?);
    let (wd, lr, m) = (
        T::from_f64(h.weight_decay),
        T::from_f64(h.lr),
        T::from_f64(h.momentum),
    );
    let damp = T::from_f64(1.0 - h.dampening);
    let (use_momentum, nesterov) = (h.momentum != 0.0, h.nesterov);
    let first = buf.is_none();
    let mut b = if use_momentum {
        momentum::<T>(buf, w.len())?
    } else {
        Vec::new()
    };
    let mut out = vec![T::zero(); w.len()];
    let k = Kernel { lr, wd, m, damp };
    // Flags as const generics: each variant is a branch-free loop that
    // vectorises.
    let kernel: KernelFn<T> = match (wd != T::zero(), use_momentum, first, nesterov) {
        (false, false, _, _) => Kernel::run::<false, false, false, false>,
        (true, false, _, _) => Kernel::run::<true, false, false, false>,
        (false, true, true, false) => Kernel::run::<false, true, true, false>,
        (false, true, true, true) => Kernel::run::<false, true, true, true>,
        (false, true, false, false) => Kernel::run::<false, true, false, false>,
        (false, true, false, true) => Kernel::run::<false, true, false, true>,
        (true, true, true, false) => Kernel::run::<true, true, true, false>,
        (true, true, true, true) => Kernel::run::<true, true, true, true>,
        (true, true, false, false) => Kernel::run::<true, true, false, false>,
        (true, true, false, true) => Kernel::run::<true, true, false, true>,
    };
    par_update(&mut out, &mut b, |start, o, b| {
        kernel(
            &k,
            &w[start..start + o.len()],
            &g[start..start + o.len()],
            o,
            b,
        )
    });
    if use_momentum {
        commit(p, out, buf, b)
    } else {
        p.set(Tensor::from_compute(out, value.dims(), value.dtype()))
    }
}

fn lars<T: Float>(p: &Param, grad: &Tensor, buf: &mut Option<Tensor>, h: &LarsHyper) -> Result<()> {
    let value = p.get();
    let (w, g) = (value.float_data::<T>()?, grad.float_data::<T>()?);
    let (wd, q) = if h.excluded {
        (0.0, 1.0)
    } else {
        let (wn, gn) = (sum_sq(&w).sqrt(), sum_sq(&g).sqrt());
        let denom = gn + h.weight_decay * wn;
        let q = if wn > 0.0 && denom > 0.0 {
            h.eta * wn / denom
        } else {
            1.0
        };
        (h.weight_decay, q)
    };
    let (wd, q) = (T::from_f64(wd), T::from_f64(q));
    let (lr, m) = (T::from_f64(h.lr), T::from_f64(h.momentum));
    let mut b = momentum::<T>(buf, w.len())?;
    let mut out = vec![T::zero(); w.len()];
    par_update(&mut out, &mut b, |start, o, b| {
        let (w, g) = (&w[start..start + o.len()], &g[start..start + o.len()]);
        for (((o, &w), &g), b) in o.iter_mut().zip(w).zip(g).zip(b.iter_mut()) {
            *b = m * *b + q * (g + wd * w);
            *o = w - lr * *b;
        }
    });
    commit(p, out, buf, b)
}

fn unscale<T: Float>(g: &Tensor, inv: f64) -> Result<(Tensor, bool)> {
    let inv = T::from_f64(inv);
    let v: Vec<T> = g.float_data::<T>()?.iter().map(|&x| x * inv).collect();
    let finite = v.iter().all(|x| x.is_finite());
    Ok((Tensor::from_compute(v, g.dims(), g.dtype()), finite))
}

type KernelFn<T> = fn(&Kernel<T>, &[T], &[T], &mut [T], &mut [T]);

struct Kernel<T> {
    lr: T,
    wd: T,
    m: T,
    damp: T,
}

impl<T: Float> Kernel<T> {
    /// `out = w - lr * d` over one chunk; `b` is the momentum buffer chunk
    /// (empty without momentum).
    fn run<const DECAY: bool, const MOMENTUM: bool, const FIRST: bool, const NESTEROV: bool>(
        &self,
        w: &[T],
        g: &[T],
        out: &mut [T],
        b: &mut [T],
    ) {
        let d = |w: T, g: T| if DECAY { g + self.wd * w } else { g };
        if !MOMENTUM {
            for ((o, &w), &g) in out.iter_mut().zip(w).zip(g) {
                *o = w - self.lr * d(w, g);
            }
            return;
        }
        for (((o, &w), &g), b) in out.iter_mut().zip(w).zip(g).zip(b.iter_mut()) {
            let d = d(w, g);
            *b = if FIRST {
                d
            } else {
                self.m * *b + self.damp * d
            };
            let u = if NESTEROV { d + self.m * *b } else { *b };
            *o = w - self.lr * u;
        }
    }
}

/// Runs `f(start, out_chunk, buf_chunk)` over matching chunks of `out` and
/// `buf` in parallel; `buf` may be empty (no momentum), then `f` gets an
/// empty slice.
fn par_update<T: Send>(out: &mut [T], buf: &mut [T], f: impl Fn(usize, &mut [T], &mut [T]) + Sync) {
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
fn sum_sq<T: Float>(x: &[T]) -> f64 {
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
