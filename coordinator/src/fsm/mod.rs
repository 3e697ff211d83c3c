//! The DPU state machine and the controllers around it (Deployment -> Dpus,
//! rollout, phase timeouts). STUB: being written; the types below are the
//! contract the server and the config use.
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// Reconciler settings (the `fsm:` section of the coordinator config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FsmConfig {
    /// Full resync period (changes are also acted on as they happen).
    #[serde(with = "humantime_serde")]
    pub resync: Duration,
}

impl Default for FsmConfig {
    fn default() -> Self {
        FsmConfig { resync: Duration::from_secs(5) }
    }
}

pub struct Reconciler {
    #[allow(dead_code)]
    store: Store,
    #[allow(dead_code)]
    cfg: FsmConfig,
}

impl Reconciler {
    pub fn new(store: Store, cfg: FsmConfig) -> Reconciler {
        Reconciler { store, cfg }
    }

    /// Run until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        shutdown.cancelled().await;
    }
}
