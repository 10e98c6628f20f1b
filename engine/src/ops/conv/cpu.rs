//! 2-D convolution on the CPU as im2col + GEMM, row-major NCHW; a
//! transposed convolution is its backward-data plus the bias. The input
//! gradient of a stride-1 convolution is itself a forward convolution (of dY
//! with the flipped weights); other strides scatter back with col2im.
//!
//! The batch is split into contiguous parts, `PARTS` of them (in the
//! forward, at least one per rayon thread); each part
//! runs single-threaded GEMMs on pooled buffers, so im2col/col2im run in
//! parallel too and no GEMM pays a thread fork/join. A part walks its images
//! in units: several whole images when the planes are small (4x4 at
//! ResNet's last stage: one GEMM per image would be too narrow) or, in the
//! forward, when the layer is narrow (see `columns`), else one image cut
//! into tiles of output rows, so that the im2col tile stays in L2 between
//! being written and being read by the GEMM. Weight gradients are
//! summed per part and the parts added in index order, a wave of one part
//! per thread at a time; the backward's partition does not depend on the
//! thread count, so its results are the same bits under any rayon pool.

use super::{check_acc, Conv2dGeom as Geom, ConvOps};
use crate::backend::Cpu;
use crate::layout::Conv2dParams;
use crate::ops::matmul::{gemm, gemm_strided, MatRef};
use crate::ops::par_filled;
use crate::{dispatch_float, Float, Result, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

// gemm's operands here are cut from buffers sized by the same geometry:
// a bounds error would be a bug in this file, not bad input.
const IN_BOUNDS: &str = "conv operands lie inside their buffers";

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
    /// Height and width of the zero-padded input.
    fn padded_hw(&self) -> (usize, usize) {
        (
            self.h + 2 * self.p.padding[0],
            self.w + 2 * self.p.padding[1],
        )
    }
    fn is_padded(&self) -> bool {
        self.p.padding != [0, 0]
    }
    /// A 1x1, stride-1, unpadded conv: the input plane is the im2col matrix.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.p.stride == [1, 1] && !self.is_padded()
    }
}

/// How the batch is cut: a part of `part_imgs` images per thread, walked in
/// units of `chunk` images, each unit in tiles of `rows` output rows.
struct Plan {
    chunk: usize,
    rows: usize,
    part_imgs: usize,
    parts: usize,
    gemm_threads: usize,
}

/// Parts of the batch split. Fixed in the backward (a weight gradient of
/// few output pixels takes fewer: [`weight_parts`]), so the weight
/// gradient's summation order is the same whatever the thread count (each
/// part holds a weight-sized partial). The forward takes at least one per
/// thread: more parts than threads let a thread that finishes first take
/// another's part (with one part per thread, 2 threads ran the quick
/// model's forward convolutions 8-20 % slower; docs/PERF.md).
const PARTS: usize = 8;

/// Output channels (per group) up to which a forward may batch images.
const NARROW: usize = 32;

/// im2col elements per batched GEMM (512 KiB in f32: a quarter of L2).
const BATCH_ELEMS: usize = 1 << 17;

/// GEMM columns (output pixels) per unit. Measured on AVX-512 (gemm 0.19):
/// narrower GEMMs whose im2col tile fits L2 win when the weight matrix is
/// small (cheap to repack per call); a big weight matrix needs wide GEMMs to
/// amortise its packing.
///
/// `batched` (the forward's choice): a narrow layer (at most [`NARROW`]
/// output channels per group) takes whole images instead, as many as keep
/// the im2col tile within [`BATCH_ELEMS`], so that the column count is a
/// multiple of 16 (one AVX-512 register of f32: gemm then needs no padded
/// copy of the tile). Measured on the quick model (docs/PERF.md): about a
/// fifth off the 16-channel 28x28 forward; in the backward, and with bigger
/// tiles, batching was slower, so the backward keeps row tiles.
pub(super) fn columns(g: &Geom, batched: bool) -> usize {
    let per_img = g.k() * g.hw_out();
    let align = 16 / gcd(g.hw_out(), 16);
    let imgs = BATCH_ELEMS / per_img.max(1) / align * align;
    if batched && g.cout_g() <= NARROW && imgs > 0 {
        imgs * g.hw_out()
    } else if g.k() <= 1152 {
        256
    } else {
        512
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a.max(1)
    } else {
        gcd(b, a % b)
    }
}

/// The split of a batch into at most `threads` parts and their units of
/// about [`columns`] GEMM columns.
fn plan(g: &Geom, threads: usize, batched: bool) -> Plan {
    let (n, hw_out, target) = (g.n, g.hw_out(), columns(g, batched));
    let threads = threads.max(1);
    let chunk = target
        .div_ceil(hw_out.max(1))
        .clamp(1, n.div_ceil(threads).max(1));
    let rows = if chunk == 1 {
        (target / g.ow.max(1)).clamp(1, g.oh.max(1))
    } else {
        g.oh
    };
    let n_chunks = n.div_ceil(chunk);
    let parts = n_chunks.min(threads).max(1);
    let part_imgs = (n_chunks.div_ceil(parts) * chunk).max(1);
    let parts = n.div_ceil(part_imgs).max(1);
    // One part (a batch smaller than the thread count): let gemm use the threads.
    Plan {
        chunk,
        rows,
        part_imgs,
        parts,
        gemm_threads: if parts > 1 { 1 } else { 0 },
    }
}

