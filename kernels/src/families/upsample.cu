// upsample.cu — nearest and bilinear resizing of NHWC tensors, forward and
// backward, as the CPU backend (engine/src/ops/upsample/cpu.rs).
//
// The host computes each axis's source taps once, with the CPU's exact
// arithmetic (PyTorch's nearest_idx and its bilinear source index and
// weights, rounded in f32), so the GPU samples exactly the same pixels:
//   rows[oy] / cols[ox] = {i0, i1, l0, l1}: output index -> two input
//     indices and their weights (nearest: i0 = i1, l0 = 1, l1 = 0);
//   row_span[y] / col_span[x] = {lo, hi}: the output indices whose taps
//     may name input index y (a superset is fine: weights are tested).
// upsample_fwd_<t>: one thread per output element (n, oy, ox, c);
//   nearest copies x[n, i0, i0', c]; bilinear blends width first, then
//   height (the CPU's order): t0 = x[r.i0][q.i0]*q.l0 + x[r.i0][q.i1]*q.l1,
//   t1 likewise on row r.i1, y = t0*r.l0 + t1*r.l1.
// upsample_bwd_<t>: one thread per INPUT element, gathering the gradients
//   of the outputs that sampled it times their weights (deterministic, no
//   atomics): dx[n,y,x,c] = sum_oy wy(oy) sum_ox wx(ox) dy[n,oy,ox,c] with
//   w(o) = (tap.i0 == y ? l0 : 0) + (tap.i1 == y ? l1 : 0).
// f32 math; outputs OVERWRITE. Launch: 1-D, any grid, 256 threads.
#include "common.cuh"

struct Tap {
    int i0, i1;
    float l0, l1;
};

struct Span {
    int lo, hi;
};

struct Resize {
    int n, c, h, w, oh, ow, nearest;
};

__device__ __forceinline__ float tap_weight(const Tap& t, int i) {
    return (t.i0 == i ? t.l0 : 0.0f) + (t.i1 == i ? t.l1 : 0.0f);
}

template <typename T>
__device__ __forceinline__ void upsample_fwd(const T* __restrict__ x, T* __restrict__ y,
                                             const Tap* __restrict__ rows,
                                             const Tap* __restrict__ cols, Resize r) {
    const i64 total = (i64)r.n * r.oh * r.ow * r.c;
    for (i64 e = grid_start(); e < total; e += grid_stride()) {
        const Nhwc p = nhwc(e, r.oh, r.ow, r.c);
        const Tap ty = rows[p.h], tx = cols[p.w];
        const T* plane = x + (i64)p.n * r.h * r.w * r.c + p.c;
        const T* r0 = plane + (i64)ty.i0 * r.w * r.c;
        float v;
        if (r.nearest) {
            v = to_f32(r0[(i64)tx.i0 * r.c]);
        } else {
            const T* r1 = plane + (i64)ty.i1 * r.w * r.c;
            const float t0 = to_f32(r0[(i64)tx.i0 * r.c]) * tx.l0 + to_f32(r0[(i64)tx.i1 * r.c]) * tx.l1;
            const float t1 = to_f32(r1[(i64)tx.i0 * r.c]) * tx.l0 + to_f32(r1[(i64)tx.i1 * r.c]) * tx.l1;
            v = t0 * ty.l0 + t1 * ty.l1;
        }
        y[e] = from_f32<T>(v);
    }
}

template <typename T>
__device__ __forceinline__ void upsample_bwd(const T* __restrict__ dy, T* __restrict__ dx,
                                             const Tap* __restrict__ rows,
                                             const Tap* __restrict__ cols,
                                             const Span* __restrict__ row_span,
                                             const Span* __restrict__ col_span, Resize r) {
    const i64 total = (i64)r.n * r.h * r.w * r.c;
    for (i64 e = grid_start(); e < total; e += grid_stride()) {
        const Nhwc p = nhwc(e, r.h, r.w, r.c);
        const T* plane = dy + (i64)p.n * r.oh * r.ow * r.c + p.c;
        const Span sy = row_span[p.h], sx = col_span[p.w];
        float acc = 0.0f;
        for (int oy = sy.lo; oy < sy.hi; oy++) {
            const float wy = tap_weight(rows[oy], p.h);
            if (wy == 0.0f) continue;
            float racc = 0.0f;
            for (int ox = sx.lo; ox < sx.hi; ox++) {
                const float wx = tap_weight(cols[ox], p.w);
                if (wx != 0.0f) racc += to_f32(plane[((i64)oy * r.ow + ox) * r.c]) * wx;
            }
            acc += racc * wy;
        }
        dx[e] = from_f32<T>(acc);
    }
}

#define UPSAMPLE_ENTRY_POINTS(T, SFX)                                                            \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS upsample_fwd_##SFX(                           \
        const T* x, T* y, const Tap* rows, const Tap* cols, Resize r) {                          \
        upsample_fwd<T>(x, y, rows, cols, r);                                                    \
    }                                                                                            \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS upsample_bwd_##SFX(                           \
        const T* dy, T* dx, const Tap* rows, const Tap* cols, const Span* row_span,              \
        const Span* col_span, Resize r) {                                                        \
        upsample_bwd<T>(dy, dx, rows, cols, row_span, col_span, r);                              \
    }

UPSAMPLE_ENTRY_POINTS(float, f32)
UPSAMPLE_ENTRY_POINTS(__half, f16)
UPSAMPLE_ENTRY_POINTS(__nv_bfloat16, bf16)
