//! The machinery both loaders (images, detection) share: `DataLoader` over
//! a `Source` (how to load one sample and collate a batch), an epoch's
//! sample order, the record of unreadable samples, and an iterator that
//! builds batches `start..end` in order, inline or on worker threads with
//! bounded prefetch.
//!
//! Determinism contract (exact resume depends on it): the order of epoch `e`
//! is `Rng::new(derive_seed(&[seed, e]))`'s shuffle of `0..len` (identity
//! without shuffle); batch `b` is positions `b*batch .. (b+1)*batch` of it;
//! sample `i` is loaded with `Rng::new(derive_seed(&[seed, e, i]))`. So
//! batch `b` of epoch `e` is the same whatever `workers`, `prefetch` and
//! `start_batch` are.
//!
//! Sharding (data parallelism, `DataLoader::shard`): with `world` ranks,
//! batch `b` of rank `r` is positions `(b*world + r)*batch ..` of the same
//! order: global batch `b` is the positions `b*G .. (b+1)*G` (`G = world *
//! batch`), rank `r` taking its `r`-th slice. The order and each sample's
//! randomness depend only on (seed, epoch, sample), never on `world`, so a
//! run split over other ranks (same global batch) reads the same data.
//!
//! Threads: worker `k` of `W` builds batches `start + k`, `start + k + W`,
//! ... and sends each through its own bounded channel; the iterator
//! receives from the workers in turn, so batches come out in order with no
//! reordering buffer. Dropping the iterator raises a stop flag, drops the
//! receivers and joins the workers, which notice within one sample.

use engine::{Error, Result, Rng};
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

impl LoaderOptions {
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

/// What a `DataLoader` reads: samples by index, and how they become a batch.
pub trait Source: Send + Sync + 'static {
    /// One loaded and transformed sample.
    type Sample: Send;
    type Batch: Send + 'static;
    /// Names the loader in errors and thread names.
    const NAME: &'static str;
    /// Number of samples (including any that turn out unreadable).
    fn num_samples(&self) -> usize;
    /// Loads and transforms sample `index`, drawing randomness from `rng`.
    fn load(&self, index: usize, rng: &mut Rng) -> Result<Self::Sample>;
    /// Where sample `index` comes from, for the warning when it is skipped.
    fn describe(&self, index: usize) -> String;
    /// Batch `index` of its epoch from its readable samples and their
    /// dataset indices (at least one).
    fn collate(
        &self,
        index: usize,
        samples: Vec<Self::Sample>,
        indices: Vec<usize>,
    ) -> Result<Self::Batch>;
    /// The position in its epoch of a batch `collate` made.
    fn batch_index(batch: &Self::Batch) -> usize;
    /// What the consumer's thread does to each batch before handing it
    /// out, after the workers' `collate` (the image loader's device mode
    /// uploads and transforms there, so only one thread drives the GPU).
    fn finish(&self, batch: Self::Batch) -> Result<Self::Batch> {
        Ok(batch)
    }
}

/// Shuffled batches of a `Source` with optional worker threads and prefetch
/// (see the module notes). `Loader` and `DetectionLoader` are the two kinds.
pub struct DataLoader<S: Source> {
    source: Arc<S>,
    opts: LoaderOptions,
    skipped: Arc<SkipLog>,
    /// (rank, world): which slice of each global batch this loader reads.
    shard: (usize, usize),
}

impl<S: Source> DataLoader<S> {
    /// A loader needs samples and a positive batch size.
    pub(crate) fn with_source(source: S, opts: LoaderOptions) -> Result<DataLoader<S>> {
        if source.num_samples() == 0 {
            return Err(Error::arg(S::NAME, "the dataset is empty"));
        }
        if opts.batch == 0 {
            return Err(Error::arg(S::NAME, "batch size must be positive"));
        }
        Ok(DataLoader {
            source: Arc::new(source),
            opts,
            skipped: Arc::default(),
            shard: (0, 1),
        })
    }

