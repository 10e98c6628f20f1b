// emu_culibs.cpp: cuBLASLt and cuDNN as the CUDA emulator's (emu_driver.cpp)
// libraries: the calls the engine makes (engine/src/cuda/blas.rs, dnn.rs),
// computed by plain loops on the CPU. One file is built three times, as
// libcublasLt.so.13, libcublas.so.13 and libcudnn.so.9.
//
// What is emulated:
// - cublasLtMatmul: D = alpha op(A) op(B) + beta C, column-major with
//   leading dimensions and strided batches, the bias and ReLU epilogues
//   (bias typed as D; GELU, which the engine never asks for, is refused),
//   f32/f16/bf16 data, f32 compute; TF32 compute rounds A and B to TF32
//   first.
// - the legacy cuDNN convolution: NHWC tensors and KRSC filters, padding,
//   stride, dilation, groups; forward, backward data, backward filter, with
//   alpha and beta; cudnnAddTensor for the bias. Two algorithms are offered
//   per direction: 0 needs no workspace, 1 asks for 4 KiB and scribbles
//   over it, so a workspace that is too small or shared shows.
// - Find*AlgorithmEx overwrites the output with NaN bytes, as cuDNN may
//   leave it with anything.
// - the cuDNN graph (backend) API for one-convolution operation graphs:
//   three engine configurations, no numerical notes, no knobs. Engines 0
//   and 1 run as the legacy algorithms and refuse dilated convolutions;
//   engine 2 runs as algorithm 0 and carries the RUNTIME_COMPILATION
//   behaviour note, so the engine's handling of such engines (left out
//   unless no other gives a plan, or unless SLMLP_CUDNN_RTC=any) runs.
// Not emulated: cuBLAS's own (non-Lt) API, and any speed. Sums are
// accumulated in double, so results are as exact as f32 can hold, not
// bitwise a GPU's.
//
// Work goes through the driver's stream (slmlp_emu_submit), so a call made
// while a stream is captured lands in the graph, as on a GPU.
#include <dlfcn.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <vector>

#include "emu_device.h"

#define API extern "C" __attribute__((visibility("default"))) int

namespace {

typedef void (*HostWork)(const void*);
typedef int (*SubmitFn)(void*, const char*, HostWork, const void*, size_t);

// Queues `work(args)` on `stream` through the emulated driver; `name` is
// what the driver counts it as.
template <typename A>
int submit(void* stream, const char* name, HostWork work, const A& args) {
    // The driver is loaded already, by cudarc, with local symbols.
    static void* driver = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    static SubmitFn fn = driver ? (SubmitFn)dlsym(driver, "slmlp_emu_submit") : nullptr;
    if (!fn) {
        std::fprintf(stderr, "cuda emulator: libcuda.so.1 is not the emulator's (no slmlp_emu_submit)\n");
        return 1;
    }
    return fn(stream, name, work, &args, sizeof(A));
}

// Element types: 0 f32, 1 f16, 2 bf16.
enum Ty { F32, F16, BF16, BAD };

float load(const void* p, Ty t, int64_t i) {
    switch (t) {
        case F32: return static_cast<const float*>(p)[i];
        case F16: return __half2float(static_cast<const __half*>(p)[i]);
        default: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    }
}

void store(void* p, Ty t, int64_t i, float v) {
    switch (t) {
        case F32: static_cast<float*>(p)[i] = v; break;
        case F16: static_cast<__half*>(p)[i] = __float2half_rn(v); break;
        default: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v); break;
    }
}

size_t size_of(Ty t) { return t == F32 ? 4 : 2; }

// f32 rounded to TF32 (10 mantissa bits, nearest-even), as tensor cores read it.
float tf32(float v) {
    if (!std::isfinite(v)) return v;
    uint32_t u;
    std::memcpy(&u, &v, 4);
    u = (u + 0xfffu + ((u >> 13) & 1u)) & ~0x1fffu;
    std::memcpy(&v, &u, 4);
    return v;
}

// ============================ cuBLASLt ============================

// cudaDataType_t: CUDA_R_32F 0, CUDA_R_16F 2, CUDA_R_16BF 14.
Ty cuda_type(int t) { return t == 0 ? F32 : t == 2 ? F16 : t == 14 ? BF16 : BAD; }

struct Layout {
    Ty ty;
    uint64_t rows, cols;
    int64_t ld;
    int32_t batch = 1;
    int64_t batch_stride = 0;  // elements
};

struct MatmulDesc {
    int compute;  // cublasComputeType_t: 68 f32, 77 f32 fast TF32
    int trans_a = 0, trans_b = 0;
    int epilogue = 1;  // CUBLASLT_EPILOGUE_DEFAULT
    const void* bias = nullptr;
};

struct MatmulArgs {
    MatmulDesc d;
    Layout a, b, c, dl;
    float alpha, beta;
    const void *A, *B, *C;
    void* D;
};

// Dot product of two f32 runs, summed in double (four partial sums).
double dot(const float* a, const float* b, size_t n) {
    double s[4] = {0, 0, 0, 0};
    size_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int j = 0; j < 4; j++) s[j] += (double)a[i + j] * (double)b[i + j];
    for (; i < n; i++) s[0] += (double)a[i] * (double)b[i];
    return (s[0] + s[1]) + (s[2] + s[3]);
}

