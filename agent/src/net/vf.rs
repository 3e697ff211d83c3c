//! SR-IOV VF attributes (MAC, VLAN/QoS, spoof check, trust, link state),
//! read from and set on the PF through netlink (`IFLA_VFINFO_LIST`).
//!
//! The difference between what the kernel reports and what is desired is a
//! pure function ([`vf_changes`]), tested here; sending it is one RTM_SETLINK
//! on the PF (`Netlink::set_vfs`). A VF attribute already as desired is never
//! sent again.
use std::collections::BTreeMap;

use hostplane_proto::v1::VfConfig;
use rtnetlink::packet_route::link::{
    LinkVfInfo, VfInfo, VfInfoLinkState, VfInfoMac, VfInfoSpoofCheck, VfInfoTrust, VfInfoVlan, VfLinkState,
};

/// One VF's attributes as the kernel reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VfState {
    pub mac: Option<[u8; 6]>,
    pub vlan: u32,
    pub qos: u32,
    pub spoof_check: Option<bool>,
    pub trust: Option<bool>,
    pub link_state: Option<VfLinkState>,
}

/// VF id -> state, from a PF's `IFLA_VFINFO_LIST`.
pub fn parse_vfs(list: &[LinkVfInfo]) -> BTreeMap<u32, VfState> {
    let mut out: BTreeMap<u32, VfState> = BTreeMap::new();
    for LinkVfInfo(infos) in list {
        for i in infos {
            match i {
                VfInfo::Mac(m) => {
                    let mut mac = [0u8; 6];
                    mac.copy_from_slice(&m.mac[..6]);
                    out.entry(m.vf_id).or_default().mac = Some(mac);
                }
                VfInfo::Vlan(v) => {
                    let e = out.entry(v.vf_id).or_default();
                    e.vlan = v.vlan_id;
                    e.qos = v.qos;
                }
                VfInfo::SpoofCheck(s) => out.entry(s.vf_id).or_default().spoof_check = Some(s.enabled),
                VfInfo::Trust(t) => out.entry(t.vf_id).or_default().trust = Some(t.enabled),
                VfInfo::LinkState(l) => out.entry(l.vf_id).or_default().link_state = Some(l.state),
                _ => {}
            }
        }
    }
    out
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn link_state(s: &str) -> Option<VfLinkState> {
    match s {
        "auto" => Some(VfLinkState::Auto),
        "enable" => Some(VfLinkState::Enable),
        "disable" => Some(VfLinkState::Disable),
        _ => None,
    }
}

/// The attributes to send so that `cur` becomes `want`; fields `want` leaves
/// unset (empty MAC, no trust/spoof setting, empty link state) are left as
/// they are. Returns a description of each for the log.
pub fn vf_changes(want: &VfConfig, cur: &VfState) -> (Vec<VfInfo>, Vec<String>) {
    let vf = want.index;
    let (mut infos, mut what) = (Vec::new(), Vec::new());
    if let Some(mac) = parse_mac(&want.mac)
        && cur.mac != Some(mac)
    {
        infos.push(VfInfo::Mac(VfInfoMac::new(vf, &mac)));
        what.push(format!("vf {vf} mac {}", want.mac));
    }
    if (cur.vlan, cur.qos) != (want.vlan, want.qos) {
        infos.push(VfInfo::Vlan(VfInfoVlan::new(vf, want.vlan, want.qos)));
        what.push(format!("vf {vf} vlan {} qos {}", want.vlan, want.qos));
    }
    if let Some(on) = want.spoof_check
        && cur.spoof_check != Some(on)
    {
        infos.push(VfInfo::SpoofCheck(VfInfoSpoofCheck::new(vf, on)));
        what.push(format!("vf {vf} spoofchk {}", if on { "on" } else { "off" }));
    }
    if let Some(on) = want.trust
        && cur.trust != Some(on)
    {
        infos.push(VfInfo::Trust(VfInfoTrust::new(vf, on)));
        what.push(format!("vf {vf} trust {}", if on { "on" } else { "off" }));
    }
    if let Some(state) = link_state(&want.link_state)
        && cur.link_state != Some(state)
    {
        infos.push(VfInfo::LinkState(VfInfoLinkState::new(vf, state)));
        what.push(format!("vf {vf} state {}", want.link_state));
    }
    (infos, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want(index: u32) -> VfConfig {
        VfConfig {
            index,
            mac: "02:00:00:00:00:0a".into(),
            trust: Some(true),
            spoof_check: Some(false),
            vlan: 100,
            qos: 3,
            link_state: "enable".into(),
        }
    }

    #[test]
    fn everything_differs_from_a_fresh_vf() {
        let (infos, what) = vf_changes(&want(2), &VfState::default());
        assert_eq!(infos.len(), 5, "{what:?}");
        assert!(matches!(&infos[0], VfInfo::Mac(m) if m.vf_id == 2 && m.mac[..6] == [2, 0, 0, 0, 0, 0x0a]));
        assert!(matches!(&infos[1], VfInfo::Vlan(v) if (v.vf_id, v.vlan_id, v.qos) == (2, 100, 3)));
        assert_eq!(what[4], "vf 2 state enable");
    }

    #[test]
    fn a_vf_already_as_desired_needs_nothing() {
        let cur = VfState {
            mac: parse_mac("02:00:00:00:00:0a"),
            vlan: 100,
            qos: 3,
            spoof_check: Some(false),
            trust: Some(true),
            link_state: Some(VfLinkState::Enable),
        };
        let (infos, what) = vf_changes(&want(2), &cur);
        assert!(infos.is_empty(), "{what:?}");
    }

    #[test]
    fn unset_fields_are_left_alone_and_only_differences_are_sent() {
        let w = VfConfig {
            index: 0,
            trust: Some(true),
            ..Default::default()
        };
        let cur = VfState {
            trust: Some(false),
            spoof_check: Some(true),
            mac: parse_mac("aa:bb:cc:dd:ee:ff"),
            ..Default::default()
        };
        let (infos, what) = vf_changes(&w, &cur);
        assert_eq!(what, ["vf 0 trust on"]);
        assert_eq!(infos.len(), 1);
    }

    #[test]
    fn the_kernel_list_parses_per_vf() {
        let list = vec![
            LinkVfInfo(vec![
                VfInfo::Mac(VfInfoMac::new(0, &[2, 0, 0, 0, 0, 1])),
                VfInfo::Vlan(VfInfoVlan::new(0, 7, 1)),
                VfInfo::Trust(VfInfoTrust::new(0, true)),
            ]),
            LinkVfInfo(vec![VfInfo::SpoofCheck(VfInfoSpoofCheck::new(1, false))]),
        ];
        let m = parse_vfs(&list);
        assert_eq!(m[&0].mac, Some([2, 0, 0, 0, 0, 1]));
        assert_eq!((m[&0].vlan, m[&0].qos, m[&0].trust), (7, 1, Some(true)));
        assert_eq!(m[&1].spoof_check, Some(false));
        assert_eq!(parse_mac("02:00:00:00:00:zz"), None);
        assert_eq!(parse_mac("02:00:00:00:00"), None);
    }
}
