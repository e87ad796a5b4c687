#!/usr/bin/env python3
"""Datasets and PyTorch first steps for `onnxsam train` on the task families of issue 12
(tests/train_tasks.rs): a token-id transformer (int64 inputs), regression with every float-target
loss (mse, l1, huber, smooth-l1, bce-with-logits), a per-token tagger with two inputs (int64 ids and
a bool mask) and padding labels (ignore_index), a per-pixel segmentation net, and a Hugging Face
GPT-2 language model (class-last logits [N, T, V], next-token labels) in both exporters' files.

Not run in CI (needs torch, transformers, onnxscript, onnxruntime). Setup as for
tools/export_models.py, then:
    .venv/bin/python tools/reference_tasks.py [--reexport]

The models' .onnx files (tests/fixtures/tasks/{tagger,seg,own_loss}/model.onnx,
tests/fixtures/tasks/gpt2/{dynamo,legacy}.onnx) are exported only where absent, or with --reexport;
the references always start from the parameters stored in the committed files (params_from_onnx),
so re-running the script re-creates every data.npz bit for bit and changes a ref.npz only where its
loss convention changed.

For every task it writes tests/fixtures/tasks/<task>/data.npz (arrays named for the model's inputs,
and `y`) and ref.npz: `loss` (the first step's mean loss) and `next/<param>` (every parameter after
one full-batch step) with `init/<param>` (before it), computed in float64 from the float32 model with
the task's optimizer:
  sgd: torch.optim.SGD(lr, momentum) on the mean loss;  sam: SAM with ρ = 0.05 (ε = ρ·g/‖g‖, the
  gradient at θ + ε, then SGD).
Per-sample losses (onnxsam's convention: per-sample losses for RW-SAM, the batch loss their mean):
  float targets: PyTorch's reduction='none' losses averaged over a sample's elements.
  cross-entropy, logits [N, C] (one label per sample): plain F.cross_entropy, under both reductions.
  cross-entropy with per-position labels (logits [N, C, d...] with y [N, d...], or class-last
  logits [N, T, V] with y [N, T], ignore_index -100):
    per-position CE_it = F.cross_entropy per position; k_it = 1 where label != ignore_index;
    DEFAULT ("mean", = PyTorch's F.cross_entropy(..., reduction='mean') over all kept positions):
        per-sample loss  l_i = (sum_t k_it * CE_it) / kbar,  kbar = (sum_{j,t} k_jt) / N   (N = batch rows; if kbar==0 use l_i = 0)
        so the batch loss mean_i l_i equals F.cross_entropy over all kept positions.
    OPTION "sample-mean" (the old convention, onnxsam flag `--loss-reduction sample-mean`):
        l_i = (sum_t k_it CE_it) / max(sum_t k_it, 1), batch loss = mean_i l_i.
  Here the loss "ce" is the DEFAULT and "ce_sample" the option; tasks named *_sample use the option.

GPT-2 (gpt2_sam, gpt2_sam_sample): transformers.GPT2LMHeadModel(GPT2Config(vocab_size=32, n_embd=16,
n_layer=1, n_head=2, n_positions=32, no dropout)) with tied input/output embeddings, LayerNorm affines
and all-equal parameters randomized (seeded), its forward returning the logits [N, T, V] of
`input_ids`. Exported with dynamic batch and sequence length, as users do:
  gpt2/dynamo.onnx  torch.onnx.export(..., dynamo=True, dynamic_shapes=({0: Dim("batch"), 1: Dim("seq")},))
                    (default opset and optimize; node stack traces emptied afterwards, as the zoo
                    fixtures: no absolute paths of the exporting machine)
  gpt2/legacy.onnx  torch.onnx.export(..., dynamo=False, opset_version=17, dynamic_axes batch/seq)
Both files store the tied table twice: the Gather's table and a transposed copy [16, 32] that the
lm_head MatMul reads (constant folding of the Transpose). The dynamo file names the table
`lm_head.weight` (the copy `val_<n>`), the legacy file `transformer.wte.weight` (the copy
`onnx::MatMul_<n>`). ref.npz names the tied parameter once, as model.named_parameters() does:
transformer.wte.weight. The data: input_ids [24, 16] in 1..31 right-padded with 0 (lengths 5..16),
y[:, t] = input_ids[:, t + 1] for t < length - 1, -100 from the last real token on.
"""
import argparse
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


