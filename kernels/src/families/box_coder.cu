// box_coder.cu — torchvision's BoxCoder encode / decode in f32, operation
// for operation as engine/src/ops/detection/cpu.rs (encode_boxes,
// decode_boxes): every product and sum is rounded on its own
// (__fmul_rn / __fadd_rn, no FMA contraction, as the CPU). logf / expf are
// CUDA's (at most 1 and 2 ulp from the correctly rounded value), so dw / dh
// and the decoded widths can differ from the CPU's in the last bits.
// Only f32: box coding stays in f32 under autocast, as torchvision's.
//
// Boxes are (x1, y1, x2, y2) rows; weights (wx, wy, ww, wh) already
// rounded to f32, as the CPU op rounds them.
// Launch: 1-D grid-stride, any grid, 256 threads.
#include "common.cuh"

// out [N, 4]: the targets of reference row i against proposal row i. One
// thread per row.
extern "C" __global__ void SLMLP_LAUNCH_BOUNDS box_encode_f32(
    const float* __restrict__ ref, const float* __restrict__ prop, float* __restrict__ out,
    i64 N, float wx, float wy, float ww, float wh) {
    for (i64 i = grid_start(); i < N; i += grid_stride()) {
        const float* p = prop + i * 4;
        const float* g = ref + i * 4;
        const float ex_w = __fsub_rn(p[2], p[0]);
        const float ex_h = __fsub_rn(p[3], p[1]);
        const float ex_cx = __fadd_rn(p[0], __fmul_rn(0.5f, ex_w));
        const float ex_cy = __fadd_rn(p[1], __fmul_rn(0.5f, ex_h));
        const float gt_w = __fsub_rn(g[2], g[0]);
        const float gt_h = __fsub_rn(g[3], g[1]);
        const float gt_cx = __fadd_rn(g[0], __fmul_rn(0.5f, gt_w));
        const float gt_cy = __fadd_rn(g[1], __fmul_rn(0.5f, gt_h));
        float* o = out + i * 4;
        o[0] = __fdiv_rn(__fmul_rn(wx, __fsub_rn(gt_cx, ex_cx)), ex_w);
        o[1] = __fdiv_rn(__fmul_rn(wy, __fsub_rn(gt_cy, ex_cy)), ex_h);
        o[2] = __fmul_rn(ww, logf(__fdiv_rn(gt_w, ex_w)));
        o[3] = __fmul_rn(wh, logf(__fdiv_rn(gt_h, ex_h)));
    }
}

// out [N, 4K]: code (i, k) of rel [N, 4K] applied to box i of boxes [N, 4];
// dw, dh clamped above at `clip` (NaN stays NaN). One thread per code.
extern "C" __global__ void SLMLP_LAUNCH_BOUNDS box_decode_f32(
    const float* __restrict__ rel, const float* __restrict__ boxes, float* __restrict__ out,
    i64 N, i64 K, float wx, float wy, float ww, float wh, float clip) {
    const i64 total = N * K;
    for (i64 e = grid_start(); e < total; e += grid_stride()) {
        const float* b = boxes + (e / K) * 4;
        const float* c = rel + e * 4;
        const float widths = __fsub_rn(b[2], b[0]);
        const float heights = __fsub_rn(b[3], b[1]);
        const float ctr_x = __fadd_rn(b[0], __fmul_rn(0.5f, widths));
        const float ctr_y = __fadd_rn(b[1], __fmul_rn(0.5f, heights));
        const float dx = __fdiv_rn(c[0], wx);
        const float dy = __fdiv_rn(c[1], wy);
        float dw = __fdiv_rn(c[2], ww);
        float dh = __fdiv_rn(c[3], wh);
        if (dw > clip) dw = clip;
        if (dh > clip) dh = clip;
        const float pred_ctr_x = __fadd_rn(__fmul_rn(dx, widths), ctr_x);
        const float pred_ctr_y = __fadd_rn(__fmul_rn(dy, heights), ctr_y);
        const float c_to_c_w = __fmul_rn(0.5f, __fmul_rn(expf(dw), widths));
        const float c_to_c_h = __fmul_rn(0.5f, __fmul_rn(expf(dh), heights));
        float* o = out + e * 4;
        o[0] = __fsub_rn(pred_ctr_x, c_to_c_w);
        o[1] = __fsub_rn(pred_ctr_y, c_to_c_h);
        o[2] = __fadd_rn(pred_ctr_x, c_to_c_w);
        o[3] = __fadd_rn(pred_ctr_y, c_to_c_h);
    }
}
