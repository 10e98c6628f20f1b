//! The Region Proposal Network of Faster / Mask R-CNN, exactly as
//! torchvision's `RPNHead` and `RegionProposalNetwork`
//! (torchvision/models/detection/rpn.py), built from the anchor, box coder,
//! matcher and sampler pieces of this module.
//!
//! What differs from torchvision, and why:
//! - The sampler draws its subset from a hash of a seed instead of
//!   `torch.randperm` (see [`super::sampler`]): the same counts and
//!   eligibility, other members. Whenever every eligible anchor is sampled
//!   (batch size per image at least the number of anchors), the losses are
//!   the same as torchvision's.
//! - Everything runs on the head's device: anchors (uploaded once per grid),
//!   the per-level top-n, decoding, proposal selection
//!   (`engine::ops::filter_proposals`), matching, sampling, box targets and
//!   the losses. One read per call brings the proposals and the sampled
//!   counts to the host.
//! - The box loss is a mean over the positives' 4 deltas rescaled to
//!   torchvision's sum over |S| (one extra rounding).
//! - Per-level top-n and NMS ties are broken by the lower anchor index
//!   (torch's `topk` and sort leave such ties unspecified).
//! - Feature maps in bf16 or f16 (autocast) give head outputs in that
//!   dtype, cast to f32 before decoding, proposal selection and the losses
//!   ([`super::box_dtype`]), as torchvision's decoding and losses run in
//!   f32 under autocast.
//! - Both losses come out in the features' dtype (f32 for half features).
//!   torchvision builds its
//!   objectness labels in float32 whatever the features' dtype, so with
//!   float64 features its `loss_objectness` is the float64 value rounded to
//!   float32 (its gradient is float64 and unaffected).
//! - Targets given in eval mode produce losses too (a validation loss);
//!   torchvision ignores targets in eval mode.

use super::anchors::AnchorGenerator;
use super::box_coder::BoxCoder;
use super::box_dtype;
use super::host::{read, to_device_of};
use super::matcher::Matcher;
use super::sampler::BalancedPositiveNegativeSampler;
use engine::nn::{join, Conv2d, Module, Param};
use engine::ops::detection::{filter_proposals, match_boxes, BalancedSample};
use engine::ops::{box_iou, Conv2dParams};
use engine::{DType, Device, Element, Error, Float, Result, Rng, Tensor};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// torchvision's `RPNHead` (one conv layer, `conv_depth = 1`): a shared
/// 3x3 conv (C -> C, bias, padding 1) + ReLU applied to every level, then a
/// 1x1 conv to `A` objectness logits and a 1x1 conv to `4 A` box deltas.
///
/// Parameter names under `prefix` are torchvision's: `conv.0.0.weight`,
/// `conv.0.0.bias` (the conv is a `Conv2dNormActivation` inside an
/// `nn.Sequential`), `cls_logits.weight`, `cls_logits.bias`,
/// `bbox_pred.weight`, `bbox_pred.bias`; in Mask R-CNN the prefix is
/// `rpn.head`.
pub struct RpnHead {
    pub conv: Conv2d,
    pub cls_logits: Conv2d,
    pub bbox_pred: Conv2d,
    in_channels: usize,
    num_anchors: usize,
}

impl RpnHead {
    /// A head for `in_channels` feature channels and `num_anchors` anchors
    /// per location, parameters in `dtype` initialised as torchvision:
    /// every weight N(0, 0.01^2) (drawn from `rng` in the order conv,
    /// cls_logits, bbox_pred), every bias 0.
    pub fn new(
        prefix: &str,
        in_channels: usize,
        num_anchors: usize,
        dtype: DType,
        rng: &mut Rng,
    ) -> Result<RpnHead> {
        if in_channels == 0 || num_anchors == 0 {
            return Err(Error::arg(
                "RpnHead::new",
                format!(
                    "{prefix}: in_channels ({in_channels}) and num_anchors ({num_anchors}) must be > 0"
                ),
            ));
        }
        if dtype != DType::F32 && dtype != DType::F64 {
            return Err(Error::dtype("RpnHead::new", "f32 or f64", dtype));
        }
        let mut layer = |name: &str, out: usize, k: usize, pad: usize| -> Result<Conv2d> {
            let p = join(prefix, name);
            let w = Tensor::randn(&[out, in_channels, k, k], 0.0, 0.01, dtype, rng);
            let weight = Param::new(join(&p, "weight"), w, false)?;
            let bias = Param::new(join(&p, "bias"), Tensor::zeros(&[out], dtype), true)?;
            Conv2d::from_params(
                weight,
                Some(bias),
                Conv2dParams {
                    padding: [pad, pad],
                    ..Conv2dParams::default()
                },
            )
        };
        let conv = layer("conv.0.0", in_channels, 3, 1)?;
        let cls_logits = layer("cls_logits", num_anchors, 1, 0)?;
        let bbox_pred = layer("bbox_pred", 4 * num_anchors, 1, 0)?;
        Ok(RpnHead {
            conv,
            cls_logits,
            bbox_pred,
            in_channels,
            num_anchors,
        })
    }

