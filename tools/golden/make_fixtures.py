#!/usr/bin/env python3
"""Generate PyTorch golden-vector fixtures for slmlp's CPU backend tests.

Run by hand (torch is NEVER needed in CI; the generated files are committed):

    /path/to/python tools/golden/make_fixtures.py [--out tests/fixtures/golden]

Every input is generated in float32 from a fixed per-case seed, the op and its
backward are computed in float64 (inputs cast to double), and every output is
cast back to float32 for storage.  See tools/golden/README.md for the naming
convention and the exact list of cases.
"""

import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from torch_common import F32, F64, CifarResNet, Writer, out_dir_arg, randn, seed_for  # noqa: E402


def away_from_zero(x, margin=0.05):
    """Push every element to |x| >= margin (keeps the sign; 0 goes positive)."""
    sign = torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))
    return torch.where(x.abs() < margin, sign * (x.abs() + margin), x)


def f32(t):
    return t.detach().to(F32).contiguous()


def op_case(w, case, op, params, inputs, fn, diff, extra_inputs=None, after=None):
    """Generic op fixture.

    inputs: dict name -> float32 (or int64) tensor (already generated).
    fn(**double_inputs) -> output tensor (float64).
    diff: names of inputs that get `grad.<name>`.
    extra_inputs: dict name -> tensor passed to fn but cloned (e.g. running stats
      that fn mutates); saved as `in.<name>` with their initial value.
    after(double_extra) -> dict of extra outputs to save.
    """
    dbl = {}
    for k, v in inputs.items():
        if v.dtype == F32:
            t = v.to(F64)
            if k in diff:
                t.requires_grad_(True)
            dbl[k] = t
        else:
            dbl[k] = v.clone()
    extra_dbl = {}
    for k, v in (extra_inputs or {}).items():
        extra_dbl[k] = v.to(F64).clone() if v.dtype == F32 else v.clone()
    out = fn(**dbl, **extra_dbl)
    # Upstream gradient: random, same shape as out. For scalar outputs, a 0-d
    # tensor with a random value in [0.5, 1.5).
    if out.dim() == 0:
        grad_out = (torch.rand((), dtype=F32) + 0.5)
    else:
        grad_out = randn(*out.shape)
    tensors = {}
    for k, v in inputs.items():
        tensors["in." + k] = v.clone()
    for k, v in (extra_inputs or {}).items():
        tensors["in." + k] = v.clone()
    tensors["out"] = f32(out)
    tensors["grad_out"] = grad_out.clone()
    if diff:
        (out * grad_out.to(F64)).sum().backward()
        for k in diff:
            tensors["grad." + k] = f32(dbl[k].grad)
    if after is not None:
        for k, v in after(extra_dbl).items():
            tensors[k] = f32(v)
    meta = {
        "op": op,
        "params": params,
        "inputs": sorted(list(inputs) + list(extra_inputs or {})),
        "grads": sorted(diff),
    }
    w.save(case, tensors, meta)


# --------------------------------------------------------------------------
# Op fixtures
# --------------------------------------------------------------------------

