//! Simulator configuration: how many DPUs, how fast they boot, which faults they have.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::SimError;

/// Most DPUs one simulator serves (the real rshim driver's limit).
pub const MAX_DPUS: usize = 64;

/// Delays of the simulated DPU. The defaults make a full install take about
/// 3 s after the push; tests use [`Timings::uniform`] with a few milliseconds,
/// a demo can use seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// Opening `boot` resets the DPU and waits this long before the open returns.
    pub reset: Duration,
    /// Between two boot stages (two log lines) of the boot sequence.
    pub stage: Duration,
    /// Between `Ubuntu installation started` and `Ubuntu installation completed`.
    pub install: Duration,
    /// Between `Rebooting...` and `Linux up`.
    pub reboot: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            reset: Duration::from_millis(500),
            stage: Duration::from_millis(150),
            install: Duration::from_millis(700),
            reboot: Duration::from_millis(500),
        }
    }
}

impl Timings {
    /// Every delay the same (tests: a few milliseconds).
    pub fn uniform(d: Duration) -> Timings {
        Timings {
            reset: d,
            stage: d,
            install: d,
            reboot: d,
        }
    }
}

/// A boot stage of the simulated DPU, in boot order. `hang:<stage>` stops the
/// log right before the stage's first line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// `INFO[PSC]: PSC BL1 START`
    Bl1,
    /// `INFO[BL2]: start`, `INFO[BL2]: boot mode (...)`
    Bl2,
    /// `INFO[BL31]: start`, `INFO[BL31]: runtime`
    Bl31,
    /// `INFO[UEFI]: eMMC init`, `INFO[UEFI]: exit Boot Service`
    Uefi,
    /// `Installing BFB version`, `Found bf.cfg`, `Ubuntu installation started` ... `Installation finished`
    Installer,
    /// `INFO[MISC]: Rebooting...`
    Reboot,
    /// `INFO[MISC]: Linux up`
    Linux,
    /// `INFO[MISC]: DPU is ready`
    Ready,
}

impl Stage {
    pub const ALL: [Stage; 8] = [
        Stage::Bl1,
        Stage::Bl2,
        Stage::Bl31,
        Stage::Uefi,
        Stage::Installer,
        Stage::Reboot,
        Stage::Linux,
        Stage::Ready,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Bl1 => "bl1",
            Stage::Bl2 => "bl2",
            Stage::Bl31 => "bl31",
            Stage::Uefi => "uefi",
            Stage::Installer => "installer",
            Stage::Reboot => "reboot",
            Stage::Linux => "linux",
            Stage::Ready => "ready",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Stage {
    type Err = SimError;

    fn from_str(s: &str) -> Result<Stage, SimError> {
        let stage = match s.to_ascii_lowercase().as_str() {
            "bl1" | "psc" => Stage::Bl1,
            "bl2" => Stage::Bl2,
            "bl31" => Stage::Bl31,
            "uefi" => Stage::Uefi,
            "installer" | "install" => Stage::Installer,
            "reboot" | "rebooting" => Stage::Reboot,
            "linux" => Stage::Linux,
            "ready" => Stage::Ready,
            _ => {
                return Err(SimError::Config {
                    field: "fault",
                    message: format!(
                        "unknown boot stage {s:?} (expected one of bl1, bl2, bl31, uefi, installer, reboot, linux, ready)"
                    ),
                });
            }
        };
        Ok(stage)
    }
}

/// A fault injected into one DPU. Written as `none`, `corrupt`,
/// `hang:<stage>`, `install-error`, `slow:<bytes per second>`, `busy`, `panic`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    #[default]
    None,
    /// One byte of the incoming boot stream is flipped (the first data byte of
    /// the last image), so that image fails its CRC.
    Corrupt,
    /// The boot log stops right before this stage, forever (until a reset).
    Hang(Stage),
    /// ` ERR[MISC]: Installation failed` after `Ubuntu installation started`;
    /// then the old OS (if any) boots and prints `Linux up`.
    InstallError,
    /// Writes to `boot` are throttled to this many bytes per second.
    Slow(u64),
    /// Opening `boot` fails with EBUSY, as if the BMC owned the device.
    Busy,
    /// BL31 panics: ` PANIC(BL31): PC = 0x...` and register lines, no boot.
    Panic,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::None => f.write_str("none"),
            Fault::Corrupt => f.write_str("corrupt"),
            Fault::Hang(stage) => write!(f, "hang:{stage}"),
            Fault::InstallError => f.write_str("install-error"),
            Fault::Slow(bps) => write!(f, "slow:{bps}"),
            Fault::Busy => f.write_str("busy"),
            Fault::Panic => f.write_str("panic"),
        }
    }
}

impl FromStr for Fault {
    type Err = SimError;

    fn from_str(s: &str) -> Result<Fault, SimError> {
        let s = s.trim();
        let (kind, arg) = match s.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (s, None),
        };
        let bad = |message: String| SimError::Config {
            field: "fault",
            message,
        };
        match (kind.to_ascii_lowercase().as_str(), arg) {
            ("none", None) => Ok(Fault::None),
            ("corrupt", None) => Ok(Fault::Corrupt),
            ("install-error", None) => Ok(Fault::InstallError),
            ("busy", None) => Ok(Fault::Busy),
            ("panic", None) => Ok(Fault::Panic),
            ("hang", Some(stage)) => Ok(Fault::Hang(stage.parse()?)),
            ("slow", Some(rate)) => {
                let bps = parse_size(rate).map_err(|e| bad(format!("slow:{rate}: {e}")))?;
                if bps == 0 {
                    return Err(bad("slow:0 would never finish; use hang:<stage>".into()));
                }
                Ok(Fault::Slow(bps))
            }
            _ => Err(bad(format!(
                "unknown fault {s:?} (expected none, corrupt, hang:<stage>, install-error, slow:<bytes/s>, busy, panic)"
            ))),
        }
    }
}

