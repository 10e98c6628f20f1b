#!/usr/bin/env python3
"""Generate pycocotools reference fixtures for the Rust COCO evaluation.

Run by hand (pycocotools and numpy are NEVER needed in CI; the generated files
are committed):

    /path/to/python tools/golden/make_coco_eval_fixtures.py [--out tests/fixtures/coco_eval]

Writes, per case, `<case>_gt.json`, `<case>_dt*.json` and `<case>_expected.json`
holding what pycocotools' COCOeval reports on them (the 12 stats, the printed
summary lines, the IoU matrices of a few (image, category) pairs), plus
`masks.json` with RLE / polygon reference values from pycocotools.mask.

Cases:
  mixed      - 12 categories (one without any GT), empty images, crowd
               annotations (uncompressed RLE), polygons (some multi-part),
               uncompressed and compressed RLE, objects of all area ranges;
               detections with tied scores, > 100 detections on some images,
               detections on images without GT, a category id outside the
               category list. Evaluated for bbox and segm (results carrying
               both bbox and segmentation), and for segm with a results file
               carrying segmentation only (loadRes' other branch).
  perfect    - detections equal to the GT (no large objects): AP 1.0, -1 for
               the large area range.
  no_dets    - the perfect GT without any detection.
"""

import argparse
import contextlib
import io
import json
import os

import numpy as np
import pycocotools
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

SEED = 20240607


def rle_to_json(rle):
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def uncompressed_counts(mask):
    """Column-major run lengths starting with a zero run, as COCO defines them."""
    flat = np.asarray(mask, dtype=np.uint8).flatten(order="F")
    counts, prev, run = [], 0, 0
    for v in flat:
        if v != prev:
            counts.append(run)
            run, prev = 0, v
        run += 1
    counts.append(run)
    return counts


def ellipse_mask(h, w, cx, cy, rx, ry):
    yy, xx = np.mgrid[0:h, 0:w]
    return (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0).astype(np.uint8)


def random_polygon(rng, cx, cy, r, n):
    ang = np.sort(rng.uniform(0, 2 * np.pi, n))
    rad = rng.uniform(0.6 * r, r, n)
    xs = cx + rad * np.cos(ang)
    ys = cy + rad * np.sin(ang)
    out = []
    for x, y in zip(xs, ys):
        out += [round(float(x), 2), round(float(y), 2)]
    return out


def poly_area(p):
    x = np.array(p[0::2])
    y = np.array(p[1::2])
    return 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))


def size_radius(rng, kind):
    return {"small": rng.uniform(2.5, 14), "medium": rng.uniform(20, 45), "large": rng.uniform(58, 90)}[kind]


