#!/usr/bin/env python3
"""Generate torchvision golden fixtures for slmlp's detection ops (RoIAlign,
NMS, batched NMS, box IoU), read by tests/golden_detection.rs.

Run by hand (torch is never needed by `cargo test`; the files are committed):

    /path/to/python tools/golden/make_detection_fixtures.py [--out tests/fixtures/golden]

Conventions (as make_fixtures.py, except the dtype): every float input is drawn
in float32 from a per-case seed (torch.manual_seed(crc32(case))) so the f32 and
f64 engine paths see the same values; the reference results are computed and
stored in **float64** (the tests compare f64 to 1e-6 relative). Keys:

roi_align cases `detection_roi_align_a{0,1}_sr{m1,1,2,4}_sc{1,4,16}`
(aligned, sampling_ratio with m1 = -1, spatial_scale = 1/sc):
  in.x [N, C, H, W], in.boxes [K, 5] (batch, x1, y1, x2, y2 in image coords)
  and grad_out [K, C, ph, pw] are stored as float32 (they are drawn in f32, so
  the f64 runs use exactly these values, cast up); out and grad.x (gradient
  of sum(out * grad_out)) are float64,
  out_f32 / grad_f32.x (stored as float32): the same computed by torchvision
  in float32 from the same (f32-exact) inputs.
  params: output_size, spatial_scale, sampling_ratio, aligned.
nms cases `detection_nms_*`: in.boxes [K, 4], in.scores [K] (f64, or f32 for
  the *_f32 cases, computed in that dtype), keep.<i> (int64) = torchvision.ops.nms
  with params.thresholds[i].
batched_nms cases `detection_batched_nms_*`: as nms plus in.idxs (int64).
box_iou case `detection_box_iou`: in.a [N, 4], in.b [M, 4], out [N, M].
"""

import os
import sys

import torch
import torchvision
from torchvision.ops import batched_nms, box_iou, nms, roi_align

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from torch_common import F32, F64, Writer, out_dir_arg, seed_for  # noqa: E402


def uniform(lo, hi, *shape):
    return torch.rand(*shape, dtype=F32) * (hi - lo) + lo


# --------------------------------------------------------------------------
# RoIAlign
# --------------------------------------------------------------------------

N, C, H, W = 3, 2, 11, 9


def roi_boxes(scale):
    """Boxes in feature-map units, then mapped to image units (/scale, exact
    since scale is a power of two): random ones, tiny, empty, inverted, ones
    straddling each border (samples below -1, in (-1, 0], in (H-1, H] and
    beyond H), one wholly outside, the whole map and a box larger than it."""
    rows = []
    for _ in range(6):
        x1, y1 = uniform(-3, W + 1, 1).item(), uniform(-3, H + 1, 1).item()
        w, h = uniform(0.5, 8, 1).item(), uniform(0.5, 8, 1).item()
        rows.append([x1, y1, x1 + w, y1 + h])
    x1, y1 = uniform(0, W - 1, 1).item(), uniform(0, H - 1, 1).item()
    rows.append([x1, y1, x1 + uniform(0.05, 0.4, 1).item(), y1 + uniform(0.05, 0.4, 1).item()])
    x1, y1 = uniform(1, W - 1, 1).item(), uniform(1, H - 1, 1).item()
    rows.append([x1, y1, x1, y1])  # empty
    rows.append([x1 + 1.3, y1 + 0.9, x1, y1])  # inverted
    rows.append([-2.7, -1.6, 2.3, 3.1])
    rows.append([W - 2.2, H - 1.7, W + 1.4, H + 0.8])
    rows.append([W + 1.5, H + 1.5, W + 4.0, H + 3.5])
    rows.append([0.0, 0.0, float(W), float(H)])
    rows.append([-4.0, -4.0, W + 4.0, H + 4.0])
    k = len(rows)
    batch = torch.tensor([i % N for i in range(k)], dtype=F32)
    batch = batch[torch.randperm(k)]
    coords = torch.tensor(rows, dtype=F32) / scale
    return torch.cat([batch[:, None], coords], 1)


def roi_align_case(w, aligned, sr, sc, output_size):
    case = f"detection_roi_align_a{int(aligned)}_sr{'m1' if sr < 0 else sr}_sc{sc}"
    seed_for(case)
    scale = 1.0 / sc
    x = torch.randn(N, C, H, W, dtype=F32)
    boxes = roi_boxes(scale)
    tensors = {"in.x": x, "in.boxes": boxes}
    for dtype, suffix in ((F64, ""), (F32, "_f32")):
        xd = x.to(dtype).requires_grad_(True)
        out = roi_align(xd, boxes.to(dtype), output_size, scale, sr, aligned)
        if dtype == F64:
            grad_out = torch.randn(*out.shape, dtype=F32)
            tensors["grad_out"] = grad_out
        (out * grad_out.to(dtype)).sum().backward()
        tensors["out" + suffix] = out.detach()
        tensors[("grad" if dtype == F64 else "grad_f32") + ".x"] = xd.grad
    params = {"output_size": list(output_size), "spatial_scale": scale,
              "sampling_ratio": sr, "aligned": aligned}
    w.save_op(case, "roi_align", params, tensors)