    pub fn in_channels(&self) -> usize {
        self.in_channels
    }

    /// Anchors per feature-map location (`A`).
    pub fn num_anchors(&self) -> usize {
        self.num_anchors
    }

    /// One level: `x` [B, C, H, W] -> (objectness logits [B, A, H, W],
    /// box deltas [B, 4 A, H, W]), with t = relu(conv(x)),
    /// logits = cls_logits(t), deltas = bbox_pred(t).
    pub fn forward_level(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        if x.rank() != 4 || x.dims()[1] != self.in_channels {
            return Err(Error::shape(
                "RpnHead::forward_level",
                format!(
                    "feature map must be [B, {}, H, W], got shape {:?}",
                    self.in_channels,
                    x.dims()
                ),
            ));
        }
        let t = self.conv.forward(x)?.relu()?;
        Ok((self.cls_logits.forward(&t)?, self.bbox_pred.forward(&t)?))
    }

    /// [`RpnHead::forward_level`] on every level, in order.
    pub fn forward(&self, features: &[Tensor]) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
        features
            .iter()
            .map(|f| self.forward_level(f))
            .unzip_results()
    }

    /// conv.0.0.{weight,bias}, cls_logits.{weight,bias}, bbox_pred.{weight,bias}.
    pub fn params(&self) -> Vec<Param> {
        [&self.conv, &self.cls_logits, &self.bbox_pred]
            .iter()
            .flat_map(|c| c.params())
            .collect()
    }
}

/// `Iterator<Item = Result<(A, B)>>` -> `Result<(Vec<A>, Vec<B>)>`.
trait UnzipResults<A, B> {
    fn unzip_results(self) -> Result<(Vec<A>, Vec<B>)>;
}

impl<A, B, I: Iterator<Item = Result<(A, B)>>> UnzipResults<A, B> for I {
    fn unzip_results(self) -> Result<(Vec<A>, Vec<B>)> {
        let mut a = Vec::new();
        let mut b = Vec::new();
        for r in self {
            let (x, y) = r?;
            a.push(x);
            b.push(y);
        }
        Ok((a, b))
    }
}

/// A count that differs between train and eval mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrainTest {
    pub train: usize,
    pub test: usize,
}

/// The RPN's two losses, scalar tensors in the features' dtype with
/// gradient history back to the head's parameters.
pub struct RpnLosses {
    /// torchvision `loss_objectness`.
    pub objectness: Tensor,
    /// torchvision `loss_rpn_box_reg`.
    pub box_reg: Tensor,
}

/// Everything [`Rpn::forward_with_scores`] computes.
pub struct RpnOutput {
    /// Per image, the kept proposals (x1, y1, x2, y2) in decreasing score
    /// order, computed in the features' dtype; no gradient.
    pub boxes: Vec<Vec<[f64; 4]>>,
    /// Per image, the sigmoid objectness of each kept proposal.
    pub scores: Vec<Vec<f64>>,
    /// Present when targets were given.
    pub losses: Option<RpnLosses>,
}

