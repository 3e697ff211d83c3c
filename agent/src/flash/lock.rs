//! One flash per rshim across processes: an exclusive `flock(2)` on
//! `<run_dir>/<rshim>.flash.lock`, taken before the pre-flight checks and held
//! until the verdict (and until the writer thread has closed `boot`).
//!
//! The daemon and every `hostplane-agent flash` / `bfb-install` process take
//! the same lock, so a second flash of one DPU is refused at once, naming the
//! holder: its pid and what it is flashing, which the holder writes into the
//! lock file once it holds the lock. The kernel drops the lock when the
//! holder's file is closed, including when the process dies, so a crash
//! never leaves a stale lock behind (the file itself stays; it is only a
//! name to lock).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Why the lock was not taken.
#[derive(Debug)]
pub(crate) enum LockError {
    /// Another open file (another process, or this one) holds it; `holder`
    /// is what that holder wrote, empty if it has not written yet.
    Held {
        path: PathBuf,
        holder: String,
    },
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A held flash lock; released (and its description cleared) on drop.
#[derive(Debug)]
pub(crate) struct FlashLock {
    file: File,
    path: PathBuf,
}

impl FlashLock {
    /// The lock file of `rshim` under `run_dir`.
    pub fn path(run_dir: &Path, rshim: &str) -> PathBuf {
        run_dir.join(format!("{rshim}.flash.lock"))
    }

    /// Take the lock of `rshim` without waiting, then record `what` (with
    /// this process's pid) for whoever is refused next. Blocking: call from
    /// a blocking thread.
    pub fn acquire(run_dir: &Path, rshim: &str, what: &str) -> Result<FlashLock, LockError> {
        let path = FlashLock::path(run_dir, rshim);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(run_dir)
            .map_err(|source| LockError::Io {
                path: run_dir.to_path_buf(),
                source,
            })?;
        // No truncation at open: the holder's description must survive
        // until we know we hold the lock.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(LockError::Held {
                    path,
                    holder: holder.trim().to_string(),
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        let line = format!("pid {} flashing {what}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(line.as_bytes()))
            .map_err(io)?;
        Ok(FlashLock { file, path })
    }
}

impl Drop for FlashLock {
    fn drop(&mut self) {
        // Clear the description first so that nobody reads a stale holder;
        // closing the file then releases the lock.
        if let Err(e) = self.file.set_len(0) {
            tracing::debug!(path = %self.path.display(), error = %e, "clearing the flash lock file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_naming_the_first_and_the_lock_frees_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run/hostplane");
        let a = FlashLock::acquire(&run, "rshim0", "/img/a.bfb").unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(FlashLock::path(&run, "rshim0"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o644);
        match FlashLock::acquire(&run, "rshim0", "/img/b.bfb") {
            Err(LockError::Held { holder, path }) => {
                assert_eq!(holder, format!("pid {} flashing /img/a.bfb", std::process::id()));
                assert_eq!(path, run.join("rshim0.flash.lock"));
            }
            other => panic!("{other:?}"),
        }
        // Another rshim is independent.
        let c = FlashLock::acquire(&run, "rshim1", "/img/c.bfb").unwrap();
        drop(a);
        assert_eq!(
            std::fs::read_to_string(run.join("rshim0.flash.lock")).unwrap(),
            ""
        );
        let b = FlashLock::acquire(&run, "rshim0", "/img/b.bfb").unwrap();
        assert!(
            std::fs::read_to_string(run.join("rshim0.flash.lock"))
                .unwrap()
                .ends_with("flashing /img/b.bfb\n")
        );
        drop((b, c));
    }

    #[test]
    fn an_unusable_run_dir_is_an_io_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"").unwrap();
        match FlashLock::acquire(&file.join("sub"), "rshim0", "x") {
            Err(LockError::Io { path, .. }) => assert_eq!(path, file.join("sub")),
            other => panic!("{other:?}"),
        }
    }
}
