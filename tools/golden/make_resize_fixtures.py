#!/usr/bin/env python3
"""Golden outputs for models/src/data/transform.rs's resize_antialiased
(run by hand; never in CI): torchvision's `Resize(size, antialias=True)`
(bilinear) of random u8 images, through its three paths: a float tensor
(no rounding), a uint8 tensor and a PIL image (both rounded to u8).
Cases: downscale by ~2.3 and ~6.7, a grey image, an upscale.

    python3 tools/golden/make_resize_fixtures.py
"""

import json

import torch
import torchvision
import torchvision.transforms.functional as F
from torchvision.transforms import InterpolationMode

torch.manual_seed(0)
# (name, channels, height, width, shorter side after the resize)
CASES = [
    ("down2", 3, 37, 53, 16),
    ("down7", 3, 47, 62, 7),
    ("grey", 1, 45, 30, 13),
    ("up", 3, 7, 10, 15),
]
BILINEAR = InterpolationMode.BILINEAR
out = {"torch": torch.__version__, "torchvision": torchvision.__version__, "cases": []}
for name, c, h, w, size in CASES:
    img = torch.randint(0, 256, (c, h, w), dtype=torch.uint8)
    as_float = F.resize(img.float(), size, interpolation=BILINEAR, antialias=True)
    as_u8 = F.resize(img, size, interpolation=BILINEAR, antialias=True)
    pil = F.pil_to_tensor(F.resize(F.to_pil_image(img), size, interpolation=BILINEAR))
    assert as_float.shape == as_u8.shape == pil.shape
    out["cases"].append({
        "name": name,
        "channels": c,
        "height": h,
        "width": w,
        "size": size,
        "out_height": as_float.shape[1],
        "out_width": as_float.shape[2],
        # HWC bytes, as slmlp's Image holds them
        "pixels": img.permute(1, 2, 0).flatten().tolist(),
        # CHW, on the 0..255 scale
        "torch_float": [round(v, 4) for v in as_float.flatten().tolist()],
        "torch_u8": as_u8.flatten().tolist(),
        "pil": pil.flatten().tolist(),
    })
with open("tests/fixtures/resize/resize.json", "w") as f:
    json.dump(out, f, separators=(",", ":"))
print([(c["name"], c["out_height"], c["out_width"]) for c in out["cases"]])
