// roi_align.cu — RoIAlign forward and backward over NHWC feature maps, one
// map or several FPN levels (torchvision's MultiScaleRoIAlign), with exactly
// the semantics of engine/src/ops/detection/cpu.rs (torchvision's CPU
// kernel): same sample positions, boundary rules and per-bin summation
// order, computed in f32 (boxes are read in the input dtype and widened).
// The sample coordinates use __fmul_rn/__fadd_rn so ptxas cannot contract
// them into FMAs: a fused rounding could move a sample across a pixel
// boundary and change which pixels it reads, unlike the CPU op.
//
// Forward: one thread per output element (k, ph, pw, c), c innermost, so a
// warp reads consecutive channels of each sampled pixel (coalesced) and
// writes the channels-last output [K, PH, PW, C] contiguously.
// Backward: one thread per dy element, scattering into an f32 dx [N, H, W, C]
// of the box's level with atomicAdd (every dx must be zeroed first). The
// summation order of the atomics is not fixed, so the GPU gradient is NOT
// bitwise deterministic (the CPU op's is); it agrees with it to f32 rounding.
//
// boxes: [K, 5] rows (batch index, x1, y1, x2, y2), validated on the host
// (integer batch index in range, finite coordinates, bounded sample count).
// levels: null (every box on level 0) or K int32 level indices, computed
// and checked on the host (torchvision's LevelMapper).
// Launch: 1-D grid-stride, any grid, 256 threads.
#include "common.cuh"

struct RoiShape {
    int N, C, H, W, K, PH, PW;
    float spatial_scale;
    int sampling_ratio;  // <= 0: adaptive
    int aligned;
};

#define ROI_MAX_LEVELS 8

// The maps pooled from, passed by value: level l is NHWC [N, H[l], W[l], C]
// at spatial scale scale[l] (in the kernel's dtype forward, f32 backward).
struct RoiLevels {
    unsigned long long map[ROI_MAX_LEVELS];
    int H[ROI_MAX_LEVELS];
    int W[ROI_MAX_LEVELS];
    float scale[ROI_MAX_LEVELS];
};

// Box k's level: its map (returned) and s with that level's H, W and
// scale. The unrolled compare-and-select indexes the by-value struct with
// constants only, so it stays in registers / the parameter bank (a runtime
// index would copy it to a local-memory stack frame).
__device__ __forceinline__ unsigned long long roi_level(const RoiLevels& L,
                                                        const int* __restrict__ levels, int k,
                                                        RoiShape& s) {
    const int l = levels ? levels[k] : 0;
    unsigned long long map = L.map[0];
    s.H = L.H[0];
    s.W = L.W[0];
    s.spatial_scale = L.scale[0];
#pragma unroll
    for (int i = 1; i < ROI_MAX_LEVELS; i++) {
        if (i == l) {
            map = L.map[i];
            s.H = L.H[i];
            s.W = L.W[i];
            s.spatial_scale = L.scale[i];
        }
    }
    return map;
}

// One box on its feature map (engine/src/ops/detection/cpu.rs: Roi::new).
struct RoiGeom {
    int batch;
    float start_h, start_w, bin_h, bin_w;
    int grid_h, grid_w;  // samples a side of each bin, >= 0
};

template <typename T>
__device__ __forceinline__ RoiGeom roi_geom(const T* __restrict__ b, const RoiShape& s) {
    RoiGeom r;
    const float offset = s.aligned ? 0.5f : 0.0f;
    r.batch = (int)to_f32(b[0]);
    r.start_w = __fadd_rn(__fmul_rn(to_f32(b[1]), s.spatial_scale), -offset);
    r.start_h = __fadd_rn(__fmul_rn(to_f32(b[2]), s.spatial_scale), -offset);
    const float end_w = __fadd_rn(__fmul_rn(to_f32(b[3]), s.spatial_scale), -offset);
    const float end_h = __fadd_rn(__fmul_rn(to_f32(b[4]), s.spatial_scale), -offset);
    float roi_w = __fsub_rn(end_w, r.start_w), roi_h = __fsub_rn(end_h, r.start_h);
    if (!s.aligned) {
        // legacy (Detectron) behaviour: malformed boxes become 1x1
        roi_w = fmaxf(roi_w, 1.0f);
        roi_h = fmaxf(roi_h, 1.0f);
    }
    r.bin_h = __fdiv_rn(roi_h, (float)s.PH);
    r.bin_w = __fdiv_rn(roi_w, (float)s.PW);
    if (s.sampling_ratio > 0) {
        r.grid_h = r.grid_w = s.sampling_ratio;
    } else {
        r.grid_h = max((int)ceilf(__fdiv_rn(roi_h, (float)s.PH)), 0);
        r.grid_w = max((int)ceilf(__fdiv_rn(roi_w, (float)s.PW)), 0);
    }
    return r;
}

