"""Data-parallel cost on this machine, and a ring all-reduce cost model for clusters (issue 18).

Runs `onnxsam train` (ONNX Runtime CPU) on ResNet-18 for CIFAR (synthetic 32×32 images, 10 classes)
at one global batch three ways, each optimizer in turn:
  - 1 rank × 2 threads, --batch-size 2b         (one process using both cores)
  - 2 ranks × 1 thread, --batch-size b each     (mpirun -np 2 … --distributed mpi)
  - 1 rank × 1 thread, --batch-size b           (what one rank computes, for the comm fraction)
and reads per-step wall time (median of metrics.jsonl's step rows, the first 2 steps left out) and
the all-reduce MiB, ms and wait per step (the epoch row). Then prints the cost model

    T(N) = 2(N−1)/N · S / BW  +  buckets · 2(N−1) · α

(ring all-reduce of S bytes in buckets of 4 MiB; α the per-message latency) for N = 8 and 64 over
25 Gb/s and 100 Gb/s links, for ResNet-18 and WRN-28-10 (parameter counts from the PyTorch models
of scale_vs_torch.py).

Usage: .venv/bin/python tools/bench/distributed.py [--onnxsam target/release/onnxsam] [--batch 32]
       [--steps 8] [--optimizers sgd sam sam-sync rwsam]
(onnxsam built with --features mpi; OpenMPI's mpirun on PATH.)
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

OPTIMIZERS = {
    "sgd": ["--lr", "0.05", "--momentum", "0.9", "--weight-decay", "5e-4"],
    "sam": ["--optimizer", "sam", "--rho", "0.05", "--lr", "0.05", "--momentum", "0.9", "--weight-decay", "5e-4"],
    "sam-sync": ["--optimizer", "sam", "--rho", "0.05", "--lr", "0.05", "--momentum", "0.9", "--weight-decay", "5e-4",
                 "--sync-ascent"],
    "rwsam": ["--optimizer", "sam", "--rho", "0.05", "--reweight", "1", "--lr", "0.05", "--momentum", "0.9",
              "--weight-decay", "5e-4"],
}


def step_rows(run):
    rows = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl"))]
    steps = [r for r in rows if r["kind"] == "step"]
    epoch = [r for r in rows if r["kind"] == "epoch"][-1]
    t = [b["seconds"] - a["seconds"] for a, b in zip(steps, steps[1:])][2:]
    return statistics.median(t), epoch


def train(onnxsam, model, data, out, batch, steps, threads, ranks, opt):
    args = [onnxsam, "train", model, "--data", data, "--out", out, "--batch-size", str(batch), "--max-steps",
            str(steps), "--backend", "ort", "--threads", str(threads), "--normalize", "none"] + OPTIMIZERS[opt]
    env = dict(os.environ)
    if ranks > 1:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
        args = ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", str(ranks)] + args + ["--distributed", "mpi"]
    elif opt == "sam-sync":
        args.remove("--sync-ascent")
    r = subprocess.run(args, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{r.stderr[-2000:]}")
    return step_rows(out)


def params(name):
    from scale_vs_torch import build
    return sum(p.numel() for p in build(name).parameters())


def ring_ms(nbytes, n, gbit, alpha_us, bucket=4 << 20):
    buckets = -(-nbytes // bucket)
    return 1e3 * (2 * (n - 1) / n * nbytes / (gbit * 1e9 / 8) + buckets * 2 * (n - 1) * alpha_us * 1e-6)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--onnxsam", default="target/release/onnxsam")
    ap.add_argument("--batch", type=int, default=32, help="per-rank batch")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--optimizers", nargs="+", default=["sgd", "sam", "sam-sync", "rwsam"])
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "onnxsam-dp"))
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    from scale_vs_torch import export
    model = export("resnet18", a.work)
    data = os.path.join(a.work, "cifar_synthetic.npz")
    if not os.path.exists(data):
        rng = np.random.default_rng(0)
        n = 4 * 2 * a.batch * a.steps
        np.savez(data, x=rng.standard_normal((n, 3, 32, 32)).astype(np.float32),
                 y=rng.integers(0, 10, n).astype(np.int64))
    print(f"ResNet-18 (CIFAR, 32×32), ONNX Runtime CPU, global batch {2 * a.batch}, median of {a.steps - 3} steps")
    print("| optimizer | 1 rank × 2 threads (s/step) | 2 ranks × 1 thread (s/step) | speed 2 ranks ÷ 1 rank | "
          "1 rank × 1 thread, batch b (s/step) | all-reduce MiB/step | transfer ms/step | wait ms/step | "
          "transfer ÷ step |")
    print("|---|---|---|---|---|---|---|---|---|")
    for opt in a.optimizers:
        out = lambda k: os.path.join(a.work, f"{opt}-{k}")
        for k in ("one2", "two1", "one1"):
            subprocess.run(["rm", "-rf", out(k)])
        t12, _ = train(a.onnxsam, model, data, out("one2"), 2 * a.batch, a.steps, 2, 1, opt)
        t21, ep = train(a.onnxsam, model, data, out("two1"), a.batch, a.steps, 1, 2, opt)
        t11, _ = train(a.onnxsam, model, data, out("one1"), a.batch, a.steps, 1, 1, opt)
        mib, ms, wait = ep["allreduce_mib"], ep["allreduce_ms"], ep["allreduce_wait_ms"]
        print(f"| {opt} | {t12:.3f} | {t21:.3f} | {t12 / t21:.2f}× | {t11:.3f} | {mib:.1f} | {ms:.1f} | {wait:.1f} | "
              f"{ms / 1e3 / t21:.1%} |", flush=True)
    print()
    print("Cost model T(N) = 2(N−1)/N·S/BW + buckets·2(N−1)·α, buckets of 4 MiB, ms per all-reduce round "
          "(SGD: one round a step; SAM --sync-ascent: two)")
    links = [("25 Gb/s Ethernet, α = 25 µs", 25, 25.0), ("100 Gb/s InfiniBand, α = 3 µs", 100, 3.0)]
    print("| model | parameters | S (MiB) | " + " | ".join(f"N = {n}, {l}" for n in (8, 64) for l, _, _ in links) + " |")
    print("|---|---|---|" + "---|" * 4)
    for name, label in (("resnet18", "ResNet-18 (CIFAR)"), ("wrn28_10", "WRN-28-10")):
        p = params(name)
        s = 4 * p
        cells = [f"{ring_ms(s, n, g, al):.1f}" for n in (8, 64) for _, g, al in links]
        print(f"| {label} | {p / 1e6:.2f} M | {s / 2**20:.1f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
