#!/usr/bin/env python3
"""By-hand check of the detector converter: a torchvision
`maskrcnn_resnet50_fpn` (v1) converted by tools/convert_torchvision.py and
run by `slmlp detect predict --json --mask-probs` detects what torchvision
detects on the same image (torchvision's transform: shorter side 800, longer
at most 1333, ImageNet mean/std), and the checkpoint converted back loads
into torchvision unchanged.

    cargo build -p models --bin slmlp
    python3 tools/golden/check_detector_conversion.py [--slmlp target/debug/slmlp] [--keep DIR]

No trained weights can be downloaded here, so the model is torchvision's own
random init (weights=None, weights_backbone=None, torch.manual_seed(0));
on the image it gives 100 detections, the best scoring 0.93, all of them
thin vertical boxes (0.1 to 0.4 px wide at 480x640) whose masks are columns
one or two pixels wide. The image is a synthetic 480x640 PNG (smooth colour
gradients and a few filled shapes, numpy seed 0), so the model runs at
800x1066.

Compared, detection by detection in torchvision's order: labels (equal),
scores and boxes (max |diff|), and the masks as pasted into the image:
probabilities before the 0.5 threshold (max |diff| per pixel, from
`--mask-probs`), and the IoU of the binarised masks (pycocotools RLE of
torchvision's masks against our `--json` ones, which must be our
probabilities > 0.5) where the union has at least MIN_IOU_PIXELS pixels (one
flipped pixel is then at most 1 % of it).

NMS ties. The ROI heads' per-class NMS (IoU 0.5) sometimes chooses between
two overlapping candidate boxes whose scores differ by less than the two
implementations' float32 score agreement; then the kept box differs although
both sides computed the same candidates. A detection whose box differs is
accepted only as such a tie: torchvision's final NMS input (captured) holds
a candidate with the same label whose box (resized to the image as
torchvision does) is within BOX_TOL of ours and whose score is within
SCORE_TOL of ours, overlapping torchvision's kept box with IoU > 0.5 with a
score within SCORE_TOL of it; its mask is then compared with torchvision's
mask branch run on that candidate (`mask_roi_pool`, `mask_head`,
`mask_predictor`, sigmoid, `paste_masks_in_image` at the resized box).

Measured (2026-12-02, 2-core CPU, `cargo build -p models --bin slmlp` dev
profile): round trip 307 tensors equal, 53 `num_batches_tracked` not carried;
100 detections on both sides, labels equal, scores within 8.6e-6, boxes
within 2.7e-3 px (torchvision float32 vs float64 on this image: 3.8e-3 px),
pasted probabilities within 1.7e-4 (torchvision float32 vs float64: 3.3e-4),
no binarised pixel differs; PASS. One NMS tie, detection 85: torchvision's
float32 scores for the two candidates 0.8375120 (kept) and 0.8375110 (float64:
0.837512468 and 0.837511556), IoU 0.557; we keep the second, a box 0.09 px
wider whose integer paste box is one column wider, so its whole mask moves
(IoU 0.044 against torchvision's kept mask: the mismatch this check reported
before ties were recognised). Exit status 1 past the bounds below.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torchvision
from PIL import Image
from pycocotools import mask as mask_utils
from safetensors.torch import load_file
from torchvision.models.detection import roi_heads
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import box_iou

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
H, W = 480, 640
BOX_TOL = 1e-2     # pixels, at 480x640
SCORE_TOL = 1e-4
# Pasted mask probabilities: 3x torchvision's own float32-vs-float64
# difference on this image (3.3e-4).
PROB_TOL = 1e-3
MASK_IOU_MIN = 0.99
MIN_IOU_PIXELS = 100


def synthetic_image():
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:H, 0:W]
    img = np.stack([x / W * 255, y / H * 255, (x + y) / (H + W) * 255], -1)
    for _ in range(6):
        x0, y0 = rng.integers(0, W - 120), rng.integers(0, H - 120)
        w, h = rng.integers(40, 120, size=2)
        img[y0:y0 + h, x0:x0 + w] = rng.integers(0, 256, size=3)
    return img.astype(np.uint8)


def run_torchvision(model, x):
    """model([x])[0], plus the ROI heads' last batched_nms call (candidate
    boxes at the model's size, scores, labels, the kept indices: detection k
    is candidate keep[k]), the backbone features and the transformed image
    list."""
    seen = {}
    nms = roi_heads.box_ops.batched_nms

    def spy(boxes, scores, idxs, iou_threshold):
        keep = nms(boxes, scores, idxs, iou_threshold)
        seen["nms"] = (boxes, scores, idxs, keep)
        return keep

    hooks = [model.backbone.register_forward_hook(lambda m, i, o: seen.__setitem__("features", o)),
             model.transform.register_forward_hook(lambda m, i, o: seen.__setitem__("images", o[0]))]
    roi_heads.box_ops.batched_nms = spy
    try:
        with torch.no_grad():
            ref = model([x])[0]
    finally:
        roi_heads.box_ops.batched_nms = nms
        for h in hooks:
            h.remove()
    return ref, seen


def torchvision_masks(model, seen, boxes, labels):
    """torchvision's mask branch and paste for `boxes` [K, 4] at the model's size."""
    rh, images = model.roi_heads, seen["images"]
    with torch.no_grad():
        f = rh.mask_roi_pool(seen["features"], [boxes], images.image_sizes)
        logits = rh.mask_predictor(rh.mask_head(f))
        probs = roi_heads.maskrcnn_inference(logits, [labels])[0]
        return roi_heads.paste_masks_in_image(probs, resize_boxes(boxes, images.image_sizes[0], (H, W)), (H, W))


def find_tie(k, ours, ref, seen):
    """The torchvision NMS candidate that our detection k is, when k is a
    tie (see the docstring), else None."""
    boxes, scores, labels, keep = seen["nms"]
    kb = int(keep[k])
    at_orig = resize_boxes(boxes, seen["images"].image_sizes[0], (H, W)).double()
    ok = ((labels == labels[kb])
          & ((at_orig - ours["boxes"][k]).abs().max(1).values <= BOX_TOL)
          & ((scores.double() - ours["scores"][k]).abs() <= SCORE_TOL)
          & (box_iou(boxes[kb:kb + 1], boxes)[0] > 0.5)
          & ((scores - scores[kb]).abs() <= SCORE_TOL))
    ok[kb] = False
    return int(ok.nonzero()[0, 0]) if ok.any() else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slmlp", default=os.path.join(REPO, "target/debug/slmlp"))
    ap.add_argument("--keep", help="folder to keep the files in (default: a temporary one)")
    args = ap.parse_args()
    tmp = args.keep or tempfile.mkdtemp()
    os.makedirs(tmp, exist_ok=True)
    torch.manual_seed(0)
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    model.eval()
    pth = os.path.join(tmp, "maskrcnn.pth")
    torch.save(model.state_dict(), pth)
    conv = [sys.executable, os.path.join(REPO, "tools/convert_torchvision.py")]
    ckpt = os.path.join(tmp, "maskrcnn.safetensors")
    subprocess.run(conv + [pth, ckpt], check=True)
    back = os.path.join(tmp, "back.pth")
    subprocess.run(conv + ["--to-torch", ckpt, back], check=True)
    sd, sd_back = model.state_dict(), torch.load(back, weights_only=True)
    same = all(torch.equal(sd[k], v) for k, v in sd_back.items())
    dropped = sorted(set(sd) - set(sd_back))
    print(f"round trip: {len(sd_back)} tensors equal: {same}; not carried: {len(dropped)} "
          f"({'all num_batches_tracked' if all(k.endswith('num_batches_tracked') for k in dropped) else dropped})")

    img = synthetic_image()
    png = os.path.join(tmp, "image.png")
    Image.fromarray(img).save(png)
    dets_json = os.path.join(tmp, "dets.json")
    probs_file = os.path.join(tmp, "mask_probs.safetensors")
    subprocess.run([args.slmlp, "detect", "predict", "--checkpoint", ckpt, "--image", png,
                    "--out", os.path.join(tmp, "drawn.png"), "--json", dets_json,
                    "--mask-probs", probs_file], check=True, stdout=subprocess.DEVNULL)
    entries = json.load(open(dets_json))
    ours = {k: v.double() for k, v in load_file(probs_file).items()}
    x = torch.from_numpy(img).permute(2, 0, 1).float() / 255.0
    ref, seen = run_torchvision(model, x)
    n = ref["boxes"].shape[0]
    print(f"detections: torchvision {n}, slmlp {len(entries)}")
    ok = len(entries) == n == ours["boxes"].shape[0]
    labels_equal = [d["category_id"] for d in entries] == ref["labels"].tolist()
    ref_masks = ref["masks"][:, 0].double()
    worst_box = worst_score = worst_prob = 0.0
    worst_iou, flipped, rle_wrong, ties = 1.0, 0, 0, []
    for k in range(min(n, len(entries))):
        d = entries[k]
        x0, y0, w, h = d["bbox"]
        box = torch.tensor([x0, y0, x0 + w, y0 + h], dtype=torch.float64)
        box_diff = float((box - ref["boxes"][k].double()).abs().max())
        theirs = ref_masks[k]
        if box_diff > BOX_TOL:
            j = find_tie(k, ours, ref, seen)
            if j is None:
                print(f"detection {k}: box {box.tolist()} vs torchvision's {ref['boxes'][k].tolist()}, no NMS tie")
                ok = False
                continue
            boxes, scores = seen["nms"][:2]
            ties.append(f"{k} (scores {float(scores[j]):.7f} vs torchvision's kept {float(ref['scores'][k]):.7f}, "
                        f"box diff {box_diff:.3f} px)")
            theirs = torchvision_masks(model, seen, boxes[j:j + 1], ref["labels"][k:k + 1])[0, 0].double()
            box_diff = float((resize_boxes(boxes[j:j + 1], seen["images"].image_sizes[0], (H, W))[0].double()
                              - box).abs().max())
        worst_box = max(worst_box, box_diff)
        worst_score = max(worst_score, abs(d["score"] - float(ref["scores"][k])))
        mine = ours["masks"][k, 0]
        worst_prob = max(worst_prob, float((mine - theirs).abs().max()))
        seg = dict(d["segmentation"], counts=d["segmentation"]["counts"].encode())
        a, b = (mine > 0.5).numpy(), (theirs > 0.5).numpy()
        rle_wrong += int((mask_utils.decode(seg) != a).any())
        flipped += int((a != b).sum())
        if (a | b).sum() >= MIN_IOU_PIXELS:
            rle = mask_utils.encode(np.asfortranarray(b.astype(np.uint8)))
            worst_iou = min(worst_iou, float(mask_utils.iou([seg], [rle], [0])[0, 0]))
    print(f"labels equal: {labels_equal}; NMS ties: {len(ties)} {ties}; "
          f"--json masks other than --mask-probs > 0.5: {rle_wrong}")
    print(f"max |box diff| {worst_box:.2e} px, max |score diff| {worst_score:.2e}, "
          f"max |pasted mask probability diff| {worst_prob:.2e}, binarised pixels differing {flipped}, "
          f"min mask IoU (union >= {MIN_IOU_PIXELS} px) {worst_iou:.5f}")
    ok &= (labels_equal and rle_wrong == 0 and worst_box <= BOX_TOL and worst_score <= SCORE_TOL and worst_prob <= PROB_TOL
           and worst_iou >= MASK_IOU_MIN)
    ok &= same and all(k.endswith("num_batches_tracked") for k in dropped)
    print("PASS" if ok else "FAIL", f"(files in {tmp})")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
