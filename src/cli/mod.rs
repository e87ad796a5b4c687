//! The `onnxsam` command line. Exit codes: 0 success, 1 a check failed, 2 bad input.
mod args;
mod bench;
mod diff;
pub mod grad;
mod inspect;
mod ops;
pub mod run;
mod train;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "onnxsam",
    version,
    about = "Train ONNX graphs with sharpness-aware methods (SGD, SAM, RW-SAM), compiled into standard ONNX step graphs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Describe a model: opsets, inputs/outputs, parameters, ops, what onnxsam can and cannot handle
    #[command(
        after_help = "Examples:\n  onnxsam inspect models/cnn.onnx\n  onnxsam inspect models/mlp.onnx --json\n  onnxsam inspect --backends"
    )]
    Inspect(inspect::InspectArgs),
    /// Which ops onnxsam can train: op, opsets, gradient, engines, forms not covered (docs/ops.md)
    #[command(
        after_help = "Examples:\n  onnxsam ops\n  onnxsam ops LSTM Resize\n  onnxsam ops --markdown > docs/ops.md"
    )]
    Ops(ops::OpsArgs),
    /// Run inference: inputs by name from an .npz, outputs printed or written to an .npz
    #[command(
        after_help = "Example:\n  onnxsam run models/mlp.onnx --input tests/fixtures/mlp/input.npz --output out.npz"
    )]
    Run(run::RunArgs),
    /// Show what changed between two models: nodes (grouped by the pass that added them), I/O, initializers, opsets
    #[command(
        after_help = "Examples:\n  onnxsam diff model.onnx step.onnx\n  onnxsam diff a.onnx b.onnx --format dot | dot -Tsvg > diff.svg"
    )]
    Diff(diff::DiffArgs),
    /// Gradients of the mean loss for one batch: loss, per-sample losses, one array per parameter
    #[command(
        after_help = "Example:\n  onnxsam grad models/cnn.onnx --batch tests/fixtures/cnn/batch.npz --out grads.npz"
    )]
    Grad(grad::GradArgs),
    /// One optimizer step on one batch: next parameters, momentum, running statistics, diagnostics
    #[command(
        after_help = "Examples:\n  onnxsam step models/cnn.onnx --batch tests/fixtures/cnn/batch.npz --optimizer sam --rho 0.05 --out next.npz\n  onnxsam step model.onnx --batch batch.npz --lr 0.1 --momentum 0.9 --weight-decay 5e-4 --out next.npz"
    )]
    Step(grad::StepOnceArgs),
    /// Compare autodiff gradients with central finite differences on random coordinates
    #[command(after_help = "Example:\n  onnxsam gradcheck models/mlp.onnx --batch tests/fixtures/mlp/batch.npz")]
    Gradcheck(grad::GradcheckArgs),
    /// Compile a model and an optimizer into one training-step graph in standard ONNX (+ step.json)
    #[command(
        after_help = "Examples:\n  onnxsam rewrite models/cnn.onnx --optimizer sam --reweight 1 --rho 0.05 -o step.onnx\n  onnxsam diff models/cnn.onnx step.onnx\n  onnxsam rewrite models/mlp.onnx --optimizer sam --micro-batch 16 -o msam.onnx   (also msam.apply.onnx)\n  onnxsam rewrite models/cnn.onnx --grad-only -o grad.onnx\n  onnxsam rewrite models/cnn.onnx --eval -o eval.onnx"
    )]
    Rewrite(grad::RewriteArgs),
    /// Train a model: data, one step-graph run per step, evaluation, checkpoints, the trained model.onnx
    #[command(
        after_help = "Examples:\n  onnxsam train models/mlp.onnx --data data/mnist --optimizer sam --reweight 1 --epochs 1 --lr 0.05 --out runs/mlp\n  onnxsam train --resume runs/mlp --epochs 3\n  onnxsam train models/cnn.onnx --data data/mnist --label-noise 0.4 --optimizer sam --rho 0.05 --epochs 3 --out runs/cnn-noisy"
    )]
    Train(Box<train::TrainArgs>),
    /// Loss, accuracy and per-class accuracy of a model on a dataset
    #[command(after_help = "Example:\n  onnxsam eval runs/mlp/model.onnx --data data/mnist")]
    Eval(train::EvalArgs),
    /// Write a training run's checkpoint as a model (the original graph with trained values)
    #[command(after_help = "Example:\n  onnxsam export runs/mlp -o trained.onnx")]
    Export(train::ExportArgs),
    /// PNG curves of a training run: loss, accuracy, lr/ρ, ESS, tr V, and the last RW weights
    #[command(after_help = "Example:\n  onnxsam plot runs/mlp-rwsam   (writes runs/mlp-rwsam/curves.png)")]
    Plot(PlotArgs),
    /// Time forward vs forward+backward on synthetic batches (median of --steps runs)
    #[command(after_help = "Example:\n  onnxsam bench models/cnn.onnx --batch-size 128 --backend ort")]
    Bench(bench::BenchArgs),
}

