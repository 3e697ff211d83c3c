//! One download into `<sha256>.part`: HTTP with Range resume, or a `file://`
//! copy. The sha256 is computed while writing (a resumed file's prefix is
//! re-hashed first), on a blocking thread that owns the file.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::store::{self, Entry};
use super::{CacheError, DownloadProgress, FetchState, Inner};

/// Report progress at most every this many bytes.
const PROGRESS_STEP: u64 = 1 << 20;
const IO_BUF: usize = 1 << 20;

#[derive(Debug, Clone)]
pub(crate) enum Source {
    Http(reqwest::Url),
    File(PathBuf),
}

impl Source {
    pub(crate) fn parse(raw: &str, shown: &str) -> Result<Source, CacheError> {
        let invalid = |reason: String| CacheError::InvalidUrl {
            url: shown.to_string(),
            reason,
        };
        let url = reqwest::Url::parse(raw).map_err(|e| invalid(e.to_string()))?;
        match url.scheme() {
            "http" | "https" => Ok(Source::Http(url)),
            "file" => url
                .to_file_path()
                .map(Source::File)
                .map_err(|()| invalid("file URL without a local absolute path".into())),
            other => Err(invalid(format!("scheme {other:?} (use http, https or file)"))),
        }
    }
}

/// The single-flight download task of one digest.
pub(crate) struct Job {
    pub inner: Arc<Inner>,
    pub source: Source,
    pub url: String,
    pub digest: String,
    pub size: u64,
    pub cancel: CancellationToken,
    pub tx: watch::Sender<FetchState>,
}

impl Job {
    pub(crate) async fn run(self) {
        let result = self.fetch().await;
        match &result {
            Ok(entry) => tracing::info!(path = %entry.path.display(), bytes = entry.size, "bfb cached"),
            Err(CacheError::Cancelled { .. }) => tracing::info!("download stopped: nobody waits for it"),
            Err(e) => tracing::warn!(error = %e, "bfb fetch failed"),
        }
        let final_state = match result {
            Err(CacheError::Cancelled { .. }) if self.cancel.is_cancelled() => FetchState::Abandoned,
            other => FetchState::Done(other),
        };
        let mut state = self.inner.lock();
        state.inflight.remove(&self.digest);
        self.tx.send_replace(final_state);
    }

