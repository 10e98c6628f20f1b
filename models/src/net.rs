//! The pretraining network: ResNet encoder -> global average pool ->
//! [projector] -> Linear classifier. SL has no projector, SL-MLP has one;
//! transfer keeps only the encoder's pooled features.
//!
//! Names: the encoder's parameters use torchvision's top-level names
//! (`conv1.weight`, `layer1.0.bn1.running_mean`, ...), the projector lives
//! under `projector.`, the classifier is `fc`. An SL network is therefore a
//! torchvision ResNet state dict, and any of our checkpoints loads into
//! torchvision's ResNet with `strict=False` (the projector is the extra).

use crate::projector::{Projector, ProjectorConfig};
use crate::resnet::{ResNet, ResNetConfig, Stem};
use engine::nn::{Linear, Module};
use engine::{Error, Result, Rng, Tensor};
use std::collections::BTreeMap;

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

    /// The encoder's config (no classifier: `fc` belongs to the net).
    pub fn resnet(&self) -> Result<ResNetConfig> {
        if self.width == 0 || self.in_channels == 0 || self.num_classes == 0 {
            return Err(Error::arg(
                "net",
                format!(
                    "width, in_channels and num_classes must be positive; got {}, {}, {}",
                    self.width, self.in_channels, self.num_classes
                ),
            ));
        }
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
