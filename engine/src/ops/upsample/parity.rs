//! Resizing's GPU parity cases, forward and backward: the FPN's nearest 2x
//! by scale factor, nearest to sizes whose f32 ratio rounding matters
//! (14 -> 23 picks PyTorch's rows, see `cpu::nearest_idx`) and a
//! downsample, bilinear up and down with align_corners false and true, and
//! an output of one row (align_corners samples row 0).
//!
//! Thresholds: the defaults. The GPU samples exactly the CPU's pixels
//! (the taps come from the CPU's own functions) and blends in f32 like the
//! CPU, so f32 differs only by fused multiply-adds (~1e-7). bf16: the
//! forward rounds one f32 blend (nearest: copies the value exactly); the
//! backward sums the same products in another order (per input pixel
//! instead of per output) in f32 and rounds once, so the gap is one bf16
//! step at most, under 1e-2.

use super::Mode;
use crate::parity::{autograd, dims, Case, Input, DTYPES};
use crate::Rng;

pub fn cases(rng: &mut Rng, out: &mut Vec<Case>) {
    // (input, output size, mode)
    let resizes: [(&'static [usize], [usize; 2], Mode); 9] = [
        (
            &[2, 8, 5, 7],
            [10, 14],
            Mode::Nearest {
                scale_factor: Some(2.0),
            },
        ),
        (
            &[1, 3, 14, 9],
            [23, 13],
            Mode::Nearest { scale_factor: None },
        ),
        (&[2, 3, 9, 12], [5, 7], Mode::Nearest { scale_factor: None }),
        (
            &[2, 3, 5, 7],
            [9, 12],
            Mode::Bilinear {
                align_corners: false,
            },
        ),
        (
            &[2, 3, 5, 7],
            [9, 12],
            Mode::Bilinear {
                align_corners: true,
            },
        ),
        (
            &[2, 3, 9, 12],
            [5, 7],
            Mode::Bilinear {
                align_corners: false,
            },
        ),
        (
            &[2, 3, 9, 12],
            [5, 7],
            Mode::Bilinear {
                align_corners: true,
            },
        ),
        (
            &[1, 16, 7, 7],
            [28, 28],
            Mode::Bilinear {
                align_corners: false,
            },
        ),
        (
            &[2, 3, 4, 6],
            [1, 6],
            Mode::Bilinear {
                align_corners: true,
            },
        ),
    ];
    for dtype in DTYPES {
        for (shape, size, mode) in resizes {
            let label = match mode {
                Mode::Nearest { scale_factor } => format!(
                    "{}->{}{}",
                    dims(shape),
                    dims(&size),
                    scale_factor.map_or(String::new(), |s| format!(" x{s}"))
                ),
                Mode::Bilinear { align_corners } => {
                    format!("{}->{} ac={align_corners}", dims(shape), dims(&size))
                }
            };
            out.push(autograd(
                mode.op(),
                dtype,
                label,
                rng.next_u64(),
                vec![Input::randn("x", shape, 1.0)],
                move |t| {
                    let y = match mode {
                        Mode::Nearest {
                            scale_factor: Some(s),
                        } => t[0].upsample_nearest2d_scale(s as usize)?,
                        Mode::Nearest { scale_factor: None } => t[0].upsample_nearest2d(size)?,
                        Mode::Bilinear { align_corners } => {
                            t[0].upsample_bilinear2d(size, align_corners)?
                        }
                    };
                    Ok(vec![("y".into(), y)])
                },
            ));
        }
    }
}
