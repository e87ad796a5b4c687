use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};
use graph_passes::{diff, ir::Model};

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
    Dot,
}

#[derive(Args)]
pub struct DiffArgs {
    /// The original model
    a: PathBuf,
    /// The rewritten or changed model
    b: PathBuf,
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

pub fn run(args: DiffArgs) -> Result<i32> {
    let a = Model::load(&args.a)?;
    let b = Model::load(&args.b)?;
    let d = diff::diff(&a, &b);
    match args.format {
        Format::Text => print!("{}", diff::to_text(&d, &args.a.display().to_string(), &args.b.display().to_string())),
        Format::Json => println!("{}", serde_json::to_string_pretty(&d)?),
        Format::Dot => print!("{}", diff::to_dot(&d, &a, &b)),
    }
    Ok(0)
}
