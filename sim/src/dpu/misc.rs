//! The `misc` file: the status text (a fresh snapshot per open) and the
//! `KEY VALUE` commands, in the formats of the real rshim driver.

use std::fmt::Write as _;

use super::{Dpu, Inner};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MiscError {
    #[error("{rshim}: empty misc command")]
    Empty { rshim: String },
    #[error("{rshim}: one command per write, got {lines} lines")]
    SeveralCommands { rshim: String, lines: usize },
    #[error("{rshim}: unknown misc key {key:?}")]
    UnknownKey { rshim: String, key: String },
    #[error("{rshim}: bad value {value:?} for {key}")]
    BadValue {
        rshim: String,
        key: String,
        value: String,
    },
    #[error("{rshim}: FORCE_CMD needs DROP_MODE 1")]
    ForceNotInDropMode { rshim: String },
}

impl MiscError {
    pub fn errno(&self) -> i32 {
        libc::EINVAL
    }
}

const DASHES: &str = "---------------------------------------";

pub(crate) fn render(dpu: &Dpu, g: &mut Inner, serial_in_misc: bool) -> String {
    let s = &g.settings;
    let mut out = String::with_capacity(2048);
    let mut kv = |key: &str, value: std::fmt::Arguments<'_>| {
        let _ = writeln!(out, "{key:<16}{value}");
    };
    kv(
        "DISPLAY_LEVEL",
        format_args!("{} (0:basic, 1:advanced, 2:log)", s.display_level),
    );
    kv("BF_MODE", format_args!("DPU mode"));
    kv(
        "BOOT_MODE",
        format_args!("{} (0:rshim, 1:emmc, 2:emmc-boot-swap)", s.boot_mode),
    );
    kv("BOOT_TIMEOUT", format_args!("{} (seconds)", s.boot_timeout));
    kv("USB_TIMEOUT", format_args!("{} (seconds)", s.usb_timeout));
    kv(
        "DROP_MODE",
        format_args!("{} (0:normal, 1:drop)", u8::from(s.drop_mode)),
    );
    kv("SW_RESET", format_args!("0 (1: reset)"));
    kv("DEV_NAME", format_args!("{}", dpu.dev_name));
    kv("DEV_INFO", format_args!("BlueField-3(Rev 1)"));
    kv("UP_TIME", format_args!("{}(s)", g.reset_at.elapsed().as_secs()));
    kv(
        "FORCE_CMD",
        format_args!("{} (1: send Force command)", u8::from(s.force_cmd)),
    );
    match s.display_level {
        1 => {
            let m = s.peer_mac;
            kv(
                "BOOT_RESET_SKIP",
                format_args!("{} (1: skip)", u8::from(s.boot_reset_skip)),
            );
            kv(
                "PEER_MAC",
                format_args!(
                    "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} (rw)",
                    m[0], m[1], m[2], m[3], m[4], m[5]
                ),
            );
            kv("PXE_ID", format_args!("0x{:08x} (rw)", s.pxe_id));
            kv("VLAN_ID", format_args!("{} {} (rw)", s.vlan[0], s.vlan[1]));
            kv(
                "CLEAR_ON_READ",
                format_args!("{} (0:no, 1:yes)", u8::from(s.clear_on_read)),
            );
            if serial_in_misc {
                kv("SERIAL_NUM", format_args!("{}", dpu.serial));
            }
        }
        2 => {
            let _ = writeln!(out, "{DASHES}\n             Log Messages\n{DASHES}");
            for line in g.log.lines() {
                out.push_str(line);
                out.push('\n');
            }
            if s.clear_on_read {
                g.log.clear();
            }
        }
        _ => {}
    }
    out
}

fn parse_dec(v: &str) -> Option<u32> {
    v.parse().ok()
}

/// rshim parses some values with `%x`: hex, with or without `0x`.
fn parse_hex(v: &str) -> Option<u32> {
    let v = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")).unwrap_or(v);
    u32::from_str_radix(v, 16).ok()
}

fn parse_bool(v: u32) -> Option<bool> {
    match v {
        0 => Some(false),
        1 => Some(true),
        _ => None,
    }
}

