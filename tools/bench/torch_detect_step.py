#!/usr/bin/env python3
"""torchvision's Mask R-CNN training step on the CPU, on the same images and
annotations `slmlp detect train` reads (a `slmlp detection-data` folder or
any COCO layout with compressed-RLE masks), for the step-time comparison in
docs/PERF.md.

The model is the COCO recipe's (torchvision's `maskrcnn_resnet50_fpn` with
a pretrained backbone): ResNet-50 with FrozenBatchNorm2d, conv1 and layer1
frozen (3 trainable stages), FPN, torchvision's RPN and RoI heads, SGD
momentum 0.9, weight decay 1e-4, a constant --lr. Images are decoded to RGB as `--channels 3`
does and resized by the model's transform to --min-size/--max-size.

    python tools/bench/torch_detect_step.py --data DIR --batch 2 \
        --min-size 512 --max-size 512 --steps 8 --threads 2

prints one JSON object: every step's milliseconds (warm-up steps left out),
the median, the threads and the sizes.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.models import resnet50
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import FrozenBatchNorm2d


def rle_counts(s):
    """The run lengths of COCO's compressed RLE string."""
    counts, p = [], 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_mask(ann):
    """The instance mask of a compressed-RLE annotation, checked against
    its area."""
    seg = ann["segmentation"]
    if not isinstance(seg, dict) or not isinstance(seg.get("counts"), str):
        raise SystemExit(f"annotation {ann['id']}: only compressed RLE masks are read here")
    h, w = seg["size"]
    flat = np.zeros(h * w, dtype=np.uint8)
    at, value = 0, 0
    for n in rle_counts(seg["counts"]):
        flat[at : at + n] = value
        at += n
        value ^= 1
    if at != h * w:
        raise SystemExit(f"annotation {ann['id']}: RLE covers {at} pixels, not {h}x{w}")
    mask = flat.reshape(w, h).T  # column-major
    if "area" in ann and int(mask.sum()) != round(ann["area"]):
        raise SystemExit(f"annotation {ann['id']}: mask of {mask.sum()} pixels, area {ann['area']}")
    return mask


def load(data, n):
    ann = json.loads((data / "annotations.json").read_text())
    by_image = {}
    for a in ann["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    cats = sorted(c["id"] for c in ann["categories"])
    label = {c: i + 1 for i, c in enumerate(cats)}
    samples = []
    for im in ann["images"]:
        objs = [a for a in by_image.get(im["id"], []) if not a.get("iscrowd", 0)]
        if not objs:
            continue
        rgb = Image.open(data / "images" / im["file_name"]).convert("RGB")
        x = torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).float() / 255
        boxes = torch.tensor(
            [[b[0], b[1], b[0] + b[2], b[1] + b[3]] for b in (a["bbox"] for a in objs)],
            dtype=torch.float32,
        )
        target = {
            "boxes": boxes,
            "labels": torch.tensor([label[a["category_id"]] for a in objs]),
            "masks": torch.from_numpy(np.stack([rle_mask(a) for a in objs])),
        }
        samples.append((x, target))
        if len(samples) == n:
            break
    return samples, len(cats) + 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, type=Path, help="folder with annotations.json and images/")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--min-size", type=int, default=800)
    ap.add_argument("--max-size", type=int, default=1333)
    ap.add_argument("--steps", type=int, default=8, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="0: torch's default")
    ap.add_argument(
        "--lr",
        type=float,
        default=2e-5,
        help="constant; small, since a backbone with no pretrained weights diverges at the recipe's",
    )
    a = ap.parse_args()
    for name in ("batch", "steps", "warmup", "min_size", "max_size"):
        v = getattr(a, name)
        if not 0 <= v <= 100_000 or (name != "warmup" and v == 0):
            ap.error(f"--{name.replace('_', '-')} {v} is out of range")
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    total = (a.warmup + a.steps) * a.batch
    samples, classes = load(a.data, total)
    if len(samples) < total:
        ap.error(f"{a.data}: {len(samples)} images with objects, {total} needed")
    body = resnet50(norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(body, 3)
    model = MaskRCNN(backbone, num_classes=classes, min_size=a.min_size, max_size=a.max_size)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=a.lr, momentum=0.9, weight_decay=1e-4)

    times = []
    for i in range(a.warmup + a.steps):
        batch = samples[i * a.batch : (i + 1) * a.batch]
        images = [x for x, _ in batch]
        targets = [t for _, t in batch]
        t0 = time.perf_counter()
        losses = model(images, targets)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ms = (time.perf_counter() - t0) * 1e3
        if i >= a.warmup:
            times.append(ms)
    print(
        json.dumps(
            {
                "model": "torchvision MaskRCNN R50-FPN (FrozenBatchNorm2d, 3 trainable stages)",
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "batch": a.batch,
                "min_size": a.min_size,
                "max_size": a.max_size,
                "step_ms": [round(t, 1) for t in times],
                "median_ms": round(statistics.median(times), 1),
            }
        )
    )


if __name__ == "__main__":
    main()