/// The float types with a process-wide pool of scratch buffers: fresh
/// multi-megabyte buffers on every call would page-fault (and shoot down
/// TLBs) each time.
pub(super) trait Pooled: Float {
    fn pool() -> &'static Mutex<Vec<Vec<Self>>>;
}

impl Pooled for f32 {
    fn pool() -> &'static Mutex<Vec<Vec<f32>>> {
        static POOL: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());
        &POOL
    }
}

impl Pooled for f64 {
    fn pool() -> &'static Mutex<Vec<Vec<f64>>> {
        static POOL: Mutex<Vec<Vec<f64>>> = Mutex::new(Vec::new());
        &POOL
    }
}

/// Buffers kept for reuse (a few per thread).
const POOLED: usize = 12;

/// A buffer from the pool, taken at its first use and returned on drop.
struct Buf<T: Pooled>(Option<Vec<T>>);

impl<T: Pooled> Buf<T> {
    /// A handle with no buffer yet.
    fn new() -> Self {
        Buf(None)
    }
    /// `len` elements holding stale values: callers overwrite before reading.
    /// The first call takes the pool's smallest buffer that holds `len`
    /// (else its largest, grown), so that a small use does not take (and
    /// keep out of reach) a large buffer another part needs.
    fn get(&mut self, len: usize) -> &mut [T] {
        let b = self.0.get_or_insert_with(|| {
            let Ok(mut pool) = T::pool().lock() else {
                return Vec::new();
            };
            let fits = (0..pool.len())
                .filter(|&i| pool[i].len() >= len)
                .min_by_key(|&i| pool[i].len());
            let pick = fits.or_else(|| (0..pool.len()).max_by_key(|&i| pool[i].len()));
            pick.map(|i| pool.swap_remove(i)).unwrap_or_default()
        });
        if b.len() < len {
            b.resize(len, T::zero());
        }
        &mut b[..len]
    }
}

impl<T: Pooled> Drop for Buf<T> {
    fn drop(&mut self) {
        if let (Some(b), Ok(mut p)) = (self.0.take(), T::pool().lock()) {
            if p.len() < POOLED {
                p.push(b);
            }
        }
    }
}

/// One part's buffers, reused across its units.
struct Scratch<T: Pooled> {
    cols: Buf<T>,
    /// padded input planes
    pad: Buf<T>,
    /// padded input-gradient planes
    dpad: Buf<T>,
    /// a GEMM result or gathered dY
    tmp: Buf<T>,
}

impl<T: Pooled> Scratch<T> {
    fn new() -> Self {
        Scratch {
            cols: Buf::new(),
            pad: Buf::new(),
            dpad: Buf::new(),
            tmp: Buf::new(),
        }
    }
}

/// Where a unit's input planes of one group live: plane (ci, l) of input
/// channel `ci` and image `l` starts at `ci*ci_stride + l*l_stride` and its
/// rows are `wp` apart.
#[derive(Clone, Copy)]
struct Planes {
    ci_stride: usize,
    l_stride: usize,
    wp: usize,
}

impl Planes {
    /// The planes as they are in an NCHW tensor.
    fn unpadded(g: &Geom) -> Planes {
        Planes {
            ci_stride: g.hw_in(),
            l_stride: g.in_img(),
            wp: g.w,
        }
    }
    /// Zero-padded copies, channel-major so that one im2col row reads the
    /// unit's images from one small block.
    fn padded(g: &Geom, c: usize) -> Planes {
        let (hp, wp) = g.padded_hw();
        Planes {
            ci_stride: c * hp * wp,
            l_stride: hp * wp,
            wp,
        }
    }
    fn of(g: &Geom, c: usize) -> Planes {
        if g.is_padded() {
            Planes::padded(g, c)
        } else {
            Planes::unpadded(g)
        }
    }
    fn at(&self, ci: usize, l: usize) -> usize {
        ci * self.ci_stride + l * self.l_stride
    }
}

