#!/usr/bin/env python3
"""tests/fixtures/linreg/model.onnx: linear regression out = x·W + b (x [N, 5], out [N, 1]) for the
m-sharpness identity test (METHOD.md). Needs only the `onnx` package."""
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
rng = np.random.default_rng(5)
W = (rng.standard_normal((5, 1)) * 0.5).astype(np.float32)
b = np.array([0.1], dtype=np.float32)
g = helper.make_graph(
    [helper.make_node("Gemm", ["x", "W", "b"], ["out"], name="/fc/Gemm")],
    "linreg",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
    [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 1])],
    [numpy_helper.from_array(W, "W"), numpy_helper.from_array(b, "b")],
)
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="tools/make_linreg.py")
m.ir_version = 8
onnx.checker.check_model(m)
onnx.save(m, os.path.join(root, "tests", "fixtures", "linreg", "model.onnx"))
