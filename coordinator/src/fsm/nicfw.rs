//! Which of a Flavor's NIC firmware entries (`spec.nvconfig`, DPF's DPUFlavor
//! spec.nvconfig) apply to one Dpu's Device, and what they add up to: the
//! parameters of ConfigFWParameters and whether they need a host power cycle.
//! The matching is pure; [`target`] gathers its inputs from the view. Whether
//! the node's reboot becomes a power cycle is what the agent reported when it
//! applied them ([`COND_POWER_CYCLE_REQUIRED`]), not the Flavor.
use std::collections::BTreeMap;

use hostplane_proto::v1::{Device, Dpu, DpuPhase, FlavorSpec, Node};

use super::commands::agent_reboots;
use super::util::condition;
use crate::api::validate::nvconfig::{is_wildcard, parse_parameter};
use crate::store::View;

/// Set on a Dpu when its ConfigFWParameters result is recorded: True (reason
/// `NicFirmwarePending`) when the agent reported values that take effect only
/// after a host power cycle (`CommandResult.power_cycle_required`), False
/// (`NotNeeded`) when it succeeded without or skipped. A Dpu without it (it
/// has not passed ConfigFWParameters) needs no power cycle.
pub const COND_POWER_CYCLE_REQUIRED: &str = "PowerCycleRequired";

/// True on a Dpu in Rebooting whose node's agent could not power-cycle the
/// host (it answered the power-cycle RebootHost SKIPPED, e.g. no BMC): the
/// node waits for an external power cycle and MarkRebooted with power_cycled.
pub const COND_EXTERNAL_POWER_CYCLE: &str = "ExternalPowerCycle";

/// The Dpu waits for an external power cycle after its agent could not do it.
pub fn external_power_cycle(d: &Dpu) -> bool {
    d.status.as_ref().is_some_and(|s| {
        s.phase == DpuPhase::Rebooting as i32
            && condition(&s.conditions, COND_EXTERNAL_POWER_CYCLE).is_some_and(|c| c.status == "True")
    })
}

/// The Dpu, in Rebooting, waits for the upstream system (MarkRebooted): its node
/// reboots externally, or its agent could not power-cycle the host.
pub fn waits_for_mark_rebooted(view: &View, d: &Dpu) -> bool {
    let node = d.spec.as_ref().map(|s| s.node.as_str()).unwrap_or("");
    d.status
        .as_ref()
        .is_some_and(|s| s.phase == DpuPhase::Rebooting as i32)
        && (!agent_reboots(view, node) || external_power_cycle(d))
}

/// The reboot this Dpu waits for must be a power cycle.
pub fn needs_power_cycle_now(d: &Dpu) -> bool {
    external_power_cycle(d) || power_cycle_required(d)
}

/// What a device selector is compared with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Target<'a> {
    /// The Device's name.
    pub name: &'a str,
    /// `spec.serial`.
    pub serial: &'a str,
    /// `spec.pci_address`.
    pub pci_address: &'a str,
    /// The model the node's agent reports for the Device's rshim ("" when not reported).
    pub model: &'a str,
}

/// The model in an rshim's DEV_INFO: the text before the first "(", trimmed
/// (`"BlueField-3(Rev 1)"` -> `"BlueField-3"`).
pub fn model_of(dev_info: &str) -> &str {
    dev_info.split('(').next().unwrap_or("").trim()
}

/// The selector matches the target: "*" or "" every device; otherwise the
/// Device's name, serial, PCI address or model, compared whole.
pub fn selects(selector: &str, t: &Target<'_>) -> bool {
    is_wildcard(selector)
        || [t.name, t.serial, t.pci_address, t.model]
            .iter()
            .any(|x| !x.is_empty() && *x == selector)
}

/// The NIC firmware configuration of one DPU.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    /// NAME -> VALUE, merged over the matched entries (two that disagree are refused by
    /// [`resolve`]).
    pub parameters: BTreeMap<String, String>,
    /// A matched entry needs a host power cycle.
    pub power_cycle: bool,
}

/// The entries of `spec` that match `t`, merged. The deprecated `nic_firmware`
/// map counts as one "*" entry without a power cycle, before the others. Err
/// names two matched entries that give one NAME different values, or a
/// parameter that is not `NAME=VALUE` (only a Flavor stored without the
/// API's checks can hold one).
pub fn resolve(spec: &FlavorSpec, t: &Target<'_>) -> Result<Resolved, String> {
    let mut out = Resolved {
        parameters: spec
            .nic_firmware
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        power_cycle: false,
    };
    // Which matched entry gave each name, to name both when two disagree: the API refuses
    // contradictions only between selectors it can see overlap ("*", equal ones); a Device's
    // name, serial, PCI address and model can all select it, so they are caught here.
    let mut given: BTreeMap<String, usize> = BTreeMap::new();
    for (i, e) in spec.nvconfig.iter().enumerate() {
        if !selects(&e.device, t) {
            continue;
        }
        out.power_cycle |= e.host_power_cycle_required;
        for (j, p) in e.parameters.iter().enumerate() {
            let (name, value) =
                parse_parameter(p).map_err(|why| format!("nvconfig[{i}].parameters[{j}]: {why}"))?;
            if let (Some(&k), Some(before)) = (given.get(&name), out.parameters.get(&name))
                && !before.eq_ignore_ascii_case(value)
            {
                let sel = |d: &str| {
                    if is_wildcard(d) {
                        "\"*\"".to_string()
                    } else {
                        format!("{d:?}")
                    }
                };
                return Err(format!(
                    "nvconfig[{k}] (device {}) and nvconfig[{i}] (device {}) both select device {} and set \
                     {name} to {before} and {value}; make the selectors select different devices or the \
                     values equal",
                    sel(&spec.nvconfig[k].device),
                    sel(&e.device),
                    t.name
                ));
            }
            given.insert(name.clone(), i);
            out.parameters.insert(name, value.to_string());
        }
    }
    Ok(out)
}

