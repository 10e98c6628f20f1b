//! COCO instance annotations and detection results as JSON, read the way
//! pycocotools' `COCO` and `COCO.loadRes` read them.
//!
//! Malformed input is an error naming the file, the entry (`annotations[i]`,
//! `results[i]`) and the field, never a panic.

use super::rle::{check_mask_size, Rle};
use engine::{Error, Result};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::path::{Component, Path};

/// One image: its id, size in pixels and file name.
#[derive(Clone, Debug, PartialEq)]
pub struct CocoImage {
    pub id: i64,
    pub height: u32,
    pub width: u32,
    /// `images[].file_name`, relative to the image folder. Evaluation does
    /// not need it, so an absent one reads as "" (loaders that open the
    /// image reject that); a present one must be a string.
    pub file_name: String,
}

/// One category: its id and name (empty if the file has none).
#[derive(Clone, Debug, PartialEq)]
pub struct CocoCategory {
    pub id: i64,
    pub name: String,
}

/// An instance mask as COCO stores it.
#[derive(Clone, Debug, PartialEq)]
pub enum Segmentation {
    /// One or more polygons `[x0, y0, x1, y1, ...]`, united into one mask.
    Polygons(Vec<Vec<f64>>),
    /// Run lengths, from an uncompressed (`counts` list) or compressed
    /// (`counts` string) RLE; its size is the RLE's own `size`.
    Rle(Rle),
}

impl Segmentation {
    /// Whether `to_rle` can read the segmentation, without rasterising
    /// it: a non-empty polygon list whose first entry has at least 6
    /// numbers (polygons) or exactly 4 (then every entry is a box). An RLE
    /// is always usable.
    pub fn check(&self) -> Result<()> {
        let Segmentation::Polygons(parts) = self else {
            return Ok(());
        };
        match parts.first().map(Vec::len) {
            None => Err(Error::arg("segmentation", "empty polygon list")),
            Some(4) => match parts.iter().find(|p| p.len() != 4) {
                Some(p) => Err(Error::arg(
                    "segmentation",
                    format!("a list starting with a 4-number entry is read as boxes, but an entry has {} numbers", p.len()),
                )),
                None => Ok(()),
            },
            Some(n) if n > 4 => Ok(()),
            Some(n) => Err(Error::arg(
                "segmentation",
                format!("polygon with {n} numbers (need at least 6: three x,y vertices)"),
            )),
        }
    }

    /// The mask as pycocotools `annToRLE` makes it on an `h x w` image:
    /// polygons are rasterised with [`Rle::from_polygon`] and merged; like
    /// `frPyObjects`, a list whose first entry has exactly 4 numbers is read
    /// as boxes `[x, y, w, h]` (see `check` for what is refused). An RLE is
    /// returned as it is.
    pub fn to_rle(&self, h: u32, w: u32) -> Result<Rle> {
        self.check()?;
        match self {
            Segmentation::Rle(r) => Ok(r.clone()),
            Segmentation::Polygons(parts) => {
                let rles = parts
                    .iter()
                    .map(|p| match p.as_slice() {
                        &[x, y, bw, bh] if parts[0].len() == 4 => {
                            Rle::from_bbox([x, y, bw, bh], h, w)
                        }
                        _ => Rle::from_polygon(p, h, w),
                    })
                    .collect::<Result<Vec<_>>>()?;
                Rle::merge(&rles)
            }
        }
    }
}

/// One ground-truth instance.
#[derive(Clone, Debug, PartialEq)]
pub struct GtAnnotation {
    pub id: i64,
    pub image_id: i64,
    pub category_id: i64,
    /// `[x, y, width, height]`.
    pub bbox: [f64; 4],
    /// The file's `area` field (it decides the small/medium/large range).
    pub area: f64,
    /// `iscrowd` (0/1 or a bool; absent means 0).
    pub iscrowd: bool,
    pub segmentation: Option<Segmentation>,
}

/// A COCO instances ground-truth file.
#[derive(Clone, Debug)]
pub struct CocoGt {
    pub images: Vec<CocoImage>,
    /// In file order (it breaks ties in matching, as in pycocotools).
    pub annotations: Vec<GtAnnotation>,
    pub categories: Vec<CocoCategory>,
    image_index: HashMap<i64, usize>,
}

