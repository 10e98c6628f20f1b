//! Uploads that do not wait: small host-to-device copies (kernel tables,
//! labels, the optimizer's chunk list) go through a ring of page-locked
//! memory. Each copies its bytes into the next free span of the ring,
//! queues the copy on the GPU's stream and records an event behind it; a
//! span is written again only once its event has completed. So the host
//! never waits for the GPU to drain (the waiting upload's
//! `cuStreamSynchronize`), and the caller's bytes may be dropped at once.
//! This module is the bookkeeping, pure and unit-tested; `Gpu` drives the
//! driver (`Gpu::upload_queued`).

use std::collections::VecDeque;

/// Page-locked bytes of the ring.
pub(crate) const RING_BYTES: usize = 4 << 20;
/// Uploads above this go through the waiting path (a large upload would
/// lap the ring and wait anyway).
pub(crate) const MAX_QUEUED_UPLOAD: usize = RING_BYTES / 4;
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
