// nms.cu — the IoU bit mask of non-maximum suppression (torchvision's CUDA
// design, nms_kernel.cu): boxes are visited in score order `order` (sorted on
// the host, K is small), and mask[i * col_blocks + cb] bit b is set when
// box order[i] overlaps box order[cb * 64 + b] (a later one: j > i) with
// IoU > threshold. The greedy pass over the mask runs on the host.
//
// IoU is computed in f32 in the CPU op's operation order (engine/src/ops/
// nms.rs: iou/area), with __fmul_rn/__fadd_rn so no product is fused into
// an FMA, and compared in double against the f64 threshold as the CPU op
// does: the kept set is then identical to the CPU's. NaN IoU (two empty
// boxes) suppresses nothing, as there.
//
// Launch: grid (col_blocks, col_blocks), 64 threads; block (cx, ry) handles
// rows ry*64.. against columns cx*64..; blocks with ry > cx write nothing
// (the host never reads those words).
#include "common.cuh"

#define NMS_BLOCK 64

__device__ __forceinline__ float box_area(const float (&b)[4]) {
    return __fmul_rn(__fsub_rn(b[2], b[0]), __fsub_rn(b[3], b[1]));
}

__device__ __forceinline__ float box_iou(const float (&a)[4], float area_a, const float (&b)[4],
                                         float area_b) {
    const float w = fmaxf(__fsub_rn(fminf(a[2], b[2]), fmaxf(a[0], b[0])), 0.0f);
    const float h = fmaxf(__fsub_rn(fminf(a[3], b[3]), fmaxf(a[1], b[1])), 0.0f);
    const float inter = __fmul_rn(w, h);
    return __fdiv_rn(inter, __fsub_rn(__fadd_rn(area_a, area_b), inter));
}

template <typename T>
__device__ __forceinline__ void nms_mask(const T* __restrict__ boxes, const int* __restrict__ order,
                                        const i64* __restrict__ cats,
                                        unsigned long long* __restrict__ mask, int K,
                                        double threshold) {
    const int row_start = blockIdx.y, col_start = blockIdx.x;
    if (row_start > col_start) return;
    const int col_blocks = (K + NMS_BLOCK - 1) / NMS_BLOCK;
    const int rows = min(K - row_start * NMS_BLOCK, NMS_BLOCK);
    const int cols = min(K - col_start * NMS_BLOCK, NMS_BLOCK);
    __shared__ float sh[NMS_BLOCK][5];  // x1, y1, x2, y2, area
    __shared__ i64 sh_cat[NMS_BLOCK];
    if ((int)threadIdx.x < cols) {
        const i64 j = order[col_start * NMS_BLOCK + threadIdx.x];
        sh_cat[threadIdx.x] = cats != nullptr ? cats[j] : 0;
        float b[4];
#pragma unroll
        for (int q = 0; q < 4; q++) b[q] = to_f32(boxes[j * 4 + q]);
#pragma unroll
        for (int q = 0; q < 4; q++) sh[threadIdx.x][q] = b[q];
        sh[threadIdx.x][4] = box_area(b);
    }
    __syncthreads();
    if ((int)threadIdx.x >= rows) return;
    const int i = row_start * NMS_BLOCK + threadIdx.x;
    const i64 bi = order[i];
    float a[4];
#pragma unroll
    for (int q = 0; q < 4; q++) a[q] = to_f32(boxes[bi * 4 + q]);
    const float area_a = box_area(a);
    const i64 cat = cats != nullptr ? cats[bi] : 0;
    unsigned long long bits = 0;
    const int first = row_start == col_start ? threadIdx.x + 1 : 0;
    for (int t = first; t < cols; t++) {
        if (sh_cat[t] != cat) continue;
        const float b[4] = {sh[t][0], sh[t][1], sh[t][2], sh[t][3]};
        if ((double)box_iou(a, area_a, b, sh[t][4]) > threshold) bits |= 1ull << t;
    }
    mask[(i64)i * col_blocks + col_start] = bits;
}

template <typename T>
__device__ __forceinline__ void box_iou_matrix(const T* __restrict__ a, const T* __restrict__ b,
                                               T* __restrict__ out, i64 N, i64 M) {
    const i64 total = N * M;
    for (i64 e = grid_start(); e < total; e += grid_stride()) {
        const i64 i = e / M, j = e % M;
        float ba[4], bb[4];
#pragma unroll
        for (int q = 0; q < 4; q++) {
            ba[q] = to_f32(a[i * 4 + q]);
            bb[q] = to_f32(b[j * 4 + q]);
        }
        out[e] = from_f32<T>(box_iou(ba, box_area(ba), bb, box_area(bb)));
    }
}

#define NMS_ENTRIES(T, SFX)                                                                   \
    extern "C" __global__ void __launch_bounds__(NMS_BLOCK) nms_mask_##SFX(                  \
        const T* __restrict__ boxes, const int* __restrict__ order,                            \
        const i64* __restrict__ cats, unsigned long long* __restrict__ mask, int K,            \
        double threshold) {                                                                    \
        nms_mask<T>(boxes, order, cats, mask, K, threshold);                                   \
    }                                                                                          \
    extern "C" __global__ SLMLP_LAUNCH_BOUNDS void box_iou_##SFX(                              \
        const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ out, i64 N, i64 M) {   \
        box_iou_matrix<T>(a, b, out, N, M);                                                    \
    }

NMS_ENTRIES(float, f32)
NMS_ENTRIES(f16, f16)
NMS_ENTRIES(bf16, bf16)
