//! The desired host network, built from the Dpus' `HostNetwork`s and checked
//! before anything is touched: a desired state that fails here changes nothing.
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use hostplane_proto::v1::{DpuNetwork, HostNetwork};
use ipnetwork::IpNetwork;
use rtnetlink::packet_route::route::RouteScope;

use super::NetError;

/// Linux's IFNAMSIZ - 1.
pub const MAX_IFNAME: usize = 15;
pub const MIN_MTU: u32 = 68;
pub const MAX_MTU: u32 = 65535;

/// A port reference as written in a bridge's `ports`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortRef {
    /// An interface by name.
    Name(String),
    /// The netdev of a PCI function.
    Pci(String),
    /// VF `index` of PF `pf` (a name or `pci:<bdf>`).
    Vf { pf: String, index: u32 },
}

impl PortRef {
    pub fn parse(s: &str) -> Result<PortRef, String> {
        if let Some(bdf) = s.strip_prefix("pci:") {
            check_bdf(bdf)?;
            return Ok(PortRef::Pci(bdf.to_string()));
        }
        if let Some(rest) = s.strip_prefix("vf:") {
            let (pf, index) = rest.rsplit_once(':').ok_or("must be vf:<pf>:<index>")?;
            let index = index
                .parse()
                .map_err(|_| format!("VF index {index:?} is not a number"))?;
            if let Some(bdf) = pf.strip_prefix("pci:") {
                check_bdf(bdf)?;
            } else {
                check_ifname(pf)?;
            }
            return Ok(PortRef::Vf {
                pf: pf.to_string(),
                index,
            });
        }
        check_ifname(s)?;
        Ok(PortRef::Name(s.to_string()))
    }
}

impl std::fmt::Display for PortRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortRef::Name(n) => f.write_str(n),
            PortRef::Pci(b) => write!(f, "pci:{b}"),
            PortRef::Vf { pf, index } => write!(f, "vf:{pf}:{index}"),
        }
    }
}

/// One bridge the agent owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeSpec {
    pub dpu: String,
    /// Where it came from, for errors: `bridges[<i>]`.
    pub field: String,
    pub name: String,
    /// 0 = leave as is.
    pub mtu: u32,
    pub ports: Vec<PortRef>,
    pub addresses: BTreeSet<IpNetwork>,
}

/// The metric the kernel gives an IPv6 route added without one
/// (`IP6_RT_PRIO_USER`); an IPv4 route without one has metric 0.
pub const IPV6_DEFAULT_METRIC: u32 = 1024;

/// A route the agent owns, with the kernel's defaults filled in: what the
/// kernel will report for it once added (table main, protocol
/// [`RTPROT_HOSTPLANE`](super::netlink::RTPROT_HOSTPLANE)).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RouteSpec {
    pub dpu: String,
    /// Where it came from, for errors: `routes[<i>]`.
    pub field: String,
    pub destination: IpNetwork,
    pub gateway: Option<IpAddr>,
    pub dev: Option<String>,
    /// As the kernel stores it: an IPv6 route written without a metric has
    /// [`IPV6_DEFAULT_METRIC`].
    pub metric: u32,
}

impl RouteSpec {
    /// The kernel's scope for it: `link` for an IPv4 route with no gateway
    /// (as `ip route add … dev X` makes it), `universe` otherwise (IPv6
    /// routes always report universe).
    pub fn scope(&self) -> RouteScope {
        if self.destination.is_ipv4() && self.gateway.is_none() {
            RouteScope::Link
        } else {
            RouteScope::Universe
        }
    }

    /// What makes a route unique in a kernel table: the kernel refuses a
    /// second route with the same destination and metric, and replaces in
    /// place only the one with the same destination and metric.
    pub fn key(&self) -> (IpNetwork, u32) {
        (self.destination, self.metric)
    }
}

/// SR-IOV on one PF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SriovSpec {
    pub dpu: String,
    /// Where it came from, for errors (`num_vfs` or `sriov[<i>]`).
    pub field: String,
    /// A netdev name or `pci:<bdf>`.
    pub pf: String,
    pub num_vfs: u32,
    /// VF attributes to set (empty: leave the VFs as they are).
    pub vfs: Vec<hostplane_proto::v1::VfConfig>,
}