/// Parse `rshim1=hang:installer` (or `1=...`) into a DPU index and a fault.
pub fn parse_fault_assignment(s: &str) -> Result<(usize, Fault), SimError> {
    let (dpu, fault) = s.split_once('=').ok_or_else(|| SimError::Config {
        field: "fault",
        message: format!("{s:?}: expected rshim<N>=<fault>"),
    })?;
    Ok((parse_dpu_name(dpu)?, fault.parse()?))
}

/// `rshim3` or `3` → 3.
pub fn parse_dpu_name(s: &str) -> Result<usize, SimError> {
    let digits = s.trim().strip_prefix("rshim").unwrap_or(s.trim());
    digits.parse().map_err(|_| SimError::Config {
        field: "dpu",
        message: format!("{s:?} is not a DPU name (expected rshim<N>)"),
    })
}

/// Parse a byte count: `4096`, `64KiB`, `64MiB`, `1GiB`, `10MB` (decimal), `1G` (binary).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "k" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "{s:?}: unknown size unit {other:?} (use B, KiB, MiB, GiB, KB, MB, GB)"
            ));
        }
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
}

/// Configuration of one simulator mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// Number of DPUs: `rshim0` .. `rshim<dpus-1>`.
    pub dpus: usize,
    pub timings: Timings,
    /// Faults by DPU index; DPUs not listed have none.
    pub faults: BTreeMap<usize, Fault>,
    /// Version of the OS already on each DPU's eMMC when the simulator starts;
    /// `None`: the DPUs start blank (a reset then finds nothing to boot).
    pub preinstalled: Option<String>,
    /// Add a `SERIAL_NUM` line to `misc` at `DISPLAY_LEVEL 1` (real rshim has none).
    pub serial_in_misc: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            dpus: 2,
            timings: Timings::default(),
            faults: BTreeMap::new(),
            preinstalled: Some("4.8.0".to_string()),
            serial_in_misc: false,
        }
    }
}

impl SimConfig {
    /// Cross-field checks.
    pub fn validate(&self) -> Result<(), SimError> {
        if self.dpus == 0 || self.dpus > MAX_DPUS {
            return Err(SimError::Config {
                field: "dpus",
                message: format!("{} DPUs: must be 1..={MAX_DPUS}", self.dpus),
            });
        }
        if let Some((&dpu, _)) = self.faults.iter().find(|(d, _)| **d >= self.dpus) {
            return Err(SimError::Config {
                field: "fault",
                message: format!("fault for rshim{dpu}, but only {} DPUs are simulated", self.dpus),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_round_trip_through_their_text_form() {
        let cases = [
            ("none", Fault::None),
            ("corrupt", Fault::Corrupt),
            ("hang:installer", Fault::Hang(Stage::Installer)),
            ("hang:bl31", Fault::Hang(Stage::Bl31)),
            ("install-error", Fault::InstallError),
            ("slow:1048576", Fault::Slow(1 << 20)),
            ("busy", Fault::Busy),
            ("panic", Fault::Panic),
        ];
        for (text, fault) in cases {
            assert_eq!(text.parse::<Fault>().unwrap(), fault, "{text}");
            assert_eq!(fault.to_string(), text);
        }
        assert_eq!("slow:1MiB".parse::<Fault>().unwrap(), Fault::Slow(1 << 20));
        assert_eq!("hang:psc".parse::<Fault>().unwrap(), Fault::Hang(Stage::Bl1));
    }

    #[test]
    fn bad_faults_are_rejected_with_the_reason() {
        for bad in [
            "hang",
            "hang:nowhere",
            "slow",
            "slow:0",
            "slow:fast",
            "explode",
            "busy:1",
        ] {
            let err = bad.parse::<Fault>().unwrap_err().to_string();
            assert!(err.contains("fault") || err.contains("stage"), "{bad}: {err}");
        }
    }

    #[test]
    fn fault_assignments_name_the_dpu() {
        assert_eq!(
            parse_fault_assignment("rshim1=hang:installer").unwrap(),
            (1, Fault::Hang(Stage::Installer))
        );
        assert_eq!(parse_fault_assignment("0=busy").unwrap(), (0, Fault::Busy));
        assert!(parse_fault_assignment("rshimX=busy").is_err());
        assert!(parse_fault_assignment("busy").is_err());
    }

    #[test]
    fn sizes_accept_binary_and_decimal_suffixes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("10MB").unwrap(), 10_000_000);
        assert!(parse_size("1TiB").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn validate_rejects_faults_for_missing_dpus() {
        let mut cfg = SimConfig {
            dpus: 2,
            ..SimConfig::default()
        };
        assert!(cfg.validate().is_ok());
        cfg.faults.insert(2, Fault::Busy);
        assert!(cfg.validate().unwrap_err().to_string().contains("rshim2"));
        cfg.faults.clear();
        cfg.dpus = 0;
        assert!(cfg.validate().is_err());
    }
}
