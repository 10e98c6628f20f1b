//! 2-D convolution (PyTorch's `F.conv2d`: cross-correlation, zero padding,
//! NCHW, weight [Cout, Cin/groups, kh, kw]) as im2col + GEMM.
//!
//! The batch is split into one contiguous part per rayon thread; each part
//! runs single-threaded GEMMs on its own reused buffers, so im2col/col2im are
//! parallel too and no GEMM pays a thread fork/join. Within a part, images
//! are processed in chunks wide enough (`TARGET_COLS` output pixels) to keep
//! the GEMMs efficient when the spatial size is small (4x4 at ResNet's last
//! stage). Weight gradients are summed per part and the parts added in index
//! order, so results do not depend on scheduling.

use super::matmul::{gemm, MatRef};
use super::{expect_rank, same_dtype};
use crate::autograd::record;
use crate::{dispatch_float, Error, Float, Result, Tensor};
use rayon::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dParams {
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Conv2dParams {
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            groups: 1,
        }
    }
}

/// `floor((size + 2p - d(k-1) - 1) / s) + 1`, or an error when the (padded)
/// input is smaller than the (dilated) kernel. Shared with pooling.
pub(crate) fn out_size(
    op: &'static str,
    size: usize,
    k: usize,
    s: usize,
    p: usize,
    d: usize,
) -> Result<usize> {
    let span = d * (k - 1) + 1;
    if size + 2 * p < span {
        return Err(Error::shape(
            op,
            format!("kernel of extent {span} (size {k}, dilation {d}) is larger than the padded input {size} + 2*{p}"),
        ));
    }
    Ok((size + 2 * p - span) / s + 1)
}

/// Output pixels per GEMM: below ~512 columns gemm's packing overhead shows.
const TARGET_COLS: usize = 512;

#[derive(Clone, Copy)]
struct Geom {
    n: usize,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    p: Conv2dParams,
}

impl Geom {
    fn cin_g(&self) -> usize {
        self.cin / self.p.groups
    }
    fn cout_g(&self) -> usize {
        self.cout / self.p.groups
    }
    /// Rows of the im2col matrix (one per weight element of a filter).
    fn k(&self) -> usize {
        self.cin_g() * self.kh * self.kw
    }
    fn hw_in(&self) -> usize {
        self.h * self.w
    }
    fn hw_out(&self) -> usize {
        self.oh * self.ow
    }
    fn in_img(&self) -> usize {
        self.cin * self.hw_in()
    }
    fn out_img(&self) -> usize {
        self.cout * self.hw_out()
    }
    /// A 1x1, stride-1, unpadded conv: the input plane is the im2col matrix.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.p.stride == [1, 1] && self.p.padding == [0, 0]
    }
}

/// How the batch is cut: `chunk` images per GEMM, `part_imgs` per thread.
struct Plan {
    chunk: usize,
    part_imgs: usize,
    parts: usize,
    gemm_threads: usize,
}

fn plan(n: usize, hw_out: usize) -> Plan {
    let threads = rayon::current_num_threads().max(1);
    let chunk = TARGET_COLS
        .div_ceil(hw_out.max(1))
        .clamp(1, n.div_ceil(threads).max(1));
    let n_chunks = n.div_ceil(chunk);
    let parts = n_chunks.min(threads).max(1);
    let part_imgs = (n_chunks.div_ceil(parts) * chunk).max(1);
    let parts = n.div_ceil(part_imgs).max(1);
    // One part (a batch smaller than the thread count): let gemm use the threads.
    Plan {
        chunk,
        part_imgs,
        parts,
        gemm_threads: if parts > 1 { 1 } else { 0 },
    }
}

