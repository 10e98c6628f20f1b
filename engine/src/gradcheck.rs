//! Finite-difference gradient checking in f64: the proof that each op's
//! backward matches its forward.

use crate::{no_grad, DType, Error, Result, Rng, Tensor};

/// Compares autograd's gradients of `sum(f(inputs) * g)` (g a fixed random
/// tensor) with central differences, for every f64 input; other inputs
/// (integer targets) are passed through untouched. Fails at the first
/// element where |analytic - numeric| > atol + rtol * |numeric|, or where
/// either derivative is NaN or infinite (a comparison with NaN is false, so
/// a non-finite value would otherwise pass).
pub fn check_gradients(
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    eps: f64,
    atol: f64,
    rtol: f64,
) -> Result<()> {
    let leaves: Vec<Tensor> = inputs
        .iter()
        .map(|t| {
            if t.dtype() == DType::F64 {
                t.requires_grad_()
            } else {
                Ok(t.clone())
            }
        })
        .collect::<Result<_>>()?;
    let y = f(&leaves)?;
    let mut rng = Rng::new(0x5eed);
    let g = Tensor::randn(y.dims(), 0.0, 1.0, DType::F64, &mut rng);
    y.mul(&g)?.sum_all()?.backward()?;

    let objective = |xs: &[Tensor]| -> Result<f64> {
        let _ng = no_grad();
        f(xs)?.mul(&g)?.sum_all()?.item()
    };
    for (i, leaf) in leaves.iter().enumerate() {
        if leaf.dtype() != DType::F64 {
            continue;
        }
        let analytic = match leaf.grad() {
            Some(gr) => gr.to_vec_f64()?,
            None => vec![0.0; leaf.numel()],
        };
        let base = inputs[i].to_vec_f64()?;
        let mut xs: Vec<Tensor> = inputs.to_vec();
        for j in 0..base.len() {
            let mut eval = |delta: f64| -> Result<f64> {
                let mut v = base.clone();
                v[j] += delta;
                xs[i] = Tensor::from_vec(v, inputs[i].dims())?;
                objective(&xs)
            };
            let numeric = (eval(eps)? - eval(-eps)?) / (2.0 * eps);
            let a = analytic[j];
            let finite = a.is_finite() && numeric.is_finite();
            if !finite || (a - numeric).abs() > atol + rtol * numeric.abs() {
                return Err(Error::Autograd(format!(
                    "gradient check failed for input {i} (shape {:?}) element {j}: \
                     analytic {a:.8e} vs numeric {numeric:.8e}",
                    inputs[i].dims()
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(v: f64) -> Tensor {
        Tensor::from_vec(vec![v, 1.0], &[2]).unwrap()
    }

    #[test]
    fn a_nan_numeric_derivative_fails() {
        // sqrt at 1e-9 has a finite analytic derivative, but x - eps < 0 makes
        // the central difference NaN
        let e = check_gradients(|t| t[0].sqrt(), &[x(1e-9)], 1e-6, 1e-6, 1e-4)
            .expect_err("a NaN numeric derivative must fail");
        assert!(e.to_string().contains("NaN"), "{e}");
        // the same op away from 0 passes
        check_gradients(|t| t[0].sqrt(), &[x(0.5)], 1e-6, 1e-6, 1e-4).unwrap();
    }

    #[test]
    fn an_infinite_numeric_derivative_fails() {
        // log at 1e-6 with eps 1e-6: log(0) = -inf in the difference
        let e = check_gradients(|t| t[0].log(), &[x(1e-6)], 1e-6, 1e-6, 1e-4)
            .expect_err("an infinite numeric derivative must fail");
        assert!(e.to_string().contains("inf"), "{e}");
    }

    #[test]
    fn a_nan_analytic_derivative_fails() {
        // sqrt(x * x) = |x| at 0: the chain rule gives inf * 0 = NaN, the
        // central difference 0
        let f = |t: &[Tensor]| t[0].mul(&t[0])?.sqrt();
        let e = check_gradients(f, &[x(0.0)], 1e-6, 1e-6, 1e-4)
            .expect_err("a NaN analytic derivative must fail");
        assert!(e.to_string().contains("NaN"), "{e}");
    }
}
