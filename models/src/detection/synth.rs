//! The built-in detection benchmark: Fashion-MNIST items pasted onto
//! canvases, written as gray PNGs plus a COCO instances file with
//! compressed-RLE masks, so detection can be trained and evaluated with no
//! download.
//!
//! Image `i` (id `i + 1`, file `images/{i:06}.png`) is drawn from
//! `Rng::new(derive_seed(&[seed, i]))` alone, so a seed fixes every image
//! whatever the thread count. Canvas: a gray level in [0.04, 0.12] plus a
//! linear gradient of amplitude up to 0.08 and uniform noise of +-0.03
//! (values in [0, 1]). Objects: `1..=max_objects` tries; each takes a random
//! item of the allowed classes, crops it to its mask's box (pixels above
//! `MASK_THRESHOLD` of the item's maximum), resizes it bilinearly so the
//! longer side is a uniform draw from `scale`, and places it fully inside
//! at a uniform position whose box has IoU <= `max_overlap` with every box
//! placed before (up to `PLACE_TRIES` positions, else the object is left
//! out). Items are pasted in order: inside its mask an item replaces the
//! canvas (so later items occlude earlier ones), outside it the brighter
//! value wins. An instance's mask is its mask pixels not covered by a later
//! item's mask; it is dropped when under 30% of its own mask or under
//! `MIN_VISIBLE` pixels. The last item is never occluded and its mask has at
//! least `MIN_VISIBLE` pixels, so an image keeps at least one instance
//! unless `ITEM_TRIES` draws in a row gave items too small for that (only at
//! tiny scales).
//! Images are 1-channel 8-bit gray PNGs (the source is gray; replicate to
//! RGB when loading if a model wants 3 channels).

use super::rle::Rle;
use crate::data::{derive_seed, Dataset, InMemory};
use crate::detection::data::resize_bilinear;
use engine::{Error, Result, Rng};
use rayon::prelude::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Item pixels above this fraction of the item's maximum are its mask.
pub const MASK_THRESHOLD: f32 = 0.1;
/// Instances with fewer visible pixels are dropped.
pub const MIN_VISIBLE: usize = 16;
/// Instances with less than this fraction of their mask visible are dropped.
pub const MIN_VISIBLE_FRACTION: f64 = 0.3;
/// Positions tried per object before it is left out.
pub const PLACE_TRIES: usize = 50;
/// Items drawn per object before giving up on one with a large enough mask.
const ITEM_TRIES: usize = 20;

#[derive(Clone, Debug, PartialEq)]
pub struct SynthOptions {
    /// Number of images.
    pub images: usize,
    /// `(height, width)` of every canvas.
    pub canvas: (usize, usize),
    /// Each image tries to place `1..=max_objects` items (uniform).
    pub max_objects: usize,
    /// Range of the pasted item's longer side, in pixels.
    pub scale: (f64, f64),
    /// Largest IoU allowed between two placed items' boxes.
    pub max_overlap: f64,
    /// Source classes (0-based labels of the source) items are drawn from;
    /// `None` for all.
    pub classes: Option<Vec<usize>>,
    pub seed: u64,
}

impl Default for SynthOptions {
    fn default() -> Self {
        SynthOptions {
            images: 1000,
            canvas: (128, 128),
            max_objects: 4,
            scale: (20.0, 56.0),
            max_overlap: 0.3,
            classes: None,
            seed: 0,
        }
    }
}

/// What `generate` wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct SynthSummary {
    /// `out_dir/<split>/images`.
    pub image_dir: PathBuf,
    /// `out_dir/<split>/annotations.json`.
    pub annotations: PathBuf,
    pub images: usize,
    /// Instances written.
    pub instances: usize,
    /// Items pasted but dropped as too occluded.
    pub occluded: usize,
    /// Objects left out for want of a position within `max_overlap`.
    pub unplaced: usize,
    /// Instances written per source class.
    pub per_class: Vec<usize>,
}

/// One pasted item.
struct Item {
    class: usize,
    top: usize,
    left: usize,
    h: usize,
    w: usize,
    /// `h * w` values in [0, 1].
    values: Vec<f32>,
    /// `h * w`, true inside the item's mask.
    mask: Vec<bool>,
}