void matmul_work(const void* p) {
    const MatmulArgs& m = *static_cast<const MatmulArgs*>(p);
    const bool ta = m.d.trans_a != 0, tb = m.d.trans_b != 0;
    const uint64_t M = m.dl.rows, N = m.dl.cols, K = ta ? m.a.rows : m.a.cols;
    const bool round = m.d.compute == 77;
    const int ep = m.d.epilogue;
    const bool bias = ep == 4 || ep == 6;
    const bool relu = ep == 2 || ep == 6;
    // op(A) as M rows of K and op(B) as N columns of K, widened to f32
    std::vector<float> a(M * K), b(N * K);
    for (int32_t bt = 0; bt < m.dl.batch; bt++) {
        const int64_t oa = bt * m.a.batch_stride, ob = bt * m.b.batch_stride,
                      oc = bt * m.c.batch_stride, od = bt * m.dl.batch_stride;
        for (uint64_t i = 0; i < M; i++)
            for (uint64_t k = 0; k < K; k++) {
                const float v = load(m.A, m.a.ty, oa + (int64_t)(ta ? k + i * m.a.ld : i + k * m.a.ld));
                a[i * K + k] = round ? tf32(v) : v;
            }
        for (uint64_t j = 0; j < N; j++)
            for (uint64_t k = 0; k < K; k++) {
                const float v = load(m.B, m.b.ty, ob + (int64_t)(tb ? j + k * m.b.ld : k + j * m.b.ld));
                b[j * K + k] = round ? tf32(v) : v;
            }
        for (uint64_t j = 0; j < N; j++) {
            for (uint64_t i = 0; i < M; i++) {
                float v = m.alpha * (float)dot(&a[i * K], &b[j * K], K);
                if (m.beta != 0.0f) v += m.beta * load(m.C, m.c.ty, oc + (int64_t)(i + j * m.c.ld));
                if (bias) v += load(m.d.bias, m.dl.ty, (int64_t)i);
                if (relu) v = std::isnan(v) ? v : fmaxf(v, 0.0f);
                store(m.D, m.dl.ty, od + (int64_t)(i + j * m.dl.ld), v);
            }
        }
    }
}

// ============================ cuDNN ============================

// cudnnDataType_t: FLOAT 0, HALF 2, BFLOAT16 9.
Ty dnn_type(int t) { return t == 0 ? F32 : t == 2 ? F16 : t == 9 ? BF16 : BAD; }

struct Tensor4 {
    Ty ty = BAD;
    int n = 0, c = 0, h = 0, w = 0;  // logical NCHW dims; memory is NHWC (KRSC for filters)
    int64_t at(int n_, int c_, int h_, int w_) const { return (((int64_t)n_ * h + h_) * w + w_) * c + c_; }
    int64_t count() const { return (int64_t)n * c * h * w; }
};

struct ConvDesc {
    int pad_h = 0, pad_w = 0, u = 1, v = 1, dil_h = 1, dil_w = 1, groups = 1, math = 0;
};

enum Dir { Fwd, BwdData, BwdFilter };

struct ConvArgs {
    Dir dir;
    int algo;
    Tensor4 x, w, y;
    ConvDesc cd;
    float alpha, beta;
    const void *a, *b;  // fwd: x, w; bwd data: w, dy; bwd filter: x, dy
    void* out;          // fwd: y; bwd data: dx; bwd filter: dw
    void* ws;  // ALGO1_WORKSPACE bytes for algorithm 1
};

constexpr size_t ALGO1_WORKSPACE = 4096;

// Visits every (output pixel, filter tap) pair of the convolution that
// reads an in-bounds input pixel: f(n, oh, ow, ih, iw, r, s).
template <typename F>
void for_each_tap(const ConvArgs& c, F f) {
    const Tensor4 &x = c.x, &w = c.w, &y = c.y;
    for (int n = 0; n < y.n; n++)
        for (int oh = 0; oh < y.h; oh++)
            for (int ow = 0; ow < y.w; ow++)
                for (int r = 0; r < w.h; r++) {
                    const int ih = oh * c.cd.u - c.cd.pad_h + r * c.cd.dil_h;
                    if (ih < 0 || ih >= x.h) continue;
                    for (int s = 0; s < w.w; s++) {
                        const int iw = ow * c.cd.v - c.cd.pad_w + s * c.cd.dil_w;
                        if (iw < 0 || iw >= x.w) continue;
                        f(n, oh, ow, ih, iw, r, s);
                    }
                }
}

std::vector<float> widen(const void* p, const Tensor4& t) {
    std::vector<float> v((size_t)t.count());
    for (int64_t i = 0; i < t.count(); i++) v[(size_t)i] = load(p, t.ty, i);
    return v;
}

void conv_work(const void* p) {
    const ConvArgs& c = *static_cast<const ConvArgs*>(p);
    if (c.algo == 1 && c.ws) std::memset(c.ws, 0xab, ALGO1_WORKSPACE);
    const Tensor4 &x = c.x, &w = c.w, &y = c.y;
    const int G = c.cd.groups, cg = w.c, kg = w.n / G;  // input channels a group reads, filters a group has
    const Tensor4& o = c.dir == Fwd ? y : c.dir == BwdData ? x : w;
    // the two operands, widened; their roles by direction
    const std::vector<float> xa = c.dir == BwdData ? std::vector<float>() : widen(c.a, x);
    const std::vector<float> wa = c.dir == BwdData ? widen(c.a, w) : c.dir == Fwd ? widen(c.b, w) : std::vector<float>();
    const std::vector<float> ya = c.dir == Fwd ? std::vector<float>() : widen(c.b, y);
    std::vector<double> acc((size_t)o.count(), 0.0);
    for_each_tap(c, [&](int n, int oh, int ow, int ih, int iw, int r, int s) {
        for (int k = 0; k < w.n; k++) {
            const int64_t xi = x.at(n, (k / kg) * cg, ih, iw), wi = w.at(k, 0, r, s);
            if (c.dir == Fwd) {
                acc[y.at(n, k, oh, ow)] += dot(&xa[xi], &wa[wi], (size_t)cg);
            } else if (c.dir == BwdData) {
                const double g = ya[y.at(n, k, oh, ow)];
                for (int ci = 0; ci < cg; ci++) acc[xi + ci] += g * wa[wi + ci];
            } else {
                const double g = ya[y.at(n, k, oh, ow)];
                for (int ci = 0; ci < cg; ci++) acc[wi + ci] += g * xa[xi + ci];
            }
        }
    });
    for (int64_t i = 0; i < o.count(); i++) {
        float v = c.alpha * (float)acc[(size_t)i];
        if (c.beta != 0.0f) v += c.beta * load(c.out, o.ty, i);
        store(c.out, o.ty, i, v);
    }
}

