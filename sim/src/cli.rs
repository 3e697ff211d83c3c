//! Command line of the `hostplane-sim` binary.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use nix::sys::signal::{SigSet, Signal};

use crate::bmc::tls::LAB_CA_FILE;
use crate::bmc::{BmcError, BmcHandle, BmcOptions, BmcSim, LabCerts, Model, TlsFiles, Workload};
use crate::config::{Fault, SimConfig, Timings, parse_fault_assignment, parse_size};
use crate::{SimError, mkbfb, mount};

#[derive(Debug, Parser)]
#[command(
    name = "hostplane-sim",
    version,
    about = "hostplane simulators: BlueField DPUs behind a FUSE rshim device, Redfish BMCs with a power model"
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
    /// Serve simulated Redfish BMCs (DGX H100/B200/B300, GB200) until SIGTERM/SIGINT.
    Bmc(BmcArgs),
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

/// `node-1=dgx-h100@127.0.0.1:8443`; a bare port means 127.0.0.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BmcArg {
    pub name: String,
    pub model: Model,
    pub listen: SocketAddr,
}

impl FromStr for BmcArg {
    type Err = String;

    fn from_str(s: &str) -> Result<BmcArg, String> {
        let (name, rest) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?} is not NAME=MODEL@ADDR"))?;
        let (model, addr) = rest
            .rsplit_once('@')
            .ok_or_else(|| format!("{s:?} is not NAME=MODEL@ADDR (no @ADDR)"))?;
        let model: Model = model.parse().map_err(|e| format!("{e}"))?;
        let listen = match addr.parse::<u16>() {
            Ok(port) => SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            Err(_) => addr.parse().map_err(|_| {
                format!("{addr:?} is not HOST:PORT (e.g. 127.0.0.1:8443, [::1]:8443) or a port")
            })?,
        };
        Ok(BmcArg {
            name: name.to_string(),
            model,
            listen,
        })
    }
}

#[derive(Debug, Args)]
pub struct BmcArgs {
    /// A BMC: NAME=MODEL@ADDR, MODEL one of dgx-h100, dgx-b200, dgx-b300, gb200; ADDR HOST:PORT or
    /// a port on 127.0.0.1 (0 picks a free one). Repeatable.
    #[arg(long = "bmc", value_name = "NAME=MODEL@ADDR", required = true)]
    pub bmcs: Vec<BmcArg>,
    /// Workload of every BMC: idle, training, constant:<0..1> or sine:<period>
    /// (change it at run time with PUT /sim/workload).
    #[arg(long, default_value = "training")]
    pub workload: Workload,
    /// How long a PowerCycle keeps each System Off before it is On again
    /// (and how long a graceful shutdown or restart stays PoweringOff), e.g.
    /// 30s; 0 is back at once [default: 1s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub power_transition: Option<Duration>,
    /// Username of every BMC.
    #[arg(long, default_value = "admin", env = "HOSTPLANE_SIM_BMC_USERNAME")]
    pub username: String,
    /// Password of every BMC.
    #[arg(
        long,
        default_value = "admin",
        env = "HOSTPLANE_SIM_BMC_PASSWORD",
        hide_env_values = true
    )]
    pub password: String,
    /// Serve HTTPS with this PEM certificate chain (needs --tls-key) instead
    /// of a lab certificate.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Without --tls-cert, HTTPS uses a lab CA made at start: write its
    /// certificate (ca.crt, for clients to trust) and the BMCs' certificate
    /// and key (bmc.crt, bmc.key) here [default: a temporary directory,
    /// removed at exit].
    #[arg(long, value_name = "DIR", conflicts_with = "tls_cert")]
    pub cert_dir: Option<PathBuf>,
    /// Serve plain HTTP instead of HTTPS: for a lab only (credentials cross
    /// the network in clear).
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key", "cert_dir"])]
    pub http: bool,
}

impl BmcArgs {
    /// HTTPS with a lab certificate made at start: neither --http nor --tls-cert.
    pub fn needs_lab_certs(&self) -> bool {
        !self.http && self.tls_cert.is_none()
    }

    /// One [`BmcOptions`] per `--bmc`; names must be unique, and so must fixed
    /// ports. Without --tls-cert the options say plain HTTP; [`run_bmc`]
    /// fills in the lab certificate unless --http.
    pub fn to_options(&self) -> Result<Vec<BmcOptions>, SimError> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        };
        let mut out: Vec<BmcOptions> = Vec::new();
        for b in &self.bmcs {
            if out.iter().any(|o| o.name == b.name) {
                return Err(SimError::Config {
                    field: "bmc",
                    message: format!("the name {:?} is given twice", b.name),
                });
            }
            if b.listen.port() != 0 && out.iter().any(|o| o.listen == b.listen) {
                return Err(SimError::Config {
                    field: "bmc",
                    message: format!("{} is given to two BMCs", b.listen),
                });
            }
            out.push(BmcOptions {
                name: b.name.clone(),
                model: b.model,
                listen: b.listen,
                username: self.username.clone(),
                password: self.password.clone(),
                workload: self.workload,
                tls: tls.clone(),
            });
        }
        Ok(out)
    }
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
        Command::Bmc(args) => run_bmc(&args),
    }
}

