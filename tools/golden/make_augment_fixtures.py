#!/usr/bin/env python3
"""Generate torchvision golden fixtures for slmlp's augment op
(`engine::ops::augment::crop_resize_normalize`), read by
engine/tests/augment.rs.

Run by hand (torch is never needed by `cargo test`; the files are committed):

    python3 tools/golden/make_augment_fixtures.py [--out tests/fixtures/golden]

Each output image is torchvision's training pipeline on a u8 HWC image with
the random choices fixed: `ToTensor` (u8 / 255, CHW), `resized_crop(top,
left, h, w, [s, s], antialias=False)` (bilinear, half-pixel centres), a
CIFAR-style pad-and-crop (`pad` zero pixels on every side, then the s x s
window at (pad + dy, pad + dx)), `hflip` when mirrored, `Normalize(mean,
std)`, all in float32.

Cases:
  augment_rgb: 6 RGB images of 11x17 to 64x48 packed back to back: crops
    that downscale, upscale, one of exactly the output size (a copy), one
    of the whole image, a 1x1 region; shifts up to 4; mirrored or not.
  augment_gray: 4 gray 28x28 images to 32x32 with Fashion-MNIST's
    statistics, shifts up to 4 (the CIFAR-style transform).
Keys:
  in.pixels   uint8 [bytes]: every image, HWC, back to back
  in.crops    int64 [B, 10]: offset, height, width, top, left, crop_h,
              crop_w, dy, dx, mirror
  out.images  float32 [B, C, s, s]
  params: {"channels": C, "size": s, "mean": [...], "std": [...]}.
"""

import os
import sys

import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms.v2.functional as TF

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from torch_common import F32, Writer, out_dir_arg, seed_for  # noqa: E402


def one(img, crop, size, mean, std):
    """torchvision's pipeline on one u8 HWC image with the choices `crop`."""
    _, h, w, top, left, ch, cw, dy, dx, mirror = crop
    x = img.permute(2, 0, 1).to(F32) / 255.0
    x = TF.resized_crop(x, top, left, ch, cw, [size, size], antialias=False)
    pad = max(abs(dy), abs(dx))
    if pad:
        x = F.pad(x, (pad, pad, pad, pad))
        x = x[:, pad + dy: pad + dy + size, pad + dx: pad + dx + size]
    if mirror:
        x = TF.hflip(x)
    return TF.normalize(x, mean, std)


def case(w, name, sizes, channels, size, crops_of, mean, std):
    pixels, crops, outs = [], [], []
    offset = 0
    for i, (h, wd) in enumerate(sizes):
        img = torch.randint(0, 256, (h, wd, channels), dtype=torch.uint8)
        top, left, ch, cw, dy, dx, mirror = crops_of(i, h, wd)
        crop = [offset, h, wd, top, left, ch, cw, dy, dx, int(mirror)]
        outs.append(one(img, crop, size, mean, std))
        pixels.append(img.reshape(-1))
        crops.append(crop)
        offset += img.numel()
    tensors = {
        "in.pixels": torch.cat(pixels),
        "in.crops": torch.tensor(crops, dtype=torch.int64),
        "out.images": torch.stack(outs),
    }
    params = {"channels": channels, "size": size, "mean": mean, "std": std}
    w.save_op(name, "crop_resize_normalize", params, tensors, compute_dtype="float32")


def main():
    w = Writer(out_dir_arg(__doc__.split("\n")[0], "tests/fixtures/golden"),
               torchvision=torchvision.__version__)
    seed_for("augment_rgb")
    rgb = [(37, 53), (64, 48), (11, 17), (30, 30), (20, 25), (40, 33)]
    fixed = [
        (3, 5, 30, 41, 0, 0, False),   # downscale to 24
        (10, 2, 50, 40, 2, -3, True),  # downscale, shifted, mirrored
        (1, 2, 9, 13, 0, 0, True),     # upscale
        (0, 0, 30, 30, -4, 4, False),  # the whole image, shifted
        (2, 1, 1, 1, 0, 0, False),     # one pixel
        (5, 4, 24, 24, 1, 1, True),    # exactly the output size: a copy
    ]
    case(w, "augment_rgb", rgb, 3, 24, lambda i, h, wd: fixed[i],
         [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    seed_for("augment_gray")
    gray = [(28, 28)] * 4
    shifts = [(0, 0, False), (4, -4, True), (-2, 3, False), (-4, 1, True)]
    case(w, "augment_gray", gray, 1, 32,
         lambda i, h, wd: (0, 0, 28, 28) + shifts[i], [0.2860], [0.3530])
    w.report()


if __name__ == "__main__":
    main()