struct AddArgs {
    Tensor4 a, c;
    float alpha, beta;
    const void* A;
    void* C;
};

void add_work(const void* p) {
    const AddArgs& t = *static_cast<const AddArgs*>(p);
    for (int n = 0; n < t.c.n; n++)
        for (int h = 0; h < t.c.h; h++)
            for (int w = 0; w < t.c.w; w++)
                for (int ch = 0; ch < t.c.c; ch++) {
                    const int64_t i = t.c.at(n, ch, h, w);
                    const int64_t j = t.a.at(t.a.n == 1 ? 0 : n, t.a.c == 1 ? 0 : ch,
                                             t.a.h == 1 ? 0 : h, t.a.w == 1 ? 0 : w);
                    float v = t.alpha * load(t.A, t.a.ty, j);
                    if (t.beta != 0.0f) v += t.beta * load(t.C, t.c.ty, i);
                    store(t.C, t.c.ty, i, v);
                }
}

struct DnnHandle {
    void* stream = nullptr;
};

// cudnnStatus_t / cublasStatus_t values
constexpr int OK = 0, BAD_PARAM = 3, DNN_NOT_SUPPORTED = 3000, BLAS_INVALID = 7,
              BLAS_NOT_SUPPORTED = 15;

}  // namespace

// ---- cuBLASLt
API cublasLtCreate(void** h) {
    *h = new int(0);
    return OK;
}
API cublasLtDestroy(void* h) {
    delete static_cast<int*>(h);
    return OK;
}
API cublasLtMatrixLayoutCreate(void** l, int type, uint64_t rows, uint64_t cols, int64_t ld) {
    const Ty t = cuda_type(type);
    if (t == BAD || ld < (int64_t)rows) return BLAS_INVALID;
    *l = new Layout{t, rows, cols, ld};
    return OK;
}
API cublasLtMatrixLayoutDestroy(void* l) {
    delete static_cast<Layout*>(l);
    return OK;
}
namespace {
// A cuBLASLt attribute written into `field`: exactly its size, or INVALID_VALUE.
template <typename T>
int set_field(T& field, const void* buf, size_t bytes) {
    if (bytes != sizeof(T)) return BLAS_INVALID;
    std::memcpy(&field, buf, sizeof(T));
    return OK;
}
}  // namespace

API cublasLtMatrixLayoutSetAttribute(void* lp, int attr, const void* buf, size_t bytes) {
    Layout* l = static_cast<Layout*>(lp);
    switch (attr) {
        case 5: return set_field(l->batch, buf, bytes);         // BATCH_COUNT
        case 6: return set_field(l->batch_stride, buf, bytes);  // STRIDED_BATCH_OFFSET
        default: return BLAS_NOT_SUPPORTED;
    }
}
API cublasLtMatmulDescCreate(void** d, int compute, int scale) {
    if ((compute != 68 && compute != 77) || scale != 0) return BLAS_NOT_SUPPORTED;
    *d = new MatmulDesc{compute};
    return OK;
}
API cublasLtMatmulDescDestroy(void* d) {
    delete static_cast<MatmulDesc*>(d);
    return OK;
}
API cublasLtMatmulDescSetAttribute(void* dp, int attr, const void* buf, size_t bytes) {
    MatmulDesc* d = static_cast<MatmulDesc*>(dp);
    switch (attr) {
        case 3: return set_field(d->trans_a, buf, bytes);   // TRANSA
        case 4: return set_field(d->trans_b, buf, bytes);   // TRANSB
        case 7: return set_field(d->epilogue, buf, bytes);  // EPILOGUE
        case 8: return set_field(d->bias, buf, bytes);      // BIAS_POINTER
        default: return BLAS_NOT_SUPPORTED;
    }
}
API cublasLtMatmulPreferenceCreate(void** p) {
    *p = new uint64_t(0);
    return OK;
}
API cublasLtMatmulPreferenceDestroy(void* p) {
    delete static_cast<uint64_t*>(p);
    return OK;
}
API cublasLtMatmulPreferenceSetAttribute(void*, int, const void*, size_t) { return OK; }

