//! lift-params: the PyTorch parameters the import pass found become graph inputs under their
//! names (trainable), except those `--freeze` keeps constant. Buffers (BatchNorm running
//! statistics) stay initializers; the train-mode and eval-mode passes make them state.
use super::value_info;
use crate::pass::{glob_match, Contract, Pass};
use crate::ir::Model;
use crate::{bail, Result};

#[derive(Default)]
pub struct LiftParams {
    /// Glob patterns (`*`, `?`) of parameter names to keep constant.
    pub freeze: Vec<String>,
}

impl Pass for LiftParams {
    fn name(&self) -> &'static str {
        "lift-params"
    }

    fn run(&self, m: &mut Model, c: &mut Contract) -> Result<()> {
        let g = &mut m.graph;
        c.data = g.data_inputs().iter().map(|v| v.name.clone()).collect();
        let mut params = Vec::new();
        for p in &c.import.params {
            if self.freeze.iter().any(|pat| glob_match(pat, p)) {
                continue;
            }
            let Some(pos) = g.initializers.iter().position(|t| &t.name == p) else {
                bail!("parameter '{p}' has no initializer (run the import pass first)");
            };
            let t = g.initializers.remove(pos);
            g.inputs.push(value_info(p, t.data_type, &t.dims));
            c.init.insert(p.clone(), t);
            params.push(p.clone());
        }
        if params.is_empty() {
            bail!("no trainable parameters found (every float initializer is frozen or constant)");
        }
        c.params = params;
        Ok(())
    }
}
