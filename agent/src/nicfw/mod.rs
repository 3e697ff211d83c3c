//! NIC firmware (NV config) parameters, issue 14: the library half of the
//! ConfigFWParameters phase (the command path is `crate::exec`).
//!
//! [`NicConfigTool`] is the seam: [`Mstconfig`] drives the open-source
//! `mstconfig` from Debian's `mstflint` package; tests drive the same code
//! through a fake `mstconfig` that prints the real tool's formats.
//! [`apply`] queries first, sets only what differs from the next-boot value,
//! queries again to verify, and reports per parameter. [`apply_with`] also
//! prefers devlink ([`DevlinkParams`]) for the parameters the kernel exposes
//! as devlink parameters ([`DEVLINK_NAMES`]), and stops between tool calls
//! when cancelled.

mod config;
mod devlink;
mod mstconfig;

pub use config::{DevlinkMode, NicFwConfig};
pub use devlink::{
    DEVLINK_NAMES, Devlink, DevlinkKind, DevlinkParam, DevlinkParams, PERMANENT, devlink_name, devlink_value,
    parse_show,
};
pub use mstconfig::{Mstconfig, parse_query};

use std::fmt;

use tokio_util::sync::CancellationToken;

use devlink::DevlinkTool;

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
    #[error("devlink tool {program:?} not found ({source}); install iproute2, which provides `devlink`")]
    DevlinkMissing { program: String, source: std::io::Error },
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

/// Runs `program args` (stdin closed, killed on drop) within `timeout`: a
/// missing binary is `missing(program, error)`, a hung one `Timeout`.
async fn run_tool(
    program: &std::path::Path,
    args: &[&str],
    timeout: std::time::Duration,
    missing: impl FnOnce(String, std::io::Error) -> NicFwError,
) -> Result<std::process::Output, NicFwError> {
    let name = || program.display().to_string();
    let output = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(timeout, output)
        .await
        .map_err(|_| NicFwError::Timeout {
            program: name(),
            args: args.join(" "),
            after: timeout,
        })?
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                missing(name(), source)
            } else {
                NicFwError::Spawn {
                    program: name(),
                    source,
                }
            }
        })
}

/// A NIC firmware configuration tool.
#[allow(async_fn_in_trait)]
pub trait NicConfigTool {
    /// Every parameter of `device` with its current and next-boot values.
    async fn query(&self, device: &str) -> Result<Vec<NvParam>, NicFwError>;
    /// The parameters named in `names` (every one when empty). A tool that
    /// reads some of them but not others says so in [`Queried::failed`]
    /// instead of failing the whole query. By default, [`Self::query`].
    async fn query_named(&self, device: &str, names: &[String]) -> Result<Queried, NicFwError> {
        let _ = names;
        Ok(Queried {
            params: self.query(device).await?,
            ..Queried::default()
        })
    }
    /// Sets `params` (`NAME`, `VALUE`) for the next boot of `device`.
    async fn set(&self, device: &str, params: &[(String, String)]) -> Result<(), NicFwError>;
}

/// The answer of [`NicConfigTool::query_named`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Queried {
    pub params: Vec<NvParam>,
    /// Named parameters the tool could not read, each with its words
    /// (`Unknown Parameter FOO`, a TLV it failed to query).
    pub failed: Vec<(String, String)>,
    /// What the tool said besides the table (an error that cost no wanted row).
    pub notes: Vec<String>,
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

