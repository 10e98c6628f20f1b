#!/usr/bin/env python3
"""PyTorch baselines on one GPU: the figures slmlp's CUDA backend is judged against.

Run by hand or by tools/gpu/gpu_check.sh within a time budget (docs/DESIGN.md §8);
never in CI. Needs python3 with torch (+ torchvision for the model sections).

    python3 tools/gpu/torch_baselines.py --out OUT_DIR [--budget-s 390]
    python3 tools/gpu/torch_baselines.py --out /tmp/tb --device cpu --quick   # logic smoke test

Sections (each in its own child process, under its own time budget, so a hang,
a crash or an OOM costs one section and never the whole run):

  copy            device-to-device copy of a 1 GiB buffer; bytes = read + written.
                  The ceiling for every memory-bound kernel below.
  gemm            torch.matmul bf16: 8192^3 (the matrix ceiling) and the projector /
                  classifier GEMMs of batch 256 (fwd, bwd-data, bwd-weight).
  bn_relu         BatchNorm2d(train)+ReLU and BN+add+ReLU at ResNet-50 shapes, N=256,
                  channels_last bf16, fwd and bwd, eager then torch.compile.
  conv_layers     every distinct ResNet-50 conv (batch 256, 224 px, bf16, channels_last,
                  cudnn.benchmark): fwd, bwd-data, bwd-weight.
  resnet50_train  torchvision resnet50 training step (bf16 autocast, channels_last,
                  SGD momentum): SL and SL-MLP (fc -> projector), eager then compile.
  maskrcnn_train  Mask R-CNN R50-FPN training iteration at 800x1333, batch 4.

Measurement rules (docs/DESIGN.md §8): CUDA events around each call after
warm-up, median of many repeats; inputs larger than 4x L2 or rotated among several
sets so the cache is not what is measured; inputs are random normals, never zeros.

Bytes counted for the memory-bound rows are the minimum any implementation must
move (each input read once, each output written once):
  BN+ReLU fwd       read x, write y                               2 E elements
  BN+add+ReLU fwd   read x, r, write y                            3 E
  BN+ReLU bwd       read x, dy, write dx, + ReLU mask at 1 bit    3 E + E/8 bytes
  BN+add+ReLU bwd   read x, dy, write dx, dr, + 1-bit mask        4 E + E/8 bytes
(E = N*H*W*C, 2 bytes per bf16 element; per-channel statistics are negligible.)
FLOPs count 2 per multiply-add.

Output: OUT/torch_baselines.json (machine, versions, every row with its timing
statistics, skips and errors) and OUT/torch_baselines.md (tables against the
ceilings); the summary table is printed last. Every row has a stable "key"
(e.g. "conv/3x3_64-64_s1_56x56/fwd") so slmlp's own benches can emit rows with
the same keys and be joined against these (tools/gpu/gpu_report.py does that).
"""

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import traceback

SCHEMA = "slmlp.torch_baselines/1"
SECTIONS = ["copy", "gemm", "bn_relu", "conv_layers", "resnet50_train", "maskrcnn_train"]

# Seconds per section on an H100; scaled down when --budget-s is smaller than the
# sum, and time a section leaves unused rolls over to the later ones.
GPU_BUDGET_S = {"copy": 15, "gemm": 20, "bn_relu": 60, "conv_layers": 70,
                "resnet50_train": 150, "maskrcnn_train": 60}
QUICK_BUDGET_S = {"copy": 20, "gemm": 20, "bn_relu": 120, "conv_layers": 60,
                  "resnet50_train": 90, "maskrcnn_train": 90}
KILL_GRACE_S = 8          # after its budget a child gets this long to save, then SIGKILL
REPORT_RESERVE_S = 3      # kept back for writing the report at the end

# Published / previously measured references, shown beside our numbers (docs/DESIGN.md §3, §6).
REFS = {
    "copy": "H100 seen here: ~3000 GB/s",
    "gemm": "H100 seen here: ~798 TFLOP/s",
    "resnet50": "DLE PyTorch A100: 2470 img/s; MLPerf v3.0 H100: ~7010 img/s",
    "maskrcnn": "DLE A100 AMP: 24 img/s; MLPerf v3.0 H100: ~180 img/s",
}


def config(quick):
    """Problem sizes. --quick is for logic tests (CPU, seconds), not for figures."""
    if quick:
        return {
            "copy_bytes": 8 << 20,
            "gemm_square": 256,
            "gemm_batch": 8, "proj_dim": 64, "classes": 24,
            "bn_batch": 2,
            "bn_shapes": [(8, 8, 16), (4, 4, 32)],
            "bn_compile_shapes": 1,
            "conv_batch": 2, "conv_px": 32,
            "rn_batch": 2, "rn_px": 64,
            "mr_batch": 1, "mr_hw": (128, 160), "mr_objects": 2,
            "l2_bytes": 256 << 10,
            "reps": dict(warmup=1, min_reps=3, max_reps=5, max_s=0.5),
            "step_reps": dict(warmup=1, min_reps=2, max_reps=3, max_s=5.0),
            "compile_min_s": 20.0,
            "rn_compile_min_s": 10.0,
        }
    return {
        "copy_bytes": 1 << 30,
        "gemm_square": 8192,
        "gemm_batch": 256, "proj_dim": 2048, "classes": 1000,
        "bn_batch": 256,
        "bn_shapes": [(56, 56, 64), (56, 56, 256), (28, 28, 512), (14, 14, 1024), (7, 7, 2048)],
        "bn_compile_shapes": 5,
        "conv_batch": 256, "conv_px": 224,
        "rn_batch": 256, "rn_px": 224,
        "mr_batch": 4, "mr_hw": (800, 1333), "mr_objects": 4,
        "l2_bytes": None,  # read from the device
        "reps": dict(warmup=3, min_reps=10, max_reps=100, max_s=0.4),
        "step_reps": dict(warmup=5, min_reps=10, max_reps=30, max_s=6.0),
        "compile_min_s": 8.0,
        # A cold inductor compile of the ResNet-50 training graph: don't start one
        # that can't finish (estimate; measured as compile_s when it runs).
        "rn_compile_min_s": 45.0,
    }


# ----------------------------------------------------------------------------------
# Child side: one section in one process.
# ----------------------------------------------------------------------------------

class BudgetExceeded(BaseException):
    """Raised from SIGALRM / SIGTERM. BaseException so library code's
    `except Exception` cannot swallow it (torch.compile has many of those)."""