/// One detection of a results file, completed as `COCO.loadRes` completes it.
#[derive(Clone, Debug, PartialEq)]
pub struct Detection {
    /// 1-based position in the results file.
    pub id: i64,
    pub image_id: i64,
    pub category_id: i64,
    pub bbox: [f64; 4],
    /// `w * h` of the box when the results carry boxes, else the mask area.
    pub area: f64,
    pub score: f64,
    pub segmentation: Option<Segmentation>,
}

fn err(source: &str, what: &str, msg: impl std::fmt::Display) -> Error {
    Error::arg("coco json", format!("{source}: {what}: {msg}"))
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| {
        Error::arg(
            "coco json",
            format!("{}: not valid JSON: {e}", path.display()),
        )
    })
}

/// Field access with errors that say where the field was looked for.
struct Entry<'a> {
    obj: &'a Map<String, Value>,
    source: &'a str,
    at: String,
}

impl<'a> Entry<'a> {
    fn new(v: &'a Value, source: &'a str, at: String) -> Result<Self> {
        match v.as_object() {
            Some(obj) => Ok(Entry { obj, source, at }),
            None => Err(err(source, &at, "expected a JSON object")),
        }
    }
    fn fail(&self, field: &str, msg: impl std::fmt::Display) -> Error {
        err(self.source, &format!("{} field \"{field}\"", self.at), msg)
    }
    fn get(&self, field: &str) -> Result<&'a Value> {
        self.obj
            .get(field)
            .ok_or_else(|| self.fail(field, "missing"))
    }
    fn int(&self, field: &str) -> Result<i64> {
        let v = self.get(field)?;
        as_int(v).ok_or_else(|| self.fail(field, format!("expected an integer, got {}", short(v))))
    }
    fn num(&self, field: &str) -> Result<f64> {
        let v = self.get(field)?;
        v.as_f64()
            .ok_or_else(|| self.fail(field, format!("expected a number, got {}", short(v))))
    }
    fn size(&self, field: &str) -> Result<u32> {
        let v = self.int(field)?;
        u32::try_from(v)
            .map_err(|_| self.fail(field, format!("expected a size in 0..2^32, got {v}")))
    }
    fn bbox(&self, field: &str) -> Result<[f64; 4]> {
        let v = self.get(field)?;
        let nums: Option<Vec<f64>> = v
            .as_array()
            .and_then(|a| a.iter().map(Value::as_f64).collect());
        match nums.as_deref() {
            Some(&[x, y, w, h]) if w >= 0.0 && h >= 0.0 => Ok([x, y, w, h]),
            Some(&[_, _, w, h]) => {
                Err(self.fail(field, format!("negative box size (width {w}, height {h})")))
            }
            _ => Err(self.fail(
                field,
                format!("expected [x, y, width, height], got {}", short(v)),
            )),
        }
    }
    fn segmentation(&self, field: &str) -> Result<Segmentation> {
        parse_segmentation(self.get(field)?).map_err(|m| self.fail(field, m))
    }
}

/// Whether a `file_name` could name a file outside the image folder: an
/// absolute path (or a Windows drive prefix) or a `..` component.
fn escapes(file_name: &str) -> bool {
    Path::new(file_name).components().any(|c| {
        matches!(
            c,
            Component::RootDir | Component::Prefix(_) | Component::ParentDir
        )
    })
}

fn as_int(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| {
        v.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
            .map(|f| f as i64)
    })
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        format!(
            "{}...",
            &s[..s.char_indices().nth(57).map_or(s.len(), |(i, _)| i)]
        )
    } else {
        s
    }
}

