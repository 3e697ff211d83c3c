//! The verdict over the DPU's boot log: a state machine
//! push → boot → installer → installed → linux-up, with a timeout per stage.
//!
//! Unlike `bfb-install`, any ERR, ASSERT, Exception, PANIC or CRITICAL ERROR
//! line is a failure carrying that line, even if `Linux up` follows (a failed
//! install may boot the old OS), and `Linux up` without a completed
//! installation is not a success. A boot-firmware start line (PSC BL1,
//! BL1, BL2, BL2R or BL31 `start`) while the installer runs means the DPU was
//! reset under the installation (another flash, the BMC, a `SW_RESET`): a
//! failure at once, not a wait for the install timeout. (After the
//! installation completed the DPU reboots, so the same lines are normal.)

use std::fmt;
use std::time::Duration;

use crate::rshim::classify_log_line;

use super::StageTimeouts;

/// How far a flash got. Ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// Download / cache lookup, image verification, bf.cfg rendering.
    Prepare,
    /// Claiming and opening the rshim device.
    Device,
    /// Streaming BFB + bf.cfg into `boot`.
    Push,
    /// The DPU printed its first boot lines.
    Boot,
    /// The installer started (`installation started` / `Found bf.cfg`).
    Installer,
    /// The installer finished (`installation completed` / `Installation finished`).
    Installed,
    /// `Linux up` / `DPU is ready` after the installation.
    LinuxUp,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Prepare => "prepare",
            Stage::Device => "device",
            Stage::Push => "push",
            Stage::Boot => "boot",
            Stage::Installer => "installer",
            Stage::Installed => "installed",
            Stage::LinuxUp => "linux-up",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one log line did to the verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing changed.
    Same,
    /// A new stage was reached.
    Advanced(Stage),
    /// The DPU reported a failure (this line).
    Failed(String),
    /// The DPU booted Linux but the installation never completed (this line).
    BootedWithoutInstall(String),
    /// The DPU started booting again while the installer ran (this line).
    Reset(String),
    /// Installed and up (this line).
    Succeeded(String),
}

/// The state machine. Feed it every new log line in order.
#[derive(Debug, Clone)]
pub struct Verdict {
    stage: Stage,
    /// False for a firmware-only ("flat") BFB: no installer runs, so `Linux up`
    /// after boot lines is the success signal.
    installer: bool,
    done: bool,
}

fn contains_ci(line: &str, needle: &str) -> bool {
    line.to_ascii_lowercase().contains(needle)
}

impl Verdict {
    pub fn new(installer: bool) -> Verdict {
        Verdict {
            stage: Stage::Push,
            installer,
            done: false,
        }
    }

    pub fn stage(&self) -> Stage {
        self.stage
    }

    pub fn on_line(&mut self, line: &str) -> Step {
        if self.done {
            return Step::Same;
        }
        if classify_log_line(line).is_failure() {
            self.done = true;
            return Step::Failed(line.to_string());
        }
        if self.stage == Stage::Installer && is_boot_start(line) {
            self.done = true;
            return Step::Reset(line.to_string());
        }
        let lower = line.to_ascii_lowercase();
        if lower.contains("linux up") || lower.contains("dpu is ready") {
            self.done = true;
            if self.stage >= Stage::Installed || (!self.installer && self.stage >= Stage::Push) {
                self.stage = Stage::LinuxUp;
                return Step::Succeeded(line.to_string());
            }
            return Step::BootedWithoutInstall(line.to_string());
        }
        let reached =
            if contains_ci(line, "installation completed") || contains_ci(line, "installation finished") {
                Stage::Installed
            } else if contains_ci(line, "installation started") || contains_ci(line, "found bf.cfg") {
                Stage::Installer
            } else {
                Stage::Boot
            };
        if reached > self.stage {
            self.stage = reached;
            Step::Advanced(reached)
        } else {
            Step::Same
        }
    }

    /// The stage being waited for: the one the next awaited line reaches.
    pub fn waiting(&self) -> Stage {
        match self.stage {
            Stage::Prepare | Stage::Device | Stage::Push => Stage::Boot,
            Stage::Boot if self.installer => Stage::Installer,
            Stage::Boot => Stage::LinuxUp,
            Stage::Installer => Stage::Installed,
            Stage::Installed | Stage::LinuxUp => Stage::LinuxUp,
        }
    }

