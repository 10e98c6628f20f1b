//! A tensor's elements: host memory (the CPU backend, [`CpuStorage`]) or GPU
//! memory (the CUDA backend), and the element types. Tensors share a
//! storage through `Arc`, so views (reshape, permute, narrow) never copy. A
//! storage is written only when it is created, except by the optimizers'
//! and loss scaling's explicit in-place primitives, which update
//! parameters, momenta and gradients that no other tensor aliases.
//!
//! f16/bf16 are storage types on the CPU: ops compute in f32 (f64 for
//! gradient checks) and round the result back, which is what mixed
//! precision needs from the reference backend.

use crate::cuda::storage::DeviceStorage;
use crate::{DType, Device, Error, Result};
use half::{bf16, f16};
use std::fmt;

#[derive(Clone, Debug)]
pub enum Storage {
    Cpu(CpuStorage),
    Cuda(DeviceStorage),
}

impl Storage {
    pub fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(s) => s.dtype(),
            Storage::Cuda(s) => s.dtype(),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Storage::Cpu(s) => s.len(),
            Storage::Cuda(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Cuda(s) => s.gpu().device(),
        }
    }

    /// The host buffer, or a clear error naming `op` for GPU memory.
    pub fn cpu(&self, op: &'static str) -> Result<&CpuStorage> {
        match self {
            Storage::Cpu(s) => Ok(s),
            Storage::Cuda(s) => Err(Error::arg(
                op,
                format!(
                    "{} elements on {}; this path reads host memory: move the tensor with to_device(Device::Cpu)",
                    s.len(),
                    s.gpu().device()
                ),
            )),
        }
    }

    /// The GPU buffer, or a clear error naming `op` for host memory.
    pub fn cuda(&self, op: &'static str) -> Result<&DeviceStorage> {
        match self {
            Storage::Cuda(s) => Ok(s),
            Storage::Cpu(s) => Err(Error::arg(
                op,
                format!(
                    "{} elements in host memory where a GPU buffer was expected",
                    s.len()
                ),
            )),
        }
    }
}

/// A flat buffer of one element type in host memory.
#[derive(Clone, Debug)]
pub enum CpuStorage {
    F64(Vec<f64>),
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    I64(Vec<i64>),
    U8(Vec<u8>),
}

/// Runs `$body` with `$v` bound to the typed vector inside a [`CpuStorage`].
#[macro_export]
macro_rules! with_storage {
    ($s:expr, $v:ident => $body:expr) => {
        match $s {
            $crate::CpuStorage::F64($v) => $body,
            $crate::CpuStorage::F32($v) => $body,
            $crate::CpuStorage::F16($v) => $body,
            $crate::CpuStorage::BF16($v) => $body,
            $crate::CpuStorage::I64($v) => $body,
            $crate::CpuStorage::U8($v) => $body,
        }
    };
}

impl CpuStorage {
    pub fn dtype(&self) -> DType {
        match self {
            CpuStorage::F64(_) => DType::F64,
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F16(_) => DType::F16,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::I64(_) => DType::I64,
            CpuStorage::U8(_) => DType::U8,
        }
    }

