//! The boot stream as the DPU's boot ROM sees it: verified incrementally with
//! [`hostplane_bfb::Verifier`] in constant memory, while a light tap follows
//! the image layout to pick up the version-info image (id 50), the bf.cfg
//! appended after the images, and where to flip a byte for the `corrupt` fault.

use hostplane_bfb::{HEADER_LEN, Header, Verifier, id};

use super::bfcfg::BFCFG_MAX;

/// Version-info images larger than this are not parsed.
const VERSION_INFO_MAX: usize = 4096;

#[derive(Debug)]
enum TapState {
    Header,
    Body {
        image_id: u8,
        remaining: u64,
        last: bool,
    },
    Trailer,
    /// The layout is broken; the verifier reports why.
    Lost,
}

/// Follows the image layout of the stream (the verifier owns the verdict).
#[derive(Debug)]
struct Tap {
    state: TapState,
    header: [u8; HEADER_LEN],
    have: usize,
    images: usize,
    version_info: Vec<u8>,
    trailer: Vec<u8>,
    trailer_len: u64,
    corrupted: bool,
}

impl Tap {
    fn new() -> Tap {
        Tap {
            state: TapState::Header,
            header: [0; HEADER_LEN],
            have: 0,
            images: 0,
            version_info: Vec::new(),
            trailer: Vec::new(),
            trailer_len: 0,
            corrupted: false,
        }
    }

    fn keep_trailer(&mut self, bytes: &[u8]) {
        self.trailer_len += bytes.len() as u64;
        let room = (BFCFG_MAX + 1).saturating_sub(self.trailer.len());
        self.trailer.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// Follow `data`; with `corrupt`, returns the index in `data` of the byte
    /// to flip (once per stream: the first data byte of the last image).
    fn feed(&mut self, data: &[u8], corrupt: bool) -> Option<usize> {
        let mut flip = None;
        let mut pos = 0;
        while pos < data.len() {
            let rest = &data[pos..];
            match &mut self.state {
                TapState::Lost => break,
                TapState::Trailer => {
                    self.keep_trailer(rest);
                    break;
                }
                TapState::Header => {
                    let take = (HEADER_LEN - self.have).min(rest.len());
                    let before = self.have;
                    self.header[before..before + take].copy_from_slice(&rest[..take]);
                    self.have += take;
                    pos += take;
                    if before < 4 && self.have >= 4 && !Header::magic_ok(&self.header[..4]) {
                        if self.images == 0 {
                            self.state = TapState::Lost;
                        } else {
                            let carried = self.header;
                            let n = self.have;
                            self.state = TapState::Trailer;
                            self.keep_trailer(&carried[..n]);
                        }
                        continue;
                    }
                    if self.have == HEADER_LEN {
                        self.have = 0;
                        match Header::decode(&self.header) {
                            Ok(h) if h.padded_len() > 0 => {
                                self.state = TapState::Body {
                                    image_id: h.image_id,
                                    remaining: h.padded_len(),
                                    last: h.following == 0,
                                };
                            }
                            Ok(_) => self.images += 1,
                            Err(_) => self.state = TapState::Lost,
                        }
                    }
                }
                TapState::Body {
                    image_id,
                    remaining,
                    last,
                } => {
                    let take = (*remaining).min(rest.len() as u64) as usize;
                    if corrupt && *last && !self.corrupted && take > 0 {
                        flip = Some(pos);
                        self.corrupted = true;
                    }
                    if *image_id == id::VERSION_INFO {
                        let room = VERSION_INFO_MAX.saturating_sub(self.version_info.len());
                        self.version_info.extend_from_slice(&rest[..take.min(room)]);
                    }
                    *remaining -= take as u64;
                    pos += take;
                    if *remaining == 0 {
                        self.images += 1;
                        self.state = TapState::Header;
                    }
                }
            }
        }
        flip
    }
}

/// What the boot ROM made of a finished stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamReport {
    pub images: usize,
    pub bytes: u64,
    /// The stream carries an initramfs: a full installer bundle.
    pub installer: bool,
    /// From the version-info image (id 50), if present and readable.
    pub version: Option<String>,
    /// Bytes after the images (bf.cfg), at most `BFCFG_MAX + 1` kept.
    pub bf_cfg: Option<Vec<u8>>,
    /// Full length of the bytes after the images.
    pub bf_cfg_len: u64,
}

