//! Fixtures for tests, compiled only with the `testing` feature (the test
//! crates turn it on in their dev-dependencies; the daemons never carry it).

pub mod pg;
pub mod pg_shared;
