// emu_device.h: what a kernel file of kernels/src/families needs to compile
// as plain C++ and run on the CPU, one CUDA thread per fiber.
//
// Force-included (g++ -include) before each family's .cu by build.py. The
// CUDA keywords become C++ (`__shared__` is a function-static, shared by the
// fibers of the one block that runs at a time), threadIdx & co. read the
// running fiber's coordinates, and every synchronisation point
// (__syncthreads, the warp votes and shuffles) is a switch back to the
// block's scheduler (emu_sched.h), which releases a barrier only when every
// thread it names has arrived. A barrier that can never be released (a
// thread gone or waiting elsewhere) fails the launch instead of hanging.
//
// Arithmetic is IEEE single/double on the host with no contraction
// (-ffp-contract=off), so the explicitly rounded intrinsics (__fmul_rn ...)
// give the GPU's bits; plain `a * b + c` may differ from the GPU's by the
// FMA rounding that nvcc/NVRTC contract into.
#pragma once
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>

#define __global__ __attribute__((visibility("default")))
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __shared__ static

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
typedef dim3 uint3;
struct alignas(16) int4 {
    int x, y, z, w;
};
struct alignas(16) float4 {
    float x, y, z, w;
};

#include "emu_sched.h"

#define threadIdx (emu::current->idx)
#define blockIdx (emu::block_idx)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)

// ---- f16 / bf16: 16-bit storage, converted with round-to-nearest-even.
struct __half {
    uint16_t bits;
};
struct __nv_bfloat16 {
    uint16_t bits;
};
inline float __half2float(__half h) {
    _Float16 f;
    std::memcpy(&f, &h.bits, 2);
    return (float)f;
}
inline __half __float2half_rn(float v) {
    _Float16 f = (_Float16)v;  // IEEE round-to-nearest-even
    __half h;
    std::memcpy(&h.bits, &f, 2);
    return h;
}
inline float __bfloat162float(__nv_bfloat16 b) {
    uint32_t u = (uint32_t)b.bits << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float v) {
    uint32_t u;
    std::memcpy(&u, &v, 4);
    __nv_bfloat16 b;
    if (std::isnan(v)) {
        b.bits = 0x7fff;  // cuda_bf16.hpp's NaN
    } else {
        b.bits = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
    return b;
}

// The intrinsics below are the ones the kernels (and self_test.cpp) use,
// and no more: a kernel that needs another fails to build here until it is
// added.

// ---- arithmetic intrinsics
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline float __double2float_rn(double d) { return (float)d; }
inline float rsqrtf(float v) { return 1.0f / sqrtf(v); }
using std::isfinite;
using std::isnan;

template <typename A, typename B>
inline auto min(A a, B b) -> decltype(a + b) {
    return b < a ? b : a;
}
template <typename A, typename B>
inline auto max(A a, B b) -> decltype(a + b) {
    return a < b ? b : a;
}

template <typename To, typename From>
inline To emu_bit_cast(From v) {
    static_assert(sizeof(To) == sizeof(From), "same size");
    To t;
    std::memcpy(&t, &v, sizeof(To));
    return t;
}
inline float __int_as_float(int v) { return emu_bit_cast<float>(v); }
inline double __longlong_as_double(long long v) { return emu_bit_cast<double>(v); }
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __ffsll(long long v) { return __builtin_ffsll(v); }

// ---- atomics: one fiber runs at a time, so a read-modify-write is atomic.
template <typename T, typename U>
inline T atomicAdd(T* p, U v) {
    T old = *p;
    *p = (T)(old + v);
    return old;
}

// ---- block and warp synchronisation
inline void __syncthreads() { emu::block_barrier(); }
inline int __syncthreads_count(int pred) { return (int)emu::block_count(pred != 0); }
inline unsigned __ballot_sync(unsigned mask, int pred) { return emu::warp_ballot(mask, pred != 0); }
inline int __any_sync(unsigned mask, int pred) { return emu::warp_ballot(mask, pred != 0) != 0; }
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    return emu::warp_shuffle(mask, v, [&](unsigned lane) { return lane ^ (unsigned)lane_mask; }, width);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return emu::warp_shuffle(mask, v, [&](unsigned lane) { return lane + delta; }, width);
}

// Every `extern "C" __global__` kernel K of the file gets
// `emu_launch_K(const emu::Launch*, void** params)` (what cuLaunchKernel
// calls) and `emu_params_K(size_t* sizes, int max)` (the size of each
// parameter, to copy them when a launch is captured into a graph).
#define EMU_EXPORT(K)                                                                    \
    extern "C" __attribute__((visibility("default"))) int emu_launch_##K(                \
        const emu::Launch* l, void** params) {                                            \
        return emu::launch(K, l, params);                                                 \
    }                                                                                     \
    extern "C" __attribute__((visibility("default"))) int emu_params_##K(size_t* sizes,  \
                                                                          int max) {      \
        return emu::param_sizes(K, sizes, max);                                           \
    }
