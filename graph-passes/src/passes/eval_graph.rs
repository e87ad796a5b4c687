//! eval-graph: the evaluation graph's extra outputs: besides `loss` and `loss_per_sample`, the
//! task metric summed over the batch: `correct` (classification) or `abs_error` (regression).
use super::expose_metric;
use crate::pass::{Contract, Pass};
use crate::ctx::Ctx;
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
        expose_metric(&mut ctx, c);
        if let Some(l) = &c.loss {
            c.diagnostics.insert("loss".into(), l.clone());
        }
        m.graph.topo_sort()
    }
}
