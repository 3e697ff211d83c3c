//! `hostplane-agent flash`: flash one DPU by hand, like `bfb-install`, but
//! exiting 0 only on a verified installation.
//!
//! Exit codes: 0 installed; 1 the flash failed (the reason is printed); 64
//! usage error (bad arguments, unreadable image or bf.cfg).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use hostplane_proto::v1::{BfbRef, FlashProgress};
use humantime_serde::re::humantime;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{FlashConfig, FlashError, FlashRequest, Flasher, ImageSource, StageTimeouts};
use crate::bfb_cache::{BfbCache, CacheConfig, DownloadProgress, normalize_digest};
use crate::bfcfg::{self, BfCfg};
use crate::rshim::is_rshim_name;

pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 64;

/// Least time between two byte-progress lines.
const PRINT_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, clap::Args)]
pub struct FlashArgs {
    /// rshim device to flash, e.g. rshim0.
    #[arg(long)]
    pub rshim: String,
    /// The BFB: a local file, or an http(s):// or file:// URL.
    #[arg(long)]
    pub bfb: String,
    /// Expected sha256 of the BFB (required for URLs, optional for files).
    #[arg(long)]
    pub sha256: Option<String>,
    /// A bf.cfg file to push after the BFB (at most 128 KiB of text).
    #[arg(long = "bf-cfg")]
    pub bf_cfg: Option<PathBuf>,
    /// Directory holding the rshim<N>/ devices.
    #[arg(long, default_value = "/dev")]
    pub dev_root: PathBuf,
    /// Where downloaded BFBs are cached.
    #[arg(long, default_value = "/var/lib/hostplane-agent/cache")]
    pub cache_dir: PathBuf,
    /// Give up when the device accepts no data for this long.
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
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))
}

impl FlashArgs {
    fn flash_config(&self) -> FlashConfig {
        FlashConfig {
            dev_root: self.dev_root.clone(),
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
}

/// Run the flash, printing progress to stdout and the outcome to stderr on
/// failure. Ctrl-C cancels (the push stops cleanly).
pub async fn run_flash_cli(args: FlashArgs) -> ExitCode {
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(
        async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                tracing::info!("interrupted; stopping the flash");
                c.cancel();
            }
        }
        .instrument(tracing::info_span!("flash_cli_interrupt")),
    );
    let code = run(args, &mut std::io::stdout(), &mut std::io::stderr(), cancel).await;
    ExitCode::from(code)
}