def dot_f32(x, w):
    """x @ w for float32 x [N, K], w [K], the same bits on every machine. The committed linreg and
    own_loss data were made with `x @ w`, whose OpenBLAS kernel rounds differently from machine to
    machine (here: 1 ulp on 19 of the 64 targets). This order reproduces the committed values exactly:
    the float32-rounded products summed left to right in float32, the last product added as an FMA
    would (products are exact in float64; the float64 sum then rounds to float32)."""
    p = x.astype(np.float64) * w.astype(np.float64)
    acc = p[:, 0].astype(np.float32)
    for k in range(1, x.shape[1] - 1):
        acc = acc + p[:, k].astype(np.float32)
    return (acc.astype(np.float64) + p[:, -1]).astype(np.float32)


def per_sample(logits, y, loss, delta=0.5, class_last=False):
    """Per-sample losses [N] (the batch loss is their mean). Cross-entropy takes the classes on axis 1
    (logits [N, C] or [N, C, d...]), or on the last axis with class_last (logits [N, T, V], y [N, T]).
      "ce" (the DEFAULT, "mean", = PyTorch's F.cross_entropy(..., reduction='mean') over all kept positions):
        per-position CE_it = F.cross_entropy per position; k_it = 1 where label != ignore_index;
        per-sample loss  l_i = (sum_t k_it * CE_it) / kbar,  kbar = (sum_{j,t} k_jt) / N   (N = batch rows; if kbar==0 use l_i = 0)
        so the batch loss mean_i l_i equals F.cross_entropy over all kept positions.
      "ce_sample" (OPTION "sample-mean", the old convention, onnxsam flag `--loss-reduction sample-mean`):
        l_i = (sum_t k_it CE_it) / max(sum_t k_it, 1), batch loss = mean_i l_i.
      For logits [N, C] (one label per sample) both are plain F.cross_entropy."""
    if loss == "output":
        return logits
    if loss in ("ce", "ce_sample"):
        if class_last:
            logits = logits.movedim(-1, 1)
        l = F.cross_entropy(logits, y, reduction="none", ignore_index=-100)
        if l.dim() == 1:
            return l
        keep = (y != -100).to(l.dtype)
        dims = tuple(range(1, l.dim()))
        if loss == "ce_sample":
            return l.sum(dims) / keep.sum(dims).clamp(min=1)
        kbar = keep.sum() / l.shape[0]
        if kbar.item() == 0:
            return torch.zeros_like(l.sum(dims))
        out = l.sum(dims) / kbar
        if out.dtype == torch.float64:
            # the DEFAULT's batch mean is PyTorch's reduction='mean' over every kept position
            full = F.cross_entropy(logits, y, ignore_index=-100)
            assert abs(out.mean().item() - full.item()) <= 1e-12, (out.mean().item(), full.item())
        return out
    f = {
        "mse": lambda a, b: F.mse_loss(a, b, reduction="none"),
        "l1": lambda a, b: F.l1_loss(a, b, reduction="none"),
        "huber": lambda a, b: F.huber_loss(a, b, reduction="none", delta=delta),
        "smooth_l1": lambda a, b: F.smooth_l1_loss(a, b, reduction="none", beta=delta),
        "bce": lambda a, b: F.binary_cross_entropy_with_logits(a, b, reduction="none"),
    }[loss]
    e = f(logits, y)
    return e.reshape(e.shape[0], -1).mean(1)


def first_step(model, inputs, y, loss, opt, lr, momentum=0.9, rho=0.05, class_last=False):
    # named_parameters() lists a tied parameter once (GPT-2: transformer.wte.weight, not lm_head.weight),
    # and functional_call (tie_weights=True) substitutes it at every use
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    init = {f"init/{n}": p.detach().numpy().astype(np.float32).copy() for n, p in zip(names, params)}
    l0 = per_sample(model(*inputs), y, loss, class_last=class_last).mean()
    g = torch.autograd.grad(l0, params)
    if opt == "sam":
        gn = torch.sqrt(sum((gi ** 2).sum() for gi in g))
        pe = [(p.detach() + rho * gi / (gn + 1e-12)).requires_grad_() for p, gi in zip(params, g)]
        adv = per_sample(torch.func.functional_call(model, dict(zip(names, pe)), tuple(inputs)), y, loss,
                         class_last=class_last).mean()
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


