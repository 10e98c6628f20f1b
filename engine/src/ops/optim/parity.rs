//! The optimizer family's GPU parity cases: three SGD steps over one param
//! of each kind the models have (momentum, weight decay, Nesterov, decay
//! excluded from 1-d params), three LARS steps over the same params (with
//! and without excluding 1-d params from adaptation; the GPU computes the
//! norms in double like the CPU, then the update in f32 like the CPU's f32
//! loop, so the default f32 threshold holds), and an AMP step with and
//! without an overflow
//! (the scaled loss, the unscaled gradients, the skipped step, the new
//! scale). Then the multi-tensor SGD step over 40 params (`sgd_multi_<t>`
//! chunking them): sizes 0 to 300 000 elements, an f16 and a bf16 param
//! (two launches), an unaligned narrow view stepped in place and a strided
//! one, with momentum, Nesterov and decay exclusion, and without momentum.
//! Each such run gives three cases: the f32 params and every momentum
//! buffer (f32, default threshold), the f16 param's value (f16's) and the
//! bf16 param's (bf16's): those are one rounding of an f32 result the GPU
//! computes with fused multiply-adds, which may land one f16/bf16 step from
//! the host's. Then `non_finite_found` (the queued check after a step)
//! over mixed dtypes, a strided view and a tensor of several chunks, with
//! a NaN or an infinity in one of them or in none. Last, loss scaling
//! decided on the device (`ScaleOnDevice`: `unscale_found`, the SGD
//! kernel's skip flag, `update_scale`) over three steps, with and without
//! an overflow on the first one (no momentum yet). And the bf16/f16
//! forward copies f32 params keep (`Param::get_as`), which the GPU's SGD
//! and LARS kernels rewrite in place: each must equal its param cast
//! afresh after every step.

use crate::amp::{amp_step, LossScaler, ScaleOnDevice};
use crate::nn::Param;
use crate::ops::optim::OptimOps;
use crate::optim::{Lars, Optimizer, Sgd};
use crate::parity::{Case, Outputs};
use crate::{on_backend, DType, Device, Error, Result, Rng, Tensor};
use std::rc::Rc;
use std::sync::Arc;

/// (name, shape, no_weight_decay)
const SPEC: [(&str, &[usize], bool); 5] = [
    ("conv.weight", &[13, 7, 3, 3], false),
    ("fc.weight", &[37, 100], false),
    ("fc.bias", &[37], true),
    ("bn.weight", &[64], true),
    ("proj.weight", &[256, 256], false),
];

/// One f32 tensor of each param's shape, scaled by `std`.
fn draw(rng: &mut Rng, std: f64) -> Vec<Tensor> {
    SPEC.iter()
        .map(|(_, shape, _)| Tensor::randn(shape, 0.0, std, DType::F32, rng))
        .collect()
}

/// The params with `values`, on `device`.
fn params(values: &[Tensor], device: Device) -> Result<Vec<Param>> {
    SPEC.iter()
        .zip(values)
        .map(|((name, _, nwd), v)| Param::new(*name, v.to_device(device)?, *nwd))
        .collect()
}

/// One `opt` step per entry of `grads`, each gradient set on its param
/// (moved to `device`) first.
fn step_all(
    opt: &mut impl Optimizer,
    params: &[Param],
    grads: &[Vec<Tensor>],
    device: Device,
) -> Result<()> {
    // a new learning rate each step (1, 1/2, 1/4 of the first): on a GPU
    // the SGD kernel reads it from the device scalar `Sgd::stage_lr` writes
    let lr = opt.lr();
    for (k, step) in grads.iter().enumerate() {
        opt.set_lr(lr / (1 << k.min(2)) as f64);
        for (p, g) in params.iter().zip(step) {
            p.set_grad(Some(g.to_device(device)?));
        }
        opt.step(params)?;
    }
    Ok(())
}

/// `opt` stepped once per entry of `grads` on params holding `values`
/// (on `device`): the params and the optimizer's state afterwards.
fn run_steps(
    mut opt: impl Optimizer,
    values: &[Tensor],
    grads: &[Vec<Tensor>],
    device: Device,
) -> Result<Outputs> {
    let params = params(values, device)?;
    step_all(&mut opt, &params, grads, device)?;
    let mut out: Outputs = params
        .iter()
        .map(|p| (p.name().to_string(), p.get()))
        .collect();
    out.extend(opt.state());
    Ok(out)
}

