//! [`NicConfigTool`] over the `mstconfig` binary (mstflint's open
//! `mlxconfig`). Formats follow mstflint's `mlxconfig/mlxcfg_ui.cpp`:
//!
//! ```text
//! Device #1:
//! ----------
//!
//! Device type:        BlueField3
//! Name:               900-9D3B6-00CV-AA0
//! Description:        NVIDIA BlueField-3 B3220 P-Series ...
//! Device:             /dev/mst/mt41692_pciconf0
//!
//! Configurations:                                         Default         Current         Next Boot
//!         PF_BAR2_ENABLE                                  False(0)        False(0)        False(0)
//! *       PER_PF_NUM_SF                                   False(0)        False(0)        True(1)
//!  RO     PF_TOTAL_SF                                     0               0               20
//! The '*' shows parameters with next value different from default/current value.
//! ```
//!
//! Each row is a 1-character diff mark (`*`), a 2-character `RO` mark, five
//! spaces, the name and one value per column (`N/A` when unknown; enum and
//! boolean values as `Label(n)`, numbers bare). `-e` adds the Default and
//! Current columns; `set` with `-y` answers its "Apply new Configuration?"
//! itself. Errors are printed as `-E- <text>` on stdout with a non-zero exit
//! (e.g. `-E- Unknown Parameter FOO`, `-E- Unknown value bar`).

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use super::{NicConfigTool, NicFwError, NvParam, Queried};

/// Runs `mstconfig` (or the binary at `program`).
#[derive(Debug, Clone)]
pub struct Mstconfig {
    program: PathBuf,
    timeout: Duration,
}

impl Default for Mstconfig {
    fn default() -> Self {
        Self::new("mstconfig")
    }
}

impl Mstconfig {
    /// `program`: a path, or a bare name looked up on `PATH`.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            timeout: Self::DEFAULT_TIMEOUT,
        }
    }

    /// How long one invocation may run before it is killed and reported as
    /// hung (a query of every parameter takes a few seconds on a BlueField).
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn name(&self) -> String {
        self.program.display().to_string()
    }

    async fn run(&self, args: &[&str]) -> Result<Output, NicFwError> {
        super::run_tool(&self.program, args, self.timeout, |program, source| {
            NicFwError::ToolMissing { program, source }
        })
        .await
    }

    fn failure(&self, action: &'static str, device: &str, out: &Output) -> NicFwError {
        NicFwError::Tool {
            program: self.name(),
            action,
            device: device.to_string(),
            message: tool_message(out),
        }
    }
}

/// The tool's own words for a failure: its `-E-` lines, else the last
/// non-empty line of stderr or stdout, plus the exit status.
fn tool_message(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // An -E- line and, when it ends in ':', the indented lines under it
    // ("Failed to query some of the TLVs:" then the TLVs' names).
    let mut errors: Vec<String> = Vec::new();
    let mut in_error = false;
    for l in stdout.lines().chain(stderr.lines()) {
        if let Some(e) = l.trim().strip_prefix("-E-") {
            errors.push(e.trim().to_string());
            // Only a line that announces a list continues (not the usage
            // text printed after a parse error).
            in_error = e.trim_end().ends_with(':');
        } else if in_error && l.starts_with(char::is_whitespace) && !l.trim().is_empty() {
            if let Some(last) = errors.last_mut() {
                last.push(' ');
                last.push_str(l.trim());
            }
        } else {
            in_error = false;
        }
    }
    if !errors.is_empty() {
        return errors.join("; ");
    }
    let last = stderr
        .lines()
        .chain(stdout.lines())
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(str::trim)
        .unwrap_or("no output");
    format!("{last} ({})", out.status)
}

/// Parses `mstconfig [-e] query` output into parameters.
pub fn parse_query(text: &str) -> Result<Vec<NvParam>, String> {
    let mut lines = text.lines();
    let header = lines
        .by_ref()
        .find(|l| l.starts_with("Configurations:"))
        .ok_or_else(|| "no \"Configurations:\" header".to_string())?;
    let cols = &header["Configurations:".len()..];
    let has_next = cols.contains("Next Boot");
    let has_current = cols.contains("Current");
    let has_default = cols.contains("Default");
    let has_new = cols.split_whitespace().any(|c| c == "New");
    if !has_next && !has_default {
        return Err(format!("header without a Next Boot column: {header:?}"));
    }
    // Column order as printed: Default, Current, Next Boot, New. Without
    // "Next Boot" (set-with-defaults label) the last value column is next.
    let default_col = (has_default && has_next) as usize;
    let current_idx = has_current.then_some(default_col);
    let next_idx = default_col + has_current as usize;
    let ncols = next_idx + 1 + has_new as usize;
    let mut params = Vec::new();
    for line in lines {
        if line.trim().is_empty() {
            if params.is_empty() {
                continue;
            }
            break;
        }
        if !(line.starts_with(' ') || line.starts_with('*') || line.starts_with("RO")) {
            break;
        }
        let body = line.get(3..).unwrap_or("");
        let tokens: Vec<&str> = body.split_whitespace().collect();
        if tokens.len() != 1 + ncols {
            return Err(format!(
                "row {line:?} has {} values, the header {header:?} has {ncols} columns",
                tokens.len().saturating_sub(1)
            ));
        }
        params.push(NvParam {
            name: tokens[0].to_string(),
            current: current_idx.map(|i| tokens[1 + i].to_string()),
            next_boot: tokens[1 + next_idx].to_string(),
        });
    }
    Ok(params)
}

