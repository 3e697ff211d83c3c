//! The agent stream server (`hostplane.v1.AgentService/Session`), per
//! docs/agent-protocol.md. STUB: being written; the types below are the
//! contract the server and the config use.
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::store::Store;

/// Agent stream settings (the `agents:` section of the coordinator config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamConfig {
    /// Lease granted to agents; a node whose agent is silent this long is Unreachable.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig { lease: Duration::from_secs(15) }
    }
}

/// The AgentService implementation.
#[derive(Clone)]
pub struct AgentStream {
    #[allow(dead_code)]
    store: Store,
    #[allow(dead_code)]
    cfg: StreamConfig,
}

impl AgentStream {
    pub fn new(store: Store, cfg: StreamConfig) -> AgentStream {
        AgentStream { store, cfg }
    }
}
