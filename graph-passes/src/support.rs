//! Which ops onnxsam can handle, in one place: what the engines run, what autodiff differentiates.

/// Ops whose gradient rules autodiff provides (the coverage of the autodiff issue).
pub const DIFFERENTIABLE: &[&str] = &[
    "Gemm",
    "MatMul",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Neg",
    "Pow",
    "Sqrt",
    "Exp",
    "Log",
    "Abs",
    "Reciprocal",
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "Tanh",
    "Erf",
    "Gelu",
    "Softmax",
    "LogSoftmax",
    "Clip",
    "Min",
    "Max",
    "Where",
    "Identity",
    "Cast",
    "CastLike",
    "Conv",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "BatchNormalization",
    "LayerNormalization",
    "Dropout",
    "Flatten",
    "Reshape",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Concat",
    "Split",
    "Slice",
    "Gather",
    "Expand",
    "Tile",
    "Pad",
    "ReduceMean",
    "ReduceSum",
    "SoftmaxCrossEntropyLoss",
    "NegativeLogLikelihoodLoss",
    "GatherElements",
];

/// Ops on paths that carry no gradient (shapes, indices, comparisons).
pub const NON_DIFFERENTIABLE: &[&str] = &[
    "Shape",
    "Constant",
    "ConstantOfShape",
    "Range",
    "Equal",
    "Less",
    "Greater",
    "LessOrEqual",
    "GreaterOrEqual",
    "ArgMax",
    "ArgMin",
    "Not",
    "And",
    "Or",
    "Size",
    "NonZero",
    "OneHot",
];

pub fn has_gradient_rule(op: &str) -> bool {
    DIFFERENTIABLE.contains(&op) || NON_DIFFERENTIABLE.contains(&op)
}

/// Forms tract cannot run (measured, BACKEND-NOTES.md); ONNX Runtime runs them.
pub fn tract_limitation(op: &str) -> Option<&'static str> {
    match op {
        "SoftmaxCrossEntropyLoss" | "NegativeLogLikelihoodLoss" | "Bernoulli" => Some("not implemented in tract"),
        _ => None,
    }
}
