// bn1d_relu.cu — the projector's BatchNorm1d (+ ReLU) over [N, C] rows, one
// kernel per direction (training mode).
//
// Why a separate kernel: the projector sits after global pooling, so N is the
// batch (e.g. 256) and C the width (2048): the whole [N, C] tensor is ~1 MB
// and L2-resident. batchnorm.cu's three launches (partials, finalize, apply)
// would be launch-bound here; instead each block owns a slice of channels for
// ALL N rows: it reduces the column statistics in shared memory, computes
// mean/invstd/running stats itself, then re-reads its slice (from L2) to
// apply. Correct for any N; efficient when N*C is small. Eval mode of the
// same layer uses batchnorm.cu (bn_eval_prepare + bn_fwd_apply with M = N).
//
// Launch (both directions): block (bx, by), bx*by == 256 (bx channel lanes
// of 8 channels each when C % 8 == 0, by row lanes), grid.x any: blocks loop
// over channel groups. Contract as batchnorm.cu: biased variance normalises,
// unbiased feeds running_var (read from the old running buffers, written to
// separate new ones: the op never writes its inputs), f32 statistics and
// parameters, outputs OVERWRITE (dweight/dbias too). relu = 0 gives plain
// BatchNorm1d. The forward saves mean, invstd and scale = invstd*weight; the
// backward recomputes the ReLU mask from x with them and the bias (as
// batchnorm.cu's BN+ReLU backward does) instead of reading y.
#include "common.cuh"

// This thread's V columns of a per-column row in shared memory.
template <int V>
__device__ __forceinline__ void load_columns(const float* sh, float (&out)[V]) {
#pragma unroll
    for (int j = 0; j < V; j++) out[j] = sh[threadIdx.x * V + j];
}

template <typename T, int V>
__device__ __forceinline__ void bn1d_fwd_body(const T* __restrict__ x,
                                              const float* __restrict__ weight,
                                              const float* __restrict__ bias,
                                              const float* __restrict__ running_mean_in,
                                              const float* __restrict__ running_var_in,
                                              float* __restrict__ running_mean_out,
                                              float* __restrict__ running_var_out, float momentum,
                                              float eps, int N, int C, int relu,
                                              T* __restrict__ y, float* __restrict__ mean_out,
                                              float* __restrict__ invstd_out,
                                              float* __restrict__ scale_out, float* sha,
                                              float* shb) {
    const int bx = blockDim.x, by = blockDim.y;
    const int tid = threadIdx.y * bx + threadIdx.x;
    for (int c0 = blockIdx.x * bx * V; c0 < C; c0 += gridDim.x * bx * V) {
        const int c = c0 + threadIdx.x * V;
        float s[V] = {}, q[V] = {}, shift[V] = {};
        if (c < C) {
            load_f32<T, V>(x + c, shift);
            for (int r = threadIdx.y; r < N; r += by) {
                float v[V];
                load_f32<T, V>(x + (i64)r * C + c, v);
                add_shifted_moments<V>(v, shift, s, q);
            }
        }
        column_sum2<V>(s, q, sha, shb);
        // One thread per column turns its sums into (mean, scale) in place.
        for (int k = tid; k < bx * V && c0 + k < C; k += bx * by) {
            const int ch = c0 + k;
            const float n = (float)N;
            const float mu = sha[k] / n;
            const float m = to_f32(x[ch]) + mu;
            const float var = fmaxf(shb[k] / n - mu * mu, 0.0f);
            const float is = rsqrtf(var + eps);
            const float sc = is * (weight ? weight[ch] : 1.0f);
            mean_out[ch] = m;
            invstd_out[ch] = is;
            if (scale_out) scale_out[ch] = sc;
            if (running_mean_out) {
                running_mean_out[ch] = (1.0f - momentum) * running_mean_in[ch] + momentum * m;
                const float unbiased = N > 1 ? var * n / (n - 1.0f) : var;
                running_var_out[ch] =
                    (1.0f - momentum) * running_var_in[ch] + momentum * unbiased;
            }
            sha[k] = m;
            shb[k] = sc;
        }
        __syncthreads();
        if (c < C) {
            float m[V], k[V], b[V];
            load_columns<V>(sha, m);
            load_columns<V>(shb, k);
            load_param<V>(bias, c, b, 0.0f);
            for (int r = threadIdx.y; r < N; r += by) {
                float v[V];
                load_f32<T, V>(x + (i64)r * C + c, v);
#pragma unroll
                for (int j = 0; j < V; j++) {
                    v[j] = fmaf(v[j] - m[j], k[j], b[j]);
                    if (relu) v[j] = relu_f(v[j]);
                }
                store_f32<T, V>(y + (i64)r * C + c, v);
            }
        }
        // column_sum2 of the next group starts with a barrier.
    }
}

