//! rshim devices: discovery under a re-rootable dev root and the `misc`
//! status/command file.
//!
//! The production path is plain file I/O on `<dev_root>/rshim<N>/{boot,misc}`
//! (see `docs/rshim.md`); blocking calls run in `spawn_blocking`. The
//! [`MiscDevice`] trait exists so the log follower can be driven by a fake in
//! tests; [`MiscFile`] is the real implementation.

mod discover;
mod misc;
pub mod testing;
mod watch;

use std::io;
use std::path::{Path, PathBuf};

pub use discover::{
    discover, discover_blocking, discover_blocking_except, discover_except, pci_from_dev_name, pf_address,
    usb_path_from_dev_name,
};
pub use misc::{LogKind, MiscClient, MiscDevice, MiscFile, MiscSnapshot, classify_log_line};
pub use watch::{RshimSet, RshimWatchConfig, watch, watch_with};

/// Errors talking to an rshim device. Every variant names the device.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RshimError {
    #[error("invalid rshim name {name:?}: expected rshim<N>")]
    InvalidName { name: String },
    #[error("{rshim}: no such device: {path}")]
    NoDevice { rshim: String, path: PathBuf },
    #[error("{rshim}: device busy ({path}): {reason}")]
    Busy {
        rshim: String,
        path: PathBuf,
        reason: String,
    },
    #[error("{rshim}: reading {path}: {source}")]
    Read {
        rshim: String,
        path: PathBuf,
        source: std::sync::Arc<io::Error>,
    },
    #[error("{rshim}: misc command `{command}` rejected ({path}): {reason}")]
    Command {
        rshim: String,
        path: PathBuf,
        command: String,
        reason: String,
    },
    #[error("{rshim}: invalid misc command `{command}`: {why}")]
    InvalidCommand {
        rshim: String,
        command: String,
        why: &'static str,
    },
    #[error("{rshim}: blocking I/O task failed: {detail}")]
    Task { rshim: String, detail: String },
}

/// Paths of one rshim device under a dev root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RshimPaths {
    pub name: String,
    pub dir: PathBuf,
    pub boot: PathBuf,
    pub misc: PathBuf,
}

impl RshimPaths {
    /// Paths of `<dev_root>/<name>`; `name` must be `rshim<N>` (no path tricks).
    pub fn new(dev_root: &Path, name: &str) -> Result<RshimPaths, RshimError> {
        if !is_rshim_name(name) {
            return Err(RshimError::InvalidName {
                name: name.to_string(),
            });
        }
        let dir = dev_root.join(name);
        Ok(RshimPaths {
            name: name.to_string(),
            boot: dir.join("boot"),
            misc: dir.join("misc"),
            dir,
        })
    }
}

/// True for `rshim0`, `rshim12`, ...
pub fn is_rshim_name(name: &str) -> bool {
    name.strip_prefix("rshim")
        .is_some_and(|n| !n.is_empty() && n.len() <= 6 && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The number in `rshim<N>`, for sorting.
pub(crate) fn rshim_index(name: &str) -> Option<u32> {
    name.strip_prefix("rshim").and_then(|n| n.parse().ok())
}

/// Human text for an errno on an rshim file, following the rshim driver's use of them.
pub(crate) fn describe_errno(err: &io::Error) -> Option<&'static str> {
    match err.raw_os_error()? {
        libc::EBUSY => Some("EBUSY: another writer or the BMC holds the device"),
        libc::EINVAL => Some("EINVAL: unknown key or invalid value (or device in drop mode)"),
        libc::EPERM => Some("EPERM: device locked"),
        libc::EACCES => Some("EACCES: permission denied"),
        libc::ETIMEDOUT => Some("ETIMEDOUT: the device made no progress"),
        libc::ENODEV | libc::ENXIO => Some("ENODEV: device went away"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rshim_names() {
        for (name, ok) in [
            ("rshim0", true),
            ("rshim17", true),
            ("rshim", false),
            ("rshimx", false),
            ("rshim0/../x", false),
            ("../rshim0", false),
            ("misc", false),
            ("rshim-1", false),
        ] {
            assert_eq!(is_rshim_name(name), ok, "{name}");
        }
        assert!(matches!(
            RshimPaths::new(Path::new("/dev"), "../etc"),
            Err(RshimError::InvalidName { .. })
        ));
        let p = RshimPaths::new(Path::new("/x"), "rshim3").unwrap();
        assert_eq!(p.boot, Path::new("/x/rshim3/boot"));
        assert_eq!(p.misc, Path::new("/x/rshim3/misc"));
        assert_eq!(rshim_index("rshim12"), Some(12));
    }
}
