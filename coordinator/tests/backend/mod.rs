//! The store engine the `api_*` and `fsm_*` suites run on (docs/ha.md §7):
//! one suite, two engines, chosen by one switch.
//!
//! `HOSTPLANE_TEST_STORE` unset (or `sqlite`): SQLite, as the coordinator
//! runs by default (in memory, or the file a test names).
//! `HOSTPLANE_TEST_STORE=postgres`: every store is a fresh database in the
//! test process's shared throwaway cluster
//! (`hostplane_common::testing::pg_shared`), opened as a single coordinator
//! on PostgreSQL opens it: `Store::open_postgres`, and the history pruned
//! by this store (the replica that leads, which the only replica is). A
//! server on it also runs the election as on PostgreSQL ([`ha_at`]).
//! Asked for and missing, PostgreSQL fails the test with the reason
//! (scripts/setup installs it): a run that asked for PostgreSQL never
//! passes on SQLite instead.
//!
//! A test that is about SQLite itself (its file, its schema) opens SQLite
//! directly and says so.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use hostplane_common::testing::pg::USER;
use hostplane_common::testing::pg_shared::{self, SharedPg};
use hostplane_coordinator::ha::{LeaseConfig, Replica};
use hostplane_coordinator::server::HaOptions;
use hostplane_coordinator::store::{HistoryConfig, PgOptions, Store};

/// The variable that picks the engine.
pub const VAR: &str = "HOSTPLANE_TEST_STORE";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// The engine `HOSTPLANE_TEST_STORE` names; panics on anything else, so a
/// typo never runs the suite on SQLite while claiming PostgreSQL.
pub fn engine() -> Engine {
    match std::env::var(VAR) {
        Err(std::env::VarError::NotPresent) => Engine::Sqlite,
        Ok(v) if v.is_empty() || v == "sqlite" => Engine::Sqlite,
        Ok(v) if v == "postgres" => Engine::Postgres,
        Ok(v) => panic!("{VAR}={v:?}: expected \"sqlite\" or \"postgres\""),
        Err(e) => panic!("{VAR}: {e}"),
    }
}

/// A fresh, empty store: SQLite in memory, or a new PostgreSQL database.
pub fn store() -> Store {
    match engine() {
        Engine::Sqlite => Store::in_memory().expect("open an in-memory SQLite store"),
        Engine::Postgres => open_postgres(&create_database(), HistoryConfig::default()),
    }
}

/// [`store`] keeping only the last `revisions` revisions of watch history
/// (`Store::in_memory_with_retention`: tests of history running out).
pub fn store_with_retention(revisions: u64) -> Store {
    match engine() {
        Engine::Sqlite => Store::in_memory_with_retention(revisions).expect("open an in-memory SQLite store"),
        Engine::Postgres => open_postgres(&create_database(), HistoryConfig::revisions(revisions)),
    }
}

/// The store at `path`: the SQLite file there, or on PostgreSQL the
/// database this process made for `path` (created on its first open), so
/// opening the same path again is a restart on the same data.
pub fn store_at(path: &Path) -> Store {
    match engine() {
        Engine::Sqlite => {
            Store::open(path).unwrap_or_else(|e| panic!("open the SQLite store {}: {e}", path.display()))
        }
        Engine::Postgres => open_postgres(&database_for(path), HistoryConfig::default()),
    }
}

/// How a server on the store at `path` takes part in the election on
/// PostgreSQL, as `serve_with` does by itself for `store.backend: postgres`
/// (docs/ha.md §3): the database for `path`, the default lease, and one
/// replica name per database, so a server restarted on the same path takes
/// its own lease back at once. `None` on SQLite (the sole leader).
pub fn ha_at(path: &Path, listen: SocketAddr) -> Option<HaOptions> {
    match engine() {
        Engine::Sqlite => None,
        Engine::Postgres => Some(HaOptions {
            postgres: PgOptions::from_url(database_for(path)),
            me: Replica {
                name: "test-coordinator".into(),
                addr: listen.to_string(),
            },
            lease: LeaseConfig::default(),
        }),
    }
}

