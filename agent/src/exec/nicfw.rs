//! `config_fw_parameters`: the Flavor's NIC firmware parameters applied to
//! the DPU's PF0 through [`crate::nicfw::apply_with`] (mstconfig, devlink
//! where the kernel exposes the parameter).
use std::collections::HashMap;
use std::sync::Arc;

use hostplane_proto::v1::{CommandOutcome, CommandResult, ConfigFwParameters, RshimInfo};
use tokio_util::sync::CancellationToken;

use super::{AGENT_VERSION, result};
use crate::nicfw::{ApplyOptions, DevlinkMode, DevlinkParams, Mstconfig, NicFwConfig, Overall, apply_with};

/// How the executor applies NIC firmware parameters.
#[derive(Clone)]
pub struct NicFirmware {
    pub mstconfig: Mstconfig,
    /// None: everything through mstconfig (`nic_firmware.devlink: off`).
    pub devlink: Option<Arc<dyn DevlinkParams>>,
}

impl NicFirmware {
    /// From the agent config's `nic_firmware` section; None when disabled.
    pub fn from_config(cfg: &NicFwConfig) -> Option<NicFirmware> {
        if !cfg.enabled {
            return None;
        }
        let devlink: Option<Arc<dyn DevlinkParams>> = match cfg.devlink {
            DevlinkMode::Auto => Some(Arc::new(
                crate::nicfw::Devlink::default().with_timeout(cfg.timeout),
            )),
            DevlinkMode::Off => None,
        };
        Some(NicFirmware {
            mstconfig: Mstconfig::new(&cfg.mstconfig_path).with_timeout(cfg.timeout),
            devlink,
        })
    }
}

/// SKIPPED: the command carried nothing, or this agent does not apply them.
pub(super) fn skipped(params: &HashMap<String, String>) -> CommandResult {
    if params.is_empty() {
        return result(
            CommandOutcome::Skipped,
            "no NIC firmware parameters; nothing to do",
        );
    }
    result(
        CommandOutcome::Skipped,
        format!(
            "NIC firmware configuration is disabled on this agent (nic_firmware.enabled: false; \
             hostplane-agent {AGENT_VERSION}); not applied: {}",
            sorted_names(params).join(", ")
        ),
    )
}

fn sorted_names(params: &HashMap<String, String>) -> Vec<&str> {
    let mut names: Vec<&str> = params.keys().map(String::as_str).collect();
    names.sort_unstable();
    names
}

/// Apply `fw` to the DPU of `rshim` (its PF0: `fw.pci_address`, else the
/// rshim's function `.0`, looked up in `rshims`).
pub(super) async fn config_fw(
    nic: &NicFirmware,
    fw: &ConfigFwParameters,
    dpu: &str,
    rshim: &str,
    rshims: impl std::future::Future<Output = Vec<RshimInfo>>,
    cancel: &CancellationToken,
) -> CommandResult {
    use CommandOutcome::{Failed, Succeeded};
    if fw.nic_firmware.is_empty() {
        return skipped(&fw.nic_firmware);
    }
    let mut desired: Vec<(String, String)> = fw
        .nic_firmware
        .iter()
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    desired.sort();
    for (name, value) in &desired {
        if let Err(why) = check_parameter(name, value) {
            return result(
                Failed,
                format!("NIC firmware parameters for dpu {dpu} not applied, none of them: {why}"),
            );
        }
    }
    let pci = if fw.pci_address.is_empty() {
        match pf0_of_rshim(rshim, &rshims.await) {
            Ok(p) => p,
            Err(why) => {
                return result(
                    Failed,
                    format!("NIC firmware parameters for dpu {dpu} not applied: {why}"),
                );
            }
        }
    } else {
        match normalize_pci(&fw.pci_address) {
            Some(p) => p,
            None => {
                return result(
                    Failed,
                    format!(
                        "NIC firmware parameters for dpu {dpu} not applied: pci_address {:?} is not a PCI \
                         address (DDDD:BB:DD.F, e.g. 0000:03:00.0)",
                        fw.pci_address
                    ),
                );
            }
        }
    };
    let handle = format!("pci/{pci}");
    let opts = ApplyOptions {
        devlink: nic.devlink.as_deref().map(|d| (d, handle.as_str())),
        cancel: Some(cancel),
        power_cycle_required: fw.host_power_cycle_required,
    };
    let report = apply_with(&nic.mstconfig, &pci, &desired, opts).await;
    let mut r = outcome_of(&report, dpu);
    // Only a success can leave values waiting for a power cycle.
    r.power_cycle_required = r.outcome == Succeeded as i32 && report.needs_power_cycle();
    r
}

