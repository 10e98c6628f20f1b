//! Nearest and bilinear resizing of NHWC tensors (upsample.cu): the
//! per-axis tap tables the kernels read, and their launchers.

use crate::error::{Error, Result};
use crate::launch::{self, to_i32};
use crate::library::{config, driver, DevPtr, Dtype, KernelLibrary};
use crate::source::Kernel;
use cudarc::driver::{CudaStream, PushKernelArg};

pub const KERNEL: Kernel = kernel!("upsample",
    typed ["upsample_fwd", "upsample_bwd"]
    untyped []);

/// One output index's two source indices and their weights along an axis
/// (upsample.cu's `Tap`; nearest: i0 = i1, l0 = 1, l1 = 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tap {
    pub i0: usize,
    pub i1: usize,
    pub l0: f32,
    pub l1: f32,
}

/// A resize of [n, c, h, w] to [n, c, oh, ow], NHWC on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResizeDims {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
    /// Copy the i0 taps (no blend).
    pub nearest: bool,
}

/// upsample.cu's `Resize`, passed by value.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct ResizeArg {
    n: i32,
    c: i32,
    h: i32,
    w: i32,
    oh: i32,
    ow: i32,
    nearest: i32,
}

// SAFETY: plain old data with the same C layout as upsample.cu's struct.
unsafe impl cudarc::driver::DeviceRepr for ResizeArg {}

/// The kernels' tables in one buffer to upload: the row taps, the column
/// taps (16 bytes each: i0, i1 as i32, l0, l1 as f32), then for each input
/// row and column the span [lo, hi) of output indices whose taps name it
/// (8 bytes each: two i32).
#[derive(Debug, Clone, PartialEq)]
pub struct ResizeTables {
    pub bytes: Vec<u8>,
    /// Byte offsets of the column taps, row spans and column spans.
    offsets: [usize; 3],
}

/// The spans of output indices naming each of `input` indices.
fn spans(taps: &[Tap], input: usize) -> Vec<(usize, usize)> {
    let mut s = vec![(usize::MAX, 0); input];
    for (o, t) in taps.iter().enumerate() {
        for i in [t.i0, t.i1] {
            s[i].0 = s[i].0.min(o);
            s[i].1 = s[i].1.max(o + 1);
        }
    }
    // an input nothing samples: an empty span
    s.into_iter()
        .map(|(lo, hi)| if hi == 0 { (0, 0) } else { (lo, hi) })
        .collect()
}

impl ResizeTables {
    /// The tables of `d` from its row taps (`oh` of them) and column taps
    /// (`ow`); every index must lie inside the input.
    pub fn new(d: &ResizeDims, rows: &[Tap], cols: &[Tap]) -> Result<ResizeTables> {
        if rows.len() != d.oh || cols.len() != d.ow {
            return Err(Error::Shape(format!(
                "{} row and {} column taps for an output of {}x{}",
                rows.len(),
                cols.len(),
                d.oh,
                d.ow
            )));
        }
        let bad = |taps: &[Tap], input: usize| taps.iter().any(|t| t.i0 >= input || t.i1 >= input);
        if bad(rows, d.h) || bad(cols, d.w) {
            return Err(Error::Shape(format!(
                "a resize tap lies outside the {}x{} input",
                d.h, d.w
            )));
        }
        let mut bytes = Vec::with_capacity(16 * (d.oh + d.ow) + 8 * (d.h + d.w));
        for t in rows.iter().chain(cols) {
            bytes.extend_from_slice(&to_i32("tap", t.i0)?.to_le_bytes());
            bytes.extend_from_slice(&to_i32("tap", t.i1)?.to_le_bytes());
            bytes.extend_from_slice(&t.l0.to_le_bytes());
            bytes.extend_from_slice(&t.l1.to_le_bytes());
        }
        let row_spans = bytes.len();
        for (lo, hi) in spans(rows, d.h).into_iter().chain(spans(cols, d.w)) {
            bytes.extend_from_slice(&to_i32("span", lo)?.to_le_bytes());
            bytes.extend_from_slice(&to_i32("span", hi)?.to_le_bytes());
        }
        Ok(ResizeTables {
            bytes,
            offsets: [16 * d.oh, row_spans, row_spans + 8 * d.h],
        })
    }
}

