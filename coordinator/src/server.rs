//! The coordinator process: store, reconciler, and one gRPC server with the
//! admin API, the agent stream, gRPC health and reflection — both
//! `grpc.reflection.v1` and `v1alpha`, which grpcurl 1.8 and Python's stock
//! client speak — so `grpcurl` works without .proto files.
//!
//! A request tonic cannot decode gets INVALID_ARGUMENT and one over the size
//! limit RESOURCE_EXHAUSTED, gRPC's codes for them ([`standard_codes`]).
//!
//! Shutdown: when the root token is cancelled the server stops accepting,
//! Watch streams end, background tasks are cancelled, and everything gets
//! `shutdown_grace` to finish; what did not finish is logged and dropped.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hostplane_proto::v1::{
    self, admin_service_server::AdminServiceServer, agent_service_server::AgentServiceServer,
};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::{Id, JoinSet};
use tokio::time::{Instant, timeout_at};
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Status};
use tonic_health::ServingStatus;
use tracing::Instrument;

use hostplane_common::notify;
use hostplane_proto::limits::MAX_ADMIN_REQUEST_BYTES;

use crate::api::AdminApi;
use crate::api::auth::{AuthError, Guard, GuardedAdmin};
use crate::audit::{Audit, AuditError};
use crate::config::Config;
use crate::power::PowerHub;
use crate::store::{HistoryConfig, Store, StoreError};
use crate::stream::AgentStream;

/// HTTP/2 PING interval on every connection (agents and admins): finds dead
/// peers behind NAT and keeps idle streams open through middleboxes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// A PING not answered in this time closes the connection.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("reading the listener's address: {0}")]
    LocalAddr(std::io::Error),
    #[error("store {path}: {source}")]
    Store { path: PathBuf, source: StoreError },
    #[error("building the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("leader election: {0}")]
    Ha(String),
    #[error("serving gRPC on {addr}: {source}")]
    Serve {
        addr: SocketAddr,
        source: tonic::transport::Error,
    },
}

/// What [`serve_with`] runs besides the gRPC services.
pub struct ServeOptions {
    /// Use this store instead of opening `cfg.store.path` (tests share it).
    pub store: Option<Store>,
    /// Run the DPU reconciler and the power policy engine (tests of the API
    /// alone turn them off).
    pub run_reconciler: bool,
    /// Each notification reloads `auth.tokens_file` and the `tls:` files.
    pub reload: Option<Arc<Notify>>,
    /// Elect a leader among the replicas on this PostgreSQL store
    /// (docs/ha.md §3); without it the server leads alone (SQLite).
    pub ha: Option<HaOptions>,
}

/// How a replica on PostgreSQL takes part in the election.
#[derive(Debug, Clone)]
pub struct HaOptions {
    /// The connection settings of the store (the elector opens its own).
    pub postgres: crate::store::PgOptions,
    /// This replica's name and the address other replicas reach it at.
    pub me: crate::ha::Replica,
    pub lease: crate::ha::LeaseConfig,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            store: None,
            run_reconciler: true,
            reload: None,
            ha: None,
        }
    }
}

/// Bind `cfg.listen` and serve until `shutdown` is cancelled.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> Result<(), ServerError> {
    let listener = bind(&cfg).await?;
    serve(cfg, listener, shutdown).await
}

/// [`run`], reloading the tokens file and the TLS files whenever `reload`
/// is notified (the daemon's SIGHUP).
pub async fn run_with_reload(
    cfg: Config,
    shutdown: CancellationToken,
    reload: Arc<Notify>,
) -> Result<(), ServerError> {
    let listener = bind(&cfg).await?;
    let opts = ServeOptions {
        reload: Some(reload),
        ..ServeOptions::default()
    };
    serve_with(cfg, listener, shutdown, opts).await
}

/// Connections the kernel queues for `accept` on the gRPC port
/// ([`listen_on`]); the kernel caps it at `net.core.somaxconn`.
pub const LISTEN_BACKLOG: u32 = 4096;

