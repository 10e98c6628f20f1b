//! Helpers shared by the benches: medians, FLOP counts, the PyTorch side
//! of side-by-side measurements, and slmlp-gpu-check's whole-network
//! parity cases ([`gpu_cases`]).

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

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
    /// Timed steps per round (the script takes its median over them).
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

/// tools/bench/torch_resnet18_cpu.py for `net`, run with `--rounds`: warmed
/// up, with as many threads as rayon uses here, it runs `net.iters` steps
/// each time [`TorchRounds::round`] asks. The interpreter is
/// `SLMLP_TORCH_PYTHON` (default `python3`).
pub struct TorchRounds {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl TorchRounds {
    /// Starts the script and waits until its warm-up steps are done.
    pub fn start(net: &TorchResNet18, rounds: usize) -> Result<TorchRounds, String> {
        let python = std::env::var("SLMLP_TORCH_PYTHON").unwrap_or_else(|_| "python3".into());
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tools/bench/torch_resnet18_cpu.py"
        );
        let mut child = Command::new(&python)
            .arg(script)
            .args(["--threads", &rayon::current_num_threads().to_string()])
            .args(["--rounds", &rounds.to_string()])
            .args(net.args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {python}: {e}"))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(format!("{python}: no pipes to the script"));
        };
        let mut t = TorchRounds {
            child,
            stdin,
            stdout: BufReader::new(stdout),
        };
        t.reply("ready")?;
        Ok(t)
    }

    /// One round of PyTorch's steps; its median ms per step.
    pub fn round(&mut self) -> Result<f64, String> {
        writeln!(self.stdin, "go")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("the script stopped reading: {e}"))?;
        let v = self.reply("median_ms")?;
        v["median_ms"]
            .as_f64()
            .ok_or_else(|| format!("no median_ms in {v}"))
    }

    /// The script's next JSON line, which must hold `key`; on end of output,
    /// the last line the script wrote on stderr.
    fn reply(&mut self, key: &str) -> Result<serde_json::Value, String> {
        let mut line = String::new();
        let n = self
            .stdout
            .read_line(&mut line)
            .map_err(|e| format!("reading the script's output: {e}"))?;
        if n == 0 {
            let _ = self.child.kill();
            let mut err = String::new();
            if let Some(mut e) = self.child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return Err(format!(
                "the PyTorch script ended: {}",
                err.lines().last().unwrap_or("(no message)")
            ));
        }
        let v: serde_json::Value = serde_json::from_str(line.trim())
            .map_err(|e| format!("bad JSON from the script: {e}: {line}"))?;
        if v.get(key).is_none() {
            return Err(format!("expected {key} from the script, got {line}"));
        }
        Ok(v)
    }
}

impl Drop for TorchRounds {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Our step times against PyTorch's, taken in alternating rounds of
/// `net.iters` steps each: a machine whose speed drifts (a shared VM) then
/// slows both sides alike, which two runs one after the other do not.
pub struct Rounds {
    /// Each round's median ms per step: ours, and PyTorch's (None when the
    /// script could not run).
    pub rounds: Vec<(f64, Option<f64>)>,
    /// Why PyTorch's side is missing, if it is.
    pub torch_error: Option<String>,
}

/// Runs `rounds` rounds: `net.iters` of our `step`s, timed, then as many of
/// PyTorch's (see [`TorchRounds`]). Without PyTorch, our rounds alone.
pub fn compare_rounds(net: &TorchResNet18, rounds: usize, mut step: impl FnMut()) -> Rounds {
    let mut torch = TorchRounds::start(net, rounds);
    let mut out = Rounds {
        rounds: Vec::with_capacity(rounds),
        torch_error: None,
    };
    for _ in 0..rounds {
        let ours = median(
            (0..net.iters)
                .map(|_| {
                    let t = Instant::now();
                    step();
                    t.elapsed().as_secs_f64() * 1e3
                })
                .collect(),
        );
        let theirs = match &mut torch {
            Ok(t) => t.round(),
            Err(e) => Err(e.clone()),
        };
        let theirs = theirs.map_err(|e| {
            out.torch_error = Some(e.clone());
            torch = Err(e);
        });
        out.rounds.push((ours, theirs.ok()));
    }
    out
}

impl Rounds {
    /// The median over rounds of our round medians.
    pub fn ours_ms(&self) -> f64 {
        median(self.rounds.iter().map(|r| r.0).collect())
    }

    /// Lines for the bench's output: the medians, each round's ratio and
    /// their median against `target`, or why PyTorch's side is missing.
    pub fn report(&self, what: &str, batch: usize, target: f64) -> String {
        let ratios: Vec<f64> = self
            .rounds
            .iter()
            .filter_map(|&(o, t)| t.map(|t| o / t))
            .collect();
        if ratios.len() < self.rounds.len() {
            let why = self.torch_error.as_deref().unwrap_or("unknown");
            return format!("pytorch comparison skipped: {why}");
        }
        let theirs = median(self.rounds.iter().filter_map(|r| r.1).collect());
        let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        format!(
            "pytorch {what}, same machine, rounds alternating with ours: {theirs:.1} ms median, \
             {:.1} img/s\nratio ours/pytorch per round {} -> median {:.2} (target <= {target})",
            batch as f64 / theirs * 1e3,
            each.join(" / "),
            median(ratios)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::Rounds;

    #[test]
    fn a_report_gives_each_rounds_ratio_and_their_median_or_why_not() {
        let r = Rounds {
            rounds: vec![
                (120.0, Some(100.0)),
                (90.0, Some(100.0)),
                (150.0, Some(100.0)),
            ],
            torch_error: None,
        };
        assert_eq!(r.ours_ms(), 120.0);
        let text = r.report("sl", 100, 1.2);
        assert!(
            text.contains("1.20 / 0.90 / 1.50 -> median 1.20 (target <= 1.2)"),
            "{text}"
        );
        assert!(text.contains("100.0 ms median, 1000.0 img/s"), "{text}");
        let r = Rounds {
            rounds: vec![(120.0, Some(100.0)), (90.0, None)],
            torch_error: Some("the PyTorch script ended: boom".into()),
        };
        assert_eq!(
            r.report("sl", 100, 1.2),
            "pytorch comparison skipped: the PyTorch script ended: boom"
        );
    }
}
