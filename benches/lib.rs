//! Helpers shared by the benches: medians, FLOP counts, and the PyTorch side
//! of side-by-side measurements.

use std::process::Command;

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

/// Runs tools/bench/torch_resnet18_cpu.py and returns its median ms/step.
pub fn pytorch_resnet18_cpu_ms(batch: usize) -> Result<f64, String> {
    let python = std::env::var("SLMLP_TORCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tools/bench/torch_resnet18_cpu.py"
    );
    let threads = rayon::current_num_threads().to_string();
    let out = Command::new(&python)
        .args([
            script,
            "--threads",
            &threads,
            "--batch",
            &batch.to_string(),
            "--iters",
            "5",
        ])
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