    /// Reads only rank `rank`'s slice of each global batch of `world *
    /// batch` samples (see the module notes). Needs `drop_last`, so that
    /// every rank has the same number of full batches.
    pub fn shard(mut self, rank: usize, world: usize) -> Result<Self> {
        if world == 0 || rank >= world {
            return Err(Error::arg(S::NAME, format!("rank {rank} of {world} ranks")));
        }
        if world > 1 && !self.opts.drop_last {
            return Err(Error::arg(
                S::NAME,
                "a loader sharded over ranks must drop the last partial batch",
            ));
        }
        self.shard = (rank, world);
        Ok(self)
    }

    pub fn source(&self) -> &S {
        &self.source
    }

    pub fn options(&self) -> &LoaderOptions {
        &self.opts
    }

    /// `len / batch`, rounded up unless `drop_last`.
    pub fn batches_per_epoch(&self) -> usize {
        // a shard has one batch per global batch
        let global = LoaderOptions {
            batch: self.opts.batch * self.shard.1,
            ..self.opts.clone()
        };
        global.batches_per_epoch(self.source.num_samples())
    }

    /// Distinct samples that failed to load or transform so far.
    pub fn skipped(&self) -> usize {
        self.skipped.count()
    }

    /// Batches `start_batch..batches_per_epoch()` of epoch `epoch`, in order.
    /// A batch whose every sample is unreadable is left out.
    pub fn epoch(&self, epoch: usize, start_batch: usize) -> Batches<S::Batch> {
        let plan = Plan::new(self.source.num_samples(), &self.opts, epoch, self.shard);
        let (source, skipped) = (self.source.clone(), self.skipped.clone());
        let finisher = self.source.clone();
        Batches::new(
            Arc::new(move |b, stop: &AtomicBool| build(&*source, &skipped, &plan, b, stop)),
            Box::new(move |batch| finisher.finish(batch)),
            start_batch,
            self.batches_per_epoch(),
            self.opts.workers,
            self.opts.prefetch,
            S::NAME,
        )
    }
}

/// Builds batch `b`: `Some(Ok(None))` when every sample was unreadable,
/// `None` when stopped midway.
fn build<S: Source>(
    source: &S,
    skipped: &SkipLog,
    plan: &Plan,
    b: usize,
    stop: &AtomicBool,
) -> Option<Result<Option<S::Batch>>> {
    let wanted = plan.samples(b);
    let mut samples = Vec::with_capacity(wanted.len());
    let mut indices = Vec::with_capacity(wanted.len());
    for &i in wanted {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        let mut rng = Rng::new(derive_seed(&[plan.seed, plan.epoch, i as u64]));
        match source.load(i, &mut rng) {
            Ok(s) => {
                samples.push(s);
                indices.push(i);
            }
            Err(e) => skipped.skip(i, || source.describe(i), &e),
        }
    }
    if samples.is_empty() {
        return Some(Ok(None));
    }
    Some(source.collate(b, samples, indices).map(Some))
}

/// One epoch's sample order, cut into batches: the order is
/// `Rng::new(derive_seed(&[seed, epoch]))`'s shuffle of `0..n`, or the
/// identity without shuffling; batch `b` is positions `b*batch ..
/// (b+1)*batch` of it, or of a shard `(rank, world)` positions
/// `(b*world + rank)*batch ..`.
struct Plan {
    order: Vec<usize>,
    batch: usize,
    shard: (usize, usize),
    seed: u64,
    epoch: u64,
}

impl Plan {
    fn new(n: usize, opts: &LoaderOptions, epoch: usize, shard: (usize, usize)) -> Plan {
        let mut order: Vec<usize> = (0..n).collect();
        if opts.shuffle {
            Rng::new(derive_seed(&[opts.seed, epoch as u64])).shuffle(&mut order);
        }
        Plan {
            order,
            batch: opts.batch,
            shard,
            seed: opts.seed,
            epoch: epoch as u64,
        }
    }

