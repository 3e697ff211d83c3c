//! placeholder
pub mod rshim;
pub mod bfcfg;
pub mod bfb_cache;
