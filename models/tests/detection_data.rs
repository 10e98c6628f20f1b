//! The built-in detection benchmark (Fashion-MNIST items on canvases) and the
//! detection input pipeline: COCO files read back, torchvision's resize
//! rule, flips, padding, the loader's determinism and bad-input behaviour.
//!
//! Tests FAIL when Fashion-MNIST is missing: run scripts/fetch-data.sh first.

use engine::Rng;
use models::data::{
    default_fashion_mnist_dir, fashion_mnist, Image, InMemory, LoaderOptions, Split,
    FASHION_MNIST_CLASSES,
};
use models::detection::data::*;
use models::detection::synth::{generate, SynthOptions, SynthSummary};
use models::detection::{CocoGt, Rle, Segmentation};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use testutil::{err_text, TempDir};

/// A fresh temporary folder `slmlp-detdata-<tag>-<pid>`, removed on drop.
fn temp_dir(tag: &str) -> TempDir {
    TempDir::new(&format!("detdata-{tag}"))
}

fn fashion() -> &'static InMemory {
    static SOURCE: OnceLock<InMemory> = OnceLock::new();
    SOURCE.get_or_init(|| {
        let dir = default_fashion_mnist_dir();
        testutil::assert_fashion_mnist_present(
            &dir,
            &["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"],
        );
        fashion_mnist(&dir, Split::Test).unwrap()
    })
}

fn small_opts(seed: u64) -> SynthOptions {
    SynthOptions {
        images: 12,
        seed,
        ..SynthOptions::default()
    }
}

fn make_bench(dir: &Path, seed: u64) -> SynthSummary {
    generate(fashion(), &small_opts(seed), dir, "train").unwrap()
}

fn mask_of(gt: &CocoGt, a: usize) -> Rle {
    let ann = &gt.annotations[a];
    let im = gt.image(ann.image_id).unwrap();
    match ann.segmentation.as_ref().unwrap() {
        Segmentation::Rle(r) => {
            assert_eq!((r.h, r.w), (im.height, im.width));
            r.clone()
        }
        other => panic!("the benchmark writes RLEs, got {other:?}"),
    }
}

/// `[x1, y1, x2, y2]` of the pixels set in a row-major mask (x2, y2
/// exclusive), or None when empty.
fn mask_box(mask: &[u8], h: usize, w: usize) -> Option<[f32; 4]> {
    let (mut x1, mut y1, mut x2, mut y2) = (w, h, 0, 0);
    for y in 0..h {
        for x in 0..w {
            if mask[y * w + x] != 0 {
                (x1, y1, x2, y2) = (x1.min(x), y1.min(y), x2.max(x + 1), y2.max(y + 1));
            }
        }
    }
    (x2 > 0).then_some([x1 as f32, y1 as f32, x2 as f32, y2 as f32])
}

// ---- the benchmark -------------------------------------------------------

