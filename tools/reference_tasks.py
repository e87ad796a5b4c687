#!/usr/bin/env python3
"""Datasets and PyTorch first steps for `onnxsam train` on the task families of issue 12
(tests/train_tasks.rs): a token-id transformer (int64 inputs), regression with every float-target
loss (mse, l1, huber, smooth-l1, bce-with-logits), a per-token tagger with two inputs (int64 ids and
a bool mask) and padding labels (ignore_index), and a per-pixel segmentation net.

Not run in CI (needs torch). Setup as for tools/export_models.py, then:
    .venv/bin/python tools/reference_tasks.py

For every task it writes tests/fixtures/tasks/<task>/data.npz (arrays named for the model's inputs,
and `y`) and ref.npz: `loss` (the first step's mean loss) and `next/<param>` (every parameter after
one full-batch step) with `init/<param>` (before it), computed in float64 from the float32 model with the task's optimizer:
  sgd: torch.optim.SGD(lr, momentum) on the mean loss;  sam: SAM with ρ = 0.05 (ε = ρ·g/‖g‖, the
  gradient at θ + ε, then SGD). Per-sample losses are PyTorch's reduction='none' losses averaged over
  a sample's elements (per-token/pixel cross-entropy: over the positions not ignored), the batch loss
  their mean — onnxsam's convention (per-sample losses for RW-SAM), which differs from
  F.cross_entropy(reduction='mean') over all kept tokens when padding varies between samples. New models (tagger, seg) are exported to tests/fixtures/tasks/<model>/model.onnx.
"""
import os
import sys

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import numpy_helper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "tasks")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_models import Transformer  # noqa: E402


class Tagger(nn.Module):
    """Per-token classes of ids [N, 16] under a bool mask [N, 16]: logits [N, 5, 16]."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(32, 16)
        self.mix = nn.Linear(16, 16)
        self.out = nn.Linear(16, 5)

    def forward(self, ids, mask):
        x = self.embed(ids) * mask.unsqueeze(-1).to(torch.float32)
        x = torch.tanh(self.mix(x))
        return self.out(x).transpose(1, 2)


class Seg(nn.Module):
    """Per-pixel classes of images [N, 3, 8, 8]: logits [N, 4, 8, 8]."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.conv2(F.relu(self.conv1(x)))


