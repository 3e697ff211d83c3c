//! placeholder
pub mod rshim;
