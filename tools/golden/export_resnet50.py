#!/usr/bin/env python3
"""ResNet-50 (SL and SL-MLP) parity fixtures against torchvision.

Run by hand (torch is NEVER needed in CI; the generated files are committed):

    /path/to/python tools/golden/export_resnet50.py [--out tests/fixtures/resnet50]

ResNet-50 weights are 100 MB, too big to commit, so both sides rebuild them
from a counter-based hash (`hash_init` below, mirrored in Rust by
tests/resnet50_parity.rs). The networks are evaluated in float64 on the
float32-rounded weights and inputs; every result is stored as float32.
tools/golden/README.md ("ResNet-50 parity") lists every key.

The hash init
-------------
    fnv1a64(s)    = FNV-1a over the UTF-8 bytes of s (offset 0xcbf29ce484222325,
                    prime 0x100000001b3, arithmetic mod 2^64)
    splitmix64(x) = z = x + 0x9e3779b97f4a7c15; z = (z ^ z>>30) * 0xbf58476d1ce4e5b9;
                    z = (z ^ z>>27) * 0x94d049bb133111eb; z ^ z>>31      (mod 2^64)
    u(name, j)    = (splitmix64(fnv1a64(name) + j) >> 40) / 2^23 - 1    in [-1, 1)
                    (the top 24 bits; every u is exact in float32)

Element j (row-major) of the tensor `name` with shape s is then, computed in
float64 and rounded once to float32:

    rank >= 2 `*.weight` (conv, linear)   u * sqrt(6 / fan_in), fan_in = prod(s[1:])
                                          (kaiming-uniform: sqrt(3) * gain sqrt(2) / sqrt(fan_in))
    rank 1 `*.weight` (BatchNorm)         1 + 0.1 u
    `*.bias` (BatchNorm and Linear)       0.1 u
    `*.running_mean`                      0.1 u
    `*.running_var`                       1 + 0.25 (u + 1)          in [1, 1.5)
    `num_batches_tracked`                 not kept (we have no such buffer)

Inputs use the same u: `input` [4,3,64,64] = u("input", j), `input1`
[1,3,64,64] = u("input1", j); labels[j] = splitmix64(fnv1a64("labels") + j) mod 10.
Sampled gradient positions of parameter p: pos_k = splitmix64(fnv1a64("sample:" + p) + k)
mod numel(p), k = 0..31 (with replacement).
"""

import json
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from torch_common import F32, F64, REPO, out_dir_arg  # noqa: E402

MASK64 = (1 << 64) - 1
NUM_CLASSES = 10
BATCH = 4          # BN1d over a batch of 2 is ill-conditioned (outputs ~ +-1): 4 keeps
                   # the SL-MLP projector's gradients meaningful in float32
IMAGE = 64
N_SAMPLES = 32
FULL_GRADS = ["conv1.weight", "fc.weight", "fc.bias",
              "projector.1.weight", "projector.1.bias"]
RUNNING_STATS = ["bn1", "layer1.0.bn1", "layer2.1.bn2", "layer3.5.bn3",
                 "layer4.0.downsample.1", "layer4.2.bn3", "projector.1"]


# --------------------------------------------------------------------------
# hash init
# --------------------------------------------------------------------------

def fnv1a64(s):
    h = 0xcbf29ce484222325
    for b in s.encode("utf-8"):
        h = ((h ^ b) * 0x100000001b3) & MASK64
    return h


def splitmix64(x):
    """x: np.uint64 array; numpy's uint64 arithmetic wraps mod 2^64."""
    z = x + np.uint64(0x9e3779b97f4a7c15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xbf58476d1ce4e5b9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94d049bb133111eb)
    return z ^ (z >> np.uint64(31))


def hash_bits(name, n):
    with np.errstate(over="ignore"):
        return splitmix64(np.uint64(fnv1a64(name)) + np.arange(n, dtype=np.uint64))


def hash_uniform(name, n):
    """u(name, j) for j < n, float64 in [-1, 1)."""
    return (hash_bits(name, n) >> np.uint64(40)).astype(np.float64) / 8388608.0 - 1.0