#[test]
fn benchmark_masks_are_nonempty_inside_their_boxes_and_disjoint() {
    let tmp = temp_dir("bench");
    let s = make_bench(&tmp.0, 7);
    assert_eq!(s.images, 12);
    assert_eq!(s.annotations, tmp.0.join("train/annotations.json"));
    let gt = CocoGt::from_file(&s.annotations).unwrap();
    assert_eq!(gt.images.len(), 12);
    assert_eq!(gt.annotations.len(), s.instances);
    assert_eq!(s.per_class.iter().sum::<usize>(), s.instances);
    let names: Vec<&str> = gt.categories.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, FASHION_MNIST_CLASSES);
    assert!(gt
        .categories
        .iter()
        .enumerate()
        .all(|(i, c)| c.id == i as i64 + 1));

    let mut brighter = 0;
    for (i, im) in gt.images.iter().enumerate() {
        assert_eq!(im.id, i as i64 + 1);
        assert_eq!(im.file_name, format!("{i:06}.png"));
        assert_eq!((im.height, im.width), (128, 128));
        let png = image::open(s.image_dir.join(&im.file_name)).unwrap();
        assert_eq!(png.color(), image::ColorType::L8, "1-channel gray PNG");
        let px = png.into_luma8().into_raw();

        let anns: Vec<usize> = (0..gt.annotations.len())
            .filter(|&a| gt.annotations[a].image_id == im.id)
            .collect();
        assert!(
            (1..=4).contains(&anns.len()),
            "image {i}: {} instances",
            anns.len()
        );
        let mut covered = vec![0u8; 128 * 128];
        let mut masks = Vec::new();
        for &a in &anns {
            let ann = &gt.annotations[a];
            assert!(!ann.iscrowd);
            assert!((1..=10).contains(&ann.category_id));
            let rle = mask_of(&gt, a);
            let mask = rle.decode();
            let n = mask.iter().filter(|&&v| v != 0).count();
            assert!(n >= 16, "annotation {}: {n} visible pixels", ann.id);
            assert_eq!(ann.area, n as f64);
            assert_eq!(ann.bbox, rle.to_bbox());
            let [bx, by, bw, bh] = ann.bbox;
            let b = mask_box(&mask, 128, 128).unwrap();
            assert_eq!(
                b,
                [bx as f32, by as f32, (bx + bw) as f32, (by + bh) as f32]
            );
            for (c, &m) in covered.iter_mut().zip(&mask) {
                assert!(!(*c != 0 && m != 0), "image {i}: masks overlap");
                *c |= m;
            }
            masks.push((mask, n));
        }
        // The masks mark the items' pixels: brighter on average than the
        // faint background around them.
        let mean_where = |keep: &dyn Fn(usize) -> bool| {
            let (sum, n) = (0..px.len())
                .filter(|&p| keep(p))
                .fold((0.0, 0usize), |(s, n), p| (s + px[p] as f64, n + 1));
            sum / n.max(1) as f64
        };
        let background = mean_where(&|p| covered[p] == 0);
        assert!(background < 40.0, "image {i}: background mean {background}");
        for (mask, _) in &masks {
            let inside = mean_where(&|p| mask[p] != 0);
            brighter += (inside > background + 20.0) as usize;
        }
    }
    assert_eq!(
        brighter, s.instances,
        "every instance stands out from the background"
    );
}

#[test]
fn benchmark_is_deterministic_per_seed() {
    let (a, b, c) = (temp_dir("seed-a"), temp_dir("seed-b"), temp_dir("seed-c"));
    let (sa, sb, sc) = (
        make_bench(&a.0, 3),
        make_bench(&b.0, 3),
        make_bench(&c.0, 4),
    );
    let read = |p: &Path| std::fs::read(p).unwrap();
    assert_eq!(read(&sa.annotations), read(&sb.annotations));
    for i in 0..12 {
        let f = format!("{i:06}.png");
        assert_eq!(
            read(&sa.image_dir.join(&f)),
            read(&sb.image_dir.join(&f)),
            "{f}"
        );
    }
    assert_ne!(read(&sa.annotations), read(&sc.annotations));
    assert_ne!(
        read(&sa.image_dir.join("000000.png")),
        read(&sc.image_dir.join("000000.png"))
    );
    assert_eq!(
        sa,
        SynthSummary {
            image_dir: sa.image_dir.clone(),
            annotations: sa.annotations.clone(),
            ..sb
        }
    );
}

#[test]
fn benchmark_options_are_checked_and_classes_restrict_categories() {
    let tmp = temp_dir("classes");
    let opts = SynthOptions {
        classes: Some(vec![1, 7]),
        max_objects: 2,
        ..small_opts(5)
    };
    let s = generate(fashion(), &opts, &tmp.0, "val").unwrap();
    let gt = CocoGt::from_file(&s.annotations).unwrap();
    assert!(gt
        .annotations
        .iter()
        .all(|a| a.category_id == 2 || a.category_id == 8));
    assert_eq!(
        s.per_class
            .iter()
            .enumerate()
            .filter(|&(c, &n)| n > 0 && c != 1 && c != 7)
            .count(),
        0
    );
    let per_image = |id| gt.annotations.iter().filter(|a| a.image_id == id).count();
    assert!(gt
        .images
        .iter()
        .all(|im| (1..=2).contains(&per_image(im.id))));

    let e = err_text(generate(
        fashion(),
        &SynthOptions {
            classes: Some(vec![10]),
            ..small_opts(5)
        },
        &tmp.0,
        "x",
    ));
    assert!(e.contains("class 10"), "{e}");
    let e = err_text(generate(
        fashion(),
        &SynthOptions {
            scale: (20.0, 200.0),
            ..small_opts(5)
        },
        &tmp.0,
        "x",
    ));
    assert!(e.contains("scale"), "{e}");
    let e = err_text(generate(
        fashion(),
        &SynthOptions {
            max_overlap: 1.5,
            ..small_opts(5)
        },
        &tmp.0,
        "x",
    ));
    assert!(e.contains("max_overlap"), "{e}");
    let e = err_text(generate(fashion(), &small_opts(5), &tmp.0, "../up"));
    assert!(e.contains("split name"), "{e}");
}

