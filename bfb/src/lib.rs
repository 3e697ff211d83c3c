//! The BlueField boot stream (BFB) format.
//!
//! A BFB is a sequence of images, each a 24-byte header, the image data, and
//! zero padding to a multiple of 8 bytes. The header is three little-endian
//! u64 words (see `docs/rshim.md`):
//!
//! - word 0: bits 0–31 magic `0x13026642`; 32–35 major version (1); 36–39
//!   minor version (≤ 2); 44–47 next image version; 48–51 current image
//!   version; 52–55 header length / 8 (= 3); 56–63 image id.
//! - word 1: bits 0–31 image length (without padding); 32–63 CRC-32 (IEEE)
//!   over the data **and** the padding.
//! - word 2: bitmap of the ids of the images that follow.
//!
//! [`Verifier`] checks a stream incrementally (so the agent can verify while
//! it downloads or pushes, in constant memory); [`verify_file`] checks a whole
//! file; [`Writer`] builds valid images (used by the simulator's test-image
//! tool and by tests).

use std::io::{self, Read, Write};
use std::path::Path;

pub const MAGIC: u32 = 0x1302_6642;
pub const HEADER_LEN: usize = 24;
pub const MAJOR_VERSION: u8 = 1;
pub const MAX_MINOR_VERSION: u8 = 2;

/// Well-known image ids.
pub mod id {
    pub const BL2: u8 = 1;
    pub const BL31: u8 = 3;
    pub const BL33: u8 = 5;
    pub const BL2R: u8 = 30;
    pub const NIC_FW: u8 = 41;
    pub const VERSION_INFO: u8 = 50;
    pub const BOOT_ARGS: u8 = 59;
    pub const BOOT_IMAGE: u8 = 62;
    pub const INITRAMFS: u8 = 63;
}

/// Why a stream is not a valid BFB. Every variant names the image (by its
/// index in the stream and its id, where known) and the byte offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("empty stream: no BFB image at all")]
    Empty,
    #[error("image #{index} at offset {offset}: bad magic {found:#010x} (expected {MAGIC:#010x})")]
    BadMagic { index: usize, offset: u64, found: u32 },
    #[error("image #{index} (id {image_id}) at offset {offset}: unsupported header version {major}.{minor}")]
    BadVersion {
        index: usize,
        image_id: u8,
        offset: u64,
        major: u8,
        minor: u8,
    },
    #[error(
        "image #{index} (id {image_id}) at offset {offset}: header length {header_words} words (expected 3)"
    )]
    BadHeaderLength {
        index: usize,
        image_id: u8,
        offset: u64,
        header_words: u8,
    },
    #[error(
        "image #{index} (id {image_id}) at offset {offset}: stream ends after {have} of {need} bytes of header"
    )]
    TruncatedHeader {
        index: usize,
        image_id: u8,
        offset: u64,
        have: usize,
        need: usize,
    },
    #[error(
        "image #{index} (id {image_id}) at offset {offset}: stream ends after {have} of {need} bytes of image data and padding"
    )]
    TruncatedImage {
        index: usize,
        image_id: u8,
        offset: u64,
        have: u64,
        need: u64,
    },
    #[error(
        "image #{index} (id {image_id}) at offset {offset}: CRC mismatch (header {expected:#010x}, data {actual:#010x})"
    )]
    CrcMismatch {
        index: usize,
        image_id: u8,
        offset: u64,
        expected: u32,
        actual: u32,
    },
}

/// One parsed image header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub major: u8,
    pub minor: u8,
    pub next_image_version: u8,
    pub image_version: u8,
    pub header_words: u8,
    pub image_id: u8,
    pub length: u32,
    pub crc: u32,
    pub following: u64,
}

impl Header {
    pub fn new(image_id: u8, data_len: u32, crc: u32, following: u64) -> Header {
        Header {
            major: MAJOR_VERSION,
            minor: 0,
            next_image_version: 0,
            image_version: 0,
            header_words: 3,
            image_id,
            length: data_len,
            crc,
            following,
        }
    }

