//! hostplane-agent: the per-host daemon. It keeps one stream to the
//! coordinator ([`session`]), runs the commands it is given ([`exec`]) and
//! remembers them across restarts ([`session::journal`]).
//!
//! `main.rs` only parses arguments, sets up logging and signals, loads the
//! [`config::Config`] and calls [`run`]; tests run the agent in-process the
//! same way with a fake [`exec::Executor`].
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
pub mod power;
pub mod rshim;
pub mod session;

pub use session::{AgentError, run, run_with};
