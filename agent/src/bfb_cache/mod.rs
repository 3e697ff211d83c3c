//! The local BFB cache: each Bfb is downloaded once, verified (sha256 while
//! streaming, then every BFB header, length and CRC), and kept as
//! `<dir>/<sha256>.bfb`. Only this module writes that name, and only by an
//! atomic rename of a fully verified `<sha256>.part`, so a file with that name
//! is trusted after a size check.
//!
//! - HTTP(S) through reqwest + rustls, resuming a partial `.part` with a Range
//!   request (a `200` answer restarts from zero); `file://` URLs are copied and
//!   verified the same way.
//! - Concurrent fetches of one digest share one download (single-flight).
//! - The cache is bounded: least recently used complete entries are evicted,
//!   never one that is being fetched or held by a [`CachedBfb`]. Partial
//!   `.part` files are kept for resume and not counted.

mod download;
mod store;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hostplane_proto::v1::BfbRef;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Cache settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    pub dir: PathBuf,
    /// Upper bound on the bytes of complete entries.
    pub max_bytes: u64,
    /// Attempts per download (each resumes where the last stopped).
    pub max_attempts: u32,
    /// Wait before the first retry; doubles per attempt, at most 30 s.
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// A download that receives nothing for this long is retried.
    #[serde(with = "humantime_serde")]
    pub stall_timeout: Duration,
}

impl CacheConfig {
    /// The `cache:` section's own checks: the field (as the config names
    /// it) and why, for the first problem found.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !self.dir.is_absolute() {
            return Err((
                "cache.dir",
                format!("{} must be an absolute path", self.dir.display()),
            ));
        }
        if self.max_bytes == 0 {
            return Err(("cache.max_bytes", "must be greater than 0".into()));
        }
        if self.max_attempts == 0 {
            return Err(("cache.max_attempts", "must be at least 1".into()));
        }
        for (field, d) in [
            ("cache.retry_backoff", self.retry_backoff),
            ("cache.connect_timeout", self.connect_timeout),
            ("cache.stall_timeout", self.stall_timeout),
        ] {
            if d.is_zero() {
                return Err((field, "must be greater than 0".into()));
            }
        }
        Ok(())
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            dir: PathBuf::from("/var/lib/hostplane-agent/cache"),
            max_bytes: 32 << 30,
            max_attempts: 5,
            retry_backoff: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(60),
        }
    }
}

/// Why a Bfb could not be made available. Every variant names the URL (its
/// query string and credentials left out: they may carry a signature).
#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    #[error("bfb {url}: invalid sha256 {sha256:?}: expected 64 hex digits")]
    InvalidDigest { url: String, sha256: String },
    #[error("bfb {url}: unsupported URL: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cache {path}: {source}")]
    CacheDir {
        path: PathBuf,
        source: Arc<std::io::Error>,
    },
    #[error("HTTP client: {reason}")]
    Client { reason: String },
    #[error("downloading {url}: {source}")]
    Http {
        url: String,
        source: Arc<reqwest::Error>,
    },
    #[error("downloading {url}: server answered {status}")]
    Status { url: String, status: u16 },
    #[error("downloading {url}: {reason}")]
    Protocol { url: String, reason: String },
    #[error("downloading {url}: no data for {after:?}")]
    Stalled { url: String, after: Duration },
    #[error("downloading {url}: transfer ended after {got} of {expected} bytes")]
    Truncated { url: String, got: u64, expected: u64 },
    #[error("bfb {url}: size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch { url: String, expected: u64, actual: u64 },
    #[error("bfb {url}: sha256 mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("bfb {url}: not a valid BFB: {source}")]
    Corrupt {
        url: String,
        source: hostplane_bfb::Error,
    },
    #[error("bfb {url}: {path}: {source}")]
    Io {
        url: String,
        path: PathBuf,
        source: Arc<std::io::Error>,
    },
    #[error("bfb {url}: download cancelled")]
    Cancelled { url: String },
    #[error("bfb {url}: download task failed: {detail}")]
    Task { url: String, detail: String },
}

