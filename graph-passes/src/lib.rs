//! graph-passes: reads, rewrites and writes ONNX graphs for onnxsam. It never executes anything.
pub mod diff;
pub mod error;
pub mod ir;
pub mod onnx;
pub mod shapes;
pub mod support;

pub use error::{Error, Result};
