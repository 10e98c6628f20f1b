//! The shape ops' GPU parity cases: cat along every dim of NCHW tensors
//! (channels-last on the GPU) and of matrices, with an input that is a
//! transposed view, stack, narrow's backward along each dim, and cat of
//! i64 tensors. Pure copies: the GPU must match the CPU exactly, in every
//! dtype (the default thresholds are never used up; bf16 and f16 values
//! are moved as raw bits).

use crate::parity::{autograd_with, dims, Case, DTYPES};
use crate::{DType, Rng, Tensor};

pub fn cases(rng: &mut Rng, out: &mut Vec<Case>) {
    // (the inputs' shapes, dim)
    let cats: [(&'static [&'static [usize]], usize); 6] = [
        (&[&[2, 3, 4, 5], &[1, 3, 4, 5]], 0),
        (&[&[2, 3, 4, 5], &[2, 8, 4, 5], &[2, 1, 4, 5]], 1),
        (&[&[2, 3, 4, 5], &[2, 3, 2, 5]], 2),
        (&[&[2, 3, 4, 5], &[2, 3, 4, 7]], 3),
        (&[&[7, 13], &[7, 5]], 1),
        (&[&[1000], &[24]], 0),
    ];
    for dtype in DTYPES {
        for (shapes, dim) in cats {
            let label = format!(
                "{} dim {dim}",
                shapes.iter().map(|s| dims(s)).collect::<Vec<_>>().join("+")
            );
            let draw = move |rng: &mut Rng| {
                let names = ["a", "b", "c"];
                shapes
                    .iter()
                    .zip(names)
                    .map(|(s, n)| (n, Tensor::randn(s, 0.0, 1.0, dtype, rng), true))
                    .collect()
            };
            out.push(autograd_with(
                "cat",
                dtype,
                label,
                rng.next_u64(),
                draw,
                move |t| Ok(vec![("y".into(), Tensor::cat(t, dim)?)]),
            ));
        }
        // a transposed view as an input: [5, 7] seen as [7, 5]
        let draw = move |rng: &mut Rng| {
            vec![
                ("a", Tensor::randn(&[7, 13], 0.0, 1.0, dtype, rng), true),
                ("b", Tensor::randn(&[5, 7], 0.0, 1.0, dtype, rng), true),
            ]
        };
        out.push(autograd_with(
            "cat",
            dtype,
            "[7,13]+[5,7]ᵀ dim 1".into(),
            rng.next_u64(),
            draw,
            |t| {
                Ok(vec![(
                    "y".into(),
                    Tensor::cat(&[t[0].clone(), t[1].transpose(0, 1)?], 1)?,
                )])
            },
        ));
        // stack along a new middle dim (cat of unsqueezed views)
        let draw = move |rng: &mut Rng| {
            ["a", "b", "c"]
                .into_iter()
                .map(|n| (n, Tensor::randn(&[4, 6, 5], 0.0, 1.0, dtype, rng), true))
                .collect()
        };
        out.push(autograd_with(
            "stack",
            dtype,
            "3x[4,6,5] dim 1".into(),
            rng.next_u64(),
            draw,
            |t| Ok(vec![("y".into(), Tensor::stack(t, 1)?)]),
        ));
        // narrow: its backward writes the gradient into a zeroed tensor
        let narrows: [(&'static [usize], usize, usize, usize); 5] = [
            (&[2, 6, 5, 7], 0, 1, 1),
            (&[2, 6, 5, 7], 1, 2, 3),
            (&[2, 6, 5, 7], 2, 1, 3),
            (&[2, 6, 5, 7], 3, 0, 4),
            (&[9, 13], 1, 4, 6),
        ];
        for (shape, dim, start, len) in narrows {
            let draw =
                move |rng: &mut Rng| vec![("x", Tensor::randn(shape, 0.0, 1.0, dtype, rng), true)];
            out.push(autograd_with(
                "narrow",
                dtype,
                format!("{} dim {dim} {start}..{}", dims(shape), start + len),
                rng.next_u64(),
                draw,
                move |t| Ok(vec![("y".into(), t[0].narrow(dim, start, len)?)]),
            ));
        }
    }
    // integer tensors are moved as raw 8-byte elements (no gradient)
    let draw = |rng: &mut Rng| {
        let ints = |n: usize, rng: &mut Rng| (0..n).map(|_| rng.below(1000) as i64).collect();
        vec![
            (
                "a",
                Tensor::from_vec(ints(12, rng), &[3, 4]).expect("[3,4]"),
                false,
            ),
            (
                "b",
                Tensor::from_vec(ints(8, rng), &[2, 4]).expect("[2,4]"),
                false,
            ),
        ]
    };
    out.push(autograd_with(
        "cat",
        DType::I64,
        "[3,4]+[2,4] dim 0".into(),
        rng.next_u64(),
        draw,
        |t| Ok(vec![("y".into(), Tensor::cat(t, 0)?)]),
    ));
}