    fn io_err(&self, path: &Path, source: std::io::Error) -> CacheError {
        CacheError::Io {
            url: self.url.clone(),
            path: path.to_path_buf(),
            source: Arc::new(source),
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, CacheError> + Send + 'static,
    ) -> Result<T, CacheError> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| CacheError::Task {
                url: self.url.clone(),
                detail: e.to_string(),
            })?
    }

    async fn fetch(&self) -> Result<Entry, CacheError> {
        let dir = self.inner.cfg.dir.clone();
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| CacheError::CacheDir {
                path: dir.clone(),
                source: Arc::new(e),
            })?;
        let (d, digest, size, url) = (dir.clone(), self.digest.clone(), self.size, self.url.clone());
        if let Some(hit) = self
            .blocking(move || store::lookup(&d, &digest, size, &url))
            .await?
        {
            tracing::debug!(path = %hit.path.display(), "cache hit");
            return Ok(hit);
        }
        let part_path = store::part_path(&dir, &self.digest);
        let (actual, len) = match &self.source {
            Source::Http(url) => self.download(url, &part_path).await?,
            Source::File(src) => self.copy(src.clone(), part_path.clone()).await?,
        };
        if self.size > 0 && len != self.size {
            let _ = tokio::fs::remove_file(&part_path).await;
            return Err(CacheError::SizeMismatch {
                url: self.url.clone(),
                expected: self.size,
                actual: len,
            });
        }
        if actual != self.digest {
            let _ = tokio::fs::remove_file(&part_path).await;
            return Err(CacheError::DigestMismatch {
                url: self.url.clone(),
                expected: self.digest.clone(),
                actual,
            });
        }
        let (d, digest, url) = (dir.clone(), self.digest.clone(), self.url.clone());
        let entry = self.blocking(move || store::publish(&d, &digest, &url)).await?;
        let inner = self.inner.clone();
        self.blocking(move || {
            store::evict(&inner);
            Ok(())
        })
        .await?;
        Ok(entry)
    }

    fn report(&self, done: u64, total: Option<u64>) {
        self.tx
            .send_replace(FetchState::Running(DownloadProgress { done, total }));
    }

    /// Copy a local file (lab use), hashing as it goes.
    async fn copy(&self, src: PathBuf, part: PathBuf) -> Result<(String, u64), CacheError> {
        let url = self.url.clone();
        let tx = self.tx.clone();
        let cancel = self.cancel.clone();
        let total = (self.size > 0).then_some(self.size);
        self.blocking(move || {
            let io = |path: &Path, e| CacheError::Io {
                url: url.clone(),
                path: path.to_path_buf(),
                source: Arc::new(e),
            };
            let mut input = std::fs::File::open(&src).map_err(|e| io(&src, e))?;
            let mut out = PartFile::open(&part).map_err(|e| io(&part, e))?;
            out.reset().map_err(|e| io(&part, e))?;
            let mut buf = vec![0u8; IO_BUF];
            loop {
                if cancel.is_cancelled() {
                    return Err(CacheError::Cancelled { url: url.clone() });
                }
                let n = input.read(&mut buf).map_err(|e| io(&src, e))?;
                if n == 0 {
                    break;
                }
                out.append(&buf[..n]).map_err(|e| io(&part, e))?;
                tx.send_replace(FetchState::Running(DownloadProgress { done: out.len, total }));
            }
            out.finish().map_err(|e| io(&part, e))
        })
        .await
    }

    /// HTTP download with resume across attempts.
    async fn download(&self, url: &reqwest::Url, part_path: &Path) -> Result<(String, u64), CacheError> {
        let p = part_path.to_path_buf();
        let mut part = self
            .blocking(move || PartFile::open(&p).map_err(|e| io_err_static(&p, e)))
            .await
            .map_err(|e| self.with_url(e))?;
        if part.len > 0 {
            tracing::info!(bytes = part.len, "resuming partial download");
        }
        let cfg = &self.inner.cfg;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            if self.size > 0 && part.len == self.size {
                break;
            }
            if self.size > 0 && part.len > self.size {
                part = self.reset(part).await?;
            }
            let (back, res) = self.attempt(url, part).await;
            part = back;
            match res {
                Ok(()) => break,
                Err(e) if e.retryable() && attempt < cfg.max_attempts.max(1) => {
                    let wait = backoff(cfg.retry_backoff, attempt);
                    tracing::warn!(error = %e, attempt, have = part.len, retry_in = ?wait, "download interrupted; will resume");
                    tokio::select! {
                        () = self.cancel.cancelled() => return Err(CacheError::Cancelled { url: self.url.clone() }),
                        () = tokio::time::sleep(wait) => {}
                    }
                }
                Err(e) => {
                    if matches!(e, CacheError::SizeMismatch { .. }) {
                        let _ = tokio::fs::remove_file(part_path).await;
                    }
                    return Err(e);
                }
            }
        }
        let p = part_path.to_path_buf();
        self.blocking(move || part.finish().map_err(|e| io_err_static(&p, e)))
            .await
            .map_err(|e| self.with_url(e))
    }

    fn with_url(&self, e: CacheError) -> CacheError {
        match e {
            CacheError::Io { path, source, .. } => CacheError::Io {
                url: self.url.clone(),
                path,
                source,
            },
            other => other,
        }
    }

    async fn reset(&self, mut part: PartFile) -> Result<PartFile, CacheError> {
        let path = part.path.clone();
        self.blocking(move || part.reset().map(|()| part).map_err(|e| io_err_static(&path, e)))
            .await
            .map_err(|e| self.with_url(e))
    }

    /// One request. Always hands the part file back, with what was written.
    async fn attempt(&self, url: &reqwest::Url, mut part: PartFile) -> (PartFile, Result<(), CacheError>) {
        let shown = || self.url.clone();
        let mut req = self.inner.client.get(url.clone());
        let offset = part.len;
        if offset > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={offset}-"));
        }
        let stall = self.inner.cfg.stall_timeout;
        let resp = tokio::select! {
            () = self.cancel.cancelled() => return (part, Err(CacheError::Cancelled { url: shown() })),
            r = tokio::time::timeout(stall, req.send()) => r,
        };
        let mut resp = match resp {
            Err(_) => {
                return (
                    part,
                    Err(CacheError::Stalled {
                        url: shown(),
                        after: stall,
                    }),
                );
            }
            Ok(Err(e)) => {
                return (
                    part,
                    Err(CacheError::Http {
                        url: shown(),
                        source: Arc::new(e),
                    }),
                );
            }
            Ok(Ok(r)) => r,
        };
        let status = resp.status().as_u16();
        match status {
            206 => {
                let start = content_range_start(&resp);
                if start != Some(offset) {
                    let part = match self.reset(part).await {
                        Ok(p) => p,
                        Err(e) => return (PartFile::detached(), Err(e)),
                    };
                    let reason =
                        format!("asked for bytes from {offset}, server sent range starting at {start:?}");
                    return (part, Err(CacheError::Protocol { url: shown(), reason }));
                }
            }
            200 => {
                if offset > 0 {
                    tracing::info!(
                        offset,
                        "server ignored the Range request (200); restarting from zero"
                    );
                    part = match self.reset(part).await {
                        Ok(p) => p,
                        Err(e) => return (PartFile::detached(), Err(e)),
                    };
                }
            }
            416 if self.size > 0 && offset == self.size => return (part, Ok(())),
            416 => {
                let part = match self.reset(part).await {
                    Ok(p) => p,
                    Err(e) => return (PartFile::detached(), Err(e)),
                };
                let reason = format!("server refused the range from {offset} (416); restarting");
                return (part, Err(CacheError::Protocol { url: shown(), reason }));
            }
            _ => return (part, Err(CacheError::Status { url: shown(), status })),
        }
        let base = part.len;
        let total = if self.size > 0 {
            Some(self.size)
        } else {
            resp.content_length().map(|n| n + base)
        };
        let (chunk_tx, mut chunk_rx) = mpsc::channel::<bytes::Bytes>(64);
        let writer = tokio::task::spawn_blocking(move || {
            while let Some(chunk) = chunk_rx.blocking_recv() {
                if let Err(e) = part.append(&chunk) {
                    return (part, Err(e));
                }
            }
            (part, Ok(()))
        });
        let mut received = base;
        let mut reported = base;
        let pumped: Result<(), CacheError> = loop {
            let next = tokio::select! {
                () = self.cancel.cancelled() => break Err(CacheError::Cancelled { url: shown() }),
                r = tokio::time::timeout(stall, resp.chunk()) => r,
            };
            match next {
                Err(_) => {
                    break Err(CacheError::Stalled {
                        url: shown(),
                        after: stall,
                    });
                }
                Ok(Err(e)) => {
                    break Err(CacheError::Http {
                        url: shown(),
                        source: Arc::new(e),
                    });
                }
                Ok(Ok(None)) => break Ok(()),
                Ok(Ok(Some(chunk))) => {
                    received += chunk.len() as u64;
                    if self.size > 0 && received > self.size {
                        break Err(CacheError::SizeMismatch {
                            url: shown(),
                            expected: self.size,
                            actual: received,
                        });
                    }
                    if chunk_tx.send(chunk).await.is_err() {
                        break Ok(()); // the writer failed; its error is reported below
                    }
                    if received - reported >= PROGRESS_STEP {
                        reported = received;
                        self.report(received, total);
                    }
                }
            }
        };
        drop(chunk_tx);
        let (part, written) = match writer.await {
            Ok(x) => x,
            Err(e) => {
                let err = CacheError::Task {
                    url: shown(),
                    detail: e.to_string(),
                };
                return (PartFile::detached(), Err(err));
            }
        };
        self.report(part.len, total);
        if let Err(e) = written {
            let err = self.io_err(&part.path, e);
            return (part, Err(err));
        }
        if let Err(e) = pumped {
            return (part, Err(e));
        }
        if self.size > 0 && part.len < self.size {
            let err = CacheError::Truncated {
                url: shown(),
                got: part.len,
                expected: self.size,
            };
            return (part, Err(err));
        }
        (part, Ok(()))
    }
}

