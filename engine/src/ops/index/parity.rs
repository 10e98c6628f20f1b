//! Index's GPU parity cases: index_select along inner, middle and outer
//! dims of 2-D to 4-D inputs (a 4-D GPU input is channels-last: the op
//! copies it row-major) with repeated indices (the backward's atomics add
//! several slices into one row), an i64 input, and sort / top-k with tied
//! and NaN values, ascending and descending, up to the RPN's size (top
//! 2000 of 200k).

use crate::parity::{autograd, dims, Case, Input, DTYPES};
use crate::{DType, Device, Rng, Tensor};

/// `m` indices into a dim of `size`, every third one repeating an earlier one.
fn indices(rng: &mut Rng, size: usize, m: usize) -> Vec<i64> {
    let mut v: Vec<i64> = Vec::with_capacity(m);
    for j in 0..m {
        let i = if j % 3 == 2 {
            v[rng.below(j)]
        } else {
            rng.below(size) as i64
        };
        v.push(i);
    }
    v
}

pub fn cases(rng: &mut Rng, out: &mut Vec<Case>) {
    // (input, dim, indices)
    let select: [(&'static [usize], usize, usize); 4] = [
        (&[37, 5], 0, 50),
        (&[6, 9, 7], 1, 12),
        (&[2, 3, 4, 5], 1, 4),
        (&[2, 3, 4, 5], 3, 7),
    ];
    // (rows x n, k, descending, value quantum: > 0 makes ties)
    // k = 1 runs the one-pass top 1: a classifier's logits with ties (and
    // a NaN in row 0), short rows, rows longer than a block.
    let sorts: [(&'static [usize], usize, bool, f64); 8] = [
        (&[3, 1000], 100, true, 0.05),
        (&[4, 37], 37, false, 0.0),
        (&[2, 3, 4, 5], 5, true, 0.5),
        (&[1, 4097], 1000, true, 0.0),
        (&[2, 200_000], 2000, true, 0.001),
        (&[256, 1000], 1, true, 0.5),
        (&[7, 3, 5], 1, true, 0.0),
        (&[3, 70_001], 1, true, 0.01),
    ];
    for dtype in DTYPES {
        for (shape, dim, m) in select {
            let ix = indices(rng, shape[dim], m);
            out.push(autograd(
                "index_select",
                dtype,
                format!("{} dim{dim} m{m}", dims(shape)),
                rng.next_u64(),
                vec![Input::randn("x", shape, 1.0)],
                move |t| {
                    let index = Tensor::from_vec(ix.clone(), &[m])?.to_device(t[0].device())?;
                    Ok(vec![("y".into(), t[0].index_select(dim, &index)?)])
                },
            ));
        }
        for (shape, k, desc, step) in sorts {
            let seed = rng.next_u64();
            let run = move |dev: Device| {
                let mut r = Rng::new(seed);
                let n: usize = shape.iter().product();
                let v: Vec<f64> = (0..n)
                    .map(|i| {
                        let u = r.normal();
                        match i % 997 {
                            5 => f64::NAN,
                            _ if step > 0.0 => (u / step).round() * step,
                            _ => u,
                        }
                    })
                    .collect();
                let x = Tensor::from_vec(v, shape)?
                    .to_dtype(dtype)?
                    .to_device(dev)?;
                let (values, idx) = if k == shape[shape.len() - 1] {
                    x.sort(desc)?
                } else {
                    x.topk(k)?
                };
                // the runner fails any NaN: compare NaN values as f64::MAX
                // (their positions are in the indices)
                let v: Vec<f64> = values
                    .to_device(Device::Cpu)?
                    .to_vec_f64()?
                    .into_iter()
                    .map(|v| if v.is_nan() { f64::MAX } else { v })
                    .collect();
                let values = Tensor::from_vec(v, values.dims())?;
                Ok(vec![("values".into(), values), ("indices".into(), idx)])
            };
            out.push(Case {
                op: "topk",
                dtype,
                label: format!("{} k{k} desc{} q{step}", dims(shape), desc as u8),
                // a unique order: values and indices must be identical
                threshold: Some(0.0),
                run: Box::new(run),
            });
        }
    }
    // every dtype moves as raw elements: an i64 input
    let ix = indices(rng, 40, 25);
    let run = move |dev: Device| {
        let x = Tensor::from_vec((0..120).map(|v| v * 1_000_000_007i64).collect(), &[40, 3])?;
        let index = Tensor::from_vec(ix.clone(), &[25])?;
        Ok(vec![(
            "y".into(),
            x.to_device(dev)?.index_select(0, &index.to_device(dev)?)?,
        )])
    };
    out.push(Case {
        op: "index_select",
        dtype: DType::I64,
        label: "[40,3] i64 dim0 m25".into(),
        threshold: Some(0.0),
        run: Box::new(run),
    });
}
