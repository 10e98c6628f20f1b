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

// ---------------------------------------------------------------------------
// sub, mul, div (same shape), the unary maps, and every broadcast.
//
// sub_/mul_/div_<t>: ew_binary like add_ (dense operands, one layout).
// unary_<t>(a, out, n, op, p): out = f(a) for the op codes of
//   elementwise.rs `Unary` (0 exp, 1 log, 2 sqrt, 3 sigmoid 1/(1+exp(-x)),
//   4 tanh, 5 x + p, 6 pow(x, p), 7 step: x > 0 ? 1 : 0); the switch sits
//   outside the loop, so each op is its own specialised loop. expf, logf,
//   powf, tanhf are CUDA's accurate (not __fast) functions: within 2 ulp of
//   f32, so bf16 results equal the CPU's up to one rounding boundary.
// binary_bcast_<t>(a, b, out, n, op, v): out[i] = a[oa] (op) b[ob] for the
//   arithmetic op codes of `Arith` (0 add, 1 sub, 2 mul, 3 div), out dense
//   in its own physical order; `v` gives the output's dims in that order
//   (outermost first) and each operand's element strides for them (0 where
//   it is broadcast), so any NumPy broadcast and any operand layout (NCHW,
//   channels-last, transposed or narrowed views) runs without a copy.
//   Scalar loop (indices are per element).
#define SLMLP_BCAST_MAX_RANK 8

struct BcastView {
    int rank;
    i64 shape[SLMLP_BCAST_MAX_RANK];
    i64 a_strides[SLMLP_BCAST_MAX_RANK];
    i64 b_strides[SLMLP_BCAST_MAX_RANK];
};

struct SubOp {
    __device__ __forceinline__ float operator()(float a, float b) const { return a - b; }
};
struct MulOp {
    __device__ __forceinline__ float operator()(float a, float b) const { return a * b; }
};
struct DivOp {
    __device__ __forceinline__ float operator()(float a, float b) const { return a / b; }
};
struct ExpOp {
    __device__ __forceinline__ float operator()(float x) const { return expf(x); }
};
struct LogOp {
    __device__ __forceinline__ float operator()(float x) const { return logf(x); }
};
struct SqrtOp {
    __device__ __forceinline__ float operator()(float x) const { return sqrtf(x); }
};
struct SigmoidOp {
    __device__ __forceinline__ float operator()(float x) const { return 1.0f / (1.0f + expf(-x)); }
};
struct TanhOp {
    __device__ __forceinline__ float operator()(float x) const { return tanhf(x); }
};
struct AddScalarOp {
    float p;
    __device__ __forceinline__ float operator()(float x) const { return x + p; }
};
struct PowOp {
    float p;
    __device__ __forceinline__ float operator()(float x) const { return powf(x, p); }
};
struct StepOp {
    __device__ __forceinline__ float operator()(float x) const { return x > 0.0f ? 1.0f : 0.0f; }
};

template <typename T>
__device__ __forceinline__ void unary_map(const T* a, T* out, i64 n, int op, float p) {
    switch (op) {
        case 0: ew_unary<T, T>(a, out, n, ExpOp{}); break;
        case 1: ew_unary<T, T>(a, out, n, LogOp{}); break;
        case 2: ew_unary<T, T>(a, out, n, SqrtOp{}); break;
        case 3: ew_unary<T, T>(a, out, n, SigmoidOp{}); break;
        case 4: ew_unary<T, T>(a, out, n, TanhOp{}); break;
        case 5: ew_unary<T, T>(a, out, n, AddScalarOp{p}); break;
        case 6: ew_unary<T, T>(a, out, n, PowOp{p}); break;
        default: ew_unary<T, T>(a, out, n, StepOp{}); break;
    }
}

template <typename T, typename F>
__device__ __forceinline__ void bcast_loop(const T* a, const T* b, T* out, i64 n,
                                           const BcastView& v, F f) {
    for (i64 i = grid_start(); i < n; i += grid_stride()) {
        i64 rem = i, oa = 0, ob = 0;
        for (int d = v.rank - 1; d >= 0; --d) {
            const i64 idx = rem % v.shape[d];
            rem /= v.shape[d];
            oa += idx * v.a_strides[d];
            ob += idx * v.b_strides[d];
        }
        out[i] = from_f32<T>(f(to_f32(a[oa]), to_f32(b[ob])));
    }
}

template <typename T>
__device__ __forceinline__ void binary_bcast(const T* a, const T* b, T* out, i64 n, int op,
                                             const BcastView& v) {
    switch (op) {
        case 0: bcast_loop<T>(a, b, out, n, v, AddOp{}); break;
        case 1: bcast_loop<T>(a, b, out, n, v, SubOp{}); break;
        case 2: bcast_loop<T>(a, b, out, n, v, MulOp{}); break;
        default: bcast_loop<T>(a, b, out, n, v, DivOp{}); break;
    }
}

#define ARITH_ENTRY_POINTS(T, SFX)                                                               \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS                                               \
        sub_##SFX(const T* a, const T* b, T* out, i64 n) {                                       \
        ew_binary<T, T, T>(a, b, out, n, SubOp{});                                               \
    }                                                                                            \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS                                               \
        mul_##SFX(const T* a, const T* b, T* out, i64 n) {                                       \
        ew_binary<T, T, T>(a, b, out, n, MulOp{});                                               \
    }                                                                                            \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS                                               \
        div_##SFX(const T* a, const T* b, T* out, i64 n) {                                       \
        ew_binary<T, T, T>(a, b, out, n, DivOp{});                                               \
    }                                                                                            \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS                                               \
        unary_##SFX(const T* a, T* out, i64 n, int op, float p) {                                \
        unary_map<T>(a, out, n, op, p);                                                          \
    }                                                                                            \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS                                               \
        binary_bcast_##SFX(const T* a, const T* b, T* out, i64 n, int op, BcastView v) {         \
        binary_bcast<T>(a, b, out, n, op, v);                                                    \
    }

ARITH_ENTRY_POINTS(float, f32)
ARITH_ENTRY_POINTS(__half, f16)
ARITH_ENTRY_POINTS(__nv_bfloat16, bf16)