/// Each param's gradient and value, in order, onto `out`.
fn push_grads_and_values(params: &[Param], out: &mut Outputs) -> Result<()> {
    for p in params {
        let g = p
            .grad()
            .ok_or_else(|| Error::Autograd("grad dropped".into()))?;
        out.push((format!("{}.grad", p.name()), g));
        out.push((p.name().to_string(), p.get()));
    }
    Ok(())
}

fn case(
    label: String,
    run: impl Fn(Device) -> Result<Outputs> + 'static,
    op: &'static str,
) -> Case {
    Case {
        op,
        dtype: DType::F32,
        label,
        threshold: None,
        run: Box::new(run),
    }
}

/// One param of the many-param cases: its shape and dtype, and `view`
/// `Some((dim, start, base_len))` when it is `narrow(dim, start,
/// shape[dim])` of a tensor `base_len` long along `dim`, taken on the
/// device (a view into a larger storage).
struct ManyParam {
    shape: Vec<usize>,
    dtype: DType,
    view: Option<(usize, usize, usize)>,
}

impl ManyParam {
    fn base_shape(&self) -> Vec<usize> {
        let mut s = self.shape.clone();
        if let Some((dim, _, len)) = self.view {
            s[dim] = len;
        }
        s
    }
}

/// 40 params: the sizes that exercise the chunking (1, 7, an empty one,
/// 4097, 300 000 = 5 chunks), an f16 and a bf16 param, an unaligned dense
/// view (offset 1 element: the kernel's scalar path, stepped in place in
/// the larger storage) and a strided one (made dense first), then the
/// shapes of a small net.
fn many_params() -> Vec<ManyParam> {
    let p = |shape: &[usize], dtype: DType, view: Option<(usize, usize, usize)>| ManyParam {
        shape: shape.to_vec(),
        dtype,
        view,
    };
    let mut v = vec![
        p(&[1], DType::F32, None),
        p(&[7], DType::F32, None),
        p(&[0, 5], DType::F32, None),
        p(&[4097], DType::F32, None),
        p(&[300, 1000], DType::F32, None),
        p(&[4099], DType::F16, None),
        p(&[70, 1001], DType::BF16, None),
        p(&[4097], DType::F32, Some((0, 1, 4098))),
        p(&[20, 20], DType::F32, Some((1, 3, 30))),
    ];
    let net: [&[usize]; 6] = [
        &[64, 3, 3, 3],
        &[64],
        &[128, 64, 1, 1],
        &[128],
        &[10, 128],
        &[10],
    ];
    for i in 0..40 - v.len() {
        v.push(p(net[i % net.len()], DType::F32, None));
    }
    v
}

/// Which outputs of a many-param run a case compares.
#[derive(Clone, Copy, PartialEq)]
enum Keep {
    /// The f32 params and every momentum buffer.
    F32,
    /// The value of the one param of this dtype.
    Param(DType),
}

/// `opt` stepped once per entry of `grads` on [`many_params`] holding
/// `values` (the base tensors) on `device`: the outputs `keep` selects.
fn run_many(
    mut opt: Sgd,
    values: &[Tensor],
    grads: &[Vec<Tensor>],
    device: Device,
    keep: Keep,
) -> Result<Outputs> {
    let spec = many_params();
    let params: Vec<Param> = spec
        .iter()
        .zip(values)
        .enumerate()
        .map(|(i, (s, v))| {
            let base = v.to_device(device)?;
            let value = match s.view {
                Some((dim, start, _)) => base.narrow(dim, start, s.shape[dim])?,
                None => base,
            };
            Param::new(format!("many.{i:02}"), value, s.shape.len() == 1)
        })
        .collect::<Result<_>>()?;
    step_all(&mut opt, &params, grads, device)?;
    let mut out: Outputs = params
        .iter()
        .zip(&spec)
        .filter(|(_, s)| match keep {
            Keep::F32 => s.dtype == DType::F32,
            Keep::Param(d) => s.dtype == d,
        })
        .map(|(p, _)| (p.name().to_string(), p.get()))
        .collect();
    if keep == Keep::F32 {
        out.extend(opt.state());
    }
    Ok(out)
}