/// [`run_flash_cli`] with explicit outputs; returns the exit code.
pub async fn run(
    args: FlashArgs,
    out: &mut (dyn Write + Send),
    err: &mut dyn Write,
    cancel: CancellationToken,
) -> u8 {
    let rshim = args.rshim.clone();
    let (image, shown) = match image_source(&args).await {
        Ok(x) => x,
        Err(msg) => {
            let _ = writeln!(err, "hostplane-agent flash: {msg}");
            return EXIT_USAGE;
        }
    };
    let bf_cfg = match &args.bf_cfg {
        None => BfCfg::None,
        Some(p) => match bfcfg::load_raw(p).await {
            Ok(b) => b,
            Err(e) => {
                let _ = writeln!(err, "hostplane-agent flash: --bf-cfg: {e}");
                return EXIT_USAGE;
            }
        },
    };
    let cache_cfg = CacheConfig {
        dir: args.cache_dir.clone(),
        ..CacheConfig::default()
    };
    let cache = match BfbCache::new(cache_cfg) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            let _ = writeln!(err, "{rshim}: flash FAILED: {e}");
            return EXIT_FAILED;
        }
    };
    let flasher = Flasher::new(args.flash_config(), cache.clone());
    let _ = writeln!(
        out,
        "{rshim}: flashing {shown} through {}",
        args.dev_root.join(&rshim).display()
    );

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
    let flash = flasher.flash_with_log(req, ptx, Some(ltx), cancel);
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
            let _ = writeln!(err, "{rshim}: flash FAILED in stage {}: {e}", e.stage());
            EXIT_FAILED
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
    if !is_rshim_name(&args.rshim) {
        return Err(format!("--rshim {:?}: expected rshim<N>", args.rshim));
    }
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
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cmd {
        #[command(flatten)]
        args: FlashArgs,
    }

    fn parse(extra: &[&str]) -> FlashArgs {
        let mut argv = vec!["flash"];
        argv.extend_from_slice(extra);
        Cmd::try_parse_from(argv).unwrap().args
    }

    async fn exit(args: FlashArgs) -> (u8, String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run(args, &mut out, &mut err, CancellationToken::new()).await;
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    #[test]
    fn defaults_match_the_engine() {
        let a = parse(&["--rshim", "rshim0", "--bfb", "x.bfb"]);
        assert_eq!(a.flash_config(), FlashConfig::default());
        assert_eq!(a.cache_dir, Path::new("/var/lib/hostplane-agent/cache"));
        let a = parse(&[
            "--rshim",
            "rshim0",
            "--bfb",
            "x",
            "--install-timeout",
            "90m",
            "--poll-interval",
            "200ms",
        ]);
        assert_eq!(a.install_timeout, Duration::from_secs(5400));
        assert_eq!(a.poll_interval, Duration::from_millis(200));
        assert!(Cmd::try_parse_from(["flash", "--rshim", "rshim0"]).is_err());
    }

    #[tokio::test]
    async fn usage_errors_exit_64_naming_the_argument() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img.bfb");
        std::fs::write(&img, b"x").unwrap();
        let img = img.to_str().unwrap();
        let sha = "a".repeat(64);
        let bin = dir.path().join("bin.cfg");
        std::fs::write(&bin, b"\xff").unwrap();
        let cases: Vec<(Vec<&str>, &str)> = vec![
            (vec!["--rshim", "eth0", "--bfb", img], "--rshim"),
            (
                vec!["--rshim", "rshim0", "--bfb", "https://h/x.bfb"],
                "--sha256 is required",
            ),
            (
                vec!["--rshim", "rshim0", "--bfb", "ftp://h/x.bfb", "--sha256", &sha],
                "scheme",
            ),
            (
                vec!["--rshim", "rshim0", "--bfb", img, "--sha256", "xyz"],
                "--sha256",
            ),
            (
                vec!["--rshim", "rshim0", "--bfb", "/nonexistent/x.bfb"],
                "/nonexistent/x.bfb",
            ),
            (
                vec![
                    "--rshim",
                    "rshim0",
                    "--bfb",
                    img,
                    "--bf-cfg",
                    bin.to_str().unwrap(),
                ],
                "--bf-cfg",
            ),
        ];
        for (argv, needle) in cases {
            let (code, _, err) = exit(parse(&argv)).await;
            assert_eq!(code, EXIT_USAGE, "{argv:?}: {err}");
            assert!(err.contains(needle), "{argv:?}: {err}");
        }
    }

    #[tokio::test]
    async fn failures_exit_1_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img.bfb");
        std::fs::write(&img, b"not a bfb at all").unwrap();
        std::fs::create_dir_all(dir.path().join("dev/rshim0")).unwrap();
        let dev = dir.path().join("dev");
        let args = parse(&[
            "--rshim",
            "rshim0",
            "--bfb",
            img.to_str().unwrap(),
            "--dev-root",
            dev.to_str().unwrap(),
        ]);
        let (code, _, err) = exit(args).await;
        assert_eq!(code, EXIT_FAILED, "{err}");
        assert!(
            err.contains("stage prepare") && err.contains("bad magic"),
            "{err}"
        );

        // A digest that does not match: refused, exit 1.
        let mut good = Vec::new();
        hostplane_bfb::write_test_bfb(&mut good, 10_000, "1", 3).unwrap();
        std::fs::write(&img, &good).unwrap();
        let cache = dir.path().join("cache");
        let args = parse(&[
            "--rshim",
            "rshim0",
            "--bfb",
            img.to_str().unwrap(),
            "--sha256",
            &"0".repeat(64),
            "--cache-dir",
            cache.to_str().unwrap(),
        ]);
        let (code, _, err) = exit(args).await;
        assert_eq!(code, EXIT_FAILED, "{err}");
        assert!(err.contains("sha256 mismatch"), "{err}");
    }

    #[test]
    fn sizes() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(3 << 20), "3.0 MiB");
        assert_eq!(size(3 << 30), "3.00 GiB");
    }
}
