//! Graph IR and shape inference on the reference models.
use std::path::PathBuf;

use graph_passes::ir::{Model, NodeExt, PASS_KEY};
use graph_passes::shapes::{infer, Dim};

fn model(name: &str) -> Model {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models").join(format!("{name}.onnx"));
    Model::load(&p).unwrap()
}

const MODELS: &[&str] = &["mlp", "cnn", "resnet8", "transformer"];

#[test]
fn every_value_of_every_model_gets_dtype_and_shape_with_symbolic_batch() {
    for m in MODELS {
        let model = model(m);
        let s = infer(&model.graph).unwrap();
        assert!(s.unknown_ops.is_empty(), "{m}: no rule for {:?}", s.unknown_ops);
        for n in &model.graph.nodes {
            for o in &n.output {
                let t = s.get(o).unwrap_or_else(|| panic!("{m}: {o} has no type"));
                assert!(t.shape.is_some(), "{m}: {o} ({}) has unknown rank", n.op_type);
            }
        }
        let out = s.shape(&model.graph.outputs[0].name).unwrap();
        assert_eq!(out, &vec![Dim::Sym("N".into()), Dim::Known(10)], "{m}");
    }
}

#[test]
fn conv_and_pool_shapes_follow_the_spec() {
    let model = model("cnn");
    let s = infer(&model.graph).unwrap();
    let pools: Vec<_> = model.graph.nodes.iter().filter(|n| n.op_type == "MaxPool").collect();
    assert_eq!(s.shape(&pools[0].output[0]).unwrap()[1..], [Dim::Known(32), Dim::Known(14), Dim::Known(14)]);
    assert_eq!(s.shape(&pools[1].output[0]).unwrap()[1..], [Dim::Known(64), Dim::Known(7), Dim::Known(7)]);
    let flat = model.graph.nodes.iter().find(|n| n.op_type == "Flatten").unwrap();
    assert_eq!(s.shape(&flat.output[0]).unwrap(), &vec![Dim::Sym("N".into()), Dim::Known(3136)]);
}

#[test]
fn transformer_reshape_targets_resolve_through_shape_arithmetic() {
    let model = model("transformer");
    let s = infer(&model.graph).unwrap();
    for n in model.graph.nodes.iter().filter(|n| n.op_type == "Reshape") {
        let shape = s.shape(&n.output[0]).unwrap();
        assert!(shape.iter().filter(|d| d.known().is_none()).count() <= 1, "{}: {:?}", n.name, shape);
    }
}

#[test]
fn topological_order_puts_producers_first() {
    let mut model = model("resnet8");
    model.graph.nodes.reverse();
    model.graph.topo_sort().unwrap();
    let mut seen = std::collections::HashSet::new();
    let produced: std::collections::HashSet<String> = model.graph.nodes.iter().flat_map(|n| n.output.clone()).collect();
    for n in &model.graph.nodes {
        for i in &n.input {
            assert!(!produced.contains(i) || seen.contains(i), "{} read before it is produced", i);
        }
        seen.extend(n.output.iter().cloned());
    }
}

#[test]
fn a_cycle_is_an_error_naming_a_node() {
    let mut model = model("mlp");
    let last_out = model.graph.nodes.last().unwrap().output[0].clone();
    model.graph.nodes[0].input[0] = last_out;
    let e = model.graph.topo_order().unwrap_err();
    assert!(e.0.contains("cycle through node"), "{e}");
}

#[test]
fn builder_tags_nodes_with_the_pass_and_names_are_unique() {
    let mut model = model("mlp");
    model.graph.pass = Some("per-sample-loss".into());
    let logits = model.graph.outputs[0].name.clone();
    let a = model.graph.add("Relu", &[&logits]).output();
    let b = model.graph.add("Relu", &[&logits]).output();
    assert_ne!(a, b);
    let n = model.graph.nodes.last().unwrap();
    assert_eq!(n.pass_tag(), Some("per-sample-loss"));
    assert_eq!(n.metadata_props[0].key, PASS_KEY);
    let f1 = model.graph.fresh("x");
    let f2 = model.graph.fresh("x");
    assert_ne!(f1, f2);
}

#[test]
fn dead_nodes_and_their_initializers_are_removed() {
    let mut model = model("mlp");
    let before = model.graph.nodes.len();
    let logits = model.graph.outputs[0].name.clone();
    let w = model.graph.add_initializer("unused_w", graph_passes::onnx::tensor::from_f32("", &[1], &[2.0]));
    model.graph.add("Mul", &[&logits, &w]).output();
    assert_eq!(model.graph.remove_dead(), 1);
    assert_eq!(model.graph.nodes.len(), before);
    assert!(model.graph.initializer(&w).is_none());
    assert_eq!(model.graph.remove_dead(), 0);
    assert_eq!(model.graph.initializers.len(), 6);
}

