//! The SL-MLP projector (Wang et al., CVPR 2022): an MLP between the pooled
//! encoder features and the classifier during supervised pretraining,
//! thrown away for transfer.
//!
//! As we read the paper, one block is `Linear(d -> h) -> BatchNorm1d(h) ->
//! ReLU` with `h = d`. Depth, widths, an optional trailing Linear (no BN,
//! no ReLU) and blocks without the BatchNorm (`Linear -> ReLU`, for the
//! ablations of `experiment --ablation`) are configurable. Parameter names
//! follow a torch `nn.Sequential` under `projector.`: block `i` holds
//! `projector.{3i}` (Linear) and `projector.{3i+1}` (BatchNorm1d), its ReLU
//! is index `3i+2`, and the trailing Linear is `projector.{3*depth}`;
//! without BatchNorm the stride is 2 instead of 3 — so our checkpoints load
//! into the same `nn.Sequential` in PyTorch and back.
//!
//! Each block's BN1d+ReLU is one op, `BatchNorm::forward_relu` (the
//! engine's `batch_norm_relu`): one pass on the CPU; on the GPU, in
//! training, our `bn1d_relu` kernel (statistics, normalisation and ReLU in
//! one launch forward and one backward, kernels/src/families/bn1d_relu.cu),
//! and in eval the general BatchNorm kernel with the ReLU fused.

use engine::nn::{join, BatchNorm, Linear, Module};
use engine::{Error, Result, Rng, Tensor};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectorConfig {
    /// Output width of each Linear->BN->ReLU block; empty means no blocks.
    pub hidden: Vec<usize>,
    /// Output width of a trailing Linear, if any.
    pub out_linear: Option<usize>,
    /// Blocks are Linear->BN->ReLU (true, the paper's) or Linear->ReLU.
    pub batch_norm: bool,
}

impl ProjectorConfig {
    /// The paper's projector for `d`-dimensional features: one block, h = d.
    pub fn paper(d: usize) -> ProjectorConfig {
        ProjectorConfig {
            hidden: vec![d],
            out_linear: None,
            batch_norm: true,
        }
    }

    /// Index in the `nn.Sequential` of block `i`'s Linear (`i == depth`:
    /// the trailing Linear's); BN and ReLU follow it.
    pub fn linear_index(&self, i: usize) -> usize {
        i * if self.batch_norm { 3 } else { 2 }
    }

    /// Width of what the projector hands the classifier.
    pub fn out_dim(&self, in_dim: usize) -> usize {
        self.out_linear
            .or(self.hidden.last().copied())
            .unwrap_or(in_dim)
    }

    /// Parses the CLI form: comma-separated block widths, then optionally
    /// `+N` for a trailing Linear to N, e.g. `2048`, `512,512`, `512+128`.
    /// `d` stands for the encoder's feature dim and `Kd` for K times it:
    /// `d`, `2d`, `d,d+128`. A leading `nobn:` drops the blocks' BatchNorm
    /// (`nobn:d` is Linear->ReLU).
    pub fn parse(spec: &str, d: usize) -> Result<ProjectorConfig> {
        let bad = |why: &str| {
            Error::arg(
                "projector",
                format!("{spec:?}: {why}; expected widths like \"d\", \"512,512\", \"2d\", \"d+128\" or \"nobn:d\""),
            )
        };
        let (batch_norm, body) = match spec.strip_prefix("nobn:") {
            Some(rest) => (false, rest),
            None => (true, spec),
        };
        let num = |s: &str| -> Result<usize> {
            let s = s.trim();
            let v = match s.strip_suffix('d') {
                Some("") => d,
                Some(k) => k
                    .parse::<usize>()
                    .map_err(|_| bad("not a number"))?
                    .checked_mul(d)
                    .ok_or_else(|| bad("width overflows"))?,
                None => s.parse().map_err(|_| bad("not a number"))?,
            };
            if v == 0 {
                return Err(bad("widths must be positive"));
            }
            Ok(v)
        };
        let (blocks, tail) = match body.split_once('+') {
            Some((b, t)) => (b, Some(num(t)?)),
            None => (body, None),
        };
        let hidden = if blocks.trim().is_empty() {
            vec![]
        } else {
            blocks.split(',').map(num).collect::<Result<Vec<_>>>()?
        };
        if hidden.is_empty() && tail.is_none() {
            return Err(bad("empty projector"));
        }
        if !batch_norm && hidden.is_empty() {
            return Err(bad("nobn: needs at least one block"));
        }
        Ok(ProjectorConfig {
            hidden,
            out_linear: tail,
            batch_norm,
        })
    }

    /// Inverse of `parse` (with numbers, not `d`): stored in checkpoints.
    pub fn spec(&self) -> String {
        let mut s = if self.batch_norm { "" } else { "nobn:" }.to_string();
        s += &self
            .hidden
            .iter()
            .map(|w| w.to_string())
            .collect::<Vec<_>>()
            .join(",");
        if let Some(t) = self.out_linear {
            s.push_str(&format!("+{t}"));
        }
        s
    }
}

