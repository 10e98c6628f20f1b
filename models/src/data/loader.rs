//! The image loader: a `Dataset` turned into shuffled, augmented,
//! normalised `[B, C, size, size]` batches with their labels. The order,
//! the per-sample randomness, threads and prefetch are `pipeline.rs`'s.

use super::pipeline::{Batches, DataLoader, LoaderOptions, Source};
use super::transform::Transform;
use super::Dataset;
use engine::{Error, Result, Rng, Tensor};
use std::sync::Arc;

pub struct Batch {
    /// Position of this batch in its epoch.
    pub index: usize,
    /// [B, C, size, size] f32, normalised.
    pub images: Tensor,
    /// [B] i64.
    pub labels: Tensor,
    /// Dataset index of each sample. Fewer than the batch size when samples
    /// were unreadable (skipped).
    pub indices: Vec<usize>,
}

/// A labelled-image dataset with its transform: what a `Loader` reads.
pub struct ImageSource {
    ds: Arc<dyn Dataset>,
    transform: Transform,
}

impl Source for ImageSource {
    /// The transformed CHW image and its label.
    type Sample = (Vec<f32>, i64);
    type Batch = Batch;
    const NAME: &'static str = "loader";

    fn num_samples(&self) -> usize {
        self.ds.len()
    }

    fn load(&self, index: usize, rng: &mut Rng) -> Result<Self::Sample> {
        let img = self.ds.get(index)?;
        let mut out = vec![0f32; self.transform.output_len(self.ds.channels())];
        self.transform.apply(&img, rng, &mut out)?;
        Ok((out, self.ds.label(index) as i64))
    }

    fn describe(&self, index: usize) -> String {
        self.ds.describe(index)
    }

    fn collate(
        &self,
        index: usize,
        samples: Vec<Self::Sample>,
        indices: Vec<usize>,
    ) -> Result<Batch> {
        let (n, c, s) = (samples.len(), self.ds.channels(), self.transform.size);
        let (images, labels): (Vec<Vec<f32>>, Vec<i64>) = samples.into_iter().unzip();
        Ok(Batch {
            index,
            images: Tensor::from_vec(images.concat(), &[n, c, s, s])?,
            labels: Tensor::from_vec(labels, &[n])?,
            indices,
        })
    }

    fn batch_index(batch: &Batch) -> usize {
        batch.index
    }
}

/// Shuffled, augmented, normalised batches of a `Dataset`.
pub type Loader = DataLoader<ImageSource>;

impl Loader {
    /// Checks the options against the dataset: it must be non-empty, `batch`
    /// positive, and the transform valid for its channel count (one mean and
    /// std per channel).
    pub fn new(ds: Arc<dyn Dataset>, transform: Transform, opts: LoaderOptions) -> Result<Loader> {
        transform.check(ds.channels()).map_err(|e| {
            Error::arg(
                "loader",
                format!("transform for a {}-channel dataset: {e}", ds.channels()),
            )
        })?;
        DataLoader::with_source(ImageSource { ds, transform }, opts)
    }

    pub fn dataset(&self) -> &Arc<dyn Dataset> {
        &self.source().ds
    }
}

/// The batches of one epoch; see `DataLoader::epoch`.
pub type EpochIter = Batches<Batch>;
