//! The agent command each phase issues (docs/agent-protocol.md, "Command kinds").
use hostplane_proto::limits;
use hostplane_proto::v1::{
    BfbRef, Command, ConfigFwParameters, DpuClusterConfig, DpuPhase, FlashBfb, InitializeInterface,
    PrepareBfb, RebootHost, RebootMethod, command,
};
use hostplane_proto::v1::{Dpu, Flavor};
use prost::Message as _;

use super::cache::Cache;

fn bfb_ref(cache: &Cache, name: &str, deployment: &str) -> Result<BfbRef, String> {
    let b = cache.bfbs.get(name).ok_or_else(|| {
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

fn flavor<'a>(cache: &'a Cache, name: &str, deployment: &str) -> Result<&'a Flavor, String> {
    cache.flavors.get(name).ok_or_else(|| {
        format!("flavor {name:?} does not exist; create it or point deployment {deployment} at another")
    })
}

/// The rshim device of the Dpu's Device.
pub fn rshim_of(cache: &Cache, dpu: &Dpu) -> Option<String> {
    let device = &dpu.spec.as_ref()?.device;
    Some(cache.devices.get(device)?.spec.as_ref()?.rshim.clone())
}

/// True when the Dpu's node reboots through its agent.
pub fn agent_reboots(cache: &Cache, node: &str) -> bool {
    cache
        .nodes
        .get(node)
        .and_then(|n| n.spec.as_ref())
        .is_some_and(|s| s.reboot_method == RebootMethod::Agent as i32)
}

/// The command entering `phase` issues, if any. Err is a message for the Dpu's Error.
pub fn command_for(phase: DpuPhase, dpu: &Dpu, cache: &Cache, id: String) -> Result<Option<Command>, String> {
    let spec = dpu.spec.clone().unwrap_or_default();
    let action = match phase {
        DpuPhase::InitializeInterface => {
            let f = flavor(cache, &spec.flavor, &spec.deployment)?;
            command::Action::InitializeInterface(InitializeInterface {
                host_network: f.spec.as_ref().and_then(|s| s.host_network.clone()),
            })
        }
        DpuPhase::ConfigFwParameters => {
            let f = flavor(cache, &spec.flavor, &spec.deployment)?;
            command::Action::ConfigFwParameters(ConfigFwParameters {
                nic_firmware: f
                    .spec
                    .as_ref()
                    .map(|s| s.nic_firmware.clone())
                    .unwrap_or_default(),
            })
        }
        DpuPhase::PrepareBfb => command::Action::PrepareBfb(PrepareBfb {
            bfb: Some(bfb_ref(cache, &spec.bfb, &spec.deployment)?),
        }),
        DpuPhase::OsInstalling => {
            let f = flavor(cache, &spec.flavor, &spec.deployment)?;
            let bf_cfg = f.spec.as_ref().map(|s| s.bf_cfg.clone()).unwrap_or_default();
            // The API refuses such a flavor; one stored before it did is caught here.
            let rendered = limits::bf_cfg_rendered_len(&bf_cfg);
            if rendered > limits::MAX_BF_CFG_BYTES {
                return Err(format!(
                    "the bf_cfg of flavor {} renders to {rendered} bytes, more than the {} the agent \
                     accepts; create a smaller flavor and point deployment {} at it",
                    spec.flavor,
                    limits::MAX_BF_CFG_BYTES,
                    spec.deployment
                ));
            }
            command::Action::FlashBfb(FlashBfb {
                bfb: Some(bfb_ref(cache, &spec.bfb, &spec.deployment)?),
                bf_cfg,
            })
        }
        DpuPhase::Rebooting if agent_reboots(cache, &spec.node) => command::Action::RebootHost(RebootHost {}),
        DpuPhase::DpuClusterConfig => command::Action::DpuClusterConfig(DpuClusterConfig {}),
        _ => return Ok(None),
    };
    let rshim = rshim_of(cache, dpu).ok_or_else(|| {
        format!(
            "device {:?} of dpu {} is gone; recreate the device or delete the dpu",
            spec.device, spec.device
        )
    })?;
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