def make_roi_align(w):
    for aligned in (False, True):
        # sampling_ratio 0 is the same adaptive rule as -1 (any value <= 0);
        # the test reuses the -1 fixtures for it
        for sr in (-1, 1, 2, 4):
            for sc, out in ((1, (3, 4)), (4, (2, 5)), (16, (7, 7))):
                roi_align_case(w, aligned, sr, sc, out)


# --------------------------------------------------------------------------
# NMS, batched NMS, box IoU
# --------------------------------------------------------------------------

THRESHOLDS = [0.0, 0.3, 0.5, 0.7, 1.0]


def clustered_boxes(k, extent, size):
    """Boxes around a few centres so many overlap; a few exact duplicates."""
    centres = uniform(0, extent, 8, 2)
    c = centres[torch.randint(0, 8, (k,))] + uniform(-size, size, k, 2)
    wh = uniform(0.2 * size, 2 * size, k, 2)
    b = torch.cat([c - wh / 2, c + wh / 2], 1)
    dup = torch.randint(0, k, (k // 10,))
    b[torch.randint(0, k, (k // 10,))] = b[dup]
    return b


def tied_scores(k):
    """Scores with many exact ties (one decimal) and some continuous ones."""
    s = uniform(0, 1, k)
    tie = torch.rand(k) < 0.6
    return torch.where(tie, (s * 10).floor() / 10, s)


def nms_case(w, case, k, dtype, with_nan=False):
    seed_for(case)
    b, s = clustered_boxes(k, 100.0, 12.0), tied_scores(k)
    if with_nan:
        s[torch.randint(0, k, (3,))] = float("nan")
    b, s = b.to(dtype), s.to(dtype)
    tensors = {"in.boxes": b, "in.scores": s}
    for i, t in enumerate(THRESHOLDS):
        tensors[f"keep.{i}"] = nms(b, s, t)
    w.save_op(case, "nms", {"thresholds": THRESHOLDS}, tensors)


def batched_case(w, case, k, cats, dtype, ties):
    seed_for(case)
    b = clustered_boxes(k, 600.0, 40.0)
    s = tied_scores(k) if ties else torch.rand(k, dtype=F64)
    idxs = torch.randint(0, cats, (k,)) * 7 - 3  # sparse, some negative
    b, s = b.to(dtype), s.to(dtype)
    tensors = {"in.boxes": b, "in.scores": s, "in.idxs": idxs}
    for i, t in enumerate(THRESHOLDS):
        tensors[f"keep.{i}"] = batched_nms(b, s, idxs, t)
    w.save_op(case, "batched_nms", {"thresholds": THRESHOLDS}, tensors)


def make_nms(w):
    nms_case(w, "detection_nms_f64", 300, F64)
    nms_case(w, "detection_nms_f32", 300, F32)
    nms_case(w, "detection_nms_nan", 60, F64, with_nan=True)
    # <= 1000 boxes: the coordinate trick (rounding of shifted f32 boxes matters)
    batched_case(w, "detection_batched_nms_f64", 400, 5, F64, ties=True)
    batched_case(w, "detection_batched_nms_f32", 400, 5, F32, ties=True)
    # > 1000 boxes: one nms per category; distinct scores (torch's final
    # unstable sort orders ties arbitrarily)
    batched_case(w, "detection_batched_nms_vanilla", 1100, 6, F64, ties=False)

    seed_for("detection_box_iou")
    a = clustered_boxes(9, 30.0, 6.0)
    b = clustered_boxes(11, 30.0, 6.0)
    a[0] = torch.tensor([1.0, 1.0, 1.0, 4.0])  # zero area
    b[0] = a[1]  # identical
    b[1] = torch.tensor([-50.0, -50.0, -40.0, -40.0])  # disjoint from all
    b[2] = torch.cat([a[2, :2] + 0.5, a[2, 2:] - 0.5])  # contained
    a, b = a.to(F64), b.to(F64)
    w.save_op("detection_box_iou", "box_iou", {}, {"in.a": a, "in.b": b, "out": box_iou(a, b)})


def main():
    w = Writer(out_dir_arg(__doc__.split("\n")[0], "tests/fixtures/golden"),
               torchvision=torchvision.__version__)
    make_roi_align(w)
    make_nms(w)
    w.report()


if __name__ == "__main__":
    main()
