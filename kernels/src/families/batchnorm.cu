// batchnorm.cu — BatchNorm over NHWC activations, plain and fused with ReLU
// and with residual-add + ReLU: training forward, eval forward, backward.
//
// Contract (engine/src/ops/batchnorm/cpu.rs is the reference): x is viewed as
// [M, C] with M = N*H*W and C innermost. Statistics are per channel over all
// M rows; the biased variance normalises, the unbiased one (M/(M-1)) feeds
// running_var; new running = (1-momentum)*old running + momentum*batch,
// read from the old buffers and written to separate new ones (the op is
// functional: it never writes its inputs). Statistics, weight, bias and
// running buffers are f32 whatever the data dtype.
//
// Why this shape: in NHWC a channel's values are strided by C, so one
// thread per channel would read uncoalesced. A block is (blockDim.x channel
// lanes) x (blockDim.y row lanes), 256 threads; each lane holds a pack of 8
// consecutive channels (one 128-bit load of bf16/f16), a warp reads whole
// rows, and the row lanes of the whole grid (gridDim.y splits) stride over
// M. Partial sums go to a workspace [2][C][S] (S = gridDim.y) and a second,
// tiny kernel combines them per channel in double: two-level, deterministic
// (no atomics), and f32 accumulation per thread only over ~M/(S*blockDim.y)
// rows. Moments are shifted by each channel's first value x[0, c], which
// removes the E[x^2]-E[x]^2 cancellation for channels with |mean| >> std.
//
// Passes over the [M, C] tensors (the per-channel kernels touch [C] only):
// Forward (training):  bn_fwd_stats (read x) -> bn_fwd_finalize ->
//                      bn_fwd_apply (read x [+ residual], write y)
// Forward (eval):      bn_eval_prepare -> bn_fwd_apply
// Backward:            bn_bwd_reduce (read x, dy [+ out]; [write dresidual])
//                      -> bn_bwd_finalize -> bn_bwd_dx (read x, dy [+ out], write dx)
// The forward saves mean, invstd and scale = invstd*weight (f32 [C]) for
// the backward. With dy' = dy zeroed where the ReLU's output is <= 0 (dy
// for plain BN):
//   dweight = sum(dy' * xhat), dbias = sum(dy'),
//   dx = (w*invstd/M) * (M*dy' - sum(dy') - xhat*sum(dy'*xhat))
//      = a*dy' + k*(x - mean) + b  per channel (k = b = 0 in eval),
//   dresidual = dy' (written by bn_bwd_reduce, which already computes it).
// The ReLU mask: BN+ReLU (relu = 1) recomputes it from x, mean, scale and
// bias exactly as bn_apply_body computed y (relu_mask_recomputed), so the
// backward never reads y: 5 tensor passes (reduce: x, dy; dx: x, dy, dx)
// instead of 7. add+ReLU reads the forward output `out` (its mask needs the
// residual, which is not saved; reading out costs the same); bn_bwd_dx then
// reads the masked gradient the reduce wrote to dresidual instead of dy and
// out.
// The elementwise passes walk the tensor from its end towards its start
// (bn_apply_body explains why: L2 reuse of the reduction's last reads).
// Every output here OVERWRITES its buffer (dweight/dbias included): the
// engine's autograd sums gradients of shared parameters itself. Outputs
// never alias inputs (pointers are __restrict__): y != x, dx != dy, new
// running statistics != old ones.
// Workspace (f32, kernels/src/families/batchnorm.rs): forward training
// [2][C][S] partials (bn_fwd_workspace_floats; eval needs none); backward
// the partials rounded up to 16 bytes, then the 3*C dx coefficients
// (bn_bwd_workspace_floats).
#include "common.cuh"

// After column_sum2 of channel group c0: the block's column totals into
// partial[0][c][blockIdx.y] and partial[1][c][blockIdx.y] ([2][C][S]).
template <int V>
__device__ __forceinline__ void store_partials(const float* sha, const float* shb, int c0, int C,
                                               float* __restrict__ partial) {
    const int bx = blockDim.x, by = blockDim.y, S = gridDim.y;
    const int tid = threadIdx.y * bx + threadIdx.x;
    for (int k = tid; k < bx * V && c0 + k < C; k += bx * by) {
        partial[(i64)(c0 + k) * S + blockIdx.y] = sha[k];
        partial[(i64)C * S + (i64)(c0 + k) * S + blockIdx.y] = shb[k];
    }
}