class Section:
    """What a section function gets: the device, sizes, timing and result recording.
    The result file is rewritten after every row so a kill loses nothing finished."""

    def __init__(self, args, torch):
        self.args = args
        self.torch = torch
        self.dev = torch.device(args.device)
        self.cuda = self.dev.type == "cuda"
        if self.cuda and self.dev.index is None:
            self.dev = torch.device("cuda", 0)  # set_device() and friends want an index
        self.cfg = config(args.quick)
        self.deadline = args.deadline
        self.path = args.child_json
        self.res = {"section": args.child, "status": "running", "started": now_iso(),
                    "budget_s": round(args.deadline - time.time(), 1), "current": None,
                    "rows": [], "skips": [], "errors": [], "notes": [], "env": {}}
        self.t0 = time.time()

    # -- recording --
    def save(self):
        self.res["elapsed_s"] = round(time.time() - self.t0, 2)
        write_json_atomic(self.path, self.res)

    def progress(self, what):
        self.res["current"] = what
        log(f"[{self.args.child}] {what}")

    def row(self, row):
        self.res["rows"].append(row)
        self.save()
        log(f"[{self.args.child}]   -> {fmt_row_short(row)}")

    def skip(self, what, reason):
        self.res["skips"].append({"what": what, "reason": reason})
        self.save()
        log(f"[{self.args.child}]   skipped {what}: {reason}")

    def error(self, what, exc):
        tb = traceback.format_exc(limit=6)
        self.res["errors"].append({"what": what, "error": f"{type(exc).__name__}: {exc}"[:2000],
                                   "traceback": tb[-3000:]})
        self.save()
        log(f"[{self.args.child}]   ERROR in {what}: {type(exc).__name__}: {str(exc)[:400]}")

    def note(self, text):
        self.res["notes"].append(text)
        self.save()

    def remaining(self):
        return self.deadline - time.time()

    def attempt(self, what, fn):
        """Run one measurement; OOM and errors are recorded and the section goes on."""
        torch = self.torch
        self.progress(what)
        try:
            return fn()
        except BudgetExceeded:
            raise
        except torch.OutOfMemoryError as e:
            self.skip(what, f"out of memory: {str(e).splitlines()[0][:300]}")
        except Exception as e:  # noqa: BLE001 - any failure is recorded, the run goes on
            self.error(what, e)
        self.free()
        return None

    def free(self):
        import gc
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()

    # -- device helpers --
    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize(self.dev)

    def l2_bytes(self):
        if self.cfg["l2_bytes"] is not None:
            return self.cfg["l2_bytes"]
        if self.cuda:
            p = self.torch.cuda.get_device_properties(self.dev)
            return int(getattr(p, "L2_cache_size", 0) or (50 << 20))
        return 32 << 20

    def rotation(self, set_bytes, cap=32):
        """How many input sets to cycle through so that one pass over them is at
        least 4x the L2: then each call finds its inputs in DRAM, not the cache."""
        target = 4 * self.l2_bytes()
        if set_bytes >= target:
            return 1
        return max(2, min(cap, math.ceil(target / max(1, set_bytes))))

    def measure(self, timed, setup=None, **kw):
        """Median-of-many timing. setup(i) runs untimed (but enqueued before the
        start event, so its GPU work is excluded); timed(ctx) is what is measured.
        Returns statistics in milliseconds."""
        torch = self.torch
        p = dict(self.cfg["reps"])
        p.update(kw)
        for i in range(p["warmup"]):
            timed(setup(i) if setup else None)
        self.sync()
        times, pairs = [], []
        t0 = time.perf_counter()
        n = 0
        while n < p["max_reps"]:
            ctx = setup(p["warmup"] + n) if setup else None
            if self.cuda:
                s = torch.cuda.Event(enable_timing=True)
                e = torch.cuda.Event(enable_timing=True)
                s.record()
                timed(ctx)
                e.record()
                pairs.append((s, e))
            else:
                t = time.perf_counter()
                timed(ctx)
                times.append((time.perf_counter() - t) * 1e3)
            del ctx
            n += 1
            if self.cuda and n % 8 == 0:
                e.synchronize()  # keeps the host near the device so max_s means device time
            if n >= p["min_reps"] and time.perf_counter() - t0 >= p["max_s"]:
                break
        self.sync()
        wall_ms = (time.perf_counter() - t0) * 1e3 / n
        if self.cuda:
            times = [s.elapsed_time(e) for s, e in pairs]
        out = stats_ms(times)
        # Host clock over the whole loop: includes setup() and any gaps between calls;
        # for a training step (trivial setup) it is the throughput a training loop sees.
        out["wall_ms_per_rep"] = round(wall_ms, 4)
        return out

    # -- tensors --
    def randn(self, *shape, dtype=None, scale=1.0):
        t = self.torch.randn(*shape, device=self.dev, dtype=dtype or self.torch.bfloat16)
        return t.mul_(scale) if scale != 1.0 else t

    def randn_cl(self, n, c, h, w, dtype=None, scale=1.0):
        """Random NCHW tensor laid out channels_last (NHWC in memory)."""
        return self.randn(n, h, w, c, dtype=dtype, scale=scale).permute(0, 3, 1, 2)

    def peak_reset(self):
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats(self.dev)

    def peak_gib(self):
        if not self.cuda:
            return None
        return round(self.torch.cuda.max_memory_allocated(self.dev) / 2**30, 3)


def sig(x, digits=4):
    """Round to significant digits: rates span 0.001 (CPU --quick) to 3000 (H100)."""
    if x is None or x == 0 or not math.isfinite(x):
        return x
    return round(x, max(0, digits - 1 - int(math.floor(math.log10(abs(x))))))


def stats_ms(times):
    s = sorted(times)
    n = len(s)

    def q(f):
        return s[min(n - 1, max(0, int(round(f * (n - 1)))))]
    return {"ms_median": round(statistics.median(s), 5), "ms_min": round(s[0], 5),
            "ms_p10": round(q(0.1), 5), "ms_p90": round(q(0.9), 5),
            "ms_mean": round(statistics.fmean(s), 5), "reps": n,
            "ms_all": [round(t, 5) for t in times]}


def env_info(c):
    torch = c.torch
    d = {"torch": torch.__version__, "torch_cuda": torch.version.cuda,
         "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
         "device": str(c.dev), "python": sys.version.split()[0],
         "torch_threads": torch.get_num_threads(),
         "settings": {"cudnn.benchmark": torch.backends.cudnn.benchmark,
                      "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
                      "matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                      "matmul.allow_bf16_reduced_precision_reduction":
                          torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction,
                      "float32_matmul_precision": torch.get_float32_matmul_precision()}}
    if c.cuda:
        p = torch.cuda.get_device_properties(c.dev)
        d.update({"name": p.name, "cc": f"{p.major}.{p.minor}",
                  "sm_count": p.multi_processor_count, "total_mem_gib": round(p.total_memory / 2**30, 2),
                  "l2_bytes": getattr(p, "L2_cache_size", None)})
    return d


# ---- copy ----------------------------------------------------------------------

