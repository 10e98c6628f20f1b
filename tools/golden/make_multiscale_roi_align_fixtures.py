#!/usr/bin/env python3
"""Generate torchvision golden fixtures for slmlp's multi-level RoIAlign
(`engine::ops::detection::multiscale_roi_align`), read by
tests/golden_detection.rs.

Run by hand (torch is never needed by `cargo test`; the files are committed):

    python3 tools/golden/make_multiscale_roi_align_fixtures.py [--out tests/fixtures/golden]

torchvision's `MultiScaleRoIAlign(["0", "1", "2"], output_size,
sampling_ratio, canonical_scale=32, canonical_level=4)` (aligned is always
False there) over three levels of a 2-image batch of sizes (64, 80) and
(60, 72), maps [2, 3, 16, 20], [2, 3, 8, 10], [2, 3, 4, 5] (scales 1/4, 1/8,
1/16, so k_min = 2, k_max = 4). canonical_scale 32 maps boxes of 8 to 64
pixels onto the three levels; the boxes include ones below and above that
range (clamped to k_min / k_max), ones of side exactly 16 and 32 (level
boundaries), an empty and a partly outside one. Inputs are drawn in float32
from a per-case seed (torch.manual_seed(crc32(case))); results in float64
from the same (f32-exact) values, and in float32. Reruns give the same tensors.

Cases `detection_multiscale_roi_align_{a,b}`: (3, 4) with sampling_ratio -1,
and (2, 2) with sampling_ratio 2. Keys:
  in.features.<l>   float32 [2, 3, H_l, W_l]
  in.boxes.<b>      float32 [K_b, 4] image b's boxes (x1, y1, x2, y2)
  grad_out          float32 [K, 3, ph, pw], K = K_0 + K_1
  out, grad.<l>     float64: the pooled RoIs (image 0's boxes first) and the
                    gradient of sum(out * grad_out) w.r.t. features <l>
  out_f32, grad_f32.<l>  the same computed in float32
  levels            int64 [K]: LevelMapper's level - k_min
  params: output_size, sampling_ratio, canonical_scale, canonical_level,
          image_sizes, scales (torchvision's inferred), k_min, k_max.
"""

import os
import sys
from collections import OrderedDict

import torch
import torchvision
from torchvision.ops import MultiScaleRoIAlign

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from torch_common import F32, F64, Writer, out_dir_arg, seed_for  # noqa: E402

C = 3
IMAGE_SIZES = [(64, 80), (60, 72)]
GRIDS = [(16, 20), (8, 10), (4, 5)]
CANONICAL_SCALE = 32
CANONICAL_LEVEL = 4


def boxes_for(b):
    """Image b's boxes: random sizes over and beyond the mapped range, plus
    fixed ones at the level boundaries and odd shapes."""
    h, w = IMAGE_SIZES[b]
    rows = []
    for side in (3.0, 6.0, 10.0, 14.0, 20.0, 27.0, 40.0, 55.0, 90.0):
        s = side * (0.8 + 0.4 * torch.rand(1, dtype=F32).item())
        x1 = torch.rand(1, dtype=F32).item() * (w - s * 0.5)
        y1 = torch.rand(1, dtype=F32).item() * (h - s * 0.5)
        a = 0.6 + 0.8 * torch.rand(1, dtype=F32).item()  # aspect
        rows.append([x1, y1, x1 + s * a, y1 + s / a])
    rows.append([4.0, 6.0, 20.0, 22.0])  # side 16: level 3 exactly
    rows.append([10.0, 3.0, 42.0, 35.0])  # side 32: level 4 exactly
    rows.append([7.5, 9.25, 7.5, 30.0])  # empty: clamped to k_min
    rows.append([w - 12.0, h - 9.0, w + 7.0, h + 11.0])  # partly outside
    return torch.tensor(rows, dtype=F32)


def case(w, name, output_size, sampling_ratio):
    seed_for(name)
    feats = [torch.randn(2, C, gh, gw, dtype=F32) for gh, gw in GRIDS]
    boxes = [boxes_for(b) for b in range(2)]
    k = sum(len(b) for b in boxes)
    grad_out = torch.randn(k, C, *output_size, dtype=F32)
    tensors = {"grad_out": grad_out}
    for l, f in enumerate(feats):
        tensors[f"in.features.{l}"] = f
    for b, bx in enumerate(boxes):
        tensors[f"in.boxes.{b}"] = bx
    pooler = None
    for dtype, suffix in ((F64, ""), (F32, "_f32")):
        pooler = MultiScaleRoIAlign(["0", "1", "2"], list(output_size), sampling_ratio,
                                    canonical_scale=CANONICAL_SCALE,
                                    canonical_level=CANONICAL_LEVEL)
        xs = [f.to(dtype).requires_grad_(True) for f in feats]
        x = OrderedDict((str(l), t) for l, t in enumerate(xs))
        out = pooler(x, [bx.to(dtype) for bx in boxes], IMAGE_SIZES)
        (out * grad_out.to(dtype)).sum().backward()
        tensors["out" + suffix] = out.detach()
        for l, t in enumerate(xs):
            tensors[("grad" if dtype == F64 else "grad_f32") + f".{l}"] = t.grad
        if dtype == F64:
            levels = pooler.map_levels([bx.to(dtype) for bx in boxes])
            tensors["levels"] = levels.to(torch.int64)
    mapper = pooler.map_levels
    assert set(tensors["levels"].tolist()) == {0, 1, 2}, "every level is exercised"
    params = {"output_size": list(output_size), "sampling_ratio": sampling_ratio,
              "canonical_scale": CANONICAL_SCALE, "canonical_level": CANONICAL_LEVEL,
              "image_sizes": [list(s) for s in IMAGE_SIZES], "scales": pooler.scales,
              "k_min": mapper.k_min, "k_max": mapper.k_max}
    w.save_op(name, "multiscale_roi_align", params, tensors)


def main():
    w = Writer(out_dir_arg(__doc__.split("\n")[0], "tests/fixtures/golden"),
               torchvision=torchvision.__version__)
    case(w, "detection_multiscale_roi_align_a", (3, 4), -1)
    case(w, "detection_multiscale_roi_align_b", (2, 2), 2)
    w.report()


if __name__ == "__main__":
    main()
