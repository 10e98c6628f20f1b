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
// Launch: 1-D grid-stride, any grid, 256 threads; packs of 8 (two float4
// per f32 operand) when every pointer is 16-byte aligned.
#include "common.cuh"

template <typename T, int V>
__device__ __forceinline__ void sgd_body(float* __restrict__ p, const float* __restrict__ g,
                                         float* __restrict__ buf, T* __restrict__ copy, i64 n,
                                         i64 start, float lr, float momentum, float dampening,
                                         float weight_decay, int nesterov, int first) {
    const i64 stride = (i64)gridDim.x * blockDim.x;
    const i64 tid = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    const i64 units = (n - start) / V;
    for (i64 i = tid; i < units; i += stride) {
        const i64 e = start + i * V;
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

template <typename T>
__device__ __forceinline__ void sgd_step(float* p, const float* g, float* buf, T* copy, i64 n,
                                         float lr, float momentum, float dampening,
                                         float weight_decay, int nesterov, int first) {
    i64 done = 0;
    if (aligned16(p) && aligned16(g) && (!buf || aligned16(buf)) && (!copy || aligned16(copy))) {
        sgd_body<T, SLMLP_PACK>(p, g, buf, copy, n, 0, lr, momentum, dampening, weight_decay,
                                nesterov, first);
        done = n / SLMLP_PACK * SLMLP_PACK;
    }
    sgd_body<T, 1>(p, g, buf, copy, n, done, lr, momentum, dampening, weight_decay, nesterov,
                   first);
}

#define SGD_ENTRY_POINT(T, SFX)                                                                  \
    extern "C" __global__ void SLMLP_LAUNCH_BOUNDS sgd_step_##SFX(                    \
        float* p, const float* g, float* buf, T* copy, i64 n, float lr, float momentum,          \
        float dampening, float weight_decay, int nesterov, int first) {                          \
        sgd_step<T>(p, g, buf, copy, n, lr, momentum, dampening, weight_decay, nesterov, first); \
    }

// The suffix names the copy's dtype; sgd_step_f32 with copy = null is the
// plain f32 training step.
SGD_ENTRY_POINT(float, f32)
SGD_ENTRY_POINT(__half, f16)
SGD_ENTRY_POINT(__nv_bfloat16, bf16)
