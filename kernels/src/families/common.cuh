// common.cuh — helpers shared by every slmlp kernel file.
//
// Handed to NVRTC as an in-memory header ("common.cuh"), so every .cu file
// starts with `#include "common.cuh"`. Conventions all kernels follow:
// - Data is f32, f16 (__half) or bf16 (__nv_bfloat16); arithmetic and every
//   accumulator is f32 (reductions that combine many partials use double).
// - Element loops are grid-stride loops: any grid size is correct, the host
//   only picks one for speed (kernels/src/launch.rs and the family's .rs). Kernels that reduce
//   over rows also loop over channel groups, so their grid is free too.
// - 128-bit paths are taken only when every pointer is 16-byte aligned (and
//   the channel count divides by the pack width): the kernel checks this
//   itself, uniformly for the whole grid, and otherwise runs a scalar path.
// - Entry points are extern "C" wrappers around templates, one per dtype,
//   named <kernel>_<f32|f16|bf16>.
#pragma once
#include <cuda_fp16.h>
#include <cuda_bf16.h>

typedef __nv_bfloat16 bf16;
typedef __half f16;
typedef long long i64;

// Threads per block of every kernel that reduces through shared memory; the
// host (launch.rs: BLOCK_THREADS) must launch exactly this many.
#define SLMLP_BLOCK 256
// Every entry point is declared with this. The second argument matters: with
// a bare __launch_bounds__(256), CUDA 13's ptxas aims for full occupancy (8
// blocks/SM = 32 registers a thread) and SPILLS to get there (measured:
// avgpool_bwd_f32 at 32 registers with 24 bytes of spill stores). Asking
// for at least 2 resident blocks caps registers at 128 instead, which every
// kernel here fits in without spills, and leaves ptxas free below that.
#define SLMLP_LAUNCH_BOUNDS __launch_bounds__(SLMLP_BLOCK, 2)
// Elements per vector pack: 16 bytes of f16/bf16, 32 bytes (two 128-bit
// accesses) of f32. One width for all dtypes keeps the channel rule simple:
// vector paths need C % 8 == 0.
#define SLMLP_PACK 8

// NVRTC has no <math.h> macros (INFINITY, NAN).
#define SLMLP_NEG_INF (__int_as_float(0xff800000))
#define SLMLP_NAN (__int_as_float(0x7fc00000))

// Grid-stride loop over [0, n): for (i64 e = grid_start(); e < n; e += grid_stride()).
__device__ __forceinline__ i64 grid_start() { return (i64)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ i64 grid_stride() { return (i64)gridDim.x * blockDim.x; }

// Coordinates of flat element e of a [N, H, W, C] tensor, C innermost.
struct Nhwc {
    int n, h, w, c;
};

__device__ __forceinline__ Nhwc nhwc(i64 e, int H, int W, int C) {
    Nhwc p;
    p.c = (int)(e % C);
    i64 t = e / C;
    p.w = (int)(t % W);
    t /= W;
    p.h = (int)(t % H);
    p.n = (int)(t / H);
    return p;
}

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}

__device__ __forceinline__ bool aligned16(const void* p) {
    return (reinterpret_cast<unsigned long long>(p) & 15ull) == 0;
}

// N elements moved as N*sizeof(T)/16 128-bit accesses (N*sizeof(T) % 16 == 0).
template <typename T, int N>
struct alignas(16) Pack {
    T v[N];
};

template <typename T, int N>
__device__ __forceinline__ void load_f32(const T* p, float (&out)[N]) {
    if constexpr (N == 1) {
        out[0] = to_f32(*p);
    } else {
        static_assert((N * sizeof(T)) % 16 == 0, "pack must be whole 128-bit words");
        Pack<T, N> pk;
        const int4* src = reinterpret_cast<const int4*>(p);
        int4* dst = reinterpret_cast<int4*>(&pk);
#pragma unroll
        for (int i = 0; i < (int)(N * sizeof(T) / 16); i++) dst[i] = src[i];
#pragma unroll
        for (int i = 0; i < N; i++) out[i] = to_f32(pk.v[i]);
    }
}

