//! Elementwise GPU parity cases: add and ReLU over NCHW, matrix and vector
//! shapes; scale, neg, sub, mul, div, exp, log, sqrt and sigmoid (same
//! shape, with their backward passes); every kind of broadcast of add,
//! sub, mul and div (a trailing bias, a per-channel [C, 1, 1] operand of a
//! channels-last NCHW tensor, a column [N, 1], a scalar, both operands
//! stretched, and a transposed view).
//!
//! Thresholds: the defaults. f32 (1e-5): every kernel computes in f32 like
//! the CPU; exp/log/sigmoid use CUDA's accurate expf/logf (within 2 ulp),
//! far below 1e-5 of the largest output. bf16 (1e-2 of the largest
//! output): the GPU rounds its f32 result to bf16 once, as the CPU does,
//! so an output differs by at most one bf16 rounding (2^-8 relative) where
//! the two f32 results straddle a rounding boundary; the backward passes
//! chain up to three such ops (sigmoid: y * (1 - y) * g), each rounding to
//! bf16 on both sides alike, well under 1e-2.

use crate::parity::{autograd, autograd_up, autograd_with, dims, Case, Input, DTYPES};
use crate::{DType, Rng, Tensor};

/// A case of `op` on one input drawn by `x` (positive values for log and
/// sqrt) with its backward.
fn unary_case(
    op: &'static str,
    dtype: DType,
    shape: &'static [usize],
    seed: u64,
    positive: bool,
    f: fn(&Tensor) -> crate::Result<Tensor>,
) -> Case {
    let draw = move |rng: &mut Rng| {
        let x = Tensor::randn(shape, 0.0, 1.0, dtype, rng);
        // exp of a normal: positive, well away from 0 and of moderate size
        let x = if positive {
            x.exp().expect("host exp")
        } else {
            x
        };
        vec![("x", x, true)]
    };
    autograd_with(op, dtype, dims(shape), seed, draw, move |t| {
        Ok(vec![("y".into(), f(&t[0])?)])
    })
}

/// A case of `a (op) b` for shapes that broadcast; b is drawn positive
/// (exp of a normal) so a division stays well conditioned. `transpose_b`
/// hands the op b's transposed view (b drawn with its last two dims
/// swapped). a and the upstream gradient have mean 1: a broadcast b's
/// gradient sums up (add, sub) or up * a (mul, div) over the stretched
/// elements, about n terms of mean 1 instead of a cancellation near 0
/// (see [`autograd_up`]).
fn binary_case(
    op: &'static str,
    dtype: DType,
    (sa, sb): (&'static [usize], &'static [usize]),
    seed: u64,
    transpose_b: bool,
    f: fn(&Tensor, &Tensor) -> crate::Result<Tensor>,
) -> Case {
    let draw = move |rng: &mut Rng| {
        let a = Tensor::randn(sa, 1.0, 1.0, dtype, rng);
        let mut drawn = sb.to_vec();
        if transpose_b {
            let r = drawn.len();
            drawn.swap(r - 2, r - 1);
        }
        let b = Tensor::randn(&drawn, 0.0, 0.5, dtype, rng)
            .exp()
            .expect("host exp");
        vec![("a", a, true), ("b", b, true)]
    };
    let label = format!(
        "{}{}{}",
        dims(sa),
        if transpose_b { "·bᵀ" } else { "·" },
        dims(sb)
    );
    autograd_up(op, dtype, label, seed, draw, 1.0, move |t| {
        let b = if transpose_b {
            let r = t[1].rank();
            t[1].transpose(r - 2, r - 1)?
        } else {
            t[1].clone()
        };
        Ok(vec![("y".into(), f(&t[0], &b)?)])
    })
}

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
        let unary: [(&'static str, bool, fn(&Tensor) -> crate::Result<Tensor>); 4] = [
            ("exp", false, Tensor::exp),
            ("log", true, Tensor::log),
            ("sqrt", true, Tensor::sqrt),
            ("sigmoid", false, Tensor::sigmoid),
        ];
        let unary_shapes: [&'static [usize]; 3] = [&[2, 13, 9, 7], &[7, 13], &[1000]];
        for (op, positive, f) in unary {
            for shape in unary_shapes {
                out.push(unary_case(op, dtype, shape, rng.next_u64(), positive, f));
            }
        }
        let arith: [(&'static str, fn(&Tensor, &Tensor) -> crate::Result<Tensor>); 4] = [
            ("add", Tensor::add),
            ("sub", Tensor::sub),
            ("mul", Tensor::mul),
            ("div", Tensor::div),
        ];
        // (a, b, b transposed): same shape, per-channel over channels-last
        // NCHW, a column, a scalar, both stretched, a trailing row, a
        // transposed view against a dense matrix
        let broadcasts: [(&'static [usize], &'static [usize], bool); 8] = [
            (&[2, 13, 9, 7], &[2, 13, 9, 7], false),
            (&[2, 13, 9, 7], &[13, 1, 1], false),
            (&[2, 13, 9, 7], &[1, 13, 1, 1], false),
            (&[7, 13], &[7, 1], false),
            (&[3, 4, 5], &[], false),
            (&[4, 1, 6], &[5, 1], false),
            (&[2, 13, 9, 7], &[9, 7], false),
            (&[6, 7, 13], &[6, 7, 13], true),
        ];
        for (op, f) in arith {
            for (sa, sb, tb) in broadcasts {
                if op == "add" && sa == sb && !tb {
                    continue; // the same-shape add cases above
                }
                out.push(binary_case(op, dtype, (sa, sb), rng.next_u64(), tb, f));
            }
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
