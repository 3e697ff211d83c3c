//! `hostplane-agent flash`, also installed as `bfb-install`: flash one DPU by
//! hand with `bfb-install`'s own command line, but exiting 0 only on a
//! verified installation.
//!
//! The program answers to both names: when it is started as `bfb-install`
//! (a symlink or a copy under that name), `bfb-install ARGS` is
//! `hostplane-agent flash ARGS`. bfb-install's options keep their meaning
//! (`-b/--bfb`, `-r/--rshim` as a name or a `/dev/rshimN` path, `-c/--config`
//! for bf.cfg, `-f/--rootfs`, `-m/--remote-mode`, `-v/--verbose`,
//! `-h/--help`); the ones hostplane does not support (`-a`, `-d`, `-k`, `-p`,
//! `-R`, `-u`) are refused by name, as is a remote rshim (`<ip>:...`).
//!
//! Exit codes (also in `--help`): [`EXIT_OK`] installed; [`EXIT_FAILED`] the
//! flash failed (the reason is printed); [`EXIT_USAGE`] bad arguments, an
//! unreadable image, a bad bf.cfg, an unsupported option; [`EXIT_BUSY`] the
//! rshim is being flashed by another process (named) or held by another
//! owner; 128+N interrupted by signal N (130 SIGINT, 143 SIGTERM), after
//! the push was stopped, the device's `misc` values restored and the flash
//! lock released.

mod args;

use std::ffi::OsString;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hostplane_common::signals::{Signal, Signals};
use hostplane_proto::v1::{BfbRef, FlashProgress};
use humantime_serde::re::humantime;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{FlashError, FlashRequest, Flasher, ImageSource};
use crate::bfb_cache::{BfbCache, CacheConfig, DownloadProgress, normalize_digest};
use crate::bfcfg::{self, BfCfg};
use args::rshim_target;
pub use args::{FlashArgs, Unsupported};

pub const EXIT_OK: u8 = 0;
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 64;
/// EX_TEMPFAIL: try again later; this run changed nothing on the device.
pub const EXIT_BUSY: u8 = 75;

/// Least time between two byte-progress lines.
const PRINT_EVERY: Duration = Duration::from_secs(1);

/// The process environment, but with the flash CLI's own default log
/// filter: the CLI prints the DPU's lines, the stages and the outcome itself,
/// so its log shows warnings only (not the flash's own failure event, which
/// would repeat the outcome). `HOSTPLANE_LOG` overrides it.
struct CliLogEnv;

/// [`CliLogEnv`]'s filter when `HOSTPLANE_LOG` is not set.
pub const CLI_LOG_FILTER: &str = "warn,hostplane_agent::flash=error,hostplane_agent::flash::watch=warn,\
                                  hostplane_agent::flash::run=warn";

impl crate::config::Env for CliLogEnv {
    fn get(&self, key: &str) -> Option<String> {
        let v = crate::config::ProcessEnv.get(key);
        if key == "HOSTPLANE_LOG" && v.is_none() {
            return Some(CLI_LOG_FILTER.to_string());
        }
        v
    }
}

/// `hostplane-agent [--config X] flash ARGS` as the top-level parser sees it:
/// the arguments are taken whole and parsed by [`main_with`].
#[derive(Debug, Clone, clap::Args)]
#[command(disable_help_flag = true)]
pub struct FlashPassthrough {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub args: Vec<OsString>,
}

impl FlashPassthrough {
    /// The flash's argv, for [`main_with`].
    pub fn argv(self) -> Vec<OsString> {
        let mut v = vec![OsString::from("hostplane-agent flash")];
        v.extend(self.args);
        v
    }
}

/// The program's argv when it is a flash: started as `bfb-install`, or as
/// `hostplane-agent flash ...`. Returns the flash's own argv (argv\[0\]
/// first) or `None` for every other command line.
pub fn flash_argv(argv: &[OsString]) -> Option<Vec<OsString>> {
    let prog = argv.first()?;
    let base = Path::new(prog).file_name()?.to_str()?;
    if base == "bfb-install" {
        return Some(argv.to_vec());
    }
    if argv.get(1).is_some_and(|a| a == "flash") {
        let mut v = vec![OsString::from("hostplane-agent flash")];
        v.extend_from_slice(&argv[2..]);
        return Some(v);
    }
    None
}

