#!/usr/bin/env python3
"""Generate the full-width torchvision Mask R-CNN ResNet-50-FPN golden
fixture read by models/tests/mask_rcnn_r50fpn.rs.

Run by hand (torch is never needed by `cargo test`; the output is committed):

    python3 tools/golden/make_r50fpn_fixtures.py [--out tests/fixtures/golden]

Model: torchvision's `maskrcnn_resnet50_fpn` (v1) architecture as it is built
for trained weights (`resnet_fpn_backbone('resnet50', norm_layer=
FrozenBatchNorm2d, trainable_layers=3)` under `MaskRCNN`, 91 classes: the
state dict of torchvision's COCO checkpoint), transform min_size 256,
max_size 320 so the one 3x256x320 image is not resized. Every parameter and
buffer is the counter hash of tools/golden/export_resnet50.py keyed by its
torchvision name, times `scale(name)` below (the Rust test applies the same
factors), so the 44M weights are not stored.

Image: (u + 1) / 2, u = hash_uniform("r50fpn.image", 3*256*320), which the
transform normalises with ImageNet's mean / std in float32 (the Rust test
does the same; the batch is not stored, only its sum as a check).

File r50fpn.safetensors, metadata "param_names" (name -> shape), "trainable"
(names with requires_grad), "grad_names" (the trainable names, in the order of
the grad.* rows), "full_grads" (names whose whole gradient is stored).
Tensors (torch float32 unless said):
  image_sum              [] float64 sum of the transformed [1, 3, 256, 320] batch
  boxes, scores, labels  eval detections (labels int64)
  boxes64, scores64      the same in float64 (labels equal)
  mask_sums              [K] sum of each pasted mask
  masks0                 [64, 80] the first pasted mask at every 4th row and column
  train.<loss>           [] the five losses of train mode on `images`, gt
                         RECTS / RECT_LABELS, every anchor / proposal sampled
  train64.<loss>         the same computed in float64
  grad.norm, grad64.norm [P] L2 norm of each trainable gradient (f32 / f64 run)
  grad.sum,  grad64.sum  [P] sum of each; grad.abs_sum: sum of |g| (f64 run)
  grad.sample, grad64.sample [P, 16] the elements at sample_positions(name)
  grad64.full.<name>     whole float64 gradient of the `full_grads` names
"""

import json
import os
import sys
from collections import OrderedDict

import numpy as np
import torch
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.misc import FrozenBatchNorm2d

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from export_resnet50 import hash_bits, hash_init_, hash_uniform  # noqa: E402
from torch_common import Writer, out_dir_arg  # noqa: E402

H, W = 256, 320
NUM_CLASSES = 91
SAMPLES = 16
# gt of the train case (the image is not resized): boxes x1, y1, x2, y2 with
# filled-rectangle masks
RECTS = [[20, 30, 150, 200], [120, 60, 300, 180], [200, 150, 260, 250]]
RECT_LABELS = [1, 18, 62]
FULL_GRADS = [
    "backbone.fpn.inner_blocks.0.0.bias",
    "backbone.fpn.layer_blocks.3.0.bias",
    "rpn.head.cls_logits.weight",
    "rpn.head.bbox_pred.bias",
    "roi_heads.box_predictor.bbox_pred.bias",
    "roi_heads.mask_predictor.mask_fcn_logits.bias",
    "roi_heads.box_head.fc7.bias",
]


def scale(name):
    """Extra factor on the hash init (same in the Rust test): the box
    deltas as in make_mask_rcnn_fixtures.py (decoded boxes inside the image),
    the class logits so that some of 91 classes score above the 0.05
    threshold without saturating (measured logit std ~2), and each
    bottleneck's last BN so the 16 residual additions of a full-width
    ResNet-50 keep the activations' std near 1.5."""
    if name.startswith(("rpn.head.bbox_pred.", "roi_heads.box_predictor.bbox_pred.")):
        return 0.05
    if name.startswith("roi_heads.box_predictor.cls_score."):
        return 0.2
    if name.startswith("backbone.body.layer") and name.endswith(("bn3.weight", "bn3.bias")):
        return 0.2
    return 1.0


def build(dtype=torch.float32):
    backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None,
                                   norm_layer=FrozenBatchNorm2d, trainable_layers=3)
    model = MaskRCNN(backbone, num_classes=NUM_CLASSES, min_size=H, max_size=W)
    hash_init_(model)
    with torch.no_grad():
        for n, t in list(model.named_parameters()) + list(model.named_buffers()):
            if not n.endswith("num_batches_tracked"):
                t.mul_(scale(n))
    return model.to(dtype).eval()


