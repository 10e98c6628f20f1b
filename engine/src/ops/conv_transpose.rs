//! Transposed 2-D convolution (PyTorch's `F.conv_transpose2d`: NCHW, weight
//! [Cin, Cout/groups, kh, kw], zero padding cropped from the output).
//!
//! A transposed convolution is the adjoint of a convolution, so it runs on
//! conv2d's own machinery with the roles of the tensors swapped. Take the
//! "matching" conv2d whose input is the transposed conv's output
//! [N, Cout, Ho, Wo], whose output is the transposed conv's input
//! [N, Cin, H, W], and whose weight [Cin, Cout/groups, kh, kw] is the same
//! tensor (same stride, padding, dilation and groups). Then
//! - forward = that conv's input gradient (W^T x, then col2im);
//! - input gradient = that conv's forward applied to dY (im2col, then W dY);
//! - weight gradient = that conv's weight gradient with input dY and output
//!   gradient x.
//!
//! Everything is therefore as deterministic and as parallel as conv2d.

use super::conv::{conv_backward, conv_forward, Conv2dParams, Geom};
use super::{expect_rank, same_dtype};
use crate::autograd::record;
use crate::{dispatch_float, Error, Float, Result, Tensor};
use rayon::prelude::*;

/// The hyper-parameters of a transposed convolution, as PyTorch names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvTranspose2dParams {
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    /// Extra rows/columns added at the bottom/right of the output (each
    /// below the stride or the dilation of its axis).
    pub output_padding: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
}

impl Default for ConvTranspose2dParams {
    fn default() -> Self {
        ConvTranspose2dParams {
            stride: [1, 1],
            padding: [0, 0],
            output_padding: [0, 0],
            dilation: [1, 1],
            groups: 1,
        }
    }
}

/// `(size - 1)*s - 2p + d*(k - 1) + op + 1` along axis `a` (0: height,
/// 1: width), or an error when that is < 1.
fn transposed_out_size(
    op: &'static str,
    a: usize,
    size: usize,
    k: usize,
    p: &ConvTranspose2dParams,
) -> Result<usize> {
    let (s, pad, op_pad, d) = (
        p.stride[a],
        p.padding[a],
        p.output_padding[a],
        p.dilation[a],
    );
    let full = (size - 1) * s + d * (k - 1) + op_pad + 1;
    if full <= 2 * pad {
        return Err(Error::shape(
            op,
            format!(
                "{}: output size ({size} - 1)*{s} - 2*{pad} + {d}*({k} - 1) + {op_pad} + 1 \
                 = {} is not positive",
                ["height", "width"][a],
                full as i64 - 2 * pad as i64
            ),
        ));
    }
    Ok(full - 2 * pad)
}

/// Checks the arguments as PyTorch does and returns the geometry of the
/// matching conv2d (see the module docs): its input is this op's output.
fn geometry(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    p: ConvTranspose2dParams,
) -> Result<Geom> {
    const OP: &str = "conv_transpose2d";
    expect_rank(OP, "input [N, Cin, H, W]", x, 4)?;
    expect_rank(OP, "weight [Cin, Cout/groups, kh, kw]", weight, 4)?;
    let mut ts = vec![x, weight];
    ts.extend(bias);
    same_dtype(OP, &ts)?;
    let (&[n, cin, h, w], &[wcin, cout_g, kh, kw]) = (x.dims(), weight.dims()) else {
        unreachable!("ranks checked above")
    };
    if p.groups == 0 || p.stride.contains(&0) || p.dilation.contains(&0) {
        return Err(Error::arg(
            OP,
            format!("groups, stride and dilation must be >= 1, got {p:?}"),
        ));
    }
    for a in 0..2 {
        if p.output_padding[a] >= p.stride[a] && p.output_padding[a] >= p.dilation[a] {
            return Err(Error::arg(
                OP,
                format!(
                    "output_padding {:?} must be smaller than either the stride {:?} or the \
                     dilation {:?} (axis {a})",
                    p.output_padding, p.stride, p.dilation
                ),
            ));
        }
    }
    if !cin.is_multiple_of(p.groups) {
        return Err(Error::arg(
            OP,
            format!("groups = {} must divide the input channels {cin}", p.groups),
        ));
    }
    if wcin != cin || kh == 0 || kw == 0 || cout_g == 0 {
        return Err(Error::shape(
            OP,
            format!(
                "weight {:?} does not fit input {:?}: expected [Cin = {cin}, Cout/groups >= 1, \
                 kh >= 1, kw >= 1]",
                weight.dims(),
                x.dims()
            ),
        ));
    }
    let cout = cout_g * p.groups;
    if let Some(b) = bias {
        if b.dims() != [cout] {
            return Err(Error::shape(
                OP,
                format!(
                    "bias must have shape [{cout}] (Cout = weight dim 1 * groups), got {:?}",
                    b.dims()
                ),
            ));
        }
    }
    if h == 0 || w == 0 {
        return Err(Error::shape(
            OP,
            format!("input {:?} has an empty plane", x.dims()),
        ));
    }
    let oh = transposed_out_size(OP, 0, h, kh, &p)?;
    let ow = transposed_out_size(OP, 1, w, kw, &p)?;
    // The matching conv2d maps [oh, ow] back to exactly [h, w] windows (with
    // output_padding >= stride it could fit more; those extra output rows
    // and columns then only receive the bias, as in PyTorch).
    Ok(Geom {
        n,
        cin: cout,
        h: oh,
        w: ow,
        cout: cin,
        kh,
        kw,
        oh: h,
        ow: w,
        p: Conv2dParams {
            stride: p.stride,
            padding: p.padding,
            dilation: p.dilation,
            groups: p.groups,
        },
    })
}