impl CacheError {
    /// Worth another attempt (the partial file is kept and resumed).
    fn retryable(&self) -> bool {
        match self {
            CacheError::Http { .. }
            | CacheError::Stalled { .. }
            | CacheError::Truncated { .. }
            | CacheError::Protocol { .. } => true,
            CacheError::Status { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            _ => false,
        }
    }
}

/// Bytes fetched so far of one download.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DownloadProgress {
    pub done: u64,
    /// Expected size, when known.
    pub total: Option<u64>,
}

/// A verified cache entry. The file is not evicted while this is alive.
#[derive(Debug)]
pub struct CachedBfb {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
    _lease: Lease,
}

#[derive(Debug, Clone)]
enum FetchState {
    Running(DownloadProgress),
    Done(Result<store::Entry, CacheError>),
    /// Every waiter left; the download stopped (its `.part` is kept). Waiters
    /// that arrived meanwhile start over.
    Abandoned,
}

struct Inflight {
    rx: watch::Receiver<FetchState>,
    cancel: CancellationToken,
    waiters: usize,
}

#[derive(Default)]
struct State {
    inflight: HashMap<String, Inflight>,
    /// Digest -> number of leases (holders and waiters).
    in_use: HashMap<String, usize>,
}

pub(crate) struct Inner {
    cfg: CacheConfig,
    client: reqwest::Client,
    state: Mutex<State>,
    /// The download jobs (one per image being fetched): owned here, so a
    /// shutdown can wait for them ([`BfbCache::tasks`]).
    tasks: tokio_util::task::TaskTracker,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// True when the digest is leased or being fetched (never evict it).
    fn busy(state: &State, digest: &str) -> bool {
        state.in_use.get(digest).is_some_and(|n| *n > 0) || state.inflight.contains_key(digest)
    }
}

#[derive(Debug)]
struct Lease {
    inner: Arc<Inner>,
    digest: String,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BfbCache").field("dir", &self.cfg.dir).finish()
    }
}

impl Lease {
    fn take(inner: &Arc<Inner>, state: &mut State, digest: &str) -> Lease {
        *state.in_use.entry(digest.to_string()).or_default() += 1;
        Lease {
            inner: inner.clone(),
            digest: digest.to_string(),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        if let Some(n) = state.in_use.get_mut(&self.digest) {
            *n -= 1;
            if *n == 0 {
                state.in_use.remove(&self.digest);
            }
        }
    }
}

/// Leaves an in-flight download; the last waiter to leave before it is done stops it.
struct WaiterGuard<'a> {
    inner: &'a Inner,
    digest: &'a str,
    armed: bool,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut state = self.inner.lock();
        if let Some(entry) = state.inflight.get_mut(self.digest) {
            entry.waiters -= 1;
            if entry.waiters == 0 {
                entry.cancel.cancel();
            }
        }
    }
}

/// The BFB cache. Cheap to share behind an `Arc`.
#[derive(Debug, Clone)]
pub struct BfbCache {
    inner: Arc<Inner>,
}

impl BfbCache {
    /// The download jobs in flight. A job ends once nobody waits for its
    /// image any more (every fetch cancelled or dropped), so after the
    /// commands have stopped, close this and wait for it to drain.
    pub fn tasks(&self) -> &tokio_util::task::TaskTracker {
        &self.inner.tasks
    }

    pub fn new(cfg: CacheConfig) -> Result<BfbCache, CacheError> {
        BfbCache::new_in(cfg, tokio_util::task::TaskTracker::new())
    }