def make_ops(w):
    # ---- matmul ----
    seed_for("matmul")
    op_case(w, "matmul", "matmul", {},
            {"x": randn(5, 7), "w": randn(7, 3)},
            lambda x, w: torch.matmul(x, w), ["x", "w"])
    seed_for("matmul_batched")
    op_case(w, "matmul_batched", "matmul", {},
            {"x": randn(2, 5, 7), "w": randn(2, 7, 3)},
            lambda x, w: torch.matmul(x, w), ["x", "w"])

    # ---- linear ----
    seed_for("linear")
    op_case(w, "linear", "linear", {"bias": True},
            {"x": randn(6, 7), "weight": randn(5, 7) * 0.4, "bias": randn(5)},
            lambda x, weight, bias: F.linear(x, weight, bias),
            ["x", "weight", "bias"])

    # ---- conv2d ----
    def conv_case(case, n, cin, h, wd, cout, k, stride, padding, dilation, groups, bias):
        seed_for(case)
        params = {"stride": list(stride), "padding": list(padding),
                  "dilation": list(dilation), "groups": groups, "bias": bias}
        fan_in = (cin // groups) * k[0] * k[1]
        inputs = {"x": randn(n, cin, h, wd),
                  "weight": randn(cout, cin // groups, k[0], k[1]) * (1.0 / fan_in) ** 0.5}
        if bias:
            inputs["bias"] = randn(cout)
            fn = lambda x, weight, bias: F.conv2d(x, weight, bias, stride, padding, dilation, groups)
        else:
            fn = lambda x, weight: F.conv2d(x, weight, None, stride, padding, dilation, groups)
        op_case(w, case, "conv2d", params, inputs, fn, list(inputs))

    conv_case("conv2d_basic", 2, 3, 7, 9, 4, (3, 3), (1, 1), (1, 1), (1, 1), 1, True)
    conv_case("conv2d_stride2", 2, 3, 9, 11, 4, (3, 3), (2, 2), (1, 1), (1, 1), 1, True)
    conv_case("conv2d_dilation", 2, 3, 9, 11, 4, (3, 3), (1, 1), (2, 2), (2, 2), 1, True)
    conv_case("conv2d_groups", 2, 4, 7, 9, 6, (3, 3), (1, 2), (1, 0), (1, 1), 2, True)
    conv_case("conv2d_1x1_stride2_nobias", 2, 3, 9, 11, 5, (1, 1), (2, 2), (0, 0), (1, 1), 1, False)
    conv_case("conv2d_7x7_stem", 1, 3, 15, 15, 4, (7, 7), (2, 2), (3, 3), (1, 1), 1, True)
    conv_case("conv2d_3x5_asym", 2, 3, 8, 9, 4, (3, 5), (2, 1), (1, 2), (1, 1), 1, True)

    # ---- batch norm ----
    def bn_case(case, shape, training, post=None, residual=False):
        seed_for(case)
        c = shape[1]
        momentum, eps = 0.1, 1e-5
        params = {"training": training, "momentum": momentum, "eps": eps}
        inputs = {"x": randn(*shape) * 1.5 + 0.3,
                  "weight": 1.0 + 0.2 * randn(c),
                  "bias": 0.2 * randn(c)}
        if residual:
            inputs["residual"] = randn(*shape)
        extra = {"running_mean": 0.1 * randn(c),
                 "running_var": 1.0 + 0.2 * torch.rand(c, dtype=F32)}
        if residual:
            # keep bn(x) + residual away from the relu kink (|pre| >= 0.02)
            pre = F.batch_norm(inputs["x"].double(), None, None, inputs["weight"].double(),
                               inputs["bias"].double(), training=True, eps=eps)
            pre = pre + inputs["residual"].double()
            near = pre.abs() < 0.02
            inputs["residual"] = torch.where(near, inputs["residual"] + 0.05, inputs["residual"])

        def fn(x, weight, bias, running_mean, running_var, residual=None):
            y = F.batch_norm(x, running_mean, running_var, weight, bias,
                             training=training, momentum=momentum, eps=eps)
            if residual is not None:
                y = y + residual
            if post == "relu":
                y = F.relu(y)
            return y

        after = (lambda e: {"running_mean_after": e["running_mean"],
                            "running_var_after": e["running_var"]}) if training else None
        op = {None: "batch_norm", "relu": "bn_relu"}[post]
        if residual:
            op = "bn_add_relu"
        op_case(w, case, op, params, inputs, fn, list(inputs), extra, after)

    bn_case("batch_norm2d_train", (3, 4, 5, 5), True)
    bn_case("batch_norm2d_eval", (3, 4, 5, 5), False)
    bn_case("batch_norm1d_train", (6, 5), True)
    bn_case("batch_norm1d_eval", (6, 5), False)
    bn_case("bn_relu_train", (3, 4, 5, 5), True, post="relu")
    bn_case("bn_add_relu_train", (3, 4, 5, 5), True, post="relu", residual=True)

    # ---- elementwise ----
    seed_for("relu")
    op_case(w, "relu", "relu", {}, {"x": away_from_zero(randn(3, 5, 7))},
            lambda x: F.relu(x), ["x"])
    seed_for("add_broadcast")
    op_case(w, "add_broadcast", "add", {}, {"a": randn(2, 3, 4), "b": randn(3, 1)},
            lambda a, b: a + b, ["a", "b"])
    seed_for("mul_broadcast")
    op_case(w, "mul_broadcast", "mul", {}, {"a": randn(2, 1, 4), "b": randn(3, 4)},
            lambda a, b: a * b, ["a", "b"])

    # ---- pooling ----
    seed_for("max_pool2d")
    n = 2 * 3 * 9 * 9
    x = (torch.randperm(n).to(F32) / n * 4.0 - 2.0).reshape(2, 3, 9, 9)
    mp = {"kernel_size": [3, 3], "stride": [2, 2], "padding": [1, 1],
          "dilation": [1, 1], "ceil_mode": False}
    op_case(w, "max_pool2d", "max_pool2d", mp, {"x": x},
            lambda x: F.max_pool2d(x, 3, 2, 1, 1, False), ["x"])
    seed_for("avg_pool2d")
    ap = {"kernel_size": [3, 3], "stride": [2, 2], "padding": [1, 1],
          "ceil_mode": False, "count_include_pad": True}
    op_case(w, "avg_pool2d", "avg_pool2d", ap, {"x": randn(2, 3, 9, 9)},
            lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=False, count_include_pad=True), ["x"])
    seed_for("adaptive_avg_pool2d_1")
    op_case(w, "adaptive_avg_pool2d_1", "adaptive_avg_pool2d", {"output_size": [1, 1]},
            {"x": randn(2, 3, 7, 7)}, lambda x: F.adaptive_avg_pool2d(x, (1, 1)), ["x"])
    seed_for("adaptive_avg_pool2d_3")
    op_case(w, "adaptive_avg_pool2d_3", "adaptive_avg_pool2d", {"output_size": [3, 3]},
            {"x": randn(2, 3, 7, 8)}, lambda x: F.adaptive_avg_pool2d(x, (3, 3)), ["x"])

    # ---- losses ----
    def ce_case(case, smoothing, ignore_rows):
        seed_for(case)
        logits = randn(6, 5) * 2.0
        target = torch.randint(0, 5, (6,), dtype=torch.int64)
        for r in ignore_rows:
            target[r] = -100
        params = {"label_smoothing": smoothing, "ignore_index": -100, "reduction": "mean"}
        op_case(w, case, "cross_entropy", params, {"x": logits, "target": target},
                lambda x, target: F.cross_entropy(x, target, ignore_index=-100,
                                                  reduction="mean",
                                                  label_smoothing=smoothing),
                ["x"])

    ce_case("cross_entropy", 0.0, [])
    ce_case("cross_entropy_smooth", 0.1, [])
    ce_case("cross_entropy_ignore", 0.1, [1, 4])
    ce_case("cross_entropy_ignore_nosmooth", 0.0, [1, 4])

    seed_for("bce_with_logits")
    op_case(w, "bce_with_logits", "bce_with_logits", {"reduction": "mean"},
            {"x": randn(4, 6) * 2.0, "target": torch.rand(4, 6, dtype=F32)},
            lambda x, target: F.binary_cross_entropy_with_logits(x, target, reduction="mean"),
            ["x"])

    def sl1_case(case, beta):
        seed_for(case)
        x = randn(5, 4)
        # differences on the scale of beta so both the quadratic (|d| < beta)
        # and the linear branch are exercised
        target = x - randn(5, 4) * (1.5 * beta)
        # keep |x - target| away from 0 and from beta (C1 kinks): nudge x
        d = x - target
        bad = ((d.abs() - beta).abs() < 0.02) | (d.abs() < 0.005)
        x = torch.where(bad, x + 0.05, x)
        op_case(w, case, "smooth_l1", {"beta": beta, "reduction": "mean"},
                {"x": x, "target": target},
                lambda x, target: F.smooth_l1_loss(x, target, reduction="mean", beta=beta),
                ["x"])

    sl1_case("smooth_l1_beta0.111", 1.0 / 9.0)
    sl1_case("smooth_l1_beta1", 1.0)

    # ---- reductions / softmax ----
    seed_for("sum_dim")
    op_case(w, "sum_dim", "sum", {"dim": [1], "keepdim": False}, {"x": randn(3, 4, 5)},
            lambda x: x.sum(dim=1, keepdim=False), ["x"])
    seed_for("mean_all")
    op_case(w, "mean_all", "mean", {"dim": None, "keepdim": False}, {"x": randn(3, 4, 5)},
            lambda x: x.mean(), ["x"])
    seed_for("log_softmax")
    op_case(w, "log_softmax", "log_softmax", {"dim": 1}, {"x": randn(4, 7) * 2.0},
            lambda x: F.log_softmax(x, dim=1), ["x"])


# --------------------------------------------------------------------------
# Tiny ResNet (torchvision naming / BasicBlock forward, CIFAR stem)
# --------------------------------------------------------------------------

def make_tiny_resnet(w):
    seed_for("tiny_resnet")
    widths, blocks, num_classes = [4, 8, 16, 32], [1, 1, 1, 1], 5
    lr, momentum, wd, steps = 0.05, 0.9, 5e-4, 3
    model = CifarResNet(blocks, widths, num_classes)  # float32 init
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.add_(0.1 * torch.randn_like(m.weight))
                m.bias.add_(0.1 * torch.randn_like(m.bias))
    x = randn(2, 3, 16, 16)
    target = torch.randint(0, num_classes, (2,), dtype=torch.int64)

    tensors = {}
    for name, p in model.named_parameters():
        tensors["param." + name] = f32(p)
    for name, b in model.named_buffers():
        if name.endswith("num_batches_tracked"):
            continue
        tensors["buffer." + name] = f32(b)
    tensors["input"] = x.clone()
    tensors["target"] = target.clone()

    model = model.double()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                          weight_decay=wd, nesterov=False)
    xd = x.to(F64)
    step_losses = []
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        logits = model(xd)
        loss = F.cross_entropy(logits, target)
        loss.backward()
        step_losses.append(loss.item())
        if step == 0:
            tensors["logits"] = f32(logits)
            tensors["loss"] = f32(loss)
            for name, p in model.named_parameters():
                tensors["grad." + name] = f32(p.grad)
        opt.step()
    tensors["step_loss"] = torch.tensor(step_losses, dtype=F64).to(F32)
    for name, p in model.named_parameters():
        tensors["final.param." + name] = f32(p)
    for name, b in model.named_buffers():
        if name.endswith("num_batches_tracked"):
            continue
        tensors["final.buffer." + name] = f32(b)
    params = {"widths": widths, "blocks": blocks, "num_classes": num_classes,
              "stem": "cifar", "block": "BasicBlock", "input_shape": [2, 3, 16, 16],
              "lr": lr, "momentum": momentum, "weight_decay": wd, "nesterov": False,
              "dampening": 0.0, "steps": steps, "bn_momentum": 0.1, "bn_eps": 1e-5,
              "loss": "cross_entropy_mean"}
    w.save("tiny_resnet", tensors, {"op": "tiny_resnet", "params": params})


def main():
    out = out_dir_arg(__doc__.splitlines()[0], "tests/fixtures/golden")
    torch.set_num_threads(1)  # determinism of the reference
    w = Writer(out)
    make_ops(w)
    make_tiny_resnet(w)
    w.report()


if __name__ == "__main__":
    main()
