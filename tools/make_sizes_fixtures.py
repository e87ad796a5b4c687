#!/usr/bin/env python3
"""tests/fixtures/sizes: models whose graphs compute sizes and lists from their inputs' shape, as
users write them, each exported the usual ways with a dynamic batch (and length), with float64
references (tests/sizes.rs):
  lists_{legacy,dynamo_noopt}.onnx   torch.split with uneven sizes, unbind + stack, chunk,
                tensor_split: sequence ops (SplitToSequence, SequenceAt) and split sizes computed
                from Shape (import/sequences.rs, import/fold.rs)
  pad_len_{legacy,dynamo}.onnx       F.pad(y, (0, (4 - y.shape[-1] % 4) % 4)) on a dynamic length:
                the pads are known once the length is (graph_passes::sizes)
  half_batch_{legacy,dynamo}.onnx    y[: y.shape[0] // 2] * 2 (a size computed from the batch)
  <model>_batch.npz   x, y (a batch of another size than the export's)
  <model>_ref.npz     loss, grad/<param>: mean cross-entropy, float64
  pad_len_train.npz   20 samples for a short `train` run
Needs torch and onnxscript:  .venv/bin/python tools/make_sizes_fixtures.py
"""
import os
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "sizes")
warnings.filterwarnings("ignore")


class Lists(nn.Module):
    def __init__(self):
        super().__init__()
        self.l = nn.Linear(6, 6)
        self.head = nn.Linear(18, 3)

    def forward(self, x):
        x = self.l(x)
        parts = torch.split(x, [1, 2, 3], dim=1)
        y = torch.stack([p.sum(1) for p in parts], 1)
        z = torch.stack(torch.unbind(x, 1)[::2], 1)
        c = torch.chunk(x, 4, 1)
        w = torch.cat([c[0] * 2, c[-1]], 1)
        return self.head(torch.cat([y, z, w, x.tensor_split(3, 1)[1] ** 2, torch.tanh(x)], 1)[:, :18])


class PadLen(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv1d(2, 3, 3)

    def forward(self, x):
        y = self.c(x)
        y = F.pad(y, (0, (4 - y.shape[-1] % 4) % 4))
        return (y.reshape(y.shape[0], 3, -1, 4) ** 2).mean((2, 3))


class HalfBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.l = nn.Linear(4, 3)

    def forward(self, x):
        y = self.l(x)
        return torch.cat([y[: y.shape[0] // 2] * 2, torch.tanh(y[y.shape[0] // 2 :])], 0)


def export(model, x, dyn, path, how):
    if how == "legacy":
        torch.onnx.export(model, (x,), path, dynamo=False, input_names=["x"], dynamic_axes={"x": dyn})
    else:
        ds = {k: torch.export.Dim(v, min=2) for k, v in dyn.items()}
        torch.onnx.export(model, (x,), path, dynamo=True, optimize=(how == "dynamo"), dynamic_shapes=(ds,))


def reference(model, x, y, path):
    m = model.double()
    loss = F.cross_entropy(m(torch.tensor(x, dtype=torch.float64)), torch.tensor(y))
    grads = torch.autograd.grad(loss, list(m.parameters()))
    out = {"loss": np.array(loss.item())}
    out.update({f"grad/{k}": g.numpy() for (k, _), g in zip(m.named_parameters(), grads)})
    np.savez(path, **out)
    model.float()


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(0)
    cases = [
        ("lists", Lists, (2, 6), {0: "batch"}, ["legacy", "dynamo_noopt"], (5, 6)),
        ("pad_len", PadLen, (2, 2, 9), {0: "batch", 2: "len"}, ["legacy", "dynamo"], (6, 2, 11)),
        ("half_batch", HalfBatch, (4, 4), {0: "batch"}, ["legacy", "dynamo"], (6, 4)),
    ]
    for name, cls, shape, dyn, hows, batch in cases:
        torch.manual_seed(0)
        model = cls().eval()
        for how in hows:
            export(model, torch.randn(*shape), dyn, os.path.join(OUT, f"{name}_{how}.onnx"), how)
        x = rng.standard_normal(batch).astype(np.float32)
        y = rng.integers(0, 3, batch[0]).astype(np.int64)
        np.savez(os.path.join(OUT, f"{name}_batch.npz"), x=x, y=y)
        reference(model, x, y, os.path.join(OUT, f"{name}_ref.npz"))
    x = rng.standard_normal((20, 2, 11)).astype(np.float32)
    y = (x[:, 0].sum(1) > 0).astype(np.int64) + (x[:, 1].sum(1) > 0)
    np.savez(os.path.join(OUT, "pad_len_train.npz"), x=x, y=y)


if __name__ == "__main__":
    main()