/// The output indices `o` in `0..out` whose input index `o*s + off - p`
/// falls inside `0..size`, as a range `lo..hi`.
fn valid_range(out: usize, size: usize, s: usize, p: usize, off: usize) -> (usize, usize) {
    let hi = if size + p > off {
        ((size + p - off - 1) / s + 1).min(out)
    } else {
        0
    };
    let lo = if p > off { (p - off).div_ceil(s) } else { 0 };
    (lo.min(hi), hi)
}

/// Writes one image's group of `cin_g` input planes as im2col rows into
/// `cols` (row length `ld`), at columns `col0..col0 + oh*ow`.
fn im2col<T: Float>(x: &[T], g: &Geom, cols: &mut [T], ld: usize, col0: usize) {
    let (h, w, oh, ow) = (g.h, g.w, g.oh, g.ow);
    let ([sh, sw], [ph, pw], [dh, dw]) = (g.p.stride, g.p.padding, g.p.dilation);
    let mut row = 0;
    for plane in x.chunks_exact(h * w).take(g.cin_g()) {
        for i in 0..g.kh {
            let (ylo, yhi) = valid_range(oh, h, sh, ph, i * dh);
            for j in 0..g.kw {
                let (lo, hi) = valid_range(ow, w, sw, pw, j * dw);
                let dst = &mut cols[row * ld + col0..][..oh * ow];
                row += 1;
                dst[..ylo * ow].fill(T::zero());
                dst[yhi * ow..].fill(T::zero());
                for oy in ylo..yhi {
                    let d = &mut dst[oy * ow..][..ow];
                    let src = &plane[(oy * sh + i * dh - ph) * w..][..w];
                    d[..lo].fill(T::zero());
                    d[hi..].fill(T::zero());
                    if lo == hi {
                        continue;
                    }
                    let ix0 = lo * sw + j * dw - pw;
                    if sw == 1 {
                        d[lo..hi].copy_from_slice(&src[ix0..ix0 + hi - lo]);
                    } else {
                        for (v, s) in d[lo..hi].iter_mut().zip(src[ix0..].iter().step_by(sw)) {
                            *v = *s;
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of `im2col`: adds the columns back onto the input planes.
fn col2im<T: Float>(cols: &[T], ld: usize, col0: usize, g: &Geom, x: &mut [T]) {
    let (h, w, oh, ow) = (g.h, g.w, g.oh, g.ow);
    let ([sh, sw], [ph, pw], [dh, dw]) = (g.p.stride, g.p.padding, g.p.dilation);
    let mut row = 0;
    for plane in x.chunks_exact_mut(h * w).take(g.cin_g()) {
        for i in 0..g.kh {
            let (ylo, yhi) = valid_range(oh, h, sh, ph, i * dh);
            for j in 0..g.kw {
                let (lo, hi) = valid_range(ow, w, sw, pw, j * dw);
                let src = &cols[row * ld + col0..][..oh * ow];
                row += 1;
                if lo == hi {
                    continue;
                }
                let ix0 = lo * sw + j * dw - pw;
                for oy in ylo..yhi {
                    let s = &src[oy * ow + lo..oy * ow + hi];
                    let d = &mut plane[(oy * sh + i * dh - ph) * w..][..w];
                    if sw == 1 {
                        for (v, s) in d[ix0..ix0 + hi - lo].iter_mut().zip(s) {
                            *v += *s;
                        }
                    } else {
                        for (v, s) in d[ix0..].iter_mut().step_by(sw).zip(s) {
                            *v += *s;
                        }
                    }
                }
            }
        }
    }
}

fn mat<T>(
    data: &[T],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
) -> MatRef<'_, T> {
    MatRef {
        data,
        rows,
        cols,
        row_stride,
        col_stride,
    }
}

fn conv_forward<T: Float>(x: &[T], wt: &[T], bias: Option<&[T]>, g: &Geom) -> Vec<T> {
    let (k, cin_g, cout_g, hw_in, hw_out) = (g.k(), g.cin_g(), g.cout_g(), g.hw_in(), g.hw_out());
    let (in_img, out_img) = (g.in_img(), g.out_img());
    let pl = plan(g.n, hw_out);
    let mut out = vec![T::zero(); g.n * out_img];
    let run_part = |part: usize, out_part: &mut [T]| {
        let n0 = part * pl.part_imgs;
        let imgs = pl.part_imgs.min(g.n - n0);
        let (mut cols, mut tmp) = (Vec::new(), Vec::new());
        for c0 in (0..imgs).step_by(pl.chunk) {
            let c = pl.chunk.min(imgs - c0);
            let ncol = c * hw_out;
            for gi in 0..g.p.groups {
                let a = mat(&wt[gi * cout_g * k..], cout_g, k, k, 1);
                let xg =
                    |l: usize| &x[(n0 + c0 + l) * in_img + gi * cin_g * hw_in..][..cin_g * hw_in];
                let b = if g.pointwise() && c == 1 {
                    mat(xg(0), k, hw_in, hw_in, 1)
                } else {
                    cols.resize(k * ncol, T::zero());
                    for l in 0..c {
                        im2col(xg(l), g, &mut cols, ncol, l * hw_out);
                    }
                    mat(&cols, k, ncol, ncol, 1)
                };
                let bias_of = |co: usize| bias.map_or(T::zero(), |bv| bv[gi * cout_g + co]);
                if c == 1 {
                    // Straight into the output, bias pre-filled and accumulated onto.
                    let dst =
                        &mut out_part[c0 * out_img + gi * cout_g * hw_out..][..cout_g * hw_out];
                    if bias.is_some() {
                        for (co, d) in dst.chunks_exact_mut(hw_out).enumerate() {
                            d.fill(bias_of(co));
                        }
                    }
                    gemm(dst, a, b, bias.is_some(), pl.gemm_threads);
                } else {
                    tmp.resize(cout_g * ncol, T::zero());
                    gemm(&mut tmp, a, b, false, pl.gemm_threads);
                    for (co, t) in tmp.chunks_exact(ncol).enumerate() {
                        let bv = bias_of(co);
                        for (l, t) in t.chunks_exact(hw_out).enumerate() {
                            let d = &mut out_part
                                [(c0 + l) * out_img + (gi * cout_g + co) * hw_out..][..hw_out];
                            for (d, t) in d.iter_mut().zip(t) {
                                *d = *t + bv;
                            }
                        }
                    }
                }
            }
        }
    };
    if pl.parts > 1 {
        out.par_chunks_mut((pl.part_imgs * out_img).max(1))
            .enumerate()
            .for_each(|(i, o)| run_part(i, o));
    } else {
        run_part(0, &mut out);
    }
    out
}

/// Gradients of the input (needs the weight) and of the weight (needs the
/// input) in one pass over the batch, sharing the gathered output gradient.
fn conv_backward<T: Float>(
    x: Option<&[T]>,
    wt: Option<&[T]>,
    dy: &[T],
    g: &Geom,
) -> (Option<Vec<T>>, Option<Vec<T>>) {
    let (k, cin_g, cout_g, hw_in, hw_out) = (g.k(), g.cin_g(), g.cout_g(), g.hw_in(), g.hw_out());
    let (in_img, out_img) = (g.in_img(), g.out_img());
    if g.n == 0 {
        return (
            wt.map(|_| Vec::new()),
            x.map(|_| vec![T::zero(); g.cout * k]),
        );
    }
    let pl = plan(g.n, hw_out);
    let mut dx = if wt.is_some() {
        vec![T::zero(); g.n * in_img]
    } else {
        Vec::new()
    };
    let mut dx_parts: Vec<Option<&mut [T]>> = (0..pl.parts).map(|_| None).collect();
    if !dx.is_empty() {
        for (slot, c) in dx_parts
            .iter_mut()
            .zip(dx.chunks_mut(pl.part_imgs * in_img))
        {
            *slot = Some(c);
        }
    }
    let run_part = |part: usize, mut dx_part: Option<&mut [T]>| -> Option<Vec<T>> {
        let n0 = part * pl.part_imgs;
        let imgs = pl.part_imgs.min(g.n - n0);
        let mut dw = x.map(|_| vec![T::zero(); g.cout * k]);
        let (mut cols, mut dyt) = (Vec::new(), Vec::new());
        for c0 in (0..imgs).step_by(pl.chunk) {
            let c = pl.chunk.min(imgs - c0);
            let ncol = c * hw_out;
            for gi in 0..g.p.groups {
                let dy_img = |l: usize| {
                    &dy[(n0 + c0 + l) * out_img + gi * cout_g * hw_out..][..cout_g * hw_out]
                };
                // dY of this chunk and group as a [cout_g, ncol] matrix.
                let dym = if c == 1 {
                    mat(dy_img(0), cout_g, hw_out, hw_out, 1)
                } else {
                    dyt.resize(cout_g * ncol, T::zero());
                    for (co, d) in dyt.chunks_exact_mut(ncol).enumerate() {
                        for (l, d) in d.chunks_exact_mut(hw_out).enumerate() {
                            d.copy_from_slice(&dy_img(l)[co * hw_out..][..hw_out]);
                        }
                    }
                    mat(&dyt, cout_g, ncol, ncol, 1)
                };
                if let (Some(x), Some(dw)) = (x, dw.as_mut()) {
                    let xg = |l: usize| {
                        &x[(n0 + c0 + l) * in_img + gi * cin_g * hw_in..][..cin_g * hw_in]
                    };
                    // cols^T: [ncol, k]
                    let bt = if g.pointwise() && c == 1 {
                        mat(xg(0), hw_in, k, 1, hw_in)
                    } else {
                        cols.resize(k * ncol, T::zero());
                        for l in 0..c {
                            im2col(xg(l), g, &mut cols, ncol, l * hw_out);
                        }
                        mat(&cols, ncol, k, 1, ncol)
                    };
                    gemm(
                        &mut dw[gi * cout_g * k..][..cout_g * k],
                        dym,
                        bt,
                        true,
                        pl.gemm_threads,
                    );
                }
                if let (Some(wt), Some(dxp)) = (wt, dx_part.as_deref_mut()) {
                    let wtm = mat(&wt[gi * cout_g * k..], k, cout_g, 1, k);
                    let dxg = |l: usize| {
                        let s = (c0 + l) * in_img + gi * cin_g * hw_in;
                        s..s + cin_g * hw_in
                    };
                    if g.pointwise() && c == 1 {
                        gemm(&mut dxp[dxg(0)], wtm, dym, false, pl.gemm_threads);
                    } else {
                        cols.resize(k * ncol, T::zero());
                        gemm(&mut cols, wtm, dym, false, pl.gemm_threads);
                        for l in 0..c {
                            col2im(&cols, ncol, l * hw_out, g, &mut dxp[dxg(l)]);
                        }
                    }
                }
            }
        }
        dw
    };
    let partials: Vec<Option<Vec<T>>> = if pl.parts > 1 {
        dx_parts
            .into_par_iter()
            .enumerate()
            .map(|(i, d)| run_part(i, d))
            .collect()
    } else {
        dx_parts
            .into_iter()
            .enumerate()
            .map(|(i, d)| run_part(i, d))
            .collect()
    };
    let dw = x.map(|_| {
        let mut it = partials.into_iter().flatten();
        let mut acc = it.next().expect("at least one part");
        for p in it {
            acc.par_iter_mut()
                .zip(p.par_iter())
                .for_each(|(a, b)| *a += *b);
        }
        acc
    });
    (wt.map(|_| dx), dw)
}

/// Sum of dY over the batch and the pixels, per output channel.
fn bias_grad<T: Float>(dy: &[T], g: &Geom) -> Vec<T> {
    let (hw, out_img) = (g.hw_out(), g.out_img());
    (0..g.cout)
        .into_par_iter()
        .map(|co| {
            (0..g.n)
                .map(|i| dy[i * out_img + co * hw..][..hw].iter().copied().sum::<T>())
                .sum()
        })
        .collect()
}

fn geometry(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, p: Conv2dParams) -> Result<Geom> {
    const OP: &str = "conv2d";
    expect_rank(OP, "input [N, Cin, H, W]", x, 4)?;
    expect_rank(OP, "weight [Cout, Cin/groups, kh, kw]", weight, 4)?;
    let mut ts = vec![x, weight];
    ts.extend(bias);
    same_dtype(OP, &ts)?;
    let (&[n, cin, h, w], &[cout, wcin, kh, kw]) = (x.dims(), weight.dims()) else {
        unreachable!()
    };
    if p.groups == 0 || p.stride.contains(&0) || p.dilation.contains(&0) {
        return Err(Error::arg(
            OP,
            format!("groups, stride and dilation must be >= 1, got {p:?}"),
        ));
    }
    if cin % p.groups != 0 || cout % p.groups != 0 {
        return Err(Error::arg(
            OP,
            format!(
                "groups = {} must divide both input channels {cin} and output channels {cout}",
                p.groups
            ),
        ));
    }
    if wcin != cin / p.groups || kh == 0 || kw == 0 {
        return Err(Error::shape(
            OP,
            format!(
                "weight {:?} does not fit input {:?} with groups = {}: expected [Cout, {}, kh >= 1, kw >= 1]",
                weight.dims(),
                x.dims(),
                p.groups,
                cin / p.groups
            ),
        ));
    }
    if let Some(b) = bias {
        if b.dims() != [cout] {
            return Err(Error::shape(
                OP,
                format!("bias must have shape [{cout}] (Cout), got {:?}", b.dims()),
            ));
        }
    }
    let oh = out_size(OP, h, kh, p.stride[0], p.padding[0], p.dilation[0])?;
    let ow = out_size(OP, w, kw, p.stride[1], p.padding[1], p.dilation[1])?;
    Ok(Geom {
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

impl Tensor {
    /// 2-D convolution: x [N, Cin, H, W], weight [Cout, Cin/groups, kh, kw]
    /// (PyTorch layout), bias [Cout]; NCHW output. All must share a dtype.
    pub fn conv2d(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        p: Conv2dParams,
    ) -> Result<Tensor> {
        let g = geometry(self, weight, bias, p)?;
        let dtype = self.dtype();
        let shape = [g.n, g.cout, g.oh, g.ow];
        let out = dispatch_float!("conv2d", dtype, T => {
            let (x, w) = (self.float_data::<T>()?, weight.float_data::<T>()?);
            let b = bias.map(|b| b.float_data::<T>()).transpose()?;
            Tensor::from_compute(conv_forward::<T>(&x, &w, b.as_deref(), &g), &shape, dtype)
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
        Ok(record(out, "conv2d", &inputs, move |gy| {
            let mut grads = dispatch_float!("conv2d backward", dtype, T => {
                let dy = gy.float_data::<T>()?;
                let x = saved_x.as_ref().map(|t| t.float_data::<T>()).transpose()?;
                let w = saved_w.as_ref().map(|t| t.float_data::<T>()).transpose()?;
                let (dx, dw) = conv_backward::<T>(x.as_deref(), w.as_deref(), &dy, &g);
                let db = need_b.then(|| bias_grad::<T>(&dy, &g));
                vec![
                    dx.map(|v| Tensor::from_compute(v, &x_shape, dtype)),
                    dw.map(|v| Tensor::from_compute(v, &w_shape, dtype)),
                    db.map(|v| Tensor::from_compute(v, &[g.cout], dtype)),
                ]
            });
            grads.truncate(n_inputs);
            Ok(grads)
        }))
    }
}
