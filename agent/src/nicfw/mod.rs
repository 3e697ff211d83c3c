//! NIC firmware (NV config) parameters, issue 14: the library half of the
//! ConfigFWParameters phase. Not wired into the command path yet.
//!
//! [`NicConfigTool`] is the seam: [`Mstconfig`] drives the open-source
//! `mstconfig` from Debian's `mstflint` package; tests drive the same code
//! through a fake `mstconfig` that prints the real tool's formats.
//! [`apply`] queries first, sets only what differs from the next-boot value,
//! queries again to verify, and reports per parameter.

mod mstconfig;

pub use mstconfig::{Mstconfig, parse_query};

use std::fmt;

/// One NV config parameter as `mstconfig -e query` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvParam {
    pub name: String,
    /// The value the firmware runs with now (`Current` column); `None` when
    /// the tool did not show that column (old firmware without `-e` support).
    pub current: Option<String>,
    /// The value the firmware loads at the next boot (`Next Boot` column).
    pub next_boot: String,
}

/// A failure of the tool itself (not of one parameter).
#[derive(Debug, thiserror::Error)]
pub enum NicFwError {
    #[error(
        "NIC firmware tool {program:?} not found ({source}); install Debian's `mstflint` package, which provides `mstconfig`"
    )]
    ToolMissing { program: String, source: std::io::Error },
    #[error("running {program:?}: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("{program} {args} did not finish within {after:?}; killed")]
    Timeout {
        program: String,
        args: String,
        after: std::time::Duration,
    },
    /// The tool ran and refused; `message` is its own words (`-E-` lines).
    #[error("{program} {action} on {device} failed: {message}")]
    Tool {
        program: String,
        action: &'static str,
        device: String,
        message: String,
    },
    #[error("{program} query on {device}: unexpected output: {reason}")]
    Parse {
        program: String,
        device: String,
        reason: String,
    },
}

/// A NIC firmware configuration tool.
#[allow(async_fn_in_trait)]
pub trait NicConfigTool {
    /// Every parameter of `device` with its current and next-boot values.
    async fn query(&self, device: &str) -> Result<Vec<NvParam>, NicFwError>;
    /// Sets `params` (`NAME`, `VALUE`) for the next boot of `device`.
    async fn set(&self, device: &str, params: &[(String, String)]) -> Result<(), NicFwError>;
}

/// What happened to one desired parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamOutcome {
    /// The next-boot value already matched; nothing was set.
    Unchanged,
    /// Set and verified by a second query; takes effect at the next reboot.
    Set { from: String, to: String },
    /// Not applied; the text is the tool's own words where it gave any.
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamReport {
    pub name: String,
    pub desired: String,
    pub outcome: ParamOutcome,
}

/// The overall outcome of [`apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overall {
    /// Every parameter already had its desired next-boot value.
    Unchanged,
    /// Every parameter is Unchanged or Set, at least one Set: reboot needed.
    RebootRequired,
    /// At least one parameter failed (others may have been set: see the
    /// per-parameter outcomes); never reported as success.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    pub device: String,
    pub params: Vec<ParamReport>,
    /// The query or verification itself failed (tool missing, device
    /// unreadable): the tool's words.
    pub error: Option<String>,
}

impl ApplyReport {
    pub fn overall(&self) -> Overall {
        if self.error.is_some()
            || self
                .params
                .iter()
                .any(|p| matches!(p.outcome, ParamOutcome::Failed(_)))
        {
            Overall::Failed
        } else if self
            .params
            .iter()
            .any(|p| matches!(p.outcome, ParamOutcome::Set { .. }))
        {
            Overall::RebootRequired
        } else {
            Overall::Unchanged
        }
    }

    pub fn succeeded(&self) -> bool {
        self.overall() != Overall::Failed
    }
}

impl fmt::Display for ApplyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.device)?;
        if let Some(e) = &self.error {
            write!(f, "{e}; ")?;
        }
        let parts: Vec<String> = self
            .params
            .iter()
            .map(|p| match &p.outcome {
                ParamOutcome::Unchanged => format!("{}={} unchanged", p.name, p.desired),
                ParamOutcome::Set { from, to } => {
                    format!("{} {from} -> {to} (takes effect at next reboot)", p.name)
                }
                ParamOutcome::Failed(why) => format!("{}={} failed: {why}", p.name, p.desired),
            })
            .collect();
        write!(f, "{}", parts.join("; "))
    }
}

