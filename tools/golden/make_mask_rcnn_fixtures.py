#!/usr/bin/env python3
"""Generate the torchvision golden fixture for the assembled Mask R-CNN
(models/src/detection/mask_rcnn.rs), read by models/tests/mask_rcnn.rs.

Run by hand (torch is never needed by `cargo test`; the file is committed):

    /root/torchvenv/bin/python tools/golden/make_mask_rcnn_fixtures.py [--out tests/fixtures/golden]

Model: torchvision's MaskRCNN (eval mode, float32) on a narrow ResNet-18 body
(torchvision BasicBlocks with FrozenBatchNorm2d, stage widths 16, 32, 64, 128)
wrapped by torchvision's own `_resnet_fpn_extractor(body, trainable_layers=3)`
(what `resnet_fpn_backbone('resnet18', trainable_layers=3)` does, at 1/4
width so the fixture stays small), FPN 32 channels, TwoMLPHead(32*7*7, 64),
FastRCNNPredictor(64, 4), MaskRCNNHeads(32, [32]*4, 1), MaskRCNNPredictor(32,
32, 4); transform min_size 96, max_size 160, ImageNet mean / std.

Every parameter and buffer is set by the counter hash of
tools/golden/export_resnet50.py (`hash_init_value`, keyed by the torchvision
state-dict name), so the weights are not stored: the Rust test rebuilds them
from the names.

Inputs: two images with values (u + 1) / 2, u = hash_uniform("image<b>"),
of sizes 3x96x128 and 3x80x112 (the second is resized to 96x134).

File mask_rcnn_eval.safetensors, metadata "image_sizes" (after the
transform), "original_sizes", "param_names" (name -> shape of the
torchvision state dict, weights not stored).
Tensors:
  images                float32 [2, 3, 96, 160] transformed, padded batch
  proposals.<b>         float32 [20, 4] the first 20 RPN proposals of image b
  proposal_count.<b>    int64 [] number of RPN proposals of image b
  boxes.<b>, scores.<b>, labels.<b>   final detections (original size)
  boxes64.<b>, scores64.<b>           the same model run in float64 (labels equal)
  train.<loss>          float32 [] torchvision's loss_classifier, loss_box_reg,
                        loss_mask, loss_objectness, loss_rpn_box_reg of a
                        fresh model in train mode on `images`, gt RECTS /
                        RECT_LABELS per image, every anchor / proposal sampled
  mask_sums.<b>         float32 [K_b] sum of each pasted mask
  masks.<b>             float32 [min(K_b, 4), 1, H0, W0] the first pasted masks
"""

import argparse
import json
import os
import sys
from collections import OrderedDict

import torch
import torch.nn as nn
from safetensors.torch import save_file
from torchvision.models.detection.backbone_utils import BackboneWithFPN, _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNN, MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.resnet import BasicBlock
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_resnet50 import hash_init_, hash_uniform  # noqa: E402

WIDTH = 16
FPN = 32
REP = 64
NUM_CLASSES = 4
ORIG = [(96, 128), (80, 112)]
KEEP_MASKS = 4


