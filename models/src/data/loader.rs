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
//! Threads: worker `k` of `W` builds batches `start + k`, `start + k + W`, ...
//! (decode + transform of every sample in the batch) and sends each through
//! its own bounded channel; the iterator receives from the workers in turn,
//! so batches come out in order with no reordering buffer. Dropping the
//! iterator raises a stop flag, drops the receivers and joins the workers,
//! which notice within one sample.

use super::transform::Transform;
use super::Dataset;
use engine::{Error, Result, Rng, Tensor};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

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
    /// Samples that failed, each warned about once.
    bad: Mutex<HashSet<usize>>,
    skipped: AtomicUsize,
}

impl Loader {
    /// Checks the options against the dataset: it must be non-empty, `batch`
    /// positive, and the transform valid for its channel count (one mean and
    /// std per channel).
    pub fn new(ds: Arc<dyn Dataset>, transform: Transform, opts: LoaderOptions) -> Result<Loader> {
        if ds.is_empty() {
            return Err(Error::arg("loader", "the dataset is empty"));
        }
        if opts.batch == 0 {
            return Err(Error::arg("loader", "batch size must be positive"));
        }
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
                bad: Mutex::new(HashSet::new()),
                skipped: AtomicUsize::new(0),
            }),
            opts,
        })
    }

    /// `len / batch`, rounded up unless `drop_last`.
    pub fn batches_per_epoch(&self) -> usize {
        let n = self.shared.ds.len();
        if self.opts.drop_last {
            n / self.opts.batch
        } else {
            n.div_ceil(self.opts.batch)
        }
    }

    /// Distinct samples that failed to decode or transform so far.
    pub fn skipped(&self) -> usize {
        self.shared.skipped.load(Ordering::Relaxed)
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
        let n = self.shared.ds.len();
        let mut order: Vec<usize> = (0..n).collect();
        if self.opts.shuffle {
            Rng::new(derive_seed(&[self.opts.seed, epoch as u64])).shuffle(&mut order);
        }
        let plan = Arc::new(Plan {
            order,
            batch: self.opts.batch,
            epoch: epoch as u64,
        });
        let end = self.batches_per_epoch();
        let start = start_batch.min(end);
        let mode = if self.opts.workers == 0 {
            Mode::Inline
        } else {
            self.spawn_workers(&plan, start, end)
        };
        EpochIter {
            shared: self.shared.clone(),
            plan,
            next: start,
            start,
            end,
            mode,
        }
    }

    fn spawn_workers(&self, plan: &Arc<Plan>, start: usize, end: usize) -> Mode {
        let workers = self.opts.workers.min((end - start).max(1));
        let capacity = self.opts.prefetch.div_ceil(workers);
        let stop = Arc::new(AtomicBool::new(false));
        let mut receivers = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for k in 0..workers {
            let (tx, rx) = sync_channel(capacity);
            let (shared, plan, stop_flag) = (self.shared.clone(), plan.clone(), stop.clone());
            let handle = std::thread::Builder::new()
                .name(format!("loader-{k}"))
                .spawn(move || {
                    for b in (start + k..end).step_by(workers) {
                        let Some(result) = shared.build(&plan, b, &stop_flag) else {
                            return;
                        };
                        if tx.send(result).is_err() {
                            return;
                        }
                    }
                });
            match handle {
                Ok(h) => {
                    receivers.push(rx);
                    handles.push(h);
                }
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    drop(receivers);
                    for h in handles {
                        let _ = h.join();
                    }
                    return Mode::Failed(Some(Error::arg(
                        "loader",
                        format!("cannot start worker thread: {e}"),
                    )));
                }
            }
        }
        Mode::Threads {
            receivers,
            handles,
            stop,
        }
    }
}

/// One epoch's sample order.
struct Plan {
    order: Vec<usize>,
    batch: usize,
    epoch: u64,
}

impl Shared {
    /// Builds batch `b`: `Some(Ok(None))` when every sample was unreadable,
    /// `None` when stopped midway.
    fn build(&self, plan: &Plan, b: usize, stop: &AtomicBool) -> Option<Result<Option<Batch>>> {
        let lo = b * plan.batch;
        let hi = (lo + plan.batch).min(plan.order.len());
        let c = self.ds.channels();
        let per = self.transform.output_len(c);
        let mut images = Vec::with_capacity((hi - lo) * per);
        let mut labels = Vec::with_capacity(hi - lo);
        let mut indices = Vec::with_capacity(hi - lo);
        for &i in &plan.order[lo..hi] {
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
        let first = self
            .bad
            .lock()
            .map(|mut bad| bad.insert(index))
            .unwrap_or(false);
        if first {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            eprintln!(
                "warning: skipping unreadable sample {}: {err}",
                self.ds.describe(index)
            );
        }
    }
}

enum Mode {
    Inline,
    Threads {
        receivers: Vec<Receiver<Result<Option<Batch>>>>,
        handles: Vec<JoinHandle<()>>,
        stop: Arc<AtomicBool>,
    },
    /// Workers could not start: yields this error once.
    Failed(Option<Error>),
}

/// The batches of one epoch; see `Loader::epoch`.
pub struct EpochIter {
    shared: Arc<Shared>,
    plan: Arc<Plan>,
    next: usize,
    start: usize,
    end: usize,
    mode: Mode,
}

impl Iterator for EpochIter {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        while self.next < self.end {
            let b = self.next;
            self.next += 1;
            let result = match &mut self.mode {
                Mode::Inline => self.shared.build(&self.plan, b, &AtomicBool::new(false))?,
                Mode::Threads { receivers, .. } => {
                    let k = (b - self.start) % receivers.len();
                    match receivers[k].recv() {
                        Ok(r) => r,
                        Err(_) => {
                            self.next = self.end;
                            return Some(Err(Error::arg(
                                "loader",
                                format!(
                                    "worker {k} stopped before delivering batch {b} (it panicked)"
                                ),
                            )));
                        }
                    }
                }
                Mode::Failed(err) => {
                    self.next = self.end;
                    return err.take().map(Err);
                }
            };
            match result {
                Ok(Some(batch)) => return Some(Ok(batch)),
                Ok(None) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
        None
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        if let Mode::Threads {
            receivers,
            handles,
            stop,
        } = std::mem::replace(&mut self.mode, Mode::Inline)
        {
            stop.store(true, Ordering::Relaxed);
            drop(receivers);
            for h in handles {
                let _ = h.join();
            }
        }
    }
}