template <typename T, int N>
__device__ __forceinline__ void store_f32(T* p, const float (&in)[N]) {
    if constexpr (N == 1) {
        *p = from_f32<T>(in[0]);
    } else {
        Pack<T, N> pk;
#pragma unroll
        for (int i = 0; i < N; i++) pk.v[i] = from_f32<T>(in[i]);
        const int4* src = reinterpret_cast<const int4*>(&pk);
        int4* dst = reinterpret_cast<int4*>(p);
#pragma unroll
        for (int i = 0; i < (int)(N * sizeof(T) / 16); i++) dst[i] = src[i];
    }
}

// Per-channel f32 parameters; vector loads need 16-byte alignment of p + c,
// which holds when the base is aligned and c % 4 == 0.
template <int N>
__device__ __forceinline__ void load_param(const float* p, int c, float (&out)[N], float dflt) {
    if (p == nullptr) {
#pragma unroll
        for (int i = 0; i < N; i++) out[i] = dflt;
    } else if constexpr (N % 4 == 0) {
#pragma unroll
        for (int i = 0; i < N; i += 4) {
            float4 q = *reinterpret_cast<const float4*>(p + c + i);
            out[i] = q.x; out[i + 1] = q.y; out[i + 2] = q.z; out[i + 3] = q.w;
        }
    } else {
#pragma unroll
        for (int i = 0; i < N; i++) out[i] = p[c + i];
    }
}

// ReLU as PyTorch's: NaN propagates (fmaxf alone would map NaN to 0 and
// hide a diverged run), otherwise max(v, 0).
__device__ __forceinline__ float relu_f(float v) { return isnan(v) ? v : fmaxf(v, 0.0f); }

// ReLU's backward from its output, as torch's threshold_backward: dy where
// out > 0 or out is NaN, 0 where out <= 0.
__device__ __forceinline__ float relu_grad_f(float out, float dy) { return out <= 0.0f ? 0.0f : dy; }

// BN+ReLU's dy' without the forward output (batchnorm.cu, bn1d_relu.cu):
// y's pre-activation recomputed from x as the forward computed it
// (fmaf(x - mean, scale, bias) in f32, with the same saved mean and scale,
// the same bias and the same null defaults), rounded to T as store_f32
// rounded y and widened back, then masked as relu_grad_f masks by y. This
// is y's mask bit for bit: for p <= 0, y = T(relu(p)) is +-0 and
// T(p) <= 0 (rounding keeps the sign); for p > 0, y = T(p) exactly (0 when
// a tiny p underflows f16, which the round trip reproduces); a NaN p gives
// a NaN y and a NaN T(p), both let dy through. f32: T(p) = p.
template <typename T, int V>
__device__ __forceinline__ void relu_mask_recomputed(const float (&v)[V], const float (&m)[V],
                                                     const float (&k)[V], const float (&b)[V],
                                                     float (&g)[V]) {
#pragma unroll
    for (int j = 0; j < V; j++) {
        const float y = to_f32(from_f32<T>(fmaf(v[j] - m[j], k[j], b[j])));
        g[j] = relu_grad_f(y, g[j]);
    }
}

// g = the V elements of dy at e, masked by relu_grad_f when relu (a ReLU's
// backward; out is only read then).
template <typename T, int V>
__device__ __forceinline__ void relu_grad(const T* dy, const T* out, bool relu, i64 e,
                                          float (&g)[V]) {
    load_f32<T, V>(dy + e, g);
    if (relu) {
        float o[V];
        load_f32<T, V>(out + e, o);
#pragma unroll
        for (int j = 0; j < V; j++) g[j] = relu_grad_f(o[j], g[j]);
    }
}

