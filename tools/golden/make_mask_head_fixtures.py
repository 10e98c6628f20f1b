#!/usr/bin/env python3
"""Golden vectors for models/src/detection/mask_head.rs (run by hand; never in CI).

Everything in float64 with torchvision's own code:

* mask_head_train.safetensors: a small MaskRCNNHeads(8, [8]*4, 1) +
  MaskRCNNPredictor(8, 8, 5) (weights seeded, biases made non-zero so a
  missing bias shows, stored under torchvision's names with the prefix
  "roi_heads."), pooled mask features [6, 8, 14, 14] produced by torchvision's
  MultiScaleRoIAlign(["0".."3"], 14, 2) over random FPN maps of two 64x80
  images with 3 positive proposals each, the mask logits, the gt masks (u8,
  several instances per image), their labels and the matched indices,
  project_masks_on_boxes per image, maskrcnn_loss and the gradients of every
  head parameter and of the pooled features, and maskrcnn_inference
  probabilities for other (predicted) labels.
* mask_head_paste.safetensors: paste_masks_in_image of 7 masks (28x28) onto a
  36x48 image for boxes inside, partially outside on every side, tiny and
  fractional; once with float64 boxes and once with float32 boxes (the box
  expansion then runs in float32).

    /root/torchvenv/bin/python tools/golden/make_mask_head_fixtures.py
"""

import torch
from safetensors.torch import save_file
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import (
    maskrcnn_inference,
    maskrcnn_loss,
    paste_masks_in_image,
    project_masks_on_boxes,
)
from torchvision.ops import MultiScaleRoIAlign

OUT = "tests/fixtures/golden"
torch.manual_seed(0)
C, NUM_CLASSES, IMG = 8, 5, (64, 80)

head = MaskRCNNHeads(C, [C] * 4, 1).double()
pred = MaskRCNNPredictor(C, C, NUM_CLASSES).double()
with torch.no_grad():
    for n, p in list(head.named_parameters()) + list(pred.named_parameters()):
        if n.endswith("bias"):
            p.uniform_(-0.1, 0.1)
t = {}
for n, p in head.named_parameters():
    t[f"roi_heads.mask_head.{n}"] = p.detach().clone()
for n, p in pred.named_parameters():
    t[f"roi_heads.mask_predictor.{n}"] = p.detach().clone()

# pooled features exactly as the mask branch gets them
feats = {str(i): torch.randn(2, C, IMG[0] // s, IMG[1] // s, dtype=torch.float64) for i, s in enumerate([4, 8, 16, 32])}
proposals = [
    torch.tensor([[3.2, 4.5, 40.1, 50.7], [10.0, 2.0, 70.5, 30.25], [0.0, 0.0, 79.0, 63.0]], dtype=torch.float64),
    torch.tensor([[20.3, 11.1, 35.9, 25.4], [5.5, 30.0, 60.0, 62.5], [44.0, 8.0, 78.2, 60.1]], dtype=torch.float64),
]
pool = MultiScaleRoIAlign(["0", "1", "2", "3"], 14, 2)
x = pool(feats, proposals, [IMG, IMG]).detach().requires_grad_()
t["features"] = x.detach().clone()
for i, p in enumerate(proposals):
    t[f"proposals{i}"] = p

# gt: 2 instances in image 0, 3 in image 1; rectangles and an ellipse
yy, xx = torch.meshgrid(torch.arange(IMG[0]), torch.arange(IMG[1]), indexing="ij")


def rect(x0, y0, x1, y1):
    return ((xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)).to(torch.uint8)


def ellipse(cx, cy, rx, ry):
    return (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1).to(torch.uint8)


gt_masks = [
    torch.stack([ellipse(22, 28, 16, 20), rect(12, 3, 68, 29) | ellipse(60, 20, 6, 5)]),
    torch.stack([rect(21, 12, 35, 25), ellipse(33, 46, 25, 14), rect(46, 10, 77, 58) ^ rect(55, 20, 65, 40)]),
]
gt_labels = [torch.tensor([3, 1]), torch.tensor([2, 4, 1])]
matched = [torch.tensor([0, 1, 0]), torch.tensor([0, 1, 2])]
for i in range(2):
    t[f"gt_masks{i}"] = gt_masks[i].contiguous()
    t[f"gt_labels{i}"] = gt_labels[i]
    t[f"matched{i}"] = matched[i]
    t[f"project{i}"] = project_masks_on_boxes(gt_masks[i], proposals[i], matched[i], 28)

logits = pred(head(x))
t["logits"] = logits.detach().clone()
loss = maskrcnn_loss(logits, proposals, gt_masks, gt_labels, matched)
loss.backward()
t["loss"] = loss.detach().reshape(())
for n, p in head.named_parameters():
    t[f"grad.roi_heads.mask_head.{n}"] = p.grad.clone()
for n, p in pred.named_parameters():
    t[f"grad.roi_heads.mask_predictor.{n}"] = p.grad.clone()
t["grad.features"] = x.grad.clone()

pred_labels = [torch.tensor([4, 0, 2]), torch.tensor([1, 3, 3])]
probs = maskrcnn_inference(logits.detach(), pred_labels)
for i in range(2):
    t[f"pred_labels{i}"] = pred_labels[i]
    t[f"probs{i}"] = probs[i].contiguous()
save_file({k: v.contiguous() for k, v in t.items()}, f"{OUT}/mask_head_train.safetensors", metadata={"torch": torch.__version__})
print({k: list(v.shape) for k, v in t.items()})

# pasting
p = {}
masks = torch.rand(7, 1, 28, 28, dtype=torch.float64)
boxes = torch.tensor(
    [
        [10.0, 12.0, 30.0, 30.0],  # inside
        [-8.7, -5.2, 20.3, 15.9],  # outside left/top
        [35.5, 20.1, 60.0, 46.6],  # outside right/bottom
        [-3.0, 20.0, 60.0, 26.0],  # wider than the image
        [33.3, 7.7, 33.9, 8.1],  # tiny (w, h < 1)
        [0.49, 0.51, 47.5, 35.5],  # whole image, fractional
        [25.0, -30.0, 28.5, 70.0],  # taller than the image
    ],
    dtype=torch.float64,
)
p["masks"] = masks
p["boxes"] = boxes
p["pasted"] = paste_masks_in_image(masks, boxes, (36, 48))
p["boxes_f32"] = (boxes + 0.37).float()
p["pasted_f32"] = paste_masks_in_image(masks, p["boxes_f32"], (36, 48))
save_file({k: v.contiguous() for k, v in p.items()}, f"{OUT}/mask_head_paste.safetensors", metadata={"torch": torch.__version__})
print({k: list(v.shape) for k, v in p.items()})