/// Whether the value the tool shows (`True(1)`, `False(0)`, `20`,
/// `DEVICE_DEFAULT(0)`) is the value asked for (`1`, `true`, `False(0)`,
/// `20`). Textual labels compare case-insensitively, numbers numerically.
pub fn value_matches(shown: &str, desired: &str) -> bool {
    let (shown_label, shown_num) = split_value(shown);
    let (want_label, want_num) = split_value(desired);
    if let (Some(a), Some(b)) = (shown_num, want_num) {
        return a == b;
    }
    match (shown_label, want_label) {
        (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
        _ => false,
    }
}

/// `True(1)` -> (Some("True"), Some(1)); `20` -> (None, Some(20));
/// `0x1f` -> (None, Some(31)); `True` -> (Some("True"), None).
fn split_value(v: &str) -> (Option<&str>, Option<u64>) {
    let v = v.trim();
    if let Some(open) = v.find('(')
        && v.ends_with(')')
    {
        let label = &v[..open];
        let num = parse_num(&v[open + 1..v.len() - 1]);
        return ((!label.is_empty()).then_some(label), num);
    }
    match parse_num(v) {
        Some(n) => (None, Some(n)),
        None => (Some(v), None),
    }
}

fn parse_num(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()
    } else {
        s.parse().ok()
    }
}

/// Applies `desired` to `device` through `tool`: query, set only what
/// differs from the next-boot value (one `set` per parameter, so the tool's
/// refusal of one names that one and does not block the others), query again
/// and verify each parameter that was set.
pub async fn apply<T: NicConfigTool>(tool: &T, device: &str, desired: &[(String, String)]) -> ApplyReport {
    let mut report = ApplyReport {
        device: device.to_string(),
        params: Vec::new(),
        error: None,
    };
    let before = match tool.query(device).await {
        Ok(p) => p,
        Err(e) => {
            let why = e.to_string();
            report.params = desired
                .iter()
                .map(|(n, v)| ParamReport {
                    name: n.clone(),
                    desired: v.clone(),
                    outcome: ParamOutcome::Failed(format!("not attempted: {why}")),
                })
                .collect();
            report.error = Some(why);
            return report;
        }
    };
    let mut to_verify = Vec::new();
    for (name, value) in desired {
        let existing = before.iter().find(|p| p.name == *name);
        let outcome = match existing {
            Some(p) if value_matches(&p.next_boot, value) => ParamOutcome::Unchanged,
            _ => {
                // Unknown names are sent too: the tool's refusal is the
                // message the operator should see.
                match tool.set(device, &[(name.clone(), value.clone())]).await {
                    Ok(()) => {
                        to_verify.push(report.params.len());
                        ParamOutcome::Set {
                            from: existing
                                .map(|p| p.next_boot.clone())
                                .unwrap_or_else(|| "N/A".into()),
                            to: value.clone(),
                        }
                    }
                    Err(NicFwError::Tool { message, .. }) => ParamOutcome::Failed(message),
                    Err(e) => ParamOutcome::Failed(e.to_string()),
                }
            }
        };
        report.params.push(ParamReport {
            name: name.clone(),
            desired: value.clone(),
            outcome,
        });
    }
    if to_verify.is_empty() {
        return report;
    }
    match tool.query(device).await {
        Ok(after) => {
            for i in to_verify {
                let p = &mut report.params[i];
                match after.iter().find(|a| a.name == p.name) {
                    Some(a) if value_matches(&a.next_boot, &p.desired) => {
                        if let ParamOutcome::Set { to, .. } = &mut p.outcome {
                            *to = a.next_boot.clone();
                        }
                    }
                    Some(a) => {
                        p.outcome = ParamOutcome::Failed(format!(
                            "the tool accepted the set but the next-boot value reads {} afterwards",
                            a.next_boot
                        ));
                    }
                    None => {
                        p.outcome = ParamOutcome::Failed(
                            "the tool accepted the set but the parameter is absent from the verifying query"
                                .into(),
                        );
                    }
                }
            }
        }
        Err(e) => {
            let why = format!("verifying query failed: {e}");
            for i in to_verify {
                report.params[i].outcome = ParamOutcome::Failed(format!("set but not verified: {why}"));
            }
            report.error = Some(why);
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_compare_as_the_tool_shows_them() {
        assert!(value_matches("False(0)", "0"));
        assert!(value_matches("False(0)", "false"));
        assert!(value_matches("False(0)", "False(0)"));
        assert!(!value_matches("False(0)", "1"));
        assert!(!value_matches("True(1)", "False"));
        assert!(value_matches("20", "20"));
        assert!(value_matches("20", "0x14"));
        assert!(!value_matches("20", "21"));
        assert!(value_matches("ETH(2)", "eth"));
        assert!(!value_matches("N/A", "0"));
    }
}
