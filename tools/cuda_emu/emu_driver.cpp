// emu_driver.cpp: a CUDA driver (libcuda.so.1) that runs slmlp's own kernels
// on the CPU, for checking the CUDA backend where there is no GPU.
//
// It answers the driver calls the engine and cudarc make. "Device" memory
// is host memory (filled with 0xff bytes when allocated, a NaN in every
// float format, so a kernel that reads what nobody wrote shows it). Every
// stream runs its work at once, in the order it is issued, on the calling
// thread; a stream being captured records the work into a graph instead,
// and a graph launch replays it. A module is the set of kernel libraries
// build.py compiled from kernels/src/families (emu_<family>.so, beside
// this file): cuModuleGetFunction finds `emu_launch_<name>` in them, and
// cuLaunchKernel runs that on the block scheduler of emu_sched.h.
//
// Checked as the driver checks: launch shapes (no empty grid, at most 1024
// threads a block), pointers given to cuMemFree, calls a capture forbids
// (allocating or freeing memory, synchronising the context or a capturing
// stream), which fail and invalidate the capture unless the thread relaxed
// its mode. Only the entry points slmlp and cudarc call are here.
//
// Not emulated: concurrency between streams or with the host (everything is
// already complete when a call returns), timing (events read the wall
// clock). cuBLASLt and cuDNN are emu_culibs.cpp, which queues its work here
// through slmlp_emu_submit.
//
// Counting (SLMLP_CUDA_EMU_COUNTS=FILE): at exit, FILE gets what the device
// ran (kernel launches by name, library calls by name, graph launches,
// copies and sets) and the high-water mark of cuMemAlloc. Work a graph
// replays is counted each time it runs.
//
// Dry runs (SLMLP_CUDA_EMU_DRY=1): nothing is computed or written.
// Kernels, library calls, memsets and copies to the device are counted
// and skipped; reads back to the host run. Allocations are zero pages
// (mmap, MAP_NORESERVE) that stay untouched, so a step at full size costs
// no memory and little time, every value read back is zero (a loss of 0,
// no non-finite value found), and every allocation the engine makes is
// real: the caching allocator's figures are the ones a GPU run would give,
// except for library workspaces (the emulated libraries ask for 0 or 4
// KiB) and whatever depends on values. SLMLP_CUDA_EMU_MEM_GIB sets the
// memory the device reports (default 16).
#include <dirent.h>
#include <dlfcn.h>
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "emu_launch.h"

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;

enum : CUresult {
    OK = 0,
    INVALID_VALUE = 1,
    OUT_OF_MEMORY = 2,
    NOT_INITIALIZED = 3,
    INVALID_DEVICE = 101,
    INVALID_HANDLE = 400,
    NOT_FOUND = 500,
    LAUNCH_FAILED = 719,
    NOT_SUPPORTED = 801,
    CAPTURE_UNSUPPORTED = 900,
    CAPTURE_INVALIDATED = 901,
};

