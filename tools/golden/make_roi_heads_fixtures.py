#!/usr/bin/env python3
"""Generate the torchvision golden fixture for the ROI box path
(models/src/detection/roi_heads.rs), read by models/tests/roi_heads.rs.

Run by hand (torch is never needed by `cargo test`; the file is committed):

    /root/torchvenv/bin/python tools/golden/make_roi_heads_fixtures.py [--out tests/fixtures/golden]

Setup, all in float64: torchvision's RoIHeads with MultiScaleRoIAlign(["0",
"1", "2", "3"], 7, 2), TwoMLPHead(16 * 7 * 7, 16) and FastRCNNPredictor(16,
5 classes), default thresholds (IoU 0.5 / 0.5, positive fraction 0.25,
weights (10, 10, 5, 5), score 0.05, NMS 0.5, 100 detections). A batch of two
images of sizes (128, 150) and (120, 160) padded to 128 x 160, with four
random 16-channel FPN levels at strides 4, 8, 16, 32 (P2..P5). Features and
head weights are drawn in float32 from torch.manual_seed(0) (so the stored
f32 values are exact) and used in float64; the head weights are drawn wider
than nn.Linear's init so that scores and deltas spread out.

Proposals: per image, jittered copies of its gt boxes (so some match at IoU
>= 0.5) plus random boxes inside the image. The pooler case uses separate
boxes including some larger than the image so that every level 2..5 is
mapped.

The train case sets batch_size_per_image = 10**6, more than proposals + gt,
so every proposal is sampled and the losses do not depend on torch.randperm.

File roi_heads_fpn.safetensors, metadata "image_sizes", "num_classes",
"representation_size", "gt_counts", "proposal_counts", "pool_counts".
Tensors:
  features.<l>             float32 [2, 16, H_l, W_l]
  roi_heads.<param>        float32 (exact) head weights, torchvision names
  proposals.<b>            float64 [K_b, 4]
  gt.boxes.<b>             float64 [G_b, 4]
  gt.labels.<b>            int64 [G_b]
  pool.boxes.<b>           float64 [P_b, 4]
  pool.out                 float64 [P_0 + P_1, 16, 7, 7] MultiScaleRoIAlign
  pool.levels              int64 [P_0 + P_1] LevelMapper's level - k_min
  eval.boxes.<b>, eval.scores.<b>, eval.labels.<b>   detections (eval mode)
  train.loss_classifier, train.loss_box_reg          float64 []
  train.grad.<param>       float64 grad of their sum w.r.t. roi_heads.<param>
"""

import argparse
import json
import os
from collections import OrderedDict

import torch
from safetensors.torch import save_file
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import MultiScaleRoIAlign

C = 16
REP = 16
NUM_CLASSES = 5
IMAGE_SIZES = [(128, 150), (120, 160)]
GRIDS = [(32, 40), (16, 20), (8, 10), (4, 5)]
GT = [
    ([[10.0, 12.0, 60.0, 70.0], [70.0, 20.0, 140.0, 110.0], [30.0, 80.0, 52.0, 100.0]], [1, 3, 4]),
    ([[5.0, 5.0, 100.0, 90.0], [90.0, 40.0, 150.0, 115.0]], [2, 1]),
]
RANDOM_PROPOSALS = 14
POOL_BOXES = [
    [[1.0, 2.0, 30.0, 40.0], [10.5, 3.25, 100.0, 120.0], [0.0, 0.0, 149.0, 127.0],
     [-40.0, -30.0, 220.0, 200.0], [20.0, 10.0, 520.0, 480.0], [60.0, 60.0, 61.5, 62.0]],
    [[3.0, 4.0, 9.0, 8.0], [40.0, 30.0, 170.0, 110.0], [-100.0, -100.0, 400.0, 420.0],
     [100.0, 10.0, 160.0, 120.0], [5.0, 7.0, 300.0, 200.0]],
]