/// One generated image: gray pixels and its instances' (class, mask).
struct Drawn {
    pixels: Vec<u8>,
    instances: Vec<(usize, Rle)>,
    occluded: usize,
    unplaced: usize,
}

/// Generates the benchmark split `split_name` from the gray images of
/// `source` (Fashion-MNIST) into `out_dir/<split_name>/`: `images/NNNNNN.png`
/// and `annotations.json` (COCO instances: `images` with `id`, `file_name`,
/// `height`, `width`; `annotations` with compressed-RLE `segmentation`,
/// `bbox` = [`Rle::to_bbox`], `area` = [`Rle::area`], `iscrowd` 0;
/// `categories` = the source's class names with ids `label + 1`). The JSON
/// is written to a temporary name and renamed, so it only ever appears
/// complete, after every image. Errors on options that cannot be met (see
/// [`check_options`]) or on write failures, naming the path.
pub fn generate(
    source: &InMemory,
    opts: &SynthOptions,
    out_dir: &Path,
    split_name: &str,
) -> Result<SynthSummary> {
    let pool = check_options(source, opts)?;
    if split_name.is_empty() || split_name.contains(['/', '\\']) || split_name == ".." {
        return Err(Error::arg(
            "synth",
            format!("split name must be a plain folder name, got {split_name:?}"),
        ));
    }
    let split_dir = out_dir.join(split_name);
    let image_dir = split_dir.join("images");
    std::fs::create_dir_all(&image_dir).map_err(|e| Error::io(&image_dir, e))?;
    let (ch, cw) = opts.canvas;
    let drawn: Vec<Drawn> = (0..opts.images)
        .into_par_iter()
        .map(|i| {
            let d = draw_image(source, &pool, opts, i)?;
            write_png(&image_dir.join(file_name(i)), &d.pixels, ch, cw)?;
            Ok(d)
        })
        .collect::<Result<_>>()?;

    let mut images = Vec::with_capacity(drawn.len());
    let mut anns = Vec::new();
    let mut summary = SynthSummary {
        image_dir,
        annotations: split_dir.join("annotations.json"),
        images: drawn.len(),
        instances: 0,
        occluded: 0,
        unplaced: 0,
        per_class: vec![0; source.classes.len()],
    };
    for (i, d) in drawn.iter().enumerate() {
        let image_id = i as u64 + 1;
        images.push(json!({"id": image_id, "file_name": file_name(i), "height": ch, "width": cw}));
        summary.occluded += d.occluded;
        summary.unplaced += d.unplaced;
        for (class, rle) in &d.instances {
            anns.push(json!({
                "id": anns.len() + 1,
                "image_id": image_id,
                "category_id": class + 1,
                "segmentation": {"size": [ch, cw], "counts": rle.to_compressed()},
                "area": rle.area(),
                "bbox": rle.to_bbox(),
                "iscrowd": 0,
            }));
            summary.per_class[*class] += 1;
        }
    }
    summary.instances = anns.len();
    let categories: Vec<Value> = source
        .classes
        .iter()
        .enumerate()
        .map(|(c, name)| json!({"id": c + 1, "name": name, "supercategory": "fashion"}))
        .collect();
    let doc = json!({
        "info": {
            "description": format!("slmlp synthetic detection benchmark from {}", source.name),
            "seed": opts.seed,
            "canvas": [ch, cw],
            "max_objects": opts.max_objects,
            "scale": [opts.scale.0, opts.scale.1],
            "max_overlap": opts.max_overlap,
            "classes": opts.classes,
        },
        "images": images,
        "annotations": anns,
        "categories": categories,
    });
    let text = serde_json::to_string(&doc).map_err(|e| Error::arg("synth", e.to_string()))?;
    crate::report::write_text(&summary.annotations, &text)?;
    Ok(summary)
}

fn file_name(i: usize) -> String {
    format!("{i:06}.png")
}