/// The `c` images' group planes (`x` starts at the first one) with zero
/// borders, so im2col needs no bounds logic; the input itself when unpadded.
fn padded<'a, T: Pooled>(x: &'a [T], c: usize, g: &Geom, buf: &'a mut Buf<T>) -> &'a [T] {
    if !g.is_padded() {
        return x;
    }
    let ([ph, pw], h, w, (hp, wp)) = (g.p.padding, g.h, g.w, g.padded_hw());
    let (src, dst) = (Planes::unpadded(g), Planes::padded(g, c));
    let buf = buf.get(g.cin_g() * c * hp * wp);
    for ci in 0..g.cin_g() {
        for l in 0..c {
            let pp = &mut buf[dst.at(ci, l)..][..hp * wp];
            pp[..ph * wp].fill(T::zero());
            pp[(ph + h) * wp..].fill(T::zero());
            let xp = &x[src.at(ci, l)..][..h * w];
            for (pr, xr) in pp[ph * wp..].chunks_exact_mut(wp).zip(xp.chunks_exact(w)) {
                pr[..pw].fill(T::zero());
                pr[pw..pw + w].copy_from_slice(xr);
                pr[pw + w..].fill(T::zero());
            }
        }
    }
    buf
}

/// The inverse of `padded` for gradients: copies the padded planes' interiors
/// into the unit's input-gradient planes `dx`, or adds them (`add`).
fn unpad<T: Pooled>(pad: &[T], c: usize, g: &Geom, dx: &mut [T], add: bool) {
    let ([ph, pw], h, w, (_, wp)) = (g.p.padding, g.h, g.w, g.padded_hw());
    let (src, dst) = (Planes::padded(g, c), Planes::unpadded(g));
    for ci in 0..g.cin_g() {
        for l in 0..c {
            let xp = &mut dx[dst.at(ci, l)..][..h * w];
            let pp = &pad[src.at(ci, l) + ph * wp..];
            for (xr, pr) in xp.chunks_exact_mut(w).zip(pp.chunks_exact(wp)) {
                let pr = &pr[pw..pw + w];
                if add {
                    xr.iter_mut().zip(pr).for_each(|(x, p)| *x += *p);
                } else {
                    xr.copy_from_slice(pr);
                }
            }
        }
    }
}

/// `match (stride, width)` that evaluates `$fixed` with the consts `$n`
/// (width) and `$s` (stride) set for the pairs common in CNNs, else `$other`.
/// Callers dispatch once per im2col/col2im, so that the row loops below are
/// compiled for each size: choosing per row cost more than copying the
/// rows of a 4- or 7-wide plane (docs/PERF.md).
macro_rules! fixed_sizes {
    (($sw:expr, $ow:expr), |$n:ident, $s:ident| $fixed:expr, $other:expr) => {
        match ($sw, $ow) {
            (1, 4) => fixed_sizes!(@ $n = 4, $s = 1, $fixed),
            (1, 7) => fixed_sizes!(@ $n = 7, $s = 1, $fixed),
            (1, 8) => fixed_sizes!(@ $n = 8, $s = 1, $fixed),
            (1, 14) => fixed_sizes!(@ $n = 14, $s = 1, $fixed),
            (1, 16) => fixed_sizes!(@ $n = 16, $s = 1, $fixed),
            (1, 28) => fixed_sizes!(@ $n = 28, $s = 1, $fixed),
            (1, 32) => fixed_sizes!(@ $n = 32, $s = 1, $fixed),
            (2, 4) => fixed_sizes!(@ $n = 4, $s = 2, $fixed),
            (2, 7) => fixed_sizes!(@ $n = 7, $s = 2, $fixed),
            (2, 8) => fixed_sizes!(@ $n = 8, $s = 2, $fixed),
            (2, 14) => fixed_sizes!(@ $n = 14, $s = 2, $fixed),
            (2, 16) => fixed_sizes!(@ $n = 16, $s = 2, $fixed),
            _ => $other,
        }
    };
    (@ $n:ident = $nv:literal, $s:ident = $sv:literal, $fixed:expr) => {{
        const $n: usize = $nv;
        const $s: usize = $sv;
        $fixed
    }};
}

/// `dst[oy*N + ox] = src[oy*step + ox*S]`: one plane's rows at a fixed
/// width and stride.
#[inline(always)]
fn gather_fixed<T: Copy, const N: usize, const S: usize>(dst: &mut [T], src: &[T], step: usize) {
    for (oy, d) in dst.chunks_exact_mut(N).enumerate() {
        let d: &mut [T; N] = d.try_into().unwrap();
        let s = &src[oy * step..][..(N - 1) * S + 1];
        for x in 0..N {
            d[x] = s[x * S];
        }
    }
}

/// `gather_fixed` for any width `ow` and stride `sw`.
#[inline(always)]
fn gather<T: Copy>(dst: &mut [T], src: &[T], ow: usize, step: usize, sw: usize) {
    for (oy, d) in dst.chunks_exact_mut(ow).enumerate() {
        if sw == 1 {
            d.copy_from_slice(&src[oy * step..][..ow]);
        } else {
            for (v, s) in d.iter_mut().zip(src[oy * step..].iter().step_by(sw)) {
                *v = *s;
            }
        }
    }
}

