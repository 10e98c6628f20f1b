//! Casts' GPU parity cases: every pair of float storage dtypes the GPU
//! converts on the device, on 4-D (channels-last), long and small shapes.

use crate::parity::{autograd, dims, Case, Input};
use crate::{DType, Rng};

pub fn cases(rng: &mut Rng, out: &mut Vec<Case>) {
    let pairs = [
        (DType::F32, DType::BF16),
        (DType::BF16, DType::F32),
        (DType::F32, DType::F16),
        (DType::F16, DType::F32),
        (DType::BF16, DType::F16),
        (DType::F16, DType::BF16),
    ];
    for (from, to) in pairs {
        for shape in [&[2usize, 13, 9, 7][..], &[1000][..], &[3, 7][..]] {
            let mut c = autograd(
                "cast",
                from,
                format!("{} ->{}", dims(shape), to.name()),
                rng.next_u64(),
                vec![Input::randn("x", shape, 3.0)],
                move |t| Ok(vec![("y".into(), t[0].to_dtype(to)?)]),
            );
            // both sides round to nearest even: the results must agree to
            // f32 precision
            c.threshold = Some(1e-5);
            out.push(c);
        }
    }
}