/// Which tool read (and set) a parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Mstconfig,
    /// A devlink parameter in cmode permanent (see [`DEVLINK_NAMES`]).
    Devlink,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamReport {
    pub name: String,
    pub desired: String,
    pub outcome: ParamOutcome,
    pub via: Via,
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
    /// Stopped between two tool calls because it was cancelled; what was
    /// done before is in the per-parameter outcomes.
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    pub device: String,
    pub params: Vec<ParamReport>,
    /// The query or verification itself failed (tool missing, device
    /// unreadable): the tool's words.
    pub error: Option<String>,
    /// Stopped between tool calls because it was cancelled.
    pub cancelled: bool,
    /// How the parameters were routed, when that is worth saying (devlink
    /// not usable, a mapped parameter devlink does not expose).
    pub notes: Vec<String>,
    /// The values set need a host power cycle, not a warm reboot (the
    /// caller's knowledge: the Flavor says so).
    pub power_cycle_required: bool,
    /// The parameters (Unchanged or Set) whose current (running) value does
    /// not match the desired one after the apply: set now or by an earlier
    /// attempt, not in effect yet. A parameter without a known current value
    /// (old firmware without the column; a devlink parameter with no
    /// `runtime`/`driverinit` value) counts when it was set now.
    pub pending: Vec<String>,
}

impl ApplyReport {
    pub fn overall(&self) -> Overall {
        if self.cancelled {
            Overall::Cancelled
        } else if self.error.is_some()
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
        matches!(self.overall(), Overall::Unchanged | Overall::RebootRequired)
    }

    /// True when at least one parameter was set (so the values wait for a
    /// reboot or a power cycle).
    pub fn any_set(&self) -> bool {
        self.params
            .iter()
            .any(|p| matches!(p.outcome, ParamOutcome::Set { .. }))
    }

    /// The host must be power-cycled for the values to take effect: the
    /// caller said the parameters need one, the apply succeeded, and at least
    /// one parameter's running value does not match yet ([`Self::pending`]).
    pub fn needs_power_cycle(&self) -> bool {
        self.power_cycle_required && self.succeeded() && !self.pending.is_empty()
    }
}

impl fmt::Display for ApplyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.device)?;
        if let Some(e) = &self.error {
            write!(f, "{e}; ")?;
        }
        let mut parts: Vec<String> = self
            .params
            .iter()
            .map(|p| {
                let via = match (p.via, devlink_name(&p.name)) {
                    (Via::Devlink, Some((dl, _))) => format!("via devlink ({dl}, cmode {PERMANENT})"),
                    (Via::Devlink, None) => "via devlink".to_string(),
                    (Via::Mstconfig, _) => "via mstconfig".to_string(),
                };
                match &p.outcome {
                    ParamOutcome::Unchanged => format!("{}={} unchanged, {via}", p.name, p.desired),
                    ParamOutcome::Set { from, to } => format!("{} {from} -> {to} {via}", p.name),
                    ParamOutcome::Failed(why) => format!("{}={} failed {via}: {why}", p.name, p.desired),
                }
            })
            .collect();
        parts.extend(self.notes.iter().cloned());
        if self.needs_power_cycle() {
            parts.push(format!(
                "the running value of {} does not match yet: the values take effect only after a host power \
                 cycle (host_power_cycle_required; a warm reboot is not enough)",
                self.pending.join(", ")
            ));
        } else if self.power_cycle_required && self.succeeded() {
            parts.push("every running value already matches: no host power cycle is needed".to_string());
        } else if self.any_set() {
            parts.push("the values set take effect at the next reboot".to_string());
        }
        if self.cancelled {
            parts.push("cancelled: the parameters not attempted were not applied".to_string());
        }
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
pub(crate) fn split_value(v: &str) -> (Option<&str>, Option<u64>) {
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
    apply_with(tool, device, desired, ApplyOptions::default()).await
}

/// What [`apply_with`] does besides [`apply`].
#[derive(Clone, Copy, Default)]
pub struct ApplyOptions<'a> {
    /// Prefer devlink on this devlink handle (`pci/0000:03:00.0`) for the
    /// parameters it exposes in cmode permanent ([`DEVLINK_NAMES`]).
    pub devlink: Option<(&'a dyn DevlinkParams, &'a str)>,
    /// Checked before every tool call; once cancelled nothing more runs.
    pub cancel: Option<&'a CancellationToken>,
    /// Recorded in the report (the values need a host power cycle).
    pub power_cycle_required: bool,
}

