//! The coordinator stream (agent half of docs/agent-protocol.md): connect
//! with backoff, Hello, apply each desired state (store, host networks,
//! start, cancel, re-send, ACK/NACK), heartbeats, progress, results and
//! network reports; the journal that makes commands run at most once across
//! restarts; the stored desired state whose networks are re-applied at start.
//! The agent config's `session:` section ([`SessionConfig`]) and the
//! coordinator connection's settings (`coordinator`, `insecure`, `tls:`:
//! [`TlsConfig`], [`validate_connection`]) are defined and checked here.
mod backoff;
mod command;
mod config;
mod connector;
mod desired;
pub mod journal;
mod multi;
pub mod network;
mod owner;
pub mod persist;
pub mod power;
mod tls;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub use backoff::Backoff;
pub use command::PROGRESS_INTERVAL;
pub use config::SessionConfig;
pub use connector::{ConnectError, Connector, GrpcConnector, Inbound};
pub use journal::{Journal, JournalError};
pub use multi::MultiConnector;
pub use network::{HostNetworks, NetSync};
pub use persist::StateError;
pub use power::PowerSession;
pub use tls::{
    ConnectionConfigError, CoordinatorUrls, LoadedTls, TlsConfig, is_plaintext, validate_connection,
    validate_coordinators,
};

use crate::config::Config;
use crate::exec::Executor;
pub use owner::BeforeClose;
use owner::{Owner, Restored};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot create state directory {path}: {source}")]
    StateDir { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("last applied desired state: {0}")]
    Desired(#[from] StateError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
}

/// Run the agent against the coordinator in `cfg` until `shutdown` is
/// cancelled; running commands then get `cfg.shutdown_grace` to stop.
/// `network`: the host network manager (None when networking is disabled);
/// the executor should share it for `initialize_interface`.
pub async fn run(
    cfg: Config,
    executor: Arc<dyn Executor>,
    network: Option<NetSync>,
    power: PowerSession,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    run_draining(cfg, executor, network, power, shutdown, None).await
}

/// [`run`] that runs `before_close` at shutdown once the commands have
/// stopped and before the coordinator stream closes (the daemon's drain).
pub async fn run_draining(
    cfg: Config,
    executor: Arc<dyn Executor>,
    network: Option<NetSync>,
    power: PowerSession,
    shutdown: CancellationToken,
    before_close: Option<BeforeClose>,
) -> Result<(), AgentError> {
    let connector: Arc<dyn Connector> = match cfg.coordinator.as_slice() {
        [] => {
            return Err(ConnectError::Url {
                url: String::new(),
                detail: "no coordinator URL configured".into(),
            }
            .into());
        }
        [one] => Arc::new(GrpcConnector::new(one, &cfg.session, cfg.tls.as_ref())?),
        many => {
            let mut endpoints: Vec<Box<dyn Connector>> = Vec::with_capacity(many.len());
            for url in many {
                endpoints.push(Box::new(GrpcConnector::new(url, &cfg.session, cfg.tls.as_ref())?));
            }
            Arc::new(MultiConnector::new(endpoints))
        }
    };
    if cfg.is_insecure() {
        tracing::warn!(
            coordinator = %cfg.coordinator,
            "the coordinator connection is plain http: neither encrypted nor authenticated; \
             use it only on a trusted network (insecure: true)"
        );
    }
    start(cfg, executor, network, power, connector, shutdown, before_close).await
}

/// [`run`] with an explicit connector (tests script the stream with one).
pub async fn run_with(
    cfg: Config,
    executor: Arc<dyn Executor>,
    network: Option<NetSync>,
    power: PowerSession,
    connector: Arc<dyn Connector>,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    start(cfg, executor, network, power, connector, shutdown, None).await
}

async fn start(
    cfg: Config,
    executor: Arc<dyn Executor>,
    network: Option<NetSync>,
    power: PowerSession,
    connector: Arc<dyn Connector>,
    shutdown: CancellationToken,
    before_close: Option<BeforeClose>,
) -> Result<(), AgentError> {
    tokio::fs::create_dir_all(&cfg.state_dir)
        .await
        .map_err(|source| AgentError::StateDir {
            path: cfg.state_dir.clone(),
            source,
        })?;
    let (journal, interrupted) = Journal::open(&cfg.state_dir, journal::DEFAULT_MAX_FINISHED).await?;
    for id in &interrupted {
        if let Some(r) = journal.get(id).and_then(|e| e.result.as_ref()) {
            tracing::warn!(command = %id, message = %r.message, "command interrupted by an agent restart");
        }
    }
    let applied = match persist::load_desired(&cfg.state_dir).await {
        Ok(d) => d,
        Err(e @ StateError::Corrupt { .. }) => {
            tracing::warn!(error = %e, "ignoring the stored desired state; the coordinator will send it again");
            None
        }
        Err(e) => return Err(e.into()),
    };
    let boot_id = read_boot_id(&cfg.procfs_root).await;
    tracing::info!(
        node = %cfg.node_name,
        version = crate::exec::AGENT_VERSION,
        %boot_id,
        last_applied_version = applied.as_ref().map_or(0, |d| d.version),
        "agent starting"
    );
    hostplane_common::notify::ready(&format!(
        "node {}, coordinator {}",
        cfg.node_name, cfg.coordinator
    ));
    let restored = Restored {
        journal,
        applied,
        boot_id,
    };
    Owner::new(cfg, executor, network, power, restored, shutdown)
        .before_close(before_close)
        .run(connector)
        .await;
    Ok(())
}

/// The host's boot id from `<procfs_root>/sys/kernel/random/boot_id`, or "" (logged) when unreadable.
pub async fn read_boot_id(procfs_root: &Path) -> String {
    let path = procfs_root.join("sys/kernel/random/boot_id");
    match tokio::fs::read_to_string(&path).await {
        Ok(s) => s.trim().to_string(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the boot id; sending none");
            String::new()
        }
    }
}
