//! The data layer against real files: IDX and JSON parsing (small files the
//! tests write, and the real Fashion-MNIST and MNIST digits), ImageFolder
//! trees of PNG/JPEG, subsets, transforms and the loader's determinism.
//!
//! Tests on the real datasets FAIL when the files are missing: run
//! scripts/fetch-data.sh first.

use engine::Rng;
use models::data::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testutil::{err_text, TempDir};

/// A fresh temporary folder `slmlp-data-<tag>-<pid>`, removed on drop.
fn temp_dir(tag: &str) -> TempDir {
    TempDir::new(&format!("data-{tag}"))
}

// ---- IDX ----------------------------------------------------------------

fn idx_bytes(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut b = magic.to_be_bytes().to_vec();
    for d in dims {
        b.extend(d.to_be_bytes());
    }
    b.extend(data);
    b
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Three 2x3 images with pixel value 10*image + position, labels 7, 0, 9.
fn write_small_idx(dir: &Path, prefix: &str, gz_images: bool) {
    let pixels: Vec<u8> = (0..3u8)
        .flat_map(|i| (0..6u8).map(move |p| 10 * i + p))
        .collect();
    let images = idx_bytes(0x803, &[3, 2, 3], &pixels);
    let labels = idx_bytes(0x801, &[3], &[7, 0, 9]);
    if gz_images {
        std::fs::write(
            dir.join(format!("{prefix}-images-idx3-ubyte.gz")),
            gzip(&images),
        )
        .unwrap();
    } else {
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), &images).unwrap();
    }
    // Labels the other way round, so each split mixes both forms.
    if gz_images {
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), &labels).unwrap();
    } else {
        std::fs::write(
            dir.join(format!("{prefix}-labels-idx1-ubyte.gz")),
            gzip(&labels),
        )
        .unwrap();
    }
}

#[test]
fn idx_reads_gzip_and_raw_files() {
    let tmp = temp_dir("idx");
    write_small_idx(&tmp.0, "train", true);
    write_small_idx(&tmp.0, "t10k", false);
    for split in [Split::Train, Split::Test] {
        let ds = fashion_mnist(&tmp.0, split).unwrap();
        assert_eq!((ds.len(), ds.channels(), ds.height, ds.width), (3, 1, 2, 3));
        assert_eq!(ds.classes()[0], "T-shirt/top");
        assert_eq!(ds.classes()[9], "Ankle boot");
        assert_eq!(
            (0..3).map(|i| ds.label(i)).collect::<Vec<_>>(),
            vec![7, 0, 9]
        );
        let img = ds.get(1).unwrap();
        assert_eq!(img.pixels, vec![10, 11, 12, 13, 14, 15]);
        assert_eq!((img.height, img.width, img.channels), (2, 3, 1));
        let name = if split == Split::Train {
            "train"
        } else {
            "test"
        };
        assert_eq!(ds.describe(2), format!("fashion-mnist/{name}#2"));
    }
}

#[test]
fn idx_rejects_bad_files_naming_them() {
    let tmp = temp_dir("idx-bad");
    let dir = &tmp.0;
    let images_gz = dir.join("train-images-idx3-ubyte.gz");
    let labels = dir.join("train-labels-idx1-ubyte");

    // Missing files.
    let e = err_text(fashion_mnist(dir, Split::Train));
    assert!(
        e.contains("train-images-idx3-ubyte") && e.contains("fetch-data.sh"),
        "{e}"
    );

    // Bad magic: a label file where images are expected.
    write_small_idx(dir, "train", true);
    std::fs::write(&images_gz, gzip(&idx_bytes(0x801, &[3], &[1, 2, 3]))).unwrap();
    let e = err_text(fashion_mnist(dir, Split::Train));
    assert!(
        e.contains("train-images-idx3-ubyte.gz") && e.contains("magic"),
        "{e}"
    );

    // Truncated body (header promises 18 bytes, 17 present).
    let pixels = vec![1u8; 17];
    std::fs::write(&images_gz, gzip(&idx_bytes(0x803, &[3, 2, 3], &pixels))).unwrap();
    let e = err_text(fashion_mnist(dir, Split::Train));
    assert!(
        e.contains("train-images-idx3-ubyte.gz") && e.contains("truncated"),
        "{e}"
    );

    // Truncated header.
    std::fs::write(&images_gz, gzip(&[0, 0, 8, 3, 0, 0])).unwrap();
    let e = err_text(fashion_mnist(dir, Split::Train));
    assert!(e.contains("truncated header"), "{e}");

    // Truncated gzip stream.
    let full = gzip(&idx_bytes(0x803, &[3, 2, 3], &[5u8; 18]));
    std::fs::write(&images_gz, &full[..full.len() / 2]).unwrap();
    let e = err_text(fashion_mnist(dir, Split::Train));
    assert!(
        e.contains("train-images-idx3-ubyte.gz") && e.contains("gzip"),
        "{e}"
    );

    // Trailing bytes.
    std::fs::write(&images_gz, gzip(&idx_bytes(0x803, &[3, 2, 3], &[5u8; 19]))).unwrap();
    let e = err_text(fashion_mnist(dir, Split::Train));
    assert!(e.contains("trailing"), "{e}");

    // Counts that disagree, then a label out of range.
    std::fs::write(&images_gz, gzip(&idx_bytes(0x803, &[3, 2, 3], &[5u8; 18]))).unwrap();
    std::fs::write(&labels, idx_bytes(0x801, &[2], &[1, 2])).unwrap();
    let e = err_text(fashion_mnist(dir, Split::Train));
    assert!(e.contains("3 images") && e.contains("2 labels"), "{e}");
    std::fs::write(&labels, idx_bytes(0x801, &[3], &[1, 10, 2])).unwrap();
    let e = err_text(fashion_mnist(dir, Split::Train));
    assert!(
        e.contains("label 10") && e.contains("train-labels-idx1-ubyte"),
        "{e}"
    );

    // And the well-formed pair loads.
    std::fs::write(&labels, idx_bytes(0x801, &[3], &[1, 9, 2])).unwrap();
    assert_eq!(fashion_mnist(dir, Split::Train).unwrap().len(), 3);
}