/// The command's result for `report` (power_cycle_required left false).
fn outcome_of(report: &crate::nicfw::ApplyReport, dpu: &str) -> CommandResult {
    use CommandOutcome::{Cancelled, Failed, Succeeded};
    match report.overall() {
        Overall::Unchanged => result(
            Succeeded,
            format!("NIC firmware of dpu {dpu} already as asked, nothing changed: {report}"),
        ),
        Overall::RebootRequired => result(
            Succeeded,
            format!("NIC firmware parameters of dpu {dpu} set and verified: {report}"),
        ),
        Overall::Failed => result(
            Failed,
            format!("NIC firmware parameters of dpu {dpu} not all applied: {report}"),
        ),
        Overall::Cancelled => result(
            Cancelled,
            format!("NIC firmware configuration of dpu {dpu} cancelled: {report}"),
        ),
    }
}

/// A parameter as mstconfig takes it: `NAME` or `NAME[index]` (letters,
/// digits, `_`), a value without spaces. Checked for every parameter before
/// any tool runs, so a bad one changes nothing.
fn check_parameter(name: &str, value: &str) -> Result<(), String> {
    let (base, index) = match name.split_once('[') {
        Some((b, rest)) => (b, Some(rest)),
        None => (name, None),
    };
    let base_ok = base
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && base.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    let index_ok = index.is_none_or(|i| {
        i.strip_suffix(']')
            .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
    });
    if !base_ok || !index_ok {
        return Err(format!(
            "parameter name {name:?} is not a NV config name (letters, digits and _, optionally [index])"
        ));
    }
    if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "parameter {name}: value {value:?} must be non-empty, without spaces"
        ));
    }
    Ok(())
}

pub use hostplane_proto::pci::normalize as normalize_pci;

/// PF0 of the DPU behind `rshim`: the rshim's PCI function (`.2` on a
/// BlueField) replaced by `.0`, same bus and device.
pub fn pf0_of_rshim(rshim: &str, rshims: &[RshimInfo]) -> Result<String, String> {
    if rshim.is_empty() {
        return Err(
            "the command has neither a pci_address nor an rshim device to derive it from".to_string(),
        );
    }
    let Some(info) = rshims.iter().find(|r| r.name == rshim) else {
        let seen: Vec<&str> = rshims.iter().map(|r| r.name.as_str()).collect();
        return Err(format!(
            "no pci_address given and rshim device {rshim} is not on this host (it has: {}), so the DPU's \
             PCI address is unknown",
            if seen.is_empty() {
                "none".to_string()
            } else {
                seen.join(", ")
            }
        ));
    };
    if info.pci_address.is_empty() {
        let why = if info.error.is_empty() {
            "a USB rshim has none".to_string()
        } else {
            info.error.clone()
        };
        return Err(format!(
            "no pci_address given and rshim device {rshim} reports no PCI address ({why}); set the Device's \
             PCI address"
        ));
    }
    hostplane_proto::pci::pf0(&info.pci_address).ok_or_else(|| {
        format!(
            "no pci_address given and rshim device {rshim}'s PCI address {:?} is not DDDD:BB:DD.F",
            info.pci_address
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_addresses_are_normalized_or_refused() {
        assert_eq!(normalize_pci("0000:04:00.2").as_deref(), Some("0000:04:00.2"));
        assert_eq!(normalize_pci("04:00.0").as_deref(), Some("0000:04:00.0"));
        assert_eq!(normalize_pci("0000:A3:00.1").as_deref(), Some("0000:a3:00.1"));
        for bad in [
            "",
            "-d",
            "04:00",
            "0000:04:00.8",
            "0000:4:00.0",
            "x0000:04:00.0",
            "0000:04:00.0 -y",
        ] {
            assert_eq!(normalize_pci(bad), None, "{bad}");
        }
    }

    #[test]
    fn pf0_comes_from_the_rshims_function() {
        let rshims = vec![
            RshimInfo {
                name: "rshim0".into(),
                pci_address: "0000:04:00.2".into(),
                ..Default::default()
            },
            RshimInfo {
                name: "rshim1".into(),
                usb_path: "1-1.4".into(),
                ..Default::default()
            },
        ];
        assert_eq!(pf0_of_rshim("rshim0", &rshims).unwrap(), "0000:04:00.0");
        let e = pf0_of_rshim("rshim1", &rshims).unwrap_err();
        assert!(e.contains("rshim1") && e.contains("no PCI address"), "{e}");
        let e = pf0_of_rshim("rshim7", &rshims).unwrap_err();
        assert!(e.contains("rshim7") && e.contains("rshim0, rshim1"), "{e}");
        assert!(pf0_of_rshim("", &rshims).is_err());
    }

    #[test]
    fn parameter_names_and_values_are_checked() {
        assert!(check_parameter("PF_BAR2_ENABLE", "0").is_ok());
        assert!(check_parameter("MODULE_SPLIT_M0[1]", "1").is_ok());
        for (n, v) in [
            ("-d", "x"),
            ("A B", "1"),
            ("X[", "1"),
            ("X[]", "1"),
            ("X[a]", "1"),
            ("1X", "1"),
            ("X", ""),
            ("X", "1 2"),
            ("X=Y", "1"),
        ] {
            assert!(check_parameter(n, v).is_err(), "{n}={v}");
        }
    }
}
