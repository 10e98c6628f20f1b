#!/usr/bin/env python3
"""Generate the torchvision golden fixture of engine::ops::detection::
filter_proposals (engine/src/ops/detection/proposals/), read by its unit
test `matches_torchvision_filter_proposals`.

Run by hand (torch is never needed by `cargo test`; the file is committed):

    /path/to/python tools/golden/make_proposal_fixtures.py [--out tests/fixtures/golden]

(generated with torch 2.15.0, torchvision 0.29.2, safetensors 0.8.0)

torchvision's RegionProposalNetwork.filter_proposals(proposals, objectness,
image_shapes, num_anchors_per_level) runs on candidates already in the op's
segment order: per level, the logits are distinct and sorted decreasing
(so its per-level topk, with pre_nms_top_n >= every level, is the identity:
checked below), boxes on a 1/16 grid (so batched_nms' coordinate trick, up
to 4000 coordinates, decides as one NMS per level: the shifted
coordinates are exact). The candidates: boxes in overlapping clusters,
partly or entirely outside the image, tiny, with +inf and NaN coordinates;
logits on a 1/256 grid in [-8, 8], distinct within an image (torch's
unstable sort orders ties of different levels arbitrarily; the sigmoids
are many ulp apart), plus one +inf and one -inf in level 0. Every input
is drawn from a per-case seed (torch.manual_seed(crc32(case))).

detection_filter_proposals.safetensors, metadata "cases" = JSON list of
  {name, levels [[start, len], ...], image_sizes [[h, w], ...], min_size,
   score_thresh, nms_thresh, post_n}. Per case <c>:
  <c>.boxes            float32 [B, K, 4]  the candidates
  <c>.logits           float32 [B, K]     their logits
  <c>.<dt>.boxes.<b>   <dt> [n_b, 4]      image b's proposals (dt f32: the
  <c>.<dt>.scores.<b>  <dt> [n_b]         inputs as float32, f64: as float64)
"""

import argparse
import json
import os
import zlib

import torch
import torchvision
from safetensors.torch import save_file
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead

CASES = [
    # name, level lengths, image sizes (h, w), min_size, score_thresh, nms_thresh, post_n
    ("five_levels", [300, 200, 120, 60, 20], [(200, 304), (160, 240)], 1e-3, 0.0, 0.7, 1000),
    ("thresholds", [400, 250, 100], [(300, 400), (257, 129), (120, 200)], 2.0, 0.2, 0.5, 50),
    ("vanilla", [1500, 800], [(320, 320)], 0.5, 0.0, 0.6, 300),
]


def candidates(name, lens, sizes):
    torch.manual_seed(zlib.crc32(name.encode()))
    boxes, logits = [], []
    for h, w in sizes:
        img_boxes, img_logits = [], []
        # logits distinct within the image (torch's unstable sort orders
        # ties of different levels arbitrarily)
        pool = torch.randperm(4097).double() / 256 - 8
        used = 0
        for l, n in enumerate(lens):
            side = 8.0 * 2**l
            centers = torch.rand(6 + n // 20, 2) * torch.tensor([1.3 * w, 1.3 * h]) - torch.tensor(
                [0.15 * w, 0.15 * h]
            )
            c = centers[torch.randint(len(centers), (n,))] + torch.randn(n, 2) * 0.3 * side
            wh = side * (1.0 + torch.rand(n, 2) * 0.6)
            b = torch.cat([c - wh / 2, c + wh / 2], 1).double()
            for i in range(n):
                x, y = c[i].tolist()
                if i % 17 == 3:
                    b[i] = torch.tensor([x, y, x + 0.25, y + wh[i, 1].item()])
                elif i % 17 == 7:
                    b[i] = torch.tensor([w + 5.0, y, w + 40.0, y + 20.0])
                elif i % 17 == 11:
                    b[i, 2] = float("inf")
                elif i % 34 == 13:
                    b[i, 1] = float("nan")
            b = torch.where(torch.isfinite(b), torch.round(b * 16) / 16, b)
            # one +inf and one -inf in level 0
            grid = pool[used : used + n].clone()
            used += n
            if l == 0 and n >= 4:
                grid[0] = float("inf")
                grid[1] = float("-inf")
            order = torch.sort(grid, descending=True).indices
            img_boxes.append(b[order])
            img_logits.append(grid[order])
        boxes.append(torch.cat(img_boxes))
        logits.append(torch.cat(img_logits))
    return torch.stack(boxes).float(), torch.stack(logits).float()


def rpn(k, min_size, score_thresh, nms_thresh, post_n):
    r = RegionProposalNetwork(
        AnchorGenerator(),
        RPNHead(1, 3),
        0.7,
        0.3,
        256,
        0.5,
        dict(training=k, testing=k),
        dict(training=post_n, testing=post_n),
        nms_thresh,
        score_thresh,
    )
    r.min_size = min_size
    return r.eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/golden")
    args = ap.parse_args()
    tensors, meta = {}, []
    for name, lens, sizes, min_size, score_thresh, nms_thresh, post_n in CASES:
        boxes, logits = candidates(name, lens, sizes)
        k = sum(lens)
        levels, start = [], 0
        for n in lens:
            levels.append([start, n])
            start += n
        r = rpn(k, min_size, score_thresh, nms_thresh, post_n)
        # the per-level topk keeps the segment order
        idx = r._get_top_n_idx(logits, lens)
        assert torch.equal(idx, torch.arange(k).expand_as(idx)), name
        tensors[f"{name}.boxes"] = boxes.contiguous()
        tensors[f"{name}.logits"] = logits.contiguous()
        for dt, cast in [("f32", torch.float32), ("f64", torch.float64)]:
            with torch.no_grad():
                fb, fs = r.filter_proposals(
                    boxes.to(cast), logits.to(cast), [tuple(s) for s in sizes], lens
                )
            for b, (bx, sc) in enumerate(zip(fb, fs)):
                assert len(sc) > 0, (name, b)
                tensors[f"{name}.{dt}.boxes.{b}"] = bx.contiguous()
                tensors[f"{name}.{dt}.scores.{b}"] = sc.contiguous()
                if dt == "f32":
                    print(f"{name} image {b}: {len(sc)} proposals of {k}")
        meta.append(
            dict(
                name=name,
                levels=levels,
                image_sizes=[list(s) for s in sizes],
                min_size=min_size,
                score_thresh=score_thresh,
                nms_thresh=nms_thresh,
                post_n=post_n,
            )
        )
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "detection_filter_proposals.safetensors")
    save_file(
        tensors,
        path,
        metadata={
            "cases": json.dumps(meta),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
        },
    )
    print("wrote", path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    main()
