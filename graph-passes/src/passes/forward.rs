//! Copies of the training-form forward at other parameter values (θ + δz for the
//! finite-difference branch, θ + ε for SAM's second pass). A copy reads the same data, labels and
//! dropout noise; its running-statistic updates are dead and go in cleanup, so only the clean
//! pass at θ updates BatchNorm statistics (METHOD.md).
use std::collections::HashMap;

use crate::pass::{BatchNormRegion, Contract, CrossEntropyRegion};
use crate::import::conventions::padding_idx;
use crate::ir::{Graph, PASS_KEY};
use crate::onnx::StringStringEntryProto;
use crate::{bail, Result};

/// A copy of the forward: original value name → the copy's value name.
pub struct ForwardCopy {
    map: HashMap<String, String>,
    ce: Option<CrossEntropyRegion>,
    bns: Vec<BatchNormRegion>,
}

impl ForwardCopy {
    /// The copy's name for an original value (graph inputs that were not substituted keep theirs).
    pub fn value(&self, v: &str) -> String {
        self.map.get(v).cloned().unwrap_or_else(|| v.to_string())
    }
    /// The copy's closed-form gradient regions.
    pub fn shortcuts(&self) -> Vec<crate::autodiff::Shortcut> {
        super::autodiff::shortcuts(self.ce.as_ref(), &self.bns)
    }
}

/// Copies `c.forward` into `g` under `prefix`, reading `subst[v]` wherever the forward read `v`
/// (parameters → perturbed parameters). Nodes are tagged `<pass now running>/forward`.
pub fn copy_forward(g: &mut Graph, c: &Contract, prefix: &str, subst: &HashMap<String, String>) -> Result<ForwardCopy> {
    copy_forward_with(g, c, prefix, subst, false)
}

/// `copy_forward` for a finite-difference probe of PyTorch's gradient: with `hold_padding_rows`,
/// an embedding lookup of a padding row reads the unperturbed table (`Where(ids = k, Gather(θ),
/// Gather(θ + δz))`), so that (ℓ(θ + δz) − ℓ(θ))/δ estimates z·g with g as PyTorch has it: no
/// gradient through a padding row's lookups (nn.Embedding's padding_idx), whatever else reads
/// the table.
pub fn copy_forward_with(
    g: &mut Graph,
    c: &Contract,
    prefix: &str,
    subst: &HashMap<String, String>,
    hold_padding_rows: bool,
) -> Result<ForwardCopy> {
    let mut map = subst.clone();
    for n in &c.forward {
        if n.attribute.iter().any(|a| a.g.is_some() || !a.graphs.is_empty()) {
            bail!(
                "node '{}' ({}) has a subgraph: step graphs of models with control flow are not supported yet",
                n.name,
                n.op_type
            );
        }
        let mut m = n.clone();
        m.name = g.fresh(&format!("{prefix}{}", n.name));
        for i in m.input.iter_mut() {
            if let Some(r) = map.get(i.as_str()) {
                *i = r.clone();
            }
        }
        for o in m.output.iter_mut().filter(|o| !o.is_empty()) {
            let new = g.fresh(&format!("{prefix}{o}"));
            map.insert(o.clone(), new.clone());
            *o = new;
        }
        m.metadata_props.retain(|p| p.key != PASS_KEY);
        if let Some(pass) = &g.pass {
            // `diff` shows the copies apart from the rest of what the pass adds
            m.metadata_props.push(StringStringEntryProto { key: PASS_KEY.into(), value: format!("{pass}/forward") });
        }
        let held = match padding_idx(n) {
            Some(k) if hold_padding_rows && n.op_type == "Gather" && m.input[0] != n.input[0] => Some(k),
            _ => None,
        };
        if let Some(k) = held {
            // the copy's lookup is renamed; the held output takes the copy's name
            let out = m.output[0].clone();
            let perturbed = g.fresh(&format!("{out}.perturbed"));
            m.output[0] = perturbed.clone();
            let ids = m.input[1].clone();
            g.nodes.push(m);
            let mut ctx = crate::ctx::Ctx::new(g, crate::shapes::Shapes::default(), 0);
            let held = ctx.g.add("Gather", &[&n.input[0], &ids]).int("axis", 0).output();
            let row = ctx.const_i64(&[k]);
            let row = ctx.op("CastLike", &[&row, &ids]);
            let is_pad = ctx.op("Equal", &[&ids, &row]);
            let is_pad = ctx.unsqueeze(&is_pad, &[-1]);
            let y = ctx.where_(&is_pad, &held, &perturbed);
            g.add("Identity", &[&y]).exact_outputs(&[&out]);
            continue;
        }
        g.nodes.push(m);
    }
    let v = |s: &String| map.get(s).cloned().unwrap_or_else(|| s.clone());
    let ce = c.cross_entropy.as_ref().map(|r| CrossEntropyRegion {
        per_sample: v(&r.per_sample),
        logits: v(&r.logits),
        labels: v(&r.labels),
        ..r.clone()
    });
    let bns = c
        .batch_norms
        .iter()
        .map(|r| BatchNormRegion {
            x: v(&r.x),
            scale: v(&r.scale),
            bias: v(&r.bias),
            y: v(&r.y),
            centered: v(&r.centered),
            std: v(&r.std),
            factor: v(&r.factor),
            count: v(&r.count),
            ..r.clone()
        })
        .collect();
    Ok(ForwardCopy { map, ce, bns })
}