/// The adjoint of `gather_fixed`: `dst[oy*step + ox*S] += src[oy*N + ox]`.
#[inline(always)]
fn scatter_add_fixed<T: Float, const N: usize, const S: usize>(
    dst: &mut [T],
    src: &[T],
    step: usize,
) {
    for (oy, s) in src.chunks_exact(N).enumerate() {
        let s: &[T; N] = s.try_into().unwrap();
        let d = &mut dst[oy * step..][..(N - 1) * S + 1];
        for x in 0..N {
            d[x * S] += s[x];
        }
    }
}

/// The adjoint of `gather`.
#[inline(always)]
fn scatter_add<T: Float>(dst: &mut [T], src: &[T], ow: usize, step: usize, sw: usize) {
    for (oy, s) in src.chunks_exact(ow).enumerate() {
        if sw == 1 {
            let d = &mut dst[oy * step..][..ow];
            d.iter_mut().zip(s).for_each(|(v, s)| *v += *s);
        } else {
            for (v, s) in dst[oy * step..].iter_mut().step_by(sw).zip(s) {
                *v += *s;
            }
        }
    }
}

/// Calls `each(row, at)` for every im2col row of output rows `oy0..oy1`
/// (`rows`, in weight order): `at` is where its kernel tap's first input
/// lies in the first image's planes `pl`.
#[inline(always)]
fn for_taps<R>(
    mut rows: impl Iterator<Item = R>,
    pl: Planes,
    g: &Geom,
    oy: [usize; 2],
    mut each: impl FnMut(R, usize),
) {
    let ([sh, _], [dh, dw]) = (g.p.stride, g.p.dilation);
    for ci in 0..g.cin_g() {
        for i in 0..g.kh {
            for j in 0..g.kw {
                let row = rows.next().expect("cols has k rows");
                each(row, pl.at(ci, 0) + (oy[0] * sh + i * dh) * pl.wp + j * dw);
            }
        }
    }
}

/// The im2col matrix [k, c*(oy1-oy0)*ow] of output rows `oy0..oy1` of `c`
/// images' group planes (`src`, laid out as `pl`): row `(ci*kh + i)*kw + j`
/// (the weight layout [Cout, Cin/g, kh, kw]) holds, image after image, the
/// inputs that kernel tap meets.
fn im2col<T: Pooled>(src: &[T], pl: Planes, c: usize, g: &Geom, oy: [usize; 2], cols: &mut [T]) {
    let tile = (oy[1] - oy[0]) * g.ow;
    let (step, sw, ow) = (g.p.stride[0] * pl.wp, g.p.stride[1], g.ow);
    let rows = cols.chunks_exact_mut(c * tile);
    fixed_sizes!(
        (sw, ow),
        |N, S| for_taps(rows, pl, g, oy, |row, at| {
            for (l, dst) in row.chunks_exact_mut(tile).enumerate() {
                gather_fixed::<T, N, S>(dst, &src[at + l * pl.l_stride..], step);
            }
        }),
        for_taps(rows, pl, g, oy, |row, at| {
            for (l, dst) in row.chunks_exact_mut(tile).enumerate() {
                gather(dst, &src[at + l * pl.l_stride..], ow, step, sw);
            }
        })
    )
}

