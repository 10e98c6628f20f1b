//! Uploads that do not wait: small host-to-device copies (kernel tables,
//! labels, the optimizer's chunk list) go through a ring of page-locked
//! memory, and batches (up to `MAX_BATCH_UPLOAD`) through a second, larger
//! one, which holds two or more at once: the upload of the next batch is
//! queued while the GPU still runs the step before it (double buffering).
//! Each copies its bytes into the next free span of its ring,
//! queues the copy on the GPU's stream and records an event behind it; a
//! span is written again only once its event has completed. So the host
//! never waits for the GPU to drain (the waiting upload's
//! `cuStreamSynchronize`), and the caller's bytes may be dropped at once.
//! This module is the bookkeeping, pure and unit-tested; `Gpu` drives the
//! driver (`Gpu::upload_queued`).

use std::collections::VecDeque;

/// Page-locked bytes of the ring.
pub(crate) const RING_BYTES: usize = 4 << 20;
/// Uploads above this go through the batch ring (a large upload would lap
/// the small ring and wait anyway).
pub(crate) const MAX_QUEUED_UPLOAD: usize = RING_BYTES / 4;
/// Page-locked bytes of the batch ring (allocated at the first upload that
/// needs it).
pub(crate) const BATCH_RING_BYTES: usize = 512 << 20;
/// Uploads above this take the waiting path: a ResNet-50 batch of 256 f32
/// images at 224 px (154 MB) is under it, so two are in the ring at once.
pub(crate) const MAX_BATCH_UPLOAD: usize = BATCH_RING_BYTES / 2;

/// The ring an upload of `len` bytes goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Through {
    Small,
    Batch,
    /// The waiting path.
    Wait,
}

pub(crate) fn through(len: usize) -> Through {
    if len <= MAX_QUEUED_UPLOAD {
        Through::Small
    } else if len <= MAX_BATCH_UPLOAD {
        Through::Batch
    } else {
        Through::Wait
    }
}
/// Spans start on this boundary.
const ALIGN: usize = 256;

/// The ring's spans in use: `[start, end)` with the event recorded after
/// the copy out of it, oldest first. `E` is the event handle.
#[derive(Debug)]
pub(crate) struct Spans<E> {
    cap: usize,
    head: usize,
    live: VecDeque<(usize, usize, E)>,
}

impl<E: Copy> Spans<E> {
    pub(crate) fn new(cap: usize) -> Spans<E> {
        Spans {
            cap,
            head: 0,
            live: VecDeque::new(),
        }
    }

    /// Where the next `len` bytes go (`len` in 1..=cap): the start of the
    /// span (at the head, or at 0 when the rest of the ring is too short),
    /// and the events of the live spans it overlaps, removed: the caller
    /// waits for them before writing. The span is not live until
    /// [`Spans::queued`].
    pub(crate) fn place(&mut self, len: usize) -> (usize, Vec<E>) {
        let len = len.div_ceil(ALIGN) * ALIGN;
        let start = if self.head + len <= self.cap {
            self.head
        } else {
            0
        };
        let end = (start + len).min(self.cap);
        let mut wait = Vec::new();
        self.live.retain(|&(s, e, ev)| {
            let hit = s < end && start < e;
            if hit {
                wait.push(ev);
            }
            !hit
        });
        self.head = end;
        (start, wait)
    }

    /// The copy out of `start..start + len` is queued, `ev` behind it.
    pub(crate) fn queued(&mut self, start: usize, len: usize, ev: E) {
        self.live.push_back((start, start + len, ev));
    }

    /// Retires the oldest spans whose copy has run (`done`), stopping at
    /// the first that has not; returns their events to release.
    pub(crate) fn retire(&mut self, mut done: impl FnMut(E) -> bool) -> Vec<E> {
        let mut out = Vec::new();
        while let Some(&(_, _, ev)) = self.live.front() {
            if !done(ev) {
                break;
            }
            out.push(ev);
            self.live.pop_front();
        }
        out
    }

    #[cfg(test)]
    fn live(&self) -> Vec<(usize, usize)> {
        self.live.iter().map(|&(s, e, _)| (s, e)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_aligned_and_wrap_to_the_start() {
        let mut s = Spans::<u32>::new(1024);
        assert_eq!(s.place(10), (0, vec![]));
        s.queued(0, 10, 1);
        assert_eq!(s.place(300), (256, vec![]));
        s.queued(256, 300, 2);
        // 768..1024 is free; 512 bytes do not fit there: wrap, over span 1
        // and span 2 (256..556 overlaps 0..512)
        assert_eq!(s.place(512), (0, vec![1, 2]));
        s.queued(0, 512, 3);
        assert_eq!(s.live(), vec![(0, 512)]);
        // 512..1024 is free now
        assert_eq!(s.place(512), (512, vec![]));
    }

    #[test]
    fn small_uploads_take_the_small_ring_and_batches_the_batch_ring() {
        assert_eq!(through(1), Through::Small);
        assert_eq!(through(MAX_QUEUED_UPLOAD), Through::Small);
        assert_eq!(through(MAX_QUEUED_UPLOAD + 1), Through::Batch);
        // a ResNet-50 batch: 256 f32 images of 3x224x224, or 256x256 u8 ones
        let f32_batch = 256 * 3 * 224 * 224 * 4;
        assert_eq!(through(f32_batch), Through::Batch);
        assert_eq!(through(256 * 3 * 256 * 256), Through::Batch);
        // two of them fit in the ring at once: the next one's upload does
        // not wait for the copy of the one before
        let mut s = Spans::<u32>::new(BATCH_RING_BYTES);
        let (a, wait) = s.place(f32_batch);
        assert!(wait.is_empty());
        s.queued(a, f32_batch, 1);
        let (b, wait) = s.place(f32_batch);
        assert!(wait.is_empty() && b >= a + f32_batch);
        assert_eq!(through(MAX_BATCH_UPLOAD + 1), Through::Wait);
    }

    #[test]
    fn a_placed_span_never_overlaps_a_live_one() {
        let mut s = Spans::<usize>::new(4096);
        let mut rng = crate::Rng::new(3);
        for i in 0..2000 {
            let len = 1 + rng.below(1500);
            let (start, _) = s.place(len);
            let end = start + len;
            assert!(end <= 4096, "{start}+{len}");
            assert!(
                s.live().iter().all(|&(a, b)| b <= start || end <= a),
                "step {i}: {start}..{end} overlaps {:?}",
                s.live()
            );
            s.queued(start, len, i);
            // the GPU finishes some copies, oldest first
            let k = rng.below(3);
            let mut n = 0;
            let retired = s.retire(|_| {
                n += 1;
                n <= k
            });
            assert!(retired.windows(2).all(|w| w[0] < w[1]), "in order");
        }
    }
}