// One algorithm (id 0, no workspace), after checking the shapes agree.
API cublasLtMatmulAlgoGetHeuristic(void*, void* dp, void* ap, void* bp, void* cp, void* dlp, void*,
                                   int requested, void* results, int* returned) {
    const MatmulDesc& d = *static_cast<MatmulDesc*>(dp);
    const Layout &a = *static_cast<Layout*>(ap), &b = *static_cast<Layout*>(bp),
                 &c = *static_cast<Layout*>(cp), &dl = *static_cast<Layout*>(dlp);
    const uint64_t m = d.trans_a ? a.cols : a.rows, k = d.trans_a ? a.rows : a.cols;
    const uint64_t kb = d.trans_b ? b.cols : b.rows, n = d.trans_b ? b.rows : b.cols;
    if (requested < 1 || k != kb || m != dl.rows || n != dl.cols || c.rows != dl.rows ||
        c.cols != dl.cols || a.batch != dl.batch || b.batch != dl.batch || c.batch != dl.batch) {
        *returned = 0;
        return BLAS_INVALID;
    }
    // cublasLtMatmulHeuristicResult_t: algo (64 bytes), workspaceSize, state, wavesCount, reserved[4]
    unsigned char* r = static_cast<unsigned char*>(results);
    std::memset(r, 0, 96);
    const float waves = 1.0f;
    std::memcpy(r + 76, &waves, 4);
    *returned = 1;
    return OK;
}
API cublasLtMatmulAlgoConfigGetAttribute(const void*, int, void* buf, size_t bytes, size_t* written) {
    std::memset(buf, 0, bytes);
    if (written) *written = bytes;
    return OK;
}
API cublasLtMatmul(void*, void* dp, const void* alpha, const void* A, void* ap, const void* B,
                   void* bp, const void* beta, const void* C, void* cp, void* D, void* dlp,
                   const void*, void*, size_t, void* stream) {
    MatmulArgs m{*static_cast<MatmulDesc*>(dp), *static_cast<Layout*>(ap), *static_cast<Layout*>(bp),
                 *static_cast<Layout*>(cp), *static_cast<Layout*>(dlp),
                 *static_cast<const float*>(alpha), *static_cast<const float*>(beta), A, B, C, D};
    if (m.a.ty == BAD || m.dl.ty != m.c.ty) return BLAS_INVALID;
    const int ep = m.d.epilogue;
    // DEFAULT, RELU, BIAS, RELU_BIAS: the epilogues the engine uses
    if (ep != 1 && ep != 2 && ep != 4 && ep != 6) return BLAS_NOT_SUPPORTED;
    if ((ep == 4 || ep == 6) && !m.d.bias) return BLAS_INVALID;
    return submit(stream, "cublasLtMatmul", matmul_work, m) == 0 ? OK : BLAS_INVALID;
}

// ---- cuDNN
extern "C" __attribute__((visibility("default"))) size_t cudnnGetVersion() { return 0; }
extern "C" __attribute__((visibility("default"))) const char* cudnnGetErrorString(int s) {
    return s == OK ? "CUDNN_STATUS_SUCCESS" : s == BAD_PARAM ? "CUDNN_STATUS_BAD_PARAM"
                                                              : "CUDNN_STATUS_NOT_SUPPORTED";
}
API cudnnCreate(void** h) {
    *h = new DnnHandle();
    return OK;
}
API cudnnDestroy(void* h) {
    delete static_cast<DnnHandle*>(h);
    return OK;
}
API cudnnSetStream(void* h, void* s) {
    static_cast<DnnHandle*>(h)->stream = s;
    return OK;
}
API cudnnCreateTensorDescriptor(void** d) {
    *d = new Tensor4();
    return OK;
}
API cudnnCreateFilterDescriptor(void** d) { return cudnnCreateTensorDescriptor(d); }
API cudnnDestroyTensorDescriptor(void* d) {
    delete static_cast<Tensor4*>(d);
    return OK;
}
API cudnnDestroyFilterDescriptor(void* d) { return cudnnDestroyTensorDescriptor(d); }
// format: CUDNN_TENSOR_NHWC (1) only; the engine asks for nothing else.
API cudnnSetTensor4dDescriptor(void* dp, int format, int type, int n, int c, int h, int w) {
    const Ty t = dnn_type(type);
    if (format != 1 || t == BAD || n <= 0 || c <= 0 || h <= 0 || w <= 0) return BAD_PARAM;
    *static_cast<Tensor4*>(dp) = Tensor4{t, n, c, h, w};
    return OK;
}
API cudnnSetFilter4dDescriptor(void* dp, int type, int format, int k, int c, int h, int w) {
    return cudnnSetTensor4dDescriptor(dp, format, type, k, c, h, w);
}
API cudnnCreateConvolutionDescriptor(void** d) {
    *d = new ConvDesc();
    return OK;
}
API cudnnDestroyConvolutionDescriptor(void* d) {
    delete static_cast<ConvDesc*>(d);
    return OK;
}
API cudnnSetConvolution2dDescriptor(void* dp, int ph, int pw, int u, int v, int dh, int dw, int mode,
                                    int compute) {
    if (ph < 0 || pw < 0 || u <= 0 || v <= 0 || dh <= 0 || dw <= 0 || mode != 1 || compute != 0)
        return BAD_PARAM;
    ConvDesc* d = static_cast<ConvDesc*>(dp);
    d->pad_h = ph, d->pad_w = pw, d->u = u, d->v = v, d->dil_h = dh, d->dil_w = dw;
    return OK;
}
API cudnnSetConvolutionGroupCount(void* dp, int g) {
    if (g <= 0) return BAD_PARAM;
    static_cast<ConvDesc*>(dp)->groups = g;
    return OK;
}
API cudnnSetConvolutionMathType(void* dp, int m) {
    static_cast<ConvDesc*>(dp)->math = m;
    return OK;
}
API cudnnGetConvolution2dForwardOutputDim(const void* cp, const void* xp, const void* wp, int* n,
                                          int* c, int* h, int* w) {
    const ConvDesc& d = *static_cast<const ConvDesc*>(cp);
    const Tensor4 &x = *static_cast<const Tensor4*>(xp), &f = *static_cast<const Tensor4*>(wp);
    *n = x.n;
    *c = f.n;
    *h = (x.h + 2 * d.pad_h - d.dil_h * (f.h - 1) - 1) / d.u + 1;
    *w = (x.w + 2 * d.pad_w - d.dil_w * (f.w - 1) - 1) / d.v + 1;
    return OK;
}

