//! `store backup`: an online backup of a SQLite store.
//!
//! Made with `VACUUM INTO`, not the online backup API: it is one statement
//! reading the store in one read transaction, so with the store in WAL mode
//! (as the coordinator opens it) a running coordinator keeps writing
//! throughout and the backup is the store as of one commit. The backup API
//! copies pages in steps and restarts from the first page whenever another
//! connection writes between steps (a busy coordinator may keep it from ever
//! finishing), or holds its read for the whole copy when run in one step,
//! which is what `VACUUM INTO` does anyway; `VACUUM INTO` also needs no
//! extra rusqlite feature, writes a compacted file, and itself refuses an
//! output file that is not empty.
//!
//! The backup is written under a temporary name next to DEST, checked
//! (`PRAGMA integrity_check`, the store's revision and object count read),
//! synced, and only then linked to DEST (`link(2)`: fails if DEST appeared
//! meanwhile), so DEST is either absent or a complete, checked backup.
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use super::{BackupArgs, EXIT_CONFIG, EXIT_FAILED, EXIT_USAGE};
use crate::config::{Config, ProcessEnv, StoreBackend};

/// How long the backup waits for a lock a running coordinator holds.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A backup written and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupReport {
    pub dest: PathBuf,
    pub schema_version: i64,
    /// The store revision the backup holds.
    pub revision: i64,
    /// Objects (resources) in the backup.
    pub objects: i64,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0} already exists; a backup never overwrites a file: name a new one")]
    DestExists(PathBuf),
    #[error("store {0}: no such file")]
    NoStore(PathBuf),
    #[error("store {0} is not a hostplane store (no schema version; was it ever opened by a coordinator?)")]
    NotAStore(PathBuf),
    #[error("{path}: {doing}: {source}")]
    Sql {
        path: PathBuf,
        doing: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{path}: {doing}: {source}")]
    Io {
        path: PathBuf,
        doing: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the backup failed its integrity check, so it was removed: {0}")]
    Integrity(String),
}

fn sql(path: &Path, doing: &'static str) -> impl FnOnce(rusqlite::Error) -> BackupError {
    let path = path.to_path_buf();
    move |source| BackupError::Sql { path, doing, source }
}

fn io_err(path: &Path, doing: &'static str) -> impl FnOnce(io::Error) -> BackupError {
    let path = path.to_path_buf();
    move |source| BackupError::Io { path, doing, source }
}

/// Write a backup of the SQLite store `store` to the new file `dest` and
/// check it (module docs). The store is only read.
pub fn backup(store: &Path, dest: &Path) -> Result<BackupReport, BackupError> {
    if dest.symlink_metadata().is_ok() {
        return Err(BackupError::DestExists(dest.into()));
    }
    if !store.is_file() {
        return Err(BackupError::NoStore(store.into()));
    }
    let name = dest
        .file_name()
        .ok_or_else(|| BackupError::Io {
            path: dest.into(),
            doing: "naming the backup",
            source: io::Error::new(io::ErrorKind::InvalidInput, "DEST names no file"),
        })?
        .to_string_lossy()
        .into_owned();
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(BackupError::Io {
            path: dir,
            doing: "the backup's directory",
            source: io::Error::new(io::ErrorKind::NotFound, "no such directory"),
        });
    }
    let tmp = dir.join(format!(".{name}.partial-{}", std::process::id()));
    let result = write_checked(store, &tmp).and_then(|report| {
        // link(2) refuses an existing DEST: one created since the check above
        // is never replaced.
        match fs::hard_link(&tmp, dest) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(BackupError::DestExists(dest.into()));
            }
            Err(e) => return Err(io_err(dest, "moving the checked backup into place")(e)),
        }
        fs::remove_file(&tmp).map_err(io_err(&tmp, "removing the temporary name"))?;
        fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&dir, "syncing the directory"))?;
        Ok(BackupReport {
            dest: dest.into(),
            ..report
        })
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// `VACUUM INTO tmp`, then the checks; `tmp` is left for the caller.
fn write_checked(store: &Path, tmp: &Path) -> Result<BackupReport, BackupError> {
    let src = Connection::open_with_flags(
        store,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql(store, "opening the store"))?;
    src.busy_timeout(BUSY_TIMEOUT)
        .map_err(sql(store, "opening the store"))?;
    let version: i64 = src
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sql(store, "reading the schema version"))?;
    if version == 0 {
        return Err(BackupError::NotAStore(store.into()));
    }
    let target = tmp.to_str().ok_or_else(|| BackupError::Io {
        path: tmp.into(),
        doing: "naming the backup",
        source: io::Error::new(io::ErrorKind::InvalidInput, "the path is not UTF-8"),
    })?;
    src.execute("VACUUM INTO ?1", [target])
        .map_err(sql(store, "writing the backup (VACUUM INTO)"))?;
    drop(src);

    let out = Connection::open_with_flags(
        tmp,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql(tmp, "opening the backup"))?;
    // One self-contained file: the coordinator turns WAL on again when it opens it.
    out.pragma_update(None, "journal_mode", "DELETE")
        .map_err(sql(tmp, "setting the backup's journal mode"))?;
    let problems: Vec<String> = {
        let mut stmt = out
            .prepare("PRAGMA integrity_check")
            .map_err(sql(tmp, "checking the backup"))?;
        stmt.query_map([], |r| r.get::<_, String>(0))
            .and_then(|rows| rows.collect::<Result<_, _>>())
            .map_err(sql(tmp, "checking the backup"))?
    };
    if problems != ["ok"] {
        return Err(BackupError::Integrity(problems.join("; ")));
    }
    let schema_version: i64 = out
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sql(tmp, "reading the backup's schema version"))?;
    let revision: i64 = out
        .query_row("SELECT value FROM meta WHERE key = 'revision'", [], |r| r.get(0))
        .map_err(sql(tmp, "reading the backup's revision"))?;
    let objects: i64 = out
        .query_row("SELECT count(*) FROM resources", [], |r| r.get(0))
        .map_err(sql(tmp, "counting the backup's objects"))?;
    out.close().map_err(|(_, e)| sql(tmp, "closing the backup")(e))?;
    let file = fs::File::open(tmp).map_err(io_err(tmp, "opening the backup to sync it"))?;
    file.sync_all().map_err(io_err(tmp, "syncing the backup"))?;
    let bytes = file
        .metadata()
        .map_err(io_err(tmp, "reading the backup's size"))?
        .len();
    Ok(BackupReport {
        dest: tmp.into(),
        schema_version,
        revision,
        objects,
        bytes,
    })
}