def hash_init_value(name, shape):
    """The float32 value of tensor `name` (see the module doc), as a torch tensor."""
    n = int(np.prod(shape)) if len(shape) else 1
    u = hash_uniform(name, n)
    if name.endswith(".running_mean"):
        v = 0.1 * u
    elif name.endswith(".running_var"):
        v = 1.0 + 0.25 * (u + 1.0)
    elif name.endswith(".weight") and len(shape) >= 2:
        fan_in = int(np.prod(shape[1:]))
        v = u * np.sqrt(6.0 / fan_in)
    elif name.endswith(".weight"):
        v = 1.0 + 0.1 * u
    elif name.endswith(".bias"):
        v = 0.1 * u
    else:
        raise ValueError(f"no hash-init rule for {name}")
    return torch.from_numpy(v.astype(np.float32).reshape(shape))


def hash_init_(model):
    """Overwrites every parameter and buffer (but num_batches_tracked) in place."""
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith("num_batches_tracked"):
                continue
            t.copy_(hash_init_value(name, tuple(t.shape)).to(t.dtype))


def hash_input(name, shape):
    """An input batch: u(name, j), exact in float32."""
    return torch.from_numpy(hash_uniform(name, int(np.prod(shape))).astype(np.float32).reshape(shape))


def sample_positions(name, numel):
    return (hash_bits("sample:" + name, N_SAMPLES) % np.uint64(numel)).astype(np.int64)


# --------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------

