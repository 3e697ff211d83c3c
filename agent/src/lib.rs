//! placeholder
pub mod rshim;
pub mod bfcfg;
