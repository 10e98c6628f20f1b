#!/usr/bin/env python3
"""Move ResNet weights between torchvision and slmlp.

torchvision .pth -> slmlp safetensors:

    python tools/convert_torchvision.py resnet50-0676ba61.pth r50.safetensors

  Reads a torchvision ResNet-18/34/50 state dict (a bare state dict, or one
  under "state_dict" / "model"; a DataParallel "module." prefix is stripped),
  drops the num_batches_tracked buffers (slmlp keeps none), casts every tensor
  to float32 and writes it under the same names, with the `net.*` metadata
  slmlp reads back (`NetConfig::from_metadata`): arch, width, stem,
  in_channels, projector, num_classes, zero_init_residual. A projector under
  `projector.` (ours: Linear/BatchNorm1d/ReLU blocks at 3i/3i+1/3i+2, an
  optional trailing Linear at 3*depth) is recognised and kept.

slmlp safetensors -> torchvision (the reverse check):

    python tools/convert_torchvision.py --to-torch ckpt.safetensors \\
        [--check-outputs input.safetensors outputs.safetensors] [--tol 1e-4]

  Builds torchvision's resnetXX (plus our projector as an nn.Sequential when
  the checkpoint has one), loads the checkpoint with strict=False and reports
  missing keys (torch tensors the checkpoint lacks; num_batches_tracked
  ignored), unexpected keys (checkpoint tensors torch lacks: the projector on
  a bare torchvision model, optimizer state `optim.*` of training
  checkpoints is skipped) and shape mismatches (a CIFAR stem or a width
  other than 64 is not torchvision's architecture). Exit status 1 if any
  tensor is missing or misshaped.

  --check-outputs runs the torch network in float64, eval mode, on the batch
  in input.safetensors (tensor "input" or the only tensor) and compares it
  with what `slmlp forward` wrote: `logits`, `features` and every `act.<name>`
  present (torch module names, as models::inspect documents), each by
  max|ours - torch| / max|torch|. Exit status 1 if one exceeds --tol.

Needs torch, torchvision and safetensors.
"""

import argparse
import re
import sys

import torch
import torch.nn as nn
import torchvision
from safetensors import safe_open
from safetensors.torch import load_file, save_file

ARCHS = {
    ("basic", (2, 2, 2, 2)): "resnet18",
    ("basic", (3, 4, 6, 3)): "resnet34",
    ("bottleneck", (3, 4, 6, 3)): "resnet50",
}


