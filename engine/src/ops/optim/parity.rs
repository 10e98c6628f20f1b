//! The optimizer family's GPU parity cases: three SGD steps over one param
//! of each kind the models have (momentum, weight decay, Nesterov, decay
//! excluded from 1-d params), three LARS steps over the same params (with
//! and without excluding 1-d params from adaptation; the GPU computes the
//! norms in double like the CPU, then the update in f32 like the CPU's f32
//! loop, so the default f32 threshold holds), and an AMP step with and
//! without an overflow
//! (the scaled loss, the unscaled gradients, the skipped step, the new
//! scale).

use crate::amp::{amp_step, LossScaler};
use crate::nn::Param;
use crate::optim::{Lars, Optimizer, Sgd};
use crate::parity::{Case, Outputs};
use crate::{DType, Device, Error, Result, Rng, Tensor};

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

/// `opt` stepped once per entry of `grads` on params holding `values`
/// (on `device`): the params and the optimizer's state afterwards.
fn run_steps(
    mut opt: impl Optimizer,
    values: &[Tensor],
    grads: &[Vec<Tensor>],
    device: Device,
) -> Result<Outputs> {
    let params = params(values, device)?;
    for step in grads {
        for (p, g) in params.iter().zip(step) {
            p.set_grad(Some(g.to_device(device)?));
        }
        opt.step(&params)?;
    }
    let mut out: Outputs = params
        .iter()
        .map(|p| (p.name().to_string(), p.get()))
        .collect();
    out.extend(opt.state());
    Ok(out)
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
            for p in &params {
                let g = p
                    .grad()
                    .ok_or_else(|| Error::Autograd("grad dropped".into()))?;
                out.push((format!("{}.grad", p.name()), g));
                out.push((p.name().to_string(), p.get()));
            }
            Ok(out)
        };
        let label = if overflow {
            "f32 master, bf16 loss, 5 params, inf in fc.weight grad"
        } else {
            "f32 master, bf16 loss, 5 params, finite grads"
        };
        out.push(case(label.into(), run, "amp_step"));
    }
}