/// The many-param cases (see the module doc).
fn many_cases(rng: &mut Rng, out: &mut Vec<Case>) {
    let spec = many_params();
    for (momentum, nesterov, exclude) in
        [(0.9, false, false), (0.9, true, true), (0.0, false, true)]
    {
        let draw = |rng: &mut Rng, base: bool, std: f64| -> Vec<Tensor> {
            spec.iter()
                .map(|s| {
                    let shape = if base {
                        s.base_shape()
                    } else {
                        s.shape.clone()
                    };
                    Tensor::randn(&shape, 0.0, std, s.dtype, rng)
                })
                .collect()
        };
        let values = Rc::new(draw(rng, true, 1.0));
        let grads: Rc<Vec<Vec<Tensor>>> = Rc::new((0..3).map(|_| draw(rng, false, 0.5)).collect());
        let label = format!(
            "40 params (1 to 300000 elements, f16, bf16, views), 3 steps, momentum {momentum}{}{}",
            if nesterov { ", nesterov" } else { "" },
            if exclude { ", no wd on 1-d" } else { "" }
        );
        for (keep, dtype, what) in [
            (Keep::F32, DType::F32, "f32 params and momentum"),
            (Keep::Param(DType::F16), DType::F16, "the f16 param"),
            (Keep::Param(DType::BF16), DType::BF16, "the bf16 param"),
        ] {
            let (values, grads) = (values.clone(), grads.clone());
            let run = move |device: Device| -> Result<Outputs> {
                let opt = Sgd::new(0.1, momentum, 1e-4)
                    .with_nesterov(nesterov)
                    .with_exclude_no_wd(exclude);
                run_many(opt, &values, &grads, device, keep)
            };
            out.push(Case {
                op: "sgd_step_many",
                dtype,
                label: format!("{label}: {what}"),
                threshold: None,
                run: Box::new(run),
            });
        }
    }
}

pub fn cases(rng: &mut Rng, out: &mut Vec<Case>) {
    for (nesterov, exclude) in [(false, false), (true, true)] {
        let values = draw(rng, 1.0);
        // three steps, fresh gradients each (the second and third use momentum)
        let grads: Vec<Vec<Tensor>> = (0..3).map(|_| draw(rng, 0.5)).collect();
        let run = move |device: Device| -> Result<Outputs> {
            let opt = Sgd::new(0.1, 0.9, 1e-4)
                .with_nesterov(nesterov)
                .with_exclude_no_wd(exclude);
            run_steps(opt, &values, &grads, device)
        };
        let label = format!(
            "5 params, 3 steps{}{}",
            if nesterov { ", nesterov" } else { "" },
            if exclude { ", no wd on 1-d" } else { "" }
        );
        out.push(case(label, run, "sgd_step"));
    }
    for exclude in [true, false] {
        let values = draw(rng, 1.0);
        let grads: Vec<Vec<Tensor>> = (0..3).map(|_| draw(rng, 0.5)).collect();
        let run = move |device: Device| -> Result<Outputs> {
            let mut opt = Lars::new(0.5, 0.9, 1e-4).with_eta(0.02);
            opt.exclude_no_wd = exclude;
            run_steps(opt, &values, &grads, device)
        };
        let label = format!(
            "5 params, 3 steps, eta 0.02{}",
            if exclude { ", 1-d excluded" } else { "" }
        );
        out.push(case(label, run, "lars_step"));
    }
    for overflow in [false, true] {
        let values = draw(rng, 1.0);
        let mut grads = draw(rng, 4096.0);
        if overflow {
            let mut v = grads[1].to_vec::<f32>().expect("f32 grads");
            v[17] = f32::INFINITY;
            grads[1] = Tensor::from_vec(v, &[37, 100]).expect("[37, 100]");
        }
        let loss = Tensor::randn(&[], 0.0, 3.0, DType::BF16, rng);
        let run = move |device: Device| -> Result<Outputs> {
            let params = params(&values, device)?;
            let mut scaler = LossScaler::new(1024.0);
            let scaled = scaler.scale_loss(&loss.to_device(device)?)?;
            for (p, g) in params.iter().zip(&grads) {
                p.set_grad(Some(g.to_device(device)?));
            }
            let mut opt = Sgd::new(0.1, 0.9, 1e-4);
            let stepped = amp_step(&mut opt, Some(&mut scaler), &params)?;
            let mut out: Outputs = vec![
                ("scaled_loss".into(), scaled),
                ("stepped".into(), Tensor::scalar(stepped as u8 as f32)),
                ("scale_after".into(), Tensor::scalar(scaler.scale as f32)),
            ];
            push_grads_and_values(&params, &mut out)?;
            Ok(out)
        };
        let label = if overflow {
            "f32 master, bf16 loss, 5 params, inf in fc.weight grad"
        } else {
            "f32 master, bf16 loss, 5 params, finite grads"
        };
        out.push(case(label.into(), run, "amp_step"));
    }
    non_finite_cases(rng, out);
    many_cases(rng, out);
    scale_on_device_cases(rng, out);
    kept_copy_cases(rng, out);
}

