//! A Redfish BMC simulator: the power of NVIDIA DGX H100/B200/B300 and GB200
//! systems behind a Redfish service (the surface in `docs/simulator.md`),
//! with basic auth, sessions, power limits that take effect, and Prometheus
//! metrics of what it models. Several BMCs run in one process, one port each.
//!
//! ```no_run
//! # async fn demo() -> Result<(), hostplane_sim::bmc::BmcError> {
//! use hostplane_sim::bmc::{BmcOptions, BmcSim, Model, Workload};
//! let bmc = BmcSim::spawn(BmcOptions::new("node-1", Model::DgxH100))?;
//! println!("{} draws {:.0} W", bmc.url(), bmc.draw_watts());
//! bmc.set_workload(Workload::Constant(0.5));
//! bmc.shutdown().await;
//! # Ok(()) }
//! ```

pub mod model;
pub mod power;
mod redfish;
pub mod reset;
mod telemetry;
pub mod tls;
pub mod workload;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use model::{Model, ModelSpec, UnknownModel};
pub use power::{OutOfRange, PowerModel, PowerStats};
pub use redfish::{BASE_MESSAGES, RegistryMessage, format_message};
pub use reset::{PowerState, ResetType, SystemPower, UnknownResetType};
pub use tls::LabCerts;
pub use workload::{InvalidWorkload, Workload};

use redfish::Sessions;
use telemetry::Telemetry;

/// How long [`BmcHandle::shutdown`] waits for open connections before it drops them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// PEM files for HTTPS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// One simulated BMC.
#[derive(Debug, Clone)]
pub struct BmcOptions {
    /// Names the BMC in logs and in the `bmc` label of its metrics.
    pub name: String,
    pub model: Model,
    /// Port 0 picks a free one; [`BmcHandle::addr`] says which.
    pub listen: SocketAddr,
    pub username: String,
    pub password: String,
    pub workload: Workload,
    /// HTTPS when set, plain HTTP otherwise.
    pub tls: Option<TlsFiles>,
}

impl BmcOptions {
    /// `model` on 127.0.0.1 (a free port), `admin`/`admin`, the training workload, HTTP.
    pub fn new(name: impl Into<String>, model: Model) -> BmcOptions {
        BmcOptions {
            name: name.into(),
            model,
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            username: "admin".to_string(),
            password: "admin".to_string(),
            workload: Workload::default(),
            tls: None,
        }
    }
}

impl Default for BmcOptions {
    fn default() -> BmcOptions {
        BmcOptions::new("bmc", Model::DgxH100)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BmcError {
    #[error("invalid BMC name {name:?}: use letters, digits, '.', '_' or '-'")]
    InvalidName { name: String },
    #[error("BMC {name}: the username must not be empty")]
    EmptyUsername { name: String },
    #[error("BMC {name}: listening on {addr}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("BMC {name}: reading {path}: {source}")]
    TlsFile {
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("BMC {name}: {path}: {message}")]
    TlsPem {
        name: String,
        path: PathBuf,
        message: String,
    },
    #[error("BMC {name}: the certificate and key do not make a TLS configuration: {message}")]
    TlsConfig { name: String, message: String },
    #[error("making the lab certificate: {message}")]
    TlsGenerate { message: String },
    #[error("writing {path}: {source}")]
    TlsWrite { path: PathBuf, source: std::io::Error },
    #[error("BmcSim::spawn must be called within a tokio runtime")]
    NoRuntime,
}

impl BmcError {
    /// A bad option rather than a failure of the machine (exit code 64 on the command line).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            BmcError::InvalidName { .. } | BmcError::EmptyUsername { .. }
        )
    }
}

/// Starts simulated BMCs.
pub struct BmcSim;

