// loss.cu — softmax / log_softmax over one dim (forward and backward), and
// the elementwise losses BCE-with-logits and smooth-L1 (partial sums of the
// loss, and the gradient), as the CPU backend (engine/src/ops/loss/cpu.rs).
//
// softmax_fwd_<t>(x, y, outer, size, inner, log): x viewed row-major as
// [outer, size, inner]; a row is one (o, i) pair, its `size` elements
// `inner` apart. One warp per row (rows grid-strided over the warps of the
// grid), three passes over the row: the max, the sum of exp(x - max), then
// y = x - lse (log) or exp(x - lse) with lse = max + log(sum); a row of
// -inf gives NaN, as the CPU. backward: softmax_bwd_<t>(y, dy, dx, ...):
// log: dx = dy - exp(y) * sum(dy); softmax: dx = y * (dy - sum(dy * y)).
// All in f32 (warp sums in a fixed shuffle order); outputs OVERWRITE.
//
// pointwise_loss_partial_<t>(x, t, n, kind, beta, partials): one f32 sum
// per block of the elementwise loss (kind 0: BCE-with-logits
// max(x,0) - x*t + log1p(exp(-|x|)); kind 1: smooth-L1, 0.5 d^2/beta if
// |d| < beta else |d| - 0.5 beta, d = x - t), finished by reduce.cu's
// sum_finalize (in double) like sum_partial; deterministic for a fixed
// grid. pointwise_loss_bwd_<t>(x, t, dloss, n, kind, beta, dx):
// dx = (dloss / n) * f'(x, t) with f' = sigmoid(x) - t, or d/beta inside
// the quadratic zone and sign(d) (sign(0) = 0) outside; dloss is one f32
// on the device (no host read).
//
// Launch: 1-D, 256 threads, any grid (the loss partials need grid.x <=
// the workspace, reduce.rs SUM_MAX_PARTIALS).
#include "common.cuh"

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// The warp's row loop: calls f(base, lane) for each row this warp owns,
// base = the row's first element (o * size * inner + i).
template <typename F>
__device__ __forceinline__ void for_each_row(i64 outer, i64 size, i64 inner, F f) {
    const i64 warps = grid_stride() / 32;
    const int lane = threadIdx.x & 31;
    for (i64 r = grid_start() / 32; r < outer * inner; r += warps) {
        const i64 o = r / inner, i = r - o * inner;
        f(o * size * inner + i, lane);
    }
}

template <typename T>
__device__ __forceinline__ void softmax_fwd(const T* __restrict__ x, T* __restrict__ y, i64 outer,
                                            i64 size, i64 inner, int log) {
    for_each_row(outer, size, inner, [&](i64 base, int lane) {
        float m = SLMLP_NEG_INF;
        for (i64 k = lane; k < size; k += 32) m = fmaxf(m, to_f32(x[base + k * inner]));
        m = warp_max(m);
        float s = 0.0f;
        if (m != SLMLP_NEG_INF) {
            for (i64 k = lane; k < size; k += 32) s += expf(to_f32(x[base + k * inner]) - m);
        }
        s = warp_sum(s);
        const float lse = m == SLMLP_NEG_INF ? m : m + logf(s);
        for (i64 k = lane; k < size; k += 32) {
            const float lp = to_f32(x[base + k * inner]) - lse;
            y[base + k * inner] = from_f32<T>(log ? lp : expf(lp));
        }
    });
}

template <typename T>
__device__ __forceinline__ void softmax_bwd(const T* __restrict__ y, const T* __restrict__ dy,
                                            T* __restrict__ dx, i64 outer, i64 size, i64 inner,
                                            int log) {
    for_each_row(outer, size, inner, [&](i64 base, int lane) {
        float s = 0.0f;
        for (i64 k = lane; k < size; k += 32) {
            const float g = to_f32(dy[base + k * inner]);
            s += log ? g : g * to_f32(y[base + k * inner]);
        }
        s = warp_sum(s);
        for (i64 k = lane; k < size; k += 32) {
            const i64 e = base + k * inner;
            const float g = to_f32(dy[e]), v = to_f32(y[e]);
            dx[e] = from_f32<T>(log ? g - expf(v) * s : v * (g - s));
        }
    });
}

__device__ __forceinline__ float pointwise_f(int kind, float x, float t, float beta) {
    if (kind == 0) return fmaxf(x, 0.0f) - x * t + log1pf(expf(-fabsf(x)));
    const float d = fabsf(x - t);
    return d < beta ? 0.5f * d * d / beta : d - 0.5f * beta;
}

__device__ __forceinline__ float pointwise_df(int kind, float x, float t, float beta) {
    if (kind == 0) return 1.0f / (1.0f + expf(-x)) - t;
    const float d = x - t;
    if (fabsf(d) < beta) return d / beta;
    return d > 0.0f ? 1.0f : (d < 0.0f ? -1.0f : 0.0f);
}

template <typename T>
__device__ __forceinline__ void pointwise_partial(const T* __restrict__ x, const T* __restrict__ t,
                                                  i64 n, int kind, float beta,
                                                  float* __restrict__ partials) {
    __shared__ float sh[SLMLP_BLOCK / 32];
    float acc = 0.0f;
    for (i64 e = grid_start(); e < n; e += grid_stride())
        acc += pointwise_f(kind, to_f32(x[e]), to_f32(t[e]), beta);
    const float total = block_sum(acc, sh);
    if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

template <typename T>
__device__ __forceinline__ void pointwise_bwd(const T* __restrict__ x, const T* __restrict__ t,
                                              const float* __restrict__ dloss, i64 n, int kind,
                                              float beta, T* __restrict__ dx) {
    const float scale = dloss[0] / (float)n;
    for (i64 e = grid_start(); e < n; e += grid_stride())
        dx[e] = from_f32<T>(scale * pointwise_df(kind, to_f32(x[e]), to_f32(t[e]), beta));
}

#define LOSS_ENTRY_POINTS(T, SFX)                                                                \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS softmax_fwd_##SFX(                            \
        const T* x, T* y, i64 outer, i64 size, i64 inner, int log) {                             \
        softmax_fwd<T>(x, y, outer, size, inner, log);                                           \
    }                                                                                            \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS softmax_bwd_##SFX(                            \
        const T* y, const T* dy, T* dx, i64 outer, i64 size, i64 inner, int log) {               \
        softmax_bwd<T>(y, dy, dx, outer, size, inner, log);                                      \
    }                                                                                            \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS pointwise_loss_partial_##SFX(                 \
        const T* x, const T* t, i64 n, int kind, float beta, float* partials) {                  \
        pointwise_partial<T>(x, t, n, kind, beta, partials);                                     \
    }                                                                                            \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS pointwise_loss_bwd_##SFX(                     \
        const T* x, const T* t, const float* dloss, i64 n, int kind, float beta, T* dx) {        \
        pointwise_bwd<T>(x, t, dloss, n, kind, beta, dx);                                        \
    }

LOSS_ENTRY_POINTS(float, f32)
LOSS_ENTRY_POINTS(__half, f16)
LOSS_ENTRY_POINTS(__nv_bfloat16, bf16)