/// Adds `bias[c]` to every element of channel `c` of the NC(HW) `y`.
fn add_bias<T: Float>(y: &mut [T], bias: &[T], hw: usize) {
    let c = bias.len();
    y.par_chunks_mut(hw.max(1))
        .enumerate()
        .with_min_len((4096 / hw.max(1)).max(1))
        .for_each(|(i, plane)| {
            let b = bias[i % c];
            plane.iter_mut().for_each(|v| *v += b);
        });
}

/// Sum of dY [N, C, hw] over the batch and the pixels per channel, images
/// in order.
fn bias_grad<T: Float>(dy: &[T], n: usize, c: usize, hw: usize) -> Vec<T> {
    (0..c)
        .into_par_iter()
        .map(|co| {
            (0..n)
                .map(|i| dy[(i * c + co) * hw..][..hw].iter().copied().sum::<T>())
                .sum()
        })
        .collect()
}

impl Tensor {
    /// Transposed 2-D convolution, exactly PyTorch's `F.conv_transpose2d`:
    /// x [N, Cin, H, W], weight [Cin, Cout/groups, kh, kw], bias [Cout];
    /// output [N, Cout, Ho, Wo] with
    /// `Ho = (H - 1)*stride - 2*padding + dilation*(kh - 1) + output_padding + 1`
    /// (likewise Wo), where input pixel (iy, ix) of group channel ci adds
    /// `x * weight[ci, co, i, j]` to output pixel
    /// `(iy*stride + i*dilation - padding, ix*stride + j*dilation - padding)`
    /// when that lies inside the output. Each `output_padding` must be
    /// smaller than the stride or the dilation of its axis. All tensors share
    /// a dtype; f16/bf16 compute in f32. Differentiable in x, weight and bias.
    #[allow(clippy::too_many_arguments)]
    pub fn conv_transpose2d(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        stride: [usize; 2],
        padding: [usize; 2],
        output_padding: [usize; 2],
        dilation: [usize; 2],
        groups: usize,
    ) -> Result<Tensor> {
        const OP: &str = "conv_transpose2d";
        let p = ConvTranspose2dParams {
            stride,
            padding,
            output_padding,
            dilation,
            groups,
        };
        crate::trace::op(OP, "forward", "cpu:col2im+gemm", &[self, weight], || {
            let g = geometry(self, weight, bias, p)?;
            let dtype = self.dtype();
            let (cout, hw_out) = (g.cin, g.h * g.w);
            let shape = [g.n, cout, g.h, g.w];
            let out = dispatch_float!(OP, dtype, T => {
                let (x, w) = (self.float_data::<T>()?, weight.float_data::<T>()?);
                let (y, _) = conv_backward::<T>(None, Some(&w), &x, &g);
                let mut y = y.expect("conv_backward returns the input gradient when given the weight");
                if let Some(b) = bias {
                    add_bias::<T>(&mut y, &b.float_data::<T>()?, hw_out);
                }
                Tensor::from_compute(y, &shape, dtype)
            });
            let need_x = self.requires_grad();
            let need_w = weight.requires_grad();
            let need_b = bias.is_some_and(|b| b.requires_grad());
            let saved_x = need_w.then(|| self.detach());
            let saved_w = need_x.then(|| weight.detach());
            let mut inputs = vec![self, weight];
            inputs.extend(bias);
            let (x_shape, w_shape) = (self.dims().to_vec(), weight.dims().to_vec());
            let n_inputs = inputs.len();
            Ok(record(out, OP, &inputs, move |gy| {
                let mut grads = dispatch_float!("conv_transpose2d backward", dtype, T => {
                    let dy = gy.float_data::<T>()?;
                    let dx = match &saved_w {
                        Some(w) => Some(conv_forward::<T>(&dy, &w.float_data::<T>()?, None, &g)),
                        None => None,
                    };
                    let dw = match &saved_x {
                        Some(x) => conv_backward::<T>(Some(&dy), None, &x.float_data::<T>()?, &g).1,
                        None => None,
                    };
                    let db = need_b.then(|| bias_grad::<T>(&dy, g.n, cout, hw_out));
                    vec![
                        dx.map(|v| Tensor::from_compute(v, &x_shape, dtype)),
                        dw.map(|v| Tensor::from_compute(v, &w_shape, dtype)),
                        db.map(|v| Tensor::from_compute(v, &[cout], dtype)),
                    ]
                });
                grads.truncate(n_inputs);
                Ok(grads)
            }))
        })
    }
}