// ---- the dataset ---------------------------------------------------------

#[test]
fn dataset_reads_the_benchmark_back() {
    let tmp = temp_dir("dataset");
    let s = make_bench(&tmp.0, 11);
    let gt = CocoGt::from_file(&s.annotations).unwrap();
    let ds = DetectionDataset::open(&s.annotations, &s.image_dir, 1).unwrap();
    assert_eq!((ds.len(), ds.num_classes(), ds.channels()), (12, 10, 1));
    assert_eq!((ds.crowd_skipped(), ds.degenerate_dropped()), (0, 0));
    assert_eq!(ds.category_id(3), Some(3));
    assert_eq!(ds.label_of(10), Some(10));
    assert_eq!(ds.category_id(0), None);
    let rgb = DetectionDataset::open(&s.annotations, &s.image_dir, 3).unwrap();
    let mut total = 0;
    for i in 0..ds.len() {
        let sample = ds.get(i).unwrap();
        let t = &sample.target;
        assert_eq!(t.image_id, i as u64 + 1);
        assert_eq!((t.orig_size, t.size), ((128, 128), (128, 128)));
        assert_eq!(
            (
                sample.image.height,
                sample.image.width,
                sample.image.channels
            ),
            (128, 128, 1)
        );
        let anns: Vec<usize> = (0..gt.annotations.len())
            .filter(|&a| gt.annotations[a].image_id == t.image_id as i64)
            .collect();
        assert_eq!(t.boxes.len(), anns.len());
        assert_eq!(t.labels.len(), anns.len());
        for (k, &a) in anns.iter().enumerate() {
            let ann = &gt.annotations[a];
            let [x, y, w, h] = ann.bbox;
            assert_eq!(
                t.boxes[k],
                [x as f32, y as f32, (x + w) as f32, (y + h) as f32]
            );
            assert_eq!(t.labels[k], ann.category_id);
            assert_eq!(t.masks[k], mask_of(&gt, a).decode());
        }
        total += anns.len();
        let color = rgb.get(i).unwrap().image;
        assert_eq!(color.channels, 3);
        assert!(color
            .pixels
            .chunks(3)
            .zip(&sample.image.pixels)
            .all(|(c, &g)| c == [g, g, g]));
    }
    assert_eq!(total, s.instances);
}

// ---- the transform -------------------------------------------------------

/// (h, w, min_size, max_size, out_h, out_w) from torchvision 0.x's
/// `_resize_image_and_masks`, computed with
/// `/root/torchvenv/bin/python -c "import torch; from torchvision.models.detection.transform import _resize_image_and_masks as r; print(r(torch.zeros(1,h,w), mn, mx)[0].shape)"`
/// for each case.
const TORCHVISION_SIZES: [(usize, usize, usize, usize, usize, usize); 14] = [
    (480, 640, 800, 1333, 800, 1066),
    (427, 640, 800, 1333, 800, 1199),
    (640, 427, 800, 1333, 1199, 800),
    (333, 1000, 800, 1333, 443, 1333),
    (1000, 333, 800, 1333, 1333, 443),
    (128, 128, 800, 1333, 800, 800),
    (128, 128, 256, 400, 256, 256),
    (97, 131, 200, 333, 199, 270),
    (500, 375, 600, 1000, 800, 600),
    (612, 612, 800, 1333, 800, 800),
    (183, 275, 800, 1333, 800, 1202),
    (300, 2000, 800, 1333, 199, 1333),
    (81, 79, 64, 100, 65, 64),
    (1, 3, 800, 1333, 444, 1333),
];

#[test]
fn resize_size_matches_torchvision() {
    for (h, w, mn, mx, oh, ow) in TORCHVISION_SIZES {
        assert_eq!(
            resized_size(h, w, mn, mx),
            (oh, ow),
            "{h}x{w} min {mn} max {mx}"
        );
        let t = DetTransform {
            min_size: mn,
            max_size: mx,
            ..DetTransform::mask_rcnn(1, false)
        };
        assert_eq!(t.output_size(h, w), (oh, ow));
    }
}

