//! Transposed 2-D convolution layer (PyTorch's `nn.ConvTranspose2d`, NCHW),
//! e.g. the Mask R-CNN mask head's 2x2, stride-2 upsampling `conv5_mask`.

use super::conv::{cast_to, check_config};
use super::init;
use crate::nn::{join, Module, Param};
use crate::ops::ConvTranspose2dParams;
use crate::{DType, Error, Result, Rng, Tensor};

pub struct ConvTranspose2d {
    /// [in_channels, out_channels / groups, kh, kw] (PyTorch's layout)
    pub weight: Param,
    /// [out_channels]; excluded from weight decay.
    pub bias: Option<Param>,
    pub p: ConvTranspose2dParams,
}

impl ConvTranspose2d {
    /// f32 parameters with PyTorch's default `nn.ConvTranspose2d` init:
    /// weight and bias both U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with
    /// `fan_in = (out_channels / groups) * kh * kw` (PyTorch takes the fan
    /// from weight dim 1, which for a transposed conv is the output side).
    /// The weight is drawn before the bias.
    pub fn new(
        prefix: &str,
        in_channels: usize,
        out_channels: usize,
        kernel: [usize; 2],
        p: ConvTranspose2dParams,
        bias: bool,
        rng: &mut Rng,
    ) -> Result<ConvTranspose2d> {
        ConvTranspose2d::new_dtype(
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
        p: ConvTranspose2dParams,
        bias: bool,
        dtype: DType,
        rng: &mut Rng,
    ) -> Result<ConvTranspose2d> {
        const OP: &str = "ConvTranspose2d::new";
        let name = check_config(
            OP,
            prefix,
            [in_channels, out_channels],
            kernel,
            p.groups,
            dtype,
        )?;
        for a in 0..2 {
            if p.output_padding[a] >= p.stride[a] && p.output_padding[a] >= p.dilation[a] {
                return Err(Error::arg(
                    OP,
                    format!(
                        "{name}: output_padding {:?} must be smaller than either the stride {:?} or the dilation {:?}",
                        p.output_padding, p.stride, p.dilation
                    ),
                ));
            }
        }
        let shape = [in_channels, out_channels / p.groups, kernel[0], kernel[1]];
        let (fan_in, _) = init::fans(&shape)?;
        let bound = init::default_bound(fan_in);
        let weight = Param::new(name, init::uniform(&shape, bound, dtype, rng), false)?;
        let bias = if bias {
            Some(Param::new(
                join(prefix, "bias"),
                init::uniform(&[out_channels], bound, dtype, rng),
                true,
            )?)
        } else {
            None
        };
        Ok(ConvTranspose2d { weight, bias, p })
    }

    /// Wraps existing parameters (weight [Cin, Cout/groups, kh, kw], bias
    /// [Cout] with Cout = weight dim 1 * groups).
    pub fn from_params(
        weight: Param,
        bias: Option<Param>,
        p: ConvTranspose2dParams,
    ) -> Result<ConvTranspose2d> {
        let wd = weight.dims();
        if wd.len() != 4 {
            return Err(Error::shape(
                "ConvTranspose2d",
                format!(
                    "{}: weight must be [Cin, Cout/groups, kh, kw], got {wd:?}",
                    weight.name()
                ),
            ));
        }
        if let Some(b) = &bias {
            let cout = wd[1] * p.groups;
            if b.dims() != [cout] {
                return Err(Error::shape(
                    "ConvTranspose2d",
                    format!(
                        "{}: bias must be [{cout}] (weight dim 1 * groups {}) to match weight {wd:?}, got {:?}",
                        b.name(),
                        p.groups,
                        b.dims()
                    ),
                ));
            }
        }
        Ok(ConvTranspose2d { weight, bias, p })
    }
}

impl Module for ConvTranspose2d {
    /// x [N, Cin, H, W] -> [N, Cout, Ho, Wo], computed in x's dtype.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (w, b) = cast_to(&self.weight, &self.bias, x)?;
        let p = self.p;
        x.conv_transpose2d(
            &w,
            b.as_ref(),
            p.stride,
            p.padding,
            p.output_padding,
            p.dilation,
            p.groups,
        )
    }
    fn params(&self) -> Vec<Param> {
        let mut p = vec![self.weight.clone()];
        p.extend(self.bias.clone());
        p
    }
}