/// The store file `store backup` reads: `--store`, or the config's
/// `store.path` (with the environment applied, as the coordinator reads it;
/// the default config file when neither is given, as `migrate` does). A
/// config whose store is on PostgreSQL is refused (exit 64).
fn store_path(a: &BackupArgs) -> Result<PathBuf, (u8, String)> {
    match (&a.store, &a.config) {
        (Some(_), Some(_)) => {
            return Err((EXIT_USAGE, "give --store PATH or --config FILE, not both".into()));
        }
        (Some(p), None) => return Ok(p.clone()),
        (None, _) => {}
    }
    let cfg = Config::read(a.config.as_deref())
        .and_then(|mut c| c.apply_env(&ProcessEnv).map(|()| c))
        .map_err(|e| (EXIT_CONFIG, e.to_string()))?;
    if cfg.store.backend == StoreBackend::Postgres {
        let file = a
            .config
            .as_deref()
            .map_or_else(|| "the config".to_string(), |f| f.display().to_string());
        return Err((
            EXIT_USAGE,
            format!(
                "{file} puts the store on PostgreSQL (store.backend: postgres); store backup copies a SQLite store: \
                 back PostgreSQL up with pg_dump (docs/postgres.md)"
            ),
        ));
    }
    Ok(cfg.store.path)
}

/// `store backup` on the command line.
pub(super) fn run(a: BackupArgs) -> u8 {
    let store = match store_path(&a) {
        Ok(p) => p,
        Err((code, msg)) => {
            eprintln!("hostplane-coordinator: store backup: {msg}");
            return code;
        }
    };
    match backup(&store, &a.to) {
        Ok(r) => {
            println!(
                "backup of {} written to {}: integrity ok, schema version {}, revision {}, {} objects, {} bytes",
                store.display(),
                r.dest.display(),
                r.schema_version,
                r.revision,
                r.objects,
                r.bytes
            );
            0
        }
        Err(e) => {
            eprintln!("hostplane-coordinator: store backup: {e}");
            EXIT_FAILED
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(store: Option<&Path>, config: Option<&Path>, to: &Path) -> BackupArgs {
        BackupArgs {
            store: store.map(Into::into),
            config: config.map(Into::into),
            to: to.into(),
        }
    }

    #[test]
    fn a_postgres_config_is_refused_pointing_to_pg_dump() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.yaml");
        fs::write(
            &cfg,
            "store:\n  backend: postgres\n  postgres:\n    url: postgres://hostplane@db/hostplane\n",
        )
        .unwrap();
        let dest = dir.path().join("b.db");
        let (code, msg) = store_path(&args(None, Some(&cfg), &dest)).unwrap_err();
        assert_eq!(code, EXIT_USAGE);
        assert!(
            msg.contains("pg_dump") && msg.contains("docs/postgres.md"),
            "{msg}"
        );
        assert_eq!(run(args(None, Some(&cfg), &dest)), EXIT_USAGE);
        assert!(!dest.exists());
    }

    #[test]
    fn a_sqlite_config_names_the_store_and_a_broken_one_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.yaml");
        fs::write(&cfg, "store:\n  path: /srv/hostplane/c.db\n").unwrap();
        let dest = dir.path().join("b.db");
        // HOSTPLANE_STORE_PATH would override the file; the test runs without it.
        if std::env::var_os("HOSTPLANE_STORE_PATH").is_none() {
            assert_eq!(
                store_path(&args(None, Some(&cfg), &dest)).unwrap(),
                PathBuf::from("/srv/hostplane/c.db")
            );
        }
        fs::write(&cfg, "store:\n  pth: /x\n").unwrap();
        let (code, msg) = store_path(&args(None, Some(&cfg), &dest)).unwrap_err();
        assert_eq!(code, EXIT_CONFIG);
        assert!(msg.contains("pth"), "{msg}");
    }

    #[test]
    fn a_missing_store_or_a_file_that_is_no_store_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("b.db");
        let e = backup(&dir.path().join("none.db"), &dest).unwrap_err();
        assert!(matches!(e, BackupError::NoStore(_)), "{e}");
        let empty = dir.path().join("empty.db");
        Connection::open(&empty).unwrap();
        let e = backup(&empty, &dest).unwrap_err();
        assert!(matches!(e, BackupError::NotAStore(_)), "{e}");
        let left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["empty.db"]);
    }
}
