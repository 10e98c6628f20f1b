#!/usr/bin/env python3
"""Generate torchvision golden fixtures for the RPN / ROI-heads box building
blocks (models/src/detection/{anchors,box_coder,matcher,sampler}.rs), read by
models/tests/rpn_blocks.rs.

Run by hand (torch is never needed by `cargo test`; the files are committed):

    /root/torchvenv/bin/python tools/golden/make_rpn_fixtures.py [--out tests/fixtures/golden]

Every random input is drawn from a per-case seed (torch.manual_seed(crc32(case))).
References are computed by torchvision itself, in float64 unless a key says
f32. Integer results are int64. Files and keys:

rpn_anchors.safetensors, metadata "cases" = JSON list of
  {name, image_size [H, W], feature_sizes [[h, w], ...], sizes, aspect_ratios}.
  Per case <c>:
  <c>.cell.<l>      float64 [A_l, 4]  AnchorGenerator.cell_anchors[l]
  <c>.count         int64 [L]         anchors per level
  <c>.full          float64 [N, 4]    all anchors (only when N <= 4096)
  <c>.sample_idx    int64 [S]         row indices (every 101st row, plus each
  <c>.sample        float64 [S, 4]    level's first and last row) and their rows
  <c>.wsum          int64 [L]         per level, sum over its rows r and columns
                                      k of anchor[r, k] * ((4 r + k) % 997 + 1),
                                      r the global row index (anchors are
                                      integers, so this is exact)
rpn_box_coder.safetensors, metadata "weights" = JSON {name: [wx, wy, ww, wh]}:
  in.ref [N, 4], in.prop [N, 4] (positive sizes), in.anchors [M, 4],
  in.deltas [M, 12] (3 classes; includes dw/dh above the clip, +inf, -inf,
  large negative), and the f32 copies in.*_f32 (the f64 inputs rounded);
  encode.<w> [N, 4] = BoxCoder(w).encode_single(ref, prop)
  decode.<w> [M, 12] = BoxCoder(w).decode_single(deltas, anchors)
  encode_f32.<w>, decode_f32.<w>: the same in float32 from the f32 inputs.
  clip.in [K, 4] (values outside the image, +-inf, NaN), clip.out [K, 4] =
  clip_boxes_to_image(clip.in, (H, W)) with metadata "clip_size" = [H, W];
  small.in [K, 4], small.keep.<i> int64 = remove_small_boxes(small.in,
  min_sizes[i]), metadata "min_sizes".
rpn_matcher.safetensors, metadata "cases" = JSON list of
  {name, q, high, low, allow_low_quality_matches}: q.<q> [G, P] float64
  (float32 for names ending in _f32; shared between cases),
  <name>.out int64 [P] = Matcher(high, low, allow)(q.<q>).
rpn_sampler.safetensors, metadata "cases" = JSON list of
  {name, batch_size_per_image, positive_fraction}: <name>.labels int64 [P],
  <name>.num_pos / <name>.num_neg int64 [] = number of selected positives
  and negatives in torchvision's masks.
"""

import argparse
import json
import math
import os
import zlib

import torch
import torchvision
from safetensors.torch import save_file
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, BoxCoder, Matcher
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou, clip_boxes_to_image, remove_small_boxes

F32 = torch.float32
F64 = torch.float64
I64 = torch.int64


def seed_for(name):
    torch.manual_seed(zlib.crc32(name.encode("utf-8")))


def save(out_dir, fname, tensors, meta):
    meta = dict(meta)
    meta["torch"] = torch.__version__
    meta["torchvision"] = torchvision.__version__
    path = os.path.join(out_dir, fname)
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, path, metadata=meta)
    return path


# --------------------------------------------------------------------------
# anchors


FPN_SIZES = ((32,), (64,), (128,), (256,), (512,))
FPN_RATIOS = ((0.5, 1.0, 2.0),) * 5

