//! eval-graph: the evaluation graph's extra outputs: besides `loss` and `loss_per_sample`, the
//! number of correctly classified samples `correct` (cross-entropy).
use super::{correct_count, expose, Contract, Pass};
use crate::autodiff::Ctx;
use crate::ir::Model;
use crate::shapes::Shapes;
use crate::Result;

pub struct EvalGraph;

impl Pass for EvalGraph {
    fn name(&self) -> &'static str {
        "eval-graph"
    }

    fn run(&self, m: &mut Model, c: &mut Contract) -> Result<()> {
        let opset = m.opset();
        let mut ctx = Ctx::new(&mut m.graph, Shapes::default(), opset);
        if let (Some(logits), Some(labels), Some(_)) = (&c.logits, &c.labels, &c.cross_entropy) {
            let cc = correct_count(&mut ctx, logits, labels);
            let cc = expose(&mut ctx, &cc, "correct", Some(&[]));
            c.diagnostics.insert("correct".into(), cc);
        }
        if let Some(l) = &c.loss {
            c.diagnostics.insert("loss".into(), l.clone());
        }
        m.graph.topo_sort()
    }
}