namespace {

typedef int (*LaunchFn)(const emu::Launch*, void**);
typedef int (*ParamsFn)(size_t*, int);

struct Function {
    std::string name;
    LaunchFn launch;
    ParamsFn params;
};

typedef void (*HostWork)(const void*);

struct Op {
    enum Kind { Kernel, Copy, Set, Work } kind;
    // Work: the library call's name (counting)
    const char* name = nullptr;
    // Kernel
    const Function* f = nullptr;
    emu::Launch shape{};
    std::vector<unsigned char> blob;  // the parameters' bytes, one after another
    std::vector<size_t> offsets;
    // Copy / Set
    unsigned char* dst = nullptr;
    const unsigned char* src = nullptr;
    size_t bytes = 0;
    unsigned char value = 0;
    // Work: a library call (emu_culibs.cpp) run on its copied arguments
    HostWork work = nullptr;
};

struct Graph {
    std::vector<Op> ops;
};

struct Stream {
    Graph* capture = nullptr;  // being captured into this graph
    bool global_mode = false;  // captured with CU_STREAM_CAPTURE_MODE_GLOBAL
    bool invalidated = false;
};

struct Event {
    double ms = 0;
    Graph* captured_in = nullptr;
};

std::recursive_mutex lock_all;
std::vector<void*> kernel_libs;
std::map<std::string, Function> functions;
std::map<uintptr_t, size_t> allocations;  // start -> bytes asked
size_t allocated = 0, allocated_peak = 0;
std::map<std::string, unsigned long long> counts;
Stream default_stream;
std::vector<Stream*> capturing;
thread_local int thread_mode = 0;  // CUstreamCaptureMode of this thread: 0 global, 1 thread local, 2 relaxed
bool initialised = false;
int context_token;  // the primary context is this address

double now_ms() {
    using namespace std::chrono;
    return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

Stream* stream_of(void* s) { return s ? static_cast<Stream*>(s) : &default_stream; }

int env_int(const char* name, int dflt) {
    const char* v = std::getenv(name);
    return v && *v ? std::atoi(v) : dflt;
}

const bool dry = env_int("SLMLP_CUDA_EMU_DRY", 0) != 0;
const size_t total_bytes = (size_t)env_int("SLMLP_CUDA_EMU_MEM_GIB", 16) << 30;

bool is_device(const void* p) {
    auto it = allocations.upper_bound((uintptr_t)p);
    if (it == allocations.begin()) return false;
    --it;
    return (uintptr_t)p < it->first + it->second;
}

void write_counts() {
    const char* path = std::getenv("SLMLP_CUDA_EMU_COUNTS");
    if (!path || !*path) return;
    std::lock_guard<std::recursive_mutex> guard(lock_all);
    FILE* f = std::fopen(path, "w");
    if (!f) {
        std::fprintf(stderr, "cuda emulator: cannot write %s\n", path);
        return;
    }
    std::fprintf(f, "cuMemAlloc high-water %zu bytes\n", allocated_peak);
    for (const auto& [what, n] : counts) std::fprintf(f, "%llu %s\n", n, what.c_str());
    std::fclose(f);
}

void load_kernel_libs() {
    Dl_info info;
    if (!dladdr(reinterpret_cast<void*>(&load_kernel_libs), &info) || !info.dli_fname) return;
    std::string dir = info.dli_fname;
    dir = dir.substr(0, dir.rfind('/') + 1);
    DIR* d = opendir(dir.c_str());
    if (!d) return;
    while (dirent* e = readdir(d)) {
        std::string n = e->d_name;
        if (n.rfind("emu_", 0) == 0 && n.size() > 3 && n.compare(n.size() - 3, 3, ".so") == 0) {
            void* h = dlopen((dir + n).c_str(), RTLD_NOW | RTLD_LOCAL);
            if (h) kernel_libs.push_back(h);
            else std::fprintf(stderr, "cuda emulator: cannot load %s: %s\n", n.c_str(), dlerror());
        }
    }
    closedir(d);
}

// A call a capture forbids, made while some stream is captured in global
// mode by a thread that did not relax: it invalidates those captures.
bool forbidden_in_capture(const char* call) {
    if (thread_mode == 2) return false;
    bool hit = false;
    for (Stream* s : capturing) {
        if (s->global_mode || thread_mode == 0) {
            s->invalidated = true;
            hit = true;
        }
    }
    if (hit && env_int("SLMLP_CUDA_EMU_VERBOSE", 0))
        std::fprintf(stderr, "cuda emulator: %s during a stream capture\n", call);
    return hit;
}

CUresult run(const Op& op) {
    switch (op.kind) {
        case Op::Copy: {
            const bool to = is_device(op.dst), from = is_device(op.src);
            const char* what = to && from ? "copy device to device" : to ? "copy host to device" : "copy device to host";
            counts[what]++;
            if (env_int("SLMLP_CUDA_EMU_TRACE", 0)) std::fprintf(stderr, "cuda emulator: %s, %zu bytes\n", what, op.bytes);
            if (!dry || !to) std::memmove(op.dst, op.src, op.bytes);
            return OK;
        }
        case Op::Set:
            counts["memset"]++;
            if (!dry) std::memset(op.dst, op.value, op.bytes);
            return OK;
        case Op::Work:
            counts[std::string("library ") + op.name]++;
            if (!dry) op.work(op.blob.data());
            return OK;
        case Op::Kernel: {
            counts["kernel " + op.f->name]++;
            if (dry) return OK;
            std::vector<void*> params(op.offsets.size());
            for (size_t i = 0; i < params.size(); i++)
                params[i] = const_cast<unsigned char*>(op.blob.data() + op.offsets[i]);
            char msg[512] = {0};
            emu::Launch l = op.shape;
            if (env_int("SLMLP_CUDA_EMU_TRACE", 0))
                std::fprintf(stderr, "cuda emulator: launch %s grid (%u, %u, %u) block (%u, %u, %u)\n",
                             op.f->name.c_str(), l.grid[0], l.grid[1], l.grid[2], l.block[0],
                             l.block[1], l.block[2]);
            l.error = msg;
            l.error_cap = sizeof msg;
            if (op.f->launch(&l, params.data()) != 0) {
                std::fprintf(stderr, "cuda emulator: kernel %s, grid (%u, %u, %u), block (%u, %u, %u): %s\n",
                             op.f->name.c_str(), l.grid[0], l.grid[1], l.grid[2], l.block[0],
                             l.block[1], l.block[2], msg);
                return LAUNCH_FAILED;
            }
            return OK;
        }
    }
    return INVALID_VALUE;
}

CUresult submit(void* stream, Op op) {
    Stream* s = stream_of(stream);
    if (s->capture) {
        s->capture->ops.push_back(std::move(op));
        return OK;
    }
    return run(op);
}

}  // namespace

#define API extern "C" __attribute__((visibility("default"))) CUresult
#define LOCK std::lock_guard<std::recursive_mutex> guard(lock_all)

// ---- errors
static const char* error_name(CUresult e) {
    switch (e) {
        case OK: return "CUDA_SUCCESS";
        case INVALID_VALUE: return "CUDA_ERROR_INVALID_VALUE";
        case OUT_OF_MEMORY: return "CUDA_ERROR_OUT_OF_MEMORY";
        case NOT_INITIALIZED: return "CUDA_ERROR_NOT_INITIALIZED";
        case INVALID_DEVICE: return "CUDA_ERROR_INVALID_DEVICE";
        case INVALID_HANDLE: return "CUDA_ERROR_INVALID_HANDLE";
        case NOT_FOUND: return "CUDA_ERROR_NOT_FOUND";
        case LAUNCH_FAILED: return "CUDA_ERROR_LAUNCH_FAILED";
        case NOT_SUPPORTED: return "CUDA_ERROR_NOT_SUPPORTED";
        case CAPTURE_UNSUPPORTED: return "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED";
        case CAPTURE_INVALIDATED: return "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED";
        default: return "CUDA_ERROR_UNKNOWN";
    }
}
API cuGetErrorName(CUresult e, const char** s) {
    *s = error_name(e);
    return OK;
}
API cuGetErrorString(CUresult e, const char** s) {
    *s = error_name(e);
    return OK;
}

// ---- device and context
API cuInit(unsigned) {
    LOCK;
    if (!initialised) {
        load_kernel_libs();
        std::atexit(write_counts);
        initialised = true;
    }
    return OK;
}
API cuDriverGetVersion(int* v) {
    *v = 13000;
    return OK;
}
API cuDeviceGetCount(int* n) {
    *n = 1;
    return OK;
}
API cuDeviceGet(CUdevice* d, int ordinal) {
    if (ordinal != 0) return INVALID_DEVICE;
    *d = 0;
    return OK;
}
API cuDeviceGetName(char* name, int len, CUdevice) {
    std::snprintf(name, (size_t)len, "slmlp CUDA emulator (CPU)");
    return OK;
}
API cuDeviceGetAttribute(int* v, int attr, CUdevice) {
    switch (attr) {
        case 1: *v = 1024; break;                                      // max threads per block
        case 2: case 3: *v = 1024; break;                              // max block x, y
        case 4: *v = 64; break;                                        // max block z
        case 5: *v = 2147483647; break;                                // max grid x
        case 6: case 7: *v = 65535; break;                             // max grid y, z
        case 8: *v = 49152; break;                                     // shared memory per block
        case 10: *v = 32; break;                                       // warp size
        case 16: *v = env_int("SLMLP_CUDA_EMU_SMS", 2); break;         // multiprocessors
        case 38: *v = 50 << 20; break;                                 // L2 bytes
        case 39: *v = 2048; break;                                     // threads per multiprocessor
        case 41: *v = 1; break;                                        // unified addressing
        case 75: *v = 9; break;                                        // compute capability major
        case 76: *v = 0; break;                                        // minor
        case 97: *v = 232448; break;                                   // shared memory opt-in
        default: *v = 0; break;                                        // memory pools (115) and the rest
    }
    return OK;
}
API cuDevicePrimaryCtxRetain(void** ctx, CUdevice) {
    *ctx = &context_token;
    return OK;
}
API cuDevicePrimaryCtxRelease_v2(CUdevice) { return OK; }
API cuCtxSetCurrent(void*) { return OK; }
API cuCtxGetCurrent(void** ctx) {
    *ctx = &context_token;
    return OK;
}
API cuCtxSynchronize() {
    LOCK;
    return forbidden_in_capture("cuCtxSynchronize") ? CAPTURE_UNSUPPORTED : OK;
}

// ---- memory
API cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    LOCK;
    *total = total_bytes;
    *free_bytes = total_bytes - allocated;
    return OK;
}
API cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
    LOCK;
    if (forbidden_in_capture("cuMemAlloc")) return CAPTURE_UNSUPPORTED;
    if (bytes == 0) return INVALID_VALUE;
    if (bytes > total_bytes - allocated) return OUT_OF_MEMORY;
    void* m;
    if (dry) {  // zero pages until touched
        m = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
        if (m == MAP_FAILED) return OUT_OF_MEMORY;
    } else {  // from the heap, so that an ASan build sees overruns
        const size_t rounded = (bytes + 255) / 256 * 256;
        m = std::aligned_alloc(256, rounded);
        if (!m) return OUT_OF_MEMORY;
        std::memset(m, 0xff, rounded);
    }
    allocations[(uintptr_t)m] = bytes;
    allocated += bytes;
    allocated_peak = std::max(allocated_peak, allocated);
    *p = (CUdeviceptr)(uintptr_t)m;
    return OK;
}
API cuMemFree_v2(CUdeviceptr p) {
    LOCK;
    if (forbidden_in_capture("cuMemFree")) return CAPTURE_UNSUPPORTED;
    auto it = allocations.find((uintptr_t)p);
    if (it == allocations.end()) {
        std::fprintf(stderr, "cuda emulator: cuMemFree of 0x%llx, which cuMemAlloc did not return\n", p);
        return INVALID_VALUE;
    }
    allocated -= it->second;
    if (dry)
        munmap((void*)(uintptr_t)p, it->second);
    else
        std::free((void*)(uintptr_t)p);
    allocations.erase(it);
    return OK;
}
API cuMemAllocHost_v2(void** p, size_t bytes) {
    LOCK;
    if (forbidden_in_capture("cuMemAllocHost")) return CAPTURE_UNSUPPORTED;
    *p = std::aligned_alloc(4096, (bytes + 4095) / 4096 * 4096);
    return *p ? OK : OUT_OF_MEMORY;
}
API cuMemHostAlloc(void** p, size_t bytes, unsigned) { return cuMemAllocHost_v2(p, bytes); }
API cuMemFreeHost(void* p) {
    LOCK;
    if (forbidden_in_capture("cuMemFreeHost")) return CAPTURE_UNSUPPORTED;
    std::free(p);
    return OK;
}