    pub fn magic_ok(bytes: &[u8]) -> bool {
        bytes.len() >= 4 && u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) == MAGIC
    }

    /// Decode 24 bytes. Only the magic is checked here; [`Header::validate`] checks the rest.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, u32> {
        let w0 = u64::from_le_bytes(b[0..8].try_into().expect("8 bytes"));
        let w1 = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
        let w2 = u64::from_le_bytes(b[16..24].try_into().expect("8 bytes"));
        let magic = (w0 & 0xffff_ffff) as u32;
        if magic != MAGIC {
            return Err(magic);
        }
        Ok(Header {
            major: ((w0 >> 32) & 0xf) as u8,
            minor: ((w0 >> 36) & 0xf) as u8,
            next_image_version: ((w0 >> 44) & 0xf) as u8,
            image_version: ((w0 >> 48) & 0xf) as u8,
            header_words: ((w0 >> 52) & 0xf) as u8,
            image_id: (w0 >> 56) as u8,
            length: (w1 & 0xffff_ffff) as u32,
            crc: (w1 >> 32) as u32,
            following: w2,
        })
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let w0 = u64::from(MAGIC)
            | (u64::from(self.major & 0xf) << 32)
            | (u64::from(self.minor & 0xf) << 36)
            | (u64::from(self.next_image_version & 0xf) << 44)
            | (u64::from(self.image_version & 0xf) << 48)
            | (u64::from(self.header_words & 0xf) << 52)
            | (u64::from(self.image_id) << 56);
        let w1 = u64::from(self.length) | (u64::from(self.crc) << 32);
        let mut out = [0u8; HEADER_LEN];
        out[0..8].copy_from_slice(&w0.to_le_bytes());
        out[8..16].copy_from_slice(&w1.to_le_bytes());
        out[16..24].copy_from_slice(&self.following.to_le_bytes());
        out
    }

    fn validate(&self, index: usize, offset: u64) -> Result<(), Error> {
        if self.major != MAJOR_VERSION || self.minor > MAX_MINOR_VERSION {
            return Err(Error::BadVersion {
                index,
                image_id: self.image_id,
                offset,
                major: self.major,
                minor: self.minor,
            });
        }
        if self.header_words != 3 {
            return Err(Error::BadHeaderLength {
                index,
                image_id: self.image_id,
                offset,
                header_words: self.header_words,
            });
        }
        Ok(())
    }

    /// Data length plus padding to a multiple of 8.
    pub fn padded_len(&self) -> u64 {
        padded(u64::from(self.length))
    }
}

pub fn padded(len: u64) -> u64 {
    len.div_ceil(8) * 8
}

/// Summary of one verified image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageInfo {
    pub index: usize,
    pub offset: u64,
    pub image_id: u8,
    pub length: u32,
}

/// Summary of a verified stream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Summary {
    pub images: Vec<ImageInfo>,
    /// Bytes of BFB images (headers + data + padding).
    pub bfb_bytes: u64,
    /// Bytes after the last image that are not a BFB header (bf.cfg appended raw).
    pub trailer_bytes: u64,
}

impl Summary {
    /// True when the stream carries an initramfs: a full installer bundle.
    pub fn is_installer(&self) -> bool {
        self.images.iter().any(|i| i.image_id == id::INITRAMFS)
    }
}

enum State {
    /// Collecting a header into `buf`.
    Header,
    /// Inside image data+padding: `remaining` bytes left.
    Body { header: Header, remaining: u64 },
    /// After the last image: bytes that do not start with the magic (trailer, e.g. bf.cfg).
    Trailer,
}

/// Incremental verifier: feed bytes in any chunking with [`Verifier::update`],
/// then call [`Verifier::finish`]. Memory use is constant.
///
/// After at least one image, a chunk that does not start with the magic where
/// a header is expected is taken as the start of a trailer (bf.cfg is pushed
/// raw after the images), as the DPU's boot ROM does.
pub struct Verifier {
    state: State,
    buf: [u8; HEADER_LEN],
    have: usize,
    offset: u64,
    image_start: u64,
    crc: crc32fast::Hasher,
    summary: Summary,
    allow_trailer: bool,
}

impl Default for Verifier {
    fn default() -> Self {
        Self::new()
    }
}

impl Verifier {
    pub fn new() -> Verifier {
        Verifier {
            state: State::Header,
            buf: [0; HEADER_LEN],
            have: 0,
            offset: 0,
            image_start: 0,
            crc: crc32fast::Hasher::new(),
            summary: Summary::default(),
            allow_trailer: true,
        }
    }