fn parse_segmentation(v: &Value) -> std::result::Result<Segmentation, String> {
    match v {
        Value::Array(parts) => {
            let mut polys = Vec::with_capacity(parts.len());
            for (i, p) in parts.iter().enumerate() {
                let nums: Option<Vec<f64>> = p
                    .as_array()
                    .and_then(|a| a.iter().map(Value::as_f64).collect());
                polys.push(nums.ok_or_else(|| format!("polygon {i} is not a list of numbers"))?);
            }
            Ok(Segmentation::Polygons(polys))
        }
        Value::Object(o) => {
            let size: Option<Vec<u32>> = o.get("size").and_then(Value::as_array).and_then(|a| {
                a.iter()
                    .map(|x| as_int(x).and_then(|i| u32::try_from(i).ok()))
                    .collect()
            });
            let (h, w) = match size.as_deref() {
                Some(&[h, w]) => (h, w),
                _ => {
                    return Err(format!(
                        "RLE \"size\" must be [height, width] with non-negative integers, got {}",
                        o.get("size").map_or("nothing".into(), short)
                    ))
                }
            };
            let rle = match o.get("counts") {
                Some(Value::String(s)) => Rle::from_compressed(s, h, w),
                Some(Value::Array(a)) => {
                    let counts: Option<Vec<u32>> = a
                        .iter()
                        .map(|x| as_int(x).and_then(|i| u32::try_from(i).ok()))
                        .collect();
                    let counts = counts.ok_or("RLE \"counts\" must be non-negative integers")?;
                    Rle::from_counts(counts, h, w)
                }
                _ => return Err("RLE \"counts\" must be a string or a list of integers".into()),
            };
            rle.map(Segmentation::Rle).map_err(|e| e.to_string())
        }
        _ => Err(format!(
            "expected polygons or an RLE object, got {}",
            short(v)
        )),
    }
}

impl CocoGt {
    /// Reads a COCO instances file (`images`, `annotations`, `categories`).
    pub fn from_file(path: &Path) -> Result<CocoGt> {
        CocoGt::from_value(&read_json(path)?, &path.display().to_string())
    }

