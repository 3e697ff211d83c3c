//! The bodies of hostplane's fuzz targets, one plain function per target.
//!
//! Each function takes the fuzzer's bytes, runs a parser on them and asserts
//! properties of the result; a panic is a finding. Nothing here depends on
//! libFuzzer: `fuzz_targets/<name>.rs` wraps a body for `cargo fuzz`, and the
//! main workspace's `tests/tests/fuzz_corpus.rs` includes this file and
//! replays every saved input of `fuzz/corpus/<name>/` through the same body
//! as an ordinary test (stable toolchain, no cargo-fuzz).
//!
//! | target | parser |
//! |---|---|
//! | `bfb` | `hostplane_bfb::Verifier` (the BFB stream), `Header`, `Writer` |
//! | `rshim_misc` | the rshim `misc` snapshot, DPU log line classes, the flash verdict, `DEV_NAME` |
//! | `redfish` | the agent's Redfish JSON decoding (`power::bmc::parse`) |
//! | `agent_config` | the agent's YAML config (`Config::from_yaml`, `validate`) |
//! | `host_network` | the host-network desired-state file (`network apply --file`, `net::file::parse`) and its model |

use std::path::Path;

use hostplane_agent::config::Config;
use hostplane_agent::flash::{Stage, StageTimeouts, Step, Verdict};
use hostplane_agent::net;
use hostplane_agent::power::bmc::parse;
use hostplane_agent::rshim::{MiscSnapshot, classify_log_line, pci_from_dev_name, pf_address};
use hostplane_bfb::{Error as BfbError, HEADER_LEN, Header, Summary, Verifier, Writer};
use serde_json::Value;

/// A target's body: the fuzzer's bytes in, a panic out when a property fails.
pub type Body = fn(&[u8]);

/// Every target: its name (the folder under `fuzz/corpus/`) and its body.
pub const TARGETS: &[(&str, Body)] = &[
    ("bfb", bfb),
    ("rshim_misc", rshim_misc),
    ("redfish", redfish),
    ("agent_config", agent_config),
    ("host_network", host_network),
];

// ---------------------------------------------------------------------------
// bfb

/// Verify `data` fed in pieces of the given sizes (cycled; 0 means 1).
fn verify_chunked(mut v: Verifier, data: &[u8], sizes: &[u8]) -> Result<Summary, BfbError> {
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = if sizes.is_empty() {
            rest.len()
        } else {
            usize::from(sizes[i % sizes.len()].max(1)).min(rest.len())
        };
        v.update(&rest[..n])?;
        rest = &rest[n..];
        i += 1;
    }
    v.finish()
}

