// reduce.cu — whole-tensor sum, the all-finite check of dynamic loss
// scaling, and global average pooling over NHWC (forward and backward).
//
// sum: two launches, no atomics, so the result is deterministic:
// sum_partial_<t> (any grid G, 256 threads) leaves one f32 partial per block
// in a G-float workspace, then sum_finalize (one block of 256) adds the G
// partials in double and writes out[0] (f32). Each thread accumulates only
// ~n/(256*G) values in f32.
//
// all_finite_multi_<t> / unscale_check_f32: found_nonfinite is an int the host
// zeroes once per step; any thread that meets an inf/NaN stores 1 (a benign
// race: every writer stores the same value), so one flag can cover every
// gradient of a step, as GradScaler's found_inf does. unscale_check_f32
// also multiplies the f32 master gradients by 1/scale in place (GradScaler
// unscales even when a value overflowed). found_to_f32 copies the flag into
// an f32 tensor (1 or 0) that the trainer reads with the step's loss, so the
// check after an optimizer step costs no host read of its own. Launch: one
// block. unscale_check_f32 takes its scale from the device when scale_at is
// not null (state[0] of amp_update_scale below), else inv_scale.
//
// gap_fwd_<t>: x [N, HW, C] -> y [N, C] mean over HW. Grid (any, N), block
// (bx, by) = 256 threads like batchnorm.cu: channel lanes of 8 channels,
// row lanes striding over HW, a shared-memory column sum, one writer per
// channel. gap_bwd_<t>: dx[n, hw, c] = dy[n, c] / HW, elementwise, 1-D grid.
//
// sum_cols_<t>: x [outer, R, inner] -> y [outer, inner], summing the middle
// dim; one thread per output, so a warp reads 32 consecutive inner elements
// of each of the R rows (coalesced when inner >= 32). Launch: 1-D, any grid.
// sum_rows_<t>: x [rows, R] -> y [rows], one block per row (grid-stride over
// rows), block_sum in f32: the inner == 1 case. Launch: 1-D, 256 threads.
// Both accumulate in f32 and round once into T, as the CPU backend.
// Outputs OVERWRITE.
#include "common.cuh"

// Calls f(v) on each of x's n values (widened to f32), thread `start` of
// `stride` threads: packs of 8 when x is 16-byte aligned, then the scalar
// tail.
template <typename T, typename F>
__device__ __forceinline__ void for_each_value_of(const T* __restrict__ x, i64 n, i64 start,
                                                  i64 stride, F f) {
    i64 done = 0;
    if (aligned16(x)) {
        const i64 packs = n / SLMLP_PACK;
        for (i64 i = start; i < packs; i += stride) {
            float v[SLMLP_PACK];
            load_f32<T, SLMLP_PACK>(x + i * SLMLP_PACK, v);
#pragma unroll
            for (int j = 0; j < SLMLP_PACK; j++) f(v[j]);
        }
        done = packs * SLMLP_PACK;
    }
    for (i64 i = done + start; i < n; i += stride) f(to_f32(x[i]));
}

// for_each_value_of over the whole grid.
template <typename T, typename F>
__device__ __forceinline__ void for_each_value(const T* __restrict__ x, i64 n, F f) {
    for_each_value_of(x, n, grid_start(), grid_stride(), f);
}

template <typename T>
__device__ __forceinline__ void sum_partial(const T* __restrict__ x, i64 n,
                                           float* __restrict__ partials) {
    __shared__ float sh[SLMLP_BLOCK / 32];
    float acc = 0.0f;
    for_each_value(x, n, [&](float v) { acc += v; });
    const float total = block_sum(acc, sh);
    if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

extern "C" __global__ void SLMLP_LAUNCH_BOUNDS
sum_finalize(const float* __restrict__ partials, int count, float* __restrict__ out) {
    __shared__ double sh[SLMLP_BLOCK / 32];
    double acc = 0.0;
    for (int i = threadIdx.x; i < count; i += blockDim.x) acc += (double)partials[i];
    acc = warp_sum(acc);
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = 0.0;
        for (int w = 0; w < (int)(blockDim.x / 32); w++) t += sh[w];
        out[0] = (float)t;
    }
}

// all_finite_multi_<t>: the check over many tensors of one dtype in one
// launch (after a training step). A device list of FiniteChunk,
// each at most 64 Ki values of one tensor (built on the host by
// engine/src/ops/optim/cuda.rs's `finite_chunks`, which mirrors the struct;
// chunk starts are multiples of 8 values, so an aligned tensor's chunks
// stay aligned); block b checks chunks b, b + gridDim.x, ...
struct FiniteChunk {
    const void* x;
    i64 n;
};

