//! The flash command line: bfb-install's options, hostplane's own, and the
//! bfb-install options that are refused by name.

use std::path::{Path, PathBuf};
use std::time::Duration;

use humantime_serde::re::humantime;

use super::super::{DEFAULT_RUN_DIR, FlashConfig, StageTimeouts};
use crate::rshim::is_rshim_name;

const EXIT_CODES_HELP: &str = "\
Exit codes:
  0    installed and up: the DPU's log showed the installation complete, then Linux up
  1    the flash failed (the DPU's own error line, a timeout naming the stage, a push error)
  64   usage: bad or unsupported option, unreadable image, bad bf.cfg (nothing was touched)
  75   busy: another flash holds this rshim (its pid and image are named), or the device
       is held by another owner (EBUSY, drop mode, BMC); nothing was touched
  130  interrupted by SIGINT, 143 by SIGTERM: the push was stopped, the device's misc
       values (BOOT_TIMEOUT, CLEAR_ON_READ, DISPLAY_LEVEL) restored, the lock released

bfb-install options not supported here (refused with exit 64): -a/--apply-lfwp,
-d/--deferred, -k/--keep-log, -p/--pldm, -R/--reverse-nc, -u/--runtime, and a
remote rshim ([<ip>:<port>:]rshim<N>) with -m/--remote-mode.";

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "hostplane-agent flash",
    about = "Flash one DPU over rshim (a bfb-install drop-in) and exit 0 only on a verified installation",
    after_help = EXIT_CODES_HELP,
    disable_version_flag = true
)]
pub struct FlashArgs {
    /// rshim device: rshim<N>, or its path (/dev/rshim<N>, or <dir>/rshim<N>
    /// under another device root).
    #[arg(short = 'r', long, value_name = "DEVICE")]
    pub rshim: String,
    /// The BFB: a local file, or an http(s):// or file:// URL.
    #[arg(short = 'b', long, value_name = "BFB")]
    pub bfb: String,
    /// Expected sha256 of the BFB (required for URLs, optional for files).
    #[arg(long)]
    pub sha256: Option<String>,
    /// A bf.cfg to push after the BFB (at most 128 KiB of text; checked before
    /// the device is touched).
    #[arg(short = 'c', long = "config", alias = "bf-cfg", value_name = "BF_CFG")]
    pub bf_cfg: Option<PathBuf>,
    /// A rootfs file pushed raw after the BFB and bf.cfg (as bfb-install does).
    #[arg(short = 'f', long, value_name = "ROOTFS")]
    pub rootfs: Option<PathBuf>,
    /// bfb-install's mode for a remote rshim (scp, nc, ncpipe); remote rshims
    /// are not supported, so with a local rshim this is refused, as
    /// bfb-install refuses it.
    #[arg(short = 'm', long, value_name = "MODE")]
    pub remote_mode: Option<String>,
    /// Print the settings before flashing (as bfb-install -v does).
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// Directory holding the rshim<N>/ devices (default /dev, or the directory
    /// of a --rshim path).
    #[arg(long, value_name = "DIR")]
    pub dev_root: Option<PathBuf>,
    /// Where the per-rshim flash locks live (shared with the agent daemon).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_RUN_DIR)]
    pub run_dir: PathBuf,
    /// Where downloaded BFBs are cached.
    #[arg(long, default_value = "/var/lib/hostplane-agent/cache")]
    pub cache_dir: PathBuf,
    /// Give up when the device accepts no data for this long (also the rshim
    /// driver's BOOT_TIMEOUT during the flash).
    #[arg(long, value_parser = parse_duration, default_value = "5m")]
    pub push_stall_timeout: Duration,
    /// After the push, wait this long for the DPU's first log line.
    #[arg(long, value_parser = parse_duration, default_value = "5m")]
    pub boot_timeout: Duration,
    /// From the first boot line, wait this long for the installer to start.
    #[arg(long, value_parser = parse_duration, default_value = "15m")]
    pub installer_timeout: Duration,
    /// From the installer's start, wait this long for it to complete.
    #[arg(long, value_parser = parse_duration, default_value = "1h")]
    pub install_timeout: Duration,
    /// From completion, wait this long for `Linux up` / `DPU is ready`.
    #[arg(long, value_parser = parse_duration, default_value = "20m")]
    pub linux_up_timeout: Duration,
    /// How often the DPU log (misc) is read.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub poll_interval: Duration,
    /// bfb-install options that hostplane does not support: taken here only to
    /// be refused by name.
    #[command(flatten)]
    pub unsupported: Unsupported,
}