namespace {

// The descriptors of one call as cuDNN validates them: the output dims the
// convolution gives, the channel counts the groups imply, one data type.
int check(const Tensor4& x, const Tensor4& w, const Tensor4& y, const ConvDesc& d) {
    int n, c, h, ww;
    cudnnGetConvolution2dForwardOutputDim(&d, &x, &w, &n, &c, &h, &ww);
    if (y.n != n || y.c != c || y.h != h || y.w != ww || x.c != w.c * d.groups ||
        w.n % d.groups != 0 || x.ty != w.ty || x.ty != y.ty)
        return BAD_PARAM;
    return OK;
}

// cudnnConvolution*AlgoPerf_t: algo, status, time, memory, determinism, mathType, reserved[3]
int perfs(const ConvDesc& d, int requested, int* returned, void* out, float time) {
    const int n = requested < 2 ? requested : 2;
    unsigned char* p = static_cast<unsigned char*>(out);
    for (int i = 0; i < n; i++) {
        unsigned char* r = p + 48 * i;
        std::memset(r, 0, 48);
        const int status = OK, det = 1;
        const size_t mem = i == 0 ? 0 : ALGO1_WORKSPACE;
        std::memcpy(r, &i, 4);
        std::memcpy(r + 4, &status, 4);
        std::memcpy(r + 8, &time, 4);
        std::memcpy(r + 16, &mem, 8);
        std::memcpy(r + 24, &det, 4);
        std::memcpy(r + 28, &d.math, 4);
    }
    *returned = n;
    return OK;
}

int workspace(int algo, size_t* bytes) {
    if (algo != 0 && algo != 1) return BAD_PARAM;
    *bytes = algo == 0 ? 0 : ALGO1_WORKSPACE;
    return OK;
}

// What the driver counts a convolution as.
const char* conv_name(Dir dir, bool graph) {
    static const char* names[2][3] = {
        {"cudnn convolution forward", "cudnn convolution backward data",
         "cudnn convolution backward filter"},
        {"cudnn graph convolution forward", "cudnn graph convolution backward data",
         "cudnn graph convolution backward filter"}};
    return names[graph][dir == Fwd ? 0 : dir == BwdData ? 1 : 2];
}

int run_conv(void* h, Dir dir, int algo, const void* xp, const void* wp, const void* yp,
             const void* cp, const void* alpha, const void* a, const void* b, void* out,
             const void* beta, void* ws, size_t ws_bytes) {
    ConvArgs c{dir, algo, *static_cast<const Tensor4*>(xp), *static_cast<const Tensor4*>(wp),
               *static_cast<const Tensor4*>(yp), *static_cast<const ConvDesc*>(cp),
               *static_cast<const float*>(alpha), *static_cast<const float*>(beta), a, b, out, ws};
    if (check(c.x, c.w, c.y, c.cd) != OK || (algo != 0 && algo != 1)) return BAD_PARAM;
    if (algo == 1 && (ws_bytes < ALGO1_WORKSPACE || !ws)) return BAD_PARAM;
    return submit(static_cast<DnnHandle*>(h)->stream, conv_name(dir, false), conv_work, c) == 0
               ? OK
               : BAD_PARAM;
}

// Find*Ex: the algorithms, and the output left with NaN bytes.
int find(void* h, const Tensor4& o, void* out, const ConvDesc& d, int req, int* n, void* res) {
    const size_t bytes = (size_t)o.count() * size_of(o.ty);
    struct Fill {
        void* out;
        size_t bytes;
    } f{out, bytes};
    const int queued = submit(static_cast<DnnHandle*>(h)->stream, "cudnn Find's NaN fill",
                              [](const void* p) {
                                  const Fill& f = *static_cast<const Fill*>(p);
                                  std::memset(f.out, 0xff, f.bytes);
                              },
                              f);
    return queued == 0 ? perfs(d, req, n, res, 0.01f) : BAD_PARAM;
}

}  // namespace

#define T4(p) (*static_cast<const Tensor4*>(p))
#define CD(p) (*static_cast<const ConvDesc*>(p))

