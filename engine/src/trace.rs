//! The audit trace: one switch logs every op the engine executes, forward
//! and backward, as one JSON line each — name, phase, input shapes, dtypes
//! and layouts, output shape, what ran it and how long it took — so a user
//! can follow a whole training step down to the kernels.
//!
//! Switch it on with `SLMLP_TRACE=1` (stderr) or `SLMLP_TRACE=/path/file.jsonl`,
//! or from code with `trace::to_writer`. Off, it costs one relaxed atomic load
//! per op. Nested lines (ops a backward closure runs) carry a larger `depth`.
//! The same per-op hook feeds the profiler (`profile`) while one runs.

use crate::Tensor;
use std::cell::Cell;
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Instant;

const UNKNOWN: u8 = 0;
const OFF: u8 = 1;
const ON: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);
static SINK: Mutex<Option<Box<dyn Write + Send>>> = Mutex::new(None);

thread_local! {
    static DEPTH: Cell<usize> = const { Cell::new(0) };
    /// The kernel or library path the innermost running op named (`kernel`).
    static KERNEL: Cell<Option<&'static str>> = const { Cell::new(None) };
}

/// Names what a backend ran for the op being traced ("im2col+gemm",
/// "maxpool_fwd", "cudnn"): the op's line then says `"ran": "cpu:im2col+gemm"`
/// instead of just the backend. Costs one thread-local store.
pub fn kernel(name: &'static str) {
    KERNEL.with(|k| k.set(Some(name)));
}

fn init_from_env() -> bool {
    let sink: Option<Box<dyn Write + Send>> = match std::env::var("SLMLP_TRACE") {
        Ok(v) if v.is_empty() || v == "0" => None,
        Ok(v) if v == "1" || v == "stderr" => Some(Box::new(std::io::stderr())),
        Ok(path) => match std::fs::File::create(&path) {
            // line-buffered: the process may exit without dropping the static sink
            Ok(f) => Some(Box::new(std::io::LineWriter::new(f))),
            Err(e) => {
                eprintln!("warning: SLMLP_TRACE={path}: cannot create the trace file ({e}); tracing to stderr");
                Some(Box::new(std::io::stderr()))
            }
        },
        Err(_) => None,
    };
    let on = sink.is_some();
    *SINK.lock().unwrap() = sink;
    STATE.store(if on { ON } else { OFF }, Ordering::Release);
    on
}

/// Whether ops are being traced.
pub fn enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        ON => true,
        OFF => false,
        _ => init_from_env(),
    }
}

/// Sends the trace to `w` (None switches it off), overriding `SLMLP_TRACE`.
pub fn to_writer(w: Option<Box<dyn Write + Send>>) {
    let on = w.is_some();
    let mut sink = SINK.lock().unwrap();
    if let Some(old) = sink.as_mut() {
        let _ = old.flush();
    }
    *sink = w;
    STATE.store(if on { ON } else { OFF }, Ordering::Release);
}

/// Flushes a buffered trace file (also done when the sink is replaced).
pub fn flush() {
    if let Some(s) = SINK.lock().unwrap().as_mut() {
        let _ = s.flush();
    }
}

fn describe(t: &Tensor) -> serde_json::Value {
    let layout = if t.is_contiguous() {
        "contiguous"
    } else if t.rank() == 4 && t.layout().has_gpu_strides() {
        // NHWC storage of a logical NCHW tensor (the GPU's convention)
        "channels_last"
    } else {
        "strided"
    };
    serde_json::json!({ "shape": t.dims(), "dtype": t.dtype().name(), "layout": layout, "device": t.device().to_string() })
}

/// What an op returns, as far as the trace is concerned.
pub trait Traced {
    fn outputs(&self) -> Vec<&Tensor>;
    /// The outputs by position, None where there is none (a backward's
    /// gradient for an input that needs none): the profiler tells a
    /// convolution's data gradient from its weight gradient by position.
    fn slots(&self) -> Vec<Option<&Tensor>> {
        self.outputs().into_iter().map(Some).collect()
    }
}
impl Traced for Tensor {
    fn outputs(&self) -> Vec<&Tensor> {
        vec![self]
    }
}
impl Traced for (Tensor, Tensor) {
    fn outputs(&self) -> Vec<&Tensor> {
        vec![&self.0, &self.1]
    }
}
impl Traced for Vec<Option<Tensor>> {
    fn outputs(&self) -> Vec<&Tensor> {
        self.iter().flatten().collect()
    }
    fn slots(&self) -> Vec<Option<&Tensor>> {
        self.iter().map(Option::as_ref).collect()
    }
}

/// Runs `f`, the body of op `name` on backend `ran` ("cpu", "cuda"), and
/// logs it when tracing is on, with the kernel the backend named (`kernel`);
/// times it for the profiler when a profile runs (`profile`).
pub fn op<R: Traced>(
    name: &str,
    phase: &str,
    ran: &str,
    inputs: &[&Tensor],
    f: impl FnOnce() -> crate::Result<R>,
) -> crate::Result<R> {
    let tracing = enabled();
    let profiling = crate::profile::active();
    if !tracing && !profiling {
        return f();
    }
    let depth = DEPTH.with(|d| d.replace(d.get() + 1));
    let outer = KERNEL.with(|k| k.take());
    if profiling {
        crate::profile::begin(inputs);
    }
    let start = Instant::now();
    let result = f();
    let us = start.elapsed().as_secs_f64() * 1e6;
    DEPTH.with(|d| d.set(depth));
    let ran = match KERNEL.with(|k| k.replace(outer)) {
        Some(k) => format!("{ran}:{k}"),
        None => ran.to_string(),
    };
    if profiling {
        let slots = result.as_ref().ok().map(|r| r.slots());
        crate::profile::end(name, phase, &ran, inputs, slots);
    }
    if !tracing {
        return result;
    }
    let line = serde_json::json!({
        "op": name,
        "phase": phase,
        "ran": ran,
        "depth": depth,
        "inputs": inputs.iter().map(|t| describe(t)).collect::<Vec<_>>(),
        "outputs": match &result {
            Ok(r) => r.outputs().into_iter().map(describe).collect::<Vec<_>>(),
            Err(_) => vec![],
        },
        "error": result.as_ref().err().map(|e| e.to_string()),
        "us": (us * 10.0).round() / 10.0,
    });
    if let Some(s) = SINK.lock().unwrap().as_mut() {
        let _ = writeln!(s, "{line}");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::describe;
    use crate::{DType, Tensor};

    #[test]
    fn layouts_are_named() {
        let nhwc = Tensor::zeros(&[2, 3, 4, 5], DType::F32);
        assert_eq!(describe(&nhwc)["layout"], "contiguous");
        // NHWC storage seen as NCHW: the GPU's channels-last convention
        let cl = nhwc.permute(&[0, 3, 1, 2]).unwrap();
        assert_eq!(describe(&cl)["layout"], "channels_last");
        let t = Tensor::zeros(&[3, 4], DType::F32).transpose(0, 1).unwrap();
        assert_eq!(describe(&t)["layout"], "strided");
    }
}
