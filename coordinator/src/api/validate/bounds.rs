//! The size bounds of everything a user writes, checked before any other
//! rule (hostplane_proto::limits has the numbers; docs/api.md lists them).
//! A value over its bound is refused by its length alone and never quoted
//! whole, so every later message about it stays small.
use std::collections::HashMap;

use hostplane_proto::limits::{self as lim, quote};
use hostplane_proto::v1::{
    Bfb, Deployment, Device, Flavor, HostNetwork, ObjectMeta, PowerPolicy, Resource, Topology, resource,
};
use prost::Message;

use super::{Result, invalid};

/// `value` is at most `max` bytes.
pub fn len(field: impl FnOnce() -> String, value: &str, max: usize) -> Result {
    if value.len() > max {
        return Err(invalid(
            field(),
            format!("{} bytes, more than the maximum of {max}", value.len()),
        ));
    }
    Ok(())
}

/// A label map (or selector): at most [`lim::MAX_LABELS`] entries, keys and
/// values within their bounds. Keys are checked in sorted order, so the
/// same request always gets the same answer.
pub fn labels(field: &str, map: &HashMap<String, String>) -> Result {
    if map.len() > lim::MAX_LABELS {
        return Err(invalid(
            field.into(),
            format!(
                "{} entries, more than the maximum of {}",
                map.len(),
                lim::MAX_LABELS
            ),
        ));
    }
    for k in sorted_keys(map) {
        len(|| format!("{field} key {}", quote(k)), k, lim::MAX_LABEL_KEY)?;
        len(|| format!("{field}[{k:?}]"), &map[k], lim::MAX_LABEL_VALUE)?;
    }
    Ok(())
}

fn sorted_keys(map: &HashMap<String, String>) -> Vec<&String> {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    keys
}

fn name(field: impl FnOnce() -> String, value: &str) -> Result {
    len(field, value, lim::MAX_NAME)
}

fn metadata(p: &str, m: Option<&ObjectMeta>) -> Result {
    let Some(m) = m else { return Ok(()) };
    name(|| format!("{p}.metadata.name"), &m.name)?;
    labels(&format!("{p}.metadata.labels"), &m.labels)
}

/// Every string (and map, and list) of a user-written object's metadata and
/// spec. Status is not read from requests, so it is not bounded here (the
/// request size limit bounds it).
pub fn resource(p: &str, r: &Resource) -> Result {
    match &r.kind {
        None | Some(resource::Kind::Dpu(_)) => Ok(()),
        Some(resource::Kind::Node(x)) => metadata(p, x.metadata.as_ref()),
        Some(resource::Kind::Device(x)) => device(p, x),
        Some(resource::Kind::Bfb(x)) => bfb(p, x),
        Some(resource::Kind::Flavor(x)) => flavor(p, x),
        Some(resource::Kind::Deployment(x)) => deployment(p, x),
        Some(resource::Kind::Topology(x)) => topology(p, x),
        Some(resource::Kind::PowerPolicy(x)) => power_policy(p, x),
    }
}

fn device(p: &str, d: &Device) -> Result {
    metadata(p, d.metadata.as_ref())?;
    let Some(s) = &d.spec else { return Ok(()) };
    name(|| format!("{p}.spec.node"), &s.node)?;
    len(|| format!("{p}.spec.serial"), &s.serial, lim::MAX_SERIAL)?;
    len(
        || format!("{p}.spec.pci_address"),
        &s.pci_address,
        lim::PCI_ADDRESS_LEN,
    )?;
    len(|| format!("{p}.spec.rshim"), &s.rshim, lim::MAX_RSHIM)?;
    len(
        || format!("{p}.spec.bmc_address"),
        &s.bmc_address,
        lim::MAX_BMC_ADDRESS,
    )
}

fn bfb(p: &str, b: &Bfb) -> Result {
    metadata(p, b.metadata.as_ref())?;
    let Some(s) = &b.spec else { return Ok(()) };
    len(|| format!("{p}.spec.url"), &s.url, lim::MAX_URL)?;
    len(|| format!("{p}.spec.sha256"), &s.sha256, lim::SHA256_HEX_LEN)?;
    len(|| format!("{p}.spec.version"), &s.version, lim::MAX_VERSION)
}