fn real_fashion_dir() -> PathBuf {
    let dir = default_fashion_mnist_dir();
    testutil::assert_fashion_mnist_present(
        &dir,
        &["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"],
    );
    dir
}

fn real_mnist_dir() -> PathBuf {
    let dir = default_mnist_dir();
    assert!(
        (0..10).all(|d| dir.join(format!("{d}.json")).is_file()),
        "the MNIST digits are not in {}: run scripts/fetch-data.sh (or set SLMLP_MNIST_DIR)",
        dir.display()
    );
    dir
}

fn histogram(ds: &dyn Dataset) -> Vec<usize> {
    let mut h = vec![0; ds.classes().len()];
    for i in 0..ds.len() {
        h[ds.label(i)] += 1;
    }
    h
}

#[test]
fn real_fashion_mnist_has_60000_and_10000_balanced_images() {
    let dir = real_fashion_dir();
    let train = fashion_mnist(&dir, Split::Train).unwrap();
    let test = fashion_mnist(&dir, Split::Test).unwrap();
    assert_eq!((train.len(), test.len()), (60_000, 10_000));
    assert_eq!((train.height, train.width, train.channels), (28, 28, 1));
    assert_eq!(histogram(&train), vec![6000; 10]);
    assert_eq!(histogram(&test), vec![1000; 10]);
    // The first training and test items are both ankle boots.
    assert_eq!((train.label(0), test.label(0)), (9, 9));
    // Real images: dark background corners, bright foreground somewhere.
    let img = train.get(0).unwrap();
    assert_eq!(img.pixels[0], 0);
    assert!(img.pixels.iter().any(|&p| p > 200));

    // Through the loader: shapes and the normalisation of the zero corner.
    let transform = Transform::eval(28, vec![0.5], vec![0.25]);
    let opts = LoaderOptions {
        batch: 32,
        workers: 2,
        ..Default::default()
    };
    let loader = Loader::new(Arc::new(test), transform, opts).unwrap();
    assert_eq!(loader.batches_per_epoch(), 313);
    let b = loader.epoch(0, 0).next().unwrap().unwrap();
    assert_eq!(b.images.dims(), &[32, 1, 28, 28]);
    assert_eq!(b.images.to_vec::<f32>().unwrap()[0], -2.0);
}

#[test]
fn real_mnist_digits_have_the_known_counts() {
    let ds = mnist_digits(&real_mnist_dir()).unwrap();
    assert_eq!(ds.len(), 10_000);
    assert_eq!(
        histogram(&ds),
        vec![1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]
    );
    assert_eq!(ds.classes()[3], "3");
    assert_eq!((ds.height, ds.width, ds.channels), (28, 28, 1));
    // The first "0": values 0.2, 0.624, 0.992 map to 51, 159, 253.
    let first = ds.get(0).unwrap();
    let nonzero: Vec<u8> = first
        .pixels
        .iter()
        .copied()
        .filter(|&p| p > 0)
        .take(3)
        .collect();
    assert_eq!(nonzero, vec![51, 159, 253]);
}

#[test]
fn mnist_json_errors_name_the_file() {
    let tmp = temp_dir("mnist-bad");
    let dir = &tmp.0;
    let digit = |v: f64| format!("{{\"data\": [{}]}}", vec![v.to_string(); 784].join(","));
    for d in 0..10 {
        std::fs::write(dir.join(format!("{d}.json")), digit(0.5)).unwrap();
    }
    let ds = mnist_digits(dir).unwrap();
    assert_eq!(ds.len(), 10);
    assert_eq!(ds.get(4).unwrap().pixels[0], 128);
    assert_eq!(ds.label(4), 4);

    std::fs::write(dir.join("3.json"), "{\"data\": [0.1, 0.2]}").unwrap();
    let e = err_text(mnist_digits(dir));
    assert!(e.contains("3.json") && e.contains("784"), "{e}");

    std::fs::write(dir.join("3.json"), digit(1.5)).unwrap();
    let e = err_text(mnist_digits(dir));
    assert!(e.contains("3.json") && e.contains("outside [0, 1]"), "{e}");

    std::fs::write(dir.join("3.json"), "[1, 2]").unwrap();
    let e = err_text(mnist_digits(dir));
    assert!(e.contains("3.json") && e.contains("\"data\""), "{e}");

    std::fs::remove_file(dir.join("3.json")).unwrap();
    let e = err_text(mnist_digits(dir));
    assert!(e.contains("3.json") && e.contains("fetch-data.sh"), "{e}");
}