/// torchvision's `RegionProposalNetwork` with its Faster / Mask R-CNN
/// defaults (see [`Rpn::new`]). Train mode (the default) and eval mode
/// differ only in `pre_nms_top_n` / `post_nms_top_n` and in whether targets
/// are required.
pub struct Rpn {
    pub head: RpnHead,
    pub anchor_generator: AnchorGenerator,
    /// Weights (1, 1, 1, 1).
    pub box_coder: BoxCoder,
    /// (0.7, 0.3, low-quality matches allowed).
    pub matcher: Matcher,
    /// (256, 0.5).
    pub sampler: BalancedPositiveNegativeSampler,
    /// Candidates kept per level and image before NMS (2000 / 1000).
    pub pre_nms_top_n: TrainTest,
    /// Proposals kept per image after NMS (2000 / 1000).
    pub post_nms_top_n: TrainTest,
    pub nms_thresh: f64,
    /// Proposals with sigmoid score < this are dropped (`>=` keeps).
    pub score_thresh: f64,
    /// Proposals (after clipping) narrower or shorter than this are dropped.
    pub min_size: f64,
    training: AtomicBool,
    /// The anchors of the last grid on the head's device.
    anchors: Cache<AnchorKey>,
    /// [`Rpn::count_table`]'s last table, by length, dtype and device.
    count_table: Cache<(usize, DType, Device)>,
}

impl Rpn {
    /// torchvision's Mask R-CNN RPN on `in_channels`-channel feature maps:
    /// an [`RpnHead`] named `<prefix>.head.*` with as many anchors per
    /// location as `anchor_generator` places (which must be the same on
    /// every level), box coder weights (1, 1, 1, 1), matcher (0.7, 0.3,
    /// allow low quality), sampler (256, 0.5), pre-NMS top-n 2000 / 1000 and
    /// post-NMS top-n 2000 / 1000 (train / test), NMS 0.7, score threshold
    /// 0.0, min size 1e-3; train mode.
    pub fn new(
        prefix: &str,
        in_channels: usize,
        anchor_generator: AnchorGenerator,
        dtype: DType,
        rng: &mut Rng,
    ) -> Result<Rpn> {
        let per_loc = anchor_generator.num_anchors_per_location();
        let a = per_loc[0];
        if per_loc.iter().any(|&n| n != a) {
            return Err(Error::arg(
                "Rpn::new",
                format!(
                    "the RPN head predicts one anchor count for every level, but the anchor generator places {per_loc:?} per location"
                ),
            ));
        }
        Ok(Rpn {
            head: RpnHead::new(&join(prefix, "head"), in_channels, a, dtype, rng)?,
            anchor_generator,
            box_coder: BoxCoder::new([1.0; 4]),
            matcher: Matcher::rpn_default(),
            sampler: BalancedPositiveNegativeSampler {
                batch_size_per_image: 256,
                positive_fraction: 0.5,
            },
            pre_nms_top_n: TrainTest {
                train: 2000,
                test: 1000,
            },
            post_nms_top_n: TrainTest {
                train: 2000,
                test: 1000,
            },
            nms_thresh: 0.7,
            score_thresh: 0.0,
            min_size: 1e-3,
            training: AtomicBool::new(true),
            anchors: Mutex::new(None),
            count_table: Mutex::new(None),
        })
    }

    /// [`Rpn::new`] with [`AnchorGenerator::fpn_default`] (P2..P6).
    pub fn fpn_default(
        prefix: &str,
        in_channels: usize,
        dtype: DType,
        rng: &mut Rng,
    ) -> Result<Rpn> {
        Rpn::new(
            prefix,
            in_channels,
            AnchorGenerator::fpn_default(),
            dtype,
            rng,
        )
    }

    pub fn set_training(&self, training: bool) {
        self.training.store(training, Ordering::Relaxed)
    }

    pub fn is_training(&self) -> bool {
        self.training.load(Ordering::Relaxed)
    }

    /// The head's parameters.
    pub fn params(&self) -> Vec<Param> {
        self.head.params()
    }

    /// [`Rpn::forward_with_scores`], keeping only the proposals, rounded to
    /// f32, and the losses.
    #[allow(clippy::type_complexity)]
    pub fn forward(
        &self,
        features: &[Tensor],
        image_sizes: &[(usize, usize)],
        padded_hw: (usize, usize),
        targets: Option<&[Vec<[f32; 4]>]>,
        rng: &mut Rng,
    ) -> Result<(Vec<Vec<[f32; 4]>>, Option<RpnLosses>)> {
        let out = self.forward_with_scores(features, image_sizes, padded_hw, targets, rng)?;
        let boxes = out
            .boxes
            .iter()
            .map(|img| img.iter().map(|b| b.map(|v| v as f32)).collect())
            .collect();
        Ok((boxes, out.losses))
    }