async fn bind(cfg: &Config) -> Result<TcpListener, ServerError> {
    listen_on(cfg.listen).map_err(|source| ServerError::Bind {
        addr: cfg.listen,
        source,
    })
}

/// Bind `addr` with SO_REUSEADDR (as `TcpListener::bind` does) and a listen
/// backlog of [`LISTEN_BACKLOG`] instead of tokio's 1024: a fleet of
/// agents reconnecting at once (a coordinator restart) would overflow 1024
/// and their SYNs be dropped, each costing a reconnect backoff.
pub fn listen_on(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serve on an already-bound listener (tests bind 127.0.0.1:0).
pub async fn serve(
    cfg: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    serve_with(cfg, listener, shutdown, ServeOptions::default()).await
}

/// Open the store (on a blocking thread: it may migrate the schema).
pub async fn open_store(path: PathBuf) -> Result<Store, ServerError> {
    open_store_with(path, HistoryConfig::default()).await
}

/// [`open_store`], keeping the watch history `history` says (`store.history`).
pub async fn open_store_with(path: PathBuf, history: HistoryConfig) -> Result<Store, ServerError> {
    let p = path.clone();
    match tokio::task::spawn_blocking(move || Store::open_with(&p, history)).await {
        Ok(r) => r.map_err(|source| ServerError::Store { path, source }),
        Err(e) => Err(ServerError::Store {
            path,
            source: StoreError::Join(e.to_string()),
        }),
    }
}

pub async fn serve_with(
    cfg: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
    opts: ServeOptions,
) -> Result<(), ServerError> {
    let addr = listener.local_addr().map_err(ServerError::LocalAddr)?;
    // Configuration that can be wrong is checked before anything starts.
    let tls: Option<crate::tls::SharedTls> = match &cfg.tls {
        Some(t) => Some(Arc::new(RwLock::new(Arc::new(server_tls(t)?)))),
        None => None,
    };
    let audit = Audit::open(cfg.auth.audit_file.as_deref())?;
    let guard = Guard::from_config(&cfg.auth, tls.is_some(), audit.clone())?;
    let on_postgres = cfg.store.backend == crate::config::StoreBackend::Postgres;
    let store = match opts.store {
        Some(s) => s,
        None if on_postgres => {
            let pg = cfg.store.postgres_options();
            let history = cfg.store.history;
            let name = PathBuf::from(format!("postgres {}", pg.describe()));
            match tokio::task::spawn_blocking(move || Store::open_postgres(&pg, history)).await {
                Ok(r) => r.map_err(|source| ServerError::Store { path: name, source })?,
                Err(e) => {
                    return Err(ServerError::Store {
                        path: name,
                        source: StoreError::Join(e.to_string()),
                    });
                }
            }
        }
        None => open_store_with(cfg.store.path.clone(), cfg.store.history).await?,
    };
    // On PostgreSQL the replica always takes part in the election (the
    // caller may have given the options already).
    let ha = match opts.ha.clone() {
        Some(ha) => Some(ha),
        None if on_postgres => Some(HaOptions {
            postgres: cfg.store.postgres_options(),
            me: cfg.ha.replica(cfg.listen),
            lease: cfg.ha.lease_config(),
        }),
        None => None,
    };
    // /metrics, bound now so that a bad metrics.listen fails the start.
    let metrics_listener = match cfg.metrics.listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind { addr, source })?,
        ),
        None => None,
    };

    // Background work: a child token each, named spans, one JoinSet.
    let tasks_token = shutdown.child_token();
    let mut tasks = JoinSet::new();
    let mut names: HashMap<Id, &'static str> = HashMap::new();
    // This replica's role: elected among the replicas on PostgreSQL, the
    // sole leader otherwise (and then said so in the metrics at once).
    if ha.is_none() {
        crate::metrics::hub().leader.set(1);
    }
    let role = match &ha {
        Some(ha) => {
            let elector = crate::ha::Elector::start(
                ha.postgres.clone(),
                ha.me.clone(),
                ha.lease,
                tasks_token.child_token(),
            )
            .map_err(|e| ServerError::Ha(e.to_string()))?;
            let role = elector.role();
            let h = tasks.spawn(elector.stopped().instrument(tracing::info_span!("election")));
            names.insert(h.id(), "election");
            role
        }
        None => crate::leadership::sole_leader(),
    };
    let cluster = match &ha {
        Some(ha) => {
            crate::api::ClusterSource::postgres(ha.me.name.clone(), role.clone(), ha.postgres.clone())
        }
        None => crate::api::ClusterSource::sqlite(cfg.ha.replica(addr).name, addr.to_string()),
    };
    if let Some(listener) = metrics_listener {
        let h = tasks.spawn(
            crate::metrics::serve(listener, store.clone(), tasks_token.child_token())
                .instrument(tracing::info_span!("metrics")),
        );
        names.insert(h.id(), "metrics");
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    let admin_name = <AdminServiceServer<AdminApi> as NamedService>::NAME;
    let agent_name = <AgentServiceServer<AgentStream> as NamedService>::NAME;
    for name in ["", admin_name, agent_name] {
        health.set_service_status(name, ServingStatus::Serving).await;
    }
    // NOT_SERVING while the store cannot be read (PostgreSQL down).
    let h = tasks.spawn(
        crate::api::health::watch_store(
            store.clone(),
            health.clone(),
            ["", admin_name, agent_name].map(String::from).to_vec(),
            tasks_token.child_token(),
        )
        .instrument(tracing::info_span!("store health")),
    );
    names.insert(h.id(), "store health");
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let power = PowerHub::new();
    // Power across replicas (docs/ha.md §5): the Peer service on every
    // replica; on PostgreSQL the caps feed and the forwarder follow the role.
    let peer_files = match &cfg.tls {
        Some(t) => Some(t.load().map_err(|e| ServerError::Tls(e.to_string()))?),
        None => None,
    };
    let (peer_auth, peer_connect) = match &peer_files {
        Some(f) => (
            crate::peer::PeerAuth::same_certificate(&f.cert).map_err(ServerError::Tls)?,
            crate::peer::PeerConnect::tls(&f.client_ca, &f.cert, &f.key),
        ),
        None => (crate::peer::PeerAuth::plain(), crate::peer::PeerConnect::plain()),
    };
    if let Some(ha) = &ha {
        let h = tasks.spawn(crate::power::caps_feed(
            store.clone(),
            power.clone(),
            role.clone(),
            tasks_token.child_token(),
        ));
        names.insert(h.id(), "power caps feed");
        let h = tasks.spawn(crate::peer::forwarder(
            power.clone(),
            role.clone(),
            ha.me.name.clone(),
            peer_connect.clone(),
            tasks_token.child_token(),
        ));
        names.insert(h.id(), "power forwarder");
    }
    let peer = crate::peer::PeerService::new(power.clone(), role.clone(), peer_auth)
        .with_audit(audit.clone())
        .into_server();
    if opts.run_reconciler {
        // The reconciler and the power engine, while this replica leads.
        let work = crate::leadership::LeaderWork {
            store: store.clone(),
            power: power.clone(),
            fsm: cfg.fsm.clone(),
            power_cfg: cfg.power.clone(),
        };
        let h = tasks.spawn(crate::leadership::run(
            role.clone(),
            work,
            tasks_token.child_token(),
        ));
        names.insert(h.id(), "leadership");
    }
    // Agent sessions end with UNAVAILABLE on shutdown, so agents reconnect elsewhere.
    let mut agent_stream = AgentStream::new(store.clone(), cfg.agents.clone());
    if let Some(ha) = &ha {
        agent_stream = agent_stream.with_replica(ha.me.name.clone(), role.clone());
    }
    let agent_stream = agent_stream
        .with_shutdown(&tasks_token)
        .with_power(power.clone())
        .with_require_identity(tls.is_some())
        .with_audit(audit.clone());
    if let Some(reload) = opts.reload.clone() {
        let (guard, tls, cfg, agents) = (guard.clone(), tls.clone(), cfg.clone(), agent_stream.clone());
        let token = tasks_token.child_token();
        let h = tasks.spawn(
            async move {
                loop {
                    tokio::select! {
                        () = token.cancelled() => break,
                        () = reload.notified() => reload_files(&cfg, &guard, tls.as_ref(), &agents),
                    }
                }
            }
            .instrument(tracing::info_span!("reload")),
        );
        names.insert(h.id(), "reload");
    }
    let admin = GuardedAdmin::new(
        AdminApi::new(store.clone(), tasks_token.child_token())
            .with_power(power.clone())
            .with_cluster(cluster)
            .with_leader_power(crate::peer::LeaderPower::new(
                power.clone(),
                role.clone(),
                peer_connect,
            )),
        guard,
    )
    .into_server()
    .max_decoding_message_size(MAX_ADMIN_REQUEST_BYTES);
    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .layer(tower::util::MapResponseLayer::new(standard_codes));
    if tls.is_none() {
        tracing::warn!(
            %addr,
            "serving plain TCP without TLS (insecure): connections are neither encrypted nor \
             authenticated and any client may act for any node; use only on a trusted network"
        );
    }
    let agents = agent_stream.into_server();

    // TLS (and the client certificate) is per connection, for every service
    // below; admin authorization is the bearer-token guard around `admin`.
    let router = builder
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(admin)
        .add_service(agents)
        .add_service(peer);
    let stop = shutdown.clone();
    let stopped = async move { stop.cancelled().await };
    let server: std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), tonic::transport::Error>> + Send>,
    > = match tls {
        Some(settings) => {
            let incoming = crate::tls::incoming(listener, settings, audit.clone(), shutdown.clone());
            Box::pin(router.serve_with_incoming_shutdown(incoming, stopped))
        }
        None => {
            // TCP_NODELAY: without it every unary call waits out Nagle +
            // delayed ACK (~45 ms each; measured by the coordinator bench).
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            Box::pin(router.serve_with_incoming_shutdown(incoming, stopped))
        }
    };
    tracing::info!(%addr, store = %store.path().display(), "coordinator serving");
    notify::ready(&format!("serving on {addr}"));
    let watchdog = notify::spawn_watchdog(tasks_token.child_token());

    tokio::pin!(server);
    // `Some`: the server future has finished (it must not be polled again).
    let finished = tokio::select! {
        r = &mut server => Some(r),
        () = shutdown.cancelled() => {
            for name in ["", admin_name, agent_name] {
                health.set_service_status(name, ServingStatus::NotServing).await;
            }
            None
        }
    };
    // Told to stop (the server may have noticed first): tell systemd.
    if shutdown.is_cancelled() {
        notify::stopping("shutting down");
    }
    // Whether the server failed or we were told to stop: stop the background work too.
    tasks_token.cancel();
    let deadline = Instant::now() + cfg.shutdown_grace;
    let served = match finished {
        Some(r) => r,
        None => match timeout_at(deadline, &mut server).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!(grace = ?cfg.shutdown_grace, "connections still open after the shutdown grace; closing them");
                Ok(())
            }
        },
    };
    join_tasks(tasks, names, deadline).await;
    if let Some(w) = watchdog {
        w.abort();
    }
    tracing::info!(%addr, "coordinator stopped");
    served.map_err(|source| ServerError::Serve { addr, source })
}