def sample_positions(name, numel):
    return (hash_bits("sample:" + name, SAMPLES) % np.uint64(numel)).astype(np.int64)


def targets(dtype):
    masks = torch.zeros(len(RECTS), H, W, dtype=torch.uint8)
    for g, (x0, y0, x1, y1) in enumerate(RECTS):
        masks[g, y0:y1, x0:x1] = 1
    return [{"boxes": torch.tensor(RECTS, dtype=dtype),
             "labels": torch.tensor(RECT_LABELS, dtype=torch.int64), "masks": masks}]


def train_step(images, dtype):
    """The five losses and the gradients of their sum, skipping the
    transform (the Rust side gets the same batch); both samplers take every
    eligible anchor / proposal, so no randomness is left."""
    from torchvision.models.detection.image_list import ImageList

    model = build(dtype).train()
    model.rpn.fg_bg_sampler.batch_size_per_image = 10**9
    model.roi_heads.fg_bg_sampler.batch_size_per_image = 10**9
    il = ImageList(images.to(dtype), [(H, W)])
    t = targets(dtype)
    features = model.backbone(il.tensors)
    proposals, losses = model.rpn(il, features, t)
    _, roi_losses = model.roi_heads(features, proposals, il.image_sizes, t)
    losses.update(roi_losses)
    sum(losses.values()).backward()
    grads = OrderedDict((n, p.grad.detach().clone()) for n, p in model.named_parameters()
                        if p.requires_grad)
    print(dtype, {k: float(v.detach()) for k, v in losses.items()})
    return {k: v.detach().reshape(()) for k, v in losses.items()}, grads


def main():
    out_dir = out_dir_arg(__doc__.splitlines()[0], "tests/fixtures/golden")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model = build()
    image = ((torch.from_numpy(hash_uniform("r50fpn.image", 3 * H * W)).float() + 1.0) / 2.0)
    image = image.reshape(3, H, W)
    captured = {}
    model.transform.register_forward_hook(lambda _m, _i, out: captured.update(images=out[0]))
    with torch.no_grad():
        det = model([image])[0]
        det64 = build(torch.float64)([image.double()])[0]
    images = captured["images"].tensors
    assert tuple(images.shape) == (1, 3, H, W), images.shape
    assert torch.equal(det["labels"], det64["labels"]), "float64 run detects other classes"
    print(f"{det['boxes'].shape[0]} detections, scores {det['scores'][:5].tolist()}")
    out = OrderedDict(image_sum=images.double().sum())
    for k in ("boxes", "scores", "labels"):
        out[k] = det[k].contiguous()
    out["boxes64"] = det64["boxes"].contiguous()
    out["scores64"] = det64["scores"].contiguous()
    out["mask_sums"] = det["masks"].sum(dim=(1, 2, 3)).contiguous()
    out["masks0"] = det["masks"][0, 0, ::4, ::4].contiguous()

    losses, grads = train_step(images, torch.float32)
    losses64, grads64 = train_step(images, torch.float64)
    for k in losses:
        out[f"train.{k}"] = losses[k]
        out[f"train64.{k}"] = losses64[k].float()
    names = list(grads)
    pos = {n: torch.from_numpy(sample_positions(n, grads[n].numel())) for n in names}
    for tag, gs in (("grad", grads), ("grad64", grads64)):
        out[f"{tag}.norm"] = torch.stack([gs[n].double().norm() for n in names])
        out[f"{tag}.sum"] = torch.stack([gs[n].double().sum() for n in names])
        out[f"{tag}.sample"] = torch.stack([gs[n].double().flatten()[pos[n]] for n in names])
    out["grad64.abs_sum"] = torch.stack([grads64[n].abs().sum() for n in names])
    for n in FULL_GRADS:
        out[f"grad64.full.{n}"] = grads64[n].contiguous()
    e32 = max(float(((grads[n].double() - grads64[n]).norm() / grads64[n].norm().clamp_min(1e-30)))
              for n in names)
    print(f"torch float32 vs float64: worst relative gradient error (L2) {e32:.2e}")
    param_names = OrderedDict(
        (n, list(t.shape))
        for n, t in list(model.named_parameters()) + list(model.named_buffers())
        if not n.endswith("num_batches_tracked"))
    w = Writer(out_dir)
    w.save("r50fpn", out, {
        "param_names": param_names,
        "trainable": names,
        "grad_names": names,
        "full_grads": FULL_GRADS,
        "samples": SAMPLES,
    })
    w.report()


if __name__ == "__main__":
    main()
