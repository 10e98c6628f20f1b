// softmax_xent.cu — softmax cross-entropy over logits [N, V] (row-major)
// with i64 class targets, label smoothing and an optional ignore index;
// PyTorch's F.cross_entropy(reduction="mean") as engine/src/ops/loss.rs:
//   lse_i  = log(sum_k exp(x_ik))
//   loss_i = (1-eps)*(lse_i - x_i,t) + eps*(lse_i - mean_k x_ik)   (valid rows)
//   loss   = sum_i loss_i / |valid|
//   dx_ik  = g/|valid| * (exp(x_ik - lse_i) - (1-eps)[k == t_i] - eps/V),
//            0 on ignored rows.
//
// xent_fwd_<t>: ONE BLOCK PER ROW (grid-stride over rows), 256 threads. One
// pass over the row keeps an online (max, sum of exp) pair per thread and
// the plain sum for smoothing; the block combines them through shared
// memory. Writes per-row loss (0 on ignored rows) and lse (saved for
// backward), f32. A target outside [0, V) that is not the ignore index sets
// *bad_target = 1 (the host zeroes it; it reports the error like the CPU
// op) and contributes 0.
// xent_finalize: one block of 256; loss_out[0] = mean over valid rows,
// loss_out[1] = |valid| (as f32; 0 valid rows give NaN, which the host turns
// into the CPU backend's error).
// xent_bwd_<t>: one block per row; g = dloss[0] (the upstream gradient of
// the mean loss, on the device: no host sync). dx OVERWRITES.
#include "common.cuh"

// Merge (m2, s2) into (m, s): s = sum of exp(v - m) over the merged values.
__device__ __forceinline__ void lse_merge(float& m, float& s, float m2, float s2) {
    const float mn = fmaxf(m, m2);
    if (mn == SLMLP_NEG_INF) return;  // both empty (or all -inf): still 0
    s = s * expf(m - mn) + s2 * expf(m2 - mn);
    m = mn;
}

__device__ __forceinline__ bool row_valid(i64 t, int V, int has_ignore, i64 ignore_index) {
    return !(has_ignore && t == ignore_index) && t >= 0 && t < V;
}

template <typename T>
__device__ __forceinline__ void xent_fwd(const T* __restrict__ logits,
                                        const i64* __restrict__ targets, int N, int V,
                                        float eps, int has_ignore, i64 ignore_index,
                                        float* __restrict__ row_loss, float* __restrict__ lse_out,
                                        int* __restrict__ bad_target) {
    __shared__ float shm[SLMLP_BLOCK / 32], shs[SLMLP_BLOCK / 32], shx[SLMLP_BLOCK / 32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nwarps = blockDim.x / 32;
    for (int row = blockIdx.x; row < N; row += gridDim.x) {
        const T* x = logits + (i64)row * V;
        float m = SLMLP_NEG_INF, s = 0.0f, sx = 0.0f;
        for (int k = threadIdx.x; k < V; k += blockDim.x) {
            const float v = to_f32(x[k]);
            sx += v;
            // NaN: fmaxf ignores it, but exp(NaN - m) makes s NaN, as the CPU.
            lse_merge(m, s, v, 1.0f);
            if (isnan(v)) s = v;
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float m2 = __shfl_xor_sync(0xffffffffu, m, o);
            const float s2 = __shfl_xor_sync(0xffffffffu, s, o);
            lse_merge(m, s, m2, s2);
            sx += __shfl_xor_sync(0xffffffffu, sx, o);
        }
        __syncthreads();  // the previous row's values may still be read
        if (lane == 0) {
            shm[warp] = m;
            shs[warp] = s;
            shx[warp] = sx;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            float bm = SLMLP_NEG_INF, bs = 0.0f, bx = 0.0f;
            for (int w = 0; w < nwarps; w++) {
                lse_merge(bm, bs, shm[w], shs[w]);
                if (isnan(shs[w])) bs = shs[w];
                bx += shx[w];
            }
            const float lse = bm == SLMLP_NEG_INF ? SLMLP_NEG_INF : bm + logf(bs);
            const i64 t = targets[row];
            float loss = 0.0f;
            if (row_valid(t, V, has_ignore, ignore_index)) {
                loss = (1.0f - eps) * (lse - to_f32(x[t]));
                if (eps > 0.0f) loss += eps * (lse - bx / (float)V);
            } else if (!(has_ignore && t == ignore_index)) {
                *bad_target = 1;
            }
            row_loss[row] = loss;
            lse_out[row] = lse;
        }
    }
}

extern "C" __global__ void SLMLP_LAUNCH_BOUNDS
xent_finalize(const float* __restrict__ row_loss, const i64* __restrict__ targets, int N, int V,
              int has_ignore, i64 ignore_index, float* __restrict__ loss_out) {
    __shared__ double shl[SLMLP_BLOCK / 32];
    __shared__ int shn[SLMLP_BLOCK / 32];
    double acc = 0.0;
    int valid = 0;
    for (int i = threadIdx.x; i < N; i += blockDim.x) {
        acc += (double)row_loss[i];
        valid += row_valid(targets[i], V, has_ignore, ignore_index) ? 1 : 0;
    }
    acc = warp_sum(acc);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) valid += __shfl_xor_sync(0xffffffffu, valid, o);
    if ((threadIdx.x & 31) == 0) {
        shl[threadIdx.x >> 5] = acc;
        shn[threadIdx.x >> 5] = valid;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = 0.0;
        int nv = 0;
        for (int w = 0; w < (int)(blockDim.x / 32); w++) {
            t += shl[w];
            nv += shn[w];
        }
        loss_out[0] = nv > 0 ? (float)(t / nv) : SLMLP_NAN;
        loss_out[1] = (float)nv;
    }
}

