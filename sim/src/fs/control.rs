//! `<root>/.control`: change faults at run time, plug DPUs in and out, read
//! every DPU's state.
//!
//! Write one command per line: `rshim1 fault hang:installer`,
//! `rshim0 fault none`, `rshim0 reset`; hot-plug: `add` (a PCIe DPU at a
//! new `rshim<N>`, see [`Slots::add`]), `add usb` (a USB one), `add pcie serial-in-misc`
//! (its serial shown in `misc` at `DISPLAY_LEVEL 1`), `rshim2 remove`.
//! Read: one status line per DPU plugged in.

use std::fmt::Write as _;
use std::sync::Arc;

use super::slots::Slots;
use crate::config::{Fault, parse_dpu_name};
use crate::dpu::{Attach, Dpu};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        ".control line {line}: {text:?}: expected `rshim<N> fault <fault>`, `rshim<N> reset`, \
         `rshim<N> remove` or `add [pcie|usb] [serial-in-misc]`"
    )]
    Syntax { line: usize, text: String },
    #[error(".control line {line}: no DPU {dpu}")]
    NoSuchDpu { line: usize, dpu: String },
    #[error(".control line {line}: {source}")]
    Bad { line: usize, source: crate::SimError },
}

/// Apply the commands in `raw` (all are checked before any is applied).
pub(crate) fn apply(slots: &Slots, raw: &[u8]) -> Result<(), ControlError> {
    enum Cmd {
        Fault(Arc<Dpu>, Fault),
        Reset(Arc<Dpu>),
        Remove(usize, usize),
        Add(Attach, Option<bool>, usize),
    }
    let text = String::from_utf8_lossy(raw);
    let mut cmds = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.is_empty() || words[0].starts_with('#') {
            continue;
        }
        let syntax = || ControlError::Syntax {
            line: line_no,
            text: line.trim().to_string(),
        };
        if words[0] == "add" {
            let mut attach = Attach::Pcie;
            let mut serial = None;
            for w in &words[1..] {
                match *w {
                    "serial-in-misc" => serial = Some(true),
                    w => attach = w.parse().map_err(|_| syntax())?,
                }
            }
            cmds.push(Cmd::Add(attach, serial, line_no));
            continue;
        }
        let index = parse_dpu_name(words[0]).ok();
        let dpu = index
            .and_then(|d| slots.get(d))
            .ok_or_else(|| ControlError::NoSuchDpu {
                line: line_no,
                dpu: words[0].to_string(),
            })?;
        match words[1..] {
            ["fault", spec] => {
                let fault = spec.parse().map_err(|source| ControlError::Bad {
                    line: line_no,
                    source,
                })?;
                cmds.push(Cmd::Fault(dpu, fault));
            }
            ["reset"] => cmds.push(Cmd::Reset(dpu)),
            ["remove"] => cmds.push(Cmd::Remove(dpu.index, line_no)),
            _ => return Err(syntax()),
        }
    }
    for cmd in cmds {
        match cmd {
            Cmd::Fault(d, f) => d.set_fault(f),
            Cmd::Reset(d) => d.sw_reset(),
            // The FUSE thread does not wait for the kernel to be told.
            Cmd::Remove(d, line) => {
                if let Err(source) = slots.remove(d, super::dir_ino(d)) {
                    return Err(ControlError::Bad { line, source });
                }
            }
            Cmd::Add(attach, serial, line) => {
                if let Err(source) = slots.add(attach, serial) {
                    return Err(ControlError::Bad { line, source });
                }
            }
        }
    }
    Ok(())
}