    /// torchvision's `RegionProposalNetwork.forward`.
    ///
    /// Inputs: `features`, one [B, C, H_l, W_l] map per anchor-generator
    /// level, all f32 or all f64; `image_sizes`, the (height, width) of each
    /// of the B images before padding; `padded_hw`, the padded batch's
    /// (height, width), from which anchors and strides are computed;
    /// `targets`, per image its gt boxes (x1, y1, x2, y2) with x2 > x1 and
    /// y2 > y1 (torchvision's `GeneralizedRCNN` check), required in train
    /// mode and optional in eval mode; `rng` drives the sampler.
    ///
    /// Proposals, per image b, all in the features' dtype and without
    /// gradient: the head's outputs flattened per level as [B, H W A]
    /// (logits) and [B, H W A, 4] (deltas), location-major then anchor, and
    /// concatenated over levels (torchvision's
    /// `concat_box_prediction_layers`), so row i pairs with anchor i of
    /// [`AnchorGenerator::grid_anchors`]; boxes = decode(deltas, anchors);
    /// per level, the min(pre_nms_top_n, anchors in level) rows with the
    /// largest logits (NaN largest, ties to the lower row); scores =
    /// sigmoid(logit); boxes clipped to image b's size; boxes with a side
    /// < `min_size` dropped; scores < `score_thresh` dropped; NMS at
    /// `nms_thresh` within each level (`batched_nms` with the level as
    /// category); the first `post_nms_top_n` kept, in decreasing score.
    ///
    /// Losses (when targets are given), over the whole batch: each image's
    /// anchors are matched to its gt boxes by IoU with `matcher` (all
    /// background when it has none): label 1 for a match, 0 below the low
    /// threshold, ignored between; `sampler` picks positives and negatives
    /// per image from `rng`. With S the set of sampled anchors of all images
    /// and P its positives:
    /// objectness = (1/|S|) sum_{i in S} bce_with_logits(logit_i, label_i);
    /// box_reg = (1/|S|) sum_{i in P} sum_k smooth_l1_{beta=1/9}(delta_ik -
    /// encode(gt_{m(i)}, anchor_i)_k).
    /// Both are computed on the rows of S (and P) gathered with
    /// `index_select`, as torchvision does. Errors if nothing is sampled
    /// (torchvision would return NaN).
    pub fn forward_with_scores(
        &self,
        features: &[Tensor],
        image_sizes: &[(usize, usize)],
        padded_hw: (usize, usize),
        targets: Option<&[Vec<[f32; 4]>]>,
        rng: &mut Rng,
    ) -> Result<RpnOutput> {
        let dtype = self.check_inputs(features, image_sizes, padded_hw, targets)?;
        match box_dtype("Rpn::forward", dtype)? {
            DType::F64 => self.run::<f64>(features, image_sizes, padded_hw, targets, rng),
            _ => self.run::<f32>(features, image_sizes, padded_hw, targets, rng),
        }
    }