template <typename T>
__device__ __forceinline__ void xent_bwd(const T* __restrict__ logits,
                                        const i64* __restrict__ targets,
                                        const float* __restrict__ lse,
                                        const float* __restrict__ dloss,
                                        const float* __restrict__ loss_stats, int N, int V,
                                        float eps, int has_ignore, i64 ignore_index,
                                        T* __restrict__ dx) {
    const float valid = loss_stats[1];
    const float g = valid > 0.0f ? dloss[0] / valid : 0.0f;
    const float off = eps / (float)V, hot = 1.0f - eps;
    for (int row = blockIdx.x; row < N; row += gridDim.x) {
        const T* x = logits + (i64)row * V;
        T* d = dx + (i64)row * V;
        const i64 t = targets[row];
        if (!row_valid(t, V, has_ignore, ignore_index)) {
            for (int k = threadIdx.x; k < V; k += blockDim.x) d[k] = from_f32<T>(0.0f);
            continue;
        }
        const float l = lse[row];
        for (int k = threadIdx.x; k < V; k += blockDim.x) {
            const float p = expf(to_f32(x[k]) - l);
            d[k] = from_f32<T>(g * (p - (k == t ? hot : 0.0f) - off));
        }
    }
}

#define XENT_ENTRY_POINTS(T, SFX)                                                                \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS xent_fwd_##SFX(                    \
        const T* logits, const i64* targets, int N, int V, float eps, int has_ignore,            \
        i64 ignore_index, float* row_loss, float* lse, int* bad_target) {                        \
        xent_fwd<T>(logits, targets, N, V, eps, has_ignore, ignore_index, row_loss, lse,         \
                    bad_target);                                                                 \
    }                                                                                            \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS xent_bwd_##SFX(                    \
        const T* logits, const i64* targets, const float* lse, const float* dloss,               \
        const float* loss_stats, int N, int V, float eps, int has_ignore, i64 ignore_index,      \
        T* dx) {                                                                                 \
        xent_bwd<T>(logits, targets, lse, dloss, loss_stats, N, V, eps, has_ignore,              \
                    ignore_index, dx);                                                           \
    }

XENT_ENTRY_POINTS(float, f32)
XENT_ENTRY_POINTS(__half, f16)
XENT_ENTRY_POINTS(__nv_bfloat16, bf16)