#[test]
fn resampling_matches_torchvision() {
    // torchvision `_resize_image_and_masks(img, 4, 100, {"masks": m})` on a
    // 3x5 image `((i*37+11) % 256) / 255` and mask `(i*7) % 3 == 0`
    // (i = row-major index), printed with 6 decimals.
    let (h, w) = (3, 5);
    let px: Vec<u8> = (0..h * w).map(|i| ((i * 37 + 11) % 256) as u8).collect();
    let mask: Vec<u8> = (0..h * w).map(|i| ((i * 7) % 3 == 0) as u8).collect();
    let want_img = [
        0.043137, 0.151961, 0.272876, 0.393791, 0.514706, 0.623529, 0.496569, 0.605392, 0.360294,
        0.219771, 0.340686, 0.44951, 0.664216, 0.773039, 0.527941, 0.387418, 0.414216, 0.240686,
        0.490196, 0.59902, 0.719935, 0.84085, 0.710784, 0.066667,
    ];
    let want_mask = [
        1, 1, 0, 0, 1, 0, 1, 1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 1, 0, 0,
    ];
    let t = DetTransform {
        min_size: 4,
        max_size: 100,
        mean: vec![0.0],
        std: vec![1.0],
        flip_prob: 0.0,
        size_divisible: 32,
    };
    let sample = DetSample {
        image: Image {
            channels: 1,
            height: h,
            width: w,
            pixels: px,
        },
        target: DetTarget {
            boxes: vec![[0.0, 0.0, 5.0, 3.0]],
            labels: vec![1],
            masks: vec![mask],
            image_id: 1,
            orig_size: (h, w),
            size: (h, w),
        },
    };
    let (img, target) = t.apply(sample, &mut Rng::new(0)).unwrap();
    assert_eq!(target.size, (4, 6));
    assert_eq!(img.len(), 24);
    for (k, (&g, &e)) in img.iter().zip(&want_img).enumerate() {
        assert!((g - e).abs() < 2e-6, "pixel {k}: {g} vs torchvision {e}");
    }
    assert_eq!(target.masks[0], want_mask);
    // resize_boxes: ratios 6/5 and 4/3 in f32.
    assert_eq!(
        target.boxes[0],
        [0.0, 0.0, 5.0 * (6.0f32 / 5.0), 3.0 * (4.0f32 / 3.0)]
    );
}

#[test]
fn flip_maps_boxes_and_masks_consistently() {
    let tmp = temp_dir("flip");
    let s = make_bench(&tmp.0, 13);
    let ds = DetectionDataset::open(&s.annotations, &s.image_dir, 1).unwrap();
    for (min_size, tol) in [(128, 1.0f32), (200, 1.0)] {
        let plain = DetTransform {
            min_size,
            flip_prob: 0.0,
            ..DetTransform::mask_rcnn(1, true)
        };
        let flip = DetTransform {
            flip_prob: 1.0,
            ..plain.clone()
        };
        for i in 0..ds.len() {
            let (a, ta) = plain.apply(ds.get(i).unwrap(), &mut Rng::new(1)).unwrap();
            let (b, tb) = flip.apply(ds.get(i).unwrap(), &mut Rng::new(1)).unwrap();
            let (h, w) = ta.size;
            assert_eq!((h, w), (min_size, min_size));
            assert_eq!(tb.size, ta.size);
            // Image mirrored; mirrored sampling positions round differently in
            // f32, hence the tolerance (values are in std units).
            for y in 0..h {
                for x in 0..w {
                    assert!(
                        (a[y * w + x] - b[y * w + w - 1 - x]).abs() < 1e-4,
                        "min {min_size} image {i} at ({y}, {x}): {} vs {}",
                        a[y * w + x],
                        b[y * w + w - 1 - x]
                    );
                }
            }
            for k in 0..ta.boxes.len() {
                let [x1, y1, x2, y2] = ta.boxes[k];
                let wf = w as f32;
                assert_eq!(tb.boxes[k], [wf - x2, y1, wf - x1, y2]);
                let mirrored: Vec<u8> = ta.masks[k]
                    .chunks(w)
                    .flat_map(|r| r.iter().rev().copied())
                    .collect();
                if min_size == 128 {
                    assert_eq!(tb.masks[k], mirrored);
                } else {
                    // Nearest sampling is not mirror-symmetric: flipping
                    // before resizing may move a mask edge by one column.
                    for y in 0..h {
                        for x in 0..w {
                            let near = (x.saturating_sub(1)..=(x + 1).min(w - 1))
                                .any(|xx| mirrored[y * w + xx] == tb.masks[k][y * w + x]);
                            assert!(near, "image {i} mask {k} at ({y}, {x})");
                        }
                    }
                }
                let mb = mask_box(&tb.masks[k], h, w).unwrap();
                for j in 0..4 {
                    assert!(
                        (mb[j] - tb.boxes[k][j]).abs() <= tol,
                        "image {i} box {k}: mask box {mb:?} vs box {:?}",
                        tb.boxes[k]
                    );
                }
            }
        }
    }
}