static CUresult copy(void* stream, void* dst, const void* src, size_t bytes) {
    LOCK;
    if (bytes == 0) return OK;
    Op op{Op::Copy};
    op.dst = static_cast<unsigned char*>(dst);
    op.src = static_cast<const unsigned char*>(src);
    op.bytes = bytes;
    return submit(stream, std::move(op));
}
API cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void* h, size_t n, void* s) { return copy(s, (void*)d, h, n); }
API cuMemcpyDtoHAsync_v2(void* h, CUdeviceptr d, size_t n, void* s) { return copy(s, h, (void*)d, n); }
API cuMemcpyDtoDAsync_v2(CUdeviceptr a, CUdeviceptr b, size_t n, void* s) { return copy(s, (void*)a, (void*)b, n); }
API cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, void* s) {
    LOCK;
    if (n == 0) return OK;
    Op op{Op::Set};
    op.dst = (unsigned char*)d;
    op.value = v;
    op.bytes = n;
    return submit(s, std::move(op));
}

// ---- streams and events
API cuStreamCreate(void** s, unsigned) {
    *s = new Stream();
    return OK;
}
API cuStreamDestroy_v2(void* s) {
    LOCK;
    if (s) delete static_cast<Stream*>(s);
    return OK;
}
API cuStreamSynchronize(void* s) {
    LOCK;
    if (stream_of(s)->capture) {
        stream_of(s)->invalidated = true;
        return CAPTURE_UNSUPPORTED;
    }
    return forbidden_in_capture("cuStreamSynchronize") ? CAPTURE_UNSUPPORTED : OK;
}
API cuStreamQuery(void* s) {
    LOCK;
    if (stream_of(s)->capture) {
        stream_of(s)->invalidated = true;
        return CAPTURE_UNSUPPORTED;
    }
    return OK;
}
API cuEventCreate(void** e, unsigned) {
    *e = new Event();
    return OK;
}
API cuEventDestroy_v2(void* e) {
    delete static_cast<Event*>(e);
    return OK;
}
API cuEventRecord(void* e, void* s) {
    LOCK;
    Event* ev = static_cast<Event*>(e);
    ev->captured_in = stream_of(s)->capture;
    ev->ms = now_ms();
    return OK;
}
API cuEventQuery(void*) { return OK; }
API cuEventSynchronize(void* e) {
    LOCK;
    if (static_cast<Event*>(e)->captured_in) return CAPTURE_UNSUPPORTED;
    return OK;
}
API cuEventElapsedTime(float* ms, void* a, void* b) {
    *ms = (float)(static_cast<Event*>(b)->ms - static_cast<Event*>(a)->ms);
    return OK;
}
API cuEventElapsedTime_v2(float* ms, void* a, void* b) { return cuEventElapsedTime(ms, a, b); }
// A stream that waits on an event recorded in a capture joins that capture.
API cuStreamWaitEvent(void* s, void* e, unsigned) {
    LOCK;
    Event* ev = static_cast<Event*>(e);
    Stream* st = stream_of(s);
    if (ev->captured_in && !st->capture) {
        st->capture = ev->captured_in;
        capturing.push_back(st);
    }
    return OK;
}

