#!/usr/bin/env python3
"""A/B timing of written step graphs in Python onnxruntime: runs each graph in turn, round after
round (so a noisy machine's slow moments hit all of them), and prints each one's median ms.

Usage: python3 tools/bench/ab_step_graphs.py [--rounds 20] [--batch 128] [--threads 2] A.onnx B.onnx ...
Each graph comes from `onnxsam rewrite MODEL ... -o X.onnx`; its X.json gives the inputs' roles:
data, labels and random directions are drawn here, parameters, state and hyperparameters keep the
initializer values the graph carries. This is how docs/benchmarks.md's old-vs-new step-graph
comparisons were taken (write the graphs with the old and the new binary, then time them together).
"""
import argparse
import json
import time

import numpy as np
import onnxruntime as ort


def feeds_for(path, batch):
    g = json.load(open(path[: -len(".onnx")] + ".json"))["graphs"][0]
    rng = np.random.default_rng(0)
    feeds = {}
    for i in g["inputs"]:
        if i["role"] in ("hyperparameter", "parameter", "state"):
            continue
        shape = [batch if d == -1 else d for d in i["shape"]]
        if i["dtype"] == "int64":
            feeds[i["name"]] = rng.integers(0, 10, shape).astype(np.int64)
        elif i["dtype"] == "bool":
            feeds[i["name"]] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[i["name"]] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("graphs", nargs="+")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    sessions = {}
    for p in a.graphs:
        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        so.log_severity_level = 3
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as onnxsam runs it
        sessions[p] = (ort.InferenceSession(p, so, providers=["CPUExecutionProvider"]), feeds_for(p, a.batch))
    times = {p: [] for p in sessions}
    for _ in range(a.rounds):
        for p, (s, f) in sessions.items():
            s.run(None, f)  # warm
            t = time.perf_counter()
            s.run(None, f)
            times[p].append(time.perf_counter() - t)
    for p, t in times.items():
        print(f"{p}: {np.median(t) * 1e3:.2f} ms (median of {a.rounds})")


if __name__ == "__main__":
    main()
