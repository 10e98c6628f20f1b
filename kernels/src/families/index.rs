//! index_select / index_add along one dim, and the bitonic sort behind
//! sort and top-k along the last dim, with a one-pass top 1 (index.cu).

use crate::error::{Error, Result};
use crate::launch;
use crate::library::{config, driver, DevPtr, Dtype, KernelLibrary};
use crate::source::Kernel;
use cudarc::driver::{CudaStream, PushKernelArg};

pub const KERNEL: Kernel = kernel!("index",
    typed ["index_add", "sort_init", "sort_gather", "sort_top1"]
    untyped ["index_select_1", "index_select_2", "index_select_4", "index_select_8", "sort_step"]);

/// The longest row the GPU sort takes: 2^26 elements (its padded length
/// and positions are int32; the scratch is 8 bytes an element).
pub const SORT_MAX_ROW: usize = 1 << 26;

/// A row-major [outer, size, inner] tensor indexed by m indices along its
/// middle dim (index.cu's index_select / index_add).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexDims {
    pub outer: usize,
    pub size: usize,
    pub inner: usize,
    pub m: usize,
}

impl IndexDims {
    /// Elements of the selected tensor [outer, m, inner].
    pub fn selected_len(&self) -> usize {
        self.outer * self.m * self.inner
    }

    fn args(&self) -> [i64; 4] {
        [self.outer, self.size, self.inner, self.m].map(|v| v as i64)
    }
}

/// The padded (power-of-two) row length of the GPU sort over rows of n,
/// or an error beyond [`SORT_MAX_ROW`].
pub fn sort_padded_len(n: usize) -> Result<usize> {
    if n > SORT_MAX_ROW {
        return Err(Error::Shape(format!(
            "sort over rows of {n} elements: the GPU sort takes at most {SORT_MAX_ROW} a row"
        )));
    }
    Ok(n.next_power_of_two().max(1))
}

/// The (k, j) stages of a bitonic sort over `p2` (a power of two) elements,
/// in launch order.
pub fn bitonic_stages(p2: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut k = 2;
    while k <= p2 {
        let mut j = k / 2;
        while j >= 1 {
            out.push((k, j));
            j /= 2;
        }
        k *= 2;
    }
    out
}

impl KernelLibrary {
    /// out [outer, m, inner] = x [outer, size, inner] at rows `index` [m]
    /// (i64), elements of `elem_bytes` (1, 2, 4 or 8) bytes; an index out
    /// of range writes 0.
    ///
    /// # Safety
    /// x: outer*size*inner elements; index: m i64; out: d.selected_len().
    pub unsafe fn index_select(
        &self,
        stream: &CudaStream,
        elem_bytes: usize,
        x: DevPtr,
        index: DevPtr,
        out: DevPtr,
        d: &IndexDims,
    ) -> Result<()> {
        if ![1, 2, 4, 8].contains(&elem_bytes) {
            return Err(Error::Shape(format!(
                "index_select of {elem_bytes}-byte elements (1, 2, 4 or 8)"
            )));
        }
        let name = format!("index_select_{elem_bytes}");
        self.index_launch(stream, &name, x, index, out, d)
    }

    /// dx [outer, size, inner] (f32, zeroed by the caller) += dy [outer, m,
    /// inner] (`dtype`) at rows `index` [m], by atomics (not bitwise
    /// deterministic when an index repeats).
    ///
    /// # Safety
    /// dy: d.selected_len() elements of dtype; index: m i64; dx:
    /// outer*size*inner f32.
    pub unsafe fn index_add(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        dy: DevPtr,
        index: DevPtr,
        dx: DevPtr,
        d: &IndexDims,
    ) -> Result<()> {
        let name = format!("index_add_{}", dtype.suffix());
        self.index_launch(stream, &name, dy, index, dx, d)
    }

    unsafe fn index_launch(
        &self,
        stream: &CudaStream,
        name: &str,
        src: DevPtr,
        index: DevPtr,
        dst: DevPtr,
        d: &IndexDims,
    ) -> Result<()> {
        let Some(shape) = launch::elementwise(d.selected_len(), 1, &self.gpu()) else {
            return Ok(());
        };
        let f = self.function(name)?;
        let a = d.args();
        let mut b = stream.launch_builder(&f);
        b.arg(&src).arg(&index).arg(&dst);
        for v in &a {
            b.arg(v);
        }
        b.launch(config(shape)).map_err(driver(name))?;
        Ok(())
    }

