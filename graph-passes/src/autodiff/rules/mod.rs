//! Gradient rules, one file per op family; each family lists its ops in one `match`.
pub mod conv;
pub mod elementwise;
pub mod gather;
pub mod matmul;
pub mod norm;
pub mod pool;
pub mod reduce;
pub mod shape;
pub mod softmax_loss;

use super::Rule;

/// The rule for an op, if onnxsam has one.
pub fn rule_for(op: &str) -> Option<Rule> {
    elementwise::rule(op)
        .or_else(|| matmul::rule(op))
        .or_else(|| conv::rule(op))
        .or_else(|| pool::rule(op))
        .or_else(|| norm::rule(op))
        .or_else(|| reduce::rule(op))
        .or_else(|| shape::rule(op))
        .or_else(|| softmax_loss::rule(op))
        .or_else(|| gather::rule(op))
}

/// Ops through which no gradient flows (shapes, indices, comparisons, constants).
pub fn is_non_differentiable(op: &str) -> bool {
    crate::support::NON_DIFFERENTIABLE.contains(&op)
}

/// Every op with a rule (for `inspect` and the docs).
pub fn differentiable_ops() -> Vec<&'static str> {
    crate::support::DIFFERENTIABLE.iter().copied().filter(|op| rule_for(op).is_some()).collect()
}

/// The gradient reaching a node's first output (an error naming the node if none did).
pub(crate) fn dy(n: &crate::onnx::NodeProto, dys: &[Option<String>]) -> crate::Result<String> {
    dys.first().cloned().flatten().ok_or_else(|| crate::ir::node_error(n, "no gradient reached its output"))
}

/// The gradient of an op with one input.
pub(crate) fn one(g: String) -> super::Grads {
    vec![Some(g)]
}