// y = [relu](BN(x)); writes the batch mean/invstd and scale = invstd*weight
// (saved for backward; scale_out may be null) and, when running_mean_out /
// running_var_out are given, the new running statistics from
// running_mean_in / running_var_in. weight, bias may be null.
template <typename T>
__device__ __forceinline__ void bn1d_relu_fwd(const T* x, const float* weight, const float* bias,
                                              const float* running_mean_in,
                                              const float* running_var_in,
                                              float* running_mean_out, float* running_var_out,
                                              float momentum, float eps, int N, int C, int relu,
                                              T* y, float* mean_out, float* invstd_out,
                                              float* scale_out) {
    __shared__ float sha[SLMLP_BLOCK * SLMLP_PACK];
    __shared__ float shb[SLMLP_BLOCK * SLMLP_PACK];
    const bool vec = C % SLMLP_PACK == 0 && aligned16(x) && aligned16(y) &&
                     (!bias || aligned16(bias));
    if (vec) {
        bn1d_fwd_body<T, SLMLP_PACK>(x, weight, bias, running_mean_in, running_var_in,
                                     running_mean_out, running_var_out, momentum, eps, N, C,
                                     relu, y, mean_out, invstd_out, scale_out, sha, shb);
    } else {
        bn1d_fwd_body<T, 1>(x, weight, bias, running_mean_in, running_var_in, running_mean_out,
                            running_var_out, momentum, eps, N, C, relu, y, mean_out, invstd_out,
                            scale_out, sha, shb);
    }
}

template <typename T, int V>
__device__ __forceinline__ void bn1d_bwd_body(const T* __restrict__ x, const T* __restrict__ dy,
                                              const float* __restrict__ mean,
                                              const float* __restrict__ invstd,
                                              const float* __restrict__ weight,
                                              const float* __restrict__ scale,
                                              const float* __restrict__ bias, int N, int C,
                                              int relu, T* __restrict__ dx,
                                              float* __restrict__ dweight,
                                              float* __restrict__ dbias, float* sha, float* shb,
                                              float* shc) {
    const int bx = blockDim.x, by = blockDim.y;
    const int tid = threadIdx.y * bx + threadIdx.x;
    for (int c0 = blockIdx.x * bx * V; c0 < C; c0 += gridDim.x * bx * V) {
        const int c = c0 + threadIdx.x * V;
        float s[V] = {}, q[V] = {}, m[V], ms[V], mb[V];
        if (c < C) {
            load_param<V>(mean, c, m, 0.0f);
            load_param<V>(relu ? scale : nullptr, c, ms, 1.0f);
            load_param<V>(relu ? bias : nullptr, c, mb, 0.0f);
            for (int r = threadIdx.y; r < N; r += by) {
                const i64 e = (i64)r * C + c;
                float g[V], v[V];
                load_f32<T, V>(dy + e, g);
                load_f32<T, V>(x + e, v);
                if (relu) relu_mask_recomputed<T, V>(v, m, ms, mb, g);
                add_grad_moments<V>(g, v, m, s, q);
            }
        }
        column_sum2<V>(s, q, sha, shb);
        // dx = a*dy' + k*(x - mean) + b with a = w*invstd,
        // k = -a*invstd^2*sum(dy'(x-mean))/N, b = -a*sum(dy')/N.
        for (int k = tid; k < bx * V && c0 + k < C; k += bx * by) {
            const int ch = c0 + k;
            const float is = invstd[ch], n = (float)N;
            const float a = (weight ? weight[ch] : 1.0f) * is;
            if (dweight) dweight[ch] = shb[k] * is;
            if (dbias) dbias[ch] = sha[k];
            shc[k] = a;
            const float sk = -a * is * is * shb[k] / n;
            const float sb = -a * sha[k] / n;
            sha[k] = sk;
            shb[k] = sb;
        }
        __syncthreads();
        if (c < C) {
            float a[V], k[V], b[V];
            load_columns<V>(shc, a);
            load_columns<V>(sha, k);
            load_columns<V>(shb, b);
            for (int r = threadIdx.y; r < N; r += by) {
                const i64 e = (i64)r * C + c;
                float g[V], v[V];
                load_f32<T, V>(dy + e, g);
                load_f32<T, V>(x + e, v);
                if (relu) relu_mask_recomputed<T, V>(v, m, ms, mb, g);
#pragma unroll
                for (int j = 0; j < V; j++) v[j] = fmaf(a[j], g[j], fmaf(k[j], v[j] - m[j], b[j]));
                store_f32<T, V>(dx + e, v);
            }
        }
        __syncthreads();  // shc is rewritten by the next group's owners
    }
}

