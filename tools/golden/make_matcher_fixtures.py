#!/usr/bin/env python3
"""Generate torchvision golden fixtures for slmlp's matching op
(`engine::ops::detection::match_boxes`), read by engine/tests/match_boxes.rs.

Run by hand (torch is never needed by `cargo test`; the files are committed):

    python3 tools/golden/make_matcher_fixtures.py [--out tests/fixtures/golden]

torchvision's `Matcher` (torchvision/models/detection/_utils.py) on a
[G, N] quality matrix, with the RPN's rule (0.7, 0.3, allow low-quality
matches) and the ROI heads' (0.5, 0.5, without), each in float64, float32
and bfloat16 (torch compares a tensor with a Python-float threshold in the
tensor's dtype); then the two label rules: the RPN's
`assign_targets_to_anchors` (matched -> 1, below -> 0, between -> -1; torch
keeps them as float32, stored here as int64) and the ROI heads'
`assign_targets_to_proposals` (gt_labels[matched], below -> 0, between -> -1).

Cases:
  detection_matcher_grid: 6 gt x 400 predictions on a 1/32 grid with ties
    in rows and columns (a row's maximum repeated, columns whose maximum
    two gts share), columns below 0.3 and between the thresholds, and gt 2
    whose row stays below 0.3 (matched only as a low-quality match), values
    at 0.69921875 (bf16's 0.7) and just below 0.5.
  detection_matcher_iou: torchvision.ops.box_iou of 9 gt boxes against 1500
    anchor-like boxes (3 sizes x 3 aspect ratios on a stride-16 grid, some
    duplicated): realistic IoU, including gts no anchor reaches 0.7.
  detection_matcher_nan: the grid case with NaN in a few entries (a column
    whose first maximum is NaN; a row whose maximum is NaN). torch's CPU
    max(dim) returns the first NaN; NaN == NaN is false.
Keys:
  in.quality            float64 [G, N]
  in.quality_f32        float32 [G, N] (the same cast by torch)
  in.quality_bf16       bfloat16 [G, N] (the same cast by torch)
  in.gt_labels          int64 [G]
  matches.<rule>.<dt>   int64 [N]: Matcher's output, rule in (rpn, roi),
                        dt in (f64, f32, bf16)
  anchors.<rule>.<dt>   int64 [N]: the RPN label rule on those matches
  proposals.<rule>.<dt> int64 [N]: the ROI heads' label rule on them
  params: rules {name: [high, low, allow_low_quality_matches]}.
"""

import os
import sys

import torch
import torchvision
from torchvision.models.detection._utils import Matcher
from torchvision.ops import box_iou

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from torch_common import F32, F64, Writer, out_dir_arg, seed_for  # noqa: E402

RULES = {"rpn": (0.7, 0.3, True), "roi": (0.5, 0.5, False)}
DTYPES = {"f64": F64, "f32": F32, "bf16": torch.bfloat16}


def anchor_labels(matched):
    """torchvision RegionProposalNetwork.assign_targets_to_anchors."""
    labels = (matched >= 0).to(dtype=torch.float32)
    labels[matched == Matcher.BELOW_LOW_THRESHOLD] = 0.0
    labels[matched == Matcher.BETWEEN_THRESHOLDS] = -1.0
    return labels.to(torch.int64)


def proposal_labels(matched, gt_labels):
    """torchvision RoIHeads.assign_targets_to_proposals."""
    clamped = matched.clamp(min=0)
    labels = gt_labels[clamped].to(dtype=torch.int64)
    labels[matched == Matcher.BELOW_LOW_THRESHOLD] = 0
    labels[matched == Matcher.BETWEEN_THRESHOLDS] = -1
    return labels


def grid_quality():
    g, n = 6, 400
    q = (torch.rand(g, n, dtype=F64) * 32).floor() / 32  # ties everywhere
    q[:, : n // 4] *= 0.25  # a block of columns below 0.3
    q[2] = (torch.rand(n, dtype=F64) * 8).floor() / 32  # gt 2: below 0.3
    q[2, 17] = 0.28125  # gt 2's best, once (a low-quality match)...
    q[2, 203] = 0.28125  # ...and a tie in its row
    q[0, 40] = q[0].max()  # gt 0's maximum repeated
    q[0, 41] = q[1, 41] = 0.96875  # a column whose max two gts share
    q[3, 50] = q[4, 50] = 0.5  # ... at the ROI threshold
    q[:, 60] = 0.0
    q[5, 60] = 0.69921875  # bf16's 0.7: foreground in bf16 only
    q[:, 61] = 0.0
    q[1, 61] = 0.49999  # just below 0.5
    q[:, 62] = 0.0
    q[4, 62] = 0.3  # at the low threshold
    return q


def iou_quality():
    stride, sizes, ratios = 16, (32.0, 64.0, 128.0), (0.5, 1.0, 2.0)
    anchors = []
    for y in range(0, 160, stride):
        for x in range(0, 256, stride):
            for s in sizes:
                for r in ratios:
                    h, w = s * r ** 0.5, s / r ** 0.5
                    cx, cy = x + stride / 2, y + stride / 2
                    anchors.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    anchors = torch.tensor(anchors[:1490], dtype=F64)
    anchors = torch.cat([anchors, anchors[100:110]])  # duplicates: ties
    xy = torch.rand(9, 2, dtype=F64) * torch.tensor([220.0, 130.0], dtype=F64)
    wh = 8.0 + torch.rand(9, 2, dtype=F64) * 120.0
    gt = torch.cat([xy, xy + wh], dim=1)
    gt[8] = torch.tensor([3.0, 4.0, 9.0, 11.0], dtype=F64)  # tiny: no anchor reaches 0.7
    return box_iou(gt, anchors)


def case(w, name, q):
    g = q.shape[0]
    gt_labels = torch.randint(1, 91, (g,), dtype=torch.int64)
    tensors = {
        "in.quality": q,
        "in.quality_f32": q.to(F32),
        "in.quality_bf16": q.to(torch.bfloat16),
        "in.gt_labels": gt_labels,
    }
    for rule, (high, low, allow) in RULES.items():
        matcher = Matcher(high, low, allow_low_quality_matches=allow)
        for dt, dtype in DTYPES.items():
            matched = matcher(q.to(dtype))
            tensors[f"matches.{rule}.{dt}"] = matched
            tensors[f"anchors.{rule}.{dt}"] = anchor_labels(matched)
            tensors[f"proposals.{rule}.{dt}"] = proposal_labels(matched, gt_labels)
    w.save_op(name, "match_boxes", {"rules": {k: list(v) for k, v in RULES.items()}}, tensors)


def main():
    w = Writer(out_dir_arg(__doc__.split("\n")[0], "tests/fixtures/golden"),
               torchvision=torchvision.__version__)
    seed_for("detection_matcher_grid")
    case(w, "detection_matcher_grid", grid_quality())
    seed_for("detection_matcher_iou")
    case(w, "detection_matcher_iou", iou_quality())
    seed_for("detection_matcher_nan")
    q = grid_quality()
    q[3, 70] = float("nan")  # column 70's first maximum is NaN (if it comes first)
    q[0, 71] = float("nan")  # column 71: NaN in the first row
    q[4, 300] = float("nan")  # row 4's maximum becomes NaN
    case(w, "detection_matcher_nan", q)
    w.report()


if __name__ == "__main__":
    main()
