// proposals.cu — torchvision's RegionProposalNetwork.filter_proposals after
// the per-level top-n, for a batch, on the device (engine/src/ops/detection/
// proposals/: the CPU reference and the launch sequence). Candidates are
// [B, K] (boxes [B, K, 4]) in level segments (start, len) shared by every
// image, each segment in decreasing score order. Four launches, no host
// read:
// 1. proposals_prep: clip every box to its image, score = sigmoid(logit),
//    valid = both sides >= min_size and score >= score_thresh;
// 2. proposals_mask: per (image, level) the IoU bit mask of the segment,
//    nms.cu's design: mask[i * cb + w] bit t set when column w*64+t (> i)
//    overlaps column i with IoU > threshold (words before i's own are not
//    written);
// 3. proposals_scan: one block per (level, image) visits the segment in
//    column order with the `removed` bits in shared memory: a valid, not
//    removed column is kept and removes what its mask row sets (the greedy
//    NMS of the CPU, which visits in score order: the same order);
// 4. proposals_rank: each kept candidate's rank among its image's kept
//    ones (decreasing score, ties to the lower column), written to that
//    row of the output when the rank is below P; counts[b] = rows written.
//
// Arithmetic is the CPU op's, in the dtype (f32 or f64), operation for
// operation and without FMA contraction (__f*_rn / __d*_rn): the clip, the
// size test and the IoU (compared in double with the threshold) are equal
// to the CPU's; the score uses the device's exp (within 2 ulp of the
// host's in f32).
//
// The level table and the image sizes are passed by value and read with
// compile-time indices only (unrolled compare-and-select, as roi_align.cu):
// a run-time index into a by-value struct would copy it to a stack frame.
#include "common.cuh"

#define PROP_MAX_LEVELS 64
#define PROP_MAX_IMAGES 64
#define PROP_MASK_BLOCK 64
// Words of the scan's shared bit sets: segments of at most 16384 columns.
#define PROP_MAX_WORDS 256

// The level segments: columns start[l] .. start[l] + len[l] of every image;
// the segment's mask starts at word off[l] of its image's mask.
struct PropLevels {
    int n;
    int start[PROP_MAX_LEVELS];
    int len[PROP_MAX_LEVELS];
    int off[PROP_MAX_LEVELS];
};

// (h, w) of images b0 .. b0 + PROP_MAX_IMAGES of one prep launch, in T.
template <typename T>
struct PropSizes {
    T h[PROP_MAX_IMAGES];
    T w[PROP_MAX_IMAGES];
};

__device__ __forceinline__ void prop_level(const PropLevels& L, int l, int& start, int& len,
                                           int& off) {
    start = L.start[0];
    len = L.len[0];
    off = L.off[0];
#pragma unroll
    for (int i = 1; i < PROP_MAX_LEVELS; i++) {
        if (i == l) {
            start = L.start[i];
            len = L.len[i];
            off = L.off[i];
        }
    }
}

template <typename T>
__device__ __forceinline__ void prop_size(const PropSizes<T>& S, int b, T& h, T& w) {
    h = S.h[0];
    w = S.w[0];
#pragma unroll
    for (int i = 1; i < PROP_MAX_IMAGES; i++) {
        if (i == b) {
            h = S.h[i];
            w = S.w[i];
        }
    }
}