/// Validates `opts` against `source` and returns the indices of the source
/// samples items may be drawn from. Needs a gray source, `images >= 1`, a
/// non-empty canvas, `max_objects >= 1`, `1 <= scale.0 <= scale.1 <=` the
/// canvas' shorter side, `max_overlap` in [0, 1], and classes that exist in
/// the source and have samples.
pub fn check_options(source: &InMemory, opts: &SynthOptions) -> Result<Vec<usize>> {
    let bad = |msg: String| Err(Error::arg("synth", msg));
    if source.channels != 1 {
        return bad(format!(
            "{}: the source must be gray (1 channel), it has {}",
            source.name, source.channels
        ));
    }
    let (ch, cw) = opts.canvas;
    if opts.images == 0 || ch == 0 || cw == 0 || opts.max_objects == 0 {
        return bad(format!(
            "images, canvas and max_objects must be positive, got {} images, canvas {ch}x{cw}, max_objects {}",
            opts.images, opts.max_objects
        ));
    }
    let (s0, s1) = opts.scale;
    if !(s0.is_finite() && s1.is_finite() && 1.0 <= s0 && s0 <= s1 && s1 <= ch.min(cw) as f64) {
        return bad(format!(
            "scale must satisfy 1 <= min <= max <= the canvas' shorter side {}, got {:?}",
            ch.min(cw),
            opts.scale
        ));
    }
    if !(0.0..=1.0).contains(&opts.max_overlap) {
        return bad(format!(
            "max_overlap must be in [0, 1], got {}",
            opts.max_overlap
        ));
    }
    let k = source.classes.len();
    let allowed: Vec<bool> = match &opts.classes {
        None => vec![true; k],
        Some(list) => {
            if let Some(c) = list.iter().find(|&&c| c >= k) {
                return bad(format!("class {c} is out of range for {k} source classes"));
            }
            let mut a = vec![false; k];
            list.iter().for_each(|&c| a[c] = true);
            a
        }
    };
    let pool: Vec<usize> = (0..source.len())
        .filter(|&i| allowed[source.labels()[i] as usize])
        .collect();
    if pool.is_empty() {
        return bad(format!(
            "{} has no samples of classes {:?}",
            source.name, opts.classes
        ));
    }
    Ok(pool)
}

fn draw_image(
    source: &InMemory,
    pool: &[usize],
    opts: &SynthOptions,
    index: usize,
) -> Result<Drawn> {
    let mut rng = Rng::new(derive_seed(&[opts.seed, index as u64]));
    let (ch, cw) = opts.canvas;
    let mut canvas = background(&mut rng, ch, cw);
    let wanted = 1 + rng.below(opts.max_objects);
    let mut items: Vec<Item> = Vec::with_capacity(wanted);
    let mut unplaced = 0;
    for _ in 0..wanted {
        let Some(mut item) = draw_item(source, pool, opts, &mut rng) else {
            unplaced += 1;
            continue;
        };
        let mut placed = false;
        for _ in 0..PLACE_TRIES {
            let top = rng.below(ch - item.h + 1);
            let left = rng.below(cw - item.w + 1);
            let b = [left, top, item.w, item.h];
            if items
                .iter()
                .all(|o| box_iou(b, [o.left, o.top, o.w, o.h]) <= opts.max_overlap)
            {
                (item.top, item.left, placed) = (top, left, true);
                break;
            }
        }
        if placed {
            items.push(item);
        } else {
            unplaced += 1;
        }
    }

    // owner[p] = 1 + the last item whose mask covers p.
    let mut owner = vec![0usize; ch * cw];
    for (k, it) in items.iter().enumerate() {
        for y in 0..it.h {
            for x in 0..it.w {
                let (p, q) = ((it.top + y) * cw + it.left + x, y * it.w + x);
                if it.mask[q] {
                    canvas[p] = it.values[q];
                    owner[p] = k + 1;
                } else {
                    canvas[p] = canvas[p].max(it.values[q]);
                }
            }
        }
    }
    let mut instances = Vec::with_capacity(items.len());
    let mut occluded = 0;
    for (k, it) in items.iter().enumerate() {
        let own = it.mask.iter().filter(|&&m| m).count();
        let visible: Vec<u8> = owner.iter().map(|&o| (o == k + 1) as u8).collect();
        let seen = visible.iter().filter(|&&v| v != 0).count();
        if seen >= MIN_VISIBLE && seen as f64 >= MIN_VISIBLE_FRACTION * own as f64 {
            instances.push((it.class, Rle::encode(&visible, ch as u32, cw as u32)?));
        } else {
            occluded += 1;
        }
    }
    let pixels = canvas
        .iter()
        .map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect();
    Ok(Drawn {
        pixels,
        instances,
        occluded,
        unplaced,
    })
}

