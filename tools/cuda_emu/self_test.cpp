// self_test.cpp: the CUDA emulator's own checks, each shown to fire.
// Built and run by `python3 tools/cuda_emu/build.py --self-test` (and so by
// benches/tests/gpu_check_runs.rs). Prints one line per check and exits
// 1 if any fails.
//
// Block scheduler (emu_sched.h): shuffles, votes and barriers give the
// right values; a warp operation waiting for a thread that waits at
// __syncthreads, or one that has returned, fails the launch; a shared-memory
// read that lacks its barrier gives a wrong result in one of the two thread
// orders. Driver (emu_driver.cpp, loaded from the folder given): new memory
// is NaN bytes; a capture records copies and replays them; cuMemAlloc
// during a global-mode capture fails and invalidates it, and is allowed in
// relaxed mode; an empty grid and a foreign pointer are refused. A dry run
// (SLMLP_CUDA_EMU_DRY=1, in a child process) writes nothing to the device,
// reads zeros back, and counts what it skipped (SLMLP_CUDA_EMU_COUNTS).
// Built with --asan: a read past a __shared__ array stops with ASan's
// report.
#include <dlfcn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "emu_device.h"

static int failures = 0;

static void expect(bool ok, const char* what) {
    std::printf("%s %s\n", ok ? "ok  " : "FAIL", what);
    if (!ok) failures++;
}

// ---- kernels

__global__ void block_sum(const float* x, float* out) {
    __shared__ float sh[8];
    const unsigned t = threadIdx.x;
    float v = x[blockIdx.x * 256 + t];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if ((t & 31) == 0) sh[t >> 5] = v;
    __syncthreads();
    if (t == 0) {
        float s = 0;
        for (int w = 0; w < 8; w++) s += sh[w];
        out[blockIdx.x] = s;
    }
}

__global__ void votes(int* out) {
    const unsigned t = threadIdx.x;
    const unsigned b = __ballot_sync(0xffffffffu, t % 3 == 0);
    const int n = __syncthreads_count(t < 100);
    const float down = __shfl_down_sync(0xffffffffu, (float)t, 1);
    const int any = __any_sync(0xffffffffu, t == 5);
    if (t == 0) {
        out[0] = (int)b;
        out[1] = n;
        out[2] = any;
    }
    if (t == 31) out[3] = (int)down;  // past the warp's end: its own value
    if (t == 30) out[4] = (int)down;
}

// Lanes 0-15 shuffle with the whole warp while lanes 16-31 wait at
// __syncthreads: a hang on a GPU.
__global__ void shuffle_against_barrier(float* out) {
    float v = (float)threadIdx.x;
    if ((threadIdx.x & 31) < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
    __syncthreads();
    out[threadIdx.x] = v;
}

// Lanes 16-31 return before the warp's shuffle names them.
__global__ void shuffle_after_return(float* out) {
    if ((threadIdx.x & 31) >= 16) return;
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, (float)threadIdx.x, 1);
}

// Each thread reads its neighbour's shared value with no barrier between.
__global__ void missing_barrier(int* out) {
    __shared__ int sh[64];
    const unsigned t = threadIdx.x;
    sh[t] = (int)(blockIdx.x * 1000 + t);
    out[blockIdx.x * 64 + t] = sh[(t + 1) % 64];
}

// Reads one element past a __shared__ array.
__global__ void shared_overrun(int* out, int n) {
    __shared__ float sh[8];
    sh[threadIdx.x % 8] = 1.0f;
    __syncthreads();
    out[threadIdx.x] = (int)sh[n];
}

// Launches `k` on `grid` blocks of `block` threads with `args`: the
// launch's return code, and its message in `err` when it fails.
template <typename... A, typename... P>
static int run(void (*k)(A...), unsigned grid, unsigned block, char (&err)[512], P... args) {
    void* params[] = {&args...};
    emu::Launch l{{grid, 1, 1}, {block, 1, 1}, 0, err, sizeof err};
    return emu::launch(k, &l, params);
}

// Built with --asan: the overrun stops a child process with ASan's report.
static void asan_check() {
#if defined(__SANITIZE_ADDRESS__)
    int fds[2];
    if (pipe(fds) != 0) return;
    const pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 2);
        char err[512];
        int out[32];
        run(shared_overrun, 1, 32, err, out, 8);
        _exit(0);
    }
    close(fds[1]);
    std::string report;
    char buf[4096];
    for (ssize_t k; (k = read(fds[0], buf, sizeof buf)) > 0;) report.append(buf, (size_t)k);
    int status = 0;
    waitpid(pid, &status, 0);
    expect(!(WIFEXITED(status) && WEXITSTATUS(status) == 0) &&
               report.find("global-buffer-overflow") != std::string::npos,
           "(asan) a read past a __shared__ array stops the kernel with ASan's report");
