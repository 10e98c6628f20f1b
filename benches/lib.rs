//! Helpers shared by the benches: medians, FLOP counts, the PyTorch side
//! of side-by-side measurements, and slmlp-gpu-check's whole-network
//! parity cases ([`gpu_cases`]).

use std::process::Command;

pub mod gpu_cases;

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Training FLOPs per image of a conv net: each weight is used once in the
/// forward and twice in the backward (grad input, grad weight), 2 FLOPs per
/// multiply-add: 6 x forward MACs.
pub fn conv_net_train_flops(model: &models::ResNet, chw: [usize; 3]) -> f64 {
    6.0 * model.macs(chw[1], chw[2]) as f64
}

/// The network and batch tools/bench/torch_resnet18_cpu.py trains: a
/// CIFAR-stem ResNet-18 with stage widths `width`, 2, 4, 8 x `width` on
/// `[batch, in_channels, size, size]` f32 images, `classes` logits, SGD
/// (lr 0.1, momentum 0.9, weight decay 5e-4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TorchResNet18 {
    pub batch: usize,
    pub width: usize,
    pub in_channels: usize,
    pub size: usize,
    pub classes: usize,
    /// SL-MLP: Linear(8w, 8w) -> BatchNorm1d -> ReLU before the classifier.
    pub projector: bool,
    /// No weight decay on 1-d params (BN, biases), as `models::train::Trainer`.
    pub wd_exclude_1d: bool,
    /// Timed steps the script takes its median over.
    pub iters: usize,
}

impl TorchResNet18 {
    /// The script's defaults: 64 wide, 3x32x32, 10 classes, no projector,
    /// weight decay on every param.
    pub fn cifar(batch: usize) -> TorchResNet18 {
        TorchResNet18 {
            batch,
            width: 64,
            in_channels: 3,
            size: 32,
            classes: 10,
            projector: false,
            wd_exclude_1d: false,
            iters: 5,
        }
    }

    fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = [
            ("--batch", self.batch),
            ("--width", self.width),
            ("--in-channels", self.in_channels),
            ("--size", self.size),
            ("--classes", self.classes),
            ("--iters", self.iters),
        ]
        .iter()
        .flat_map(|(k, v)| [k.to_string(), v.to_string()])
        .collect();
        if self.projector {
            a.push("--projector".into());
        }
        if self.wd_exclude_1d {
            a.push("--wd-exclude-1d".into());
        }
        a
    }
}

/// Runs tools/bench/torch_resnet18_cpu.py for `net` with as many threads as
/// rayon uses here and returns its median ms/step. The interpreter is
/// `SLMLP_TORCH_PYTHON` (default `python3`).
pub fn pytorch_resnet18_cpu_ms(net: &TorchResNet18) -> Result<f64, String> {
    let python = std::env::var("SLMLP_TORCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tools/bench/torch_resnet18_cpu.py"
    );
    let threads = rayon::current_num_threads().to_string();
    let out = Command::new(&python)
        .arg(script)
        .args(["--threads", &threads])
        .args(net.args())
        .output()
        .map_err(|e| format!("cannot run {python}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{python} {script} failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ));
    }
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .to_string();
    let v: serde_json::Value =
        serde_json::from_str(&line).map_err(|e| format!("bad JSON from script: {e}: {line}"))?;
    v["median_ms"]
        .as_f64()
        .ok_or_else(|| format!("no median_ms in {line}"))
}
