// pool.cu — 2-D max pooling (with argmax) and average pooling over NHWC,
// forward and backward. PyTorch semantics as engine/src/ops/pool.rs: floor
// mode, dilation 1, padding <= kernel/2; max: padding acts as -inf, the
// first maximum in window order wins, NaN propagates; avg: count_include_pad
// divides by the window clipped to the padded extent, else by the in-bounds
// count.
//
// Forward: one thread per output element (n, oh, ow, c), c innermost, so a
// warp reads 32 consecutive channels of each window position (coalesced).
// argmax stores h*W + w inside the image (int32), as PyTorch's indices.
// Backward is a GATHER, one thread per input element: it visits the few
// outputs whose windows contain it (overlapping 3x3/s2 windows: up to 4) and
// sums their gradients in f32. No atomics, deterministic, and dx is fully
// OVERWRITTEN (no zero-fill launch needed).
//
// Launch: 1-D grid-stride, any grid, 256 threads.
#include "common.cuh"

struct PoolShape {
    int N, H, W, C, OH, OW, KH, KW, SH, SW, PH, PW;
};

// Output rows whose window covers input row h: [lo, hi) (empty if lo >= hi).
__device__ __forceinline__ void covering(int h, int K, int S, int P, int O, int& lo, int& hi) {
    const int t = h + P - K;
    lo = t < 0 ? 0 : t / S + 1;
    hi = min((h + P) / S, O - 1) + 1;
}

// A window of rows [h0, h1) x columns [w0, w1).
struct Window {
    int h0, h1, w0, w1;
};

// The in-image part of output (oh, ow)'s sliding window.
__device__ __forceinline__ Window clipped_window(const PoolShape& s, int oh, int ow) {
    const int hs = oh * s.SH - s.PH, ws = ow * s.SW - s.PW;
    return Window{max(hs, 0), min(hs + s.KH, s.H), max(ws, 0), min(ws + s.KW, s.W)};
}

// The outputs whose sliding windows contain input (h, w).
__device__ __forceinline__ Window covering_outputs(const PoolShape& s, int h, int w) {
    Window o;
    covering(h, s.KH, s.SH, s.PH, s.OH, o.h0, o.h1);
    covering(w, s.KW, s.SW, s.PW, s.OW, o.w0, o.w1);
    return o;
}

// Averaging divisor of output (oh, ow), as engine/src/ops/pool.rs::sliding.
__device__ __forceinline__ int avg_divisor(const PoolShape& s, int oh, int ow, int include_pad) {
    if (include_pad) {
        const int hs = oh * s.SH - s.PH, ws = ow * s.SW - s.PW;
        const int he = min(hs + s.KH, s.H + s.PH), we = min(ws + s.KW, s.W + s.PW);
        return (he - hs) * (we - ws);
    }
    const Window win = clipped_window(s, oh, ow);
    return max(win.h1 - win.h0, 0) * max(win.w1 - win.w0, 0);
}

// Channel c of image n of x at pixel (h, w) is xc[(h * W + w) * C].
template <typename T>
__device__ __forceinline__ const T* channel_base(const T* x, const PoolShape& s, const Nhwc& p) {
    return x + (i64)p.n * s.H * s.W * s.C + p.c;
}

// Offset of output (n, oh, ow, c).
__device__ __forceinline__ i64 out_offset(const PoolShape& s, int n, int oh, int ow, int c) {
    return (((i64)n * s.OH + oh) * s.OW + ow) * s.C + c;
}

// Sum of x over a window, rows outer, in f32.
template <typename T>
__device__ __forceinline__ float window_sum(const T* xc, const PoolShape& s, Window win) {
    float acc = 0.0f;
    for (int h = win.h0; h < win.h1; h++)
        for (int w = win.w0; w < win.w1; w++) acc += to_f32(xc[((i64)h * s.W + w) * s.C]);
    return acc;
}

