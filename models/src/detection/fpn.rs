//! Feature Pyramid Network (Lin et al. 2017) as torchvision builds it for
//! Mask R-CNN: a 1x1 lateral conv per backbone stage (C2..C5 -> 256
//! channels), a top-down path that adds the nearest-upsampled coarser level,
//! a 3x3 output conv per level (P2..P5), and P6 = max_pool(k=1, s=2) of P5
//! (`LastLevelMaxPool`).
//!
//! Names follow torchvision's `FeaturePyramidNetwork` (whose blocks are
//! `Conv2dNormActivation`s without norm or activation, hence the `.0`):
//! `{prefix}.inner_blocks.{i}.0.{weight,bias}` and
//! `{prefix}.layer_blocks.{i}.0.{weight,bias}`; init kaiming-uniform with
//! a = 1 (bound sqrt(3 / fan_in)), biases 0.

use engine::nn::{init, join, Conv2d, Module, Param};
use engine::ops::Conv2dParams;
use engine::{DType, Error, Result, Rng, Tensor};

pub struct Fpn {
    inner: Vec<Conv2d>,
    layer: Vec<Conv2d>,
    pub out_channels: usize,
}

fn conv(prefix: &str, cin: usize, cout: usize, k: usize, rng: &mut Rng) -> Result<Conv2d> {
    let shape = [cout, cin, k, k];
    let bound = (3.0 / (cin * k * k) as f64).sqrt();
    let weight = Param::new(
        join(prefix, "weight"),
        init::uniform(&shape, bound, DType::F32, rng),
        false,
    )?;
    let bias = Param::new(
        join(prefix, "bias"),
        Tensor::zeros(&[cout], DType::F32),
        true,
    )?;
    let p = Conv2dParams {
        stride: [1, 1],
        padding: [k / 2; 2],
        dilation: [1, 1],
        groups: 1,
    };
    Conv2d::from_params(weight, Some(bias), p)
}

impl Fpn {
    /// An FPN over backbone stages with `in_channels` (fine to coarse).
    pub fn new(
        prefix: &str,
        in_channels: &[usize],
        out_channels: usize,
        rng: &mut Rng,
    ) -> Result<Fpn> {
        if in_channels.is_empty() || in_channels.contains(&0) || out_channels == 0 {
            return Err(Error::arg(
                "fpn",
                format!("need >= 1 input level and positive channels; got {in_channels:?} -> {out_channels}"),
            ));
        }
        let mut inner = Vec::new();
        let mut layer = Vec::new();
        for (i, &c) in in_channels.iter().enumerate() {
            inner.push(conv(
                &join(prefix, &format!("inner_blocks.{i}.0")),
                c,
                out_channels,
                1,
                rng,
            )?);
            layer.push(conv(
                &join(prefix, &format!("layer_blocks.{i}.0")),
                out_channels,
                out_channels,
                3,
                rng,
            )?);
        }
        Ok(Fpn {
            inner,
            layer,
            out_channels,
        })
    }

    /// P2.. P(n+1) from backbone maps C2..C(n+1) (fine to coarse), plus the
    /// extra max-pooled level: `levels + 1` maps, fine to coarse.
    pub fn forward(&self, c: &[Tensor]) -> Result<Vec<Tensor>> {
        if c.len() != self.inner.len() {
            return Err(Error::arg(
                "fpn",
                format!(
                    "expected {} backbone maps, got {}",
                    self.inner.len(),
                    c.len()
                ),
            ));
        }
        let last = c.len() - 1;
        let mut top = self.inner[last].forward(&c[last])?;
        let mut out = vec![self.layer[last].forward(&top)?];
        for i in (0..last).rev() {
            let lateral = self.inner[i].forward(&c[i])?;
            let hw = [lateral.dims()[2], lateral.dims()[3]];
            top = lateral.add(&top.upsample_nearest2d(hw)?)?;
            out.insert(0, self.layer[i].forward(&top)?);
        }
        let p6 = out[last].max_pool2d([1, 1], [2, 2], [0, 0])?;
        out.push(p6);
        Ok(out)
    }
}

impl Module for Fpn {
    /// The finest output level (use `Fpn::forward` for all of them).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(Fpn::forward(self, std::slice::from_ref(x))?.swap_remove(0))
    }
    fn children(&self) -> Vec<&dyn Module> {
        self.inner
            .iter()
            .zip(&self.layer)
            .flat_map(|(a, b)| [a as &dyn Module, b as &dyn Module])
            .collect()
    }
}