/// The config files of `bfb_modify_os`, space-free: `PATH:BYTES:SHA256` joined
/// by `,`, PATH with every byte outside `[A-Za-z0-9/._-]` as `%XX`, SHA256 the
/// first 16 hex digits of the content's digest.
pub(crate) fn dpu_os_files(os: &crate::dpu::bfcfg::DpuOsReport) -> String {
    use sha2::Digest;
    os.files
        .iter()
        .map(|f| {
            let mut path = String::new();
            for b in f.path.bytes() {
                if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-') {
                    path.push(b as char);
                } else {
                    let _ = write!(path, "%{b:02X}");
                }
            }
            let digest = hex::encode(sha2::Sha256::digest(&f.content));
            format!("{path}:{}:{}", f.content.len(), &digest[..16])
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// One line per DPU plugged in.
pub(crate) fn status(slots: &Slots) -> String {
    let mut out = String::new();
    for d in slots.present() {
        let s = d.state();
        let _ = writeln!(
            out,
            "{} phase={} version={} installs={} boots={} pushes={} fault={} serial={} dev={} last_error={:?} dpu_os={} dpu_os_files={}",
            s.name,
            s.phase,
            s.installed_version.as_deref().unwrap_or("-"),
            s.install_count,
            s.boot_count,
            s.push_count,
            s.fault,
            s.serial,
            s.dev_name,
            s.last_error.as_deref().unwrap_or(""),
            s.dpu_os
                .as_ref()
                .map(|o| o.summary().replace(' ', ","))
                .unwrap_or_default(),
            s.dpu_os.as_ref().map(dpu_os_files).unwrap_or_default(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SimConfig;
    use crate::config::Stage;

    fn dpus() -> Slots {
        Slots::new(&SimConfig::default())
    }

    fn dpu(s: &Slots, d: usize) -> Arc<Dpu> {
        s.get(d).unwrap()
    }

    #[test]
    fn fault_commands_change_the_named_dpu() {
        let d = dpus();
        apply(
            &d,
            b"rshim1 fault hang:installer\n# comment\n\nrshim0 fault slow:1MiB\n",
        )
        .unwrap();
        assert_eq!(dpu(&d, 1).fault(), Fault::Hang(Stage::Installer));
        assert_eq!(dpu(&d, 0).fault(), Fault::Slow(1 << 20));
        apply(&d, b"rshim1 fault none").unwrap();
        assert_eq!(dpu(&d, 1).fault(), Fault::None);
        let s = status(&d);
        assert!(s.starts_with("rshim0 phase=up version=4.8.0 "), "{s}");
        assert!(s.contains("fault=slow:1048576"), "{s}");
    }

    #[test]
    fn bad_commands_change_nothing() {
        let d = dpus();
        for bad in [
            &b"rshim0 fault busy\nrshim9 fault busy"[..],
            b"rshim0 fault busy\nrshim1 explode",
            b"rshim0 fault busy\nrshim1 fault hang:nowhere",
        ] {
            let err = apply(&d, bad).unwrap_err().to_string();
            assert!(err.contains("line 2"), "{err}");
            assert_eq!(dpu(&d, 0).fault(), Fault::None);
        }
        for bad in [
            &b"add\nrshim0 remove\nadd firewire"[..],
            b"add usb\nrshim7 remove",
            b"rshim0 remove now",
        ] {
            let err = apply(&d, bad).unwrap_err().to_string();
            assert!(err.contains(".control line"), "{err}");
            assert_eq!(d.present().len(), 2, "{err}: nothing added or removed");
        }
    }

    #[test]
    fn dpus_are_plugged_in_and_out() {
        let d = dpus();
        apply(&d, b"add usb serial-in-misc\nadd\n").unwrap();
        let names: Vec<String> = d.present().iter().map(|x| x.name.clone()).collect();
        assert_eq!(names, ["rshim0", "rshim1", "rshim2", "rshim3"]);
        let usb = dpu(&d, 2);
        assert_eq!(usb.dev_name, "usb-1-1.3");
        assert_eq!(dpu(&d, 3).dev_name, "pcie-0000:07:00.2");
        // serial-in-misc: shown at DISPLAY_LEVEL 1 for the one that asked.
        usb.misc_write(b"DISPLAY_LEVEL 1").unwrap();
        let misc = String::from_utf8(usb.misc_snapshot()).unwrap();
        assert!(
            misc.contains(&format!("SERIAL_NUM      {}", usb.serial)),
            "{misc}"
        );

        apply(&d, b"rshim1 remove").unwrap();
        assert!(d.get(1).is_none());
        let s = status(&d);
        assert!(!s.contains("rshim1 "), "{s}");
        assert!(s.contains("rshim2 ") && s.contains("dev=usb-1-1.3"), "{s}");
        // A never-used index first, as the rshim driver does: rshim4, not rshim1.
        apply(&d, b"add").unwrap();
        assert!(d.get(1).is_none());
        assert_eq!(dpu(&d, 4).dev_name, "pcie-0000:08:00.2");
        let err = apply(&d, b"rshim9 remove").unwrap_err().to_string();
        assert!(err.contains("no DPU rshim9"), "{err}");
    }
}
