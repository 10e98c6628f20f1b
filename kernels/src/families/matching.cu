// matching.cu — anchor / proposal matching (torchvision's Matcher with the
// RPN's and the ROI heads' label rules) and the balanced positive /
// negative sampler, on the device with no host read; the rules of
// engine/src/ops/detection/matching/ (cpu.rs is the reference, which these
// kernels equal exactly: every output is an integer decided by exact
// comparisons).
//
// Matching over quality [G, N] row-major (f32 / f16 / bf16 compared in f32,
// which is exact for the widened values and the host-rounded thresholds;
// f64 in double):
// - match_rows_<t>: best[g] = row g's maximum (NaN if the row has a NaN).
//   One block of SLMLP_BLOCK threads per row (grid-stride over rows).
// - match_cols_<t>: one thread per column p (grid-stride): the first
//   maximum over g (the first NaN wins), the thresholds, the low-quality
//   rule against best[], and the label rule.
//
// Sampling over labels [N] i64 (>= 1 positive, 0 negative, else ignored):
// every element's key is splitmix64 at counter i + 1 of seed's stream
// (sample_key, distinct per element); per class the chosen elements are
// those with key <= K, K the want-th smallest key of the class, found by an
// 8-pass radix select over the key's bytes (sample_hist / sample_select),
// then written in increasing index order by a chunked compaction
// (sample_chunk_counts, sample_scan, sample_scatter) and the tail filled
// with the sentinel N (sample_fill).
// The state block (8 u64): per class c (0 positive, 1 negative) [4c] the
// key prefix found so far, [4c + 1] the rank still sought inside it, [4c +
// 2] the count chosen (want). hist: 2 x 256 u32, zero before every
// sample_hist (sample_select clears it).
#include "common.cuh"

// Elements per compaction chunk (matching.rs: SAMPLE_CHUNK): 8 rounds of
// one element a thread.
#define SAMPLE_CHUNK 2048
#define SAMPLE_BINS 256

