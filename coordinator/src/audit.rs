//! The audit log: one JSON line per mutating admin call and per refused
//! call or connection (a token that is missing, unknown or too weak; an agent
//! certificate that names another node; a TLS handshake refused for a wrong
//! CA or an expired certificate), appended to `auth.audit_file` and logged.
//!
//! A line: `{"at_ms", "who", "role", "method", "target", "result", "peer"}`
//! — `who` is the token's name, the certificate's name or "unauthenticated";
//! `peer` the remote address and, over mTLS, the client certificate's name.
//! Tokens never appear in it.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Where audit records go: the log always, `auth.audit_file` when set.
/// Cheap to clone; every clone appends to the same file.
#[derive(Clone, Default)]
pub struct Audit {
    /// The path and the open file; every clone shares the one handle.
    file: Option<(PathBuf, Arc<Mutex<std::fs::File>>)>,
}

/// One audited event. Empty fields are written as "".
#[derive(Debug, Default, Clone)]
pub struct Record<'a> {
    pub who: &'a str,
    pub role: &'a str,
    pub method: &'a str,
    pub target: &'a str,
    pub result: &'a str,
    pub peer: &'a str,
}

#[derive(Debug, thiserror::Error)]
#[error("auth.audit_file {path}: {source}")]
pub struct AuditError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

impl Audit {
    /// Append to `path` (created if missing), or only log when None.
    pub fn open(path: Option<&Path>) -> Result<Audit, AuditError> {
        let Some(p) = path else {
            return Ok(Audit::default());
        };
        let f = append(p)?;
        Ok(Audit {
            file: Some((p.to_path_buf(), Arc::new(Mutex::new(f)))),
        })
    }

    /// Open the file again at its path (SIGHUP, after logrotate moved it);
    /// on failure the old handle stays in use.
    pub fn reopen(&self) -> Result<(), AuditError> {
        if let Some((p, f)) = &self.file {
            let new = append(p)?;
            *f.lock().unwrap_or_else(|e| e.into_inner()) = new;
        }
        Ok(())
    }

    /// Append one record (and log it). A write failure is logged, never
    /// returned: the call it describes has already happened.
    pub fn record(&self, r: Record<'_>) {
        let rec = serde_json::json!({
            "at_ms": hostplane_common::time::now_ms(),
            "who": r.who,
            "role": r.role,
            "method": r.method,
            "target": r.target,
            "result": r.result,
            "peer": r.peer,
        });
        tracing::info!(
            who = r.who,
            role = r.role,
            method = r.method,
            target = r.target,
            result = r.result,
            peer = r.peer,
            "audit"
        );
        if let Some((_, f)) = &self.file {
            let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = writeln!(f, "{rec}").and_then(|()| f.flush()) {
                tracing::error!(error = %e, "cannot write the audit log");
            }
        }
    }
}

fn append(p: &Path) -> Result<std::fs::File, AuditError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .map_err(|source| AuditError {
            path: p.to_path_buf(),
            source,
        })
}

/// The `peer` of a call: its remote address, and over mTLS the name its
/// client certificate was issued to ("10.0.0.5:43122 cert=node-a").
pub fn peer<T>(req: &tonic::Request<T>) -> String {
    let cert = req
        .peer_certs()
        .and_then(|c| c.first().and_then(|d| hostplane_common::tls::cert_name(d)));
    peer_of(req.remote_addr(), cert.as_deref())
}

/// [`peer`] from an address and a certificate name already at hand.
pub fn peer_of(addr: Option<std::net::SocketAddr>, cert: Option<&str>) -> String {
    let addr = addr.map_or_else(|| "unknown".to_string(), |a| a.to_string());
    match cert {
        Some(name) => format!("{addr} cert={name}"),
        None => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_appended_as_json_lines() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("audit.jsonl");
        std::fs::write(&p, "{\"earlier\":true}\n").unwrap();
        let a = Audit::open(Some(&p)).unwrap();
        a.clone().record(Record {
            who: "ops",
            role: "operator",
            method: "MarkRebooted",
            target: "node/n1",
            result: "ok",
            peer: "127.0.0.1:5000",
        });
        a.record(Record {
            who: "unauthenticated",
            result: "denied",
            ..Record::default()
        });
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&p)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3, "appended, not truncated: {lines:?}");
        assert_eq!(lines[1]["who"], "ops");
        assert_eq!(lines[1]["target"], "node/n1");
        assert_eq!(lines[1]["peer"], "127.0.0.1:5000");
        assert_eq!(lines[2]["result"], "denied");
        assert_eq!(lines[2]["method"], "");
    }

    #[test]
    fn reopen_follows_a_rotated_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("audit.jsonl");
        let a = Audit::open(Some(&p)).unwrap();
        a.record(Record {
            who: "before",
            ..Record::default()
        });
        std::fs::rename(&p, d.path().join("audit.jsonl.1")).unwrap();
        a.reopen().unwrap();
        a.record(Record {
            who: "after",
            ..Record::default()
        });
        let now = std::fs::read_to_string(&p).unwrap();
        let old = std::fs::read_to_string(d.path().join("audit.jsonl.1")).unwrap();
        assert!(now.contains("\"after\"") && !now.contains("\"before\""), "{now}");
        assert!(old.contains("\"before\"") && !old.contains("\"after\""), "{old}");
    }

    #[test]
    fn an_unwritable_path_is_named() {
        let e = Audit::open(Some(Path::new("/nonexistent-dir/audit.jsonl")))
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .starts_with("auth.audit_file /nonexistent-dir/audit.jsonl: "),
            "{e}"
        );
    }
}