/// Serve the BMCs until SIGTERM or SIGINT, then stop them gracefully.
/// Prints `NAME MODEL URL` per BMC on stdout once all are serving.
pub fn run_bmc(args: &BmcArgs) -> Result<(), SimError> {
    let mut opts = args.to_options()?;
    // Kept until the BMCs stop: the default home of the lab certificate.
    let mut _temp_dir = None;
    if args.needs_lab_certs() {
        let ips: Vec<std::net::IpAddr> = opts.iter().map(|o| o.listen.ip()).collect();
        let certs = LabCerts::generate(&ips)?;
        let dir = match &args.cert_dir {
            Some(d) => d.clone(),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("hostplane-sim-bmc-")
                    .tempdir()
                    .map_err(|source| BmcError::TlsWrite {
                        path: std::env::temp_dir(),
                        source,
                    })?;
                let p = t.path().to_path_buf();
                _temp_dir = Some(t);
                p
            }
        };
        let files = certs.write(&dir)?;
        tracing::info!(
            ca = %dir.join(LAB_CA_FILE).display(),
            "HTTPS with a lab certificate: clients trust this CA"
        );
        for o in &mut opts {
            o.tls = Some(files.clone());
        }
    } else if args.http {
        tracing::warn!("plain HTTP (--http): credentials cross the network in clear; for a lab only");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| SimError::Runtime { source })?;
    runtime.block_on(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let signal_err = |source| SimError::AsyncSignal { source };
        let mut term = signal(SignalKind::terminate()).map_err(signal_err)?;
        let mut int = signal(SignalKind::interrupt()).map_err(signal_err)?;
        let mut handles: Vec<BmcHandle> = Vec::new();
        for o in opts {
            // On an error the handles started so far are dropped, which stops them.
            let h = BmcSim::spawn(o)?;
            if let Some(t) = args.power_transition {
                h.set_power_transition(t);
            }
            handles.push(h);
        }
        for h in &handles {
            println!("{} {} {}", h.name(), h.model(), h.url());
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let signal = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal, "shutting down");
        futures_join_all(handles.into_iter().map(|h| h.shutdown())).await;
        Ok(())
    })
}

/// Await every future (they run concurrently on the runtime).
async fn futures_join_all<F: std::future::Future<Output = ()> + Send + 'static>(
    futures: impl Iterator<Item = F>,
) {
    let tasks: Vec<_> = futures.map(tokio::spawn).collect();
    for t in tasks {
        let _ = t.await;
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
    fn bmc_args_become_options() {
        let Command::Bmc(args) = parse(&[
            "bmc",
            "--bmc",
            "a=dgx-h100@127.0.0.1:0",
            "--bmc",
            "b=gb200@9001",
            "--bmc",
            "c=DGX-B300@[::1]:9002",
            "--workload",
            "constant:0.5",
            "--password",
            "s3cret",
        ])
        .unwrap()
        .command
        else {
            panic!("not bmc")
        };
        let opts = args.to_options().unwrap();
        assert_eq!(opts.len(), 3);
        assert_eq!((opts[0].name.as_str(), opts[0].model), ("a", Model::DgxH100));
        assert_eq!(opts[1].listen, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(opts[2].listen, "[::1]:9002".parse().unwrap());
        assert_eq!(opts[2].model, Model::DgxB300);
        assert!(opts.iter().all(|o| o.workload == Workload::Constant(0.5)));
        assert!(
            opts.iter()
                .all(|o| o.username == "admin" && o.password == "s3cret")
        );
        assert!(opts.iter().all(|o| o.tls.is_none()));
        // HTTPS with a lab certificate unless asked otherwise.
        assert!(args.needs_lab_certs());
        assert_eq!(args.power_transition, None, "the simulator's 1 s unless given");
        let http = |extra: &[&str]| {
            let mut a = vec!["bmc", "--bmc", "a=dgx-h100@0"];
            a.extend_from_slice(extra);
            match parse(&a).map(|c| c.command) {
                Ok(Command::Bmc(b)) => Ok(b),
                Ok(_) => panic!("not bmc"),
                Err(e) => Err(e),
            }
        };
        assert!(!http(&["--http"]).unwrap().needs_lab_certs());
        let files = http(&["--tls-cert", "/c.pem", "--tls-key", "/k.pem"]).unwrap();
        assert!(!files.needs_lab_certs());
        assert!(files.to_options().unwrap()[0].tls.is_some());
        assert!(http(&["--cert-dir", "/d"]).unwrap().needs_lab_certs());
        assert_eq!(
            http(&["--power-transition", "250ms"]).unwrap().power_transition,
            Some(Duration::from_millis(250))
        );
        assert!(http(&["--power-transition", "soon"]).is_err());
        for clash in [
            &["--http", "--tls-cert", "/c.pem", "--tls-key", "/k.pem"][..],
            &["--http", "--cert-dir", "/d"],
            &["--cert-dir", "/d", "--tls-cert", "/c.pem", "--tls-key", "/k.pem"],
        ] {
            assert!(http(clash).is_err(), "{clash:?}");
        }
    }

    #[test]
    fn bad_bmc_arguments_are_rejected() {
        for bad in [
            &["bmc"][..],
            &["bmc", "--bmc", "a=dgx-a100@9000"],
            &["bmc", "--bmc", "a=dgx-h100"],
            &["bmc", "--bmc", "dgx-h100@9000"],
            &["bmc", "--bmc", "a=dgx-h100@nowhere"],
            &["bmc", "--bmc", "a=dgx-h100@9000", "--workload", "busy"],
            &["bmc", "--bmc", "a=dgx-h100@9000", "--tls-cert", "/c.pem"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let e = parse(&["bmc", "--bmc", "a=dgx-a100@9000"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("dgx-h100, dgx-b200, dgx-b300, gb200"), "{e}");
        for dup in [
            ["a=dgx-h100@9000", "a=gb200@9001"],
            ["a=dgx-h100@9000", "b=gb200@9000"],
        ] {
            let Command::Bmc(args) = parse(&["bmc", "--bmc", dup[0], "--bmc", dup[1]]).unwrap().command
            else {
                panic!("not bmc")
            };
            assert!(args.to_options().unwrap_err().is_usage(), "{dup:?}");
        }
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