// Sample coordinate start + p * bin + (i + 0.5) * bin / grid, in the CPU
// op's operation order.
__device__ __forceinline__ float sample_coord(float start, int p, float bin, int i, int grid) {
    const float a = __fadd_rn(start, __fmul_rn((float)p, bin));
    const float b = __fdiv_rn(__fmul_rn(__fadd_rn((float)i, 0.5f), bin), (float)grid);
    return __fadd_rn(a, b);
}

// torchvision's bilinear rule (Sample::bilinear): pixel offsets (y*W + x)
// of the four corners and their weights; false for points outside
// [-1, H] x [-1, W], which then read pixel 0 with zero weights.
__device__ __forceinline__ bool bilinear(float y, float x, int H, int W, int (&pos)[4],
                                         float (&w)[4]) {
    if (y < -1.0f || y > (float)H || x < -1.0f || x > (float)W) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            pos[i] = 0;
            w[i] = 0.0f;
        }
        return false;
    }
    if (y <= 0.0f) y = 0.0f;
    if (x <= 0.0f) x = 0.0f;
    int y_low = (int)y, x_low = (int)x, y_high, x_high;
    if (y_low >= H - 1) {
        y_high = y_low = H - 1;
        y = (float)y_low;
    } else {
        y_high = y_low + 1;
    }
    if (x_low >= W - 1) {
        x_high = x_low = W - 1;
        x = (float)x_low;
    } else {
        x_high = x_low + 1;
    }
    const float ly = __fsub_rn(y, (float)y_low), lx = __fsub_rn(x, (float)x_low);
    const float hy = __fsub_rn(1.0f, ly), hx = __fsub_rn(1.0f, lx);
    pos[0] = y_low * W + x_low;
    pos[1] = y_low * W + x_high;
    pos[2] = y_high * W + x_low;
    pos[3] = y_high * W + x_high;
    w[0] = __fmul_rn(hy, hx);
    w[1] = __fmul_rn(hy, lx);
    w[2] = __fmul_rn(ly, hx);
    w[3] = __fmul_rn(ly, lx);
    return true;
}

// Calls f(inside, pos, w) for every sample of bin (ph, pw) of box r, rows
// outer as the CPU op; `inside` is bilinear's result for the sample.
template <typename F>
__device__ __forceinline__ void for_each_sample(const RoiGeom& r, int ph, int pw, int H, int W,
                                                F f) {
    for (int iy = 0; iy < r.grid_h; iy++) {
        const float yy = sample_coord(r.start_h, ph, r.bin_h, iy, r.grid_h);
        for (int ix = 0; ix < r.grid_w; ix++) {
            const float xx = sample_coord(r.start_w, pw, r.bin_w, ix, r.grid_w);
            int pos[4];
            float w[4];
            const bool inside = bilinear(yy, xx, H, W, pos, w);
            f(inside, pos, w);
        }
    }
}

