//! Sums over dims on the GPU (reduce.cu).
//!
//! The input is read in its physical order: the dims are listed outermost
//! first, and when the reduced ones form one run the sum is a single
//! [outer, R, inner] -> [outer, inner] pass (sum_cols, or sum_rows when
//! inner = 1). Reduced dims in several runs (e.g. N and HW of NHWC) are
//! first gathered innermost by one strided copy. A sum over every element
//! takes the two-launch sum_partial/sum_finalize path. f32 accumulation,
//! one rounding into the dtype, as the CPU backend.

use super::{keep_shape, ReduceOps};
use crate::backend::Cuda;
use crate::cuda::launch::cast;
use crate::cuda::launch::{dense, kdtype, kerr, traced_sync};
use crate::cuda::tensor::{alloc, copy_to_strides, gpu_of, ptr, to_default_layout};
use crate::layout::Layout;
use crate::{DType, Result, Tensor};

/// How a sum over `dims` reads a dense input.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SumPlan {
    outer: usize,
    r: usize,
    inner: usize,
    /// Strides to copy the input into first (reduced dims innermost), when
    /// the reduced dims are not one physical run.
    regroup: Option<Vec<usize>>,
    /// Strides of the result for the keep-shape (reduced dims size 1): the
    /// kept dims in the order they are read.
    keep_strides: Vec<usize>,
}

/// The plan for summing a dense tensor of `shape`/`strides` over `dims`
/// (sorted, deduplicated, in range).
fn plan_sum(shape: &[usize], strides: &[usize], dims: &[usize]) -> SumPlan {
    let rank = shape.len();
    let red = |d: usize| dims.contains(&d);
    // size-1 dims hold no data: leave them out of the physical order
    let physical = |st: &[usize]| {
        let mut o: Vec<usize> = (0..rank).filter(|&d| shape[d] != 1).collect();
        o.sort_by(|&a, &b| st[b].cmp(&st[a]));
        o
    };
    let mut order = physical(strides);
    let runs = (0..order.len())
        .filter(|&i| red(order[i]) && (i == 0 || !red(order[i - 1])))
        .count();
    let regroup = (runs > 1).then(|| {
        let mut w = vec![1usize; rank];
        let mut acc = 1;
        for pass_reduced in [true, false] {
            for &d in order.iter().rev().filter(|&&d| red(d) == pass_reduced) {
                w[d] = acc;
                acc *= shape[d];
            }
        }
        w
    });
    if let Some(w) = &regroup {
        order = physical(w);
    }
    let first = order.iter().position(|&d| red(d)).unwrap_or(order.len());
    let last = order
        .iter()
        .rposition(|&d| red(d))
        .map_or(order.len(), |i| i + 1);
    let prod = |ds: &[usize]| ds.iter().map(|&d| shape[d]).product::<usize>();
    let mut keep_strides = vec![1usize; rank];
    let mut acc = 1;
    for &d in order.iter().rev().filter(|&&d| !red(d)) {
        keep_strides[d] = acc;
        acc *= shape[d];
    }
    SumPlan {
        outer: prod(&order[..first]),
        r: prod(&order[first..last]),
        inner: prod(&order[last..]),
        regroup,
        keep_strides,
    }
}

/// The kernel path a plan takes (for the trace).
fn kernel_name(p: &SumPlan) -> &'static str {
    if p.outer == 1 && p.inner == 1 {
        "sum_partial+sum_finalize"
    } else if p.inner == 1 {
        "sum_rows"
    } else {
        "sum_cols"
    }
}

