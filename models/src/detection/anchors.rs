//! Anchor boxes, exactly as torchvision's `AnchorGenerator`
//! (torchvision/models/detection/anchor_utils.py).
//!
//! Boxes are (x1, y1, x2, y2) in padded-image pixels, stored flat: box `i`
//! is `boxes[4 i..4 i + 4]`. Every anchor has integer coordinates (rounded
//! cell anchors shifted by integer multiples of integer strides), so the
//! f64 values here are exact and equal to torchvision's in any float dtype.

use engine::{Error, Result};

/// Per-level anchor sizes and aspect ratios (height / width), one entry per
/// feature map. Level `l` places `sizes[l].len() * aspect_ratios[l].len()`
/// anchors at every feature-map location.
#[derive(Clone, Debug, PartialEq)]
pub struct AnchorGenerator {
    pub sizes: Vec<Vec<f64>>,
    pub aspect_ratios: Vec<Vec<f64>>,
}

/// The anchors of one image: `boxes` is [sum(num_per_level), 4] flat, level
/// after level; `num_per_level[l]` = grid_h * grid_w * anchors per location.
#[derive(Clone, Debug, PartialEq)]
pub struct Anchors {
    pub boxes: Vec<f64>,
    pub num_per_level: Vec<usize>,
}

impl Anchors {
    /// Number of anchors over all levels.
    pub fn len(&self) -> usize {
        self.boxes.len() / 4
    }
    pub fn is_empty(&self) -> bool {
        self.boxes.is_empty()
    }
}

impl AnchorGenerator {
    /// Checks that there is one size list and one ratio list per level, all
    /// non-empty, with finite positive values.
    pub fn new(sizes: Vec<Vec<f64>>, aspect_ratios: Vec<Vec<f64>>) -> Result<AnchorGenerator> {
        const OP: &str = "AnchorGenerator::new";
        if sizes.is_empty() || sizes.len() != aspect_ratios.len() {
            return Err(Error::arg(
                OP,
                format!(
                    "need one sizes list and one aspect_ratios list per feature level, got {} and {}",
                    sizes.len(),
                    aspect_ratios.len()
                ),
            ));
        }
        for (l, (s, a)) in sizes.iter().zip(&aspect_ratios).enumerate() {
            for (what, v) in [("sizes", s), ("aspect_ratios", a)] {
                if v.is_empty() || v.iter().any(|x| !(x.is_finite() && *x > 0.0)) {
                    return Err(Error::arg(
                        OP,
                        format!("{what}[{l}] must be a non-empty list of finite positive values, got {v:?}"),
                    ));
                }
            }
        }
        Ok(AnchorGenerator {
            sizes,
            aspect_ratios,
        })
    }

    /// Mask R-CNN R50-FPN's generator (torchvision `_default_anchorgen`):
    /// sizes 32, 64, 128, 256, 512 on P2..P6, ratios 0.5, 1, 2 on every level.
    pub fn fpn_default() -> AnchorGenerator {
        AnchorGenerator {
            sizes: [32.0, 64.0, 128.0, 256.0, 512.0]
                .iter()
                .map(|&s| vec![s])
                .collect(),
            aspect_ratios: vec![vec![0.5, 1.0, 2.0]; 5],
        }
    }

    /// Anchors per feature-map location, per level.
    pub fn num_anchors_per_location(&self) -> Vec<usize> {
        self.sizes
            .iter()
            .zip(&self.aspect_ratios)
            .map(|(s, a)| s.len() * a.len())
            .collect()
    }

    /// The zero-centred anchors of every level, flat [A_l * 4], in
    /// torchvision's order (ratio-major, size-minor):
    /// h_ratio = sqrt(r), w_ratio = 1 / h_ratio, w = w_ratio * size,
    /// h = h_ratio * size, anchor = round((-w, -h, w, h) / 2) with round
    /// half to even.
    ///
    /// Computed in f32 because torchvision's `generate_anchors` builds them in
    /// float32 at construction whatever the feature dtype; a half-width within
    /// f32 rounding of .5 would otherwise round the other way.
    pub fn cell_anchors(&self) -> Vec<Vec<f64>> {
        self.sizes
            .iter()
            .zip(&self.aspect_ratios)
            .map(|(sizes, ratios)| {
                let mut cell = Vec::with_capacity(sizes.len() * ratios.len() * 4);
                for &r in ratios {
                    let h_ratio = (r as f32).sqrt();
                    let w_ratio = 1.0f32 / h_ratio;
                    for &s in sizes {
                        let w = w_ratio * s as f32;
                        let h = h_ratio * s as f32;
                        for v in [-w, -h, w, h] {
                            cell.push((v / 2.0).round_ties_even() as f64);
                        }
                    }
                }
                cell
            })
            .collect()
    }

    /// Strides per level, (image_h // grid_h, image_w // grid_w), integer
    /// division as torchvision's `AnchorGenerator.forward`. A grid larger
    /// than the image gives stride 0, as there. Errors on a zero grid side
    /// or a level count different from the generator's.
    pub fn strides(
        &self,
        image_size: (usize, usize),
        feature_sizes: &[(usize, usize)],
    ) -> Result<Vec<(usize, usize)>> {
        const OP: &str = "AnchorGenerator::strides";
        if feature_sizes.len() != self.sizes.len() {
            return Err(Error::arg(
                OP,
                format!(
                    "got {} feature maps for a generator with {} levels (sizes / aspect_ratios)",
                    feature_sizes.len(),
                    self.sizes.len()
                ),
            ));
        }
        feature_sizes
            .iter()
            .enumerate()
            .map(|(l, &(gh, gw))| {
                if gh == 0 || gw == 0 {
                    return Err(Error::arg(
                        OP,
                        format!("feature map {l} has an empty grid {gh} x {gw}"),
                    ));
                }
                Ok((image_size.0 / gh, image_size.1 / gw))
            })
            .collect()
    }

    /// All anchors of one (padded) image of `image_size` (height, width)
    /// whose feature maps have grids `feature_sizes` (height, width), one per
    /// level: for level l, for y in 0..grid_h, for x in 0..grid_w, for each
    /// cell anchor a: cell_anchors[l][a] + (x sx, y sy, x sx, y sy), with the
    /// strides (sy, sx) of [`AnchorGenerator::strides`]. This is the order of
    /// torchvision's `grid_anchors` and of the flattened RPN head outputs.
    pub fn grid_anchors(
        &self,
        image_size: (usize, usize),
        feature_sizes: &[(usize, usize)],
    ) -> Result<Anchors> {
        let strides = self.strides(image_size, feature_sizes)?;
        let cells = self.cell_anchors();
        let num_per_level: Vec<usize> = feature_sizes
            .iter()
            .zip(&cells)
            .map(|(&(gh, gw), c)| gh * gw * (c.len() / 4))
            .collect();
        let mut boxes = Vec::with_capacity(num_per_level.iter().sum::<usize>() * 4);
        for ((&(gh, gw), &(sy, sx)), cell) in feature_sizes.iter().zip(&strides).zip(&cells) {
            for y in 0..gh {
                let shift_y = (y * sy) as f64;
                for x in 0..gw {
                    let shift_x = (x * sx) as f64;
                    for a in cell.chunks_exact(4) {
                        boxes.extend_from_slice(&[
                            a[0] + shift_x,
                            a[1] + shift_y,
                            a[2] + shift_x,
                            a[3] + shift_y,
                        ]);
                    }
                }
            }
        }
        Ok(Anchors {
            boxes,
            num_per_level,
        })
    }
}
