//! Matrix products' GPU parity cases: odd and ResNet-head sizes, a batched
//! product, a 1x1 result; linear with and without a bias.

use crate::parity::{autograd, dims, Case, Input, DTYPES};
use crate::Rng;

pub fn cases(rng: &mut Rng, out: &mut Vec<Case>) {
    let mm: [(&[usize], &[usize]); 5] = [
        (&[7, 13], &[13, 5]),
        (&[64, 72], &[72, 40]),
        (&[256, 2048], &[2048, 2048]),
        (&[3, 17, 9], &[3, 9, 11]),
        (&[1, 33], &[33, 1]),
    ];
    // (rows, in, out, bias)
    let lin: [(usize, usize, usize, bool); 5] = [
        (5, 7, 3, true),
        (64, 100, 36, false),
        (16, 2048, 2048, true),
        (32, 2048, 1000, true),
        (1, 9, 1, true),
    ];
    for dtype in DTYPES {
        for (a, b) in mm {
            let k = a[a.len() - 1] as f64;
            out.push(autograd(
                "matmul",
                dtype,
                format!("{}x{}", dims(a), dims(b)),
                rng.next_u64(),
                vec![
                    Input::randn("a", a, 1.0),
                    Input::randn("b", b, 1.0 / k.sqrt()),
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
