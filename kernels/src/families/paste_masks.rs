//! Mask R-CNN's mask paste (paste_masks.cu): the per-box tables the kernel
//! reads (each box's in-image rows and columns and their bilinear taps,
//! built by the caller with the CPU's tap function) and the launcher.

use super::upsample::Tap;
use crate::error::{Error, Result};
use crate::launch::{self, to_i32};
use crate::library::{config, driver, DevPtr, Dtype, KernelLibrary};
use crate::source::Kernel;
use cudarc::driver::{CudaStream, PushKernelArg};

pub const KERNEL: Kernel = kernel!("paste_masks",
    typed ["paste_masks"]
    untyped []);

/// K masks of `mh` x `mw`, zero-padded by `padding`, pasted into K planes
/// of `h` x `w`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasteDims {
    pub k: usize,
    pub mh: usize,
    pub mw: usize,
    pub padding: usize,
    pub h: usize,
    pub w: usize,
}

/// One box's part of the tables: the image rows `rows` = [start, end) and
/// columns `cols` it covers (both empty when it covers none), with one
/// row tap per covered row and one column tap per covered column, indices
/// into the padded mask.
#[derive(Debug, Clone, PartialEq)]
pub struct PasteTaps {
    pub rows: [usize; 2],
    pub cols: [usize; 2],
    pub row_taps: Vec<Tap>,
    pub col_taps: Vec<Tap>,
}

/// paste_masks.cu's `Paste`, passed by value.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct PasteArg {
    k: i32,
    mh: i32,
    mw: i32,
    pad: i32,
    h: i32,
    w: i32,
}

// SAFETY: plain old data with the same C layout as paste_masks.cu's struct.
unsafe impl cudarc::driver::DeviceRepr for PasteArg {}

/// The kernel's tables in one buffer to upload: K box headers (32 bytes
/// each: y0, y1, x0, x1, the index of its first row tap, of its first
/// column tap, two unused, as i32), then every tap (16 bytes: i0, i1 as
/// i32, l0, l1 as f32), box by box, rows before columns.
#[derive(Debug, Clone, PartialEq)]
pub struct PasteTables {
    pub bytes: Vec<u8>,
    /// Byte offset of the taps.
    taps: usize,
}

const HEADER: usize = 32;
const TAP: usize = 16;

impl PasteTables {
    /// The tables of `d` from one [`PasteTaps`] per box: each span inside
    /// the image, as many taps as the span is long, every tap index inside
    /// the padded mask.
    pub fn new(d: &PasteDims, boxes: &[PasteTaps]) -> Result<PasteTables> {
        if boxes.len() != d.k {
            return Err(Error::Shape(format!(
                "{} paste boxes for {} masks",
                boxes.len(),
                d.k
            )));
        }
        let padded = [d.mh + 2 * d.padding, d.mw + 2 * d.padding];
        let n_taps: usize = boxes
            .iter()
            .map(|b| b.row_taps.len() + b.col_taps.len())
            .sum();
        let mut bytes = Vec::with_capacity(HEADER * d.k + TAP * n_taps);
        let mut next = 0usize;
        for (i, b) in boxes.iter().enumerate() {
            let spans = [(b.rows, d.h, &b.row_taps, padded[0]), (b.cols, d.w, &b.col_taps, padded[1])];
            for (span, size, taps, input) in spans {
                if span[0] > span[1] || span[1] > size || taps.len() != span[1] - span[0] {
                    return Err(Error::Shape(format!(
                        "paste box {i}: span {span:?} of an axis of {size} with {} taps",
                        taps.len()
                    )));
                }
                if taps.iter().any(|t| t.i0 >= input || t.i1 >= input) {
                    return Err(Error::Shape(format!(
                        "paste box {i}: a tap lies outside the padded mask's {input}"
                    )));
                }
            }
            let first_col = next + b.row_taps.len();
            let header = [
                b.rows[0],
                b.rows[1],
                b.cols[0],
                b.cols[1],
                next,
                first_col,
                0,
                0,
            ];
            for v in header {
                bytes.extend_from_slice(&to_i32("paste table", v)?.to_le_bytes());
            }
            next = first_col + b.col_taps.len();
        }
        to_i32("paste taps", next)?;
        let taps = bytes.len();
        for t in boxes.iter().flat_map(|b| b.row_taps.iter().chain(&b.col_taps)) {
            bytes.extend_from_slice(&to_i32("tap", t.i0)?.to_le_bytes());
            bytes.extend_from_slice(&to_i32("tap", t.i1)?.to_le_bytes());
            bytes.extend_from_slice(&t.l0.to_le_bytes());
            bytes.extend_from_slice(&t.l1.to_le_bytes());
        }
        Ok(PasteTables { bytes, taps })
    }
}