/// The BFB stream parser on arbitrary bytes, and the writer on images made
/// from them.
///
/// - The verdict does not depend on how the stream is chunked.
/// - A valid stream accounts for every byte (images + trailer), its images
///   are in order and inside the stream, and the images-only verifier agrees
///   except that it refuses a trailer.
/// - Rewriting the images found with [`Writer`] gives a stream that parses
///   to the same images (write → parse round trip), and so does writing
///   images made from the input.
/// - `Header::decode` ∘ `encode` is the identity on decoded headers.
pub fn bfb(data: &[u8]) {
    let whole = verify_chunked(Verifier::new(), data, &[]);
    let sizes = data.get(..data.len().min(8)).unwrap_or_default();
    let chunked = verify_chunked(Verifier::new(), data, sizes);
    let bytewise = verify_chunked(Verifier::new(), data, &[1]);
    assert_eq!(whole, chunked, "the verdict depends on the chunking ({sizes:?})");
    assert_eq!(whole, bytewise, "the verdict differs when fed byte by byte");

    if data.len() >= HEADER_LEN {
        let raw: &[u8; HEADER_LEN] = data[..HEADER_LEN].try_into().expect("24 bytes");
        if let Ok(h) = Header::decode(raw) {
            assert_eq!(
                Header::decode(&h.encode()),
                Ok(h),
                "header encode/decode round trip"
            );
        }
    }

    match &whole {
        Ok(s) => check_summary(data, s),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    write_then_parse(data);
}

fn check_summary(data: &[u8], s: &Summary) {
    assert!(!s.images.is_empty(), "a valid stream has an image");
    assert_eq!(
        s.bfb_bytes + s.trailer_bytes,
        data.len() as u64,
        "images and trailer must account for every byte"
    );
    let mut next = 0u64;
    for (i, img) in s.images.iter().enumerate() {
        assert_eq!(img.index, i);
        assert_eq!(
            img.offset, next,
            "image #{i} does not start where the previous one ends"
        );
        next = img.offset + HEADER_LEN as u64 + hostplane_bfb::padded(u64::from(img.length));
    }
    assert_eq!(next, s.bfb_bytes, "bfb_bytes is not the end of the last image");

    let only = verify_chunked(Verifier::images_only(), data, &[]);
    if s.trailer_bytes == 0 {
        assert_eq!(
            only.as_ref(),
            Ok(s),
            "images_only disagrees on a stream without trailer"
        );
        check_trailers(data, s);
    } else {
        assert!(
            only.is_err(),
            "images_only accepted a trailer of {} bytes",
            s.trailer_bytes
        );
    }

    // Rewrite every image found with the writer (version 1.0 headers, zero
    // padding, a fresh CRC) and keep the trailer: the same images come back.
    let mut w = Writer::new(Vec::new());
    for img in &s.images {
        let start = img.offset as usize;
        let raw: &[u8; HEADER_LEN] = data[start..start + HEADER_LEN].try_into().expect("24 bytes");
        let header = Header::decode(raw).expect("a verified image has a valid header");
        let body = &data[start + HEADER_LEN..start + HEADER_LEN + img.length as usize];
        w.image(img.image_id, body, header.following)
            .expect("write to a Vec");
    }
    let mut out = w.into_inner();
    out.extend_from_slice(&data[s.bfb_bytes as usize..]);
    let again = verify_chunked(Verifier::new(), &out, &[]).expect("a rewritten valid stream must verify");
    assert_eq!(&again, s, "rewriting the images changed what the parser sees");
}

/// After the images of a valid stream, any bytes that do not begin like a
/// header (a bf.cfg), however few, are a trailer; a proper prefix of the
/// magic is a header cut short.
fn check_trailers(data: &[u8], s: &Summary) {
    let magic = hostplane_bfb::MAGIC.to_le_bytes();
    for t in [
        &b"#"[..],
        b"#\n",
        b"A=1",
        b"A=1\n",
        &magic[..1],
        &magic[..2],
        &magic[..3],
    ] {
        let stream = [data, t].concat();
        let got = verify_chunked(Verifier::new(), &stream, &[]);
        if magic.starts_with(t) {
            assert!(
                matches!(got, Err(BfbError::TruncatedHeader { .. })),
                "{t:?} after the images: {got:?}"
            );
        } else {
            let want = Summary {
                trailer_bytes: t.len() as u64,
                ..s.clone()
            };
            assert_eq!(got, Ok(want), "a {}-byte trailer {t:?}", t.len());
        }
    }
}

/// Images made from the input — `[id, len, len bytes of data]...` — written
/// with [`Writer`] must parse back to the same ids and lengths, in any chunking.
fn write_then_parse(data: &[u8]) {
    let mut images = Vec::new();
    let mut rest = data;
    while rest.len() >= 2 {
        let (id, len) = (rest[0], usize::from(rest[1]).min(rest.len() - 2));
        images.push((id, &rest[2..2 + len]));
        rest = &rest[2 + len..];
    }
    if images.is_empty() {
        return;
    }
    let mut w = Writer::new(Vec::new());
    for (i, (id, body)) in images.iter().enumerate() {
        let following = images[i + 1..]
            .iter()
            .fold(0u64, |acc, (id, _)| acc | (1u64 << (id % 64)));
        w.image(*id, body, following).expect("write to a Vec");
    }
    let written = w.written();
    let out = w.into_inner();
    assert_eq!(written, out.len() as u64, "Writer::written");
    let s = verify_chunked(Verifier::images_only(), &out, data.get(..3).unwrap_or_default())
        .unwrap_or_else(|e| panic!("a stream from Writer does not verify: {e}"));
    let got: Vec<(u8, usize)> = s.images.iter().map(|i| (i.image_id, i.length as usize)).collect();
    let want: Vec<(u8, usize)> = images.iter().map(|(id, b)| (*id, b.len())).collect();
    assert_eq!(got, want, "write → parse round trip");
    assert_eq!(s.trailer_bytes, 0);
}

// ---------------------------------------------------------------------------
// rshim_misc

/// A `misc` read (decoded as the agent decodes it, lossily), the DPU log it
/// carries, and the flash verdict over that log.
///
/// - Fields have a non-empty key without whitespace and a trimmed value; log
///   lines are trimmed and non-empty.
/// - The verdict only moves forward, ends at most once, fails exactly on the
///   lines classed as failures, sees a reset only while the installer runs,
///   and succeeds for an installer image only after the installation
///   completed.
/// - A `DEV_NAME` accepted as PCI is a lower-case `dddd:bb:dd.f` address.
pub fn rshim_misc(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let snap = MiscSnapshot::parse(&text);
    for (k, v) in &snap.fields {
        assert!(!k.is_empty() && !k.contains(char::is_whitespace), "bad key {k:?}");
        assert_eq!(v.trim(), v, "value of {k:?} not trimmed");
    }
    for line in &snap.log {
        assert!(!line.is_empty() && line.trim() == line, "bad log line {line:?}");
    }
    if snap.has_log_section {
        assert!(
            text.to_ascii_lowercase().contains("log messages"),
            "a log section without its banner"
        );
    }
    let _ = (snap.display_level(), snap.dev_info(), snap.number("BOOT_TIMEOUT"));
    for (_, v) in &snap.fields {
        if let Some(bdf) = pci_from_dev_name(v) {
            assert_eq!(bdf.len(), 12, "{v:?} -> {bdf:?}");
            assert_eq!(bdf, bdf.to_ascii_lowercase());
            let pf = pf_address(&bdf).expect("a BDF has a function");
            assert!(pf.ends_with(".0") && pf.len() == 12, "{bdf:?} -> PF {pf:?}");
        }
    }

    // Every raw line too, not only those the snapshot kept as log.
    let lines: Vec<&str> = snap.log.iter().map(String::as_str).chain(text.lines()).collect();
    for installer in [false, true] {
        let mut v = Verdict::new(installer);
        let mut done = false;
        let mut installed = false;
        for line in &lines {
            let before = v.stage();
            let step = v.on_line(line);
            assert!(
                v.stage() >= before,
                "the verdict went back from {before} to {}",
                v.stage()
            );
            let _ = v.limit(&StageTimeouts::default());
            if done {
                assert_eq!(step, Step::Same, "a line after the verdict changed it: {line:?}");
                continue;
            }
            let failure = classify_log_line(line).is_failure();
            match &step {
                Step::Failed(l) => assert!(failure && l == line, "failed on {line:?}"),
                _ => assert!(!failure, "the failure line {line:?} did not fail the flash"),
            }
            match &step {
                Step::Same => {}
                Step::Advanced(s) => {
                    assert!(*s > before && *s == v.stage());
                    installed |= *s >= Stage::Installed;
                }
                Step::Succeeded(_) => {
                    assert!(
                        !installer || installed,
                        "success without a completed installation"
                    );
                    assert_eq!(v.stage(), Stage::LinuxUp);
                    done = true;
                }
                Step::Reset(_) => {
                    assert_eq!(
                        before,
                        Stage::Installer,
                        "a reset outside the installer: {line:?}"
                    );
                    done = true;
                }
                Step::Failed(_) | Step::BootedWithoutInstall(_) => done = true,
            }
        }
    }
}

// ---------------------------------------------------------------------------
// redfish

fn finite(x: f64, what: &str) {
    assert!(x.is_finite(), "{what} gave {x}");
}

fn finite_limit(l: &parse::Limit, what: &str) {
    for x in [l.watts, l.min, l.max].into_iter().flatten() {
        finite(x, what);
    }
}

/// The agent's decoding of a BMC's answers: an error body as raw bytes, and
/// any JSON document as each kind of resource it reads.
///
/// - No decoder panics, and every number it returns is finite.
/// - An error is a sentence (non-empty).
pub fn redfish(data: &[u8]) {
    let _ = parse::error_message(data);
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let _ = parse::odata_id(&v).map(parse::last_segment);
    for ptr in [
        "/Members",
        "/Links/Contains",
        "/Links/Chassis",
        "/Links/ContainedBy",
    ] {
        for l in parse::links(&v, ptr) {
            let _ = parse::last_segment(&l);
        }
    }
    for ptr in [
        "/Chassis",
        "/Systems",
        "/Links/Sessions",
        "/SessionService",
        "/Sessions",
        "/EnvironmentMetrics",
        "/Power",
        "/Controls",
        "/Links/ContainedBy",
    ] {
        let _ = parse::link(&v, ptr).map(parse::last_segment);
    }
    let _ = (parse::text(&v, "/Id"), parse::text(&v, "/ControlType"));

    let err = |e: parse::ParseError| assert!(!e.to_string().is_empty(), "an empty error: {e:?}");
    match parse::environment_power(&v) {
        Ok((w, kwh)) => {
            finite(w, "environment_power");
            kwh.into_iter().for_each(|k| finite(k, "environment_power kWh"));
        }
        Err(e) => err(e),
    }
    match parse::power_consumed(&v) {
        Ok(w) => finite(w, "power_consumed"),
        Err(e) => err(e),
    }
    for (what, r) in [
        ("control_limit", parse::control_limit(&v)),
        ("environment_limit", parse::environment_limit(&v)),
        ("power_limit", parse::power_limit(&v)),
    ] {
        match r {
            Ok(l) => finite_limit(&l, what),
            Err(e) => err(e),
        }
    }
}

// ---------------------------------------------------------------------------
// agent_config

/// The agent's config file (`--config`, read as UTF-8 text).
///
/// - Parsing and `validate` never panic; every error names what is wrong.
/// - A config that validates survives a YAML round trip unchanged (what
///   `hostplane-agent` would print back is what it read) and still validates.
pub fn agent_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let origin = Path::new("fuzz/agent.yaml");
    let cfg = match Config::from_yaml(text, origin) {
        Ok(cfg) => cfg,
        Err(e) => {
            assert!(
                e.to_string().starts_with("invalid config fuzz/agent.yaml: "),
                "{e}"
            );
            return;
        }
    };
    let valid = cfg.validate();
    let _ = (cfg.flash_config(), cfg.net_config(), cfg.is_insecure());
    if let Err(e) = valid {
        assert!(e.to_string().starts_with("invalid config"), "{e}");
        return;
    }
    let yaml = serde_norway::to_string(&cfg).expect("a valid config serializes");
    let back = Config::from_yaml(&yaml, origin)
        .unwrap_or_else(|e| panic!("a valid config does not read back: {e}\n{yaml}"));
    assert_eq!(back, cfg, "YAML round trip changed the config:\n{yaml}");
    back.validate()
        .unwrap_or_else(|e| panic!("a valid config is invalid after a round trip: {e}\n{yaml}"));
}

