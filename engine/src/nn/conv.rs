//! 2-D convolution layer (PyTorch's `nn.Conv2d`, NCHW).

use super::init;
use super::module::cast_like;
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
        let name = join(prefix, "weight");
        if !dtype.is_float() {
            return Err(Error::dtype("Conv2d::new", "a float dtype", dtype));
        }
        if p.groups == 0
            || !in_channels.is_multiple_of(p.groups)
            || !out_channels.is_multiple_of(p.groups)
        {
            return Err(Error::arg(
                "Conv2d::new",
                format!(
                    "{name}: in_channels {in_channels} and out_channels {out_channels} must both be divisible by groups {}",
                    p.groups
                ),
            ));
        }
        if kernel.contains(&0) || out_channels == 0 {
            return Err(Error::arg(
                "Conv2d::new",
                format!("{name}: kernel {kernel:?} and out_channels {out_channels} must be > 0"),
            ));
        }
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
        let w = cast_like(&self.weight.get(), x)?;
        let b = match &self.bias {
            Some(b) => Some(cast_like(&b.get(), x)?),
            None => None,
        };
        x.conv2d(&w, b.as_ref(), self.p)
    }
    fn params(&self) -> Vec<Param> {
        let mut p = vec![self.weight.clone()];
        p.extend(self.bias.clone());
        p
    }
}
