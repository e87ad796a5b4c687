#!/usr/bin/env python3
"""Export the reference models in models/ and their PyTorch fixtures in tests/fixtures/.

Not run in CI. Setup (once; torch pulls ~3 GB):
    python3 -m venv .venv && .venv/bin/pip install torch onnx onnxscript onnxruntime==1.31.1 numpy
    .venv/bin/python tools/export_models.py

Models (seeded, freshly initialised, dynamic batch dimension "N"):
  mlp          1x28x28 -> Flatten -> 784-128-128-10                         old exporter, opset 17 (IR 8/9)
  cnn          1x28x28 -> conv32-pool-conv64-pool-fc128-fc10                old exporter, opset 17
  resnet8      3x32x32 -> ResNet-8 (BatchNormalization kept), widths 16/32/64  old exporter, opset 17,
               do_constant_folding=False, training=EVAL (BN nodes are not folded into convs)
  transformer  token ids [N, 16] -> embedding + positions, one pre-LN attention block
               (LayerNormalization, Softmax, GELU), mean-pool, classifier   new exporter, opset 20 (IR 10,
               node metadata), optimize=False so weights keep their PyTorch names
Fixtures per model: tests/fixtures/<model>/input.npz (batch 4) and output.npz (PyTorch eval-mode outputs);
batch.npz (batch 8: the input and labels `y`) and grads.npz: PyTorch autograd in train mode — `loss`
(mean cross-entropy), `loss_per_sample`, the gradient of every parameter by name, and
`bn_after/<buffer>` (running statistics after that one train-mode forward).
Extra fixtures: tests/fixtures/external/model.onnx + model.onnx.data (transformer with external data);
tests/fixtures/loss_inside/model.onnx (the mlp returning its mean cross-entropy, old exporter) with
batch.npz and grads.npz.
"""
import os
import sys

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, "models")
FIXTURES = os.path.join(ROOT, "tests", "fixtures")


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 128)
        self.fc2 = nn.Linear(128, 128)
        self.fc3 = nn.Linear(128, 10)

    def forward(self, x):
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        return self.fc2(F.relu(self.fc1(x)))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet8(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = BasicBlock(16, 16, 1)
        self.layer2 = BasicBlock(16, 32, 2)
        self.layer3 = BasicBlock(32, 64, 2)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


class Transformer(nn.Module):
    def __init__(self, vocab=64, seq=16, d=64, heads=4, classes=10):
        super().__init__()
        self.heads = heads
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(seq, d) * 0.02)
        self.ln1 = nn.LayerNorm(d)
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.ff1 = nn.Linear(d, 4 * d)
        self.ff2 = nn.Linear(4 * d, d)
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, ids):
        n, t = ids.shape
        x = self.embed(ids) + self.pos
        h = self.ln1(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        dh = q.shape[-1] // self.heads
        q = q.reshape(n, t, self.heads, dh).transpose(1, 2)
        k = k.reshape(n, t, self.heads, dh).transpose(1, 2)
        v = v.reshape(n, t, self.heads, dh).transpose(1, 2)
        att = torch.softmax(q @ k.transpose(-2, -1) / (dh ** 0.5), dim=-1)
        y = (att @ v).transpose(1, 2).reshape(n, t, -1)
        x = x + self.proj(y)
        x = x + self.ff2(F.gelu(self.ff1(self.ln2(x))))
        x = self.ln_f(x).mean(dim=1)
        return self.head(x)


def export_old(model, x, path, input_name):
    torch.onnx.export(
        model, (x,), path, dynamo=False, opset_version=17, input_names=[input_name], output_names=["logits"],
        dynamic_axes={input_name: {0: "N"}, "logits": {0: "N"}}, do_constant_folding=False,
        training=torch.onnx.TrainingMode.EVAL,
    )


def export_new(model, x, path, input_name):
    batch = torch.export.Dim("N", min=1, max=4096)
    prog = torch.onnx.export(
        model, (x,), dynamo=True, opset_version=20, input_names=[input_name], output_names=["logits"],
        dynamic_shapes={"ids": {0: batch}}, optimize=False,
    )
    prog.save(path, external_data=False)


def write_grads(name, model, x, input_name, seed):
    """PyTorch autograd in train mode on a batch of 8: the reference for onnxsam grad."""
    g = torch.Generator().manual_seed(seed)
    if x.dtype == torch.int64:
        xb = torch.randint(0, 64, (8,) + tuple(x.shape[1:]), generator=g)
    else:
        xb = torch.randn((8,) + tuple(x.shape[1:]), generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    model.train()
    model.zero_grad()
    logits = model(xb)
    lps = F.cross_entropy(logits, y, reduction="none")
    loss = lps.mean()
    loss.backward()
    out = {"loss": loss.detach().numpy(), "loss_per_sample": lps.detach().numpy()}
    for pname, p in model.named_parameters():
        out[pname] = p.grad.numpy()
    for bname, b in model.named_buffers():
        if "running" in bname:
            out[f"bn_after/{bname}"] = b.numpy()
    d = os.path.join(FIXTURES, name)
    np.savez(os.path.join(d, "batch.npz"), **{input_name: xb.numpy(), "y": y.numpy()})
    np.savez(os.path.join(d, "grads.npz"), **out)
    model.eval()


def write_loss_variants(model):
    """The mlp's gradients with label smoothing 0.1 and with an MSE loss (batch of 8)."""
    d = os.path.join(FIXTURES, "mlp")
    g = torch.Generator().manual_seed(3)
    xb = torch.randn(8, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    t = torch.randn(8, 10, generator=g)
    for kind in ["ls", "mse"]:
        model.zero_grad()
        logits = model(xb)
        if kind == "ls":
            lps = F.cross_entropy(logits, y, reduction="none", label_smoothing=0.1)
        else:
            lps = ((logits - t) ** 2).mean(dim=1)
        loss = lps.mean()
        loss.backward()
        out = {"loss": loss.detach().numpy(), "loss_per_sample": lps.detach().numpy()}
        out.update({n: p.grad.numpy() for n, p in model.named_parameters()})
        np.savez(os.path.join(d, f"batch_{kind}.npz"), input=xb.numpy(), y=(y if kind == "ls" else t).numpy())
        np.savez(os.path.join(d, f"grads_{kind}.npz"), **out)


class MLPWithLoss(nn.Module):
    """The mlp returning its mean cross-entropy: a graph with the loss inside."""

    def __init__(self, mlp):
        super().__init__()
        self.mlp = mlp

    def forward(self, x, y):
        return F.cross_entropy(self.mlp(x), y)


def write_fixture(name, inputs, outputs):
    d = os.path.join(FIXTURES, name)
    os.makedirs(d, exist_ok=True)
    np.savez(os.path.join(d, "input.npz"), **inputs)
    np.savez(os.path.join(d, "output.npz"), **outputs)


def main():
    os.makedirs(MODELS, exist_ok=True)
    torch.manual_seed(0)
    specs = [
        ("mlp", MLP(), torch.rand(4, 1, 28, 28), "input", export_old),
        ("cnn", CNN(), torch.rand(4, 1, 28, 28), "input", export_old),
        ("resnet8", ResNet8(), torch.randn(4, 3, 32, 32), "input", export_old),
        ("transformer", Transformer(), torch.randint(0, 64, (4, 16)), "ids", export_new),
    ]
    for name, model, x, input_name, export in specs:
        model.eval()
        path = os.path.join(MODELS, f"{name}.onnx")
        export(model, x, path, input_name)
        onnx.checker.check_model(onnx.load(path))
        with torch.no_grad():
            y = model(x).numpy()
        write_fixture(name, {input_name: x.numpy()}, {"logits": y})
        # the gradient reference last: its train-mode forward moves BN running statistics
        write_grads(name, model, x, input_name, seed=1)
        if name == "mlp":
            write_loss_variants(model)
        m = onnx.load(path)
        print(f"{name}: IR {m.ir_version}, opset {m.opset_import[0].version}, {len(m.graph.node)} nodes, "
              f"{os.path.getsize(path)} bytes, ops {sorted(set(n.op_type for n in m.graph.node))}")
    # a model with its loss inside
    torch.manual_seed(0)
    mlp = MLP()
    wl = MLPWithLoss(mlp)
    d = os.path.join(FIXTURES, "loss_inside")
    os.makedirs(d, exist_ok=True)
    xb, yb = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    torch.onnx.export(wl, (xb, yb), os.path.join(d, "model.onnx"), dynamo=False, opset_version=17,
                      input_names=["input", "target"], output_names=["loss"],
                      dynamic_axes={"input": {0: "N"}, "target": {0: "N"}}, do_constant_folding=False)
    lps = F.cross_entropy(mlp(xb), yb, reduction="none")
    loss = lps.mean()
    loss.backward()
    grads = {"loss": loss.detach().numpy(), "loss_per_sample": lps.detach().numpy()}
    grads.update({n: p.grad.numpy() for n, p in wl.named_parameters()})
    np.savez(os.path.join(d, "batch.npz"), input=xb.numpy(), y=yb.numpy())
    np.savez(os.path.join(d, "grads.npz"), **grads)
    m = onnx.load(os.path.join(d, "model.onnx"))
    print("loss_inside:", [n.op_type for n in m.graph.node], [i.name for i in m.graph.initializer])
    # the transformer again, with its weights in model.onnx.data beside it
    ext = os.path.join(FIXTURES, "external")
    os.makedirs(ext, exist_ok=True)
    m = onnx.load(os.path.join(MODELS, "transformer.onnx"))
    onnx.save(m, os.path.join(ext, "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx.data", size_threshold=1024)
    print("external:", sorted(os.listdir(ext)))


if __name__ == "__main__":
    sys.exit(main())
