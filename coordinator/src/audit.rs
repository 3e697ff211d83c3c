//! The audit log: one JSON line per mutating admin call and per refused
//! call or connection (a token that is missing, unknown or too weak; an agent
//! certificate that names another node; a TLS handshake refused for a wrong
//! CA or an expired certificate), appended to `auth.audit_file` and logged.
//!
//! A line: `{"at_ms", "who", "role", "method", "target", "result", "peer"}`
//! — `who` is the token's name, the certificate's name or "unauthenticated";
//! `peer` the remote address and, over mTLS, the client certificate's name.
//! Tokens never appear in it.
//!
//! Whatever a caller sent, a record stays small: each field is cut to
//! [`MAX_FIELD`] bytes (with the original length said), and refusals are
//! recorded at most [`REFUSALS_PER_MINUTE`] a minute per peer address and
//! identity, the rest counted in the next record after the window — so a
//! host with a client certificate and no token cannot fill the disk.
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The most bytes of one field written to the audit file or the log.
pub const MAX_FIELD: usize = 512;
/// Refusal records per peer address and identity in [`REFUSAL_WINDOW`].
pub const REFUSALS_PER_MINUTE: u32 = 20;
pub const REFUSAL_WINDOW: Duration = Duration::from_secs(60);
/// Peers tracked before windows that have ended are forgotten.
const MAX_TRACKED: usize = 10_000;

/// Where audit records go: the log always, `auth.audit_file` when set.
/// Cheap to clone; every clone appends to the same file.
#[derive(Clone, Default)]
pub struct Audit {
    /// The path and the open file; every clone shares the one handle.
    file: Option<(PathBuf, Arc<Mutex<std::fs::File>>)>,
    /// Refusals per (address, identity) in the current window; shared by clones.
    refusals: Arc<Budget<String>>,
}

/// At most [`REFUSALS_PER_MINUTE`] records per key in each
/// [`REFUSAL_WINDOW`]; the rest are counted and handed to the key's first
/// record of a later window. Shared by the audit's refusals (keyed by peer
/// address and identity) and the TLS listener's refused handshakes (keyed by
/// address).
pub struct Budget<K> {
    windows: Mutex<HashMap<K, Window>>,
}

struct Window {
    start: Instant,
    recorded: u32,
    suppressed: u64,
}