ANCHOR_CASES = [
    # an 800x1088 padded batch through ResNet-50 FPN (P2..P6: strides 4..64, P6 by max-pool ceil)
    dict(name="fpn_800x1088", image_size=[800, 1088],
         feature_sizes=[[200, 272], [100, 136], [50, 68], [25, 34], [13, 17]],
         sizes=FPN_SIZES, aspect_ratios=FPN_RATIOS),
    # odd sizes: strides from integer division (37 // 10 = 3, ...), unequal per axis
    dict(name="fpn_odd_37x53", image_size=[37, 53],
         feature_sizes=[[10, 14], [5, 7], [3, 4], [2, 2], [1, 1]],
         sizes=FPN_SIZES, aspect_ratios=FPN_RATIOS),
    # several sizes per level, ratios whose half-widths land near .5 (round half to even)
    dict(name="multi_sizes", image_size=[61, 47],
         feature_sizes=[[8, 6], [3, 5]],
         sizes=((16, 24, 5), (48, 3)), aspect_ratios=((0.5, 1.0, 2.0, 3.7, 0.25), (1.3, 1.0))),
    # torchvision's single-level default
    dict(name="default_single", image_size=[64, 96], feature_sizes=[[4, 6]],
         sizes=((128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),)),
]


def anchor_case(c):
    gen = AnchorGenerator(sizes=c["sizes"], aspect_ratios=c["aspect_ratios"])
    h, w = c["image_size"]
    images = ImageList(torch.zeros(1, 3, h, w, dtype=F64), [(h, w)])
    feats = [torch.zeros(1, 1, fh, fw, dtype=F64) for fh, fw in c["feature_sizes"]]
    anchors = gen(images, feats)[0]
    assert anchors.dtype == F64
    counts = [fh * fw * len(s) * len(a) for (fh, fw), s, a in
              zip(c["feature_sizes"], c["sizes"], c["aspect_ratios"])]
    assert sum(counts) == anchors.shape[0]
    assert torch.equal(anchors, anchors.round()), "anchors are integers"
    n = c["name"]
    t = {}
    for l, cell in enumerate(gen.cell_anchors):
        t[f"{n}.cell.{l}"] = cell.to(F64)
    t[f"{n}.count"] = torch.tensor(counts, dtype=I64)
    if anchors.shape[0] <= 4096:
        t[f"{n}.full"] = anchors
    idx = set(range(0, anchors.shape[0], 101))
    start = 0
    wsum = []
    ai = anchors.to(I64)
    for cnt in counts:
        idx.update([start, start + cnt - 1])
        rows = torch.arange(start, start + cnt, dtype=I64)[:, None]
        weight = (4 * rows + torch.arange(4, dtype=I64)[None, :]) % 997 + 1
        wsum.append(int((ai[start:start + cnt] * weight).sum()))
        start += cnt
    idx = torch.tensor(sorted(idx), dtype=I64)
    t[f"{n}.sample_idx"] = idx
    t[f"{n}.sample"] = anchors[idx]
    t[f"{n}.wsum"] = torch.tensor(wsum, dtype=I64)
    return t


def make_anchors(out):
    t = {}
    for c in ANCHOR_CASES:
        t.update(anchor_case(c))
    cases = [dict(c, sizes=[list(s) for s in c["sizes"]],
                  aspect_ratios=[list(a) for a in c["aspect_ratios"]]) for c in ANCHOR_CASES]
    return save(out, "rpn_anchors.safetensors", t, {"cases": json.dumps(cases)})


# --------------------------------------------------------------------------
# box coder, clip, remove_small_boxes

WEIGHTS = {"w1111": (1.0, 1.0, 1.0, 1.0), "w10_10_5_5": (10.0, 10.0, 5.0, 5.0)}


def rand_boxes(n, lo, hi, min_wh, max_wh):
    x1 = torch.rand(n, dtype=F64) * (hi - lo) + lo
    y1 = torch.rand(n, dtype=F64) * (hi - lo) + lo
    w = torch.rand(n, dtype=F64) * (max_wh - min_wh) + min_wh
    h = torch.rand(n, dtype=F64) * (max_wh - min_wh) + min_wh
    return torch.stack([x1, y1, x1 + w, y1 + h], dim=1)