    pub fn len(&self) -> usize {
        with_storage!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn zeros(dtype: DType, n: usize) -> CpuStorage {
        match dtype {
            DType::F64 => CpuStorage::F64(vec![0.0; n]),
            DType::F32 => CpuStorage::F32(vec![0.0; n]),
            DType::F16 => CpuStorage::F16(vec![f16::ZERO; n]),
            DType::BF16 => CpuStorage::BF16(vec![bf16::ZERO; n]),
            DType::I64 => CpuStorage::I64(vec![0; n]),
            DType::U8 => CpuStorage::U8(vec![0; n]),
        }
    }

    /// Converts every element to `dtype` (float->int truncates toward zero,
    /// as `as` casts do; f32->f16/bf16 rounds to nearest even).
    pub fn cast(&self, dtype: DType) -> CpuStorage {
        if self.dtype() == dtype {
            return self.clone();
        }
        // Mixed precision casts whole activations every layer: split big ones
        // across threads (elementwise, so the result is the same either way).
        fn conv<S: Element, D: Element>(v: &[S], f: impl Fn(S) -> D + Sync) -> Vec<D> {
            use rayon::prelude::*;
            if v.len() < 1 << 15 {
                return v.iter().map(|&x| f(x)).collect();
            }
            v.par_iter().with_min_len(1 << 14).map(|&x| f(x)).collect()
        }
        // Direct paths keep f32 <-> half conversions exact and fast; the rest go via f64.
        match (self, dtype) {
            (CpuStorage::F32(v), DType::F16) => CpuStorage::F16(conv(v, f16::from_f32)),
            (CpuStorage::F32(v), DType::BF16) => CpuStorage::BF16(conv(v, bf16::from_f32)),
            (CpuStorage::F16(v), DType::F32) => CpuStorage::F32(conv(v, f16::to_f32)),
            (CpuStorage::BF16(v), DType::F32) => CpuStorage::F32(conv(v, bf16::to_f32)),
            _ => with_storage!(self, v => match dtype {
                DType::F64 => CpuStorage::F64(conv(v, |x| x.to_f64())),
                DType::F32 => CpuStorage::F32(conv(v, |x| x.to_f64() as f32)),
                DType::F16 => CpuStorage::F16(conv(v, |x| f16::from_f64(x.to_f64()))),
                DType::BF16 => CpuStorage::BF16(conv(v, |x| bf16::from_f64(x.to_f64()))),
                DType::I64 => CpuStorage::I64(conv(v, |x| x.to_f64() as i64)),
                DType::U8 => CpuStorage::U8(conv(v, |x| x.to_f64() as u8)),
            }),
        }
    }

    /// Little-endian bytes, as safetensors stores them.
    pub fn to_bytes(&self) -> Vec<u8> {
        with_storage!(self, v => bytemuck::cast_slice(v).to_vec())
    }

    pub fn from_bytes(dtype: DType, bytes: &[u8]) -> Option<CpuStorage> {
        if !bytes.len().is_multiple_of(dtype.size_in_bytes()) {
            return None;
        }
        fn read<T: bytemuck::Pod>(b: &[u8]) -> Vec<T> {
            // pod_collect_to_vec copies, so unaligned input is fine.
            bytemuck::pod_collect_to_vec(b)
        }
        Some(match dtype {
            DType::F64 => CpuStorage::F64(read(bytes)),
            DType::F32 => CpuStorage::F32(read(bytes)),
            DType::F16 => CpuStorage::F16(read(bytes)),
            DType::BF16 => CpuStorage::BF16(read(bytes)),
            DType::I64 => CpuStorage::I64(read(bytes)),
            DType::U8 => CpuStorage::U8(read(bytes)),
        })
    }
}

/// Any type a tensor can store.
pub trait Element: Copy + Send + Sync + fmt::Debug + 'static {
    const DTYPE: DType;
    /// The elements of a host storage of this dtype (None for another
    /// dtype or a GPU storage).
    fn slice(s: &Storage) -> Option<&[Self]>;
    fn into_storage(v: Vec<Self>) -> Storage;
    /// The vector inside a storage of this dtype, without copying.
    fn from_storage(s: Storage) -> Option<Vec<Self>>;
    fn to_f64(self) -> f64;
    fn from_f64(v: f64) -> Self;
}

macro_rules! element {
    ($t:ty, $variant:ident, $to:expr, $from:expr) => {
        impl Element for $t {
            const DTYPE: DType = DType::$variant;
            fn slice(s: &Storage) -> Option<&[Self]> {
                match s {
                    Storage::Cpu(CpuStorage::$variant(v)) => Some(v),
                    _ => None,
                }
            }
            fn into_storage(v: Vec<Self>) -> Storage {
                Storage::Cpu(CpuStorage::$variant(v))
            }
            fn from_storage(s: Storage) -> Option<Vec<Self>> {
                match s {
                    Storage::Cpu(CpuStorage::$variant(v)) => Some(v),
                    _ => None,
                }
            }
            fn to_f64(self) -> f64 {
                ($to)(self)
            }
            fn from_f64(v: f64) -> Self {
                ($from)(v)
            }
        }
    };
}
element!(f64, F64, |x: f64| x, |v: f64| v);
element!(f32, F32, |x: f32| x as f64, |v: f64| v as f32);
element!(f16, F16, |x: f16| x.to_f64(), f16::from_f64);
element!(bf16, BF16, |x: bf16| x.to_f64(), bf16::from_f64);
element!(i64, I64, |x: i64| x as f64, |v: f64| v as i64);
element!(u8, U8, |x: u8| x as f64, |v: f64| v as u8);

/// The types CPU kernels compute in (f32, and f64 for gradient checks).
pub trait Float:
    Element
    + num_traits::Float
    + std::ops::AddAssign
    + std::ops::SubAssign
    + std::ops::MulAssign
    + std::ops::DivAssign
    + std::iter::Sum
    + Default
{
    fn from_usize(v: usize) -> Self {
        Self::from_f64(v as f64)
    }
}
impl Float for f32 {}
impl Float for f64 {}