GPT2_CONFIG = dict(vocab_size=32, n_embd=16, n_layer=1, n_head=2, n_positions=32, resid_pdrop=0.0, embd_pdrop=0.0,
                   attn_pdrop=0.0)


def gpt2_model():
    """GPT2LMHeadModel (random init, seeded) with tied embeddings, LayerNorm affines and all-equal
    parameters randomized, its forward(input_ids) returning the logits [N, T, V]."""
    import transformers as tr
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "zoo"))
    from foreign import _logits_forward, randomize  # noqa: E402
    torch.manual_seed(2)
    m = tr.GPT2LMHeadModel(tr.GPT2Config(**GPT2_CONFIG))
    assert m.lm_head.weight is m.transformer.wte.weight, "tie_word_embeddings"
    randomize(m, 2)
    _logits_forward(m, "input_ids")
    assert m.lm_head.weight is m.transformer.wte.weight
    return m.eval()


def params_by_name(model, path):
    """model.named_parameters() (a tied parameter once) from the initializers of the same names."""
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(torch.from_numpy(inits[n].copy()))


def describe_onnx(path):
    m = onnx.load(path)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    opset = [f"{o.domain or 'ai.onnx'}:{o.version}" for o in m.opset_import]
    print(f"{os.path.relpath(path, ROOT)}: {os.path.getsize(path)} bytes, opset {opset}")
    print("  initializers: " + ", ".join(f"{k} {list(v.shape)}" for k, v in inits.items()))
    print("  op types: " + " ".join(sorted({n.op_type for n in m.graph.node})))
    uses = {}
    for node in m.graph.node:
        for i in node.input:
            if i in inits:
                uses.setdefault(i, []).append(node.op_type)
    # where the tied [32, 16] table is, and any copy of it (transposed or not)
    tables = [k for k, v in inits.items() if v.shape == (32, 16) and k != "transformer.wpe.weight"]
    for t in tables:
        copies = [k for k, v in inits.items() if k != t and (
            (v.shape == (16, 32) and np.array_equal(v, inits[t].T)) or (v.shape == (32, 16) and np.array_equal(v, inits[t])))]
        print(f"  tied table: {t} (read by {uses.get(t)}); copies: "
              + (", ".join(f"{c} {list(inits[c].shape)} (read by {uses.get(c)})" for c in copies) or "none"))
        print(f"  -> the tied weight is stored {'twice' if copies else 'once'}")
    return inits