// ---- batching and the loader ---------------------------------------------

#[test]
fn batches_pad_to_multiples_of_32() {
    let tmp = temp_dir("pad");
    let s = make_bench(&tmp.0, 17);
    let ds = DetectionDataset::open(&s.annotations, &s.image_dir, 3).unwrap();
    let t = |min_size, max_size| DetTransform {
        min_size,
        max_size,
        ..DetTransform::mask_rcnn(3, false)
    };
    let items = vec![
        t(100, 1333)
            .apply(ds.get(0).unwrap(), &mut Rng::new(0))
            .unwrap(),
        t(65, 1333)
            .apply(ds.get(1).unwrap(), &mut Rng::new(0))
            .unwrap(),
    ];
    let (batch, sizes) = pad_batch(&items, 3, 32).unwrap();
    assert_eq!(sizes, vec![(100, 100), (65, 65)]);
    assert_eq!(batch.dims(), &[2, 3, 128, 128]);
    let v = batch.to_vec::<f32>().unwrap();
    let at = |b: usize, c: usize, y: usize, x: usize| v[((b * 3 + c) * 128 + y) * 128 + x];
    for c in 0..3 {
        for y in 0..128 {
            for x in 0..128 {
                for (b, n) in [(0, 100), (1, 65)] {
                    let want = if y < n && x < n {
                        items[b].0[(c * n + y) * n + x]
                    } else {
                        0.0
                    };
                    assert_eq!(at(b, c, y, x), want);
                }
            }
        }
    }
    let (one, _) = pad_batch(&items[1..], 3, 32).unwrap();
    assert_eq!(one.dims(), &[1, 3, 96, 96]);
    let (odd, _) = pad_batch(&items, 3, 7).unwrap();
    assert_eq!(odd.dims(), &[2, 3, 105, 105]);
    assert!(err_text(pad_batch(&items, 1, 32)).contains("image 0"));

    let loader = DetectionLoader::new(
        Arc::new(ds),
        t(100, 1333),
        LoaderOptions {
            batch: 5,
            shuffle: true,
            seed: 1,
            ..LoaderOptions::default()
        },
    )
    .unwrap();
    let batches: Vec<_> = loader.epoch(0, 0).map(|b| b.unwrap()).collect();
    assert_eq!(batches.len(), 3);
    for b in &batches {
        assert_eq!(b.images.dims(), &[b.indices.len(), 3, 128, 128]);
        assert!(b.image_sizes.iter().all(|&s| s == (100, 100)));
        assert!(b
            .targets
            .iter()
            .all(|t| t.size == (100, 100) && t.masks.iter().all(|m| m.len() == 100 * 100)));
    }
}

fn batch_fingerprint(b: &DetBatch) -> (Vec<usize>, Vec<f32>, Vec<DetTarget>) {
    (
        b.indices.clone(),
        b.images.to_vec::<f32>().unwrap(),
        b.targets.clone(),
    )
}