def sec_copy(c):
    torch = c.torch
    nbytes = c.cfg["copy_bytes"]
    src = c.randn(nbytes // 4, dtype=torch.float32)
    dst = torch.empty_like(src)

    def run():
        m = c.measure(lambda _: dst.copy_(src), warmup=3, min_reps=20, max_reps=100, max_s=1.0)
        if not torch.equal(dst, src):
            raise RuntimeError("copy result differs from its source")
        moved = 2 * nbytes
        c.row({"key": "copy/d2d", "name": f"d2d copy {fmt_bytes(nbytes)}", "buffer_bytes": nbytes,
               "bytes": moved, "GBps": sig(moved / (m["ms_median"] * 1e-3) / 1e9), **m})
    c.attempt(f"copy {fmt_bytes(nbytes)}", run)


# ---- gemm ----------------------------------------------------------------------

def sec_gemm(c):
    torch = c.torch
    S, B, D, K = c.cfg["gemm_square"], c.cfg["gemm_batch"], c.cfg["proj_dim"], c.cfg["classes"]
    # (key, name, M, N, K, how to make A and B): Linear y = x W^T; dX = dY W; dW = dY^T X.
    cases = [
        ("gemm/square", f"{S}x{S}x{S}", S, S, S, lambda: (c.randn(S, S), c.randn(S, S))),
        ("gemm/proj/fwd", f"projector fwd X[{B},{D}] W^T[{D},{D}]", B, D, D,
         lambda: (c.randn(B, D), c.randn(D, D).t())),
        ("gemm/proj/bwd_data", f"projector bwd-data dY[{B},{D}] W[{D},{D}]", B, D, D,
         lambda: (c.randn(B, D), c.randn(D, D))),
        ("gemm/proj/bwd_weight", f"projector bwd-weight dY^T[{D},{B}] X[{B},{D}]", D, D, B,
         lambda: (c.randn(B, D).t(), c.randn(B, D))),
        ("gemm/fc/fwd", f"classifier fwd X[{B},{D}] W^T[{D},{K}]", B, K, D,
         lambda: (c.randn(B, D), c.randn(K, D).t())),
        ("gemm/fc/bwd_data", f"classifier bwd-data dY[{B},{K}] W[{K},{D}]", B, D, K,
         lambda: (c.randn(B, K), c.randn(K, D))),
        ("gemm/fc/bwd_weight", f"classifier bwd-weight dY^T[{K},{B}] X[{B},{D}]", K, D, B,
         lambda: (c.randn(B, K).t(), c.randn(B, D))),
    ]
    for key, name, M, N, Kd, make in cases:
        def run(key=key, name=name, M=M, N=N, Kd=Kd, make=make):
            set_bytes = 2 * (M * Kd + Kd * N + M * N)
            k = c.rotation(set_bytes)
            sets = []
            for _ in range(k):
                a, b = make()
                sets.append((a, b, torch.empty(M, N, device=c.dev, dtype=torch.bfloat16)))
            m = c.measure(lambda i: torch.matmul(sets[i][0], sets[i][1], out=sets[i][2]),
                          setup=lambda i: i % k)
            flops = 2 * M * N * Kd
            c.row({"key": key, "name": name, "M": M, "N": N, "K": Kd, "dtype": "bf16",
                   "rotated_sets": k, "flops": flops,
                   "TFLOPs": sig(flops / (m["ms_median"] * 1e-3) / 1e12), **m})
        c.attempt(f"gemm {name}", run)
        c.free()


# ---- bn_relu -------------------------------------------------------------------

def bn_bytes(E, residual, direction):
    if direction == "fwd":
        return (3 if residual else 2) * E * 2
    return (4 if residual else 3) * E * 2 + (E + 7) // 8


def sec_bn_relu(c):
    torch = c.torch
    nn, F = torch.nn, torch.nn.functional
    N = c.cfg["bn_batch"]

    class BNAct(nn.Module):
        """torchvision Bottleneck's tail: bn(x) [+= identity], relu in place."""

        def __init__(self, C, residual):
            super().__init__()
            self.bn = nn.BatchNorm2d(C)
            self.residual = residual

        def forward(self, x, r=None):
            y = self.bn(x)
            if self.residual:
                y += r
            return F.relu(y, inplace=True)

    def bench(H, W, C, residual, mode):
        variant = "bn_add_relu" if residual else "bn_relu"
        E = N * H * W * C
        k = c.rotation((4 if residual else 3) * E * 2, cap=8)
        X = [c.randn_cl(N, C, H, W).requires_grad_() for _ in range(k)]
        R = [c.randn_cl(N, C, H, W).requires_grad_() if residual else None for _ in range(k)]
        DY = [c.randn_cl(N, C, H, W) for _ in range(k)]
        mod = BNAct(C, residual).to(c.dev).train()  # fp32 params, bf16 activations (= autocast)
        fn = mod
        extra = {}
        if mode == "compile":
            torch._dynamo.reset()
            fn = torch.compile(mod, dynamic=False)
            t = time.perf_counter()
            y = fn(X[0], R[0])
            torch.autograd.grad(y, [X[0], mod.bn.weight], DY[0])
            c.sync()
            extra["compile_s"] = round(time.perf_counter() - t, 2)
            del y

        def grads(j, y):
            ins = [X[j]] + ([R[j]] if residual else []) + [mod.bn.weight, mod.bn.bias]
            return torch.autograd.grad(y, ins, DY[j])

        shape = f"{H}x{W}x{C}"
        for direction in ("fwd", "bwd"):
            if direction == "fwd":
                m = c.measure(lambda j: fn(X[j], R[j]), setup=lambda i: i % k)
            else:
                m = c.measure(lambda ctx: grads(*ctx),
                              setup=lambda i: (i % k, fn(X[i % k], R[i % k])))
            nb = bn_bytes(E, residual, direction)
            c.row({"key": f"bn_relu/{variant}/{shape}/{mode}/{direction}",
                   "name": f"{variant} {direction} N={N} {shape} ({mode})",
                   "variant": variant, "shape_nhwc": [N, H, W, C], "mode": mode,
                   "direction": direction, "dtype": "bf16 act, fp32 params",
                   "bytes": nb, "GBps": sig(nb / (m["ms_median"] * 1e-3) / 1e9),
                   "rotated_sets": k, **extra, **m})

    for H, W, C in c.cfg["bn_shapes"]:
        for residual in (False, True):
            v = "bn_add_relu" if residual else "bn_relu"
            c.attempt(f"{v} {H}x{W}x{C} eager", lambda: bench(H, W, C, residual, "eager"))
            c.free()
    if c.args.no_compile:
        c.skip("torch.compile", "--no-compile given")
        return
    for H, W, C in c.cfg["bn_shapes"][: c.cfg["bn_compile_shapes"]]:
        for residual in (False, True):
            v = "bn_add_relu" if residual else "bn_relu"
            what = f"{v} {H}x{W}x{C} compile"
            if c.remaining() < c.cfg["compile_min_s"]:
                c.skip(what, f"budget: {c.remaining():.0f} s left, a compile needs ~{c.cfg['compile_min_s']:.0f}")
                continue
            c.attempt(what, lambda: bench(H, W, C, residual, "compile"))
            c.free()


# ---- conv_layers ---------------------------------------------------------------

def resnet50_convs(c, px):
    """Distinct conv shapes of torchvision resnet50 at px x px, with multiplicity,
    read off the model itself (meta tensors: no memory, no arithmetic)."""
    torch = c.torch
    import torchvision
    with torch.device("meta"):
        model = torchvision.models.resnet50().eval()  # eval: BN accepts a 1x1 map at batch 1
    found = {}

    def hook(name):
        def f(mod, inp, out):
            key = (mod.in_channels, mod.out_channels, mod.kernel_size[0], mod.stride[0],
                   mod.padding[0], inp[0].shape[2], inp[0].shape[3], out.shape[2], out.shape[3])
            if mod.groups != 1 or mod.dilation != (1, 1) or mod.kernel_size[0] != mod.kernel_size[1]:
                raise RuntimeError(f"unexpected conv {name}")
            found.setdefault(key, []).append(name)
        return f
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Conv2d):
            mod.register_forward_hook(hook(name))
    model(torch.empty(1, 3, px, px, device="meta"))
    out = []
    for (ci, co, k, s, p, h, w, ho, wo), names in found.items():
        out.append({"cin": ci, "cout": co, "k": k, "stride": s, "pad": p, "H": h, "W": w,
                    "Ho": ho, "Wo": wo, "count": len(names), "layers": names,
                    "input_grad_needed": names != ["conv1"]})
    return out