def gpt2_tasks(reexport):
    """gpt2/{dynamo,legacy}.onnx, and the SAM first steps gpt2_sam (DEFAULT reduction) and
    gpt2_sam_sample ("sample-mean") on class-last logits [N, T, V]."""
    import onnxruntime as ort
    import transformers as tr
    from transformers.loss.loss_utils import fixed_cross_entropy
    m = gpt2_model()
    d = os.path.join(OUT, "gpt2")
    os.makedirs(d, exist_ok=True)
    dyn, leg = os.path.join(d, "dynamo.onnx"), os.path.join(d, "legacy.onnx")
    ex = torch.randint(1, 32, (2, 8), generator=torch.Generator().manual_seed(3))
    if reexport or not os.path.exists(dyn):
        torch.onnx.export(m, (ex,), dyn, dynamo=True, input_names=["input_ids"], output_names=["logits"],
                          dynamic_shapes=({0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")},),
                          external_data=False)
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "zoo"))
        from zoo import strip_stack_traces  # noqa: E402
        strip_stack_traces(dyn)
    if reexport or not os.path.exists(leg):
        torch.onnx.export(m, (ex,), leg, dynamo=False, opset_version=17, input_names=["input_ids"],
                          output_names=["logits"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}})
    # the references start from the committed parameters (the legacy file names every parameter as
    # named_parameters() does; the dynamo file must hold the same values)
    params_by_name(m, leg)
    assert m.lm_head.weight is m.transformer.wte.weight
    dyn_inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(dyn).graph.initializer}
    for n, p in m.named_parameters():
        k = "lm_head.weight" if n == "transformer.wte.weight" and n not in dyn_inits else n
        assert np.array_equal(dyn_inits[k], p.detach().numpy()), n
    for path in (dyn, leg):
        describe_onnx(path)
    gen = torch.Generator().manual_seed(4)
    for shape in [(3, 7), (1, 1), (2, 32)]:
        x = torch.randint(1, 32, shape, generator=gen)
        with torch.no_grad():
            want = m(x).numpy()
        for path in (dyn, leg):
            got = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input_ids": x.numpy()})[0]
            assert got.shape == want.shape, (path, got.shape, want.shape)
            diff = float(np.abs(got - want).max())
            print(f"  onnxruntime vs PyTorch float32 logits, input_ids {list(shape)}: "
                  f"{os.path.basename(path)} max abs diff {diff:.3g}")
            assert diff < 1e-4
    # data: right-padded token ids, next-token labels
    rng = np.random.default_rng(32)
    ids = rng.integers(1, 32, (24, 16)).astype(np.int64)
    lengths = rng.integers(5, 17, 24)
    pos = np.arange(16)[None, :]
    ids[pos >= lengths[:, None]] = 0
    y = np.full((24, 16), -100, dtype=np.int64)
    nxt = pos < lengths[:, None] - 1
    y[:, :-1][nxt[:, :-1]] = ids[:, 1:][nxt[:, :-1]]
    m.double()
    ti, ty = torch.from_numpy(ids), torch.from_numpy(y)
    # Hugging Face's own loss with labels = input_ids, -100 on padding (it shifts the labels itself)
    hf_labels = torch.from_numpy(np.where(pos < lengths[:, None], ids, -100))
    with torch.no_grad():
        logits = m(ti)
        ours = per_sample(logits, ty, "ce", class_last=True).mean().item()
        shifted = F.pad(hf_labels, (0, 1), value=-100)[..., 1:]  # ForCausalLMLoss's shift
        assert torch.equal(shifted, ty)
        hf64 = fixed_cross_entropy(logits.reshape(-1, 32), shifted.reshape(-1)).item()
        hf = tr.GPT2LMHeadModel.forward(m, input_ids=ti, labels=hf_labels).loss.item()
    # ForCausalLMLoss applies `logits.float()` first, float32 even for a float64 model: its loss
    # agrees to float32 rounding only; its float64 cross-entropy (fixed_cross_entropy) to 1e-10
    print(f"  gpt2 float64 loss {ours:.12f}; Hugging Face fixed_cross_entropy (float64) {hf64:.12f} "
          f"(diff {abs(ours - hf64):.2g}); GPT2LMHeadModel(labels=...).loss {hf:.12f} (diff {abs(ours - hf):.2g}, "
          "its logits cast to float32)")
    assert abs(ours - hf64) <= 1e-10
    assert abs(ours - hf) <= 1e-5
    p0 = {k: v.clone() for k, v in m.state_dict().items()}
    for task, loss in [("gpt2_sam", "ce"), ("gpt2_sam_sample", "ce_sample")]:
        m.load_state_dict(p0)
        save(task, {"input_ids": ids, "y": y}, first_step(m, [ti], ty, loss, "sam", lr=0.1, class_last=True))