class Body(nn.Module):
    """torchvision's ResNet-18 feature body (same module names) at `width`."""

    def __init__(self, width):
        super().__init__()
        w = [width, 2 * width, 4 * width, 8 * width]
        self.conv1 = nn.Conv2d(3, w[0], 7, 2, 3, bias=False)
        self.bn1 = FrozenBatchNorm2d(w[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = w[0]
        for i, planes in enumerate(w):
            blocks = []
            for b in range(2):
                stride = 2 if (b == 0 and i > 0) else 1
                down = None
                if stride != 1 or cin != planes:
                    down = nn.Sequential(
                        nn.Conv2d(cin, planes, 1, stride, bias=False), FrozenBatchNorm2d(planes)
                    )
                blocks.append(BasicBlock(cin, planes, stride, down, norm_layer=FrozenBatchNorm2d))
                cin = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.inplanes = cin  # read by _resnet_fpn_extractor (in_channels_stage2 = inplanes // 8)


def head_scale(name):
    """Extra factor on the hash init of the box predictors: at plain kaiming
    scale the deltas are so large that every box is clipped to the whole
    image (NMS then leaves a handful), and the class logits so large that
    every score is exactly 1.0 (ties: the order would be arbitrary). Same
    factors in the Rust test."""
    if name.startswith(("rpn.head.bbox_pred.", "roi_heads.box_predictor.bbox_pred.")):
        return 0.05
    if name.startswith("roi_heads.box_predictor.cls_score."):
        return 0.01
    return 1.0


def build():
    body = Body(WIDTH)
    # torchvision's own freezing for trainable_layers = 3 (conv1, bn1, layer1
    # frozen); its FPN has 256 channels, so the same body is re-wrapped below
    # with a 32-channel FPN (the frozen flags stay on the shared modules).
    _resnet_fpn_extractor(body, trainable_layers=3)
    b = BackboneWithFPN(
        body, {f"layer{i + 1}": str(i) for i in range(4)},
        [WIDTH, 2 * WIDTH, 4 * WIDTH, 8 * WIDTH], FPN, extra_blocks=LastLevelMaxPool(),
    )
    # _resnet_fpn_extractor froze conv1 / bn1 / layer1 on `body` in place;
    # BackboneWithFPN reuses the same modules, so the freezing carries over.
    model = MaskRCNN(
        b,
        num_classes=None,
        min_size=96,
        max_size=160,
        box_head=TwoMLPHead(FPN * 7 * 7, REP),
        box_predictor=FastRCNNPredictor(REP, NUM_CLASSES),
        mask_head=MaskRCNNHeads(FPN, [FPN] * 4, 1),
        mask_predictor=MaskRCNNPredictor(FPN, FPN, NUM_CLASSES),
    )
    hash_init_(model)
    with torch.no_grad():
        for n, t in model.named_parameters():
            t.mul_(head_scale(n))
    return model.eval()


# gt of the train case, per image (at its transformed size): filled rectangles
RECTS = [[4, 6, 30, 40], [20, 10, 50, 30]]
RECT_LABELS = [1, 3]


def train_losses(il):
    """The five losses of a fresh hashed model in train mode on the stored
    batch, skipping the transform (the Rust side gets the same batch).
    Both samplers take every eligible anchor / proposal
    (batch_size_per_image = 10**9), so no randomness is left."""
    model = build().train()
    model.rpn.fg_bg_sampler.batch_size_per_image = 10**9
    model.roi_heads.fg_bg_sampler.batch_size_per_image = 10**9
    targets = []
    for h, w in il.image_sizes:
        masks = torch.zeros(len(RECTS), h, w, dtype=torch.uint8)
        for g, (x0, y0, x1, y1) in enumerate(RECTS):
            masks[g, y0:y1, x0:x1] = 1
        targets.append({
            "boxes": torch.tensor(RECTS, dtype=torch.float32),
            "labels": torch.tensor(RECT_LABELS, dtype=torch.int64),
            "masks": masks,
        })
    features = model.backbone(il.tensors)
    proposals, rpn_losses = model.rpn(il, features, targets)
    _, losses = model.roi_heads(features, proposals, il.image_sizes, targets)
    losses.update(rpn_losses)
    print({k: float(v.detach()) for k, v in losses.items()})
    return {k: v.detach().reshape(()) for k, v in losses.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "../../tests/fixtures/golden"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = build()
    images = [
        ((torch.from_numpy(hash_uniform(f"image{b}", 3 * h * w)).float() + 1.0) / 2.0).reshape(3, h, w)
        for b, (h, w) in enumerate(ORIG)
    ]
    captured = {}

    def grab_images(_m, _inp, out):
        captured["images"] = out[0]

    def grab_rpn(_m, _inp, out):
        captured["proposals"] = [p.detach().clone() for p in out[0]]

    model.transform.register_forward_hook(grab_images)
    model.rpn.register_forward_hook(grab_rpn)
    with torch.no_grad():
        dets = model(images)
    il = captured["images"]
    # the exact answer for the same weights, to size float32's own error
    with torch.no_grad():
        dets64 = build().double()([i.double() for i in images])
    out = OrderedDict()
    out["images"] = il.tensors.contiguous()
    for b, d in enumerate(dets):
        p = captured["proposals"][b]
        out[f"proposals.{b}"] = p[:20].contiguous()
        out[f"proposal_count.{b}"] = torch.tensor(p.shape[0], dtype=torch.int64)
        out[f"boxes.{b}"] = d["boxes"].contiguous()
        out[f"scores.{b}"] = d["scores"].contiguous()
        out[f"labels.{b}"] = d["labels"].contiguous()
        assert torch.equal(dets64[b]["labels"], d["labels"]), "float64 run detects other classes"
        out[f"boxes64.{b}"] = dets64[b]["boxes"].contiguous()
        out[f"scores64.{b}"] = dets64[b]["scores"].contiguous()
        out[f"mask_sums.{b}"] = d["masks"].sum(dim=(1, 2, 3)).contiguous()
        out[f"masks.{b}"] = d["masks"][:KEEP_MASKS].contiguous()
        print(f"image {b}: {p.shape[0]} proposals, {d['boxes'].shape[0]} detections")
    names = OrderedDict(
        (n, list(t.shape))
        for n, t in list(model.named_parameters()) + list(model.named_buffers())
        if not n.endswith("num_batches_tracked")
    )
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    meta = {
        "image_sizes": json.dumps([list(s) for s in il.image_sizes]),
        "original_sizes": json.dumps([list(s) for s in ORIG]),
        "param_names": json.dumps(names),
        "trainable": json.dumps(trainable),
    }
    for k, v in train_losses(il).items():
        out[f"train.{k}"] = v
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "mask_rcnn_eval.safetensors")
    save_file(out, path, metadata=meta)
    print(path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    main()