def sec_conv_layers(c):
    torch = c.torch
    F = torch.nn.functional
    N, px = c.cfg["conv_batch"], c.cfg["conv_px"]
    shapes = resnet50_convs(c, px)
    c.note(f"{len(shapes)} distinct conv shapes, {sum(s['count'] for s in shapes)} convs "
           f"in resnet50 at {px}px; batch {N}; cudnn.benchmark={torch.backends.cudnn.benchmark}")
    for s in shapes:
        ci, co, k, st, p, H, W, Ho, Wo = (s[n] for n in ("cin", "cout", "k", "stride", "pad", "H", "W", "Ho", "Wo"))
        tag = f"{k}x{k}_{ci}-{co}_s{st}_{H}x{W}"
        flops = 2 * N * Ho * Wo * co * ci * k * k

        def run(s=s, ci=ci, co=co, k=k, st=st, p=p, H=H, W=W, Ho=Ho, Wo=Wo, tag=tag, flops=flops):
            set_bytes = 2 * (N * ci * H * W + co * ci * k * k + N * co * Ho * Wo)
            nset = c.rotation(set_bytes, cap=8)
            sets = [(c.randn_cl(N, ci, H, W), c.randn_cl(co, ci, k, k, scale=(ci * k * k) ** -0.5),
                     c.randn_cl(N, co, Ho, Wo)) for _ in range(nset)]
            conv_bwd = torch.ops.aten.convolution_backward
            ops = [("fwd", lambda j: F.conv2d(sets[j][0], sets[j][1], None, st, p))]
            if s["input_grad_needed"]:
                ops.append(("bwd_data", lambda j: conv_bwd(sets[j][2], sets[j][0], sets[j][1], None,
                                                           [st, st], [p, p], [1, 1], False, [0, 0], 1,
                                                           [True, False, False])))
            else:
                c.note(f"conv {tag}: bwd_data not measured, training never needs it (the image needs no gradient)")
            ops.append(("bwd_weight", lambda j: conv_bwd(sets[j][2], sets[j][0], sets[j][1], None,
                                                         [st, st], [p, p], [1, 1], False, [0, 0], 1,
                                                         [False, True, False])))
            for direction, op in ops:
                def one(direction=direction, op=op):
                    m = c.measure(op, setup=lambda i: i % nset, warmup=max(2, c.cfg["reps"]["warmup"]))
                    c.row({"key": f"conv/{tag}/{direction}",
                           "name": f"conv {k}x{k} {ci}->{co} s{st} @{H}x{W} {direction}",
                           "cin": ci, "cout": co, "k": k, "stride": st, "pad": p, "H": H, "W": W,
                           "batch": N, "count": s["count"], "layers": s["layers"],
                           "direction": direction, "dtype": "bf16 channels_last", "flops": flops,
                           "rotated_sets": nset,
                           "TFLOPs": sig(flops / (m["ms_median"] * 1e-3) / 1e12), **m})
                c.attempt(f"conv {tag} {direction}", one)
        c.attempt(f"conv {tag}", run)
        c.free()


# ---- resnet50_train ------------------------------------------------------------

def build_resnet50(c, variant):
    torch = c.torch
    nn = torch.nn
    import torchvision
    model = torchvision.models.resnet50(weights=None)
    if variant == "sl_mlp":
        # docs/DESIGN.md §1: Linear(d->h) -> BN1d(h) -> ReLU, h = d = 2048, then the classifier.
        model.fc = nn.Sequential(nn.Linear(2048, 2048), nn.BatchNorm1d(2048),
                                 nn.ReLU(inplace=True), nn.Linear(2048, 1000))
    return model.to(c.dev, memory_format=torch.channels_last).train()


def train_step(c, opt, loss_of, last, amp=lambda: True):
    """step(i) for c.measure: loss_of(i) under bf16 autocast (when amp()),
    then zero_grad, backward and opt.step; last["loss"] keeps the loss."""
    torch = c.torch

    def step(i):
        with torch.autocast(c.dev.type, dtype=torch.bfloat16, enabled=amp()):
            loss = loss_of(i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        last["loss"] = loss.detach()

    return step


def train_step_bench(c, variant, mode):
    torch = c.torch
    F = torch.nn.functional
    N, px = c.cfg["rn_batch"], c.cfg["rn_px"]
    model = build_resnet50(c, variant)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    xs = [c.randn(N, 3, px, px, dtype=torch.float32).contiguous(memory_format=torch.channels_last)
          for _ in range(2)]
    ys = [torch.randint(0, 1000, (N,), device=c.dev) for _ in range(2)]
    fwd = model
    extra = {}
    if mode == "compile":
        torch._dynamo.reset()
        fwd = torch.compile(model)
    last = {}
    step = train_step(c, opt, lambda i: F.cross_entropy(fwd(xs[i % 2]), ys[i % 2]), last)

    c.peak_reset()
    t = time.perf_counter()
    step(0)  # compile (if any) and cudnn autotuning happen here
    c.sync()
    extra["first_step_s"] = round(time.perf_counter() - t, 2)
    if mode == "compile":
        extra["compile_s"] = extra["first_step_s"]
    peak_first = c.peak_gib()
    c.peak_reset()
    m = c.measure(step, setup=lambda i: i + 1, **c.cfg["step_reps"])
    loss = float(last["loss"])
    if not math.isfinite(loss):
        c.note(f"{variant} {mode}: loss is not finite ({loss}); timing kept")
    c.row({"key": f"resnet50_train/{variant}/{mode}",
           "name": f"resnet50 {variant.upper().replace('_', '-')} train step ({mode})",
           "variant": variant, "mode": mode, "batch": N, "px": px, "params": params,
           "precision": "bf16 autocast, channels_last, SGD momentum",
           "img_per_s": sig(N / (m["ms_median"] * 1e-3)),
           "peak_gib": c.peak_gib(), "peak_gib_first_step": peak_first,
           "loss_last": round(loss, 4), **extra, **m})


def sec_resnet50_train(c):
    c.torch.backends.cudnn.benchmark = True
    plan = [("sl", "eager"), ("sl_mlp", "eager")]
    if c.args.no_compile:
        c.skip("torch.compile", "--no-compile given")
    else:
        plan += [("sl", "compile"), ("sl_mlp", "compile")]
    for variant, mode in plan:
        what = f"resnet50 {variant} {mode}"
        if mode == "compile" and c.remaining() < c.cfg["rn_compile_min_s"]:
            c.skip(what, f"budget: {c.remaining():.0f} s left")
            continue
        c.attempt(what, lambda: train_step_bench(c, variant, mode))
        c.free()


# ---- maskrcnn_train ------------------------------------------------------------

def build_maskrcnn(c):
    """Mask R-CNN R50-FPN exactly as torchvision builds it for fine-tuning from a
    pretrained backbone (FrozenBatchNorm2d, trainable layers 3), with no download:
    the frozen BN statistics are calibrated on one random batch so that random
    conv weights give activations of sane size (timing is what we want here)."""
    torch = c.torch
    import torchvision
    from torchvision.models.detection import MaskRCNN
    kw = {}
    if c.args.quick:
        kw = {"min_size": c.cfg["mr_hw"][0], "max_size": c.cfg["mr_hw"][1]}
    try:
        from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
        from torchvision.ops import misc as misc_nn_ops
    except ImportError as e:
        c.note(f"fine-tune backbone config unavailable ({e}); using maskrcnn_resnet50_fpn"
               "(weights=None, weights_backbone=None): trainable BN, all layers trainable")
        return torchvision.models.detection.maskrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, num_classes=91, **kw).to(c.dev), "trainable BN, 5 layers"
    body = torchvision.models.resnet50(weights=None, norm_layer=misc_nn_ops.FrozenBatchNorm2d)
    calib = torchvision.models.resnet50(weights=None)
    calib.load_state_dict(body.state_dict(), strict=False)
    for m in calib.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration batch
            m.reset_running_stats()
    calib = calib.to(c.dev).train()
    mean = torch.tensor([0.485, 0.456, 0.406], device=c.dev).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=c.dev).view(1, 3, 1, 1)
    hw = (64, 64) if c.args.quick else (256, 320)
    with torch.no_grad():
        calib((torch.rand(4, 3, *hw, device=c.dev) - mean) / std)
    body.load_state_dict({k: v.cpu() for k, v in calib.state_dict().items()}, strict=False)
    del calib
    backbone = _resnet_fpn_extractor(body, 3)
    return MaskRCNN(backbone, num_classes=91, **kw).to(c.dev), "FrozenBN (calibrated), trainable layers 3"


