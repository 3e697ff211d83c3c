//! Boot sequences: what the DPU logs after a reset or a push, stage by stage,
//! and the thread that plays them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::bfcfg;
use super::log::{Level, Module, msg, panic_lines};
use super::stream::StreamReport;
use super::{BootSource, Dpu, Inner, Phase};
use crate::config::{Fault, Stage, Timings};

/// What a step does to the DPU's state besides logging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Effect {
    None,
    Phase(Phase),
    /// `Ubuntu installation started`: the `install-error` fault strikes here.
    InstallStarted,
    /// The new OS is on eMMC (with what bf.cfg's `bfb_modify_os` wrote on it).
    Installed {
        version: Option<String>,
        dpu_os: Option<bfcfg::DpuOsReport>,
    },
    /// The OS on eMMC is running.
    OsUp,
    /// The boot stops here.
    Fail(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Step {
    pub stage: Stage,
    /// Wait before this step.
    pub delay: Duration,
    pub lines: Vec<String>,
    pub effect: Effect,
}

fn step(stage: Stage, delay: Duration, module: Module, text: &str, effect: Effect) -> Step {
    Step {
        stage,
        delay,
        lines: vec![msg(Level::Info, module, text)],
        effect,
    }
}

fn firmware_steps(t: &Timings, first: Duration) -> Vec<Step> {
    vec![
        step(
            Stage::Bl31,
            first,
            Module::Bl31,
            "start",
            Effect::Phase(Phase::Booting),
        ),
        step(Stage::Bl31, t.stage, Module::Bl31, "runtime", Effect::None),
        step(Stage::Uefi, t.stage, Module::Uefi, "eMMC init", Effect::None),
        step(
            Stage::Uefi,
            t.stage,
            Module::Uefi,
            "exit Boot Service",
            Effect::None,
        ),
    ]
}

/// The OS on eMMC boots (or there is none).
fn os_boot_steps(t: &Timings, first: Duration, has_os: bool) -> Vec<Step> {
    if has_os {
        vec![
            step(Stage::Linux, first, Module::Misc, "Linux up", Effect::OsUp),
            step(Stage::Ready, t.stage, Module::Misc, "DPU is ready", Effect::None),
        ]
    } else {
        vec![Step {
            stage: Stage::Uefi,
            delay: first,
            lines: vec![msg(Level::Warn, Module::Uefi, "no bootable OS on eMMC")],
            effect: Effect::Phase(Phase::Down),
        }]
    }
}

/// After `Installation finished` (or a failed install with an old OS): reboot into the OS.
fn reboot_steps(t: &Timings) -> Vec<Step> {
    let mut steps = vec![step(
        Stage::Reboot,
        t.stage,
        Module::Misc,
        "Rebooting...",
        Effect::Phase(Phase::Rebooting),
    )];
    steps.extend(os_boot_steps(t, t.reboot, true));
    steps
}

/// A full installer bundle was pushed (BL1/BL2 already logged during the push).
pub(crate) fn install_plan(t: &Timings, report: &StreamReport) -> VecDeque<Step> {
    let mut steps = firmware_steps(t, t.stage);
    if let Some(v) = &report.version {
        steps.push(step(
            Stage::Installer,
            t.stage,
            Module::Misc,
            &format!("Installing BFB version {v}"),
            Effect::Phase(Phase::Installing),
        ));
    }
    let mut dpu_os = None;
    if let Some(cfg) = &report.bf_cfg {
        let checked = if report.bf_cfg_len > bfcfg::BFCFG_MAX as u64 {
            Err(bfcfg::BfCfgError::TooLarge {
                len: report.bf_cfg_len,
            })
        } else {
            bfcfg::check(cfg)
        };
        if checked.is_ok() {
            match bfcfg::parse_dpu_os(cfg) {
                Ok(r) => dpu_os = r,
                Err(e) => {
                    steps.push(Step {
                        stage: Stage::Installer,
                        delay: t.stage,
                        lines: vec![msg(
                            Level::Err,
                            Module::Misc,
                            "bfb_modify_os: bad hostplane section",
                        )],
                        effect: Effect::Fail(format!("bfb_modify_os: {e}")),
                    });
                    return steps.into();
                }
            }
        }
        match checked {
            Ok(()) => steps.push(step(
                Stage::Installer,
                t.stage,
                Module::Misc,
                "Found bf.cfg",
                Effect::Phase(Phase::Installing),
            )),
            Err(e) => {
                steps.push(Step {
                    stage: Stage::Installer,
                    delay: t.stage,
                    lines: vec![msg(Level::Err, Module::Misc, "bf.cfg syntax error")],
                    effect: Effect::Fail(e.to_string()),
                });
                return steps.into();
            }
        }
    }
    steps.push(step(
        Stage::Installer,
        t.stage,
        Module::Misc,
        "Ubuntu installation started",
        Effect::InstallStarted,
    ));
    let mut installed = step(
        Stage::Installer,
        t.install,
        Module::Misc,
        "Ubuntu installation completed",
        Effect::Installed {
            version: report.version.clone(),
            dpu_os: dpu_os.clone(),
        },
    );
    if let Some(os) = &dpu_os {
        installed.lines.extend(dpu_os_lines(os));
    }
    steps.push(installed);
    steps.push(step(
        Stage::Installer,
        t.stage,
        Module::Misc,
        "Installation finished",
        Effect::None,
    ));
    steps.extend(reboot_steps(t));
    steps.into()
}

/// The log lines of hostplane's `bfb_modify_os`: the sections, then each
/// config file's path (quoted, cut to 64 characters; a path that would read
/// as a critical line to a log reader is not shown) and size.
pub(crate) fn dpu_os_lines(os: &bfcfg::DpuOsReport) -> Vec<String> {
    let mut lines = vec![msg(
        Level::Info,
        Module::Misc,
        &format!("bfb_modify_os: {}", os.summary()),
    )];
    for f in &os.files {
        let shown: String = format!("{:?}", f.path).chars().take(64).collect();
        let upper = shown.to_ascii_uppercase();
        let shown = if upper.contains("CRITICAL") || upper.contains("PANIC(") || shown.contains("Exception(")
        {
            "(path not shown)".to_string()
        } else {
            shown
        };
        lines.push(msg(
            Level::Info,
            Module::Misc,
            &format!("bfb_modify_os: file {shown} {} bytes", f.content.len()),
        ));
    }
    lines
}

/// A firmware-only ("flat") BFB was pushed: firmware boots, then the OS on eMMC.
pub(crate) fn firmware_plan(t: &Timings, has_os: bool) -> VecDeque<Step> {
    let mut steps = firmware_steps(t, t.stage);
    steps.extend(os_boot_steps(t, t.stage, has_os));
    steps.into()
}

/// Pushed with `BOOT_RESET_SKIP 1`: the running OS applies it.
pub(crate) fn runtime_upgrade_plan(t: &Timings) -> VecDeque<Step> {
    VecDeque::from([step(
        Stage::Installer,
        t.stage,
        Module::Misc,
        "Runtime upgrade finished",
        Effect::None,
    )])
}

/// `SW_RESET 1`: boot from eMMC, or wait for a stream with `BOOT_MODE 0`.
pub(crate) fn reset_plan(t: &Timings, boot_mode: u8, has_os: bool) -> VecDeque<Step> {
    let from_rshim = boot_mode == 0;
    let mut steps = vec![
        step(
            Stage::Bl1,
            t.reset,
            Module::Psc,
            "PSC BL1 START",
            Effect::Phase(Phase::Booting),
        ),
        step(Stage::Bl2, t.stage, Module::Bl2, "start", Effect::None),
        step(
            Stage::Bl2,
            Duration::ZERO,
            Module::Bl2,
            if from_rshim {
                "boot mode (rshim)"
            } else {
                "boot mode (emmc)"
            },
            if from_rshim {
                Effect::Phase(Phase::AwaitingStream)
            } else {
                Effect::None
            },
        ),
    ];
    if !from_rshim {
        steps.extend(firmware_steps(t, t.stage));
        steps.extend(os_boot_steps(t, t.stage, has_os));
    }
    steps.into()
}

/// Play `steps` on a thread of its own; it stops when the DPU is reset
/// (epoch changes) or the simulator shuts down.
pub(crate) fn spawn(dpu: Arc<Dpu>, epoch: u64, steps: VecDeque<Step>) {
    let name = format!("{}-boot", dpu.name);
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        let span = tracing::info_span!("dpu_boot", rshim = %dpu.name, epoch);
        let _enter = span.enter();
        run(&dpu, epoch, steps);
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start a boot sequence thread");
    }
}