    /// Dataset indices of batch `b`.
    fn samples(&self, b: usize) -> &[usize] {
        let (rank, world) = self.shard;
        let lo = ((b * world + rank) * self.batch).min(self.order.len());
        &self.order[lo..(lo + self.batch).min(self.order.len())]
    }
}

/// Unreadable samples: each is warned about once and counted once.
#[derive(Default)]
struct SkipLog {
    bad: Mutex<HashSet<usize>>,
    count: AtomicUsize,
}

impl SkipLog {
    fn skip(&self, index: usize, what: impl FnOnce() -> String, err: &Error) {
        let first = self
            .bad
            .lock()
            .map(|mut bad| bad.insert(index))
            .unwrap_or(false);
        if first {
            self.count.fetch_add(1, Ordering::Relaxed);
            crate::progress::warn(format!("skipping unreadable sample {}: {err}", what()));
        }
    }
    fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

/// Builds batch `b`: `Some(Ok(None))` when every sample of it was
/// unreadable, `None` when `stop` was raised midway.
type BuildFn<T> = Arc<dyn Fn(usize, &AtomicBool) -> Option<Result<Option<T>>> + Send + Sync>;

enum Mode<T> {
    Inline,
    Threads {
        receivers: Vec<Receiver<Result<Option<T>>>>,
        handles: Vec<JoinHandle<()>>,
        stop: Arc<AtomicBool>,
    },
    /// Workers could not start: yields this error once.
    Failed(Option<Error>),
}

/// Batches `start..end` of one epoch, in order; empty batches are left out.
pub struct Batches<T> {
    build: BuildFn<T>,
    /// `Source::finish`, on the consumer's thread.
    finish: Box<dyn Fn(T) -> Result<T> + Send>,
    next: usize,
    start: usize,
    end: usize,
    mode: Mode<T>,
}

impl<T: Send + 'static> Batches<T> {
    /// `workers == 0` builds on the calling thread; `name` labels the
    /// threads and errors.
    fn new(
        build: BuildFn<T>,
        finish: Box<dyn Fn(T) -> Result<T> + Send>,
        start: usize,
        end: usize,
        workers: usize,
        prefetch: usize,
        name: &'static str,
    ) -> Batches<T> {
        let start = start.min(end);
        let mode = if workers == 0 {
            Mode::Inline
        } else {
            spawn(
                &build,
                start,
                end,
                workers.min((end - start).max(1)),
                prefetch,
                name,
            )
        };
        Batches {
            build,
            finish,
            next: start,
            start,
            end,
            mode,
        }
    }
}

fn spawn<T: Send + 'static>(
    build: &BuildFn<T>,
    start: usize,
    end: usize,
    workers: usize,
    prefetch: usize,
    name: &'static str,
) -> Mode<T> {
    let capacity = prefetch.div_ceil(workers);
    let stop = Arc::new(AtomicBool::new(false));
    let mut receivers = Vec::with_capacity(workers);
    let mut handles = Vec::with_capacity(workers);
    for k in 0..workers {
        let (tx, rx) = sync_channel(capacity);
        let (build, stop_flag) = (build.clone(), stop.clone());
        let handle = std::thread::Builder::new()
            .name(format!("{name}-{k}"))
            .spawn(move || {
                for b in (start + k..end).step_by(workers) {
                    let Some(result) = build(b, &stop_flag) else {
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
                    name,
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

impl<T> Iterator for Batches<T> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Result<T>> {
        while self.next < self.end {
            let b = self.next;
            self.next += 1;
            let result = match &mut self.mode {
                Mode::Inline => (self.build)(b, &AtomicBool::new(false))?,
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
                Ok(Some(batch)) => return Some((self.finish)(batch)),
                Ok(None) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
        None
    }
}

impl<T> Drop for Batches<T> {
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