/// Progress reported by [`BootStream::feed`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The first image (BL2) has just been verified: the DPU starts booting.
    pub first_image: bool,
    /// The stream just became unbootable; the ERR text (without prefix).
    pub failure: Option<String>,
}

/// One push to `boot`, from open to close.
pub struct BootStream {
    verifier: Option<Verifier>,
    tap: Tap,
    bytes: u64,
    scratch: Vec<u8>,
}

impl Default for BootStream {
    fn default() -> Self {
        Self::new()
    }
}

/// The ERR text for an unbootable stream.
pub fn failure_text(e: &hostplane_bfb::Error) -> String {
    use hostplane_bfb::Error as E;
    match e {
        E::Empty => "empty boot stream".to_string(),
        E::BadMagic { offset, .. } | E::BadVersion { offset, .. } | E::BadHeaderLength { offset, .. } => {
            format!("bad image header at offset {offset}")
        }
        E::TruncatedHeader { index, offset, .. } => {
            format!("image {index} header truncated at offset {offset}")
        }
        E::TruncatedImage {
            index, have, need, ..
        } => {
            format!("image {index} truncated: stream ended after {have} of {need} bytes")
        }
        E::CrcMismatch { index, .. } => format!("image {index} CRC mismatch"),
    }
}

impl BootStream {
    pub fn new() -> BootStream {
        BootStream {
            verifier: Some(Verifier::new()),
            tap: Tap::new(),
            bytes: 0,
            scratch: Vec::new(),
        }
    }

    /// Bytes received so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether the stream already failed (later bytes are accepted and ignored).
    pub fn failed(&self) -> bool {
        self.verifier.is_none()
    }

    /// Take the next chunk. `corrupt`: flip one byte of the last image (fault injection).
    pub fn feed(&mut self, data: &[u8], corrupt: bool) -> Progress {
        self.bytes += data.len() as u64;
        let mut progress = Progress::default();
        let Some(verifier) = self.verifier.as_mut() else {
            return progress;
        };
        let before = verifier.images().len();
        let flip = self.tap.feed(data, corrupt);
        let result = match flip {
            Some(i) => {
                self.scratch.clear();
                self.scratch.extend_from_slice(data);
                self.scratch[i] ^= 0xff;
                verifier.update(&self.scratch)
            }
            None => verifier.update(data),
        };
        progress.first_image = before == 0 && !verifier.images().is_empty();
        if let Err(e) = result {
            progress.failure = Some(failure_text(&e));
            self.verifier = None;
        }
        progress
    }

    /// End of stream. `Ok(None)` when the failure was already reported by
    /// [`BootStream::feed`]; `Err(text)` when the end itself is the failure.
    pub fn finish(self) -> Result<Option<StreamReport>, String> {
        let Some(verifier) = self.verifier else {
            return Ok(None);
        };
        let summary = verifier.finish().map_err(|e| failure_text(&e))?;
        let version = parse_version(&self.tap.version_info);
        let bf_cfg = (summary.trailer_bytes > 0).then_some(self.tap.trailer);
        Ok(Some(StreamReport {
            images: summary.images.len(),
            bytes: self.bytes,
            installer: summary.is_installer(),
            version,
            bf_cfg,
            bf_cfg_len: summary.trailer_bytes,
        }))
    }
}