    /// How long the current stage may last (counted once the push is done)
    /// and what it waits for.
    pub fn limit(&self, t: &StageTimeouts) -> (Duration, &'static str) {
        match self.stage {
            Stage::Prepare | Stage::Device | Stage::Push => (t.boot, "the DPU's first boot log line"),
            Stage::Boot if self.installer => (t.installer, "the installer to start"),
            Stage::Boot => (t.linux_up, "`Linux up` / `DPU is ready`"),
            Stage::Installer => (t.install, "the installation to complete"),
            Stage::Installed | Stage::LinuxUp => (t.linux_up, "`Linux up` / `DPU is ready`"),
        }
    }
}

/// A line the boot firmware prints when the chip starts from reset:
/// ` INFO[PSC]: PSC BL1 START`, ` INFO[BL2]: start`, ` INFO[BL31]: start`, ...
pub(crate) fn is_boot_start(line: &str) -> bool {
    let t = line.trim();
    if t.to_ascii_uppercase().contains("PSC BL1 START") {
        return true;
    }
    let Some((head, text)) = t.split_once("]:") else {
        return false;
    };
    let module = head.rsplit_once('[').map_or("", |(_, m)| m);
    matches!(module, "BL1" | "BL2" | "BL2R" | "BL31") && text.trim().eq_ignore_ascii_case("start")
}

#[cfg(test)]
mod tests {
    use super::*;

    const INSTALL: &[&str] = &[
        " INFO[PSC]: PSC BL1 START",
        " INFO[BL2]: start",
        " INFO[BL2]: boot mode (rshim)",
        " INFO[BL31]: start",
        " INFO[BL31]: runtime",
        " INFO[UEFI]: eMMC init",
        " INFO[UEFI]: exit Boot Service",
        " INFO[MISC]: Found bf.cfg",
        " INFO[MISC]: Ubuntu installation started",
        " INFO[MISC]: Ubuntu installation completed",
        " INFO[MISC]: Installation finished",
        " INFO[MISC]: Rebooting...",
        " INFO[MISC]: Linux up",
        " INFO[MISC]: DPU is ready",
    ];

    fn run(installer: bool, lines: &[&str]) -> (Vec<Step>, Stage) {
        let mut v = Verdict::new(installer);
        let steps = lines
            .iter()
            .map(|l| v.on_line(l))
            .filter(|s| *s != Step::Same)
            .collect();
        (steps, v.stage())
    }

    #[test]
    fn typical_install_succeeds_on_linux_up() {
        let (steps, stage) = run(true, INSTALL);
        assert_eq!(
            steps,
            vec![
                Step::Advanced(Stage::Boot),
                Step::Advanced(Stage::Installer),
                Step::Advanced(Stage::Installed),
                Step::Succeeded(" INFO[MISC]: Linux up".into()),
            ]
        );
        assert_eq!(stage, Stage::LinuxUp);
    }