/// bfb-install's options that hostplane refuses (see [`Unsupported::check`]).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Unsupported {
    #[arg(short = 'a', long = "apply-lfwp", hide = true, value_name = "0|1")]
    apply_lfwp: Option<String>,
    #[arg(short = 'd', long, hide = true)]
    deferred: bool,
    #[arg(short = 'k', long = "keep-log", hide = true)]
    keep_log: bool,
    #[arg(short = 'p', long, hide = true, value_name = "PLDM")]
    pldm: Option<String>,
    #[arg(short = 'R', long = "reverse-nc", hide = true)]
    reverse_nc: bool,
    #[arg(short = 'u', long, hide = true)]
    runtime: bool,
}

impl Unsupported {
    /// The first unsupported option given, with why it is refused.
    pub(super) fn check(&self) -> Result<(), String> {
        let refuse = |opt: &str, why: &str| Err(format!("{opt} is not supported: {why}"));
        if self.apply_lfwp.is_some() {
            return refuse(
                "-a/--apply-lfwp",
                "live firmware patch activation is not done by hostplane; flash a full BFB",
            );
        }
        if self.deferred || self.runtime {
            let opt = if self.deferred {
                "-d/--deferred"
            } else {
                "-u/--runtime"
            };
            return refuse(
                opt,
                "deferred (runtime) upgrades are not supported; hostplane always resets the DPU and installs",
            );
        }
        if self.keep_log {
            return refuse(
                "-k/--keep-log",
                "the DPU log must be cleared on read so that every line is seen once (hostplane prints each line)",
            );
        }
        if self.pldm.is_some() {
            return refuse("-p/--pldm", "PLDM images are not supported; flash a BFB with -b");
        }
        if self.reverse_nc {
            return refuse(
                "-R/--reverse-nc",
                "remote rshims are not supported; run this on the host of the rshim",
            );
        }
        Ok(())
    }
}

pub(super) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))
}

/// The rshim name and device root from `-r` and `--dev-root`.
pub(super) fn rshim_target(args: &FlashArgs) -> Result<(String, PathBuf), String> {
    let r = args.rshim.as_str();
    if r.contains(':') {
        return Err(format!(
            "--rshim {r:?}: a remote rshim ([<ip>:<port>:]rshim<N>) is not supported; \
             run this on the host of the rshim"
        ));
    }
    if is_rshim_name(r) {
        return Ok((
            r.to_string(),
            args.dev_root.clone().unwrap_or_else(|| PathBuf::from("/dev")),
        ));
    }
    let path = Path::new(r.trim_end_matches('/'));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    match parent {
        Some(dir) if path.is_absolute() && is_rshim_name(name) => {
            if let Some(root) = &args.dev_root
                && root != dir
            {
                return Err(format!(
                    "--rshim {r:?} is under {}, but --dev-root is {}",
                    dir.display(),
                    root.display()
                ));
            }
            Ok((name.to_string(), dir.to_path_buf()))
        }
        _ => Err(format!(
            "--rshim {r:?}: expected rshim<N> or an absolute path ending in rshim<N> (e.g. /dev/rshim0)"
        )),
    }
}

impl FlashArgs {
    pub(super) fn flash_config(&self, dev_root: PathBuf) -> FlashConfig {
        FlashConfig {
            dev_root,
            run_dir: self.run_dir.clone(),
            stage_timeouts: StageTimeouts {
                push_stall: self.push_stall_timeout,
                boot: self.boot_timeout,
                installer: self.installer_timeout,
                install: self.install_timeout,
                linux_up: self.linux_up_timeout,
            },
            poll_interval: self.poll_interval,
            ..FlashConfig::default()
        }
    }

    /// Everything a bfb-install user may get wrong, checked before anything
    /// is read or touched.
    pub(super) fn check_options(&self) -> Result<(), String> {
        self.unsupported.check()?;
        if let Some(mode) = &self.remote_mode {
            if !matches!(mode.as_str(), "scp" | "nc" | "ncpipe") {
                return Err(format!("--remote-mode {mode:?}: expected scp, nc or ncpipe"));
            }
            return Err(format!(
                "--remote-mode {mode}: a remote mode applies only to a remote rshim ([<ip>:<port>:]rshim<N>), \
                 which is not supported; for the local {} leave it out",
                self.rshim
            ));
        }
        Ok(())
    }
}