// ---- capture and graphs
API cuStreamBeginCapture_v2(void* s, int mode) {
    LOCK;
    Stream* st = stream_of(s);
    if (st == &default_stream || st->capture) return INVALID_VALUE;
    st->capture = new Graph();
    st->global_mode = mode == 0;
    st->invalidated = false;
    capturing.push_back(st);
    return OK;
}
API cuStreamEndCapture(void* s, void** graph) {
    LOCK;
    Stream* st = stream_of(s);
    if (!st->capture) return INVALID_VALUE;
    Graph* g = st->capture;
    bool bad = false;
    for (size_t i = 0; i < capturing.size();) {
        if (capturing[i]->capture == g) {
            bad |= capturing[i]->invalidated;
            capturing[i]->capture = nullptr;
            capturing[i]->invalidated = false;
            capturing.erase(capturing.begin() + (long)i);
        } else {
            i++;
        }
    }
    if (bad) {
        delete g;
        *graph = nullptr;
        return CAPTURE_INVALIDATED;
    }
    *graph = g;
    return OK;
}
API cuStreamIsCapturing(void* s, int* status) {
    LOCK;
    Stream* st = stream_of(s);
    *status = !st->capture ? 0 : st->invalidated ? 2 : 1;
    return OK;
}
API cuThreadExchangeStreamCaptureMode(int* mode) {
    const int old = thread_mode;
    thread_mode = *mode;
    *mode = old;
    return OK;
}
API cuGraphInstantiateWithFlags(void** exec, void* graph, unsigned long long) {
    LOCK;
    if (!graph) return INVALID_VALUE;
    *exec = new Graph(*static_cast<Graph*>(graph));
    return OK;
}
API cuGraphLaunch(void* exec, void* s) {
    LOCK;
    counts["graph launch"]++;
    for (const Op& op : static_cast<Graph*>(exec)->ops) {
        CUresult r = submit(s, op);
        if (r != OK) return r;
    }
    return OK;
}
API cuGraphDestroy(void* g) {
    delete static_cast<Graph*>(g);
    return OK;
}
API cuGraphExecDestroy(void* g) {
    delete static_cast<Graph*>(g);
    return OK;
}