template <typename T>
__device__ __forceinline__ void roi_align_fwd(const T* __restrict__ boxes,
                                             const int* __restrict__ levels, T* __restrict__ y,
                                             RoiShape s, const RoiLevels& L) {
    const i64 total = (i64)s.K * s.PH * s.PW * s.C;
    for (i64 e = grid_start(); e < total; e += grid_stride()) {
        const Nhwc o = nhwc(e, s.PH, s.PW, s.C);  // (k, ph, pw, c)
        RoiShape sl = s;
        const T* x = reinterpret_cast<const T*>(roi_level(L, levels, o.n, sl));
        const RoiGeom r = roi_geom(boxes + (i64)o.n * 5, sl);
        const T* xc = x + (i64)r.batch * sl.H * sl.W * sl.C + o.c;
        float v = 0.0f;
        for_each_sample(r, o.h, o.w, sl.H, sl.W,
                        [&](bool, const int (&pos)[4], const float (&w)[4]) {
            // the CPU's order: ((w0 x0 + w1 x1) + w2 x2) + w3 x3, then v +=
            // (outside samples have zero weights on pixel 0)
            float acc = __fmul_rn(w[0], to_f32(xc[(i64)pos[0] * sl.C]));
            acc = __fadd_rn(acc, __fmul_rn(w[1], to_f32(xc[(i64)pos[1] * sl.C])));
            acc = __fadd_rn(acc, __fmul_rn(w[2], to_f32(xc[(i64)pos[2] * sl.C])));
            acc = __fadd_rn(acc, __fmul_rn(w[3], to_f32(xc[(i64)pos[3] * sl.C])));
            v = __fadd_rn(v, acc);
        });
        const float count = (float)max(r.grid_h * r.grid_w, 1);
        y[e] = from_f32<T>(__fdiv_rn(v, count));
    }
}

template <typename T>
__device__ __forceinline__ void roi_align_bwd(const T* __restrict__ dy, const T* __restrict__ boxes,
                                             const int* __restrict__ levels, RoiShape s,
                                             const RoiLevels& L) {
    const i64 total = (i64)s.K * s.PH * s.PW * s.C;
    for (i64 e = grid_start(); e < total; e += grid_stride()) {
        const Nhwc o = nhwc(e, s.PH, s.PW, s.C);  // (k, ph, pw, c)
        RoiShape sl = s;
        float* dx = reinterpret_cast<float*>(roi_level(L, levels, o.n, sl));
        const RoiGeom r = roi_geom(boxes + (i64)o.n * 5, sl);
        if (r.grid_h == 0 || r.grid_w == 0) continue;
        // torchvision divides by the raw product (>= 1 here)
        const float count = (float)(r.grid_h * r.grid_w);
        const float gv = to_f32(dy[e]);
        float* dc = dx + (i64)r.batch * sl.H * sl.W * sl.C + o.c;
        for_each_sample(r, o.h, o.w, sl.H, sl.W,
                        [&](bool inside, const int (&pos)[4], const float (&w)[4]) {
            if (!inside) return;
#pragma unroll
            for (int q = 0; q < 4; q++) {
                atomicAdd(dc + (i64)pos[q] * sl.C, __fdiv_rn(__fmul_rn(gv, w[q]), count));
            }
        });
    }
}

// Shape arguments: N, C, K, PH, PW, sampling_ratio, aligned; the maps and
// their sizes and scales in `maps`.
#define ROI_ALIGN_ENTRIES(T, SFX)                                                              \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS roi_align_fwd_##SFX(                       \
        const T* __restrict__ boxes, const int* __restrict__ levels, T* __restrict__ y, int N,  \
        int C, int K, int PH, int PW, int sampling_ratio, int aligned, RoiLevels maps) {       \
        roi_align_fwd<T>(boxes, levels, y,                                                     \
                         RoiShape{N, C, 0, 0, K, PH, PW, 0.0f, sampling_ratio, aligned}, maps); \
    }                                                                                          \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS roi_align_bwd_##SFX(                       \
        const T* __restrict__ dy, const T* __restrict__ boxes, const int* __restrict__ levels,  \
        int N, int C, int K, int PH, int PW, int sampling_ratio, int aligned, RoiLevels maps) { \
        roi_align_bwd<T>(dy, boxes, levels,                                                    \
                         RoiShape{N, C, 0, 0, K, PH, PW, 0.0f, sampling_ratio, aligned}, maps); \
    }

ROI_ALIGN_ENTRIES(float, f32)
ROI_ALIGN_ENTRIES(f16, f16)
ROI_ALIGN_ENTRIES(bf16, bf16)
