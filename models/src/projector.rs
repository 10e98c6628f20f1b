//! The SL-MLP projector (Wang et al., CVPR 2022): an MLP between the pooled
//! encoder features and the classifier during supervised pretraining,
//! thrown away for transfer.
//!
//! As we read the paper, one block is `Linear(d -> h) -> BatchNorm1d(h) ->
//! ReLU` with `h = d`. Depth, widths and an optional trailing Linear (no BN,
//! no ReLU) are configurable. Parameter names follow a torch
//! `nn.Sequential` under `projector.`: block `i` holds `projector.{3i}`
//! (Linear) and `projector.{3i+1}` (BatchNorm1d), its ReLU is index `3i+2`,
//! and the trailing Linear is `projector.{3*depth}` — so our checkpoints
//! load into the same `nn.Sequential` in PyTorch and back.
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
}

impl ProjectorConfig {
    /// The paper's projector for `d`-dimensional features: one block, h = d.
    pub fn paper(d: usize) -> ProjectorConfig {
        ProjectorConfig {
            hidden: vec![d],
            out_linear: None,
        }
    }

    /// Width of what the projector hands the classifier.
    pub fn out_dim(&self, in_dim: usize) -> usize {
        self.out_linear
            .or(self.hidden.last().copied())
            .unwrap_or(in_dim)
    }

    /// Parses the CLI form: comma-separated block widths, then optionally
    /// `+N` for a trailing Linear to N, e.g. `2048`, `512,512`, `512+128`.
    /// `d` stands for the encoder's feature dim: `d`, `d,d+128`.
    pub fn parse(spec: &str, d: usize) -> Result<ProjectorConfig> {
        let bad = |why: &str| {
            Error::arg(
                "projector",
                format!("{spec:?}: {why}; expected widths like \"d\", \"512,512\" or \"d+128\""),
            )
        };
        let num = |s: &str| -> Result<usize> {
            let v = if s.trim() == "d" {
                d
            } else {
                s.trim().parse().map_err(|_| bad("not a number"))?
            };
            if v == 0 {
                return Err(bad("widths must be positive"));
            }
            Ok(v)
        };
        let (blocks, tail) = match spec.split_once('+') {
            Some((b, t)) => (b, Some(num(t)?)),
            None => (spec, None),
        };
        let hidden = if blocks.trim().is_empty() {
            vec![]
        } else {
            blocks.split(',').map(num).collect::<Result<Vec<_>>>()?
        };
        if hidden.is_empty() && tail.is_none() {
            return Err(bad("empty projector"));
        }
        Ok(ProjectorConfig {
            hidden,
            out_linear: tail,
        })
    }

    /// Inverse of `parse` (with numbers, not `d`): stored in checkpoints.
    pub fn spec(&self) -> String {
        let mut s = self
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
    blocks: Vec<(Linear, BatchNorm)>,
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
        for (i, &h) in config.hidden.iter().enumerate() {
            let lin = Linear::new(&join(prefix, &(3 * i).to_string()), d, h, true, rng)?;
            let bn = BatchNorm::new(&join(prefix, &(3 * i + 1).to_string()), h)?;
            blocks.push((lin, bn));
            d = h;
        }
        let out = match config.out_linear {
            Some(o) => Some(Linear::new(
                &join(prefix, &(3 * config.hidden.len()).to_string()),
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
    /// whose output it equals (`<prefix>.{3i+2}` for the ReLU of block i,
    /// `<prefix>.{3*depth}` for the trailing Linear).
    pub fn forward_traced(
        &self,
        x: &Tensor,
        prefix: &str,
        hook: &mut dyn FnMut(&str, &Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        let mut h = x.clone();
        for (i, (lin, bn)) in self.blocks.iter().enumerate() {
            h = bn.forward_relu(&lin.forward(&h)?)?;
            hook(&join(prefix, &(3 * i + 2).to_string()), &h)?;
        }
        if let Some(out) = &self.out {
            h = out.forward(&h)?;
            hook(&join(prefix, &(3 * self.blocks.len()).to_string()), &h)?;
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
            m.push(b);
        }
        if let Some(o) = &self.out {
            m.push(o);
        }
        m
    }
}