    /// Validates everything `forward_with_scores` is given; returns the
    /// features' dtype.
    fn check_inputs(
        &self,
        features: &[Tensor],
        image_sizes: &[(usize, usize)],
        padded_hw: (usize, usize),
        targets: Option<&[Vec<[f32; 4]>]>,
    ) -> Result<DType> {
        const OP: &str = "Rpn::forward";
        let levels = self.anchor_generator.sizes.len();
        if features.is_empty() || features.len() != levels {
            return Err(Error::arg(
                OP,
                format!(
                    "got {} feature maps but the anchor generator has {levels} levels (sizes / aspect_ratios)",
                    features.len()
                ),
            ));
        }
        let per_loc = self.anchor_generator.num_anchors_per_location();
        if per_loc.iter().any(|&n| n != self.head.num_anchors) {
            return Err(Error::arg(
                OP,
                format!(
                    "the head predicts {} anchors per location but the anchor generator places {per_loc:?}",
                    self.head.num_anchors
                ),
            ));
        }
        let dtype = features[0].dtype();
        box_dtype(OP, dtype)?;
        let batch = features[0].dims().first().copied().unwrap_or(0);
        for (l, f) in features.iter().enumerate() {
            let d = f.dims();
            if d.len() != 4
                || d[0] != batch
                || d[1] != self.head.in_channels
                || d[2] == 0
                || d[3] == 0
            {
                return Err(Error::shape(
                    OP,
                    format!(
                        "feature map {l} must be [B = {batch}, C = {}, H > 0, W > 0] like the first one, got {d:?}",
                        self.head.in_channels
                    ),
                ));
            }
            if f.dtype() != dtype {
                return Err(Error::arg(
                    OP,
                    format!(
                        "feature map {l} is {} but feature map 0 is {}",
                        f.dtype().name(),
                        dtype.name()
                    ),
                ));
            }
        }
        if batch == 0 {
            return Err(Error::shape(
                OP,
                "the feature maps hold no image (batch size 0)",
            ));
        }
        if image_sizes.len() != batch {
            return Err(Error::arg(
                OP,
                format!(
                    "got {} image sizes for a batch of {batch} feature maps",
                    image_sizes.len()
                ),
            ));
        }
        for (b, &(h, w)) in image_sizes.iter().enumerate() {
            if h == 0 || w == 0 || h > padded_hw.0 || w > padded_hw.1 {
                return Err(Error::arg(
                    OP,
                    format!(
                        "image {b} has size {h} x {w}; it must be non-empty and fit the padded size {} x {}",
                        padded_hw.0, padded_hw.1
                    ),
                ));
            }
        }
        for (name, v) in [
            ("nms_thresh", self.nms_thresh),
            ("score_thresh", self.score_thresh),
            ("min_size", self.min_size),
        ] {
            if v.is_nan() {
                return Err(Error::arg(OP, format!("{name} is NaN")));
            }
        }
        match targets {
            None if self.is_training() => {
                return Err(Error::arg(
                    OP,
                    "targets are required in train mode (as torchvision: \"targets should not be None\")",
                ))
            }
            None => {}
            Some(t) => {
                if t.len() != batch {
                    return Err(Error::arg(
                        OP,
                        format!("got targets for {} images but a batch of {batch}", t.len()),
                    ));
                }
                for (b, boxes) in t.iter().enumerate() {
                    for (g, bx) in boxes.iter().enumerate() {
                        if !bx.iter().all(|v| v.is_finite()) || bx[2] <= bx[0] || bx[3] <= bx[1] {
                            return Err(Error::arg(
                                OP,
                                format!(
                                    "target box {g} of image {b} is {bx:?}; boxes must be finite (x1, y1, x2, y2) with positive width and height"
                                ),
                            ));
                        }
                    }
                }
            }
        }
        Ok(dtype)
    }

