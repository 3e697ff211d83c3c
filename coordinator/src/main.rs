//! `hostplane-coordinator`: parse the command line, load the config, start
//! logging, run. The logic lives in the library (`server::run`).
//!
//! Exit codes: 0 ok, 1 runtime error, 64 usage error, 78 config error
//! (the unit sets `RestartPreventExitStatus=78`).
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hostplane_common::signals::{self, Signals};
use hostplane_coordinator::config::{Config, ConfigError, LogConfig, ProcessEnv, StoreBackend};
use hostplane_coordinator::server;
use hostplane_coordinator::store::{Migrated, Store, pg_connect, pg_migrate};
use tokio_util::sync::CancellationToken;

const EXIT_RUNTIME: u8 = 1;
const EXIT_USAGE: u8 = 64;
const EXIT_CONFIG: u8 = 78;

#[derive(Debug, Parser)]
#[command(
    name = "hostplane-coordinator",
    version,
    about = "hostplane coordinator: desired state, DPU state machine, admin API"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Config file [default: /etc/hostplane/coordinator.yaml, if present].
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// gRPC listen address (overrides the file and HOSTPLANE_LISTEN).
    #[arg(long, global = true, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Store file (overrides the file and HOSTPLANE_STORE_PATH; store.backend sqlite only).
    #[arg(long, global = true, value_name = "PATH")]
    store: Option<PathBuf>,
    /// Serve plain TCP without TLS: no encryption, no node identity (a trusted
    /// network or a test only; logged as a warning). Also HOSTPLANE_INSECURE=1.
    #[arg(long, global = true)]
    insecure: bool,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the coordinator (the default).
    Run,
    /// Check the config and exit: 0 when valid, 78 when not.
    Validate,
    /// Migrate the store's schema to this binary's version and exit,
    /// printing the version before and after (starting the coordinator
    /// migrates too). 0 when done or already current; 1 when the store
    /// cannot be opened or is newer than this binary (left unchanged);
    /// 78 on a config error. Reads only the config's `store` section: the
    /// SQLite file, or on `store.backend: postgres` the database of
    /// `store.postgres` (docs/postgres.md).
    Migrate,
    /// Copy a store between SQLite and PostgreSQL, or back up a SQLite
    /// store (docs/postgres.md).
    Store {
        #[command(subcommand)]
        cmd: hostplane_coordinator::storeops::StoreCommand,
    },
    /// Print the version.
    Version,
    /// Ask a running coordinator's gRPC health service whether it serves:
    /// exit 0 when SERVING, 1 when not (or unreachable). For container
    /// HEALTHCHECKs and exec probes, where no grpc client is installed.
    Health(HealthArgs),
}