#[derive(Args)]
struct PlotArgs {
    /// A training run's folder
    run: PathBuf,
    /// The PNG to write (default RUN_DIR/curves.png)
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
}

/// clap's answer to a command line it cannot take, as onnxsam's one line (help and version as
/// clap prints them): "onnxsam: error: <what>; see onnxsam <command> --help".
fn command_line_error(e: clap::Error) -> i32 {
    use clap::error::ErrorKind as K;
    if matches!(e.kind(), K::DisplayHelp | K::DisplayVersion | K::DisplayHelpOnMissingArgumentOrSubcommand) {
        let _ = e.print();
        return 0;
    }
    let text = e.to_string();
    // the message: its lines up to the usage (a list of missing arguments, possible values, tips)
    let what: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect();
    // clap's tip line follows the error on its own line: "…found; tip: …"
    let what = what
        .iter()
        .map(|l| if l.starts_with("tip:") { format!("; {l}") } else { format!(" {l}") })
        .collect::<String>()
        .trim()
        .trim_start_matches("error: ")
        .replace(" ; tip:", "; tip:")
        .replace(":  ", ": ");
    // "-0.5" after an option that takes no negative value: clap reads "-0" as a flag
    let negative = e.kind() == K::UnknownArgument && what.contains("unexpected argument '-") && {
        let after = what.split("unexpected argument '-").nth(1).unwrap_or("");
        after.starts_with(|c: char| c.is_ascii_digit() || c == '.')
    };
    let what = if negative {
        let head = what.split("; tip:").next().unwrap_or(&what).to_string();
        format!("{head}; a negative value is written with '=', e.g. --reweight=-0.5")
    } else {
        what
    };
    let known = matches!(e.kind(), K::InvalidSubcommand | K::UnknownArgument) && std::env::args().nth(1).is_none();
    let cmd = std::env::args().nth(1).filter(|a| !a.starts_with('-') && e.kind() != K::InvalidSubcommand && !known);
    let help = match cmd {
        Some(c) => format!("onnxsam {c} --help"),
        None => "onnxsam --help".to_string(),
    };
    eprintln!("onnxsam: error: {what}; see {help}");
    2
}

pub use crate::error::{check_failed, Failure};
pub use args::{BackendArgs, GradGraphArgs, StepArgs};

pub fn main() -> i32 {
    // A panic is a bug in onnxsam (or a dependency): one line, no backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        if msg.contains("failed printing to stdout") && msg.contains("Broken pipe") {
            // `onnxsam inspect step.onnx | head`: the reader left; nothing went wrong here
            std::process::exit(0);
        }
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        if !crate::backend::tract::GUARDED.load(std::sync::atomic::Ordering::Relaxed) {
            eprintln!("onnxsam: internal error: {}{at} (please report this)", msg.replace('\n', " "));
        }
    }));
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return command_line_error(e),
    };
    let result = match cli.command {
        Command::Inspect(a) => inspect::run(a),
        Command::Ops(a) => ops::run(a),
        Command::Run(a) => run::run(a),
        Command::Diff(a) => diff::run(a),
        Command::Grad(a) => grad::grad(a),
        Command::Gradcheck(a) => grad::gradcheck(a),
        Command::Step(a) => grad::step_once(a),
        Command::Rewrite(a) => grad::rewrite(a),
        Command::Bench(a) => bench::bench(a),
        Command::Train(a) => train::train(*a, std::env::args().skip(2).collect()),
        Command::Eval(a) => train::eval(a),
        Command::Export(a) => train::export(a),
        Command::Plot(a) => crate::report::plot::plot(&a.run, a.output.as_deref()).map(|p| {
            eprintln!("wrote {}", p.display());
            0
        }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let code = e.downcast_ref::<Failure>().map(|f| f.code).unwrap_or(2);
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("onnxsam: error: {msg}");
            code
        }
    }
}
