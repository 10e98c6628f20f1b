// index.cu — index_select along one dim (and its backward, index_add), and
// sort / top-k along the last dim (engine/src/ops/index/).
//
// index_select: x is row-major [outer, size, inner], index i64 [m], out
// row-major [outer, m, inner]; out[o, j, i] = x[o, index[j], i]. Elements
// move as raw bits of 1, 2, 4 or 8 bytes (every dtype). An index outside
// [0, size) reads nothing and writes 0 (never an out-of-bounds access; the
// engine checks host indices before upload).
//
// index_add: dx f32 [outer, size, inner] (zeroed by the caller) +=
// dy[o, j, i] at row index[j], by f32 atomicAdd: with repeated indices the
// summation order varies between runs (not bitwise deterministic); with
// distinct indices every dx element gets at most one addition. Indices out
// of range add nothing.
//
// Sort: per row of n elements, a bitonic sort over a padded power-of-two
// length P of (f32 key, int32 position) pairs in global memory: sort_init
// fills the pairs (position >= n marks padding), one sort_step launch per
// (k, j) stage (log2(P) * (log2(P) + 1) / 2 launches), sort_gather writes
// the first `k` of each row: values copied from x (exact) and i64 indices.
// The order is a strict total order, so the result is unique and equals a
// stable sort: descending puts NaN first, then larger keys; ascending puts
// smaller keys first and NaN last; equal keys (and -0 == +0) by lower
// position; padding last. Keys are the elements widened to f32 (exact for
// f32, f16, bf16).
//
// Top 1 (k = 1, the argmax of a classifier's logits): sort_top1 reads each
// row once and keeps the first element in the same `sort_before` order, one
// block a row (a grid-stride loop over rows): each thread scans a strided
// slice, then the block reduces the (key, position) pairs. The order is
// total, so the reduction's result is the sort's first element, whatever
// the order in which the pairs meet. One launch, no scratch, instead of
// the sort's log2(P)(log2(P)+1)/2 + 2.
//
// Launch: every other kernel is a grid-stride loop over its elements (any
// grid is correct), 256 threads a block. sort_step: thread e owns position
// i = e % P of row e / P and swaps with l = i ^ j only when l > i, so
// every pair is touched by exactly one thread per stage.
#include "common.cuh"

template <typename E>
__device__ __forceinline__ void index_select(const E* __restrict__ x, const i64* __restrict__ index,
                                             E* __restrict__ out, i64 outer, i64 size, i64 inner,
                                             i64 m) {
    const i64 n = outer * m * inner;
    for (i64 e = grid_start(); e < n; e += grid_stride()) {
        const i64 i = e % inner;
        const i64 j = (e / inner) % m;
        const i64 o = e / (inner * m);
        const i64 s = index[j];
        E v;
        if (s >= 0 && s < size) {
            v = x[(o * size + s) * inner + i];
        } else {
            v = (E)0;
        }
        out[e] = v;
    }
}

#define INDEX_SELECT_ENTRY(E, SFX)                                                               \
    extern "C" __global__ SLMLP_LAUNCH_BOUNDS void index_select_##SFX(                          \
        const E* __restrict__ x, const i64* __restrict__ index, E* __restrict__ out, i64 outer, \
        i64 size, i64 inner, i64 m) {                                                            \
        index_select<E>(x, index, out, outer, size, inner, m);                                   \
    }

INDEX_SELECT_ENTRY(unsigned char, 1)
INDEX_SELECT_ENTRY(unsigned short, 2)
INDEX_SELECT_ENTRY(unsigned int, 4)
INDEX_SELECT_ENTRY(unsigned long long, 8)

template <typename T>
__device__ __forceinline__ void index_add(const T* __restrict__ dy, const i64* __restrict__ index,
                                          float* __restrict__ dx, i64 outer, i64 size, i64 inner,
                                          i64 m) {
    const i64 n = outer * m * inner;
    for (i64 e = grid_start(); e < n; e += grid_stride()) {
        const i64 i = e % inner;
        const i64 j = (e / inner) % m;
        const i64 o = e / (inner * m);
        const i64 s = index[j];
        if (s >= 0 && s < size) atomicAdd(&dx[(o * size + s) * inner + i], to_f32(dy[e]));
    }
}

// Whether (ka, pa) comes strictly before (kb, pb) in a row of n elements.
__device__ __forceinline__ bool sort_before(float ka, int pa, float kb, int pb, int n,
                                            int descending) {
    const bool pad_a = pa >= n, pad_b = pb >= n;
    if (pad_a || pad_b) return pad_a == pad_b ? pa < pb : pad_b;
    const bool nan_a = isnan(ka), nan_b = isnan(kb);
    if (nan_a || nan_b) {
        if (nan_a && nan_b) return pa < pb;
        // NaN is the largest: first when descending, last when ascending
        return descending ? nan_a : nan_b;
    }
    if (ka != kb) return descending ? ka > kb : ka < kb;
    return pa < pb;
}

template <typename T>
__device__ __forceinline__ void sort_init(const T* __restrict__ x, float* __restrict__ keys,
                                          int* __restrict__ pos, i64 rows, int n, int p2) {
    const i64 total = rows * p2;
    for (i64 e = grid_start(); e < total; e += grid_stride()) {
        const int i = (int)(e % p2);
        const i64 r = e / p2;
        keys[e] = i < n ? to_f32(x[r * n + i]) : 0.0f;
        pos[e] = i;
    }
}

