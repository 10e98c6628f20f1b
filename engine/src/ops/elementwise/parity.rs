//! Elementwise GPU parity cases: add and ReLU over NCHW, matrix and vector
//! shapes; scale, neg and sub (same shape), and the bias-style broadcast
//! of add and sub.

use crate::parity::{autograd, dims, Case, Input, DTYPES};
use crate::Rng;

pub fn cases(rng: &mut Rng, out: &mut Vec<Case>) {
    let shapes: [&[usize]; 5] = [
        &[2, 3, 5, 7],
        &[4, 64, 14, 14],
        &[7, 13],
        &[1000],
        &[2, 13, 9, 7],
    ];
    // (full shape, trailing operand)
    let bias: [(&[usize], &[usize]); 2] = [(&[7, 13], &[13]), (&[3, 4, 5], &[1, 5])];
    for dtype in DTYPES {
        for shape in shapes {
            let two = || vec![Input::randn("a", shape, 1.0), Input::randn("b", shape, 1.0)];
            out.push(autograd(
                "add",
                dtype,
                dims(shape),
                rng.next_u64(),
                two(),
                |t| Ok(vec![("y".into(), t[0].add(&t[1])?)]),
            ));
            out.push(autograd(
                "relu",
                dtype,
                dims(shape),
                rng.next_u64(),
                vec![Input::randn("x", shape, 1.0)],
                |t| Ok(vec![("y".into(), t[0].relu()?)]),
            ));
            out.push(autograd(
                "sub",
                dtype,
                dims(shape),
                rng.next_u64(),
                two(),
                |t| Ok(vec![("y".into(), t[0].sub(&t[1])?)]),
            ));
            out.push(autograd(
                "scale",
                dtype,
                format!("{} x0.37", dims(shape)),
                rng.next_u64(),
                vec![Input::randn("x", shape, 1.0)],
                |t| Ok(vec![("y".into(), t[0].scale(0.37)?)]),
            ));
            out.push(autograd(
                "neg",
                dtype,
                dims(shape),
                rng.next_u64(),
                vec![Input::randn("x", shape, 1.0)],
                |t| Ok(vec![("y".into(), t[0].neg()?)]),
            ));
        }
        for (full, small) in bias {
            let inputs = || vec![Input::randn("a", full, 1.0), Input::randn("b", small, 1.0)];
            let label = format!("{}+{}", dims(full), dims(small));
            out.push(autograd(
                "add",
                dtype,
                label.clone(),
                rng.next_u64(),
                inputs(),
                |t| Ok(vec![("y".into(), t[0].add(&t[1])?)]),
            ));
            // the small operand first: a - b with a broadcast
            out.push(autograd(
                "sub",
                dtype,
                label,
                rng.next_u64(),
                inputs(),
                |t| Ok(vec![("y".into(), t[1].sub(&t[0])?)]),
            ));
        }
    }
}
