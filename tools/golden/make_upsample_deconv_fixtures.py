#!/usr/bin/env python3
"""Generate PyTorch golden fixtures for slmlp's transposed convolution and
upsampling ops, read by tests/golden_deconv_upsample.rs.

Run by hand (torch is never needed by `cargo test`; the files are committed):

    /path/to/python tools/golden/make_upsample_deconv_fixtures.py [--out tests/fixtures/golden]

Conventions (as make_detection_fixtures.py): every float input and grad_out
is drawn in float32 from a per-case seed (torch.manual_seed(crc32(case))) and
stored as float32, so the engine's f32 and f64 paths see exactly these
values; the reference results are computed by torch in float64 and stored as
float64 (the tests compare f64 to 1e-6 and f32 to 1e-5, relative to the
largest reference magnitude). Keys:

deconv_* (F.conv_transpose2d): in.x [N, Cin, H, W], in.weight
  [Cin, Cout/groups, kh, kw], in.bias [Cout] (absent for *_nobias), grad_out;
  out, grad.x, grad.weight, grad.bias = gradients of sum(out * grad_out).
  params: stride, padding, output_padding, dilation, groups.
upsample_nearest_* (F.interpolate mode="nearest"): in.x, grad_out; out,
  grad.x. params: out_hw, and scale (int, the scale_factor passed instead
  of the size) or null.
  upsample_nearest_*_f32ref: the reference (out, grad.x, stored float32) is
  torch's float32 result (see check_nearest_rule for why).
upsample_bilinear_* (F.interpolate mode="bilinear"): as nearest, params:
  out_hw, align_corners.

Before writing, the script checks over a grid of sizes that torch's nearest
indices (forward and backward) equal the float32 rule the engine implements
(nearest_idx in aten/src/ATen/native/UpSample.h), and that the non-integer
cases make that rule differ from exact floor(d * in / out).
"""

import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from torch_common import F32, F64, Writer, out_dir_arg, randn, seed_for  # noqa: E402


def case(w, name, op, params, inputs, fn):
    """inputs: name -> float32 tensor; fn(**float64 leaves) -> float64 out."""
    dbl = {k: v.to(F64).requires_grad_(True) for k, v in inputs.items()}
    out = fn(**dbl)
    grad_out = randn(*out.shape)
    (out * grad_out.to(F64)).sum().backward()
    tensors = {"in." + k: v for k, v in inputs.items()}
    tensors["out"] = out.detach()
    tensors["grad_out"] = grad_out
    for k, v in dbl.items():
        tensors["grad." + k] = v.grad
    w.save_op(name, op, params, tensors)


# --------------------------------------------------------------------------
# conv_transpose2d
# --------------------------------------------------------------------------