pub struct Projector {
    pub config: ProjectorConfig,
    /// Each block's Linear and, with `config.batch_norm`, its BatchNorm.
    blocks: Vec<(Linear, Option<BatchNorm>)>,
    out: Option<Linear>,
}

impl Projector {
    pub fn new(
        prefix: &str,
        in_dim: usize,
        config: ProjectorConfig,
        rng: &mut Rng,
    ) -> Result<Projector> {
        let mut d = in_dim;
        let mut blocks = Vec::new();
        let name = |i: usize| join(prefix, &i.to_string());
        for (i, &h) in config.hidden.iter().enumerate() {
            let at = config.linear_index(i);
            let lin = Linear::new(&name(at), d, h, true, rng)?;
            let bn = match config.batch_norm {
                true => Some(BatchNorm::new(&name(at + 1), h)?),
                false => None,
            };
            blocks.push((lin, bn));
            d = h;
        }
        let out = match config.out_linear {
            Some(o) => Some(Linear::new(
                &name(config.linear_index(config.hidden.len())),
                d,
                o,
                true,
                rng,
            )?),
            None => None,
        };
        Ok(Projector {
            config,
            blocks,
            out,
        })
    }

    /// Forward that reports each block's output under the torch module name
    /// whose output it equals (the index of block i's ReLU, then the
    /// trailing Linear's; see `ProjectorConfig::linear_index`).
    pub fn forward_traced(
        &self,
        x: &Tensor,
        prefix: &str,
        hook: &mut dyn FnMut(&str, &Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        let mut h = x.clone();
        let c = &self.config;
        for (i, (lin, bn)) in self.blocks.iter().enumerate() {
            h = lin.forward(&h)?;
            h = match bn {
                Some(bn) => bn.forward_relu(&h)?,
                None => h.relu()?,
            };
            let relu = c.linear_index(i) + 1 + usize::from(c.batch_norm);
            hook(&join(prefix, &relu.to_string()), &h)?;
        }
        if let Some(out) = &self.out {
            h = out.forward(&h)?;
            hook(
                &join(prefix, &c.linear_index(self.blocks.len()).to_string()),
                &h,
            )?;
        }
        Ok(h)
    }
}

impl Module for Projector {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_traced(x, "", &mut |_, _| Ok(()))
    }
    fn children(&self) -> Vec<&dyn Module> {
        let mut m: Vec<&dyn Module> = Vec::new();
        for (l, b) in &self.blocks {
            m.push(l);
            if let Some(b) = b {
                m.push(b);
            }
        }
        if let Some(o) = &self.out {
            m.push(o);
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::nn::Module;

    #[test]
    fn specs_parse_and_round_trip() {
        for (spec, hidden, out, bn) in [
            ("d", vec![64], None, true),
            ("2d", vec![128], None, true),
            ("d,d+16", vec![64, 64], Some(16), true),
            ("+d", vec![], Some(64), true),
            ("nobn:d", vec![64], None, false),
        ] {
            let c = ProjectorConfig::parse(spec, 64).unwrap();
            assert_eq!(
                (c.hidden.clone(), c.out_linear, c.batch_norm),
                (hidden, out, bn)
            );
            assert_eq!(ProjectorConfig::parse(&c.spec(), 0).unwrap(), c, "{spec}");
        }
        for bad in [
            "",
            "x",
            "0",
            "nobn:",
            "nobn:+d",
            "2x",
            "99999999999999999999d",
        ] {
            assert!(ProjectorConfig::parse(bad, 64).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_follow_torch_sequential() {
        let names = |spec: &str| {
            let c = ProjectorConfig::parse(spec, 8).unwrap();
            let p = Projector::new("projector", 8, c, &mut Rng::new(0)).unwrap();
            let x = Tensor::from_vec((0..16).map(|v| v as f32).collect(), &[2, 8]).unwrap();
            let mut seen = Vec::new();
            p.forward_traced(&x, "projector", &mut |n, _| {
                seen.push(n.to_string());
                Ok(())
            })
            .unwrap();
            let params: Vec<String> = p.params().iter().map(|q| q.name().to_string()).collect();
            (params, seen)
        };
        let (params, seen) = names("nobn:d,d+4");
        assert_eq!(seen, ["projector.1", "projector.3", "projector.4"]);
        assert!(
            params.contains(&"projector.2.weight".to_string()),
            "{params:?}"
        );
        assert!(
            params.contains(&"projector.4.bias".to_string()),
            "{params:?}"
        );
        let (params, seen) = names("d+4");
        assert_eq!(seen, ["projector.2", "projector.3"]);
        assert!(
            params.contains(&"projector.1.weight".to_string()),
            "{params:?}"
        );
    }
}
