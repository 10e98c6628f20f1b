//! The detection input pipeline: COCO instances (JSON + image folder) to
//! padded, normalised batches with per-image targets, as torchvision's
//! detection references feed Mask R-CNN.
//!
//! Per sample, in torchvision's order: decode, random horizontal flip at the
//! original size (`RandomHorizontalFlip` of the references), resize as
//! `GeneralizedRCNNTransform` does (image bilinear with `align_corners=False`
//! and no antialiasing, masks nearest, boxes by the per-axis size ratios),
//! normalise with mean/std. A batch is zero-padded to its largest height and
//! width, each rounded up to a multiple of `size_divisible`
//! (`GeneralizedRCNNTransform.batch_images`).
//!
//! The loader follows the determinism contract of `data::Loader`: epoch `e`'s
//! order is `Rng::new(derive_seed(&[seed, e]))`'s shuffle of `0..len`, and
//! sample `i` draws its flip from `Rng::new(derive_seed(&[seed, e, i]))`, so
//! a batch does not depend on `workers`, `prefetch` or `start_batch`.

use super::coco_json::{CocoGt, Segmentation};
use crate::data::{
    check_normalization, decode_image, Batches, DataLoader, Image, LoaderOptions, Source,
    IMAGENET_MEAN, IMAGENET_STD,
};
use engine::{Error, Result, Rng, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Training targets of one image, torchvision's target dict as a struct.
#[derive(Clone, Debug, PartialEq)]
pub struct DetTarget {
    /// `[x1, y1, x2, y2]` in pixels of the image at `size`.
    pub boxes: Vec<[f32; 4]>,
    /// Contiguous labels `1..=K` (0 is background), one per box.
    pub labels: Vec<i64>,
    /// One row-major `size.0 x size.1` mask per box, 1 inside, 0 outside.
    pub masks: Vec<Vec<u8>>,
    /// The COCO image id.
    pub image_id: u64,
    /// `(height, width)` of the image as stored.
    pub orig_size: (usize, usize),
    /// `(height, width)` the boxes and masks refer to (after resizing).
    pub size: (usize, usize),
}

/// One decoded image and its targets at the original size.
#[derive(Clone, Debug, PartialEq)]
pub struct DetSample {
    pub image: Image,
    pub target: DetTarget,
}

/// A COCO instances file and its image folder. Images are decoded on demand.
pub struct DetectionDataset {
    annotations: PathBuf,
    image_dir: PathBuf,
    channels: usize,
    gt: CocoGt,
    /// `category_ids[l - 1]` is the COCO category of label `l`.
    category_ids: Vec<i64>,
    category_names: Vec<String>,
    label_of: HashMap<i64, i64>,
    /// Per sample: its position in `gt.images` and the positions in
    /// `gt.annotations` of its training instances, in file order.
    items: Vec<(usize, Vec<usize>)>,
    crowd: usize,
    degenerate: usize,
}

/// Where a detection split is.
#[derive(Clone, Debug, PartialEq)]
pub enum SplitLocation {
    /// `data/<split>/annotations.json` with the images in
    /// `data/<split>/images/` (what `slmlp detection-data` writes).
    Folder { data: PathBuf, split: String },
    /// An annotation file and an image folder, e.g. COCO 2017's
    /// `annotations/instances_val2017.json` and `val2017/`.
    Files {
        annotations: PathBuf,
        images: PathBuf,
    },
}

impl SplitLocation {
    /// From `--data` (and the split's name) or the pair `--<flag>-ann`,
    /// `--<flag>-images`; exactly one of the two forms.
    pub fn from_args(
        data: Option<&Path>,
        split: &str,
        annotations: Option<&Path>,
        images: Option<&Path>,
        flag: &str,
    ) -> Result<SplitLocation> {
        match (data, annotations, images) {
            (Some(d), None, None) => Ok(SplitLocation::Folder {
                data: d.to_path_buf(),
                split: split.to_string(),
            }),
            (None, Some(a), Some(i)) => Ok(SplitLocation::Files {
                annotations: a.to_path_buf(),
                images: i.to_path_buf(),
            }),
            _ => Err(Error::arg(
                "detect",
                format!("give either --data DIR or both --{flag}-ann FILE and --{flag}-images DIR"),
            )),
        }
    }

    /// The annotation file and the image folder.
    pub fn paths(&self) -> (PathBuf, PathBuf) {
        match self {
            SplitLocation::Folder { data, split } => {
                let dir = data.join(split);
                (dir.join("annotations.json"), dir.join("images"))
            }
            SplitLocation::Files {
                annotations,
                images,
            } => (annotations.clone(), images.clone()),
        }
    }

    /// Opens the split (see [`DetectionDataset::open`]); a missing file or
    /// folder is an error naming the layout expected.
    pub fn open(&self, channels: usize) -> Result<DetectionDataset> {
        let (ann, images) = self.paths();
        let layout = match self {
            SplitLocation::Folder { split, .. } => format!(
                "--data must be a folder with {split}/annotations.json and {split}/images/ (as `slmlp detection-data --out DIR` writes)"
            ),
            SplitLocation::Files { .. } => {
                "give a COCO instances JSON file and the folder of its images".to_string()
            }
        };
        if !ann.is_file() {
            return Err(Error::arg(
                "detect",
                format!("{} not found: {layout}", ann.display()),
            ));
        }
        if !images.is_dir() {
            return Err(Error::arg(
                "detect",
                format!("{} is not a folder: {layout}", images.display()),
            ));
        }
        DetectionDataset::open(&ann, &images, channels)
    }
}

impl DetectionDataset {
    /// Opens `annotations` (COCO instances JSON, read by [`CocoGt`]) with
    /// images at `image_dir/<images[].file_name>`, decoded to `channels`
    /// (1 gray, 3 RGB). Categories, sorted by id, become labels `1..=K`.
    /// Crowd annotations are left out of the targets, and so are boxes
    /// whose part inside the image is under 1 px wide or high (both are
    /// counted). Every image of the file is a sample, with or without
    /// instances. Errors (naming the file, entry and field) when `channels`
    /// is not 1 or 3, an image has no `file_name` or a negative id, or a
    /// training instance has no `segmentation` or an RLE whose size is not
    /// its image's.
    pub fn open(annotations: &Path, image_dir: &Path, channels: usize) -> Result<Self> {
        if channels != 1 && channels != 3 {
            return Err(Error::arg(
                "detection dataset",
                format!("channels must be 1 (gray) or 3 (RGB), got {channels}"),
            ));
        }
        let gt = CocoGt::from_file(annotations)?;
        let src = annotations.display();
        let fail = |at: String, field: &str, msg: String| {
            Error::arg(
                "detection dataset",
                format!("{src}: {at} field \"{field}\": {msg}"),
            )
        };
        let mut position = HashMap::new();
        for (i, im) in gt.images.iter().enumerate() {
            if im.file_name.is_empty() {
                return Err(fail(
                    format!("images[{i}]"),
                    "file_name",
                    "missing or empty (the image file cannot be found without it)".into(),
                ));
            }
            if im.id < 0 {
                return Err(fail(
                    format!("images[{i}]"),
                    "id",
                    format!("image ids must be non-negative, got {}", im.id),
                ));
            }
            position.insert(im.id, i);
        }
        let mut cats: Vec<(i64, String)> = gt
            .categories
            .iter()
            .map(|c| (c.id, c.name.clone()))
            .collect();
        cats.sort_by_key(|c| c.0);
        let label_of: HashMap<i64, i64> = cats
            .iter()
            .enumerate()
            .map(|(l, c)| (c.0, l as i64 + 1))
            .collect();
        let mut per_image: Vec<Vec<usize>> = vec![Vec::new(); gt.images.len()];
        let (mut crowd, mut degenerate, mut unusable) = (0, 0, Vec::new());
        for (a, ann) in gt.annotations.iter().enumerate() {
            if ann.iscrowd {
                crowd += 1;
                continue;
            }
            let p = position[&ann.image_id];
            let im = &gt.images[p];
            let b = clamp_box(ann.bbox, im.height as f64, im.width as f64);
            if b[2] - b[0] < 1.0 || b[3] - b[1] < 1.0 {
                degenerate += 1;
                continue;
            }
            match &ann.segmentation {
                None => {
                    return Err(fail(
                        format!("annotations[{a}]"),
                        "segmentation",
                        "missing (Mask R-CNN targets need a mask)".into(),
                    ))
                }
                Some(Segmentation::Rle(r)) if (r.h, r.w) != (im.height, im.width) => {
                    return Err(fail(
                        format!("annotations[{a}]"),
                        "segmentation",
                        format!(
                            "RLE size is {}x{}, image {} is {}x{} (HxW)",
                            r.h, r.w, im.id, im.height, im.width
                        ),
                    ))
                }
                Some(seg) => {
                    // left out here as segm evaluation leaves it out
                    if let Err(e) = seg.check() {
                        unusable.push(format!("annotations[{a}]: {e}"));
                        continue;
                    }
                }
            }
            per_image[p].push(a);
        }
        if let Some(first) = unusable.first() {
            eprintln!(
                "warning: {}: {} instances with unusable segmentations skipped (first: {first})",
                annotations.display(),
                unusable.len()
            );
        }
        Ok(DetectionDataset {
            annotations: annotations.to_path_buf(),
            image_dir: image_dir.to_path_buf(),
            channels,
            category_ids: cats.iter().map(|c| c.0).collect(),
            category_names: cats.into_iter().map(|c| c.1).collect(),
            label_of,
            items: per_image.into_iter().enumerate().collect(),
            gt,
            crowd,
            degenerate,
        })
    }

    /// Keeps only images with at least one training instance (torchvision's
    /// references do this for training); returns how many were removed.
    pub fn retain_annotated(&mut self) -> usize {
        let before = self.items.len();
        self.items.retain(|(_, anns)| !anns.is_empty());
        before - self.items.len()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
    pub fn channels(&self) -> usize {
        self.channels
    }
    /// K, the number of object classes (labels run 1..=K).
    pub fn num_classes(&self) -> usize {
        self.category_ids.len()
    }
    /// Category names in label order (`names[l - 1]` for label `l`).
    pub fn category_names(&self) -> &[String] {
        &self.category_names
    }
    /// The COCO category id of label `l` (for writing results files).
    pub fn category_id(&self, label: i64) -> Option<i64> {
        usize::try_from(label - 1)
            .ok()
            .and_then(|i| self.category_ids.get(i).copied())
    }
    /// The label of a COCO category id.
    pub fn label_of(&self, category_id: i64) -> Option<i64> {
        self.label_of.get(&category_id).copied()
    }
    /// Crowd annotations left out of the targets.
    pub fn crowd_skipped(&self) -> usize {
        self.crowd
    }
    /// Non-crowd annotations dropped for a box under 1 px inside the image.
    pub fn degenerate_dropped(&self) -> usize {
        self.degenerate
    }
    /// The ground truth as read (for evaluation).
    pub fn gt(&self) -> &CocoGt {
        &self.gt
    }
    /// The annotations file this was opened from.
    pub fn annotations_path(&self) -> &Path {
        &self.annotations
    }
    /// The file of sample `index`.
    pub fn path(&self, index: usize) -> PathBuf {
        match self.items.get(index) {
            Some(&(p, _)) => self.image_dir.join(&self.gt.images[p].file_name),
            None => self.image_dir.clone(),
        }
    }
    /// The COCO image id of sample `index`.
    pub fn image_id(&self, index: usize) -> Option<i64> {
        self.items.get(index).map(|&(p, _)| self.gt.images[p].id)
    }

    /// Decodes sample `index` and builds its targets at the stored size:
    /// boxes `[x, y, x + w, y + h]` clamped to the image, labels, masks
    /// rasterised from the segmentations. Errors name the file when it
    /// cannot be read or decoded or its size differs from the JSON's.
    pub fn get(&self, index: usize) -> Result<DetSample> {
        let Some((p, anns)) = self.items.get(index) else {
            return Err(Error::arg(
                "detection dataset",
                format!("index {index} out of range for {} images", self.items.len()),
            ));
        };
        let info = &self.gt.images[*p];
        let path = self.image_dir.join(&info.file_name);
        let image = decode_image(&path, self.channels, "detection dataset")?;
        let (h, w) = (info.height as usize, info.width as usize);
        if (image.height, image.width) != (h, w) {
            return Err(Error::shape(
                "detection dataset",
                format!(
                    "{}: decoded {}x{} (HxW), {} says {h}x{w} for image {}",
                    path.display(),
                    image.height,
                    image.width,
                    self.annotations.display(),
                    info.id
                ),
            ));
        }
        let mut target = DetTarget {
            boxes: Vec::with_capacity(anns.len()),
            labels: Vec::with_capacity(anns.len()),
            masks: Vec::with_capacity(anns.len()),
            image_id: info.id as u64,
            orig_size: (h, w),
            size: (h, w),
        };
        for &a in anns {
            let ann = &self.gt.annotations[a];
            let b = clamp_box(ann.bbox, h as f64, w as f64);
            target
                .boxes
                .push([b[0] as f32, b[1] as f32, b[2] as f32, b[3] as f32]);
            target.labels.push(self.label_of[&ann.category_id]);
            let rle = match &ann.segmentation {
                Some(seg) => seg.to_rle(info.height, info.width),
                None => Err(Error::arg("segmentation", "missing")),
            };
            let rle = rle.map_err(|e| {
                Error::arg(
                    "detection dataset",
                    format!(
                        "{}: annotations[{a}] field \"segmentation\": {e}",
                        self.annotations.display()
                    ),
                )
            })?;
            target.masks.push(rle.decode());
        }
        Ok(DetSample { image, target })
    }
}

/// `[x, y, w, h]` as `[x1, y1, x2, y2]` clamped to a `h x w` image, as
/// torchvision's `ConvertCocoPolysToMask`.
fn clamp_box(b: [f64; 4], h: f64, w: f64) -> [f64; 4] {
    [
        b[0].clamp(0.0, w),
        b[1].clamp(0.0, h),
        (b[0] + b[2]).clamp(0.0, w),
        (b[1] + b[3]).clamp(0.0, h),
    ]
}

/// torchvision `_resize_image_and_masks`' output size: with
/// `scale = min(min_size / short, max_size / long)` in f64, each side
/// becomes `floor(side * scale)` (`interpolate(scale_factor=scale,
/// recompute_scale_factor=True)`), so e.g. 97x131 at min 200 gives 199x270.
pub fn resized_size(h: usize, w: usize, min_size: usize, max_size: usize) -> (usize, usize) {
    let (short, long) = (h.min(w) as f64, h.max(w) as f64);
    let scale = (min_size as f64 / short).min(max_size as f64 / long);
    (
        (h as f64 * scale).floor() as usize,
        (w as f64 * scale).floor() as usize,
    )
}

/// Bilinear resize of `c` planes of `h x w` (CHW) to `oh x ow`, as PyTorch's
/// CPU `upsample_bilinear2d` with `align_corners=False` and no scale factor:
/// in f32, source `max(0, (o + 0.5) * in / out - 0.5)`, the upper neighbour
/// clamped to the last pixel.
pub fn resize_bilinear(
    src: &[f32],
    c: usize,
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
) -> Vec<f32> {
    debug_assert_eq!(src.len(), c * h * w);
    let ys = bilinear_taps(h, oh);
    let xs = bilinear_taps(w, ow);
    let mut out = vec![0f32; c * oh * ow];
    for ch in 0..c {
        let plane = &src[ch * h * w..(ch + 1) * h * w];
        let dst = &mut out[ch * oh * ow..(ch + 1) * oh * ow];
        for (y, &(y0, y1, ly1)) in ys.iter().enumerate() {
            let ly0 = 1.0 - ly1;
            let (r0, r1) = (&plane[y0 * w..(y0 + 1) * w], &plane[y1 * w..(y1 + 1) * w]);
            for (x, &(x0, x1, lx1)) in xs.iter().enumerate() {
                let lx0 = 1.0 - lx1;
                dst[y * ow + x] =
                    ly0 * (lx0 * r0[x0] + lx1 * r0[x1]) + ly1 * (lx0 * r1[x0] + lx1 * r1[x1]);
            }
        }
    }
    out
}

fn bilinear_taps(n_in: usize, n_out: usize) -> Vec<(usize, usize, f32)> {
    let scale = n_in as f32 / n_out as f32;
    (0..n_out)
        .map(|o| {
            let src = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (src as usize).min(n_in - 1);
            let i1 = if i0 + 1 < n_in { i0 + 1 } else { i0 };
            (i0, i1, src - i0 as f32)
        })
        .collect()
}

/// Nearest resize of a row-major `h x w` mask to `oh x ow`, as PyTorch's
/// `interpolate(mode="nearest")` without a scale factor: source
/// `min(floor(o * (in / out as f32)), in - 1)`.
pub fn resize_mask_nearest(
    mask: &[u8],
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
) -> Vec<u8> {
    let ys = nearest_taps(h, oh);
    let xs = nearest_taps(w, ow);
    let mut out = Vec::with_capacity(oh * ow);
    for &y in &ys {
        let row = &mask[y * w..(y + 1) * w];
        out.extend(xs.iter().map(|&x| row[x]));
    }
    out
}

fn nearest_taps(n_in: usize, n_out: usize) -> Vec<usize> {
    let scale = n_in as f32 / n_out as f32;
    (0..n_out)
        .map(|o| {
            if n_out == n_in {
                o
            } else if n_out == 2 * n_in {
                o >> 1
            } else {
                ((o as f32 * scale).floor() as usize).min(n_in - 1)
            }
        })
        .collect()
}

/// Mirrors a sample left-right in place: the image and masks column `x`
/// becomes `W - 1 - x`, and a box `[x1, y1, x2, y2]` becomes
/// `[W - x2, y1, W - x1, y2]` with `W` the width.
pub fn hflip(sample: &mut DetSample) {
    let img = &mut sample.image;
    let (w, c) = (img.width, img.channels);
    for row in img.pixels.chunks_exact_mut(w * c) {
        for x in 0..w / 2 {
            for ch in 0..c {
                row.swap(x * c + ch, (w - 1 - x) * c + ch);
            }
        }
    }
    let t = &mut sample.target;
    let wf = t.size.1 as f32;
    for b in &mut t.boxes {
        *b = [wf - b[2], b[1], wf - b[0], b[3]];
    }
    for m in &mut t.masks {
        for row in m.chunks_exact_mut(t.size.1) {
            row.reverse();
        }
    }
}

/// `GeneralizedRCNNTransform` plus the references' random flip.
#[derive(Clone, Debug, PartialEq)]
pub struct DetTransform {
    /// Target length of the shorter side...
    pub min_size: usize,
    /// ...unless the longer side would exceed this.
    pub max_size: usize,
    /// Per channel, on [0, 1] values: output `(v - mean) / std`.
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// Probability of a horizontal flip (0 for evaluation).
    pub flip_prob: f64,
    /// Batches are padded to multiples of this.
    pub size_divisible: usize,
}

impl DetTransform {
    /// torchvision's Mask R-CNN settings: 800 / 1333, ImageNet statistics
    /// (for gray images the mean of the three channels' means and stds,
    /// 0.449 / 0.226), padding to multiples of 32, flip probability 0.5 when
    /// `train`, else none.
    pub fn mask_rcnn(channels: usize, train: bool) -> DetTransform {
        let (mean, std) = if channels == 1 {
            (vec![0.449], vec![0.226])
        } else {
            (IMAGENET_MEAN.to_vec(), IMAGENET_STD.to_vec())
        };
        DetTransform {
            min_size: 800,
            max_size: 1333,
            mean,
            std,
            flip_prob: if train { 0.5 } else { 0.0 },
            size_divisible: 32,
        }
    }

    /// Checks the settings for `channels`-channel images: positive sizes and
    /// divisor, one finite mean and positive finite std per channel, a flip
    /// probability in [0, 1].
    pub fn check(&self, channels: usize) -> Result<()> {
        let bad = |msg: String| Err(Error::arg("detection transform", msg));
        if self.min_size == 0 || self.max_size == 0 || self.size_divisible == 0 {
            return bad(format!(
                "min_size, max_size and size_divisible must be positive, got {}, {}, {}",
                self.min_size, self.max_size, self.size_divisible
            ));
        }
        check_normalization(&self.mean, &self.std, channels).or_else(bad)?;
        if !(0.0..=1.0).contains(&self.flip_prob) {
            return bad(format!(
                "flip_prob must be in [0, 1], got {}",
                self.flip_prob
            ));
        }
        Ok(())
    }

    /// The size an `h x w` image is resized to; see [`resized_size`].
    pub fn output_size(&self, h: usize, w: usize) -> (usize, usize) {
        resized_size(h, w, self.min_size, self.max_size)
    }

    /// Flips `sample` with probability `flip_prob` (one `rng.uniform()`
    /// drawn only when `flip_prob > 0`), resizes it to
    /// [`DetTransform::output_size`] and normalises it. Returns the image as
    /// CHW f32 and the target at the new size: masks resized nearest, boxes
    /// times `new / old` per axis (ratios in f32, as `resize_boxes`).
    pub fn apply(&self, mut sample: DetSample, rng: &mut Rng) -> Result<(Vec<f32>, DetTarget)> {
        let img = &sample.image;
        let (h, w, c) = (img.height, img.width, img.channels);
        self.check(c)?;
        if h == 0 || w == 0 || img.pixels.len() != h * w * c {
            return Err(Error::shape(
                "detection transform",
                format!("image {h}x{w}x{c} (HxWxC) has {} bytes", img.pixels.len()),
            ));
        }
        let (oh, ow) = self.output_size(h, w);
        if oh == 0 || ow == 0 {
            return Err(Error::arg(
                "detection transform",
                format!(
                    "a {h}x{w} image at min_size {} / max_size {} would become {oh}x{ow}",
                    self.min_size, self.max_size
                ),
            ));
        }
        if self.flip_prob > 0.0 && rng.uniform() < self.flip_prob {
            hflip(&mut sample);
        }
        let DetSample { image, mut target } = sample;
        let mut planes = vec![0f32; c * h * w];
        for (p, px) in image.pixels.chunks_exact(c).enumerate() {
            for (ch, &v) in px.iter().enumerate() {
                planes[ch * h * w + p] = v as f32 / 255.0;
            }
        }
        let mut out = if (oh, ow) == (h, w) {
            planes
        } else {
            resize_bilinear(&planes, c, (h, w), (oh, ow))
        };
        for (ch, plane) in out.chunks_exact_mut(oh * ow).enumerate() {
            let (mean, std) = (self.mean[ch], self.std[ch]);
            for v in plane {
                *v = (*v - mean) / std;
            }
        }
        let (ry, rx) = (oh as f32 / h as f32, ow as f32 / w as f32);
        for b in &mut target.boxes {
            *b = [b[0] * rx, b[1] * ry, b[2] * rx, b[3] * ry];
        }
        for m in &mut target.masks {
            *m = resize_mask_nearest(m, (h, w), (oh, ow));
        }
        target.size = (oh, ow);
        Ok((out, target))
    }
}

/// Pads CHW images of different sizes into one `[B, C, H, W]` tensor, zeros
/// outside each image, `H` and `W` the largest height and width rounded up
/// to multiples of `size_divisible`. Returns the tensor and the sizes before
/// padding. Errors if `items` is empty or an image's length is not
/// `c * h * w` of its target's `size`.
pub fn pad_batch(
    items: &[(Vec<f32>, DetTarget)],
    c: usize,
    size_divisible: usize,
) -> Result<(Tensor, Vec<(usize, usize)>)> {
    if items.is_empty() || size_divisible == 0 {
        return Err(Error::arg(
            "detection batch",
            format!(
                "need at least one image and a positive size_divisible, got {} images and {size_divisible}",
                items.len()
            ),
        ));
    }
    let sizes: Vec<(usize, usize)> = items.iter().map(|(_, t)| t.size).collect();
    if let Some((i, (img, t))) = items
        .iter()
        .enumerate()
        .find(|(_, (img, t))| img.len() != c * t.size.0 * t.size.1)
    {
        return Err(Error::shape(
            "detection batch",
            format!(
                "image {i} has {} values, expected {c}x{}x{} (CxHxW)",
                img.len(),
                t.size.0,
                t.size.1
            ),
        ));
    }
    let round = |v: usize| v.div_ceil(size_divisible) * size_divisible;
    let ph = round(sizes.iter().map(|s| s.0).max().unwrap_or(0));
    let pw = round(sizes.iter().map(|s| s.1).max().unwrap_or(0));
    let mut data = vec![0f32; items.len() * c * ph * pw];
    for (b, (img, t)) in items.iter().enumerate() {
        let (h, w) = t.size;
        for ch in 0..c {
            for y in 0..h {
                let src = &img[(ch * h + y) * w..(ch * h + y + 1) * w];
                let at = ((b * c + ch) * ph + y) * pw;
                data[at..at + w].copy_from_slice(src);
            }
        }
    }
    Ok((Tensor::from_vec(data, &[items.len(), c, ph, pw])?, sizes))
}

/// One padded batch.
pub struct DetBatch {
    /// Position of this batch in its epoch.
    pub index: usize,
    /// `[B, C, H, W]` f32, normalised, zero-padded; see [`pad_batch`].
    pub images: Tensor,
    /// `(height, width)` of each image before padding.
    pub image_sizes: Vec<(usize, usize)>,
    pub targets: Vec<DetTarget>,
    /// Dataset index of each image; fewer than the batch size when images
    /// were unreadable (skipped).
    pub indices: Vec<usize>,
}

impl DetBatch {
    /// Images `start..start + n` as the batch they make on their own: cut
    /// down to their largest size rounded up to `size_divisible`, which is
    /// what [`pad_batch`] gives for them (the padding is zeros).
    pub fn part(&self, start: usize, n: usize, size_divisible: usize) -> Result<DetBatch> {
        let sizes = self.image_sizes.get(start..start + n).ok_or_else(|| {
            Error::arg(
                "detection batch",
                format!(
                    "images {start}..{} of a batch of {}",
                    start + n,
                    self.image_sizes.len()
                ),
            )
        })?;
        let round = |v: usize| v.div_ceil(size_divisible.max(1)) * size_divisible.max(1);
        let ph = round(sizes.iter().map(|s| s.0).max().unwrap_or(0));
        let pw = round(sizes.iter().map(|s| s.1).max().unwrap_or(0));
        Ok(DetBatch {
            index: self.index,
            images: self
                .images
                .narrow(0, start, n)?
                .narrow(2, 0, ph)?
                .narrow(3, 0, pw)?
                .contiguous()?,
            image_sizes: sizes.to_vec(),
            targets: self.targets[start..start + n].to_vec(),
            indices: self.indices[start..start + n].to_vec(),
        })
    }
}

/// A detection dataset with its transform: what a [`DetectionLoader`] reads.
pub struct DetSource {
    ds: Arc<DetectionDataset>,
    transform: DetTransform,
}

impl Source for DetSource {
    /// The transformed CHW image and its target.
    type Sample = (Vec<f32>, DetTarget);
    type Batch = DetBatch;
    const NAME: &'static str = "detection loader";

    fn num_samples(&self) -> usize {
        self.ds.len()
    }

    fn load(&self, index: usize, rng: &mut Rng) -> Result<Self::Sample> {
        self.transform.apply(self.ds.get(index)?, rng)
    }

    fn describe(&self, index: usize) -> String {
        self.ds.path(index).display().to_string()
    }

    fn collate(
        &self,
        index: usize,
        samples: Vec<Self::Sample>,
        indices: Vec<usize>,
    ) -> Result<DetBatch> {
        let (images, image_sizes) =
            pad_batch(&samples, self.ds.channels(), self.transform.size_divisible)?;
        Ok(DetBatch {
            index,
            images,
            image_sizes,
            targets: samples.into_iter().map(|(_, t)| t).collect(),
            indices,
        })
    }

    fn batch_index(batch: &DetBatch) -> usize {
        batch.index
    }
}

/// Shuffled, transformed, padded batches of a [`DetectionDataset`], with
/// optional worker threads and prefetch (see `data::DataLoader`).
pub type DetectionLoader = DataLoader<DetSource>;

impl DetectionLoader {
    /// Checks that the dataset is non-empty, `batch` positive and the
    /// transform valid for the dataset's channels.
    pub fn new(
        ds: Arc<DetectionDataset>,
        transform: DetTransform,
        opts: LoaderOptions,
    ) -> Result<Self> {
        transform.check(ds.channels())?;
        DataLoader::with_source(DetSource { ds, transform }, opts)
    }

    pub fn dataset(&self) -> &Arc<DetectionDataset> {
        &self.source().ds
    }
}

/// The batches of one epoch; see `DataLoader::epoch`.
pub type DetEpochIter = Batches<DetBatch>;
