// emu_culibs.cpp: stand-ins for cuBLAS, cuBLASLt and cuDNN beside the
// emulated driver (emu_driver.cpp). They exist so the engine's probe finds
// the libraries it requires before it opens a GPU; they compute nothing.
// Creating a handle fails with the libraries' NOT_INITIALIZED status, so an
// op that needs one (matmul, conv) returns the engine's error instead of
// running: the emulator checks slmlp's own kernels only.
#define API extern "C" __attribute__((visibility("default"))) int

// cudnnGetVersion: 0 says "no real cuDNN" in the device summary.
extern "C" __attribute__((visibility("default"))) unsigned long cudnnGetVersion() { return 0; }
API cudnnCreate(void**) { return 1001; }          // CUDNN_STATUS_NOT_INITIALIZED
API cublasCreate_v2(void**) { return 1; }         // CUBLAS_STATUS_NOT_INITIALIZED
API cublasLtCreate(void**) { return 1; }