impl BmcSim {
    /// Bind `opts.listen` and serve the BMC on the current tokio runtime until
    /// [`BmcHandle::shutdown`] (or the handle is dropped).
    pub fn spawn(opts: BmcOptions) -> Result<BmcHandle, BmcError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| BmcError::NoRuntime)?;
        validate_name(&opts.name)?;
        if opts.username.is_empty() {
            return Err(BmcError::EmptyUsername { name: opts.name });
        }
        let tls = opts
            .tls
            .as_ref()
            .map(|files| tls::server_config(&opts.name, files))
            .transpose()?;
        let bind_err = |source| BmcError::Bind {
            name: opts.name.clone(),
            addr: opts.listen,
            source,
        };
        let std_listener = std::net::TcpListener::bind(opts.listen).map_err(bind_err)?;
        std_listener.set_nonblocking(true).map_err(bind_err)?;
        let addr = std_listener.local_addr().map_err(bind_err)?;
        let listener = {
            let _enter = runtime.enter();
            tokio::net::TcpListener::from_std(std_listener).map_err(bind_err)?
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}", reachable(addr));
        let bmc = Arc::new(Bmc::new(&opts));
        let app = redfish::router(bmc.clone());
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let stop = async move {
            let _ = stop_rx.await;
        };
        let name = opts.name.clone();
        let task = match tls {
            None => runtime.spawn(async move {
                let r = axum::serve(listener, app).with_graceful_shutdown(stop).await;
                if let Err(e) = r {
                    tracing::error!(bmc = %name, error = %e, "BMC simulator stopped");
                }
            }),
            Some(config) => {
                let listener = tls::TlsListener::new(listener, config);
                runtime.spawn(async move {
                    let r = axum::serve(listener, app).with_graceful_shutdown(stop).await;
                    if let Err(e) = r {
                        tracing::error!(bmc = %name, error = %e, "BMC simulator stopped");
                    }
                })
            }
        };
        tracing::info!(bmc = %opts.name, model = %opts.model, %url, "BMC simulator serving");
        Ok(BmcHandle {
            bmc,
            addr,
            url,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }
}

fn validate_name(name: &str) -> Result<(), BmcError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(BmcError::InvalidName {
            name: name.to_string(),
        })
    }
}

/// The address a client on this machine connects to: loopback for a wildcard bind.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port())),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::from((Ipv6Addr::LOCALHOST, addr.port())),
        _ => addr,
    }
}

