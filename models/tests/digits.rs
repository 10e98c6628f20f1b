//! The UCI 8x8 digits (scikit-learn's `digits.csv.gz`): parsing, the fixed
//! stratified `digits:train` / `digits:test` split, and the bilinear upscale
//! to the study's 28x28 input.
//!
//! Tests on the real file FAIL when it is missing: run
//! scripts/fetch-data.sh first.

use models::data::*;
use models::datasets::{self, Normalization};
use models::pretrain::{eval_loader, InputSpec};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use testutil::{err_text, TempDir};

fn real_digits_path() -> std::path::PathBuf {
    let path = default_digits_path();
    assert!(
        path.is_file(),
        "the UCI digits are not at {}: run scripts/fetch-data.sh (or set SLMLP_DIGITS)",
        path.display()
    );
    path
}

fn histogram(ds: &dyn Dataset) -> Vec<usize> {
    let mut h = vec![0; ds.classes().len()];
    for i in 0..ds.len() {
        h[ds.label(i)] += 1;
    }
    h
}

fn write_gz(path: &Path, text: &str) {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(text.as_bytes()).unwrap();
    std::fs::write(path, enc.finish().unwrap()).unwrap();
}

#[test]
fn real_digits_have_the_known_counts_and_pixels() {
    let all = uci_digits(&real_digits_path()).unwrap();
    assert_eq!(all.len(), 1797);
    assert_eq!(
        histogram(&all),
        [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    );
    assert_eq!(all.classes()[3], "3");
    let img = all.get(0).unwrap();
    assert_eq!((img.channels, img.height, img.width), (1, 8, 8));
    // first line: 0,0,5,13,9,1,0,0,... label 0; 5/16 of 255 is 79.69
    assert_eq!(&img.pixels[..8], &[0, 0, 80, 207, 143, 16, 0, 0]);
    assert_eq!(all.label(0), 0);
    // counts reach 16 (255) somewhere
    assert!((0..all.len()).any(|i| all.get(i).unwrap().pixels.contains(&255)));
}

#[test]
fn digits_split_is_stratified_disjoint_and_complete() {
    let train = datasets::open("digits:train").unwrap();
    let test = datasets::open("digits:test").unwrap();
    assert_eq!(datasets::open("digits").unwrap().len(), train.len());
    assert_eq!(datasets::open("digits:all").unwrap().len(), 1797);
    assert_eq!((train.len(), test.len()), (1442, 355));
    // the 5th of every 5 samples of each class: floor(n / 5) of n per class
    assert_eq!(histogram(&*test), [35, 36, 35, 36, 36, 36, 36, 35, 34, 36]);
    assert_eq!(
        histogram(&*train),
        [143, 146, 142, 147, 145, 146, 145, 144, 140, 144]
    );
    let names = |ds: &dyn Dataset| {
        (0..ds.len())
            .map(|i| ds.describe(i))
            .collect::<BTreeSet<_>>()
    };
    let (tr, te) = (names(&*train), names(&*test));
    assert_eq!(tr.len() + te.len(), 1797);
    assert!(tr.is_disjoint(&te));
    // test's first sample is line 34 of the file, the 5th five (0,6,13,5,...)
    assert_eq!(test.describe(0), "uci-digits#33");
    assert_eq!(test.label(0), 5);
    assert_eq!(&test.get(0).unwrap().pixels[..4], &[0, 96, 207, 80]);
    assert_eq!(
        datasets::test_spec("digits").as_deref(),
        Some("digits:test")
    );
    let e = err_text(datasets::open("digits:val"));
    assert!(e.contains("train, test and all"), "{e}");
}

#[test]
fn digits_upscale_bilinearly_to_the_model_input() {
    let test = datasets::open("digits:test").unwrap();
    let input = InputSpec {
        size: 28,
        norm: Normalization::gray(0.0, 1.0),
    };
    let loader = eval_loader(test, &input, 4, 0).unwrap();
    let b = loader.epoch(0, 0).next().unwrap().unwrap();
    assert_eq!(b.images.dims(), &[4, 1, 28, 28]);
    let x = b.images.to_vec::<f32>().unwrap();
    // Output (2, 7) samples source (0.2143, 1.6429) (half-pixel centres,
    // scale 8/28): rows 0..1, columns 1..2 of the first test digit, whose
    // pixels are 96, 207 / 128, 255; by hand (numpy, f64) 0.691836734...
    let v = x[2 * 28 + 7];
    assert!((v - 0.691_836_7).abs() <= 1e-5, "{v}");
    // the top-left output pixel is the source's top-left one (0)
    assert_eq!(x[0], 0.0);
    // an upscale never leaves the source's range
    assert!(x.iter().all(|&v| (0.0..=1.0).contains(&v)));
}

#[test]
fn bad_digits_files_are_errors_naming_the_file() {
    let tmp = TempDir::new("digits-bad");
    let path = tmp.0.join("digits.csv.gz");
    let zeros = vec!["0"; 64].join(",");
    write_gz(&path, &format!("{zeros},7\n{zeros},2\n"));
    let ds = uci_digits(&path).unwrap();
    assert_eq!((ds.len(), ds.label(0), ds.label(1)), (2, 7, 2));
    for (text, want) in [
        (format!("{zeros}\n"), "64 values"),
        (format!("{zeros},1,2\n"), "66 values"),
        (
            format!("17,{},3\n", vec!["0"; 63].join(",")),
            "outside 0..=16",
        ),
        (format!("{zeros},10\n"), "not a digit"),
        (format!("{zeros},x\n"), "not a number"),
        (String::new(), "no digits"),
    ] {
        write_gz(&path, &text);
        let e = err_text(uci_digits(&path));
        assert!(
            e.contains("digits.csv.gz") && e.contains(want),
            "{want}: {e}"
        );
    }
    std::fs::write(&path, b"plain text").unwrap();
    assert!(err_text(uci_digits(&path)).contains("gzip"));
    let e = err_text(uci_digits(&tmp.0.join("missing.csv.gz")));
    assert!(e.contains("fetch-data.sh"), "{e}");
}
