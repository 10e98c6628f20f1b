#!/usr/bin/env python3
"""PyTorch side of the CPU training-step benchmarks (run by hand or by
benches/resnet_step.rs and benches/pretrain_step.rs; never in CI).

One training step = forward of a CIFAR-stem torchvision-style ResNet-18
(BasicBlock [2,2,2,2], widths w/2w/4w/8w, conv1 3x3 stride 1 pad 1, no
maxpool) on a float32 batch of random C x S x S images, [projector], Linear
classifier, mean cross-entropy, backward, and torch.optim.SGD(lr=0.1,
momentum=0.9, weight_decay=5e-4) step.  The defaults (w=64, C=3, S=32,
10 classes, no projector) are the CIFAR ResNet-18 of benches/resnet_step.rs;
--width 16 --in-channels 1 --size 28 --classes 5 [--projector]
--wd-exclude-1d is the quick SL [SL-MLP] model of benches/pretrain_step.rs.

--projector inserts the SL-MLP projector Linear(8w, 8w) -> BatchNorm1d(8w)
-> ReLU between the pooled features and the classifier.  --wd-exclude-1d
puts every 1-d parameter (BN weights and biases, Linear biases) in an SGD
group with weight_decay=0, as models::train::Trainer does.

Prints one JSON line on stdout:

  {"framework":"pytorch","torch":..,"threads":..,"batch":..,"layout":..,
   "median_ms":..,"min_ms":..,"img_per_s":..,"iters":..,"width":..,
   "in_channels":..,"size":..,"classes":..,"projector":..}

img_per_s = batch / median step time.

--rounds R (benches/lib.rs `compare_rounds` uses it) interleaves the
timed steps with another process's: after the warm-up the script prints
{"ready": true}, then R times reads a line from stdin, runs --iters steps
and prints {"round": r, "median_ms": ..}; the summary line above follows,
over all R * iters steps.

--profile-out FILE then runs --iters more steps under torch.profiler and
writes, per aten op and input shapes, its calls and self CPU time per step
(the time in the op minus the time in the aten ops it calls), largest
first, as JSON, and prints the same table on stderr: the per-op side to
hold against `slmlp profile` of the same network (docs/PERF.md, "CPU ops
run on the pool's threads").

    /path/to/python tools/bench/torch_resnet18_cpu.py --threads 2 --iters 10
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from torch_common import CifarResNet  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description="PyTorch CPU ResNet-18 (CIFAR stem) train-step benchmark")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--layout", choices=["contiguous", "channels_last"], default="contiguous")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--width", type=int, default=64, help="first-stage channels w (stages w, 2w, 4w, 8w)")
    ap.add_argument("--in-channels", type=int, default=3)
    ap.add_argument("--size", type=int, default=32, help="image height = width")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--projector", action="store_true",
                    help="SL-MLP: Linear(8w,8w)->BatchNorm1d->ReLU before the classifier")
    ap.add_argument("--wd-exclude-1d", action="store_true",
                    help="no weight decay on 1-d params (BN, biases), as models::train::Trainer")
    ap.add_argument("--rounds", type=int, default=0,
                    help="interleave with another process: print {\"ready\": true} after the warm-up, then "
                         "R times wait for a line on stdin, run --iters steps and print that round's JSON line")
    ap.add_argument("--profile-out", metavar="FILE",
                    help="also profile --iters steps per aten op (self CPU time) into FILE (JSON)")
    args = ap.parse_args()
    for name in ("threads", "iters", "batch", "width", "in_channels", "size", "classes"):
        if getattr(args, name) <= 0:
            ap.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.rounds < 0:
        ap.error(f"--rounds must be 0 or more, got {args.rounds}")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    mf = torch.channels_last if args.layout == "channels_last" else torch.contiguous_format

    w = args.width
    model = CifarResNet(widths=(w, 2 * w, 4 * w, 8 * w), num_classes=args.classes,
                        in_channels=args.in_channels, projector=args.projector).to(memory_format=mf)
    model.train()
    if args.wd_exclude_1d:
        params = list(model.parameters())
        groups = [
            {"params": [p for p in params if p.ndim > 1]},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ]
    else:
        groups = model.parameters()
    opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(args.batch, args.in_channels, args.size, args.size).contiguous(memory_format=mf)
    y = torch.randint(0, args.classes, (args.batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    for _ in range(args.warmup):
        step()
    if args.rounds:
        print(json.dumps({"ready": True}), flush=True)
    times = []
    for r in range(max(args.rounds, 1)):
        if args.rounds and not sys.stdin.readline():
            sys.exit("stdin closed before round %d of %d" % (r + 1, args.rounds))
        ts = []
        for _ in range(args.iters):
            t0 = time.perf_counter()
            loss = step()
            loss.item()  # sync point (CPU: no-op, keeps semantics explicit)
            ts.append((time.perf_counter() - t0) * 1e3)
        if args.rounds:
            print(json.dumps({"round": r, "median_ms": round(statistics.median(ts), 3)}), flush=True)
        times += ts

    med = statistics.median(times)
    if args.profile_out:
        profile(step, args)
    print(json.dumps({
        "framework": "pytorch",
        "torch": torch.__version__,
        "threads": args.threads,
        "batch": args.batch,
        "layout": args.layout,
        "median_ms": round(med, 3),
        "min_ms": round(min(times), 3),
        "img_per_s": round(args.batch / (med / 1e3), 2),
        "iters": args.iters,
        "width": args.width,
        "in_channels": args.in_channels,
        "size": args.size,
        "classes": args.classes,
        "projector": args.projector,
    }))


def profile(step, args):
    """Self CPU time per aten op over --iters steps, per step, to FILE."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(args.iters):
            step()
    rows = [{"op": e.key, "shapes": [s for s in e.input_shapes if s], "calls": e.count / args.iters,
             "self_ms": e.self_cpu_time_total / 1e3 / args.iters}
            for e in prof.key_averages(group_by_input_shape=True) if e.self_cpu_time_total > 0]
    rows.sort(key=lambda r: -r["self_ms"])
    total = sum(r["self_ms"] for r in rows)
    with open(args.profile_out, "w") as f:
        json.dump({"threads": args.threads, "batch": args.batch, "steps": args.iters,
                   "self_ms_per_step": total, "ops": rows}, f, indent=1)
    print(f"{'aten op':<32} {'calls':>6} {'ms/step':>9} {'share':>6}  shapes", file=sys.stderr)
    for r in rows[:40]:
        print(f"{r['op'][:32]:<32} {r['calls']:>6.0f} {r['self_ms']:>9.2f} {100 * r['self_ms'] / total:>5.1f}%  "
              f"{' '.join(str(s) for s in r['shapes'][:3])}", file=sys.stderr)
    print(f"{'all ops':<32} {'':>6} {total:>9.2f}", file=sys.stderr)


if __name__ == "__main__":
    main()
