//! Capturing the engine's JSONL audit trace (`engine::trace`) of a closure.
//!
//! The trace sink is global to the process: lines of other tests running at
//! the same time may appear too, so look ops up rather than count lines.

use engine::trace;
use serde_json::Value;
use std::io::Write;
use std::sync::{Arc, Mutex};

/// A `Write` into a shared buffer.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Turns the trace off when dropped (also when the closure panics).
struct Off;

impl Drop for Off {
    fn drop(&mut self) {
        trace::to_writer(None);
    }
}

/// The captured trace: its text and one JSON value per line.
pub struct Trace {
    pub text: String,
    pub lines: Vec<Value>,
}

/// Runs `f` with the trace on and returns its result and the trace.
pub fn capture<R>(f: impl FnOnce() -> R) -> (R, Trace) {
    let buf = Shared::default();
    let off = Off;
    trace::to_writer(Some(Box::new(buf.clone())));
    let r = f();
    drop(off);
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let lines = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("trace line {l}: {e}")))
        .collect();
    (r, Trace { text, lines })
}

impl Trace {
    /// Whether a line has `op` in `phase` ("forward" / "backward"), run by
    /// `ran` when given.
    pub fn has(&self, op: &str, phase: &str, ran: Option<&str>) -> bool {
        self.position(op, phase, ran).is_some()
    }

    /// The index of the first such line.
    pub fn position(&self, op: &str, phase: &str, ran: Option<&str>) -> Option<usize> {
        self.lines
            .iter()
            .position(|l| l["op"] == op && l["phase"] == phase && ran.is_none_or(|r| l["ran"] == r))
    }

    /// The first line of `op` in `phase`; panics with the whole trace.
    pub fn find(&self, op: &str, phase: &str) -> &Value {
        let i = self
            .position(op, phase, None)
            .unwrap_or_else(|| panic!("no {phase} {op} in trace:\n{}", self.text));
        &self.lines[i]
    }
}