def maskrcnn_batches(c, nbatches):
    torch = c.torch
    B, (H, W), nobj = c.cfg["mr_batch"], c.cfg["mr_hw"], c.cfg["mr_objects"]
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(nbatches):
        imgs, tgts = [], []
        for _ in range(B):
            imgs.append(torch.rand(3, H, W, generator=g).to(c.dev))
            x1 = torch.rand(nobj, generator=g) * (W * 0.6)
            y1 = torch.rand(nobj, generator=g) * (H * 0.6)
            bw = 16 + torch.rand(nobj, generator=g) * (W * 0.35)
            bh = 16 + torch.rand(nobj, generator=g) * (H * 0.35)
            boxes = torch.stack([x1, y1, (x1 + bw).clamp(max=W - 1), (y1 + bh).clamp(max=H - 1)], 1)
            masks = torch.zeros(nobj, H, W, dtype=torch.uint8)
            for i, (a, b, cc, d) in enumerate(boxes.round().long().tolist()):
                masks[i, b:d, a:cc] = (torch.rand(d - b, cc - a, generator=g) > 0.3).to(torch.uint8)
            labels = torch.randint(1, 91, (nobj,), generator=g)
            tgts.append({"boxes": boxes.to(c.dev), "labels": labels.to(c.dev), "masks": masks.to(c.dev)})
        out.append((imgs, tgts))
    return out


def sec_maskrcnn_train(c):
    torch = c.torch
    # The mask head sees a different number of positive RoIs every iteration: with
    # benchmark=True cuDNN would autotune each new shape. torchvision's references
    # leave it off for detection.
    torch.backends.cudnn.benchmark = False
    B, (H, W) = c.cfg["mr_batch"], c.cfg["mr_hw"]

    def run():
        model, cfgname = build_maskrcnn(c)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=0.02 * B / 16, momentum=0.9, weight_decay=1e-4)
        batches = maskrcnn_batches(c, 2)
        state = {"amp": True}
        last = {}
        step = train_step(c, opt, lambda i: sum(model(*batches[i % len(batches)]).values()),
                          last, amp=lambda: state["amp"])

        c.peak_reset()
        t = time.perf_counter()
        try:
            step(0)
            c.sync()
        except BudgetExceeded:
            raise
        except Exception as e:  # noqa: BLE001
            c.note(f"bf16 autocast failed ({type(e).__name__}: {str(e)[:300]}); falling back to fp32")
            state["amp"] = False
            opt.zero_grad(set_to_none=True)
            c.free()
            c.peak_reset()
            t = time.perf_counter()
            step(0)
            c.sync()
        first = round(time.perf_counter() - t, 2)
        c.peak_reset()
        m = c.measure(step, setup=lambda i: i + 1, **c.cfg["step_reps"])
        loss = float(last["loss"])
        if not math.isfinite(loss):
            c.note(f"loss is not finite ({loss}); timing kept")
        c.row({"key": "maskrcnn_train/r50_fpn",
               "name": f"Mask R-CNN R50-FPN train iter, batch {B} @{H}x{W}",
               "batch": B, "image_hw": [H, W], "backbone": cfgname,
               "precision": "bf16 autocast" if state["amp"] else "fp32 (bf16 autocast failed)",
               "cudnn_benchmark": False, "first_iter_s": first,
               "img_per_s": sig(B / (m["ms_median"] * 1e-3)),
               "peak_gib": c.peak_gib(), "loss_last": round(loss, 4), **m})
    c.attempt(f"maskrcnn batch {B} {H}x{W}", run)


SECTION_FUNCS = {"copy": sec_copy, "gemm": sec_gemm, "bn_relu": sec_bn_relu,
                 "conv_layers": sec_conv_layers, "resnet50_train": sec_resnet50_train,
                 "maskrcnn_train": sec_maskrcnn_train}


