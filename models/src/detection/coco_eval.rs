//! The COCO detection metric exactly as pycocotools `COCOeval` computes it
//! (`evaluate`, `accumulate`, `summarize` with the default parameters), for
//! boxes and masks.
//!
//! Per (image, category): detections sorted by score (stable, like numpy's
//! mergesort) and cut to the largest `maxDets`; IoU with every ground truth.
//! Per area range and IoU threshold, each detection in score order takes the
//! still-unmatched ground truth of highest IoU (>= threshold); crowd ground
//! truths can take many detections, and ignored ground truths (crowd, or area
//! outside the range) sort last and are used only when no regular one
//! matches. Detections matched to an ignored ground truth, or unmatched with
//! an area outside the range, count neither as true nor false positives.
//! Per category, area range and `maxDets`: precision at the 101 recall
//! points on the right-to-left max envelope of the precision curve; -1 where
//! the category has no regular ground truth. Summary numbers average the
//! entries that are not -1.

use super::coco_json::{CocoGt, Detection};
use super::rle::{bbox_iou, rle_iou, Rle};
use engine::{Error, Result};
use rayon::prelude::*;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::path::Path;

/// What the IoU of a detection and a ground truth is computed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IouType {
    /// Boxes `[x, y, w, h]` (maskApi `bbIou`).
    Bbox,
    /// Instance masks as RLE (maskApi `rleIou`).
    Segm,
}

impl IouType {
    fn name(self) -> &'static str {
        match self {
            IouType::Bbox => "bbox",
            IouType::Segm => "segm",
        }
    }
}

/// The evaluation parameters; [`Params::default`] is pycocotools' `Params`
/// for boxes and masks.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    /// IoU thresholds, numpy `linspace(.5, .95, 10)` bit for bit.
    pub iou_thrs: Vec<f64>,
    /// Recall points, numpy `linspace(0, 1, 101)` bit for bit.
    pub rec_thrs: Vec<f64>,
    /// Ascending detection limits per image: 1, 10, 100.
    pub max_dets: Vec<usize>,
    /// Inclusive area ranges: all [0, 1e10], small [0, 32²], medium [32², 96²],
    /// large [96², 1e10].
    pub area_rng: Vec<[f64; 2]>,
    pub area_lbl: Vec<&'static str>,
}

/// numpy.linspace(start, stop, num) with endpoint: `i * step + start`, the last
/// value set to `stop`.
fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    v[num - 1] = stop;
    v
}

impl Default for Params {
    fn default() -> Self {
        let big = 1e5f64 * 1e5;
        Params {
            iou_thrs: linspace(0.5, 0.95, 10),
            rec_thrs: linspace(0.0, 1.0, 101),
            max_dets: vec![1, 10, 100],
            area_rng: vec![[0.0, big], [0.0, 1024.0], [1024.0, 9216.0], [9216.0, big]],
            area_lbl: vec!["all", "small", "medium", "large"],
        }
    }
}

/// IoUs of one (image, category): row-major `dets x gts`, detections in
/// evaluation order (score descending, stable, at most the largest
/// `maxDets`), ground truths in file order. Empty when either side is.
#[derive(Clone, Debug, PartialEq)]
pub struct IouMatrix {
    pub dets: usize,
    pub gts: usize,
    pub values: Vec<f64>,
}

/// Per (image, category, area range) result of matching.
struct EvalImg {
    scores: Vec<f64>,
    /// `[t * D + d]`: matched to a ground truth (of nonzero id, as pycocotools tests it).
    matched: Vec<bool>,
    /// `[t * D + d]`: neither a true nor a false positive.
    ignored: Vec<bool>,
    /// Ground truths that are not ignored.
    regular_gts: usize,
}

/// A finished evaluation: per-pair IoUs, the precision and recall tables and
/// the 12 summary numbers.
#[derive(Clone, Debug)]
pub struct CocoEval {
    pub iou_type: IouType,
    pub params: Params,
    /// Evaluated image ids, ascending.
    pub img_ids: Vec<i64>,
    /// Evaluated category ids, ascending.
    pub cat_ids: Vec<i64>,
    ious: HashMap<(i64, i64), IouMatrix>,
    precision: Vec<f64>,
    recall: Vec<f64>,
    stats: [f64; 12],
}