API cudnnGetConvolutionForwardAlgorithm_v7(void*, const void* x, const void* w, const void* c,
                                           const void* y, int req, int* n, void* res) {
    if (check(T4(x), T4(w), T4(y), CD(c)) != OK) return BAD_PARAM;
    return perfs(CD(c), req, n, res, -1.0f);
}
API cudnnGetConvolutionBackwardDataAlgorithm_v7(void*, const void* w, const void* dy, const void* c,
                                                const void* dx, int req, int* n, void* res) {
    if (check(T4(dx), T4(w), T4(dy), CD(c)) != OK) return BAD_PARAM;
    return perfs(CD(c), req, n, res, -1.0f);
}
API cudnnGetConvolutionBackwardFilterAlgorithm_v7(void*, const void* x, const void* dy, const void* c,
                                                  const void* dw, int req, int* n, void* res) {
    if (check(T4(x), T4(dw), T4(dy), CD(c)) != OK) return BAD_PARAM;
    return perfs(CD(c), req, n, res, -1.0f);
}
API cudnnFindConvolutionForwardAlgorithmEx(void* h, const void* x, const void*, const void* w,
                                           const void*, const void* c, const void* y, void* yp,
                                           int req, int* n, void* res, void*, size_t) {
    if (check(T4(x), T4(w), T4(y), CD(c)) != OK) return BAD_PARAM;
    return find(h, T4(y), yp, CD(c), req, n, res);
}
API cudnnFindConvolutionBackwardDataAlgorithmEx(void* h, const void* w, const void*, const void* dy,
                                                const void*, const void* c, const void* dx,
                                                void* dxp, int req, int* n, void* res, void*, size_t) {
    if (check(T4(dx), T4(w), T4(dy), CD(c)) != OK) return BAD_PARAM;
    return find(h, T4(dx), dxp, CD(c), req, n, res);
}
API cudnnFindConvolutionBackwardFilterAlgorithmEx(void* h, const void* x, const void*, const void* dy,
                                                  const void*, const void* c, const void* dw,
                                                  void* dwp, int req, int* n, void* res, void*,
                                                  size_t) {
    if (check(T4(x), T4(dw), T4(dy), CD(c)) != OK) return BAD_PARAM;
    return find(h, T4(dw), dwp, CD(c), req, n, res);
}
API cudnnGetConvolutionForwardWorkspaceSize(void*, const void*, const void*, const void*, const void*,
                                            int algo, size_t* bytes) {
    return workspace(algo, bytes);
}
API cudnnGetConvolutionBackwardDataWorkspaceSize(void*, const void*, const void*, const void*,
                                                 const void*, int algo, size_t* bytes) {
    return workspace(algo, bytes);
}
API cudnnGetConvolutionBackwardFilterWorkspaceSize(void*, const void*, const void*, const void*,
                                                   const void*, int algo, size_t* bytes) {
    return workspace(algo, bytes);
}
API cudnnConvolutionForward(void* h, const void* alpha, const void* x, const void* xp, const void* w,
                            const void* wp, const void* c, int algo, void* ws, size_t wsb,
                            const void* beta, const void* y, void* yp) {
    return run_conv(h, Fwd, algo, x, w, y, c, alpha, xp, wp, yp, beta, ws, wsb);
}
API cudnnConvolutionBackwardData(void* h, const void* alpha, const void* w, const void* wp,
                                 const void* dy, const void* dyp, const void* c, int algo, void* ws,
                                 size_t wsb, const void* beta, const void* dx, void* dxp) {
    return run_conv(h, BwdData, algo, dx, w, dy, c, alpha, wp, dyp, dxp, beta, ws, wsb);
}
API cudnnConvolutionBackwardFilter(void* h, const void* alpha, const void* x, const void* xp,
                                   const void* dy, const void* dyp, const void* c, int algo,
                                   void* ws, size_t wsb, const void* beta, const void* dw, void* dwp) {
    return run_conv(h, BwdFilter, algo, x, dw, dy, c, alpha, xp, dyp, dwp, beta, ws, wsb);
}
API cudnnAddTensor(void* h, const void* alpha, const void* a, const void* A, const void* beta,
                   const void* c, void* C) {
    AddArgs t{T4(a), T4(c), *static_cast<const float*>(alpha), *static_cast<const float*>(beta), A, C};
    if (t.a.ty != t.c.ty || (t.a.n != 1 && t.a.n != t.c.n) || (t.a.c != 1 && t.a.c != t.c.c) ||
        (t.a.h != 1 && t.a.h != t.c.h) || (t.a.w != 1 && t.a.w != t.c.w))
        return BAD_PARAM;
    return submit(static_cast<DnnHandle*>(h)->stream, "cudnnAddTensor", add_work, t) == 0 ? OK : BAD_PARAM;
}
// ---- The graph (backend) API, for the one-convolution graphs dnn_graph.rs
// builds. A descriptor is its type and the attributes set on it; the
// heuristics offer three engine configurations (engines 0 and 1, as the
// legacy algorithms above, and engine 2, "compiled at run time");
// finalising a plan reads the convolution back out of the operation graph
// and refuses what the emulator does not run (strides other than
// NHWC/KRSC, asymmetric padding), and a dilated convolution on engines 0
// and 1, with NOT_SUPPORTED.
namespace {

struct Attr {
    int type;
    int64_t count;
    std::vector<unsigned char> bytes;
};

struct BDesc {
    int kind;
    std::map<int, Attr> attrs;
    bool final = false;
    // an execution plan, once finalised: the convolution and its tensors' uids
    ConvArgs conv{};
    int64_t uid[3] = {0, 0, 0};  // the a, b and out operands of conv
};

std::deque<BDesc> internal;  // engine configs and engines the heuristics made

size_t type_bytes(int t) {
    switch (t) {
        case 0: case 3: case 5: case 6: case 15: return 8;  // handle, int64, double, void*, descriptor
        case 2: case 16: return 1;                          // boolean, char
        default: return 4;                                  // float and the enums
    }
}

enum : int {
    KIND_CONV = 1, KIND_ENGINE = 2, KIND_CFG = 3, KIND_HEUR = 4, KIND_PLAN = 5, KIND_KNOB = 7,
    KIND_FWD = 10, KIND_BWD_FILTER = 11, KIND_BWD_DATA = 12, KIND_GRAPH = 15, KIND_PACK = 16,
    KIND_TENSOR = 17,
    A_CONV_COMP = 100, A_CONV_MODE = 101, A_CONV_DIL = 102, A_CONV_STRIDES = 103, A_CONV_POST = 104,
    A_CONV_PRE = 105, A_CONV_DIMS = 106, A_HEUR_GRAPH = 201, A_HEUR_RESULTS = 202, A_CFG_ENGINE = 300,
    A_CFG_KNOBS = 302, A_PLAN_CFG = 401, A_PLAN_WS = 402, A_GRAPH_OPS = 801, A_PACK_UIDS = 1000,
    A_PACK_PTRS = 1001, A_PACK_WS = 1003, A_ENGINE_GRAPH = 1300, A_ENGINE_INDEX = 1301,
    A_ENGINE_NOTES = 1303, A_ENGINE_BEHAVIOR = 1305, A_TENSOR_TYPE = 901, A_TENSOR_DIMS = 902,
    A_TENSOR_STRIDES = 903, A_TENSOR_UID = 906,
    // per direction: alpha, beta, conv desc and the three tensors (a, b, out as in ConvArgs)
};
const int FWD_ATTRS[6] = {700, 701, 702, 704, 703, 705};         // alpha beta conv x w y
const int BWD_DATA_ATTRS[6] = {706, 707, 708, 709, 711, 710};    // alpha beta conv w dy dx
const int BWD_FILTER_ATTRS[6] = {712, 713, 714, 716, 717, 715};  // alpha beta conv x dy dw

template <typename T>
bool get1(const BDesc& d, int attr, T& out) {
    auto it = d.attrs.find(attr);
    if (it == d.attrs.end() || it->second.bytes.size() < sizeof(T)) return false;
    std::memcpy(&out, it->second.bytes.data(), sizeof(T));
    return true;
}

std::vector<int64_t> ints(const BDesc& d, int attr) {
    auto it = d.attrs.find(attr);
    if (it == d.attrs.end() || it->second.type != 3) return {};
    std::vector<int64_t> v((size_t)it->second.count);
    std::memcpy(v.data(), it->second.bytes.data(), v.size() * 8);
    return v;
}

void set_ptr(BDesc& d, int attr, const void* p) {
    Attr a{15, 1, std::vector<unsigned char>(8)};
    std::memcpy(a.bytes.data(), &p, 8);
    d.attrs[attr] = a;
}

// A 4-d tensor descriptor with NHWC strides (KRSC for a filter) as a Tensor4.
bool tensor4(const BDesc* t, Tensor4& out, int64_t& uid) {
    if (!t || t->kind != KIND_TENSOR) return false;
    const std::vector<int64_t> d = ints(*t, A_TENSOR_DIMS), s = ints(*t, A_TENSOR_STRIDES);
    int type = -1;
    if (d.size() != 4 || s.size() != 4 || !get1(*t, A_TENSOR_TYPE, type) || !get1(*t, A_TENSOR_UID, uid))
        return false;
    const int64_t c = d[1], h = d[2], w = d[3];
    if (s[1] != 1 || s[3] != c || s[2] != c * w || s[0] != c * w * h) return false;
    out = Tensor4{dnn_type(type), (int)d[0], (int)c, (int)h, (int)w};
    return out.ty != BAD;
}

// The plan's convolution, read from its engine's operation graph.
int resolve(BDesc& plan) {
    BDesc *cfg = nullptr, *engine = nullptr, *graph = nullptr, *op = nullptr;
    if (!get1(plan, A_PLAN_CFG, cfg) || !cfg || !get1(*cfg, A_CFG_ENGINE, engine) || !engine ||
        !get1(*engine, A_ENGINE_GRAPH, graph) || !graph || !get1(*graph, A_GRAPH_OPS, op) || !op)
        return BAD_PARAM;
    int64_t index = 0;
    get1(*engine, A_ENGINE_INDEX, index);
    const int* at = op->kind == KIND_FWD ? FWD_ATTRS : op->kind == KIND_BWD_DATA ? BWD_DATA_ATTRS
                  : op->kind == KIND_BWD_FILTER ? BWD_FILTER_ATTRS : nullptr;
    if (!at) return DNN_NOT_SUPPORTED;
    ConvArgs& c = plan.conv;
    c.dir = op->kind == KIND_FWD ? Fwd : op->kind == KIND_BWD_DATA ? BwdData : BwdFilter;
    c.algo = (int)index;
    BDesc *conv = nullptr, *t[3] = {nullptr, nullptr, nullptr};
    if (!get1(*op, at[0], c.alpha) || !get1(*op, at[1], c.beta) || !get1(*op, at[2], conv) || !conv ||
        !get1(*op, at[3], t[0]) || !get1(*op, at[4], t[1]) || !get1(*op, at[5], t[2]))
        return BAD_PARAM;
    // the tensors as ConvArgs names them: x, w, y whichever direction
    Tensor4* roles[3] = {c.dir == BwdData ? &c.w : &c.x, c.dir == Fwd ? &c.w : &c.y,
                         c.dir == Fwd ? &c.y : c.dir == BwdData ? &c.x : &c.w};
    for (int i = 0; i < 3; i++)
        if (!tensor4(t[i], *roles[i], plan.uid[i])) return DNN_NOT_SUPPORTED;
    const std::vector<int64_t> pre = ints(*conv, A_CONV_PRE), post = ints(*conv, A_CONV_POST),
                               str = ints(*conv, A_CONV_STRIDES), dil = ints(*conv, A_CONV_DIL);
    int mode = -1;
    get1(*conv, A_CONV_MODE, mode);
    if (pre.size() != 2 || pre != post || str.size() != 2 || dil.size() != 2 || mode != 1)
        return DNN_NOT_SUPPORTED;
    c.cd.pad_h = (int)pre[0], c.cd.pad_w = (int)pre[1], c.cd.u = (int)str[0], c.cd.v = (int)str[1];
    c.cd.dil_h = (int)dil[0], c.cd.dil_w = (int)dil[1];
    if (c.x.c % c.w.c != 0) return BAD_PARAM;
    c.cd.groups = c.x.c / c.w.c;
    if (index < 2 && (c.cd.dil_h != 1 || c.cd.dil_w != 1)) return DNN_NOT_SUPPORTED;
    return check(c.x, c.w, c.y, c.cd);
}

}  // namespace

