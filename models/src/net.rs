//! The pretraining network: ResNet encoder -> global average pool ->
//! [projector] -> Linear classifier. SL has no projector, SL-MLP has one;
//! transfer keeps only the encoder's pooled features.
//!
//! Names: the encoder's parameters use torchvision's top-level names
//! (`conv1.weight`, `layer1.0.bn1.running_mean`, ...), the projector lives
//! under `projector.`, the classifier is `fc`. An SL network is therefore a
//! torchvision ResNet state dict, and any of our checkpoints loads into
//! torchvision's ResNet with `strict=False` (the projector is the extra).

use crate::data::MAX_IMAGE_SIZE;
use crate::projector::{Projector, ProjectorConfig};
use crate::resnet::{BlockKind, ResNet, ResNetConfig, Stem};
use engine::checkpoint;
use engine::nn::{Linear, Module};
use engine::{Error, Result, Rng, Tensor};
use std::collections::BTreeMap;
use std::path::Path;

/// Upper bounds on the sizes of a network, from the command line or a
/// checkpoint's metadata. Width 256 is 4x torchvision's ResNets (ResNet-50
/// at 256: 400 M parameters); 100,000 classes covers ImageNet-21k.
pub const MAX_WIDTH: usize = 256;
pub const MAX_IN_CHANNELS: usize = 64;
pub const MAX_CLASSES: usize = 100_000;
/// Widest projector layer (a 16384 x 16384 Linear is 1 GiB of f32).
pub const MAX_FEATURES: usize = 16_384;
pub const MAX_PROJECTOR_BLOCKS: usize = 16;

/// Everything needed to rebuild a network from a checkpoint: stored in its
/// metadata under `net.*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// `resnet18`, `resnet34` or `resnet50`.
    pub arch: String,
    /// Channels of the first stage; stages use w, 2w, 4w, 8w (torchvision: 64).
    pub width: usize,
    pub stem: Stem,
    pub in_channels: usize,
    /// `None`: SL; `Some`: SL-MLP.
    pub projector: Option<ProjectorConfig>,
    pub num_classes: usize,
    /// Zero-init the last BN of each residual branch.
    pub zero_init_residual: bool,
}

impl NetConfig {
    /// torchvision's ResNet of `arch` with an ImageNet stem, no projector.
    pub fn new(arch: &str, num_classes: usize) -> Result<NetConfig> {
        ResNetConfig::by_name(arch, num_classes)?;
        Ok(NetConfig {
            arch: arch.to_string(),
            width: 64,
            stem: Stem::ImageNet,
            in_channels: 3,
            projector: None,
            num_classes,
            zero_init_residual: false,
        })
    }

    /// Checks every size against its bound (`MAX_*`), so that building the
    /// network never asks for absurd memory: a command line or checkpoint
    /// metadata with `width=100000` is an error here, before any allocation.
    pub fn check(&self) -> Result<()> {
        let mut sizes = vec![
            ("width", self.width, MAX_WIDTH),
            ("in_channels", self.in_channels, MAX_IN_CHANNELS),
            ("num_classes", self.num_classes, MAX_CLASSES),
        ];
        if let Some(p) = &self.projector {
            if p.hidden.len() > MAX_PROJECTOR_BLOCKS {
                return Err(Error::arg(
                    "net",
                    format!(
                        "projector has {} blocks; at most {MAX_PROJECTOR_BLOCKS}",
                        p.hidden.len()
                    ),
                ));
            }
            sizes.extend(
                p.hidden
                    .iter()
                    .chain(&p.out_linear)
                    .map(|&h| ("projector width", h, MAX_FEATURES)),
            );
        }
        for (name, v, max) in sizes {
            if !(1..=max).contains(&v) {
                return Err(Error::arg(
                    "net",
                    format!("{name} must be in 1..={max}; got {v}"),
                ));
            }
        }
        Ok(())
    }

