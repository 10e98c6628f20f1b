#!/usr/bin/env python3
"""Generate the torchvision golden fixture for the whole Region Proposal
Network (models/src/detection/rpn.rs), read by models/tests/rpn_module.rs.

Run by hand (torch is never needed by `cargo test`; the file is committed):

    /root/torchvenv/bin/python tools/golden/make_rpn_module_fixtures.py [--out tests/fixtures/golden]

Setup: torchvision's RegionProposalNetwork with the FPN anchor generator
(sizes 32..512 on five levels, ratios 0.5/1/2) and an RPNHead(16, 3), run in
float64 on a batch of 2 images padded to 128 x 160 with image sizes
(128, 150) and (120, 160), on five random feature levels of 16 channels at
strides 4, 8, 16, 32, 64 (32x40, 16x20, 8x10, 4x5, 2x3: the last as FPN's
max-pool level). Features and head weights are drawn in float32 from
torch.manual_seed(0) (so the stored f32 features are exact) and used in
float64. Head weights are drawn wider than torchvision's N(0, 0.01) init so
that deltas and scores spread out: conv N(0, 0.05), cls_logits and bbox_pred
N(0, 0.1), biases N(0, 0.05).

In train cases batch_size_per_image is 10**6, more than the anchors, so the
sampler takes every eligible anchor and the losses do not depend on
torch.randperm.

File rpn_module_fpn.safetensors, metadata "cases" = JSON list of
{name, training, pre_nms_top_n, post_nms_top_n, batch_size_per_image,
gt_images (indices of the images that keep their gt boxes)}, plus
"image_sizes", "padded_hw", "gt_counts". Tensors:
  features.<l>                 float32 [2, 16, H_l, W_l]
  rpn.head.<param>             float64 (exactly f32 values) head weights,
                               torchvision names (conv.0.0.weight, ...)
  gt.boxes                     float32 [G, 4], images' boxes concatenated
                               (gt_counts per image)
  <case>.boxes.<b>             float64 [K_b, 4] proposals of image b
  <case>.scores.<b>            float64 [K_b]    their sigmoid scores
  <case>.loss_objectness       float32 []       (train cases) as torchvision
                               returns it: its labels are float32 whatever
                               the features' dtype, so BCE computes in
                               float64 and rounds the result to float32
  <case>.loss_objectness_f64   float64 []       the same loss with the labels
                               cast to float64 (F64Rpn below), unrounded
  <case>.loss_rpn_box_reg      float64 []
  <case>.grad.<param>          float64, grad of loss_objectness +
                               loss_rpn_box_reg w.r.t. rpn.head.<param>
"""

import argparse
import json
import os

import torch
from safetensors.torch import save_file
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead

