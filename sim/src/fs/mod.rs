//! The FUSE filesystem: `<root>/.control` and `<root>/rshim<N>/{boot,misc,console}`.
//!
//! DPUs come and go at run time ([`slots`]): a removed DPU's directory is
//! gone at once (the kernel is told), opening its files fails with ENOENT,
//! and a write on its `boot` handle still open fails with ENODEV.
//!
//! fuser runs one request thread. Handlers only take a DPU's lock briefly;
//! replies that must wait (the reset delay on opening `boot`, the `slow`
//! throttle) go to the [`delay::Delayer`], so other files stay responsive.

pub(crate) mod control;
mod delay;
pub(crate) mod slots;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fuser::consts::FOPEN_DIRECT_IO;
use fuser::{
    FileAttr, FileType, Filesystem, KernelConfig, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow,
};
use libc::{EACCES, EBADF, EINVAL, EISDIR, ENODEV, ENOENT, ENOTDIR, ETIMEDOUT};

use crate::config::Fault;
use crate::dpu::stream::BootStream;
use crate::dpu::{BootOpen, Dpu};
use slots::Slots;

/// Largest write the kernel may send in one request.
pub const MAX_WRITE: u32 = 1 << 20;

/// The rshim driver moves a boot write in buffers of this size
/// (`BOOT_BUF_SIZE`); it makes progress when one drains.
pub const BOOT_BUF_SIZE: usize = 16 * 1024;

const TTL: Duration = Duration::from_secs(1);
const ROOT: u64 = fuser::FUSE_ROOT_ID;
const CONTROL: u64 = 2;
const DPU_BASE: u64 = 16;
const CONTROL_NAME: &str = ".control";

/// The inode of DPU slot `d`'s directory.
pub(crate) fn dir_ino(d: usize) -> u64 {
    Node::Dir(d).ino()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    Root,
    Control,
    Dir(usize),
    Boot(usize),
    Misc(usize),
    Console(usize),
}

impl Node {
    fn ino(self) -> u64 {
        let dpu = |d: usize, k: u64| DPU_BASE + d as u64 * 4 + k;
        match self {
            Node::Root => ROOT,
            Node::Control => CONTROL,
            Node::Dir(d) => dpu(d, 0),
            Node::Boot(d) => dpu(d, 1),
            Node::Misc(d) => dpu(d, 2),
            Node::Console(d) => dpu(d, 3),
        }
    }

    /// The node of `ino`; `present` says whether slot `d` holds a DPU.
    fn from_ino(ino: u64, present: impl Fn(usize) -> bool) -> Option<Node> {
        match ino {
            ROOT => Some(Node::Root),
            CONTROL => Some(Node::Control),
            i if i >= DPU_BASE => {
                let d = ((i - DPU_BASE) / 4) as usize;
                if !present(d) {
                    return None;
                }
                Some(match (i - DPU_BASE) % 4 {
                    0 => Node::Dir(d),
                    1 => Node::Boot(d),
                    2 => Node::Misc(d),
                    _ => Node::Console(d),
                })
            }
            _ => None,
        }
    }
}

struct BootHandle {
    /// The DPU itself, not its slot: the slot may hold another DPU later.
    dpu: Arc<Dpu>,
    open: BootOpen,
    stream: BootStream,
    /// `slow` fault: when the link is free again.
    link_free_at: Option<Instant>,
}

enum Handle {
    /// misc, console or .control: a snapshot taken at open.
    Snapshot(Vec<u8>),
    Boot(Box<BootHandle>),
}

pub(crate) struct SimFs {
    dpus: Arc<Slots>,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
    delayer: delay::Delayer,
    uid: u32,
    gid: u32,
    started: SystemTime,
}

impl SimFs {
    pub fn new(dpus: Arc<Slots>, name: &str) -> std::io::Result<SimFs> {
        Ok(SimFs {
            dpus,
            handles: HashMap::new(),
            next_fh: 1,
            delayer: delay::Delayer::new(name)?,
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            started: SystemTime::now(),
        })
    }

    fn node(&self, ino: u64) -> Option<Node> {
        Node::from_ino(ino, |d| self.dpus.get(d).is_some())
    }

    /// The DPU of slot `d` (None once it was removed).
    fn dpu(&self, d: usize) -> Option<Arc<Dpu>> {
        self.dpus.get(d)
    }

    /// The inode generation of `node` (a DPU's files: its slot's).
    fn generation(&self, node: Node) -> u64 {
        match node {
            Node::Dir(d) | Node::Boot(d) | Node::Misc(d) | Node::Console(d) => self.dpus.generation(d),
            Node::Root | Node::Control => 0,
        }
    }

