//! The agent command each phase issues (docs/agent-protocol.md, "Command kinds").
use hostplane_proto::limits;
use hostplane_proto::v1::{
    BfbRef, Command, ConfigFwParameters, DpuClusterConfig, DpuPhase, FlashBfb, InitializeInterface,
    PrepareBfb, RebootHost, RebootMethod, command,
};
use hostplane_proto::v1::{Dpu, DpuSpec, Flavor};
use prost::Message as _;

use super::nicfw;
use crate::store::View;

fn bfb_ref(view: &View, name: &str, deployment: &str) -> Result<BfbRef, String> {
    let b = view.bfbs.get(name).ok_or_else(|| {
        format!("bfb {name:?} does not exist; create it or point deployment {deployment} at another")
    })?;
    let spec = b.spec.clone().unwrap_or_default();
    Ok(BfbRef {
        name: name.into(),
        url: spec.url,
        sha256: spec.sha256,
        size_bytes: spec.size_bytes,
        version: spec.version,
    })
}

fn flavor<'a>(view: &'a View, name: &str, deployment: &str) -> Result<&'a Flavor, String> {
    view.flavors.get(name).ok_or_else(|| {
        format!("flavor {name:?} does not exist; create it or point deployment {deployment} at another")
    })
}

fn gone(spec: &DpuSpec) -> String {
    format!(
        "device {:?} of dpu {} is gone; recreate the device or delete the dpu",
        spec.device, spec.device
    )
}

/// The rshim device of the Dpu's Device.
pub fn rshim_of(view: &View, dpu: &Dpu) -> Option<String> {
    let device = &dpu.spec.as_ref()?.device;
    Some(view.devices.get(device)?.spec.as_ref()?.rshim.clone())
}

/// True when the Dpu's node reboots through its agent.
pub fn agent_reboots(view: &View, node: &str) -> bool {
    view.nodes
        .get(node)
        .and_then(|n| n.spec.as_ref())
        .is_some_and(|s| s.reboot_method == RebootMethod::Agent as i32)
}

/// The command entering `phase` issues, if any. Err is a message for the Dpu's Error.
pub fn command_for(phase: DpuPhase, dpu: &Dpu, view: &View, id: String) -> Result<Option<Command>, String> {
    let spec = dpu.spec.clone().unwrap_or_default();
    let action = match phase {
        DpuPhase::InitializeInterface => {
            let f = flavor(view, &spec.flavor, &spec.deployment)?;
            command::Action::InitializeInterface(InitializeInterface {
                host_network: f.spec.as_ref().and_then(|s| s.host_network.clone()),
            })
        }
        DpuPhase::ConfigFwParameters => {
            let f = flavor(view, &spec.flavor, &spec.deployment)?;
            let device = view.devices.get(&spec.device).ok_or_else(|| gone(&spec))?;
            let target = nicfw::target_of(&spec.device, device, view.nodes.get(&spec.node));
            let r = nicfw::resolve(&f.spec.clone().unwrap_or_default(), &target).map_err(|e| {
                format!(
                    "flavor {} {e}; create a valid flavor and point deployment {} at it",
                    spec.flavor, spec.deployment
                )
            })?;
            command::Action::ConfigFwParameters(ConfigFwParameters {
                nic_firmware: r.parameters.into_iter().collect(),
                pci_address: target.pci_address.to_string(),
                host_power_cycle_required: r.power_cycle,
            })
        }
        DpuPhase::PrepareBfb => command::Action::PrepareBfb(PrepareBfb {
            bfb: Some(bfb_ref(view, &spec.bfb, &spec.deployment)?),
        }),
        DpuPhase::OsInstalling => {
            let f = flavor(view, &spec.flavor, &spec.deployment)?;
            let bf_cfg = f.spec.as_ref().map(|s| s.bf_cfg.clone()).unwrap_or_default();
            let dpu_os = f.spec.as_ref().and_then(|s| s.dpu_os.clone());
            // The API refuses such a flavor; one stored before it did is caught here.
            let rendered = hostplane_proto::dpu_os::rendered_len(&bf_cfg, dpu_os.as_ref());
            if rendered > limits::MAX_BF_CFG_BYTES {
                let what = if dpu_os.is_some() {
                    "bf_cfg and dpu_os"
                } else {
                    "bf_cfg"
                };
                return Err(format!(
                    "the {what} of flavor {} renders to {rendered} bytes, more than the {} the agent \
                     accepts; create a smaller flavor and point deployment {} at it",
                    spec.flavor,
                    limits::MAX_BF_CFG_BYTES,
                    spec.deployment
                ));
            }
            command::Action::FlashBfb(FlashBfb {
                bfb: Some(bfb_ref(view, &spec.bfb, &spec.deployment)?),
                bf_cfg,
                dpu_os,
            })
        }
        DpuPhase::Rebooting if agent_reboots(view, &spec.node) => {
            // The Dpu that issues the node's reboot sets power_cycle for its siblings too
            // (`dpu::phases`): one power cycle serves them all.
            command::Action::RebootHost(RebootHost {
                power_cycle: nicfw::power_cycle_required(dpu),
            })
        }
        DpuPhase::DpuClusterConfig => command::Action::DpuClusterConfig(DpuClusterConfig {}),
        _ => return Ok(None),
    };
    let rshim = rshim_of(view, dpu).ok_or_else(|| gone(&spec))?;
    let cmd = Command {
        id,
        dpu: dpu.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default(),
        rshim,
        action: Some(action),
    };
    let size = cmd.encoded_len();
    if size > limits::MAX_COMMAND_BYTES {
        return Err(format!(
            "the command would be {size} bytes, more than the {} a command in the agent's desired state \
             may be; give deployment {} a flavor with a smaller host_network or nic_firmware",
            limits::MAX_COMMAND_BYTES,
            spec.deployment
        ));
    }
    Ok(Some(cmd))
}