fn arg(d: &ResizeDims) -> Result<ResizeArg> {
    // every flat index inside the kernels is i64; the dims are ints
    Ok(ResizeArg {
        n: to_i32("N", d.n)?,
        c: to_i32("C", d.c)?,
        h: to_i32("H", d.h)?,
        w: to_i32("W", d.w)?,
        oh: to_i32("OH", d.oh)?,
        ow: to_i32("OW", d.ow)?,
        nearest: d.nearest as i32,
    })
}

impl KernelLibrary {
    /// The resize forward (`backward` false: src = x [n, h, w, c], dst = y
    /// [n, oh, ow, c]) or backward (src = dy, dst = dx), both NHWC dense.
    ///
    /// # Safety
    /// src and dst hold those elements of `dtype`; `tables` points to
    /// `t.bytes` uploaded for these dims.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn upsample(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        d: &ResizeDims,
        t: &ResizeTables,
        tables: DevPtr,
        backward: bool,
        src: DevPtr,
        dst: DevPtr,
    ) -> Result<()> {
        let r = arg(d)?;
        // one thread per element written: dx's for the backward, y's else
        let (ph, pw) = if backward { (d.h, d.w) } else { (d.oh, d.ow) };
        let Some(shape) = launch::elementwise(d.n * d.c * ph * pw, 1, &self.gpu()) else {
            return Ok(());
        };
        let at = |o: usize| tables + o as u64;
        let (rows, cols) = (tables, at(t.offsets[0]));
        let dir = if backward { "bwd" } else { "fwd" };
        let name = format!("upsample_{dir}_{}", dtype.suffix());
        let f = self.function(&name)?;
        let mut b = stream.launch_builder(&f);
        b.arg(&src).arg(&dst).arg(&rows).arg(&cols);
        let spans = (at(t.offsets[1]), at(t.offsets[2]));
        if backward {
            b.arg(&spans.0).arg(&spans.1);
        }
        b.arg(&r);
        b.launch(config(shape)).map_err(driver(&name))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tap(i0: usize, i1: usize, l1: f32) -> Tap {
        Tap { i0, i1, l0: 1.0 - l1, l1 }
    }

    #[test]
    fn spans_cover_every_output_that_names_an_input() {
        // 2 -> 4 bilinear-like taps
        let taps = [tap(0, 0, 0.0), tap(0, 1, 0.25), tap(0, 1, 0.75), tap(1, 1, 0.0)];
        assert_eq!(spans(&taps, 2), vec![(0, 3), (1, 4)]);
        // 4 -> 2 nearest: inputs 1 and 3 are never sampled
        let taps = [tap(0, 0, 0.0), tap(2, 2, 0.0)];
        assert_eq!(spans(&taps, 4), vec![(0, 1), (0, 0), (1, 2), (0, 0)]);
    }

    #[test]
    fn tables_lay_out_taps_then_spans() {
        let d = ResizeDims { n: 1, c: 1, h: 2, w: 1, oh: 4, ow: 1, nearest: false };
        let rows = [tap(0, 0, 0.0), tap(0, 1, 0.25), tap(0, 1, 0.75), tap(1, 1, 0.0)];
        let cols = [tap(0, 0, 0.0)];
        let t = ResizeTables::new(&d, &rows, &cols).unwrap();
        assert_eq!(t.bytes.len(), 16 * 5 + 8 * 3);
        assert_eq!(t.offsets, [64, 80, 96]);
        // row 1's taps: i0 0, i1 1, l0 0.75, l1 0.25
        assert_eq!(&t.bytes[16..20], &0i32.to_le_bytes());
        assert_eq!(&t.bytes[20..24], &1i32.to_le_bytes());
        assert_eq!(&t.bytes[24..28], &0.75f32.to_le_bytes());
        // input row 1's span: outputs 1..4
        assert_eq!(&t.bytes[88..92], &1i32.to_le_bytes());
        assert_eq!(&t.bytes[92..96], &4i32.to_le_bytes());
        let far = [tap(0, 2, 0.5), tap(0, 0, 0.0), tap(0, 0, 0.0), tap(0, 0, 0.0)];
        assert!(ResizeTables::new(&d, &far, &cols).is_err());
    }
}