/// Parse a flash command line (see [`flash_argv`]) and run it: the whole
/// program for `bfb-install` / `hostplane-agent flash`.
pub fn main_with(argv: Vec<OsString>) -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let name: &'static str = if argv
        .first()
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|n| n == "bfb-install")
    {
        "bfb-install"
    } else {
        "hostplane-agent flash"
    };
    let cmd = FlashArgs::command().name(name).bin_name(name);
    let parsed = cmd
        .try_get_matches_from(argv)
        .and_then(|m| FlashArgs::from_arg_matches(&m));
    let args = match parsed {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS // --help
            };
        }
    };
    crate::logging::init(&CliLogEnv, crate::config::LogFormat::Plain);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let code = rt.block_on(run_flash_cli(args, name));
    // A writer thread still in a device write (bounded by BOOT_TIMEOUT) and
    // blocking misc reads are not waited for here.
    rt.shutdown_timeout(Duration::from_secs(1));
    code
}

/// Run the flash, printing progress to stdout and the outcome to stderr on
/// failure. SIGINT and SIGTERM stop it cleanly (the push stops, `misc` is
/// restored, the lock released) and the exit code is 128 + the signal; a
/// second signal exits at once.
pub async fn run_flash_cli(args: FlashArgs, prog: &str) -> ExitCode {
    let cancel = CancellationToken::new();
    let caught: Arc<Mutex<Option<&'static str>>> = Arc::default();
    // The signal watcher lives as long as the flash: aborted when it returns.
    let watcher = match Signals::new() {
        Ok(mut signals) => {
            let (c, caught) = (cancel.clone(), caught.clone());
            Some(tokio::spawn(
                async move {
                    loop {
                        match signals.recv().await {
                            Signal::Shutdown(name) if c.is_cancelled() => {
                                eprintln!(
                                    "{name} again: exiting without restoring the device's misc settings"
                                );
                                std::process::exit(signal_exit_code(name).into());
                            }
                            Signal::Shutdown(name) => {
                                tracing::info!(signal = name, "stopping the flash");
                                *caught.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                                    Some(name);
                                c.cancel();
                            }
                            Signal::Reload => tracing::info!(signal = "SIGHUP", "ignored during a flash"),
                        }
                    }
                }
                .instrument(tracing::info_span!("flash_cli_signals")),
            ))
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot install signal handlers; SIGINT/SIGTERM end the flash at once");
            None
        }
    };
    let mut err = std::io::stderr();
    let code = run(args, prog, &mut std::io::stdout(), &mut err, cancel).await;
    if let Some(w) = watcher {
        w.abort();
        let _ = w.await;
    }
    let signal = *caught.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    match signal {
        // Interrupted: the flash reported where it stopped; say why and how it ended.
        Some(name) if code != EXIT_OK => {
            let _ = writeln!(
                err,
                "{prog}: interrupted by {name}: the push was stopped, the device's misc settings restored and the flash lock released"
            );
            ExitCode::from(signal_exit_code(name))
        }
        _ => ExitCode::from(code),
    }
}

/// 128 + the signal's number, as shells report a death by that signal.
fn signal_exit_code(name: &str) -> u8 {
    match name {
        "SIGINT" => 130,
        _ => 143,
    }
}