def deconv(w, name, n, cin, cout, hw, k, s, p, op, d, g, bias=True):
    seed_for(name)
    inputs = {
        "x": randn(n, cin, *hw),
        "weight": randn(cin, cout // g, *k) * 0.5,
    }
    if bias:
        inputs["bias"] = randn(cout)
    params = {"stride": s, "padding": p, "output_padding": op, "dilation": d, "groups": g}

    def fn(x, weight, bias=None):
        return F.conv_transpose2d(x, weight, bias, s, p, op, g, d)

    case(w, name, "conv_transpose2d", params, inputs, fn)


def make_deconv(w):
    # The Mask R-CNN mask head's ConvTranspose2d(256, 256, 2, 2), narrowed.
    deconv(w, "deconv_mask_head", 3, 12, 12, (6, 6), (2, 2), (2, 2), (0, 0), (0, 0), (1, 1), 1)
    deconv(w, "deconv_basic", 1, 3, 4, (5, 6), (3, 3), (1, 1), (0, 0), (0, 0), (1, 1), 1)
    deconv(w, "deconv_s2_p1_op1", 2, 3, 5, (4, 5), (3, 3), (2, 2), (1, 1), (1, 1), (1, 1), 1)
    deconv(w, "deconv_groups", 2, 4, 6, (5, 4), (3, 2), (2, 1), (1, 0), (1, 0), (1, 1), 2)
    deconv(w, "deconv_dilation", 2, 3, 4, (4, 5), (3, 3), (2, 2), (2, 1), (1, 0), (2, 2), 1)
    # output_padding >= stride, allowed because it is below the dilation
    deconv(w, "deconv_outpad_dilation", 2, 2, 3, (5, 4), (3, 2), (1, 1), (1, 0), (1, 1), (2, 3), 1)
    deconv(w, "deconv_depthwise_nobias", 2, 3, 3, (3, 5), (1, 4), (3, 2), (0, 1), (2, 1), (1, 1), 3,
           bias=False)
    deconv(w, "deconv_1x1", 3, 5, 4, (3, 4), (1, 1), (1, 1), (0, 0), (0, 0), (1, 1), 1)


# --------------------------------------------------------------------------
# upsampling
# --------------------------------------------------------------------------

def rule_idx(dst, inp, out, scale=None):
    """The engine's nearest index rule (torch's nearest_idx), in float32."""
    if out == inp:
        return dst
    if out == 2 * inp:
        return dst >> 1
    if scale is not None and scale > 0:
        sc = np.float32(1.0 / scale)
    else:
        sc = np.float32(inp) / np.float32(out)
    return min(int(np.floor(np.float32(dst) * sc)), inp - 1)


def nearest(x, out_hw, scale):
    if scale is None:
        return F.interpolate(x, size=out_hw, mode="nearest")
    return F.interpolate(x, scale_factor=float(scale), mode="nearest")


def torch_idx(inp, out, dtype, scale=None, rows=1):
    """Forward source indices along the width and backward hit counts x
    weights, for a [1, 1, rows, inp] input resized to [rows*s or rows, out]."""
    x = torch.arange(inp, dtype=dtype).view(1, 1, 1, inp).expand(1, 1, rows, inp).contiguous()
    x.requires_grad_(True)
    out_hw = (rows, out) if scale is None else None
    y = nearest(x, out_hw, scale)
    g = torch.tensor([float(d + 1) for d in range(out)], dtype=dtype).expand_as(y[0, 0]).reshape(y.shape)
    (y * g).sum().backward()
    fwd = [int(v) for v in y[0, 0, 0].tolist()]
    bwd = [v / y.shape[2] for v in x.grad[0, 0].sum(0).tolist()]
    return fwd, bwd


def check_nearest_rule():
    """Torch's nearest indices against rule_idx, forward and backward.

    float32 (and the half types, which compute in float32) use rule_idx on
    every path. float64 differs: torch's backward and its small-output
    forward (out_h + out_w <= 128, or channels-last) use rule_idx, but its
    generic forward computes the ratio in double, so e.g. 45 -> 129 picks
    row 15 for output 43 where float32 picks 14. The engine keeps the
    float32 rule for every dtype (forward and backward agree); the float64
    fixtures below stay within out_h + out_w <= 128 and the wide case is
    referenced in float32.
    """
    def expect(inp, out, scale=None):
        fwd = [rule_idx(d, inp, out, scale) for d in range(out)]
        bwd = [0.0] * inp
        for d, i in enumerate(fwd):
            bwd[i] += d + 1
        return fwd, bwd

    for inp in range(1, 40):
        for out in list(range(1, 100)) + [129, 150, 201]:
            want = expect(inp, out)
            assert torch_idx(inp, out, F32, rows=1) == want, f"f32 {inp}->{out}"
            f64 = torch_idx(inp, out, F64, rows=1)
            assert f64[1] == want[1], f"f64 backward {inp}->{out}"
            if out + 1 <= 128:
                assert f64[0] == want[0], f"f64 forward {inp}->{out}"
        for scale in range(1, 6):
            want = expect(inp, inp * scale, scale)
            assert torch_idx(inp, inp * scale, F32, scale, rows=1) == want, f"f32 {inp} x{scale}"
    # the cases below must exercise float32 rounding (rule != exact floor)
    for inp, out in ((14, 46), (21, 69), (45, 129)):
        exact = [min(d * inp // out, inp - 1) for d in range(out)]
        assert [rule_idx(d, inp, out) for d in range(out)] != exact, (inp, out)


def upsample(w, name, shape, out_hw, mode, scale=None, align_corners=None, ref=F64):
    seed_for(name)
    inputs = {"x": randn(*shape)}
    if mode == "nearest":
        params = {"out_hw": list(out_hw), "scale": scale}
        if ref == F64:
            assert out_hw[0] + out_hw[1] <= 128, "float64 nearest reference needs out_h + out_w <= 128"

        def fn(x):
            return nearest(x, None if scale else out_hw, scale)
    else:
        params = {"out_hw": list(out_hw), "align_corners": align_corners}

        def fn(x):
            return F.interpolate(x, size=out_hw, mode="bilinear", align_corners=align_corners)

    if ref == F64:
        case(w, name, "upsample_" + mode, params, inputs, fn)
    else:
        # float32 reference: the op and its backward run in float32 (nearest
        # copies exactly; its gradient sums at most a few terms).
        x = inputs["x"].clone().requires_grad_(True)
        out = fn(x)
        grad_out = randn(*out.shape)
        (out * grad_out).sum().backward()
        w.save_op(name, "upsample_" + mode, params, {
            "in.x": inputs["x"], "out": out.detach(), "grad_out": grad_out, "grad.x": x.grad,
        }, compute_dtype="float32")


def make_upsample(w):
    check_nearest_rule()
    upsample(w, "upsample_nearest_5x7_10x14", (2, 3, 5, 7), (10, 14), "nearest")
    upsample(w, "upsample_nearest_13x17_25x34", (1, 2, 13, 17), (25, 34), "nearest")
    upsample(w, "upsample_nearest_6x4_18x12", (2, 2, 6, 4), (18, 12), "nearest")
    upsample(w, "upsample_nearest_9x11_5x4", (2, 2, 9, 11), (5, 4), "nearest")
    upsample(w, "upsample_nearest_14x21_46x69", (1, 2, 14, 21), (46, 69), "nearest")
    upsample(w, "upsample_nearest_2x45_3x129_f32ref", (1, 2, 2, 45), (3, 129), "nearest", ref=F32)
    upsample(w, "upsample_nearest_scale2", (2, 3, 5, 6), (10, 12), "nearest", scale=2)
    upsample(w, "upsample_nearest_scale3", (1, 2, 7, 5), (21, 15), "nearest", scale=3)
    for ac in (False, True):
        a = int(ac)
        upsample(w, f"upsample_bilinear_5x7_11x16_ac{a}", (2, 2, 5, 7), (11, 16), "bilinear",
                 align_corners=ac)
        upsample(w, f"upsample_bilinear_13x17_6x9_ac{a}", (1, 2, 13, 17), (6, 9), "bilinear",
                 align_corners=ac)
        upsample(w, f"upsample_bilinear_7x6_1x13_ac{a}", (1, 3, 7, 6), (1, 13), "bilinear",
                 align_corners=ac)
        upsample(w, f"upsample_bilinear_14x14_28x28_ac{a}", (1, 2, 14, 14), (28, 28), "bilinear",
                 align_corners=ac)


def main():
    w = Writer(out_dir_arg(__doc__.split("\n")[0], "tests/fixtures/golden"))
    make_deconv(w)
    make_upsample(w)
    w.report()


if __name__ == "__main__":
    main()
