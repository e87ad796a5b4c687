#!/usr/bin/env python3
"""SAM at the paper's scale: ResNet-18 (CIFAR stem) and WideResNet-16-4 training steps, onnxsam
beside PyTorch eager, speed AND peak memory, each optimizer in a process of its own.

Usage: .venv/bin/python tools/bench/scale_vs_torch.py [--models resnet18 wrn16_4] [--batch 32]
       [--steps 5] [--warmup 2] [--rounds 2] [--threads 2] [--optimizers sgd sam rw-sam msam16]
       [--engine ort] [--device cpu|cuda] [--accumulate K] [--out DIR]
Needs torch, torchvision and a release build (target/release/onnxsam). The models are exported
once to DIR (default /tmp/onnxsam-scale) with the legacy exporter, constant folding off (BatchNorm
kept), a dynamic batch.

Per model, optimizer and round, two child processes, one after the other:
  PyTorch: the model in train mode, the optimizer step of tools/reference_steps.py (float32:
           SGD; SAM; RW-SAM with λ = 1, one Rademacher direction; m-SAM with micro-batches of 16),
           lr 0, `--warmup` steps then `--steps` timed ones;
  onnxsam: `onnxsam bench MODEL --optimizer … --consecutive` (its SGD timing is ignored: only the
           optimizer's own runner is alive while it is timed, and its peak is measured from a reset).
Peak memory is the child's peak resident set (os.wait4's ru_maxrss; Python and the libraries
included on both sides — PyTorch's process holds its interpreter, onnxsam's ONNX Runtime), and
for onnxsam also the peak bench measured for the optimizer alone. Numbers are medians over rounds;
rounds alternate the two sides. On CUDA, device memory: torch.cuda.max_memory_allocated beside
ONNX Runtime's arena (not measured here: see tools/bench/cuda_check.sh).

Also prints the fraction of the machine's peak each side reaches, from the model's multiply-adds
(thop-free: counted from the convolution and linear shapes) × 3 (forward, input and weight
gradients) × the passes of the optimizer (SGD 1, SAM 2, RW-SAM 2 + one forward) over
--peak-gflops (default: measured with one large float32 matmul in PyTorch on --threads threads).
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BIN = os.path.join(ROOT, "target", "release", "onnxsam")
OPTIMIZERS = {
    "sgd": (["--optimizer", "sgd"], dict(opt="sgd", lr=0.0, momentum=0.9, nesterov=False, wd=0.0, wd_mode="coupled")),
    "sam": (["--optimizer", "sam"], dict(opt="sam", lr=0.0, momentum=0.9, nesterov=False, wd=0.0, wd_mode="coupled", rho=0.05)),
    "rw-sam": (["--optimizer", "sam", "--reweight", "1"],
               dict(opt="sam", lr=0.0, momentum=0.9, nesterov=False, wd=0.0, wd_mode="coupled", rho=0.05, lam=1.0, delta=3e-3)),
    "msam16": (["--optimizer", "sam", "--micro-batch", "16"],
               dict(opt="sam", lr=0.0, momentum=0.9, nesterov=False, wd=0.0, wd_mode="coupled", rho=0.05, micro=16)),
}
# forward multiply-add passes per step relative to one forward+backward (3 forward-equivalents)
PASSES = {"sgd": 3, "sam": 6, "rw-sam": 7, "msam16": 6}


def build(name):
    """The benchmark models, torch-only (the GPU machine may have no torchvision): ResNet-18 as
    torchvision's (BasicBlock, [2, 2, 2, 2], widths 64-512) with the CIFAR stem (conv 3×3/1, no
    max-pool), and the pre-activation WideResNet-depth-k of the WRN paper."""
    import torch.nn as nn
    import torch.nn.functional as F

    sys.path.insert(0, os.path.dirname(HERE))
    from export_models import BasicBlock as Basic  # torchvision's basic block, bias-free convs

    class PreAct(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.short = None if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride, bias=False)

        def forward(self, x):
            o = F.relu(self.bn1(x))
            y = self.conv2(F.relu(self.bn2(self.conv1(o))))
            return y + (x if self.short is None else self.short(o))

    class Net(nn.Module):
        def __init__(self, block, stem, widths, per_stage, pre_act):
            super().__init__()
            self.stem = nn.Conv2d(3, stem, 3, 1, 1, bias=False)
            self.stem_bn = None if pre_act else nn.BatchNorm2d(stem)
            layers, cin = [], stem
            for i, w in enumerate(widths):
                for j in range(per_stage):
                    layers.append(block(cin, w, 2 if i > 0 and j == 0 else 1))
                    cin = w
            self.layers = nn.Sequential(*layers)
            self.head_bn = nn.BatchNorm2d(cin) if pre_act else None
            self.fc = nn.Linear(cin, 10)

        def forward(self, x):
            x = self.stem(x)
            if self.stem_bn is not None:
                x = F.relu(self.stem_bn(x))
            x = self.layers(x)
            if self.head_bn is not None:
                x = F.relu(self.head_bn(x))
            return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))

    if name == "resnet18":
        return Net(Basic, 64, (64, 128, 256, 512), 2, False)
    if name == "wrn16_4":
        return Net(PreAct, 16, (64, 128, 256), 2, True)
    if name == "wrn28_10":
        return Net(PreAct, 16, (160, 320, 640), 4, True)
    raise SystemExit(f"unknown model {name}")


def macs(model):
    """Multiply-adds of one forward of one 3×32×32 image (convolutions and linear layers)."""
    import torch
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        if isinstance(mod, torch.nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
            total += out.numel() * k
        elif isinstance(mod, torch.nn.Linear):
            total += out.numel() * mod.in_features
    hs = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, 32, 32))
    for h in hs:
        h.remove()
    return total


def export(name, out_dir):
    import torch
    path = os.path.join(out_dir, f"{name}.onnx")
    if not os.path.exists(path):
        torch.manual_seed(0)
        m = build(name).eval()
        torch.onnx.export(m, (torch.randn(2, 3, 32, 32),), path, dynamo=False, do_constant_folding=False,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path


def run_child(cmd):
    """(stdout, peak MiB) of a child process, measured with os.wait4."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = p.stdout.read()
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    if status != 0:
        raise SystemExit(f"{' '.join(cmd)}: exit {status}: {err.strip()[-800:]}")
    return out, ru.ru_maxrss / 1024.0


