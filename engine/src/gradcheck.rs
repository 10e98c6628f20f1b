//! Finite-difference gradient checking in f64: the proof that each op's
//! backward matches its forward.

use crate::{no_grad, DType, Error, Result, Rng, Tensor};

/// Compares autograd's gradients of `sum(f(inputs) * g)` (g a fixed random
/// tensor) with central differences, for every f64 input; other inputs
/// (integer targets) are passed through untouched. Fails with the worst
/// element when |analytic - numeric| > atol + rtol * |numeric|.
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
            Some(gr) => gr.to_vec_f64(),
            None => vec![0.0; leaf.numel()],
        };
        let base = inputs[i].to_vec_f64();
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
            if (a - numeric).abs() > atol + rtol * numeric.abs() || a.is_nan() {
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