    /// The first `k` of each of `rows` rows of x [rows, n] (`dtype`) in
    /// sort order (descending: NaN first, larger first; ascending: smaller
    /// first, NaN last; ties by lower position): values [rows, k] (dtype)
    /// and indices [rows, k] (i64). `keys` and `pos` are scratch of
    /// rows * sort_padded_len(n) f32 and int32.
    ///
    /// # Safety
    /// x: rows*n elements of dtype; keys/pos: rows*sort_padded_len(n)
    /// each; values: rows*k of dtype; indices: rows*k i64; k <= n.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn sort_rows(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        x: DevPtr,
        keys: DevPtr,
        pos: DevPtr,
        values: DevPtr,
        indices: DevPtr,
        rows: usize,
        n: usize,
        k: usize,
        descending: bool,
    ) -> Result<()> {
        let p2 = sort_padded_len(n)?;
        if k > n {
            return Err(Error::Shape(format!("top {k} of rows of {n}")));
        }
        let gpu = self.gpu();
        let Some(all) = launch::elementwise(rows * p2, 1, &gpu) else {
            return Ok(());
        };
        let (rows, n32, p32, k32) = (rows as i64, n as i32, p2 as i32, k as i32);
        let init = format!("sort_init_{}", dtype.suffix());
        let f = self.function(&init)?;
        let mut b = stream.launch_builder(&f);
        b.arg(&x).arg(&keys).arg(&pos).arg(&rows).arg(&n32).arg(&p32);
        b.launch(config(all)).map_err(driver(&init))?;
        let f = self.function("sort_step")?;
        let desc = descending as i32;
        for (sk, sj) in bitonic_stages(p2) {
            let (sk, sj) = (sk as i32, sj as i32);
            let mut b = stream.launch_builder(&f);
            b.arg(&keys).arg(&pos).arg(&rows).arg(&n32).arg(&p32);
            b.arg(&sk).arg(&sj).arg(&desc);
            b.launch(config(all)).map_err(driver("sort_step"))?;
        }
        let Some(out) = launch::elementwise(rows as usize * k, 1, &gpu) else {
            return Ok(());
        };
        let gather = format!("sort_gather_{}", dtype.suffix());
        let f = self.function(&gather)?;
        let mut b = stream.launch_builder(&f);
        b.arg(&x).arg(&pos).arg(&values).arg(&indices);
        b.arg(&rows).arg(&n32).arg(&p32).arg(&k32);
        b.launch(config(out)).map_err(driver(&gather))?;
        Ok(())
    }

    /// The first of each of `rows` rows of x [rows, n] in the order of
    /// [`KernelLibrary::sort_rows`], in one pass and one launch: values
    /// [rows] (dtype) and indices [rows] (i64). What sort_rows gives for
    /// k = 1, without its scratch.
    ///
    /// # Safety
    /// x: rows*n elements of dtype; values: rows of dtype; indices: rows
    /// i64.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn top1_rows(
        &self,
        stream: &CudaStream,
        dtype: Dtype,
        x: DevPtr,
        values: DevPtr,
        indices: DevPtr,
        rows: usize,
        n: usize,
        descending: bool,
    ) -> Result<()> {
        if n == 0 || n > i32::MAX as usize {
            return Err(Error::Shape(format!("the top 1 of rows of {n}")));
        }
        let Some(shape) = launch::rows(rows) else {
            return Ok(());
        };
        let name = format!("sort_top1_{}", dtype.suffix());
        let f = self.function(&name)?;
        let (rows, n32, desc) = (rows as i64, n as i32, descending as i32);
        let mut b = stream.launch_builder(&f);
        b.arg(&x).arg(&values).arg(&indices);
        b.arg(&rows).arg(&n32).arg(&desc);
        b.launch(config(shape)).map_err(driver(&name))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stages sort every 0/1 sequence of length 8 (the 0-1 principle:
    /// then they sort every sequence), run on the host as sort_step does.
    #[test]
    fn bitonic_stages_sort_every_zero_one_row() {
        let p2 = 8;
        let stages = bitonic_stages(p2);
        assert_eq!(stages.len(), 6);
        for bits in 0u32..256 {
            let mut v: Vec<u32> = (0..p2).map(|i| (bits >> i) & 1).collect();
            for &(k, j) in &stages {
                for i in 0..p2 {
                    let l = i ^ j;
                    if l > i {
                        let forward = i & k == 0;
                        if (forward && v[l] < v[i]) || (!forward && v[i] < v[l]) {
                            v.swap(i, l);
                        }
                    }
                }
            }
            assert!(v.windows(2).all(|w| w[0] <= w[1]), "{bits:08b} -> {v:?}");
        }
    }

    #[test]
    fn sort_rows_are_bounded() {
        assert_eq!(sort_padded_len(0).unwrap(), 1);
        assert_eq!(sort_padded_len(5).unwrap(), 8);
        assert_eq!(sort_padded_len(200_000).unwrap(), 262_144);
        assert!(sort_padded_len(SORT_MAX_ROW + 1).is_err());
    }
}