/// The forward copy each param keeps (`Param::get_as`): bf16 for the
/// weights, f16 for fc.bias, none for bn.weight, so a multi-tensor SGD step
/// makes two launches with a copy-less param riding in the first.
const KEPT: [Option<DType>; 5] = [
    Some(DType::BF16),
    Some(DType::BF16),
    Some(DType::F16),
    None,
    Some(DType::BF16),
];

/// Three SGD (one multi-tensor launch per copy dtype) or LARS steps (one
/// param at a time) on f32 params whose forward copies are kept: after
/// each step, the copy the next forward reads minus the value cast afresh,
/// which must be zero bit for bit (threshold 0; the CPU drops the copy and
/// casts again, the GPU's step kernel rewrites it in the same launch). On
/// a GPU the copy must also still be the storage the first forward cast
/// into: no cast ran after that one.
fn kept_copy_cases(rng: &mut Rng, out: &mut Vec<Case>) {
    for lars in [false, true] {
        let values = draw(rng, 1.0);
        let grads: Vec<Vec<Tensor>> = (0..3).map(|_| draw(rng, 0.5)).collect();
        let run = move |device: Device| -> Result<Outputs> {
            let params = params(&values, device)?;
            let mut sgd = Sgd::new(0.1, 0.9, 1e-4).with_nesterov(true);
            let mut lars_opt = Lars::new(0.5, 0.9, 1e-4).with_eta(0.02);
            let opt: &mut dyn Optimizer = if lars { &mut lars_opt } else { &mut sgd };
            let first: Vec<Option<Tensor>> = params
                .iter()
                .zip(KEPT)
                .map(|(p, kept)| kept.map(|d| p.get_as(d)).transpose())
                .collect::<Result<_>>()?;
            let mut out: Outputs = Vec::new();
            for (k, step) in grads.iter().enumerate() {
                for (p, g) in params.iter().zip(step) {
                    p.set_grad(Some(g.to_device(device)?));
                }
                opt.step(&params)?;
                for ((p, kept), first) in params.iter().zip(KEPT).zip(&first) {
                    let (Some(d), Some(first)) = (kept, first) else {
                        continue;
                    };
                    let copy = p.get_as(d)?;
                    if device != Device::Cpu && !Arc::ptr_eq(copy.storage(), first.storage()) {
                        return Err(Error::arg(
                            "kept copy",
                            format!(
                                "{}: cast again after step {k}, not rewritten by it",
                                p.name()
                            ),
                        ));
                    }
                    let fresh = p.get().to_dtype(d)?.to_dtype(DType::F32)?;
                    let diff = copy.to_dtype(DType::F32)?.sub(&fresh)?;
                    out.push((format!("step {k}: {} copy minus its cast", p.name()), diff));
                }
            }
            Ok(out)
        };
        out.push(Case {
            op: if lars { "lars_step" } else { "sgd_step_many" },
            dtype: DType::F32,
            label: "5 f32 params with bf16/f16 forward copies kept, 3 steps".into(),
            // the copy is the value rounded, or it is stale: exactly
            threshold: Some(0.0),
            run: Box::new(run),
        });
    }
}

