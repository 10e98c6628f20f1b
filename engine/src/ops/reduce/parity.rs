//! Sum's GPU parity cases: whole tensors, one dim of a matrix, the
//! per-channel sum of NCHW (kept dims), and channels of NCHW.

use crate::parity::{autograd, dims, Case, Input, DTYPES};
use crate::Rng;

pub fn cases(rng: &mut Rng, out: &mut Vec<Case>) {
    // (shape, dims summed (empty: all), keepdim)
    let sums: [(&[usize], &[usize], bool); 5] = [
        (&[2, 13, 9, 7], &[], false),
        (&[5, 100], &[], false),
        (&[7, 13], &[1], false),
        (&[4, 13, 6, 6], &[0, 2, 3], true),
        (&[3, 5, 4, 6], &[1], false),
    ];
    for dtype in DTYPES {
        for (shape, d, keep) in sums {
            // a sum of n values rounds once at the end in a 16-bit dtype:
            // the same bound as any other 16-bit output
            out.push(autograd(
                "sum",
                dtype,
                format!(
                    "{} dims {d:?}{}",
                    dims(shape),
                    if keep { " keep" } else { "" }
                ),
                rng.next_u64(),
                // a whole sum of x drawn around 1: about n, not a value near
                // 0 that cancellation leaves, which one output's relative
                // error cannot judge (f32 [2,13,9,7] of x around 0 once
                // failed at 1.15e-5 against 1e-5, a summation-order
                // difference)
                vec![Input::randn("x", shape, 1.0).around(if d.is_empty() { 1.0 } else { 0.0 })],
                move |t| {
                    let y = if d.is_empty() {
                        t[0].sum_all()?
                    } else {
                        t[0].sum_dims(d, keep)?
                    };
                    Ok(vec![("y".into(), y)])
                },
            ));
        }
    }
}
