//! Fully connected layer: `y = x W^T + b` (PyTorch's `nn.Linear`).

use super::init;
use crate::nn::{join, Module, Param};
use crate::{DType, Error, Result, Rng, Tensor};

pub struct Linear {
    /// [out_features, in_features]
    pub weight: Param,
    /// [out_features]; excluded from weight decay.
    pub bias: Option<Param>,
}

impl Linear {
    /// `{prefix}.weight` and `{prefix}.bias` in f32 with PyTorch's default
    /// init: both U(-1/sqrt(in), 1/sqrt(in)), weight drawn first.
    pub fn new(
        prefix: &str,
        in_features: usize,
        out_features: usize,
        bias: bool,
        rng: &mut Rng,
    ) -> Result<Linear> {
        Linear::new_dtype(prefix, in_features, out_features, bias, DType::F32, rng)
    }

    /// As `new`, with parameters stored in `dtype` (f64 for gradient checks
    /// and golden tests; the random stream is the same for every dtype).
    pub fn new_dtype(
        prefix: &str,
        in_features: usize,
        out_features: usize,
        bias: bool,
        dtype: DType,
        rng: &mut Rng,
    ) -> Result<Linear> {
        if !dtype.is_float() {
            return Err(Error::dtype("Linear::new", "a float dtype", dtype));
        }
        let bound = init::default_bound(in_features);
        let w = init::uniform(&[out_features, in_features], bound, dtype, rng);
        let weight = Param::new(join(prefix, "weight"), w, false)?;
        let bias = if bias {
            let b = init::uniform(&[out_features], bound, dtype, rng);
            Some(Param::new(join(prefix, "bias"), b, true)?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }

    /// Wraps existing parameters (weight [out, in], bias [out]).
    pub fn from_params(weight: Param, bias: Option<Param>) -> Result<Linear> {
        let wd = weight.dims();
        if wd.len() != 2 {
            return Err(Error::shape(
                "Linear",
                format!("{}: weight must be [out, in], got {wd:?}", weight.name()),
            ));
        }
        if let Some(b) = &bias {
            if b.dims() != [wd[0]] {
                return Err(Error::shape(
                    "Linear",
                    format!(
                        "{}: bias must be [{}] to match weight {wd:?}, got {:?}",
                        b.name(),
                        wd[0],
                        b.dims()
                    ),
                ));
            }
        }
        Ok(Linear { weight, bias })
    }

    pub fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }
    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }
}

impl Module for Linear {
    /// x [..., in] -> [..., out], computed in x's dtype.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let k = self.in_features();
        if x.rank() == 0 || x.dims()[x.rank() - 1] != k {
            return Err(Error::shape(
                "Linear",
                format!(
                    "{}: input must be [..., {k}], got {:?}",
                    self.weight.name(),
                    x.dims()
                ),
            ));
        }
        let w = self.weight.get_as(x.dtype())?;
        let b = self
            .bias
            .as_ref()
            .map(|b| b.get_as(x.dtype()))
            .transpose()?;
        x.linear(&w, b.as_ref())
    }
    fn params(&self) -> Vec<Param> {
        let mut p = vec![self.weight.clone()];
        p.extend(self.bias.clone());
        p
    }
}