C = 16
PADDED = (128, 160)
IMAGE_SIZES = [(128, 150), (120, 160)]
GRIDS = [(32, 40), (16, 20), (8, 10), (4, 5), (2, 3)]
GT = [
    [[10.0, 20.0, 60.0, 50.0], [40.0, 30.0, 120.0, 110.0], [100.0, 60.0, 148.0, 126.0], [16.5, 70.0, 48.0, 101.5]],
    [[0.0, 0.0, 32.0, 32.0], [50.0, 40.0, 90.0, 120.0], [70.0, 10.0, 158.0, 60.0], [5.0, 80.0, 45.0, 118.0]],
]
CASES = [
    dict(name="eval_default", training=False, pre_nms_top_n=1000, post_nms_top_n=1000,
         batch_size_per_image=256, gt_images=[0, 1]),
    dict(name="eval_small", training=False, pre_nms_top_n=150, post_nms_top_n=40,
         batch_size_per_image=256, gt_images=[0, 1]),
    dict(name="train_all", training=True, pre_nms_top_n=2000, post_nms_top_n=2000,
         batch_size_per_image=10**6, gt_images=[0, 1]),
    # image 1 is a background image (no gt boxes); post-NMS top-n cuts
    dict(name="train_small_bg", training=True, pre_nms_top_n=300, post_nms_top_n=60,
         batch_size_per_image=10**6, gt_images=[0]),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/golden")
    args = ap.parse_args()
    torch.manual_seed(0)
    feats32 = [torch.randn(2, C, h, w, dtype=torch.float32) for h, w in GRIDS]
    head = RPNHead(C, 3).double()
    stds = {"conv.0.0.weight": 0.05, "conv.0.0.bias": 0.05, "cls_logits.weight": 0.1,
            "cls_logits.bias": 0.05, "bbox_pred.weight": 0.1, "bbox_pred.bias": 0.05}
    params = dict(head.named_parameters())
    assert sorted(params) == sorted(stds), sorted(params)
    with torch.no_grad():
        for name in sorted(stds):
            p = params[name]
            p.copy_((torch.randn(p.shape, dtype=torch.float32) * stds[name]).double())

    out = {f"features.{l}": f.contiguous() for l, f in enumerate(feats32)}
    for name, p in params.items():
        out[f"rpn.head.{name}"] = p.detach().clone().contiguous()
    out["gt.boxes"] = torch.tensor([b for img in GT for b in img], dtype=torch.float32)

    anchor_gen = AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)
    images = ImageList(torch.zeros(2, 3, *PADDED, dtype=torch.float64), IMAGE_SIZES)
    for case in CASES:
        rpn = RegionProposalNetwork(
            anchor_gen, head, 0.7, 0.3, case["batch_size_per_image"], 0.5,
            dict(training=case["pre_nms_top_n"], testing=case["pre_nms_top_n"]),
            dict(training=case["post_nms_top_n"], testing=case["post_nms_top_n"]),
            0.7, score_thresh=0.0,
        )
        rpn.train(case["training"])
        feats = {str(l): f.double() for l, f in enumerate(feats32)}
        targets = [
            dict(boxes=torch.tensor(GT[b] if b in case["gt_images"] else [], dtype=torch.float64).reshape(-1, 4))
            for b in range(2)
        ]
        head.zero_grad()
        boxes, losses = rpn(images, feats, targets if case["training"] else None)
        n = case["name"]
        for b in range(2):
            # the proposals are detached; scores are recomputed the same way
            out[f"{n}.boxes.{b}"] = boxes[b].detach().contiguous()
        scores = proposal_scores(rpn, images, feats)
        for b in range(2):
            out[f"{n}.scores.{b}"] = scores[b].contiguous()
            assert scores[b].shape[0] == boxes[b].shape[0]
        if case["training"]:
            lo, lb = losses["loss_objectness"], losses["loss_rpn_box_reg"]
            (lo + lb).backward()
            out[f"{n}.loss_objectness"] = lo.detach().reshape(())
            out[f"{n}.loss_rpn_box_reg"] = lb.detach().reshape(())
            for name, p in params.items():
                out[f"{n}.grad.{name}"] = p.grad.detach().clone().contiguous()
            rpn64 = F64Rpn(
                anchor_gen, head, 0.7, 0.3, case["batch_size_per_image"], 0.5,
                dict(training=case["pre_nms_top_n"], testing=case["pre_nms_top_n"]),
                dict(training=case["post_nms_top_n"], testing=case["post_nms_top_n"]),
                0.7, score_thresh=0.0,
            )
            rpn64.train(True)
            _, losses64 = rpn64(images, feats, targets)
            lo64 = losses64["loss_objectness"]
            assert lo64.dtype == torch.float64
            assert abs(lo64.item() - lo.item()) <= 1e-7 * abs(lo64.item())
            assert losses64["loss_rpn_box_reg"].item() == lb.item()
            out[f"{n}.loss_objectness_f64"] = lo64.detach().reshape(())
        print(n, [tuple(b.shape) for b in boxes], {k: v.item() for k, v in losses.items()})

    meta = {
        "cases": json.dumps(CASES),
        "image_sizes": json.dumps(IMAGE_SIZES),
        "padded_hw": json.dumps(PADDED),
        "gt_counts": json.dumps([len(g) for g in GT]),
    }
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "rpn_module_fpn.safetensors")
    save_file(out, path, metadata=meta)
    print(path, os.path.getsize(path), "bytes")


class F64Rpn(RegionProposalNetwork):
    """torchvision's RPN with its float32 labels cast to float64, so that
    loss_objectness is not rounded to float32."""

    def compute_loss(self, objectness, pred_bbox_deltas, labels, regression_targets):
        labels = [l.to(torch.float64) for l in labels]
        return super().compute_loss(objectness, pred_bbox_deltas, labels, regression_targets)


def proposal_scores(rpn, images, feats):
    """The scores torchvision's filter_proposals computes alongside the
    boxes (RegionProposalNetwork.forward returns only the boxes)."""
    with torch.no_grad():
        features = list(feats.values())
        objectness, deltas = rpn.head(features)
        anchors = rpn.anchor_generator(images, features)
        num_per_level = [o[0].shape[0] * o[0].shape[1] * o[0].shape[2] for o in objectness]
        from torchvision.models.detection.rpn import concat_box_prediction_layers

        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        proposals = rpn.box_coder.decode(deltas, anchors).view(len(anchors), -1, 4)
        _, scores = rpn.filter_proposals(proposals, objectness, images.image_sizes, num_per_level)
    return scores


if __name__ == "__main__":
    main()