// ---------------------------------------------------------------------------
// host_network

/// The last line an error may point at: one per line break (YAML's breaks;
/// `\r\n` counts twice, an upper bound), plus one more when the text does
/// not end with a break, as libyaml puts the end of the stream on a line of
/// its own (`could not find expected ':' at line 3` for a 2-line file).
fn last_line(text: &str) -> usize {
    let is_break = |c: char| matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}');
    let breaks = text.chars().filter(|c| is_break(*c)).count();
    let open = text.chars().next_back().is_some_and(|c| !is_break(c));
    breaks + 1 + usize::from(open)
}

/// `(line, column)` of an error that ends with ` at line L column C`.
fn position(e: &str) -> Option<(usize, usize)> {
    let (head, column) = e.rsplit_once(" column ")?;
    let (_, line) = head.rsplit_once(" at line ")?;
    Some((line.parse().ok()?, column.parse().ok()?))
}

/// The host-network desired-state file (`hostplane-agent network apply
/// --file`, `net::file::parse`): a `HostNetwork` or a list of
/// `DpuNetwork`s, YAML or JSON (by the file name, or by a leading `{`/`[`).
///
/// - Parsing and building the desired model never panic.
/// - An error is a sentence; a position it gives is inside the text.
/// - What parses survives a JSON round trip (proto3 JSON, as the coordinator
///   sends it) unchanged, and the model accepts or refuses it alike.
pub fn host_network(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let name = if data.len().is_multiple_of(2) {
        "network.yaml"
    } else {
        "network.json"
    };
    let nets = match net::file::parse(name, text, "fuzz") {
        Ok(nets) => nets,
        Err(e) => {
            assert!(!e.is_empty(), "an empty error");
            if let Some((line, column)) = position(&e) {
                assert!(
                    line >= 1 && line <= last_line(text),
                    "{name}: error at line {line}, after the last line ({}): {e}",
                    last_line(text)
                );
                assert!(column <= text.len() + 1, "{name}: error at column {column}: {e}");
            }
            return;
        }
    };
    let built = net::validate(&nets);
    let json = serde_json::to_string(&nets).expect("a parsed network serializes");
    let back = net::file::parse("network.json", &json, "fuzz")
        .unwrap_or_else(|e| panic!("{json} does not parse back: {e}"));
    assert_eq!(back, nets, "JSON round trip changed the network: {json}");
    let rebuilt = net::validate(&back);
    assert_eq!(
        built.as_ref().map_err(ToString::to_string),
        rebuilt.as_ref().map_err(ToString::to_string),
        "the model's verdict changed after a round trip: {json}"
    );
}
