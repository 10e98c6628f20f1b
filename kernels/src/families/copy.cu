// copy.cu — gather a strided view into a dense buffer.
//
// dst is written in its own physical order (index i = 0..n-1); `shape` and
// `src_strides` are the view's dims and source strides permuted into that
// order (innermost last), so one kernel turns NCHW into channels-last, a
// transposed matrix into a contiguous one, or a narrowed view into a
// compact copy. Elements are moved as raw bits of 1, 2, 4 or 8 bytes.
//
// strided_assign_<B>: the same walk with a destination that is a strided
// view too (dst[dst_off] = src[src_off]): writing one tensor into a part of
// another (cat's inputs into their slices of the output, narrow's gradient
// into a zeroed tensor), any layout on either side. The host orders the
// dims by the destination's strides, so writes are coalesced.
#include "common.cuh"

#define SLMLP_COPY_MAX_RANK 8

struct StridedView {
    int rank;
    i64 shape[SLMLP_COPY_MAX_RANK];
    i64 src_strides[SLMLP_COPY_MAX_RANK];
};

template <typename T>
__device__ __forceinline__ void strided_copy(const T* __restrict__ src, T* __restrict__ dst, i64 n,
                                             const StridedView& v) {
    const i64 stride = (i64)gridDim.x * blockDim.x;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        i64 rem = i, off = 0;
        for (int d = v.rank - 1; d >= 0; --d) {
            const i64 idx = rem % v.shape[d];
            rem /= v.shape[d];
            off += idx * v.src_strides[d];
        }
        dst[i] = src[off];
    }
}

#define COPY_ENTRY_POINT(T, B)                                                                   \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS strided_copy_##B(const T* src, T* dst, i64 n, \
                                                                    StridedView v) {             \
        strided_copy<T>(src, dst, n, v);                                                         \
    }

COPY_ENTRY_POINT(unsigned char, 1)
COPY_ENTRY_POINT(unsigned short, 2)
COPY_ENTRY_POINT(unsigned int, 4)
COPY_ENTRY_POINT(unsigned long long, 8)

struct StridedPair {
    int rank;
    i64 shape[SLMLP_COPY_MAX_RANK];
    i64 src_strides[SLMLP_COPY_MAX_RANK];
    i64 dst_strides[SLMLP_COPY_MAX_RANK];
};

template <typename T>
__device__ __forceinline__ void strided_assign(const T* __restrict__ src, T* __restrict__ dst,
                                               i64 n, const StridedPair& v) {
    for (i64 i = grid_start(); i < n; i += grid_stride()) {
        i64 rem = i, so = 0, d_off = 0;
        for (int d = v.rank - 1; d >= 0; --d) {
            const i64 idx = rem % v.shape[d];
            rem /= v.shape[d];
            so += idx * v.src_strides[d];
            d_off += idx * v.dst_strides[d];
        }
        dst[d_off] = src[so];
    }
}

#define ASSIGN_ENTRY_POINT(T, B)                                                                 \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS strided_assign_##B(const T* src, T* dst,      \
                                                                      i64 n, StridedPair v) {    \
        strided_assign<T>(src, dst, n, v);                                                       \
    }

ASSIGN_ENTRY_POINT(unsigned char, 1)
ASSIGN_ENTRY_POINT(unsigned short, 2)
ASSIGN_ENTRY_POINT(unsigned int, 4)
ASSIGN_ENTRY_POINT(unsigned long long, 8)