    fn run<T: Float>(
        &self,
        features: &[Tensor],
        image_sizes: &[(usize, usize)],
        padded_hw: (usize, usize),
        targets: Option<&[Vec<[f32; 4]>]>,
        rng: &mut Rng,
    ) -> Result<RpnOutput> {
        let batch = features[0].dims()[0];
        let a = self.head.num_anchors;
        let (logits, deltas) = self.head.forward(features)?;

        // concat_box_prediction_layers: [B, A, H, W] -> [B, H W A] and
        // [B, 4 A, H, W] -> [B, A, 4, H, W] -> [B, H W A, 4].
        let mut obj_levels = Vec::with_capacity(features.len());
        let mut del_levels = Vec::with_capacity(features.len());
        let mut grids = Vec::with_capacity(features.len());
        for (lg, dl) in logits.iter().zip(&deltas) {
            let (h, w) = (lg.dims()[2], lg.dims()[3]);
            grids.push((h, w));
            obj_levels.push(lg.permute(&[0, 2, 3, 1])?.reshape(&[batch, h * w * a])?);
            del_levels.push(
                dl.reshape(&[batch, a, 4, h, w])?
                    .permute(&[0, 3, 4, 1, 2])?
                    .reshape(&[batch, h * w * a, 4])?,
            );
        }
        // half-precision head outputs are decoded and scored in f32
        let objectness = Tensor::cat(&obj_levels, 1)?.to_dtype(T::DTYPE)?;
        let pred_deltas = Tensor::cat(&del_levels, 1)?.to_dtype(T::DTYPE)?;

        // per level: grid cells x anchors per location (checked equal to
        // the head's `a` by check_inputs)
        let num_per_level: Vec<usize> = grids.iter().map(|&(h, w)| h * w * a).collect();
        let n: usize = num_per_level.iter().sum();
        let anchors_t = self.device_anchors(padded_hw, &grids, &objectness)?;

        let (pre_n, post_n) = if self.is_training() {
            (self.pre_nms_top_n.train, self.post_nms_top_n.train)
        } else {
            (self.pre_nms_top_n.test, self.post_nms_top_n.test)
        };
        let proposals = {
            let _ng = engine::no_grad();
            let (boxes, logits, levels) =
                self.top_candidates(&objectness, &pred_deltas, &anchors_t, &num_per_level, pre_n)?;
            filter_proposals(
                &boxes,
                &logits,
                &levels,
                image_sizes,
                self.min_size,
                self.score_thresh,
                self.nms_thresh,
                post_n,
            )?
        };
        let samples = match targets {
            Some(t) => Some(self.sample_anchors::<T>(&anchors_t, t, rng)?),
            None => None,
        };

        // The iteration's one read: every image's proposals, scores and
        // count, then every image's sampled (positive, negative) counts.
        // The counts are i64, which the GPU does not cast: they come over
        // as entries of a table 0, 1, 2, ... in the boxes' dtype.
        let p = proposals.scores.dims()[1];
        let mut counts = vec![proposals.counts.clone()];
        counts.extend(samples.iter().flatten().map(|s| s.sample.counts.clone()));
        // one table for both modes: every count is at most this
        let most = self
            .post_nms_top_n
            .train
            .max(self.post_nms_top_n.test)
            .max(self.sampler.batch_size_per_image.min(n));
        let host = read::<T>(&Tensor::cat(
            &[
                proposals.boxes.reshape(&[batch * p * 4])?,
                proposals.scores.reshape(&[batch * p])?,
                self.count_table(most + 1, &objectness)?
                    .index_select(0, &Tensor::cat(&counts, 0)?)?,
            ],
            0,
        )?)?;
        let (boxes, rest) = host.split_at(batch * p * 4);
        let (scores, rest) = rest.split_at(batch * p);
        let (counts, sample_counts) = rest.split_at(batch);
        let count = |v: T| Element::to_f64(v) as usize;
        let mut all_boxes = Vec::with_capacity(batch);
        let mut all_scores = Vec::with_capacity(batch);
        for (b, &c) in counts.iter().enumerate() {
            let rows = b * p..b * p + count(c).min(p);
            all_boxes.push(
                rows.clone()
                    .map(|r| std::array::from_fn(|q| Element::to_f64(boxes[4 * r + q])))
                    .collect(),
            );
            all_scores.push(rows.map(|r| Element::to_f64(scores[r])).collect());
        }
        let sample_counts: Vec<usize> = sample_counts.iter().map(|&v| count(v)).collect();
        let losses = match samples {
            Some(s) => {
                Some(self.losses(&objectness, &pred_deltas, &anchors_t, &s, &sample_counts)?)
            }
            None => None,
        };
        Ok(RpnOutput {
            boxes: all_boxes,
            scores: all_scores,
            losses,
        })
    }

    /// [`AnchorGenerator::grid_anchors`] [N, 4] in the dtype and on the
    /// device of `like` (the objectness): generated and uploaded when the
    /// padded size, the grids, the dtype or the device change, otherwise
    /// the copy of the previous call.
    fn device_anchors(
        &self,
        padded_hw: (usize, usize),
        grids: &[(usize, usize)],
        like: &Tensor,
    ) -> Result<Tensor> {
        let key = (padded_hw, grids.to_vec(), like.dtype(), like.device());
        cached(&self.anchors, key, || {
            let boxes = self.anchor_generator.grid_anchors(padded_hw, grids)?.boxes;
            let n = boxes.len() / 4;
            to_device_of(
                Tensor::from_vec(boxes, &[n, 4])?.to_dtype(like.dtype())?,
                like,
            )
        })
    }

