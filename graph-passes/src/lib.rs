//! graph-passes: reads, rewrites and writes ONNX graphs for onnxsam. It never executes anything.
pub mod autodiff;
pub mod ctx;
pub mod diff;
pub mod error;
pub mod import;
pub mod ir;
pub mod onnx;
pub mod ops;
pub mod pass;
pub mod passes;
pub mod shapes;
pub mod sizes;
pub mod step;

pub use error::{Error, Result};
