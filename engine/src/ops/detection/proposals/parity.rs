//! filter_proposals' GPU parity cases: f32 and f64 batches of candidates
//! in FPN-like levels (boxes in overlapping clusters, partly or entirely
//! outside the image, tiny, with inf / NaN coordinates; NaN / +-inf and
//! tied logits): torchvision's training shapes (5 levels, 2000 a level:
//! 32 mask words a row), smaller levels, a single candidate, more than 64
//! images (two prep launches); post_n below and above the kept count.
//!
//! Bounds: the clip, size test and IoU are the CPU's operations in the
//! dtype, so the kept sets, their order and the boxes are exact; only the
//! scores differ, by the device's exp (f32: within 2 ulp, under the
//! default 1e-5; f64: within 1 ulp of the host's, so 1e-14 instead of
//! f64's default 0). The logits are drawn so that no score order can flip
//! (see [`candidates`]); counts, boxes and order are then identical.

use crate::ops::index::sort_order;
use crate::parity::Case;
use crate::{DType, Device, Rng, Tensor};

/// Random candidates of a batch: per image and level, boxes in a few
/// clusters (heavy overlap, so NMS suppresses), some partly or entirely
/// outside the image, tiny ones, a few with inf / NaN coordinates;
/// logits normal (quantized to 1/4 in half the levels: ties), with NaN,
/// +inf and -inf among them, each segment sorted as topk returns it (NaN
/// first, then decreasing). `dyadic`: coordinates on a 1/16 grid.
/// `parity`: the finite logits clamped to [-6, 6] and the others on a 1/100
/// grid, so that two different logits have sigmoids many ulp apart in f32
/// (the device's exp is within 2 ulp of the host's: no order can flip).
pub(crate) struct Candidates {
    pub boxes: Vec<f64>,
    pub logits: Vec<f64>,
    pub levels: Vec<(usize, usize)>,
    pub sizes: Vec<(usize, usize)>,
}

pub(crate) fn candidates(
    rng: &mut Rng,
    lens: &[usize],
    sizes: &[(usize, usize)],
    dyadic: bool,
    parity: bool,
) -> Candidates {
    let k: usize = lens.iter().sum();
    let mut levels = Vec::new();
    let mut start = 0;
    for &n in lens {
        levels.push((start, n));
        start += n;
    }
    let (mut boxes, mut logits) = (Vec::new(), Vec::new());
    for &(h, w) in sizes {
        let (h, w) = (h as f64, w as f64);
        for (l, &n) in lens.iter().enumerate() {
            let centers: Vec<(f64, f64)> = (0..6 + n / 20)
                .map(|_| {
                    (
                        rng.uniform() * 1.3 * w - 0.15 * w,
                        rng.uniform() * 1.3 * h - 0.15 * h,
                    )
                })
                .collect();
            let side = 8.0 * (1u32 << l) as f64;
            for i in 0..n {
                let (cx, cy) = centers[rng.below(centers.len())];
                let (x, y) = (
                    cx + rng.normal() * 0.3 * side,
                    cy + rng.normal() * 0.3 * side,
                );
                let (bw, bh) = (
                    side * (1.0 + rng.uniform() * 0.6),
                    side * (1.0 + rng.uniform() * 0.6),
                );
                let mut b = match i % 17 {
                    3 => [x, y, x + 0.3 * rng.uniform(), y + bh], // tiny width
                    5 => [x, y, x + bw, y + 0.5],                 // tiny height
                    7 => [w + 5.0, y, w + 5.0 + bw, y + bh],      // right of the image
                    9 => [x - 3.0 * w, y, x - 2.0 * w, y + bh],   // left of it
                    11 => [x, y, f64::INFINITY, y + bh],          // decode overflow
                    13 if i % 2 == 0 => [x, f64::NAN, x + bw, y + bh],
                    _ => [x - bw / 2.0, y - bh / 2.0, x + bw / 2.0, y + bh / 2.0],
                };
                if dyadic {
                    for v in &mut b {
                        if v.is_finite() {
                            *v = (*v * 16.0).round() / 16.0;
                        }
                    }
                }
                boxes.extend(b);
            }
            let mut lg: Vec<f64> = (0..n)
                .map(|i| {
                    let mut z = rng.normal() * 3.0;
                    if parity {
                        z = (z.clamp(-6.0, 6.0) * 100.0).round() / 100.0;
                    }
                    match i % 29 {
                        4 => f64::NAN,
                        8 => f64::INFINITY,
                        12 => f64::NEG_INFINITY,
                        _ if l % 2 == 0 => (z * 4.0).round() / 4.0,
                        _ => z,
                    }
                })
                .collect();
            let order = sort_order(&lg, true);
            lg = order.iter().map(|&i| lg[i]).collect();
            logits.extend(lg);
        }
    }
    debug_assert_eq!(logits.len(), sizes.len() * k);
    Candidates {
        boxes,
        logits,
        levels,
        sizes: sizes.to_vec(),
    }
}

impl Candidates {
    /// boxes [B, K, 4] and logits [B, K] in `dtype` on the host.
    pub fn tensors(&self, dtype: DType) -> crate::Result<(Tensor, Tensor)> {
        let b = self.sizes.len();
        let k = self.logits.len().checked_div(b).unwrap_or(0);
        Ok((
            Tensor::from_vec(self.boxes.clone(), &[b, k, 4])?.to_dtype(dtype)?,
            Tensor::from_vec(self.logits.clone(), &[b, k])?.to_dtype(dtype)?,
        ))
    }
}

/// The parity cases (see the module docs).
pub(crate) fn cases(rng: &mut Rng, out: &mut Vec<Case>) {
    // (level lengths, image sizes, min_size, score_thresh, nms_thresh, post_n)
    type PropCase = (Vec<usize>, Vec<(usize, usize)>, f64, f64, f64, usize);
    let train: Vec<usize> = vec![2000, 2000, 2000, 2000, 819];
    let configs: Vec<PropCase> = vec![
        (train, vec![(800, 1216), (800, 1088)], 1e-3, 0.0, 0.7, 2000),
        (
            vec![300, 200, 150, 100, 60],
            vec![(480, 640), (512, 384), (333, 500)],
            1.0,
            0.05,
            0.5,
            250,
        ),
        (vec![1], vec![(50, 60)], 0.0, 0.0, 0.7, 10),
        (vec![40, 30], vec![(64, 80); 70], 0.5, 0.0, 0.6, 20),
    ];
    for dtype in [DType::F32, DType::F64] {
        for (lens, sizes, min_size, score_thresh, nms, post_n) in configs.iter().cloned() {
            let c = candidates(rng, &lens, &sizes, false, true);
            let label = format!(
                "B{} levels {lens:?} min {min_size} score>={score_thresh} iou>{nms} post {post_n}",
                sizes.len()
            );
            out.push(Case {
                op: "filter_proposals",
                dtype,
                label,
                threshold: if dtype == DType::F64 {
                    Some(1e-14)
                } else {
                    None
                },
                run: Box::new(move |dev: Device| {
                    let (b, l) = c.tensors(dtype)?;
                    let p = super::filter_proposals(
                        &b.to_device(dev)?,
                        &l.to_device(dev)?,
                        &c.levels,
                        &c.sizes,
                        min_size,
                        score_thresh,
                        nms,
                        post_n,
                    )?;
                    Ok(vec![
                        ("counts".into(), p.counts),
                        ("boxes".into(), p.boxes),
                        ("scores".into(), p.scores),
                    ])
                }),
            });
        }
    }
}
