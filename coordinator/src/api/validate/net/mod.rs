//! Validation of a Flavor's `host_network`: the same rules the agent applies
//! before it touches the host (agent/src/net/model.rs), checked when the
//! Flavor is written so that a bad network is refused with the field's path
//! (`flavor.spec.host_network.bridges[1].name: ...`) instead of NACKed later.
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use hostplane_proto::v1::{Bridge, HostNetwork, Route, SriovPf, VfConfig};

use super::{Result, ifname, invalid, pci_address};

pub const MIN_MTU: u32 = 68;
pub const MAX_MTU: u32 = 65535;
pub const MAX_VFS: u32 = 256;
pub const MAX_VLAN: u32 = 4094;
pub const MAX_QOS: u32 = 7;
pub const LINK_STATES: [&str; 4] = ["", "auto", "enable", "disable"];

/// The whole host network of a Flavor; `p` is its path (`flavor.spec.host_network`).
pub fn host_network(p: &str, h: &HostNetwork) -> Result {
    if h.num_vfs > MAX_VFS {
        return Err(invalid(
            format!("{p}.num_vfs"),
            format!("{} is more than {MAX_VFS}", h.num_vfs),
        ));
    }
    mtu(format!("{p}.mtu"), h.mtu)?;
    let mut bridges = HashSet::new();
    // Port (as written) -> the bridge that lists it first.
    let mut ports: HashMap<&str, &str> = HashMap::new();
    for (i, b) in h.bridges.iter().enumerate() {
        bridge(&format!("{p}.bridges[{i}]"), b, &mut bridges, &mut ports)?;
    }
    let mut pfs = HashSet::new();
    for (i, s) in h.sriov.iter().enumerate() {
        let sp = format!("{p}.sriov[{i}]");
        sriov(&sp, s)?;
        if !pfs.insert(s.pf.as_str()) {
            return Err(invalid(
                format!("{sp}.pf"),
                format!("PF {:?} is listed twice", s.pf),
            ));
        }
    }
    for (i, r) in h.routes.iter().enumerate() {
        route(&format!("{p}.routes[{i}]"), r)?;
    }
    Ok(())
}

/// 0 (leave as is) or MIN_MTU..=MAX_MTU.
pub fn mtu(field: String, value: u32) -> Result {
    if value != 0 && !(MIN_MTU..=MAX_MTU).contains(&value) {
        return Err(invalid(
            field,
            format!("{value} is out of range: 0 (leave as is) or {MIN_MTU}..={MAX_MTU}"),
        ));
    }
    Ok(())
}

fn bridge<'a>(
    bp: &str,
    b: &'a Bridge,
    bridges: &mut HashSet<&'a str>,
    ports: &mut HashMap<&'a str, &'a str>,
) -> Result {
    ifname(format!("{bp}.name"), &b.name)?;
    if !bridges.insert(b.name.as_str()) {
        return Err(invalid(
            format!("{bp}.name"),
            format!("bridge {:?} is listed twice", b.name),
        ));
    }
    mtu(format!("{bp}.mtu"), b.mtu)?;
    for (j, port) in b.ports.iter().enumerate() {
        let f = format!("{bp}.ports[{j}]");
        port_ref(f.clone(), port)?;
        if *port == b.name {
            return Err(invalid(f, format!("bridge {:?} cannot be its own port", b.name)));
        }
        if let Some(owner) = ports.insert(port.as_str(), b.name.as_str()) {
            return Err(invalid(
                f,
                format!("port {port:?} is already a port of bridge {owner:?}"),
            ));
        }
    }
    let mut seen = HashSet::new();
    for (j, a) in b.addresses.iter().enumerate() {
        let f = format!("{bp}.addresses[{j}]");
        cidr(a).map_err(|why| invalid(format!("{f} {a:?}"), why))?;
        if !seen.insert(a.as_str()) {
            return Err(invalid(f, format!("address {a:?} is listed twice")));
        }
    }
    Ok(())
}

/// A bridge port: `<ifname>`, `pci:<bdf>` or `vf:<pf>:<index>` (pf: a name or `pci:<bdf>`).
pub fn port_ref(field: String, value: &str) -> Result {
    let syntax = "must be an interface name, pci:<bdf> (e.g. pci:0000:04:00.0) or vf:<pf>:<index> \
                  (e.g. vf:ens1f0np0:0)";
    if let Some(bdf) = value.strip_prefix("pci:") {
        return pci_address(field, bdf);
    }
    if let Some(rest) = value.strip_prefix("vf:") {
        let Some((pf, index)) = rest.rsplit_once(':') else {
            return Err(invalid(format!("{field} {value:?}"), syntax));
        };
        if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) || index.parse::<u32>().is_err() {
            return Err(invalid(
                format!("{field} {value:?}"),
                format!("VF index {index:?} is not a number; {syntax}"),
            ));
        }
        return pf_ref(field, pf);
    }
    if value.contains(':') {
        return Err(invalid(format!("{field} {value:?}"), syntax));
    }
    ifname(field, value)
}

/// A PF: a netdev name or `pci:<bdf>`.
fn pf_ref(field: String, value: &str) -> Result {
    match value.strip_prefix("pci:") {
        Some(bdf) => pci_address(field, bdf),
        None => ifname(field, value),
    }
}

