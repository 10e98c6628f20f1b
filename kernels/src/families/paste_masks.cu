// paste_masks.cu — Mask R-CNN's mask paste (torchvision's
// paste_masks_in_image after expand_masks / expand_boxes), as the CPU
// backend (engine/src/ops/detection/cpu.rs, `paste`).
//
// Box k's mask [Mh, Mw], zero-padded by `pad`, is bilinearly resized
// (align_corners = false) to the box's integer size and its in-image part
// written into plane k of out [K, H, W]; every other pixel is 0. Nothing is
// materialised: the host builds, with the CPU's own tap function
// (upsample_bilinear2d's source index and weights, in f32), the taps of
// every in-image row and column of every box, so the GPU samples exactly
// the CPU's pixels with the same weights:
//   boxes[k] = {y0, y1, x0, x1, rows, cols}: the image rows [y0, y1) and
//     columns [x0, x1) the box covers (empty: y0 == y1 == x0 == x1 == 0);
//     taps[rows + y - y0] / taps[cols + x - x0] are the taps of image row
//     y / column x;
//   taps[i] = {i0, i1, l0, l1}: two padded-mask indices and their weights.
// paste_masks_<t>: one thread per output pixel (k, y, x) (grid-stride over
//   K*H*W); the blend is the CPU's, width first then height, each product
//   and sum rounded in f32 (__fmul_rn / __fadd_rn: no FMA contraction), so
//   it equals the CPU's bit for bit; f16 / bf16 round once at the store.
//   Padded pixels outside the mask read 0. f32 math; out is OVERWRITTEN
//   (no memset needed). Launch: 1-D, any grid, 256 threads.
#include "common.cuh"

struct Tap {
    int i0, i1;
    float l0, l1;
};

struct PasteBox {
    int y0, y1, x0, x1, rows, cols, unused0, unused1;
};

struct Paste {
    int k, mh, mw, pad, h, w;
};

// Pixel (i, j) of the padded mask m [Mh, Mw]: 0 in the padding.
template <typename T>
__device__ __forceinline__ float padded_px(const T* __restrict__ m, int i, int j, const Paste& d) {
    i -= d.pad;
    j -= d.pad;
    return (i >= 0 && i < d.mh && j >= 0 && j < d.mw) ? to_f32(m[(i64)i * d.mw + j]) : 0.0f;
}

template <typename T>
__device__ __forceinline__ void paste_masks(const T* __restrict__ masks, T* __restrict__ out,
                                            const PasteBox* __restrict__ boxes,
                                            const Tap* __restrict__ taps, Paste d) {
    const i64 plane = (i64)d.h * d.w;
    const i64 total = (i64)d.k * plane;
    for (i64 e = grid_start(); e < total; e += grid_stride()) {
        const int k = (int)(e / plane);
        const i64 r = e - (i64)k * plane;
        const int y = (int)(r / d.w);
        const int x = (int)(r - (i64)y * d.w);
        const PasteBox b = boxes[k];
        float v = 0.0f;
        if (y >= b.y0 && y < b.y1 && x >= b.x0 && x < b.x1) {
            const Tap ty = taps[b.rows + (y - b.y0)];
            const Tap tx = taps[b.cols + (x - b.x0)];
            const T* m = masks + (i64)k * d.mh * d.mw;
            const float t0 = __fadd_rn(__fmul_rn(padded_px(m, ty.i0, tx.i0, d), tx.l0),
                                       __fmul_rn(padded_px(m, ty.i0, tx.i1, d), tx.l1));
            const float t1 = __fadd_rn(__fmul_rn(padded_px(m, ty.i1, tx.i0, d), tx.l0),
                                       __fmul_rn(padded_px(m, ty.i1, tx.i1, d), tx.l1));
            v = __fadd_rn(__fmul_rn(t0, ty.l0), __fmul_rn(t1, ty.l1));
        }
        out[e] = from_f32<T>(v);
    }
}

#define PASTE_ENTRY_POINTS(T, SFX)                                                               \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS paste_masks_##SFX(                            \
        const T* masks, T* out, const PasteBox* boxes, const Tap* taps, Paste d) {               \
        paste_masks<T>(masks, out, boxes, taps, d);                                              \
    }

PASTE_ENTRY_POINTS(float, f32)
PASTE_ENTRY_POINTS(__half, f16)
PASTE_ENTRY_POINTS(__nv_bfloat16, bf16)
