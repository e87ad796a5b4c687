#!/usr/bin/env python3
"""Training steps per second: onnxsam (ort, tract) beside PyTorch eager running METHOD.md's
reference implementation (tools/reference_steps.py, float32), in one run.

Usage: .venv/bin/python tools/bench/train_vs_torch.py [--models mlp cnn resnet8 transformer]
       [--steps 10] [--rounds 3] [--threads 2] [--device cpu|cuda] [--engines ort tract]
Needs torch (see tools/export_models.py) and a release build. Per model and round: PyTorch ms/step
for SGD, SAM and RW-SAM (λ = 1, Q = 1), each optimizer's steps back to back, then `onnxsam bench
--suite --consecutive` on each engine (back to back too, as a training run takes its steps). Rounds
alternate the two sides so that a noisy machine's slow minutes fall on both; each number is the
median over rounds of the per-round medians. Prints the table and onnxsam's steps/s ÷ PyTorch's.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import reference_steps as R  # noqa: E402
from export_models import CNN, MLP, ResNet8, Transformer  # noqa: E402

BIN = os.path.join(ROOT, "target", "release", "onnxsam")
MODELS = {"mlp": MLP, "cnn": CNN, "resnet8": ResNet8, "transformer": Transformer}
CONFIGS = {
    "sgd": dict(opt="sgd", lr=0.0, momentum=0.9, nesterov=False, wd=0.0, wd_mode="coupled"),
    "sam": dict(opt="sam", lr=0.0, momentum=0.9, nesterov=False, wd=0.0, wd_mode="coupled", rho=0.05),
    "rw-sam": dict(opt="sam", lr=0.0, momentum=0.9, nesterov=False, wd=0.0, wd_mode="coupled", rho=0.05,
                   lam=1.0, delta=3e-3),
}


def torch_ms(name, steps, device):
    model = MODELS[name]().to(device).train()
    if name == "transformer":
        x = torch.randint(0, 64, (128, 16), device=device)
    elif name == "resnet8":
        x = torch.randn(128, 3, 32, 32, device=device)
    else:
        x = torch.randn(128, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (128,), device=device)
    return {opt: float(np.median(step_times(model, x, y, cfg, device, 3, steps))) for opt, cfg in CONFIGS.items()}


def step_times(model, x, y, cfg, device, warmup, steps):
    """ms of each of `steps` reference steps (tools/reference_steps.py) after `warmup` untimed ones;
    momentum buffers start at zero, a fresh Rademacher direction each step (as onnxsam draws one),
    drawn outside the timing."""
    params = [p for _, p in model.named_parameters()]
    bufs = [torch.zeros_like(p) for p in params]
    times = []
    for i in range(warmup + steps):
        z = [torch.randint(0, 2, p.shape, device=device).float() * 2 - 1 for p in params] if "lam" in cfg else None
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        bufs, _ = R.step(model, x, y, cfg, bufs, z)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append((time.perf_counter() - t) * 1e3)
    return times


def onnxsam_ms(name, engine, steps, threads, device):
    cmd = [BIN, "bench", os.path.join(ROOT, "models", f"{name}.onnx"), "--suite", "--consecutive", "--json",
           "--steps", str(steps),
           "--backend", engine, "--threads", str(threads), "--device", device]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: {r.stderr.strip()}")
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    return {t["name"]: t["median_ms"] for t in rep["optimizers"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--engines", nargs="+", default=["ort", "tract"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows = []
    engines = [e for e in a.engines if e == "ort" or a.device == "cpu"]
    for m in a.models:
        pts, oxs = [], {e: [] for e in engines}
        for r in range(a.rounds):
            pt = torch_ms(m, a.steps, a.device)
            pts.append(pt)
            print(f"{m} round {r + 1} pytorch ({a.device}, {a.threads} threads): "
                  + ", ".join(f"{k} {v:.2f} ms" for k, v in pt.items()), flush=True)
            for e in engines:
                ox = onnxsam_ms(m, e, a.steps, a.threads, a.device)
                oxs[e].append(ox)
                print(f"{m} round {r + 1} onnxsam {e}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in ox.items()),
                      flush=True)
        med = lambda runs, k: float(np.median([x[k] for x in runs]))  # noqa: E731
        for e in engines:
            for opt in CONFIGS:
                p, x = med(pts, opt), med(oxs[e], opt)
                rows.append((m, e, opt, p, x, p / x))
    print()
    print("| model | engine | optimizer | PyTorch ms | onnxsam ms | onnxsam steps/s ÷ PyTorch's |")
    print("|---|---|---|---:|---:|---:|")
    for m, e, o, p, x, r in rows:
        print(f"| {m} | {e} | {o} | {p:.2f} | {x:.2f} | {r:.2f} |")


if __name__ == "__main__":
    main()