// dx, dweight, dbias of y = [relu](BN(x)) from the saved mean, invstd and
// scale; when relu, the mask is recomputed from x, mean, scale and bias (the
// forward's; bias may be null as there), not read from y.
template <typename T>
__device__ __forceinline__ void bn1d_relu_bwd(const T* x, const T* dy, const float* mean,
                                              const float* invstd, const float* weight,
                                              const float* scale, const float* bias, int N,
                                              int C, int relu, T* dx, float* dweight,
                                              float* dbias) {
    __shared__ float sha[SLMLP_BLOCK * SLMLP_PACK];
    __shared__ float shb[SLMLP_BLOCK * SLMLP_PACK];
    __shared__ float shc[SLMLP_BLOCK * SLMLP_PACK];
    const bool vec = C % SLMLP_PACK == 0 && aligned16(x) && aligned16(dy) && aligned16(dx) &&
                     aligned16(mean) &&
                     (!relu || (aligned16(scale) && (!bias || aligned16(bias))));
    if (vec) {
        bn1d_bwd_body<T, SLMLP_PACK>(x, dy, mean, invstd, weight, scale, bias, N, C, relu, dx,
                                     dweight, dbias, sha, shb, shc);
    } else {
        bn1d_bwd_body<T, 1>(x, dy, mean, invstd, weight, scale, bias, N, C, relu, dx, dweight,
                            dbias, sha, shb, shc);
    }
}

#define BN1D_ENTRY_POINTS(T, SFX)                                                                \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS bn1d_relu_fwd_##SFX(                          \
        const T* x, const float* weight, const float* bias, const float* running_mean_in,        \
        const float* running_var_in, float* running_mean_out, float* running_var_out,            \
        float momentum, float eps, int N, int C, int relu, T* y, float* mean_out,                \
        float* invstd_out, float* scale_out) {                                                   \
        bn1d_relu_fwd<T>(x, weight, bias, running_mean_in, running_var_in, running_mean_out,     \
                         running_var_out, momentum, eps, N, C, relu, y, mean_out, invstd_out,    \
                         scale_out);                                                             \
    }                                                                                            \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS bn1d_relu_bwd_##SFX(                          \
        const T* x, const T* dy, const float* mean, const float* invstd, const float* weight,    \
        const float* scale, const float* bias, int N, int C, int relu, T* dx, float* dweight,    \
        float* dbias) {                                                                          \
        bn1d_relu_bwd<T>(x, dy, mean, invstd, weight, scale, bias, N, C, relu, dx, dweight,      \
                         dbias);                                                                 \
    }

BN1D_ENTRY_POINTS(float, f32)
BN1D_ENTRY_POINTS(__half, f16)
BN1D_ENTRY_POINTS(__nv_bfloat16, bf16)