/// The whole desired host network, every Dpu's part merged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub bridges: BTreeMap<String, BridgeSpec>,
    pub routes: Vec<RouteSpec>,
    pub sriov: Vec<SriovSpec>,
}

fn check_ifname(n: &str) -> Result<(), String> {
    if n.is_empty() {
        return Err("interface name is empty".into());
    }
    if n.len() > MAX_IFNAME {
        return Err(format!("interface name {n:?} is longer than {MAX_IFNAME} bytes"));
    }
    if n == "." || n == ".." || n.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
        return Err(format!("interface name {n:?} is not valid"));
    }
    Ok(())
}

fn check_bdf(b: &str) -> Result<(), String> {
    let ok = b.len() == 12
        && b.chars().enumerate().all(|(i, c)| match i {
            4 | 7 => c == ':',
            10 => c == '.',
            _ => c.is_ascii_hexdigit(),
        });
    if ok {
        Ok(())
    } else {
        Err(format!("{b:?} is not a PCI address like 0000:04:00.0"))
    }
}

fn check_mtu(mtu: u32) -> Result<(), String> {
    if mtu != 0 && !(MIN_MTU..=MAX_MTU).contains(&mtu) {
        return Err(format!("MTU {mtu} is outside {MIN_MTU}..={MAX_MTU}"));
    }
    Ok(())
}

fn parse_destination(s: &str) -> Result<IpNetwork, String> {
    match s {
        "default" => Ok("0.0.0.0/0".parse().expect("valid")),
        "default6" => Ok("::/0".parse().expect("valid")),
        _ => parse_cidr(s),
    }
}

/// `address/prefix`, IPv4 or IPv6; a bare address is refused (it would silently be a /32 or /128).
fn parse_cidr(s: &str) -> Result<IpNetwork, String> {
    if !s.contains('/') {
        return Err(format!("{s:?} is not in CIDR notation (address/prefix)"));
    }
    s.parse().map_err(|e| format!("{s:?} is not a CIDR: {e}"))
}