def build(batch_size_per_image):
    pooler = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    head = TwoMLPHead(C * 49, REP)
    predictor = FastRCNNPredictor(REP, NUM_CLASSES)
    return RoIHeads(pooler, head, predictor, 0.5, 0.5, batch_size_per_image, 0.25,
                    None, 0.05, 0.5, 100).double()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/golden")
    args = ap.parse_args()
    torch.manual_seed(0)
    feats32 = [torch.randn(2, C, h, w) for h, w in GRIDS]
    feats = OrderedDict((str(l), f.double()) for l, f in enumerate(feats32))
    ref = build(512)
    weights = {}
    for name, p in ref.named_parameters():
        std = 0.05 if "fc" in name else 0.3
        w = torch.randn(p.shape) * std
        weights["roi_heads." + name] = w
        with torch.no_grad():
            p.copy_(w.double())

    proposals, gts, labels = [], [], []
    for b, (h, w) in enumerate(IMAGE_SIZES):
        g = torch.tensor(GT[b][0], dtype=torch.float64)
        gts.append(g)
        labels.append(torch.tensor(GT[b][1], dtype=torch.int64))
        jit = g.repeat(2, 1) + torch.randn(2 * len(g), 4).double() * 4.0
        xy = torch.rand(RANDOM_PROPOSALS, 2).double() * torch.tensor([w * 0.8, h * 0.8], dtype=torch.float64)
        wh = 4.0 + torch.rand(RANDOM_PROPOSALS, 2).double() * 60.0
        rnd = torch.cat([xy, xy + wh], 1)
        p = torch.cat([jit, rnd], 0)
        p[:, 0::2] = p[:, 0::2].clamp(0, w)
        p[:, 1::2] = p[:, 1::2].clamp(0, h)
        proposals.append(p)

    out = {}
    for l, f in enumerate(feats32):
        out[f"features.{l}"] = f.contiguous()
    out.update({k: v.contiguous() for k, v in weights.items()})
    for b in range(2):
        out[f"proposals.{b}"] = proposals[b].contiguous()
        out[f"gt.boxes.{b}"] = gts[b].contiguous()
        out[f"gt.labels.{b}"] = labels[b].contiguous()

    # pooler alone
    pool_boxes = [torch.tensor(bx, dtype=torch.float64) for bx in POOL_BOXES]
    pooled = ref.box_roi_pool(feats, pool_boxes, IMAGE_SIZES)
    levels = ref.box_roi_pool.map_levels(pool_boxes)
    for b in range(2):
        out[f"pool.boxes.{b}"] = pool_boxes[b].contiguous()
    out["pool.out"] = pooled.contiguous()
    out["pool.levels"] = levels.to(torch.int64).contiguous()

    # eval
    ref.eval()
    with torch.no_grad():
        dets, _ = ref(feats, [p.clone() for p in proposals], IMAGE_SIZES)
    for b, d in enumerate(dets):
        out[f"eval.boxes.{b}"] = d["boxes"].contiguous()
        out[f"eval.scores.{b}"] = d["scores"].contiguous()
        out[f"eval.labels.{b}"] = d["labels"].contiguous()
        print("image", b, "detections", len(d["boxes"]))

    # train, everything sampled
    tr = build(10**6)
    tr.load_state_dict(ref.state_dict())
    tr.train()
    targets = [{"boxes": gts[b], "labels": labels[b]} for b in range(2)]
    _, losses = tr(feats, [p.clone() for p in proposals], IMAGE_SIZES, targets)
    total = losses["loss_classifier"] + losses["loss_box_reg"]
    total.backward()
    out["train.loss_classifier"] = losses["loss_classifier"].detach().reshape(())
    out["train.loss_box_reg"] = losses["loss_box_reg"].detach().reshape(())
    for name, p in tr.named_parameters():
        out[f"train.grad.roi_heads.{name}"] = p.grad.contiguous()
    print({k: float(v) for k, v in losses.items()})

    meta = {
        "image_sizes": json.dumps(IMAGE_SIZES),
        "num_classes": json.dumps(NUM_CLASSES),
        "representation_size": json.dumps(REP),
        "gt_counts": json.dumps([len(g) for g in gts]),
        "proposal_counts": json.dumps([len(p) for p in proposals]),
        "pool_counts": json.dumps([len(p) for p in pool_boxes]),
    }
    path = os.path.join(args.out, "roi_heads_fpn.safetensors")
    save_file(out, path, metadata=meta)
    print(path, os.path.getsize(path), "bytes; levels", levels.tolist())


if __name__ == "__main__":
    main()