    /// A verifier that rejects any byte after the last image (for checking a
    /// downloaded `.bfb` file, which must be images only).
    pub fn images_only() -> Verifier {
        Verifier {
            allow_trailer: false,
            ..Verifier::new()
        }
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Images fully verified so far.
    pub fn images(&self) -> &[ImageInfo] {
        &self.summary.images
    }

    pub fn update(&mut self, mut data: &[u8]) -> Result<(), Error> {
        while !data.is_empty() {
            match &mut self.state {
                State::Trailer => {
                    self.summary.trailer_bytes += data.len() as u64;
                    self.offset += data.len() as u64;
                    return Ok(());
                }
                State::Header => {
                    if self.have == 0 {
                        self.image_start = self.offset;
                    }
                    let take = (HEADER_LEN - self.have).min(data.len());
                    self.buf[self.have..self.have + take].copy_from_slice(&data[..take]);
                    // Decide early whether this is a trailer: once 4 bytes are here.
                    let before = self.have;
                    self.have += take;
                    if before < 4 && self.have >= 4 && !Header::magic_ok(&self.buf[..4]) {
                        let index = self.summary.images.len();
                        if index > 0 && self.allow_trailer {
                            let carried = self.have;
                            self.state = State::Trailer;
                            self.summary.trailer_bytes += carried as u64;
                            self.offset += take as u64;
                            data = &data[take..];
                            self.have = 0;
                            continue;
                        }
                        let found = u32::from_le_bytes(self.buf[..4].try_into().expect("4 bytes"));
                        return Err(Error::BadMagic {
                            index,
                            offset: self.image_start,
                            found,
                        });
                    }
                    self.offset += take as u64;
                    data = &data[take..];
                    if self.have == HEADER_LEN {
                        let index = self.summary.images.len();
                        let header = Header::decode(&self.buf).map_err(|found| Error::BadMagic {
                            index,
                            offset: self.image_start,
                            found,
                        })?;
                        header.validate(index, self.image_start)?;
                        self.have = 0;
                        self.crc = crc32fast::Hasher::new();
                        let remaining = header.padded_len();
                        if remaining == 0 {
                            self.finish_image(header)?;
                        } else {
                            self.state = State::Body { header, remaining };
                        }
                    }
                }
                State::Body { header, remaining } => {
                    let take = (*remaining).min(data.len() as u64) as usize;
                    self.crc.update(&data[..take]);
                    *remaining -= take as u64;
                    self.offset += take as u64;
                    data = &data[take..];
                    if *remaining == 0 {
                        let header = *header;
                        self.state = State::Header;
                        self.finish_image(header)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn finish_image(&mut self, header: Header) -> Result<(), Error> {
        let index = self.summary.images.len();
        let actual = std::mem::replace(&mut self.crc, crc32fast::Hasher::new()).finalize();
        if actual != header.crc {
            return Err(Error::CrcMismatch {
                index,
                image_id: header.image_id,
                offset: self.image_start,
                expected: header.crc,
                actual,
            });
        }
        self.summary.images.push(ImageInfo {
            index,
            offset: self.image_start,
            image_id: header.image_id,
            length: header.length,
        });
        self.summary.bfb_bytes = self.offset;
        Ok(())
    }

    /// End of stream: fails if it ended inside a header or an image, or held no image.
    pub fn finish(mut self) -> Result<Summary, Error> {
        let index = self.summary.images.len();
        match self.state {
            // The stream ended 1–3 bytes after an image, before `update`
            // could tell a trailer from a header by the magic: bytes that
            // cannot begin the magic are a (short) trailer too.
            State::Header
                if index > 0
                    && self.allow_trailer
                    && self.have > 0
                    && self.have < 4
                    && !MAGIC.to_le_bytes().starts_with(&self.buf[..self.have]) =>
            {
                self.summary.trailer_bytes += self.have as u64;
            }
            State::Header if self.have > 0 => {
                return Err(Error::TruncatedHeader {
                    index,
                    image_id: if self.have >= 24 { self.buf[23] } else { 0 },
                    offset: self.image_start,
                    have: self.have,
                    need: HEADER_LEN,
                });
            }
            State::Body { header, remaining } => {
                let need = header.padded_len();
                return Err(Error::TruncatedImage {
                    index,
                    image_id: header.image_id,
                    offset: self.image_start,
                    have: need - remaining,
                    need,
                });
            }
            _ => {}
        }
        if self.summary.images.is_empty() {
            return Err(Error::Empty);
        }
        Ok(self.summary)
    }
}

/// Failure to verify a file: I/O or format.
#[derive(Debug, thiserror::Error)]
pub enum VerifyFileError {
    #[error("reading {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{path}: not a valid BFB: {source}")]
    Format { path: String, source: Error },
}

/// Verify a whole `.bfb` file (images only, no trailer), in constant memory.
pub fn verify_file(path: &Path) -> Result<Summary, VerifyFileError> {
    let p = path.display().to_string();
    let mut f = std::fs::File::open(path).map_err(|source| VerifyFileError::Io {
        path: p.clone(),
        source,
    })?;
    let mut v = Verifier::images_only();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|source| VerifyFileError::Io {
            path: p.clone(),
            source,
        })?;
        if n == 0 {
            break;
        }
        v.update(&buf[..n]).map_err(|source| VerifyFileError::Format {
            path: p.clone(),
            source,
        })?;
    }
    v.finish()
        .map_err(|source| VerifyFileError::Format { path: p, source })
}

/// Writes valid BFB images.
pub struct Writer<W: Write> {
    out: W,
    written: u64,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Self {
        Writer { out, written: 0 }
    }

    /// Write one image with the given id and data; `following` is the bitmap of ids after it.
    pub fn image(&mut self, image_id: u8, data: &[u8], following: u64) -> io::Result<()> {
        let len = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "BFB image larger than 4 GiB"))?;
        let pad = (padded(u64::from(len)) - u64::from(len)) as usize;
        let zeros = [0u8; 8];
        let mut h = crc32fast::Hasher::new();
        h.update(data);
        h.update(&zeros[..pad]);
        let header = Header::new(image_id, len, h.finalize(), following);
        self.out.write_all(&header.encode())?;
        self.out.write_all(data)?;
        self.out.write_all(&zeros[..pad])?;
        self.written += (HEADER_LEN + data.len() + pad) as u64;
        Ok(())
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

fn xorshift_fill(state: &mut u64, buf: &mut [u8]) {
    for chunk in buf.chunks_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        let b = state.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// Write a test installer BFB of about `total_size` bytes: BL2, BL31, UEFI,
/// a version-info JSON, a kernel and an initramfs that carries the bulk, with
/// deterministic pseudo-random content derived from `seed`. Memory use is
/// constant (the initramfs content is generated twice: once for its CRC, once
/// to write it). Returns the bytes written.
pub fn write_test_bfb<W: Write>(out: W, total_size: u64, version: &str, seed: u64) -> io::Result<u64> {
    let ids = [
        id::BL2,
        id::BL31,
        id::BL33,
        id::VERSION_INFO,
        id::BOOT_IMAGE,
        id::INITRAMFS,
    ];
    let bitmap_after = |i: usize| {
        ids[i + 1..]
            .iter()
            .fold(0u64, |acc, id| acc | (1u64 << (id % 64)))
    };
    let mut rng = seed | 1;
    let mut w = Writer::new(out);
    let mut buf = vec![0u8; 4096];
    for (i, &image_id) in ids.iter().enumerate().take(3) {
        xorshift_fill(&mut rng, &mut buf);
        w.image(image_id, &buf, bitmap_after(i))?;
    }
    let info = format!("{{\"version\":\"{version}\",\"generator\":\"hostplane-bfb\"}}");
    w.image(id::VERSION_INFO, info.as_bytes(), bitmap_after(3))?;
    xorshift_fill(&mut rng, &mut buf);
    w.image(id::BOOT_IMAGE, &buf, bitmap_after(4))?;

    // The initramfs takes whatever is left of the requested size (at least 8 bytes).
    let used = w.written() + HEADER_LEN as u64;
    let rest = total_size.saturating_sub(used).max(8);
    let rest = u32::try_from(rest).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "test BFB initramfs larger than 4 GiB",
        )
    })?;
    let pad = (padded(u64::from(rest)) - u64::from(rest)) as usize;
    let zeros = [0u8; 8];
    let mut data = vec![0u8; 1 << 20];
    let for_each_chunk = |f: &mut dyn FnMut(&[u8]) -> io::Result<()>, data: &mut [u8]| -> io::Result<()> {
        let mut state = rng;
        let mut left = rest as usize;
        while left > 0 {
            let n = left.min(data.len());
            xorshift_fill(&mut state, &mut data[..n]);
            f(&data[..n])?;
            left -= n;
        }
        f(&zeros[..pad])
    };
    let mut h = crc32fast::Hasher::new();
    for_each_chunk(
        &mut |c| {
            h.update(c);
            Ok(())
        },
        &mut data,
    )?;
    let header = Header::new(id::INITRAMFS, rest, h.finalize(), 0);
    let mut out = w.into_inner();
    out.write_all(&header.encode())?;
    for_each_chunk(&mut |c| out.write_all(c), &mut data)?;
    Ok(used + padded(u64::from(rest)))
}

#[cfg(test)]
mod tests;