/// [`run_flash_cli`] with explicit outputs; returns the exit code.
pub async fn run(
    args: FlashArgs,
    prog: &str,
    out: &mut (dyn Write + Send),
    err: &mut dyn Write,
    cancel: CancellationToken,
) -> u8 {
    let usage = |err: &mut dyn Write, msg: &str| {
        let _ = writeln!(err, "{prog}: {msg}");
        EXIT_USAGE
    };
    if let Err(msg) = args.check_options() {
        return usage(err, &msg);
    }
    let (rshim, dev_root) = match rshim_target(&args) {
        Ok(x) => x,
        Err(msg) => return usage(err, &msg),
    };
    let (image, shown) = match image_source(&args).await {
        Ok(x) => x,
        Err(msg) => return usage(err, &msg),
    };
    let bf_cfg = match &args.bf_cfg {
        None => BfCfg::None,
        Some(p) => match bfcfg::load_raw(p).await {
            Ok(b) => b,
            Err(e) => return usage(err, &format!("--config: {e}")),
        },
    };
    if let Some(p) = &args.rootfs {
        match tokio::fs::metadata(p).await {
            Ok(m) if m.is_file() => {}
            Ok(_) => return usage(err, &format!("--rootfs {}: not a regular file", p.display())),
            Err(e) => return usage(err, &format!("--rootfs {}: {e}", p.display())),
        }
    }
    let device = dev_root.join(&rshim);
    if args.verbose {
        // bfb-install -v's block.
        let _ = writeln!(out, "Updating BlueField with local RSHIM");
        let _ = writeln!(out, "  BFB file: {shown}");
        if let Some(c) = &args.bf_cfg {
            let _ = writeln!(out, "  Config file: {}", c.display());
        }
        if let Some(r) = &args.rootfs {
            let _ = writeln!(out, "  Rootfs file: {}", r.display());
        }
        let _ = writeln!(out, "  RSHIM device node: {}", device.display());
        let lock = super::lock::FlashLock::path(&args.run_dir, &device);
        let _ = writeln!(out, "  Flash lock: {}", lock.display());
    }
    let cache_cfg = CacheConfig {
        dir: args.cache_dir.clone(),
        ..CacheConfig::default()
    };
    let cache = match BfbCache::new(cache_cfg) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            let _ = writeln!(err, "{rshim}: flash FAILED in stage prepare: {e}");
            return EXIT_FAILED;
        }
    };
    let flasher = Flasher::new(args.flash_config(dev_root.clone()), cache.clone());
    // The device's name once per line: its path is in -v's block.
    let _ = writeln!(out, "{rshim}: flashing {shown}");

    // Download first (with progress); the flash then finds it in the cache.
    if let ImageSource::Ref(bfb) = &image {
        let printer = std::sync::Mutex::new((None::<Instant>, &mut *out));
        let on_progress = |p: DownloadProgress| {
            let mut guard = printer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let (last, o) = &mut *guard;
            if last.is_none_or(|t| t.elapsed() >= PRINT_EVERY) || p.total == Some(p.done) {
                let total = p.total.map(|t| format!(" of {}", size(t))).unwrap_or_default();
                let _ = writeln!(o, "{rshim}: downloaded {}{total}", size(p.done));
                *last = Some(Instant::now());
            }
        };
        let res = cache.fetch_with_progress(bfb, &cancel, &on_progress).await;
        if let Err(e) = res {
            let _ = writeln!(err, "{rshim}: flash FAILED in stage prepare: {e}");
            return EXIT_FAILED;
        }
    }

    let (ptx, prx) = mpsc::channel(64);
    let (ltx, lrx) = mpsc::channel(1024);
    let req = FlashRequest {
        rshim: rshim.clone(),
        image,
        bf_cfg,
    };
    let flash = flasher.flash_with_rootfs(req, args.rootfs.clone(), ptx, Some(ltx), cancel);
    let (res, ()) = tokio::join!(flash, print_progress(&rshim, prx, lrx, out));
    report(&rshim, res, out, err)
}

fn report(
    rshim: &str,
    res: Result<super::FlashReport, FlashError>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    match res {
        Ok(r) => {
            let _ = writeln!(
                out,
                "{rshim}: installed and up ({}) — {} pushed, {} in all",
                r.verdict_line,
                size(r.bytes_pushed),
                humantime::format_duration(Duration::from_secs(r.elapsed.as_secs())),
            );
            0
        }
        Err(e) => {
            // The device name once: most errors start with it already.
            let text = e.to_string();
            let text = text.strip_prefix(&format!("{rshim}: ")).unwrap_or(&text);
            let _ = writeln!(err, "{rshim}: flash FAILED in stage {}: {text}", e.stage());
            match e {
                FlashError::Busy { .. } => EXIT_BUSY,
                FlashError::BfCfg { .. } => EXIT_USAGE,
                _ => EXIT_FAILED,
            }
        }
    }
}