fn arg(d: &PasteDims) -> Result<PasteArg> {
    // flat indices inside the kernel are i64; the dims are ints
    Ok(PasteArg {
        k: to_i32("K", d.k)?,
        mh: to_i32("Mh", d.mh)?,
        mw: to_i32("Mw", d.mw)?,
        pad: to_i32("padding", d.padding)?,
        h: to_i32("H", d.h)?,
        w: to_i32("W", d.w)?,
    })
}

impl KernelLibrary {
    /// out [K, H, W] = the masks [K, Mh, Mw] (dense, `dtype`) pasted with
    /// the tables `t` (one thread per output pixel; every pixel written).
    ///
    /// # Safety
    /// masks holds K*Mh*Mw and out K*H*W elements of `dtype`; `tables`
    /// points to `t.bytes` uploaded for these dims.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn paste_masks(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        d: &PasteDims,
        t: &PasteTables,
        tables: DevPtr,
        masks: DevPtr,
        out: DevPtr,
    ) -> Result<()> {
        let a = arg(d)?;
        let Some(shape) = launch::elementwise(d.k * d.h * d.w, 1, &self.gpu()) else {
            return Ok(());
        };
        let name = format!("paste_masks_{}", dtype.suffix());
        let f = self.function(&name)?;
        let taps = tables + t.taps as u64;
        let mut b = stream.launch_builder(&f);
        b.arg(&masks).arg(&out).arg(&tables).arg(&taps).arg(&a);
        b.launch(config(shape)).map_err(driver(&name))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tap(i0: usize, i1: usize, l1: f32) -> Tap {
        Tap {
            i0,
            i1,
            l0: 1.0 - l1,
            l1,
        }
    }

    fn dims(k: usize) -> PasteDims {
        PasteDims {
            k,
            mh: 2,
            mw: 2,
            padding: 1,
            h: 5,
            w: 6,
        }
    }

    #[test]
    fn tables_lay_out_headers_then_taps() {
        let a = PasteTaps {
            rows: [1, 3],
            cols: [0, 1],
            row_taps: vec![tap(0, 1, 0.25), tap(2, 3, 0.5)],
            col_taps: vec![tap(3, 3, 0.0)],
        };
        let empty = PasteTaps {
            rows: [0, 0],
            cols: [0, 0],
            row_taps: vec![],
            col_taps: vec![],
        };
        let t = PasteTables::new(&dims(2), &[a.clone(), empty]).unwrap();
        assert_eq!(t.taps, 64);
        assert_eq!(t.bytes.len(), 64 + 3 * 16);
        let int = |o: usize| i32::from_le_bytes(t.bytes[o..o + 4].try_into().unwrap());
        // box 0: rows 1..3, cols 0..1, row taps from 0, column taps from 2
        assert_eq!((0..6).map(|i| int(4 * i)).collect::<Vec<_>>(), [1, 3, 0, 1, 0, 2]);
        // box 1: empty, its (no) taps from 3
        assert_eq!((8..14).map(|i| int(4 * i)).collect::<Vec<_>>(), [0, 0, 0, 0, 3, 3]);
        // the second row tap: i0 2, i1 3, l0 = l1 = 0.5
        assert_eq!((int(80), int(84)), (2, 3));
        assert_eq!(&t.bytes[88..92], &0.5f32.to_le_bytes());

        let mut short = a.clone();
        short.row_taps.pop();
        assert!(PasteTables::new(&dims(1), &[short]).is_err());
        let mut outside = a.clone();
        outside.col_taps[0].i1 = 4; // the padded mask has 4 columns
        assert!(PasteTables::new(&dims(1), &[outside]).is_err());
        let mut beyond = a.clone();
        beyond.cols = [6, 7];
        assert!(PasteTables::new(&dims(1), &[beyond]).is_err());
        assert!(PasteTables::new(&dims(2), &[a]).is_err());
    }
}