/// The name in the tool's `Unknown Parameter NAME` (the whole name, index
/// included, as it was asked for), when `message` says that.
fn unknown_parameter<'a>(message: &str, names: &'a [String]) -> Option<&'a String> {
    message.split("; ").find_map(|m| {
        let rest = m.trim().strip_prefix("Unknown Parameter")?;
        let rest = rest.trim_start_matches(':').trim();
        // The tool names an indexed parameter without its index.
        names
            .iter()
            .find(|n| *n == rest)
            .or_else(|| names.iter().find(|n| n.split('[').next() == Some(rest)))
    })
}

impl NicConfigTool for Mstconfig {
    async fn query(&self, device: &str) -> Result<Vec<NvParam>, NicFwError> {
        Ok(self.query_named(device, &[]).await?.params)
    }

    /// `mstconfig -d D -e query N1 N2[1] ...`: a query of every parameter
    /// shows an array as one `NAME  Array[0..15]` row, a named query shows
    /// the `NAME[i]` rows asked for. A name the tool does not know fails the
    /// whole invocation (`-E- Unknown Parameter NAME`): that name is
    /// reported with the tool's words and the others queried again without
    /// it. A non-zero exit after rows were printed (a TLV it failed to read)
    /// keeps the rows; the named parameters missing from them fail with the
    /// tool's words, which are otherwise kept as a note.
    async fn query_named(&self, device: &str, names: &[String]) -> Result<Queried, NicFwError> {
        let mut wanted: Vec<String> = names.to_vec();
        let mut failed: Vec<(String, String)> = Vec::new();
        loop {
            let mut args = vec!["-d", device, "-e", "query"];
            args.extend(wanted.iter().map(String::as_str));
            let out = self.run(&args).await?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            let parsed = parse_query(&stdout);
            if out.status.success() {
                let params = parsed.map_err(|reason| NicFwError::Parse {
                    program: self.name(),
                    device: device.to_string(),
                    reason,
                })?;
                return Ok(Queried {
                    params,
                    failed,
                    notes: Vec::new(),
                });
            }
            let message = tool_message(&out);
            match parsed {
                Ok(params) if !params.is_empty() => {
                    let mut notes = Vec::new();
                    let missing: Vec<&String> = wanted
                        .iter()
                        .filter(|n| !params.iter().any(|p| p.name == **n))
                        .collect();
                    if missing.is_empty() {
                        notes.push(format!("{} query on {device}: {message}", self.name()));
                    }
                    failed.extend(missing.into_iter().map(|n| (n.clone(), message.clone())));
                    return Ok(Queried {
                        params,
                        failed,
                        notes,
                    });
                }
                _ => {}
            }
            let Some(unknown) = unknown_parameter(&message, &wanted).cloned() else {
                return Err(self.failure("query", device, &out));
            };
            failed.push((unknown.clone(), message));
            wanted.retain(|n| *n != unknown);
            if wanted.is_empty() {
                return Ok(Queried {
                    params: Vec::new(),
                    failed,
                    notes: Vec::new(),
                });
            }
        }
    }

    async fn set(&self, device: &str, params: &[(String, String)]) -> Result<(), NicFwError> {
        let assignments: Vec<String> = params.iter().map(|(n, v)| format!("{n}={v}")).collect();
        let mut args = vec!["-d", device, "-y", "set"];
        args.extend(assignments.iter().map(String::as_str));
        let out = self.run(&args).await?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        // Success is exit 0 *and* mlxconfig's "Applying... Done!"; a zero
        // exit with "Failed!" or an -E- line is a refusal.
        if out.status.success()
            && stdout.contains("Done!")
            && !stdout.lines().any(|l| l.trim_start().starts_with("-E-"))
        {
            Ok(())
        } else {
            Err(self.failure("set", device, &out))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXTENDED: &str = "\nDevice #1:\n----------\n\nDevice type:        BlueField3          \nName:               900-9D3B6-00CV-AA0  \nDescription:        NVIDIA BlueField-3  \nDevice:             /dev/mst/mt41692_pciconf0\n\nConfigurations:                                         Default         Current         Next Boot\n        PF_BAR2_ENABLE                                  False(0)        False(0)        False(0)        \n*       PER_PF_NUM_SF                                   False(0)        False(0)        True(1)         \n RO     PF_TOTAL_SF                                     0               0               20              \nThe '*' shows parameters with next value different from default/current value.\n";

    #[test]
    fn parses_extended_query() {
        let p = parse_query(EXTENDED).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[1].name, "PER_PF_NUM_SF");
        assert_eq!(p[1].current.as_deref(), Some("False(0)"));
        assert_eq!(p[1].next_boot, "True(1)");
        assert_eq!(p[2].name, "PF_TOTAL_SF");
        assert_eq!(p[2].next_boot, "20");
    }

    #[test]
    fn parses_next_boot_only_query() {
        let text = "Configurations:                                         Next Boot\n        SRIOV_EN                                        True(1)         \n";
        let p = parse_query(text).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].current, None);
        assert_eq!(p[0].next_boot, "True(1)");
    }

    #[test]
    fn rejects_output_without_header_or_with_short_rows() {
        assert!(parse_query("-E- something\n").is_err());
        let short = "Configurations:        Default  Current  Next Boot\n        X   1   1\n";
        let err = parse_query(short).unwrap_err();
        assert!(err.contains("has 2 values"), "{err}");
    }
}