#endif
}

static bool says(const char* err, const char* what) { return std::strstr(err, what) != nullptr; }

static void scheduler_checks() {
    char err[512];
    float x[512], sums[2] = {0, 0};
    for (int i = 0; i < 512; i++) x[i] = (float)i;
    int rc = run(block_sum, 2, 256, err, (const float*)x, sums);
    expect(rc == 0 && sums[0] == 32640.0f && sums[1] == 98176.0f,
           "warp shuffle + shared memory + __syncthreads: block sums 32640, 98176");

    int v[5] = {0};
    rc = run(votes, 1, 128, err, v);
    expect(rc == 0 && (unsigned)v[0] == 0x49249249u && v[1] == 100 && v[2] == 1 && v[3] == 31 &&
               v[4] == 31,
           "__ballot_sync, __syncthreads_count, __any_sync, __shfl_down_sync");

    float out[64];
    rc = run(shuffle_against_barrier, 1, 64, err, out);
    expect(rc == 1 && says(err, "waits at __syncthreads"),
           "a shuffle naming lanes that wait at __syncthreads fails the launch");
    rc = run(shuffle_after_return, 1, 64, err, out);
    expect(rc == 1 && says(err, "has returned"), "a shuffle naming lanes that returned fails the launch");

    int read[128];
    rc = run(missing_barrier, 2, 64, err, read);
    int wrong = 0;
    for (int b = 0; b < 2; b++)
        for (int t = 0; t < 64; t++) wrong += read[b * 64 + t] != b * 1000 + (t + 1) % 64;
    expect(rc == 0 && wrong > 0, "a read that lacks its __syncthreads reads a stale value");
}

// ---- the driver, through its C API
template <typename F>
static F sym(void* h, const char* name) {
    F f = (F)dlsym(h, name);
    if (!f) {
        std::printf("FAIL the driver lacks %s\n", name);
        std::exit(1);
    }
    return f;
}

static void driver_checks(const std::string& lib) {
    void* h = dlopen((lib + "/libcuda.so.1").c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        std::printf("FAIL cannot load %s/libcuda.so.1: %s\n", lib.c_str(), dlerror());
        failures++;
        return;
    }
    typedef unsigned long long Ptr;
    auto init = sym<int (*)(unsigned)>(h, "cuInit");
    auto alloc = sym<int (*)(Ptr*, size_t)>(h, "cuMemAlloc_v2");
    auto mfree = sym<int (*)(Ptr)>(h, "cuMemFree_v2");
    auto stream_create = sym<int (*)(void**, unsigned)>(h, "cuStreamCreate");
    auto begin = sym<int (*)(void*, int)>(h, "cuStreamBeginCapture_v2");
    auto end = sym<int (*)(void*, void**)>(h, "cuStreamEndCapture");
    auto mode = sym<int (*)(int*)>(h, "cuThreadExchangeStreamCaptureMode");
    auto htod = sym<int (*)(Ptr, const void*, size_t, void*)>(h, "cuMemcpyHtoDAsync_v2");
    auto inst = sym<int (*)(void**, void*, unsigned long long)>(h, "cuGraphInstantiateWithFlags");
    auto glaunch = sym<int (*)(void*, void*)>(h, "cuGraphLaunch");
    auto load = sym<int (*)(void**, const void*)>(h, "cuModuleLoadData");
    auto getf = sym<int (*)(void**, void*, const char*)>(h, "cuModuleGetFunction");
    auto launch = sym<int (*)(void*, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                              unsigned, void*, void**, void**)>(h, "cuLaunchKernel");

    init(0);
    Ptr a = 0;
    expect(alloc(&a, 64) == 0 && ((unsigned*)a)[15] == 0xffffffffu, "new device memory holds NaN bytes");
    void* s = nullptr;
    stream_create(&s, 0);

    void* g = nullptr;
    Ptr b = 0;
    begin(s, 0);
    const int in_capture = alloc(&b, 64);
    expect(in_capture == 900 && end(s, &g) == 901 && g == nullptr,
           "cuMemAlloc during a global-mode capture fails (900) and invalidates it (901)");

    begin(s, 0);
    int m = 2;
    mode(&m);
    const int relaxed = alloc(&b, 64);
    mode(&m);
    const float v[4] = {1, 2, 3, 4};
    htod(a, v, sizeof v, s);
    const bool deferred = ((unsigned*)a)[0] == 0xffffffffu;
    void* exec = nullptr;
    const int ended = end(s, &g);
    inst(&exec, g, 0);
    glaunch(exec, s);
    expect(relaxed == 0 && deferred && ended == 0 && ((float*)a)[3] == 4.0f,
           "relaxed mode allows cuMemAlloc; a captured copy runs when the graph does");

    void* mod = nullptr;
    void* f = nullptr;
    load(&mod, nullptr);
    const int found = getf(&f, mod, "relu_fwd_f32");
    long long n = 4;
    void* params[] = {&a, &a, &n};
    expect(found == 0 && launch(f, 0, 1, 1, 256, 1, 1, 0, s, params, nullptr) == 1 &&
               launch(f, 1, 1, 1, 2048, 1, 1, 0, s, params, nullptr) == 1,
           "an empty grid and a 2048-thread block are refused");
    expect(mfree(a + 16) == 1 && mfree(a) == 0 && mfree(b) == 0,
           "cuMemFree refuses a pointer cuMemAlloc did not return");
}