/// The BFB version from the version-info JSON: `{"version": "..."}`, or the
/// `Version` of the `BFB` member in `{"Members": [{"Name": "BFB", "Version": ...}]}`.
pub fn parse_version(raw: &[u8]) -> Option<String> {
    if raw.is_empty() {
        return None;
    }
    let end = raw.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let v: serde_json::Value = serde_json::from_slice(&raw[..end]).ok()?;
    let obj = v.as_object()?;
    let found = obj
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("version"))
        .and_then(|(_, v)| v.as_str())
        .or_else(|| {
            obj.get("Members")?.as_array()?.iter().find_map(|m| {
                (m.get("Name")?.as_str()? == "BFB")
                    .then(|| m.get("Version")?.as_str())
                    .flatten()
            })
        })?;
    let version: String = found.chars().filter(|c| !c.is_control()).take(64).collect();
    (!version.is_empty()).then_some(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_bfb(size: u64, version: &str) -> Vec<u8> {
        let mut out = Vec::new();
        hostplane_bfb::write_test_bfb(&mut out, size, version, 7).unwrap();
        out
    }

    fn push(
        bytes: &[u8],
        chunk: usize,
        corrupt: bool,
    ) -> (Vec<Progress>, Result<Option<StreamReport>, String>) {
        let mut s = BootStream::new();
        let events = bytes.chunks(chunk).map(|c| s.feed(c, corrupt)).collect();
        (events, s.finish())
    }

    #[test]
    fn valid_stream_with_bf_cfg_reports_version_and_trailer_in_any_chunking() {
        let mut bytes = test_bfb(200_000, "4.9.1");
        bytes.extend_from_slice(b"BFB_ADD_ON=\nA='b'\n");
        for chunk in [1, 7, 24, 4096, 1 << 20] {
            let (events, end) = push(&bytes, chunk, false);
            let report = end.unwrap().unwrap();
            assert_eq!(report.version.as_deref(), Some("4.9.1"));
            assert!(report.installer);
            assert_eq!(report.images, 6);
            assert_eq!(
                report.bf_cfg.as_deref(),
                Some(&b"BFB_ADD_ON=\nA='b'\n"[..]),
                "chunk {chunk}"
            );
            assert_eq!(report.bytes, bytes.len() as u64);
            assert_eq!(events.iter().filter(|e| e.first_image).count(), 1);
            assert!(events.iter().all(|e| e.failure.is_none()));
        }
    }

    #[test]
    fn stream_without_trailer_has_no_bf_cfg() {
        let (_, end) = push(&test_bfb(50_000, "4.9.0"), 65536, false);
        let report = end.unwrap().unwrap();
        assert_eq!(report.bf_cfg, None);
        assert_eq!(report.bf_cfg_len, 0);
    }

    #[test]
    fn corrupt_fault_fails_the_last_image_crc() {
        let bytes = test_bfb(300_000, "4.9.0");
        let (events, end) = push(&bytes, 65536, true);
        let failures: Vec<_> = events.iter().filter_map(|e| e.failure.clone()).collect();
        assert_eq!(failures, vec!["image 5 CRC mismatch".to_string()]);
        assert_eq!(end, Ok(None));
        // The first image was fine: the DPU had started booting.
        assert!(events[0].first_image);
    }

    #[test]
    fn bad_first_header_and_truncation_are_named() {
        let (events, end) = push(b"hello world, this is not a BFB at all", 8, false);
        assert_eq!(
            events.iter().find_map(|e| e.failure.clone()).as_deref(),
            Some("bad image header at offset 0")
        );
        assert_eq!(end, Ok(None));

        let bytes = test_bfb(100_000, "4.9.0");
        let (_, end) = push(&bytes[..bytes.len() - 1000], 4096, false);
        let err = end.unwrap_err();
        assert!(err.starts_with("image 5 truncated"), "{err}");

        let (_, end) = push(&[], 1, false);
        assert_eq!(end.unwrap_err(), "empty boot stream");
    }

    #[test]
    fn version_json_shapes() {
        assert_eq!(parse_version(br#"{"version":"4.9.0"}"#).as_deref(), Some("4.9.0"));
        assert_eq!(
            parse_version(
                br#"{"Members":[{"Name":"ATF","Version":"x"},{"Name":"BFB","Version":"4.10.0-42"}]}"#
            )
            .as_deref(),
            Some("4.10.0-42")
        );
        assert_eq!(
            parse_version(b"{\"Version\":\"1.2\"}\0\0\0").as_deref(),
            Some("1.2")
        );
        assert_eq!(parse_version(b"not json"), None);
        assert_eq!(parse_version(b""), None);
    }
}
