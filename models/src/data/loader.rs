//! Turns a `Dataset` into batches: a per-epoch permutation, per-sample
//! augmentation, optional worker threads and bounded prefetch.
//!
//! Determinism contract (exact resume depends on it): the order of epoch `e`
//! is `Rng::new(derive_seed(&[seed, e]))`'s shuffle of `0..len` (identity
//! without shuffle); batch `b` is positions `b*batch .. (b+1)*batch` of it;
//! sample `i` is transformed with `Rng::new(derive_seed(&[seed, e, i]))`.
//! So batch `b` of epoch `e` is the same whatever `workers`, `prefetch` and
//! `start_batch` are.
//!
//! Threads, prefetch and stopping: see `prefetch.rs` (shared with the
//! detection loader).

use super::prefetch::{Batches, Plan, SkipLog};
use super::transform::Transform;
use super::Dataset;
use engine::{Error, Result, Rng, Tensor};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Mixes `parts` into one seed: the SplitMix64 finaliser applied after
/// folding in each part, so seeds differing in any part (or in the number of
/// parts) give unrelated streams.
pub fn derive_seed(parts: &[u64]) -> u64 {
    let mut h = 0x6A09_E667_F3BC_C909u64 ^ parts.len() as u64;
    for &p in parts {
        h = splitmix64(h.rotate_left(17) ^ splitmix64(p));
    }
    h
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoaderOptions {
    pub batch: usize,
    pub shuffle: bool,
    /// Drop the last batch when it would be smaller than `batch`.
    pub drop_last: bool,
    /// Decoding threads; 0 decodes on the thread that iterates.
    pub workers: usize,
    /// Finished batches buffered ahead of the consumer, in all (each worker
    /// buffers `ceil(prefetch / workers)`; 0 makes each hand-off a rendezvous).
    pub prefetch: usize,
    pub seed: u64,
}

impl LoaderOptions {
    /// A loader needs samples and a positive batch size.
    pub(crate) fn check(&self, len: usize, op: &'static str) -> Result<()> {
        if len == 0 {
            return Err(Error::arg(op, "the dataset is empty"));
        }
        if self.batch == 0 {
            return Err(Error::arg(op, "batch size must be positive"));
        }
        Ok(())
    }

    /// Batches in an epoch over `n` samples: `n / batch`, rounded up unless
    /// `drop_last`.
    pub fn batches_per_epoch(&self, n: usize) -> usize {
        if self.drop_last {
            n / self.batch
        } else {
            n.div_ceil(self.batch)
        }
    }
}

impl Default for LoaderOptions {
    fn default() -> Self {
        LoaderOptions {
            batch: 64,
            shuffle: true,
            drop_last: false,
            workers: 0,
            prefetch: 2,
            seed: 0,
        }
    }
}

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

pub struct Loader {
    shared: Arc<Shared>,
    opts: LoaderOptions,
}

/// What the iterating thread and the workers both need.
struct Shared {
    ds: Arc<dyn Dataset>,
    transform: Transform,
    seed: u64,
    skipped: SkipLog,
}

impl Loader {
    /// Checks the options against the dataset: it must be non-empty, `batch`
    /// positive, and the transform valid for its channel count (one mean and
    /// std per channel).
    pub fn new(ds: Arc<dyn Dataset>, transform: Transform, opts: LoaderOptions) -> Result<Loader> {
        opts.check(ds.len(), "loader")?;
        transform.check(ds.channels()).map_err(|e| {
            Error::arg(
                "loader",
                format!("transform for a {}-channel dataset: {e}", ds.channels()),
            )
        })?;
        Ok(Loader {
            shared: Arc::new(Shared {
                ds,
                transform,
                seed: opts.seed,
                skipped: SkipLog::default(),
            }),
            opts,
        })
    }

    /// `len / batch`, rounded up unless `drop_last`.
    pub fn batches_per_epoch(&self) -> usize {
        self.opts.batches_per_epoch(self.shared.ds.len())
    }

    /// Distinct samples that failed to decode or transform so far.
    pub fn skipped(&self) -> usize {
        self.shared.skipped.count()
    }

    pub fn dataset(&self) -> &Arc<dyn Dataset> {
        &self.shared.ds
    }

    pub fn options(&self) -> &LoaderOptions {
        &self.opts
    }

    /// Batches `start_batch..batches_per_epoch()` of epoch `epoch`, in order.
    /// A batch whose every sample is unreadable is left out.
    pub fn epoch(&self, epoch: usize, start_batch: usize) -> EpochIter {
        let plan = Plan::new(self.shared.ds.len(), &self.opts, epoch);
        let shared = self.shared.clone();
        Batches::new(
            Arc::new(move |b, stop: &AtomicBool| shared.build(&plan, b, stop)),
            start_batch,
            self.batches_per_epoch(),
            self.opts.workers,
            self.opts.prefetch,
            "loader",
        )
    }
}

impl Shared {
    /// Builds batch `b`: `Some(Ok(None))` when every sample was unreadable,
    /// `None` when stopped midway.
    fn build(&self, plan: &Plan, b: usize, stop: &AtomicBool) -> Option<Result<Option<Batch>>> {
        let samples = plan.samples(b);
        let c = self.ds.channels();
        let per = self.transform.output_len(c);
        let mut images = Vec::with_capacity(samples.len() * per);
        let mut labels = Vec::with_capacity(samples.len());
        let mut indices = Vec::with_capacity(samples.len());
        for &i in samples {
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            let at = images.len();
            images.resize(at + per, 0f32);
            let mut rng = Rng::new(derive_seed(&[self.seed, plan.epoch, i as u64]));
            let done = self
                .ds
                .get(i)
                .and_then(|img| self.transform.apply(&img, &mut rng, &mut images[at..]));
            match done {
                Ok(()) => {
                    labels.push(self.ds.label(i) as i64);
                    indices.push(i);
                }
                Err(e) => {
                    images.truncate(at);
                    self.skip(i, &e);
                }
            }
        }
        if indices.is_empty() {
            return Some(Ok(None));
        }
        let n = indices.len();
        let s = self.transform.size;
        let batch = Tensor::from_vec(images, &[n, c, s, s]).and_then(|images| {
            Ok(Batch {
                index: b,
                images,
                labels: Tensor::from_vec(labels, &[n])?,
                indices,
            })
        });
        Some(batch.map(Some))
    }

    fn skip(&self, index: usize, err: &Error) {
        self.skipped.skip(index, || self.ds.describe(index), err);
    }
}

/// The batches of one epoch; see `Loader::epoch`.
pub type EpochIter = Batches<Batch>;