def make_box_coder(out):
    seed_for("rpn_box_coder")
    n, m = 64, 48
    ref = rand_boxes(n, -20.0, 700.0, 0.5, 400.0)
    prop = rand_boxes(n, -20.0, 700.0, 0.5, 400.0)
    anchors = rand_boxes(m, -50.0, 900.0, 1.0, 600.0)
    deltas = torch.randn(m, 12, dtype=F64) * 2.0
    clip = math.log(1000.0 / 16)
    # dw / dh columns: beyond the clip for both weight sets, exactly at it, infinities
    deltas[0, 2] = 50.0
    deltas[1, 3] = 50.0
    deltas[2, 2] = clip  # at the clip for weights 1 (below it for ww = 5)
    deltas[3, 6] = 5.0 * clip + 1.0  # above the clip for both weight sets
    deltas[4, 7] = float("inf")
    deltas[5, 10] = float("-inf")
    deltas[6, 11] = -60.0
    deltas[7, 0] = 1e3
    t = {"in.ref": ref, "in.prop": prop, "in.anchors": anchors, "in.deltas": deltas}
    for k in list(t):
        t[k + "_f32"] = t[k].to(F32)
    for name, w in WEIGHTS.items():
        coder = BoxCoder(w)
        t[f"encode.{name}"] = coder.encode_single(ref, prop)
        t[f"decode.{name}"] = coder.decode_single(deltas, anchors)
        t[f"encode_f32.{name}"] = coder.encode_single(ref.to(F32), prop.to(F32))
        t[f"decode_f32.{name}"] = coder.decode_single(deltas.to(F32), anchors.to(F32))
    # clip_boxes_to_image: random boxes spilling over every border, plus specials
    clip_size = [57, 83]
    cb = torch.rand(40, 4, dtype=F64) * 160.0 - 40.0
    cb[0] = torch.tensor([float("-inf"), 3.0, float("inf"), float("nan")], dtype=F64)
    cb[1] = torch.tensor([0.0, 57.0, 83.0, 0.0], dtype=F64)
    cb[2] = torch.tensor([-0.0, -1e-300, 83.0000001, 56.9999999], dtype=F64)
    t["clip.in"] = cb
    t["clip.out"] = clip_boxes_to_image(cb, (clip_size[0], clip_size[1]))
    # remove_small_boxes: sizes around the thresholds, inverted and NaN boxes
    sb = rand_boxes(40, 0.0, 100.0, 0.0, 4.0)
    sb[0] = torch.tensor([10.0, 10.0, 11.0, 11.0], dtype=F64)  # exactly 1 x 1
    sb[1] = torch.tensor([10.0, 10.0, 9.0, 12.0], dtype=F64)  # inverted x
    sb[2] = torch.tensor([10.0, 10.0, float("nan"), 12.0], dtype=F64)
    sb[3] = torch.tensor([10.0, 10.0, 10.0, 10.0], dtype=F64)  # empty
    sb[4] = torch.tensor([0.0, 0.0, 1e-3, 1e-3], dtype=F64)  # exactly 1e-3 (torchvision's RPN min_size)
    min_sizes = [0.0, 1e-3, 1.0, 2.5]
    t["small.in"] = sb
    for i, ms in enumerate(min_sizes):
        t[f"small.keep.{i}"] = remove_small_boxes(sb, ms)
    meta = {"weights": json.dumps(WEIGHTS), "clip_size": json.dumps(clip_size),
            "min_sizes": json.dumps(min_sizes), "bbox_xform_clip": repr(clip)}
    return save(out, "rpn_box_coder.safetensors", t, meta)


# --------------------------------------------------------------------------
# matcher

