//! Dense elementwise ops and dtype casts (elementwise.cu).

use crate::library::{config, driver, DevPtr, Dtype, KernelLibrary};
use crate::error::{Error, Result};
use crate::families::copy::padded;
use crate::launch;
use crate::source::Kernel;
use cudarc::driver::{CudaStream, PushKernelArg};

pub const KERNEL: Kernel = kernel!("elementwise",
    typed ["add", "scale", "relu_fwd", "relu_bwd", "add_bcast", "sub", "mul", "div", "unary",
           "binary_bcast"]
    untyped ["cast_f32_to_f16", "cast_f32_to_bf16", "cast_f16_to_f32", "cast_bf16_to_f32",
             "cast_f16_to_bf16", "cast_bf16_to_f16"]);

/// Elementwise binary ops of elementwise.cu (dense operands of one dtype).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    /// out = a + b
    Add,
    /// dx = y > 0 ? dy : 0 (a = y, the ReLU output; b = dy)
    ReluBwd,
    /// out = a - b
    Sub,
    /// out = a * b
    Mul,
    /// out = a / b
    Div,
}

impl Binary {
    /// The same-shape entry point's name without the dtype suffix.
    fn entry(self) -> &'static str {
        match self {
            Binary::Add => "add",
            Binary::ReluBwd => "relu_bwd",
            Binary::Sub => "sub",
            Binary::Mul => "mul",
            Binary::Div => "div",
        }
    }

    /// `binary_bcast_<t>`'s op code; None for ReLU's backward.
    fn bcast_code(self) -> Option<i32> {
        match self {
            Binary::Add => Some(0),
            Binary::Sub => Some(1),
            Binary::Mul => Some(2),
            Binary::Div => Some(3),
            Binary::ReluBwd => None,
        }
    }
}

/// The maps of `unary_<t>` (elementwise.cu), f32 math.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Unary {
    Exp,
    Log,
    Sqrt,
    /// 1 / (1 + exp(-x))
    Sigmoid,
    Tanh,
    /// x + s
    AddScalar(f32),
    /// pow(x, p)
    Pow(f32),
    /// x > 0 ? 1 : 0
    Step,
}

impl Unary {
    /// The kernel's (op code, scalar).
    fn code(self) -> (i32, f32) {
        match self {
            Unary::Exp => (0, 0.0),
            Unary::Log => (1, 0.0),
            Unary::Sqrt => (2, 0.0),
            Unary::Sigmoid => (3, 0.0),
            Unary::Tanh => (4, 0.0),
            Unary::AddScalar(s) => (5, s),
            Unary::Pow(p) => (6, p),
            Unary::Step => (7, 0.0),
        }
    }
}

/// Most dims of a broadcast binary op (`SLMLP_BCAST_MAX_RANK`).
pub const BCAST_MAX_RANK: usize = 8;

/// elementwise.cu's `BcastView`, passed by value: the output's dims in its
/// physical order (outermost first) and each operand's element strides for
/// them (0 along broadcast dims).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BcastView {
    pub rank: i32,
    pub shape: [i64; BCAST_MAX_RANK],
    pub a_strides: [i64; BCAST_MAX_RANK],
    pub b_strides: [i64; BCAST_MAX_RANK],
}

// SAFETY: plain old data with the same C layout as elementwise.cu's struct.
unsafe impl cudarc::driver::DeviceRepr for BcastView {}

impl BcastView {
    /// A view of `shape` (output physical order) with the operands' strides.
    pub fn new(shape: &[usize], a_strides: &[usize], b_strides: &[usize]) -> Result<BcastView> {
        let rank = shape.len();
        if a_strides.len() != rank || b_strides.len() != rank || rank > BCAST_MAX_RANK {
            return Err(Error::Shape(format!(
                "broadcast op of rank {rank} (strides {} and {}): at most {BCAST_MAX_RANK} dims",
                a_strides.len(),
                b_strides.len()
            )));
        }
        Ok(BcastView {
            rank: rank as i32,
            shape: padded(shape, 1),
            a_strides: padded(a_strides, 0),
            b_strides: padded(b_strides, 0),
        })
    }
}