template <typename T>
__device__ __forceinline__ void sort_gather(const T* __restrict__ x, const int* __restrict__ pos,
                                            T* __restrict__ values, i64* __restrict__ indices,
                                            i64 rows, int n, int p2, int k) {
    const i64 total = rows * k;
    for (i64 e = grid_start(); e < total; e += grid_stride()) {
        const i64 r = e / k;
        const int j = (int)(e % k);
        const int p = pos[r * p2 + j];
        values[e] = x[r * n + p];
        indices[e] = p;
    }
}

// Every lane of the warp ends with the first of the warp's 32 (key,
// position) pairs in `sort_before` order.
__device__ __forceinline__ void warp_first(float& k, int& p, int n, int descending) {
    for (int o = 16; o > 0; o >>= 1) {
        const float ko = __shfl_xor_sync(0xffffffffu, k, o);
        const int po = __shfl_xor_sync(0xffffffffu, p, o);
        if (sort_before(ko, po, k, p, n, descending)) {
            k = ko;
            p = po;
        }
    }
}

template <typename T>
__device__ __forceinline__ void sort_top1(const T* __restrict__ x, T* __restrict__ values,
                                          i64* __restrict__ indices, i64 rows, int n,
                                          int descending) {
    __shared__ float shk[SLMLP_BLOCK / 32];
    __shared__ int shp[SLMLP_BLOCK / 32];
    const int t = threadIdx.x, warps = blockDim.x / 32;
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        // position n is padding: after every element
        float k = 0.0f;
        int p = n;
        for (int i = t; i < n; i += blockDim.x) {
            const float v = to_f32(x[r * n + i]);
            if (sort_before(v, i, k, p, n, descending)) {
                k = v;
                p = i;
            }
        }
        warp_first(k, p, n, descending);
        if ((t & 31) == 0) {
            shk[t >> 5] = k;
            shp[t >> 5] = p;
        }
        __syncthreads();
        if (t < 32) {
            k = t < warps ? shk[t] : 0.0f;
            p = t < warps ? shp[t] : n;
            warp_first(k, p, n, descending);
            if (t == 0) {
                values[r] = x[r * n + p];
                indices[r] = p;
            }
        }
        __syncthreads();  // shk/shp are reused by the next row
    }
}

#define INDEX_TYPED_ENTRIES(T, SFX)                                                               \
    extern "C" __global__ SLMLP_LAUNCH_BOUNDS void index_add_##SFX(                               \
        const T* __restrict__ dy, const i64* __restrict__ index, float* __restrict__ dx,          \
        i64 outer, i64 size, i64 inner, i64 m) {                                                  \
        index_add<T>(dy, index, dx, outer, size, inner, m);                                       \
    }                                                                                             \
    extern "C" __global__ SLMLP_LAUNCH_BOUNDS void sort_init_##SFX(                               \
        const T* __restrict__ x, float* __restrict__ keys, int* __restrict__ pos, i64 rows, int n, \
        int p2) {                                                                                 \
        sort_init<T>(x, keys, pos, rows, n, p2);                                                  \
    }                                                                                             \
    extern "C" __global__ SLMLP_LAUNCH_BOUNDS void sort_gather_##SFX(                             \
        const T* __restrict__ x, const int* __restrict__ pos, T* __restrict__ values,             \
        i64* __restrict__ indices, i64 rows, int n, int p2, int k) {                              \
        sort_gather<T>(x, pos, values, indices, rows, n, p2, k);                                  \
    }                                                                                             \
    extern "C" __global__ SLMLP_LAUNCH_BOUNDS void sort_top1_##SFX(                               \
        const T* __restrict__ x, T* __restrict__ values, i64* __restrict__ indices, i64 rows,     \
        int n, int descending) {                                                                  \
        sort_top1<T>(x, values, indices, rows, n, descending);                                    \
    }

INDEX_TYPED_ENTRIES(float, f32)
INDEX_TYPED_ENTRIES(f16, f16)
INDEX_TYPED_ENTRIES(bf16, bf16)

// One bitonic stage (k, j) over every row: the block of size k containing
// i sorts in `sort_before` order when (i & k) == 0, in reverse otherwise;
// after the last stage (k = P, j = 1) every row is in `sort_before` order.
extern "C" __global__ SLMLP_LAUNCH_BOUNDS void sort_step(float* __restrict__ keys,
                                                         int* __restrict__ pos, i64 rows, int n,
                                                         int p2, int k, int j, int descending) {
    const i64 total = rows * p2;
    for (i64 e = grid_start(); e < total; e += grid_stride()) {
        const int i = (int)(e % p2);
        const int l = i ^ j;
        if (l <= i) continue;
        const i64 a = e, b = e - i + l;
        const float ka = keys[a], kb = keys[b];
        const int pa = pos[a], pb = pos[b];
        const bool forward = (i & k) == 0;
        const bool swap = forward ? sort_before(kb, pb, ka, pa, n, descending)
                                  : sort_before(ka, pa, kb, pb, n, descending);
        if (swap) {
            keys[a] = kb;
            keys[b] = ka;
            pos[a] = pb;
            pos[b] = pa;
        }
    }
}