    #[test]
    fn table() {
        let fail = |l: &str| Step::Failed(l.to_string());
        let cases: Vec<(&str, bool, Vec<&str>, Step)> = vec![
            (
                "install error then old OS boots",
                true,
                vec![
                    " INFO[BL2]: start",
                    " ERR[MISC]: Installation failed",
                    " INFO[MISC]: Linux up",
                ],
                fail(" ERR[MISC]: Installation failed"),
            ),
            (
                "linux up without installation",
                true,
                vec![
                    " INFO[BL2]: start",
                    " INFO[MISC]: Found bf.cfg",
                    " INFO[MISC]: Linux up",
                ],
                Step::BootedWithoutInstall(" INFO[MISC]: Linux up".into()),
            ),
            (
                "DPU is ready counts as up",
                true,
                vec![
                    " INFO[MISC]: Ubuntu installation completed",
                    " INFO[MISC]: DPU is ready",
                ],
                Step::Succeeded(" INFO[MISC]: DPU is ready".into()),
            ),
            (
                "assert",
                true,
                vec![" INFO[BL2]: start", " ASSERT[BL31]: lib/psci/psci_setup.c:101"],
                fail(" ASSERT[BL31]: lib/psci/psci_setup.c:101"),
            ),
            (
                "exception",
                true,
                vec![" Exception(BL31): syndrome = 0x96000010", "   elr_el3 = 0x1"],
                fail(" Exception(BL31): syndrome = 0x96000010"),
            ),
            (
                "panic",
                true,
                vec![" INFO[UEFI]: eMMC init", " PANIC(UEFI): PC = 0x2"],
                fail(" PANIC(UEFI): PC = 0x2"),
            ),
            (
                "critical error after completion",
                true,
                vec![
                    " INFO[MISC]: Ubuntu installation completed",
                    " INFO[MISC]: CRITICAL ERROR: eMMC write",
                ],
                fail(" INFO[MISC]: CRITICAL ERROR: eMMC write"),
            ),
            (
                "warn is not a failure",
                true,
                vec![
                    " WARN[BL2]: slow",
                    " INFO[MISC]: installation completed",
                    " INFO[MISC]: Linux up",
                ],
                Step::Succeeded(" INFO[MISC]: Linux up".into()),
            ),
            (
                "flat firmware BFB: up after boot is success",
                false,
                vec![" INFO[BL2]: start", " INFO[MISC]: Linux up"],
                Step::Succeeded(" INFO[MISC]: Linux up".into()),
            ),
        ];
        for (name, installer, lines, want) in cases {
            let (steps, _) = run(installer, &lines);
            assert_eq!(steps.last(), Some(&want), "{name}: {steps:?}");
        }
    }

    #[test]
    fn a_reset_during_the_installation_fails_at_once() {
        for reset in [
            " INFO[BL31]: start",
            " INFO[BL2]: start",
            " INFO[PSC]: PSC BL1 START",
            "INFO[BL2R]: start",
        ] {
            let (steps, _) = run(
                true,
                &[
                    " INFO[BL2]: start",
                    " INFO[BL31]: start",
                    " INFO[MISC]: Ubuntu installation started",
                    reset,
                ],
            );
            assert_eq!(steps.last(), Some(&Step::Reset(reset.to_string())), "{reset}");
        }
        // Boot lines before the installer, and the reboot after it completed, are normal.
        let (steps, stage) = run(
            true,
            &[
                " INFO[BL2]: start",
                " INFO[BL31]: start",
                " INFO[BL2]: start",
                " INFO[MISC]: Ubuntu installation started",
                " INFO[MISC]: Ubuntu installation completed",
                " INFO[MISC]: Rebooting...",
                " INFO[PSC]: PSC BL1 START",
                " INFO[BL31]: start",
                " INFO[MISC]: Linux up",
            ],
        );
        assert_eq!(stage, Stage::LinuxUp, "{steps:?}");
        for not_start in [
            " INFO[BL31]: runtime",
            " INFO[MISC]: restart",
            " INFO[UEFI]: start",
        ] {
            assert!(!is_boot_start(not_start), "{not_start}");
        }
    }

    #[test]
    fn nothing_changes_after_a_verdict() {
        let mut v = Verdict::new(true);
        assert!(matches!(v.on_line(" ERR[BL2]: bad image"), Step::Failed(_)));
        assert_eq!(v.on_line(" INFO[MISC]: Linux up"), Step::Same);
    }

    #[test]
    fn stages_never_go_back_and_limits_follow_the_stage() {
        let t = StageTimeouts::default();
        let mut v = Verdict::new(true);
        assert_eq!(v.limit(&t).0, t.boot);
        assert_eq!(v.waiting(), Stage::Boot);
        v.on_line(" INFO[BL2]: start");
        assert_eq!(v.waiting(), Stage::Installer);
        v.on_line(" INFO[MISC]: Ubuntu installation started");
        assert_eq!(v.stage(), Stage::Installer);
        assert_eq!(v.waiting(), Stage::Installed);
        assert_eq!(v.limit(&t), (t.install, "the installation to complete"));
        assert_eq!(v.on_line(" WARN[BL2]: slow"), Step::Same);
        assert_eq!(v.stage(), Stage::Installer);
        v.on_line(" INFO[MISC]: Installation finished");
        assert_eq!(v.limit(&t).0, t.linux_up);
        assert_eq!(Stage::LinuxUp.to_string(), "linux-up");
    }
}
