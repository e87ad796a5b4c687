//! What the exporters record about the PyTorch program, read back.
//!
//! The dynamo exporter (`torch.onnx.export(..., dynamo=True)`, the default since torch 2.9) tags
//! every node with `metadata_props`:
//! - `pkg.torch.onnx.fx_node`: the FX node it came from, e.g.
//!   `%conv2d : [num_users=1] = call_function[target=torch.ops.aten.conv2d.default](args = (%x,
//!   %p_conv1_weight, None, [1, 1], [1, 1]), kwargs = {})`; parameters are the placeholders
//!   `p_<name>`, buffers `b_<name>`, lifted constants `c_<name>`, where <name> is the tensor's
//!   fully qualified name lower-cased with every character outside [a-zA-Z0-9] replaced by `_`
//!   (torch/_export/utils.py, `placeholder_naming_pass`);
//! - `pkg.torch.onnx.name_scopes`: the module path, e.g. `['', 'layer1', 'layer1.0', 'layer1.0.bn1',
//!   '_native_batch_norm_legit_no_training_1']` (every enclosing module, then the FX node);
//! - `pkg.onnxscript.rewriter.rule_name`: the rewrite rules of the exporter's optimizer that made
//!   the node (e.g. `FuseBatchNormIntoConv`).
//!
//! The legacy (TorchScript) exporter names nodes after the module scope: `/layer1/layer1.0/conv1/Conv`.
use crate::ir::NodeExt;
use crate::onnx::NodeProto;

pub const FX_NODE: &str = "pkg.torch.onnx.fx_node";
pub const NAME_SCOPES: &str = "pkg.torch.onnx.name_scopes";
pub const RULE_NAME: &str = "pkg.onnxscript.rewriter.rule_name";

fn meta<'a>(n: &'a NodeProto, key: &str) -> Option<&'a str> {
    n.metadata_props.iter().find(|p| p.key == key).map(|p| p.value.as_str())
}

/// True when any node carries the dynamo exporter's metadata.
pub fn is_dynamo_export(nodes: &[NodeProto]) -> bool {
    nodes.iter().any(|n| n.metadata_props.iter().any(|p| p.key.starts_with("pkg.torch.onnx.")))
}

/// One argument of an FX call: a value (`%name`), or a literal (None, a number, a list).
#[derive(Clone, Debug, PartialEq)]
pub enum FxArg {
    Value(String),
    Literal(String),
}

/// An FX call as recorded in `pkg.torch.onnx.fx_node`.
#[derive(Clone, Debug, PartialEq)]
pub struct FxCall {
    /// The ATen op without namespace and overload, e.g. `conv2d`, `linear`,
    /// `_native_batch_norm_legit_no_training`.
    pub op: String,
    pub args: Vec<FxArg>,
}

impl FxCall {
    /// The placeholder (parameter, buffer or constant) passed as argument `i`, if it is one.
    pub fn placeholder(&self, i: usize) -> Option<&str> {
        match self.args.get(i)? {
            FxArg::Value(v) if is_placeholder(v) => Some(v),
            _ => None,
        }
    }
    /// Every placeholder among the arguments (also inside lists), in order.
    pub fn placeholders(&self) -> Vec<&str> {
        let mut out = Vec::new();
        for a in &self.args {
            match a {
                FxArg::Value(v) if is_placeholder(v) => out.push(v.as_str()),
                FxArg::Literal(l) => {
                    for part in l.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '%')) {
                        if let Some(v) = part.strip_prefix('%').filter(|v| is_placeholder(v)) {
                            out.push(v);
                        }
                    }
                }
                _ => {}
            }
        }
        out
    }
}

/// `p_…` (parameter), `b_…` (buffer), `c_…` (lifted constant).
pub fn is_placeholder(v: &str) -> bool {
    v.starts_with("p_") || v.starts_with("b_") || v.starts_with("c_")
}

/// The FX call a node came from (dynamo exports).
pub fn fx_call(n: &NodeProto) -> Option<FxCall> {
    parse_fx_node(meta(n, FX_NODE)?)
}

