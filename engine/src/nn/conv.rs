//! 2-D convolution layer (PyTorch's `nn.Conv2d`, NCHW).

use super::init;
use crate::nn::{join, Module, Param};
use crate::ops::Conv2dParams;
use crate::{DType, Error, Result, Rng, Tensor};

pub struct Conv2d {
    /// [out_channels, in_channels / groups, kh, kw]
    pub weight: Param,
    /// [out_channels]; excluded from weight decay.
    pub bias: Option<Param>,
    pub p: Conv2dParams,
}

impl Conv2d {
    /// f32 parameters with torchvision's ResNet init: weight
    /// N(0, 2 / (out_channels * kh * kw)) (kaiming normal, fan_out, ReLU
    /// gain), bias zeros.
    pub fn new(
        prefix: &str,
        in_channels: usize,
        out_channels: usize,
        kernel: [usize; 2],
        p: Conv2dParams,
        bias: bool,
        rng: &mut Rng,
    ) -> Result<Conv2d> {
        Conv2d::new_dtype(
            prefix,
            in_channels,
            out_channels,
            kernel,
            p,
            bias,
            DType::F32,
            rng,
        )
    }

    /// As `new`, with parameters stored in `dtype` (same random stream).
    #[allow(clippy::too_many_arguments)]
    pub fn new_dtype(
        prefix: &str,
        in_channels: usize,
        out_channels: usize,
        kernel: [usize; 2],
        p: Conv2dParams,
        bias: bool,
        dtype: DType,
        rng: &mut Rng,
    ) -> Result<Conv2d> {
        let name = check_config(
            "Conv2d::new",
            prefix,
            [in_channels, out_channels],
            kernel,
            p.groups,
            dtype,
        )?;
        let shape = [out_channels, in_channels / p.groups, kernel[0], kernel[1]];
        let weight = Param::new(
            name,
            init::kaiming_normal_fan_out(&shape, dtype, rng)?,
            false,
        )?;
        let bias = if bias {
            Some(Param::new(
                join(prefix, "bias"),
                Tensor::zeros(&[out_channels], dtype),
                true,
            )?)
        } else {
            None
        };
        Ok(Conv2d { weight, bias, p })
    }

    /// Wraps existing parameters (weight [Cout, Cin/groups, kh, kw], bias [Cout]).
    pub fn from_params(weight: Param, bias: Option<Param>, p: Conv2dParams) -> Result<Conv2d> {
        let wd = weight.dims();
        if wd.len() != 4 {
            return Err(Error::shape(
                "Conv2d",
                format!(
                    "{}: weight must be [Cout, Cin/groups, kh, kw], got {wd:?}",
                    weight.name()
                ),
            ));
        }
        if let Some(b) = &bias {
            if b.dims() != [wd[0]] {
                return Err(Error::shape(
                    "Conv2d",
                    format!(
                        "{}: bias must be [{}] to match weight {wd:?}, got {:?}",
                        b.name(),
                        wd[0],
                        b.dims()
                    ),
                ));
            }
        }
        Ok(Conv2d { weight, bias, p })
    }
}

impl Module for Conv2d {
    /// x [N, Cin, H, W] -> [N, Cout, Ho, Wo], computed in x's dtype.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (w, b) = cast_to(&self.weight, &self.bias, x)?;
        x.conv2d(&w, b.as_ref(), self.p)
    }
    fn params(&self) -> Vec<Param> {
        let mut p = vec![self.weight.clone()];
        p.extend(self.bias.clone());
        p
    }
}

/// What both conv layers' constructors check: a float dtype, `groups`
/// dividing both channel counts [in, out], a non-empty kernel and channels.
/// Returns the weight's name.
pub(super) fn check_config(
    op: &'static str,
    prefix: &str,
    [in_channels, out_channels]: [usize; 2],
    kernel: [usize; 2],
    groups: usize,
    dtype: DType,
) -> Result<String> {
    let name = join(prefix, "weight");
    if !dtype.is_float() {
        return Err(Error::dtype(op, "a float dtype", dtype));
    }
    if groups == 0 || !in_channels.is_multiple_of(groups) || !out_channels.is_multiple_of(groups) {
        return Err(Error::arg(
            op,
            format!(
                "{name}: in_channels {in_channels} and out_channels {out_channels} must both be divisible by groups {groups}"
            ),
        ));
    }
    if kernel.contains(&0) || in_channels == 0 || out_channels == 0 {
        return Err(Error::arg(
            op,
            format!(
                "{name}: kernel {kernel:?}, in_channels {in_channels} and out_channels {out_channels} must be > 0"
            ),
        ));
    }
    Ok(name)
}

/// A conv layer's weight and bias in x's dtype.
pub(super) fn cast_to(
    weight: &Param,
    bias: &Option<Param>,
    x: &Tensor,
) -> Result<(Tensor, Option<Tensor>)> {
    let b = bias.as_ref().map(|b| b.get_as(x.dtype())).transpose()?;
    Ok((weight.get_as(x.dtype())?, b))
}