/// The coordinator config's `store:` section for the store at `path`, for
/// the binary: SQLite's `path`, or on PostgreSQL `backend: postgres` with
/// the URL of `path`'s database (no password in it) and a password file
/// written next to `path` (as an operator configures it: docs/postgres.md).
pub fn store_yaml(path: &Path) -> String {
    match engine() {
        Engine::Sqlite => format!("store:\n  path: {}\n", path.display()),
        Engine::Postgres => {
            let pg = cluster();
            let db = database_name_for(&pg, path);
            let password_file = path.with_extension("password");
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
            }
            std::fs::write(&password_file, format!("{}\n", pg.password))
                .unwrap_or_else(|e| panic!("write {}: {e}", password_file.display()));
            format!(
                "store:\n  backend: postgres\n  postgres:\n    url: postgres://{USER}@127.0.0.1:{port}/{db}\n    \
                 password_file: {pw}\n    sslmode: disable\n",
                port = pg.port,
                pw = password_file.display(),
            )
        }
    }
}

/// Runs `sql` (one or more statements, in the engine's dialect) on the
/// store at `path` outside the coordinator, as an operator's shell or a
/// retention job would: `store_at`'s file or database.
pub fn execute_at(path: &Path, sql: &str) {
    match engine() {
        Engine::Sqlite => {
            let conn =
                rusqlite::Connection::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
            conn.execute_batch(sql)
                .unwrap_or_else(|e| panic!("{sql} on {}: {e}", path.display()));
        }
        Engine::Postgres => {
            let url = database_for(path);
            let sql = sql.to_string();
            off_runtime(move || {
                let mut c = postgres::Client::connect(&url, postgres::NoTls)
                    .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
                c.batch_execute(&sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
            });
        }
    }
}

fn open_postgres(url: &str, history: HistoryConfig) -> Store {
    let store = Store::open_postgres(&PgOptions::from_url(url.to_string()), history)
        .unwrap_or_else(|e| panic!("open the PostgreSQL store {url}: {e}"));
    // The only replica leads, and on PostgreSQL the leader's commits prune
    // the history (docs/ha.md §1), as SQLite's always do.
    store.set_prunes_history(true);
    store
}

fn cluster() -> SharedPg {
    pg_shared::shared().unwrap_or_else(|| {
        panic!(
            "{VAR}=postgres, but PostgreSQL's binaries were not found (the reason is printed \
             above): run scripts/setup, or unset {VAR} to test on SQLite"
        )
    })
}

/// A new empty database in the shared cluster; its URL.
fn create_database() -> String {
    let pg = cluster();
    pg.url(&new_database(&pg))
}

/// A new empty database in `pg`; its name.
fn new_database(pg: &SharedPg) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let db = format!(
        "api_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let admin = pg.admin_url();
    let create = format!("CREATE DATABASE {db}");
    off_runtime(move || {
        let mut c = postgres::Client::connect(&admin, postgres::NoTls)
            .unwrap_or_else(|e| panic!("connect to the shared PostgreSQL cluster: {e}"));
        c.batch_execute(&create)
            .unwrap_or_else(|e| panic!("{create}: {e}"));
    });
    db
}

/// The URL of the database standing for the file `path`.
fn database_for(path: &Path) -> String {
    let pg = cluster();
    pg.url(&database_name_for(&pg, path))
}

/// The database standing for the file `path` (one per path per process,
/// created on first use); its name.
fn database_name_for(pg: &SharedPg, path: &Path) -> String {
    static BY_PATH: Mutex<Option<HashMap<PathBuf, String>>> = Mutex::new(None);
    let mut by_path = BY_PATH.lock().unwrap_or_else(|p| p.into_inner());
    by_path
        .get_or_insert_with(HashMap::new)
        .entry(path.to_path_buf())
        .or_insert_with(|| new_database(pg))
        .clone()
}

/// Runs `f` on a thread of its own: the synchronous PostgreSQL client may
/// not run on a thread that drives the test's async runtime.
fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match std::thread::spawn(f).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