/// Parses `%y : [...] = call_function[target=torch.ops.aten.conv2d.default](args = (…), kwargs = {…})`.
pub fn parse_fx_node(s: &str) -> Option<FxCall> {
    let target = s.split("target=").nth(1)?.split("](").next()?;
    // torch.ops.aten.conv2d.default → conv2d
    let parts: Vec<&str> = target.split('.').collect();
    let op = if parts.len() >= 2 && parts[0] == "torch" && parts.get(1) == Some(&"ops") {
        parts.get(3).copied().unwrap_or(target)
    } else {
        parts.last().copied().unwrap_or(target)
    };
    let after = s.split("args = (").nth(1)?;
    // the argument tuple ends at the depth-0 ')'
    let mut depth = 0i32;
    let mut end = after.len();
    for (i, ch) in after.char_indices() {
        match ch {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => {
                if depth == 0 {
                    end = i;
                    break;
                }
                depth -= 1;
            }
            _ => {}
        }
    }
    let inner = &after[..end];
    let mut args = Vec::new();
    let mut depth = 0i32;
    let mut cur = String::new();
    for ch in inner.chars() {
        match ch {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                args.push(fx_arg(cur.trim()));
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    if !cur.trim().is_empty() {
        args.push(fx_arg(cur.trim()));
    }
    Some(FxCall { op: op.to_string(), args })
}

fn fx_arg(s: &str) -> FxArg {
    match s.strip_prefix('%') {
        Some(v) if v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => FxArg::Value(v.to_string()),
        _ => FxArg::Literal(s.to_string()),
    }
}

/// The module paths enclosing a node, innermost first (dynamo `name_scopes`, or the legacy
/// exporter's node name `/layer1/layer1.0/conv1/Conv`). Empty at the top level.
pub fn module_paths(n: &NodeProto) -> Vec<String> {
    if let Some(s) = meta(n, NAME_SCOPES) {
        let items: Vec<String> = s
            .trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .map(|p| p.trim().trim_matches('\'').trim_matches('"').to_string())
            .collect();
        // the last entry names the FX node itself, the first is the root ''
        let mods: Vec<String> =
            items.iter().take(items.len().saturating_sub(1)).filter(|p| !p.is_empty()).cloned().collect();
        return mods.into_iter().rev().collect();
    }
    legacy_module_path(&n.name).map(|p| vec![p]).unwrap_or_default()
}

/// `/layer1/layer1.0/conv1/Conv` → `layer1.0.conv1`: the legacy exporter writes one segment per
/// enclosing module, a container's child as `<container>.<index>`, then the op.
pub fn legacy_module_path(node_name: &str) -> Option<String> {
    let segs: Vec<&str> = node_name.strip_prefix('/')?.split('/').collect();
    if segs.len() < 2 {
        return None;
    }
    let mut path: Vec<&str> = Vec::new();
    for seg in &segs[..segs.len() - 1] {
        match path.last() {
            Some(prev) if seg.starts_with(&format!("{prev}.")) => {
                *path.last_mut().expect("not empty") = seg;
            }
            _ => path.push(seg),
        }
    }
    let p = path.join(".");
    (!p.is_empty()).then_some(p)
}

/// The rewrite rules of the exporter's optimizer that produced the node.
pub fn rewrite_rules(n: &NodeProto) -> Vec<String> {
    meta(n, RULE_NAME).map(|s| s.split(',').map(|r| r.trim().to_string()).collect()).unwrap_or_default()
}

/// A Conv, ConvTranspose or Gemm the dynamo exporter's optimizer fused an eval-mode BatchNorm
/// into (onnxscript `FuseBatchNormIntoConv`, `…IntoConvTranspose`, `…IntoGemm`; the node keeps
/// the BatchNorm call's metadata).
pub fn fused_batch_norm(n: &NodeProto) -> bool {
    matches!(n.op_type.as_str(), "Conv" | "ConvTranspose" | "Gemm")
        && rewrite_rules(n).iter().any(|r| r == &format!("FuseBatchNormInto{}", n.op_type))
}

/// How torch.export names the placeholder of a tensor: lower-cased, every character outside
/// [a-zA-Z0-9] replaced by `_`.
pub fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect()
}

/// The PyTorch name behind placeholder `p` (`p_layer1_0_conv1_weight`): a known tensor name
/// whose sanitized form matches; else the innermost enclosing module whose sanitized path
/// prefixes it (`layer1.0.conv1` + `weight`); else the rest as it is (a top-level tensor).
/// A suffix torch added against name collisions (`_1`) is tolerated against known names.
pub fn placeholder_name(p: &str, modules: &[String], known: &[&str]) -> String {
    let rest = p.get(2..).unwrap_or(p);
    if let Some(k) = known.iter().find(|k| sanitize(k) == rest) {
        return k.to_string();
    }
    // the enclosing modules, and the modules of known tensors (a submodule's tensor used by its
    // parent's forward: MultiheadAttention reads out_proj.bias in its own scope); the longest
    // matching path wins
    let mut paths: Vec<&str> = modules.iter().map(|m| m.as_str()).collect();
    paths.extend(known.iter().filter_map(|k| k.rsplit_once('.').map(|(parent, _)| parent)));
    paths.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for m in paths {
        let sm = sanitize(m);
        if let Some(attr) = rest.strip_prefix(&sm).and_then(|r| r.strip_prefix('_')) {
            if !attr.is_empty() {
                return format!("{m}.{attr}");
            }
        }
    }
    rest.to_string()
}

/// The node's description for messages: its module path when known, else its name.
pub fn describe_layer(n: &NodeProto) -> String {
    module_paths(n).first().cloned().unwrap_or_else(|| n.describe())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fx_node_arguments_are_parsed_positionally() {
        let s = "%_native_batch_norm_legit_no_training : [num_users=1] = call_function[target=torch.ops.aten._native_batch_norm_legit_no_training.default](args = (%conv2d, %p_bn1_weight, %p_bn1_bias, %b_bn1_running_mean, %b_bn1_running_var, 0.1, 1e-05), kwargs = {})";
        let c = parse_fx_node(s).unwrap();
        assert_eq!(c.op, "_native_batch_norm_legit_no_training");
        assert_eq!(c.args.len(), 7);
        assert_eq!(c.placeholder(1), Some("p_bn1_weight"));
        assert_eq!(c.placeholder(4), Some("b_bn1_running_var"));
        assert_eq!(c.placeholder(0), None);
        let s = "%conv2d : [num_users=1] = call_function[target=torch.ops.aten.conv2d.default](args = (%x, %p_conv1_weight, None, [1, 1], [1, 1]), kwargs = {})";
        let c = parse_fx_node(s).unwrap();
        assert_eq!(c.op, "conv2d");
        assert_eq!(c.args[2], FxArg::Literal("None".into()));
        assert_eq!(c.args[3], FxArg::Literal("[1, 1]".into()));
        let s = "%cat : [num_users=1] = call_function[target=torch.ops.aten.cat.default](args = ([%expand, %view], 1), kwargs = {})";
        assert_eq!(parse_fx_node(s).unwrap().args.len(), 2);
        let s = "%cat : [num_users=1] = call_function[target=torch.ops.aten.cat.default](args = ([%p_class_token, %view], 1), kwargs = {})";
        assert_eq!(parse_fx_node(s).unwrap().placeholders(), vec!["p_class_token"]);
    }

    #[test]
    fn placeholders_map_back_to_pytorch_names() {
        let mods = vec!["layer2.0.downsample.1".to_string(), "layer2.0.downsample".into(), "layer2.0".into()];
        assert_eq!(placeholder_name("p_layer2_0_downsample_1_weight", &mods, &[]), "layer2.0.downsample.1.weight");
        assert_eq!(
            placeholder_name("b_layer2_0_downsample_1_running_var", &mods, &[]),
            "layer2.0.downsample.1.running_var"
        );
        // used outside its module: the known names decide
        assert_eq!(placeholder_name("p_embed_weight", &[], &["embed.weight", "head.bias"]), "embed.weight");
        assert_eq!(placeholder_name("p_class_token", &[], &[]), "class_token");
        let mods = vec!["encoder".to_string()];
        assert_eq!(placeholder_name("p_encoder_pos_embedding", &mods, &[]), "encoder.pos_embedding");
        // a submodule's tensor used in its parent's scope, its sibling known
        let mods = vec!["layers.0.self_attn".to_string()];
        let known = ["layers.0.self_attn.out_proj.weight"];
        assert_eq!(
            placeholder_name("p_layers_0_self_attn_out_proj_bias", &mods, &known),
            "layers.0.self_attn.out_proj.bias"
        );
    }

    #[test]
    fn module_paths_from_scopes_and_legacy_names() {
        let mut n = NodeProto { name: "/layer1/layer1.0/conv1/Conv".into(), ..Default::default() };
        assert_eq!(module_paths(&n), vec!["layer1.0.conv1".to_string()]);
        n.metadata_props.push(crate::onnx::StringStringEntryProto {
            key: NAME_SCOPES.into(),
            value: "['', 'layer1', 'layer1.0', 'layer1.0.bn1', '_native_batch_norm_legit_no_training_1']".into(),
        });
        assert_eq!(module_paths(&n), vec!["layer1.0.bn1", "layer1.0", "layer1"]);
        assert_eq!(legacy_module_path("/MatMul"), None);
        assert_eq!(
            legacy_module_path("/blocks/blocks.0/token_mlp/token_mlp.0/MatMul").as_deref(),
            Some("blocks.0.token_mlp.0")
        );
        assert_eq!(legacy_module_path("Identity_3"), None);
    }
}