def fail(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


# --------------------------------------------------------------------------
# reading a state dict's architecture

def infer_config(sd):
    """The `net.*` metadata of a ResNet state dict (names as torchvision's)."""
    for key in ("conv1.weight", "fc.weight"):
        if key not in sd:
            fail(f"no `{key}`: not a torchvision-style ResNet state dict")
    blocks = {}
    for k in sd:
        m = re.match(r"layer([1-4])\.(\d+)\.", k)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    layers = tuple(len(blocks.get(s, ())) for s in range(1, 5))
    kind = "bottleneck" if "layer1.0.conv3.weight" in sd else "basic"
    arch = ARCHS.get((kind, layers))
    if arch is None:
        fail(f"{kind} blocks per stage {list(layers)}: not ResNet-18/34/50")
    conv1 = sd["conv1.weight"]
    k = conv1.shape[-1]
    if k not in (3, 7):
        fail(f"conv1 has a {k}x{k} kernel; expected 7x7 (ImageNet stem) or 3x3 (CIFAR stem)")
    return {
        "net.arch": arch,
        "net.width": str(conv1.shape[0]),
        "net.stem": "imagenet" if k == 7 else "cifar",
        "net.in_channels": str(conv1.shape[1]),
        "net.projector": projector_spec(sd),
        "net.num_classes": str(sd["fc.weight"].shape[0]),
        "net.zero_init_residual": "false",
    }


def projector_spec(sd):
    """Our CLI form of the projector under `projector.` ("" when none):
    block widths, then `+N` for a trailing Linear."""
    hidden, i = [], 0
    while f"projector.{3 * i}.weight" in sd and f"projector.{3 * i + 1}.running_mean" in sd:
        hidden.append(sd[f"projector.{3 * i}.weight"].shape[0])
        i += 1
    spec = ",".join(str(h) for h in hidden)
    tail = f"projector.{3 * i}.weight"
    if tail in sd:
        spec += f"+{sd[tail].shape[0]}"
    known = {f"projector.{j}." for j in range(3 * i + 1)}
    stray = [k for k in sd if k.startswith("projector.") and not any(k.startswith(p) for p in known)]
    if stray:
        fail(f"projector tensors outside Linear/BatchNorm1d blocks: {', '.join(sorted(stray))}")
    return spec


def unwrap(obj, path):
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        fail(f"{path}: not a state dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


def to_slmlp(src, dst):
    sd = unwrap(torch.load(src, map_location="cpu", weights_only=True), src)
    out, dropped = {}, 0
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            dropped += 1
            continue
        if not v.is_floating_point():
            fail(f"{src}: tensor `{k}` has dtype {v.dtype}; expected floats")
        out[k] = v.detach().to(torch.float32).contiguous()
    meta = infer_config(out)
    save_file(out, dst, metadata=meta)
    print(f"{dst}: {len(out)} tensors ({dropped} num_batches_tracked dropped), "
          + ", ".join(f"{k[4:]}={v!r}" for k, v in meta.items()))


# --------------------------------------------------------------------------
# slmlp -> torch

class WithProjector(nn.Module):
    """torchvision ResNet whose pooled features go through our projector
    before `fc`; state-dict names equal slmlp's."""

    def __init__(self, resnet, projector, fc):
        super().__init__()
        for name, child in resnet.named_children():
            if name != "fc":
                self.add_module(name, child)
        self.projector = projector
        self.fc = fc

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.projector(torch.flatten(self.avgpool(x), 1)))


def build_torch(meta, sd):
    arch = meta.get("net.arch") or infer_config(sd)["net.arch"]
    num_classes = sd["fc.weight"].shape[0] if "fc.weight" in sd else 1000
    net = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    spec = meta.get("net.projector", projector_spec(sd))
    if not spec:
        return net, [], spec
    blocks, _, tail = spec.partition("+")
    d = net.fc.in_features
    mods = []
    for h in [int(w) for w in blocks.split(",") if w]:
        mods += [nn.Linear(d, h), nn.BatchNorm1d(h), nn.ReLU()]
        d = h
    if tail:
        mods.append(nn.Linear(d, int(tail)))
        d = int(tail)
    traced = [f"projector.{i}" for i in range(2, len(mods), 3)]
    if tail:
        traced.append(f"projector.{len(mods) - 1}")
    return WithProjector(net, nn.Sequential(*mods), nn.Linear(d, num_classes)), traced, spec


def read_meta(path):
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    # training checkpoints keep the net config under `extra.`
    return {k[len("extra."):] if k.startswith("extra.net.") else k: v for k, v in meta.items()}


def traced_modules(net, projector_names):
    mods = [("relu", net.relu), ("maxpool", net.maxpool)]
    for s in range(1, 5):
        for b, block in enumerate(getattr(net, f"layer{s}")):
            mods.append((f"layer{s}.{b}", block))
    mods.append(("avgpool", net.avgpool))
    mods += [(n, net.get_submodule(n)) for n in projector_names]
    mods.append(("fc", net.fc))
    return mods


def rel_err(ours, ref):
    scale = ref.abs().max().clamp_min(1e-30)
    return float((ours.double() - ref.double()).abs().max() / scale)


def check_outputs(net, traced, input_path, outputs_path, tol):
    inputs = load_file(input_path)
    x = inputs.get("input", next(iter(inputs.values())) if len(inputs) == 1 else None)
    if x is None:
        fail(f"{input_path}: no tensor named `input` (and not exactly one tensor)")
    ours = load_file(outputs_path)
    acts = {}

    def hook(name):
        def f(_m, _i, out):
            acts["act." + name] = torch.flatten(out, 1) if name == "avgpool" else out.detach().clone()
        return f

    net = net.double().eval()
    handles = [m.register_forward_hook(hook(n)) for n, m in traced_modules(net, traced)]
    with torch.no_grad():
        ref = {"logits": net(x.double())}
    for h in handles:
        h.remove()
    ref["features"] = acts["act.avgpool"]
    ref.update(acts)
    worst, bad = 0.0, 0
    for name, t in ours.items():
        if name not in ref:
            print(f"  {name:24s} (no torch counterpart, skipped)")
            continue
        if tuple(t.shape) != tuple(ref[name].shape):
            print(f"  {name:24s} shape {list(t.shape)} vs torch {list(ref[name].shape)}  FAIL")
            bad += 1
            continue
        e = rel_err(t, ref[name])
        worst = max(worst, e)
        ok = e <= tol
        bad += not ok
        print(f"  {name:24s} rel err {e:.2e}{'' if ok else '  FAIL'}")
    print(f"outputs: {len(ours)} compared, worst {worst:.2e}, {bad} over {tol:g}")
    return bad == 0


def to_torch(path, check, tol):
    sd = load_file(path)
    skipped = [k for k in sd if k.startswith("optim.")]
    sd = {k: v for k, v in sd.items() if not k.startswith("optim.")}
    meta = read_meta(path)
    net, traced, spec = build_torch(meta, sd)
    theirs = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    misshaped = sorted(k for k in sd if k in theirs and tuple(sd[k].shape) != tuple(theirs[k].shape))
    loadable = {k: v.to(theirs[k].dtype) for k, v in sd.items() if k in theirs and k not in misshaped}
    res = net.load_state_dict(loadable, strict=False)
    missing = sorted(k for k in res.missing_keys if not k.endswith("num_batches_tracked")
                     and k not in misshaped)
    unexpected = sorted(k for k in sd if k not in theirs)
    print(f"{path}: torchvision {type(net).__name__} ({meta.get('net.arch', 'arch inferred')}, "
          f"projector {spec or 'none'}): {len(loadable)} tensors loaded")
    if skipped:
        print(f"  skipped {len(skipped)} optimizer tensors (optim.*)")
    for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", misshaped)):
        print(f"  {title}: {len(keys)}")
        for k in keys:
            detail = f" ours {list(sd[k].shape)} torch {list(theirs[k].shape)}" if title == "shape mismatch" else ""
            print(f"    {k}{detail}")
    ok = not missing and not misshaped
    if check:
        ok = check_outputs(net, traced, check[0], check[1], tol) and ok
    sys.exit(0 if ok else 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("src", help="torchvision .pth (or, with --to-torch, an slmlp .safetensors)")
    ap.add_argument("dst", nargs="?", help="output .safetensors (conversion only)")
    ap.add_argument("--to-torch", action="store_true", help="load SRC into torchvision and report")
    ap.add_argument("--check-outputs", nargs=2, metavar=("INPUT", "OUTPUTS"),
                    help="with --to-torch: compare `slmlp forward` outputs with torch's")
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()
    if args.to_torch:
        if args.dst:
            fail("--to-torch takes only the checkpoint")
        to_torch(args.src, args.check_outputs, args.tol)
    else:
        if not args.dst or args.check_outputs:
            fail("usage: convert_torchvision.py IN.pth OUT.safetensors  (or --to-torch CKPT)")
        to_slmlp(args.src, args.dst)


if __name__ == "__main__":
    main()
