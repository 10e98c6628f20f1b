//! slmlp-demo: trains a small CIFAR-stem ResNet on generated images on the
//! CPU and prints the loss falling. The main job until the SL/SL-MLP
//! pipeline lands.

use engine::amp::Precision;
use engine::Rng;
use models::data::SyntheticImages;
use models::train::{accuracy, loss_drop, run, TrainOptions, Trainer};
use models::{ResNet, ResNetConfig, Stem};
use std::path::PathBuf;
use std::process::ExitCode;

const HELP: &str = "slmlp-demo: train a small ResNet on generated images (CPU)

options (defaults in brackets):
  --arch NAME            resnet18 | resnet34 | resnet50 [resnet18]
  --width N              channels of the first stage; stages use N,2N,4N,8N [16]
  --classes N            number of generated classes [10]
  --size N               image side in pixels [16]
  --steps N              training steps [120]
  --batch N              batch size [32]
  --lr X                 peak learning rate (warmup then cosine) [0.1]
  --precision P          f32 | bf16 | f16 (f16 uses dynamic loss scaling) [f32]
  --seed N               seed for weights and data [0]
  --out DIR              write DIR/metrics.jsonl and DIR/checkpoint.safetensors
  --resume               continue from DIR/checkpoint.safetensors (needs --out)
  --log-every N          print every N steps [10]
  --checkpoint-every N   checkpoint every N steps [50]
  --threads N            CPU threads [all cores]
  --device D             auto | cpu | cuda | cuda:N; auto falls back to the CPU [cpu]";

struct Args {
    arch: String,
    width: usize,
    classes: usize,
    size: usize,
    opts: TrainOptions,
    out: Option<PathBuf>,
    resume: bool,
    log_every: usize,
    checkpoint_every: usize,
    threads: Option<usize>,
    device: String,
}

fn parse() -> Result<Option<Args>, String> {
    let mut a = Args {
        arch: "resnet18".into(),
        width: 16,
        classes: 10,
        size: 16,
        opts: TrainOptions {
            steps: 120,
            ..TrainOptions::default()
        },
        out: None,
        resume: false,
        log_every: 10,
        checkpoint_every: 50,
        threads: None,
        device: "cpu".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        fn num<T: std::str::FromStr>(name: &str, v: String) -> Result<T, String> {
            v.parse().map_err(|_| format!("{name}: cannot parse {v:?}"))
        }
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--arch" => a.arch = value("--arch")?,
            "--width" => a.width = num("--width", value("--width")?)?,
            "--classes" => a.classes = num("--classes", value("--classes")?)?,
            "--size" => a.size = num("--size", value("--size")?)?,
            "--steps" => a.opts.steps = num("--steps", value("--steps")?)?,
            "--batch" => a.opts.batch = num("--batch", value("--batch")?)?,
            "--lr" => a.opts.lr = num("--lr", value("--lr")?)?,
            "--precision" => {
                a.opts.precision = value("--precision")?
                    .parse::<Precision>()
                    .map_err(|e| e.to_string())?
            }
            "--seed" => a.opts.seed = num("--seed", value("--seed")?)?,
            "--out" => a.out = Some(PathBuf::from(value("--out")?)),
            "--resume" => a.resume = true,
            "--log-every" => a.log_every = num("--log-every", value("--log-every")?)?,
            "--checkpoint-every" => {
                a.checkpoint_every = num("--checkpoint-every", value("--checkpoint-every")?)?
            }
            "--threads" => a.threads = Some(num("--threads", value("--threads")?)?),
            "--device" => a.device = value("--device")?,
            other => return Err(format!("unknown option {other:?} (see --help)")),
        }
    }
    if a.resume && a.out.is_none() {
        return Err("--resume needs --out DIR".into());
    }
    if a.width == 0 || a.opts.batch == 0 || a.opts.steps == 0 {
        return Err("--width, --batch and --steps must be positive".into());
    }
    Ok(Some(a))
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match train(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn train(a: Args) -> engine::Result<()> {
    let (device, notice) = engine::cuda::resolve_device(&a.device)?;
    if let Some(n) = notice {
        eprintln!("{n}");
    }
    if device != engine::Device::Cpu {
        // the CUDA backend's tensor storage is not there yet: say so plainly
        return Err(engine::Error::DeviceUnavailable {
            device,
            msg: "training on the GPU needs the CUDA backend, which this build does not have yet"
                .into(),
        });
    }
    if let Some(t) = a.threads {
        if let Err(e) = rayon_pool(t) {
            eprintln!("warning: --threads {t} not applied: {e}");
        }
    }
    let w = a.width;
    let config = ResNetConfig::by_name(&a.arch, a.classes)?
        .with_stem(Stem::Cifar)
        .with_widths([w, 2 * w, 4 * w, 8 * w]);
    let model = ResNet::new("", config, &mut Rng::new(a.opts.seed))?;
    let data = SyntheticImages::new(a.classes, 3, a.size, 0.5, 1234)?;
    let n_params: usize = engine::nn::Module::params(&model)
        .iter()
        .map(|p| p.get().numel())
        .sum();
    println!(
        "slmlp-demo: {} (width {w}, {:.2}M params), {} classes of {}x{} generated images, batch {}, {:?}",
        a.arch,
        n_params as f64 / 1e6,
        a.classes,
        a.size,
        a.size,
        a.opts.batch,
        a.opts.precision
    );
    let dtype = a.opts.precision.compute_dtype();
    let mut trainer = Trainer::new(&model, a.opts.clone());
    if a.resume {
        let p = a
            .out
            .as_ref()
            .expect("checked in parse")
            .join("checkpoint.safetensors");
        trainer.resume(&p)?;
        println!("resumed from {} at step {}", p.display(), trainer.step);
    }
    let acc0 = accuracy(&model, &data, 256, 99, dtype)?;
    let logs = run(
        &mut trainer,
        &data,
        a.out.as_deref(),
        a.log_every,
        a.checkpoint_every,
    )?;
    let acc1 = accuracy(&model, &data, 256, 99, dtype)?;
    if let Some((first, last)) = loss_drop(&logs, 10.min(logs.len() / 2)) {
        println!("loss: first steps {first:.4} -> last steps {last:.4}");
    }
    println!(
        "held-out accuracy: {:.1}% before -> {:.1}% after (chance {:.1}%)",
        100.0 * acc0,
        100.0 * acc1,
        100.0 / a.classes as f64
    );
    Ok(())
}

fn rayon_pool(threads: usize) -> Result<(), String> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .map_err(|e| e.to_string())
}