    fn attr(&self, node: Node) -> FileAttr {
        let (kind, perm, nlink) = match node {
            Node::Root => (FileType::Directory, 0o755, 2 + self.dpus.present().len() as u32),
            Node::Dir(_) => (FileType::Directory, 0o755, 2),
            Node::Control | Node::Misc(_) => (FileType::RegularFile, 0o644, 1),
            Node::Boot(_) => (FileType::RegularFile, 0o200, 1),
            Node::Console(_) => (FileType::RegularFile, 0o444, 1),
        };
        FileAttr {
            ino: node.ino(),
            size: 0,
            blocks: 0,
            atime: self.started,
            mtime: self.started,
            ctime: self.started,
            crtime: self.started,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: MAX_WRITE,
            flags: 0,
        }
    }

    fn children(&self, node: Node) -> Vec<(Node, String)> {
        match node {
            Node::Root => {
                let mut v = vec![(Node::Control, CONTROL_NAME.to_string())];
                v.extend(
                    self.dpus
                        .present()
                        .iter()
                        .map(|d| (Node::Dir(d.index), d.name.clone())),
                );
                v
            }
            Node::Dir(d) => vec![
                (Node::Boot(d), "boot".to_string()),
                (Node::Misc(d), "misc".to_string()),
                (Node::Console(d), "console".to_string()),
            ],
            _ => Vec::new(),
        }
    }

    fn new_fh(&mut self) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        fh
    }

    fn open_boot(&mut self, d: usize, reply: ReplyOpen) {
        let Some(dpu) = self.dpu(d) else {
            reply.error(ENOENT);
            return;
        };
        let fh = self.new_fh();
        let open = match dpu.open_boot(fh) {
            Ok(open) => open,
            Err(e) => {
                tracing::info!(rshim = %dpu.name, error = %e, "boot open refused");
                reply.error(e.errno());
                return;
            }
        };
        self.handles.insert(
            fh,
            Handle::Boot(Box::new(BootHandle {
                dpu: dpu.clone(),
                open,
                stream: BootStream::new(),
                link_free_at: None,
            })),
        );
        let delay = if open.reset {
            dpu.timings.reset
        } else {
            Duration::ZERO
        };
        self.delayer.after(delay, move || {
            dpu.reset_done(open.epoch);
            reply.opened(fh, FOPEN_DIRECT_IO);
        });
    }

    /// A write to `boot`. Under the `slow` fault the reply waits for the
    /// throttled link; and as the rshim driver does, a write that makes no
    /// progress for `BOOT_TIMEOUT` seconds (its first 16 KiB buffer cannot
    /// drain in that time) fails with ETIMEDOUT, taking none of its bytes.
    fn write_boot(&mut self, fh: u64, data: &[u8], reply: ReplyWrite) {
        let Some(Handle::Boot(h)) = self.handles.get_mut(&fh) else {
            reply.error(EBADF);
            return;
        };
        let dpu = &h.dpu;
        if dpu.is_removed() {
            tracing::info!(rshim = %dpu.name, "boot write to an unplugged DPU: ENODEV");
            reply.error(ENODEV);
            return;
        }
        let fault = dpu.fault();
        let n = data.len() as u32;
        let now = Instant::now();
        let mut reply_at = None;
        if let Fault::Slow(bps) = fault {
            let start = h.link_free_at.filter(|t| *t > now).unwrap_or(now);
            let bps = bps.max(1) as f64;
            let first_buffer = Duration::from_secs_f64(data.len().min(BOOT_BUF_SIZE) as f64 / bps);
            let boot_timeout = dpu.boot_timeout();
            if first_buffer > boot_timeout {
                let at = start + boot_timeout;
                h.link_free_at = Some(at);
                tracing::info!(rshim = %dpu.name, ?boot_timeout, "boot write made no progress: ETIMEDOUT");
                self.delayer.after(at - now, move || reply.error(ETIMEDOUT));
                return;
            }
            let done = start + Duration::from_secs_f64(data.len() as f64 / bps);
            h.link_free_at = Some(done);
            reply_at = Some(done);
        }
        let progress = h.stream.feed(data, fault == Fault::Corrupt);
        dpu.boot_progress(h.open.epoch, h.stream.bytes(), &progress);
        match reply_at {
            Some(done) => self.delayer.after(done - now, move || reply.written(n)),
            None => reply.written(n),
        }
    }
}

