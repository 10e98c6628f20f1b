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
//! The backends therefore need no primitive of their own but the forward
//! (`ConvOps::conv_transpose2d_forward`), and the CPU's is as deterministic
//! and as parallel as conv2d.

use super::{check_bias, operands, record_conv, Conv2dGeom, ConvOps, ConvTranspose2dParams};
use crate::autograd::accumulate;
use crate::backend::BackendInfo;
use crate::{on_backend, Error, Result, Tensor};

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
) -> Result<Conv2dGeom> {
    const OP: &str = "conv_transpose2d";
    let w_dims = "weight [Cin, Cout/groups, kh, kw]";
    let (xd, wd) = operands(OP, w_dims, x, weight, bias)?;
    let ([n, cin, h, w], [wcin, cout_g, kh, kw]) = (xd, wd);
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
    check_bias(OP, bias, cout_g * p.groups)?;
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
    Ok(Conv2dGeom {
        n,
        cin: cout_g * p.groups,
        h: oh,
        w: ow,
        cout: cin,
        kh,
        kw,
        oh: h,
        ow: w,
        p: p.conv(),
    })
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
    /// a dtype and a device; f16/bf16 compute in f32. Differentiable in x,
    /// weight and bias.
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
        let g = geometry(self, weight, bias, p)?;
        let mut inputs = vec![self, weight];
        inputs.extend(bias);
        on_backend!(self.device(), b => crate::trace::op(OP, "forward", b.name(), &inputs, || {
            let y = b.conv_transpose2d_forward(self, weight, bias, &g)?;
            Ok(record_conv(
                OP,
                b,
                y,
                self,
                weight,
                bias,
                // x's gradient: the matching conv of dy (added to x's other
                // gradients as the engine would); the weight's: that conv's
                // weight gradient for input dy and output gradient x.
                move |dy, w, acc| accumulate(acc, b.conv2d_forward(dy, w, None, &g)?),
                move |x, dy| b.conv2d_backward_filter(dy, x, &g),
            ))
        }))
    }
}
