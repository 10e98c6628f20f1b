//! 2-D convolution (PyTorch's `F.conv2d`: cross-correlation, zero padding,
//! NCHW, weight [Cout, Cin/groups, kh, kw]) and its adjoint, the transposed
//! convolution (`transpose.rs`): the checks, trace and autograd of each op,
//! over the [`ConvOps`] primitives of the backends (`cpu.rs`: im2col + GEMM;
//! `cuda.rs`: cuDNN, and the 1x1 stride-1 ones as cuBLASLt GEMMs planned by
//! `gemm.rs` where those time faster than cuDNN).

mod cpu;
mod cuda;
pub(crate) mod gemm;
pub(crate) mod parity;
#[cfg(test)]
mod tests;
mod transpose;

use super::{expect_rank, same_dtype};
use crate::autograd::record_accumulating;
use crate::backend::{same_device, unsupported, BackendInfo};
pub(crate) use crate::layout::out_size;
pub use crate::layout::{Conv2dParams, ConvTranspose2dParams};
use crate::{on_backend, Error, Result, Tensor};
pub use gemm::{pointwise_route, scoped_pointwise, set_pointwise, Pointwise, ScopedPointwise};

/// The shape of one convolution: input [n, cin, h, w], weight
/// [cout, cin/groups, kh, kw], output [n, cout, oh, ow].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dGeom {
    pub n: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub oh: usize,
    pub ow: usize,
    pub p: Conv2dParams,
}

impl Conv2dGeom {
    pub fn x_dims(&self) -> [usize; 4] {
        [self.n, self.cin, self.h, self.w]
    }
    pub fn w_dims(&self) -> [usize; 4] {
        [self.cout, self.cin / self.p.groups, self.kh, self.kw]
    }
    pub fn y_dims(&self) -> [usize; 4] {
        [self.n, self.cout, self.oh, self.ow]
    }
}

/// The convolution primitives a backend implements. A transposed
/// convolution runs on the same ones (see `transpose.rs`).
pub trait ConvOps: BackendInfo {
    /// y = conv(x, w) (+ bias per output channel).
    fn conv2d_forward(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        g: &Conv2dGeom,
    ) -> Result<Tensor> {
        let _ = (x, w, bias, g);
        Err(unsupported(self, "conv2d_forward"))
    }
    /// The input gradient of conv(x, w) given dy and w, plus `acc` when
    /// given (another op's gradient of x: see `autograd::Pending`), added
    /// in place when the backend can write into it.
    fn conv2d_backward_data(
        &self,
        dy: &Tensor,
        w: &Tensor,
        g: &Conv2dGeom,
        acc: Option<Tensor>,
    ) -> Result<Tensor> {
        let _ = (dy, w, g, acc);
        Err(unsupported(self, "conv2d_backward_data"))
    }
    /// The weight gradient of conv(x, w) given x and dy.
    fn conv2d_backward_filter(&self, x: &Tensor, dy: &Tensor, g: &Conv2dGeom) -> Result<Tensor> {
        let _ = (x, dy, g);
        Err(unsupported(self, "conv2d_backward_filter"))
    }
    /// The bias gradient: dy [N, C, H, W] summed per channel, [C].
    fn conv2d_bias_grad(&self, dy: &Tensor) -> Result<Tensor> {
        let _ = dy;
        Err(unsupported(self, "conv2d_bias_grad"))
    }
    /// A transposed convolution's output: `conv2d_backward_data` of the
    /// convolution `g` it is the adjoint of, with x as dy (+ bias per
    /// channel).
    fn conv_transpose2d_forward(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        g: &Conv2dGeom,
    ) -> Result<Tensor> {
        let _ = (x, w, bias, g);
        Err(unsupported(self, "conv_transpose2d_forward"))
    }
}

