//! Daemon plumbing shared by `hostplane-agent` and `hostplane-coordinator`:
//! typed Unix signals, read-only access to the environment, and the tracing
//! set-up. One implementation instead of one per daemon. (`hostplane-sim`
//! waits for signals synchronously with `sigwait` around its FUSE mount, so it
//! keeps its own.)

pub mod env;
pub mod exposition;
pub mod logging;
pub mod notify;
pub mod signals;
#[cfg(feature = "testing")]
pub mod testing;
pub mod time;
pub mod tls;
pub mod tokens;
