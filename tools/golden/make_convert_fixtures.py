#!/usr/bin/env python3
"""Fixture of the documented ResNet path, torchvision `.pth` ->
tools/convert_torchvision.py -> `slmlp forward` -> torchvision's logits,
read by models/tests/convert_cli.rs.

Run by hand (torch is never needed by `cargo test`; the output is committed):

    python3 tools/golden/make_convert_fixtures.py [--out tests/fixtures/golden]

torchvision's resnet18 (1000 classes) is 45 MB, too big to commit, so its
weights are the counter hash of tools/golden/export_resnet50.py keyed by the
torchvision names, which the Rust test rebuilds. The script

1. builds `torchvision.models.resnet18(weights=None)`, hash-initialises it
   and `torch.save`s its state_dict (num_batches_tracked included, as a
   torchvision checkpoint has them) to a temporary `.pth`;
2. runs `tools/convert_torchvision.py` on it, exactly as the docs say;
3. checks that every converted tensor equals the hash value of its name
   (so the test's rebuilt weights are the converter's), and stores the
   converter's metadata as it wrote it;
4. runs the torch model in eval mode, float32 and float64, on the input.

File convert_resnet18.safetensors, metadata "converted" (the converter's
metadata, JSON), "param_names" (name -> shape of the converted tensors).
Tensors: input [2, 3, 64, 64] (u("convert.input", j)), logits [2, 1000]
(torch float32), logits64 (torch float64, stored as float32).
"""

import json
import os
import subprocess
import sys
import tempfile

import torch
import torchvision
from safetensors import safe_open

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from export_resnet50 import hash_init_, hash_init_value, hash_input  # noqa: E402
from torch_common import REPO, Writer, out_dir_arg  # noqa: E402


def main():
    out_dir = out_dir_arg(__doc__.splitlines()[0], "tests/fixtures/golden")
    net = torchvision.models.resnet18(weights=None)
    hash_init_(net)
    net.eval()
    with tempfile.TemporaryDirectory() as tmp:
        pth = os.path.join(tmp, "resnet18.pth")
        dst = os.path.join(tmp, "resnet18.safetensors")
        torch.save(net.state_dict(), pth)
        subprocess.run([sys.executable, os.path.join(REPO, "tools/convert_torchvision.py"), pth, dst],
                       check=True)
        with safe_open(dst, framework="pt") as f:
            meta = f.metadata()
            names = {k: list(f.get_tensor(k).shape) for k in f.keys()}
            for k in f.keys():
                t = f.get_tensor(k)
                assert t.dtype == torch.float32, k
                assert torch.equal(t, hash_init_value(k, tuple(t.shape))), f"{k} is not its hash value"
    x = hash_input("convert.input", (2, 3, 64, 64))
    with torch.no_grad():
        logits = net(x)
        logits64 = net.double()(x.double())
    w = Writer(out_dir)
    w.save("convert_resnet18",
           {"input": x, "logits": logits, "logits64": logits64.float()},
           {"converted": json.dumps(meta), "param_names": names})
    print(f"converted metadata: {meta}")
    w.report()


if __name__ == "__main__":
    main()