#[derive(Debug, clap::Args)]
struct HealthArgs {
    /// Address to check [default: the config's listen address; 0.0.0.0 and :: mean loopback].
    #[arg(long, value_name = "HOST:PORT")]
    addr: Option<String>,
    /// The service to check; empty means the whole server.
    #[arg(long, default_value = "")]
    service: String,
    /// Give up after this long.
    #[arg(long, default_value = "3s", value_parser = humantime_serde::re::humantime::parse_duration)]
    timeout: std::time::Duration,
    /// With `tls:`: the CA that signed the coordinator's certificate [default: tls.client_ca_file].
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// With `tls:`: the server name to verify [default: the CN or first DNS name of tls.cert_file].
    #[arg(long, value_name = "NAME")]
    domain: Option<String>,
    /// With `tls:`: a client certificate from the CA (needed unless tls.client_auth_optional)
    /// [env: HOSTPLANE_HEALTH_CERT_FILE].
    #[arg(long, value_name = "PEM", env = "HOSTPLANE_HEALTH_CERT_FILE")]
    cert_file: Option<PathBuf>,
    /// Its key [env: HOSTPLANE_HEALTH_KEY_FILE].
    #[arg(long, value_name = "PEM", env = "HOSTPLANE_HEALTH_KEY_FILE")]
    key_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if matches!(cli.cmd, Some(Cmd::Version)) {
        println!("hostplane-coordinator {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if let Some(Cmd::Health(args)) = &cli.cmd {
        return health(&cli, args);
    }
    if matches!(cli.cmd, Some(Cmd::Migrate)) {
        return migrate(&cli);
    }
    if let Some(Cmd::Store { cmd }) = cli.cmd {
        return hostplane_coordinator::storeops::run(cmd);
    }
    // Loading the config logs nothing; logging starts right after, from the
    // config's `log` section with HOSTPLANE_LOG / HOSTPLANE_LOG_FORMAT applied.
    let loaded = load(&cli);
    let log = match &loaded {
        Ok(cfg) => cfg.log.clone(),
        Err(_) => log_from_env(),
    };
    init_tracing(&log);
    let cfg = match loaded {
        Ok(cfg) => cfg,
        Err(e) => {
            tracing::error!(error = %e, "invalid configuration");
            eprintln!("hostplane-coordinator: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if matches!(cli.cmd, Some(Cmd::Validate)) {
        println!("config OK: listen {}, store {}", cfg.listen, cfg.store.describe());
        return ExitCode::SUCCESS;
    }
    match run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "coordinator failed");
            eprintln!("hostplane-coordinator: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// The file, the environment, then the flags.
fn load(cli: &Cli) -> Result<Config, ConfigError> {
    let mut cfg = Config::read(cli.config.as_deref())?;
    cfg.apply_env(&ProcessEnv)?;
    if let Some(addr) = cli.listen {
        cfg.listen = addr;
    }
    if let Some(path) = &cli.store {
        store_flag_is_sqlite(&cfg)?;
        cfg.store.path = path.clone();
    }
    if cli.insecure {
        cfg.insecure = true;
    }
    cfg.validate()?;
    Ok(cfg)
}

/// `--store` names a SQLite file: refused on postgres rather than ignored.
fn store_flag_is_sqlite(cfg: &Config) -> Result<(), ConfigError> {
    match cfg.store.backend {
        StoreBackend::Sqlite => Ok(()),
        StoreBackend::Postgres => Err(ConfigError::Invalid {
            field: "--store",
            reason: "names a SQLite file, but store.backend is postgres (set store.postgres.url instead)"
                .into(),
        }),
    }
}

/// Log settings when the config could not be loaded: the environment or the defaults.
fn log_from_env() -> LogConfig {
    let mut log = LogConfig::default();
    if let Ok(level) = std::env::var("HOSTPLANE_LOG") {
        log.level = level;
    }
    if let Some(format) = std::env::var("HOSTPLANE_LOG_FORMAT")
        .ok()
        .and_then(|f| f.parse().ok())
    {
        log.format = format;
    }
    log
}

fn init_tracing(log: &LogConfig) {
    hostplane_common::logging::init(&log.level, log.format);
}

/// `migrate`: the store's schema migrated forward, the versions printed.
/// The config is read for the `store` section only (the TLS files and tokens
/// a server needs are not checked: an upgrade step may run without them).
fn migrate(cli: &Cli) -> ExitCode {
    let cfg = Config::read(cli.config.as_deref())
        .and_then(|mut c| c.apply_env(&ProcessEnv).map(|()| c))
        .and_then(|c| match cli.store {
            Some(_) => store_flag_is_sqlite(&c).map(|()| c),
            None => Ok(c),
        });
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hostplane-coordinator: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match cfg.store.backend {
        StoreBackend::Sqlite => migrate_sqlite(cli.store.clone().unwrap_or(cfg.store.path), &cfg.log),
        StoreBackend::Postgres => migrate_postgres(&cfg),
    }
}

fn migrate_sqlite(path: PathBuf, log: &LogConfig) -> ExitCode {
    if path.as_os_str().is_empty() || path.is_dir() {
        eprintln!(
            "hostplane-coordinator: store.path {:?}: name the database file",
            path.display()
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    init_tracing(log);
    migrated(
        &path.display().to_string(),
        hostplane_coordinator::store::migrate_file(&path).map_err(|e| e.to_string()),
    )
}

/// `migrate` on `store.backend: postgres`: one connection, [`pg_migrate`]
/// (each step under the migration lock, so a replica starting meanwhile waits).
fn migrate_postgres(cfg: &Config) -> ExitCode {
    if let Err((field, reason)) = cfg.store.validate() {
        eprintln!(
            "hostplane-coordinator: {}",
            ConfigError::Invalid { field, reason }
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    init_tracing(&cfg.log);
    let opts = cfg.store.postgres_options();
    let name = format!("postgres {}", opts.describe());
    let result = pg_connect(&opts)
        .and_then(|mut client| pg_migrate(&mut client))
        .map_err(|e| format!("{name}: {e}"));
    migrated(&name, result)
}

/// Prints `store NAME: schema version A -> B` and the exit code.
fn migrated(name: &str, result: Result<Migrated, String>) -> ExitCode {
    match result {
        Ok(m) => {
            let note = match (m.before, m.after) {
                (0, _) => " (new store)",
                (b, a) if b == a => " (already current)",
                _ => "",
            };
            println!("store {name}: schema version {} -> {}{note}", m.before, m.after);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hostplane-coordinator: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// `health`: one gRPC health Check; prints the status (or why there is none).
fn health(cli: &Cli, args: &HealthArgs) -> ExitCode {
    // The config says where the coordinator listens and whether it speaks TLS;
    // it is not validated (a health check does not need the store or the key).
    let cfg = match Config::read(cli.config.as_deref()).and_then(|mut c| c.apply_env(&ProcessEnv).map(|()| c))
    {
        Ok(mut c) => {
            if let Some(l) = cli.listen {
                c.listen = l;
            }
            c
        }
        Err(e) => {
            eprintln!("hostplane-coordinator: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let addr = match &args.addr {
        Some(a) => a.clone(),
        None => {
            let mut listen = cfg.listen;
            if listen.ip().is_unspecified() {
                listen.set_ip(match listen {
                    SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                    SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                });
            }
            listen.to_string()
        }
    };
    let tls = match cfg.tls.as_ref().filter(|_| !cfg.insecure) {
        Some(t) => match health_tls(t, args) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("hostplane-coordinator: health: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        None => None,
    };
    let url = format!("{}://{addr}", if tls.is_some() { "https" } else { "http" });
    let endpoint = match tonic::transport::Endpoint::from_shared(url.clone()) {
        Ok(e) => e.connect_timeout(args.timeout).timeout(args.timeout),
        Err(e) => {
            eprintln!("hostplane-coordinator: --addr {addr:?} is not HOST:PORT: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let endpoint = match tls {
        Some(c) => match endpoint.tls_config(c) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("hostplane-coordinator: health: TLS: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        None => endpoint,
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hostplane-coordinator: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let service = args.service.clone();
    let result = rt.block_on(async move {
        let check = async {
            let channel = endpoint
                .connect()
                .await
                .map_err(|e| format!("cannot connect: {e}"))?;
            let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
            client
                .check(tonic_health::pb::HealthCheckRequest { service })
                .await
                .map(|r| r.into_inner().status())
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
        };
        tokio::time::timeout(args.timeout, check)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {:?}", args.timeout)))
    });
    match result {
        Ok(tonic_health::pb::health_check_response::ServingStatus::Serving) => {
            println!("{url}: SERVING");
            ExitCode::SUCCESS
        }
        Ok(status) => {
            println!("{url}: {}", status.as_str_name());
            ExitCode::from(EXIT_RUNTIME)
        }
        Err(e) => {
            eprintln!("hostplane-coordinator: health of {url}: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// The health client's TLS: the coordinator's own certificate names the
/// server (its CN or first DNS name, checked against `--ca-file`, by default
/// `tls.client_ca_file`: one CA signs both, as `hostplanectl certs` makes
/// them); a client certificate when given (required unless
/// `tls.client_auth_optional`).
fn health_tls(
    t: &hostplane_coordinator::config::TlsConfig,
    args: &HealthArgs,
) -> Result<tonic::transport::ClientTlsConfig, String> {
    use hostplane_common::tls::{load_certs, load_key, pem_cert_name};
    let server = load_certs("tls.cert_file", &t.cert_file).map_err(|e| e.to_string())?;
    let domain = match &args.domain {
        Some(d) => d.clone(),
        None => pem_cert_name(&server.pem).ok_or_else(|| {
            format!(
                "tls.cert_file {} names no host (no CN, no DNS name); pass --domain",
                t.cert_file.display()
            )
        })?,
    };
    let ca_path = args.ca_file.as_deref().unwrap_or(&t.client_ca_file);
    let ca = load_certs("--ca-file", ca_path).map_err(|e| e.to_string())?;
    let mut cfg = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca.pem))
        .domain_name(domain);
    match (&args.cert_file, &args.key_file) {
        (Some(c), Some(k)) => {
            let cert = load_certs("--cert-file", c).map_err(|e| e.to_string())?;
            let key = load_key("--key-file", k).map_err(|e| e.to_string())?;
            cfg = cfg.identity(tonic::transport::Identity::from_pem(cert.pem, key.pem));
        }
        (None, None) => {}
        _ => return Err("--cert-file and --key-file go together".into()),
    }
    Ok(cfg)
}

fn run(cfg: Config) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let shutdown = CancellationToken::new();
        let signals = Signals::new()?;
        // A second SIGTERM/SIGINT: do not wait for the grace period. SIGHUP:
        // read the tokens file and the TLS files again.
        let reload = std::sync::Arc::new(tokio::sync::Notify::new());
        let watcher = signals::spawn_handler(
            signals,
            shutdown.clone(),
            Some(reload.clone()),
            EXIT_RUNTIME.into(),
        );
        let result = match cfg.store.backend {
            StoreBackend::Sqlite => server::run_with_reload(cfg, shutdown, reload)
                .await
                .map_err(anyhow::Error::from),
            StoreBackend::Postgres => run_postgres(cfg, shutdown, reload).await,
        };
        watcher.abort();
        result
    })
}

/// The password file should be readable by the coordinator's user (and
/// group) only; one every user can read is logged, not refused.
fn warn_if_world_readable(file: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(file)
        && meta.permissions().mode() & 0o004 != 0
    {
        tracing::warn!(
            file = %file.display(),
            "store.postgres.password_file is readable by every user; chmod o-r it (docs/postgres.md)"
        );
    }
}

/// `run` on `store.backend: postgres`: bind, open the store on PostgreSQL
/// (migrating it, on a blocking thread), then serve it as `run_with_reload` does.
async fn run_postgres(
    cfg: Config,
    shutdown: CancellationToken,
    reload: std::sync::Arc<tokio::sync::Notify>,
) -> anyhow::Result<()> {
    let listener = server::listen_on(cfg.listen).map_err(|source| server::ServerError::Bind {
        addr: cfg.listen,
        source,
    })?;
    let opts = cfg.store.postgres_options();
    let name = format!("postgres {}", opts.describe());
    tracing::info!(store = %name, sslmode = %opts.sslmode, "opening the store");
    if let Some(file) = &opts.password_file {
        warn_if_world_readable(file);
    }
    let history = cfg.store.history;
    let ha = server::HaOptions {
        postgres: opts.clone(),
        me: cfg.ha.replica(cfg.listen),
        lease: cfg.ha.lease_config(),
    };
    tracing::info!(replica = %ha.me.name, addr = %ha.me.addr, "taking part in the leader election");
    let store = tokio::task::spawn_blocking(move || Store::open_postgres(&opts, history))
        .await
        .map_err(|e| anyhow::anyhow!("store {name}: {e}"))?
        .map_err(|e| anyhow::anyhow!("store {name}: {e}"))?;
    let opts = server::ServeOptions {
        store: Some(store),
        reload: Some(reload),
        ha: Some(ha),
        ..server::ServeOptions::default()
    };
    server::serve_with(cfg, listener, shutdown, opts)
        .await
        .map_err(anyhow::Error::from)
}
