//! Resize and Upsample.
use super::{op, Family, Gradient as G, OpDef};
use crate::shapes::data_dependent;

pub const FAMILY: Family = Family { name: "resize", ops };

fn ops() -> Vec<OpDef> {
    vec![
        op("Resize", "13+", data_dependent, G::Missing("no gradient rule yet")),
        op("Upsample", "9", data_dependent, G::Missing("no gradient rule yet")),
    ]
}
