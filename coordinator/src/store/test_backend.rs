//! The store's engines as a test fixture (docs/ha.md §7): one suite runs
//! against SQLite (a file in a temporary directory) and PostgreSQL (a fresh
//! database in the process's shared throwaway cluster), not copies of it.
//!
//! `backend_tests! { async fn name(b) { ... } }` makes a module `name`
//! with one test per engine; the PostgreSQL one prints why it skips when
//! PostgreSQL is not installed.
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use super::{HistoryConfig, PgOptions, Store};

pub(crate) enum Backend {
    Sqlite { _dir: tempfile::TempDir, path: PathBuf },
    Postgres { url: String },
}

impl Backend {
    pub(crate) fn sqlite() -> Backend {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        Backend::Sqlite { _dir: dir, path }
    }

    /// A fresh, empty database; `None` (why printed) without PostgreSQL.
    pub(crate) fn postgres() -> Option<Backend> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let pg = hostplane_common::testing::pg_shared::shared()?;
        let db = format!("t{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let admin = pg.admin_url();
        let create = format!("CREATE DATABASE {db}");
        // On a thread of its own: the synchronous client may not run inside
        // the test's async runtime.
        std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&admin, postgres::NoTls).unwrap();
            c.batch_execute(&create).unwrap();
        })
        .join()
        .unwrap();
        Some(Backend::Postgres { url: pg.url(&db) })
    }

    /// Open (or reopen) this backend's store.
    pub(crate) fn open(&self) -> Store {
        self.open_with(HistoryConfig::default())
    }

    pub(crate) fn open_with(&self, history: HistoryConfig) -> Store {
        match self {
            Backend::Sqlite { path, .. } => Store::open_with(path, history).unwrap(),
            Backend::Postgres { url } => {
                Store::open_postgres(&PgOptions::from_url(url.clone()), history).unwrap()
            }
        }
    }
}

/// One test per engine: `backend_tests! { async fn name(b) { body } }` (or
/// without `async`); `b` is the [`Backend`].
macro_rules! backend_tests {
    ($(#[$m:meta])* async fn $name:ident($b:ident) $body:block $($rest:tt)*) => {
        $(#[$m])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            use $crate::store::test_backend::Backend;
            #[tokio::test]
            async fn sqlite() {
                let $b = Backend::sqlite();
                $body
            }
            #[tokio::test]
            async fn postgres() {
                let Some($b) = Backend::postgres() else { return };
                $body
            }
        }
        $crate::store::test_backend::backend_tests! { $($rest)* }
    };
    ($(#[$m:meta])* fn $name:ident($b:ident) $body:block $($rest:tt)*) => {
        $(#[$m])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            use $crate::store::test_backend::Backend;
            #[test]
            fn sqlite() {
                let $b = Backend::sqlite();
                $body
            }
            #[test]
            fn postgres() {
                let Some($b) = Backend::postgres() else { return };
                $body
            }
        }
        $crate::store::test_backend::backend_tests! { $($rest)* }
    };
    () => {};
}
pub(crate) use backend_tests;
