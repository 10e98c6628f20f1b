#!/usr/bin/env python3
"""Generate torchvision golden fixtures for slmlp's mask paste op
(`engine::ops::detection::paste_masks`), read by engine/tests/paste_masks.rs.

Run by hand (torch is never needed by `cargo test`; the files are committed):

    python3 tools/golden/make_paste_masks_fixtures.py [--out tests/fixtures/golden]

torchvision's `paste_masks_in_image(masks, boxes, img_shape, padding)`
(torchvision/models/detection/roi_heads.py) on K mask probabilities
(sigmoid of float32 normals) and float boxes in an image of img_shape. The
boxes are partly outside the image on every side, tiny (narrower than a
pixel, one row), larger than the image, and random ones; none lies entirely
outside (torchvision's slicing then fails). The op under test takes the
integer boxes torchvision computes inside, `expand_boxes(boxes, scale)
.to(torch.int64)` with scale = (M + 2 padding) / M, M = the masks' last
dim, stored per precision (f32 boxes expand in f32).

Cases `detection_paste_masks_{a,b,c}`: 28x28 masks with padding 1 (Mask
R-CNN's setting), 14x20 masks with padding 2, 7x7 masks with padding 0.
Keys:
  in.masks        float32 [K, 1, Mh, Mw]
  in.boxes        float32 [K, 4] (x1, y1, x2, y2)
  int_boxes       int64 [K, 4]: the expanded integer boxes, float64
  int_boxes_f32   int64 [K, 4]: the same expanded in float32
  out             float64 [K, 1, H, W]: the pasted masks, float64
  out_f32         float32: the same computed in float32
  params: img_hw, padding.
"""

import os
import sys

import torch
import torchvision
from torchvision.models.detection.roi_heads import expand_boxes, paste_masks_in_image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from torch_common import F32, F64, Writer, out_dir_arg, seed_for  # noqa: E402


def boxes_for(img_hw, k):
    """Fixed boxes at the image's edges and odd sizes, then random ones."""
    h, w = img_hw
    rows = [
        [-6.3, -4.8, 15.2, 11.7],  # partly outside, top-left
        [w - 10.5, h - 7.25, w + 6.1, h + 9.9],  # partly outside, bottom-right
        [3.2, 4.1, 3.6, 4.4],  # narrower than a pixel
        [2.5, 5.2, w / 2 + 0.3, 5.9],  # one row
        [-25.0, -12.5, w + 13.2, h + 3.7],  # larger than the image
        [w - 4.4, 2.2, w + 30.1, 20.6],  # mostly outside, right
    ]
    while len(rows) < k:
        x1 = (torch.rand(1, dtype=F32).item() * 1.1 - 0.1) * w
        y1 = (torch.rand(1, dtype=F32).item() * 1.1 - 0.1) * h
        bw = 2.0 + torch.rand(1, dtype=F32).item() * 0.7 * w
        bh = 2.0 + torch.rand(1, dtype=F32).item() * 0.7 * h
        rows.append([x1, y1, x1 + bw, y1 + bh])
    return torch.tensor(rows[:k], dtype=F32)


def case(w, name, k, mask_hw, img_hw, padding):
    seed_for(name)
    masks = torch.randn(k, 1, *mask_hw, dtype=F32).mul(2.0).sigmoid()
    boxes = boxes_for(img_hw, k)
    scale = (mask_hw[1] + 2 * padding) / mask_hw[1]
    tensors = {"in.masks": masks, "in.boxes": boxes}
    for dtype, suffix in ((F64, ""), (F32, "_f32")):
        m, b = masks.to(dtype), boxes.to(dtype)
        tensors["int_boxes" + suffix] = expand_boxes(b, scale).to(dtype=torch.int64)
        tensors["out" + suffix] = paste_masks_in_image(m, b, img_hw, padding=padding)
    w.save_op(name, "paste_masks", {"img_hw": list(img_hw), "padding": padding}, tensors)


def main():
    w = Writer(out_dir_arg(__doc__.split("\n")[0], "tests/fixtures/golden"),
               torchvision=torchvision.__version__)
    case(w, "detection_paste_masks_a", 8, (28, 28), (36, 44), 1)
    case(w, "detection_paste_masks_b", 6, (14, 20), (29, 33), 2)
    case(w, "detection_paste_masks_c", 6, (7, 7), (21, 24), 0)
    w.report()


if __name__ == "__main__":
    main()
