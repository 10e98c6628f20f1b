#!/usr/bin/env python3
"""By-hand check of the detector converter: a torchvision
`maskrcnn_resnet50_fpn` (v1) converted by tools/convert_torchvision.py and
run by `slmlp detect predict --json` detects what torchvision detects on the
same image (torchvision's transform: shorter side 800, longer at most 1333,
ImageNet mean/std), and the checkpoint converted back loads into torchvision
unchanged.

    cargo build -p models --bin slmlp
    python3 tools/golden/check_detector_conversion.py [--slmlp target/debug/slmlp] [--keep DIR]

No trained weights can be downloaded here, so the model is torchvision's own
random init (weights=None, weights_backbone=None, torch.manual_seed(0));
on the image it gives 100 detections, the best scoring 0.93. The image is a
synthetic 480x640 PNG (smooth colour gradients and a few filled shapes,
numpy seed 0), so the model runs at 800x1067.

Compared, detection by detection in torchvision's order: labels (equal),
scores and boxes (max |diff|), masks (IoU of the binarised masks, pycocotools
RLE of torchvision's against ours). Exit status 1 past the bounds below.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torchvision
from PIL import Image
from pycocotools import mask as mask_utils

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
H, W = 480, 640
BOX_TOL = 1e-2     # pixels, at 480x640
SCORE_TOL = 1e-4
MASK_IOU_MIN = 0.99


def synthetic_image():
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:H, 0:W]
    img = np.stack([x / W * 255, y / H * 255, (x + y) / (H + W) * 255], -1)
    for _ in range(6):
        x0, y0 = rng.integers(0, W - 120), rng.integers(0, H - 120)
        w, h = rng.integers(40, 120, size=2)
        img[y0:y0 + h, x0:x0 + w] = rng.integers(0, 256, size=3)
    return img.astype(np.uint8)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slmlp", default=os.path.join(REPO, "target/debug/slmlp"))
    ap.add_argument("--keep", help="folder to keep the files in (default: a temporary one)")
    args = ap.parse_args()
    tmp = args.keep or tempfile.mkdtemp()
    os.makedirs(tmp, exist_ok=True)
    torch.manual_seed(0)
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    model.eval()
    pth = os.path.join(tmp, "maskrcnn.pth")
    torch.save(model.state_dict(), pth)
    conv = [sys.executable, os.path.join(REPO, "tools/convert_torchvision.py")]
    ckpt = os.path.join(tmp, "maskrcnn.safetensors")
    subprocess.run(conv + [pth, ckpt], check=True)
    back = os.path.join(tmp, "back.pth")
    subprocess.run(conv + ["--to-torch", ckpt, back], check=True)
    sd, sd_back = model.state_dict(), torch.load(back, weights_only=True)
    same = all(torch.equal(sd[k], v) for k, v in sd_back.items())
    dropped = sorted(set(sd) - set(sd_back))
    print(f"round trip: {len(sd_back)} tensors equal: {same}; not carried: {len(dropped)} "
          f"({'all num_batches_tracked' if all(k.endswith('num_batches_tracked') for k in dropped) else dropped})")

    img = synthetic_image()
    png = os.path.join(tmp, "image.png")
    Image.fromarray(img).save(png)
    dets_json = os.path.join(tmp, "dets.json")
    subprocess.run([args.slmlp, "detect", "predict", "--checkpoint", ckpt, "--image", png,
                    "--out", os.path.join(tmp, "drawn.png"), "--json", dets_json], check=True,
                   stdout=subprocess.DEVNULL)
    ours = json.load(open(dets_json))
    x = torch.from_numpy(img).permute(2, 0, 1).float() / 255.0
    with torch.no_grad():
        ref = model([x])[0]
    n = ref["boxes"].shape[0]
    print(f"detections: torchvision {n}, slmlp {len(ours)}")
    ok = len(ours) == n
    worst_box = worst_score = 0.0
    worst_iou = 1.0
    for k in range(min(n, len(ours))):
        d = ours[k]
        x0, y0, w, h = d["bbox"]
        box = torch.tensor([x0, y0, x0 + w, y0 + h], dtype=torch.float64)
        worst_box = max(worst_box, float((box - ref["boxes"][k].double()).abs().max()))
        worst_score = max(worst_score, abs(d["score"] - float(ref["scores"][k])))
        ok &= d["category_id"] == int(ref["labels"][k])
        m = np.asfortranarray((ref["masks"][k, 0] > 0.5).numpy().astype(np.uint8))
        theirs = mask_utils.encode(m)
        seg = dict(d["segmentation"], counts=d["segmentation"]["counts"].encode())
        iou = float(mask_utils.iou([seg], [theirs], [0])[0, 0]) if m.any() else 1.0
        worst_iou = min(worst_iou, iou)
    labels_equal = [d["category_id"] for d in ours] == ref["labels"].tolist()
    print(f"labels equal: {labels_equal}; max |box diff| {worst_box:.2e} px, "
          f"max |score diff| {worst_score:.2e}, min mask IoU {worst_iou:.5f}")
    ok &= labels_equal and worst_box <= BOX_TOL and worst_score <= SCORE_TOL and worst_iou >= MASK_IOU_MIN
    ok &= same and all(k.endswith("num_batches_tracked") for k in dropped)
    print("PASS" if ok else "FAIL", f"(files in {tmp})")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
