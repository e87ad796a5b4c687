//! import: undoes what PyTorch's exporters did to a model, so that onnxsam trains the network
//! PyTorch would train, under PyTorch's names — or says precisely why it cannot.
//!
//! What the exporters do (measured on torch 2.15, docs/models.md):
//! - **merged initializers**: equal tensors are stored once. The legacy exporter reads the
//!   others through `Identity` nodes named after them (`Identity(bn1.weight) → bn2.running_var`);
//!   the dynamo exporter's optimizer (`optimize=True`, the default) lets several nodes read one
//!   initializer, and only the nodes' metadata (`pkg.torch.onnx.fx_node`) still names the tensor
//!   each use stood for. Fresh BatchNorm layers make this common (weight = running_var = 1,
//!   bias = running_mean = 0), as do fresh LayerNorms and zero biases.
//! - **other names and layouts**: constant folding stores `Linear` weights transposed under new
//!   names (`onnx::MatMul_12` in legacy files, `val_30` in dynamo files), and a tied head as a
//!   transposed copy.
//! - **folded BatchNorm**: in an eval-mode export, the legacy exporter's constant folding and the
//!   dynamo exporter's optimizer fuse BatchNorm into the preceding Conv. The BatchNorm layers are
//!   gone from the file; training the folded network is not what PyTorch trains.
//!
//! The pass names every tensor a node reads after the PyTorch tensor it stands for (metadata,
//! `Identity` aliases, initializer names, the legacy exporter's scoped node names, and values: a
//! stored copy equal to the transpose of a named parameter is that parameter), gives each PyTorch
//! tensor one initializer in PyTorch's layout, and reads other layouts through `Transpose` nodes
//! tagged `onnxsam.pass = import` (so `export` can store the trained values back in the file's own
//! layout). Parameters and buffers come out listed in `Contract::import`.
//!
//! The phases, in order, one file each (`Import::run` calls them):
//! 1. canonical — what the exporters rewrote, undone: fresh folded BatchNorm (fresh_bn),
//!    removed zero biases, integer shape arithmetic (fold), sequences (sequences), views of
//!    parameters (views);
//! 2. reads — every slot that reads a stored float tensor, through Identity aliases;
//! 3. naming — the PyTorch tensor each read stands for, and its stored layout;
//! 4. folded — folded BatchNorm refused (or trained folded on request);
//! 5. tensors — reads grouped into tensors with one value each, ties named;
//! 6. rewrite — one initializer per tensor, views for other layouts;
//! 7. report — what import did; tensors the file no longer names refused on a gradient path;
//!    then conventions (dropout, padding rows, clip) for what the file leaves open.
mod canonical;
pub mod conventions;
pub mod fold;
mod folded;
pub mod fresh_bn;
mod naming;
mod reads;
mod report;
mod rewrite;
pub mod sequences;
mod tensors;
pub mod views;


use serde::Serialize;

use crate::ir::{Graph, Model, NodeExt};
use crate::onnx::{tensor, TensorProto};
use crate::pass::{Contract, Pass};
pub use crate::pass::{ImportReport, Stored};
use crate::{bail, Result};
use crate::onnx::metadata::is_dynamo_export;

/// How tensors that several nodes read are trained.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sharing {
    /// One parameter per PyTorch tensor: merged tensors that stood for distinct PyTorch tensors
    /// are untied; a tensor PyTorch itself uses several times stays one parameter.
    #[default]
    Auto,
    /// One parameter per stored tensor (the exporter's merges stay tied; BatchNorm running
    /// statistics are still kept apart from parameters).
    KeepTied,
    /// Every use its own parameter, even where PyTorch uses one tensor several times.
    UntieAll,
}

pub struct Import {
    pub sharing: Sharing,
    /// Train a graph whose BatchNorm layers the exporter folded into convolutions (with a warning).
    pub allow_folded_bn: bool,
    /// The model was freshly built (PyTorch's initial BatchNorm state) where the file cannot prove
    /// it: folded layers whose convolution has a bias are restored too (fresh_bn).
    pub assume_fresh_bn: bool,
    /// Parameters lift-params will keep constant (glob patterns): no warning about training them.
    pub freeze: Vec<String>,
    /// The user's padding rows of embedding tables (`--padding-idx TABLE=ROW|none`).
    pub padding_idx: conventions::PaddingRows,
    /// How Clip nodes the file does not describe pass the gradient at their bounds.
    pub clip_at_bounds: Option<conventions::ClipConvention>,
}


/// One input slot of one node that reads a stored float tensor.
#[derive(Clone, Debug)]
struct Read {
    node: usize,
    slot: usize,
    /// The initializer the value comes from (after Identity aliases).
    root: String,
    /// The name the read saw: the alias name, or the initializer's.
    seen: String,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Param,
    Buffer,
}

/// A read's PyTorch tensor: name, parameter or buffer, and the layout the file stores it in.
#[derive(Clone, Debug)]
struct Named {
    name: String,
    kind: Kind,
    perm: Vec<i64>,
}

