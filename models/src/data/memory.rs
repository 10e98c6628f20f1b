//! A dataset held entirely in memory: equally sized u8 images and their
//! labels. Fashion-MNIST and the MNIST digits decode into this once at open.

use super::{Dataset, Image, Packed};
use engine::{Error, Result};

pub struct InMemory {
    /// Used in `describe`: sample `i` is `"{name}#{i}"`.
    pub name: String,
    pub classes: Vec<String>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// All images back to back, each `height * width * channels` bytes HWC.
    pixels: Vec<u8>,
    labels: Vec<u16>,
}

impl InMemory {
    /// Checks that `pixels` holds exactly `labels.len()` images of
    /// `h * w * channels` bytes, that the geometry is non-empty and that
    /// every label indexes `classes`.
    pub fn new(
        name: impl Into<String>,
        classes: Vec<String>,
        channels: usize,
        height: usize,
        width: usize,
        pixels: Vec<u8>,
        labels: Vec<u16>,
    ) -> Result<Self> {
        let name = name.into();
        if channels == 0 || height == 0 || width == 0 {
            return Err(Error::arg(
                "in-memory dataset",
                format!("{name}: image geometry must be non-empty, got {channels}x{height}x{width} (CxHxW)"),
            ));
        }
        let per = channels * height * width;
        if pixels.len() != labels.len() * per {
            return Err(Error::shape(
                "in-memory dataset",
                format!(
                    "{name}: {} labels need {} pixel bytes ({per} per image), got {}",
                    labels.len(),
                    labels.len() * per,
                    pixels.len()
                ),
            ));
        }
        if let Some((i, &l)) = labels
            .iter()
            .enumerate()
            .find(|&(_, &l)| l as usize >= classes.len())
        {
            return Err(Error::arg(
                "in-memory dataset",
                format!(
                    "{name}: label {l} of sample {i} is out of range for {} classes",
                    classes.len()
                ),
            ));
        }
        Ok(InMemory {
            name,
            classes,
            channels,
            height,
            width,
            pixels,
            labels,
        })
    }

    /// Every sample's label, in index order.
    pub fn labels(&self) -> &[u16] {
        &self.labels
    }

    /// The raw bytes of sample `index` (HWC), without copying.
    pub fn pixels_of(&self, index: usize) -> &[u8] {
        let per = self.channels * self.height * self.width;
        &self.pixels[index * per..(index + 1) * per]
    }
}

impl Dataset for InMemory {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn classes(&self) -> &[String] {
        &self.classes
    }
    fn label(&self, index: usize) -> usize {
        self.labels[index] as usize
    }
    fn channels(&self) -> usize {
        self.channels
    }
    fn get(&self, index: usize) -> Result<Image> {
        if index >= self.labels.len() {
            return Err(Error::arg(
                "in-memory dataset",
                format!(
                    "{}: index {index} out of range for {} samples",
                    self.name,
                    self.labels.len()
                ),
            ));
        }
        Ok(Image {
            channels: self.channels,
            height: self.height,
            width: self.width,
            pixels: self.pixels_of(index).to_vec(),
        })
    }
    fn describe(&self, index: usize) -> String {
        format!("{}#{index}", self.name)
    }
    fn packed(&self) -> Option<Packed<'_>> {
        Some(Packed {
            pixels: &self.pixels,
            height: self.height,
            width: self.width,
        })
    }
    fn packed_offset(&self, index: usize) -> Option<usize> {
        (index < self.labels.len()).then(|| index * self.channels * self.height * self.width)
    }
}
