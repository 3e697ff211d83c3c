//! A store named on the command line (`sqlite:PATH`, `postgres:URL`) and the
//! PostgreSQL settings given with it.
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::store::{PgOptions, SslMode};

/// Which store a `store copy` side names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A SQLite store file.
    Sqlite(PathBuf),
    /// A PostgreSQL database: a `postgres://` URL or a libpq key-value
    /// string, without a password.
    Postgres(String),
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Endpoint, String> {
        if let Some(path) = s.strip_prefix("sqlite:") {
            if path.is_empty() {
                return Err(format!("{s:?} names no file: give sqlite:PATH"));
            }
            return Ok(Endpoint::Sqlite(PathBuf::from(path)));
        }
        if let Some(url) = s.strip_prefix("postgres:") {
            let cfg: postgres::Config = url.parse().map_err(|e| {
                format!("the text after postgres: is not a PostgreSQL URL or connection string: {e}")
            })?;
            if cfg.get_password().is_some() {
                // The string itself is not repeated: it holds the password.
                return Err(
                    "the PostgreSQL URL carries a password, which would show in the process list: \
                     leave it out and put the password in a file named by --password-file"
                        .into(),
                );
            }
            if url.contains("sslmode") {
                return Err("the PostgreSQL URL sets sslmode: remove it and pass --sslmode \
                     (as store.postgres.url leaves it to store.postgres.sslmode)"
                    .into());
            }
            return Ok(Endpoint::Postgres(url.into()));
        }
        Err(format!(
            "{s:?} is not a store: give sqlite:PATH or postgres:URL (e.g. postgres:postgres://hostplane@db/hostplane)"
        ))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Sqlite(p) => write!(f, "sqlite:{}", p.display()),
            Endpoint::Postgres(url) => write!(f, "postgres:{url}"),
        }
    }
}

impl Endpoint {
    /// Whether `self` and `other` certainly name the same store: the same
    /// file (through links too) or the same URL.
    pub fn same_store(&self, other: &Endpoint) -> bool {
        match (self, other) {
            (Endpoint::Sqlite(a), Endpoint::Sqlite(b)) => canonical(a) == canonical(b),
            (Endpoint::Postgres(a), Endpoint::Postgres(b)) => a == b,
            _ => false,
        }
    }
}

/// `path` with its links resolved, also when the file does not exist yet
/// (its directory resolved, its name kept).
fn canonical(path: &Path) -> PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            dir.canonicalize()
                .map(|d| d.join(name))
                .unwrap_or_else(|_| path.to_path_buf())
        }
        _ => path.to_path_buf(),
    }
}

/// The PostgreSQL connection settings of `store copy` (both sides when both
/// are on PostgreSQL), as `store.postgres` has them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PgSettings {
    pub password_file: Option<PathBuf>,
    pub sslmode: SslMode,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl PgSettings {
    /// The options `url` is opened with.
    pub fn options(&self, url: &str) -> PgOptions {
        let mut o = PgOptions::from_url(url);
        o.password_file = self.password_file.clone();
        o.sslmode = self.sslmode;
        o.ca_file = self.ca_file.clone();
        o.cert_file = self.cert_file.clone();
        o.key_file = self.key_file.clone();
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_print_back() {
        for s in [
            "sqlite:/var/lib/hostplane/coordinator.db",
            "sqlite:relative.db",
            "postgres:postgres://hostplane@db.example:5432/hostplane",
            "postgres:host=/run/postgresql user=hostplane dbname=hostplane",
        ] {
            let e: Endpoint = s.parse().unwrap();
            assert_eq!(e.to_string(), s);
        }
    }

    #[test]
    fn a_password_in_the_url_is_refused_without_printing_it() {
        for s in [
            "postgres:postgres://hostplane:s3cret@db/hostplane",
            "postgres:host=db user=hostplane password=s3cret dbname=hostplane",
        ] {
            let e = s.parse::<Endpoint>().unwrap_err();
            assert!(e.contains("--password-file"), "{e}");
            assert!(!e.contains("s3cret"), "{e}");
        }
    }

    #[test]
    fn sslmode_in_the_url_is_refused_for_the_flag() {
        let e = "postgres:postgres://hostplane@db/hostplane?sslmode=require"
            .parse::<Endpoint>()
            .unwrap_err();
        assert!(e.contains("--sslmode"), "{e}");
    }

    #[test]
    fn the_same_file_through_another_path_is_the_same_store() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.db");
        std::fs::write(&a, b"").unwrap();
        let dotted = dir.path().join(".").join("a.db");
        assert!(Endpoint::Sqlite(a.clone()).same_store(&Endpoint::Sqlite(dotted)));
        // A target that does not exist yet still compares by its directory.
        let b = dir.path().join("b.db");
        assert!(Endpoint::Sqlite(b.clone()).same_store(&Endpoint::Sqlite(dir.path().join(".").join("b.db"))));
        assert!(!Endpoint::Sqlite(a).same_store(&Endpoint::Sqlite(b)));
    }
}
