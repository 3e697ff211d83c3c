//! Streaming BFB + bf.cfg into `<dev>/<rshim>/boot`.
//!
//! Two dedicated threads: a reader fills large buffers from the image file
//! and a writer writes them to `boot`, so reading and writing overlap
//! (double buffering, no copies besides the read itself). The async side only
//! watches counters; it never blocks on the device.
//!
//! One `write(2)` carries at most [`PushJob::max_write`] bytes (default
//! [`MAX_WRITE`]), so the byte counter
//! (the stall timer's input) moves at least that often and a stop request is
//! seen between writes. A write the device does not take blocks in the
//! kernel, where no signal reaches it (the rshim driver is a FUSE/CUSE
//! device); the driver's `BOOT_TIMEOUT`, which the flash sets to its stall
//! timeout, is what ends such a write (ETIMEDOUT), so the process can always
//! exit within that bound. An interrupted write (EINTR) is retried unless
//! the push was stopped.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use tokio::sync::oneshot;

/// Buffers in flight between the two threads.
const BUFFERS: usize = 3;
/// The most bytes one `write(2)` to `boot` carries, by default
/// ([`super::FlashConfig::push_write_max`]).
pub const MAX_WRITE: usize = 256 << 10;

/// Why a push stopped early.
#[derive(Debug)]
pub(crate) enum PushFailure {
    /// Opening `boot` failed (EBUSY, EINVAL in drop mode, ENOENT, ...).
    Open(io::Error),
    /// Reading the image.
    Read { path: PathBuf, source: io::Error },
    /// Writing to (or closing) `boot`.
    Write(io::Error),
    /// [`PushHandle::stop`] was called; `boot` was closed.
    Stopped,
}

pub(crate) struct PushHandle {
    pub bytes: Arc<AtomicU64>,
    pub total: u64,
    stop: Arc<AtomicBool>,
    /// The writer waits on this after opening `boot`: true = start writing.
    gate: SyncSender<bool>,
    /// Resolves when the writer closed `boot` (or failed to open it).
    pub done: oneshot::Receiver<Result<u64, PushFailure>>,
    /// Resolves once `boot` is open (Ok) or could not be opened. The writer
    /// then waits for [`PushHandle::go`], so that the caller can drain log
    /// lines printed before the first byte of this stream.
    pub opened: Option<oneshot::Receiver<()>>,
}

impl PushHandle {
    /// Let the writer start once `boot` is open (see [`PushHandle::opened`]).
    pub fn go(&self) {
        let _ = self.gate.try_send(true);
    }

    /// Ask the writer to stop before its next write and close `boot`.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.gate.try_send(false);
    }

    /// A guard that stops the push when dropped (e.g. when the flash future
    /// is dropped instead of cancelled). Harmless once the push is done.
    pub fn stop_on_drop(&self) -> StopOnDrop {
        StopOnDrop {
            stop: self.stop.clone(),
            gate: self.gate.clone(),
        }
    }
}

pub(crate) struct StopOnDrop {
    stop: Arc<AtomicBool>,
    gate: SyncSender<bool>,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.gate.try_send(false);
    }
}

pub(crate) struct PushJob {
    pub image: PathBuf,
    pub image_len: u64,
    pub trailer: Option<Vec<u8>>,
    /// A file pushed raw after the trailer (bfb-install's `--rootfs`).
    pub rootfs: Option<(PathBuf, u64)>,
    pub boot: PathBuf,
    pub chunk: usize,
    /// The most bytes one `write(2)` carries (at least 4 KiB).
    pub max_write: usize,
    pub rshim: String,
}

type Chunk = Result<(Vec<u8>, usize), io::Error>;

impl PushJob {
    /// Start the threads. `hold` is dropped when the writer thread ends, so
    /// the caller's per-rshim slot stays taken while `boot` may still be open.
    pub fn start<H: Send + 'static>(self, hold: H) -> io::Result<PushHandle> {
        let total = self.image_len
            + self.trailer.as_ref().map_or(0, |t| t.len() as u64)
            + self.rootfs.as_ref().map_or(0, |r| r.1);
        let bytes = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (done_tx, done_rx) = oneshot::channel();
        let (opened_tx, opened_rx) = oneshot::channel();
        let (full_tx, full_rx) = sync_channel::<Chunk>(BUFFERS);
        let (empty_tx, empty_rx) = sync_channel::<Vec<u8>>(BUFFERS);
        let (gate_tx, gate_rx) = sync_channel::<bool>(2);
        let chunk = self.chunk.max(64 << 10);
        let max_write = self.max_write.max(4 << 10);
        for _ in 0..BUFFERS {
            empty_tx
                .send(vec![0u8; chunk])
                .expect("channel has room for every buffer");
        }
        // Open the image before anything touches the device.
        let file = std::fs::File::open(&self.image)?;
        let rootfs = match &self.rootfs {
            Some((p, _)) => Some((std::fs::File::open(p)?, p.clone())),
            None => None,
        };
        let trailer = self.trailer;
        std::thread::Builder::new()
            .name(format!("push-read-{}", self.rshim))
            .spawn(move || read_loop(file, trailer, rootfs, chunk, &full_tx, &empty_rx))?;
        let image = self.image.clone();
        let (b, s, boot) = (bytes.clone(), stop.clone(), self.boot.clone());
        let span = tracing::info_span!("bfb_push", rshim = %self.rshim, boot = %self.boot.display());
        std::thread::Builder::new()
            .name(format!("push-write-{}", self.rshim))
            .spawn(move || {
                let _enter = span.enter();
                let res = match write_loop(
                    &boot,
                    (&full_rx, &empty_tx),
                    max_write,
                    &b,
                    &s,
                    opened_tx,
                    &gate_rx,
                ) {
                    Err(PushFailure::Read { source, .. }) => Err(PushFailure::Read { path: image, source }),
                    other => other,
                };
                drop(hold);
                let _ = done_tx.send(res);
            })?;
        Ok(PushHandle {
            bytes,
            total,
            stop,
            gate: gate_tx,
            done: done_rx,
            opened: Some(opened_rx),
        })
    }
}

