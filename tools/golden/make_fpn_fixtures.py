#!/usr/bin/env python3
"""Golden vectors for models/src/detection/fpn.rs (run by hand; never in CI).

torchvision's FeaturePyramidNetwork with LastLevelMaxPool (what
maskrcnn_resnet50_fpn uses), in float64, over four random backbone maps of
8/16/32/64 channels -> 16 channels. Two cases: sizes that halve exactly
(16x20 .. 2x3) and odd sizes (17x21, 9x11, 5x6, 3x4) where the top-down
nearest upsampling has non-integer ratios. Stores the FPN weights under
torchvision's names (prefix "fpn."), the inputs, the five outputs and the
gradients of sum_i <out_i, r_i> w.r.t. the inputs for fixed random r_i.

    /root/torchvenv/bin/python tools/golden/make_fpn_fixtures.py
"""

import torch
from safetensors.torch import save_file
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

torch.manual_seed(0)
CH = [8, 16, 32, 64]
CASES = {
    "even": [(16, 20), (8, 10), (4, 5), (2, 3)],
    "odd": [(17, 21), (9, 11), (5, 6), (3, 4)],
}

fpn = FeaturePyramidNetwork(CH, 16, extra_blocks=LastLevelMaxPool()).double()
# random biases too, so a missing bias would show
with torch.no_grad():
    for n, p in fpn.named_parameters():
        if n.endswith("bias"):
            p.uniform_(-0.1, 0.1)
tensors = {f"fpn.{n}": p.detach().float().contiguous() for n, p in fpn.named_parameters()}
fpn.float().double()  # weights now exactly the stored f32 values
for case, sizes in CASES.items():
    xs = [torch.randn(1, c, h, w, dtype=torch.float64, requires_grad=True) for c, (h, w) in zip(CH, sizes)]
    # inputs exactly representable in f32
    xs = [x.float().double().detach().requires_grad_() for x in xs]
    out = fpn({str(i): x for i, x in enumerate(xs)})
    outs = list(out.values())
    rs = [torch.randn_like(o) for o in outs]
    sum((o * r).sum() for o, r in zip(outs, rs)).backward()
    for i, x in enumerate(xs):
        tensors[f"{case}.x{i}"] = x.detach().float().contiguous()
        tensors[f"{case}.grad_x{i}"] = x.grad.contiguous()
    for i, (o, r) in enumerate(zip(outs, rs)):
        tensors[f"{case}.out{i}"] = o.detach().contiguous()
        tensors[f"{case}.r{i}"] = r.float().contiguous()
save_file(tensors, "tests/fixtures/fpn/fpn.safetensors", metadata={"torch": torch.__version__})
print({k: list(v.shape) for k, v in tensors.items()})