template <typename T>
__device__ __forceinline__ void maxpool_fwd(const T* __restrict__ x, T* __restrict__ y,
                                           int* __restrict__ argmax, PoolShape s) {
    const i64 total = (i64)s.N * s.OH * s.OW * s.C;
    for (i64 e = grid_start(); e < total; e += grid_stride()) {
        const Nhwc o = nhwc(e, s.OH, s.OW, s.C);
        const Window win = clipped_window(s, o.h, o.w);
        const T* xc = channel_base(x, s, o);
        float best = SLMLP_NEG_INF;
        int bi = win.h0 * s.W + win.w0;
        for (int h = win.h0; h < win.h1; h++) {
            for (int w = win.w0; w < win.w1; w++) {
                const float v = to_f32(xc[((i64)h * s.W + w) * s.C]);
                if (v > best || isnan(v)) {
                    best = v;
                    bi = h * s.W + w;
                }
            }
        }
        y[e] = from_f32<T>(best);
        argmax[e] = bi;
    }
}

template <typename T>
__device__ __forceinline__ void maxpool_bwd(const T* __restrict__ dy,
                                           const int* __restrict__ argmax, T* __restrict__ dx,
                                           PoolShape s) {
    const i64 total = (i64)s.N * s.H * s.W * s.C;
    for (i64 e = grid_start(); e < total; e += grid_stride()) {
        const Nhwc p = nhwc(e, s.H, s.W, s.C);
        const Window outs = covering_outputs(s, p.h, p.w);
        const int self = p.h * s.W + p.w;
        float acc = 0.0f;
        for (int oh = outs.h0; oh < outs.h1; oh++) {
            for (int ow = outs.w0; ow < outs.w1; ow++) {
                const i64 o = out_offset(s, p.n, oh, ow, p.c);
                if (argmax[o] == self) acc += to_f32(dy[o]);
            }
        }
        dx[e] = from_f32<T>(acc);
    }
}

template <typename T>
__device__ __forceinline__ void avgpool_fwd(const T* __restrict__ x, T* __restrict__ y,
                                           PoolShape s, int include_pad) {
    const i64 total = (i64)s.N * s.OH * s.OW * s.C;
    for (i64 e = grid_start(); e < total; e += grid_stride()) {
        const Nhwc o = nhwc(e, s.OH, s.OW, s.C);
        const float acc = window_sum(channel_base(x, s, o), s, clipped_window(s, o.h, o.w));
        y[e] = from_f32<T>(acc / (float)avg_divisor(s, o.h, o.w, include_pad));
    }
}

template <typename T>
__device__ __forceinline__ void avgpool_bwd(const T* __restrict__ dy, T* __restrict__ dx,
                                           PoolShape s, int include_pad) {
    const i64 total = (i64)s.N * s.H * s.W * s.C;
    for (i64 e = grid_start(); e < total; e += grid_stride()) {
        const Nhwc p = nhwc(e, s.H, s.W, s.C);
        const Window outs = covering_outputs(s, p.h, p.w);
        float acc = 0.0f;
        for (int oh = outs.h0; oh < outs.h1; oh++) {
            for (int ow = outs.w0; ow < outs.w1; ow++) {
                const float g = to_f32(dy[out_offset(s, p.n, oh, ow, p.c)]);
                acc += g / (float)avg_divisor(s, oh, ow, include_pad);
            }
        }
        dx[e] = from_f32<T>(acc);
    }
}

// Adaptive average pooling (PyTorch): output row i averages input rows
// [floor(i*H/OH), ceil((i+1)*H/OH)), the same for columns; bins may
// overlap and differ in size. K/S/P of the shape are unused.
__device__ __forceinline__ int bin_start(int i, int in, int out) {
    return (int)(((i64)i * in) / out);
}
__device__ __forceinline__ int bin_end(int i, int in, int out) {
    return (int)(((i64)(i + 1) * in + out - 1) / out);
}