#[test]
fn loader_is_deterministic_whatever_the_workers() {
    let tmp = temp_dir("loader");
    let s = make_bench(&tmp.0, 19);
    let ds = Arc::new(DetectionDataset::open(&s.annotations, &s.image_dir, 1).unwrap());
    let t = DetTransform {
        min_size: 96,
        ..DetTransform::mask_rcnn(1, true)
    };
    let run = |workers, epoch, start| -> Vec<_> {
        let opts = LoaderOptions {
            batch: 4,
            workers,
            prefetch: 2,
            seed: 9,
            ..LoaderOptions::default()
        };
        let loader = DetectionLoader::new(ds.clone(), t.clone(), opts).unwrap();
        loader
            .epoch(epoch, start)
            .map(|b| batch_fingerprint(&b.unwrap()))
            .collect()
    };
    let inline = run(0, 0, 0);
    assert_eq!(inline.len(), 3);
    assert_eq!(run(2, 0, 0), inline);
    assert_eq!(run(3, 0, 1), inline[1..]);
    let mut seen: Vec<usize> = inline.iter().flat_map(|b| b.0.clone()).collect();
    seen.sort();
    assert_eq!(seen, (0..12).collect::<Vec<_>>());
    let other = run(2, 1, 0);
    assert_ne!(
        other.iter().map(|b| b.0.clone()).collect::<Vec<_>>(),
        inline.iter().map(|b| b.0.clone()).collect::<Vec<_>>()
    );
    // Flips happen (p = 0.5 over 12 images): some boxes differ from the
    // unflipped ones at the same size.
    let unflipped = DetTransform {
        flip_prob: 0.0,
        ..t.clone()
    };
    let flipped = inline
        .iter()
        .flat_map(|b| b.0.iter().zip(&b.2))
        .filter(|&(&i, tgt)| {
            unflipped
                .apply(ds.get(i).unwrap(), &mut Rng::new(0))
                .unwrap()
                .1
                .boxes
                != tgt.boxes
        })
        .count();
    assert!((1..12).contains(&flipped), "{flipped} of 12 images flipped");
}

#[test]
fn corrupt_png_is_skipped_and_counted() {
    let tmp = temp_dir("corrupt");
    let s = make_bench(&tmp.0, 23);
    let bad = s.image_dir.join("000003.png");
    let mut bytes = std::fs::read(&bad).unwrap();
    bytes.truncate(40);
    std::fs::write(&bad, bytes).unwrap();
    let ds = Arc::new(DetectionDataset::open(&s.annotations, &s.image_dir, 1).unwrap());
    let e = err_text(ds.get(3));
    assert!(e.contains("000003.png"), "{e}");
    let loader = DetectionLoader::new(
        ds,
        DetTransform {
            min_size: 64,
            ..DetTransform::mask_rcnn(1, false)
        },
        LoaderOptions {
            batch: 4,
            workers: 2,
            shuffle: false,
            ..LoaderOptions::default()
        },
    )
    .unwrap();
    let mut indices = Vec::new();
    for b in loader.epoch(0, 0) {
        let b = b.unwrap();
        assert_eq!(b.targets.len(), b.indices.len());
        assert_eq!(b.images.dims()[0], b.indices.len());
        indices.extend(b.indices);
    }
    assert_eq!(indices, (0..12).filter(|&i| i != 3).collect::<Vec<_>>());
    assert_eq!(loader.skipped(), 1);
    // Counted once even when met again.
    loader.epoch(1, 0).for_each(|b| drop(b.unwrap()));
    assert_eq!(loader.skipped(), 1);
}

// ---- malformed annotations -----------------------------------------------

/// A 6x8 gray PNG per image and an annotations file from `doc`.
fn write_set(dir: &Path, doc: &Value) -> PathBuf {
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    for name in ["a.png", "b.png"] {
        image::GrayImage::from_fn(8, 6, |x, y| image::Luma([(x * 30 + y) as u8]))
            .save(images.join(name))
            .unwrap();
    }
    let path = dir.join("ann.json");
    std::fs::write(&path, doc.to_string()).unwrap();
    path
}

fn good_doc() -> Value {
    json!({
        "images": [
            {"id": 1, "file_name": "a.png", "height": 6, "width": 8},
            {"id": 2, "file_name": "b.png", "height": 6, "width": 8}
        ],
        "categories": [{"id": 40, "name": "cat"}, {"id": 7, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 40, "bbox": [1, 1, 3, 2], "area": 6, "iscrowd": 0,
             "segmentation": [[1, 1, 4, 1, 4, 3, 1, 3]]},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [5, 0, 3, 6], "area": 18, "iscrowd": 1,
             "segmentation": {"size": [6, 8], "counts": [30, 18]}},
            {"id": 3, "image_id": 2, "category_id": 7, "bbox": [2, 2, 0.5, 3], "area": 1, "iscrowd": 0,
             "segmentation": [[2, 2, 2.5, 2, 2.5, 5, 2, 5]]},
            {"id": 4, "image_id": 2, "category_id": 7, "bbox": [6, 4, 5, 5], "area": 4, "iscrowd": 0,
             "segmentation": {"size": [6, 8], "counts": [40, 2, 4, 2]}}
        ]
    })
}