fn parse_mac(v: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = v.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Apply one command. Returns true when it asks for a reset (`SW_RESET 1`).
pub(crate) fn apply(rshim: &str, g: &mut Inner, raw: &[u8]) -> Result<bool, MiscError> {
    let text = String::from_utf8_lossy(raw);
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let line = match lines.as_slice() {
        [] => {
            return Err(MiscError::Empty {
                rshim: rshim.to_string(),
            });
        }
        [one] => *one,
        more => {
            return Err(MiscError::SeveralCommands {
                rshim: rshim.to_string(),
                lines: more.len(),
            });
        }
    };
    let (key, value) = match line.split_once(char::is_whitespace) {
        Some((k, v)) => (k, v.trim()),
        None => (line, ""),
    };
    let bad = || MiscError::BadValue {
        rshim: rshim.to_string(),
        key: key.to_string(),
        value: value.to_string(),
    };
    let s = &mut g.settings;
    let mut reset = false;
    match key {
        "DISPLAY_LEVEL" => {
            s.display_level = parse_dec(value).filter(|v| *v <= 2).ok_or_else(bad)? as u8;
        }
        "BOOT_MODE" => s.boot_mode = parse_hex(value).filter(|v| *v <= 2).ok_or_else(bad)? as u8,
        "BOOT_TIMEOUT" => s.boot_timeout = parse_dec(value).filter(|v| *v > 0).ok_or_else(bad)?,
        "USB_TIMEOUT" => {
            let v = parse_dec(value).filter(|v| *v <= 300).ok_or_else(bad)?;
            s.usb_timeout = if v == 0 { 40 } else { v };
        }
        "DROP_MODE" => s.drop_mode = parse_dec(value).and_then(parse_bool).ok_or_else(bad)?,
        "CLEAR_ON_READ" => s.clear_on_read = parse_dec(value).and_then(parse_bool).ok_or_else(bad)?,
        "BOOT_RESET_SKIP" => s.boot_reset_skip = parse_hex(value).and_then(parse_bool).ok_or_else(bad)?,
        "SW_RESET" => reset = parse_hex(value).ok_or_else(bad)? != 0,
        "FORCE_CMD" => {
            if parse_hex(value).ok_or_else(bad)? != 0 {
                if !s.drop_mode {
                    return Err(MiscError::ForceNotInDropMode {
                        rshim: rshim.to_string(),
                    });
                }
                s.force_cmd = true;
                // The other owner (BMC) is asked to release the device, and does.
                if g.fault == crate::Fault::Busy {
                    g.fault = crate::Fault::None;
                }
            }
        }
        "PEER_MAC" => s.peer_mac = parse_mac(value).ok_or_else(bad)?,
        "PXE_ID" => s.pxe_id = parse_hex(value).ok_or_else(bad)?,
        "VLAN_ID" => {
            let ids: Option<Vec<u32>> = value
                .split_whitespace()
                .map(|v| parse_dec(v).filter(|id| *id < 4096))
                .collect();
            match ids.as_deref() {
                Some([a]) => s.vlan = [*a, 0],
                Some([a, b]) => s.vlan = [*a, *b],
                _ => return Err(bad()),
            }
        }
        _ => {
            return Err(MiscError::UnknownKey {
                rshim: rshim.to_string(),
                key: key.to_string(),
            });
        }
    }
    tracing::debug!(rshim, key, value, "misc command");
    Ok(reset)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::SimConfig;

    fn dpu() -> Arc<Dpu> {
        Arc::new(Dpu::new(0, &SimConfig::default()))
    }

    fn text(d: &Dpu) -> String {
        String::from_utf8(d.misc_snapshot()).unwrap()
    }

    #[test]
    fn level_0_shows_the_basic_keys_padded_to_16() {
        let d = dpu();
        let t = text(&d);
        let keys: Vec<&str> = t.lines().map(|l| l[..16].trim_end()).collect();
        assert_eq!(
            keys,
            [
                "DISPLAY_LEVEL",
                "BF_MODE",
                "BOOT_MODE",
                "BOOT_TIMEOUT",
                "USB_TIMEOUT",
                "DROP_MODE",
                "SW_RESET",
                "DEV_NAME",
                "DEV_INFO",
                "UP_TIME",
                "FORCE_CMD"
            ]
        );
        assert!(t.contains("DEV_NAME        pcie-0000:04:00.2\n"), "{t}");
        assert!(t.contains("DEV_INFO        BlueField-3(Rev 1)\n"));
        assert!(t.contains("BOOT_MODE       1 (0:rshim, 1:emmc, 2:emmc-boot-swap)\n"));
    }

    #[test]
    fn level_1_adds_the_advanced_keys() {
        let d = dpu();
        d.misc_write(b"DISPLAY_LEVEL 1\n").unwrap();
        d.misc_write(b"PEER_MAC 00:11:22:aa:bb:cc").unwrap();
        d.misc_write(b"PXE_ID 0x1234").unwrap();
        d.misc_write(b"VLAN_ID 10 20").unwrap();
        let t = text(&d);
        assert!(t.contains("BOOT_RESET_SKIP 0 (1: skip)\n"), "{t}");
        assert!(t.contains("PEER_MAC        00:11:22:aa:bb:cc (rw)\n"), "{t}");
        assert!(t.contains("PXE_ID          0x00001234 (rw)\n"), "{t}");
        assert!(t.contains("VLAN_ID         10 20 (rw)\n"), "{t}");
        assert!(t.contains("CLEAR_ON_READ   0 (0:no, 1:yes)\n"), "{t}");
        assert!(!t.contains("SERIAL_NUM"));
    }

    #[test]
    fn level_2_shows_the_log_and_clear_on_read_drains_it() {
        let d = dpu();
        d.lock().log_line("rshim0", " INFO[MISC]: hello".into());
        d.misc_write(b"DISPLAY_LEVEL 2").unwrap();
        let t = text(&d);
        assert!(t.contains(&format!(
            "{DASHES}\n             Log Messages\n{DASHES}\n INFO[MISC]: hello\n"
        )));
        assert!(
            text(&d).contains(" INFO[MISC]: hello"),
            "no drain without CLEAR_ON_READ"
        );
        d.misc_write(b"CLEAR_ON_READ 1").unwrap();
        assert!(text(&d).contains(" INFO[MISC]: hello"));
        assert!(
            !text(&d).contains(" INFO[MISC]: hello"),
            "drained by the previous read"
        );
        assert_eq!(d.history(), vec![" INFO[MISC]: hello".to_string()]);
    }

    #[test]
    fn bad_commands_are_einval_with_the_key() {
        let d = dpu();
        let cases: [(&[u8], &str); 10] = [
            (b"NO_SUCH_KEY 1", "unknown misc key \"NO_SUCH_KEY\""),
            (b"DISPLAY_LEVEL 7", "bad value \"7\" for DISPLAY_LEVEL"),
            (b"DISPLAY_LEVEL", "bad value \"\" for DISPLAY_LEVEL"),
            (b"DROP_MODE 2", "DROP_MODE"),
            (b"CLEAR_ON_READ yes", "CLEAR_ON_READ"),
            (b"PEER_MAC 00:11:22", "PEER_MAC"),
            (b"VLAN_ID 5000", "VLAN_ID"),
            (b"FORCE_CMD 1", "DROP_MODE 1"),
            (b"", "empty"),
            (b"DISPLAY_LEVEL 1\nCLEAR_ON_READ 1\n", "one command per write"),
        ];
        for (cmd, want) in cases {
            let err = d.misc_write(cmd).unwrap_err();
            assert_eq!(err.errno(), libc::EINVAL);
            assert!(err.to_string().contains(want), "{cmd:?}: {err}");
            assert!(err.to_string().starts_with("rshim0: "), "{err}");
        }
    }

    #[test]
    fn force_cmd_in_drop_mode_releases_a_busy_device() {
        let d = dpu();
        d.set_fault(crate::Fault::Busy);
        d.misc_write(b"DROP_MODE 1").unwrap();
        d.misc_write(b"FORCE_CMD 1").unwrap();
        assert_eq!(d.fault(), crate::Fault::None);
        assert!(text(&d).contains("FORCE_CMD       1 (1: send Force command)"));
    }
}