// The finalize kernels: one warp per channel, blockDim.x / 32 channels a
// block. Returns this warp's channel; s, q get the sums (in double) of its
// S partials of each half.
__device__ __forceinline__ int sum_partials(const float* __restrict__ partial, int S, int C,
                                            double& s, double& q) {
    const int lane = threadIdx.x & 31;
    const int c = blockIdx.x * (blockDim.x / 32) + (threadIdx.x >> 5);
    s = 0.0;
    q = 0.0;
    if (c >= C) return c;
    for (int i = lane; i < S; i += 32) {
        s += (double)partial[(i64)c * S + i];
        q += (double)partial[(i64)C * S + (i64)c * S + i];
    }
    s = warp_sum(s);
    q = warp_sum(q);
    return c;
}

// ---------------------------------------------------------------- forward

template <typename T, int V>
__device__ __forceinline__ void bn_stats_body(const T* __restrict__ x, i64 M, int C,
                                              float* __restrict__ partial, float* sha,
                                              float* shb) {
    const int bx = blockDim.x, by = blockDim.y, S = gridDim.y;
    for (int c0 = blockIdx.x * bx * V; c0 < C; c0 += gridDim.x * bx * V) {
        const int c = c0 + threadIdx.x * V;
        float s[V] = {}, q[V] = {}, shift[V] = {};
        if (c < C) {
            load_f32<T, V>(x + c, shift);
#pragma unroll 4
            for (i64 r = (i64)blockIdx.y * by + threadIdx.y; r < M; r += (i64)S * by) {
                float v[V];
                load_f32<T, V>(x + r * C + c, v);
                add_shifted_moments<V>(v, shift, s, q);
            }
        }
        column_sum2<V>(s, q, sha, shb);
        store_partials<V>(sha, shb, c0, C, partial);
    }
}

// Launch: block (bx, by) with bx*by == 256, grid (any, S); partial [2][C][S].
template <typename T>
__device__ __forceinline__ void bn_fwd_stats(const T* x, i64 M, int C, float* partial) {
    __shared__ float sha[SLMLP_BLOCK * SLMLP_PACK];
    __shared__ float shb[SLMLP_BLOCK * SLMLP_PACK];
    if (C % SLMLP_PACK == 0 && aligned16(x)) {
        bn_stats_body<T, SLMLP_PACK>(x, M, C, partial, sha, shb);
    } else {
        bn_stats_body<T, 1>(x, M, C, partial, sha, shb);
    }
}

// One warp per channel sums the S partials in double. Launch: block 256
// (8 channels), grid ceil(C / 8). weight may be null (scale = invstd).
// running_mean_out/running_var_out null: running statistics not tracked;
// otherwise the new ones are computed from running_mean_in/running_var_in
// (all four non-null, the outputs separate buffers).
template <typename T>
__device__ __forceinline__ void bn_fwd_finalize(
    const T* __restrict__ x, const float* __restrict__ partial, int S, i64 M, int C,
    const float* __restrict__ weight, float momentum, float eps, float* __restrict__ mean,
    float* __restrict__ invstd, float* __restrict__ scale,
    const float* __restrict__ running_mean_in, const float* __restrict__ running_var_in,
    float* __restrict__ running_mean_out, float* __restrict__ running_var_out) {
    double s, q;
    const int c = sum_partials(partial, S, C, s, q);
    if (c >= C || (threadIdx.x & 31) != 0) return;
    const double m = (double)M;
    const double mu = s / m;
    const double mu_x = (double)to_f32(x[c]) + mu;
    const double var = fmax(q / m - mu * mu, 0.0);
    const double is = 1.0 / sqrt(var + (double)eps);
    mean[c] = (float)mu_x;
    invstd[c] = (float)is;
    scale[c] = (float)(is * (weight ? (double)weight[c] : 1.0));
    if (running_mean_out) {
        const double mo = (double)momentum;
        running_mean_out[c] = (float)((1.0 - mo) * (double)running_mean_in[c] + mo * mu_x);
        const double unbiased = M > 1 ? var * m / (m - 1.0) : var;
        running_var_out[c] = (float)((1.0 - mo) * (double)running_var_in[c] + mo * unbiased);
    }
}