/// Regions compared by IoU.
enum Regions {
    Boxes(Vec<[f64; 4]>),
    Masks(Vec<Rle>),
}

impl Regions {
    fn ious(&self, other: &Regions, dt: &[usize], gt: &[usize], crowd: &[bool]) -> Vec<f64> {
        match (self, other) {
            (Regions::Boxes(d), Regions::Boxes(g)) => {
                let d: Vec<[f64; 4]> = dt.iter().map(|&i| d[i]).collect();
                let g: Vec<[f64; 4]> = gt.iter().map(|&i| g[i]).collect();
                bbox_iou(&d, &g, crowd)
            }
            (Regions::Masks(d), Regions::Masks(g)) => {
                let d: Vec<Rle> = dt.iter().map(|&i| d[i].clone()).collect();
                let g: Vec<Rle> = gt.iter().map(|&i| g[i].clone()).collect();
                rle_iou(&d, &g, crowd)
            }
            _ => unreachable!("detections and ground truths use the same IoU type"),
        }
    }
}

/// Descending score order with ties kept in input order, as
/// `np.argsort(-scores, kind='mergesort')`.
fn by_score_desc(a: f64, b: f64) -> Ordering {
    b.partial_cmp(&a)
        .unwrap_or_else(|| a.is_nan().cmp(&b.is_nan()))
}