// ---- modules and launches
API cuModuleLoadData(void** module, const void*) {
    LOCK;
    if (kernel_libs.empty()) {
        std::fprintf(stderr, "cuda emulator: no emu_*.so kernel libraries beside libcuda.so.1 (run tools/cuda_emu/build.py)\n");
        return NOT_FOUND;
    }
    *module = &kernel_libs;
    return OK;
}
API cuModuleGetFunction(void** f, void*, const char* name) {
    LOCK;
    auto it = functions.find(name);
    if (it == functions.end()) {
        const std::string l = std::string("emu_launch_") + name, p = std::string("emu_params_") + name;
        for (void* h : kernel_libs) {
            void* lf = dlsym(h, l.c_str());
            void* pf = dlsym(h, p.c_str());
            if (lf && pf) {
                it = functions.emplace(name, Function{name, (LaunchFn)lf, (ParamsFn)pf}).first;
                break;
            }
        }
        if (it == functions.end()) return NOT_FOUND;
    }
    *f = &it->second;
    return OK;
}

API cuLaunchKernel(void* func, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                   unsigned bz, unsigned shared, void* s, void** params, void** extra) {
    LOCK;
    const Function* f = static_cast<const Function*>(func);
    const unsigned long long threads = (unsigned long long)bx * by * bz;
    if (gx == 0 || gy == 0 || gz == 0 || threads == 0 || threads > 1024 || bz > 64 || gy > 65535 ||
        gz > 65535 || shared > 232448 || extra) {
        std::fprintf(stderr, "cuda emulator: kernel %s launched with grid (%u, %u, %u), block (%u, %u, %u), %u shared bytes: invalid\n",
                     f->name.c_str(), gx, gy, gz, bx, by, bz, shared);
        return INVALID_VALUE;
    }
    Op op{Op::Kernel};
    op.f = f;
    op.shape = emu::Launch{{gx, gy, gz}, {bx, by, bz}, shared, nullptr, 0};
    size_t sizes[64];
    const int n = f->params(sizes, 64);
    if (n > 64) return INVALID_VALUE;
    for (int i = 0; i < n; i++) {
        const size_t at = (op.blob.size() + 15) / 16 * 16;
        op.blob.resize(at + sizes[i]);
        std::memcpy(op.blob.data() + at, params[i], sizes[i]);
        op.offsets.push_back(at);
    }
    return submit(s, std::move(op));
}

// NVRTC asks the driver for private tables when the driver is loaded; there
// are none here, and NVRTC compiles without them.
API cuGetExportTable(const void** table, const void*) {
    *table = nullptr;
    return NOT_SUPPORTED;
}

// What emu_culibs.cpp's GEMM and convolution calls queue on a stream: `work`
// runs on a copy of `args` now, or when the graph it is captured into runs.
extern "C" __attribute__((visibility("default"))) CUresult slmlp_emu_submit(void* s, const char* name,
                                                                             HostWork work,
                                                                             const void* args,
                                                                             size_t bytes) {
    LOCK;
    Op op{Op::Work};
    op.name = name;
    op.work = work;
    op.blob.assign(static_cast<const unsigned char*>(args), static_cast<const unsigned char*>(args) + bytes);
    return submit(s, std::move(op));
}
