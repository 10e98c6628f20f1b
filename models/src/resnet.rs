//! ResNet-18/34/50 with torchvision's parameter names and layouts, so
//! torchvision checkpoints map one to one and PyTorch golden tests can load
//! our weights. Residual blocks end in the fused BN+add+ReLU entry point, the
//! inner BNs in fused BN+ReLU: the same contract the CUDA kernels implement.

use engine::nn::{join, BatchNorm, Conv2d, Linear, Module};
use engine::ops::Conv2dParams;
use engine::{Error, Result, Rng, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    /// Two 3x3 convs (ResNet-18/34), expansion 1.
    Basic,
    /// 1x1 -> 3x3 (stride here: v1.5) -> 1x1, expansion 4 (ResNet-50).
    Bottleneck,
}

impl BlockKind {
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stem {
    /// 7x7 stride-2 conv + 3x3 stride-2 max-pool (224px ImageNet inputs).
    ImageNet,
    /// 3x3 stride-1 conv, no pool (32px CIFAR-sized inputs).
    Cifar,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ResNetConfig {
    pub block: BlockKind,
    pub layers: [usize; 4],
    /// Planes of each stage; torchvision uses [64, 128, 256, 512].
    pub widths: [usize; 4],
    pub stem: Stem,
    pub in_channels: usize,
    /// `Some(k)` adds the `fc` classifier; `None` gives the bare encoder.
    pub num_classes: Option<usize>,
    /// Zero-init the last BN of each residual branch (torchvision option).
    pub zero_init_residual: bool,
}

impl ResNetConfig {
    fn new(block: BlockKind, layers: [usize; 4], num_classes: usize) -> Self {
        ResNetConfig {
            block,
            layers,
            widths: [64, 128, 256, 512],
            stem: Stem::ImageNet,
            in_channels: 3,
            num_classes: Some(num_classes),
            zero_init_residual: false,
        }
    }
    pub fn resnet18(num_classes: usize) -> Self {
        Self::new(BlockKind::Basic, [2, 2, 2, 2], num_classes)
    }
    pub fn resnet34(num_classes: usize) -> Self {
        Self::new(BlockKind::Basic, [3, 4, 6, 3], num_classes)
    }
    pub fn resnet50(num_classes: usize) -> Self {
        Self::new(BlockKind::Bottleneck, [3, 4, 6, 3], num_classes)
    }
    pub fn with_stem(mut self, stem: Stem) -> Self {
        self.stem = stem;
        self
    }
    pub fn with_widths(mut self, widths: [usize; 4]) -> Self {
        self.widths = widths;
        self
    }
    pub fn with_in_channels(mut self, c: usize) -> Self {
        self.in_channels = c;
        self
    }

    /// Dimension of the pooled features the encoder produces.
    pub fn feature_dim(&self) -> usize {
        self.widths[3] * self.block.expansion()
    }

    /// Parses `resnet18|resnet34|resnet50`.
    pub fn by_name(name: &str, num_classes: usize) -> Result<Self> {
        match name {
            "resnet18" => Ok(Self::resnet18(num_classes)),
            "resnet34" => Ok(Self::resnet34(num_classes)),
            "resnet50" => Ok(Self::resnet50(num_classes)),
            _ => Err(Error::arg(
                "resnet",
                format!("unknown architecture {name:?}; expected resnet18, resnet34 or resnet50"),
            )),
        }
    }
}

fn conv(
    prefix: &str,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    rng: &mut Rng,
) -> Result<Conv2d> {
    let p = Conv2dParams {
        stride: [stride; 2],
        padding: [k / 2; 2],
        dilation: [1; 2],
        groups: 1,
    };
    Conv2d::new(prefix, cin, cout, [k, k], p, false, rng)
}

/// MACs of a conv producing an `out_hw` map: every weight is used once per output pixel.
fn conv_macs(c: &Conv2d, out_hw: [usize; 2]) -> usize {
    c.params()[0].get().numel() * out_hw[0] * out_hw[1]
}

struct Block {
    stride: usize,
    convs: Vec<Conv2d>,
    bns: Vec<BatchNorm>,
    downsample: Option<(Conv2d, BatchNorm)>,
}

impl Block {
    fn new(
        prefix: &str,
        kind: BlockKind,
        cin: usize,
        planes: usize,
        stride: usize,
        zero_init: bool,
        rng: &mut Rng,
    ) -> Result<Block> {
        let cout = planes * kind.expansion();
        let n = |i: usize, what: &str| join(prefix, &format!("{what}{i}"));
        let convs = match kind {
            BlockKind::Basic => vec![
                conv(&n(1, "conv"), cin, planes, 3, stride, rng)?,
                conv(&n(2, "conv"), planes, planes, 3, 1, rng)?,
            ],
            BlockKind::Bottleneck => vec![
                conv(&n(1, "conv"), cin, planes, 1, 1, rng)?,
                conv(&n(2, "conv"), planes, planes, 3, stride, rng)?,
                conv(&n(3, "conv"), planes, cout, 1, 1, rng)?,
            ],
        };
        let widths: Vec<usize> = match kind {
            BlockKind::Basic => vec![planes, planes],
            BlockKind::Bottleneck => vec![planes, planes, cout],
        };
        let bns: Vec<BatchNorm> = widths
            .iter()
            .enumerate()
            .map(|(i, &c)| BatchNorm::new(&n(i + 1, "bn"), c))
            .collect::<Result<_>>()?;
        if zero_init {
            bns.last().expect("blocks have BNs").zero_init()?;
        }
        let downsample = if stride != 1 || cin != cout {
            let p = join(prefix, "downsample");
            Some((
                conv(&join(&p, "0"), cin, cout, 1, stride, rng)?,
                BatchNorm::new(&join(&p, "1"), cout)?,
            ))
        } else {
            None
        };
        Ok(Block {
            stride,
            convs,
            bns,
            downsample,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let identity = match &self.downsample {
            Some((c, bn)) => bn.forward(&c.forward(x)?)?,
            None => x.clone(),
        };
        let last = self.convs.len() - 1;
        let mut h = x.clone();
        for (conv, bn) in self.convs[..last].iter().zip(&self.bns) {
            h = bn.forward_relu(&conv.forward(&h)?)?;
        }
        self.bns[last].forward_add_relu(&self.convs[last].forward(&h)?, &identity)
    }

    /// Forward multiply-accumulates for an input of spatial size `hw`; also
    /// returns the output size.
    fn macs(&self, kind: BlockKind, hw: [usize; 2]) -> (usize, [usize; 2]) {
        let out = hw.map(|d| (d - 1) / self.stride + 1);
        // the stride sits on the first conv (Basic) or the 3x3 (Bottleneck v1.5)
        let strided = if kind == BlockKind::Basic { 0 } else { 1 };
        let mut total = 0;
        for (i, c) in self.convs.iter().enumerate() {
            let sp = if i < strided { hw } else { out };
            total += conv_macs(c, sp);
        }
        if let Some((c, _)) = &self.downsample {
            total += conv_macs(c, out);
        }
        (total, out)
    }

    fn modules(&self) -> Vec<&dyn Module> {
        let mut m: Vec<&dyn Module> = Vec::new();
        for (c, b) in self.convs.iter().zip(&self.bns) {
            m.push(c);
            m.push(b);
        }
        if let Some((c, b)) = &self.downsample {
            m.push(c);
            m.push(b);
        }
        m
    }
}

pub struct ResNet {
    pub config: ResNetConfig,
    conv1: Conv2d,
    bn1: BatchNorm,
    stages: Vec<Vec<Block>>,
    fc: Option<Linear>,
}

impl ResNet {
    /// Builds the network under `prefix` ("" for torchvision's top-level names).
    pub fn new(prefix: &str, config: ResNetConfig, rng: &mut Rng) -> Result<ResNet> {
        let (k, s) = match config.stem {
            Stem::ImageNet => (7, 2),
            Stem::Cifar => (3, 1),
        };
        let conv1 = conv(
            &join(prefix, "conv1"),
            config.in_channels,
            config.widths[0],
            k,
            s,
            rng,
        )?;
        let bn1 = BatchNorm::new(&join(prefix, "bn1"), config.widths[0])?;
        let mut cin = config.widths[0];
        let mut stages = Vec::new();
        for (i, (&n_blocks, &planes)) in config.layers.iter().zip(&config.widths).enumerate() {
            let mut blocks = Vec::new();
            for b in 0..n_blocks {
                let stride = if b == 0 && i > 0 { 2 } else { 1 };
                let name = join(prefix, &format!("layer{}.{b}", i + 1));
                blocks.push(Block::new(
                    &name,
                    config.block,
                    cin,
                    planes,
                    stride,
                    config.zero_init_residual,
                    rng,
                )?);
                cin = planes * config.block.expansion();
            }
            stages.push(blocks);
        }
        let fc = match config.num_classes {
            Some(k) => Some(Linear::new(&join(prefix, "fc"), cin, k, true, rng)?),
            None => None,
        };
        Ok(ResNet {
            config,
            conv1,
            bn1,
            stages,
            fc,
        })
    }

    /// Globally pooled encoder features [N, feature_dim]: what transfers.
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        self.features_traced(x, &mut |_, _| Ok(()))
    }

    /// `features`, reporting each stage's output to `hook` under the name of
    /// the torchvision module whose output it equals: `relu` (conv1, bn1 and
    /// relu run fused), `maxpool` (ImageNet stem), `layer{s}.{b}` for every
    /// block, and `avgpool` (flattened to [N, C]). Used to dump activations
    /// for layer-by-layer comparison with PyTorch.
    pub fn features_traced(
        &self,
        x: &Tensor,
        hook: &mut dyn FnMut(&str, &Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        if x.rank() != 4 || x.dims()[1] != self.config.in_channels {
            return Err(Error::shape(
                "resnet",
                format!(
                    "expected input [N, {}, H, W], got {:?}",
                    self.config.in_channels,
                    x.dims()
                ),
            ));
        }
        let mut h = self.bn1.forward_relu(&self.conv1.forward(x)?)?;
        hook("relu", &h)?;
        if self.config.stem == Stem::ImageNet {
            h = h.max_pool2d([3, 3], [2, 2], [1, 1])?;
            hook("maxpool", &h)?;
        }
        for (s, stage) in self.stages.iter().enumerate() {
            for (b, block) in stage.iter().enumerate() {
                h = block.forward(&h)?;
                hook(&format!("layer{}.{b}", s + 1), &h)?;
            }
        }
        let f = h.adaptive_avg_pool2d([1, 1])?.flatten(1)?;
        hook("avgpool", &f)?;
        Ok(f)
    }

    /// The output of each stage (layer1..layer4, i.e. C2..C5 at strides
    /// 4..32 with the ImageNet stem): what an FPN consumes.
    pub fn stage_outputs(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let last: Vec<String> = (0..4)
            .map(|s| format!("layer{}.{}", s + 1, self.config.layers[s].max(1) - 1))
            .collect();
        let mut out = Vec::new();
        self.features_traced(x, &mut |name, t| {
            if last.iter().any(|l| l == name) {
                out.push(t.clone());
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Forward multiply-accumulates (convs and fc) for one `h x w` image:
    /// the basis of the GFLOP/s figures benches print.
    pub fn macs(&self, h: usize, w: usize) -> usize {
        let stem_stride = if self.config.stem == Stem::ImageNet {
            2
        } else {
            1
        };
        let mut hw = [h, w].map(|d| (d - 1) / stem_stride + 1);
        let mut total = conv_macs(&self.conv1, hw);
        if self.config.stem == Stem::ImageNet {
            hw = hw.map(|d| (d - 1) / 2 + 1);
        }
        for block in self.stages.iter().flatten() {
            let (m, out) = block.macs(self.config.block, hw);
            total += m;
            hw = out;
        }
        total
            + self
                .fc
                .as_ref()
                .map_or(0, |fc| fc.params()[0].get().numel())
    }
}

impl Module for ResNet {
    /// Logits when the network has `fc`, pooled features otherwise.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let f = self.features(x)?;
        match &self.fc {
            Some(fc) => fc.forward(&f),
            None => Ok(f),
        }
    }
    fn children(&self) -> Vec<&dyn Module> {
        let mut m: Vec<&dyn Module> = vec![&self.conv1, &self.bn1];
        for block in self.stages.iter().flatten() {
            m.extend(block.modules());
        }
        if let Some(fc) = &self.fc {
            m.push(fc);
        }
        m
    }
}