/// Three SGD steps under `ScaleOnDevice` (scale 1024, growth every 2 clean
/// steps), the first overflowing or not: each step's read (the overflow
/// flag and the new scale state), then the params, the momentum and the
/// last step's unscaled gradients.
fn scale_on_device_cases(rng: &mut Rng, out: &mut Vec<Case>) {
    for first_overflows in [false, true] {
        let values = draw(rng, 1.0);
        let mut grads: Vec<Vec<Tensor>> = (0..3).map(|_| draw(rng, 1024.0)).collect();
        if first_overflows {
            let mut v = grads[0][2].to_vec::<f32>().expect("f32 grads");
            v[5] = f32::NAN;
            grads[0][2] = Tensor::from_vec(v, &[37]).expect("[37]");
        }
        let run = move |device: Device| -> Result<Outputs> {
            let params = params(&values, device)?;
            let mut opt = Sgd::new(0.1, 0.9, 1e-4).with_exclude_no_wd(true);
            let mut scaler = LossScaler::new(1024.0);
            scaler.growth_interval = 2;
            let mut on = ScaleOnDevice::default();
            let mut out: Outputs = Vec::new();
            for (k, step) in grads.iter().enumerate() {
                for (p, g) in params.iter().zip(step) {
                    p.set_grad(Some(g.to_device(device)?));
                }
                let read = on.queue_step(&scaler, &mut opt, &params, device)?;
                on.absorb(&mut scaler, &read.to_device(Device::Cpu)?.to_vec_f64()?)?;
                out.push((format!("step {k}: found, scale, clean, skipped"), read));
            }
            push_grads_and_values(&params, &mut out)?;
            out.extend(opt.state());
            Ok(out)
        };
        let label = if first_overflows {
            "5 params, 3 steps, NaN in the first step's fc.bias grad"
        } else {
            "5 params, 3 steps, finite grads"
        };
        out.push(case(label.into(), run, "scale_on_device"));
    }
}

/// `non_finite_found` (the queued check after an optimizer step) over f32,
/// bf16, f16 and i64 tensors, a strided f32 view and a tensor of several
/// chunks, with a NaN or an infinity placed in one of them, or in none.
fn non_finite_cases(rng: &mut Rng, out: &mut Vec<Case>) {
    // the tensors: [37, 100] f32, [3, 100] bf16, [7, 11] f16, [16, 9] f32
    // (checked through a strided view) and [4, 50000] f32 (3 chunks of the
    // GPU's 64 Ki-value list)
    let shapes: [&[usize]; 5] = [&[37, 100], &[3, 100], &[7, 11], &[16, 9], &[4, 50_000]];
    let dtypes = [DType::F32, DType::BF16, DType::F16, DType::F32, DType::F32];
    // (label, the tensor and element that get the value, the value)
    type Spot = (&'static str, Option<(usize, usize)>, f32);
    let spots: [Spot; 6] = [
        ("all finite", None, 0.0),
        ("NaN in the bf16 tensor", Some((1, 202)), f32::NAN),
        ("inf in the f16 tensor", Some((2, 24)), f32::INFINITY),
        ("-inf in the f32 tensor", Some((0, 202)), f32::NEG_INFINITY),
        // element (2, 2): inside the view of columns 1 to 8
        ("NaN in the strided view", Some((3, 20)), f32::NAN),
        (
            "inf in the third chunk of the big tensor",
            Some((4, 140_000)),
            f32::INFINITY,
        ),
    ];
    for (label, spot, bad) in spots {
        let seed = rng.next_u64();
        let run = move |device: Device| -> Result<Outputs> {
            let mut rng = Rng::new(seed);
            let mut ts = Vec::new();
            for (i, (shape, dtype)) in shapes.iter().zip(dtypes).enumerate() {
                let mut v = Tensor::randn(shape, 0.0, 1.0, DType::F32, &mut rng).to_vec::<f32>()?;
                if let Some((_, e)) = spot.filter(|&(t, _)| t == i) {
                    v[e] = bad;
                }
                ts.push(
                    Tensor::from_vec(v, shape)?
                        .to_dtype(dtype)?
                        .to_device(device)?,
                );
            }
            // columns 1 to 8 of [16, 9]: a strided (not dense) view
            ts[3] = ts[3].narrow(1, 1, 8)?;
            ts.push(Tensor::from_vec(vec![1i64, 2, 3], &[3])?.to_device(device)?);
            let found = on_backend!(device, b => b.non_finite_found(&ts))?;
            Ok(vec![("found".into(), found)])
        };
        out.push(case(label.into(), run, "non_finite_found"));
    }
}