    /// [0, 1, ..., len - 1] in the dtype and on the device of `like`,
    /// kept for the next call like the anchors.
    fn count_table(&self, len: usize, like: &Tensor) -> Result<Tensor> {
        cached(
            &self.count_table,
            (len, like.dtype(), like.device()),
            || {
                let values: Vec<f64> = (0..len).map(|i| i as f64).collect();
                to_device_of(
                    Tensor::from_vec(values, &[len])?.to_dtype(like.dtype())?,
                    like,
                )
            },
        )
    }

    /// torchvision's `_get_top_n_idx` on the logits' device: per level,
    /// the min(`pre_n`, anchors in level) largest logits of every image
    /// (largest first, NaN first, ties to the lower anchor:
    /// `Tensor::topk`), their deltas and anchors gathered and decoded.
    /// Returns the candidates' boxes [B, K, 4], logits [B, K] and each
    /// level's columns (start, len).
    #[allow(clippy::type_complexity)]
    fn top_candidates(
        &self,
        objectness: &Tensor,
        pred_deltas: &Tensor,
        anchors: &Tensor,
        num_per_level: &[usize],
        pre_n: usize,
    ) -> Result<(Tensor, Tensor, Vec<(usize, usize)>)> {
        let batch = objectness.dims()[0];
        let mut values = Vec::new();
        let mut deltas: Vec<Vec<Tensor>> = vec![Vec::new(); batch];
        let mut anchor_rows: Vec<Vec<Tensor>> = vec![Vec::new(); batch];
        let (mut offset, mut levels) = (0, Vec::new());
        for &count in num_per_level {
            let k = pre_n.min(count);
            let (v, i) = objectness.narrow(1, offset, count)?.topk(k)?;
            let level = pred_deltas.narrow(1, offset, count)?;
            let level_anchors = anchors.narrow(0, offset, count)?;
            for b in 0..batch {
                let rows = i.narrow(0, b, 1)?.reshape(&[k])?;
                deltas[b].push(
                    level
                        .narrow(0, b, 1)?
                        .reshape(&[count, 4])?
                        .index_select(0, &rows)?,
                );
                anchor_rows[b].push(level_anchors.index_select(0, &rows)?);
            }
            values.push(v);
            levels.push((levels.last().map_or(0, |&(s, l)| s + l), k));
            offset += count;
        }
        let k: usize = levels.iter().map(|&(_, l)| l).sum();
        let rows = |parts: Vec<Vec<Tensor>>| -> Result<Tensor> {
            let per_image = parts
                .iter()
                .map(|p| Tensor::cat(p, 0))
                .collect::<Result<Vec<_>>>()?;
            Tensor::cat(&per_image, 0)
        };
        let boxes = self
            .box_coder
            .decode_tensor(&rows(deltas)?, &rows(anchor_rows)?)?
            .reshape(&[batch, k, 4])?;
        Ok((boxes, Tensor::cat(&values, 1)?, levels))
    }

    /// `assign_targets_to_anchors` and the sampling on the anchors'
    /// device: per image, its gt boxes (every image's in one upload)
    /// matched to the anchors by IoU with [`Self::matcher`] (all
    /// background without gt), and [`Self::sampler`]'s choice with a seed
    /// drawn from `rng`.
    fn sample_anchors<T: Float>(
        &self,
        anchors: &Tensor,
        targets: &[Vec<[f32; 4]>],
        rng: &mut Rng,
    ) -> Result<Vec<AnchorSample>> {
        let n = anchors.dims()[0];
        let flat: Vec<T> = targets
            .iter()
            .flatten()
            .flatten()
            .map(|&v| <T as Element>::from_f64(v as f64))
            .collect();
        let all_gt = if flat.is_empty() {
            anchors.narrow(0, 0, 0)?
        } else {
            let g = flat.len() / 4;
            to_device_of(Tensor::from_vec(flat, &[g, 4])?, anchors)?
        };
        let mut start = 0;
        let mut out = Vec::with_capacity(targets.len());
        for t in targets {
            let gt = all_gt.narrow(0, start, t.len())?;
            start += t.len();
            let quality = if t.is_empty() {
                anchors.narrow(0, 0, 0)?.reshape(&[0, n])?
            } else {
                box_iou(&gt, anchors)?
            };
            let (matches, labels) = match_boxes(&quality, self.matcher.rule(), None)?;
            let sample = self.sampler.sample(&labels, rng)?;
            out.push(AnchorSample {
                matches,
                gt,
                sample,
            });
        }
        Ok(out)
    }

