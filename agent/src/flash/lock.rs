//! One flash per rshim across processes: an exclusive `flock(2)` on a lock
//! file under the run dir named after the device's path, escaped as systemd
//! escapes paths (`/dev/rshim0` → `<run_dir>/dev-rshim0.flash.lock`), taken
//! before the pre-flight checks and held until the verdict (and until the
//! writer thread has closed `boot`). Naming it by the path keeps devices under
//! different roots (simulators in tests) apart, while every process flashing
//! `/dev/rshim0` meets on the same file.
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
    /// The lock file of the device directory `device` (`/dev/rshim0`)
    /// under `run_dir`: the path as given, escaped (see the module docs).
    pub fn path(run_dir: &Path, device: &Path) -> PathBuf {
        run_dir.join(format!("{}.flash.lock", escape_path(device)))
    }

    /// Take the lock of the device directory `device` without waiting
    /// (its canonical path, when it exists), then record `what` (with this
    /// process's pid) for whoever is refused next. Blocking: call from a
    /// blocking thread.
    pub fn acquire(run_dir: &Path, device: &Path, what: &str) -> Result<FlashLock, LockError> {
        let device = std::fs::canonicalize(device).unwrap_or_else(|_| device.to_path_buf());
        let path = FlashLock::path(run_dir, &device);
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

/// Who holds the flash lock of `device`, without taking it (taking it, even
/// for an instant, could refuse a flash that starts at that moment): the
/// kernel's table of `flock` locks, `/proc/locks`, names the lock file's
/// inode and the holder's pid. Returns what the holder wrote (or its pid), or
/// `None` when nobody holds it. Blocking.
pub(crate) fn holder(run_dir: &Path, device: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let device = std::fs::canonicalize(device).unwrap_or_else(|_| device.to_path_buf());
    let path = FlashLock::path(run_dir, &device);
    let meta = std::fs::metadata(&path).ok()?;
    let id = format!(
        "{:02x}:{:02x}:{}",
        nix::sys::stat::major(meta.dev()),
        nix::sys::stat::minor(meta.dev()),
        meta.ino()
    );
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    // `1: FLOCK  ADVISORY  WRITE 4242 fe:00:5431652 0 EOF`
    let pid = locks.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&"FLOCK") && f.get(5) == Some(&id.as_str()))
            .then(|| f.get(4).copied().unwrap_or("?").to_string())
    })?;
    let said = std::fs::read_to_string(&path).unwrap_or_default();
    Some(match said.trim() {
        "" => format!("pid {pid}"),
        s => s.to_string(),
    })
}

/// `systemd-escape --path`: `/` between components becomes `-`; ASCII
/// letters, digits, `_`, `:` and `.` (not leading) stay; every other byte is
/// `\xNN`.
pub(crate) fn escape_path(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    let trimmed: Vec<&[u8]> = bytes.split(|&b| b == b'/').filter(|c| !c.is_empty()).collect();
    let mut out = String::new();
    for (i, comp) in trimmed.iter().enumerate() {
        if i > 0 {
            out.push('-');
        }
        for (j, &b) in comp.iter().enumerate() {
            let keep =
                b.is_ascii_alphanumeric() || b == b'_' || b == b':' || (b == b'.' && !(i == 0 && j == 0));
            if keep {
                out.push(b as char);
            } else {
                out.push_str(&format!("\\x{b:02x}"));
            }
        }
    }
    if out.is_empty() { "-".to_string() } else { out }
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
        let dev = dir.path().join("dev");
        let (r0, r1) = (dev.join("rshim0"), dev.join("rshim1"));
        std::fs::create_dir_all(&r0).unwrap();
        let a = FlashLock::acquire(&run, &r0, "/img/a.bfb").unwrap();
        let file = FlashLock::path(&run, &r0);
        assert_eq!(file.parent(), Some(run.as_path()));
        assert!(
            file.to_str().unwrap().ends_with("-dev-rshim0.flash.lock"),
            "{file:?}"
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o644);
        // The same device by another spelling of its path: the same lock.
        match FlashLock::acquire(&run, &dev.join("./rshim0/"), "/img/b.bfb") {
            Err(LockError::Held { holder, path }) => {
                assert_eq!(holder, format!("pid {} flashing /img/a.bfb", std::process::id()));
                assert_eq!(path, file);
            }
            other => panic!("{other:?}"),
        }
        // Another rshim is independent.
        let c = FlashLock::acquire(&run, &r1, "/img/c.bfb").unwrap();
        drop(a);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "");
        let b = FlashLock::acquire(&run, &r0, "/img/b.bfb").unwrap();
        assert!(
            std::fs::read_to_string(&file)
                .unwrap()
                .ends_with("flashing /img/b.bfb\n")
        );
        drop((b, c));
    }

    #[test]
    fn the_holder_is_read_from_the_kernel_without_taking_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let (run, dev) = (dir.path().join("run"), dir.path().join("dev/rshim0"));
        std::fs::create_dir_all(&dev).unwrap();
        assert_eq!(holder(&run, &dev), None, "no lock file yet");
        let l = FlashLock::acquire(&run, &dev, "/img/a.bfb").unwrap();
        assert_eq!(
            holder(&run, &dev),
            Some(format!("pid {} flashing /img/a.bfb", std::process::id()))
        );
        drop(l);
        // A process that another test forks at this moment shares the open
        // file (and so the flock) until it execs: wait for that to pass.
        let released = (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            holder(&run, &dev).is_none()
        });
        assert!(released, "released");
        // A crashed holder's words stay in the file, but nobody holds it.
        std::fs::write(FlashLock::path(&run, &dev), "pid 1 flashing x\n").unwrap();
        assert_eq!(holder(&run, &dev), None);
    }

    #[test]
    fn paths_are_escaped_like_systemd_escape_path() {
        for (path, want) in [
            ("/dev/rshim0", "dev-rshim0"),
            ("/tmp/.tmpX1/dev//rshim3/", "tmp-.tmpX1-dev-rshim3"),
            ("/a-b/c d", "a\\x2db-c\\x20d"),
            ("/.hidden", "\\x2ehidden"),
            ("/", "-"),
        ] {
            assert_eq!(escape_path(Path::new(path)), want, "{path}");
        }
    }

    #[test]
    fn an_unusable_run_dir_is_an_io_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"").unwrap();
        match FlashLock::acquire(&file.join("sub"), Path::new("/dev/rshim0"), "x") {
            Err(LockError::Io { path, .. }) => assert_eq!(path, file.join("sub")),
            other => panic!("{other:?}"),
        }
    }
}
