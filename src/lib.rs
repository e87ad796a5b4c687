//! onnxsam: trains ONNX graphs with sharpness-aware methods, compiled into standard ONNX.
pub mod accumulate;
pub mod backend;
pub mod cli;
pub mod data;
pub mod distributed;
pub mod error;
pub mod grad;
pub mod memory;
pub mod probe;
pub mod random;
pub mod report;
pub mod step;
pub mod step_file;
pub mod tensor;
pub mod train;

pub use graph_passes;
