//! `hostplane-sim mkbfb`: write a valid (or deliberately corrupt) test BFB.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::SimError;

/// What [`mkbfb`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MkbfbReport {
    pub path: PathBuf,
    pub bytes: u64,
    pub version: String,
    /// Hex sha256 of the file as written.
    pub sha256: String,
    pub corrupted: bool,
}

struct Hashing<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn hash_file(f: &mut File) -> io::Result<String> {
    f.seek(SeekFrom::Start(0))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Write a test installer BFB of about `size` bytes (see
/// [`hostplane_bfb::write_test_bfb`]). With `corrupt`, the last byte of the
/// last image is flipped, so that image fails its CRC. Blocking I/O.
pub fn mkbfb(
    out: &Path,
    size: u64,
    version: &str,
    seed: u64,
    corrupt: bool,
) -> Result<MkbfbReport, SimError> {
    let io_err = |source| SimError::WriteBfb {
        path: out.to_path_buf(),
        source,
    };
    let file = File::create(out).map_err(io_err)?;
    let mut w = Hashing {
        inner: BufWriter::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
    };
    let bytes = hostplane_bfb::write_test_bfb(&mut w, size, version, seed).map_err(io_err)?;
    w.flush().map_err(io_err)?;
    let mut sha256 = hex::encode(w.hasher.finalize());
    if corrupt {
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(out)
            .map_err(io_err)?;
        let last = bytes
            .checked_sub(1)
            .ok_or_else(|| io_err(io::ErrorKind::InvalidData.into()))?;
        let mut b = [0u8; 1];
        f.seek(SeekFrom::Start(last)).map_err(io_err)?;
        f.read_exact(&mut b).map_err(io_err)?;
        b[0] ^= 0xff;
        f.seek(SeekFrom::Start(last)).map_err(io_err)?;
        f.write_all(&b).map_err(io_err)?;
        sha256 = hash_file(&mut f).map_err(io_err)?;
    }
    Ok(MkbfbReport {
        path: out.to_path_buf(),
        bytes,
        version: version.to_string(),
        sha256,
        corrupted: corrupt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_verifiable_bfb_and_its_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.bfb");
        let r = mkbfb(&path, 100_000, "4.9.2", 3, false).unwrap();
        let data = std::fs::read(&path).unwrap();
        assert_eq!(r.bytes, data.len() as u64);
        assert_eq!(r.sha256, hex::encode(Sha256::digest(&data)));
        let summary = hostplane_bfb::verify_file(&path).unwrap();
        assert!(summary.is_installer());
    }

    #[test]
    fn corrupt_flag_breaks_the_last_image_crc() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.bfb");
        let r = mkbfb(&path, 100_000, "4.9.2", 3, true).unwrap();
        let data = std::fs::read(&path).unwrap();
        assert_eq!(r.sha256, hex::encode(Sha256::digest(&data)));
        let err = hostplane_bfb::verify_file(&path).unwrap_err().to_string();
        assert!(err.contains("image #5") && err.contains("CRC mismatch"), "{err}");
    }
}
