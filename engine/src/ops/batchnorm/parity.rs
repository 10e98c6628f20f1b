//! Batch norm's GPU parity cases: plain, +ReLU and +residual+ReLU, training
//! and eval, f32 parameters and running statistics with every x dtype; the
//! new running statistics are compared too, and so are the running
//! statistics passed in, after the op and its backward: the op is
//! functional, neither may write them. [N, C] inputs cover the projector's
//! BatchNorm1d(+ReLU), which runs bn1d_relu.cu in training. The near-zero
//! BN+ReLU cases pin down the ReLU mask where rounding decides it (the GPU
//! backward recomputes it from x instead of reading y).

use super::BatchNormArgs;
use crate::parity::{autograd_with, dims, Case, Outputs, DTYPES};
use crate::{DType, Result, Rng, Tensor};

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

/// Biases of the near-zero cases, one per channel in turn. Where x equals
/// its channel's mean, x - mean is exactly 0 on both sides, so the
/// pre-activation is exactly the bias and y = relu(bias rounded to x's
/// dtype): the mask there is decided by that rounding alone.
/// 0: masked. 2^-26, under half f16's smallest subnormal 2^-24: y = 0 in
/// f16 (masked), kept in bf16 and f32. 3*2^-26: rounds up to 2^-24 in f16,
/// kept everywhere. -2^-26: masked. 2^-140, an f32 subnormal under half
/// bf16's smallest subnormal 2^-133: y = 0 in bf16 and f16, kept in f32.
/// 2^-10: kept.
fn near_zero_biases() -> [f32; 6] {
    let p = |e: i32| 2f64.powi(e) as f32; // exact: powers of two
    [0.0, p(-26), 3.0 * p(-26), -p(-26), p(-140), p(-10)]
}

/// Inputs of a near-zero BN+ReLU case (x, weight, bias, running_mean,
/// running_var; x, weight and bias need gradients). Per channel, half of
/// the values (rounded down) equal a mean mu on a 1/8 grid, the others come
/// in pairs mu +- d (d in 1/8 .. 12/8, the last value mu when the count is
/// odd), shuffled: both sides compute the batch mean exactly mu (sums of
/// multiples of 1/8 are exact in f32 too), and eval gets running_mean = mu.
/// The bias cycles through [`near_zero_biases`]; weight = +-(0.5 .. 1.5)
/// keeps every other pre-activation at least ~1/16 away from 0, so the
/// mask can only differ from the CPU's where the rounding above decides
/// it. The GPU's mask must reproduce its y bit for bit there (f16's and
/// bf16's underflow to 0 included) to match the CPU's dx, dweight, dbias.
fn near_zero_inputs(
    rng: &mut Rng,
    shape: &[usize],
    dtype: DType,
) -> Vec<(&'static str, Tensor, bool)> {
    let (n, ch) = (shape[0], shape[1]);
    let inner: usize = shape[2..].iter().product();
    let per = n * inner;
    let biases = near_zero_biases();
    let mut x = vec![0f64; n * ch * inner];
    let (mut w, mut b, mut mus) = (vec![0f32; ch], vec![0f32; ch], vec![0f32; ch]);
    for k in 0..ch {
        let mu = ((rng.normal() * 8.0).round() / 8.0).clamp(-2.0, 2.0);
        let mut vals = vec![mu; per];
        let mut i = per / 2;
        while i + 1 < per {
            let d = (1 + rng.below(12)) as f64 / 8.0;
            vals[i] = mu + d;
            vals[i + 1] = mu - d;
            i += 2;
        }
        for i in (1..per).rev() {
            vals.swap(i, rng.below(i + 1));
        }
        for (idx, v) in vals.into_iter().enumerate() {
            let (i, j) = (idx / inner, idx % inner);
            x[(i * ch + k) * inner + j] = v;
        }
        let sign = if rng.uniform() < 0.5 { -1.0 } else { 1.0 };
        w[k] = (sign * (0.5 + rng.uniform())) as f32;
        b[k] = biases[k % biases.len()];
        mus[k] = mu as f32;
    }
    let x = Tensor::from_vec(x, shape)
        .and_then(|t| t.to_dtype(dtype))
        .expect("host tensor of a valid shape");
    let param = |v: Vec<f32>| Tensor::from_vec(v, &[ch]).expect("[C]");
    let rv = Tensor::rand(&[ch], 0.5, 2.0, DType::F32, rng);
    vec![
        ("x", x, true),
        ("weight", param(w), true),
        ("bias", param(b), true),
        ("running_mean", param(mus), false),
        ("running_var", rv, false),
    ]
}