type HttpResponse = tonic::codegen::http::Response<tonic::body::Body>;

/// tonic answers a request it cannot decode with INTERNAL and one over the
/// size limit with OUT_OF_RANGE; gRPC's codes for them are INVALID_ARGUMENT
/// and RESOURCE_EXHAUSTED (docs/api.md reserves OUT_OF_RANGE for Watch).
/// Such a refusal is a headers-only response, so the status is rewritten in
/// the headers; every other response passes untouched.
fn standard_codes(mut res: HttpResponse) -> HttpResponse {
    let Some(status) = Status::from_header_map(res.headers()) else {
        return res;
    };
    let fixed = match status.code() {
        Code::Internal if status.message().starts_with("failed to decode Protobuf message") => {
            Status::invalid_argument(format!(
                "the request is not a valid message for this method: {}",
                status.message()
            ))
        }
        Code::OutOfRange if status.message().contains("decoded message length too large") => {
            Status::resource_exhausted(format!(
                "the request is larger than the {MAX_ADMIN_REQUEST_BYTES} bytes a call may carry ({})",
                status.message()
            ))
        }
        _ => return res,
    };
    if let Err(e) = fixed.add_header(res.headers_mut()) {
        tracing::debug!(error = %e, "cannot rewrite a refusal's status");
    }
    res
}