fn io_err_static(path: &Path, source: std::io::Error) -> CacheError {
    CacheError::Io {
        url: String::new(),
        path: path.to_path_buf(),
        source: Arc::new(source),
    }
}

fn backoff(base: Duration, attempt: u32) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(5);
    (base * factor).min(Duration::from_secs(30))
}

/// `Content-Range: bytes <start>-<end>/<total>` -> start.
fn content_range_start(resp: &reqwest::Response) -> Option<u64> {
    let v = resp
        .headers()
        .get(reqwest::header::CONTENT_RANGE)?
        .to_str()
        .ok()?;
    let range = v.trim().strip_prefix("bytes")?.trim_start();
    range.split('-').next()?.trim().parse().ok()
}

/// The `.part` file, owned by one thread at a time, with the running hash.
pub(crate) struct PartFile {
    path: PathBuf,
    file: Option<std::io::BufWriter<std::fs::File>>,
    hasher: Sha256,
    pub(crate) len: u64,
}

impl PartFile {
    /// Open (or create) and hash what is already there, to resume after it.
    fn open(path: &Path) -> std::io::Result<PartFile> {
        let mut f = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; IO_BUF];
        let mut len = 0u64;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            len += n as u64;
        }
        f.seek(std::io::SeekFrom::Start(len))?;
        Ok(PartFile {
            path: path.to_path_buf(),
            file: Some(std::io::BufWriter::with_capacity(IO_BUF, f)),
            hasher,
            len,
        })
    }

    /// A placeholder after an unrecoverable error (every write fails).
    fn detached() -> PartFile {
        PartFile {
            path: PathBuf::new(),
            file: None,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    fn file(&mut self) -> std::io::Result<&mut std::io::BufWriter<std::fs::File>> {
        self.file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("partial file lost after an earlier error"))
    }

    fn reset(&mut self) -> std::io::Result<()> {
        let f = self.file()?;
        f.flush()?;
        f.get_ref().set_len(0)?;
        f.seek(std::io::SeekFrom::Start(0))?;
        self.hasher = Sha256::new();
        self.len = 0;
        Ok(())
    }

    fn append(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.file()?.write_all(data)?;
        self.hasher.update(data);
        self.len += data.len() as u64;
        Ok(())
    }

    /// Flush and sync; the hex sha256 and length of the whole file.
    fn finish(mut self) -> std::io::Result<(String, u64)> {
        let f = self.file()?;
        f.flush()?;
        f.get_ref().sync_all()?;
        Ok((hex::encode(self.hasher.finalize()), self.len))
    }
}
