//! `HOSTPLANE_BENCH_PERF=1`: `perf record -g` on the coordinator during the
//! walk, into `target/bench-perf.data`, then the top of
//! `perf report --no-children --sort symbol`.
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

pub struct Perf {
    child: Child,
    pub data: PathBuf,
}

/// `target/bench-perf.data`, next to the bench's own `target/release/`.
pub fn data_path() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the bench executable")?;
    let target = exe
        .ancestors()
        .find(|d| d.file_name().is_some_and(|n| n == "target"))
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    Ok(target.join("bench-perf.data"))
}

impl Perf {
    pub async fn record(pid: i32) -> Result<Perf> {
        let data = data_path()?;
        let child = Command::new("perf")
            .args(["record", "-g", "-o"])
            .arg(&data)
            .args(["-p", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting `perf record` (is perf installed?)")?;
        // perf attaches within a moment; a walk is much longer.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(Perf { child, data })
    }

    /// Stop recording and return the top `n` lines of the report.
    pub async fn report(self, n: usize) -> Result<Vec<String>> {
        if let Some(pid) = self.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGINT);
        }
        let out = tokio::time::timeout(Duration::from_secs(120), self.child.wait_with_output())
            .await
            .context("perf record did not stop within 120 s of SIGINT")??;
        if !self.data.exists() {
            bail!(
                "perf record wrote nothing: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let rep = Command::new("perf")
            .args([
                "report",
                "--no-children",
                "--sort",
                "symbol",
                "--stdio",
                "-g",
                "none",
                "-i",
            ])
            .arg(&self.data)
            .output()
            .await
            .context("running perf report")?;
        let text = String::from_utf8_lossy(&rep.stdout);
        Ok(text
            .lines()
            .filter(|l| l.split_whitespace().next().is_some_and(|w| w.ends_with('%')))
            .take(n)
            // The symbol column is padded and followed by empty columns ("-").
            .map(|l| l.trim_end().trim_end_matches([' ', '-']).to_string())
            .collect())
    }
}