impl ReduceOps for Cuda {
    fn sum(&self, x: &Tensor, d: &[usize], keepdim: bool) -> Result<Tensor> {
        let xd = dense(x)?;
        let plan = plan_sum(xd.dims(), xd.strides(), d);
        crate::trace::kernel(kernel_name(&plan));
        let g = gpu_of(x)?;
        let dtype = x.dtype();
        let dt = kdtype("sum", dtype)?;
        let keep_shape = keep_shape(x.dims(), d);
        let src = match &plan.regroup {
            Some(w) => copy_to_strides(&xd, w)?,
            None => xd.clone(),
        };
        let n_out = plan.outer * plan.inner;
        let kept = if plan.outer == 1 && plan.inner == 1 {
            let part = alloc(
                g,
                DType::F32,
                kernels::families::reduce::SUM_MAX_PARTIALS as usize,
            )?;
            let total = alloc(g, DType::F32, 1)?;
            g.bind()?;
            // SAFETY: src is dense with numel elements; part holds
            // SUM_MAX_PARTIALS floats, total one.
            unsafe {
                g.kernels.sum_all(
                    &g.stream,
                    dt,
                    ptr(&src)?,
                    src.numel(),
                    part.ptr(),
                    total.ptr(),
                )
            }
            .map_err(kerr("sum"))?;
            let t = Tensor::from_device_parts(total, layout(&keep_shape, &plan.keep_strides));
            cast(&t, dtype)?
        } else {
            let s = alloc(g, dtype, n_out)?;
            g.bind()?;
            // SAFETY: src is dense [outer, r, inner] in its physical order;
            // s holds outer * inner elements.
            unsafe {
                g.kernels.sum_axis(
                    &g.stream,
                    dt,
                    ptr(&src)?,
                    s.ptr(),
                    plan.outer,
                    plan.r,
                    plan.inner,
                )
            }
            .map_err(kerr("sum"))?;
            Tensor::from_device_parts(s, layout(&keep_shape, &plan.keep_strides))
        };
        let out = if keepdim {
            kept
        } else {
            let keep: Vec<usize> = (0..x.rank()).filter(|i| !d.contains(i)).collect();
            let l = Layout {
                shape: keep.iter().map(|&i| x.dims()[i]).collect(),
                strides: keep.iter().map(|&i| plan.keep_strides[i]).collect(),
                offset: 0,
            };
            to_default_layout(&kept.view(l))?
        };
        traced_sync(g)?;
        Ok(out)
    }

    fn sum_backward(&self, dy: &Tensor, keep: &[usize], input: &[usize]) -> Result<Tensor> {
        to_default_layout(&dy.reshape(keep)?.expand(input)?)
    }
}

fn layout(shape: &[usize], strides: &[usize]) -> Layout {
    Layout {
        shape: shape.to_vec(),
        strides: strides.to_vec(),
        offset: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bias_gradient_sums_rows_of_a_matrix() {
        // [16, 64] over dim 0: one run, 64 columns each summing 16 rows
        let p = plan_sum(&[16, 64], &[64, 1], &[0]);
        assert_eq!((p.outer, p.r, p.inner), (1, 16, 64));
        assert_eq!(p.regroup, None);
        assert_eq!(p.keep_strides, vec![1, 1]);
        // over dim 1: sum_rows
        let p = plan_sum(&[16, 64], &[64, 1], &[1]);
        assert_eq!((p.outer, p.r, p.inner), (16, 64, 1));
        assert_eq!(p.keep_strides, vec![1, 1]);
    }

    #[test]
    fn everything_is_one_run() {
        let p = plan_sum(&[2, 3, 4, 5], &[60, 1, 15, 3], &[0, 1, 2, 3]);
        assert_eq!((p.outer, p.r, p.inner), (1, 120, 1));
        assert_eq!(p.regroup, None);
    }

    #[test]
    fn nhwc_spatial_sum_is_one_run_and_keeps_channels_last() {
        // NCHW logical, NHWC physical: H, W adjacent between N and C
        let p = plan_sum(&[2, 8, 4, 5], &[160, 1, 40, 8], &[2, 3]);
        assert_eq!((p.outer, p.r, p.inner), (2, 20, 8));
        assert_eq!(p.regroup, None);
        // result [2, 8, 1, 1] as [N, C]: C innermost
        assert_eq!(p.keep_strides[1], 1);
        assert_eq!(p.keep_strides[0], 8);
    }

    #[test]
    fn per_channel_sum_of_nhwc_regroups_n_and_hw() {
        // sum over N, H, W of NHWC: N and HW are separated by nothing but
        // C is innermost -> one run (N,H,W) then C: no regroup needed
        let p = plan_sum(&[2, 8, 4, 5], &[160, 1, 40, 8], &[0, 2, 3]);
        assert_eq!((p.outer, p.r, p.inner), (1, 40, 8));
        assert_eq!(p.regroup, None);
        // sum over N and C of NHWC: two runs (N) (C) around HW
        let p = plan_sum(&[2, 8, 4, 5], &[160, 1, 40, 8], &[0, 1]);
        let w = p.regroup.clone().expect("two runs need a regroup");
        // kept H, W outermost (H before W), reduced N then C innermost
        assert_eq!(w, vec![8, 1, 80, 16]);
        assert_eq!((p.outer, p.r, p.inner), (20, 16, 1));
        assert_eq!(p.keep_strides[2], 5);
        assert_eq!(p.keep_strides[3], 1);
    }

    #[test]
    fn size_one_dims_are_ignored() {
        let p = plan_sum(&[16, 1, 64], &[64, 7, 1], &[0, 1]);
        assert_eq!((p.outer, p.r, p.inner), (1, 16, 64));
        let p = plan_sum(&[16, 64], &[64, 1], &[]);
        assert_eq!((p.outer, p.r, p.inner), (1024, 1, 1));
    }
}