/// The op of `kind` on a case's inputs (x, weight, bias, [residual],
/// running_mean, running_var): y, the new running statistics (training) and
/// the running statistics passed in, as they are once the case is done
/// (after the backward too): the op must leave them as they were.
fn run_op(kind: Kind, training: bool) -> impl Fn(&[Tensor]) -> Result<Outputs> + 'static {
    move |t: &[Tensor]| {
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
        v.push(("input_running_mean".into(), t[nr].clone()));
        v.push(("input_running_var".into(), t[nr + 1].clone()));
        Ok(v)
    }
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
                    let f = run_op(kind, training);
                    out.push(autograd_with(op, dtype, label, rng.next_u64(), draw, f));
                }
            }
        }
    }
    // BN+ReLU with a large share of pre-activations exactly at a bias of 0
    // or +-tiny: NHWC with C % 8 == 0 (vector path) and not (scalar path),
    // [N, C] (bn1d_relu.cu in training), eval once (batchnorm.cu).
    let near_zero: [(&[usize], bool); 5] = [
        (&[4, 16, 6, 6], true),
        (&[4, 12, 5, 5], true),
        (&[64, 24], true),
        (&[32, 13], true),
        (&[4, 16, 6, 6], false),
    ];
    for dtype in DTYPES {
        for &(shape, training) in &near_zero {
            let label = format!(
                "{} f32 params near-0 pre-activations{}",
                dims(shape),
                if training { "" } else { " eval" }
            );
            let draw = move |rng: &mut Rng| near_zero_inputs(rng, shape, dtype);
            let f = run_op(Kind::Relu, training);
            out.push(autograd_with(
                "batch_norm_relu",
                dtype,
                label,
                rng.next_u64(),
                draw,
                f,
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The near-zero inputs do what the GPU cases rely on: on the CPU (the
    /// reference), every x at its channel's mean gives y = relu(bias rounded
    /// to x's dtype) exactly, and in f16 and bf16 some of those biases are
    /// positive yet give y = 0 (a mask taken from the f32 pre-activation
    /// instead of y would differ there), in f32 none.
    #[test]
    fn near_zero_inputs_put_the_mask_on_the_rounding() {
        let shape = [4, 16, 6, 6];
        let (ch, inner) = (shape[1], shape[2] * shape[3]);
        for dtype in DTYPES {
            let t: Vec<Tensor> = near_zero_inputs(&mut Rng::new(3), &shape, dtype)
                .into_iter()
                .map(|i| i.1)
                .collect();
            let y = run_op(Kind::Relu, true)(&t).unwrap().remove(0).1;
            let (x, y) = (t[0].to_vec_f64().unwrap(), y.to_vec_f64().unwrap());
            let (bias, mu) = (t[2].to_vec_f64().unwrap(), t[3].to_vec_f64().unwrap());
            let (mut at_mean, mut underflowed) = (0, 0);
            for (e, (&x, &y)) in x.iter().zip(&y).enumerate() {
                let c = (e / inner) % ch;
                if x != mu[c] {
                    continue;
                }
                at_mean += 1;
                let rounded = Tensor::from_vec(vec![bias[c]], &[1])
                    .and_then(|b| b.to_dtype(dtype))
                    .and_then(|b| b.to_vec_f64())
                    .unwrap()[0];
                assert_eq!(y, rounded.max(0.0), "{dtype} channel {c}");
                if bias[c] > 0.0 && y == 0.0 {
                    underflowed += 1;
                }
            }
            assert!(at_mean >= x.len() / 2, "{dtype}: {at_mean} of {}", x.len());
            if dtype == DType::F32 {
                assert_eq!(underflowed, 0);
            } else {
                assert!(underflowed >= inner, "{dtype}: {underflowed}");
            }
        }
    }
}