// Eval mode: the running statistics become mean/invstd/scale for bn_fwd_apply
// (and for bn_bwd_finalize with training = 0). Launch: any, one thread per c.
extern "C" __global__ void SLMLP_LAUNCH_BOUNDS
bn_eval_prepare(const float* __restrict__ running_mean, const float* __restrict__ running_var,
                const float* __restrict__ weight, float eps, int C, float* __restrict__ mean,
                float* __restrict__ invstd, float* __restrict__ scale) {
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < C; c += gridDim.x * blockDim.x) {
        const float is = rsqrtf(running_var[c] + eps);
        mean[c] = running_mean[c];
        invstd[c] = is;
        scale[c] = is * (weight ? weight[c] : 1.0f);
    }
}

// Walk order. Every elementwise pass here follows a column reduction over
// the same tensor (bn_fwd_stats before bn_fwd_apply, bn_bwd_reduce before
// bn_bwd_dx) and the tensors (50-400 MB at ResNet-50 batch 256) outgrow the
// L2 (50 MB on H100/H200), so only what the reduction read LAST is still in
// L2 when the elementwise pass starts. The reduction reads upwards: each row
// lane walks r = blockIdx.y*by + threadIdx.y, then + S*by, ... (the unrolled
// loop only issues a few of those increasing rows' loads together), and the
// block scheduler dispatches blocks in increasing linear index (observed,
// not promised), so when its grid is larger than one resident wave the last
// blocks to run are those of the highest blockIdx.y, whose rows also end at
// the top. Its final reads are therefore the highest rows. The elementwise pass maps grid-stride index i
// to pack packs-1-i, so its earliest packs are the tensor's last ones: it
// meets those lines before its own traffic evicts them (walking from the
// start, it would first read the rows read longest ago, missing, and evict
// the recent ones on the way). When the elementwise grid is itself several
// waves, each wave sweeps its share of every grid-stride chunk downwards and
// only the first starts at the very end; the order is a heuristic for speed
// only: every element is computed exactly as before, results are identical.
// Warps still read contiguous 32-pack ranges (in descending order).
template <typename T, int V>
__device__ __forceinline__ void bn_apply_body(const T* __restrict__ x, const T* __restrict__ res,
                                              const float* __restrict__ mean,
                                              const float* __restrict__ scale,
                                              const float* __restrict__ bias, T* __restrict__ y,
                                              i64 M, int C, int relu) {
    const i64 n = M * C, packs = n / V;
    const bool small = n <= 0xffffffffll;
    for (i64 i = grid_start(); i < packs; i += grid_stride()) {
        const i64 e = (packs - 1 - i) * V;  // from the end: see above
        const int c = channel_of(e, C, small);
        float v[V], m[V], k[V], b[V];
        load_f32<T, V>(x + e, v);
        load_param<V>(mean, c, m, 0.0f);
        load_param<V>(scale, c, k, 1.0f);
        load_param<V>(bias, c, b, 0.0f);
        // (x - mean) * scale + bias: subtracting first keeps precision when
        // |mean| >> std (folding mean into the shift would not).
#pragma unroll
        for (int j = 0; j < V; j++) v[j] = fmaf(v[j] - m[j], k[j], b[j]);
        if (res) {
            float r[V];
            load_f32<T, V>(res + e, r);
#pragma unroll
            for (int j = 0; j < V; j++) v[j] += r[j];
        }
        if (relu) {
#pragma unroll
            for (int j = 0; j < V; j++) v[j] = relu_f(v[j]);
        }
        store_f32<T, V>(y + e, v);
    }
}

// y = [relu]((x - mean) * scale + bias [+ residual]). residual, bias may be
// null. Launch: 1-D, elementwise shape with pack 8 (launch.rs).
template <typename T>
__device__ __forceinline__ void bn_fwd_apply(const T* x, const T* res, const float* mean,
                                             const float* scale, const float* bias, T* y, i64 M,
                                             int C, int relu) {
    const bool vec = C % SLMLP_PACK == 0 && aligned16(x) && aligned16(y) &&
                     (!res || aligned16(res)) && aligned16(mean) && aligned16(scale) &&
                     (!bias || aligned16(bias));
    if (vec) {
        bn_apply_body<T, SLMLP_PACK>(x, res, mean, scale, bias, y, M, C, relu);
    } else {
        bn_apply_body<T, 1>(x, res, mean, scale, bias, y, M, C, relu);
    }
}

// --------------------------------------------------------------- backward