/// The target of a Device on its node (the node's reported inventory gives the model).
pub fn target_of<'a>(device_name: &'a str, device: &'a Device, node: Option<&'a Node>) -> Target<'a> {
    let spec = device.spec.as_ref();
    let rshim = spec.map(|s| s.rshim.as_str()).unwrap_or("");
    let model = node
        .and_then(|n| n.status.as_ref())
        .and_then(|s| s.inventory.as_ref())
        .and_then(|inv| inv.rshims.iter().find(|r| !rshim.is_empty() && r.name == rshim))
        .map(|r| model_of(&r.dev_info))
        .unwrap_or("");
    Target {
        name: device_name,
        serial: spec.map(|s| s.serial.as_str()).unwrap_or(""),
        pci_address: spec.map(|s| s.pci_address.as_str()).unwrap_or(""),
        model,
    }
}

/// The agent reported, in this Dpu's last ConfigFWParameters result, NIC
/// firmware values that take effect only after a host power cycle
/// ([`COND_POWER_CYCLE_REQUIRED`] True). Read from the Dpu alone: neither the
/// Flavor nor the node's live inventory changes it afterwards.
pub fn power_cycle_required(dpu: &Dpu) -> bool {
    dpu.status.as_ref().is_some_and(|s| {
        condition(&s.conditions, COND_POWER_CYCLE_REQUIRED).is_some_and(|c| c.status == "True")
    })
}

#[cfg(test)]
mod tests {
    use hostplane_proto::v1::{DeviceSpec, Inventory, NicFirmwareConfig, NodeStatus, RshimInfo};
    use proptest::prelude::*;

    use super::*;

    fn entry(device: &str, params: &[&str], power_cycle: bool) -> NicFirmwareConfig {
        NicFirmwareConfig {
            device: device.into(),
            parameters: params.iter().map(|s| s.to_string()).collect(),
            host_power_cycle_required: power_cycle,
        }
    }

