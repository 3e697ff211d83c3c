//! hostplane coordinator: the desired-state store, the DPU state machine, the
//! admin API and the agent stream server.

pub mod api;
pub mod audit;
pub mod config;
pub mod desired;
pub mod fsm;
pub mod ha;
pub mod leadership;
pub mod metrics;
pub mod peer;
pub mod power;
pub mod server;
pub mod store;
pub mod storeops;
pub mod stream;
pub mod tls;