#[test]
fn relu_then_max_pool_becomes_max_pool_then_relu_only_where_nothing_else_reads_the_relu() {
    use graph_passes::passes::train_mode::pool_before_relu;
    // cnn: Conv → Relu → MaxPool twice; afterwards each MaxPool reads the Conv and its ReLU the pool
    let mut m = model("cnn");
    let before = infer(&m.graph).unwrap();
    let logits_shape = before.get(&m.graph.outputs[0].name).cloned();
    assert_eq!(pool_before_relu(&mut m.graph).unwrap(), 2);
    let producers: std::collections::HashMap<String, String> =
        m.graph.nodes.iter().flat_map(|n| n.output.iter().map(move |o| (o.clone(), n.op_type.clone()))).collect();
    for n in m.graph.nodes.iter().filter(|n| n.op_type == "MaxPool") {
        assert_eq!(producers[&n.input[0]], "Conv", "{}", n.describe());
    }
    for n in m.graph.nodes.iter().filter(|n| n.op_type == "Relu" && producers.get(&n.input[0]).is_some()) {
        let p = &producers[&n.input[0]];
        assert!(p == "MaxPool" || p == "Gemm", "{} reads a {p}", n.describe());
    }
    let after = infer(&m.graph).unwrap();
    assert_eq!(after.get(&m.graph.outputs[0].name).cloned(), logits_shape);
    assert_eq!(pool_before_relu(&mut m.graph).unwrap(), 0, "nothing left to swap");

    // a ReLU output that something else reads too stays where it is
    let mut m = model("cnn");
    let relu = m.graph.nodes.iter().find(|n| n.op_type == "Relu").unwrap().output[0].clone();
    let extra = m.graph.add("Neg", &[&relu]).output();
    m.graph.outputs.push(graph_passes::onnx::ValueInfoProto { name: extra, ..Default::default() });
    assert_eq!(pool_before_relu(&mut m.graph).unwrap(), 1);
}

#[test]
fn transposes_and_reshapes_of_their_own_kind_fold_into_one() {
    use graph_passes::ir::attr_ints;
    use graph_passes::onnx::{data_type as dt, tensor, ValueInfoProto};
    use graph_passes::passes::value_info;
    let mut m = model("mlp");
    let g = &mut m.graph;
    g.inputs.push(value_info("x", dt::FLOAT, &[2, 3, 4]));
    // composed: [0,2,1] then [2,0,1] is [1,0,2]
    let t1 = g.add("Transpose", &["x"]).attr(attr_ints("perm", &[0, 2, 1])).output();
    let t2 = g.add("Transpose", &[&t1]).attr(attr_ints("perm", &[2, 0, 1])).output();
    // cancelling: [1,0,2] twice reads x itself
    let u1 = g.add("Transpose", &["x"]).attr(attr_ints("perm", &[1, 0, 2])).output();
    let u2 = g.add("Transpose", &[&u1]).attr(attr_ints("perm", &[1, 0, 2])).output();
    let u3 = g.add("Neg", &[&u2]).output();
    // Reshape of a Reshape; one whose target has a 0 stays
    let s1 = g.add_initializer("s1", tensor::from_i64("", &[2], &[6, 4]));
    let s2 = g.add_initializer("s2", tensor::from_i64("", &[2], &[4, -1]));
    let s0 = g.add_initializer("s0", tensor::from_i64("", &[2], &[0, -1]));
    let r1 = g.add("Reshape", &["x", &s1]).output();
    let r2 = g.add("Reshape", &[&r1, &s2]).output();
    let r3 = g.add("Reshape", &[&r1, &s0]).output();
    for o in [&t2, &u3, &r2, &r3] {
        g.outputs.push(ValueInfoProto { name: o.clone(), ..Default::default() });
    }
    let before = infer(g).unwrap();
    let shapes: Vec<_> = [&t2, &u3, &r2, &r3].iter().map(|o| before.shape(o).cloned()).collect();
    assert_eq!(g.fold_transposes_and_reshapes(), 3);
    g.remove_dead();
    let after = infer(g).unwrap();
    for (o, s) in [&t2, &u3, &r2, &r3].iter().zip(&shapes) {
        assert_eq!(&after.shape(o).cloned(), s, "{o}");
    }
    let prod = |o: &str| g.nodes.iter().find(|n| n.output[0] == o).unwrap().clone();
    assert_eq!(prod(&t2).input[0], "x");
    assert_eq!(prod(&t2).attr_ints("perm"), Some(vec![1, 0, 2]));
    assert_eq!(prod(&u3).input[0], "x", "cancelling transposes vanish");
    assert_eq!(prod(&r2).input[0], "x");
    assert_eq!(prod(&r3).input[0], r1, "a target with 0 copies a dimension of the inner result");
    assert!(g.nodes.iter().all(|n| n.output[0] != u1 && n.output[0] != u2), "the unread inner transposes are gone");
}

/// Residual sums of two different symbolic sizes, block after block (a transformer whose
/// sequence length the file computes at run time): the broadcast symbol stays one flat
/// `max(a,b)` instead of doubling with every block (vit_tiny's training-mode legacy export
/// needed 24 GB for the name of one size before this).
#[test]
fn broadcast_symbols_stay_flat_through_residual_blocks() {
    use graph_passes::shapes::broadcast;
    let a = vec![Dim::Sym("batch".into()), Dim::Sym("a".into()), Dim::Known(192)];
    let b = vec![Dim::Sym("batch".into()), Dim::Sym("b".into()), Dim::Known(192)];
    let mut x = broadcast(&[&a, &b]).unwrap();
    assert_eq!(x[1], Dim::Sym("max(a,b)".into()));
    for _ in 0..40 {
        let f = broadcast(&[&x, &b]).unwrap(); // f(x): a sum of x with another branch
        x = broadcast(&[&x, &f]).unwrap(); // x + f(x)
        x = broadcast(&[&a, &x]).unwrap();
    }
    assert_eq!(x, vec![Dim::Sym("batch".into()), Dim::Sym("max(a,b)".into()), Dim::Known(192)]);
    let c = vec![Dim::Sym("max(c,conv(h))".into())];
    assert_eq!(broadcast(&[&c, &vec![Dim::Sym("a".into())]]).unwrap()[0], Dim::Sym("max(a,c,conv(h))".into()));
}
