//! The input pipeline's crop + resize + flip + normalise (augment.cu): the
//! table the kernel reads (one 48-byte record per output image, then the
//! per-channel means and inverse deviations) and its launcher.

use crate::error::{Error, Result};
use crate::launch::{self, to_i32};
use crate::library::{config, driver, DevPtr, Dtype, KernelLibrary};
use crate::source::Kernel;
use cudarc::driver::{CudaStream, PushKernelArg};

pub const KERNEL: Kernel = kernel!("augment",
    typed ["crop_resize"]
    untyped []);

/// One output image's source and geometry (augment.cu's `Crop`): the source
/// is `height x width x C` u8 HWC at byte `offset`; rows `top..top+crop_h`
/// and columns `left..left+crop_w` are resized to the output, which is then
/// shifted by `shift` (rows, columns) and mirrored when `mirror`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropRecord {
    pub offset: usize,
    pub height: usize,
    pub width: usize,
    pub top: usize,
    pub left: usize,
    pub crop_h: usize,
    pub crop_w: usize,
    pub shift: (isize, isize),
    pub mirror: bool,
}

/// The kernel's table in one buffer to upload: B records of 48 bytes
/// (offset as i64, then h, w, top, left, ch, cw, dy, dx, mirror and one
/// unused i32), then C means and C inverse deviations (f32).
#[derive(Debug, Clone, PartialEq)]
pub struct CropTable {
    pub bytes: Vec<u8>,
    b: usize,
    c: usize,
    size: usize,
}

const RECORD: usize = 48;

impl CropTable {
    /// The table of `crops` for `c`-channel images resized to `size`; the
    /// geometry must fit the kernel's ints (the engine checked it against
    /// the pixels).
    pub fn new(
        crops: &[CropRecord],
        c: usize,
        size: usize,
        mean: &[f32],
        inv_std: &[f32],
    ) -> Result<CropTable> {
        if mean.len() != c || inv_std.len() != c {
            return Err(Error::Shape(format!(
                "{} means and {} deviations for {c} channels",
                mean.len(),
                inv_std.len()
            )));
        }
        to_i32("size", size)?;
        to_i32("C", c)?;
        to_i32("B", crops.len())?;
        let mut bytes = Vec::with_capacity(RECORD * crops.len() + 8 * c);
        for k in crops {
            let offset = i64::try_from(k.offset)
                .map_err(|_| Error::Shape(format!("pixel offset {} exceeds i64", k.offset)))?;
            bytes.extend_from_slice(&offset.to_le_bytes());
            let shift = |v: isize| {
                i32::try_from(v).map_err(|_| Error::Shape(format!("shift {v} exceeds i32")))
            };
            let ints = [
                to_i32("height", k.height)?,
                to_i32("width", k.width)?,
                to_i32("top", k.top)?,
                to_i32("left", k.left)?,
                to_i32("crop height", k.crop_h)?,
                to_i32("crop width", k.crop_w)?,
                shift(k.shift.0)?,
                shift(k.shift.1)?,
                k.mirror as i32,
                0,
            ];
            for v in ints {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
        }
        for v in mean.iter().chain(inv_std) {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        Ok(CropTable {
            bytes,
            b: crops.len(),
            c,
            size,
        })
    }
}

/// augment.cu's `Augment`, passed by value.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct AugmentArg {
    b: i32,
    c: i32,
    size: i32,
    inv255: f32,
}

// SAFETY: plain old data with the same C layout as augment.cu's struct.
unsafe impl cudarc::driver::DeviceRepr for AugmentArg {}

impl KernelLibrary {
    /// out [B, size, size, C] (dense NHWC, `dtype`) = the crops of table `t`
    /// read from `pixels`, `inv255` being the host's f32 1/255.
    ///
    /// # Safety
    /// `table` points to `t.bytes` uploaded; every record's image lies
    /// inside `pixels` and its region inside the image; out holds
    /// B*size*size*C elements of `dtype`.
    pub unsafe fn crop_resize(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        t: &CropTable,
        table: DevPtr,
        inv255: f32,
        pixels: DevPtr,
        out: DevPtr,
    ) -> Result<()> {
        let a = AugmentArg {
            b: to_i32("B", t.b)?,
            c: to_i32("C", t.c)?,
            size: to_i32("size", t.size)?,
            inv255,
        };
        let Some(shape) = launch::elementwise(t.b * t.size * t.size, 1, &self.gpu()) else {
            return Ok(());
        };
        let name = format!("crop_resize_{}", dtype.suffix());
        let f = self.function(&name)?;
        let mean = table + (RECORD * t.b) as u64;
        let inv_std = mean + (4 * t.c) as u64;
        let mut b = stream.launch_builder(&f);
        b.arg(&pixels).arg(&table).arg(&mean).arg(&inv_std).arg(&out).arg(&a);
        b.launch(config(shape)).map_err(driver(&name))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lays_out_records_then_statistics() {
        let k = CropRecord {
            offset: 5_000_000_000,
            height: 7,
            width: 9,
            top: 1,
            left: 2,
            crop_h: 3,
            crop_w: 4,
            shift: (-2, 3),
            mirror: true,
        };
        let t = CropTable::new(&[k, k], 2, 5, &[0.5, 0.25], &[2.0, 4.0]).unwrap();
        assert_eq!(t.bytes.len(), 2 * 48 + 16);
        assert_eq!(&t.bytes[0..8], &5_000_000_000i64.to_le_bytes());
        let int = |o: usize| i32::from_le_bytes(t.bytes[o..o + 4].try_into().unwrap());
        let ints: Vec<i32> = (0..10).map(|i| int(8 + 4 * i)).collect();
        assert_eq!(ints, [7, 9, 1, 2, 3, 4, -2, 3, 1, 0]);
        assert_eq!(&t.bytes[96..100], &0.5f32.to_le_bytes());
        assert_eq!(&t.bytes[108..112], &4.0f32.to_le_bytes());
        assert!(CropTable::new(&[k], 3, 5, &[0.5, 0.25], &[2.0, 4.0]).is_err());
        let huge = CropRecord {
            shift: (isize::MAX, 0),
            ..k
        };
        assert!(CropTable::new(&[huge], 2, 5, &[0.5, 0.25], &[2.0, 4.0]).is_err());
    }
}
