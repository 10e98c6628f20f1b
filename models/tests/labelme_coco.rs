//! The COCO ground-truth reader against a real COCO instances file: the
//! sample `examples/instance_segmentation/data_dataset_coco/` of the PyPI
//! sdist labelme 6.3.1 (3 PASCAL VOC photos, 12 polygon instances, made by
//! labelme's labelme2coco).
//!
//! The tests FAIL when the files are missing: run scripts/fetch-data.sh first
//! (or point SLMLP_LABELME_COCO at a copy of the folder).

use models::detection::*;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where scripts/fetch-data.sh puts the sample: `$SLMLP_LABELME_COCO`, else
/// `<repo>/.cache/data/labelme-coco`.
fn default_labelme_coco_dir() -> PathBuf {
    match std::env::var_os("SLMLP_LABELME_COCO") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/data/labelme-coco"),
    }
}

fn real_dir() -> PathBuf {
    require_sample(default_labelme_coco_dir())
}

/// `dir`, or a panic naming scripts/fetch-data.sh when the sample is not there.
fn require_sample(dir: PathBuf) -> PathBuf {
    assert!(
        dir.join("annotations.json").is_file(),
        "the labelme COCO sample is not in {} (no annotations.json): run scripts/fetch-data.sh \
         (or set SLMLP_LABELME_COCO)",
        dir.display()
    );
    dir
}

/// `file_name` of every image by id, read straight from the JSON because
/// [`CocoImage`] does not keep it.
fn file_names(path: &Path) -> HashMap<i64, String> {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["images"]
        .as_array()
        .expect("images is a list")
        .iter()
        .map(|im| {
            let id = im["id"].as_i64().expect("images[].id");
            let name = im["file_name"].as_str().expect("images[].file_name");
            (id, name.to_string())
        })
        .collect()
}

const VOC_NAMES: [&str; 21] = [
    "_background_",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "potted plant",
    "sheep",
    "sofa",
    "train",
    "tv/monitor",
];

#[test]
fn annotations_parse_and_every_image_decodes_to_its_size() {
    let dir = real_dir();
    let json = dir.join("annotations.json");
    let gt = CocoGt::from_file(&json).unwrap();

    assert_eq!(gt.images.len(), 3);
    assert_eq!(gt.annotations.len(), 12);
    let names: Vec<&str> = gt.categories.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, VOC_NAMES);
    let ids: Vec<i64> = gt.categories.iter().map(|c| c.id).collect();
    assert_eq!(ids, (0..21).collect::<Vec<i64>>());

    // Instances per image and per category, as labelme wrote them.
    let per_image: Vec<usize> = gt
        .images
        .iter()
        .map(|im| {
            gt.annotations
                .iter()
                .filter(|a| a.image_id == im.id)
                .count()
        })
        .collect();
    assert_eq!(per_image, [3, 3, 6]);
    let mut per_cat: Vec<(&str, usize)> = gt
        .categories
        .iter()
        .map(|c| {
            let n = gt
                .annotations
                .iter()
                .filter(|a| a.category_id == c.id)
                .count();
            (c.name.as_str(), n)
        })
        .filter(|&(_, n)| n > 0)
        .collect();
    per_cat.sort();
    assert_eq!(
        per_cat,
        [
            ("bottle", 1),
            ("bus", 2),
            ("car", 1),
            ("chair", 1),
            ("person", 6),
            ("sofa", 1)
        ]
    );
    assert!(gt.annotations.iter().all(|a| !a.iscrowd));

    let names = file_names(&json);
    let mut seen: Vec<&str> = names.values().map(String::as_str).collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            "JPEGImages/2011_000003.jpg",
            "JPEGImages/2011_000006.jpg",
            "JPEGImages/2011_000025.jpg"
        ]
    );
    for im in &gt.images {
        let path = dir.join(&names[&im.id]);
        assert!(
            path.is_file(),
            "image {} missing: {}",
            im.id,
            path.display()
        );
        let img = image::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            (img.width(), img.height()),
            (im.width, im.height),
            "{}: decoded size vs the JSON's width/height",
            path.display()
        );
    }
}