/// A running simulated BMC. Dropping it stops the server (without waiting).
pub struct BmcHandle {
    bmc: Arc<Bmc>,
    addr: SocketAddr,
    url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl BmcHandle {
    pub fn name(&self) -> &str {
        &self.bmc.name
    }

    pub fn model(&self) -> Model {
        self.bmc.model
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>` (https with TLS); loopback for a wildcard bind.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The modelled node draw now, in watts.
    pub fn draw_watts(&self) -> f64 {
        self.bmc.power().node_draw()
    }

    /// Each GPU's modelled draw now (GPU `i` is chassis `HGX_GPU_SXM_<i+1>`).
    pub fn gpu_draws(&self) -> Vec<f64> {
        self.bmc.power().gpu_draws().to_vec()
    }

    /// The node power limit in force, if any.
    pub fn node_limit(&self) -> Option<f64> {
        self.bmc.power().node_limit()
    }

    /// Each GPU's power limit, if any.
    pub fn gpu_limits(&self) -> Vec<Option<f64>> {
        let p = self.bmc.power();
        (0..p.spec().gpus).map(|g| p.gpu_limit(g)).collect()
    }

    /// Energy the node used since the start, in kWh.
    pub fn energy_kwh(&self) -> f64 {
        self.bmc.power().node_energy_j() / 3.6e6
    }

    /// Switch the workload profile; the draw follows it from now.
    pub fn set_workload(&self, workload: Workload) {
        self.bmc.set_workload(workload);
    }

    pub fn workload(&self) -> Workload {
        self.bmc.power().workload()
    }

    /// The system's `PowerState` now.
    pub fn power_state(&self) -> PowerState {
        self.bmc.lock().system.state()
    }

    /// How many `ComputerSystem.Reset` actions with `PowerCycle` were accepted.
    pub fn power_cycles(&self) -> u64 {
        self.bmc.lock().system.power_cycles()
    }

    /// How many `ComputerSystem.Reset` actions of type `reset` were accepted.
    pub fn resets(&self, reset: ResetType) -> u64 {
        self.bmc.lock().system.resets(reset)
    }

    /// How long a power cycle leaves the system Off (and a graceful shutdown
    /// or restart keeps it PoweringOff): [`reset::DEFAULT_TRANSITION`] unless
    /// set. Applies to resets from now on.
    pub fn set_power_transition(&self, transition: Duration) {
        self.bmc.lock().system.set_transition(transition);
    }

    /// Carry out a reset as `ComputerSystem.Reset` does, without HTTP.
    pub fn reset(&self, reset: ResetType) {
        self.bmc.reset(reset);
    }

    /// Forget every session, as a BMC reboot or a session timeout does: their
    /// tokens get 401 from now on.
    pub fn drop_sessions(&self) {
        self.bmc.lock().sessions.clear();
    }

    /// Stop serving: no new connections; open ones get up to 5 s to finish.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await.is_err()
        {
            tracing::warn!(bmc = %self.bmc.name, "connections still open after 5 s; dropping them");
            task.abort();
        }
        tracing::info!(bmc = %self.bmc.name, "BMC simulator stopped");
    }
}

impl Drop for BmcHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl std::fmt::Debug for BmcHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BmcHandle")
            .field("name", &self.bmc.name)
            .field("model", &self.bmc.model)
            .field("url", &self.url)
            .finish()
    }
}

/// The state one BMC's handlers share.
pub(crate) struct Bmc {
    pub(crate) name: String,
    pub(crate) model: Model,
    pub(crate) username: String,
    pub(crate) password: String,
    /// Stable per name: the service root's `UUID`.
    pub(crate) uuid: String,
    start: Instant,
    state: Mutex<State>,
    pub(crate) telemetry: Telemetry,
}

pub(crate) struct State {
    pub(crate) power: PowerModel,
    /// The system's power state; the power model is powered unless it is Off.
    pub(crate) system: SystemPower,
    pub(crate) sessions: Sessions,
}

impl Bmc {
    fn new(opts: &BmcOptions) -> Bmc {
        Bmc {
            name: opts.name.clone(),
            model: opts.model,
            username: opts.username.clone(),
            password: opts.password.clone(),
            uuid: stable_uuid(&opts.name),
            start: Instant::now(),
            state: Mutex::new(State {
                power: PowerModel::new(*opts.model.spec(), opts.workload),
                system: SystemPower::default(),
                sessions: Sessions::default(),
            }),
            telemetry: Telemetry::new(&opts.name),
        }
    }

    /// The state, with the power model integrated up to now and the power
    /// states a reset queued entered at their times.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.start.elapsed().as_secs_f64();
        while let Some(at) = s.system.next_at().filter(|at| *at <= now) {
            s.power.advance(at);
            if let Some(state) = s.system.fire() {
                s.power.set_powered(state.powered());
                tracing::info!(bmc = %self.name, power_state = %state, "system power state changed");
            }
        }
        s.power.advance(now);
        s
    }

    /// Carry out `reset` now; the state it leaves the system in.
    pub(crate) fn reset(&self, reset: ResetType) -> PowerState {
        let mut s = self.lock();
        self.reset_locked(&mut s, reset)
    }

    /// [`reset`](Self::reset) with the state already locked (and so up to date).
    pub(crate) fn reset_locked(&self, s: &mut State, reset: ResetType) -> PowerState {
        let now = s.power.time();
        s.system.reset(reset, now);
        self.telemetry.count_reset(reset);
        let state = s.system.state();
        s.power.set_powered(state.powered());
        tracing::info!(bmc = %self.name, reset_type = %reset, power_state = %state, "system reset");
        state
    }

    fn power(&self) -> PowerView<'_> {
        PowerView(self.lock())
    }

    pub(crate) fn set_workload(&self, workload: Workload) {
        let mut s = self.lock();
        if s.power.workload() != workload {
            tracing::info!(bmc = %self.name, %workload, "workload changed");
        }
        s.power.set_workload(workload);
    }
}

/// The power model of a locked, up-to-date state.
struct PowerView<'a>(MutexGuard<'a, State>);

impl std::ops::Deref for PowerView<'_> {
    type Target = PowerModel;

    fn deref(&self) -> &PowerModel {
        &self.0.power
    }
}

/// A version-4-shaped UUID derived from the BMC's name, so a restarted
/// simulator keeps its identity.
fn stable_uuid(name: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("hostplane-sim-bmc:{name}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["node-1", "dgx_h100.a", "B"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "a b", "x/y", "é", &"n".repeat(65)] {
            let e = validate_name(bad).unwrap_err();
            assert!(
                e.is_usage() && e.to_string().contains("invalid BMC name"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn uuids_are_stable_and_well_formed() {
        let a = stable_uuid("node-1");
        assert_eq!(a, stable_uuid("node-1"));
        assert_ne!(a, stable_uuid("node-2"));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert_eq!(a.matches('-').count(), 4);
    }

    #[test]
    fn wildcard_binds_are_reached_over_loopback() {
        assert_eq!(
            reachable("0.0.0.0:80".parse().unwrap()),
            "127.0.0.1:80".parse().unwrap()
        );
        assert_eq!(reachable("[::]:80".parse().unwrap()), "[::1]:80".parse().unwrap());
        assert_eq!(
            reachable("10.1.2.3:80".parse().unwrap()),
            "10.1.2.3:80".parse().unwrap()
        );
    }

    #[test]
    fn spawn_outside_a_runtime_says_so() {
        let e = BmcSim::spawn(BmcOptions::default()).unwrap_err();
        assert!(matches!(e, BmcError::NoRuntime), "{e}");
    }
}
