//! Flat, immutable element buffers. Tensors share them through `Arc`, so views
//! (reshape, permute, narrow) never copy.

use crate::{DType, Element};
use half::{bf16, f16};

#[derive(Clone, Debug)]
pub enum Storage {
    F64(Vec<f64>),
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    I64(Vec<i64>),
    U8(Vec<u8>),
    /// Elements on a GPU (crate::cuda); host-only paths refuse it.
    Cuda(crate::cuda::DeviceStorage),
}

/// Runs `$body` with `$v` bound to the typed vector inside a storage.
#[macro_export]
macro_rules! with_storage {
    ($s:expr, $v:ident => $body:expr) => {
        match $s {
            $crate::Storage::F64($v) => $body,
            $crate::Storage::F32($v) => $body,
            $crate::Storage::F16($v) => $body,
            $crate::Storage::BF16($v) => $body,
            $crate::Storage::I64($v) => $body,
            $crate::Storage::U8($v) => $body,
            // Callers check the device first (Tensor::data and friends
            // return an error for GPU tensors), so this is never reached
            // from user input.
            $crate::Storage::Cuda(d) => panic!(
                "host-only storage path reached with {d:?}: download it first (to_device(Device::Cpu))"
            ),
        }
    };
}

impl Storage {
    pub fn dtype(&self) -> DType {
        match self {
            Storage::F64(_) => DType::F64,
            Storage::F32(_) => DType::F32,
            Storage::F16(_) => DType::F16,
            Storage::BF16(_) => DType::BF16,
            Storage::I64(_) => DType::I64,
            Storage::U8(_) => DType::U8,
            Storage::Cuda(d) => d.dtype(),
        }
    }

    pub fn len(&self) -> usize {
        if let Storage::Cuda(d) = self {
            return d.len();
        }
        with_storage!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn zeros(dtype: DType, n: usize) -> Storage {
        match dtype {
            DType::F64 => Storage::F64(vec![0.0; n]),
            DType::F32 => Storage::F32(vec![0.0; n]),
            DType::F16 => Storage::F16(vec![f16::ZERO; n]),
            DType::BF16 => Storage::BF16(vec![bf16::ZERO; n]),
            DType::I64 => Storage::I64(vec![0; n]),
            DType::U8 => Storage::U8(vec![0; n]),
        }
    }

    /// Converts every element to `dtype` (float->int truncates toward zero,
    /// as `as` casts do; f32->f16/bf16 rounds to nearest even).
    pub fn cast(&self, dtype: DType) -> Storage {
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
            (Storage::F32(v), DType::F16) => Storage::F16(conv(v, f16::from_f32)),
            (Storage::F32(v), DType::BF16) => Storage::BF16(conv(v, bf16::from_f32)),
            (Storage::F16(v), DType::F32) => Storage::F32(conv(v, f16::to_f32)),
            (Storage::BF16(v), DType::F32) => Storage::F32(conv(v, bf16::to_f32)),
            _ => with_storage!(self, v => match dtype {
                DType::F64 => Storage::F64(conv(v, |x| x.to_f64())),
                DType::F32 => Storage::F32(conv(v, |x| x.to_f64() as f32)),
                DType::F16 => Storage::F16(conv(v, |x| f16::from_f64(x.to_f64()))),
                DType::BF16 => Storage::BF16(conv(v, |x| bf16::from_f64(x.to_f64()))),
                DType::I64 => Storage::I64(conv(v, |x| x.to_f64() as i64)),
                DType::U8 => Storage::U8(conv(v, |x| x.to_f64() as u8)),
            }),
        }
    }

    /// Little-endian bytes, as safetensors stores them.
    pub fn to_bytes(&self) -> Vec<u8> {
        with_storage!(self, v => bytemuck::cast_slice(v).to_vec())
    }

    pub fn from_bytes(dtype: DType, bytes: &[u8]) -> Option<Storage> {
        if !bytes.len().is_multiple_of(dtype.size_in_bytes()) {
            return None;
        }
        fn read<T: bytemuck::Pod>(b: &[u8]) -> Vec<T> {
            // pod_collect_to_vec copies, so unaligned input is fine.
            bytemuck::pod_collect_to_vec(b)
        }
        Some(match dtype {
            DType::F64 => Storage::F64(read(bytes)),
            DType::F32 => Storage::F32(read(bytes)),
            DType::F16 => Storage::F16(read(bytes)),
            DType::BF16 => Storage::BF16(read(bytes)),
            DType::I64 => Storage::I64(read(bytes)),
            DType::U8 => Storage::U8(read(bytes)),
        })
    }
}