impl Pass for Import {
    fn name(&self) -> &'static str {
        "import"
    }

    fn run(&self, m: &mut Model, c: &mut Contract) -> Result<()> {
        let g = &mut m.graph;
        let dynamo = is_dynamo_export(&g.nodes);
        let legacy = !dynamo && m.meta.producer_name == "pytorch";
        let mut report = ImportReport {
            exporter: if dynamo {
                "dynamo"
            } else if legacy {
                "legacy"
            } else {
                "other"
            }
            .into(),
            ..Default::default()
        };
        // the phases, in order (each its own file)
        let unproven_fresh = canonical::run(g, dynamo, legacy, self.assume_fresh_bn, &mut report)?;
        let found = reads::collect(g, dynamo);
        let names = naming::name_reads(g, &found, dynamo)?;
        let folded_nodes =
            folded::check(g, dynamo, &found.reads, &unproven_fresh, self.allow_folded_bn, &mut report)?;
        let mut tensors = tensors::group(g, &found, &names, self.sharing, dynamo, &mut report)?;
        let tensor_names = rewrite::apply(g, &found, &names, &mut tensors, &mut report);
        report::finish(
            g,
            &found,
            &names,
            &tensors,
            &tensor_names,
            &folded_nodes,
            (dynamo, legacy),
            &self.freeze,
            &mut report,
        )?;
        conventions::apply(g, &mut report, dynamo, &self.padding_idx, self.clip_at_bounds)?;
        c.import = report;
        Ok(())
    }
}


/// The stored tensor in PyTorch's layout: transposed back by the inverse of `perm`.
fn unlayout(t: &TensorProto, perm: &[i64], name: &str) -> Result<TensorProto> {
    let mut out = t.clone();
    out.name = name.to_string();
    if perm.is_empty() {
        return Ok(out);
    }
    if perm != [1, 0] || t.dims.len() != 2 {
        bail!("initializer '{}': only 2-D transposes are undone, not perm {perm:?}", t.name);
    }
    let v = tensor::to_f32(t)?;
    let (r, c) = (t.dims[0] as usize, t.dims[1] as usize);
    let mut w = vec![0f32; v.len()];
    for i in 0..r {
        for j in 0..c {
            w[j * r + i] = v[i * c + j];
        }
    }
    Ok(tensor::from_f32(name, &[c as i64, r as i64], &w))
}

/// Stores parameters back the way the file had them: every view the import pass added (Identity,
/// Transpose, and the Slice/Concat/Unsqueeze/Reshape of `views`) whose inputs are initializers
/// becomes an initializer under the view's (the file's) name, and a parameter initializer nothing
/// else reads goes. What `export` does to a trained graph.
pub fn fold_views(g: &mut Graph) -> Result<()> {
    use crate::ir::PASS_KEY;
    loop {
        let found = g.nodes.iter().position(|n| {
            n.metadata_props.iter().any(|p| p.key == PASS_KEY && p.value == "import")
                && !n.input.is_empty()
                && n.input.iter().all(|i| i.is_empty() || g.initializer(i).is_some())
                && matches!(n.op_type.as_str(), "Transpose" | "Identity" | "Slice" | "Concat" | "Unsqueeze" | "Reshape")
        });
        let Some(i) = found else { break };
        let n = g.nodes.remove(i);
        let value = if n.op_type == "Transpose" {
            let t = g.initializer(&n.input[0]).expect("checked").clone();
            Some(unlayout(&t, &n.attr_ints("perm").unwrap_or_default(), &n.output[0])?)
        } else {
            let inputs: Vec<&TensorProto> =
                n.input.iter().filter(|i| !i.is_empty()).map(|i| g.initializer(i).expect("checked")).collect();
            views::evaluate(&n, &inputs, &n.output[0])?
        };
        let Some(value) = value else {
            bail!("cannot compute the file's tensor '{}' back from the trained values ({})", n.output[0], n.describe());
        };
        g.initializers.push(value);
        for input in n.input.iter().filter(|i| !i.is_empty()) {
            if !g.nodes.iter().any(|m| m.input.contains(input)) && !g.outputs.iter().any(|o| &o.name == input) {
                g.initializers.retain(|x| &x.name != input);
            }
        }
    }
    Ok(())
}

/// Ops that only move a tensor's elements (the exporters' own views of a parameter: the gate
/// slices of a recurrent weight): several of them reading one parameter is no tie.
fn moves_data_only(op: &str) -> bool {
    matches!(
        op,
        "Slice" | "Split" | "Concat" | "Reshape" | "Unsqueeze" | "Squeeze" | "Flatten" | "Transpose" | "Identity"
    )
}









/// "a, b, c, … (12 in all)"
pub fn summary(items: &[String], show: usize) -> String {
    if items.len() <= show {
        items.join(", ")
    } else {
        format!("{}, … ({} in all)", items[..show].join(", "), items.len())
    }
}
