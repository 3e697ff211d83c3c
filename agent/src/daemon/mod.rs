//! The daemon: builds every subsystem from the [`Config`] (the bfb cache and
//! flasher, host networking, the power sampler with its BMC poller, the caps
//! enforcer, the metrics endpoint), owns their tasks — each subsystem runs
//! in a [`Subsystem`] (a cancellation token and a task tracker), nothing is
//! detached — and runs the coordinator session.
//!
//! Shutdown is an ordered drain, each step within what is left of one
//! deadline (`shutdown_grace`), logging what did not finish:
//! 1. the session stops taking commands and gives the running ones
//!    `shutdown_grace` to stop at a safe point (a flash restores the rshim's
//!    misc values; one stopped this way is journaled INTERRUPTED);
//! 2. the bfb cache's downloads end (nobody waits for them any more); the
//!    caps enforcer finishes what it is applying and saves its state;
//! 3. the power sampler stops and the BMC poller deletes its Redfish session;
//! 4. host networking and the metrics endpoint stop;
//! 5. the stream to the coordinator closes, and the process exits 0.
mod supervisor;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use supervisor::Subsystem;

use crate::bfb_cache::{BfbCache, CacheError};
use crate::config::Config;
use crate::exec::{HostExecutor, NETWORK_REPORT_WAIT, NicFirmware};
use crate::flash::Flasher;
use crate::net::{self, NetError};
use crate::power::bmc::{BmcLink, BmcPowerCycle};
use crate::power::caps;
use crate::power::{sampler, telemetry};
use crate::session::{self, AgentError, BeforeClose, NetSync, PowerSession};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot set up the bfb cache: {0}")]
    Cache(#[source] CacheError),
    #[error("cannot start host networking (set network.enabled: false to run without it): {0}")]
    Network(#[source] NetError),
    #[error("cannot serve metrics on {listen} (metrics.listen): {source}")]
    Metrics {
        listen: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Agent(#[from] AgentError),
}

/// The subsystems' task owners, stopped in this order after the session's commands.
struct Subsystems {
    /// The bfb cache's download jobs (they end once no command waits for them).
    bfb_cache: Subsystem,
    caps: Subsystem,
    power: Subsystem,
    net: Subsystem,
    metrics: Subsystem,
}

impl Subsystems {
    fn new() -> Subsystems {
        Subsystems {
            bfb_cache: Subsystem::new("bfb_cache"),
            caps: Subsystem::new("power_caps"),
            power: Subsystem::new("power"),
            net: Subsystem::new("net"),
            metrics: Subsystem::new("metrics"),
        }
    }

    /// Stop each in order within `deadline` overall; true when all stopped.
    /// Idempotent: the second call returns at once.
    async fn stop(&self, deadline: Duration) -> bool {
        let end = Instant::now() + deadline;
        let mut all = true;
        for s in [&self.bfb_cache, &self.caps, &self.power, &self.net, &self.metrics] {
            let left = end.saturating_duration_since(Instant::now());
            all &= s.stop(left).await;
        }
        all
    }
}

/// Every subsystem, built and started, and the session waiting to run.
pub struct Daemon {
    cfg: Config,
    executor: HostExecutor,
    network: Option<NetSync>,
    power: PowerSession,
    subsystems: Arc<Subsystems>,
}

impl Daemon {
    /// Build and start every subsystem the config enables (in a runtime).
    /// On an error the ones already started are stopped again.
    pub async fn start(cfg: Config) -> Result<Daemon, DaemonError> {
        let subsystems = Arc::new(Subsystems::new());
        match Daemon::build(cfg, subsystems.clone()).await {
            Ok(d) => Ok(d),
            Err(e) => {
                subsystems.stop(Duration::from_secs(5)).await;
                Err(e)
            }
        }
    }

    async fn build(cfg: Config, subsystems: Arc<Subsystems>) -> Result<Daemon, DaemonError> {
        let cache = BfbCache::new_in(cfg.cache.clone(), subsystems.bfb_cache.tasks().clone());
        let cache = Arc::new(cache.map_err(DaemonError::Cache)?);
        let flasher = Flasher::new(cfg.flash_config(), cache);
        let mut executor = HostExecutor::new(Arc::new(flasher), cfg.reboot_command.clone());
        let mut registry = Registry::default();
        // The agent's own CPU and memory (process_*), whatever is enabled.
        crate::metrics::ProcessCollector::register(&mut registry);
        let network = if cfg.network.enabled {
            let s = &subsystems.net;
            let handle =
                net::start_in(cfg.net_config(), s.tasks(), s.token()).map_err(DaemonError::Network)?;
            handle
                .metrics()
                .register(registry.sub_registry_with_prefix("hostplane_network"));
            let sync = NetSync::new(Arc::new(handle));
            executor = executor.with_network(sync.clone(), NETWORK_REPORT_WAIT);
            Some(sync)
        } else {
            tracing::info!("host networking is disabled (network.enabled: false)");
            None
        };
        let (power, bmc_link) = if cfg.power.enabled {
            start_power(&cfg, &mut registry, &subsystems).await
        } else {
            tracing::info!("power telemetry and caps are disabled (power.enabled: false)");
            (PowerSession::default(), None)
        };
        // NIC firmware parameters (ConfigFwParameters) and power cycles
        // through the BMC (RebootHost { power_cycle }).
        match NicFirmware::from_config(&cfg.nic_firmware) {
            Some(nic) => executor = executor.with_nic_firmware(nic),
            None => tracing::info!("NIC firmware configuration is disabled (nic_firmware.enabled: false)"),
        }
        if cfg.power.bmc.enabled() {
            // The poller's client when power is enabled; else one connected per power cycle.
            executor = executor.with_bmc(Arc::new(BmcPowerCycle::new(cfg.power.bmc.clone(), bmc_link)));
        }
        if let Some(listen) = cfg.metrics.listen {
            let s = &subsystems.metrics;
            crate::metrics::serve(listen, Arc::new(registry), s.tasks(), s.token())
                .await
                .map_err(|source| DaemonError::Metrics { listen, source })?;
        }
        Ok(Daemon {
            cfg,
            executor,
            network,
            power,
            subsystems,
        })
    }

    /// Run the session until `shutdown`, then drain (see the module docs).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), DaemonError> {
        let deadline = self.cfg.shutdown_grace;
        let subsystems = self.subsystems.clone();
        let drain: BeforeClose = Box::pin(async move {
            tracing::info!(
                ?deadline,
                "stopping the subsystems: bfb cache downloads, power caps, power and BMC, network, metrics"
            );
            subsystems.stop(deadline).await;
        });
        let r = session::run_draining(
            self.cfg,
            Arc::new(self.executor),
            self.network,
            self.power,
            shutdown,
            Some(drain),
        )
        .await;
        // The session can end before it ran the drain (a bad state dir):
        // the subsystems stop all the same.
        self.subsystems.stop(deadline).await;
        r.map_err(DaemonError::from)
    }
}

/// The sampler (metrics, and telemetry for the coordinator), its BMC poller
/// (returned too, for power cycles), and the caps task with every
/// enforcement means this host has.
async fn start_power(
    cfg: &Config,
    registry: &mut Registry,
    subsystems: &Subsystems,
) -> (PowerSession, Option<BmcLink>) {
    let metrics = sampler::PowerMetrics::default();
    metrics.register(registry.sub_registry_with_prefix("hostplane"));
    let tcfg = &cfg.power.telemetry;
    let telemetry = tcfg.enabled.then(|| {
        // The start time as epoch: a restarted agent restarts its sequence numbers.
        let epoch = u64::try_from(hostplane_common::time::now_ms()).unwrap_or(1);
        telemetry::Telemetry::new(telemetry::TelemetryBuffer::new(epoch, tcfg))
    });
    let p = &subsystems.power;
    let sampler = sampler::spawn(
        cfg.power.clone(),
        metrics,
        telemetry.clone(),
        p.tasks(),
        p.token(),
    );
    let sysfs_root = cfg.power.sysfs_root.clone();
    let state_file = cfg.state_dir.join("power-caps.json");
    let bmc = sampler.bmc;
    let link = bmc.clone();
    // Discovery reads sysfs and NVML, and the state file: a blocking thread.
    let enforcer = tokio::task::spawn_blocking(move || {
        caps::Enforcer::new(caps::discover_limiters(&sysfs_root, bmc)).with_state_file(state_file)
    })
    .await;
    let enforcer = match enforcer {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "power caps: finding the enforcement means failed; caps are not enforced");
            caps::Enforcer::new(Vec::new())
        }
    };
    let c = &subsystems.caps;
    let handle = caps::spawn(enforcer, cfg.power.caps.clone(), c.tasks(), c.token());
    (
        PowerSession::new(telemetry.map(|t| (t, tcfg.batch_interval)), Some(handle)),
        link,
    )
}
