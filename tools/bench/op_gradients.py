#!/usr/bin/env python3
"""Gradient cost of the recurrent ops and Resize (issue 11): `onnxsam bench --backend ort` on models
whose time the op dominates, reporting forward+backward ÷ the training-form forward (the forward
graph as onnxsam trains it: recurrent layers written out step by step), median over --rounds rounds
that alternate the models.

Models: the zoo's full LSTM (Embedding + 2-layer nn.LSTM, hidden 64, 12 steps) and GRU (bidirectional
nn.GRU, hidden 64), both exported with do_constant_folding=False (tools/zoo/zoo.py), and four Resize
models built here: x [N, 16, 32, 32] -> Conv 1x1 (16 -> 16) -> Resize x2 -> GlobalAveragePool, one per
mode as PyTorch exports F.interpolate / nn.Upsample: nearest (asymmetric, floor), bilinear
(half_pixel), bilinear align_corners, bicubic (half_pixel, A = -0.75).

Usage (after `cargo build --release`, tools/zoo/zoo.py, and with onnx in the venv):
    .venv/bin/python tools/bench/op_gradients.py [--rounds 5] [--batch-size 64] [--threads N] [--only LSTM]
"""
import argparse
import os
import re
import statistics
import subprocess
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def resize_model(path, mode, ctm):
    c = 16
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Constant", [], ["scales"], value_floats=[1.0, 1.0, 2.0, 2.0]),
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Resize", ["c", "", "scales"], ["r"], mode=mode, coordinate_transformation_mode=ctm,
                         nearest_mode="floor", cubic_coeff_a=-0.75),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["logits"]),
    ]
    w = numpy_helper.from_array((rng.standard_normal((c, c, 1, 1)) * 0.1).astype(np.float32), "w")
    g = helper.make_graph(nodes, "resize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, 32, 32])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", c])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--zoo", default=os.path.join(ROOT, "zoo"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--only", help="run only the models whose name contains this text (e.g. LSTM)")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "onnxsam"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        models = {
            "LSTM (2 layers, h 64, T 12)": os.path.join(a.zoo, "lstm", "legacy_nofold.onnx"),
            "GRU (bidirectional, h 64, T 12)": os.path.join(a.zoo, "gru", "legacy_nofold.onnx"),
        }
        for name, mode, ctm in [("nearest", "nearest", "asymmetric"), ("bilinear", "linear", "half_pixel"),
                                ("bilinear align_corners", "linear", "align_corners"),
                                ("bicubic", "cubic", "half_pixel")]:
            p = os.path.join(tmp, f"resize_{mode}_{ctm}.onnx")
            resize_model(p, mode, ctm)
            models[f"Resize x2 {name} (16 ch, 32x32)"] = p
        if a.only:
            models = {k: v for k, v in models.items() if a.only.lower() in k.lower()}
        ratios = {k: [] for k in models}
        times = {k: [] for k in models}
        for _ in range(a.rounds):
            for name, path in models.items():
                cmd = [a.bin, "bench", path, "--backend", "ort", "--batch-size", str(a.batch_size),
                       "--steps", str(a.steps)]
                if a.threads:
                    cmd += ["--threads", str(a.threads)]
                r = subprocess.run(cmd, capture_output=True, text=True, check=True)
                out = r.stdout + r.stderr
                line = [l for l in out.splitlines() if "training forward" in l]
                if not line:
                    raise SystemExit(f"{name}: no bench line in\n{out}")
                m = re.search(r"training form ([\d.]+) ms\), forward\+backward ([\d.]+) ms", line[-1])
                fwd, both = float(m.group(1)), float(m.group(2))
                ratios[name].append(both / fwd)
                times[name].append((fwd, both))
        print(f"| model (batch {a.batch_size}, ORT CPU) | training forward (ms) | forward+backward (ms) | ratio |")
        print("|---|---|---|---|")
        for name in models:
            f = statistics.median(t[0] for t in times[name])
            b = statistics.median(t[1] for t in times[name])
            r = statistics.median(ratios[name])
            print(f"| {name} | {f:.2f} | {b:.2f} | {r:.2f} (rounds: {', '.join(f'{x:.2f}' for x in ratios[name])}) |")


if __name__ == "__main__":
    main()