/// Whether `(px, py)` lies inside polygon `xy` (`[x0, y0, x1, y1, ...]`) by
/// the even-odd rule: the number of edges a ray towards +x crosses, with
/// each edge half-open in y so a vertex on the ray is counted once.
fn inside_even_odd(xy: &[f64], px: f64, py: f64) -> bool {
    let n = xy.len() / 2;
    let mut inside = false;
    let mut j = n - 1;
    for i in 0..n {
        let (xi, yi, xj, yj) = (xy[2 * i], xy[2 * i + 1], xy[2 * j], xy[2 * j + 1]);
        if (yi > py) != (yj > py) && px < xi + (py - yi) * (xj - xi) / (yj - yi) {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// Row-major `h x w` mask: pixel `(x, y)` is set when its centre
/// `(x + 0.5, y + 0.5)` is inside any of the polygons (labelme unites the
/// parts of one instance, each part filled on its own).
fn rasterise(parts: &[Vec<f64>], h: u32, w: u32) -> Vec<u8> {
    let (hu, wu) = (h as usize, w as usize);
    let mut mask = vec![0u8; hu * wu];
    for p in parts {
        let xs = p.iter().step_by(2);
        let ys = p.iter().skip(1).step_by(2);
        let x0 = xs
            .clone()
            .fold(f64::INFINITY, |a, &b| a.min(b))
            .floor()
            .max(0.0) as usize;
        let x1 = (xs.fold(f64::NEG_INFINITY, |a, &b| a.max(b)).ceil() as usize).min(wu);
        let y0 = ys
            .clone()
            .fold(f64::INFINITY, |a, &b| a.min(b))
            .floor()
            .max(0.0) as usize;
        let y1 = (ys.fold(f64::NEG_INFINITY, |a, &b| a.max(b)).ceil() as usize).min(hu);
        for y in y0..y1 {
            for x in x0..x1 {
                if inside_even_odd(p, x as f64 + 0.5, y as f64 + 0.5) {
                    mask[y * wu + x] = 1;
                }
            }
        }
    }
    mask
}

/// `[x0, y0, x1, y1]` (left, top, right, bottom edges) of a COCO
/// `[x, y, width, height]` box.
fn edges(b: [f64; 4]) -> [f64; 4] {
    [b[0], b[1], b[0] + b[2], b[1] + b[3]]
}

/// Pixels a one-pixel-wide outline of the polygons can cover at most: per
/// edge, `max(|dx|, |dy|) + 1` (a digital line steps one pixel per unit along
/// its major axis).
fn outline_pixels(parts: &[Vec<f64>]) -> f64 {
    let mut total = 0.0;
    for p in parts {
        let n = p.len() / 2;
        for i in 0..n {
            let j = (i + 1) % n;
            let (dx, dy) = (p[2 * j] - p[2 * i], p[2 * j + 1] - p[2 * i + 1]);
            total += dx.abs().max(dy.abs()).ceil() + 1.0;
        }
    }
    total
}

// The file's `area` and `bbox` are not those of the COCO polygon rule: labelme2coco
// measures the mask PIL draws with `ImageDraw.polygon(outline=1, fill=1)`, which
// also covers every pixel the (truncated) outline passes through. So the file's
// mask is a superset of ours by at most an outline, and its box reaches at most
// one pixel further on each side (see the report in the test output).
#[test]
fn polygon_masks_match_an_independent_rasterisation() {
    let dir = real_dir();
    let gt = CocoGt::from_file(&dir.join("annotations.json")).unwrap();
    assert_eq!(gt.annotations.len(), 12);

    let mut worst_iou = f64::INFINITY;
    let mut worst_rel_area = 0.0f64;
    let mut worst_edge = 0.0f64;
    // Every annotation is checked before failing, so one run shows them all.
    let mut failures = Vec::new();
    for a in &gt.annotations {
        let im = gt.image(a.image_id).expect("annotation's image is listed");
        let (h, w) = (im.height, im.width);
        let Some(Segmentation::Polygons(parts)) = &a.segmentation else {
            panic!("annotation {}: expected a polygon segmentation", a.id);
        };
        let rle = a.segmentation.as_ref().unwrap().to_rle(h, w).unwrap();
        assert_eq!((rle.h, rle.w), (h, w), "annotation {}", a.id);
        if let [only] = parts.as_slice() {
            let direct = Rle::from_polygon(only, h, w).unwrap();
            assert_eq!(rle, direct, "annotation {}", a.id);
        }
        let ours = rle.decode();
        assert_eq!(ours.len(), (h * w) as usize);
        let set: u64 = ours.iter().map(|&v| v as u64).sum();
        assert_eq!(
            set,
            rle.area(),
            "annotation {}: decoded pixels vs area()",
            a.id
        );

        let reference = rasterise(parts, h, w);
        let (mut inter, mut union) = (0u64, 0u64);
        for (&p, &q) in ours.iter().zip(&reference) {
            inter += (p & q) as u64;
            union += (p | q) as u64;
        }
        assert!(union > 0, "annotation {}: both masks empty", a.id);
        let iou = inter as f64 / union as f64;

        let area = rle.area() as f64;
        let excess = a.area - area;
        let outline = outline_pixels(parts);
        let rel_area = (area - a.area).abs() / a.area;
        let bb = rle.to_bbox();
        let (ours_e, file_e) = (edges(bb), edges(a.bbox));
        let edge_err = (0..4)
            .map(|k| (ours_e[k] - file_e[k]).abs())
            .fold(0.0, f64::max);
        let inside_file_box = ours_e[0] >= file_e[0]
            && ours_e[1] >= file_e[1]
            && ours_e[2] <= file_e[2]
            && ours_e[3] <= file_e[3];
        println!(
            "annotation {:2} (image {}, {} part(s)): IoU {iou:.4}; area {area} vs file {} \
             ({:+.2}%, file excess {excess} <= outline {outline}); bbox {bb:?} vs file {:?} \
             (edges within {edge_err} px)",
            a.id,
            a.image_id,
            parts.len(),
            a.area,
            100.0 * (area - a.area) / a.area,
            a.bbox
        );
        if iou < 0.97 {
            failures.push(format!(
                "annotation {}: IoU {iou:.4} with the reference mask",
                a.id
            ));
        }
        if !(0.0..=outline).contains(&excess) {
            failures.push(format!(
                "annotation {}: file area {} is not our mask's area {area} plus at most \
                 its outline ({outline} px)",
                a.id, a.area
            ));
        }
        if edge_err > 1.5 || !inside_file_box {
            failures.push(format!(
                "annotation {}: mask bbox {bb:?} is not inside the file's bbox {:?} \
                 with every edge within 1.5 px",
                a.id, a.bbox
            ));
        }
        worst_iou = worst_iou.min(iou);
        worst_rel_area = worst_rel_area.max(rel_area);
        worst_edge = worst_edge.max(edge_err);
    }
    println!(
        "worst IoU {worst_iou:.4}; worst area difference to the file {:.2}%; \
         worst bbox edge difference {worst_edge} px",
        100.0 * worst_rel_area
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn missing_sample_fails_with_the_fetch_hint() {
    // The message the other tests fail with names the script to run.
    let bogus = std::env::temp_dir().join(format!("slmlp-no-labelme-{}", std::process::id()));
    let e =
        std::panic::catch_unwind(|| require_sample(bogus)).expect_err("a missing folder must fail");
    let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("scripts/fetch-data.sh"), "{msg}");
}