impl Filesystem for SimFs {
    fn init(&mut self, _req: &Request<'_>, config: &mut KernelConfig) -> Result<(), libc::c_int> {
        if let Err(nearest) = config.set_max_write(MAX_WRITE) {
            let _ = config.set_max_write(nearest);
        }
        tracing::debug!(max_write = MAX_WRITE, "FUSE session initialised");
        Ok(())
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let Some(parent) = self.node(parent) else {
            reply.error(ENOENT);
            return;
        };
        match self
            .children(parent)
            .into_iter()
            .find(|(_, n)| OsStr::new(n) == name)
        {
            Some((node, _)) => reply.entry(&TTL, &self.attr(node), self.generation(node)),
            None => reply.error(ENOENT),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.node(ino) {
            Some(node) => reply.attr(&TTL, &self.attr(node)),
            None => reply.error(ENOENT),
        }
    }

    /// Truncation (`>` in a shell) and the like: accepted and ignored, as a device would.
    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        match self.node(ino) {
            Some(node) => reply.attr(&TTL, &self.attr(node)),
            None => reply.error(ENOENT),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        let mode = flags & libc::O_ACCMODE;
        let writes = mode != libc::O_RDONLY;
        let reads = mode != libc::O_WRONLY;
        let snapshot = match self.node(ino) {
            None => return reply.error(ENOENT),
            Some(Node::Root | Node::Dir(_)) => return reply.error(EISDIR),
            Some(Node::Boot(d)) => {
                if reads {
                    return reply.error(EACCES);
                }
                return self.open_boot(d, reply);
            }
            Some(Node::Console(_)) if writes => return reply.error(EACCES),
            Some(Node::Console(d)) => match self.dpu(d) {
                Some(dpu) => dpu.console_snapshot(),
                None => return reply.error(ENOENT),
            },
            // A writer of misc does not consume the log.
            Some(Node::Misc(d)) if reads => match self.dpu(d) {
                Some(dpu) => dpu.misc_snapshot(),
                None => return reply.error(ENOENT),
            },
            Some(Node::Misc(_)) => Vec::new(),
            Some(Node::Control) => control::status(&self.dpus).into_bytes(),
        };
        let fh = self.new_fh();
        self.handles.insert(fh, Handle::Snapshot(snapshot));
        reply.opened(fh, FOPEN_DIRECT_IO);
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        match self.handles.get(&fh) {
            Some(Handle::Snapshot(data)) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(data.len());
                let end = start.saturating_add(size as usize).min(data.len());
                reply.data(&data[start..end]);
            }
            Some(Handle::Boot(_)) => reply.error(EBADF),
            None => reply.error(EBADF),
        }
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        _offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        // An open boot handle outlives its DPU's slot: the write gets ENODEV there.
        if matches!(self.handles.get(&fh), Some(Handle::Boot(_))) {
            return self.write_boot(fh, data, reply);
        }
        match self.node(ino) {
            Some(Node::Boot(_)) => self.write_boot(fh, data, reply),
            Some(Node::Misc(d)) => match self.dpu(d).map(|dpu| dpu.misc_write(data)) {
                None => reply.error(ENODEV),
                Some(Ok(())) => reply.written(data.len() as u32),
                Some(Err(e)) => {
                    tracing::info!(error = %e, "misc command rejected");
                    reply.error(e.errno());
                }
            },
            Some(Node::Control) => match control::apply(&self.dpus, data) {
                Ok(()) => reply.written(data.len() as u32),
                Err(e) => {
                    tracing::info!(error = %e, "control command rejected");
                    reply.error(EINVAL);
                }
            },
            Some(_) => reply.error(EBADF),
            None => reply.error(ENOENT),
        }
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _lock_owner: u64, reply: ReplyEmpty) {
        reply.ok();
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if let Some(Handle::Boot(h)) = self.handles.remove(&fh) {
            let BootHandle {
                dpu, open, stream, ..
            } = *h;
            dpu.close_boot(fh, open, stream.finish());
        }
        reply.ok();
    }

    fn fsync(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _datasync: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        match self.node(ino) {
            Some(Node::Root | Node::Dir(_)) => reply.opened(0, 0),
            Some(_) => reply.error(ENOTDIR),
            None => reply.error(ENOENT),
        }
    }

    fn readdir(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, offset: i64, mut reply: ReplyDirectory) {
        let Some(node) = self.node(ino) else {
            reply.error(ENOENT);
            return;
        };
        let parent = match node {
            Node::Root => Node::Root,
            Node::Dir(_) => Node::Root,
            _ => {
                reply.error(ENOTDIR);
                return;
            }
        };
        let mut entries = vec![
            (node.ino(), FileType::Directory, ".".to_string()),
            (parent.ino(), FileType::Directory, "..".to_string()),
        ];
        entries.extend(
            self.children(node)
                .into_iter()
                .map(|(n, name)| (n.ino(), self.attr(n).kind, name)),
        );
        let skip = usize::try_from(offset).unwrap_or(0);
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(skip) {
            if reply.add(ino, (i + 1) as i64, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_numbers_round_trip() {
        let nodes = [
            Node::Root,
            Node::Control,
            Node::Dir(0),
            Node::Boot(0),
            Node::Misc(3),
            Node::Console(63),
        ];
        for n in nodes {
            assert_eq!(Node::from_ino(n.ino(), |d| d < 64), Some(n));
        }
        assert_eq!(Node::from_ino(Node::Dir(2).ino(), |d| d < 2), None);
        assert_eq!(Node::from_ino(3, |d| d < 2), None);
        // A removed DPU's inodes resolve to nothing; its neighbours' still do.
        assert_eq!(Node::from_ino(Node::Misc(1).ino(), |d| d != 1), None);
        assert_eq!(
            Node::from_ino(Node::Misc(2).ino(), |d| d != 1),
            Some(Node::Misc(2))
        );
    }
}
