//! Power: the hub where agent telemetry and cap reports arrive and where the
//! policy engine's caps wait for the agent stream ([`hub`]), the allocation
//! that turns a topology's budgets and the policies into a cap per node
//! ([`alloc`]), and the engine that recomputes caps when telemetry, policies or
//! topologies change ([`engine`]).
pub mod alloc;
pub mod engine;
pub mod hub;

pub use engine::{PowerConfig, PowerEngine};
pub use hub::PowerHub;