impl KernelLibrary {
    /// out = a (op) b over n dense elements (elementwise.cu: add, sub, mul,
    /// div, relu_bwd).
    /// out may alias a.
    ///
    /// # Safety
    /// a, b, out: live device allocations of n elements of `dtype`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn binary(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        op: Binary,
        a: DevPtr,
        b: DevPtr,
        out: DevPtr,
        n: usize,
    ) -> Result<()> {
        let pack = launch::pack_width(&[a as usize, b as usize, out as usize], None);
        let Some(shape) = launch::elementwise(n, pack, &self.gpu()) else {
            return Ok(());
        };
        let name = format!("{}_{}", op.entry(), dtype.suffix());
        let f = self.function(&name)?;
        let n = n as i64;
        let mut b_ = stream.launch_builder(&f);
        b_.arg(&a).arg(&b).arg(&out).arg(&n);
        b_.launch(config(shape)).map_err(driver(&name))?;
        Ok(())
    }

    /// out[i] = a (op) b at the i-th element of `view` (out dense, n
    /// elements; the arithmetic ops only).
    ///
    /// # Safety
    /// a and b hold every element the view's strides address from them;
    /// out holds n elements of `dtype`; n = the product of the view's dims.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn binary_bcast(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        op: Binary,
        a: DevPtr,
        b: DevPtr,
        out: DevPtr,
        n: usize,
        view: &BcastView,
    ) -> Result<()> {
        let code = op
            .bcast_code()
            .ok_or_else(|| Error::Shape(format!("{op:?} has no broadcasting form")))?;
        let Some(shape) = launch::elementwise(n, 1, &self.gpu()) else {
            return Ok(());
        };
        let name = format!("binary_bcast_{}", dtype.suffix());
        let f = self.function(&name)?;
        let n = n as i64;
        let mut b_ = stream.launch_builder(&f);
        b_.arg(&a).arg(&b).arg(&out).arg(&n).arg(&code).arg(view);
        b_.launch(config(shape)).map_err(driver(&name))?;
        Ok(())
    }

    /// out = f(a) over n dense elements (elementwise.cu unary; out may
    /// alias a).
    ///
    /// # Safety
    /// a, out: live device allocations of n elements of `dtype`.
    pub unsafe fn unary(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        op: Unary,
        a: DevPtr,
        out: DevPtr,
        n: usize,
    ) -> Result<()> {
        let pack = launch::pack_width(&[a as usize, out as usize], None);
        let Some(shape) = launch::elementwise(n, pack, &self.gpu()) else {
            return Ok(());
        };
        let name = format!("unary_{}", dtype.suffix());
        let f = self.function(&name)?;
        let (code, p) = op.code();
        let n = n as i64;
        let mut b = stream.launch_builder(&f);
        b.arg(&a).arg(&out).arg(&n).arg(&code).arg(&p);
        b.launch(config(shape)).map_err(driver(&name))?;
        Ok(())
    }

    /// out[i] = a[i] + b[i % inner], i < n (n a multiple of inner).
    ///
    /// # Safety
    /// a, out: n elements of `dtype`; b: inner elements.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn add_bcast(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        a: DevPtr,
        b: DevPtr,
        out: DevPtr,
        n: usize,
        inner: usize,
    ) -> Result<()> {
        if inner == 0 || !n.is_multiple_of(inner) {
            return Err(Error::Shape(format!(
                "broadcast add of {n} elements over rows of {inner}"
            )));
        }
        let Some(shape) = launch::elementwise(n, 1, &self.gpu()) else {
            return Ok(());
        };
        let name = format!("add_bcast_{}", dtype.suffix());
        let f = self.function(&name)?;
        let (n, inner) = (n as i64, inner as i64);
        let mut b_ = stream.launch_builder(&f);
        b_.arg(&a).arg(&b).arg(&out).arg(&n).arg(&inner);
        b_.launch(config(shape)).map_err(driver(&name))?;
        Ok(())
    }

    /// out = a * s over n elements (elementwise.cu scale; out may alias a).
    ///
    /// # Safety
    /// a, out: live device allocations of n elements of `dtype`.
    pub unsafe fn scale(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        a: DevPtr,
        out: DevPtr,
        s: f32,
        n: usize,
    ) -> Result<()> {
        let pack = launch::pack_width(&[a as usize, out as usize], None);
        let Some(shape) = launch::elementwise(n, pack, &self.gpu()) else {
            return Ok(());
        };
        let name = format!("scale_{}", dtype.suffix());
        let f = self.function(&name)?;
        let n = n as i64;
        let mut b = stream.launch_builder(&f);
        b.arg(&a).arg(&out).arg(&s).arg(&n);
        b.launch(config(shape)).map_err(driver(&name))?;
        Ok(())
    }

    /// out = max(a, 0) over n elements.
    ///
    /// # Safety
    /// a, out: live device allocations of n elements of `dtype`.
    pub unsafe fn relu_fwd(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        a: DevPtr,
        out: DevPtr,
        n: usize,
    ) -> Result<()> {
        let pack = launch::pack_width(&[a as usize, out as usize], None);
        let Some(shape) = launch::elementwise(n, pack, &self.gpu()) else {
            return Ok(());
        };
        let name = format!("relu_fwd_{}", dtype.suffix());
        let f = self.function(&name)?;
        let n = n as i64;
        let mut b = stream.launch_builder(&f);
        b.arg(&a).arg(&out).arg(&n);
        b.launch(config(shape)).map_err(driver(&name))?;
        Ok(())
    }

    /// dst = src converted (round to nearest even), n elements.
    ///
    /// # Safety
    /// src/dst: live device allocations of n elements of their dtypes.
    pub unsafe fn cast(
        &self,
        stream: &CudaStream,
        from: Dtype,
        to: Dtype,
        src: DevPtr,
        dst: DevPtr,
        n: usize,
    ) -> Result<()> {
        if from == to {
            return Err(Error::Shape(format!(
                "cast from {from:?} to itself: copy instead"
            )));
        }
        let Some(shape) = launch::elementwise(
            n,
            launch::pack_width(&[src as usize, dst as usize], None),
            &self.gpu(),
        ) else {
            return Ok(());
        };
        let name = format!("cast_{}_to_{}", from.suffix(), to.suffix());
        let f = self.function(&name)?;
        let n = n as i64;
        let mut b = stream.launch_builder(&f);
        b.arg(&src).arg(&dst).arg(&n);
        b.launch(config(shape)).map_err(driver(&name))?;
        Ok(())
    }
}