template <typename T>
__device__ __forceinline__ void all_finite_multi(const FiniteChunk* __restrict__ chunks,
                                                int n_chunks, int* __restrict__ found_nonfinite) {
    bool bad = false;
    for (int c = blockIdx.x; c < n_chunks; c += gridDim.x) {
        const FiniteChunk ch = chunks[c];
        for_each_value_of(static_cast<const T*>(ch.x), ch.n, threadIdx.x, blockDim.x,
                          [&](float v) { bad |= !isfinite(v); });
    }
    // One store per warp at most.
    if (__any_sync(0xffffffffu, bad) && bad) *found_nonfinite = 1;
}

extern "C" __global__ void SLMLP_LAUNCH_BOUNDS
found_to_f32(const int* __restrict__ found_nonfinite, float* __restrict__ out) {
    if (blockIdx.x == 0 && threadIdx.x == 0) out[0] = *found_nonfinite != 0 ? 1.0f : 0.0f;
}

extern "C" __global__ void SLMLP_LAUNCH_BOUNDS
unscale_check_f32(float* __restrict__ g, i64 n, float inv_scale, const float* __restrict__ scale_at,
                  int* __restrict__ found_nonfinite) {
    if (scale_at) inv_scale = 1.0f / *scale_at;
    const i64 stride = (i64)gridDim.x * blockDim.x;
    const i64 tid = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    bool bad = false;
    i64 done = 0;
    if (aligned16(g)) {
        const i64 packs = n / 4;
        float4* g4 = reinterpret_cast<float4*>(g);
        for (i64 i = tid; i < packs; i += stride) {
            float4 v = g4[i];
            v.x *= inv_scale; v.y *= inv_scale; v.z *= inv_scale; v.w *= inv_scale;
            bad |= !(isfinite(v.x) && isfinite(v.y) && isfinite(v.z) && isfinite(v.w));
            g4[i] = v;
        }
        done = packs * 4;
    }
    for (i64 i = done + tid; i < n; i += stride) {
        const float v = g[i] * inv_scale;
        bad |= !isfinite(v);
        g[i] = v;
    }
    if (__any_sync(0xffffffffu, bad) && bad) *found_nonfinite = 1;
}

// amp_update_scale: GradScaler's _amp_update_scale_ on one thread, so that
// a loss-scaled step decides on the device (nothing read back, and a CUDA
// graph can hold the whole step). state = [scale, clean steps, skipped
// steps] in f32 (counts are exact below 2^24), found = the step's f32
// overflow flag (found_to_f32). On an overflow the scale backs off and the
// skipped count grows; otherwise after `interval` clean steps in a row the
// scale grows, unless that would overflow f32. The host's LossScaler::update
// is the same rule; engine/src/ops/optim/cpu.rs runs it in f32 like this.
extern "C" __global__ void SLMLP_LAUNCH_BOUNDS amp_update_scale(float* __restrict__ state,
                                                                 const float* __restrict__ found,
                                                                 float growth, float backoff,
                                                                 float interval) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    float scale = state[0], clean = state[1], skipped = state[2];
    if (*found != 0.0f) {
        scale *= backoff;
        clean = 0.0f;
        skipped += 1.0f;
    } else {
        skipped = 0.0f;
        clean += 1.0f;
        if (clean >= interval) {
            const float grown = scale * growth;
            if (isfinite(grown)) scale = grown;
            clean = 0.0f;
        }
    }
    state[0] = scale;
    state[1] = clean;
    state[2] = skipped;
}

template <typename T, int V>
__device__ __forceinline__ void gap_fwd_body(const T* __restrict__ x, T* __restrict__ y, int HW,
                                             int C, float* sh) {
    const int bx = blockDim.x, by = blockDim.y, n = blockIdx.y;
    const T* xn = x + (i64)n * HW * C;
    const int tid = threadIdx.y * bx + threadIdx.x;
    for (int c0 = blockIdx.x * bx * V; c0 < C; c0 += gridDim.x * bx * V) {
        const int c = c0 + threadIdx.x * V;
        float s[V];
#pragma unroll
        for (int j = 0; j < V; j++) s[j] = 0.0f;
        if (c < C) {
            for (int r = threadIdx.y; r < HW; r += by) {
                float v[V];
                load_f32<T, V>(xn + (i64)r * C + c, v);
#pragma unroll
                for (int j = 0; j < V; j++) s[j] += v[j];
            }
        }
        column_sum<V>(s, sh);
        for (int k = tid; k < bx * V && c0 + k < C; k += bx * by)
            y[(i64)n * C + c0 + k] = from_f32<T>(sh[k] / (float)HW);
    }
}

