#!/usr/bin/env python3
"""Builds the CUDA emulator: a libcuda.so.1 that runs slmlp's kernels on the CPU.

    python3 tools/cuda_emu/build.py [--out DIR] [--cxx g++] [--self-test] [--asan]

Writes into DIR/lib (default target/cuda_emu/lib):
- libcuda.so.1 (emu_driver.cpp): the driver calls the engine makes;
- emu_<family>.so for every kernels/src/families/<family>.cu, compiled as
  C++ with emu_device.h (one fiber per CUDA thread);
- libcublas.so.13, libcublasLt.so.13, libcudnn.so.9 (emu_culibs.cpp): the
  cuBLASLt GEMM and cuDNN convolution calls the engine makes (legacy and
  graph API), as plain loops.

--asan builds everything with AddressSanitizer: a kernel that overruns a
__shared__ array or a driver allocation stops with ASan's report. Run the
binary with LD_PRELOAD=$(g++ -print-file-name=libasan.so) and
ASAN_OPTIONS=detect_leaks=0 (docs/GPU_CHECK.md).

--self-test then builds and runs self_test.cpp: each of the emulator's own
checks (barriers, warp operations, capture rules, launch shapes) shown to
work and to fire.

Then put DIR/lib first on LD_LIBRARY_PATH for any slmlp binary:
`--device cuda` runs on the emulator (docs/GPU_CHECK.md, "Without a GPU:
the CUDA emulator"; tools/cuda_emu/run.sh does both steps). NVRTC is still the real one: the kernels are compiled for sm_90
as on a GPU, and the emulator runs their C++ build instead. A library is
rebuilt only when a source it depends on is newer.
"""
import argparse
import concurrent.futures
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
FAMILIES = os.path.join(REPO, "kernels", "src", "families")
# No FMA contraction (the rounded intrinsics must round), no strict aliasing
# (the kernels move packs through int4 as CUDA code does), no fortified
# longjmp (fibers jump between stacks).
FLAGS = ["-std=c++17", "-O2", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math",
         "-fno-strict-aliasing", "-U_FORTIFY_SOURCE", "-Wall"]
HEADERS = [os.path.join(HERE, h) for h in ("emu_device.h", "emu_sched.h", "emu_launch.h")]
CULIBS = [("libcublas.so.13", "libcublas.so"), ("libcublasLt.so.13", "libcublasLt.so"),
          ("libcudnn.so.9", "libcudnn.so")]
# An entry point after preprocessing: `extern "C" <__global__ as emu_device.h
# defines it> void NAME(`.
ENTRY = re.compile(r'extern\s+"C"\s+__attribute__\s*\(\(\s*visibility\s*\(\s*"default"\s*\)\s*\)\)\s+void\s+(\w+)\s*\(')


def newer(target, sources):
    if not os.path.exists(target):
        return True
    t = os.path.getmtime(target)
    return any(os.path.getmtime(s) > t for s in sources)


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.stderr.write(f"build.py: {' '.join(cmd)}\n{r.stderr}")
        raise SystemExit(1)
    return r.stdout


def link(lib, name, target):
    path = os.path.join(lib, name)
    if os.path.islink(path) or os.path.exists(path):
        os.remove(path)
    os.symlink(target, path)


def family(cxx, lib, gen, name):
    src = os.path.join(FAMILIES, name + ".cu")
    out = os.path.join(lib, f"emu_{name}.so")
    deps = [src, os.path.join(FAMILIES, "common.cuh"), *HEADERS, __file__]
    if not newer(out, deps):
        return name, 0
    inc = ["-include", os.path.join(HERE, "emu_device.h"), "-I", os.path.join(HERE, "include"),
           "-I", FAMILIES]
    pre = run([cxx, "-x", "c++", "-std=c++17", "-E", "-P", *inc, src])
    names = sorted(set(ENTRY.findall(pre)))
    if not names:
        sys.stderr.write(f"build.py: no extern \"C\" __global__ kernel found in {src}\n")
        raise SystemExit(1)
    wrapper = os.path.join(gen, f"{name}.cpp")
    with open(wrapper, "w") as f:
        f.write(f'#include "{name}.cu"\n')
        f.writelines(f"EMU_EXPORT({k})\n" for k in names)
    # -w: CUDA code compiled as host C++ draws warnings that do not apply
    run([cxx, *FLAGS, "-w", *inc, wrapper, "-o", out])
    return name, len(names)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(REPO, "target", "cuda_emu"))
    ap.add_argument("--cxx", default=os.environ.get("CXX", "g++"))
    ap.add_argument("--self-test", action="store_true", help="build and run self_test.cpp")
    ap.add_argument("--asan", action="store_true", help="build with AddressSanitizer")
    a = ap.parse_args()
    if a.asan:
        # Heap and globals only: stack checks would misread the fibers' stacks.
        FLAGS.extend(["-fsanitize=address", "--param=asan-stack=0", "-fno-omit-frame-pointer", "-g"])
    lib, gen = os.path.join(a.out, "lib"), os.path.join(a.out, "gen")
    os.makedirs(lib, exist_ok=True)
    os.makedirs(gen, exist_ok=True)
    # Built with other flags (--asan or not): rebuild everything.
    stamp = os.path.join(a.out, "flags")
    flags = " ".join([a.cxx, *FLAGS])
    if not os.path.exists(stamp) or open(stamp).read() != flags:
        for f in os.listdir(lib):
            os.remove(os.path.join(lib, f))
        with open(stamp, "w") as f:
            f.write(flags)

    driver = os.path.join(lib, "libcuda.so.1")
    if newer(driver, [os.path.join(HERE, "emu_driver.cpp"), *HEADERS, __file__]):
        run([a.cxx, *FLAGS, "-Wl,-soname,libcuda.so.1", "-I", HERE, os.path.join(HERE, "emu_driver.cpp"),
             "-o", driver, "-ldl"])
    link(lib, "libcuda.so", "libcuda.so.1")
    for soname, plain in CULIBS:
        path = os.path.join(lib, soname)
        if newer(path, [os.path.join(HERE, "emu_culibs.cpp"), *HEADERS, __file__]):
            run([a.cxx, *FLAGS, f"-Wl,-soname,{soname}", "-I", HERE, "-I", os.path.join(HERE, "include"),
                 os.path.join(HERE, "emu_culibs.cpp"), "-o", path, "-ldl"])
        link(lib, plain, soname)

    names = sorted(f[:-3] for f in os.listdir(FAMILIES) if f.endswith(".cu"))
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as ex:
        built = list(ex.map(lambda n: family(a.cxx, lib, gen, n), names))
    fresh = [f"{n} ({k})" for n, k in built if k]
    print(f"cuda emulator: {lib}: {len(names)} kernel families"
          + (f", rebuilt {', '.join(fresh)}" if fresh else ", all up to date"))
    if a.self_test:
        exe = os.path.join(a.out, "self_test")
        run([a.cxx, *[f for f in FLAGS if f not in ("-fPIC", "-shared")], "-I", HERE,
             "-I", os.path.join(HERE, "include"), os.path.join(HERE, "self_test.cpp"), "-o", exe, "-ldl"])
        env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0")  # the test keeps its streams
        r = subprocess.run([exe, lib], env=env)
        if r.returncode != 0:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