#[cfg(test)]
mod tests {
    use hostplane_proto::v1::{
        Bfb, BfbSpec, Device, DeviceSpec, DpuSpec, FlavorSpec, HostNetwork, ObjectMeta, SriovPf, VfConfig,
    };

    use super::*;

    fn meta(name: &str) -> Option<ObjectMeta> {
        Some(ObjectMeta {
            name: name.into(),
            ..Default::default()
        })
    }

    /// A view with one Dpu on flavor `f1` as given (stored before the API bounded it).
    fn cache_with(spec: FlavorSpec) -> (View, Dpu) {
        let mut c = View::default();
        c.bfbs.insert(
            "b1".into(),
            Bfb {
                metadata: meta("b1"),
                spec: Some(BfbSpec::default()),
            },
        );
        c.flavors.insert(
            "f1".into(),
            Flavor {
                metadata: meta("f1"),
                spec: Some(spec),
            },
        );
        c.devices.insert(
            "d1".into(),
            Device {
                metadata: meta("d1"),
                spec: Some(DeviceSpec {
                    node: "n1".into(),
                    rshim: "rshim0".into(),
                    ..Default::default()
                }),
                status: None,
            },
        );
        let dpu = Dpu {
            metadata: meta("d1"),
            spec: Some(DpuSpec {
                device: "d1".into(),
                node: "n1".into(),
                deployment: "dep1".into(),
                bfb: "b1".into(),
                flavor: "f1".into(),
            }),
            status: None,
        };
        (c, dpu)
    }

    #[test]
    fn a_bf_cfg_over_the_agents_limit_fails_the_dpu_instead_of_reaching_the_agent() {
        let at_limit = "x".repeat(limits::MAX_BF_CFG_BYTES - "BIG=''\n".len());
        let (c, dpu) = cache_with(FlavorSpec {
            bf_cfg: [("BIG".to_string(), at_limit.clone())].into(),
            ..Default::default()
        });
        assert!(command_for(DpuPhase::OsInstalling, &dpu, &c, "id".into()).is_ok_and(|c| c.is_some()));

        let (c, dpu) = cache_with(FlavorSpec {
            bf_cfg: [("BIG".to_string(), at_limit + "x")].into(),
            ..Default::default()
        });
        let e = command_for(DpuPhase::OsInstalling, &dpu, &c, "id".into()).unwrap_err();
        assert!(
            e.starts_with("the bf_cfg of flavor f1 renders to 131073 bytes, more than the 131072")
                && e.contains("point deployment dep1 at it"),
            "{e}"
        );
    }

    #[test]
    fn flash_bfb_carries_dpu_os_and_counts_it_in_the_size() {
        use hostplane_proto::v1::{ConfigFile, DpuOsConfig};
        let os = |raw: String| DpuOsConfig {
            config_files: vec![ConfigFile {
                path: "/etc/x.conf".into(),
                raw,
                ..Default::default()
            }],
            ..Default::default()
        };
        let (c, dpu) = cache_with(FlavorSpec {
            bf_cfg: [("A".to_string(), "1".to_string())].into(),
            dpu_os: Some(os("hello\n".into())),
            ..Default::default()
        });
        let cmd = command_for(DpuPhase::OsInstalling, &dpu, &c, "id".into())
            .unwrap()
            .unwrap();
        let Some(command::Action::FlashBfb(f)) = cmd.action else {
            panic!("{cmd:?}")
        };
        assert_eq!(f.dpu_os, Some(os("hello\n".into())));
        // Small bf_cfg, but the content (base64 adds a third) passes the limit.
        let (c, dpu) = cache_with(FlavorSpec {
            dpu_os: Some(os("x".repeat(limits::MAX_BF_CFG_BYTES * 3 / 4))),
            ..Default::default()
        });
        let e = command_for(DpuPhase::OsInstalling, &dpu, &c, "id".into()).unwrap_err();
        assert!(
            e.starts_with("the bf_cfg and dpu_os of flavor f1 renders to "),
            "{e}"
        );
    }

