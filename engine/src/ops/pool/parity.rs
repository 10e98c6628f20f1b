//! Pooling's GPU parity cases: ResNet's stem pooling, odd sizes, windows
//! that overlap the padding, global, evenly dividing and uneven adaptive bins.

use crate::parity::{autograd, dims, Case, Input, DTYPES};
use crate::Rng;

pub fn cases(rng: &mut Rng, out: &mut Vec<Case>) {
    // (input, kernel, stride, padding)
    let max: [(&[usize], usize, usize, usize); 4] = [
        (&[2, 64, 56, 56], 3, 2, 1),
        (&[3, 5, 11, 9], 3, 2, 1),
        (&[2, 7, 8, 6], 2, 2, 0),
        (&[1, 13, 5, 5], 3, 1, 1),
    ];
    let adaptive: [(&[usize], [usize; 2]); 4] = [
        (&[2, 2048, 7, 7], [1, 1]),
        (&[3, 13, 5, 7], [1, 1]),
        (&[2, 5, 9, 9], [3, 3]),
        (&[2, 6, 7, 5], [2, 3]),
    ];
    for dtype in DTYPES {
        for (shape, k, s, p) in max {
            out.push(autograd(
                "max_pool2d",
                dtype,
                format!("{} k{k} s{s} p{p}", dims(shape)),
                rng.next_u64(),
                vec![Input::randn("x", shape, 1.0)],
                move |t| Ok(vec![("y".into(), t[0].max_pool2d([k, k], [s, s], [p, p])?)]),
            ));
            out.push(autograd(
                "avg_pool2d",
                dtype,
                format!("{} k{k} s{s} p{p} +pad", dims(shape)),
                rng.next_u64(),
                vec![Input::randn("x", shape, 1.0)],
                move |t| {
                    let y = t[0].avg_pool2d([k, k], [s, s], [p, p], true)?;
                    Ok(vec![("y".into(), y)])
                },
            ));
        }
        for (shape, o) in adaptive {
            out.push(autograd(
                "adaptive_avg_pool2d",
                dtype,
                format!("{} -> {o:?}", dims(shape)),
                rng.next_u64(),
                vec![Input::randn("x", shape, 1.0)],
                move |t| Ok(vec![("y".into(), t[0].adaptive_avg_pool2d(o)?)]),
            ));
        }
    }
}