API cudnnBackendCreateDescriptor(int kind, void** d) {
    *d = new BDesc{kind};
    return OK;
}
API cudnnBackendDestroyDescriptor(void* d) {
    delete static_cast<BDesc*>(d);
    return OK;
}
API cudnnBackendSetAttribute(void* dp, int attr, int type, int64_t count, const void* values) {
    BDesc* d = static_cast<BDesc*>(dp);
    if (d->final || count < 0 || (count > 0 && !values)) return BAD_PARAM;
    const unsigned char* v = static_cast<const unsigned char*>(values);
    d->attrs[attr] = Attr{type, count, std::vector<unsigned char>(v, v + count * type_bytes(type))};
    return OK;
}
API cudnnBackendFinalize(void* dp) {
    BDesc* d = static_cast<BDesc*>(dp);
    if (d->final) return BAD_PARAM;
    if (d->kind == KIND_PLAN) {
        const int r = resolve(*d);
        if (r != OK) return r;
    }
    d->final = true;
    return OK;
}
API cudnnBackendGetAttribute(const void* dp, int attr, int type, int64_t max, int64_t* count, void* out) {
    const BDesc* d = static_cast<const BDesc*>(dp);
    if (d->kind == KIND_HEUR && attr == A_HEUR_RESULTS) {
        BDesc* graph = nullptr;
        if (!d->final || !get1(*d, A_HEUR_GRAPH, graph)) return BAD_PARAM;
        const int64_t engines = 3, n = max < engines ? max : engines;
        for (int64_t i = 0; i < n; i++) {
            internal.push_back(BDesc{KIND_ENGINE});
            BDesc& engine = internal.back();
            set_ptr(engine, A_ENGINE_GRAPH, graph);
            engine.attrs[A_ENGINE_INDEX] = Attr{3, 1, std::vector<unsigned char>(8)};
            std::memcpy(engine.attrs[A_ENGINE_INDEX].bytes.data(), &i, 8);
            if (i == 2)  // CUDNN_TYPE_BEHAVIOR_NOTE: CUDNN_BEHAVIOR_NOTE_RUNTIME_COMPILATION
                engine.attrs[A_ENGINE_BEHAVIOR] = Attr{19, 1, std::vector<unsigned char>(4, 0)};
            engine.final = true;
            BDesc* cfg = static_cast<BDesc**>(out)[i];
            cfg->attrs.clear();
            set_ptr(*cfg, A_CFG_ENGINE, &engine);
            cfg->final = true;
        }
        *count = engines;
        return OK;
    }
    if (d->kind == KIND_CFG && attr == A_CFG_ENGINE && max >= 1) {
        BDesc* engine = nullptr;
        if (!get1(*d, A_CFG_ENGINE, engine)) return BAD_PARAM;
        BDesc* into = static_cast<BDesc**>(out)[0];
        into->attrs = engine->attrs;
        into->final = true;
        *count = 1;
        return OK;
    }
    if (d->kind == KIND_PLAN && attr == A_PLAN_WS) {
        if (!d->final) return BAD_PARAM;
        const int64_t ws = d->conv.algo == 1 ? (int64_t)ALGO1_WORKSPACE : 0;
        if (max >= 1) std::memcpy(out, &ws, 8);
        *count = 1;
        return OK;
    }
    auto it = d->attrs.find(attr);
    if (it == d->attrs.end()) {
        // no numerical or behaviour notes, no knobs: an empty list
        if (attr == A_ENGINE_NOTES || attr == A_ENGINE_BEHAVIOR || attr == A_CFG_KNOBS) {
            *count = 0;
            return OK;
        }
        return BAD_PARAM;
    }
    const Attr& a = it->second;
    if (a.type != type) return BAD_PARAM;
    const int64_t n = max < a.count ? max : a.count;
    if (n > 0) std::memcpy(out, a.bytes.data(), (size_t)n * type_bytes(type));
    *count = a.count;
    return OK;
}
API cudnnBackendExecute(void* h, void* planp, void* packp) {
    const BDesc& plan = *static_cast<const BDesc*>(planp);
    const BDesc& pack = *static_cast<const BDesc*>(packp);
    if (!plan.final || plan.kind != KIND_PLAN || pack.kind != KIND_PACK) return BAD_PARAM;
    const std::vector<int64_t> uids = ints(pack, A_PACK_UIDS);
    auto ptrs = pack.attrs.find(A_PACK_PTRS);
    if (ptrs == pack.attrs.end() || (size_t)ptrs->second.count != uids.size()) return BAD_PARAM;
    ConvArgs c = plan.conv;
    void* p[3] = {nullptr, nullptr, nullptr};
    for (int i = 0; i < 3; i++)
        for (size_t j = 0; j < uids.size(); j++)
            if (uids[j] == plan.uid[i]) std::memcpy(&p[i], ptrs->second.bytes.data() + 8 * j, 8);
    if (!p[0] || !p[1] || !p[2]) return BAD_PARAM;
    c.a = p[0], c.b = p[1], c.out = p[2];
    get1(pack, A_PACK_WS, c.ws);
    if (c.algo == 1 && !c.ws) return BAD_PARAM;
    return submit(static_cast<DnnHandle*>(h)->stream, conv_name(c.dir, true), conv_work, c) == 0
               ? OK
               : BAD_PARAM;
}
