//! Which convolutions the CUDA backend can run as one cuBLASLt GEMM, and
//! the GEMM each direction becomes (pure: unit-tested without a GPU); and
//! the switch between that route and cuDNN's ([`Pointwise`]).
//!
//! A 1x1 convolution with stride 1, no padding, dilation 1 and one group
//! maps each pixel's Cin channels to its Cout channels by the same matrix.
//! In the GPU default layout (channels-last, cuda::tensor) an activation
//! [N, C, H, W] is stored NHWC, i.e. it is the row-major matrix
//! [N*H*W, C]; the weight [Cout, Cin, 1, 1] is stored KRSC, i.e. the
//! row-major matrix [Cout, Cin] (so is a row-major NCHW weight: with a 1x1
//! kernel both layouts are the same bytes). With P = N*H*W:
//! - forward: Y [P, Cout] = X [P, Cin] @ W^T (+ bias per column of Y);
//! - backward data: dX [P, Cin] = dY [P, Cout] @ W (+ bias: a transposed
//!   convolution's forward);
//! - backward filter: dW [Cout, Cin] = dY^T @ X [P, Cin].
//!
//! The transposes are cuBLASLt's operand flags (cuda::blas), so nothing is
//! copied. Operands in any other layout, and every other geometry, stay on
//! cuDNN.

use super::Conv2dGeom;
use crate::cuda::blas::Matrix;
use crate::layout::Layout;
use crate::setting::Switch;
use crate::{Error, Result};

/// Which library runs the 1x1 stride-1 convolutions on the GPU
/// (`SLMLP_CONV_1X1`, default [`Pointwise::Auto`]): the GEMMs of this
/// module, cuDNN like every other convolution, or the faster of the two
/// for each problem. The forced routes are there to measure what each
/// gains (`slmlp-gpu-bench`'s `eager_gemm_1x1` and `eager_cudnn_1x1` rows,
/// `conv/<shape>/<dir>/gemm|cudnn`) and to check each against the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pointwise {
    /// Timed (`dnn::set_benchmark`, not `--deterministic`): the first call
    /// of each problem (direction, shape, dtype, bias, beta, alignment,
    /// TF32, cuDNN API) times the GEMM's chosen algorithm against cuDNN's
    /// and keeps the faster, as cuDNN's own search keeps its fastest
    /// algorithm. Untimed: the GEMM.
    Auto,
    Gemm,
    Cudnn,
}

impl Pointwise {
    /// "auto", "gemm" or "cudnn" (`SLMLP_CONV_1X1`).
    pub fn parse(v: &str) -> Result<Pointwise> {
        ROUTE.parse(v).map_err(|msg| Error::arg("conv2d", msg))
    }
}

/// `SLMLP_CONV_1X1`, default auto.
static ROUTE: Switch<Pointwise> = Switch::new(
    "SLMLP_CONV_1X1",
    &[
        ("auto", Pointwise::Auto),
        ("gemm", Pointwise::Gemm),
        ("cudnn", Pointwise::Cudnn),
    ],
);

/// Chooses the route of the 1x1 stride-1 convolutions from the next call
/// on (overrides `SLMLP_CONV_1X1`; [`Pointwise::Auto`]'s choices already
/// made are kept).
pub fn set_pointwise(route: Pointwise) {
    ROUTE.set(route);
}

/// [`set_pointwise`]'s route, else `SLMLP_CONV_1X1`'s, else
/// [`Pointwise::Auto`]; an error for an unknown `SLMLP_CONV_1X1`.
pub fn pointwise_route() -> Result<Pointwise> {
    ROUTE.get().map_err(|e| Error::arg("conv2d", e))
}

/// Sets the route until dropped, then restores the one before: for a
/// check or a bench row that runs one route on purpose.
pub type ScopedPointwise = crate::setting::Scoped<Pointwise>;

/// See [`ScopedPointwise`].
pub fn scoped_pointwise(route: Pointwise) -> ScopedPointwise {
    ROUTE.scoped(route)
}

/// The convolution primitive a plan is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// `conv2d_forward(x, w)`: y.
    Forward,
    /// `conv2d_backward_data(dy, w)` (and a transposed convolution's
    /// forward): dx.
    BackwardData,
    /// `conv2d_backward_filter(x, dy)`: dw.
    BackwardFilter,
}

/// The tensor behind a GEMM operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operand {
    X,
    W,
    Dy,
}

/// `D = A B` for one direction: which tensor each operand reads and how
/// (shape, leading dim, transpose flag; the addresses are 0 here, see
/// [`at`]). D is the output in the GPU default layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmPlan {
    pub dir: Direction,
    pub a: (Operand, Matrix),
    pub b: (Operand, Matrix),
    pub d: Matrix,
}

/// `m` read at address `ptr`.
pub fn at(m: Matrix, ptr: u64) -> Matrix {
    Matrix { ptr, ..m }
}

/// Whether `g` is a convolution a GEMM computes: a 1x1 kernel, stride 1,
/// no padding, dilation 1, one group, the output plane the input's, and no
/// empty dimension (cuDNN's path handles those).
pub fn pointwise(g: &Conv2dGeom) -> bool {
    let p = &g.p;
    g.kh == 1
        && g.kw == 1
        && p.stride == [1, 1]
        && p.padding == [0, 0]
        && p.dilation == [1, 1]
        && p.groups == 1
        && g.oh == g.h
        && g.ow == g.w
        && [g.n, g.h, g.w, g.cin, g.cout].iter().all(|&d| d > 0)
}

/// Whether `l` is the GPU default layout of `dims` (NHWC for an
/// activation, KRSC for a weight): the matrices below read it in place.
fn in_place(l: &Layout, dims: [usize; 4]) -> bool {
    l.shape == dims && l.has_gpu_strides()
}

/// The GEMM that computes direction `dir` of convolution `g` from its two
/// inputs, whose layouts are `inputs` in the primitive's argument order
/// (forward: x, w; backward data: dy, w; backward filter: x, dy), or None
/// when the convolution is not [`pointwise`] or an input is not in the GPU
/// default layout (the caller then takes cuDNN's path).
pub fn gemm_plan(dir: Direction, g: &Conv2dGeom, inputs: [&Layout; 2]) -> Option<GemmPlan> {
    if !pointwise(g) {
        return None;
    }
    let p = g.n.checked_mul(g.h)?.checked_mul(g.w)?;
    let (cin, cout) = (g.cin, g.cout);
    let want = match dir {
        Direction::Forward => [g.x_dims(), g.w_dims()],
        Direction::BackwardData => [g.y_dims(), g.w_dims()],
        Direction::BackwardFilter => [g.x_dims(), g.y_dims()],
    };
    if !inputs.iter().zip(want).all(|(l, d)| in_place(l, d)) {
        return None;
    }
    // NHWC activations and the KRSC weight as row-major matrices
    let x = Matrix::row_major(0, p, cin);
    let dy = Matrix::row_major(0, p, cout);
    let w = Matrix::row_major(0, cout, cin);
    // a row-major [r, c] matrix read as its transpose [c, r]
    let t = |m: Matrix| Matrix {
        rows: m.cols,
        cols: m.rows,
        transposed: true,
        ..m
    };
    let (a, b, d) = match dir {
        Direction::Forward => ((Operand::X, x), (Operand::W, t(w)), dy),
        Direction::BackwardData => ((Operand::Dy, dy), (Operand::W, w), x),
        Direction::BackwardFilter => ((Operand::Dy, t(dy)), (Operand::X, x), w),
    };
    Some(GemmPlan { dir, a, b, d })
}
