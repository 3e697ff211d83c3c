//! hostplane-agent: the per-host daemon. The [`daemon`] builds every
//! subsystem from the [`config::Config`] and owns their tasks: the stream to
//! the coordinator ([`session`]), the commands it is given ([`exec`],
//! [`flash`]) and their journal across restarts ([`session::journal`]), host
//! networking ([`net`]), power telemetry and caps ([`power`]) and the
//! metrics endpoint ([`metrics`]).
//!
//! `main.rs` only parses the command line and dispatches to [`cli`]; tests
//! run the agent in-process through [`run`] / [`run_with`] with a fake
//! [`exec::Executor`].
pub mod bfb_cache;
pub mod bfcfg;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod exec;
pub mod flash;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod nicfw;
pub mod power;
pub mod rshim;
pub mod session;
pub mod state_file;

pub use session::{AgentError, run, run_with};