/// SIGHUP: read the tokens file and the TLS files again (the paths in the
/// config as it was at start). What fails to load is named and the settings
/// in force are kept; each outcome is audited. Live agent sessions whose
/// certificate the new settings would refuse are ended.
fn reload_files(cfg: &Config, guard: &Guard, tls: Option<&crate::tls::SharedTls>, agents: &AgentStream) {
    let audit = guard.audit();
    let record = |target: &str, result: &str| {
        audit.record(crate::audit::Record {
            who: "SIGHUP",
            role: "",
            method: "Reload",
            target,
            result,
            peer: "",
        })
    };
    // logrotate moved the audit file: write to a new one at the same path.
    if let Err(e) = audit.reopen() {
        tracing::error!(error = %e, "reload: keeping the audit file open as it was");
    }
    match guard.reload(&cfg.auth, tls.is_some()) {
        Ok(Some(n)) => record("auth.tokens_file", &format!("ok: {n} tokens")),
        Ok(None) => {}
        Err(e) => {
            tracing::error!(error = %e, "reload: keeping the tokens in force");
            record(
                "auth.tokens_file",
                &format!("error (kept the tokens in force): {e}"),
            );
        }
    }
    if let (Some(shared), Some(t)) = (tls, &cfg.tls) {
        match server_tls(t) {
            Ok(settings) => {
                let settings = Arc::new(settings);
                *shared.write().unwrap_or_else(|p| p.into_inner()) = settings.clone();
                let ended = agents.revalidate(&|chain| settings.verify_chain(chain));
                record(
                    "tls",
                    &format!(
                        "ok: new connections use the files as they are now; agent sessions ended as no \
                         longer trusted: {}",
                        if ended.is_empty() {
                            "none".to_string()
                        } else {
                            ended.join(", ")
                        }
                    ),
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "reload: keeping the TLS settings in force");
                record("tls", &format!("error (kept the settings in force): {e}"));
            }
        }
    }
}

