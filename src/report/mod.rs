//! Reports of a training run: PNG curves.
pub mod plot;
