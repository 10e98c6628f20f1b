//! `--preset`: a published recipe's settings in one flag. A preset sets
//! each of its values unless that flag was given on the command line, so an
//! explicit flag always wins (`--preset imagenet --epochs 90`).

use crate::detect::{DetectTrainArgs, ScheduleArg};
use crate::device::DeviceArg;
use crate::pretrain::{PretrainArgs, StemArg};
use clap::parser::ValueSource;
use clap::ArgMatches;
use engine::amp::Precision;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PretrainPreset {
    /// The paper's ImageNet pretraining: ResNet-50, 224 px, batch 256, SGD
    /// lr 0.1 x batch/256, momentum 0.9, wd 1e-4, 100 epochs, warmup +
    /// cosine, projector "d" (Linear-BN-ReLU, 2048), on cuda in bf16.
    Imagenet,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DetectPreset {
    /// torchvision's COCO reference for Mask R-CNN R50-FPN: 26 epochs, lr
    /// 0.02 x batch/16 at batch 16, wd 1e-4, 1000 warmup steps, step
    /// schedule, shorter side 800, longer at most 1333; bf16 autocast on
    /// cuda (the references' `--amp`).
    Coco,
}

/// Sets `field` to `value` unless `id` (its field name) was typed on the
/// command line.
fn set<T>(m: &ArgMatches, id: &str, field: &mut T, value: T) {
    if m.value_source(id) != Some(ValueSource::CommandLine) {
        *field = value;
    }
}

pub fn apply_pretrain(p: PretrainPreset, a: &mut PretrainArgs, m: &ArgMatches) {
    match p {
        PretrainPreset::Imagenet => {
            set(m, "arch", &mut a.arch, "resnet50".into());
            set(m, "width", &mut a.width, 64);
            set(m, "stem", &mut a.stem, Some(StemArg::Imagenet));
            set(m, "projector", &mut a.projector, "d".into());
            set(m, "image_size", &mut a.image_size, Some(224));
            set(m, "batch", &mut a.batch, 256);
            // linear scaling: 0.1 at batch 256
            set(m, "lr", &mut a.lr, 0.1 * a.batch as f64 / 256.0);
            set(m, "momentum", &mut a.momentum, 0.9);
            set(m, "weight_decay", &mut a.weight_decay, 1e-4);
            set(m, "epochs", &mut a.epochs, 100);
            set(m, "device", &mut a.compute.device, DeviceArg::Cuda(0));
            if matches!(a.compute.device, DeviceArg::Cuda(_)) {
                set(m, "precision", &mut a.compute.precision, Precision::Bf16);
            }
        }
    }
}

pub fn apply_detect(p: DetectPreset, a: &mut DetectTrainArgs, m: &ArgMatches) {
    match p {
        DetectPreset::Coco => {
            set(m, "arch", &mut a.arch, "resnet50".into());
            set(m, "width", &mut a.width, 64);
            set(m, "fpn_channels", &mut a.fpn_channels, 256);
            set(m, "representation_size", &mut a.representation_size, 1024);
            set(m, "trainable_layers", &mut a.trainable_layers, 3);
            set(m, "epochs", &mut a.epochs, 26);
            set(m, "batch", &mut a.batch, 16);
            // linear scaling: 0.02 at batch 16
            set(m, "lr", &mut a.lr, 0.02 * a.batch as f64 / 16.0);
            set(m, "weight_decay", &mut a.weight_decay, 1e-4);
            set(m, "warmup_steps", &mut a.warmup_steps, 1000);
            set(m, "schedule", &mut a.schedule, ScheduleArg::Step);
            set(m, "min_size", &mut a.min_size, 800);
            set(m, "max_size", &mut a.max_size, 1333);
            if matches!(a.device, DeviceArg::Cuda(_)) {
                set(m, "precision", &mut a.precision, Precision::Bf16);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{parse_from, Command};
    use super::*;

    fn pretrain(extra: &[&str]) -> PretrainArgs {
        let mut argv = vec!["slmlp", "pretrain", "--data", "synthetic", "--out", "o"];
        argv.extend_from_slice(extra);
        match parse_from(argv).unwrap().0.command {
            Command::Pretrain(p) => p.args,
            _ => unreachable!("parsed pretrain"),
        }
    }

    fn detect(extra: &[&str]) -> DetectTrainArgs {
        let mut argv = vec!["slmlp", "detect", "train", "--data", "d", "--out", "o"];
        argv.extend_from_slice(extra);
        match parse_from(argv).unwrap().0.command {
            Command::Detect(d) => d.train_args().expect("detect train").clone(),
            _ => unreachable!("parsed detect"),
        }
    }

    #[test]
    fn imagenet_sets_the_papers_settings() {
        let plain = pretrain(&[]);
        let a = pretrain(&["--preset", "imagenet"]);
        assert_ne!((plain.epochs, plain.batch), (a.epochs, a.batch));
        assert_eq!(a.arch, "resnet50");
        assert_eq!(a.width, 64);
        assert_eq!(a.stem, Some(StemArg::Imagenet));
        assert_eq!(a.projector, "d");
        assert_eq!(a.image_size, Some(224));
        assert_eq!((a.epochs, a.batch), (100, 256));
        assert_eq!((a.lr, a.momentum, a.weight_decay), (0.1, 0.9, 1e-4));
        assert_eq!(a.compute.device, DeviceArg::Cuda(0));
        assert_eq!(a.compute.precision, Precision::Bf16);
    }

    #[test]
    fn an_explicit_flag_beats_the_preset() {
        let a = pretrain(&[
            "--epochs",
            "3",
            "--preset",
            "imagenet",
            "--weight-decay",
            "5e-4",
        ]);
        assert_eq!((a.epochs, a.weight_decay), (3, 5e-4));
        assert_eq!(a.batch, 256);
        // lr follows an explicit batch (linear scaling) unless --lr is given
        assert_eq!(
            pretrain(&["--preset", "imagenet", "--batch", "512"]).lr,
            0.2
        );
        let a = pretrain(&["--preset", "imagenet", "--batch", "512", "--lr", "0.05"]);
        assert_eq!(a.lr, 0.05);
        // bf16 is the preset's choice on cuda only
        let a = pretrain(&["--preset", "imagenet", "--device", "cpu"]);
        assert_eq!(
            (a.compute.device, a.compute.precision),
            (DeviceArg::Cpu, Precision::F32)
        );
        let a = pretrain(&["--preset", "imagenet", "--precision", "f16"]);
        assert_eq!(a.compute.precision, Precision::F16);
    }

    #[test]
    fn coco_sets_torchvisions_reference_and_yields_to_flags() {
        let a = detect(&["--preset", "coco"]);
        assert_eq!(a.arch, "resnet50");
        assert_eq!(
            (a.epochs, a.batch, a.lr, a.weight_decay),
            (26, 16, 0.02, 1e-4)
        );
        assert_eq!((a.min_size, a.max_size, a.warmup_steps), (800, 1333, 1000));
        assert_eq!(a.precision, Precision::F32);
        let a = detect(&["--preset", "coco", "--device", "cuda"]);
        assert_eq!(a.precision, Precision::Bf16);
        let a = detect(&["--preset", "coco", "--device", "cuda", "--precision", "f32"]);
        assert_eq!(a.precision, Precision::F32);
        let a = detect(&["--preset", "coco", "--batch", "4", "--max-size", "1000"]);
        assert_eq!((a.batch, a.lr, a.max_size), (4, 0.005, 1000));
        assert_eq!(a.min_size, 800);
        let plain = detect(&[]);
        assert_eq!((plain.batch, plain.min_size), (2, 128));
    }

    #[test]
    fn a_preset_of_another_command_is_refused() {
        for argv in [
            vec![
                "slmlp", "pretrain", "--data", "s", "--out", "o", "--preset", "coco",
            ],
            vec![
                "slmlp", "detect", "train", "--data", "d", "--out", "o", "--preset", "imagenet",
            ],
        ] {
            let e = parse_from(argv).err().expect("refused").to_string();
            assert!(e.contains("--preset"), "{e}");
        }
    }
}
