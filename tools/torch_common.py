"""Helpers shared by the PyTorch scripts under tools/ (golden fixtures and
the CPU benchmark): per-case seeds, the safetensors fixture writer, the
`--out` folder argument and the CIFAR-stem ResNet.

Scripts in a subfolder of tools/ import it after putting tools/ on the path:

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from torch_common import ...
"""

import argparse
import json
import os
import zlib

import torch
import torch.nn as nn

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
F32 = torch.float32
F64 = torch.float64


def seed_for(name):
    torch.manual_seed(zlib.crc32(name.encode("utf-8")))


def randn(*shape):
    return torch.randn(*shape, dtype=F32)


def out_dir_arg(description, default):
    """Parses `--out DIR` (default: `default`, relative to the repository
    root), creates the folder and returns it."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", default=os.path.join(REPO, default))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    return args.out


class Writer:
    """Writes `<case>.safetensors` fixtures into out_dir. Metadata values that
    are not strings are stored as JSON; `meta` given here goes into every
    file, and `torch` (its version) and `compute_dtype` ("float64") are added
    unless a file sets them."""

    def __init__(self, out_dir, **meta):
        self.out_dir = out_dir
        self.meta = meta
        self.written = []

    def save(self, case, tensors, meta):
        from safetensors.torch import save_file

        meta = {**meta, **self.meta}
        meta = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in meta.items()}
        meta.setdefault("torch", torch.__version__)
        meta.setdefault("compute_dtype", "float64")
        path = os.path.join(self.out_dir, case + ".safetensors")
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, path, metadata=meta)
        self.written.append(path)

    def save_op(self, case, op, params, tensors, **meta):
        self.save(case, tensors, {"op": op, "params": params, **meta})

    def report(self):
        total = sum(os.path.getsize(p) for p in self.written)
        print(f"wrote {len(self.written)} files ({total / 1024:.0f} KiB) to "
              f"{os.path.normpath(self.out_dir)}")


# --------------------------------------------------------------------------
# CIFAR-stem ResNet (torchvision naming and BasicBlock forward)
# --------------------------------------------------------------------------

class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class CifarResNet(nn.Module):
    """torchvision.models.ResNet with a CIFAR stem (3x3/s1/p1 conv1, no
    maxpool); `projector` inserts the SL-MLP projector Linear(d, d) ->
    BatchNorm1d(d) -> ReLU (models/src/projector.rs, paper config) between
    the pooled features and the classifier."""

    def __init__(self, layers=(2, 2, 2, 2), widths=(64, 128, 256, 512), num_classes=10,
                 in_channels=3, projector=False):
        super().__init__()
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(widths[0], layers[0], 1)
        self.layer2 = self._make_layer(widths[1], layers[1], 2)
        self.layer3 = self._make_layer(widths[2], layers[2], 2)
        self.layer4 = self._make_layer(widths[3], layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        d = widths[3]
        self.projector = (
            nn.Sequential(nn.Linear(d, d), nn.BatchNorm1d(d), nn.ReLU(inplace=True))
            if projector
            else None
        )
        self.fc = nn.Linear(d, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes, blocks, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        for _ in range(1, blocks):
            layers.append(BasicBlock(planes, planes))
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        if self.projector is not None:
            x = self.projector(x)
        return self.fc(x)