def make_matcher(out):
    t = {}
    cases = []

    def add(name, q, high, low, allow):
        qname = name.split("_allow")[0]
        m = Matcher(high, low, allow_low_quality_matches=allow)
        if f"q.{qname}" in t:
            assert t[f"q.{qname}"] is q
        t[f"q.{qname}"] = q
        t[f"{name}.out"] = m(q.clone())
        cases.append(dict(name=name, q=qname, high=high, low=low, allow_low_quality_matches=allow))

    # real IoUs: gt boxes against a grid of anchors (RPN thresholds and the ROI heads')
    seed_for("rpn_matcher_iou")
    gt = rand_boxes(7, 0.0, 200.0, 8.0, 120.0)
    gen = AnchorGenerator(sizes=((32, 64),), aspect_ratios=((0.5, 1.0, 2.0),))
    anchors = gen(ImageList(torch.zeros(1, 3, 256, 256, dtype=F64), [(256, 256)]),
                  [torch.zeros(1, 1, 16, 16, dtype=F64)])[0]
    q = box_iou(gt, anchors)
    for allow in (False, True):
        add(f"iou_rpn_allow{int(allow)}", q, 0.7, 0.3, allow)
    q2 = q.clone()  # safetensors refuses two keys sharing memory
    for allow in (False, True):
        add(f"iou_roi_allow{int(allow)}", q2, 0.5, 0.5, allow)

    # hand-made: values exactly at the thresholds, ties within a gt's row
    # (several predictions share its best IoU) and across gts (argmax takes the first)
    hm = torch.tensor([
        [0.70, 0.30, 0.10, 0.25, 0.25, 0.00, 0.69],
        [0.10, 0.30, 0.29, 0.25, 0.20, 0.00, 0.69],
        [0.70, 0.05, 0.05, 0.05, 0.05, 0.00, 0.05],
        [0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00],
    ], dtype=F64)
    for allow in (False, True):
        add(f"hand_allow{int(allow)}", hm, 0.7, 0.3, allow)
    # one gt; low == high (ROI heads: no between-thresholds band)
    one = torch.tensor([[0.2, 0.5, 0.49999, 0.2]], dtype=F64)
    for allow in (False, True):
        add(f"one_gt_allow{int(allow)}", one, 0.5, 0.5, allow)
    # NaN qualities: max over gts returns the first NaN; a gt row with a NaN never ties
    nan = float("nan")
    nq = torch.tensor([[0.8, nan, 0.1, 0.2], [nan, 0.1, 0.2, 0.1]], dtype=F64)
    for allow in (False, True):
        add(f"nan_allow{int(allow)}", nq, 0.7, 0.3, allow)
    # float32: 0.7 and 0.3 compared in float32 (the IoU f32(0.7) is a match)
    f = torch.tensor([[0.7, 0.3, 0.69999999, 0.29999998], [0.1, 0.1, 0.1, 0.1]], dtype=F32)
    for allow in (False, True):
        add(f"thresh_allow{int(allow)}_f32", f, 0.7, 0.3, allow)
    return save(out, "rpn_matcher.safetensors", t, {"cases": json.dumps(cases)})


# --------------------------------------------------------------------------
# sampler (counts only: the choice uses torch's RNG)

def make_sampler(out):
    t = {}
    cases = []
    seed_for("rpn_sampler")

    def add(name, labels, batch, frac):
        s = BalancedPositiveNegativeSampler(batch, frac)
        pos, neg = s([labels])
        pos, neg = pos[0].bool(), neg[0].bool()
        assert bool((labels[pos] >= 1).all()) and bool((labels[neg] == 0).all())
        t[f"{name}.labels"] = labels
        t[f"{name}.num_pos"] = pos.sum().to(I64)
        t[f"{name}.num_neg"] = neg.sum().to(I64)
        cases.append(dict(name=name, batch_size_per_image=batch, positive_fraction=frac))

    rpn = torch.randint(-1, 2, (3000,), dtype=I64)  # RPN labels -1 / 0 / 1
    add("rpn_many", rpn, 256, 0.5)
    few_pos = torch.where(torch.rand(3000) < 0.01, 1, torch.where(torch.rand(3000) < 0.5, 0, -1)).to(I64)
    add("rpn_few_pos", few_pos, 256, 0.5)
    few_neg = torch.where(torch.rand(300) < 0.9, 1, torch.where(torch.rand(300) < 0.3, 0, -1)).to(I64)
    add("rpn_few_neg", few_neg, 256, 0.5)
    roi = torch.randint(-1, 6, (2000,), dtype=I64)  # class labels, 0 background
    add("roi_classes", roi, 512, 0.25)
    add("odd_fraction", roi.clone(), 333, 0.3)  # int(333 * 0.3) = 99 (truncation)
    add("all_ignored", torch.full((50,), -1, dtype=I64), 256, 0.5)
    add("empty", torch.zeros(0, dtype=I64), 256, 0.5)
    return save(out, "rpn_sampler.safetensors", t, {"cases": json.dumps(cases)})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join("tests", "fixtures", "golden"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    total = 0
    for make in (make_anchors, make_box_coder, make_matcher, make_sampler):
        path = make(args.out)
        size = os.path.getsize(path)
        total += size
        print(f"{path}: {size} bytes")
    print(f"total {total} bytes")
    assert total < 1_000_000, "rpn fixtures must stay under 1 MB"


if __name__ == "__main__":
    main()