/// Build and check the desired state. Errors name the Dpu and the field.
pub fn build(nets: &[DpuNetwork]) -> Result<Desired, NetError> {
    let mut d = Desired::default();
    let mut port_owner: BTreeMap<PortRef, String> = BTreeMap::new();
    for n in nets {
        let dpu = n.dpu.as_str();
        let bad = |field: String, reason: String| NetError::Invalid {
            dpu: dpu.to_string(),
            field,
            reason,
        };
        let net: HostNetwork = n.network.clone().unwrap_or_default();
        check_mtu(net.mtu).map_err(|r| bad("mtu".into(), r))?;
        if net.num_vfs > 0 {
            if n.pf_pci_address.is_empty() {
                return Err(bad(
                    "num_vfs".into(),
                    "set, but the Device has no PCI address for its PF".into(),
                ));
            }
            check_bdf(&n.pf_pci_address).map_err(|r| bad("pf_pci_address".into(), r))?;
            d.sriov.push(SriovSpec {
                dpu: dpu.into(),
                field: "num_vfs".into(),
                pf: format!("pci:{}", n.pf_pci_address),
                num_vfs: net.num_vfs,
                vfs: Vec::new(),
            });
        }
        for (i, s) in net.sriov.iter().enumerate() {
            let f = |x: &str| format!("sriov[{i}].{x}");
            match s.pf.strip_prefix("pci:") {
                Some(b) => check_bdf(b),
                None => check_ifname(&s.pf),
            }
            .map_err(|r| bad(f("pf"), r))?;
            for (j, vf) in s.vfs.iter().enumerate() {
                let g = |x: &str| format!("sriov[{i}].vfs[{j}].{x}");
                if vf.index >= s.num_vfs {
                    return Err(bad(
                        g("index"),
                        format!("VF {} but num_vfs is {}", vf.index, s.num_vfs),
                    ));
                }
                if !vf.mac.is_empty() && !is_mac(&vf.mac) {
                    return Err(bad(g("mac"), format!("{:?} is not a MAC address", vf.mac)));
                }
                if vf.vlan > 4094 {
                    return Err(bad(g("vlan"), format!("{} is above 4094", vf.vlan)));
                }
                if vf.qos > 7 {
                    return Err(bad(g("qos"), format!("{} is above 7", vf.qos)));
                }
                if !["", "auto", "enable", "disable"].contains(&vf.link_state.as_str()) {
                    return Err(bad(
                        g("link_state"),
                        format!("{:?}: auto, enable or disable", vf.link_state),
                    ));
                }
            }
            d.sriov.push(SriovSpec {
                dpu: dpu.into(),
                field: format!("sriov[{i}]"),
                pf: s.pf.clone(),
                num_vfs: s.num_vfs,
                vfs: s.vfs.clone(),
            });
        }
        for (i, b) in net.bridges.iter().enumerate() {
            let f = |x: &str| format!("bridges[{i}].{x}");
            check_ifname(&b.name).map_err(|r| bad(f("name"), r))?;
            check_mtu(b.mtu).map_err(|r| bad(f("mtu"), r))?;
            if let Some(other) = d.bridges.get(&b.name) {
                return Err(bad(
                    f("name"),
                    format!("bridge {:?} is also defined by dpu {}", b.name, other.dpu),
                ));
            }
            let mut ports = Vec::new();
            for (j, p) in b.ports.iter().enumerate() {
                let p = PortRef::parse(p).map_err(|r| bad(format!("bridges[{i}].ports[{j}]"), r))?;
                if p == PortRef::Name(b.name.clone()) {
                    return Err(bad(
                        format!("bridges[{i}].ports[{j}]"),
                        "a bridge cannot be its own port".into(),
                    ));
                }
                if let Some(owner) = port_owner.insert(p.clone(), b.name.clone()) {
                    return Err(bad(
                        format!("bridges[{i}].ports[{j}]"),
                        format!("port {p} is already a port of bridge {owner}"),
                    ));
                }
                ports.push(p);
            }
            let mut addresses = BTreeSet::new();
            for (j, a) in b.addresses.iter().enumerate() {
                let a: IpNetwork =
                    parse_cidr(a).map_err(|e| bad(format!("bridges[{i}].addresses[{j}]"), e))?;
                addresses.insert(a);
            }
            let mtu = if b.mtu != 0 { b.mtu } else { net.mtu };
            d.bridges.insert(
                b.name.clone(),
                BridgeSpec {
                    dpu: dpu.into(),
                    field: format!("bridges[{i}]"),
                    name: b.name.clone(),
                    mtu,
                    ports,
                    addresses,
                },
            );
        }
        for (i, r) in net.routes.iter().enumerate() {
            let f = |x: &str| format!("routes[{i}].{x}");
            let destination = parse_destination(&r.destination).map_err(|e| bad(f("destination"), e))?;
            let gateway = if r.gateway.is_empty() {
                None
            } else {
                let g: IpAddr = r
                    .gateway
                    .parse()
                    .map_err(|_| bad(f("gateway"), format!("{:?} is not an IP address", r.gateway)))?;
                if g.is_ipv4() != destination.is_ipv4() {
                    return Err(bad(
                        f("gateway"),
                        "gateway and destination are of different IP versions".into(),
                    ));
                }
                Some(g)
            };
            let dev = if r.dev.is_empty() {
                None
            } else {
                check_ifname(&r.dev).map_err(|e| bad(f("dev"), e))?;
                Some(r.dev.clone())
            };
            if gateway.is_none() && dev.is_none() {
                return Err(bad(f("dev"), "a route needs a gateway or a dev".into()));
            }
            let metric = if r.metric == 0 && destination.is_ipv6() {
                IPV6_DEFAULT_METRIC
            } else {
                r.metric
            };
            let route = RouteSpec {
                dpu: dpu.into(),
                field: format!("routes[{i}]"),
                destination,
                gateway,
                dev,
                metric,
            };
            if let Some(other) = d.routes.iter().find(|o| o.key() == route.key()) {
                let whose = if other.dpu == dpu {
                    other.field.clone()
                } else {
                    format!("{} of dpu {}", other.field, other.dpu)
                };
                return Err(bad(
                    f("destination"),
                    format!(
                        "a route to {destination} with metric {metric} is also {whose} \
                         (the kernel keeps one route per destination and metric)"
                    ),
                ));
            }
            d.routes.push(route);
        }
    }
    // A bridge cannot be a port of another bridge (the kernel refuses it).
    for b in d.bridges.values() {
        for (j, p) in b.ports.iter().enumerate() {
            if let PortRef::Name(n) = p
                && let Some(other) = d.bridges.get(n)
                && other.name != b.name
            {
                return Err(NetError::Invalid {
                    dpu: b.dpu.clone(),
                    field: format!("{}.ports[{j}]", b.field),
                    reason: format!(
                        "{n} is a bridge (of dpu {}); a bridge cannot be a port",
                        other.dpu
                    ),
                });
            }
        }
    }
    // The same PF may be named twice (shorthand and explicit) only with one count.
    let mut counts: BTreeMap<&str, (u32, &str)> = BTreeMap::new();
    for s in &d.sriov {
        if let Some((n, dpu)) = counts.insert(&s.pf, (s.num_vfs, &s.dpu))
            && n != s.num_vfs
        {
            return Err(NetError::Invalid {
                dpu: s.dpu.clone(),
                field: "sriov".into(),
                reason: format!("PF {} wants {} VFs here and {n} for dpu {dpu}", s.pf, s.num_vfs),
            });
        }
    }
    Ok(d)
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use hostplane_proto::v1::{Bridge, Route, SriovPf, VfConfig};

    use super::*;

    fn net(dpu: &str, n: HostNetwork) -> DpuNetwork {
        DpuNetwork {
            dpu: dpu.into(),
            pf_pci_address: "0000:04:00.0".into(),
            network: Some(n),
        }
    }

    fn bridge(name: &str, ports: &[&str], addrs: &[&str]) -> Bridge {
        Bridge {
            name: name.into(),
            ports: ports.iter().map(|p| p.to_string()).collect(),
            mtu: 0,
            addresses: addrs.iter().map(|a| a.to_string()).collect(),
        }
    }

    #[test]
    fn a_valid_state_is_merged_across_dpus() {
        let a = net(
            "d1",
            HostNetwork {
                mtu: 9000,
                num_vfs: 4,
                bridges: vec![bridge(
                    "br-a",
                    &["veth1", "pci:0000:04:00.1", "vf:ens1f0:2"],
                    &["10.0.0.1/24", "fd00::1/64"],
                )],
                routes: vec![Route {
                    destination: "10.9.0.0/16".into(),
                    gateway: "10.0.0.254".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
        );
        let b = net(
            "d2",
            HostNetwork {
                bridges: vec![bridge("br-b", &["veth2"], &[])],
                ..Default::default()
            },
        );
        let d = build(&[a, b]).unwrap();
        assert_eq!(d.bridges.len(), 2);
        let br = &d.bridges["br-a"];
        assert_eq!(br.mtu, 9000, "the network's MTU is the bridge's default");
        assert_eq!(
            br.ports[2],
            PortRef::Vf {
                pf: "ens1f0".into(),
                index: 2
            }
        );
        assert_eq!(br.addresses.len(), 2);
        assert_eq!(d.sriov[0].pf, "pci:0000:04:00.0");
        assert_eq!(d.routes[0].gateway, Some("10.0.0.254".parse().unwrap()));
    }

    #[test]
    fn bad_input_names_the_dpu_and_field() {
        let cases: Vec<(HostNetwork, &str)> = vec![
            (
                HostNetwork {
                    mtu: 20,
                    ..Default::default()
                },
                "mtu",
            ),
            (
                HostNetwork {
                    bridges: vec![bridge("a-name-that-is-too-long", &[], &[])],
                    ..Default::default()
                },
                "bridges[0].name",
            ),
            (
                HostNetwork {
                    bridges: vec![bridge("br0", &["pci:4:0.0"], &[])],
                    ..Default::default()
                },
                "bridges[0].ports[0]",
            ),
            (
                HostNetwork {
                    bridges: vec![bridge("br0", &["br0"], &[])],
                    ..Default::default()
                },
                "bridges[0].ports[0]",
            ),
            (
                HostNetwork {
                    bridges: vec![bridge("br0", &[], &["10.0.0.1"])],
                    ..Default::default()
                },
                "bridges[0].addresses[0]",
            ),
            (
                HostNetwork {
                    bridges: vec![bridge("br0", &["veth1"], &[]), bridge("br1", &["veth1"], &[])],
                    ..Default::default()
                },
                "bridges[1].ports[0]",
            ),
            (
                HostNetwork {
                    bridges: vec![bridge("br0", &[], &[]), bridge("br0", &[], &[])],
                    ..Default::default()
                },
                "bridges[1].name",
            ),
            (
                HostNetwork {
                    routes: vec![Route {
                        destination: "10.0.0.0/8".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                "routes[0].dev",
            ),
            (
                HostNetwork {
                    routes: vec![Route {
                        destination: "default6".into(),
                        gateway: "10.0.0.1".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                "routes[0].gateway",
            ),
            (
                HostNetwork {
                    sriov: vec![SriovPf {
                        pf: "ens1f0".into(),
                        num_vfs: 2,
                        vfs: vec![VfConfig {
                            index: 1,
                            vlan: 5000,
                            ..Default::default()
                        }],
                    }],
                    ..Default::default()
                },
                "sriov[0].vfs[0].vlan",
            ),
            (
                HostNetwork {
                    sriov: vec![SriovPf {
                        pf: "ens1f0".into(),
                        num_vfs: 2,
                        vfs: vec![VfConfig {
                            index: 2,
                            ..Default::default()
                        }],
                    }],
                    ..Default::default()
                },
                "sriov[0].vfs[0].index",
            ),
            (
                HostNetwork {
                    bridges: vec![bridge("br0", &["br1"], &[]), bridge("br1", &[], &[])],
                    ..Default::default()
                },
                "bridges[0].ports[0]",
            ),
        ];
        for (n, field) in cases {
            let e = build(&[net("d1", n.clone())]).unwrap_err();
            match &e {
                NetError::Invalid { dpu, field: f, .. } => {
                    assert_eq!((dpu.as_str(), f.as_str()), ("d1", field), "{e}");
                }
                other => panic!("{n:?}: {other}"),
            }
            assert!(e.to_string().contains(field), "{e}");
        }
    }

    #[test]
    fn a_bridge_defined_by_two_dpus_is_refused() {
        let a = net(
            "d1",
            HostNetwork {
                bridges: vec![bridge("br0", &[], &[])],
                ..Default::default()
            },
        );
        let b = net(
            "d2",
            HostNetwork {
                bridges: vec![bridge("br0", &[], &[])],
                ..Default::default()
            },
        );
        let e = build(&[a, b]).unwrap_err().to_string();
        assert!(e.contains("also defined by dpu d1"), "{e}");
    }

    #[test]
    fn routes_are_keyed_as_the_kernel_keys_them() {
        let route = |dest: &str, gw: &str, metric: u32| Route {
            destination: dest.into(),
            gateway: gw.into(),
            metric,
            ..Default::default()
        };
        let routes = |r: Vec<Route>| {
            net(
                "d1",
                HostNetwork {
                    routes: r,
                    ..Default::default()
                },
            )
        };
        // No metric: IPv6 is 1024 as the kernel stores it, IPv4 stays 0.
        let d = build(&[routes(vec![
            route("default6", "fd00::fe", 0),
            route("default", "10.0.0.1", 0),
        ])])
        .unwrap();
        assert_eq!((d.routes[0].metric, d.routes[1].metric), (IPV6_DEFAULT_METRIC, 0));
        // The same destination and metric twice (1024 written or implied): refused.
        for dup in [
            vec![route("default6", "fd00::fe", 0), route("::/0", "fd00::fd", 1024)],
            vec![
                route("10.9.0.0/16", "10.0.0.1", 5),
                route("10.9.0.0/16", "10.0.0.2", 5),
            ],
        ] {
            let e = build(&[routes(dup)]).unwrap_err().to_string();
            assert!(
                e.contains("routes[1].destination") && e.contains("is also routes[0]"),
                "{e}"
            );
        }
        // Across Dpus too.
        let e = build(&[
            routes(vec![route("default", "10.0.0.1", 0)]),
            net(
                "d2",
                HostNetwork {
                    routes: vec![route("0.0.0.0/0", "10.0.0.2", 0)],
                    ..Default::default()
                },
            ),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("dpu d2") && e.contains("routes[0] of dpu d1"), "{e}");
        // Another metric is another route.
        build(&[routes(vec![
            route("default6", "fd00::fe", 0),
            route("default6", "fd00::fd", 100),
        ])])
        .unwrap();
    }
}