def make_mixed(rng):
    cat_ids = [1, 2, 3, 5, 7, 8, 11, 13, 17, 19, 23, 29]
    no_gt_cat = 29  # in the category list, never annotated
    categories = [{"id": c, "name": f"cat{c}", "supercategory": "thing"} for c in cat_ids]
    images, anns = [], []
    n_images = 36
    ann_id = 100
    for i in range(n_images):
        img_id = 1000 + 7 * i
        h = int(rng.integers(120, 230))
        w = int(rng.integers(120, 230))
        images.append({"id": img_id, "height": h, "width": w, "file_name": f"{img_id}.jpg"})
        if i % 6 == 5:
            continue  # empty image
        for _ in range(int(rng.integers(1, 9))):
            cat = int(rng.choice(cat_ids[:-1]))
            size = rng.choice(["small", "medium", "large"], p=[0.4, 0.4, 0.2])
            r = size_radius(rng, size)
            cx = rng.uniform(0.1 * w, 0.9 * w)
            cy = rng.uniform(0.1 * h, 0.9 * h)
            kind = rng.choice(["poly", "poly2", "urle", "crle", "crowd"], p=[0.35, 0.15, 0.15, 0.2, 0.15])
            ann = {"id": ann_id, "image_id": img_id, "category_id": cat, "iscrowd": 0}
            ann_id += int(rng.integers(1, 4))
            if kind in ("poly", "poly2"):
                parts = [random_polygon(rng, cx, cy, r, int(rng.integers(5, 13)))]
                if kind == "poly2":
                    parts.append(random_polygon(rng, cx + 1.8 * r, cy + 0.5 * r, 0.5 * r, int(rng.integers(3, 8))))
                rle = mask_utils.merge(mask_utils.frPyObjects(parts, h, w))
                ann["segmentation"] = parts
                ann["area"] = float(sum(poly_area(p) for p in parts))
                xs = np.concatenate([np.array(p[0::2]) for p in parts])
                ys = np.concatenate([np.array(p[1::2]) for p in parts])
                ann["bbox"] = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min()), float(ys.max() - ys.min())]
            else:
                m = ellipse_mask(h, w, cx, cy, r, r * rng.uniform(0.5, 1.5))
                if m.sum() == 0:
                    m[int(cy) % h, int(cx) % w] = 1
                rle = mask_utils.encode(np.asfortranarray(m))
                if kind == "crle":
                    ann["segmentation"] = rle_to_json(rle)
                else:
                    ann["segmentation"] = {"size": [h, w], "counts": uncompressed_counts(m)}
                if kind == "crowd":
                    ann["iscrowd"] = 1
                ann["area"] = int(mask_utils.area(rle))
                ann["bbox"] = [float(v) for v in mask_utils.toBbox(rle)]
            ann["_rle"] = rle
            anns.append(ann)

    by_img = {img["id"]: img for img in images}
    dets = []

    def add_det(img_id, cat, rle, bbox, score):
        dets.append({"image_id": img_id, "category_id": cat, "bbox": [round(float(v), 3) for v in bbox],
                     "score": score, "segmentation": rle_to_json(rle)})

    for ann in anns:
        img = by_img[ann["image_id"]]
        h, w = img["height"], img["width"]
        if rng.uniform() < 0.15:
            continue  # missed object
        for _ in range(int(rng.integers(1, 3))):
            m = mask_utils.decode(ann["_rle"])
            dy, dx = rng.integers(-4, 5, size=2)
            m = np.roll(np.roll(m, dy, axis=0), dx, axis=1)
            if m.sum() == 0:
                continue
            rle = mask_utils.encode(np.asfortranarray(m))
            x, y, bw, bh = ann["bbox"]
            j = rng.normal(0, 0.08, 4)
            bbox = [x + j[0] * bw, y + j[1] * bh, bw * (1 + j[2]), bh * (1 + j[3])]
            cat = ann["category_id"] if rng.uniform() > 0.1 else int(rng.choice(categories)["id"])
            add_det(ann["image_id"], cat, rle, bbox, round(float(rng.uniform(0.05, 1.0)), 2))

    def random_det(img_id, cat):
        img = by_img[img_id]
        h, w = img["height"], img["width"]
        r = size_radius(rng, rng.choice(["small", "medium", "large"]))
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        m = ellipse_mask(h, w, cx, cy, r, r)
        if m.sum() == 0:
            m[int(cy) % h, int(cx) % w] = 1
        rle = mask_utils.encode(np.asfortranarray(m))
        add_det(img_id, cat, rle, mask_utils.toBbox(rle), round(float(rng.uniform(0.0, 0.6)), 2))

    ids = [img["id"] for img in images]
    # false positives everywhere, including empty images and the GT-less category
    for img_id in ids:
        for _ in range(int(rng.integers(0, 4))):
            random_det(img_id, int(rng.choice(cat_ids)))
    # > 100 detections on a few images: one category, and mixed categories
    crowded = [a for a in anns if not a["iscrowd"]][0]
    for _ in range(120):
        random_det(crowded["image_id"], crowded["category_id"])
    for _ in range(130):
        random_det(ids[3], int(rng.choice(cat_ids)))
    # categories outside the category list are dropped by COCOeval
    random_det(ids[0], 999)
    random_det(ids[1], 999)
    order = rng.permutation(len(dets))
    dets = [dets[i] for i in order]

    for ann in anns:
        del ann["_rle"]
    gt = {"info": {"description": "slmlp COCO eval fixture (mixed)"}, "images": images,
          "annotations": anns, "categories": categories}
    probe_keys = [(anns[0]["image_id"], anns[0]["category_id"]),
                  (crowded["image_id"], crowded["category_id"])]
    crowd = [a for a in anns if a["iscrowd"]]
    if crowd:
        probe_keys.append((crowd[0]["image_id"], crowd[0]["category_id"]))
    return gt, dets, probe_keys, no_gt_cat


