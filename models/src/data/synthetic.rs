//! Generated image classification data: no download, reproducible from a seed.
//!
//! Each class is a template made of random oriented sinusoidal gratings per
//! channel; a sample is its class template cyclically shifted by a random
//! offset, scaled by a random contrast and buried in Gaussian noise. Classes
//! differ in frequency and orientation, so a convnet can learn them, but the
//! shifts and the noise keep the task from being trivial.
//!
//! Two ways to draw samples: `batch` (a stream from the caller's `Rng`) and
//! the `Dataset` impl, where sample `i` is a pure function of `(seed, i)` so
//! the `Loader` can address it.

use super::pipeline::derive_seed;
use super::{Dataset, Image};
use engine::{Error, Result, Rng, Tensor};
use std::f64::consts::PI;

/// Samples the `Dataset` view has unless `with_len` says otherwise.
pub const DEFAULT_SYNTHETIC_LEN: usize = 10_000;

pub struct SyntheticImages {
    pub num_classes: usize,
    pub channels: usize,
    pub size: usize,
    pub noise: f64,
    templates: Vec<Vec<f32>>,
    seed: u64,
    len: usize,
    class_names: Vec<String>,
}

impl SyntheticImages {
    pub fn new(
        num_classes: usize,
        channels: usize,
        size: usize,
        noise: f64,
        seed: u64,
    ) -> Result<Self> {
        if num_classes < 2 || channels == 0 || size < 4 {
            return Err(Error::arg(
                "synthetic",
                format!("need >= 2 classes, >= 1 channel and size >= 4; got {num_classes}, {channels}, {size}"),
            ));
        }
        let mut rng = Rng::new(seed);
        let templates = (0..num_classes)
            .map(|_| {
                let mut t = vec![0f32; channels * size * size];
                for c in 0..channels {
                    for _ in 0..2 {
                        let freq = 1.0 + 3.0 * rng.uniform();
                        let theta = PI * rng.uniform();
                        let phase = 2.0 * PI * rng.uniform();
                        let (fx, fy) = (freq * theta.cos(), freq * theta.sin());
                        for y in 0..size {
                            for x in 0..size {
                                let arg = 2.0 * PI * (fx * x as f64 + fy * y as f64) / size as f64
                                    + phase;
                                t[(c * size + y) * size + x] += (0.5 * arg.sin()) as f32;
                            }
                        }
                    }
                }
                t
            })
            .collect();
        Ok(SyntheticImages {
            num_classes,
            channels,
            size,
            noise,
            templates,
            seed,
            len: DEFAULT_SYNTHETIC_LEN,
            class_names: (0..num_classes).map(|k| format!("class{k}")).collect(),
        })
    }

    /// The same generator with `len` samples in its `Dataset` view.
    pub fn with_len(mut self, len: usize) -> Self {
        self.len = len;
        self
    }

    /// Appends one sample of class `label` (CHW, f32), drawing its shift,
    /// contrast and noise from `rng`.
    fn render(&self, label: usize, rng: &mut Rng, out: &mut Vec<f32>) {
        let (c, s) = (self.channels, self.size);
        let (dx, dy) = (rng.below(s / 4 + 1), rng.below(s / 4 + 1));
        let contrast = 0.8 + 0.4 * rng.uniform();
        let t = &self.templates[label];
        for ch in 0..c {
            for y in 0..s {
                for x in 0..s {
                    let v = t[(ch * s + (y + dy) % s) * s + (x + dx) % s] as f64;
                    out.push((contrast * v + self.noise * rng.normal()) as f32);
                }
            }
        }
    }

    /// Sample `index`'s generator: its first draw is the label.
    fn sample_rng(&self, index: usize) -> Rng {
        Rng::new(derive_seed(&[self.seed, index as u64]))
    }

    /// A batch of images [B, C, size, size] (f32) and labels [B] (i64).
    pub fn batch(&self, batch: usize, rng: &mut Rng) -> Result<(Tensor, Tensor)> {
        let (c, s) = (self.channels, self.size);
        let mut images = Vec::with_capacity(batch * c * s * s);
        let mut labels = Vec::with_capacity(batch);
        for _ in 0..batch {
            let label = rng.below(self.num_classes);
            self.render(label, rng, &mut images);
            labels.push(label as i64);
        }
        Ok((
            Tensor::from_vec(images, &[batch, c, s, s])?,
            Tensor::from_vec(labels, &[batch])?,
        ))
    }
}

/// Sample `i` is drawn from `Rng::new(derive_seed(&[seed, i]))`: label first,
/// then the same rendering as `batch`; each float `v` becomes the byte
/// `round((v + 1) / 2 * 255)` clamped to 0..=255 (templates lie in [-1, 1]),
/// stored HWC.
impl Dataset for SyntheticImages {
    fn len(&self) -> usize {
        self.len
    }
    fn classes(&self) -> &[String] {
        &self.class_names
    }
    fn label(&self, index: usize) -> usize {
        self.sample_rng(index).below(self.num_classes)
    }
    fn channels(&self) -> usize {
        self.channels
    }
    fn get(&self, index: usize) -> Result<Image> {
        if index >= self.len {
            return Err(Error::arg(
                "synthetic",
                format!("index {index} out of range for {} samples", self.len),
            ));
        }
        let mut rng = self.sample_rng(index);
        let label = rng.below(self.num_classes);
        let (c, s) = (self.channels, self.size);
        let mut chw = Vec::with_capacity(c * s * s);
        self.render(label, &mut rng, &mut chw);
        let mut pixels = vec![0u8; c * s * s];
        for ch in 0..c {
            for p in 0..s * s {
                let v = (chw[ch * s * s + p] as f64 + 1.0) * 0.5 * 255.0;
                pixels[p * c + ch] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
        Ok(Image {
            channels: c,
            height: s,
            width: s,
            pixels,
        })
    }
    fn describe(&self, index: usize) -> String {
        format!("synthetic#{index}")
    }
}