// ---- ImageFolder --------------------------------------------------------

fn save_rgb(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) {
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)))
        .save(path)
        .unwrap();
}

/// root/cat: a.png (RGB), b.JPG, sub/c.png (gray); root/dog: d.jpeg, bad.jpg
/// (garbage), notes.txt (ignored).
fn write_folder_tree(root: &Path) {
    std::fs::create_dir_all(root.join("cat/sub")).unwrap();
    std::fs::create_dir_all(root.join("dog")).unwrap();
    save_rgb(&root.join("cat/a.png"), 5, 4, |x, y| {
        [x as u8 * 10, y as u8 * 20, 7]
    });
    save_rgb(&root.join("cat/b.JPG"), 16, 8, |_, _| [200, 100, 50]);
    image::GrayImage::from_fn(3, 2, |x, y| image::Luma([(x + 3 * y) as u8 * 40]))
        .save(root.join("cat/sub/c.png"))
        .unwrap();
    save_rgb(&root.join("dog/d.jpeg"), 9, 12, |_, _| [10, 220, 120]);
    std::fs::write(
        root.join("dog/bad.jpg"),
        b"\xff\xd8\xff\xe0 this is not a jpeg",
    )
    .unwrap();
    std::fs::write(root.join("dog/notes.txt"), "not an image").unwrap();
}

