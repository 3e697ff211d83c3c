//! `<root>/.control`: change faults at run time, read every DPU's state.
//!
//! Write one command per line: `rshim1 fault hang:installer`,
//! `rshim0 fault none`, `rshim0 reset`. Read: one status line per DPU.

use std::fmt::Write as _;
use std::sync::Arc;

use crate::config::{Fault, parse_dpu_name};
use crate::dpu::Dpu;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(".control line {line}: {text:?}: expected `rshim<N> fault <fault>` or `rshim<N> reset`")]
    Syntax { line: usize, text: String },
    #[error(".control line {line}: no DPU {dpu}")]
    NoSuchDpu { line: usize, dpu: String },
    #[error(".control line {line}: {source}")]
    Bad { line: usize, source: crate::SimError },
}

/// Apply the commands in `raw` (all are checked before any is applied).
pub(crate) fn apply(dpus: &[Arc<Dpu>], raw: &[u8]) -> Result<(), ControlError> {
    enum Cmd {
        Fault(usize, Fault),
        Reset(usize),
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
        let dpu = parse_dpu_name(words[0])
            .ok()
            .filter(|d| *d < dpus.len())
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
            _ => return Err(syntax()),
        }
    }
    for cmd in cmds {
        match cmd {
            Cmd::Fault(d, f) => dpus[d].set_fault(f),
            Cmd::Reset(d) => dpus[d].sw_reset(),
        }
    }
    Ok(())
}

/// One line per DPU.
pub(crate) fn status(dpus: &[Arc<Dpu>]) -> String {
    let mut out = String::new();
    for d in dpus {
        let s = d.state();
        let _ = writeln!(
            out,
            "{} phase={} version={} installs={} boots={} pushes={} fault={} serial={} dev={} last_error={:?} dpu_os={:?}",
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
                .map(|o| {
                    let paths: Vec<&str> = o.files.iter().map(|f| f.path.as_str()).collect();
                    format!("{} paths={paths:?}", o.summary())
                })
                .unwrap_or_default(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SimConfig;
    use crate::config::Stage;

    fn dpus() -> Vec<Arc<Dpu>> {
        let cfg = SimConfig::default();
        (0..2).map(|i| Arc::new(Dpu::new(i, &cfg))).collect()
    }

    #[test]
    fn fault_commands_change_the_named_dpu() {
        let d = dpus();
        apply(
            &d,
            b"rshim1 fault hang:installer\n# comment\n\nrshim0 fault slow:1MiB\n",
        )
        .unwrap();
        assert_eq!(d[1].fault(), Fault::Hang(Stage::Installer));
        assert_eq!(d[0].fault(), Fault::Slow(1 << 20));
        apply(&d, b"rshim1 fault none").unwrap();
        assert_eq!(d[1].fault(), Fault::None);
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
            assert_eq!(d[0].fault(), Fault::None);
        }
    }
}