__device__ __forceinline__ float match_load(float v) { return v; }
__device__ __forceinline__ float match_load(__half v) { return __half2float(v); }
__device__ __forceinline__ float match_load(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ double match_load(double v) { return v; }

template <typename C> __device__ __forceinline__ C match_nan();
template <> __device__ __forceinline__ float match_nan<float>() { return SLMLP_NAN; }
template <> __device__ __forceinline__ double match_nan<double>() {
    return __longlong_as_double(0x7ff8000000000000ll);
}
template <typename C> __device__ __forceinline__ C match_neg_inf();
template <> __device__ __forceinline__ float match_neg_inf<float>() { return SLMLP_NEG_INF; }
template <> __device__ __forceinline__ double match_neg_inf<double>() {
    return __longlong_as_double(0xfff0000000000000ll);
}

// best[g] = NaN if row g of q [G, N] has a NaN, else its largest value.
template <typename T, typename C>
__device__ __forceinline__ void match_rows(const T* __restrict__ q, C* __restrict__ best, i64 G,
                                           i64 N) {
    __shared__ C s_max[SLMLP_BLOCK];
    __shared__ int s_nan[SLMLP_BLOCK];
    const int t = threadIdx.x;
    for (i64 g = blockIdx.x; g < G; g += gridDim.x) {
        C m = match_neg_inf<C>();
        int nan = 0;
        const T* row = q + g * N;
        for (i64 p = t; p < N; p += blockDim.x) {
            const C v = match_load(row[p]);
            if (v != v) {
                nan = 1;
            } else if (v > m) {
                m = v;
            }
        }
        s_max[t] = m;
        s_nan[t] = nan;
        __syncthreads();
        for (int s = SLMLP_BLOCK / 2; s > 0; s >>= 1) {
            if (t < s) {
                if (s_max[t + s] > s_max[t]) s_max[t] = s_max[t + s];
                s_nan[t] |= s_nan[t + s];
            }
            __syncthreads();
        }
        if (t == 0) best[g] = s_nan[0] ? match_nan<C>() : s_max[0];
        __syncthreads();
    }
}

// matches [N], labels [N] (i64) of q [G, N]; best [G] from match_rows when
// allow_low; gt_labels [G] i64 or null (the RPN's 1 for a match).
template <typename T, typename C>
__device__ __forceinline__ void match_cols(const T* __restrict__ q, const C* __restrict__ best,
                                           const i64* __restrict__ gt_labels,
                                           i64* __restrict__ matches, i64* __restrict__ labels,
                                           i64 G, i64 N, C high, C low, int allow_low) {
    for (i64 p = grid_start(); p < N; p += grid_stride()) {
        i64 m = -1;
        if (G > 0) {
            C b = match_load(q[p]);
            i64 arg = 0;
            for (i64 g = 1; g < G && b == b; ++g) {
                const C v = match_load(q[g * N + p]);
                if (v != v || v > b) {
                    b = v;
                    arg = g;
                }
            }
            if (b < low) {
                m = -1;
            } else if (b < high) {
                m = -2;
            } else {
                m = arg;
            }
            if (allow_low && m != arg) {
                for (i64 g = 0; g < G; ++g) {
                    if (match_load(q[g * N + p]) == best[g]) {
                        m = arg;
                        break;
                    }
                }
            }
        }
        matches[p] = m;
        labels[p] = m >= 0 ? (gt_labels ? gt_labels[m] : 1) : (m == -1 ? 0 : -1);
    }
}

#define MATCH_ENTRIES(T, C, SFX)                                                                  \
    extern "C" __global__ SLMLP_LAUNCH_BOUNDS void match_rows_##SFX(                              \
        const T* __restrict__ q, C* __restrict__ best, i64 G, i64 N) {                            \
        match_rows<T, C>(q, best, G, N);                                                          \
    }                                                                                             \
    extern "C" __global__ SLMLP_LAUNCH_BOUNDS void match_cols_##SFX(                              \
        const T* __restrict__ q, const C* __restrict__ best, const i64* __restrict__ gt_labels,   \
        i64* __restrict__ matches, i64* __restrict__ labels, i64 G, i64 N, C high, C low,         \
        int allow_low) {                                                                          \
        match_cols<T, C>(q, best, gt_labels, matches, labels, G, N, high, low, allow_low);        \
    }

MATCH_ENTRIES(float, float, f32)
MATCH_ENTRIES(f16, float, f16)
MATCH_ENTRIES(bf16, float, bf16)
MATCH_ENTRIES(double, double, f64)

typedef unsigned long long u64;