/// [`apply`], with the parameters devlink exposes on the device set through
/// devlink (one `devlink dev param show` first decides which), the rest
/// through `tool`, and cancellation honoured between tool calls. The
/// per-parameter reports come in `desired`'s order.
pub async fn apply_with<T: NicConfigTool>(
    tool: &T,
    device: &str,
    desired: &[(String, String)],
    opts: ApplyOptions<'_>,
) -> ApplyReport {
    let mut report = ApplyReport {
        device: device.to_string(),
        params: Vec::new(),
        error: None,
        cancelled: false,
        notes: Vec::new(),
        power_cycle_required: opts.power_cycle_required,
        pending: Vec::new(),
    };
    let mut through_devlink: Vec<(String, String)> = Vec::new();
    let mut devlink_before = None;
    let mut phases = Vec::new();
    if let Some((dl, handle)) = opts.devlink
        && desired.iter().any(|(n, _)| devlink_name(n).is_some())
    {
        if is_cancelled(opts.cancel) {
            phases.push(Phase::not_attempted(desired, Via::Mstconfig, "cancelled"));
        } else {
            match dl.show(handle).await {
                Ok(params) => {
                    let nv = DevlinkTool::nv_params(&params);
                    for (name, value) in desired {
                        let Some((dl_name, _)) = devlink_name(name) else {
                            continue;
                        };
                        if nv.iter().any(|p| p.name == *name) {
                            through_devlink.push((name.clone(), value.clone()));
                        } else {
                            report.notes.push(format!(
                                "{name} through mstconfig: devlink shows no {dl_name} in cmode {PERMANENT} on {handle}"
                            ));
                        }
                    }
                    devlink_before = Some(nv);
                }
                Err(e) => report.notes.push(format!(
                    "devlink not used ({e}); every parameter through mstconfig"
                )),
            }
        }
    }
    if phases.is_empty() {
        if let (Some((dl, handle)), false) = (opts.devlink, through_devlink.is_empty()) {
            let tool = DevlinkTool { devlink: dl };
            phases.push(
                apply_phase(
                    &tool,
                    handle,
                    &through_devlink,
                    Via::Devlink,
                    opts.cancel,
                    devlink_before,
                )
                .await,
            );
        }
        let rest: Vec<(String, String)> = desired
            .iter()
            .filter(|d| !through_devlink.contains(d))
            .cloned()
            .collect();
        if !rest.is_empty() {
            phases.push(apply_phase(tool, device, &rest, Via::Mstconfig, opts.cancel, None).await);
        }
    }
    let mut errors = Vec::new();
    for phase in phases {
        report.params.extend(phase.params);
        errors.extend(phase.error);
        report.notes.extend(phase.notes);
        report.pending.extend(phase.pending);
        report.cancelled |= phase.cancelled;
    }
    if !errors.is_empty() {
        report.error = Some(errors.join("; "));
    }
    let order = |name: &str| desired.iter().position(|(n, _)| n == name);
    report.params.sort_by_key(|p| order(&p.name));
    report.pending.sort_by_key(|n| order(n));
    report
}

fn is_cancelled(cancel: Option<&CancellationToken>) -> bool {
    cancel.is_some_and(CancellationToken::is_cancelled)
}

/// The outcome of one tool's share of the parameters.
struct Phase {
    params: Vec<ParamReport>,
    error: Option<String>,
    cancelled: bool,
    notes: Vec<String>,
    /// See [`ApplyReport::pending`].
    pending: Vec<String>,
}

impl Phase {
    fn not_attempted(desired: &[(String, String)], via: Via, why: &str) -> Phase {
        Phase {
            params: desired
                .iter()
                .map(|(n, v)| ParamReport {
                    name: n.clone(),
                    desired: v.clone(),
                    outcome: ParamOutcome::Failed(format!("not attempted: {why}")),
                    via,
                })
                .collect(),
            error: None,
            cancelled: why == "cancelled",
            notes: Vec::new(),
            pending: Vec::new(),
        }
    }
}