fn sriov(sp: &str, s: &SriovPf) -> Result {
    if s.pf.is_empty() {
        return Err(invalid(
            format!("{sp}.pf"),
            "required (a PF netdev name or pci:<bdf>)",
        ));
    }
    pf_ref(format!("{sp}.pf"), &s.pf)?;
    if s.num_vfs > MAX_VFS {
        return Err(invalid(
            format!("{sp}.num_vfs"),
            format!("{} is more than {MAX_VFS}", s.num_vfs),
        ));
    }
    let mut seen = HashSet::new();
    for (j, vf) in s.vfs.iter().enumerate() {
        let vp = format!("{sp}.vfs[{j}]");
        vf_config(&vp, vf, s.num_vfs)?;
        if !seen.insert(vf.index) {
            return Err(invalid(
                format!("{vp}.index"),
                format!("VF {} is listed twice", vf.index),
            ));
        }
    }
    Ok(())
}

fn vf_config(vp: &str, vf: &VfConfig, num_vfs: u32) -> Result {
    if vf.index >= num_vfs {
        return Err(invalid(
            format!("{vp}.index"),
            format!(
                "VF {} does not exist: num_vfs is {num_vfs} (VFs are numbered from 0)",
                vf.index
            ),
        ));
    }
    if !vf.mac.is_empty() {
        mac(&vf.mac).map_err(|why| invalid(format!("{vp}.mac {:?}", vf.mac), why))?;
    }
    if vf.vlan > MAX_VLAN {
        return Err(invalid(
            format!("{vp}.vlan"),
            format!("{} is out of range: 0 (no VLAN) or 1..={MAX_VLAN}", vf.vlan),
        ));
    }
    if vf.qos > MAX_QOS {
        return Err(invalid(
            format!("{vp}.qos"),
            format!("{} is out of range: 0..={MAX_QOS}", vf.qos),
        ));
    }
    if vf.qos > 0 && vf.vlan == 0 {
        return Err(invalid(
            format!("{vp}.qos"),
            "a QoS priority needs a VLAN (vlan is 0)",
        ));
    }
    if !LINK_STATES.contains(&vf.link_state.as_str()) {
        return Err(invalid(
            format!("{vp}.link_state {:?}", vf.link_state),
            "must be auto, enable, disable or empty (leave as is)",
        ));
    }
    Ok(())
}

fn route(rp: &str, r: &Route) -> Result {
    let f = format!("{rp}.destination");
    let dest: IpAddr = match r.destination.as_str() {
        "" => return Err(invalid(f, "required (a CIDR, default or default6)")),
        "default" => "0.0.0.0".parse().expect("valid"),
        "default6" => "::".parse().expect("valid"),
        d => {
            let (ip, prefix) = cidr(d).map_err(|why| invalid(format!("{f} {d:?}"), why))?;
            if network_of(ip, prefix) != ip {
                return Err(invalid(
                    format!("{f} {d:?}"),
                    format!(
                        "has host bits set; did you mean {}/{prefix}?",
                        network_of(ip, prefix)
                    ),
                ));
            }
            ip
        }
    };
    if !r.gateway.is_empty() {
        let gw: IpAddr = r
            .gateway
            .parse()
            .map_err(|_| invalid(format!("{rp}.gateway {:?}", r.gateway), "is not an IP address"))?;
        if gw.is_ipv4() != dest.is_ipv4() {
            return Err(invalid(
                format!("{rp}.gateway {:?}", r.gateway),
                format!(
                    "is IPv{} but the destination {:?} is IPv{}",
                    ip_version(gw),
                    r.destination,
                    ip_version(dest)
                ),
            ));
        }
    }
    if !r.dev.is_empty() {
        ifname(format!("{rp}.dev"), &r.dev)?;
    }
    if r.gateway.is_empty() && r.dev.is_empty() {
        return Err(invalid(
            format!("{rp}.dev"),
            "a route needs a gateway or a dev (or both)",
        ));
    }
    Ok(())
}

fn ip_version(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 4 } else { 6 }
}

/// `address/prefix`, IPv4 (prefix ≤ 32) or IPv6 (prefix ≤ 128).
pub fn cidr(s: &str) -> std::result::Result<(IpAddr, u8), String> {
    let Some((ip, prefix)) = s.split_once('/') else {
        return Err("must be in CIDR notation, address/prefix (e.g. 10.0.0.1/24 or fd00::1/64)".into());
    };
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| format!("{ip:?} is not an IPv4 or IPv6 address"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix: u8 = match prefix.parse() {
        Ok(p) if prefix.bytes().all(|b| b.is_ascii_digit()) && p <= max => p,
        _ => return Err(format!("prefix length {prefix:?} must be 0..={max}")),
    };
    Ok((ip, prefix))
}

/// `ip` with the bits after `prefix` cleared.
fn network_of(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    }
}

/// `aa:bb:cc:dd:ee:ff`, unicast (a VF cannot take a multicast address).
pub fn mac(s: &str) -> std::result::Result<(), String> {
    let parts: Vec<&str> = s.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if !ok {
        return Err("must be a MAC address like 02:00:00:00:00:01".into());
    }
    let first = u8::from_str_radix(parts[0], 16).map_err(|e| e.to_string())?;
    if first & 1 == 1 {
        return Err(
            "is a multicast address; a VF needs a unicast MAC (lowest bit of the first byte clear)".into(),
        );
    }
    if parts.iter().all(|p| *p == "00") {
        return Err("is all zeros; leave mac empty to keep the VF's address".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
