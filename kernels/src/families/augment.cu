// augment.cu — the training input pipeline's pixel work on the GPU, as the
// CPU backend (engine/src/ops/augment/cpu.rs) bit for bit: per output image
// b, a region of a u8 HWC source image is resized bilinearly (half-pixel
// centres, no antialiasing: torchvision's resized_crop with
// antialias=False) to size x size, shifted by (dy, dx) with zeros outside
// (pad-and-crop), optionally mirrored left-right, scaled to [0, 1] and
// normalised per channel:
//   x' = mirror ? size-1-x : x;  sy = y + dy;  sx = x' + dx
//   v  = (sy, sx) inside [0, size)^2 ? bilinear(region, sy, sx) : 0
//   out[b][c][y][x] = (v - mean[c]) * inv_std[c]
// The taps are computed here from the integer geometry exactly as the CPU
// does: in double, src = max((o + 0.5) * (in / out) - 0.5, 0) with every
// product and sum rounded (__dmul_rn / __dsub_rn: no FMA contraction),
// i0 = min(floor(src), in-1), i1 = min(i0+1, in-1), l = f32(src - i0);
// pixels are u8 * inv255 (the host's f32 1/255, passed in) and the blend
// is the CPU's, width first, each product and sum rounded in f32.
//
// crops[b] = {offset, h, w, top, left, ch, cw, dy, dx, mirror}: source image
//   b starts at byte `offset` of `pixels` and is h x w x C (HWC); the
//   region is rows [top, top+ch) and columns [left, left+cw). The host
//   checked every region, offset and shift.
// out [B, size, size, C] (NHWC, the GPU's 4-D default layout) is
//   OVERWRITTEN; f16 / bf16 round once at the store.
// Launch: 1-D, any grid, 256 threads; one thread per output pixel (b, y, x)
//   writes its C channels.
#include "common.cuh"

struct Crop {
    i64 offset;
    int h, w, top, left, ch, cw, dy, dx, mirror, unused;
};

struct Augment {
    int b, c, size;
    float inv255;
};

// The source index pair and the weight of the second along an axis of `n_in`
// pixels resized to `n_out`, for output index `o` (the CPU's `tap`).
struct Lerp {
    int i0, i1;
    float l;
};

__device__ __forceinline__ Lerp axis_tap(int o, int n_in, int n_out) {
    const double scale = __ddiv_rn((double)n_in, (double)n_out);
    const double src = fmax(__dsub_rn(__dmul_rn((double)o + 0.5, scale), 0.5), 0.0);
    Lerp t;
    t.i0 = min((int)floor(src), n_in - 1);
    t.i1 = min(t.i0 + 1, n_in - 1);
    t.l = __double2float_rn(__dsub_rn(src, (double)t.i0));
    return t;
}

template <typename T>
__device__ __forceinline__ void crop_resize(const unsigned char* __restrict__ pixels,
                                            const Crop* __restrict__ crops,
                                            const float* __restrict__ mean,
                                            const float* __restrict__ inv_std,
                                            T* __restrict__ out, Augment a) {
    const i64 plane = (i64)a.size * a.size;
    const i64 total = (i64)a.b * plane;
    for (i64 e = grid_start(); e < total; e += grid_stride()) {
        const int b = (int)(e / plane);
        const i64 r = e - (i64)b * plane;
        const int y = (int)(r / a.size);
        const int x = (int)(r - (i64)y * a.size);
        const Crop k = crops[b];
        const int sy = y + k.dy;
        const int sx = (k.mirror ? a.size - 1 - x : x) + k.dx;
        const bool inside = sy >= 0 && sy < a.size && sx >= 0 && sx < a.size;
        T* o = out + e * a.c;
        if (!inside) {
            for (int c = 0; c < a.c; c++) o[c] = from_f32<T>(__fmul_rn(__fsub_rn(0.0f, mean[c]), inv_std[c]));
            continue;
        }
        const Lerp ty = axis_tap(sy, k.ch, a.size);
        const Lerp tx = axis_tap(sx, k.cw, a.size);
        const float ly0 = __fsub_rn(1.0f, ty.l), lx0 = __fsub_rn(1.0f, tx.l);
        const unsigned char* img = pixels + k.offset;
        const i64 row0 = ((i64)(k.top + ty.i0) * k.w + k.left) * a.c;
        const i64 row1 = ((i64)(k.top + ty.i1) * k.w + k.left) * a.c;
        const i64 c0 = (i64)tx.i0 * a.c, c1 = (i64)tx.i1 * a.c;
        for (int c = 0; c < a.c; c++) {
            const float p00 = __fmul_rn((float)img[row0 + c0 + c], a.inv255);
            const float p01 = __fmul_rn((float)img[row0 + c1 + c], a.inv255);
            const float p10 = __fmul_rn((float)img[row1 + c0 + c], a.inv255);
            const float p11 = __fmul_rn((float)img[row1 + c1 + c], a.inv255);
            const float top = __fadd_rn(__fmul_rn(p00, lx0), __fmul_rn(p01, tx.l));
            const float bottom = __fadd_rn(__fmul_rn(p10, lx0), __fmul_rn(p11, tx.l));
            const float v = __fadd_rn(__fmul_rn(top, ly0), __fmul_rn(bottom, ty.l));
            o[c] = from_f32<T>(__fmul_rn(__fsub_rn(v, mean[c]), inv_std[c]));
        }
    }
}

#define AUGMENT_ENTRY_POINTS(T, SFX)                                                             \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS crop_resize_##SFX(                            \
        const unsigned char* pixels, const Crop* crops, const float* mean, const float* inv_std, \
        T* out, Augment a) {                                                                     \
        crop_resize<T>(pixels, crops, mean, inv_std, out, a);                                    \
    }

AUGMENT_ENTRY_POINTS(float, f32)
AUGMENT_ENTRY_POINTS(__half, f16)
AUGMENT_ENTRY_POINTS(__nv_bfloat16, bf16)