/// The server's TLS settings from the checked files: its certificate, and
/// the CA every client certificate must be signed by.
fn server_tls(t: &crate::config::TlsConfig) -> Result<crate::tls::TlsSettings, ServerError> {
    let files = t.load().map_err(|e| ServerError::Tls(e.to_string()))?;
    let settings = crate::tls::TlsSettings::new(&files, t.client_auth_optional).map_err(ServerError::Tls)?;
    tracing::info!(
        cert = %t.cert_file.display(),
        expires = hostplane_common::tls::not_after(&files.cert).unwrap_or_default(),
        client_ca = %t.client_ca_file.display(),
        client_auth_optional = t.client_auth_optional,
        "serving mTLS"
    );
    Ok(settings)
}

/// Wait for the background tasks until `deadline`, then log and abort what is left.
async fn join_tasks(mut tasks: JoinSet<()>, mut names: HashMap<Id, &'static str>, deadline: Instant) {
    let joined = timeout_at(deadline, async {
        while let Some(r) = tasks.join_next_with_id().await {
            match r {
                Ok((id, ())) => {
                    names.remove(&id);
                }
                Err(e) => {
                    let task = names.remove(&e.id()).unwrap_or("task");
                    tracing::error!(task, error = %e, "background task failed");
                }
            }
        }
    })
    .await;
    if joined.is_err() {
        let left: Vec<&str> = names.values().copied().collect();
        tracing::warn!(tasks = ?left, "background tasks did not finish within the shutdown grace; aborting them");
        tasks.abort_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn listen_on_accepts_and_refuses_a_port_in_use() {
        let l = listen_on("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        let c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (_s, peer) = l.accept().await.unwrap();
        assert_eq!(peer, c.local_addr().unwrap());
        let e = listen_on(addr).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
    }
}