/// Query (unless `before` is that query's answer), set what differs, verify.
async fn apply_phase<T: NicConfigTool>(
    tool: &T,
    device: &str,
    desired: &[(String, String)],
    via: Via,
    cancel: Option<&CancellationToken>,
    before: Option<Vec<NvParam>>,
) -> Phase {
    let names: Vec<String> = desired.iter().map(|(n, _)| n.clone()).collect();
    let before = match before {
        Some(b) => Queried {
            params: b,
            ..Queried::default()
        },
        None if is_cancelled(cancel) => return Phase::not_attempted(desired, via, "cancelled"),
        None => match tool.query_named(device, &names).await {
            Ok(q) => q,
            Err(e) => {
                // The why is the report's error, said once.
                let mut phase = Phase::not_attempted(desired, via, "the query failed");
                phase.error = Some(e.to_string());
                return phase;
            }
        },
    };
    let mut phase = Phase {
        params: Vec::new(),
        error: None,
        cancelled: false,
        notes: before.notes,
        pending: Vec::new(),
    };
    let mut to_verify = Vec::new();
    for (name, value) in desired {
        let existing = before.params.iter().find(|p| p.name == *name);
        let unreadable = before.failed.iter().find(|(n, _)| n == name);
        let outcome = match existing {
            Some(p) if value_matches(&p.next_boot, value) => {
                // Set by an earlier attempt and not in effect yet: still pending.
                if p.current.as_deref().is_some_and(|c| !value_matches(c, value)) {
                    phase.pending.push(name.clone());
                }
                ParamOutcome::Unchanged
            }
            None if unreadable.is_some() => {
                ParamOutcome::Failed(unreadable.map(|(_, why)| why.clone()).unwrap_or_default())
            }
            _ if phase.cancelled || is_cancelled(cancel) => {
                phase.cancelled = true;
                ParamOutcome::Failed("not attempted: cancelled".into())
            }
            _ => {
                // Unknown names are sent too: the tool's refusal is the
                // message the operator should see.
                match tool.set(device, &[(name.clone(), value.clone())]).await {
                    Ok(()) => {
                        to_verify.push(phase.params.len());
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
        phase.params.push(ParamReport {
            name: name.clone(),
            desired: value.clone(),
            outcome,
            via,
        });
    }
    if to_verify.is_empty() {
        return phase;
    }
    if phase.cancelled || is_cancelled(cancel) {
        phase.cancelled = true;
        for i in to_verify {
            phase.params[i].outcome =
                ParamOutcome::Failed("set, but not verified: cancelled before the verifying query".into());
        }
        return phase;
    }
    let set_names: Vec<String> = to_verify.iter().map(|&i| phase.params[i].name.clone()).collect();
    match tool.query_named(device, &set_names).await {
        Ok(after) => {
            for i in to_verify {
                let p = &mut phase.params[i];
                let unreadable = after.failed.iter().find(|(n, _)| *n == p.name);
                match after.params.iter().find(|a| a.name == p.name) {
                    Some(a) if value_matches(&a.next_boot, &p.desired) => {
                        if let ParamOutcome::Set { to, .. } = &mut p.outcome {
                            *to = a.next_boot.clone();
                        }
                        // The running value changes only when the firmware reloads; unknown counts
                        // as not yet.
                        if a.current.as_deref().is_none_or(|c| !value_matches(c, &p.desired)) {
                            phase.pending.push(p.name.clone());
                        }
                    }
                    Some(a) => {
                        p.outcome = ParamOutcome::Failed(format!(
                            "the tool accepted the set but the next-boot value reads {} afterwards",
                            a.next_boot
                        ));
                    }
                    None => {
                        p.outcome = ParamOutcome::Failed(match unreadable {
                            Some((_, why)) => format!("set but not verified: the verifying query: {why}"),
                            None => "the tool accepted the set but the parameter is absent from the verifying query"
                                .into(),
                        });
                    }
                }
            }
        }
        Err(e) => {
            let why = format!("verifying query failed: {e}");
            for i in to_verify {
                phase.params[i].outcome = ParamOutcome::Failed(format!("set but not verified: {why}"));
            }
            phase.error = Some(why);
        }
    }
    phase
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