fn run(dpu: &Dpu, epoch: u64, mut steps: VecDeque<Step>) {
    while let Some(step) = steps.pop_front() {
        let mut g = dpu.lock();
        let deadline = Instant::now() + step.delay;
        loop {
            if g.epoch != epoch || !g.alive {
                return;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            g = dpu
                .cond
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        match g.fault {
            Fault::Hang(stage) if stage == step.stage => {
                tracing::info!(%stage, "hang fault: boot log stops");
                g.phase = Phase::Hung;
                return;
            }
            Fault::Panic if step.stage == Stage::Bl31 => {
                for line in panic_lines(0xfff0_2a48) {
                    g.log_line(&dpu.name, line);
                }
                g.last_error = Some("BL31 panic".to_string());
                g.phase = Phase::Failed;
                return;
            }
            _ => {}
        }
        for line in step.lines {
            g.log_line(&dpu.name, line);
        }
        if !apply(dpu, &mut g, step.effect, &mut steps) {
            return;
        }
    }
}

/// Returns false when the sequence ends here.
fn apply(dpu: &Dpu, g: &mut Inner, effect: Effect, steps: &mut VecDeque<Step>) -> bool {
    match effect {
        Effect::None => {}
        Effect::Phase(p) => g.phase = p,
        Effect::InstallStarted => {
            g.phase = Phase::Installing;
            if g.fault == Fault::InstallError {
                g.log_line(&dpu.name, msg(Level::Err, Module::Misc, "Installation failed"));
                g.last_error = Some("Installation failed".to_string());
                steps.clear();
                if g.os_version.is_some() {
                    // The old OS is still on eMMC and boots.
                    steps.extend(reboot_steps(&dpu.timings));
                } else {
                    g.phase = Phase::Failed;
                    return false;
                }
            }
        }
        Effect::Installed { version, dpu_os } => {
            g.os_version = Some(version.unwrap_or_else(|| "unknown".to_string()));
            g.dpu_os = dpu_os;
            g.install_count += 1;
        }
        Effect::OsUp => {
            g.phase = Phase::Up;
            g.boot_source = BootSource::Emmc;
            g.boot_count += 1;
            g.console_line("Ubuntu 22.04 LTS dpu ttyAMA0");
            g.console_line("dpu login:");
        }
        Effect::Fail(why) => {
            tracing::warn!(error = %why, "boot failed");
            g.last_error = Some(why);
            g.phase = Phase::Failed;
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(steps: &VecDeque<Step>) -> Vec<String> {
        steps.iter().flat_map(|s| s.lines.iter().cloned()).collect()
    }

    fn report(bf_cfg: Option<&[u8]>) -> StreamReport {
        StreamReport {
            images: 6,
            bytes: 1000,
            installer: true,
            version: Some("4.9.0".into()),
            bf_cfg: bf_cfg.map(<[u8]>::to_vec),
            bf_cfg_len: bf_cfg.map_or(0, |c| c.len() as u64),
        }
    }

    #[test]
    fn install_plan_follows_the_documented_log() {
        let t = Timings::uniform(Duration::from_millis(1));
        let lines = texts(&install_plan(&t, &report(Some(b"A=1\n"))));
        assert_eq!(
            lines,
            [
                " INFO[BL31]: start",
                " INFO[BL31]: runtime",
                " INFO[UEFI]: eMMC init",
                " INFO[UEFI]: exit Boot Service",
                " INFO[MISC]: Installing BFB version 4.9.0",
                " INFO[MISC]: Found bf.cfg",
                " INFO[MISC]: Ubuntu installation started",
                " INFO[MISC]: Ubuntu installation completed",
                " INFO[MISC]: Installation finished",
                " INFO[MISC]: Rebooting...",
                " INFO[MISC]: Linux up",
                " INFO[MISC]: DPU is ready",
            ]
        );
    }

    #[test]
    fn bad_bf_cfg_aborts_before_the_installation() {
        let t = Timings::default();
        let plan = install_plan(&t, &report(Some(b"not shell at all\n")));
        let last = plan.back().unwrap();
        assert_eq!(last.lines, [" ERR[MISC]: bf.cfg syntax error"]);
        assert!(matches!(&last.effect, Effect::Fail(why) if why.contains("line 1")));
        assert!(!texts(&plan).iter().any(|l| l.contains("installation started")));
    }

    /// A bf.cfg as the agent renders a Flavor with DPU OS settings.
    fn with_dpu_os() -> Vec<u8> {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        format!(
            "A='1'\nbfb_modify_os()\n{{\n\
             # hostplane dpu_os section: sysctl\n\
             hostplane_os_file '/etc/sysctl.d/99-hostplane.conf' '0644' 'root:root' override '{}'\n\
             # hostplane dpu_os section: config_file\n\
             hostplane_os_file '/etc/CRITICAL ERROR' '0644' 'root:root' override '{}'\n\
             # hostplane dpu_os section: config_file\n\
             hostplane_os_file '/etc/app.conf' '0600' 'root' append '{}'\n}}\n",
            b64("# x\nnet.core.somaxconn=4096\n"),
            b64("x"),
            b64("key=1\n"),
        )
        .into_bytes()
    }

    #[test]
    fn dpu_os_sections_are_logged_and_kept_with_the_install() {
        let t = Timings::uniform(Duration::from_millis(1));
        let plan = install_plan(&t, &report(Some(&with_dpu_os())));
        let lines = texts(&plan);
        let at = lines
            .iter()
            .position(|l| l == " INFO[MISC]: Ubuntu installation completed")
            .unwrap();
        assert_eq!(
            lines[at + 1..at + 4],
            [
                " INFO[MISC]: bfb_modify_os: sysctl=1 files=2",
                " INFO[MISC]: bfb_modify_os: file (path not shown) 1 bytes",
                " INFO[MISC]: bfb_modify_os: file \"/etc/app.conf\" 6 bytes",
            ]
        );
        assert_eq!(lines[at + 4], " INFO[MISC]: Installation finished");
        let installed = plan
            .iter()
            .find_map(|s| match &s.effect {
                Effect::Installed { dpu_os, .. } => Some(dpu_os.clone()),
                _ => None,
            })
            .unwrap()
            .unwrap();
        assert_eq!(
            installed.sysctl.as_deref(),
            Some(&["net.core.somaxconn=4096".to_string()][..])
        );
        assert_eq!(installed.files[1].content, b"key=1\n");
        // Without hostplane's hook: nothing more is logged.
        let plain = texts(&install_plan(&t, &report(Some(b"A=1\n"))));
        assert!(!plain.iter().any(|l| l.contains("bfb_modify_os")));
        // A damaged section fails the install before it starts.
        let bad = String::from_utf8(with_dpu_os())
            .unwrap()
            .replacen("' append '", "' append '!", 1);
        let plan = install_plan(&t, &report(Some(bad.as_bytes())));
        let last = plan.back().unwrap();
        assert_eq!(last.lines, [" ERR[MISC]: bfb_modify_os: bad hostplane section"]);
        assert!(
            matches!(&last.effect, Effect::Fail(why) if why.contains("not base64")),
            "{last:?}"
        );
    }

    #[test]
    fn reset_plan_boots_emmc_or_waits_for_a_stream() {
        let t = Timings::default();
        let emmc = texts(&reset_plan(&t, 1, true));
        assert!(emmc.contains(&" INFO[BL2]: boot mode (emmc)".to_string()));
        assert_eq!(emmc.last().unwrap(), " INFO[MISC]: DPU is ready");
        let blank = texts(&reset_plan(&t, 1, false));
        assert_eq!(blank.last().unwrap(), " WARN[UEFI]: no bootable OS on eMMC");
        let rshim = texts(&reset_plan(&t, 0, true));
        assert_eq!(rshim.last().unwrap(), " INFO[BL2]: boot mode (rshim)");
    }

    #[test]
    fn default_install_takes_about_three_seconds() {
        let t = Timings::default();
        let total: Duration = install_plan(&t, &report(Some(b"A=1\n")))
            .iter()
            .map(|s| s.delay)
            .sum();
        assert!(
            total >= Duration::from_secs(2) && total <= Duration::from_secs(4),
            "{total:?}"
        );
    }
}