// A dry run, in a child (the driver reads its environment when loaded): the
// upload, the kernel and the device-to-device copy are skipped, the read
// back gives zeros, and the counts file lists all four and the high-water
// mark.
static void dry_run_checks(const std::string& lib) {
    const std::string counts = "/tmp/slmlp_emu_counts_" + std::to_string(getpid());
    const pid_t pid = fork();
    if (pid == 0) {
        setenv("SLMLP_CUDA_EMU_DRY", "1", 1);
        setenv("SLMLP_CUDA_EMU_COUNTS", counts.c_str(), 1);
        void* h = dlopen((lib + "/libcuda.so.1").c_str(), RTLD_NOW | RTLD_LOCAL);
        if (!h) _exit(10);
        typedef unsigned long long Ptr;
        auto init = sym<int (*)(unsigned)>(h, "cuInit");
        auto alloc = sym<int (*)(Ptr*, size_t)>(h, "cuMemAlloc_v2");
        auto htod = sym<int (*)(Ptr, const void*, size_t, void*)>(h, "cuMemcpyHtoDAsync_v2");
        auto dtod = sym<int (*)(Ptr, Ptr, size_t, void*)>(h, "cuMemcpyDtoDAsync_v2");
        auto dtoh = sym<int (*)(void*, Ptr, size_t, void*)>(h, "cuMemcpyDtoHAsync_v2");
        auto load = sym<int (*)(void**, const void*)>(h, "cuModuleLoadData");
        auto getf = sym<int (*)(void**, void*, const char*)>(h, "cuModuleGetFunction");
        auto launch = sym<int (*)(void*, unsigned, unsigned, unsigned, unsigned, unsigned,
                                  unsigned, unsigned, void*, void**, void**)>(h, "cuLaunchKernel");
        init(0);
        Ptr a = 0, b = 0;
        if (alloc(&a, 64) || alloc(&b, 64) || ((unsigned*)a)[15] != 0) _exit(11);
        const float v[4] = {-1, 2, -3, 4};
        htod(a, v, sizeof v, nullptr);
        void *mod = nullptr, *f = nullptr;
        load(&mod, nullptr);
        long long n = 4;
        void* params[] = {&a, &a, &n};
        if (getf(&f, mod, "relu_fwd_f32") || launch(f, 1, 1, 1, 256, 1, 1, 0, nullptr, params, nullptr))
            _exit(12);
        dtod(b, a, sizeof v, nullptr);
        float back[4] = {1, 1, 1, 1};
        dtoh(back, a, sizeof back, nullptr);
        std::exit(back[0] == 0 && back[3] == 0 && ((const float*)a)[0] == 0 ? 0 : 13);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    std::stringstream text;
    text << std::ifstream(counts).rdbuf();
    std::remove(counts.c_str());
    const std::string t = text.str();
    expect(WIFEXITED(status) && WEXITSTATUS(status) == 0 &&
               t.find("cuMemAlloc high-water 128 bytes\n") != std::string::npos &&
               t.find("1 kernel relu_fwd_f32\n") != std::string::npos &&
               t.find("1 copy device to device\n") != std::string::npos &&
               t.find("1 copy host to device\n") != std::string::npos &&
               t.find("1 copy device to host\n") != std::string::npos,
           "a dry run writes nothing to the device, reads zeros back, and counts what it skipped");
}

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: self_test LIB_DIR (the folder holding the emulator's libcuda.so.1)\n");
        return 2;
    }
    scheduler_checks();
    asan_check();
    dry_run_checks(argv[1]);
    driver_checks(argv[1]);
    std::printf("cuda emulator self-test: %s\n", failures ? "FAILED" : "all checks passed");
    return failures ? 1 : 0;
}
