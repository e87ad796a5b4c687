//! Recurrent layers: LSTM, GRU, RNN.
use super::{op, Family, Gradient as G, OpDef};
use crate::shapes::data_dependent;

pub const FAMILY: Family = Family { name: "recurrent", ops };

fn ops() -> Vec<OpDef> {
    vec![
        op("LSTM", "14+", data_dependent, G::Missing("no gradient rule yet")),
        op("GRU", "14+", data_dependent, G::Missing("no gradient rule yet")),
        op("RNN", "14+", data_dependent, G::Missing("no gradient rule yet")),
    ]
}