    /// Reads parsed COCO JSON; `source` names it in errors. Images need `id`,
    /// `height`, `width` (> 0), and `file_name` when present must be a
    /// string; annotations need `id` (unique), `image_id` and
    /// `category_id` (both listed), `bbox` (non-negative size), `area`;
    /// `iscrowd` defaults to 0 and `segmentation` is optional (needed for
    /// mask evaluation).
    pub fn from_value(v: &Value, source: &str) -> Result<CocoGt> {
        let root = Entry::new(v, source, "top level".into())?;
        let list = |field: &str| -> Result<&Vec<Value>> {
            match v.get(field) {
                Some(Value::Array(a)) => Ok(a),
                Some(other) => {
                    Err(root.fail(field, format!("expected a list, got {}", short(other))))
                }
                None => Err(root.fail(field, "missing")),
            }
        };
        let mut images = Vec::new();
        let mut image_index = HashMap::new();
        for (i, im) in list("images")?.iter().enumerate() {
            let e = Entry::new(im, source, format!("images[{i}]"))?;
            let (id, height, width) = (e.int("id")?, e.size("height")?, e.size("width")?);
            if height == 0 || width == 0 {
                return Err(e.fail(
                    if height == 0 { "height" } else { "width" },
                    "must be positive",
                ));
            }
            check_mask_size(height, width).map_err(|m| e.fail("height", m))?;
            if image_index.insert(id, images.len()).is_some() {
                return Err(e.fail("id", format!("duplicate image id {id}")));
            }
            let file_name = match e.obj.get("file_name") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) if escapes(s) => {
                    return Err(e.fail(
                        "file_name",
                        format!("{s:?} is not a relative path inside the image folder (absolute, or with \"..\")"),
                    ))
                }
                Some(Value::String(s)) => s.clone(),
                Some(v) => {
                    return Err(e.fail("file_name", format!("expected a string, got {}", short(v))))
                }
            };
            images.push(CocoImage {
                id,
                height,
                width,
                file_name,
            });
        }
        let mut categories = Vec::new();
        let mut cat_ids = HashSet::new();
        for (i, c) in list("categories")?.iter().enumerate() {
            let e = Entry::new(c, source, format!("categories[{i}]"))?;
            let id = e.int("id")?;
            if !cat_ids.insert(id) {
                return Err(e.fail("id", format!("duplicate category id {id}")));
            }
            let name = e
                .obj
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            categories.push(CocoCategory { id, name });
        }
        let mut annotations = Vec::new();
        let mut ann_ids = HashSet::new();
        for (i, a) in list("annotations")?.iter().enumerate() {
            let e = Entry::new(a, source, format!("annotations[{i}]"))?;
            let id = e.int("id")?;
            if !ann_ids.insert(id) {
                return Err(e.fail("id", format!("duplicate annotation id {id}")));
            }
            let image_id = e.int("image_id")?;
            if !image_index.contains_key(&image_id) {
                return Err(e.fail("image_id", format!("{image_id} is not in \"images\"")));
            }
            let category_id = e.int("category_id")?;
            if !cat_ids.contains(&category_id) {
                return Err(e.fail(
                    "category_id",
                    format!("{category_id} is not in \"categories\""),
                ));
            }
            let iscrowd = match e.obj.get("iscrowd") {
                None => false,
                Some(Value::Bool(b)) => *b,
                Some(v) => match as_int(v) {
                    Some(0) => false,
                    Some(1) => true,
                    _ => {
                        return Err(e.fail("iscrowd", format!("expected 0 or 1, got {}", short(v))))
                    }
                },
            };
            let area = e.num("area")?;
            if area < 0.0 {
                return Err(e.fail("area", format!("negative area {area}")));
            }
            let segmentation = match e.obj.get("segmentation") {
                None | Some(Value::Null) => None,
                Some(_) => Some(e.segmentation("segmentation")?),
            };
            annotations.push(GtAnnotation {
                id,
                image_id,
                category_id,
                bbox: e.bbox("bbox")?,
                area,
                iscrowd,
                segmentation,
            });
        }
        Ok(CocoGt {
            images,
            annotations,
            categories,
            image_index,
        })
    }

    /// The image with this id.
    pub fn image(&self, id: i64) -> Option<&CocoImage> {
        self.image_index.get(&id).map(|&i| &self.images[i])
    }

    /// Reads a results file for this ground truth; see [`CocoGt::results_from_value`].
    pub fn load_results(&self, path: &Path) -> Result<Vec<Detection>> {
        self.results_from_value(&read_json(path)?, &path.display().to_string())
    }

    /// Reads results `[{image_id, category_id, bbox | segmentation, score}]`
    /// as `COCO.loadRes` does: if the first entry has a non-empty `bbox`,
    /// every entry needs `bbox`, `area = w * h`, and a missing segmentation
    /// becomes the box's polygon; otherwise every entry needs `segmentation`,
    /// `area` is its mask area and a missing `bbox` is [`Rle::to_bbox`] of it.
    /// Ids are 1..=n in file order. An `image_id` not in the ground truth is an
    /// error; unknown category ids are kept (evaluation ignores them).
    pub fn results_from_value(&self, v: &Value, source: &str) -> Result<Vec<Detection>> {
        let Some(list) = v.as_array() else {
            return Err(err(
                source,
                "top level",
                "results must be a JSON list of detections",
            ));
        };
        let Some(first) = list.first() else {
            return Ok(Vec::new());
        };
        let first = Entry::new(first, source, "results[0]".into())?;
        let boxes = match first.obj.get("bbox") {
            Some(Value::Array(a)) => !a.is_empty(),
            Some(_) => true,
            None => false,
        };
        if !boxes && !first.obj.contains_key("segmentation") {
            return Err(first.fail("bbox", "missing, and no \"segmentation\" either (keypoint and caption results are not supported)"));
        }
        let mut out = Vec::with_capacity(list.len());
        for (i, d) in list.iter().enumerate() {
            let e = Entry::new(d, source, format!("results[{i}]"))?;
            let image_id = e.int("image_id")?;
            let Some(img) = self.image(image_id) else {
                return Err(e.fail(
                    "image_id",
                    format!("{image_id} is not an image of the ground truth"),
                ));
            };
            let category_id = e.int("category_id")?;
            let score = e.num("score")?;
            let segmentation = match e.obj.get("segmentation") {
                None => None,
                Some(_) => Some(e.segmentation("segmentation")?),
            };
            let (bbox, area, segmentation) = if boxes {
                let bb = e.bbox("bbox")?;
                let (x1, x2, y1, y2) = (bb[0], bb[0] + bb[2], bb[1], bb[1] + bb[3]);
                let seg = segmentation.unwrap_or(Segmentation::Polygons(vec![vec![
                    x1, y1, x1, y2, x2, y2, x2, y1,
                ]]));
                (bb, bb[2] * bb[3], seg)
            } else {
                let seg = e.segmentation("segmentation")?;
                let rle = seg
                    .to_rle(img.height, img.width)
                    .map_err(|m| e.fail("segmentation", m))?;
                let bb = if e.obj.contains_key("bbox") {
                    e.bbox("bbox")?
                } else {
                    rle.to_bbox()
                };
                (bb, rle.area() as f64, seg)
            };
            out.push(Detection {
                id: i as i64 + 1,
                image_id,
                category_id,
                bbox,
                area,
                score,
                segmentation: Some(segmentation),
            });
        }
        Ok(out)
    }
}