/// The operands of one convolution or transposed convolution: ranks, one
/// dtype and one device; returns the [x, weight] dims.
fn operands(
    op: &'static str,
    weight_dims: &str,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> Result<([usize; 4], [usize; 4])> {
    expect_rank(op, "input [N, Cin, H, W]", x, 4)?;
    expect_rank(op, weight_dims, weight, 4)?;
    let mut ts = vec![x, weight];
    ts.extend(bias);
    same_dtype(op, &ts)?;
    same_device(op, &ts)?;
    let (&[n, c, h, w], &[k, cg, r, s]) = (x.dims(), weight.dims()) else {
        unreachable!("ranks checked above")
    };
    Ok(([n, c, h, w], [k, cg, r, s]))
}

/// A gradient the input gradient of `g` is added to (`acc` of
/// `ConvOps::conv2d_backward_data`) must have x's dims and dy's dtype and
/// device.
pub(crate) fn check_acc(acc: Option<&Tensor>, dy: &Tensor, g: &Conv2dGeom) -> Result<()> {
    match acc {
        Some(a)
            if a.dims() != g.x_dims() || a.dtype() != dy.dtype() || a.device() != dy.device() =>
        {
            Err(Error::arg(
                "conv2d_backward_data",
                format!(
                    "the gradient to add to is {:?} {} on {}, the input gradient {:?} {} on {}",
                    a.dims(),
                    a.dtype(),
                    a.device(),
                    g.x_dims(),
                    dy.dtype(),
                    dy.device()
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// The bias must be [cout].
fn check_bias(op: &'static str, bias: Option<&Tensor>, cout: usize) -> Result<()> {
    match bias {
        Some(b) if b.dims() != [cout] => Err(Error::shape(
            op,
            format!("bias must have shape [{cout}] (Cout), got {:?}", b.dims()),
        )),
        _ => Ok(()),
    }
}

/// Checks the arguments as PyTorch does and returns the geometry.
fn geometry(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    p: Conv2dParams,
) -> Result<Conv2dGeom> {
    const OP: &str = "conv2d";
    let w_dims = "weight [Cout, Cin/groups, kh, kw]";
    let (xd, wd) = operands(OP, w_dims, x, weight, bias)?;
    let [oh, ow] = p.output_hw(OP, xd, wd)?;
    let ([n, cin, h, w], [cout, _, kh, kw]) = (xd, wd);
    check_bias(OP, bias, cout)?;
    Ok(Conv2dGeom {
        n,
        cin,
        h,
        w,
        cout,
        kh,
        kw,
        oh,
        ow,
        p,
    })
}

/// Records `y`, the output of `op` (a convolution or a transposed one)
/// of x, weight and bias, with its backward: `dx(dy, weight, acc)` when x
/// needs a gradient (`acc`: x's gradient from other ops so far, which dx
/// adds its own to), `dw(x, dy)` when the weight does, and the bias
/// gradient from backend `b` when the bias does. Keeps only the operands
/// those need.
#[allow(clippy::too_many_arguments)]
fn record_conv<B: ConvOps>(
    op: &'static str,
    b: &'static B,
    y: Tensor,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    dx: impl FnOnce(&Tensor, &Tensor, Option<Tensor>) -> Result<Tensor> + Send + 'static,
    dw: impl FnOnce(&Tensor, &Tensor) -> Result<Tensor> + Send + 'static,
) -> Tensor {
    let saved_x = weight.requires_grad().then(|| x.detach());
    let saved_w = x.requires_grad().then(|| weight.detach());
    let need_b = bias.is_some_and(|b| b.requires_grad());
    let (dtype, device, y_dims) = (y.dtype(), y.device(), y.dims().to_vec());
    let mut inputs = vec![x, weight];
    inputs.extend(bias);
    let n_inputs = inputs.len();
    record_accumulating(y, op, &inputs, move |dy, pending| {
        if dy.dtype() != dtype || dy.dims() != y_dims || dy.device() != device {
            return Err(Error::arg(
                op,
                format!(
                    "gradient {:?} {} on {} for an output {y_dims:?} {dtype} on {device}",
                    dy.dims(),
                    dy.dtype(),
                    dy.device(),
                ),
            ));
        }
        let mut grads = vec![
            saved_w.map(|w| dx(dy, &w, pending.take(0))).transpose()?,
            saved_x.map(|x| dw(&x, dy)).transpose()?,
            need_b.then(|| b.conv2d_bias_grad(dy)).transpose()?,
        ];
        grads.truncate(n_inputs);
        Ok(grads)
    })
}

impl Tensor {
    /// 2-D convolution: x [N, Cin, H, W], weight [Cout, Cin/groups, kh, kw]
    /// (PyTorch layout), bias [Cout]; NCHW output. All must share a dtype
    /// and a device.
    pub fn conv2d(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        p: Conv2dParams,
    ) -> Result<Tensor> {
        const OP: &str = "conv2d";
        let g = geometry(self, weight, bias, p)?;
        let mut inputs = vec![self, weight];
        inputs.extend(bias);
        on_backend!(self.device(), b => crate::trace::op(OP, "forward", b.name(), &inputs, || {
            let y = b.conv2d_forward(self, weight, bias, &g)?;
            Ok(record_conv(
                OP,
                b,
                y,
                self,
                weight,
                bias,
                move |dy, w, acc| b.conv2d_backward_data(dy, w, &g, acc),
                move |x, dy| b.conv2d_backward_filter(x, dy, &g),
            ))
        }))
    }
}
