#!/usr/bin/env python3
"""The way back to PyTorch: `onnxsam export RUN --format safetensors` loads into the user's own
PyTorch model with `model.load_state_dict(safetensors.torch.load_file(path), strict=True)`, and that
model computes what the trained ONNX file computes.

For every zoo architecture (tools/zoo/zoo.py, the narrow fixtures in tests/fixtures/zoo) and export
setting that trains, and the GPT-2 task fixtures (tests/fixtures/tasks/gpt2): one SGD step with
`onnxsam train` on the fixture's batch, then
  - `onnxsam export --format safetensors`, loaded strictly into a freshly built PyTorch model of the
    same architecture (its own initial weights are all overwritten; a missing or unexpected key is a
    failure);
  - `onnxsam export` (ONNX) run by onnxruntime, and the PyTorch model in eval mode, on the batch: the
    largest difference of their outputs (float32 on both sides).
Not run in CI (needs torch, transformers, onnxruntime, safetensors). Usage:
    .venv/bin/python tools/check_safetensors.py [--only ARCH…] [--settings dynamo_noopt legacy_nofold]
Prints one row per file; exits 1 if any fails.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnxruntime as ort
import torch
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools", "zoo"))
import zoo  # noqa: E402

ONNXSAM = os.path.join(ROOT, "target", "release", "onnxsam")


def onnxsam(*args):
    r = subprocess.run([ONNXSAM, *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}")
    return r


def check(model, onnx_path, data, flags, out):
    """Train one step, export both ways, load strictly, compare outputs. Returns (ok, text)."""
    run = os.path.join(out, "run")
    d = np.load(data)
    n = len(d["y"])
    onnxsam("train", onnx_path, "--data", data, "--max-steps", "1", "--batch-size", str(n), "--lr", "0.1",
            "--backend", "tract", "--out", run, *flags)
    st, trained = os.path.join(out, "m.safetensors"), os.path.join(out, "m.onnx")
    onnxsam("export", run, "--format", "safetensors", "-o", st)
    onnxsam("export", run, "-o", trained)
    sd = load_file(st)
    want = set(model.state_dict())
    missing, unexpected = sorted(want - set(sd)), sorted(set(sd) - want)
    if missing or unexpected:
        return False, f"missing {missing[:4]}{'…' if len(missing) > 4 else ''}, unexpected {unexpected[:4]}"
    model.load_state_dict(sd, strict=True)
    model.eval()
    sess = ort.InferenceSession(trained, providers=["CPUExecutionProvider"])
    feeds = {}
    for i in sess.get_inputs():
        key = i.name if i.name in d.files else "input" if "input" in d.files else [k for k in d.files if k != "y"][0]
        feeds[i.name] = d[key]
    got = sess.run(None, feeds)[0]
    with torch.no_grad():
        args = [torch.from_numpy(d[k]) for k in d.files if k != "y"]
        want_out = model(*args)
        want_out = want_out[0] if isinstance(want_out, (tuple, list)) else getattr(want_out, "logits", want_out)
        want_out = want_out.numpy()
    diff = float(np.abs(got - want_out).max())
    scale = float(np.abs(want_out).max())
    ok = diff <= 1e-4 * max(scale, 1.0)
    return ok, f"{len(sd)} tensors, strict load ok; max |onnx - torch| {diff:.2e} (outputs up to {scale:.2f})"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+")
    ap.add_argument("--settings", nargs="+", default=["dynamo_noopt", "legacy_nofold", "dynamo"])
    a = ap.parse_args()
    torch.set_num_threads(2)
    failures = 0
    archs = a.only or list(zoo.ARCHS)
    for arch in archs:
        d = os.path.join(ROOT, "tests", "fixtures", "zoo", arch)
        if arch == "gpt2":
            continue
        meta = json.load(open(os.path.join(d, "meta.json")))
        for s in a.settings:
            e = meta["settings"].get(s, {})
            if e.get("error") or not os.path.exists(os.path.join(d, f"{s}.onnx")):
                continue
            built = zoo.ARCHS[arch](True)
            model = built[0]
            with tempfile.TemporaryDirectory() as out:
                try:
                    ok, text = check(model, os.path.join(d, f"{s}.onnx"), os.path.join(d, "batch.npz"),
                                     e.get("onnxsam_flags") or [], out)
                except RuntimeError as err:
                    ok, text = None, f"not trained: {err}"
            failures += ok is False
            print(f"{arch:20s} {s:14s} {'ok  ' if ok else 'FAIL' if ok is False else 'skip'} {text}", flush=True)
    if not a.only or "gpt2" in a.only:
        sys.path.insert(0, os.path.join(ROOT, "tools"))
        from reference_tasks import gpt2_model  # noqa: E402
        data = os.path.join(ROOT, "tests", "fixtures", "tasks", "gpt2_sam", "data.npz")
        for f, flags in [("dynamo", []), ("legacy", ["--padding-idx", "transformer.wte.weight=none"])]:
            with tempfile.TemporaryDirectory() as out:
                ok, text = check(gpt2_model(), os.path.join(ROOT, "tests", "fixtures", "tasks", "gpt2", f"{f}.onnx"),
                                 data, ["--ignore-index", "-100", *flags], out)
            failures += not ok
            print(f"{'gpt2 (tied)':20s} {f:14s} {'ok  ' if ok else 'FAIL'} {text}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