// BatchNorm's per-channel moments, one pack of V channels at a time.
// Forward: s += d, q += d*d with d = v - shift (moments shifted by a
// channel's first value, batchnorm.cu). Backward: s += g, q += g*(v - m).
template <int V>
__device__ __forceinline__ void add_shifted_moments(const float (&v)[V], const float (&shift)[V],
                                                    float (&s)[V], float (&q)[V]) {
#pragma unroll
    for (int j = 0; j < V; j++) {
        const float d = v[j] - shift[j];
        s[j] += d;
        q[j] = fmaf(d, d, q[j]);
    }
}

template <int V>
__device__ __forceinline__ void add_grad_moments(const float (&g)[V], const float (&v)[V],
                                                 const float (&m)[V], float (&s)[V],
                                                 float (&q)[V]) {
#pragma unroll
    for (int j = 0; j < V; j++) {
        s[j] += g[j];
        q[j] = fmaf(g[j], v[j] - m[j], q[j]);
    }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum over the whole block (blockDim.x * blockDim.y <= SLMLP_BLOCK, a multiple
// of 32); every thread gets the total. `sh` holds SLMLP_BLOCK / 32 floats.
__device__ __forceinline__ float block_sum(float v, float* sh) {
    const int tid = threadIdx.y * blockDim.x + threadIdx.x;
    const int nwarps = (blockDim.x * blockDim.y) / 32;
    v = warp_sum(v);
    __syncthreads();  // sh may still be read by a previous call
    if ((tid & 31) == 0) sh[tid >> 5] = v;
    __syncthreads();
    float t = 0.0f;
    for (int w = 0; w < nwarps; w++) t += sh[w];
    return t;
}

// Column sums for the "channels x rows" block shape of the NHWC reductions:
// thread (tx, ty) holds a[V], b[V] for columns tx*V .. tx*V+V-1 of its rows.
// Afterwards sha[k], shb[k] hold the totals over ty of column k, for
// k < blockDim.x * V (every thread may read them). Each column is summed by
// one thread in a fixed order, so the result is deterministic.
// sha, shb: SLMLP_BLOCK * V floats each.
template <int V>
__device__ __forceinline__ void column_sum2(const float (&a)[V], const float (&b)[V], float* sha,
                                            float* shb) {
    const int bx = blockDim.x, by = blockDim.y;
    const int tid = threadIdx.y * bx + threadIdx.x;
    const int cols = bx * V;
    __syncthreads();  // the previous channel group's totals may still be read
#pragma unroll
    for (int j = 0; j < V; j++) {
        sha[threadIdx.y * cols + threadIdx.x * V + j] = a[j];
        shb[threadIdx.y * cols + threadIdx.x * V + j] = b[j];
    }
    __syncthreads();
    for (int k = tid; k < cols; k += bx * by) {
        float sa = 0.0f, sb = 0.0f;
        for (int y = 0; y < by; y++) {
            sa += sha[y * cols + k];
            sb += shb[y * cols + k];
        }
        // Row 0 of column k is read only by this thread: safe to overwrite.
        sha[k] = sa;
        shb[k] = sb;
    }
    __syncthreads();
}

// Single-accumulator version of column_sum2 (sha: SLMLP_BLOCK * V floats).
template <int V>
__device__ __forceinline__ void column_sum(const float (&a)[V], float* sha) {
    const int bx = blockDim.x, by = blockDim.y;
    const int tid = threadIdx.y * bx + threadIdx.x;
    const int cols = bx * V;
    __syncthreads();
#pragma unroll
    for (int j = 0; j < V; j++) sha[threadIdx.y * cols + threadIdx.x * V + j] = a[j];
    __syncthreads();
    for (int k = tid; k < cols; k += bx * by) {
        float sa = 0.0f;
        for (int y = 0; y < by; y++) sa += sha[y * cols + k];
        sha[k] = sa;
    }
    __syncthreads();
}

// Channel of flat element e of an [M, C] tensor, 32-bit division when the
// tensor is small enough (every ResNet-50 activation at batch 256 is).
__device__ __forceinline__ int channel_of(i64 e, int C, bool small) {
    return small ? (int)((unsigned)e % (unsigned)C) : (int)(e % (i64)C);
}
