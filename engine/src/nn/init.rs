//! Deterministic weight initialisers matching PyTorch's and torchvision's
//! distributions. Samples are drawn in f64 from our own `Rng` and rounded to
//! the requested dtype, so a seed gives the same network in f32 and f64.

use crate::{DType, Error, Result, Rng, Tensor};

/// (fan_in, fan_out) of a weight [out, in, *kernel] as PyTorch computes them:
/// `in * prod(kernel)` and `out * prod(kernel)`.
pub fn fans(shape: &[usize]) -> Result<(usize, usize)> {
    if shape.len() < 2 {
        return Err(Error::shape(
            "init::fans",
            format!("a weight needs >= 2 dims [out, in, ...], got {shape:?}"),
        ));
    }
    let receptive: usize = shape[2..].iter().product();
    Ok((shape[1] * receptive, shape[0] * receptive))
}

/// U(-bound, bound).
pub fn uniform(shape: &[usize], bound: f64, dtype: DType, rng: &mut Rng) -> Tensor {
    Tensor::rand(shape, -bound, bound, dtype, rng)
}

/// N(0, std^2) with std = sqrt(2 / fan_out): `kaiming_normal_(mode="fan_out",
/// nonlinearity="relu")`, torchvision's ResNet conv init.
pub fn kaiming_normal_fan_out(shape: &[usize], dtype: DType, rng: &mut Rng) -> Result<Tensor> {
    let (_, fan_out) = fans(shape)?;
    if fan_out == 0 {
        return Err(Error::shape(
            "init::kaiming_normal_fan_out",
            format!("zero fan_out for weight shape {shape:?}"),
        ));
    }
    Ok(Tensor::randn(
        shape,
        0.0,
        (2.0 / fan_out as f64).sqrt(),
        dtype,
        rng,
    ))
}

/// The bound of PyTorch's default `nn.Linear`/`nn.Conv2d` init:
/// `kaiming_uniform_(a=sqrt(5))` on the weight and the bias both reduce to
/// U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
pub fn default_bound(fan_in: usize) -> f64 {
    if fan_in == 0 {
        0.0
    } else {
        1.0 / (fan_in as f64).sqrt()
    }
}
