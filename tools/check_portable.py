#!/usr/bin/env python3
"""Runs a graph written by `onnxsam rewrite` in Python onnxruntime, as any user could, and
compares its outputs with PyTorch reference fixtures.

Usage: python3 tools/check_portable.py GRAPH.onnx BATCH.npz GRADS.npz
GRAPH.onnx's parameters default to their initial values (overridable initializers), so only the
data and labels are fed. Exit 0 when every gradient and the loss match within 1e-4 relative.
"""
import json
import os
import sys

import numpy as np
import onnxruntime as ort


def main():
    graph, batch_path, ref_path = sys.argv[1:4]
    contract = json.load(open(os.path.splitext(graph)[0] + ".json"))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    s = ort.InferenceSession(graph, so, providers=["CPUExecutionProvider"])
    batch = np.load(batch_path)
    feeds = {}
    for name in contract["data"]:
        feeds[name] = batch[name] if name in batch.files else batch["x"]
    feeds[contract["labels"]] = batch["y"]
    out = dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))
    ref = np.load(ref_path)
    worst = 0.0
    for key in ref.files:
        if key == "loss":
            got = out[contract["loss"]]
        elif key == "loss_per_sample":
            got = out[contract["loss_per_sample"]]
        elif key.startswith("bn_after/"):
            got = out[contract["state_next"][key[len("bn_after/"):]]]
        else:
            got = out[contract["grads"][key]]
        norm = np.linalg.norm(ref[key])
        err = np.linalg.norm(got - ref[key])
        rel = err / norm if norm > 1e-6 else err
        worst = max(worst, rel)
        if rel > 1e-4:
            print(f"{key}: relative error {rel:.3e}")
            return 1
    print(f"{len(ref.files)} arrays match (worst relative error {worst:.2e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
