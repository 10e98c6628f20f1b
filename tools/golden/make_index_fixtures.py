#!/usr/bin/env python3
"""Generate PyTorch golden fixtures for slmlp's indexing ops (index_select and
its gradient, sort, argsort, topk), read by tests/golden_index.rs.

Run by hand (torch is never needed by `cargo test`; the files are committed):

    /path/to/python tools/golden/make_index_fixtures.py [--out tests/fixtures/golden]

Inputs are drawn in float32 from a per-case seed (torch.manual_seed(crc32(case))).
Keys:

index_select cases `index_select_dim{0,1,2}`: in.x [4, 5, 6] (f32), in.index
  [m] (int64, with repeats), grad_out (f32); out = x.index_select(dim, index)
  and grad.x = d sum(out * grad_out) / dx, both computed in float64.
  params: dim.
sort cases `index_sort_{desc,asc}`: in.x [3, 257] (f32, values on a 1/8 grid
  so they tie, and NaNs); values / indices = torch.sort(x, dim=-1,
  descending, stable=True) (values f32: exact copies; indices int64).
  params: descending.
topk case `index_topk`: in.x [4, 1000] (f32, distinct values: torch.topk
  leaves the order of ties unspecified); values / indices = torch.topk(x, k,
  dim=-1, largest=True, sorted=True). params: k.
"""

import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from torch_common import F32, F64, Writer, out_dir_arg, seed_for  # noqa: E402


def make_index_select(w):
    for dim, m in [(0, 7), (1, 9), (2, 4)]:
        case = f"index_select_dim{dim}"
        seed_for(case)
        x = torch.randn(4, 5, 6, dtype=F32)
        size = x.shape[dim]
        index = torch.randint(0, size, (m,), dtype=torch.int64)
        index[2] = index[0]  # a repeat: two gradient slices add into one
        shape = list(x.shape)
        shape[dim] = m
        grad_out = torch.randn(*shape, dtype=F32)
        x64 = x.double().requires_grad_()
        out = x64.index_select(dim, index)
        (out * grad_out.double()).sum().backward()
        w.save_op(case, "index_select", {"dim": dim},
                  {"in.x": x, "in.index": index, "grad_out": grad_out,
                   "out": out.detach(), "grad.x": x64.grad})


def make_sort(w):
    for descending in [True, False]:
        case = f"index_sort_{'desc' if descending else 'asc'}"
        seed_for(case)
        x = (torch.randn(3, 257, dtype=F32) * 8).round() / 8
        x[0, 5] = float("nan")
        x[1, 100] = float("nan")
        x[1, 200] = float("nan")
        values, indices = torch.sort(x, dim=-1, descending=descending, stable=True)
        w.save_op(case, "sort", {"descending": descending},
                  {"in.x": x, "values": values, "indices": indices},
                  compute_dtype="float32")


def make_topk(w):
    case = "index_topk"
    seed_for(case)
    # distinct values: a random permutation of a grid
    x = torch.stack([torch.randperm(1000).to(F32) / 7 - 50 for _ in range(4)])
    k = 150
    values, indices = torch.topk(x, k, dim=-1, largest=True, sorted=True)
    w.save_op(case, "topk", {"k": k}, {"in.x": x, "values": values, "indices": indices},
              compute_dtype="float32")


def main():
    out = out_dir_arg(__doc__.splitlines()[0], "tests/fixtures/golden")
    w = Writer(out)
    make_index_select(w)
    make_sort(w)
    make_topk(w)
    w.report()


if __name__ == "__main__":
    main()