/// Fill whole buffers (so `boot` sees large writes), then the trailer, then
/// the rootfs file.
fn read_loop(
    file: std::fs::File,
    trailer: Option<Vec<u8>>,
    rootfs: Option<(std::fs::File, PathBuf)>,
    chunk: usize,
    full: &SyncSender<Chunk>,
    empty: &Receiver<Vec<u8>>,
) {
    let mut spare = None;
    if !pump(file, chunk, &mut spare, full, empty) {
        return;
    }
    if let Some(t) = trailer {
        let n = t.len();
        if n > 0 && full.send(Ok((t, n))).is_err() {
            return;
        }
    }
    if let Some((f, _)) = rootfs {
        pump(f, chunk, &mut spare, full, empty);
    }
}

/// Send one file in whole buffers; false when the push is over (an error
/// was sent, or the writer is gone).
fn pump(
    mut file: std::fs::File,
    chunk: usize,
    spare: &mut Option<Vec<u8>>,
    full: &SyncSender<Chunk>,
    empty: &Receiver<Vec<u8>>,
) -> bool {
    loop {
        // The writer returns buffers (the trailer's too); when it is gone, stop.
        let mut buf = match spare.take() {
            Some(b) => b,
            None => match empty.recv() {
                Ok(b) => b,
                Err(_) => return false,
            },
        };
        if buf.len() < chunk {
            buf.resize(chunk, 0);
        }
        let mut filled = 0;
        while filled < buf.len() {
            match file.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = full.send(Err(e));
                    return false;
                }
            }
        }
        if filled == 0 {
            // Not used: kept for the next file.
            *spare = Some(buf);
            return true;
        }
        if full.send(Ok((buf, filled))).is_err() {
            return false;
        }
    }
}

