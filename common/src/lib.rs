//! Daemon plumbing shared by `hostplane-agent`, `hostplane-coordinator` and
//! `hostplane-sim`: typed Unix signals, read-only access to the environment,
//! and the tracing set-up. One implementation instead of one per binary.

pub mod env;
pub mod logging;
pub mod signals;