    /// The shapes of the tensors that pin every size of the config: `conv1`
    /// (width, input channels, stem), the last convolution of `layer4`
    /// (width: the largest tensor of the encoder), every projector Linear
    /// and `fc` (classes). A file holding these at these shapes holds at
    /// least a fixed fraction of the network's values, so checking them
    /// against a file's header bounds what building the network allocates
    /// by the file's size.
    pub fn key_shapes(&self) -> Result<Vec<(String, Vec<usize>)>> {
        let r = self.resnet()?;
        let k = match self.stem {
            Stem::ImageNet => 7,
            Stem::Cifar => 3,
        };
        let w4 = r.widths[3];
        let last = format!("layer4.{}", r.layers[3] - 1);
        let mut shapes = vec![
            (
                "conv1.weight".to_string(),
                vec![self.width, self.in_channels, k, k],
            ),
            match r.block {
                BlockKind::Basic => (format!("{last}.conv2.weight"), vec![w4, w4, 3, 3]),
                BlockKind::Bottleneck => (
                    format!("{last}.conv3.weight"),
                    vec![r.feature_dim(), w4, 1, 1],
                ),
            },
        ];
        let mut d = r.feature_dim();
        if let Some(p) = &self.projector {
            for (i, &h) in p.hidden.iter().chain(&p.out_linear).enumerate() {
                let at = p.linear_index(i);
                shapes.push((format!("projector.{at}.weight"), vec![h, d]));
                d = h;
            }
        }
        shapes.push(("fc.weight".to_string(), vec![self.num_classes, d]));
        Ok(shapes)
    }

    /// Checks `key_shapes` against the shapes a checkpoint's header lists;
    /// the error names every tensor that is missing or misshaped.
    pub fn check_shapes(&self, header: &BTreeMap<String, Vec<usize>>) -> Result<()> {
        let wrong: Vec<String> = self
            .key_shapes()?
            .into_iter()
            .filter_map(|(name, want)| match header.get(&name) {
                Some(got) if *got == want => None,
                Some(got) => Some(format!("{name} is {got:?}, the metadata implies {want:?}")),
                None => Some(format!("{name} {want:?} is missing")),
            })
            .collect();
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(Error::arg(
                "net",
                format!("metadata and tensors disagree: {}", wrong.join("; ")),
            ))
        }
    }

    /// The encoder's config (no classifier: `fc` belongs to the net).
    pub fn resnet(&self) -> Result<ResNetConfig> {
        self.check()?;
        let w = self.width;
        let mut c = ResNetConfig::by_name(&self.arch, self.num_classes)?
            .with_widths([w, 2 * w, 4 * w, 8 * w])
            .with_stem(self.stem)
            .with_in_channels(self.in_channels);
        c.num_classes = None;
        c.zero_init_residual = self.zero_init_residual;
        Ok(c)
    }

    /// `sl` or `sl-mlp`.
    pub fn method(&self) -> &'static str {
        if self.projector.is_some() {
            "sl-mlp"
        } else {
            "sl"
        }
    }

    pub fn to_metadata(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("net.arch".into(), self.arch.clone());
        m.insert("net.width".into(), self.width.to_string());
        m.insert(
            "net.stem".into(),
            match self.stem {
                Stem::ImageNet => "imagenet",
                Stem::Cifar => "cifar",
            }
            .into(),
        );
        m.insert("net.in_channels".into(), self.in_channels.to_string());
        m.insert(
            "net.projector".into(),
            self.projector.as_ref().map_or(String::new(), |p| p.spec()),
        );
        m.insert("net.num_classes".into(), self.num_classes.to_string());
        m.insert(
            "net.zero_init_residual".into(),
            self.zero_init_residual.to_string(),
        );
        m
    }

    /// Reads what `to_metadata` wrote; keys may carry the `extra.` prefix
    /// training checkpoints put on their extra entries.
    pub fn from_metadata(meta: &BTreeMap<String, String>) -> Result<NetConfig> {
        let get = |k: &str| -> Result<&str> {
            metadata_value(meta, &format!("net.{k}")).ok_or_else(|| {
                    Error::arg(
                        "net",
                        format!("checkpoint metadata has no net.{k}: not a checkpoint written by slmlp pretrain"),
                    )
                })
        };
        let num = |k: &str| -> Result<usize> {
            let v = get(k)?;
            v.parse()
                .map_err(|_| Error::arg("net", format!("net.{k} = {v:?} is not a number")))
        };
        let stem = match get("stem")? {
            "imagenet" => Stem::ImageNet,
            "cifar" => Stem::Cifar,
            s => {
                return Err(Error::arg(
                    "net",
                    format!("net.stem = {s:?}; expected imagenet or cifar"),
                ))
            }
        };
        let mut c = NetConfig::new(get("arch")?, num("num_classes")?)?;
        c.width = num("width")?;
        c.stem = stem;
        c.in_channels = num("in_channels")?;
        c.zero_init_residual = get("zero_init_residual")? == "true";
        let spec = get("projector")?;
        c.projector = if spec.is_empty() {
            None
        } else {
            Some(ProjectorConfig::parse(spec, 0)?)
        };
        c.resnet()?;
        Ok(c)
    }
}

