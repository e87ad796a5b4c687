#!/usr/bin/env python3
"""`onnxsam run` vs Python onnxruntime's own session.run, side by side in one run.

Usage: python3 tools/bench/run_vs_ort.py [--batch 128] [--repeat 30] [--models cnn resnet8]
Needs: pip install onnxruntime==1.31.1 numpy; a release build (cargo build --release).
Prints median ms per run for Python ORT, onnxsam (ort) and onnxsam (tract), and the ratio
onnxsam-ort / python-ort (target ≤ 1.1). Rounds alternate between engines to share the noise.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "target", "release", "onnxsam")


def python_ort(path, feeds, repeat, warmup, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    for _ in range(warmup):
        s.run(None, feeds)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        s.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def onnxsam(path, npz, backend, repeat, warmup, threads):
    out = subprocess.run([BIN, "run", path, "--input", npz, "--backend", backend, "--repeat", str(repeat),
                          "--warmup", str(warmup), "--threads", str(threads)], capture_output=True, text=True, check=True)
    return float(re.search(r"median ([0-9.]+) ms", out.stdout).group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--models", nargs="+", default=["cnn", "resnet8"])
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"batch {a.batch}, {a.threads} threads, median of {a.repeat} runs, best-of-{a.rounds} rounds interleaved")
    print(f"{'model':<12} {'python-ort ms':>14} {'onnxsam-ort ms':>15} {'ratio':>6} {'onnxsam-tract ms':>17}")
    for m in a.models:
        path = os.path.join(ROOT, "models", f"{m}.onnx")
        s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        inp = s.get_inputs()[0]
        shape = [a.batch] + [d for d in inp.shape[1:]]
        x = rng.integers(0, 64, shape).astype(np.int64) if "int64" in inp.type else rng.standard_normal(shape).astype(np.float32)
        with tempfile.TemporaryDirectory() as d:
            npz = os.path.join(d, "in.npz")
            np.savez(npz, **{inp.name: x})
            py, rs, tr = [], [], []
            for _ in range(a.rounds):
                py.append(python_ort(path, {inp.name: x}, a.repeat, a.warmup, a.threads))
                rs.append(onnxsam(path, npz, "ort", a.repeat, a.warmup, a.threads))
                tr.append(onnxsam(path, npz, "tract", max(5, a.repeat // 3), 2, a.threads))
        p, r, t = min(py), min(rs), min(tr)
        print(f"{m:<12} {p:>14.2f} {r:>15.2f} {r / p:>6.2f} {t:>17.2f}")


if __name__ == "__main__":
    sys.exit(main())
