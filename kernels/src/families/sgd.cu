// sgd.cu — fused SGD step on f32 master weights that also refreshes the
// compute-dtype copy the next forward reads, exactly torch.optim.SGD (and
// engine/src/optim/sgd.rs), per element:
//   d   = g + weight_decay * p
//   buf = first ? d : momentum * buf + (1 - dampening) * d   (if buf != null)
//   d   = nesterov ? d + momentum * buf : buf                 (if buf != null)
//   p   = p - lr * d;  copy = round_to_T(p)                   (if copy != null)
// Pass buf = null for momentum 0 (no state), weight_decay = 0 for params
// excluded from decay, first = 1 on a parameter's first step (the CPU's
// "buf = d"). g is the f32 master gradient (already unscaled).
//
// Why fused: one pass reads p, g, buf and writes p, buf, copy — instead of
// an optimizer pass plus a separate cast of every weight before the next
// forward. p, buf are updated IN PLACE; copy is OVERWRITTEN.
//
// Two forms, the same arithmetic per element (one templated body, so their
// results are bitwise equal):
//   sgd_step_<t>  one parameter per launch. 1-D grid-stride, any grid, 256
//                 threads.
//   sgd_multi_<t> many parameters in one launch (PyTorch's
//                 multi_tensor_apply, written here): a device table of
//                 SgdTensor (one per parameter: its buffers and settings)
//                 and a list of SgdChunk, each a range of at most
//                 64 Ki elements of one tensor (built and checked on the
//                 host by engine/src/ops/optim/cuda.rs's `sgd_table`, which
//                 mirrors both structs and skips empty tensors). Block b
//                 walks chunks b, b + gridDim.x, ...; its 256 threads
//                 stride over the chunk. A tensor's copy may be null (an f32
//                 parameter without a kept forward copy) in any <t>'s
//                 launch, so one launch serves such params plus the params
//                 of one copy dtype.
// Both move packs of 8 (two float4 per f32 operand) when every pointer of
// the tensor is 16-byte aligned (chunk starts are multiples of 8 elements,
// so a chunk of an aligned tensor stays aligned), else single elements.
#include "common.cuh"

// The per-element update over elements begin + i * V, i in [tid, units)
// stepping by `stride` (units = (end - begin) / V): the body both forms share.
template <typename T, int V>
__device__ __forceinline__ void sgd_body(float* __restrict__ p, const float* __restrict__ g,
                                         float* __restrict__ buf, T* __restrict__ copy, i64 begin,
                                         i64 end, i64 tid, i64 stride, float lr, float momentum,
                                         float dampening, float weight_decay, int nesterov,
                                         int first) {
    const i64 units = (end - begin) / V;
    for (i64 i = tid; i < units; i += stride) {
        const i64 e = begin + i * V;
        float pv[V], gv[V], bv[V];
        load_f32<float, V>(p + e, pv);
        load_f32<float, V>(g + e, gv);
#pragma unroll
        for (int j = 0; j < V; j++) gv[j] = fmaf(weight_decay, pv[j], gv[j]);
        if (buf) {
            if (first) {
#pragma unroll
                for (int j = 0; j < V; j++) bv[j] = gv[j];
            } else {
                load_f32<float, V>(buf + e, bv);
#pragma unroll
                for (int j = 0; j < V; j++) bv[j] = momentum * bv[j] + (1.0f - dampening) * gv[j];
            }
            store_f32<float, V>(buf + e, bv);
#pragma unroll
            for (int j = 0; j < V; j++) gv[j] = nesterov ? gv[j] + momentum * bv[j] : bv[j];
        }
#pragma unroll
        for (int j = 0; j < V; j++) pv[j] = pv[j] - lr * gv[j];
        store_f32<float, V>(p + e, pv);
        if (copy) store_f32<T, V>(copy + e, pv);
    }
}