impl<K> Default for Budget<K> {
    fn default() -> Self {
        Budget {
            windows: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: std::hash::Hash + Eq> Budget<K> {
    /// None: `key` is over its budget (counted, not to be recorded);
    /// Some(n): record it, saying that `n` of the window before were not.
    pub fn admit(&self, now: Instant, key: K) -> Option<u64> {
        let mut w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if w.len() > MAX_TRACKED {
            w.retain(|_, v| now.duration_since(v.start) < REFUSAL_WINDOW);
        }
        let win = w.entry(key).or_insert(Window {
            start: now,
            recorded: 0,
            suppressed: 0,
        });
        let mut carried = 0;
        if now.duration_since(win.start) >= REFUSAL_WINDOW {
            carried = win.suppressed;
            *win = Window {
                start: now,
                recorded: 0,
                suppressed: 0,
            };
        }
        if win.recorded >= REFUSALS_PER_MINUTE {
            win.suppressed += 1;
            return None;
        }
        win.recorded += 1;
        Some(carried)
    }
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
            refusals: Arc::default(),
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
        let r = Record {
            who: &bounded(r.who),
            role: &bounded(r.role),
            method: &bounded(r.method),
            target: &bounded(r.target),
            result: &bounded(r.result),
            peer: &bounded(r.peer),
        };
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

    /// Record a refused call or session from `addr`, unless this peer
    /// (address and identity: `who` and the certificate name in `peer`) has
    /// had [`REFUSALS_PER_MINUTE`] recorded in the current window; those are
    /// counted, and the count is added to the peer's next record.
    pub fn refusal(&self, addr: Option<SocketAddr>, r: Record<'_>) {
        self.refusal_at(Instant::now(), addr, r);
    }

    fn refusal_at(&self, now: Instant, addr: Option<SocketAddr>, r: Record<'_>) {
        let ip = addr.map_or_else(|| "unknown".to_string(), |a| a.ip().to_string());
        // `peer` is "ADDR" or "ADDR cert=NAME" (see `peer_of`): keep the identity part.
        let cert = r.peer.split_once(' ').map_or("", |(_, rest)| rest);
        let key = format!("{ip} {} {}", bounded(cert), bounded(r.who));
        let Some(carried) = self.refusals.admit(now, key) else {
            return;
        };
        if carried == 0 {
            return self.record(r);
        }
        let result = format!(
            "{} ({carried} more refusals of this peer in the window before were not recorded)",
            bounded(r.result)
        );
        self.record(Record { result: &result, ..r });
    }
}

/// `s` cut to [`MAX_FIELD`] bytes on a character boundary, with its length.
pub fn bounded(s: &str) -> Cow<'_, str> {
    if s.len() <= MAX_FIELD {
        return Cow::Borrowed(s);
    }
    let mut end = MAX_FIELD;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}… ({} bytes)", &s[..end], s.len()))
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
    fn every_field_is_cut_to_its_bound_with_the_original_length() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("audit.jsonl");
        let a = Audit::open(Some(&p)).unwrap();
        let huge = "n".repeat(1 << 20);
        let target = format!("node/{huge}");
        a.record(Record {
            who: &huge,
            role: &huge,
            method: &huge,
            target: &target,
            result: &huge,
            peer: &huge,
        });
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.len() < 6 * (MAX_FIELD + 32) + 200, "{} bytes", text.len());
        let line: serde_json::Value = serde_json::from_str(&text).unwrap();
        let t = line["target"].as_str().unwrap();
        assert!(t.starts_with("node/nnn"), "{t}");
        assert!(t.ends_with(&format!("… ({} bytes)", target.len())), "{t}");
        // Multi-byte characters are never split.
        assert_eq!(bounded(&"é".repeat(MAX_FIELD)).chars().next(), Some('é'));
        assert!(bounded(&"é".repeat(MAX_FIELD)).ends_with(&format!("… ({} bytes)", 2 * MAX_FIELD)));
    }

    #[test]
    fn refusals_are_recorded_at_most_so_many_per_peer_and_identity_a_window() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("audit.jsonl");
        let a = Audit::open(Some(&p)).unwrap();
        let addr: SocketAddr = "10.0.0.7:5000".parse().unwrap();
        let other: SocketAddr = "10.0.0.8:5000".parse().unwrap();
        let t0 = Instant::now();
        let rec = |peer: &'static str, who: &'static str| Record {
            who,
            method: "Delete",
            result: "denied",
            peer,
            ..Record::default()
        };
        for i in 0..(REFUSALS_PER_MINUTE + 30) {
            let at = t0 + Duration::from_millis(u64::from(i));
            a.refusal_at(
                at,
                Some(addr),
                rec("10.0.0.7:5000 cert=node-a", "unauthenticated"),
            );
        }
        // Another identity from the same address, and another address, are their own budget.
        a.refusal_at(
            t0,
            Some(addr),
            rec("10.0.0.7:5001 cert=node-b", "unauthenticated"),
        );
        a.refusal_at(
            t0,
            Some(other),
            rec("10.0.0.8:5000 cert=node-a", "unauthenticated"),
        );
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&p)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), REFUSALS_PER_MINUTE as usize + 2);
        // A new port is the same peer: the budget is per address, not per connection.
        a.refusal_at(
            t0,
            Some("10.0.0.7:6000".parse().unwrap()),
            rec("10.0.0.7:6000 cert=node-a", "unauthenticated"),
        );
        a.refusal_at(
            t0 + REFUSAL_WINDOW,
            Some(addr),
            rec("10.0.0.7:5000 cert=node-a", "unauthenticated"),
        );
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&p)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), REFUSALS_PER_MINUTE as usize + 3);
        let last = lines.last().unwrap()["result"].as_str().unwrap();
        assert!(last.starts_with("denied (31 more refusals"), "{last}");
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