template <typename T, int V>
__device__ __forceinline__ void bn_bwd_reduce_body(
    const T* __restrict__ x, const T* __restrict__ dy, const T* __restrict__ out,
    T* __restrict__ dres, const float* __restrict__ mean, const float* __restrict__ scale,
    const float* __restrict__ bias, int relu, i64 M, int C, float* __restrict__ partial,
    float* sha, float* shb) {
    const int bx = blockDim.x, by = blockDim.y, S = gridDim.y;
    for (int c0 = blockIdx.x * bx * V; c0 < C; c0 += gridDim.x * bx * V) {
        const int c = c0 + threadIdx.x * V;
        float s[V] = {}, q[V] = {};
        if (c < C) {
            // A lane keeps its channels for all its rows: the per-channel
            // operands are loaded once.
            float m[V], k[V], b[V];
            load_param<V>(mean, c, m, 0.0f);
            load_param<V>(relu ? scale : nullptr, c, k, 1.0f);
            load_param<V>(relu ? bias : nullptr, c, b, 0.0f);
#pragma unroll 2
            for (i64 r = (i64)blockIdx.y * by + threadIdx.y; r < M; r += (i64)S * by) {
                const i64 e = r * C + c;
                float g[V], v[V];
                relu_grad<T, V>(dy, out, out != nullptr, e, g);
                load_f32<T, V>(x + e, v);
                if (relu) relu_mask_recomputed<T, V>(v, m, k, b, g);
                if (dres) store_f32<T, V>(dres + e, g);
                add_grad_moments<V>(g, v, m, s, q);
            }
        }
        column_sum2<V>(s, q, sha, shb);
        store_partials<V>(sha, shb, c0, C, partial);
    }
}

// Per-channel sum(dy') and sum(dy' * (x - mean)) partials. dy' is dy masked
// by the ReLU: where out <= 0 when out is given (add+ReLU), where the
// recomputed pre-activation is <= 0 when relu (BN+ReLU: scale as saved by
// the forward, bias may be null; out must be null then); dy itself for
// plain BN (out null, relu 0). dres, when given, receives dy' (the
// residual's gradient of the add+ReLU variant). Launch: as bn_fwd_stats.
template <typename T>
__device__ __forceinline__ void bn_bwd_reduce(const T* x, const T* dy, const T* out, T* dres,
                                              const float* mean, const float* scale,
                                              const float* bias, int relu, i64 M, int C,
                                              float* partial) {
    __shared__ float sha[SLMLP_BLOCK * SLMLP_PACK];
    __shared__ float shb[SLMLP_BLOCK * SLMLP_PACK];
    const bool vec = C % SLMLP_PACK == 0 && aligned16(x) && aligned16(dy) &&
                     (!out || aligned16(out)) && (!dres || aligned16(dres)) && aligned16(mean) &&
                     (!relu || (aligned16(scale) && (!bias || aligned16(bias))));
    if (vec) {
        bn_bwd_reduce_body<T, SLMLP_PACK>(x, dy, out, dres, mean, scale, bias, relu, M, C,
                                          partial, sha, shb);
    } else {
        bn_bwd_reduce_body<T, 1>(x, dy, out, dres, mean, scale, bias, relu, M, C, partial, sha,
                                 shb);
    }
}

// Combines the partials; writes dweight, dbias (either may be null) and the
// dx coefficients coef = [a | k | b], 3*C floats. Launch: as bn_fwd_finalize.
extern "C" __global__ void SLMLP_LAUNCH_BOUNDS
bn_bwd_finalize(const float* __restrict__ partial, int S, i64 M, int C,
                const float* __restrict__ weight, const float* __restrict__ invstd, int training,
                float* __restrict__ dweight, float* __restrict__ dbias, float* __restrict__ coef) {
    double s, q;
    const int c = sum_partials(partial, S, C, s, q);
    if (c >= C || (threadIdx.x & 31) != 0) return;
    const double is = (double)invstd[c], m = (double)M;
    const double a = (weight ? (double)weight[c] : 1.0) * is;
    if (dweight) dweight[c] = (float)(q * is);
    if (dbias) dbias[c] = (float)s;
    coef[c] = (float)a;
    coef[C + c] = training ? (float)(-a * is * is * q / m) : 0.0f;
    coef[2 * C + c] = training ? (float)(-a * s / m) : 0.0f;
}