def torch_child(args):
    """The PyTorch side, in this process (called as a child): prints {"ms": …}."""
    import torch
    sys.path.insert(0, HERE)
    from train_vs_torch import step_times  # the same timed reference steps
    torch.set_num_threads(args.threads)
    dev = args.device
    torch.manual_seed(0)
    model = build(args.model).to(dev).train()
    x = torch.randn(args.batch, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (args.batch,), device=dev)
    times = step_times(model, x, y, OPTIMIZERS[args.optimizer][1], dev, args.warmup, args.steps)
    out = {"ms": float(np.median(times))}
    if dev == "cuda":
        out["device_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out))


def peak_gflops(threads):
    """The best of five timings of 2048² float32 matmuls (a median would take the machine's noise
    for its peak)."""
    import torch
    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(3):
            a @ b
        best = max(best, 2 * 2048 ** 3 * 3 / (time.perf_counter() - t) / 1e9)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet18", "wrn16_4"])
    ap.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--engine", default="ort")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--accumulate", type=int)
    ap.add_argument("--peak-gflops", type=float)
    ap.add_argument("--out", default="/tmp/onnxsam-scale")
    ap.add_argument("--bin", default=BIN)
    ap.add_argument("--torch-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--optimizer", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.torch_child:
        return torch_child(a)
    os.makedirs(a.out, exist_ok=True)
    import torch
    peak = a.peak_gflops or peak_gflops(a.threads)
    print(f"machine peak (float32 matmul, {a.threads} threads): {peak:.0f} GFLOP/s", flush=True)
    rows = []
    for m in a.models:
        path = export(m, a.out)
        torch.manual_seed(0)
        mac = macs(build(m))
        for opt in a.optimizers:
            pts, oxs = [], []
            for r in range(a.rounds):
                out, rss = run_child([sys.executable, __file__, "--torch-child", "--model", m, "--optimizer", opt,
                                      "--batch", str(a.batch), "--steps", str(a.steps), "--warmup", str(a.warmup),
                                      "--threads", str(a.threads), "--device", a.device])
                pt = json.loads(out.strip().splitlines()[-1])
                pt["rss_mib"] = rss
                pts.append(pt)
                cmd = [a.bin, "bench", path, "--batch-size", str(a.batch), "--steps", str(a.steps), "--warmup",
                       str(a.warmup), "--consecutive", "--json", "--backend", a.engine, "--threads", str(a.threads),
                       "--device", a.device] + OPTIMIZERS[opt][0]
                if a.accumulate:
                    cmd += ["--accumulate", str(a.accumulate)]
                out, rss = run_child(cmd)
                rep = json.loads(out.strip().splitlines()[-1])
                t = rep["optimizers"][-1]
                oxs.append({"ms": t["median_ms"], "rss_mib": rss, "alone_mib": t.get("peak_rss_mib")})
                print(f"{m} {opt} round {r + 1}: PyTorch {pt['ms']:.0f} ms {pt['rss_mib']:.0f} MiB · onnxsam "
                      f"{oxs[-1]['ms']:.0f} ms {rss:.0f} MiB (the optimizer alone {t.get('peak_rss_mib') or 0:.0f})",
                      flush=True)
            med = lambda xs, k: float(np.median([x[k] for x in xs if x.get(k) is not None]))  # noqa: E731
            flop = 2 * mac * a.batch * PASSES[opt]
            p_ms, o_ms = med(pts, "ms"), med(oxs, "ms")
            rows.append((m, opt, p_ms, o_ms, p_ms / o_ms, med(pts, "rss_mib"), med(oxs, "rss_mib"),
                         med(oxs, "rss_mib") / med(pts, "rss_mib"),
                         flop / (p_ms / 1e3) / 1e9 / peak, flop / (o_ms / 1e3) / 1e9 / peak))
    print()
    print(f"batch {a.batch}, {a.threads} threads, {a.engine} on {a.device}" + (f", --accumulate {a.accumulate}" if a.accumulate else ""))
    print("| model | optimizer | PyTorch ms/step | onnxsam ms/step | speed ratio | PyTorch peak MiB | onnxsam peak MiB "
          "| memory ratio | PyTorch % of peak | onnxsam % of peak |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for m, o, p, x, r, pm, om, mr, pf, of in rows:
        print(f"| {m} | {o} | {p:.0f} | {x:.0f} | {r:.2f}× | {pm:.0f} | {om:.0f} | {mr:.2f}× | {100 * pf:.0f}% | {100 * of:.0f}% |")


if __name__ == "__main__":
    main()