    #[test]
    fn config_fw_parameters_carries_the_matched_nvconfig_entries() {
        use hostplane_proto::v1::{Inventory, NicFirmwareConfig, Node, NodeStatus, RshimInfo};
        let e = |device: &str, p: &[&str], pc: bool| NicFirmwareConfig {
            device: device.into(),
            parameters: p.iter().map(|s| s.to_string()).collect(),
            host_power_cycle_required: pc,
        };
        let (mut c, dpu) = cache_with(FlavorSpec {
            nvconfig: vec![
                e("*", &["PF_BAR2_ENABLE=0"], false),
                e("BlueField-3", &["PF_TOTAL_SF=20"], true),
                e("d9", &["LINK_TYPE_P1=IB"], true),
            ],
            ..Default::default()
        });
        c.devices
            .get_mut("d1")
            .unwrap()
            .spec
            .as_mut()
            .unwrap()
            .pci_address = "0000:04:00.0".into();
        let cfg = |c: &View| match command_for(DpuPhase::ConfigFwParameters, &dpu, c, "id".into())
            .unwrap()
            .unwrap()
            .action
        {
            Some(command::Action::ConfigFwParameters(x)) => x,
            other => panic!("{other:?}"),
        };
        // The model is unknown until the node reports its inventory: only "*" matches.
        let x = cfg(&c);
        assert_eq!(x.nic_firmware.len(), 1);
        assert_eq!(x.pci_address, "0000:04:00.0");
        assert!(!x.host_power_cycle_required);
        c.nodes.insert(
            "n1".into(),
            Node {
                status: Some(NodeStatus {
                    inventory: Some(Inventory {
                        rshims: vec![RshimInfo {
                            name: "rshim0".into(),
                            dev_info: "BlueField-3(Rev 1)".into(),
                            ..Default::default()
                        }],
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        let x = cfg(&c);
        assert_eq!(x.nic_firmware["PF_TOTAL_SF"], "20");
        assert_eq!(x.nic_firmware.len(), 2, "{:?}", x.nic_firmware);
        assert!(x.host_power_cycle_required);
        // The reboot step follows what the agent reported, not the Flavor: a plain reboot until
        // its ConfigFWParameters result said values wait for a power cycle.
        c.nodes.get_mut("n1").unwrap().spec = Some(hostplane_proto::v1::NodeSpec {
            reboot_method: RebootMethod::Agent as i32,
        });
        let reboot = |dpu: &Dpu| match command_for(DpuPhase::Rebooting, dpu, &c, "id".into())
            .unwrap()
            .unwrap()
            .action
        {
            Some(command::Action::RebootHost(r)) => r.power_cycle,
            other => panic!("{other:?}"),
        };
        assert!(!reboot(&dpu));
        let mut pending = dpu.clone();
        crate::fsm::util::set_condition(
            &mut pending.status.get_or_insert_default().conditions,
            crate::fsm::nicfw::COND_POWER_CYCLE_REQUIRED,
            "True",
            "NicFirmwarePending",
            "pending",
            1,
        );
        assert!(reboot(&pending));
    }

    #[test]
    fn a_command_over_its_bound_fails_the_dpu() {
        // A host network far over the API's bound, as only an old store can hold.
        let vfs = (0..40_000)
            .map(|i| VfConfig {
                index: i,
                mac: "02:00:00:00:00:01".into(),
                ..Default::default()
            })
            .collect();
        let (c, dpu) = cache_with(FlavorSpec {
            host_network: Some(HostNetwork {
                sriov: vec![SriovPf {
                    pf: "ens1f0".into(),
                    num_vfs: 40_000,
                    vfs,
                }],
                ..Default::default()
            }),
            ..Default::default()
        });
        let e = command_for(DpuPhase::InitializeInterface, &dpu, &c, "id".into()).unwrap_err();
        assert!(
            e.contains("more than the 524288 a command in the agent's desired state may be")
                && e.contains("deployment dep1"),
            "{e}"
        );
    }
}