    /// [`BfbCache::new`] with its download jobs in `tasks` (the daemon's).
    pub fn new_in(cfg: CacheConfig, tasks: tokio_util::task::TaskTracker) -> Result<BfbCache, CacheError> {
        let client = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .build()
            .map_err(|e| CacheError::Client {
                reason: e.to_string(),
            })?;
        Ok(BfbCache {
            inner: Arc::new(Inner {
                cfg,
                client,
                state: Mutex::default(),
                tasks,
            }),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.inner.cfg.dir
    }

    /// Where the verified entry for `sha256` lives (whether or not it exists).
    pub fn entry_path(&self, sha256: &str) -> PathBuf {
        store::final_path(&self.inner.cfg.dir, sha256)
    }

    /// Make `bfb` available locally, verified; see [`BfbCache::fetch_with_progress`].
    pub async fn fetch(&self, bfb: &BfbRef, cancel: &CancellationToken) -> Result<CachedBfb, CacheError> {
        self.fetch_with_progress(bfb, cancel, &|_| {}).await
    }

    /// Make `bfb` available locally: a cache hit (size re-checked) or one
    /// shared download, verified by sha256 and BFB structure. `progress` is
    /// called as bytes arrive (also when joining another caller's download).
    pub async fn fetch_with_progress(
        &self,
        bfb: &BfbRef,
        cancel: &CancellationToken,
        progress: &(dyn Fn(DownloadProgress) + Send + Sync),
    ) -> Result<CachedBfb, CacheError> {
        let url = redact_url(&bfb.url);
        let digest = normalize_digest(&bfb.sha256).ok_or_else(|| CacheError::InvalidDigest {
            url: url.clone(),
            sha256: bfb.sha256.clone(),
        })?;
        let source = download::Source::parse(&bfb.url, &url)?;
        loop {
            let (lease, mut rx) = {
                let mut state = self.inner.lock();
                let lease = Lease::take(&self.inner, &mut state, &digest);
                let rx = match state.inflight.get_mut(&digest) {
                    Some(entry) => {
                        entry.waiters += 1;
                        entry.rx.clone()
                    }
                    None => {
                        let (tx, rx) = watch::channel(FetchState::Running(DownloadProgress {
                            done: 0,
                            total: (bfb.size_bytes > 0).then_some(bfb.size_bytes),
                        }));
                        let task_cancel = CancellationToken::new();
                        state.inflight.insert(
                            digest.clone(),
                            Inflight {
                                rx: rx.clone(),
                                cancel: task_cancel.clone(),
                                waiters: 1,
                            },
                        );
                        let job = download::Job {
                            inner: self.inner.clone(),
                            source: source.clone(),
                            url: url.clone(),
                            digest: digest.clone(),
                            size: bfb.size_bytes,
                            cancel: task_cancel,
                            tx,
                        };
                        let span = tracing::info_span!("bfb_fetch", url = %url, sha256 = %digest);
                        self.inner.tasks.spawn(job.run().instrument(span));
                        rx
                    }
                };
                (lease, rx)
            };
            let mut guard = WaiterGuard {
                inner: &self.inner,
                digest: &digest,
                armed: true,
            };
            let outcome = loop {
                let current = rx.borrow_and_update().clone();
                match current {
                    FetchState::Running(p) => progress(p),
                    FetchState::Done(res) => break Some(res),
                    FetchState::Abandoned => break None,
                }
                tokio::select! {
                    () = cancel.cancelled() => return Err(CacheError::Cancelled { url }),
                    changed = rx.changed() => {
                        if changed.is_err() {
                            // The task ended without a final state (it panicked).
                            return Err(CacheError::Task { url, detail: "download task ended".into() });
                        }
                    }
                }
            };
            guard.armed = false;
            drop(guard);
            match outcome {
                Some(Ok(entry)) => {
                    return Ok(CachedBfb {
                        path: entry.path,
                        sha256: digest.clone(),
                        size: entry.size,
                        _lease: lease,
                    });
                }
                Some(Err(e)) => return Err(e),
                None if cancel.is_cancelled() => return Err(CacheError::Cancelled { url }),
                None => continue,
            }
        }
    }
}

/// Lower-case a 64-hex-digit sha256; None if it is not one.
pub fn normalize_digest(sha256: &str) -> Option<String> {
    let s = sha256.trim();
    let s = s.strip_prefix("sha256:").unwrap_or(s);
    (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| s.to_ascii_lowercase())
}

/// The URL without credentials or query string, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let had_query = u.query().is_some();
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            let mut s = u.to_string();
            if had_query {
                s.push_str("?…");
            }
            s
        }
        Err(_) => url.split(['?', '#']).next().unwrap_or_default().to_string(),
    }
}

#[cfg(test)]
mod tests;