template <typename T>
__device__ __forceinline__ void adaptive_avgpool_fwd(const T* __restrict__ x, T* __restrict__ y,
                                                    PoolShape s) {
    const i64 total = (i64)s.N * s.OH * s.OW * s.C;
    for (i64 e = grid_start(); e < total; e += grid_stride()) {
        const Nhwc o = nhwc(e, s.OH, s.OW, s.C);
        const Window bin{bin_start(o.h, s.H, s.OH), bin_end(o.h, s.H, s.OH),
                         bin_start(o.w, s.W, s.OW), bin_end(o.w, s.W, s.OW)};
        const float acc = window_sum(channel_base(x, s, o), s, bin);
        y[e] = from_f32<T>(acc / (float)((bin.h1 - bin.h0) * (bin.w1 - bin.w0)));
    }
}

// Gather: input row h lies in the bins oh of [floor(h*OH/H), ceil((h+1)*OH/H)).
template <typename T>
__device__ __forceinline__ void adaptive_avgpool_bwd(const T* __restrict__ dy, T* __restrict__ dx,
                                                    PoolShape s) {
    const i64 total = (i64)s.N * s.H * s.W * s.C;
    for (i64 e = grid_start(); e < total; e += grid_stride()) {
        const Nhwc p = nhwc(e, s.H, s.W, s.C);
        const int oh0 = (int)(((i64)p.h * s.OH) / s.H);
        const int oh1 = min((int)(((i64)(p.h + 1) * s.OH + s.H - 1) / s.H), s.OH);
        const int ow0 = (int)(((i64)p.w * s.OW) / s.W);
        const int ow1 = min((int)(((i64)(p.w + 1) * s.OW + s.W - 1) / s.W), s.OW);
        float acc = 0.0f;
        for (int oh = oh0; oh < oh1; oh++) {
            const int h0 = bin_start(oh, s.H, s.OH), h1 = bin_end(oh, s.H, s.OH);
            if (p.h < h0 || p.h >= h1) continue;
            for (int ow = ow0; ow < ow1; ow++) {
                const int w0 = bin_start(ow, s.W, s.OW), w1 = bin_end(ow, s.W, s.OW);
                if (p.w < w0 || p.w >= w1) continue;
                const float g = to_f32(dy[out_offset(s, p.n, oh, ow, p.c)]);
                acc += g / (float)((h1 - h0) * (w1 - w0));
            }
        }
        dx[e] = from_f32<T>(acc);
    }
}

#define POOL_ARGS int N, int H, int W, int C, int OH, int OW, int KH, int KW, int SH, int SW, int PH, int PW
#define POOL_SHAPE PoolShape{N, H, W, C, OH, OW, KH, KW, SH, SW, PH, PW}

#define POOL_ENTRY_POINTS(T, SFX)                                                                \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS                                    \
        maxpool_fwd_##SFX(const T* x, T* y, int* argmax, POOL_ARGS) {                            \
        maxpool_fwd<T>(x, y, argmax, POOL_SHAPE);                                                \
    }                                                                                            \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS                                    \
        maxpool_bwd_##SFX(const T* dy, const int* argmax, T* dx, POOL_ARGS) {                    \
        maxpool_bwd<T>(dy, argmax, dx, POOL_SHAPE);                                              \
    }                                                                                            \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS                                    \
        avgpool_fwd_##SFX(const T* x, T* y, POOL_ARGS, int count_include_pad) {                  \
        avgpool_fwd<T>(x, y, POOL_SHAPE, count_include_pad);                                     \
    }                                                                                            \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS                                    \
        avgpool_bwd_##SFX(const T* dy, T* dx, POOL_ARGS, int count_include_pad) {                \
        avgpool_bwd<T>(dy, dx, POOL_SHAPE, count_include_pad);                                   \
    }                                                                                            \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS                                    \
        adaptive_avgpool_fwd_##SFX(const T* x, T* y, POOL_ARGS) {                                \
        adaptive_avgpool_fwd<T>(x, y, POOL_SHAPE);                                               \
    }                                                                                            \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS                                    \
        adaptive_avgpool_bwd_##SFX(const T* dy, T* dx, POOL_ARGS) {                              \
        adaptive_avgpool_bwd<T>(dy, dx, POOL_SHAPE);                                             \
    }

POOL_ENTRY_POINTS(float, f32)
POOL_ENTRY_POINTS(__half, f16)
POOL_ENTRY_POINTS(__nv_bfloat16, bf16)