class SlMlpResNet(torchvision.models.ResNet):
    """torchvision ResNet with the SL-MLP projector between the pooled features
    and `fc`. State-dict names equal slmlp's: encoder at the top level,
    `projector.{3i}` Linear, `projector.{3i+1}` BatchNorm1d, ReLU at `3i+2`
    (one block of width `hidden` here, the paper's projector), `fc` last."""

    def __init__(self, block, layers, num_classes, hidden=2048):
        super().__init__(block, layers, num_classes=num_classes)
        d = 512 * block.expansion
        self.projector = nn.Sequential(nn.Linear(d, hidden), nn.BatchNorm1d(hidden), nn.ReLU())
        self.fc = nn.Linear(hidden, num_classes)

    def _forward_impl(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(self.projector(x))


def resnet50_sl():
    return torchvision.models.resnet50(weights=None, num_classes=NUM_CLASSES)


def resnet50_sl_mlp():
    return SlMlpResNet(torchvision.models.resnet.Bottleneck, [3, 4, 6, 3], NUM_CLASSES)


def traced_modules(model):
    """(name, module) in slmlp's `forward_traced` order; the output of each
    module is the activation slmlp reports under that name."""
    mods = [("relu", model.relu), ("maxpool", model.maxpool)]
    for s in range(1, 5):
        for b, block in enumerate(getattr(model, f"layer{s}")):
            mods.append((f"layer{s}.{b}", block))
    mods.append(("avgpool", model.avgpool))
    if hasattr(model, "projector"):
        mods.append(("projector.2", model.projector[2]))
    mods.append(("fc", model.fc))
    return mods


def state_names(model):
    """[(name, shape)] of parameters and of buffers, num_batches_tracked dropped."""
    params = [(n, list(p.shape)) for n, p in model.named_parameters()]
    buffers = [(n, list(b.shape)) for n, b in model.named_buffers()
               if not n.endswith("num_batches_tracked")]
    return params, buffers


def f32(t):
    return t.detach().to(F32).contiguous()


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------

def train_case(model, x, labels):
    """One train-mode forward/backward in float64, then an eval forward of
    the same batch (with the running stats that forward updated)."""
    model = model.double()
    hash_init_(model)
    model.train()
    logits = model(x.to(F64))
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    out = {"logits": f32(logits), "loss": f32(loss), "labels": labels.clone()}
    names, stats, idx, samples = [], [], [], []
    for name, p in model.named_parameters():
        g = p.grad.detach().reshape(-1)
        names.append(name)
        stats.append([g.norm().item(), g.sum().item(), g.abs().sum().item()])
        pos = sample_positions(name, g.numel())
        idx.append(torch.from_numpy(pos))
        samples.append(g[torch.from_numpy(pos)])
        if name in FULL_GRADS:
            out["grad_full." + name] = f32(p.grad)
    out["grad_stats"] = torch.tensor(stats, dtype=F64).to(F32)
    out["grad_idx"] = torch.stack(idx)
    out["grad_sample"] = f32(torch.stack(samples))
    bufs = dict(model.named_buffers())
    for bn in RUNNING_STATS:
        if bn + ".running_mean" in bufs:
            for k in ("running_mean", "running_var"):
                out[f"running_after.{bn}.{k}"] = f32(bufs[f"{bn}.{k}"])
    model.eval()
    with torch.no_grad():
        out["eval_logits"] = f32(model(x.to(F64)))
    return out, names


def activation_case(model, x1):
    """Eval-mode forward of batch 1 on freshly hash-initialised weights,
    every traced activation recorded (float32)."""
    model = model.double()
    hash_init_(model)
    model.eval()
    acts, order = {}, []

    def hook(name):
        def f(_module, _inputs, output):
            t = output.detach().clone()
            if name == "avgpool":
                t = torch.flatten(t, 1)
            assert name not in acts, f"{name} ran twice"
            acts[name] = t
            order.append(name)
        return f

    handles = [m.register_forward_hook(hook(n)) for n, m in traced_modules(model)]
    with torch.no_grad():
        logits = model(x1.to(F64))
    for h in handles:
        h.remove()
    out = {"act." + n: f32(acts[n]) for n in order}
    out["logits"] = f32(logits)
    out["features"] = f32(acts["avgpool"])
    return out, order


def main():
    out = out_dir_arg(__doc__.splitlines()[0], "tests/fixtures/resnet50")
    torch.set_num_threads(1)  # determinism of the reference

    shape = [BATCH, 3, IMAGE, IMAGE]
    x = hash_input("input", shape)
    x1 = hash_input("input1", [1, 3, IMAGE, IMAGE])
    labels = torch.from_numpy(
        (hash_bits("labels", BATCH) % np.uint64(NUM_CLASSES)).astype(np.int64))

    manifest = {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "compute_dtype": "float64",
        "storage_dtype": "float32",
        "arch": "resnet50",
        "num_classes": NUM_CLASSES,
        "projector": "2048",
        "input_shape": shape,
        "input1_shape": [1, 3, IMAGE, IMAGE],
        "labels": labels.tolist(),
        "n_samples": N_SAMPLES,
        "bn_momentum": 0.1,
        "bn_eps": 1e-5,
        "models": {},
    }
    written = []
    for case, build in (("sl", resnet50_sl), ("sl_mlp", resnet50_sl_mlp)):
        model = build()
        params, buffers = state_names(model)
        tensors, grad_order = train_case(model, x, labels)
        assert grad_order == [n for n, _ in params]
        path = os.path.join(out, case + ".safetensors")
        save_file(tensors, path, metadata={"case": case})
        written.append(path)
        manifest["models"][case] = {
            "params": params,
            "buffers": buffers,
            "full_grads": [n for n in FULL_GRADS if "grad_full." + n in tensors],
            "running_stats": [bn for bn in RUNNING_STATS
                              if f"running_after.{bn}.running_mean" in tensors],
        }
    acts, order = activation_case(resnet50_sl_mlp(), x1)
    path = os.path.join(out, "activations_sl_mlp.safetensors")
    save_file(acts, path, metadata={"case": "activations_sl_mlp"})
    written.append(path)
    manifest["activations"] = {"model": "sl_mlp", "input": "input1", "order": order}
    mpath = os.path.join(out, "manifest.json")
    with open(mpath, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    written.append(mpath)
    total = 0
    for p in written:
        total += os.path.getsize(p)
        print(f"{os.path.getsize(p):9d}  {os.path.relpath(p, REPO)}")
    print(f"{len(written)} files, {total} bytes total")


if __name__ == "__main__":
    main()