/// Checks a pretraining checkpoint from its header alone, before anything
/// is built from it: the `net.*` metadata within bounds and agreeing with
/// the tensors' shapes (`NetConfig::check_shapes`), and `data.size`, if
/// present, within `MAX_IMAGE_SIZE`.
pub fn check_checkpoint(path: &Path) -> Result<()> {
    let header = checkpoint::read_header(path)?;
    let with_path = |e: Error| Error::Checkpoint {
        path: path.display().to_string(),
        msg: e.to_string(),
    };
    let config = NetConfig::from_metadata(&header.metadata).map_err(with_path)?;
    config.check_shapes(&header.shapes).map_err(with_path)?;
    if let Some(size) = metadata_value(&header.metadata, "data.size") {
        if !size
            .parse::<usize>()
            .is_ok_and(|s| (1..=MAX_IMAGE_SIZE).contains(&s))
        {
            return Err(with_path(Error::arg(
                "net",
                format!("data.size = {size:?}; expected 1..={MAX_IMAGE_SIZE}"),
            )));
        }
    }
    Ok(())
}

/// `meta[key]`, or `meta["extra." + key]`: training checkpoints store the
/// run's metadata as extra entries of their state.
pub fn metadata_value<'a>(meta: &'a BTreeMap<String, String>, key: &str) -> Option<&'a str> {
    meta.get(key)
        .or_else(|| meta.get(&format!("extra.{key}")))
        .map(String::as_str)
}

pub struct SupervisedNet {
    pub config: NetConfig,
    pub encoder: ResNet,
    pub projector: Option<Projector>,
    pub fc: Linear,
}

impl SupervisedNet {
    pub fn new(config: NetConfig, rng: &mut Rng) -> Result<SupervisedNet> {
        config.check()?;
        let encoder = ResNet::new("", config.resnet()?, rng)?;
        let d = encoder.config.feature_dim();
        let projector = match &config.projector {
            Some(p) => Some(Projector::new("projector", d, p.clone(), rng)?),
            None => None,
        };
        let head_in = config.projector.as_ref().map_or(d, |p| p.out_dim(d));
        let fc = Linear::new("fc", head_in, config.num_classes, true, rng)?;
        Ok(SupervisedNet {
            config,
            encoder,
            projector,
            fc,
        })
    }

    /// Dimension of the encoder's pooled features.
    pub fn feature_dim(&self) -> usize {
        self.encoder.config.feature_dim()
    }

    /// The encoder's pooled features [N, feature_dim]: what transfers.
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        self.encoder.features(x)
    }

    /// Logits, reporting every stage's output to `hook` under the PyTorch
    /// module name whose output it equals (see `ResNet::features_traced`;
    /// then `projector.{i}` and `fc`).
    pub fn forward_traced(
        &self,
        x: &Tensor,
        hook: &mut dyn FnMut(&str, &Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        let mut h = self.encoder.features_traced(x, hook)?;
        if let Some(p) = &self.projector {
            h = p.forward_traced(&h, "projector", hook)?;
        }
        let logits = self.fc.forward(&h)?;
        hook("fc", &logits)?;
        Ok(logits)
    }

    /// Forward MACs per `h x w` image (encoder, projector and classifier).
    pub fn macs(&self, h: usize, w: usize) -> usize {
        let linear: usize = self
            .projector
            .iter()
            .flat_map(|p| p.params())
            .chain(self.fc.params())
            .filter(|p| p.dims().len() == 2)
            .map(|p| p.get().numel())
            .sum();
        self.encoder.macs(h, w) + linear
    }
}

impl Module for SupervisedNet {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_traced(x, &mut |_, _| Ok(()))
    }
    fn children(&self) -> Vec<&dyn Module> {
        let mut m: Vec<&dyn Module> = vec![&self.encoder];
        if let Some(p) = &self.projector {
            m.push(p);
        }
        m.push(&self.fc);
        m
    }
}
