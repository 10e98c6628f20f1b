//! Generated image classification data: no download, reproducible from a seed.
//!
//! Each class is a template made of random oriented sinusoidal gratings per
//! channel; a sample is its class template cyclically shifted by a random
//! offset, scaled by a random contrast and buried in Gaussian noise. Classes
//! differ in frequency and orientation, so a convnet can learn them, but the
//! shifts and the noise keep the task from being trivial.

use engine::{Error, Result, Rng, Tensor};
use std::f64::consts::PI;

pub struct SyntheticImages {
    pub num_classes: usize,
    pub channels: usize,
    pub size: usize,
    pub noise: f64,
    templates: Vec<Vec<f32>>,
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
        })
    }

    /// A batch of images [B, C, size, size] (f32) and labels [B] (i64).
    pub fn batch(&self, batch: usize, rng: &mut Rng) -> Result<(Tensor, Tensor)> {
        let (c, s) = (self.channels, self.size);
        let mut images = Vec::with_capacity(batch * c * s * s);
        let mut labels = Vec::with_capacity(batch);
        for _ in 0..batch {
            let label = rng.below(self.num_classes);
            let (dx, dy) = (rng.below(s / 4 + 1), rng.below(s / 4 + 1));
            let contrast = 0.8 + 0.4 * rng.uniform();
            let t = &self.templates[label];
            for ch in 0..c {
                for y in 0..s {
                    for x in 0..s {
                        let v = t[(ch * s + (y + dy) % s) * s + (x + dx) % s] as f64;
                        images.push((contrast * v + self.noise * rng.normal()) as f32);
                    }
                }
            }
            labels.push(label as i64);
        }
        Ok((
            Tensor::from_vec(images, &[batch, c, s, s])?,
            Tensor::from_vec(labels, &[batch])?,
        ))
    }
}