class OwnLoss(nn.Module):
    """A model that computes its own per-sample loss: inputs x [N, 5] and t [N], output [N]."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 1)

    def forward(self, x, t):
        return (self.fc(x).squeeze(1) - t) ** 2


def params_from_onnx(model, path):
    m = onnx.load(path)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    state = model.state_dict()
    for k in state:
        state[k] = torch.from_numpy(inits[k].copy())
    model.load_state_dict(state)


def per_sample(logits, y, loss, delta=0.5):
    if loss == "output":
        return logits
    if loss == "ce":
        l = F.cross_entropy(logits, y, reduction="none", ignore_index=-100)
        if l.dim() == 1:
            return l
        keep = (y != -100).to(l.dtype)
        dims = tuple(range(1, l.dim()))
        return l.sum(dims) / keep.sum(dims).clamp(min=1)
    f = {
        "mse": lambda a, b: F.mse_loss(a, b, reduction="none"),
        "l1": lambda a, b: F.l1_loss(a, b, reduction="none"),
        "huber": lambda a, b: F.huber_loss(a, b, reduction="none", delta=delta),
        "smooth_l1": lambda a, b: F.smooth_l1_loss(a, b, reduction="none", beta=delta),
        "bce": lambda a, b: F.binary_cross_entropy_with_logits(a, b, reduction="none"),
    }[loss]
    e = f(logits, y)
    return e.reshape(e.shape[0], -1).mean(1)


def first_step(model, inputs, y, loss, opt, lr, momentum=0.9, rho=0.05):
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    init = {f"init/{n}": p.detach().numpy().astype(np.float32).copy() for n, p in zip(names, params)}
    l0 = per_sample(model(*inputs), y, loss).mean()
    g = torch.autograd.grad(l0, params)
    if opt == "sam":
        gn = torch.sqrt(sum((gi ** 2).sum() for gi in g))
        pe = [(p.detach() + rho * gi / (gn + 1e-12)).requires_grad_() for p, gi in zip(params, g)]
        adv = per_sample(torch.func.functional_call(model, dict(zip(names, pe)), tuple(inputs)), y, loss).mean()
        g = torch.autograd.grad(adv, pe)
    sgd = torch.optim.SGD(params, lr=lr, momentum=momentum)
    for p, gi in zip(params, g):
        p.grad = gi.detach().clone()
    sgd.step()
    out = {"loss": np.float32(l0.item()), **init}
    for n, p in zip(names, params):
        out[f"next/{n}"] = p.detach().numpy().astype(np.float32)
    return out


def save(task, data, ref):
    d = os.path.join(OUT, task)
    os.makedirs(d, exist_ok=True)
    np.savez(os.path.join(d, "data.npz"), **data)
    np.savez(os.path.join(d, "ref.npz"), **ref)
    print(f"{task}: loss {float(ref['loss']):.6f}")


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    rng = np.random.default_rng(12)
    # token-id transformer (models/transformer.onnx, dynamo export): SAM
    m = Transformer()
    params_from_onnx(m, os.path.join(ROOT, "models", "transformer.onnx"))
    ids = rng.integers(0, 64, (32, 16)).astype(np.int64)
    y = rng.integers(0, 10, 32).astype(np.int64)
    m.double()
    save("transformer_sam", {"ids": ids, "y": y},
         first_step(m, [torch.from_numpy(ids)], torch.from_numpy(y), "ce", "sam", lr=0.05))
    # regression on tests/fixtures/linreg/model.onnx (x [N, 5] -> [N, 1]): every float-target loss
    x = rng.standard_normal((64, 5)).astype(np.float32)
    t = (x @ np.array([1.0, -2.0, 0.5, 0.0, 3.0], dtype=np.float32) + 0.3 * rng.standard_normal(64)).astype(np.float32)
    for loss in ["mse", "l1", "huber", "smooth_l1", "bce"]:
        lin = nn.Linear(5, 1).double()
        mm = onnx.load(os.path.join(ROOT, "tests", "fixtures", "linreg", "model.onnx"))
        inits = {i.name: numpy_helper.to_array(i) for i in mm.graph.initializer}
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(inits["W"].T.copy()))
            lin.bias.copy_(torch.from_numpy(inits["b"]))
        target = (t > 0).astype(np.float32) if loss == "bce" else t
        ref = first_step(lin, [torch.from_numpy(x).double()], torch.from_numpy(target).double().reshape(-1, 1), loss,
                         "sgd", lr=0.05)
        ref = {"loss": ref["loss"], "next/W": ref["next/weight"].T.copy(), "next/b": ref["next/bias"],
               "init/W": ref["init/weight"].T.copy(), "init/b": ref["init/bias"]}
        save(f"linreg_{loss}", {"x": x, "y": target}, ref)
    # per-token tagger, two inputs (int64 ids, bool mask), padding labels -100; dynamo exporter
    tg = Tagger()
    d = os.path.join(OUT, "tagger")
    os.makedirs(d, exist_ok=True)
    ex_ids = torch.randint(0, 32, (2, 16))
    ex_mask = torch.ones(2, 16, dtype=torch.bool)
    n = torch.export.Dim("N", min=1, max=4096)
    prog = torch.onnx.export(tg, (ex_ids, ex_mask), dynamo=True, opset_version=18, input_names=["ids", "mask"],
                             output_names=["logits"], dynamic_shapes={"ids": {0: n}, "mask": {0: n}}, optimize=False)
    prog.save(os.path.join(d, "model.onnx"), external_data=False)
    params_from_onnx(tg, os.path.join(d, "model.onnx"))
    ids = rng.integers(0, 32, (24, 16)).astype(np.int64)
    lengths = rng.integers(4, 17, 24)
    mask = np.arange(16)[None, :] < lengths[:, None]
    yt = rng.integers(0, 5, (24, 16)).astype(np.int64)
    yt[~mask] = -100
    tg.double()
    save("tagger_sam", {"ids": ids, "mask": mask, "y": yt},
         first_step(tg, [torch.from_numpy(ids), torch.from_numpy(mask)], torch.from_numpy(yt), "ce", "sam", lr=0.1))
    # per-pixel segmentation, legacy exporter without constant folding
    sg = Seg()
    d = os.path.join(OUT, "seg")
    os.makedirs(d, exist_ok=True)
    torch.onnx.export(sg, (torch.randn(2, 3, 8, 8),), os.path.join(d, "model.onnx"), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}},
                      do_constant_folding=False)
    params_from_onnx(sg, os.path.join(d, "model.onnx"))
    xs = rng.standard_normal((16, 3, 8, 8)).astype(np.float32)
    ys = rng.integers(0, 4, (16, 8, 8)).astype(np.int64)
    ys[:, :2, :] = -100  # the top two rows unlabeled
    sg.double()
    save("seg_sgd", {"x": xs, "y": ys},
         first_step(sg, [torch.from_numpy(xs).double()], torch.from_numpy(ys), "ce", "sgd", lr=0.1))
    # a model computing its own per-sample loss (--loss output): data without y
    ol = OwnLoss()
    d = os.path.join(OUT, "own_loss")
    os.makedirs(d, exist_ok=True)
    torch.onnx.export(ol, (torch.randn(2, 5), torch.randn(2)), os.path.join(d, "model.onnx"), dynamo=False,
                      opset_version=17, input_names=["x", "t"], output_names=["loss_per_sample"],
                      dynamic_axes={"x": {0: "N"}, "t": {0: "N"}, "loss_per_sample": {0: "N"}},
                      do_constant_folding=False)
    params_from_onnx(ol, os.path.join(d, "model.onnx"))
    ol.double()
    xo = x[:32]
    to = t[:32]
    save("own_loss_sgd", {"x": xo, "t": to},
         first_step(ol, [torch.from_numpy(xo).double(), torch.from_numpy(to).double()], None, "output", "sgd", lr=0.05))


if __name__ == "__main__":
    main()
