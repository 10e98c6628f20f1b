//! Matrix products' GPU parity cases: odd and ResNet-head sizes, a batched
//! product, a 1x1 result; linear with and without a bias, one of one row.

use crate::parity::{autograd, dims, Case, Input, DTYPES};
use crate::Rng;

/// A product's case: a's and b's shapes, and the means they are drawn around.
type Product = (&'static [usize], &'static [usize], (f64, f64));

pub fn cases(rng: &mut Rng, out: &mut Vec<Case>) {
    // (a, b, means of a and b). The 1x1 result is one dot product, judged
    // against itself: drawn around 0 it can cancel to near 0, where the two
    // sides' summation orders alone exceed the bound (as for sum's
    // whole-tensor cases); around (1, 0.2) it is about 6.6 (sd 1.8).
    let mm: [Product; 5] = [
        (&[7, 13], &[13, 5], (0.0, 0.0)),
        (&[64, 72], &[72, 40], (0.0, 0.0)),
        (&[256, 2048], &[2048, 2048], (0.0, 0.0)),
        (&[3, 17, 9], &[3, 9, 11], (0.0, 0.0)),
        (&[1, 33], &[33, 1], (1.0, 0.2)),
    ];
    // (rows, in, out, bias). One row, but 4 outputs: the CPU rounds the
    // product before adding the bias and cuBLASLt's epilogue after, so a
    // single output that x.w and b nearly cancel differs by half an ulp of
    // x.w, which relative to the output alone can be any size (1.4e-2 in
    // bf16 for one seed); the 1x1 result is matmul's [1,33]x[33,1].
    let lin: [(usize, usize, usize, bool); 5] = [
        (5, 7, 3, true),
        (64, 100, 36, false),
        (16, 2048, 2048, true),
        (32, 2048, 1000, true),
        (1, 9, 4, true),
    ];
    for dtype in DTYPES {
        for (a, b, (ma, mb)) in mm {
            let k = a[a.len() - 1] as f64;
            out.push(autograd(
                "matmul",
                dtype,
                format!("{}x{}", dims(a), dims(b)),
                rng.next_u64(),
                vec![
                    Input::randn("a", a, 1.0).around(ma),
                    Input::randn("b", b, 1.0 / k.sqrt()).around(mb),
                ],
                |t| Ok(vec![("y".into(), t[0].matmul(&t[1])?)]),
            ));
        }
        for (n, i, o, bias) in lin {
            let mut inputs = vec![
                Input::randn("x", &[n, i], 1.0),
                Input::randn("w", &[o, i], 1.0 / (i as f64).sqrt()),
            ];
            if bias {
                inputs.push(Input::randn("b", &[o], 1.0));
            }
            out.push(autograd(
                "linear",
                dtype,
                format!(
                    "x{} w{}{}",
                    dims(&[n, i]),
                    dims(&[o, i]),
                    if bias { " +b" } else { "" }
                ),
                rng.next_u64(),
                inputs,
                |t| Ok(vec![("y".into(), t[0].linear(&t[1], t.get(2))?)]),
            ));
        }
    }
}
