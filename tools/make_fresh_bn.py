#!/usr/bin/env python3
"""tests/fixtures/fresh_bn: a freshly built CNN (PyTorch's initial BatchNorm: weight 1, bias 0,
running mean 0, variance 1) exported with the defaults people use, which fold BatchNorm into the
convolutions, and its float64 train-mode reference, for the restoration of fresh BatchNorm layers
(graph-passes/src/import/fresh_bn.rs; tests/zoo.rs):
  dynamo.onnx   torch.onnx.export(model, (x,), path, dynamo=True, dynamic_shapes=batch): the dynamo
                exporter's optimizer folds bn1 (conv1 has no bias: the folded bias is exactly zero
                and is removed, which proves the fresh state) and bn2 (conv2 has a bias: only
                --assume-fresh-batchnorm can say so; eps 1e-3, momentum 0.2)
  legacy.onnx   the legacy exporter's default (constant folding): the BatchNorm names are gone
  batch.npz     x [8, 3, 8, 8], y [8]
  reference.npz loss, grad/<param> (mean cross-entropy, train mode, float64) and bn_after/<buffer>
                (the running statistics after that forward)
  linear_dynamo.onnx, linear_batch.npz, linear_reference.npz   the same for ConvTranspose2d +
                BatchNorm2d (momentum 0.3) and Linear + BatchNorm1d (eps 1e-3): the optimizer
                folds them into the ConvTranspose and the Gemm
  noaffine_dynamo.onnx   BatchNorm2d(affine=False) folded: refused, saying why the flag cannot help
Needs torch and onnxscript:  .venv/bin/python tools/make_fresh_bn.py
"""
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "fresh_bn")


class FreshCnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, bias=True)
        self.bn2 = nn.BatchNorm2d(6, eps=1e-3, momentum=0.2)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


class FreshLinear(nn.Module):
    """Linear + BatchNorm1d (folded into the Gemm: FuseBatchNormIntoGemm) and ConvTranspose2d +
    BatchNorm2d (FuseBatchNormIntoConvTranspose)."""

    def __init__(self):
        super().__init__()
        self.up = nn.ConvTranspose2d(3, 4, 2, stride=2, bias=False)
        self.bn_up = nn.BatchNorm2d(4, momentum=0.3)
        self.fc1 = nn.Linear(4, 6)
        self.bn_fc = nn.BatchNorm1d(6, eps=1e-3)
        self.fc2 = nn.Linear(6, 5)

    def forward(self, x):
        x = torch.relu(self.bn_up(self.up(x))).mean((2, 3))
        return self.fc2(torch.relu(self.bn_fc(self.fc1(x))))


def reference(m, x, y, path):
    r = m.double().train()
    loss = F.cross_entropy(r(x.double()), y)
    names = [n for n, _ in r.named_parameters()]
    grads = torch.autograd.grad(loss, [p for _, p in r.named_parameters()])
    ref = {"loss": np.float64(loss.item())}
    for n, gr in zip(names, grads):
        ref[f"grad/{n}"] = gr.numpy()
    for n, b in r.named_buffers():
        if n.endswith("running_mean") or n.endswith("running_var"):
            ref[f"bn_after/{n}"] = b.detach().numpy()
    np.savez(path, **ref)
    return loss.item(), len(names)


def linear_fixture():
    """linear_dynamo.onnx, linear_batch.npz, linear_reference.npz: FreshLinear's default export."""
    torch.manual_seed(2)
    m = FreshLinear().eval()
    ex = torch.randn(2, 3, 3, 3)
    prog = torch.onnx.export(m, (ex,), dynamo=True, input_names=["x"], output_names=["logits"],
                             dynamic_shapes=({0: torch.export.Dim("batch")},))
    prog.save(os.path.join(OUT, "linear_dynamo.onnx"), external_data=False)
    from zoo import strip_stack_traces  # noqa: E402
    strip_stack_traces(os.path.join(OUT, "linear_dynamo.onnx"))
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 3, 3, 3, generator=g)
    y = torch.randint(0, 5, (8,), generator=g)
    np.savez(os.path.join(OUT, "linear_batch.npz"), x=x.numpy(), y=y.numpy())
    return reference(m, x, y, os.path.join(OUT, "linear_reference.npz"))


class NoAffine(nn.Module):
    """BatchNorm2d(affine=False): no weight and bias, so nothing for the fold to have divided; the
    refusal says so (noaffine_dynamo.onnx)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4, affine=False)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def main():
    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    m = FreshCnn().eval()
    ex = torch.randn(2, 3, 8, 8)
    prog = torch.onnx.export(m, (ex,), dynamo=True, input_names=["x"], output_names=["logits"],
                             dynamic_shapes=({0: torch.export.Dim("batch")},))
    prog.save(os.path.join(OUT, "dynamo.onnx"), external_data=False)
    import sys
    sys.path.insert(0, os.path.join(ROOT, "tools", "zoo"))
    from zoo import strip_stack_traces  # noqa: E402
    strip_stack_traces(os.path.join(OUT, "dynamo.onnx"))
    torch.onnx.export(m, (ex,), os.path.join(OUT, "legacy.onnx"), dynamo=False, input_names=["x"],
                      output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 3, 8, 8, generator=g)
    y = torch.randint(0, 5, (8,), generator=g)
    np.savez(os.path.join(OUT, "batch.npz"), x=x.numpy(), y=y.numpy())
    loss, count = reference(m, x, y, os.path.join(OUT, "reference.npz"))
    print(f"loss {loss:.6f}; {count} parameters")
    loss, count = linear_fixture()
    print(f"linear: loss {loss:.6f}; {count} parameters")
    torch.manual_seed(4)
    prog = torch.onnx.export(NoAffine().eval(), (torch.randn(2, 3, 6, 6),), dynamo=True, input_names=["x"],
                             output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},))
    prog.save(os.path.join(OUT, "noaffine_dynamo.onnx"), external_data=False)
    strip_stack_traces(os.path.join(OUT, "noaffine_dynamo.onnx"))


if __name__ == "__main__":
    main()
