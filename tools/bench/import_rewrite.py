#!/usr/bin/env python3
"""Time onnxsam's import and rewrite of the largest zoo model (ResNet-18, 11 M parameters):
`onnxsam rewrite FILE --optimizer … -o step.onnx` end to end (load, import, passes, writing the
step graph with its 45 MB of initializers) and `onnxsam inspect FILE` (load, import, gradient graph,
verdict), each run --runs times in alternation; prints medians in seconds.

Usage (after `cargo build --release` and tools/zoo/zoo.py):
    python3 tools/bench/import_rewrite.py [--zoo zoo] [--arch resnet18] [--runs 7]
"""
import argparse
import os
import statistics
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--zoo", default=os.path.join(ROOT, "zoo"))
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "onnxsam"))
    a = ap.parse_args()
    settings = ["legacy_nofold", "dynamo_noopt", "legacy_train"]
    jobs = []
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "step.onnx")
        for s in settings:
            f = os.path.join(a.zoo, a.arch, f"{s}.onnx")
            if not os.path.exists(f):
                continue
            jobs.append((f"inspect {s}", [a.bin, "inspect", f]))
            for opt in (["--optimizer", "sgd"], ["--optimizer", "sam"], ["--optimizer", "sam", "--reweight", "1"]):
                jobs.append((f"rewrite {s} {' '.join(opt[1:])}", [a.bin, "rewrite", f, *opt, "-o", out]))
        times = {name: [] for name, _ in jobs}
        for _ in range(a.runs):
            for name, cmd in jobs:
                t = time.perf_counter()
                p = subprocess.run(cmd, capture_output=True)
                times[name].append(time.perf_counter() - t)
                if p.returncode != 0:
                    raise SystemExit(f"{name}: {p.stderr.decode()[:300]}")
    size = os.path.getsize(os.path.join(a.zoo, a.arch, "dynamo_noopt.onnx")) / 2**20
    print(f"{a.arch} ({size:.0f} MB), median of {a.runs} alternating runs, seconds:")
    for name, ts in times.items():
        print(f"  {name:<34} {statistics.median(ts):6.2f}   (min {min(ts):.2f}, max {max(ts):.2f})")


if __name__ == "__main__":
    main()