#[test]
fn image_folder_lists_and_decodes_png_and_jpeg() {
    let tmp = temp_dir("folder");
    write_folder_tree(&tmp.0);
    let ds = ImageFolder::open(&tmp.0).unwrap();
    assert_eq!(ds.classes(), &["cat".to_string(), "dog".to_string()]);
    let names: Vec<String> = (0..ds.len())
        .map(|i| {
            ds.path(i)
                .strip_prefix(&tmp.0)
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    assert_eq!(
        names,
        [
            "cat/a.png",
            "cat/b.JPG",
            "cat/sub/c.png",
            "dog/bad.jpg",
            "dog/d.jpeg"
        ]
    );
    assert_eq!(
        (0..5).map(|i| ds.label(i)).collect::<Vec<_>>(),
        [0, 0, 0, 1, 1]
    );
    assert_eq!(ds.channels(), 3);

    let a = ds.get(0).unwrap();
    assert_eq!((a.height, a.width, a.channels), (4, 5, 3));
    assert_eq!(&a.pixels[(2 * 5 + 3) * 3..][..3], &[30, 40, 7]);

    // Gray PNG becomes RGB with equal channels.
    let c = ds.get(2).unwrap();
    assert_eq!((c.height, c.width, c.channels), (2, 3, 3));
    assert_eq!(&c.pixels[(3 + 1) * 3..][..3], &[160, 160, 160]);

    // JPEG is lossy: a flat colour comes back within a few levels.
    let d = ds.get(4).unwrap();
    assert_eq!((d.height, d.width), (12, 9));
    for px in d.pixels.chunks(3) {
        for (got, want) in px.iter().zip([10u8, 220, 120]) {
            assert!((*got as i32 - want as i32).abs() <= 6, "{px:?}");
        }
    }

    let e = err_text(ds.get(3));
    assert!(e.contains("bad.jpg"), "{e}");
    assert!(ds.describe(3).ends_with("bad.jpg"));
}

#[test]
fn loader_skips_and_counts_an_undecodable_image() {
    let tmp = temp_dir("folder-skip");
    write_folder_tree(&tmp.0);
    let ds: Arc<dyn Dataset> = Arc::new(ImageFolder::open(&tmp.0).unwrap());
    let transform = Transform::eval(6, IMAGENET_MEAN.to_vec(), IMAGENET_STD.to_vec());
    for workers in [0, 2] {
        let opts = LoaderOptions {
            batch: 5,
            shuffle: false,
            workers,
            ..Default::default()
        };
        let loader = Loader::new(ds.clone(), transform.clone(), opts).unwrap();
        for epoch in 0..2 {
            let batches: Vec<Batch> = loader.epoch(epoch, 0).map(|b| b.unwrap()).collect();
            assert_eq!(batches.len(), 1);
            assert_eq!(batches[0].indices, [0, 1, 2, 4]);
            assert_eq!(batches[0].images.dims(), &[4, 3, 6, 6]);
            assert_eq!(batches[0].labels.to_vec::<i64>().unwrap(), [0, 0, 0, 1]);
        }
        // Counted once, however often it was met.
        assert_eq!(loader.skipped(), 1);
    }
}

#[test]
fn image_folder_rejects_missing_and_empty_roots() {
    let tmp = temp_dir("folder-empty");
    let missing = tmp.0.join("nope");
    let e = err_text(ImageFolder::open(&missing));
    assert!(e.contains("nope"), "{e}");

    let e = err_text(ImageFolder::open(&tmp.0));
    assert!(e.contains("no class subdirectories"), "{e}");

    std::fs::create_dir_all(tmp.0.join("empty_class")).unwrap();
    std::fs::create_dir_all(tmp.0.join("full")).unwrap();
    save_rgb(&tmp.0.join("full/x.png"), 2, 2, |_, _| [1, 2, 3]);
    std::fs::write(tmp.0.join("empty_class/readme.txt"), "x").unwrap();
    let e = err_text(ImageFolder::open(&tmp.0));
    assert!(e.contains("empty_class") && !e.contains("full"), "{e}");
}

// ---- Subset ---------------------------------------------------------------

/// `n` 1x1 gray images; image i has pixel i % 256 and label i % classes.
fn toy(n: usize, classes: usize) -> Arc<dyn Dataset> {
    Arc::new(
        InMemory::new(
            "toy",
            (0..classes).map(|c| format!("c{c}")).collect(),
            1,
            1,
            1,
            (0..n).map(|i| (i % 256) as u8).collect(),
            (0..n).map(|i| (i % classes) as u16).collect(),
        )
        .unwrap(),
    )
}

#[test]
fn in_memory_validates_sizes_and_labels() {
    let names = vec!["a".to_string(), "b".to_string()];
    let e = err_text(InMemory::new(
        "x",
        names.clone(),
        1,
        2,
        2,
        vec![0; 7],
        vec![0, 1],
    ));
    assert!(e.contains("8"), "{e}");
    let e = err_text(InMemory::new(
        "x",
        names.clone(),
        1,
        2,
        2,
        vec![0; 8],
        vec![0, 2],
    ));
    assert!(e.contains("label 2"), "{e}");
    assert!(InMemory::new("x", names, 1, 2, 2, vec![0; 8], vec![0, 1]).is_ok());
}

#[test]
fn subset_of_classes_relabels_in_the_given_order() {
    let parent = toy(12, 4);
    let sub = Subset::classes(parent.clone(), &[3, 1]).unwrap();
    assert_eq!(sub.classes(), &["c3".to_string(), "c1".to_string()]);
    assert_eq!(sub.indices(), &[1, 3, 5, 7, 9, 11]);
    assert_eq!(
        (0..6).map(|i| sub.label(i)).collect::<Vec<_>>(),
        [1, 0, 1, 0, 1, 0]
    );
    assert_eq!(sub.get(1).unwrap().pixels, [3]);
    assert_eq!(sub.describe(1), "toy#3");
    assert!(err_text(Subset::classes(parent.clone(), &[4])).contains("out of range"));
    assert!(err_text(Subset::classes(parent.clone(), &[1, 1])).contains("twice"));
    assert!(Subset::classes(parent, &[]).is_err());
}

#[test]
fn subset_per_class_is_deterministic_and_ordered() {
    let parent = toy(100, 4);
    let a = Subset::per_class(parent.clone(), 5, 7);
    let b = Subset::per_class(parent.clone(), 5, 7);
    let c = Subset::per_class(parent.clone(), 5, 8);
    assert_eq!(a.indices(), b.indices());
    assert_ne!(a.indices(), c.indices());
    assert_eq!(a.len(), 20);
    assert!(a.indices().windows(2).all(|w| w[0] < w[1]));
    assert_eq!(histogram(&a), [5, 5, 5, 5]);
    // Fewer than n in a class keeps them all.
    assert_eq!(Subset::per_class(parent.clone(), 30, 1).len(), 100);
}

#[test]
fn subset_of_indices_keeps_labels_and_checks_order() {
    let parent = toy(10, 3);
    let s = Subset::of_indices(parent.clone(), vec![1, 4, 9]).unwrap();
    assert_eq!(s.len(), 3);
    for (j, &i) in [1, 4, 9].iter().enumerate() {
        assert_eq!(s.label(j), parent.label(i));
        assert_eq!(s.get(j).unwrap(), parent.get(i).unwrap());
    }
    for bad in [vec![4, 1], vec![2, 2], vec![10]] {
        assert!(Subset::of_indices(parent.clone(), bad).is_err());
    }
}

#[test]
fn parse_classes_accepts_names_indices_and_ranges() {
    let names: Vec<String> = FASHION_MNIST_CLASSES
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(parse_classes("0-4", &names).unwrap(), [0, 1, 2, 3, 4]);
    assert_eq!(
        parse_classes(" sandal , 9,T-SHIRT/TOP", &names).unwrap(),
        [5, 9, 0]
    );
    assert_eq!(parse_classes("7, 2-3", &names).unwrap(), [7, 2, 3]);
    let e = err_text(parse_classes("boots", &names));
    assert!(
        e.contains("boots") && e.contains("Ankle boot") && e.contains("Trouser"),
        "{e}"
    );
    assert!(err_text(parse_classes("10", &names)).contains("out of range"));
    assert!(err_text(parse_classes("4-2", &names)).contains("empty range"));
    assert!(err_text(parse_classes("1,1", &names)).contains("twice"));
    assert!(err_text(parse_classes("1,,2", &names)).contains("empty"));
}

// ---- Transform --------------------------------------------------------------

fn image_from(c: usize, h: usize, w: usize, f: impl Fn(usize, usize, usize) -> u8) -> Image {
    let mut pixels = Vec::with_capacity(h * w * c);
    for y in 0..h {
        for x in 0..w {
            for ch in 0..c {
                pixels.push(f(y, x, ch));
            }
        }
    }
    Image {
        channels: c,
        height: h,
        width: w,
        pixels,
    }
}

fn run(t: &Transform, img: &Image, seed: u64) -> Vec<f32> {
    let mut out = vec![0f32; t.output_len(img.channels)];
    t.apply(img, &mut Rng::new(seed), &mut out).unwrap();
    out
}

fn random_image(c: usize, h: usize, w: usize, seed: u64) -> Image {
    let mut rng = Rng::new(seed);
    let mut img = image_from(c, h, w, |_, _, _| 0);
    img.pixels
        .iter_mut()
        .for_each(|p| *p = rng.below(256) as u8);
    img
}

#[test]
fn pad_crop_without_padding_or_flip_is_the_normalised_identity() {
    let img = random_image(3, 5, 5, 1);
    let (mean, std) = (vec![0.1, 0.2, 0.3], vec![0.5, 0.25, 2.0]);
    let t = Transform::pad_crop(5, 0, false, mean.clone(), std.clone());
    let out = run(&t, &img, 9);
    for c in 0..3 {
        for y in 0..5 {
            for x in 0..5 {
                let v = img.pixels[(y * 5 + x) * 3 + c] as f32 / 255.0;
                let want = (v - mean[c]) / std[c];
                assert!((out[(c * 5 + y) * 5 + x] - want).abs() < 1e-6);
            }
        }
    }
    assert_eq!(out, run(&Transform::eval(5, mean, std), &img, 0));
}

#[test]
fn flip_mirrors_rows_and_padding_shifts_in_zeros() {
    let img = random_image(1, 4, 4, 2);
    let plain = run(&Transform::eval(4, vec![0.0], vec![1.0]), &img, 0);
    let t = Transform::pad_crop(4, 0, true, vec![0.0], vec![1.0]);
    let mirrored: Vec<f32> = plain
        .chunks(4)
        .flat_map(|r| r.iter().rev().copied())
        .collect();
    let (mut saw_plain, mut saw_mirror) = (false, false);
    for seed in 0..32 {
        let out = run(&t, &img, seed);
        if out == plain {
            saw_plain = true;
        } else {
            assert_eq!(out, mirrored);
            saw_mirror = true;
        }
    }
    assert!(saw_plain && saw_mirror);

    // With padding every output is a shifted copy with zeros shifted in.
    let t = Transform::pad_crop(4, 2, false, vec![0.0], vec![1.0]);
    let mut shifted = 0;
    for seed in 0..16 {
        let out = run(&t, &img, seed);
        let found = (-2isize..=2)
            .flat_map(|dy| (-2isize..=2).map(move |dx| (dy, dx)))
            .any(|(dy, dx)| {
                (0..16).all(|p| {
                    let (y, x) = ((p / 4) as isize + dy, (p % 4) as isize + dx);
                    let want = if (0..4).contains(&y) && (0..4).contains(&x) {
                        plain[(y * 4 + x) as usize]
                    } else {
                        0.0
                    };
                    out[p] == want
                })
            });
        assert!(found, "seed {seed}: not a shifted copy");
        shifted += (out != plain) as usize;
    }
    assert!(shifted > 0);
}

#[test]
fn resize_is_bilinear_with_half_pixel_centres() {
    // Downscale by 2: each output is the mean of a 2x2 block.
    let img = image_from(1, 8, 8, |y, x, _| (y * 8 + x) as u8 * 3);
    let out = run(&Transform::eval(4, vec![0.0], vec![1.0]), &img, 0);
    for oy in 0..4 {
        for ox in 0..4 {
            let mean_px = (0..4)
                .map(|k| img.pixels[(2 * oy + k / 2) * 8 + 2 * ox + k % 2] as f32)
                .sum::<f32>()
                / 4.0;
            assert!((out[oy * 4 + ox] - mean_px / 255.0).abs() < 1e-6);
        }
    }
}

#[test]
fn resize_center_crop_on_a_known_gradient() {
    // 2x4 image with pixel 40*x. Shorter side 2 -> 4 gives 4x8; the centre 4
    // columns sample x = 0.75, 1.25, 1.75, 2.25 of the original.
    let img = image_from(1, 2, 4, |_, x, _| (40 * x) as u8);
    let t = Transform {
        augment: Augment::ResizeCenterCrop { resize: 4 },
        size: 4,
        mean: vec![0.0],
        std: vec![1.0],
    };
    let out = run(&t, &img, 0);
    for y in 0..4 {
        for (x, want) in [30.0f32, 50.0, 70.0, 90.0].iter().enumerate() {
            assert!((out[y * 4 + x] - want / 255.0).abs() < 1e-6, "{out:?}");
        }
    }
    // A crop larger than the resized image is zero-padded around it.
    let t = Transform { size: 6, ..t };
    let out = run(&t, &img, 0);
    // Rows: 4 in a 6 crop, one zero row above and below. Columns: the
    // centre 6 of 8 start at resized column 1 (x = 0.25 -> 10).
    assert!(
        out[..6].iter().chain(&out[30..]).all(|&v| v == 0.0),
        "{out:?}"
    );
    for (x, want) in [10.0f32, 30.0, 50.0, 70.0, 90.0, 110.0].iter().enumerate() {
        assert!((out[6 + x] - want / 255.0).abs() < 1e-6, "{out:?}");
    }
}

#[test]
fn random_resized_crop_stays_in_range_and_falls_back_to_a_centre_crop() {
    let img = random_image(3, 37, 23, 3);
    let t = Transform::imagenet_train(16);
    let (lo, hi) = (
        (0..3)
            .map(|c| (0.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c])
            .collect::<Vec<_>>(),
        (0..3)
            .map(|c| (1.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c])
            .collect::<Vec<_>>(),
    );
    let mut distinct = std::collections::HashSet::new();
    for seed in 0..20 {
        let out = run(&t, &img, seed);
        assert_eq!(out, run(&t, &img, seed));
        for (i, v) in out.iter().enumerate() {
            let c = i / 256;
            assert!(
                *v >= lo[c] - 1e-5 && *v <= hi[c] + 1e-5,
                "{v} outside channel {c} range"
            );
        }
        distinct.insert(out.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
    }
    assert!(distinct.len() > 15);

    // Full scale and ratio 1 on a square image: the crop is the whole image.
    let sq = random_image(1, 8, 8, 4);
    let whole = Transform {
        augment: Augment::RandomResizedCrop {
            scale: (1.0, 1.0),
            ratio: (1.0, 1.0),
            flip: false,
        },
        size: 8,
        mean: vec![0.0],
        std: vec![1.0],
    };
    assert_eq!(
        run(&whole, &sq, 5),
        run(&Transform::eval(8, vec![0.0], vec![1.0]), &sq, 0)
    );

    // Ratio 10 never fits a square: the fallback keeps the full width and a
    // centre band of round(20/10) = 2 rows (rows 9 and 10).
    let rows = image_from(1, 20, 20, |y, _, _| (10 * y) as u8);
    let band = Transform {
        augment: Augment::RandomResizedCrop {
            scale: (0.5, 0.5),
            ratio: (10.0, 10.0),
            flip: false,
        },
        ..whole
    };
    let band = Transform { size: 4, ..band };
    let out = run(&band, &rows, 6);
    assert!((out[0] - 90.0 / 255.0).abs() < 1e-6, "{out:?}");
    assert!((out[15] - 100.0 / 255.0).abs() < 1e-6, "{out:?}");
}

#[test]
fn transform_rejects_bad_settings() {
    let img = random_image(3, 4, 4, 0);
    let mut out = vec![0f32; 48];
    let e =
        err_text(Transform::eval(4, vec![0.5], vec![0.5]).apply(&img, &mut Rng::new(0), &mut out));
    assert!(e.contains("3 channels"), "{e}");
    let e = err_text(Transform::eval(4, vec![0.0; 3], vec![0.0; 3]).apply(
        &img,
        &mut Rng::new(0),
        &mut out,
    ));
    assert!(e.contains("std"), "{e}");
    let e = err_text(Transform::eval(4, vec![0.0; 3], vec![1.0; 3]).apply(
        &img,
        &mut Rng::new(0),
        &mut out[..40],
    ));
    assert!(e.contains("48"), "{e}");
}

// ---- Loader -----------------------------------------------------------------

fn synthetic(n: usize) -> Arc<dyn Dataset> {
    Arc::new(SyntheticImages::new(5, 3, 12, 0.3, 11).unwrap().with_len(n))
}

/// (batch index, dataset indices, images, labels) of each batch.
type Plain = (usize, Vec<usize>, Vec<f32>, Vec<i64>);

fn collect(loader: &Loader, epoch: usize, start: usize) -> Vec<Plain> {
    loader
        .epoch(epoch, start)
        .map(|b| {
            let b = b.unwrap();
            (
                b.index,
                b.indices,
                b.images.to_vec::<f32>().unwrap(),
                b.labels.to_vec::<i64>().unwrap(),
            )
        })
        .collect()
}

fn train_transform() -> Transform {
    Transform {
        augment: Augment::RandomResizedCrop {
            scale: (0.3, 1.0),
            ratio: (0.75, 4.0 / 3.0),
            flip: true,
        },
        size: 10,
        mean: vec![0.5; 3],
        std: vec![0.25; 3],
    }
}

#[test]
fn loader_batches_do_not_depend_on_workers_prefetch_or_resume() {
    let ds = synthetic(53);
    let opts = |workers, prefetch| LoaderOptions {
        batch: 8,
        shuffle: true,
        drop_last: false,
        workers,
        prefetch,
        seed: 99,
    };
    let inline = Loader::new(ds.clone(), train_transform(), opts(0, 0)).unwrap();
    let threaded = Loader::new(ds.clone(), train_transform(), opts(3, 2)).unwrap();
    let rendezvous = Loader::new(ds.clone(), train_transform(), opts(2, 0)).unwrap();
    assert_eq!(inline.batches_per_epoch(), 7);

    let e0 = collect(&inline, 0, 0);
    assert_eq!(e0.len(), 7);
    assert_eq!(e0, collect(&threaded, 0, 0));
    assert_eq!(e0, collect(&rendezvous, 0, 0));
    assert_eq!(&e0[4..], &collect(&threaded, 0, 4)[..]);
    assert_eq!(&e0[4..], &collect(&inline, 0, 4)[..]);
    assert!(collect(&inline, 0, 7).is_empty());

    // Every sample exactly once per epoch; labels are the dataset's.
    let mut seen: Vec<usize> = e0.iter().flat_map(|b| b.1.clone()).collect();
    assert_eq!(e0.last().unwrap().1.len(), 5);
    for (_, idx, _, labels) in &e0 {
        assert_eq!(
            labels,
            &idx.iter().map(|&i| ds.label(i) as i64).collect::<Vec<_>>()
        );
    }
    assert_ne!(seen, (0..53).collect::<Vec<_>>(), "shuffled");
    seen.sort();
    assert_eq!(seen, (0..53).collect::<Vec<_>>());

    // Another epoch: another order and other augmentations.
    let e1 = collect(&inline, 1, 0);
    assert_ne!(e0[0].1, e1[0].1);
    // A sample's augmentation depends on (seed, epoch, index) only.
    let other_seed = Loader::new(
        ds.clone(),
        train_transform(),
        LoaderOptions {
            seed: 100,
            ..opts(0, 0)
        },
    )
    .unwrap();
    assert_ne!(e0[0].2, collect(&other_seed, 0, 0)[0].2);

    // No shuffle: identity order.
    let plain = Loader::new(
        ds,
        train_transform(),
        LoaderOptions {
            shuffle: false,
            ..opts(2, 1)
        },
    )
    .unwrap();
    let order: Vec<usize> = collect(&plain, 3, 0)
        .into_iter()
        .flat_map(|b| b.1)
        .collect();
    assert_eq!(order, (0..53).collect::<Vec<_>>());
}

#[test]
fn loader_drop_last_and_bad_options() {
    let ds = synthetic(20);
    let t = Transform::eval(12, vec![0.5; 3], vec![0.5; 3]);
    let opts = LoaderOptions {
        batch: 6,
        drop_last: true,
        ..Default::default()
    };
    let loader = Loader::new(ds.clone(), t.clone(), opts.clone()).unwrap();
    assert_eq!(loader.batches_per_epoch(), 3);
    let sizes: Vec<usize> = collect(&loader, 0, 0).iter().map(|b| b.1.len()).collect();
    assert_eq!(sizes, [6, 6, 6]);
    let keep = Loader::new(
        ds.clone(),
        t.clone(),
        LoaderOptions {
            drop_last: false,
            ..opts.clone()
        },
    )
    .unwrap();
    let sizes: Vec<usize> = collect(&keep, 0, 0).iter().map(|b| b.1.len()).collect();
    assert_eq!(sizes, [6, 6, 6, 2]);

    let e = err_text(Loader::new(synthetic(0), t.clone(), opts.clone()));
    assert!(e.contains("empty"), "{e}");
    let e = err_text(Loader::new(
        ds.clone(),
        t,
        LoaderOptions {
            batch: 0,
            ..opts.clone()
        },
    ));
    assert!(e.contains("batch"), "{e}");
    let e = err_text(Loader::new(
        ds,
        Transform::eval(12, vec![0.5], vec![0.5]),
        opts,
    ));
    assert!(e.contains("3 channels"), "{e}");
}

#[test]
fn dropping_an_epoch_early_stops_the_workers() {
    let ds = synthetic(4000);
    let opts = LoaderOptions {
        batch: 4,
        workers: 4,
        prefetch: 1,
        ..Default::default()
    };
    let loader = Arc::new(Loader::new(ds, Transform::imagenet_train(12), opts).unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let l = loader.clone();
    std::thread::spawn(move || {
        let started = Instant::now();
        for _ in 0..5 {
            let mut it = l.epoch(0, 0);
            let first = it.next().unwrap().unwrap();
            assert_eq!(first.index, 0);
            drop(it);
        }
        tx.send(started.elapsed()).unwrap();
    });
    // 999 of the 1000 batches are never asked for; dropping must not build
    // them nor hang on a blocked worker.
    let took = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(took) => took,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("dropping the epoch iterator hung")
        }
        Err(e) => panic!("the consuming thread failed: {e}"),
    };
    assert!(took < Duration::from_secs(30), "{took:?}");
}

#[test]
fn synthetic_images_are_an_addressable_dataset() {
    let gen = SyntheticImages::new(4, 3, 8, 0.2, 5).unwrap().with_len(200);
    assert_eq!(gen.len(), 200);
    assert_eq!(gen.classes().len(), 4);
    let a = gen.get(17).unwrap();
    assert_eq!(
        (a.channels, a.height, a.width, a.pixels.len()),
        (3, 8, 8, 192)
    );
    assert_eq!(a, gen.get(17).unwrap());
    assert_ne!(a, gen.get(18).unwrap());
    assert!(a.pixels.iter().any(|&p| p < 100) && a.pixels.iter().any(|&p| p > 156));
    assert_eq!(histogram(&gen).iter().filter(|&&n| n > 20).count(), 4);
    assert!(gen.get(200).is_err());
    // The batch API still works alongside.
    let (x, y) = gen.batch(6, &mut Rng::new(1)).unwrap();
    assert_eq!((x.dims(), y.dims()), (&[6, 3, 8, 8][..], &[6][..]));
}

// ---- the loader's device mode -----------------------------------------------

/// `n` random 3-channel `h x w` images in memory, 4 classes.
fn random_rgb(n: usize, h: usize, w: usize) -> Arc<dyn Dataset> {
    let mut rng = Rng::new(31);
    let pixels = (0..n * h * w * 3).map(|_| rng.below(256) as u8).collect();
    let labels = (0..n).map(|i| (i % 4) as u16).collect();
    let names = (0..4).map(|c| format!("c{c}")).collect();
    Arc::new(InMemory::new("rgb", names, 3, h, w, pixels, labels).unwrap())
}

/// Every batch of epoch 1 of `ds` with `t`, pixel work as `work`: images
/// (as f64), labels and indices.
fn epoch_of(
    ds: &Arc<dyn Dataset>,
    t: &Transform,
    workers: usize,
    work: PixelWork,
) -> Vec<(Vec<f64>, Vec<i64>, Vec<usize>, engine::DType)> {
    let opts = LoaderOptions {
        batch: 5,
        workers,
        seed: 3,
        ..LoaderOptions::default()
    };
    let loader = Loader::with_pixel_work(ds.clone(), t.clone(), opts, work).unwrap();
    loader
        .epoch(1, 0)
        .map(|b| {
            let b = b.unwrap();
            let images = b.images.to_vec_f64().unwrap();
            (
                images,
                b.labels.to_vec::<i64>().unwrap(),
                b.indices,
                b.images.dtype(),
            )
        })
        .collect()
}

fn transforms(size: usize, mean: Vec<f32>, std: Vec<f32>) -> Vec<Transform> {
    let mut rrc = Transform::imagenet_train(size);
    rrc.mean = mean.clone();
    rrc.std = std.clone();
    vec![
        Transform::pad_crop(size, 3, true, mean.clone(), std.clone()),
        rrc,
        Transform::eval(size, mean, std),
    ]
}

#[test]
fn device_mode_batches_equal_the_host_loaders() {
    let cpu = PixelWork::Device {
        device: engine::Device::Cpu,
        dtype: engine::DType::F32,
    };
    let stats = (vec![0.5, 0.4, 0.3], vec![0.2, 0.25, 0.3]);
    // in memory (resident), a subset of it (offsets through the parent),
    // and generated images (uploaded per batch)
    let rgb = random_rgb(23, 13, 17);
    let sub: Arc<dyn Dataset> = Arc::new(Subset::classes(rgb.clone(), &[2, 0, 3]).unwrap());
    let gen: Arc<dyn Dataset> =
        Arc::new(SyntheticImages::new(4, 3, 12, 0.3, 5).unwrap().with_len(17));
    for ds in [rgb, sub, gen] {
        for t in transforms(11, stats.0.clone(), stats.1.clone()) {
            let host = epoch_of(&ds, &t, 0, PixelWork::Host);
            assert!(!host.is_empty());
            for workers in [0, 2] {
                assert_eq!(epoch_of(&ds, &t, workers, cpu), host, "{:?}", t.augment);
            }
        }
    }
    let opts = LoaderOptions::default();
    let gray = toy(10, 2);
    let mk = |w| {
        Loader::with_pixel_work(
            gray.clone(),
            Transform::eval(4, vec![0.5], vec![0.5]),
            opts.clone(),
            w,
        )
    };
    assert!(mk(cpu).unwrap().resident());
    assert!(!mk(PixelWork::Host).unwrap().resident());
}

#[test]
fn device_mode_rounds_to_its_dtype_and_refuses_the_centre_crop() {
    let ds = random_rgb(12, 9, 9);
    let t = Transform::pad_crop(8, 2, true, vec![0.5; 3], vec![0.25; 3]);
    let f32s = epoch_of(&ds, &t, 0, PixelWork::Host);
    for dt in [engine::DType::BF16, engine::DType::F16] {
        let work = PixelWork::Device {
            device: engine::Device::Cpu,
            dtype: dt,
        };
        let low = epoch_of(&ds, &t, 0, work);
        for (l, h) in low.iter().zip(&f32s) {
            assert_eq!(l.3, dt);
            let rounded = engine::Tensor::from_vec(h.0.clone(), &[h.0.len()])
                .unwrap()
                .to_dtype(dt)
                .unwrap()
                .to_vec_f64()
                .unwrap();
            assert_eq!(l.0, rounded);
            assert_eq!((&l.1, &l.2), (&h.1, &h.2));
        }
    }
    let work = PixelWork::Device {
        device: engine::Device::Cpu,
        dtype: engine::DType::F32,
    };
    let opts = LoaderOptions::default();
    let e = err_text(Loader::with_pixel_work(
        ds.clone(),
        Transform::imagenet_eval(8),
        opts.clone(),
        work,
    ));
    assert!(e.contains("centre crop"), "{e}");
    let ints = PixelWork::Device {
        device: engine::Device::Cpu,
        dtype: engine::DType::I64,
    };
    assert!(Loader::with_pixel_work(ds, t, opts, ints).is_err());
}