// splitmix64's finalizer (a bijection of u64).
__device__ __forceinline__ u64 sample_mix(u64 z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// engine's sample_key(seed, i).
__device__ __forceinline__ u64 sample_key(u64 seed, i64 i) {
    return sample_mix(sample_mix(seed) + (u64)(i + 1) * 0x9e3779b97f4a7c15ull);
}

// 0 positive (label >= 1), 1 negative (label 0), -1 ignored.
__device__ __forceinline__ int sample_class(i64 l) { return l >= 1 ? 0 : (l == 0 ? 1 : -1); }

// Whether element i (class c >= 0, key k) is chosen, once the select is done.
__device__ __forceinline__ bool sample_chosen(const u64* st, int c, u64 k) {
    return c >= 0 && st[4 * c + 2] > 0 && k <= st[4 * c];
}

// Radix pass `pass` (0..7, the key's byte 7 - pass): hist[c][byte] += the
// class-c elements whose higher bytes equal the prefix found so far.
extern "C" __global__ SLMLP_LAUNCH_BOUNDS void sample_hist(const i64* __restrict__ labels, i64 N,
                                                           u64 seed, const u64* __restrict__ st,
                                                           unsigned int* __restrict__ hist,
                                                           int pass) {
    __shared__ unsigned int s_hist[2 * SAMPLE_BINS];
    for (int t = threadIdx.x; t < 2 * SAMPLE_BINS; t += blockDim.x) s_hist[t] = 0;
    __syncthreads();
    const int shift = 56 - 8 * pass;
    const u64 fixed = pass == 0 ? 0ull : (~0ull << (64 - 8 * pass));
    const u64 pre0 = st[0] & fixed, pre1 = st[4] & fixed;
    for (i64 i = grid_start(); i < N; i += grid_stride()) {
        const int c = sample_class(labels[i]);
        if (c < 0) continue;
        const u64 k = sample_key(seed, i);
        if ((k & fixed) != (c == 0 ? pre0 : pre1)) continue;
        atomicAdd(&s_hist[c * SAMPLE_BINS + (int)((k >> shift) & 255ull)], 1u);
    }
    __syncthreads();
    for (int t = threadIdx.x; t < 2 * SAMPLE_BINS; t += blockDim.x) {
        if (s_hist[t]) atomicAdd(&hist[t], s_hist[t]);
    }
}

// After sample_hist's pass `pass`: on pass 0 the counts (torchvision's
// num_pos = min(#pos, target), num_neg = min(#neg, batch - num_pos), into
// st and counts [2] i64); then each class's next key byte and the rank left
// inside it. Clears hist. One block.
extern "C" __global__ SLMLP_LAUNCH_BOUNDS void sample_select(u64* __restrict__ st,
                                                             unsigned int* __restrict__ hist,
                                                             i64* __restrict__ counts, i64 target,
                                                             i64 batch, int pass) {
    if (threadIdx.x == 0) {
        const int shift = 56 - 8 * pass;
        for (int c = 0; c < 2; ++c) {
            const unsigned int* h = hist + c * SAMPLE_BINS;
            if (pass == 0) {
                i64 total = 0;
                for (int d = 0; d < SAMPLE_BINS; ++d) total += h[d];
                const i64 cap = c == 0 ? target : batch - (i64)st[2];
                const i64 want = total < cap ? total : cap;
                st[4 * c] = 0;
                st[4 * c + 1] = (u64)want;
                st[4 * c + 2] = (u64)want;
                counts[c] = want;
            }
            const u64 rank = st[4 * c + 1];
            if (rank == 0) continue;
            u64 below = 0;
            for (int d = 0; d < SAMPLE_BINS; ++d) {
                if (below + h[d] >= rank) {
                    st[4 * c] |= (u64)d << shift;
                    st[4 * c + 1] = rank - below;
                    break;
                }
                below += h[d];
            }
        }
    }
    __syncthreads();
    for (int t = threadIdx.x; t < 2 * SAMPLE_BINS; t += blockDim.x) hist[t] = 0;
}

// offsets[2 b + c] = the chosen elements of class c in chunk b (SAMPLE_CHUNK
// elements from b * SAMPLE_CHUNK).
extern "C" __global__ SLMLP_LAUNCH_BOUNDS void sample_chunk_counts(const i64* __restrict__ labels,
                                                                   i64 N, u64 seed,
                                                                   const u64* __restrict__ st,
                                                                   unsigned int* __restrict__ offsets,
                                                                   i64 chunks) {
    for (i64 b = blockIdx.x; b < chunks; b += gridDim.x) {
        unsigned int n0 = 0, n1 = 0;
        for (int r = 0; r < SAMPLE_CHUNK; r += SLMLP_BLOCK) {
            const i64 i = b * SAMPLE_CHUNK + r + threadIdx.x;
            int c = -1;
            if (i < N) {
                c = sample_class(labels[i]);
                if (!sample_chosen(st, c, sample_key(seed, i))) c = -1;
            }
            n0 += __syncthreads_count(c == 0);
            n1 += __syncthreads_count(c == 1);
        }
        if (threadIdx.x == 0) {
            offsets[2 * b] = n0;
            offsets[2 * b + 1] = n1;
        }
    }
}

// The exclusive prefix sums of offsets (per class, over chunks), in place.
// One block: each thread sums a run of chunks, thread 0 scans the runs.
extern "C" __global__ SLMLP_LAUNCH_BOUNDS void sample_scan(unsigned int* __restrict__ offsets,
                                                           i64 chunks) {
    __shared__ unsigned int s_run[2][SLMLP_BLOCK];
    const int t = threadIdx.x;
    const i64 per = (chunks + SLMLP_BLOCK - 1) / SLMLP_BLOCK;
    const i64 lo = t * per, hi = lo + per < chunks ? lo + per : chunks;
    unsigned int a0 = 0, a1 = 0;
    for (i64 b = lo; b < hi; ++b) {
        a0 += offsets[2 * b];
        a1 += offsets[2 * b + 1];
    }
    s_run[0][t] = a0;
    s_run[1][t] = a1;
    __syncthreads();
    if (t == 0) {
        unsigned int r0 = 0, r1 = 0;
        for (int j = 0; j < SLMLP_BLOCK; ++j) {
            const unsigned int v0 = s_run[0][j], v1 = s_run[1][j];
            s_run[0][j] = r0;
            s_run[1][j] = r1;
            r0 += v0;
            r1 += v1;
        }
    }
    __syncthreads();
    a0 = s_run[0][t];
    a1 = s_run[1][t];
    for (i64 b = lo; b < hi; ++b) {
        const unsigned int v0 = offsets[2 * b], v1 = offsets[2 * b + 1];
        offsets[2 * b] = a0;
        offsets[2 * b + 1] = a1;
        a0 += v0;
        a1 += v1;
    }
}

// Writes every chosen element's index at its place in increasing order:
// positive [cap_pos], negative [cap_neg] (only the first want of each).
extern "C" __global__ SLMLP_LAUNCH_BOUNDS void sample_scatter(const i64* __restrict__ labels,
                                                              i64 N, u64 seed,
                                                              const u64* __restrict__ st,
                                                              const unsigned int* __restrict__ offsets,
                                                              i64 chunks, i64* __restrict__ positive,
                                                              i64* __restrict__ negative) {
    __shared__ unsigned int s_warp[2][SLMLP_BLOCK / 32];
    const int t = threadIdx.x, lane = t & 31, warp = t >> 5;
    const unsigned int below = (1u << lane) - 1u;
    const u64 want0 = st[2], want1 = st[6];
    for (i64 b = blockIdx.x; b < chunks; b += gridDim.x) {
        u64 base0 = offsets[2 * b], base1 = offsets[2 * b + 1];
        for (int r = 0; r < SAMPLE_CHUNK; r += SLMLP_BLOCK) {
            const i64 i = b * SAMPLE_CHUNK + r + t;
            int c = -1;
            if (i < N) {
                c = sample_class(labels[i]);
                if (!sample_chosen(st, c, sample_key(seed, i))) c = -1;
            }
            const unsigned int b0 = __ballot_sync(0xffffffffu, c == 0);
            const unsigned int b1 = __ballot_sync(0xffffffffu, c == 1);
            if (lane == 0) {
                s_warp[0][warp] = __popc(b0);
                s_warp[1][warp] = __popc(b1);
            }
            __syncthreads();
            u64 o0 = base0 + __popc(b0 & below), o1 = base1 + __popc(b1 & below);
            u64 t0 = 0, t1 = 0;
            for (int w = 0; w < SLMLP_BLOCK / 32; ++w) {
                if (w < warp) {
                    o0 += s_warp[0][w];
                    o1 += s_warp[1][w];
                }
                t0 += s_warp[0][w];
                t1 += s_warp[1][w];
            }
            if (c == 0 && o0 < want0) positive[o0] = i;
            if (c == 1 && o1 < want1) negative[o1] = i;
            base0 += t0;
            base1 += t1;
            __syncthreads();
        }
    }
}

// The unused tails: positive[j] = N for want0 <= j < cap_pos, negative
// likewise.
extern "C" __global__ SLMLP_LAUNCH_BOUNDS void sample_fill(const u64* __restrict__ st, i64 N,
                                                           i64* __restrict__ positive, i64 cap_pos,
                                                           i64* __restrict__ negative,
                                                           i64 cap_neg) {
    const i64 want0 = (i64)st[2], want1 = (i64)st[6];
    for (i64 j = grid_start(); j < cap_pos + cap_neg; j += grid_stride()) {
        if (j < cap_pos) {
            if (j >= want0) positive[j] = N;
        } else if (j - cap_pos >= want1) {
            negative[j - cap_pos] = N;
        }
    }
}