/// numpy's pairwise summation of a contiguous float64 array (what `np.mean`
/// uses), so that averages match to the last bit.
fn pairwise_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        a.iter().fold(0.0, |s, &x| s + x)
    } else if n <= 128 {
        let mut r = [0.0; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i < n - n % 8 {
            for j in 0..8 {
                r[j] += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &x in &a[i..] {
            res += x;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_sum(&a[..n2]) + pairwise_sum(&a[n2..])
    }
}

/// Evaluates the results file `dt` against the ground truth `gt`.
pub fn evaluate_files(gt: &Path, dt: &Path, iou: IouType) -> Result<CocoEval> {
    let coco = CocoGt::from_file(gt)?;
    let dets = coco.load_results(dt)?;
    CocoEval::evaluate(&coco, &dets, iou)
}

impl CocoEval {
    /// Runs `evaluate`, `accumulate` and `summarize` with default [`Params`]
    /// over every image and category of `gt`. Detections of categories not in
    /// `gt` are ignored. For [`IouType::Segm`] every ground truth and detection
    /// needs a segmentation (polygons are rasterised at their image's size).
    pub fn evaluate(gt: &CocoGt, dts: &[Detection], iou_type: IouType) -> Result<CocoEval> {
        let params = Params::default();
        let mut img_ids: Vec<i64> = gt.images.iter().map(|i| i.id).collect();
        img_ids.sort_unstable();
        img_ids.dedup();
        let mut cat_ids: Vec<i64> = gt.categories.iter().map(|c| c.id).collect();
        cat_ids.sort_unstable();
        cat_ids.dedup();
        let img_pos: HashMap<i64, usize> =
            img_ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();
        let cat_pos: HashMap<i64, usize> =
            cat_ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();

        // (category, image) -> (ground truths, detections), each in file order.
        let mut groups: HashMap<(usize, usize), (Vec<usize>, Vec<usize>)> = HashMap::new();
        for (i, a) in gt.annotations.iter().enumerate() {
            if let (Some(&k), Some(&im)) = (cat_pos.get(&a.category_id), img_pos.get(&a.image_id)) {
                groups.entry((k, im)).or_default().0.push(i);
            }
        }
        for (i, d) in dts.iter().enumerate() {
            if let (Some(&k), Some(&im)) = (cat_pos.get(&d.category_id), img_pos.get(&d.image_id)) {
                groups.entry((k, im)).or_default().1.push(i);
            }
        }
        let used_dt: Vec<bool> = dts
            .iter()
            .map(|d| cat_pos.contains_key(&d.category_id) && img_pos.contains_key(&d.image_id))
            .collect();
        let (gt_regions, dt_regions) = match iou_type {
            IouType::Bbox => (
                Regions::Boxes(gt.annotations.iter().map(|a| a.bbox).collect()),
                Regions::Boxes(dts.iter().map(|d| d.bbox).collect()),
            ),
            IouType::Segm => {
                let gt_masks = gt
                    .annotations
                    .par_iter()
                    .enumerate()
                    .map(|(i, a)| {
                        let img = gt.image(a.image_id).ok_or_else(|| {
                            Error::arg("coco eval", format!("annotations[{i}]: image_id {} is not in \"images\"", a.image_id))
                        })?;
                        let seg = a.segmentation.as_ref().ok_or_else(|| {
                            Error::arg("coco eval", format!("annotations[{i}] (id {}): no \"segmentation\" for segm evaluation", a.id))
                        })?;
                        // as `detect train` skips them: a warning, not an error
                        Ok(seg.to_rle(img.height, img.width).map_err(|e| {
                            format!("annotations[{i}] (id {}) field \"segmentation\": {e}", a.id)
                        }))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let unusable: Vec<&String> =
                    gt_masks.iter().filter_map(|m| m.as_ref().err()).collect();
                if let Some(first) = unusable.first() {
                    eprintln!(
                        "warning: {} ground-truth masks that cannot be rasterised left out of segm evaluation (first: {first})",
                        unusable.len()
                    );
                    for (gts, _) in groups.values_mut() {
                        gts.retain(|&i| gt_masks[i].is_ok());
                    }
                }
                let gt_masks = gt_masks
                    .into_iter()
                    .map(|m| m.unwrap_or_else(|_| Rle::empty(0, 0)))
                    .collect();
                let dt_masks = dts
                    .par_iter()
                    .enumerate()
                    .map(|(i, d)| {
                        if !used_dt[i] {
                            return Ok(Rle::empty(0, 0));
                        }
                        let img = gt.image(d.image_id).ok_or_else(|| {
                            Error::arg(
                                "coco eval",
                                format!(
                                    "results[{i}]: image_id {} is not in the ground truth",
                                    d.image_id
                                ),
                            )
                        })?;
                        let seg = d.segmentation.as_ref().ok_or_else(|| {
                            Error::arg(
                                "coco eval",
                                format!("results[{i}]: no \"segmentation\" for segm evaluation"),
                            )
                        })?;
                        seg.to_rle(img.height, img.width).map_err(|e| {
                            Error::arg(
                                "coco eval",
                                format!("results[{i}] field \"segmentation\": {e}"),
                            )
                        })
                    })
                    .collect::<Result<Vec<Rle>>>()?;
                (Regions::Masks(gt_masks), Regions::Masks(dt_masks))
            }
        };

        let mut keys: Vec<(usize, usize)> = groups.keys().copied().collect();
        keys.sort_unstable();
        let max_det = *params.max_dets.last().expect("max_dets is not empty");
        let per_key: Vec<(IouMatrix, Vec<EvalImg>)> = keys
            .par_iter()
            .map(|key| {
                let (g, d) = &groups[key];
                let mut d = d.clone();
                d.sort_by(|&a, &b| by_score_desc(dts[a].score, dts[b].score));
                d.truncate(max_det);
                let crowd: Vec<bool> = g.iter().map(|&i| gt.annotations[i].iscrowd).collect();
                let values = if g.is_empty() || d.is_empty() {
                    Vec::new()
                } else {
                    dt_regions.ious(&gt_regions, &d, g, &crowd)
                };
                let ious = IouMatrix {
                    dets: d.len(),
                    gts: g.len(),
                    values,
                };
                let evals = params
                    .area_rng
                    .iter()
                    .map(|&rng| evaluate_img(&params, gt, dts, g, &d, &ious, rng))
                    .collect();
                (ious, evals)
            })
            .collect();

        // evalImgs[k][a] over images in ascending id order (images without
        // ground truth or detections of k are absent, as pycocotools' None).
        let (kn, an) = (cat_ids.len(), params.area_rng.len());
        let mut eval_imgs: Vec<Vec<Vec<EvalImg>>> = (0..kn)
            .map(|_| (0..an).map(|_| Vec::new()).collect())
            .collect();
        let mut ious = HashMap::with_capacity(keys.len());
        for (&(k, im), (m, evals)) in keys.iter().zip(per_key) {
            ious.insert((img_ids[im], cat_ids[k]), m);
            for (a, e) in evals.into_iter().enumerate() {
                eval_imgs[k][a].push(e);
            }
        }
        let (precision, recall) = accumulate(&params, &eval_imgs);
        let mut ev = CocoEval {
            iou_type,
            params,
            img_ids,
            cat_ids,
            ious,
            precision,
            recall,
            stats: [0.0; 12],
        };
        ev.stats = std::array::from_fn(|i| ev.summary_entry(i).1);
        Ok(ev)
    }

    /// The 12 summary numbers of `COCOeval.stats`: AP@[.5:.95], AP50, AP75,
    /// AP small/medium/large (100 detections), AR with 1/10/100 detections, AR
    /// small/medium/large (100 detections); -1 where nothing was measurable.
    pub fn stats(&self) -> [f64; 12] {
        self.stats
    }

    /// The 12 lines `COCOeval.summarize()` prints, each ending in a newline.
    pub fn summary(&self) -> String {
        (0..12).map(|i| self.summary_entry(i).0 + "\n").collect()
    }

    /// IoUs of one (image, category) pair, if it has ground truths or detections.
    pub fn ious(&self, image_id: i64, category_id: i64) -> Option<&IouMatrix> {
        self.ious.get(&(image_id, category_id))
    }

    /// `eval['precision'][t, r, k, a, m]` (-1 where category k has no regular
    /// ground truth in area range a), indices into the [`Params`] lists and
    /// `cat_ids`.
    pub fn precision(&self, t: usize, r: usize, k: usize, a: usize, m: usize) -> f64 {
        let p = &self.params;
        let (rn, kn, an, mn) = (
            p.rec_thrs.len(),
            self.cat_ids.len(),
            p.area_rng.len(),
            p.max_dets.len(),
        );
        self.precision[(((t * rn + r) * kn + k) * an + a) * mn + m]
    }

    /// `eval['recall'][t, k, a, m]`.
    pub fn recall(&self, t: usize, k: usize, a: usize, m: usize) -> f64 {
        let p = &self.params;
        let (kn, an, mn) = (self.cat_ids.len(), p.area_rng.len(), p.max_dets.len());
        self.recall[((t * kn + k) * an + a) * mn + m]
    }

    /// Line and value of summary number `i` (pycocotools `_summarize`).
    fn summary_entry(&self, i: usize) -> (String, f64) {
        let md = &self.params.max_dets;
        let (ap, iou, area, max_dets) = match i {
            0 => (true, None, "all", 100),
            1 => (true, Some(0.5), "all", md[2]),
            2 => (true, Some(0.75), "all", md[2]),
            3 => (true, None, "small", md[2]),
            4 => (true, None, "medium", md[2]),
            5 => (true, None, "large", md[2]),
            6 => (false, None, "all", md[0]),
            7 => (false, None, "all", md[1]),
            8 => (false, None, "all", md[2]),
            9 => (false, None, "small", md[2]),
            10 => (false, None, "medium", md[2]),
            _ => (false, None, "large", md[2]),
        };
        let p = &self.params;
        // Exact float comparison, as `np.where(iouThr == p.iouThrs)`.
        let ts: Vec<usize> = (0..p.iou_thrs.len())
            .filter(|&t| iou.is_none_or(|v| p.iou_thrs[t] == v))
            .collect();
        let aind: Vec<usize> = (0..p.area_lbl.len())
            .filter(|&a| p.area_lbl[a] == area)
            .collect();
        let mind: Vec<usize> = (0..md.len()).filter(|&m| md[m] == max_dets).collect();
        let mut vals = Vec::new();
        for &t in &ts {
            if ap {
                for r in 0..p.rec_thrs.len() {
                    for k in 0..self.cat_ids.len() {
                        for &a in &aind {
                            for &m in &mind {
                                vals.push(self.precision(t, r, k, a, m));
                            }
                        }
                    }
                }
            } else {
                for k in 0..self.cat_ids.len() {
                    for &a in &aind {
                        for &m in &mind {
                            vals.push(self.recall(t, k, a, m));
                        }
                    }
                }
            }
        }
        vals.retain(|&v| v > -1.0);
        let mean = if vals.is_empty() {
            -1.0
        } else {
            pairwise_sum(&vals) / vals.len() as f64
        };
        let iou_str = match iou {
            None => format!(
                "{:.2}:{:.2}",
                p.iou_thrs[0],
                p.iou_thrs[p.iou_thrs.len() - 1]
            ),
            Some(v) => format!("{v:.2}"),
        };
        let (title, kind) = if ap {
            ("Average Precision", "(AP)")
        } else {
            ("Average Recall", "(AR)")
        };
        let line =
            format!(" {title:<18} {kind} @[ IoU={iou_str:<9} | area={area:>6} | maxDets={max_dets:>3} ] = {mean:.3}");
        (line, mean)
    }
}

impl std::fmt::Display for CocoEval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "IoU metric: {}\n{}",
            self.iou_type.name(),
            self.summary()
        )
    }
}

/// pycocotools `evaluateImg` for one (image, category) and area range `rng`;
/// `d` holds the detections already in score order and cut to `maxDets`.
fn evaluate_img(
    p: &Params,
    gt: &CocoGt,
    dts: &[Detection],
    g: &[usize],
    d: &[usize],
    ious: &IouMatrix,
    rng: [f64; 2],
) -> EvalImg {
    let out_of = |area: f64| area < rng[0] || area > rng[1];
    let ignore: Vec<bool> = g
        .iter()
        .map(|&i| gt.annotations[i].iscrowd || out_of(gt.annotations[i].area))
        .collect();
    // Regular ground truths first, each group in file order (a stable sort).
    let order: Vec<usize> = (0..g.len())
        .filter(|&j| !ignore[j])
        .chain((0..g.len()).filter(|&j| ignore[j]))
        .collect();
    let gt_ig: Vec<bool> = order.iter().map(|&j| ignore[j]).collect();
    let crowd: Vec<bool> = order
        .iter()
        .map(|&j| gt.annotations[g[j]].iscrowd)
        .collect();
    let gt_id: Vec<i64> = order.iter().map(|&j| gt.annotations[g[j]].id).collect();
    let (tn, dn, gn) = (p.iou_thrs.len(), d.len(), g.len());
    let mut matched = vec![false; tn * dn];
    let mut ignored = vec![false; tn * dn];
    if !ious.values.is_empty() {
        let mut gt_taken = vec![false; gn];
        for (t, &thr) in p.iou_thrs.iter().enumerate() {
            gt_taken.iter_mut().for_each(|x| *x = false);
            for di in 0..dn {
                let mut best = thr.min(1.0 - 1e-10);
                let mut m: Option<usize> = None;
                for gi in 0..gn {
                    if gt_taken[gi] && !crowd[gi] {
                        continue;
                    }
                    // Once matched to a regular gt, ignored ones (sorted last) can't replace it.
                    if m.is_some_and(|m| !gt_ig[m]) && gt_ig[gi] {
                        break;
                    }
                    let iou = ious.values[di * gn + order[gi]];
                    if iou < best {
                        continue;
                    }
                    best = iou;
                    m = Some(gi);
                }
                if let Some(m) = m {
                    ignored[t * dn + di] = gt_ig[m];
                    matched[t * dn + di] = gt_id[m] != 0;
                    gt_taken[m] = true;
                }
            }
        }
    }
    for di in 0..dn {
        if out_of(dts[d[di]].area) {
            for t in 0..tn {
                if !matched[t * dn + di] {
                    ignored[t * dn + di] = true;
                }
            }
        }
    }
    EvalImg {
        scores: d.iter().map(|&i| dts[i].score).collect(),
        matched,
        ignored,
        regular_gts: gt_ig.iter().filter(|&&x| !x).count(),
    }
}

/// pycocotools `accumulate`: precision `[T, R, K, A, M]` and recall `[T, K, A, M]`.
fn accumulate(p: &Params, eval_imgs: &[Vec<Vec<EvalImg>>]) -> (Vec<f64>, Vec<f64>) {
    let (tn, rn, kn, an, mn) = (
        p.iou_thrs.len(),
        p.rec_thrs.len(),
        eval_imgs.len(),
        p.area_rng.len(),
        p.max_dets.len(),
    );
    // Per category: precision [T, R, A, M] and recall [T, A, M].
    let per_cat: Vec<(Vec<f64>, Vec<f64>)> = eval_imgs
        .par_iter()
        .map(|by_area| {
            let mut prec = vec![-1.0; tn * rn * an * mn];
            let mut rec = vec![-1.0; tn * an * mn];
            for (a, evals) in by_area.iter().enumerate() {
                if evals.is_empty() {
                    continue;
                }
                let npig: usize = evals.iter().map(|e| e.regular_gts).sum();
                if npig == 0 {
                    continue;
                }
                for (m, &max_det) in p.max_dets.iter().enumerate() {
                    // (score, image entry, detection) concatenated in image order, then stably sorted.
                    let mut dets: Vec<(f64, usize, usize)> = Vec::new();
                    for (ei, e) in evals.iter().enumerate() {
                        for (di, &s) in e.scores.iter().enumerate().take(max_det) {
                            dets.push((s, ei, di));
                        }
                    }
                    dets.sort_by(|x, y| by_score_desc(x.0, y.0));
                    let nd = dets.len();
                    let mut rc = vec![0.0; nd];
                    let mut pr = vec![0.0; nd];
                    for t in 0..tn {
                        let (mut tp, mut fp) = (0usize, 0usize);
                        for (i, &(_, ei, di)) in dets.iter().enumerate() {
                            let e = &evals[ei];
                            let idx = t * e.scores.len() + di;
                            if !e.ignored[idx] {
                                if e.matched[idx] {
                                    tp += 1;
                                } else {
                                    fp += 1;
                                }
                            }
                            let (tpf, fpf) = (tp as f64, fp as f64);
                            rc[i] = tpf / npig as f64;
                            pr[i] = tpf / (fpf + tpf + f64::EPSILON);
                        }
                        rec[(t * an + a) * mn + m] = if nd > 0 { rc[nd - 1] } else { 0.0 };
                        for i in (1..nd).rev() {
                            if pr[i] > pr[i - 1] {
                                pr[i - 1] = pr[i];
                            }
                        }
                        for (r, &thr) in p.rec_thrs.iter().enumerate() {
                            // searchsorted(rc, thr, side='left'); past the end the rest stay 0.
                            let i = rc.partition_point(|&x| x < thr);
                            prec[((t * rn + r) * an + a) * mn + m] =
                                if i < nd { pr[i] } else { 0.0 };
                        }
                    }
                }
            }
            (prec, rec)
        })
        .collect();
    let mut precision = vec![-1.0; tn * rn * kn * an * mn];
    let mut recall = vec![-1.0; tn * kn * an * mn];
    for (k, (prec, rec)) in per_cat.iter().enumerate() {
        for t in 0..tn {
            for a in 0..an {
                for m in 0..mn {
                    recall[((t * kn + k) * an + a) * mn + m] = rec[(t * an + a) * mn + m];
                    for r in 0..rn {
                        precision[(((t * rn + r) * kn + k) * an + a) * mn + m] =
                            prec[((t * rn + r) * an + a) * mn + m];
                    }
                }
            }
        }
    }
    (precision, recall)
}