    /// `compute_loss` on the sampled anchors, `counts` being every image's
    /// (positives, negatives) read back: the sampled anchors' logits and
    /// the positives' deltas gathered from the batch (`index_select`,
    /// positives of every image then negatives, as torchvision's
    /// `cat([sampled_pos_inds, sampled_neg_inds])`), the positives' box
    /// targets encoded on the device.
    fn losses(
        &self,
        objectness: &Tensor,
        pred_deltas: &Tensor,
        anchors: &Tensor,
        samples: &[AnchorSample],
        counts: &[usize],
    ) -> Result<RpnLosses> {
        const OP: &str = "Rpn::forward";
        let n = anchors.dims()[0];
        let (mut pos, mut neg) = (Vec::new(), Vec::new());
        let (mut deltas, mut box_targets) = (Vec::new(), Vec::new());
        for (b, (s, c)) in samples.iter().zip(counts.chunks_exact(2)).enumerate() {
            let logits = objectness.narrow(0, b, 1)?.reshape(&[n])?;
            if c[0] > 0 {
                let rows = s.sample.positive.narrow(0, 0, c[0])?;
                pos.push(logits.index_select(0, &rows)?);
                deltas.push(
                    pred_deltas
                        .narrow(0, b, 1)?
                        .reshape(&[n, 4])?
                        .index_select(0, &rows)?,
                );
                let matched = s.gt.index_select(0, &s.matches.index_select(0, &rows)?)?;
                box_targets.push(
                    self.box_coder
                        .encode_tensor(&matched, &anchors.index_select(0, &rows)?)?,
                );
            }
            if c[1] > 0 {
                neg.push(logits.index_select(0, &s.sample.negative.narrow(0, 0, c[1])?)?);
            }
        }
        let num_pos: usize = counts.iter().step_by(2).sum();
        let num_sampled: usize = counts.iter().sum();
        if num_sampled == 0 {
            return Err(Error::arg(
                OP,
                "no anchor was sampled for the RPN losses (no positive or negative anchor in the batch, or batch_size_per_image 0)",
            ));
        }
        let labels: Vec<f64> = (0..num_sampled)
            .map(|k| if k < num_pos { 1.0 } else { 0.0 })
            .collect();
        let labels = Tensor::from_vec(labels, &[num_sampled])?.to_dtype(objectness.dtype())?;
        let objectness_loss = Tensor::cat(&[pos, neg].concat(), 0)?
            .bce_with_logits(&to_device_of(labels, objectness)?)?;
        let box_loss = if num_pos == 0 {
            // torchvision: a sum over no positives, 0 with a zero gradient
            pred_deltas.sum_all()?.scale(0.0)?
        } else {
            Tensor::cat(&deltas, 0)?
                .smooth_l1(&Tensor::cat(&box_targets, 0)?, 1.0 / 9.0)?
                .scale((4 * num_pos) as f64 / num_sampled as f64)?
        };
        Ok(RpnLosses {
            objectness: objectness_loss,
            box_reg: box_loss,
        })
    }
}

/// What [`Rpn::device_anchors`] caches its anchors by: the padded size,
/// the grids, the dtype and the device.
type AnchorKey = ((usize, usize), Vec<(usize, usize)>, DType, Device);

/// One tensor kept between calls with the key it was made for.
type Cache<K> = Mutex<Option<(K, Tensor)>>;

/// `cache`'s tensor when it was made for `key`, else `make()`'s, kept in
/// `cache` for the next call.
fn cached<K: PartialEq>(
    cache: &Cache<K>,
    key: K,
    make: impl FnOnce() -> Result<Tensor>,
) -> Result<Tensor> {
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((k, t)) = cache.as_ref() {
        if *k == key {
            return Ok(t.clone());
        }
    }
    let t = make()?;
    *cache = Some((key, t.clone()));
    Ok(t)
}

/// One image's sampled anchors, on the anchors' device.
struct AnchorSample {
    /// [N] i64: each anchor's matched gt (or a negative code).
    matches: Tensor,
    /// [G, 4]: the image's gt boxes.
    gt: Tensor,
    sample: BalancedSample,
}
