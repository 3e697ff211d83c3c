//! Power: the hub where agent telemetry and cap reports arrive and where the
//! policy engine's caps wait for the agent stream ([`hub`]), the allocation
//! that turns a topology's budgets and the policies into a cap per node
//! ([`alloc`]), and the engine that recomputes caps when telemetry, policies or
//! topologies change ([`engine`]). With replicas on PostgreSQL, a follower's
//! caps come from the store ([`caps_feed`]) and its telemetry goes to the
//! leader ([`crate::peer`]).
pub mod alloc;
pub mod caps_feed;
pub mod engine;
pub mod hub;

pub use caps_feed::{caps_feed, spawn_caps_feed};
pub use engine::{PowerConfig, PowerEngine};
pub use hub::PowerHub;

#[cfg(test)]
mod caps_tests;
