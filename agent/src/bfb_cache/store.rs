//! Files of the cache directory: `<sha256>.bfb` (complete, verified, written
//! only by rename) and `<sha256>.part` (a download in progress). All
//! functions here block; callers run them in `spawn_blocking`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::{CacheError, Inner};

/// A complete, verified entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub path: PathBuf,
    pub size: u64,
}

pub(crate) fn final_path(dir: &Path, digest: &str) -> PathBuf {
    dir.join(format!("{digest}.bfb"))
}

pub(crate) fn part_path(dir: &Path, digest: &str) -> PathBuf {
    dir.join(format!("{digest}.part"))
}

fn io_err(url: &str, path: &Path, source: std::io::Error) -> CacheError {
    CacheError::Io {
        url: url.to_string(),
        path: path.to_path_buf(),
        source: Arc::new(source),
    }
}

/// A cache hit: the entry exists and has the expected size (when one is
/// given). A wrong-sized entry is removed. The entry's mtime is bumped: it is
/// the LRU clock.
pub(crate) fn lookup(dir: &Path, digest: &str, size: u64, url: &str) -> Result<Option<Entry>, CacheError> {
    let path = final_path(dir, digest);
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(url, &path, e)),
    };
    if size > 0 && meta.len() != size {
        tracing::warn!(path = %path.display(), expected = size, actual = meta.len(), "cache entry has the wrong size; removing it");
        std::fs::remove_file(&path).map_err(|e| io_err(url, &path, e))?;
        return Ok(None);
    }
    touch(&path);
    Ok(Some(Entry {
        path,
        size: meta.len(),
    }))
}

fn touch(path: &Path) {
    let res = std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(SystemTime::now()));
    if let Err(e) = res {
        tracing::debug!(path = %path.display(), error = %e, "cannot bump cache entry mtime");
    }
}

/// Check a complete `.part` (already matched against the digest) for BFB
/// structure, then publish it under its digest name by an atomic rename. A
/// corrupt image is deleted.
pub(crate) fn publish(dir: &Path, digest: &str, url: &str) -> Result<Entry, CacheError> {
    let part = part_path(dir, digest);
    match hostplane_bfb::verify_file(&part) {
        Ok(summary) => {
            tracing::debug!(
                images = summary.images.len(),
                bytes = summary.bfb_bytes,
                "BFB structure verified"
            );
        }
        Err(hostplane_bfb::VerifyFileError::Format { source, .. }) => {
            let _ = std::fs::remove_file(&part);
            return Err(CacheError::Corrupt {
                url: url.to_string(),
                source,
            });
        }
        Err(hostplane_bfb::VerifyFileError::Io { source, .. }) => return Err(io_err(url, &part, source)),
    }
    let path = final_path(dir, digest);
    std::fs::rename(&part, &path).map_err(|e| io_err(url, &path, e))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    let size = std::fs::metadata(&path).map_err(|e| io_err(url, &path, e))?.len();
    Ok(Entry { path, size })
}

/// Remove least recently used complete entries until the total is within
/// `max_bytes`, skipping entries that are leased or being fetched.
pub(crate) fn evict(inner: &Inner) {
    let dir = &inner.cfg.dir;
    let Ok(read) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<(SystemTime, u64, String, PathBuf)> = read
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let digest = name.strip_suffix(".bfb")?.to_string();
            let meta = e.metadata().ok()?;
            meta.is_file().then(|| {
                (
                    meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    meta.len(),
                    digest,
                    e.path(),
                )
            })
        })
        .collect();
    let mut total: u64 = entries.iter().map(|e| e.1).sum();
    if total <= inner.cfg.max_bytes {
        return;
    }
    entries.sort();
    for (_, len, digest, path) in entries {
        if total <= inner.cfg.max_bytes {
            break;
        }
        // Decide and unlink under the lock, so no fetch can lease it meanwhile.
        let state = inner.lock();
        if Inner::busy(&state, &digest) {
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {
                total -= len;
                tracing::info!(path = %path.display(), bytes = len, "evicted cache entry");
            }
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot evict cache entry"),
        }
        drop(state);
    }
    if total > inner.cfg.max_bytes {
        tracing::warn!(
            total,
            max = inner.cfg.max_bytes,
            "cache over its bound: remaining entries are in use"
        );
    }
}