def make_perfect(rng):
    categories = [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)]
    images, anns = [], []
    for i in range(6):
        h, w = 100 + 10 * i, 140
        images.append({"id": i + 1, "height": h, "width": w})
        if i == 4:
            continue
        for k in range(3):
            r = [5.0, 25.0][(i + k) % 2]  # no large objects: APl and ARl must be -1
            m = ellipse_mask(h, w, 20 + 50 * k, h / 2, r, r)
            rle = mask_utils.encode(np.asfortranarray(m))
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1 + (i + k) % 2,
                         "iscrowd": 0, "area": int(mask_utils.area(rle)),
                         "bbox": [float(v) for v in mask_utils.toBbox(rle)], "segmentation": rle_to_json(rle)})
    gt = {"images": images, "annotations": anns, "categories": categories}
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "segmentation": a["segmentation"], "score": 0.9} for a in anns]
    return gt, dets


def run_eval(gt_path, dets, iou_type, probe_keys):
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(gt_path)
        if dets:
            coco_dt = coco_gt.loadRes(json.loads(json.dumps(dets)))
        else:
            # loadRes cannot take an empty list (it reads anns[0]); an empty result set is this
            coco_dt = COCO()
            coco_dt.dataset = {"images": list(coco_gt.dataset["images"]),
                               "categories": list(coco_gt.dataset["categories"]), "annotations": []}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.evaluate()
        ev.accumulate()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        ev.summarize()
    ious = []
    for img_id, cat_id in probe_keys:
        m = ev.ious[(img_id, cat_id)]
        ious.append({"image_id": img_id, "category_id": cat_id,
                     "ious": [[float(v) for v in row] for row in np.asarray(m)] if len(m) else []})
    return {"stats": [float(s) for s in ev.stats], "summary": out.getvalue(), "ious": ious}


def write_case(out_dir, name, gt, results, probe_keys):
    gt_path = os.path.join(out_dir, f"{name}_gt.json")
    with open(gt_path, "w") as f:
        json.dump(gt, f, separators=(",", ":"))
    expected = {"pycocotools": pycocotools.__version__ if hasattr(pycocotools, "__version__") else "unknown",
                "numpy": np.__version__, "evals": []}
    for dt_name, dets, iou_type in results:
        dt_path = os.path.join(out_dir, f"{name}_{dt_name}.json")
        with open(dt_path, "w") as f:
            json.dump(dets, f, separators=(",", ":"))
        r = run_eval(gt_path, dets, iou_type, probe_keys)
        r.update({"gt": os.path.basename(gt_path), "dt": os.path.basename(dt_path), "iou_type": iou_type})
        expected["evals"].append(r)
    with open(os.path.join(out_dir, f"{name}_expected.json"), "w") as f:
        json.dump(expected, f, indent=1)


