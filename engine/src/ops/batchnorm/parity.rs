//! Batch norm's GPU parity cases: plain, +ReLU and +residual+ReLU, training
//! and eval, f32 parameters and running statistics with every x dtype; the
//! running statistics are compared too. [N, C] inputs cover the projector's
//! BatchNorm1d(+ReLU), which runs bn1d_relu.cu in training.

use super::BatchNormArgs;
use crate::parity::{autograd_with, dims, Case, DTYPES};
use crate::{DType, Rng, Tensor};

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Plain,
    Relu,
    AddRelu,
}

/// Inputs for a fused BN+ReLU case whose pre-activations stay at least
/// 1/16 away from 0, so rounding differences between the two sides can
/// never flip the ReLU mask (a flip is a legitimate difference of O(1) in
/// dx that no threshold could tell from a bug). x (and the residual) lie on
/// a 1/8 grid; per channel, weight = ±std and bias put the zero crossing of
/// w*x̂ + b (+ r) halfway between grid points. Returns (x, r, weight, bias).
fn relu_inputs(
    rng: &mut Rng,
    shape: &[usize],
    dtype: DType,
    residual: bool,
) -> (Tensor, Option<Tensor>, Tensor, Tensor) {
    let (n, ch) = (shape[0], shape[1]);
    let inner: usize = shape[2..].iter().product();
    let grid = |v: f64| (v * 8.0).round() / 8.0;
    let mut x = vec![0f64; n * ch * inner];
    let mut r = vec![0f64; if residual { x.len() } else { 0 }];
    let (mut w, mut b) = (vec![0f32; ch], vec![0f32; ch]);
    for k in 0..ch {
        let (mu, sd) = (grid(rng.normal()), 0.5 + rng.uniform() * 1.5);
        let (mut sum, mut sq) = (0.0, 0.0);
        for i in 0..n {
            for j in 0..inner {
                let v = grid((mu + sd * rng.normal()).clamp(-15.0, 15.0));
                x[(i * ch + k) * inner + j] = v;
                sum += v;
                sq += v * v;
            }
        }
        let m = (n * inner) as f64;
        let mean = sum / m;
        let std = ((sq / m - mean * mean).max(0.0) + 1e-5).sqrt();
        let sign = if rng.uniform() < 0.5 { -1.0 } else { 1.0 };
        let mid = ((mean * 8.0).floor() + 0.5) / 8.0;
        // y = sign*std*(x - mean)/std + sign*(mean - mid) = sign*(x - mid)
        w[k] = (sign * std) as f32;
        b[k] = (sign * (mean - mid)) as f32;
    }
    for v in r.iter_mut() {
        *v = grid(rng.normal().clamp(-4.0, 4.0));
    }
    let mk = |v: Vec<f64>| -> Tensor {
        Tensor::from_vec(v, shape)
            .and_then(|t| t.to_dtype(dtype))
            .expect("host tensor of a valid shape")
    };
    let rt = residual.then(|| mk(r));
    (
        mk(x),
        rt,
        Tensor::from_vec(w, &[ch]).expect("[C]"),
        Tensor::from_vec(b, &[ch]).expect("[C]"),
    )
}

/// The inputs of one case: x, weight, bias, (residual), running_mean,
/// running_var; the running statistics need no gradient.
fn inputs(
    rng: &mut Rng,
    kind: Kind,
    shape: &[usize],
    dtype: DType,
) -> Vec<(&'static str, Tensor, bool)> {
    let ch = shape[1];
    let (x, r, w, b) = if kind == Kind::Plain {
        (
            Tensor::randn(shape, 0.0, 1.5, dtype, rng),
            None,
            Tensor::randn(&[ch], 0.0, 1.0, DType::F32, rng),
            Tensor::randn(&[ch], 0.0, 1.0, DType::F32, rng),
        )
    } else {
        relu_inputs(rng, shape, dtype, kind == Kind::AddRelu)
    };
    let mut v = vec![("x", x, true), ("weight", w, true), ("bias", b, true)];
    if let Some(r) = r {
        v.push(("residual", r, true));
    }
    let rm = Tensor::randn(&[ch], 0.0, 0.5, DType::F32, rng);
    let rv = Tensor::rand(&[ch], 0.5, 2.0, DType::F32, rng);
    v.extend([("running_mean", rm, false), ("running_var", rv, false)]);
    v
}

pub fn cases(rng: &mut Rng, out: &mut Vec<Case>) {
    // ResNet-50's BN shapes at batch 2, odd sizes, and [N, C]: the
    // projector's BatchNorm1d at batch 256 and 16, odd and small widths.
    let shapes: [&[usize]; 10] = [
        &[2, 3, 5, 7],
        &[4, 13, 6, 6],
        &[8, 64, 14, 14],
        &[2, 256, 28, 28],
        &[2, 2048, 7, 7],
        &[16, 2048],
        &[7, 13],
        &[256, 2048],
        &[3, 512],
        &[5, 3],
    ];
    for dtype in DTYPES {
        for kind in [Kind::Plain, Kind::Relu, Kind::AddRelu] {
            for (si, &shape) in shapes.iter().enumerate() {
                // eval mode once per kind and dtype, on the second shape
                for training in [true, false] {
                    if (!training && si != 1) || (kind == Kind::AddRelu && shape.len() != 4) {
                        continue;
                    }
                    let op = match kind {
                        Kind::Plain => "batch_norm",
                        Kind::Relu => "batch_norm_relu",
                        Kind::AddRelu => "batch_norm_add_relu",
                    };
                    let label = format!(
                        "{} f32 params{}",
                        dims(shape),
                        if training { "" } else { " eval" }
                    );
                    let draw = move |rng: &mut Rng| inputs(rng, kind, shape, dtype);
                    let f = move |t: &[Tensor]| {
                        let nr = t.len() - 2;
                        let a = BatchNormArgs {
                            weight: &t[1],
                            bias: &t[2],
                            running_mean: &t[nr],
                            running_var: &t[nr + 1],
                            training,
                            momentum: 0.1,
                            eps: 1e-5,
                        };
                        let o = match kind {
                            Kind::Plain => t[0].batch_norm(&a)?,
                            Kind::Relu => t[0].batch_norm_relu(&a)?,
                            Kind::AddRelu => t[0].batch_norm_add_relu(&t[3], &a)?,
                        };
                        let mut v = vec![("y".to_string(), o.out)];
                        if let Some((m, var)) = o.running {
                            v.push(("new_running_mean".into(), m));
                            v.push(("new_running_var".into(), var));
                        }
                        Ok(v)
                    };
                    out.push(autograd_with(op, dtype, label, rng.next_u64(), draw, f));
                }
            }
        }
    }
}