fn flavor(p: &str, f: &Flavor) -> Result {
    metadata(p, f.metadata.as_ref())?;
    let Some(s) = &f.spec else { return Ok(()) };
    for k in sorted_keys(&s.bf_cfg) {
        len(
            || format!("{p}.spec.bf_cfg key {}", quote(k)),
            k,
            lim::MAX_PARAM_KEY,
        )?;
    }
    let rendered = lim::bf_cfg_rendered_len(&s.bf_cfg);
    if rendered > lim::MAX_BF_CFG_BYTES {
        return Err(invalid(
            format!("{p}.spec.bf_cfg"),
            format!(
                "renders to a bf.cfg of {rendered} bytes (one KEY='value' line per key), more than the \
                 {}-byte maximum the agent accepts",
                lim::MAX_BF_CFG_BYTES
            ),
        ));
    }
    if s.nic_firmware.len() > lim::MAX_NIC_FW_PARAMS {
        return Err(invalid(
            format!("{p}.spec.nic_firmware"),
            format!(
                "{} parameters, more than the maximum of {}",
                s.nic_firmware.len(),
                lim::MAX_NIC_FW_PARAMS
            ),
        ));
    }
    for k in sorted_keys(&s.nic_firmware) {
        len(
            || format!("{p}.spec.nic_firmware key {}", quote(k)),
            k,
            lim::MAX_PARAM_KEY,
        )?;
        len(
            || format!("{p}.spec.nic_firmware[{k:?}]"),
            &s.nic_firmware[k],
            lim::MAX_NIC_FW_VALUE,
        )?;
    }
    super::nvconfig::bounds(p, &s.nvconfig)?;
    super::os::bounds(p, s)?;
    match &s.host_network {
        Some(h) => host_network(&format!("{p}.spec.host_network"), h),
        None => Ok(()),
    }
}

/// Each string first (the message names it), then the whole network.
fn host_network(p: &str, h: &HostNetwork) -> Result {
    let s = |field: String, v: &str| len(|| field, v, lim::MAX_NETWORK_STRING);
    for (i, b) in h.bridges.iter().enumerate() {
        s(format!("{p}.bridges[{i}].name"), &b.name)?;
        for (j, x) in b.ports.iter().enumerate() {
            s(format!("{p}.bridges[{i}].ports[{j}]"), x)?;
        }
        for (j, x) in b.addresses.iter().enumerate() {
            s(format!("{p}.bridges[{i}].addresses[{j}]"), x)?;
        }
    }
    for (i, pf) in h.sriov.iter().enumerate() {
        s(format!("{p}.sriov[{i}].pf"), &pf.pf)?;
        for (j, vf) in pf.vfs.iter().enumerate() {
            s(format!("{p}.sriov[{i}].vfs[{j}].mac"), &vf.mac)?;
            s(format!("{p}.sriov[{i}].vfs[{j}].link_state"), &vf.link_state)?;
        }
    }
    for (i, r) in h.routes.iter().enumerate() {
        s(format!("{p}.routes[{i}].destination"), &r.destination)?;
        s(format!("{p}.routes[{i}].gateway"), &r.gateway)?;
        s(format!("{p}.routes[{i}].dev"), &r.dev)?;
    }
    let size = h.encoded_len();
    if size > lim::MAX_HOST_NETWORK_BYTES {
        return Err(invalid(
            p.into(),
            format!(
                "{size} bytes encoded, more than the maximum of {}",
                lim::MAX_HOST_NETWORK_BYTES
            ),
        ));
    }
    Ok(())
}

fn deployment(p: &str, d: &Deployment) -> Result {
    metadata(p, d.metadata.as_ref())?;
    let Some(s) = &d.spec else { return Ok(()) };
    labels(&format!("{p}.spec.device_selector"), &s.device_selector)?;
    name(|| format!("{p}.spec.bfb"), &s.bfb)?;
    name(|| format!("{p}.spec.flavor"), &s.flavor)?;
    name(|| format!("{p}.spec.power_policy"), &s.power_policy)
}

fn topology(p: &str, t: &Topology) -> Result {
    metadata(p, t.metadata.as_ref())?;
    let Some(s) = &t.spec else { return Ok(()) };
    let max = hostplane_proto::power::MAX_ELEMENTS;
    if s.elements.len() > max {
        return Err(invalid(
            format!("{p}.spec.elements"),
            format!("{} elements, more than the maximum of {max}", s.elements.len()),
        ));
    }
    for (i, e) in s.elements.iter().enumerate() {
        name(|| format!("{p}.spec.elements[{i}].name"), &e.name)?;
        name(|| format!("{p}.spec.elements[{i}].parent"), &e.parent)?;
    }
    Ok(())
}

fn power_policy(p: &str, x: &PowerPolicy) -> Result {
    metadata(p, x.metadata.as_ref())?;
    let Some(s) = &x.spec else { return Ok(()) };
    for (field, names) in [("nodes", &s.nodes), ("deployments", &s.deployments)] {
        for (i, n) in names.iter().enumerate() {
            name(|| format!("{p}.spec.{field}[{i}]"), n)?;
        }
    }
    for (i, b) in s.bundles.iter().enumerate() {
        name(|| format!("{p}.spec.bundles[{i}].name"), &b.name)?;
    }
    name(|| format!("{p}.spec.active_bundle"), &s.active_bundle)
}
