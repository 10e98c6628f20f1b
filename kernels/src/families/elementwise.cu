// elementwise.cu — add, scale, ReLU forward/backward and dtype casts.
//
// Pure bandwidth kernels: each thread moves packs of 8 elements (one 128-bit
// access per operand for f16/bf16, two for f32) in a grid-stride loop, then
// a scalar loop finishes the n % 8 tail. The 128-bit path is taken only
// when every pointer is 16-byte aligned (the kernel checks; sub-tensor views
// may not be), otherwise the whole range runs scalar. Math is in f32;
// results are rounded to nearest-even into the output dtype. Outputs
// OVERWRITE; in-place use (out == a) is allowed, since each element is read
// before it is written by the same thread (hence no __restrict__ here).
//
// add_bcast_<t>: out[i] = a[i] + b[i % inner], the bias add of a row-major
// [.., inner] tensor and a [inner] vector (scalar loop: inner need not
// divide by 8, and the op is small next to the GEMM that feeds it).
//
// Launch: 1-D, any grid (launch.rs::elementwise picks one), 256 threads.
#include "common.cuh"

struct AddOp {
    __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};
// relu backward from the forward output y (common.cuh's relu_grad_f).
struct ReluBwdOp {
    __device__ __forceinline__ float operator()(float y, float dy) const {
        return relu_grad_f(y, dy);
    }
};
struct ScaleOp {
    float s;
    __device__ __forceinline__ float operator()(float a) const { return a * s; }
};
// NaN propagates, as in PyTorch and the CPU backend (common.cuh's relu_f).
struct ReluOp {
    __device__ __forceinline__ float operator()(float a) const { return relu_f(a); }
};
struct IdentityOp {
    __device__ __forceinline__ float operator()(float a) const { return a; }
};

template <typename TA, typename TB, typename TO, typename F>
__device__ __forceinline__ void ew_binary(const TA* a, const TB* b,
                                          TO* out, i64 n, F f) {
    const i64 stride = (i64)gridDim.x * blockDim.x;
    const i64 tid = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    i64 done = 0;
    if (aligned16(a) && aligned16(b) && aligned16(out)) {
        const i64 packs = n / SLMLP_PACK;
        for (i64 i = tid; i < packs; i += stride) {
            float va[SLMLP_PACK], vb[SLMLP_PACK];
            load_f32<TA, SLMLP_PACK>(a + i * SLMLP_PACK, va);
            load_f32<TB, SLMLP_PACK>(b + i * SLMLP_PACK, vb);
#pragma unroll
            for (int j = 0; j < SLMLP_PACK; j++) va[j] = f(va[j], vb[j]);
            store_f32<TO, SLMLP_PACK>(out + i * SLMLP_PACK, va);
        }
        done = packs * SLMLP_PACK;
    }
    for (i64 i = done + tid; i < n; i += stride) out[i] = from_f32<TO>(f(to_f32(a[i]), to_f32(b[i])));
}

template <typename TA, typename TO, typename F>
__device__ __forceinline__ void ew_unary(const TA* a, TO* out, i64 n, F f) {
    const i64 stride = (i64)gridDim.x * blockDim.x;
    const i64 tid = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    i64 done = 0;
    if (aligned16(a) && aligned16(out)) {
        const i64 packs = n / SLMLP_PACK;
        for (i64 i = tid; i < packs; i += stride) {
            float va[SLMLP_PACK];
            load_f32<TA, SLMLP_PACK>(a + i * SLMLP_PACK, va);
#pragma unroll
            for (int j = 0; j < SLMLP_PACK; j++) va[j] = f(va[j]);
            store_f32<TO, SLMLP_PACK>(out + i * SLMLP_PACK, va);
        }
        done = packs * SLMLP_PACK;
    }
    for (i64 i = done + tid; i < n; i += stride) out[i] = from_f32<TO>(f(to_f32(a[i])));
}

#define EW_ENTRY_POINTS(T, SFX)                                                                  \
    /* out = a + b */                                                                            \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS                                    \
        add_##SFX(const T* a, const T* b, T* out, i64 n) {                                       \
        ew_binary<T, T, T>(a, b, out, n, AddOp{});                                               \
    }                                                                                            \
    /* out = a * s */                                                                            \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS                                    \
        scale_##SFX(const T* a, T* out, float s, i64 n) {                                        \
        ew_unary<T, T>(a, out, n, ScaleOp{s});                                                   \
    }                                                                                            \
    /* out = relu(a), NaN propagating */                                                                        \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS                                    \
        relu_fwd_##SFX(const T* a, T* out, i64 n) {                                              \
        ew_unary<T, T>(a, out, n, ReluOp{});                                                     \
    }                                                                                            \
    /* dx = y <= 0 ? 0 : dy, y the forward output */                                              \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS                                    \
        relu_bwd_##SFX(const T* y, const T* dy, T* dx, i64 n) {                                  \
        ew_binary<T, T, T>(y, dy, dx, n, ReluBwdOp{});                                           \
    }                                                                                            \
    /* out = a + b broadcast over rows of `inner` */                                             \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS                                    \
        add_bcast_##SFX(const T* a, const T* b, T* out, i64 n, i64 inner) {                      \
        add_bcast<T>(a, b, out, n, inner);                                                       \
    }

template <typename T>
__device__ __forceinline__ void add_bcast(const T* a, const T* __restrict__ b, T* out, i64 n,
                                          i64 inner) {
    const i64 stride = (i64)gridDim.x * blockDim.x;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        out[i] = from_f32<T>(to_f32(a[i]) + to_f32(b[i % inner]));
}

EW_ENTRY_POINTS(float, f32)
EW_ENTRY_POINTS(__half, f16)
EW_ENTRY_POINTS(__nv_bfloat16, bf16)

#define CAST_ENTRY_POINT(TS, SS, TD, SD)                                                         \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS                                    \
        cast_##SS##_to_##SD(const TS* src, TD* dst, i64 n) {                                     \
        ew_unary<TS, TD>(src, dst, n, IdentityOp{});                                             \
    }

CAST_ENTRY_POINT(float, f32, __half, f16)
CAST_ENTRY_POINT(float, f32, __nv_bfloat16, bf16)
CAST_ENTRY_POINT(__half, f16, float, f32)
CAST_ENTRY_POINT(__nv_bfloat16, bf16, float, f32)
CAST_ENTRY_POINT(__half, f16, __nv_bfloat16, bf16)
CAST_ENTRY_POINT(__nv_bfloat16, bf16, __half, f16)
