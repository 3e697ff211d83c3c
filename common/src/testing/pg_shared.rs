//! One throwaway PostgreSQL cluster per test process, for suites that run
//! many tests against PostgreSQL (each test then creates its own database
//! in it, which takes milliseconds where a cluster takes a second).
//!
//! The cluster is started by the first [`shared`] call. A static is never
//! dropped, so a watchdog (`sh`, started with it) waits for this process to
//! end, however it ends, then stops the postmaster (SIGQUIT, an immediate
//! shutdown) and removes the cluster's directory: nothing is left running.

use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

use super::pg::{DATABASE, PgCluster, USER};

/// Where the shared cluster listens.
#[derive(Debug, Clone)]
pub struct SharedPg {
    pub port: u16,
    pub password: String,
}

impl SharedPg {
    /// A URL for database `db` as the superuser over TCP.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{USER}:{}@127.0.0.1:{}/{db}", self.password, self.port)
    }

    /// A URL for the fixture's own database (to create others from).
    pub fn admin_url(&self) -> String {
        self.url(DATABASE)
    }
}

static CLUSTER: Mutex<Option<PgCluster>> = Mutex::new(None);
static STARTED: OnceLock<Option<SharedPg>> = OnceLock::new();

/// The process's cluster, started on first use. `None` (the reason printed
/// once) when PostgreSQL's binaries are missing; panics when it fails to start.
pub fn shared() -> Option<SharedPg> {
    STARTED
        .get_or_init(|| {
            let cluster = PgCluster::start().expect("start the shared PostgreSQL cluster")?;
            let info = SharedPg {
                port: cluster.port(),
                password: cluster.password().to_string(),
            };
            let postmaster = cluster.postmaster_pid().expect("the shared cluster's postmaster pid");
            let script = format!(
                "while kill -0 {me} 2>/dev/null; do sleep 0.5; done; \
                 kill -QUIT {postmaster} 2>/dev/null; \
                 for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 {postmaster} 2>/dev/null || break; sleep 0.5; done; \
                 kill -KILL {postmaster} 2>/dev/null; rm -rf '{dir}'",
                me = std::process::id(),
                dir = cluster.socket_dir().display(),
            );
            // Never waited for: it outlives this process by design (it then
            // belongs to init, which reaps it).
            #[allow(clippy::zombie_processes)]
            Command::new("sh")
                .args(["-c", &script])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start the shared cluster's watchdog");
            *CLUSTER.lock().unwrap_or_else(|p| p.into_inner()) = Some(cluster);
            Some(info)
        })
        .clone()
}