/// The adjoint of `im2col`: adds the columns onto the planes `dst`.
fn col2im<T: Pooled>(cols: &[T], c: usize, g: &Geom, oy: [usize; 2], dst: &mut [T], pl: Planes) {
    let tile = (oy[1] - oy[0]) * g.ow;
    let (step, sw, ow) = (g.p.stride[0] * pl.wp, g.p.stride[1], g.ow);
    let rows = cols.chunks_exact(c * tile);
    fixed_sizes!(
        (sw, ow),
        |N, S| for_taps(rows, pl, g, oy, |row, at| {
            for (l, src) in row.chunks_exact(tile).enumerate() {
                scatter_add_fixed::<T, N, S>(&mut dst[at + l * pl.l_stride..], src, step);
            }
        }),
        for_taps(rows, pl, g, oy, |row, at| {
            for (l, src) in row.chunks_exact(tile).enumerate() {
                scatter_add(&mut dst[at + l * pl.l_stride..], src, ow, step, sw);
            }
        })
    )
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

/// Runs `f(first image, image count, that part's slice of buf)` for every
/// part, in parallel when there are several; `per_img` is the elements of
/// `buf` per image (0: `buf` is not split).
fn for_parts<T: Send, R: Send>(
    pl: &Plan,
    n: usize,
    buf: &mut [T],
    per_img: usize,
    f: impl Fn(usize, usize, &mut [T]) -> R + Sync,
) -> Vec<R> {
    let mut slices: Vec<&mut [T]> = Vec::with_capacity(pl.parts);
    if per_img == 0 {
        slices.extend((0..pl.parts).map(|_| &mut [][..]));
    } else {
        slices.extend(buf.chunks_mut(pl.part_imgs * per_img));
    }
    let run =
        |(i, s): (usize, &mut [T])| f(i * pl.part_imgs, pl.part_imgs.min(n - i * pl.part_imgs), s);
    if pl.parts > 1 {
        slices.into_par_iter().enumerate().map(run).collect()
    } else {
        slices.into_iter().enumerate().map(run).collect()
    }
}

/// The row tiles `[oy0, oy1]` of a unit.
fn tiles(pl: &Plan, g: &Geom) -> impl Iterator<Item = [usize; 2]> {
    let (oh, rows) = (g.oh, pl.rows);
    (0..oh)
        .step_by(rows.max(1))
        .map(move |o| [o, (o + rows).min(oh)])
}

/// What a convolution's output starts from: zeros plus an optional bias
/// per channel, or a gradient it is added to (see `ConvOps::conv2d_backward_data`).
pub(super) enum Start<'a, T> {
    Bias(Option<&'a [T]>),
    Onto(Vec<T>),
}

/// y = conv(x, wt) + bias, or `onto + conv(x, wt)` (see [`Start`]), over
/// at most `threads` parts of the batch; `batched`: see [`columns`].
pub(super) fn conv_forward<T: Pooled>(
    x: &[T],
    wt: &[T],
    start: Start<'_, T>,
    g: &Geom,
    threads: usize,
    batched: bool,
) -> Vec<T> {
    let (k, cin_g, cout_g, hw_in, hw_out) = (g.k(), g.cin_g(), g.cout_g(), g.hw_in(), g.hw_out());
    let (in_img, out_img, ow) = (g.in_img(), g.out_img(), g.ow);
    let pl = plan(g, threads, batched);
    // `keep`: the output holds the gradient given, which the result is added to
    let (mut out, bias, keep) = match start {
        Start::Bias(b) => (par_filled(g.n * out_img, T::zero()), b, false),
        Start::Onto(v) => (v, None, true),
    };
    debug_assert_eq!(out.len(), g.n * out_img);
    if out.is_empty() {
        return out;
    }
    for_parts(&pl, g.n, &mut out, out_img, |n0, imgs, out_part| {
        let mut s = Scratch::new();
        for c0 in (0..imgs).step_by(pl.chunk) {
            let c = pl.chunk.min(imgs - c0);
            for gi in 0..g.p.groups {
                let a = mat(&wt[gi * cout_g * k..], cout_g, k, k, 1);
                let xc = &x[(n0 + c0) * in_img + gi * cin_g * hw_in..];
                let bias_of = |co: usize| bias.map_or(T::zero(), |bv| bv[gi * cout_g + co]);
                let src = padded(xc, c, g, &mut s.pad);
                for oy in tiles(&pl, g) {
                    let tile = (oy[1] - oy[0]) * ow;
                    let ncol = c * tile;
                    let b = if g.pointwise() && c == 1 {
                        // The input planes are the im2col matrix.
                        mat(&xc[oy[0] * ow..], k, tile, hw_in, 1)
                    } else {
                        let cols = s.cols.get(k * ncol);
                        im2col(src, Planes::of(g, c), c, g, oy, cols);
                        mat(&*cols, k, ncol, ncol, 1)
                    };
                    if c == 1 {
                        // Straight into the output tile, accumulated onto
                        // the gradient given or the bias pre-filled.
                        let o = c0 * out_img + gi * cout_g * hw_out + oy[0] * ow;
                        let dst = &mut out_part[o..o + (cout_g - 1) * hw_out + tile];
                        if bias.is_some() {
                            for (co, d) in dst.chunks_mut(hw_out).enumerate() {
                                d[..tile].fill(bias_of(co));
                            }
                        }
                        let onto = keep || bias.is_some();
                        gemm_strided(dst, hw_out, a, b, onto, pl.gemm_threads).expect(IN_BOUNDS);
                        continue;
                    }
                    let tmp = s.tmp.get(cout_g * ncol);
                    gemm(tmp, a, b, false, pl.gemm_threads).expect(IN_BOUNDS);
                    for (co, t) in tmp.chunks_exact(ncol).enumerate() {
                        let bv = bias_of(co);
                        for (l, t) in t.chunks_exact(tile).enumerate() {
                            let o = (c0 + l) * out_img + (gi * cout_g + co) * hw_out + oy[0] * ow;
                            let d = &mut out_part[o..][..tile];
                            if keep {
                                d.iter_mut().zip(t).for_each(|(d, t)| *d += *t);
                            } else {
                                d.iter_mut().zip(t).for_each(|(d, t)| *d = *t + bv);
                            }
                        }
                    }
                }
            }
        }
    });
    out
}

/// What `conv_backward` is given, and so computes: the weight (for the
/// input gradient, added to the gradient given when there is one) or the
/// input (for the weight gradient).
pub(super) enum Given<'a, T> {
    Weight(&'a [T], Option<Vec<T>>),
    Input(&'a [T]),
}

/// The input or the weight gradient (see [`Given`]) from dY, in one pass
/// over the batch.
pub(super) fn conv_backward<T: Pooled>(given: Given<'_, T>, dy: &[T], g: &Geom) -> Vec<T> {
    let (x, wt, onto) = match given {
        Given::Weight(w, onto) => (None, Some(w), onto),
        Given::Input(x) => (Some(x), None, None),
    };
    let (k, cin_g, cout_g, hw_in, hw_out) = (g.k(), g.cin_g(), g.cout_g(), g.hw_in(), g.hw_out());
    let (in_img, out_img, ow) = (g.in_img(), g.out_img(), g.ow);
    let pl = plan(g, if x.is_some() { weight_parts(g) } else { PARTS }, false);
    // `keep`: dx holds the gradient given, which the input gradient is added to
    let keep = onto.is_some();
    let mut dx =
        onto.unwrap_or_else(|| par_filled(if wt.is_some() { g.n * in_img } else { 0 }, T::zero()));
    debug_assert_eq!(dx.len(), if wt.is_some() { g.n * in_img } else { 0 });
    let per_img = if dx.is_empty() { 0 } else { in_img };
    // Each part sums its dW transposed ([groups][k][cout_g]): as
    // `cols @ dY^T` the GEMM runs up to 3x faster than `dY @ cols^T` when
    // Cout is small.
    let part = |n0: usize, imgs: usize, dx_part: &mut [T]| {
        // Pooled and stale: the first GEMM of each group overwrites it.
        let mut dwt = x.map(|_| {
            let mut b = Buf::new();
            if imgs == 0 {
                b.get(g.cout * k).fill(T::zero());
            }
            b
        });
        let mut s = Scratch::new();
        for c0 in (0..imgs).step_by(pl.chunk) {
            let c = pl.chunk.min(imgs - c0);
            for gi in 0..g.p.groups {
                let dyc = &dy[(n0 + c0) * out_img + gi * cout_g * hw_out..];
                let src = x.map(|x| {
                    padded(
                        &x[(n0 + c0) * in_img + gi * cin_g * hw_in..],
                        c,
                        g,
                        &mut s.pad,
                    )
                });
                let dxc = &mut dx_part[if wt.is_some() {
                    c0 * in_img + gi * cin_g * hw_in
                } else {
                    0
                }..];
                // Pointwise: the planes themselves are the im2col matrix.
                let direct = g.pointwise() && c == 1 && cin_g > 0;
                let dpad_len = if wt.is_some() && g.is_padded() {
                    cin_g * c * g.padded_hw().0 * g.padded_hw().1
                } else {
                    0
                };
                s.dpad.get(dpad_len).fill(T::zero());
                for oy in tiles(&pl, g) {
                    let tile = (oy[1] - oy[0]) * ow;
                    let ncol = c * tile;
                    // dY of this tile as a [cout_g, ncol] matrix: a strided
                    // view for one image, gathered for several.
                    let (dyd, dy_rs): (&[T], usize) = if c == 1 {
                        (&dyc[oy[0] * ow..], hw_out)
                    } else {
                        let d = s.tmp.get(cout_g * ncol);
                        for (co, d) in d.chunks_exact_mut(ncol).enumerate() {
                            for (l, d) in d.chunks_exact_mut(tile).enumerate() {
                                d.copy_from_slice(&dyc[l * out_img + co * hw_out..][..tile]);
                            }
                        }
                        (d, ncol)
                    };
                    if let (Some(src), Some(dwt)) = (src, dwt.as_mut()) {
                        let a = if direct {
                            mat(&src[oy[0] * ow..], k, tile, hw_in, 1)
                        } else {
                            let cols = s.cols.get(k * ncol);
                            im2col(src, Planes::of(g, c), c, g, oy, cols);
                            mat(cols, k, ncol, ncol, 1)
                        };
                        let dst = &mut dwt.get(g.cout * k)[gi * k * cout_g..][..k * cout_g];
                        let first = c0 == 0 && oy[0] == 0;
                        let dyt = mat(dyd, ncol, cout_g, 1, dy_rs);
                        gemm(dst, a, dyt, !first, pl.gemm_threads).expect(IN_BOUNDS);
                    }
                    if let Some(wt) = wt {
                        let wtm = mat(&wt[gi * cout_g * k..], k, cout_g, 1, k);
                        let dym = mat(dyd, cout_g, ncol, dy_rs, 1);
                        if direct {
                            let dst = &mut dxc[oy[0] * ow..(cin_g - 1) * hw_in + oy[1] * ow];
                            gemm_strided(dst, hw_in, wtm, dym, keep, pl.gemm_threads)
                                .expect(IN_BOUNDS);
                        } else {
                            let cols = s.cols.get(k * ncol);
                            gemm(cols, wtm, dym, false, pl.gemm_threads).expect(IN_BOUNDS);
                            if g.is_padded() {
                                col2im(cols, c, g, oy, s.dpad.get(dpad_len), Planes::padded(g, c));
                            } else {
                                col2im(cols, c, g, oy, dxc, Planes::unpadded(g));
                            }
                        }
                    }
                }
                if dpad_len > 0 {
                    unpad(s.dpad.get(dpad_len), c, g, dxc, keep);
                }
            }
        }
        dwt
    };
    if wt.is_some() {
        for_parts(&pl, g.n, &mut dx, per_img, part);
        dx
    } else {
        sum_parts(&pl, g, |n0, imgs| part(n0, imgs, &mut []))
    }
}

/// Output pixels (over all the images of a part) that one part of a
/// weight gradient sums at least. Each part writes a weight-sized partial
/// and reads it back, 8 bytes a weight for `2 * cols` FLOP a weight: with
/// 1024 columns that traffic is under a tenth of the GEMM's time. One
/// image a part at ResNet's 7x7 stage (49 columns) made the weight
/// gradient memory-bound (docs/PERF.md).
const WEIGHT_PART_COLS: usize = 1024;

/// Parts of a weight gradient: [`PARTS`], fewer when the batch has fewer
/// than [`WEIGHT_PART_COLS`] output pixels a part; one part runs its GEMMs
/// on all the threads. It depends on the geometry alone, so the sum is the
/// same bits under any thread count.
fn weight_parts(g: &Geom) -> usize {
    (g.n * g.hw_out() / WEIGHT_PART_COLS).clamp(1, PARTS)
}

/// dW [cout, k] = the sum of the parts' [groups][k][cout_g] partials
/// (`part(n0, imgs)`) in part order, so independent of scheduling. The
/// parts run a wave of one per thread at a time and each wave is added
/// before the next starts: at most one partial per thread is alive (not
/// one per part: 8 of layer4's 9.4 MB 3x3 weights in f32).
fn sum_parts<T: Pooled>(
    pl: &Plan,
    g: &Geom,
    part: impl Fn(usize, usize) -> Option<Buf<T>> + Sync,
) -> Vec<T> {
    let mut dw = vec![T::zero(); g.cout * g.k()];
    let run = |i: usize| {
        let n0 = i * pl.part_imgs;
        part(n0, pl.part_imgs.min(g.n - n0)).expect("a weight-gradient part sums dW")
    };
    let wave = rayon::current_num_threads().max(1);
    for first in (0..pl.parts).step_by(wave) {
        let ids = first..pl.parts.min(first + wave);
        let partials: Vec<Buf<T>> = if pl.parts > 1 {
            ids.into_par_iter().map(run).collect()
        } else {
            ids.map(run).collect()
        };
        add_transposed(&mut dw, partials, g);
    }
    dw
}

/// dW [cout, k] += the partials [groups][k][cout_g], added in their order
/// and transposed in tiles that stay in L1.
fn add_transposed<T: Pooled>(dw: &mut [T], mut parts: Vec<Buf<T>>, g: &Geom) {
    const TILE: usize = 16;
    let (k, cout_g, len) = (g.k(), g.cout_g(), dw.len());
    if len == 0 {
        return;
    }
    let parts: Vec<&[T]> = parts.iter_mut().map(|p| &*p.get(len)).collect();
    dw.par_chunks_mut(TILE * k).enumerate().for_each(|(t, d)| {
        let rows = d.len() / k;
        let base: Vec<usize> = (t * TILE..t * TILE + rows)
            .map(|r| (r / cout_g) * k * cout_g + r % cout_g)
            .collect();
        for k0 in (0..k).step_by(TILE) {
            for (r, &b) in base.iter().enumerate() {
                let row = &mut d[r * k..][k0..k.min(k0 + TILE)];
                for (kk, v) in row.iter_mut().enumerate() {
                    let i = b + (k0 + kk) * cout_g;
                    *v = parts.iter().fold(*v, |s, p| s + p[i]);
                }
            }
        }
    });
}

/// Sum of dY [n, c, hw] over the batch and the pixels per channel, images
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

/// The forward convolution whose output is the input gradient of the
/// stride-1 convolution `g`: dY convolved with the flipped, transposed
/// weights, padded by `dilation * (k - 1) - padding`. None for other strides,
/// for more padding than that, for pointwise convolutions (whose input
/// gradient is already one GEMM per tile, with no col2im) and for input
/// planes with rows or columns no window reaches (a transposed convolution's
/// output padding).
fn as_forward(g: &Geom) -> Option<Geom> {
    if g.p.stride != [1, 1] || g.pointwise() {
        return None;
    }
    let [dh, dw] = g.p.dilation;
    let (reach_h, reach_w) = (dh * g.kh.checked_sub(1)?, dw * g.kw.checked_sub(1)?);
    let padding = [
        reach_h.checked_sub(g.p.padding[0])?,
        reach_w.checked_sub(g.p.padding[1])?,
    ];
    if g.h + 2 * g.p.padding[0] != g.oh + reach_h || g.w + 2 * g.p.padding[1] != g.ow + reach_w {
        return None;
    }
    Some(Geom {
        n: g.n,
        cin: g.cout,
        h: g.oh,
        w: g.ow,
        cout: g.cin,
        kh: g.kh,
        kw: g.kw,
        oh: g.h,
        ow: g.w,
        p: Conv2dParams { padding, ..g.p },
    })
}

/// The weights of [`as_forward`]: [cin, cout/groups, kh, kw], each filter
/// turned by 180 degrees.
fn flipped<T: Copy>(w: &[T], g: &Geom) -> Vec<T> {
    let (cin_g, cout_g, taps) = (g.cin_g(), g.cout_g(), g.kh * g.kw);
    let mut out = Vec::with_capacity(w.len());
    for gi in 0..g.p.groups {
        for ci in 0..cin_g {
            for co in 0..cout_g {
                let f = &w[((gi * cout_g + co) * cin_g + ci) * taps..][..taps];
                out.extend(f.iter().rev());
            }
        }
    }
    out
}

/// The input gradient of the convolution `g`, added to `onto` when given:
/// for stride 1 a forward convolution ([`as_forward`]: no k-times-larger
/// column gradient to write and scatter back), else GEMM + col2im. Split
/// into the backward's fixed parts either way, so the same bits come out
/// under any thread count.
pub(super) fn input_grad<T: Pooled>(dy: &[T], w: &[T], g: &Geom, onto: Option<Vec<T>>) -> Vec<T> {
    match as_forward(g) {
        Some(f) => {
            let start = onto.map_or(Start::Bias(None), Start::Onto);
            conv_forward(dy, &flipped(w, g), start, &f, PARTS, true)
        }
        None => conv_backward(Given::Weight(w, onto), dy, g),
    }
}

/// The input gradient of the convolution `g` from `dy` and `w`, plus the
/// bias per channel (a transposed convolution's forward) or added to `acc`
/// (its own vector when nothing else holds it: see `Tensor::into_float_vec`).
fn data_grad(
    dy: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    g: &Geom,
    acc: Option<Tensor>,
) -> Result<Tensor> {
    crate::trace::kernel("col2im+gemm");
    let dtype = dy.dtype();
    Ok(dispatch_float!("conv2d_backward_data", dtype, T => {
        let (dy, w) = (dy.float_data::<T>()?, w.float_data::<T>()?);
        let onto = acc.map(Tensor::into_float_vec::<T>).transpose()?;
        let mut dx = input_grad::<T>(&dy, &w, g, onto);
        if let Some(b) = bias {
            add_bias::<T>(&mut dx, &b.float_data::<T>()?, g.hw_in());
        }
        Tensor::from_compute(dx, &g.x_dims(), dtype)
    }))
}

impl ConvOps for Cpu {
    fn conv2d_forward(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        g: &Geom,
    ) -> Result<Tensor> {
        crate::trace::kernel("im2col+gemm");
        let dtype = x.dtype();
        Ok(dispatch_float!("conv2d", dtype, T => {
            let (x, w) = (x.float_data::<T>()?, w.float_data::<T>()?);
            let b = bias.map(|b| b.float_data::<T>()).transpose()?;
            Tensor::from_compute(conv_forward::<T>(&x, &w, Start::Bias(b.as_deref()), g, PARTS.max(rayon::current_num_threads()), true), &g.y_dims(), dtype)
        }))
    }

    fn conv2d_backward_data(
        &self,
        dy: &Tensor,
        w: &Tensor,
        g: &Geom,
        acc: Option<Tensor>,
    ) -> Result<Tensor> {
        check_acc(acc.as_ref(), dy, g)?;
        data_grad(dy, w, None, g, acc)
    }

    fn conv2d_backward_filter(&self, x: &Tensor, dy: &Tensor, g: &Geom) -> Result<Tensor> {
        crate::trace::kernel("im2col+gemm");
        let dtype = x.dtype();
        Ok(dispatch_float!("conv2d_backward_filter", dtype, T => {
            let (x, dy) = (x.float_data::<T>()?, dy.float_data::<T>()?);
            let dw = conv_backward::<T>(Given::Input(&x), &dy, g);
            Tensor::from_compute(dw, &g.w_dims(), dtype)
        }))
    }

    fn conv2d_bias_grad(&self, dy: &Tensor) -> Result<Tensor> {
        let (dtype, d) = (dy.dtype(), dy.dims());
        let (n, c, hw) = (d[0], d[1], d[2] * d[3]);
        Ok(dispatch_float!("conv2d_bias_grad", dtype, T => {
            let db = bias_grad::<T>(&dy.float_data::<T>()?, n, c, hw);
            Tensor::from_compute(db, &[c], dtype)
        }))
    }

    fn conv_transpose2d_forward(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        g: &Geom,
    ) -> Result<Tensor> {
        data_grad(x, w, bias, g, None)
    }
}
