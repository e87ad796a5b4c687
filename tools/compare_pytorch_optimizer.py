#!/usr/bin/env python3
"""One step of onnxsam's GSAM and WSAM against pytorch-optimizer's own classes (docs/optimizers.md).

Not run in CI (needs torch and pytorch-optimizer). Setup as for tools/export_models.py, plus
`pip install pytorch-optimizer`, and a release build; then
    .venv/bin/python tools/compare_pytorch_optimizer.py

models/cnn.onnx on tests/fixtures/cnn/batch.npz, base SGD (lr 0.1, momentum 0.9, no weight decay),
ρ = 0.05, from a fresh state: pytorch-optimizer's GSAM (α = 0.4 and 0.2, a constant ρ) and
WSAM(decouple=False) (γ = 0.9 and 0.3) in float32, as a user runs them, against `onnxsam step`.
Prints ‖Δ update‖/‖update‖ per run; float32 rounding puts it near 1e-6.
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_optimizer import GSAM, WSAM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_models import CNN  # noqa: E402
from reference_steps import load_from_onnx  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ONNXSAM = os.path.join(ROOT, "target", "release", "onnxsam")
MODEL = os.path.join(ROOT, "models", "cnn.onnx")
BATCH = os.path.join(ROOT, "tests", "fixtures", "cnn", "batch.npz")
LR, MU, RHO = 0.1, 0.9, 0.05


class ConstantRho:
    """GSAM's rho scheduler, held at ρ."""

    def step(self):
        return RHO


def fresh():
    m = CNN()
    load_from_onnx(m, MODEL)
    return m.train()


def theirs(kind, value, x, y):
    m = fresh()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    if kind == "gsam":
        base = torch.optim.SGD(m.parameters(), lr=LR, momentum=MU)
        opt = GSAM(m.parameters(), base, m, ConstantRho(), alpha=value)
        opt.set_closure(F.cross_entropy, x, y)
        opt.step()
    else:
        opt = WSAM(m, m.parameters(), torch.optim.SGD, rho=RHO, gamma=value, decouple=False, lr=LR, momentum=MU)

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(m(x), y)
            loss.backward()
            return loss

        opt.step(closure)
    return {n: (p.detach() - before[n]).double().numpy() for n, p in m.named_parameters()}, before


def ours(kind, value, tmp):
    out = os.path.join(tmp, f"{kind}-{value}.npz")
    flag = "--gsam-alpha" if kind == "gsam" else "--wsam-gamma"
    subprocess.run(
        [ONNXSAM, "step", MODEL, "--batch", BATCH, "--out", out, "--optimizer", kind, flag, str(value),
         "--lr", str(LR), "--momentum", str(MU), "--rho", str(RHO), "--backend", "tract"],
        check=True, capture_output=True)
    return np.load(out)


def main():
    torch.manual_seed(0)
    b = np.load(BATCH)
    x, y = torch.from_numpy(b["input"]), torch.from_numpy(b["y"].astype(np.int64))
    with tempfile.TemporaryDirectory() as tmp:
        for kind, value in [("gsam", 0.4), ("gsam", 0.2), ("wsam", 0.9), ("wsam", 0.3)]:
            du, before = theirs(kind, value, x, y)
            got = ours(kind, value, tmp)
            diff = sum((((got[n] - before[n].double().numpy()) - d) ** 2).sum() for n, d in du.items()) ** 0.5
            norm = sum((d ** 2).sum() for d in du.values()) ** 0.5
            print(f"{kind} {value}: onnxsam vs pytorch-optimizer, ‖Δ update‖/‖update‖ = {float(diff / norm):.2e}")


if __name__ == "__main__":
    main()