// Elements [begin, end) of one tensor, thread `tid` of `stride`: packs of
// SLMLP_PACK from `begin` when every pointer is 16-byte aligned (`begin` is
// a multiple of SLMLP_PACK), then the rest one by one.
template <typename T>
__device__ __forceinline__ void sgd_range(float* p, const float* g, float* buf, T* copy, i64 begin,
                                          i64 end, i64 tid, i64 stride, float lr, float momentum,
                                          float dampening, float weight_decay, int nesterov,
                                          int first) {
    i64 done = begin;
    if (aligned16(p) && aligned16(g) && (!buf || aligned16(buf)) && (!copy || aligned16(copy))) {
        sgd_body<T, SLMLP_PACK>(p, g, buf, copy, begin, end, tid, stride, lr, momentum, dampening,
                                weight_decay, nesterov, first);
        done = begin + (end - begin) / SLMLP_PACK * SLMLP_PACK;
    }
    sgd_body<T, 1>(p, g, buf, copy, done, end, tid, stride, lr, momentum, dampening, weight_decay,
                   nesterov, first);
}

#define SGD_ENTRY_POINT(T, SFX)                                                                  \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS sgd_step_##SFX(                               \
        float* p, const float* g, float* buf, T* copy, i64 n, float lr, float momentum,          \
        float dampening, float weight_decay, int nesterov, int first) {                          \
        sgd_range<T>(p, g, buf, copy, 0, n, grid_start(), grid_stride(), lr, momentum,           \
                     dampening, weight_decay, nesterov, first);                                  \
    }

// The suffix names the copy's dtype; sgd_step_f32 with copy = null is the
// plain f32 training step.
SGD_ENTRY_POINT(float, f32)
SGD_ENTRY_POINT(__half, f16)
SGD_ENTRY_POINT(__nv_bfloat16, bf16)

// One parameter of a multi-tensor step: 80 bytes, the layout of
// engine/src/ops/optim/cuda.rs's SgdTensor. Null buf: no momentum; null
// copy: nothing to round (an f32 parameter whose bf16/f16 forward copy is
// not kept, engine/src/nn/param.rs). A non-null lr_at is a device
// f32 read when the kernel runs, in place of lr: the learning rate of a
// step captured once in a CUDA graph and replayed with new rates. A
// non-null skip_at is a device f32 flag (a loss-scaled step's overflow,
// found_to_f32 in reduce.cu): when it is not 0 the tensor is left as it
// is (p, buf and copy untouched, GradScaler's skipped step).
struct SgdTensor {
    float* p;
    const float* g;
    float* buf;
    void* copy;
    i64 n;
    float lr, momentum, dampening, weight_decay;
    int nesterov, first;
    const float* lr_at;
    const float* skip_at;
};

// Elements [start, start + count) of tensor `tensor`: 16 bytes, the layout
// of engine/src/ops/optim/cuda.rs's SgdChunk. start is a multiple of
// SLMLP_PACK, 0 < count <= 64 Ki, start + count <= the tensor's n.
struct SgdChunk {
    i64 start;
    int tensor;
    int count;
};

template <typename T>
__device__ __forceinline__ void sgd_multi(const SgdTensor* __restrict__ tensors,
                                          const SgdChunk* __restrict__ chunks, int n_chunks) {
    for (int c = blockIdx.x; c < n_chunks; c += gridDim.x) {
        const SgdChunk ch = chunks[c];
        const SgdTensor t = tensors[ch.tensor];
        if (t.skip_at && *t.skip_at != 0.0f) continue;
        const float lr = t.lr_at ? *t.lr_at : t.lr;
        sgd_range<T>(t.p, t.g, t.buf, static_cast<T*>(t.copy), ch.start, ch.start + ch.count,
                     threadIdx.x, blockDim.x, lr, t.momentum, t.dampening, t.weight_decay,
                     t.nesterov, t.first);
    }
}

#define SGD_MULTI_ENTRY_POINT(T, SFX)                                                            \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS sgd_multi_##SFX(                              \
        const SgdTensor* tensors, const SgdChunk* chunks, int n_chunks) {                        \
        sgd_multi<T>(tensors, chunks, n_chunks);                                                 \
    }

// The suffix names the copy dtype of the launch's low-precision params.
SGD_MULTI_ENTRY_POINT(float, f32)
SGD_MULTI_ENTRY_POINT(__half, f16)
SGD_MULTI_ENTRY_POINT(__nv_bfloat16, bf16)

