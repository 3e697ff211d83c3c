//! Command line of the `hostplane-sim` binary.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use nix::sys::signal::{SigSet, Signal};

use crate::config::{Fault, SimConfig, Timings, parse_fault_assignment, parse_size};
use crate::{SimError, mkbfb, mount};

#[derive(Debug, Parser)]
#[command(
    name = "hostplane-sim",
    version,
    about = "hostplane simulators: BlueField DPUs behind a FUSE rshim device"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount simulated DPUs at <root>/rshim<N>/{boot,misc,console} until SIGTERM/SIGINT.
    Rshim(RshimArgs),
    /// Write a test BFB.
    Mkbfb(MkbfbArgs),
}

/// `rshim1=hang:installer`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultArg {
    pub dpu: usize,
    pub fault: Fault,
}

impl FromStr for FaultArg {
    type Err = String;

    fn from_str(s: &str) -> Result<FaultArg, String> {
        let (dpu, fault) = parse_fault_assignment(s).map_err(|e| e.to_string())?;
        Ok(FaultArg { dpu, fault })
    }
}

#[derive(Debug, Args)]
pub struct RshimArgs {
    /// Mount point (created if missing).
    #[arg(long)]
    pub root: PathBuf,
    /// Number of DPUs.
    #[arg(long, default_value_t = 2)]
    pub dpus: usize,
    /// Delay between two boot stages (e.g. 300ms, 2s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub stage_delay: Option<Duration>,
    /// How long opening `boot` takes (the chip reset).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub reset_delay: Option<Duration>,
    /// How long the OS installation takes.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub install_delay: Option<Duration>,
    /// From `Rebooting...` to `Linux up`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub reboot_delay: Option<Duration>,
    /// A fault: rshim<N>=none|corrupt|hang:<stage>|install-error|slow:<bytes/s>|busy|panic (repeatable).
    #[arg(long = "fault", value_name = "RSHIM=FAULT")]
    pub faults: Vec<FaultArg>,
    /// Version of the OS already installed on the DPUs.
    #[arg(long, default_value = "4.8.0", conflicts_with = "blank")]
    pub preinstalled: String,
    /// The DPUs start with a blank eMMC.
    #[arg(long)]
    pub blank: bool,
    /// Add a SERIAL_NUM line to misc (DISPLAY_LEVEL 1); real rshim has none.
    #[arg(long)]
    pub serial_in_misc: bool,
}

impl RshimArgs {
    pub fn to_config(&self) -> Result<SimConfig, SimError> {
        let d = Timings::default();
        let cfg = SimConfig {
            dpus: self.dpus,
            timings: Timings {
                reset: self.reset_delay.unwrap_or(d.reset),
                stage: self.stage_delay.unwrap_or(d.stage),
                install: self.install_delay.unwrap_or(d.install),
                reboot: self.reboot_delay.unwrap_or(d.reboot),
            },
            faults: self.faults.iter().map(|f| (f.dpu, f.fault)).collect(),
            preinstalled: (!self.blank).then(|| self.preinstalled.clone()),
            serial_in_misc: self.serial_in_misc,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    parse_size(s)
}

#[derive(Debug, Args)]
pub struct MkbfbArgs {
    /// Output file.
    #[arg(long)]
    pub out: PathBuf,
    /// Approximate size: bytes, or with a suffix (64MiB, 1GiB, 10MB).
    #[arg(long, value_parser = parse_size_arg)]
    pub size: u64,
    /// BFB version recorded in the version-info image.
    #[arg(long, default_value = "4.9.0")]
    pub version: String,
    /// Seed of the pseudo-random content.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Flip a byte of the last image, so the BFB fails its CRC.
    #[arg(long)]
    pub corrupt: bool,
}

/// Run a subcommand (blocking).
pub fn run(command: Command) -> Result<(), SimError> {
    match command {
        Command::Rshim(args) => run_rshim(&args),
        Command::Mkbfb(args) => {
            let r = mkbfb(&args.out, args.size, &args.version, args.seed, args.corrupt)?;
            println!(
                "wrote {}: {} bytes, version {}, sha256 {}{}",
                r.path.display(),
                r.bytes,
                r.version,
                r.sha256,
                if r.corrupted { " (corrupted)" } else { "" }
            );
            Ok(())
        }
    }
}

/// Mount, then wait for SIGTERM or SIGINT and unmount. Blocks those signals
/// in the calling thread (and so in every thread the simulator starts).
pub fn run_rshim(args: &RshimArgs) -> Result<(), SimError> {
    let cfg = args.to_config()?;
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals
        .thread_block()
        .map_err(|source| SimError::Signal { source })?;
    let sim = mount(&args.root, cfg)?;
    for s in sim.states() {
        tracing::info!(rshim = %s.name, dev_name = %s.dev_name, serial = %s.serial, fault = %s.fault, "DPU ready for rshim");
    }
    let signal = signals.wait().map_err(|source| SimError::Signal { source })?;
    tracing::info!(%signal, "shutting down");
    sim.unmount();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Stage;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("hostplane-sim").chain(args.iter().copied()))
    }

    #[test]
    fn rshim_args_become_a_config() {
        let cli = parse(&[
            "rshim",
            "--root",
            "/tmp/x",
            "--dpus",
            "3",
            "--stage-delay",
            "300ms",
            "--reset-delay",
            "1s",
            "--fault",
            "rshim1=hang:installer",
            "--fault",
            "rshim2=slow:1MiB",
        ])
        .unwrap();
        let Command::Rshim(args) = cli.command else {
            panic!("not rshim")
        };
        let cfg = args.to_config().unwrap();
        assert_eq!(cfg.dpus, 3);
        assert_eq!(cfg.timings.stage, Duration::from_millis(300));
        assert_eq!(cfg.timings.reset, Duration::from_secs(1));
        assert_eq!(cfg.timings.install, Timings::default().install);
        assert_eq!(cfg.faults[&1], Fault::Hang(Stage::Installer));
        assert_eq!(cfg.faults[&2], Fault::Slow(1 << 20));
        assert_eq!(cfg.preinstalled.as_deref(), Some("4.8.0"));
    }

    #[test]
    fn bad_arguments_are_rejected() {
        assert!(parse(&["rshim", "--root", "/x", "--fault", "rshim1=explode"]).is_err());
        assert!(parse(&["rshim", "--root", "/x", "--stage-delay", "soon"]).is_err());
        assert!(parse(&["mkbfb", "--out", "/x", "--size", "lots"]).is_err());
        let Command::Rshim(args) = parse(&["rshim", "--root", "/x", "--fault", "rshim5=busy"])
            .unwrap()
            .command
        else {
            panic!("not rshim")
        };
        assert!(args.to_config().unwrap_err().is_usage());
    }

    #[test]
    fn mkbfb_sizes_take_suffixes() {
        let Command::Mkbfb(args) = parse(&["mkbfb", "--out", "/x", "--size", "64MiB", "--corrupt"])
            .unwrap()
            .command
        else {
            panic!("not mkbfb")
        };
        assert_eq!(args.size, 64 << 20);
        assert!(args.corrupt);
        assert_eq!(args.version, "4.9.0");
    }
}