template <typename T, int V>
__device__ __forceinline__ void bn_dx_body(const T* __restrict__ x, const T* __restrict__ dy,
                                           const T* __restrict__ out,
                                           const float* __restrict__ mean,
                                           const float* __restrict__ scale,
                                           const float* __restrict__ bias, int relu,
                                           const float* __restrict__ coef, T* __restrict__ dx,
                                           i64 M, int C) {
    const i64 n = M * C, packs = n / V;
    const bool small = n <= 0xffffffffll;
    for (i64 i = grid_start(); i < packs; i += grid_stride()) {
        // from the end, as bn_apply_body (why: there)
        const i64 e = (packs - 1 - i) * V;
        const int c = channel_of(e, C, small);
        float g[V], v[V], m[V], a[V], k[V], b[V];
        relu_grad<T, V>(dy, out, out != nullptr, e, g);
        load_f32<T, V>(x + e, v);
        load_param<V>(mean, c, m, 0.0f);
        if (relu) {
            float rk[V], rb[V];
            load_param<V>(scale, c, rk, 1.0f);
            load_param<V>(bias, c, rb, 0.0f);
            relu_mask_recomputed<T, V>(v, m, rk, rb, g);
        }
        load_param<V>(coef, c, a, 0.0f);
        load_param<V>(coef + C, c, k, 0.0f);
        load_param<V>(coef + 2 * C, c, b, 0.0f);
#pragma unroll
        for (int j = 0; j < V; j++) v[j] = fmaf(a[j], g[j], fmaf(k[j], v[j] - m[j], b[j]));
        store_f32<T, V>(dx + e, v);
    }
}

// dx = a*dy' + k*(x - mean) + b, dy' as bn_bwd_reduce forms it (out, relu,
// scale, bias: the same meaning). Pass out = null, relu = 0 with
// dy = dres when the reduce already wrote the masked gradient (add+ReLU):
// one read fewer. Launch: 1-D elementwise, pack 8.
template <typename T>
__device__ __forceinline__ void bn_bwd_dx(const T* x, const T* dy, const T* out,
                                          const float* mean, const float* scale,
                                          const float* bias, int relu, const float* coef, T* dx,
                                          i64 M, int C) {
    const bool vec = C % SLMLP_PACK == 0 && aligned16(x) && aligned16(dy) &&
                     (!out || aligned16(out)) && aligned16(dx) && aligned16(mean) &&
                     aligned16(coef) &&
                     (!relu || (aligned16(scale) && (!bias || aligned16(bias))));
    if (vec) {
        bn_dx_body<T, SLMLP_PACK>(x, dy, out, mean, scale, bias, relu, coef, dx, M, C);
    } else {
        bn_dx_body<T, 1>(x, dy, out, mean, scale, bias, relu, coef, dx, M, C);
    }
}

// ------------------------------------------------------------ entry points

#define BN_ENTRY_POINTS(T, SFX)                                                                  \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS                                               \
        bn_fwd_stats_##SFX(const T* x, i64 M, int C, float* partial) {                           \
        bn_fwd_stats<T>(x, M, C, partial);                                                       \
    }                                                                                            \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS bn_fwd_finalize_##SFX(                        \
        const T* x, const float* partial, int S, i64 M, int C, const float* weight,              \
        float momentum, float eps, float* mean, float* invstd, float* scale,                     \
        const float* running_mean_in, const float* running_var_in, float* running_mean_out,      \
        float* running_var_out) {                                                                \
        bn_fwd_finalize<T>(x, partial, S, M, C, weight, momentum, eps, mean, invstd, scale,      \
                           running_mean_in, running_var_in, running_mean_out, running_var_out);  \
    }                                                                                            \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS                                               \
        bn_fwd_apply_##SFX(const T* x, const T* residual, const float* mean, const float* scale, \
                           const float* bias, T* y, i64 M, int C, int relu) {                    \
        bn_fwd_apply<T>(x, residual, mean, scale, bias, y, M, C, relu);                          \
    }                                                                                            \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS bn_bwd_reduce_##SFX(                          \
        const T* x, const T* dy, const T* out, T* dres, const float* mean, const float* scale,   \
        const float* bias, int relu, i64 M, int C, float* partial) {                             \
        bn_bwd_reduce<T>(x, dy, out, dres, mean, scale, bias, relu, M, C, partial);              \
    }                                                                                            \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS bn_bwd_dx_##SFX(                              \
        const T* x, const T* dy, const T* out, const float* mean, const float* scale,            \
        const float* bias, int relu, const float* coef, T* dx, i64 M, int C) {                   \
        bn_bwd_dx<T>(x, dy, out, mean, scale, bias, relu, coef, dx, M, C);                       \
    }

BN_ENTRY_POINTS(float, f32)
BN_ENTRY_POINTS(__half, f16)
BN_ENTRY_POINTS(__nv_bfloat16, bf16)