template <typename T>
__device__ __forceinline__ void gap_fwd(const T* x, T* y, int HW, int C) {
    __shared__ float sh[SLMLP_BLOCK * SLMLP_PACK];
    if (C % SLMLP_PACK == 0 && aligned16(x)) {
        gap_fwd_body<T, SLMLP_PACK>(x, y, HW, C, sh);
    } else {
        gap_fwd_body<T, 1>(x, y, HW, C, sh);
    }
}

template <typename T, int V>
__device__ __forceinline__ void gap_bwd_body(const T* __restrict__ dy, T* __restrict__ dx, int N,
                                             int HW, int C) {
    const i64 n_all = (i64)N * HW * C, packs = n_all / V;
    const i64 plane = (i64)HW * C;
    const float inv = 1.0f / (float)HW;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < packs;
         i += (i64)gridDim.x * blockDim.x) {
        const i64 e = i * V;
        const i64 n = e / plane;
        const int c = (int)(e % C);
        float g[V];
        load_f32<T, V>(dy + n * C + c, g);
#pragma unroll
        for (int j = 0; j < V; j++) g[j] *= inv;
        store_f32<T, V>(dx + e, g);
    }
}

template <typename T>
__device__ __forceinline__ void gap_bwd(const T* dy, T* dx, int N, int HW, int C) {
    if (C % SLMLP_PACK == 0 && aligned16(dy) && aligned16(dx)) {
        gap_bwd_body<T, SLMLP_PACK>(dy, dx, N, HW, C);
    } else {
        gap_bwd_body<T, 1>(dy, dx, N, HW, C);
    }
}

template <typename T>
__device__ __forceinline__ void sum_cols(const T* __restrict__ x, T* __restrict__ y, i64 outer,
                                         i64 R, i64 inner) {
    const i64 n = outer * inner;
    for (i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += (i64)gridDim.x * blockDim.x) {
        const i64 o = e / inner, i = e - o * inner;
        const T* p = x + o * R * inner + i;
        float acc = 0.0f;
        for (i64 r = 0; r < R; r++) acc += to_f32(p[r * inner]);
        y[e] = from_f32<T>(acc);
    }
}

template <typename T>
__device__ __forceinline__ void sum_rows(const T* __restrict__ x, T* __restrict__ y, i64 rows,
                                         i64 R) {
    __shared__ float sh[SLMLP_BLOCK / 32];
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const T* p = x + row * R;
        float acc = 0.0f;
        for (i64 k = threadIdx.x; k < R; k += blockDim.x) acc += to_f32(p[k]);
        const float total = block_sum(acc, sh);
        if (threadIdx.x == 0) y[row] = from_f32<T>(total);
    }
}

#define REDUCE_ENTRY_POINTS(T, SFX)                                                              \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS                                    \
        sum_partial_##SFX(const T* x, i64 n, float* partials) {                                  \
        sum_partial<T>(x, n, partials);                                                          \
    }                                                                                            \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS                                    \
        all_finite_multi_##SFX(const FiniteChunk* chunks, int n_chunks, int* found_nonfinite) {  \
        all_finite_multi<T>(chunks, n_chunks, found_nonfinite);                                  \
    }                                                                                            \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS                                    \
        gap_fwd_##SFX(const T* x, T* y, int HW, int C) {                                         \
        gap_fwd<T>(x, y, HW, C);                                                                 \
    }                                                                                            \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS                                    \
        gap_bwd_##SFX(const T* dy, T* dx, int N, int HW, int C) {                                \
        gap_bwd<T>(dy, dx, N, HW, C);                                                            \
    }                                                                                            \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS                                    \
        sum_cols_##SFX(const T* x, T* y, i64 outer, i64 R, i64 inner) {                          \
        sum_cols<T>(x, y, outer, R, inner);                                                      \
    }                                                                                            \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS                                    \
        sum_rows_##SFX(const T* x, T* y, i64 rows, i64 R) {                                      \
        sum_rows<T>(x, y, rows, R);                                                              \
    }

REDUCE_ENTRY_POINTS(float, f32)
REDUCE_ENTRY_POINTS(__half, f16)
REDUCE_ENTRY_POINTS(__nv_bfloat16, bf16)
