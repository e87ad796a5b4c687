#!/usr/bin/env python3
"""Runs a step graph written by `onnxsam rewrite --optimizer …` in Python onnxruntime, driven only
by its step.json, as any user could: data and labels from BATCH.npz, parameters, state and
hyperparameters from the graph's defaults, random directions drawn here with numpy (seed 0; bool
inputs, true = +1).

Usage: python3 tools/check_step_portable.py STEP.onnx BATCH.npz OUT.npz
Writes every graph output and every random direction fed (under its input name) to OUT.npz;
tests/portability.rs runs the same step in onnxsam with those directions and compares.
"""
import json
import os
import sys

import numpy as np
import onnxruntime as ort


def main():
    graph, batch_path, out_path = sys.argv[1:4]
    desc = json.load(open(os.path.splitext(graph)[0] + ".json"))
    g = next(x for x in desc["graphs"] if x["file"] == os.path.basename(graph))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    s = ort.InferenceSession(graph, so, providers=["CPUExecutionProvider"])
    batch = np.load(batch_path)
    rng = np.random.default_rng(0)
    feeds, fed_dirs = {}, {}
    for io in g["inputs"]:
        role, name = io["role"], io["name"]
        if role == "data":
            feeds[name] = batch[name] if name in batch.files else batch["x"]
        elif role == "label":
            feeds[name] = batch["y"]
        elif role == "random_direction":
            z = rng.random(io["shape"]) < 0.5  # Rademacher as bool: true is +1
            feeds[name] = fed_dirs[name] = z
        elif role == "random_uniform":
            raise SystemExit(f"{name}: dropout noise is not drawn by this check")
        # parameters, state and hyperparameters: the graph's defaults (initializers)
    declared = {i.name for i in s.get_inputs()} | {i.name for i in s.get_overridable_initializers()}
    missing = [io["name"] for io in g["inputs"] if io["name"] not in declared]
    if missing:
        raise SystemExit(f"step.json lists inputs the graph does not have: {missing}")
    out = dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))
    roles = {io["name"]: io["role"] for io in g["outputs"]}
    unknown = [k for k in out if k not in roles]
    if unknown:
        raise SystemExit(f"outputs without a role in step.json: {unknown}")
    np.savez(out_path, **out, **fed_dirs)
    print(f"ran {graph}: {len(feeds)} inputs fed, {len(out)} outputs "
          f"({sum(r == 'parameter' for r in roles.values())} next parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