def mask_cases(rng):
    """Reference values of pycocotools.mask on masks and polygons."""
    out = {"masks": [], "polygons": [], "ious": [], "bbox_ious": [], "params": {}}
    shapes = [(7, 5), (20, 31), (33, 17)]
    for idx, (h, w) in enumerate(shapes):
        m = (rng.uniform(size=(h, w)) < [0.3, 0.6, 0.05][idx]).astype(np.uint8)
        if idx == 1:
            m[0, 0] = 1  # first count is 0
        if idx == 2:
            m[:, :] = 0
            m[3:9, 4:12] = 1
            m[h - 1, w - 1] = 1  # run ends exactly at the last pixel
        rle = mask_utils.encode(np.asfortranarray(m))
        out["masks"].append({"h": h, "w": w, "mask": m.flatten(order="C").tolist(),
                             "counts": uncompressed_counts(m), "string": rle["counts"].decode("ascii"),
                             "area": int(mask_utils.area(rle)),
                             "bbox": [float(v) for v in mask_utils.toBbox(rle)]})
    # counts with large values (long LEB128 groups, negative deltas)
    big = mask_utils.frPyObjects({"size": [3000, 2000], "counts": [123456, 7, 5000000, 1, 876536]}, 3000, 2000)
    out["masks"].append({"h": 3000, "w": 2000, "mask": None, "counts": [123456, 7, 5000000, 1, 876536],
                         "string": big["counts"].decode("ascii"), "area": int(mask_utils.area(big)),
                         "bbox": [float(v) for v in mask_utils.toBbox(big)]})
    polys = [
        (40, 50, [[10.2, 5.7, 30.9, 8.1, 25.4, 30.3, 8.8, 22.5]]),
        (40, 50, [[-3.0, -2.0, 20.5, 1.25, 55.0, 44.0]]),           # outside the image
        (30, 30, [[5.0, 5.0, 15.0, 5.0, 15.0, 15.0, 5.0, 15.0], [20.1, 20.1, 27.7, 21.3, 24.4, 28.9]]),
        (25, 40, [[1.5, 1.5, 1.5, 1.5, 30.49, 2.51, 30.5, 20.5, 2.0, 22.0]]),  # repeated vertex
        (60, 60, [[30.0, 2.0, 55.3, 30.0, 30.0, 57.9, 4.6, 30.0, 30.0, 2.0]]),
        (60, 80, [random_polygon(rng, 40, 30, 25, 17)]),
    ]
    for h, w, parts in polys:
        rles = mask_utils.frPyObjects(parts, h, w)
        merged = mask_utils.merge(rles)
        out["polygons"].append({"h": h, "w": w, "polygons": parts,
                                "strings": [r["counts"].decode("ascii") for r in rles],
                                "merged": merged["counts"].decode("ascii"),
                                "area": int(mask_utils.area(merged)),
                                "bbox": [float(v) for v in mask_utils.toBbox(merged)]})
    # mask IoU with and without crowd, on ellipses of one image
    h, w = 50, 60
    ms = [ellipse_mask(h, w, 20, 20, 10, 8), ellipse_mask(h, w, 24, 22, 12, 9),
          ellipse_mask(h, w, 45, 40, 6, 6), ellipse_mask(h, w, 30, 25, 25, 20)]
    rles = [mask_utils.encode(np.asfortranarray(m)) for m in ms]
    for crowd in ([0, 0], [0, 1]):
        iou = mask_utils.iou(rles[:3], rles[2:] if crowd[1] else rles[1:3], crowd)
        out["ious"].append({"h": h, "w": w, "dt": [r["counts"].decode("ascii") for r in rles[:3]],
                            "gt": [r["counts"].decode("ascii") for r in (rles[2:] if crowd[1] else rles[1:3])],
                            "iscrowd": crowd, "iou": np.asarray(iou).tolist()})
    dtb = [[10.0, 10.0, 20.0, 30.0], [12.5, 8.25, 18.0, 25.5], [50.0, 50.0, 5.0, 5.0]]
    gtb = [[11.0, 9.0, 19.0, 31.0], [0.0, 0.0, 100.0, 100.0]]
    for crowd in ([0, 0], [0, 1]):
        out["bbox_ious"].append({"dt": dtb, "gt": gtb, "iscrowd": crowd,
                                 "iou": np.asarray(mask_utils.iou(dtb, gtb, crowd)).tolist()})
    p = COCOeval(iouType="bbox").params
    out["params"] = {"iouThrs": [float(v) for v in p.iouThrs], "recThrs": [float(v) for v in p.recThrs]}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/coco_eval")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(SEED)

    gt, dets, probe, _ = make_mixed(rng)
    segm_only = [{k: v for k, v in d.items() if k != "bbox"} for d in dets]
    write_case(args.out, "mixed", gt, [("dt", dets, "bbox"), ("dt", dets, "segm"),
                                       ("dt_segm_only", segm_only, "segm")], probe)
    gt, dets = make_perfect(rng)
    probe = [(1, 1), (2, 2)]
    write_case(args.out, "perfect", gt, [("dt", dets, "bbox"), ("dt", dets, "segm")], probe)
    write_case(args.out, "no_dets", gt, [("dt", [], "bbox"), ("dt", [], "segm")], probe)
    with open(os.path.join(args.out, "masks.json"), "w") as f:
        json.dump(mask_cases(rng), f, separators=(",", ":"))
    total = sum(os.path.getsize(os.path.join(args.out, n)) for n in os.listdir(args.out))
    print(f"wrote {args.out} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