fn write_loop(
    boot: &Path,
    (full, empty): (&Receiver<Chunk>, &SyncSender<Vec<u8>>),
    max_write: usize,
    bytes: &AtomicU64,
    stop: &AtomicBool,
    opened: oneshot::Sender<()>,
    gate: &Receiver<bool>,
) -> Result<u64, PushFailure> {
    // O_WRONLY, no create, no truncate: this is a device.
    let mut dev = std::fs::OpenOptions::new()
        .write(true)
        .open(boot)
        .map_err(PushFailure::Open)?;
    let _ = opened.send(());
    tracing::debug!("boot opened");
    if gate.recv() != Ok(true) {
        tracing::info!("push stopped before the first byte; closing boot");
        return Err(PushFailure::Stopped);
    }
    let mut written = 0u64;
    while let Ok(chunk) = full.recv() {
        if stop.load(Ordering::SeqCst) {
            tracing::info!(written, "push stopped; closing boot");
            return Err(PushFailure::Stopped);
        }
        let (buf, n) = chunk.map_err(|source| PushFailure::Read {
            path: PathBuf::new(),
            source,
        })?;
        let mut off = 0;
        while off < n {
            let end = n.min(off + max_write);
            match dev.write(&buf[off..end]) {
                Ok(0) => return Err(PushFailure::Write(io::Error::from(io::ErrorKind::WriteZero))),
                Ok(k) => {
                    off += k;
                    written += k as u64;
                    bytes.store(written, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted && !stop.load(Ordering::SeqCst) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    tracing::info!(written, "push stopped during a write; closing boot");
                    return Err(PushFailure::Stopped);
                }
                Err(e) => return Err(PushFailure::Write(e)),
            }
        }
        let _ = empty.send(buf);
    }
    if stop.load(Ordering::SeqCst) {
        return Err(PushFailure::Stopped);
    }
    // Close explicitly: the device (or FUSE flush) may report an error here.
    nix::unistd::close(dev).map_err(|e| PushFailure::Write(io::Error::from(e)))?;
    tracing::debug!(written, "boot closed");
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(dir: &Path, data: &[u8], trailer: Option<&[u8]>, chunk: usize) -> PushJob {
        let image = dir.join("img.bfb");
        std::fs::write(&image, data).unwrap();
        let boot = dir.join("boot");
        std::fs::write(&boot, b"").unwrap();
        PushJob {
            image,
            image_len: data.len() as u64,
            trailer: trailer.map(<[u8]>::to_vec),
            rootfs: None,
            boot,
            chunk,
            max_write: MAX_WRITE,
            rshim: "rshim0".into(),
        }
    }

    #[tokio::test]
    async fn pushes_image_then_trailer_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..1_000_003u32).map(|i| (i * 7 % 251) as u8).collect();
        let j = job(dir.path(), &data, Some(b"A='1'\n"), 64 << 10);
        let boot = j.boot.clone();
        let h = j.start(()).unwrap();
        h.go();
        assert_eq!(h.total, data.len() as u64 + 6);
        let n = h.done.await.unwrap().unwrap();
        assert_eq!(n, h.total);
        assert_eq!(h.bytes.load(Ordering::SeqCst), n);
        let mut want = data.clone();
        want.extend_from_slice(b"A='1'\n");
        assert_eq!(std::fs::read(boot).unwrap(), want);
    }

    #[tokio::test]
    async fn nothing_is_written_until_go() {
        let dir = tempfile::tempdir().unwrap();
        let j = job(dir.path(), &[7u8; 4096], None, 1 << 20);
        let boot = j.boot.clone();
        let mut h = j.start(()).unwrap();
        h.opened.take().unwrap().await.unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(std::fs::metadata(&boot).unwrap().len(), 0);
        h.stop();
        assert!(matches!(h.done.await.unwrap(), Err(PushFailure::Stopped)));
        assert_eq!(std::fs::metadata(&boot).unwrap().len(), 0);
    }

    #[tokio::test]
    async fn dropping_the_guard_stops_the_push() {
        let dir = tempfile::tempdir().unwrap();
        let j = job(dir.path(), &[7u8; 4096], None, 1 << 20);
        let boot = j.boot.clone();
        let h = j.start(()).unwrap();
        drop(h.stop_on_drop());
        h.go();
        assert!(matches!(h.done.await.unwrap(), Err(PushFailure::Stopped)));
        assert_eq!(std::fs::metadata(&boot).unwrap().len(), 0);
    }

    #[tokio::test]
    async fn missing_boot_is_an_open_failure() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = job(dir.path(), b"12345678", None, 1 << 20);
        j.boot = dir.path().join("absent/boot");
        let h = j.start(()).unwrap();
        let res = h.done.await.unwrap();
        assert!(
            matches!(res, Err(PushFailure::Open(ref e)) if e.kind() == io::ErrorKind::NotFound),
            "{res:?}"
        );
        assert!(!dir.path().join("absent").exists(), "nothing created");
    }

    #[tokio::test]
    async fn stop_closes_before_the_end_and_releases_the_hold() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![1u8; 8 << 20];
        let j = job(dir.path(), &data, None, 64 << 10);
        // A FIFO stands in for the device: writes block until the test reads.
        std::fs::remove_file(&j.boot).unwrap();
        nix::unistd::mkfifo(&j.boot, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let boot = j.boot.clone();
        let hold = Arc::new(());
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut f = std::fs::File::open(boot).unwrap();
            let mut buf = vec![0u8; 64 << 10];
            let mut got = f.read(&mut buf).unwrap() as u64;
            first_tx.send(()).unwrap();
            loop {
                match f.read(&mut buf) {
                    Ok(0) | Err(_) => return got,
                    Ok(n) => got += n as u64,
                }
            }
        });
        let h = j.start(hold.clone()).unwrap();
        h.go();
        first_rx.recv().unwrap();
        h.stop();
        let res = h.done.await.unwrap();
        assert!(matches!(res, Err(PushFailure::Stopped)), "{res:?}");
        let got = reader.join().unwrap();
        assert!(got > 0 && got < data.len() as u64, "{got}");
        assert_eq!(Arc::strong_count(&hold), 1, "writer thread dropped its hold");
    }

    #[tokio::test]
    async fn unreadable_image_fails_before_boot_is_opened() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = job(dir.path(), b"12345678", None, 1 << 20);
        j.image = dir.path().join("gone.bfb");
        std::fs::remove_file(&j.boot).unwrap();
        let boot = j.boot.clone();
        assert!(j.start(()).is_err());
        assert!(!boot.exists());
    }

    #[tokio::test]
    async fn image_read_error_midway_is_a_read_failure() {
        let dir = tempfile::tempdir().unwrap();
        // A directory opens fine but fails on read (EISDIR).
        let mut j = job(dir.path(), b"12345678", None, 1 << 20);
        j.image = dir.path().to_path_buf();
        let h = j.start(()).unwrap();
        h.go();
        let res = h.done.await.unwrap();
        assert!(
            matches!(res, Err(PushFailure::Read { ref path, .. }) if path == dir.path()),
            "{res:?}"
        );
    }
}