def child_main(args):
    """One section. Stops itself at the deadline (SIGALRM), on SIGTERM, or when its
    parent dies; writes its result file after every row and once more at the end."""
    def on_signal(signum, _frame):
        raise BudgetExceeded("deadline reached" if signum == signal.SIGALRM else f"signal {signum}")
    signal.signal(signal.SIGALRM, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.setitimer(signal.ITIMER_REAL, max(0.5, args.deadline - time.time()))
    ppid = os.getppid()
    # Test hook (no GPU needed): TORCH_BASELINES_TEST_HANG=<section>:<mode> makes that
    # section hang like a kernel that never returns: signals ignored, a grandchild
    # process left running; mode "nowatchdog" also disables the watchdog below, so
    # only the parent's SIGKILL of the process group can end it.
    hang = os.environ.get("TORCH_BASELINES_TEST_HANG", "").split(":")
    hang_here = hang[0] == args.child

    def watchdog():
        # The main thread can sit in C (a hung kernel, a long compile) where a
        # Python signal handler never runs; this thread ends the process anyway.
        while True:
            time.sleep(1.0)
            if os.getppid() != ppid or time.time() > args.deadline + KILL_GRACE_S - 2:
                os._exit(3)
    if not (hang_here and hang[-1] == "nowatchdog"):
        threading.Thread(target=watchdog, daemon=True).start()
    if hang_here:
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        subprocess.Popen(["sleep", "1000"])
        log(f"[{args.child}] TEST HANG ({':'.join(hang)})")
        time.sleep(10000)

    c = None
    res_fallback = {"section": args.child, "status": "error", "rows": [], "skips": [],
                    "errors": [], "notes": [], "env": {}}
    try:
        import torch
        c = Section(args, torch)
        c.save()
        if c.cuda and not torch.cuda.is_available():
            c.res["status"] = "skipped"
            c.skip(args.child, "CUDA is not available to torch (no GPU, or driver/library problem)")
        else:
            if c.cuda:
                torch.cuda.set_device(c.dev)
            torch.manual_seed(0)
            torch.backends.cudnn.benchmark = True
            c.res["env"] = env_info(c)
            SECTION_FUNCS[args.child](c)
            c.res["status"] = "ok" if not (c.res["skips"] or c.res["errors"]) else "partial"
            if c.res["rows"] == [] and c.res["errors"]:
                c.res["status"] = "error"
    except BudgetExceeded as e:
        if c is not None:
            c.res["status"] = "budget"
            c.res["skips"].append({"what": c.res.get("current") or args.child,
                                   "reason": f"section budget exhausted ({e}); later items not run"})
        log(f"[{args.child}] stopped: {e}")
    except BaseException as e:  # noqa: BLE001 - the result file must say what happened
        target = c.res if c is not None else res_fallback
        target["status"] = "error"
        target["errors"].append({"what": args.child, "error": f"{type(e).__name__}: {e}"[:2000],
                                 "traceback": traceback.format_exc(limit=8)[-3000:]})
        log(f"[{args.child}] ERROR {type(e).__name__}: {e}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if c is not None:
            c.res["finished"] = now_iso()
            c.res["current"] = None
            c.save()
        else:
            write_json_atomic(args.child_json, res_fallback)
        sys.stdout.flush()
        sys.stderr.flush()
        # Skip interpreter teardown: compile worker pools and CUDA contexts can
        # make a normal exit slow or hang.
        os._exit(0)


# ----------------------------------------------------------------------------------
# Parent side: budgets, child processes, the report.
# ----------------------------------------------------------------------------------

def now_iso():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def log(msg):
    print(msg, flush=True)


def write_json_atomic(path, obj):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fmt_bytes(n):
    for unit, s in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= s:
            v = n / s
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{n} B"


def fmt_row_short(r):
    parts = [f"{r.get('ms_median', float('nan')):.4g} ms"]
    for k, unit in (("GBps", "GB/s"), ("TFLOPs", "TFLOP/s"), ("img_per_s", "img/s"), ("peak_gib", "GiB peak")):
        if r.get(k) is not None:
            parts.append(f"{r[k]} {unit}")
    return f"{r.get('name', r.get('key'))}: " + ", ".join(parts)


def run_quiet(cmd, timeout=15):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        return p.stdout.strip() if p.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info():
    """Without importing torch: the parent stays light and never touches the GPU."""
    from importlib import metadata
    info = {"hostname": socket.gethostname(), "platform": platform.platform(),
            "python": sys.version.split()[0], "python_exe": sys.executable,
            "cpu_count": os.cpu_count(), "packages": {}}
    for pkg in ("torch", "torchvision", "numpy", "safetensors", "triton"):
        try:
            info["packages"][pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            info["packages"][pkg] = None
    smi = shutil.which("nvidia-smi")
    if smi:
        q = run_quiet([smi, "--query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.sm,"
                       "clocks.mem,power.limit,temperature.gpu,pstate,compute_mode",
                       "--format=csv,noheader"])
        info["nvidia_smi"] = q.splitlines() if q else "nvidia-smi query failed"
    else:
        info["nvidia_smi"] = None
    return info


def section_budgets(sections, total, quick, weights):
    """Each section's share of the total: its default (or --section-budget) seconds,
    scaled down together when they don't fit. run() then hands each section what is
    left minus the shares of the sections after it, so unused time rolls over."""
    base = QUICK_BUDGET_S if quick else GPU_BUDGET_S
    want = {s: float(weights.get(s, base[s])) for s in sections}
    usable = max(1.0, total - REPORT_RESERVE_S - KILL_GRACE_S)
    scale = min(1.0, usable / max(1.0, sum(want.values())))
    return {s: want[s] * scale for s in sections}


class Parent:
    def __init__(self, args):
        self.args = args
        self.t_start = time.time()
        self.deadline = self.t_start + args.budget_s
        self.child = None
        self.running = None  # (name, result path, start, budget) of the section in progress
        os.makedirs(args.out, exist_ok=True)
        self.work = args.work_dir or os.path.join(args.out, "torch_sections")
        os.makedirs(self.work, exist_ok=True)
        self.report = {"schema": SCHEMA, "started": now_iso(), "finished": None,
                       "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
                       "args": {k: v for k, v in vars(args).items() if not k.startswith("child")},
                       "machine": machine_info(), "env": {}, "sections": {}, "summary": []}

    def kill_child(self):
        """End the child's whole process group: the child itself if still running, and
        whatever it started (torch.compile's worker pool) even after the child is gone."""
        p = self.child
        if p is None:
            return

        def group_alive():
            try:
                os.killpg(p.pid, 0)
                return True
            except (ProcessLookupError, PermissionError):
                return False
        for sig in (signal.SIGTERM, signal.SIGKILL):
            p.poll()  # reap the leader if it is done, so an empty group reads as gone
            if not group_alive():
                return
            try:
                os.killpg(p.pid, sig)
            except (ProcessLookupError, PermissionError):
                return
            end = time.time() + 3
            while time.time() < end:
                if p.poll() is not None and not group_alive():
                    return
                time.sleep(0.1)

    def run_section(self, name, budget):
        path = os.path.join(self.work, f"{name}.json")
        if os.path.exists(path):
            os.remove(path)
        t0 = time.time()
        deadline = t0 + budget
        cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--child-json", path,
               "--deadline", f"{deadline:.3f}", "--device", self.args.device, "--out", self.args.out]
        if self.args.quick:
            cmd.append("--quick")
        if self.args.no_compile:
            cmd.append("--no-compile")
        log(f"== {name}: budget {budget:.0f} s")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        rc, killed = None, False
        self.running = (name, path, t0, budget)
        try:
            self.child = subprocess.Popen(cmd, env=env, start_new_session=True)
            try:
                rc = self.child.wait(timeout=budget + KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                killed = True
                self.kill_child()
                rc = self.child.poll()
        finally:
            self.kill_child()  # also ends a compile-worker pool the child left behind
            self.child = None
        self.collect(name, path, t0, budget, rc,
                     f"killed at budget + {KILL_GRACE_S} s" if killed else
                     f"ended by its watchdog at budget + {KILL_GRACE_S - 2} s" if rc == 3 else None)
        self.running = None

    def collect(self, name, path, t0, budget, rc, stopped):
        """Fold one child's result file into the report; `stopped` says how it was
        ended when it did not finish by itself."""
        try:
            with open(path) as f:
                res = json.load(f)
        except (OSError, ValueError) as e:
            res = {"section": name, "status": "error", "rows": [], "skips": [], "notes": [],
                   "errors": [{"what": name, "error": f"no readable result file ({e})"}], "env": {}}
        if stopped:
            res["status"] = "timeout"
            res["skips"].append({"what": res.get("current") or name,
                                 "reason": f"{stopped} while running it; later items not run"})
        elif rc not in (0, None) and res.get("status") in ("running", None):
            res["status"] = "crashed"
            res["errors"].append({"what": res.get("current") or name,
                                  "error": f"child exited with code {rc} (signal {-rc} if negative)"})
        res["budget_s"] = round(budget, 1)
        res["wall_s"] = round(time.time() - t0, 2)
        res["rc"] = rc
        if res.get("env") and not self.report["env"]:
            self.report["env"] = res["env"]
        self.report["sections"][name] = res
        log(f"== {name}: {res['status']} in {res['wall_s']} s "
            f"({len(res['rows'])} rows, {len(res['skips'])} skips, {len(res['errors'])} errors)")

    def run(self):
        a = self.args
        sections = a.sections
        budgets = section_budgets(sections, self.deadline - time.time(), a.quick, a.section_budget)
        for i, name in enumerate(sections):
            later = sum(budgets[s] for s in sections[i + 1:])
            # A child that ignores its deadline is killed KILL_GRACE_S after it: keep
            # that inside the total too.
            left = self.deadline - time.time() - REPORT_RESERVE_S - KILL_GRACE_S
            budget = left - later
            if budget < 3:
                self.report["sections"][name] = {
                    "section": name, "status": "skipped", "rows": [], "errors": [], "notes": [],
                    "skips": [{"what": name, "reason": f"no budget left ({budget:.0f} s)"}],
                    "budget_s": round(budget, 1), "wall_s": 0}
                log(f"== {name}: skipped, no budget left")
            else:
                self.run_section(name, budget)
            self.write()
        self.report["finished"] = now_iso()
        self.report["wall_s"] = round(time.time() - self.t_start, 1)
        self.write()
        print()
        print(summary_markdown(self.report))
        bad = [n for n, s in self.report["sections"].items() if s.get("status") in ("timeout", "crashed", "error")]
        return 1 if bad else 0

    def write(self):
        self.report["summary"] = summarize(self.report)
        write_json_atomic(os.path.join(self.args.out, "torch_baselines.json"), self.report)
        with open(os.path.join(self.args.out, "torch_baselines.md"), "w") as f:
            f.write(report_markdown(self.report))


# ---- report --------------------------------------------------------------------

def rows_of(report, section):
    return report["sections"].get(section, {}).get("rows", [])


def find_row(report, section, key):
    for r in rows_of(report, section):
        if r.get("key") == key:
            return r
    return None


def ceilings(report):
    cp = find_row(report, "copy", "copy/d2d")
    gm = find_row(report, "gemm", "gemm/square")
    return (cp["GBps"] if cp else None), (gm["TFLOPs"] if gm else None)


def gib(v):
    return "n/a" if v is None else f"{v} GiB"


def pct(v, ceil):
    return f"{100.0 * v / ceil:.0f}%" if (v is not None and ceil) else "n/a"


def conv_totals(report):
    """Per training step: every conv of the network, weighted by how often it occurs."""
    rows = rows_of(report, "conv_layers")
    if not rows:
        return None
    ms = flops = 0.0
    n_img = rows[0]["batch"]
    per_dir = {}
    for r in rows:
        ms += r["ms_median"] * r["count"]
        flops += r["flops"] * r["count"]
        d = per_dir.setdefault(r["direction"], [0.0, 0.0])
        d[0] += r["ms_median"] * r["count"]
        d[1] += r["flops"] * r["count"]
    return {"ms": ms, "flops": flops, "gflop_per_img": flops / n_img / 1e9,
            "TFLOPs": flops / (ms * 1e-3) / 1e12, "per_dir": per_dir}


def summarize(report):
    """One line per headline figure: the table printed last."""
    out = []
    copy_gbps, gemm_tf = ceilings(report)

    def add(section, figure, value, unit, ref):
        out.append({"section": section, "figure": figure, "value": value, "unit": unit, "ref": ref})
    secs = report["sections"]

    if copy_gbps:
        add("copy", "device-to-device copy (read+write)", copy_gbps, "GB/s", REFS["copy"])
    for key, fig in (("gemm/square", None), ("gemm/proj/fwd", "projector fwd"),
                     ("gemm/proj/bwd_data", "projector bwd-data"), ("gemm/proj/bwd_weight", "projector bwd-weight")):
        r = find_row(report, "gemm", key)
        if r:
            add("gemm", fig or f"bf16 GEMM {r['M']}x{r['N']}x{r['K']}", r["TFLOPs"], "TFLOP/s",
                REFS["gemm"] if key == "gemm/square" else f"{pct(r['TFLOPs'], gemm_tf)} of square GEMM")
    bn = rows_of(report, "bn_relu")
    for mode in ("eager", "compile"):
        for variant in ("bn_relu", "bn_add_relu"):
            for d in ("fwd", "bwd"):
                rs = [r for r in bn if r["mode"] == mode and r["variant"] == variant and r["direction"] == d]
                if rs:
                    g = [r["GBps"] for r in rs]
                    med = statistics.median(g)
                    add("bn_relu", f"{variant} {d} {mode} (median of {len(rs)} shapes; min-max {min(g):.4g}-{max(g):.4g})",
                        sig(med), "GB/s", f"{pct(med, copy_gbps)} of copy")
    ct = conv_totals(report)
    if ct:
        add("conv_layers", "all ResNet-50 convs, one training step (fwd+bwd)", sig(ct["ms"]), "ms",
            f"{ct['TFLOPs']:.4g} TFLOP/s = {pct(ct['TFLOPs'], gemm_tf)} of square GEMM")
    for r in rows_of(report, "resnet50_train"):
        ref = REFS["resnet50"]
        if ct and r.get("batch") == rows_of(report, "conv_layers")[0]["batch"]:
            ref = f"convs alone {ct['ms']:.0f} ms of {r['ms_median']:.0f} ms; " + ref
        add("resnet50_train", f"{r['variant'].upper().replace('_', '-')} {r['mode']}, batch {r['batch']}, "
            f"peak {gib(r.get('peak_gib'))}" + (f", compile {r['compile_s']} s" if r.get("compile_s") else ""),
            r["img_per_s"], "img/s", ref)
    for r in rows_of(report, "maskrcnn_train"):
        add("maskrcnn_train", f"R50-FPN train, batch {r['batch']}, {r['precision']}, "
            f"{r['ms_median']:.0f} ms/iter, peak {gib(r.get('peak_gib'))}", r["img_per_s"], "img/s", REFS["maskrcnn"])
    for name, s in secs.items():
        if s.get("status") not in ("ok",):
            why = "; ".join([f"{k['what']}: {k['reason']}" for k in s.get("skips", [])[:2]]
                            + [f"{e['what']}: {e['error']}" for e in s.get("errors", [])[:2]])
            add(name, f"status {s.get('status')}", None, "", why[:200])
    return out


def md_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join("" if v is None else str(v) for v in r) + " |")
    return "\n".join(lines)


def summary_markdown(report):
    env = report.get("env") or {}
    smi = report["machine"].get("nvidia_smi")
    if env.get("name") or str(env.get("device", "")).startswith("cpu"):
        card = env.get("name") or "cpu"
    else:
        card = (smi[0].split(",")[0] if isinstance(smi, list) and smi else None) or "?"
    tv = env.get("torch") or report["machine"].get("packages", {}).get("torch") or "?"
    head = (f"## Summary: PyTorch baselines on {card} (torch {tv}, "
            f"cuDNN {env.get('cudnn', '?')}), {report['started']}"
            + ("  [--quick: sizes are NOT the real ones]" if report["args"].get("quick") else ""))
    rows = [(s["section"], s["figure"], "" if s["value"] is None else s["value"], s["unit"], s["ref"])
            for s in report["summary"]]
    return head + "\n\n" + md_table(["section", "figure", "value", "unit", "ceiling / reference"], rows) + "\n"


def report_markdown(report):
    copy_gbps, gemm_tf = ceilings(report)
    m = report["machine"]
    env = report.get("env") or {}
    out = ["# PyTorch baselines (tools/gpu/torch_baselines.py)", ""]
    out.append(f"- started {report['started']}, finished {report.get('finished')}, "
               f"wall {report.get('wall_s')} s; command: `{report['command']}`")
    out.append(f"- host {m['hostname']}, {m['cpu_count']} CPUs; nvidia-smi: {m.get('nvidia_smi')}")
    out.append(f"- torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), cuDNN {env.get('cudnn')}, "
               f"packages {m.get('packages')}")
    if env.get("name"):
        out.append(f"- device {env['name']}, cc {env.get('cc')}, {env.get('sm_count')} SMs, "
                   f"L2 {fmt_bytes(env['l2_bytes']) if env.get('l2_bytes') else '?'}, {env.get('total_mem_gib')} GiB")
    out.append(f"- settings {env.get('settings')}")
    out.append(f"- ceilings measured in this run: copy {copy_gbps} GB/s, bf16 GEMM {gemm_tf} TFLOP/s")
    if report["args"].get("quick"):
        out.append("- **--quick: tiny logic-test sizes; these figures mean nothing**")
    out.append("- times are medians of CUDA-event-timed repeats after warm-up; p10-p90 shows the spread")
    out.append("")

    def spread(r):
        return f"{r['ms_p10']:.4g}-{r['ms_p90']:.4g}"

    def section(name, title, header, rowfn, extra=None):
        s = report["sections"].get(name)
        if s is None:
            return
        out.append(f"## {title}")
        out.append("")
        out.append(f"status **{s.get('status')}**, {s.get('wall_s')} s of {s.get('budget_s')} s budget")
        out.append("")
        if s.get("rows"):
            out.append(md_table(header, [rowfn(r) for r in s["rows"]]))
            out.append("")
        if extra:
            out.extend(extra)
        for n in s.get("notes", []):
            out.append(f"- note: {n}")
        for k in s.get("skips", []):
            out.append(f"- skipped {k['what']}: {k['reason']}")
        for e in s.get("errors", []):
            out.append(f"- ERROR {e['what']}: {e['error']}")
        out.append("")

    section("copy", "Copy bandwidth (the memory ceiling)",
            ["what", "bytes moved", "median ms", "GB/s", "p10-p90 ms", "reps"],
            lambda r: (r["name"], fmt_bytes(r["bytes"]), f"{r['ms_median']:.4g}", r["GBps"], spread(r), r["reps"]))
    section("gemm", "bf16 GEMM (torch.matmul)",
            ["what", "MxNxK", "median ms", "TFLOP/s", "% of square", "rotated sets", "p10-p90 ms", "reps"],
            lambda r: (r["name"], f"{r['M']}x{r['N']}x{r['K']}", f"{r['ms_median']:.4g}", r["TFLOPs"],
                       pct(r["TFLOPs"], gemm_tf), r["rotated_sets"], spread(r), r["reps"]))
    section("bn_relu", "BatchNorm(train) + [add] + ReLU, channels_last bf16",
            ["op", "NHWC", "mode", "dir", "median ms", "min bytes", "GB/s", "% of copy", "compile s", "p10-p90 ms"],
            lambda r: (r["variant"], "x".join(map(str, r["shape_nhwc"])), r["mode"], r["direction"],
                       f"{r['ms_median']:.4g}", fmt_bytes(r["bytes"]), r["GBps"], pct(r["GBps"], copy_gbps),
                       r.get("compile_s", ""), spread(r)),
            ["Bytes are the minimum: fwd reads x (+r) and writes y; bwd reads x, dy and a 1-bit ReLU "
             "mask and writes dx (+dr).", ""])
    ct = conv_totals(report)
    extra = []
    if ct:
        extra = [f"Per training step (each shape x its count): {ct['ms']:.2f} ms, "
                 f"{ct['gflop_per_img']:.2f} GFLOP/img, {ct['TFLOPs']:.4g} TFLOP/s "
                 f"({pct(ct['TFLOPs'], gemm_tf)} of square GEMM); "
                 + ", ".join(f"{d} {v[0]:.2f} ms" for d, v in ct["per_dir"].items()), ""]
    section("conv_layers", "ResNet-50 convolutions (cuDNN, benchmark=True, bf16 channels_last)",
            ["conv", "count", "dir", "median ms", "TFLOP/s", "% of GEMM", "rotated sets", "p10-p90 ms"],
            lambda r: (f"{r['k']}x{r['k']} {r['cin']}->{r['cout']} s{r['stride']} @{r['H']}x{r['W']}",
                       r["count"], r["direction"], f"{r['ms_median']:.4g}", r["TFLOPs"],
                       pct(r["TFLOPs"], gemm_tf), r["rotated_sets"], spread(r)), extra)
    section("resnet50_train", "ResNet-50 training step (bf16 autocast, channels_last, SGD momentum)",
            ["variant", "mode", "batch", "median ms", "img/s", "wall img/s", "peak GiB", "first step s", "p10-p90 ms", "reps"],
            lambda r: (r["variant"], r["mode"], r["batch"], f"{r['ms_median']:.4g}", r["img_per_s"],
                       round(r["batch"] / (r["wall_ms_per_rep"] * 1e-3), 1) if r.get("wall_ms_per_rep") else "",
                       r.get("peak_gib"), r.get("first_step_s"), spread(r), r["reps"]),
            [f"References: {REFS['resnet50']}. SL-MLP = fc replaced by Linear(2048,2048)-BN1d-ReLU-Linear(2048,1000).", ""])
    section("maskrcnn_train", "Mask R-CNN R50-FPN training iteration",
            ["batch", "image", "backbone", "precision", "median ms", "img/s", "peak GiB", "first iter s", "p10-p90 ms", "reps"],
            lambda r: (r["batch"], "x".join(map(str, r["image_hw"])), r["backbone"], r["precision"],
                       f"{r['ms_median']:.4g}", r["img_per_s"], r.get("peak_gib"), r.get("first_iter_s"),
                       spread(r), r["reps"]),
            [f"References: {REFS['maskrcnn']}.", ""])
    out.append(summary_markdown(report))
    return "\n".join(out) + "\n"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for torch_baselines.json / .md")
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a logic test, not a measurement")
    p.add_argument("--budget-s", type=float, default=None,
                   help="total seconds for all sections (default: the sum of the section shares + 11)")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--section-budget", action="append", default=[], metavar="NAME=S",
                   help="one section's share in seconds before scaling (repeatable); "
                        "time earlier sections leave unused still rolls over")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurements")
    p.add_argument("--work-dir", default=None, help="per-section result files (default OUT/torch_sections)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--child-json", help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        return a
    a.sections = [s.strip() for s in a.sections.split(",") if s.strip()]
    bad = [s for s in a.sections if s not in SECTIONS]
    if bad:
        p.error(f"unknown section(s) {bad}; known: {SECTIONS}")
    sb = {}
    for item in a.section_budget:
        name, _, val = item.partition("=")
        if name not in SECTIONS:
            p.error(f"--section-budget {item}: unknown section {name!r}")
        try:
            sb[name] = float(val)
        except ValueError:
            p.error(f"--section-budget {item}: expected NAME=SECONDS")
    a.section_budget = sb
    if a.budget_s is None:
        base = QUICK_BUDGET_S if a.quick else GPU_BUDGET_S
        a.budget_s = sum(sb.get(s, base[s]) for s in a.sections) + REPORT_RESERVE_S + KILL_GRACE_S
    return a


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.child:
        child_main(args)
        return 0
    from importlib import util
    parent = Parent(args)
    if util.find_spec("torch") is None:
        for s in args.sections:
            parent.report["sections"][s] = {"section": s, "status": "skipped", "rows": [], "errors": [],
                                            "notes": [], "budget_s": 0, "wall_s": 0,
                                            "skips": [{"what": s, "reason": f"torch is not importable by {sys.executable}"}]}
        parent.report["finished"] = now_iso()
        parent.write()
        print(summary_markdown(parent.report))
        return 2

    def on_term(signum, _frame):
        # The outer timeout is ending us: stop the child's process group, keep what we have.
        parent.kill_child()
        if parent.running:
            name, path, t0, budget = parent.running
            parent.collect(name, path, t0, budget, None, f"stopped by signal {signum} (outer timeout)")
        parent.report["finished"] = now_iso()
        parent.report["terminated_by_signal"] = signum
        parent.write()
        print(summary_markdown(parent.report), flush=True)
        os._exit(124)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    return parent.run()


if __name__ == "__main__":
    sys.exit(main())