    const T: Target<'static> = Target {
        name: "d1",
        serial: "MT2233X0001",
        pci_address: "0000:04:00.0",
        model: "BlueField-3",
    };

    #[test]
    fn the_model_is_dev_info_before_the_parenthesis() {
        assert_eq!(model_of("BlueField-3(Rev 1)"), "BlueField-3");
        assert_eq!(model_of(" BlueField-2 (Rev 0)"), "BlueField-2");
        assert_eq!(model_of("BlueField-3"), "BlueField-3");
        assert_eq!(model_of(""), "");
    }

    #[test]
    fn selectors_match_the_name_serial_pci_address_or_model() {
        for s in ["*", "", "d1", "MT2233X0001", "0000:04:00.0", "BlueField-3"] {
            assert!(selects(s, &T), "{s:?}");
        }
        for s in ["d2", "BlueField", "bluefield-3", "0000:04:00.1", "MT2233X000"] {
            assert!(!selects(s, &T), "{s:?}");
        }
        // An unknown model matches no selector by accident.
        let no_model = Target { model: "", ..T };
        assert!(!selects("BlueField-3", &no_model));
    }

    #[test]
    fn matched_entries_merge_and_decide_the_power_cycle() {
        let spec = FlavorSpec {
            nvconfig: vec![
                entry("*", &["PF_BAR2_ENABLE=0", "PER_PF_NUM_SF=1"], false),
                entry("BlueField-3", &["PF_TOTAL_SF=20"], true),
                entry("d2", &["LINK_TYPE_P1=IB"], true),
                entry("0000:04:00.0", &["ARR[02]=5"], false),
            ],
            ..Default::default()
        };
        let r = resolve(&spec, &T).unwrap();
        let want: BTreeMap<String, String> = [
            ("ARR[2]", "5"),
            ("PER_PF_NUM_SF", "1"),
            ("PF_BAR2_ENABLE", "0"),
            ("PF_TOTAL_SF", "20"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(r.parameters, want);
        assert!(r.power_cycle);
        // A BlueField-2 named d3: only the "*" entry.
        let other = Target {
            name: "d3",
            serial: "S3",
            pci_address: "",
            model: "BlueField-2",
        };
        let r = resolve(&spec, &other).unwrap();
        assert_eq!(r.parameters.len(), 2);
        assert!(!r.power_cycle);
    }

    #[test]
    fn the_deprecated_map_is_one_wildcard_entry_without_a_power_cycle() {
        let spec = FlavorSpec {
            nic_firmware: [("NUM_OF_VFS".to_string(), "8".to_string())].into(),
            ..Default::default()
        };
        let r = resolve(&spec, &T).unwrap();
        assert_eq!(r.parameters["NUM_OF_VFS"], "8");
        assert!(!r.power_cycle);
    }

    #[test]
    fn a_malformed_stored_parameter_is_named() {
        let spec = FlavorSpec {
            nvconfig: vec![entry("*", &["A=1"], false), entry("d1", &["B"], false)],
            ..Default::default()
        };
        let e = resolve(&spec, &T).unwrap_err();
        assert!(
            e.starts_with("nvconfig[1].parameters[0]: \"B\" is not NAME=VALUE"),
            "{e}"
        );
    }

    #[test]
    fn the_target_reads_the_model_from_the_nodes_inventory() {
        let device = Device {
            spec: Some(DeviceSpec {
                node: "n1".into(),
                serial: "S1".into(),
                pci_address: "0000:04:00.0".into(),
                rshim: "rshim1".into(),
                bmc_address: String::new(),
            }),
            ..Default::default()
        };
        let rshim = |name: &str, info: &str| RshimInfo {
            name: name.into(),
            dev_info: info.into(),
            ..Default::default()
        };
        let node = Node {
            status: Some(NodeStatus {
                inventory: Some(Inventory {
                    rshims: vec![
                        rshim("rshim0", "BlueField-2(Rev 1)"),
                        rshim("rshim1", "BlueField-3(Rev 1)"),
                    ],
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let t = target_of("d1", &device, Some(&node));
        assert_eq!(
            t,
            Target {
                name: "d1",
                serial: "S1",
                pci_address: "0000:04:00.0",
                model: "BlueField-3"
            }
        );
        assert_eq!(target_of("d1", &device, None).model, "");
    }

    fn selector() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "*",
            "",
            "d1",
            "d2",
            "MT2233X0001",
            "0000:04:00.0",
            "BlueField-3",
            "BlueField-2",
        ])
        .prop_map(str::to_string)
    }

    #[test]
    fn matched_entries_that_disagree_are_refused_naming_both() {
        let spec = FlavorSpec {
            nvconfig: vec![
                entry("d1", &["PF_TOTAL_SF=20"], false),
                entry("other", &["PF_TOTAL_SF=8"], false),
                entry("BlueField-3", &["PF_TOTAL_SF=40"], true),
            ],
            ..Default::default()
        };
        let e = resolve(&spec, &T).unwrap_err();
        assert_eq!(
            e,
            "nvconfig[0] (device \"d1\") and nvconfig[2] (device \"BlueField-3\") both select device d1 and set \
             PF_TOTAL_SF to 20 and 40; make the selectors select different devices or the values equal"
        );
        // The same value twice, or in another case, is no contradiction.
        let same = FlavorSpec {
            nvconfig: vec![
                entry("d1", &["SRIOV_EN=true"], false),
                entry("*", &["SRIOV_EN=True"], false),
            ],
            ..Default::default()
        };
        assert_eq!(resolve(&same, &T).unwrap().parameters["SRIOV_EN"], "True");
    }

    proptest! {
        /// The merged parameters are exactly those of the matched entries (later ones winning),
        /// the power cycle is needed exactly when a matched entry says so, and entries for other
        /// devices change nothing.
        #[test]
        fn resolution_is_the_union_of_the_matched_entries(
            entries in prop::collection::vec(
                (selector(), prop::collection::btree_map("[A-Z][A-Z_]{0,4}", "[0-9]{1,2}", 0..4), any::<bool>()),
                0..6,
            ),
        ) {
            let spec = FlavorSpec {
                nvconfig: entries.iter().map(|(d, m, pc)| NicFirmwareConfig {
                    device: d.clone(),
                    parameters: m.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                    host_power_cycle_required: *pc,
                }).collect(),
                ..Default::default()
            };
            let r = resolve(&spec, &T);
            let mut want = BTreeMap::new();
            let mut pc = false;
            let mut clash = None;
            for (d, m, p) in &entries {
                let hit = matches!(d.as_str(), "*" | "" | "d1" | "MT2233X0001" | "0000:04:00.0" | "BlueField-3");
                if hit {
                    for (k, v) in m {
                        if want.get(k).is_some_and(|w: &String| w != v) && clash.is_none() {
                            clash = Some(k.clone());
                        }
                        want.insert(k.clone(), v.clone());
                    }
                    pc |= *p;
                }
            }
            match clash {
                // Two matched entries disagree: refused, naming the parameter and the device.
                Some(name) => {
                    let e = r.unwrap_err();
                    prop_assert!(e.contains(&format!(" {name} to ")) && e.contains("device d1"), "{}", e);
                }
                None => {
                    let r = r.unwrap();
                    prop_assert_eq!(&r.parameters, &want);
                    prop_assert_eq!(r.power_cycle, pc);
                }
            }
        }
    }
}
