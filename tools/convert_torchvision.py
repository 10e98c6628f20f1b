#!/usr/bin/env python3
"""Move ResNet and Mask R-CNN weights between torchvision and slmlp.

torchvision .pth -> slmlp safetensors:

    python tools/convert_torchvision.py resnet50-0676ba61.pth r50.safetensors [--size 224]
    python tools/convert_torchvision.py maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth mrcnn.safetensors

  Reads a state dict (a bare state dict, or one under "state_dict" /
  "model"; a DataParallel "module." prefix is stripped), drops the
  num_batches_tracked buffers (slmlp keeps none), casts every tensor to
  float32 and writes it under the same names with the metadata slmlp needs.

  A ResNet-18/34/50 gets the `net.*` metadata (`NetConfig::from_metadata`):
  arch, width, stem, in_channels, projector, num_classes,
  zero_init_residual, and the input `data.*` that `slmlp forward`,
  `transfer` and `analyze` read: data.size (--size, default 224, the
  torchvision ImageNet evaluation crop) and data.normalization (torchvision's
  ImageNet mean/std). A projector under `projector.` (ours:
  Linear/BatchNorm1d/ReLU blocks at 3i/3i+1/3i+2, an optional trailing
  Linear at 3*depth) is recognised and kept.

  A torchvision Mask R-CNN (keys `backbone.body.*`, `backbone.fpn.*`,
  `rpn.*`, `roi_heads.*`; the v1 `maskrcnn_resnet50_fpn`, or another
  ResNet-18/34/50 body under `resnet_fpn_backbone`) gets the `detect.*`
  metadata `slmlp detect eval|predict|train --init` read: arch, width 64,
  num_classes (from cls_score), fpn_channels, representation_size,
  trainable_layers (--trainable-layers, torchvision's default 3), channels
  3, min_size/max_size (--min-size 800 --max-size 1333, torchvision's), and
  category ids 1..num_classes-1 (torchvision's labels are COCO category ids)
  with COCO's names when num_classes is 91. The mask head's pre-0.13 names
  `mask_head.mask_fcn<i>.*` are renamed to `mask_head.<i-1>.0.*`, as
  torchvision's own loader does.

slmlp detector -> torchvision state dict:

    python tools/convert_torchvision.py --to-torch model.safetensors maskrcnn.pth

  Builds torchvision's `maskrcnn_resnet50_fpn` (or `MaskRCNN` over
  `resnet_fpn_backbone(arch)`) with the checkpoint's num_classes, loads it
  strictly (num_batches_tracked aside; `optim.*` skipped) and saves its
  state_dict with torch.save. Only torchvision's shapes convert: width 64,
  FPN 256, representation 1024, 3 channels.

slmlp ResNet safetensors -> torchvision (the reverse check):

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
import json
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

def infer_arch(sd, prefix=""):
    """resnet18/34/50 from the block names under `prefix` (torchvision's)."""
    blocks = {}
    for k in sd:
        m = re.match(re.escape(prefix) + r"layer([1-4])\.(\d+)\.", k)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    layers = tuple(len(blocks.get(s, ())) for s in range(1, 5))
    kind = "bottleneck" if f"{prefix}layer1.0.conv3.weight" in sd else "basic"
    arch = ARCHS.get((kind, layers))
    if arch is None:
        fail(f"{kind} blocks per stage {list(layers)}: not ResNet-18/34/50")
    return arch


def infer_config(sd):
    """The `net.*` metadata of a ResNet state dict (names as torchvision's)."""
    for key in ("conv1.weight", "fc.weight"):
        if key not in sd:
            fail(f"no `{key}`: not a torchvision-style ResNet state dict")
    arch = infer_arch(sd)
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


# torchvision's ImageNet statistics, as slmlp's `data.normalization` spec
# (models/src/datasets.rs `Normalization::spec`)
IMAGENET_NORMALIZATION = "0.485,0.456,0.406/0.229,0.224,0.225"


def input_metadata(size):
    """The `data.*` metadata `load_trained` needs (models/src/pretrain.rs)."""
    if not 1 <= size <= 4096:
        fail(f"--size {size}: expected 1..=4096")
    return {"data.size": str(size), "data.normalization": IMAGENET_NORMALIZATION}


DETECTOR_KEYS = ("backbone.body.conv1.weight", "backbone.fpn.inner_blocks.0.0.weight",
                 "roi_heads.box_head.fc6.weight", "roi_heads.box_predictor.cls_score.weight",
                 "roi_heads.mask_predictor.conv5_mask.weight")


def rename_old_mask_head(sd):
    """torchvision < 0.13 named the mask head convs `mask_fcn<i>`; today's
    `MaskRCNNHeads` loads them as `<i-1>.0` (its _load_from_state_dict)."""
    out = {}
    for k, v in sd.items():
        m = re.match(r"roi_heads\.mask_head\.mask_fcn(\d+)\.(weight|bias)$", k)
        out[f"roi_heads.mask_head.{int(m.group(1)) - 1}.0.{m.group(2)}" if m else k] = v
    return out


def coco_names(num_classes):
    """COCO's names of labels 1..90 when the head has torchvision's 91 classes."""
    if num_classes != 91:
        return [f"class{i}" for i in range(1, num_classes)]
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights
    return list(MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"][1:])


def detector_metadata(sd, args):
    """The `detect.*` metadata of a torchvision Mask R-CNN state dict
    (models/src/detect.rs `DetectSpec::from_metadata`)."""
    missing = [k for k in DETECTOR_KEYS if k not in sd]
    if missing:
        fail(f"not a torchvision Mask R-CNN state dict: no {', '.join(missing)}")
    conv1 = sd["backbone.body.conv1.weight"]
    fpn = sd["backbone.fpn.inner_blocks.0.0.weight"].shape[0]
    reduced = sd["roi_heads.mask_predictor.conv5_mask.weight"].shape[1]
    convs = sorted({k.split(".")[2] for k in sd if k.startswith("roi_heads.mask_head.")})
    if reduced != fpn or convs != ["0", "1", "2", "3"]:
        fail(f"mask head with convs {convs} and dim_reduced {reduced}: slmlp's has four "
             f"convs and dim_reduced = FPN channels ({fpn})")
    if not 0 <= args.trainable_layers <= 5:
        fail(f"--trainable-layers {args.trainable_layers}: expected 0..=5")
    if not 1 <= args.min_size <= args.max_size <= 4096:
        fail(f"--min-size {args.min_size} --max-size {args.max_size}: expected 1 <= min <= max <= 4096")
    num_classes = sd["roi_heads.box_predictor.cls_score.weight"].shape[0]
    return {
        "detect.arch": infer_arch(sd, "backbone.body."),
        "detect.width": str(conv1.shape[0]),
        "detect.num_classes": str(num_classes),
        "detect.fpn_channels": str(fpn),
        "detect.representation_size": str(sd["roi_heads.box_head.fc6.weight"].shape[0]),
        "detect.trainable_layers": str(args.trainable_layers),
        "detect.channels": str(conv1.shape[1]),
        "detect.min_size": str(args.min_size),
        "detect.max_size": str(args.max_size),
        "detect.category_ids": json.dumps(list(range(1, num_classes))),
        "detect.category_names": json.dumps(coco_names(num_classes)),
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


def to_slmlp(src, dst, args):
    sd = unwrap(torch.load(src, map_location="cpu", weights_only=True), src)
    out, dropped = {}, 0
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            dropped += 1
            continue
        if not v.is_floating_point():
            fail(f"{src}: tensor `{k}` has dtype {v.dtype}; expected floats")
        out[k] = v.detach().to(torch.float32).contiguous()
    if any(k.startswith("backbone.body.") for k in out):
        out = rename_old_mask_head(out)
        meta = detector_metadata(out, args)
    else:
        meta = {**infer_config(out), **input_metadata(args.size)}
    save_file(out, dst, metadata=meta)
    print(f"{dst}: {len(out)} tensors ({dropped} num_batches_tracked dropped), "
          + ", ".join(f"{k}={v!r}" for k, v in meta.items() if not k.startswith("detect.category")))


def build_torch_detector(meta):
    """torchvision's MaskRCNN with the shapes `meta` (detect.*) describes:
    FrozenBatchNorm2d body under resnet_fpn_backbone, as
    maskrcnn_resnet50_fpn builds it for trained weights."""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.misc import FrozenBatchNorm2d

    want = {"width": "64", "fpn_channels": "256", "representation_size": "1024", "channels": "3"}
    other = {k: meta.get(f"detect.{k}") for k, v in want.items() if meta.get(f"detect.{k}") != v}
    if other:
        fail(f"not torchvision's Mask R-CNN shapes: {other} (torchvision: {want})")
    backbone = resnet_fpn_backbone(backbone_name=meta["detect.arch"], weights=None,
                                   norm_layer=FrozenBatchNorm2d,
                                   trainable_layers=int(meta["detect.trainable_layers"]))
    return MaskRCNN(backbone, num_classes=int(meta["detect.num_classes"]),
                    min_size=int(meta["detect.min_size"]), max_size=int(meta["detect.max_size"]))


def detector_to_torch(path, dst):
    sd = {k: v for k, v in load_file(path).items() if not k.startswith("optim.")}
    net = build_torch_detector(read_meta(path))
    theirs = net.state_dict()
    misshaped = sorted(k for k in sd if k in theirs and tuple(sd[k].shape) != tuple(theirs[k].shape))
    missing = sorted(k for k in theirs if k not in sd)
    unexpected = sorted(k for k in sd if k not in theirs)
    if missing or unexpected or misshaped:
        fail(f"{path} does not fit torchvision's Mask R-CNN: missing {missing[:5]}, "
             f"unexpected {unexpected[:5]}, shape mismatch {misshaped[:5]}")
    net.load_state_dict(sd, strict=True)
    torch.save(net.state_dict(), dst)
    print(f"{dst}: {len(sd)} tensors, torchvision MaskRCNN ({read_meta(path)['detect.arch']}-FPN, "
          f"{read_meta(path)['detect.num_classes']} classes) loaded them strictly")


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
    ap.add_argument("dst", nargs="?", help="output .safetensors (or, --to-torch of a detector, .pth)")
    ap.add_argument("--to-torch", action="store_true", help="load SRC into torchvision and report")
    ap.add_argument("--check-outputs", nargs=2, metavar=("INPUT", "OUTPUTS"),
                    help="with --to-torch: compare `slmlp forward` outputs with torch's")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--size", type=int, default=224, help="ResNet: input size (data.size)")
    ap.add_argument("--min-size", type=int, default=800, help="detector: shorter side")
    ap.add_argument("--max-size", type=int, default=1333, help="detector: longer side at most")
    ap.add_argument("--trainable-layers", type=int, default=3,
                    help="detector: backbone stages trained by `detect train --init`")
    args = ap.parse_args()
    if args.to_torch:
        if "detect.arch" in read_meta(args.src):
            if not args.dst or args.check_outputs:
                fail("usage: convert_torchvision.py --to-torch DETECTOR.safetensors OUT.pth")
            detector_to_torch(args.src, args.dst)
            return
        if args.dst:
            fail("--to-torch of a ResNet takes only the checkpoint")
        to_torch(args.src, args.check_outputs, args.tol)
    else:
        if not args.dst or args.check_outputs:
            fail("usage: convert_torchvision.py IN.pth OUT.safetensors  (or --to-torch CKPT)")
        to_slmlp(args.src, args.dst, args)


if __name__ == "__main__":
    main()