// ---------------------------------------------------------------------------
// LARS (engine/src/optim/lars.rs), per param, three launches and no host
// read:
//   lars_norms (any grid G <= the workspace, 256 threads): per block, the
//     sums of p^2 and g^2 in double -> partials[2*block], [2*block + 1];
//   lars_trust (one block of 256): adds the G pairs in double in a fixed
//     order, wn = sqrt(sum p^2), gn = sqrt(sum g^2), and writes the trust
//     ratio q = eta * wn / (gn + wd * wn) when wn > 0 and the denominator
//     > 0, else 1 (the CPU's rule, in double, rounded to f32 once);
//   lars_step_<t> (1-D grid-stride): buf = momentum * buf + q * (g + wd * p),
//     p = p - lr * buf, copy = round_to_T(p) (if copy != null); q is read
//     from the device (q == null: 1, a param excluded from adaptation).
// p, buf are updated IN PLACE (f32 master and momentum); copy OVERWRITTEN.
__device__ __forceinline__ double block_sum_double(double v, double* sh) {
    v = warp_sum(v);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
    __syncthreads();
    double t = 0.0;
    for (int w = 0; w < (int)(blockDim.x / 32); w++) t += sh[w];
    return t;
}

extern "C" __global__ void SLMLP_LAUNCH_BOUNDS lars_norms(const float* __restrict__ p,
                                                           const float* __restrict__ g, i64 n,
                                                           double* __restrict__ partials) {
    __shared__ double sh[SLMLP_BLOCK / 32];
    double sp = 0.0, sg = 0.0;
    for (i64 e = grid_start(); e < n; e += grid_stride()) {
        const double a = (double)p[e], b = (double)g[e];
        sp += a * a;
        sg += b * b;
    }
    sp = block_sum_double(sp, sh);
    sg = block_sum_double(sg, sh);
    if (threadIdx.x == 0) {
        partials[2 * blockIdx.x] = sp;
        partials[2 * blockIdx.x + 1] = sg;
    }
}

extern "C" __global__ void SLMLP_LAUNCH_BOUNDS lars_trust(const double* __restrict__ partials,
                                                           int count, double eta,
                                                           double weight_decay,
                                                           float* __restrict__ q) {
    __shared__ double sh[SLMLP_BLOCK / 32];
    double sp = 0.0, sg = 0.0;
    for (int i = threadIdx.x; i < count; i += blockDim.x) {
        sp += partials[2 * i];
        sg += partials[2 * i + 1];
    }
    sp = block_sum_double(sp, sh);
    sg = block_sum_double(sg, sh);
    if (threadIdx.x == 0) {
        const double wn = sqrt(sp), gn = sqrt(sg);
        const double denom = gn + weight_decay * wn;
        q[0] = (float)(wn > 0.0 && denom > 0.0 ? eta * wn / denom : 1.0);
    }
}

template <typename T>
__device__ __forceinline__ void lars_step(float* __restrict__ p, const float* __restrict__ g,
                                          float* __restrict__ buf, T* __restrict__ copy, i64 n,
                                          float lr, float momentum, float weight_decay,
                                          const float* __restrict__ q) {
    const float trust = q ? q[0] : 1.0f;
    for (i64 e = grid_start(); e < n; e += grid_stride()) {
        const float w = p[e];
        const float b = momentum * buf[e] + trust * (g[e] + weight_decay * w);
        buf[e] = b;
        const float nw = w - lr * b;
        p[e] = nw;
        if (copy) copy[e] = from_f32<T>(nw);
    }
}

#define LARS_ENTRY_POINT(T, SFX)                                                                 \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS lars_step_##SFX(                              \
        float* p, const float* g, float* buf, T* copy, i64 n, float lr, float momentum,          \
        float weight_decay, const float* q) {                                                    \
        lars_step<T>(p, g, buf, copy, n, lr, momentum, weight_decay, q);                         \
    }

LARS_ENTRY_POINT(float, f32)
LARS_ENTRY_POINT(__half, f16)
LARS_ENTRY_POINT(__nv_bfloat16, bf16)