def gpt2_fresh_task(reexport):
    """gpt2/dynamo_fresh.onnx: GPT-2 as Hugging Face initializes it (Conv1D biases zero, LayerNorm
    1 and 0), exported with the dynamo exporter's defaults, whose optimizer removes the zero biases
    from the Gemms (RemoveOptionalBiasFromGemm on aten.addmm): onnxsam gives them back. The SAM
    first step gpt2_fresh_sam on the gpt2_sam data, every named parameter (biases included)."""
    import transformers as tr
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "zoo"))
    from foreign import _logits_forward  # noqa: E402
    torch.manual_seed(5)
    m = tr.GPT2LMHeadModel(tr.GPT2Config(**GPT2_CONFIG))
    _logits_forward(m, "input_ids")
    m.eval()
    zero = [n for n, p in m.named_parameters() if n.endswith("bias") and bool((p == 0).all())]
    path = os.path.join(OUT, "gpt2", "dynamo_fresh.onnx")
    ex = torch.randint(1, 32, (2, 8), generator=torch.Generator().manual_seed(3))
    if reexport or not os.path.exists(path):
        torch.onnx.export(m, (ex,), path, dynamo=True, input_names=["input_ids"], output_names=["logits"],
                          dynamic_shapes=({0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")},),
                          external_data=False)
        from zoo import strip_stack_traces  # noqa: E402
        strip_stack_traces(path)
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    gone = [n for n in zero if n not in inits]
    print(f"gpt2/dynamo_fresh.onnx: {len(zero)} zero biases in PyTorch, {len(gone)} of them not in the file: {gone}")
    assert gone, "the exporter kept the zero biases: this fixture no longer tests their removal"
    # the parameters the file holds are PyTorch's (the committed file's, where it was exported before)
    with torch.no_grad():
        for n, p in m.named_parameters():
            k = "lm_head.weight" if n == "transformer.wte.weight" and n not in inits else n
            if k in inits:
                p.copy_(torch.from_numpy(inits[k].copy()))
    d = np.load(os.path.join(OUT, "gpt2_sam", "data.npz"))
    ids, y = d["input_ids"], d["y"]
    m.double()
    save("gpt2_fresh_sam", {"input_ids": ids, "y": y},
         first_step(m, [torch.from_numpy(ids)], torch.from_numpy(y), "ce", "sam", lr=0.1, class_last=True))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reexport", action="store_true",
                    help="export the models' .onnx files again even where present (the bytes may change)")
    args = ap.parse_args()
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
    t = (dot_f32(x, np.array([1.0, -2.0, 0.5, 0.0, 3.0], dtype=np.float32)) + 0.3 * rng.standard_normal(64)).astype(np.float32)
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
    if args.reexport or not os.path.exists(os.path.join(d, "model.onnx")):
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
    tg0 = {k: v.clone() for k, v in tg.state_dict().items()}
    for task, loss in [("tagger_sam", "ce"), ("tagger_sam_sample", "ce_sample")]:
        tg.load_state_dict(tg0)
        save(task, {"ids": ids, "mask": mask, "y": yt},
             first_step(tg, [torch.from_numpy(ids), torch.from_numpy(mask)], torch.from_numpy(yt), loss, "sam", lr=0.1))
    # per-pixel segmentation, legacy exporter without constant folding
    sg = Seg()
    d = os.path.join(OUT, "seg")
    os.makedirs(d, exist_ok=True)
    ex = torch.randn(2, 3, 8, 8)
    if args.reexport or not os.path.exists(os.path.join(d, "model.onnx")):
        torch.onnx.export(sg, (ex,), os.path.join(d, "model.onnx"), dynamo=False, opset_version=17,
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
    ex = (torch.randn(2, 5), torch.randn(2))
    if args.reexport or not os.path.exists(os.path.join(d, "model.onnx")):
        torch.onnx.export(ol, ex, os.path.join(d, "model.onnx"), dynamo=False,
                          opset_version=17, input_names=["x", "t"], output_names=["loss_per_sample"],
                          dynamic_axes={"x": {0: "N"}, "t": {0: "N"}, "loss_per_sample": {0: "N"}},
                          do_constant_folding=False)
    params_from_onnx(ol, os.path.join(d, "model.onnx"))
    ol.double()
    xo = x[:32]
    to = t[:32]
    save("own_loss_sgd", {"x": xo, "t": to},
         first_step(ol, [torch.from_numpy(xo).double(), torch.from_numpy(to).double()], None, "output", "sgd", lr=0.05))
    # a Hugging Face GPT-2 language model: class-last logits [N, T, V], next-token labels, tied embeddings
    gpt2_tasks(args.reexport)
    gpt2_fresh_task(args.reexport)


if __name__ == "__main__":
    main()
