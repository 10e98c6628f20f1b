//! The machinery both loaders (images, detection) share: an epoch's sample
//! order, the record of unreadable samples, and an iterator that builds
//! batches `start..end` in order, inline or on worker threads with bounded
//! prefetch.
//!
//! Threads: worker `k` of `W` builds batches `start + k`, `start + k + W`,
//! ... and sends each through its own bounded channel; the iterator
//! receives from the workers in turn, so batches come out in order with no
//! reordering buffer. Dropping the iterator raises a stop flag, drops the
//! receivers and joins the workers, which notice within one sample.

use super::loader::{derive_seed, LoaderOptions};
use engine::{Error, Result, Rng};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// One epoch's sample order, cut into batches: the order is
/// `Rng::new(derive_seed(&[seed, epoch]))`'s shuffle of `0..n`, or the
/// identity without shuffling; batch `b` is positions `b*batch ..
/// (b+1)*batch` of it.
pub(crate) struct Plan {
    order: Vec<usize>,
    batch: usize,
    pub(crate) epoch: u64,
}

impl Plan {
    pub(crate) fn new(n: usize, opts: &LoaderOptions, epoch: usize) -> Plan {
        let mut order: Vec<usize> = (0..n).collect();
        if opts.shuffle {
            Rng::new(derive_seed(&[opts.seed, epoch as u64])).shuffle(&mut order);
        }
        Plan {
            order,
            batch: opts.batch,
            epoch: epoch as u64,
        }
    }

    /// Dataset indices of batch `b`.
    pub(crate) fn samples(&self, b: usize) -> &[usize] {
        let lo = (b * self.batch).min(self.order.len());
        &self.order[lo..(lo + self.batch).min(self.order.len())]
    }
}

/// Unreadable samples: each is warned about once and counted once.
#[derive(Default)]
pub(crate) struct SkipLog {
    bad: Mutex<HashSet<usize>>,
    count: AtomicUsize,
}

impl SkipLog {
    pub(crate) fn skip(&self, index: usize, what: impl FnOnce() -> String, err: &Error) {
        let first = self
            .bad
            .lock()
            .map(|mut bad| bad.insert(index))
            .unwrap_or(false);
        if first {
            self.count.fetch_add(1, Ordering::Relaxed);
            eprintln!("warning: skipping unreadable sample {}: {err}", what());
        }
    }
    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

/// Builds batch `b`: `Some(Ok(None))` when every sample of it was
/// unreadable, `None` when `stop` was raised midway.
pub(crate) type BuildFn<T> =
    Arc<dyn Fn(usize, &AtomicBool) -> Option<Result<Option<T>>> + Send + Sync>;

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
    next: usize,
    start: usize,
    end: usize,
    mode: Mode<T>,
}

impl<T: Send + 'static> Batches<T> {
    /// `workers == 0` builds on the calling thread; `name` labels the
    /// threads and errors.
    pub(crate) fn new(
        build: BuildFn<T>,
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
                Ok(Some(batch)) => return Some(Ok(batch)),
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