#[test]
fn crowd_and_degenerate_annotations_are_left_out_and_counted() {
    let tmp = temp_dir("counts");
    let path = write_set(&tmp.0, &good_doc());
    let mut ds = DetectionDataset::open(&path, &tmp.0.join("images"), 1).unwrap();
    assert_eq!((ds.crowd_skipped(), ds.degenerate_dropped()), (1, 1));
    assert_eq!(ds.num_classes(), 2);
    // Categories sorted by id: 7 -> 1, 40 -> 2.
    assert_eq!((ds.label_of(7), ds.label_of(40)), (Some(1), Some(2)));
    assert_eq!(ds.category_names(), ["dog", "cat"]);
    let a = ds.get(0).unwrap().target;
    assert_eq!(a.boxes, vec![[1.0, 1.0, 4.0, 3.0]]);
    assert_eq!(a.labels, vec![2]);
    assert_eq!(a.masks[0].iter().filter(|&&v| v != 0).count(), 6);
    let b = ds.get(1).unwrap().target;
    // Box [6, 4, 5, 5] clamped to the 8x6 image.
    assert_eq!(b.boxes, vec![[6.0, 4.0, 8.0, 6.0]]);
    assert_eq!(b.labels, vec![1]);
    assert_eq!(ds.retain_annotated(), 0);
}

#[test]
fn malformed_annotations_give_errors_naming_the_field() {
    let tmp = temp_dir("malformed");
    let images = tmp.0.join("images");
    let open_with = |edit: &dyn Fn(&mut Value), channels: usize| -> String {
        let mut doc = good_doc();
        edit(&mut doc);
        let path = write_set(&tmp.0, &doc);
        err_text(DetectionDataset::open(&path, &images, channels))
    };
    let e = open_with(
        &|d| drop(d["images"][1].as_object_mut().unwrap().remove("file_name")),
        1,
    );
    assert!(
        e.contains("images[1]") && e.contains("\"file_name\""),
        "{e}"
    );
    let e = open_with(&|d| d["images"][0]["file_name"] = json!(5), 1);
    assert!(
        e.contains("images[0]") && e.contains("\"file_name\""),
        "{e}"
    );
    let e = open_with(
        &|d| {
            drop(
                d["annotations"][3]
                    .as_object_mut()
                    .unwrap()
                    .remove("segmentation"),
            )
        },
        1,
    );
    assert!(
        e.contains("annotations[3]") && e.contains("\"segmentation\""),
        "{e}"
    );
    let e = open_with(
        &|d| d["annotations"][3]["segmentation"]["size"] = json!([6, 9]),
        1,
    );
    assert!(
        e.contains("annotations[3]") && e.contains("\"segmentation\""),
        "{e}"
    );
    let e = open_with(&|d| d["annotations"][0]["bbox"] = json!([1, 2, 3]), 1);
    assert!(
        e.contains("annotations[0]") && e.contains("\"bbox\""),
        "{e}"
    );
    let e = open_with(&|d| d["annotations"][0]["category_id"] = json!(3), 1);
    assert!(
        e.contains("annotations[0]") && e.contains("\"category_id\""),
        "{e}"
    );
    let e = open_with(&|_| {}, 2);
    assert!(e.contains("channels"), "{e}");

    // A polygon too short to rasterise is left out when the dataset is
    // opened (with a warning), as segm evaluation leaves it out: image 0
    // keeps its other instances (none: the other one is a crowd).
    let mut doc = good_doc();
    doc["annotations"][0]["segmentation"] = json!([[1, 1, 4]]);
    let path = write_set(&tmp.0, &doc);
    let ds = DetectionDataset::open(&path, &images, 1).unwrap();
    assert!(ds.get(0).unwrap().target.boxes.is_empty());
    // An image whose size disagrees with the JSON names the file.
    let mut doc = good_doc();
    doc["images"][0]["height"] = json!(7);
    let path = write_set(&tmp.0, &doc);
    let ds = DetectionDataset::open(&path, &images, 1).unwrap();
    let e = err_text(ds.get(0));
    assert!(e.contains("a.png") && e.contains("6x8"), "{e}");
    // A missing file names it.
    let ds = DetectionDataset::open(&path, &tmp.0.join("nowhere"), 1).unwrap();
    assert!(err_text(ds.get(0)).contains("a.png"));
}
