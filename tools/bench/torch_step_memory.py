#!/usr/bin/env python3
"""PyTorch side of the memory line of `slmlp profile` on the CPU (run by
hand, never in CI): what one training step of torchvision's ResNet-50
holds, counted the way `engine::profile` counts it on the CPU.

The counter is glibc's mallinfo2 (heap chunks in use in every arena plus
blocks mapped on their own), as `engine::host_memory::bytes_in_use` reads
it. It is sampled before and after every aten op of the step (a
TorchDispatchMode) and as the backward starts, after one warm-up step
(which creates SGD's momentum). Printed, in MiB:

  start          in use as the step starts (weights, momentum, the batch)
  after_forward  in use as loss.backward() starts: start plus what the
                 forward left for the backward (saved activations, the loss)
  peak           the largest sample, and where it was taken (peak_at)

Then the bytes of the distinct storages autograd saved (saved_tensors_hooks),
by dtype: the same set counted another way, weights included.

--time-steps N then times N more steps, unwatched (no dispatch mode), and
adds their wall-clock milliseconds as step_ms: the speed to set beside
`slmlp profile`'s step line.

The step: ImageNet-stem torchvision resnet50 (1000 classes), [the SL-MLP
projector Linear(2048, 2048) -> BatchNorm1d -> ReLU before the classifier],
mean cross-entropy, backward, SGD(lr=0.1, momentum=0.9, weight_decay=1e-4);
float32, or bf16 under CPU autocast (whose op policy is not CUDA's).

    /path/to/python tools/bench/torch_step_memory.py --batch 4 [--sl-mlp] [--bf16] [--time-steps 3]

beside

    slmlp profile --method sl|sl-mlp --arch resnet50 --classes 1000 \\
        --image-size 224 --batch 4 --warmup 1 --steps 2 --precision f32|bf16
"""

import argparse
import ctypes
import json
import time

import torch
import torch.nn as nn
import torchvision
from torch.utils._python_dispatch import TorchDispatchMode


class MallInfo2(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_size_t)
        for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
    ]


LIBC = ctypes.CDLL("libc.so.6")
LIBC.mallinfo2.restype = MallInfo2


def in_use():
    m = LIBC.mallinfo2()
    return m.uordblks + m.hblkhd


class Peak(TorchDispatchMode):
    """Samples the counter around every aten op."""

    def __init__(self):
        super().__init__()
        self.peak, self.at = in_use(), "at the start"

    def sample(self, at):
        now = in_use()
        if now > self.peak:
            self.peak, self.at = now, at

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.sample(f"before {func}")
        out = func(*args, **(kwargs or {}))
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        self.sample(f"after {func} {list(first.shape) if first is not None else ''}")
        return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--sl-mlp", action="store_true")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--time-steps", type=int, default=0)
    a = ap.parse_args()
    if not 1 <= a.batch <= 256:
        ap.error("--batch must be in 1..=256")
    if not 0 <= a.time_steps <= 100:
        ap.error("--time-steps must be in 0..=100")
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    net = torchvision.models.resnet50()
    if a.sl_mlp:
        net.fc = nn.Sequential(
            nn.Linear(2048, 2048), nn.BatchNorm1d(2048), nn.ReLU(inplace=True), nn.Linear(2048, 1000)
        )
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(a.batch, 3, 224, 224)
    y = torch.randint(0, 1000, (a.batch,))
    saved = {}

    def pack(t):
        s = t.untyped_storage()
        saved[s.data_ptr()] = (s.nbytes(), str(t.dtype).replace("torch.", ""))
        return t

    def step(watch):
        saved.clear()
        start = in_use()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16), \
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            if watch:
                with Peak() as p:
                    loss = nn.functional.cross_entropy(net(x), y)
            else:
                loss = nn.functional.cross_entropy(net(x), y)
        after_forward = in_use()
        if watch:
            with Peak() as q:
                loss.backward()
                opt.step()
            peak, at = max((p.peak, p.at), (q.peak, q.at), (after_forward, "as the backward started"))
        else:
            loss.backward()
            opt.step()
            peak, at = None, None
        opt.zero_grad(set_to_none=True)
        return start, after_forward, peak, at

    step(False)
    start, after_forward, peak, at = step(True)
    step_ms = []
    for _ in range(a.time_steps):
        t0 = time.perf_counter()
        step(False)
        step_ms.append(round((time.perf_counter() - t0) * 1e3, 1))
    mib = lambda b: round(b / 2**20, 1)
    by_dtype = {}
    for n, d in saved.values():
        by_dtype[d] = by_dtype.get(d, 0) + n
    print(json.dumps({
        "framework": "pytorch", "torch": torch.__version__, "model": "resnet50",
        "method": "sl-mlp" if a.sl_mlp else "sl", "batch": a.batch,
        "precision": "bf16 (cpu autocast)" if a.bf16 else "f32",
        "start_mib": mib(start), "after_forward_mib": mib(after_forward),
        "left_by_forward_mib": mib(after_forward - start),
        "peak_mib": mib(peak), "peak_over_start_mib": mib(peak - start), "peak_at": at,
        "saved_storages_mib": {d: mib(n) for d, n in sorted(by_dtype.items())},
        "threads": torch.get_num_threads(), "step_ms": step_ms,
    }))


if __name__ == "__main__":
    main()