/// A gray level, a linear gradient in a random direction and pixel noise,
/// all faint next to the items (which reach 1.0).
fn background(rng: &mut Rng, h: usize, w: usize) -> Vec<f32> {
    let level = 0.04 + 0.08 * rng.uniform();
    let amp = 0.08 * rng.uniform();
    let angle = std::f64::consts::TAU * rng.uniform();
    let (gx, gy) = (amp * angle.cos(), amp * angle.sin());
    let mut out = Vec::with_capacity(h * w);
    for y in 0..h {
        for x in 0..w {
            let ramp = gx * (x as f64 / w as f64 - 0.5) + gy * (y as f64 / h as f64 - 0.5);
            let noise = 0.03 * (2.0 * rng.uniform() - 1.0);
            out.push((level + ramp + noise).max(0.0) as f32);
        }
    }
    out
}

/// A random allowed item cropped to its mask's box and resized so its
/// longer side is drawn from `opts.scale`; `None` when `ITEM_TRIES` draws
/// all had masks under `MIN_VISIBLE` pixels.
fn draw_item(
    source: &InMemory,
    pool: &[usize],
    opts: &SynthOptions,
    rng: &mut Rng,
) -> Option<Item> {
    let (sh, sw) = (source.height, source.width);
    for _ in 0..ITEM_TRIES {
        let idx = pool[rng.below(pool.len())];
        let side = opts.scale.0 + (opts.scale.1 - opts.scale.0) * rng.uniform();
        let px = source.pixels_of(idx);
        let max = px.iter().copied().max().unwrap_or(0) as f32;
        if max == 0.0 {
            continue;
        }
        let cut = MASK_THRESHOLD * max;
        let inside = |p: usize| px[p] as f32 > cut;
        let (mut y0, mut y1, mut x0, mut x1) = (sh, 0, sw, 0);
        for y in 0..sh {
            for x in 0..sw {
                if inside(y * sw + x) {
                    (y0, y1, x0, x1) = (y0.min(y), y1.max(y + 1), x0.min(x), x1.max(x + 1));
                }
            }
        }
        let (bh, bw) = (y1 - y0, x1 - x0);
        let crop: Vec<f32> = (y0..y1)
            .flat_map(|y| (x0..x1).map(move |x| (y, x)))
            .map(|(y, x)| px[y * sw + x] as f32 / 255.0)
            .collect();
        let long = bh.max(bw) as f64;
        let fit = |n: usize| ((n as f64 * side / long).round() as usize).max(1);
        let (h, w) = (fit(bh), fit(bw));
        let values = resize_bilinear(&crop, 1, (bh, bw), (h, w));
        let vmax = values.iter().copied().fold(0f32, f32::max);
        let mask: Vec<bool> = values.iter().map(|&v| v > MASK_THRESHOLD * vmax).collect();
        if mask.iter().filter(|&&m| m).count() < MIN_VISIBLE {
            continue;
        }
        return Some(Item {
            class: source.labels()[idx] as usize,
            top: 0,
            left: 0,
            h,
            w,
            values,
            mask,
        });
    }
    None
}

/// IoU of two `[x, y, w, h]` pixel boxes.
fn box_iou(a: [usize; 4], b: [usize; 4]) -> f64 {
    let ix = (a[0] + a[2])
        .min(b[0] + b[2])
        .saturating_sub(a[0].max(b[0]));
    let iy = (a[1] + a[3])
        .min(b[1] + b[3])
        .saturating_sub(a[1].max(b[1]));
    let inter = (ix * iy) as f64;
    inter / ((a[2] * a[3] + b[2] * b[3]) as f64 - inter)
}

fn write_png(path: &Path, gray: &[u8], h: usize, w: usize) -> Result<()> {
    crate::report::write_png(path, gray, (w, h), png::ColorType::Grayscale, "synth")
}