__device__ __forceinline__ float p_add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double p_add(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float p_sub(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double p_sub(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ float p_mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double p_mul(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float p_div(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ double p_div(double a, double b) { return __ddiv_rn(a, b); }
__device__ __forceinline__ float p_min(float a, float b) { return fminf(a, b); }
__device__ __forceinline__ double p_min(double a, double b) { return fmin(a, b); }
__device__ __forceinline__ float p_max(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double p_max(double a, double b) { return fmax(a, b); }
__device__ __forceinline__ float p_exp(float a) { return expf(a); }
__device__ __forceinline__ double p_exp(double a) { return exp(a); }

// torch.clamp(x, 0, hi): NaN stays NaN.
template <typename T>
__device__ __forceinline__ T p_clamp(T x, T hi) {
    return x < T(0) ? T(0) : (x > hi ? hi : x);
}

template <typename T>
__device__ __forceinline__ T p_area(const T (&b)[4]) {
    return p_mul(p_sub(b[2], b[0]), p_sub(b[3], b[1]));
}

// The CPU's iou (engine/src/ops/detection/cpu.rs), operation for operation.
template <typename T>
__device__ __forceinline__ T p_iou(const T (&a)[4], T area_a, const T (&b)[4], T area_b) {
    const T w = p_max(p_sub(p_min(a[2], b[2]), p_max(a[0], b[0])), T(0));
    const T h = p_max(p_sub(p_min(a[3], b[3]), p_max(a[1], b[1])), T(0));
    const T inter = p_mul(w, h);
    return p_div(inter, p_sub(p_add(area_a, area_b), inter));
}

// Images b0 .. b0 + nb (nb <= PROP_MAX_IMAGES): clipped [B, K, 4], scores
// [B, K], valid [B, K] (1 or 0).
template <typename T>
__device__ __forceinline__ void prep(const T* __restrict__ boxes, const T* __restrict__ logits,
                                     T* __restrict__ clipped, T* __restrict__ scores,
                                     unsigned char* __restrict__ valid, i64 b0, int nb, i64 K,
                                     const PropSizes<T>& S, T min_size, T score_thresh) {
    const i64 total = (i64)nb * K;
    for (i64 e = grid_start(); e < total; e += grid_stride()) {
        const int lb = (int)(e / K);
        const i64 g = b0 * K + e;
        T h, w;
        prop_size(S, lb, h, w);
        T c[4];
#pragma unroll
        for (int q = 0; q < 4; q++) c[q] = p_clamp(boxes[g * 4 + q], q % 2 == 0 ? w : h);
#pragma unroll
        for (int q = 0; q < 4; q++) clipped[g * 4 + q] = c[q];
        const T s = p_div(T(1), p_add(T(1), p_exp(-logits[g])));
        scores[g] = s;
        valid[g] = (p_sub(c[2], c[0]) >= min_size && p_sub(c[3], c[1]) >= min_size &&
                    s >= score_thresh)
                       ? 1
                       : 0;
    }
}

// Block (cx, l * cbmax + ry, z), 64 threads: rows ry*64.. of level l's
// segment against its columns cx*64.., for images z, z + gridDim.z, ...
template <typename T>
__device__ __forceinline__ void mask(const T* __restrict__ clipped,
                                     unsigned long long* __restrict__ out, i64 B, i64 K,
                                     i64 words_per_image, int cbmax, const PropLevels& L,
                                     double threshold) {
    const int l = blockIdx.y / cbmax, ry = blockIdx.y % cbmax, cx = blockIdx.x;
    int start, len, off;
    prop_level(L, l, start, len, off);
    const int cb = (len + PROP_MASK_BLOCK - 1) / PROP_MASK_BLOCK;
    if (l >= L.n || ry >= cb || cx >= cb || ry > cx) return;
    const int rows = min(len - ry * PROP_MASK_BLOCK, PROP_MASK_BLOCK);
    const int cols = min(len - cx * PROP_MASK_BLOCK, PROP_MASK_BLOCK);
    __shared__ T sh[PROP_MASK_BLOCK][5];  // x1, y1, x2, y2, area
    for (i64 b = blockIdx.z; b < B; b += gridDim.z) {
        __syncthreads();  // the previous image's columns may still be read
        if ((int)threadIdx.x < cols) {
            const i64 j = b * K + start + cx * PROP_MASK_BLOCK + threadIdx.x;
            T c[4];
#pragma unroll
            for (int q = 0; q < 4; q++) c[q] = clipped[j * 4 + q];
#pragma unroll
            for (int q = 0; q < 4; q++) sh[threadIdx.x][q] = c[q];
            sh[threadIdx.x][4] = p_area(c);
        }
        __syncthreads();
        if ((int)threadIdx.x < rows) {
            const int i = ry * PROP_MASK_BLOCK + threadIdx.x;
            const i64 gi = b * K + start + i;
            T a[4];
#pragma unroll
            for (int q = 0; q < 4; q++) a[q] = clipped[gi * 4 + q];
            const T area_a = p_area(a);
            unsigned long long bits = 0;
            const int first = ry == cx ? threadIdx.x + 1 : 0;
            for (int t = first; t < cols; t++) {
                const T c[4] = {sh[t][0], sh[t][1], sh[t][2], sh[t][3]};
                // NaN IoU (two empty boxes) suppresses nothing, as on the CPU
                if ((double)p_iou(a, area_a, c, sh[t][4]) > threshold) bits |= 1ull << t;
            }
            out[b * words_per_image + off + (i64)i * cb + cx] = bits;
        }
    }
}

// Block (x, z), SLMLP_BLOCK threads: candidate i = x * blockDim.x + tid
// of images z, z + gridDim.z, ...; when kept, its rank r among its image's
// kept candidates (those with a higher score, or an equal one and a lower
// column: a total order, so the ranks are 0 .. kept - 1) and, when r < P,
// row r of out_boxes [B, P, 4] / out_scores [B, P] (zeroed by the host) is
// its box and score and counts[b] (zeroed) counts it.
template <typename T>
__device__ __forceinline__ void rank(const T* __restrict__ clipped, const T* __restrict__ scores,
                                     const unsigned char* __restrict__ kept, i64 B, i64 K, i64 P,
                                     T* __restrict__ out_boxes, T* __restrict__ out_scores,
                                     i64* __restrict__ counts) {
    __shared__ T sh_s[SLMLP_BLOCK];
    __shared__ unsigned char sh_k[SLMLP_BLOCK];
    const i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    for (i64 b = blockIdx.y; b < B; b += gridDim.y) {
        const bool mine = i < K && kept[b * K + i] != 0;
        const T si = mine ? scores[b * K + i] : T(0);
        i64 r = 0;
        for (i64 tile = 0; tile < K; tile += blockDim.x) {
            __syncthreads();  // the previous tile may still be read
            const i64 j = tile + threadIdx.x;
            const bool kj = j < K && kept[b * K + j] != 0;
            sh_k[threadIdx.x] = kj ? 1 : 0;
            sh_s[threadIdx.x] = kj ? scores[b * K + j] : T(0);
            __syncthreads();
            if (mine) {
                const int n = (int)min((i64)blockDim.x, K - tile);
                for (int t = 0; t < n; t++) {
                    const T s = sh_s[t];
                    r += (sh_k[t] != 0 && (s > si || (s == si && tile + t < i))) ? 1 : 0;
                }
            }
        }
        if (mine && r < P) {
            const i64 o = b * P + r;
#pragma unroll
            for (int q = 0; q < 4; q++) out_boxes[o * 4 + q] = clipped[(b * K + i) * 4 + q];
            out_scores[o] = si;
            atomicAdd(reinterpret_cast<unsigned long long*>(counts + b), 1ull);
        }
    }
}

#define PROP_ENTRIES(T, SFX)                                                                  \
    extern "C" __global__ SLMLP_LAUNCH_BOUNDS void proposals_prep_##SFX(                      \
        const T* __restrict__ boxes, const T* __restrict__ logits, T* __restrict__ clipped,    \
        T* __restrict__ scores, unsigned char* __restrict__ valid, i64 b0, int nb, i64 K,      \
        const PropSizes<T> S, T min_size, T score_thresh) {                                    \
        prep<T>(boxes, logits, clipped, scores, valid, b0, nb, K, S, min_size, score_thresh);  \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(PROP_MASK_BLOCK) proposals_mask_##SFX(       \
        const T* __restrict__ clipped, unsigned long long* __restrict__ out, i64 B, i64 K,     \
        i64 words_per_image, int cbmax, const PropLevels L, double threshold) {                \
        mask<T>(clipped, out, B, K, words_per_image, cbmax, L, threshold);                     \
    }                                                                                          \
    extern "C" __global__ SLMLP_LAUNCH_BOUNDS void proposals_rank_##SFX(                      \
        const T* __restrict__ clipped, const T* __restrict__ scores,                           \
        const unsigned char* __restrict__ kept, i64 B, i64 K, i64 P, T* __restrict__ out_boxes, \
        T* __restrict__ out_scores, i64* __restrict__ counts) {                                \
        rank<T>(clipped, scores, kept, B, K, P, out_boxes, out_scores, counts);                \
    }

// Block (l, z), SLMLP_BLOCK threads: the greedy NMS of level l's segment of
// images z, z + gridDim.z, ...; kept [B, K] (zeroed by the host) gets 1 at
// every kept column. The word w of the segment is scanned from a register
// copy of its alive bits (valid and not removed), updated with each kept
// row's own word w; the kept row's later words are ORed into `removed`,
// each word by one thread, and read after the barrier that ends word w.
extern "C" __global__ SLMLP_LAUNCH_BOUNDS void proposals_scan(
    const unsigned char* __restrict__ valid, const unsigned long long* __restrict__ mask_bits,
    unsigned char* __restrict__ kept, i64 B, i64 K, i64 words_per_image, const PropLevels L) {
    __shared__ unsigned long long removed[PROP_MAX_WORDS];
    __shared__ unsigned long long alive[PROP_MAX_WORDS];
    int start, len, off;
    prop_level(L, blockIdx.x, start, len, off);
    if ((int)blockIdx.x >= L.n || len == 0) return;
    const int words = (len + 63) / 64;
    for (i64 b = blockIdx.y; b < B; b += gridDim.y) {
        __syncthreads();  // the previous image's bits may still be read
        const unsigned char* v = valid + b * K + start;
        for (int w = threadIdx.x; w < words; w += blockDim.x) {
            unsigned long long bits = 0;
            const int n = min(64, len - w * 64);
            for (int t = 0; t < n; t++) bits |= (unsigned long long)(v[w * 64 + t] != 0) << t;
            alive[w] = bits;
            removed[w] = 0;
        }
        __syncthreads();
        const unsigned long long* m = mask_bits + b * words_per_image + off;
        for (int w = 0; w < words; w++) {
            unsigned long long bits = alive[w] & ~removed[w];
            while (bits != 0) {
                const int t = __ffsll((long long)bits) - 1;
                const int i = w * 64 + t;
                const unsigned long long* row = m + (i64)i * words;
                if (threadIdx.x == 0) kept[b * K + start + i] = 1;
                // row i's word w holds only columns after i
                bits &= ~row[w];
                bits &= ~(1ull << t);
                for (int x = w + 1 + threadIdx.x; x < words; x += blockDim.x) removed[x] |= row[x];
            }
            __syncthreads();
        }
    }
}

PROP_ENTRIES(float, f32)
PROP_ENTRIES(double, f64)