async fn print_progress(
    rshim: &str,
    mut progress: mpsc::Receiver<FlashProgress>,
    mut lines: mpsc::Receiver<String>,
    out: &mut (dyn Write + Send),
) {
    let mut stage = String::new();
    let mut last_bytes_at: Option<Instant> = None;
    let mut last_bytes = 0;
    let (mut p_open, mut l_open) = (true, true);
    while p_open || l_open {
        tokio::select! {
            // DPU lines before the stage they caused.
            biased;
            l = lines.recv(), if l_open => match l {
                None => l_open = false,
                Some(l) => {
                    let _ = writeln!(out, "{rshim}| {l}");
                }
            },
            p = progress.recv(), if p_open => match p {
                None => p_open = false,
                Some(p) => {
                    if p.stage != stage {
                        stage = p.stage.clone();
                        let _ = writeln!(out, "{rshim}: stage {stage}");
                    }
                    let due = last_bytes_at.is_none_or(|t| t.elapsed() >= PRINT_EVERY);
                    let finished = p.bytes_total > 0 && p.bytes_pushed == p.bytes_total;
                    if p.bytes_pushed != last_bytes && (due || finished) {
                        last_bytes = p.bytes_pushed;
                        last_bytes_at = Some(Instant::now());
                        let pct = (100 * p.bytes_pushed).checked_div(p.bytes_total).unwrap_or(0);
                        let _ = writeln!(
                            out,
                            "{rshim}: pushed {} of {} ({pct}%) at {:.1} MB/s",
                            size(p.bytes_pushed),
                            size(p.bytes_total),
                            p.rate_bytes_per_sec / 1e6
                        );
                    }
                }
            },
        }
    }
}

/// Validate `--bfb` / `--sha256` into an image source and its display name.
async fn image_source(args: &FlashArgs) -> Result<(ImageSource, String), String> {
    let digest = match &args.sha256 {
        None => None,
        Some(s) => {
            Some(normalize_digest(s).ok_or_else(|| format!("--sha256 {s:?}: expected 64 hex digits"))?)
        }
    };
    if args.bfb.contains("://") {
        let url = reqwest::Url::parse(&args.bfb).map_err(|e| format!("--bfb {:?}: {e}", args.bfb))?;
        if !matches!(url.scheme(), "http" | "https" | "file") {
            return Err(format!(
                "--bfb: unsupported scheme {:?} (use http, https, file or a path)",
                url.scheme()
            ));
        }
        let Some(sha256) = digest else {
            return Err("--sha256 is required when --bfb is a URL".into());
        };
        let shown = crate::bfb_cache::redact_url(&args.bfb);
        return Ok((
            ImageSource::Ref(BfbRef {
                url: args.bfb.clone(),
                sha256,
                ..Default::default()
            }),
            shown,
        ));
    }
    let path = Path::new(&args.bfb);
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|e| format!("--bfb {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("--bfb {}: not a regular file", path.display()));
    }
    let abs = std::path::absolute(path).map_err(|e| format!("--bfb {}: {e}", path.display()))?;
    let shown = format!("{} ({})", abs.display(), size(meta.len()));
    match digest {
        // With a digest, go through the cache: copied, sha256 and structure checked.
        Some(sha256) => {
            let url = reqwest::Url::from_file_path(&abs)
                .map_err(|()| format!("--bfb {}: not a usable path", abs.display()))?;
            let bfb = BfbRef {
                url: url.to_string(),
                sha256,
                size_bytes: meta.len(),
                ..Default::default()
            };
            Ok((ImageSource::Ref(bfb), shown))
        }
        None => Ok((ImageSource::LocalFile(abs), shown)),
    }
}

fn size(bytes: u64) -> String {
    const MIB: f64 = (1u64 << 20) as f64;
    if bytes >= 1 << 30 {
        format!("{:.2} GiB", bytes as f64 / (MIB * 1024.0))
    } else if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / MIB)
    } else {
        format!("{bytes} B")
    }
}

#[cfg(test)]
mod tests;
