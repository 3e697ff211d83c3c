//! Table columns per kind, and a writer that keeps columns aligned across a stream of rows.
use std::collections::HashMap;

use hostplane_proto::v1::{
    DeploymentStatus, DeviceStatus, DpuStatus, Kind, NodeEffect, NodeStatus, PowerElement, PowerLimit,
    RebootKind, RebootMethod, Resource, TopologyLevel, power_limit, resource,
};

/// A Flavor's DPU OS settings in a cell: `grub=2,sysctl=1,files=3,ovs,containerd` ("" for none).
pub fn dpu_os_summary(os: Option<&hostplane_proto::v1::DpuOsConfig>) -> String {
    let Some(os) = os else { return String::new() };
    let mut parts = Vec::new();
    if let Some(g) = os.grub.as_ref().filter(|g| !g.kernel_parameters.is_empty()) {
        parts.push(format!("grub={}", g.kernel_parameters.len()));
    }
    if let Some(x) = os.sysctl.as_ref().filter(|x| !x.parameters.is_empty()) {
        parts.push(format!("sysctl={}", x.parameters.len()));
    }
    if !os.config_files.is_empty() {
        parts.push(format!("files={}", os.config_files.len()));
    }
    if os.ovs.as_ref().is_some_and(|o| !o.raw_config_script.is_empty()) {
        parts.push("ovs".into());
    }
    if os
        .containerd_config
        .as_ref()
        .is_some_and(|c| !c.registry_endpoint.is_empty())
    {
        parts.push("containerd".into());
    }
    parts.join(",")
}

/// Column gap.
const GAP: &str = "   ";

/// Aligned columns. Widths only grow, so rows of a watch printed later stay
/// aligned with earlier ones as far as their contents allow.
#[derive(Debug)]
pub struct TableWriter {
    header: Vec<String>,
    widths: Vec<usize>,
    header_done: bool,
}

impl TableWriter {
    pub fn new(header: Vec<String>) -> Self {
        let widths = header.iter().map(|h| h.chars().count()).collect();
        TableWriter {
            header,
            widths,
            header_done: false,
        }
    }

    /// The header (the first time) and `rows`, each line ending in a newline.
    pub fn render(&mut self, rows: &[Vec<String>]) -> String {
        for r in rows {
            for (i, cell) in r.iter().enumerate() {
                let w = cell.chars().count();
                match self.widths.get_mut(i) {
                    Some(cur) => *cur = (*cur).max(w),
                    None => self.widths.push(w),
                }
            }
        }
        let mut out = String::new();
        if !self.header_done {
            self.header_done = true;
            let header = self.header.clone();
            self.line(&mut out, &header);
        }
        for r in rows {
            self.line(&mut out, r);
        }
        out
    }

    fn line(&self, out: &mut String, cells: &[String]) {
        let mut line = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i > 0 {
                line.push_str(GAP);
            }
            line.push_str(cell);
            let pad = self
                .widths
                .get(i)
                .copied()
                .unwrap_or(0)
                .saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

/// Column names for a kind.
pub fn header(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Node => &[
            "NAME",
            "REACHABLE",
            "MAINTENANCE",
            "WAITING-REBOOT",
            "POWER-CYCLE",
            "LAST-REBOOT",
            "REBOOT-METHOD",
            "AGE",
        ],
        Kind::Device => &["NAME", "NODE", "RSHIM", "SERIAL", "PCI", "PRESENT", "AGE"],
        Kind::Bfb => &["NAME", "VERSION", "SIZE", "SHA256", "AGE", "URL"],
        Kind::Flavor => &[
            "NAME", "VFS", "MTU", "BRIDGES", "BF-CFG", "NIC-FW", "NVCONFIG", "DPU-OS", "AGE",
        ],
        Kind::Deployment => &[
            "NAME",
            "BFB",
            "FLAVOR",
            "READY",
            "UPDATED",
            "FAILED",
            "NODE-EFFECT",
            "AGE",
            "SELECTOR",
        ],
        Kind::Dpu => &["NAME", "NODE", "DEVICE", "DEPLOYMENT", "PHASE", "AGE", "MESSAGE"],
        Kind::Topology => &[
            "NAME",
            "FEEDS",
            "NODES",
            "BUDGET-W",
            "ALLOCATED-W",
            "DRAW-W",
            "AGE",
        ],
        Kind::PowerPolicy => &["NAME", "PRIORITY", "BUNDLE", "LIMITS", "SAFE-W", "NODES", "AGE"],
        Kind::Unspecified => &["NAME"],
    }
}

/// The cells of one object, matching [`header`] for its kind.
pub fn row(r: &Resource, now_ms: i64) -> Vec<String> {
    let name = dash(r.name());
    let created = r.metadata().map(|m| m.created_at_ms).unwrap_or(0);
    let age = age(created, now_ms);
    let Some(kind) = r.kind.as_ref() else {
        return vec![name];
    };
    match kind {
        resource::Kind::Node(n) => {
            let st = n.status.clone().unwrap_or_else(NodeStatus::default);
            let method = match n.spec.as_ref().map(|s| s.reboot_method()).unwrap_or_default() {
                RebootMethod::Agent => "agent",
                RebootMethod::External | RebootMethod::Unspecified => "external",
            };
            let maintenance = if st.maintenance_approved { "approved" } else { "-" };
            // The wait needs a host power cycle, not a warm reboot.
            let cycle = if st.power_cycle_required { "required" } else { "-" };
            let last = match st.last_reboot_kind() {
                RebootKind::Reboot => "reboot",
                RebootKind::PowerCycle => "power-cycle",
                RebootKind::Unspecified => "-",
            };
            vec![
                name,
                st.reachable.to_string(),
                maintenance.into(),
                st.waiting_for_reboot.to_string(),
                cycle.into(),
                last.into(),
                method.into(),
                age,
            ]
        }
        resource::Kind::Device(d) => {
            let spec = d.spec.clone().unwrap_or_default();
            let st = d.status.clone().unwrap_or_else(DeviceStatus::default);
            vec![
                name,
                dash(&spec.node),
                dash(&spec.rshim),
                dash(&spec.serial),
                dash(&spec.pci_address),
                st.present.to_string(),
                age,
            ]
        }
        resource::Kind::Bfb(b) => {
            let spec = b.spec.clone().unwrap_or_default();
            let sha: String = spec.sha256.chars().take(12).collect();
            vec![
                name,
                dash(&spec.version),
                bytes(spec.size_bytes),
                dash(&sha),
                age,
                dash(&spec.url),
            ]
        }
        resource::Kind::Flavor(f) => {
            let spec = f.spec.clone().unwrap_or_default();
            let net = spec.host_network.unwrap_or_default();
            let bridges: Vec<&str> = net.bridges.iter().map(|b| b.name.as_str()).collect();
            vec![
                name,
                zero_dash(net.num_vfs),
                zero_dash(net.mtu),
                dash(&bridges.join(",")),
                spec.bf_cfg.len().to_string(),
                spec.nic_firmware.len().to_string(),
                spec.nvconfig.len().to_string(),
                dash(&dpu_os_summary(spec.dpu_os.as_ref())),
                age,
            ]
        }
        resource::Kind::Deployment(d) => {
            let spec = d.spec.clone().unwrap_or_default();
            let st = d.status.clone().unwrap_or_else(DeploymentStatus::default);
            let effect = match spec.node_effect() {
                NodeEffect::Auto => "auto",
                NodeEffect::Hold | NodeEffect::Unspecified => "hold",
            };
            let selector = if spec.device_selector.is_empty() {
                "<all>".to_string()
            } else {
                pairs(&spec.device_selector)
            };
            vec![
                name,
                dash(&spec.bfb),
                dash(&spec.flavor),
                format!("{}/{}", st.ready, st.dpus),
                st.updated.to_string(),
                st.failed.to_string(),
                effect.into(),
                age,
                selector,
            ]
        }
        resource::Kind::Dpu(d) => {
            let spec = d.spec.clone().unwrap_or_default();
            let st = d.status.clone().unwrap_or_else(DpuStatus::default);
            vec![
                name,
                dash(&spec.node),
                dash(&spec.device),
                dash(&spec.deployment),
                st.phase().display_name().into(),
                age,
                dash(&st.message),
            ]
        }
        resource::Kind::Topology(t) => {
            let spec = t.spec.clone().unwrap_or_default();
            let st = t.status.clone().unwrap_or_default();
            let level = |l: TopologyLevel| spec.elements.iter().filter(move |e| e.level() == l);
            let budget: f64 = level(TopologyLevel::Feed).map(|e| e.budget_watts).sum();
            let feeds: Vec<&str> = level(TopologyLevel::Feed).map(|e| e.name.as_str()).collect();
            let roots = st.allocations.iter().filter(|a| a.level() == TopologyLevel::Feed);
            let (alloc, draw) = roots.fold((0.0, 0.0), |(a, d), x| (a + x.allocated_watts, d + x.draw_watts));
            let computed = st.computed_at_ms > 0;
            vec![
                name,
                dash(&feeds.join(",")),
                level(TopologyLevel::Node).count().to_string(),
                watts(budget),
                if computed { watts(alloc) } else { "-".into() },
                if computed { watts(draw) } else { "-".into() },
                age,
            ]
        }
        resource::Kind::PowerPolicy(p) => {
            let spec = p.spec.clone().unwrap_or_default();
            let st = p.status.clone().unwrap_or_default();
            let limits = spec
                .bundles
                .iter()
                .find(|b| !spec.active_bundle.is_empty() && b.name == spec.active_bundle)
                .map(|b| &b.limits)
                .unwrap_or(&spec.limits);
            vec![
                name,
                spec.priority.to_string(),
                dash(&spec.active_bundle),
                dash(&limits.iter().map(limit).collect::<Vec<_>>().join(",")),
                watts(spec.safe_node_watts),
                st.nodes.len().to_string(),
                age,
            ]
        }
    }
}

/// Watts without decimals; `-` for 0 (unset).
pub fn watts(w: f64) -> String {
    if w <= 0.0 { "-".into() } else { format!("{w:.0}") }
}

/// `node=700W`, `gpu=80%`.
fn limit(l: &PowerLimit) -> String {
    let el = match l.element() {
        PowerElement::Node => "node",
        PowerElement::Gpu => "gpu",
        PowerElement::Cpu => "cpu",
        PowerElement::Memory => "memory",
        PowerElement::Unspecified => "?",
    };
    match l.value {
        Some(power_limit::Value::Watts(w)) => format!("{el}={w:.0}W"),
        Some(power_limit::Value::Percent(p)) => format!("{el}={p}%"),
        None => format!("{el}=?"),
    }
}

/// How long ago `created_ms` was, kubectl style: `45s`, `12m`, `5h`, `3d`; `-` when unknown.
pub fn age(created_ms: i64, now_ms: i64) -> String {
    if created_ms <= 0 {
        return "-".into();
    }
    let s = (now_ms - created_ms).max(0) / 1000;
    match s {
        0..120 => format!("{s}s"),
        120..7_200 => format!("{}m", s / 60),
        7_200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn dash(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.into() }
}

fn zero_dash(n: u32) -> String {
    if n == 0 { "-".into() } else { n.to_string() }
}

/// `a=1,b=2`, sorted by key.
fn pairs(m: &HashMap<String, String>) -> String {
    let mut v: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
    v.sort();
    v.join(",")
}

/// `-`, `512B`, `1.5GiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    if n == 0 {
        return "-".into();
    }
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else {
        let s = format!("{v:.1}");
        format!("{}{}", s.strip_suffix(".0").unwrap_or(&s), UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_buckets() {
        let now = 1_000_000_000;
        assert_eq!(age(0, now), "-");
        assert_eq!(age(now - 5_000, now), "5s");
        assert_eq!(age(now + 5_000, now), "0s");
        assert_eq!(age(now - 119_000, now), "119s");
        assert_eq!(age(now - 600_000, now), "10m");
        assert_eq!(age(now - 3 * 3_600_000, now), "3h");
        assert_eq!(age(now - 5 * 86_400_000, now), "5d");
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(bytes(0), "-");
        assert_eq!(bytes(512), "512B");
        assert_eq!(bytes(2048), "2KiB");
        assert_eq!(bytes(1536 * 1024 * 1024), "1.5GiB");
    }

    #[test]
    fn writer_aligns_and_grows() {
        let mut t = TableWriter::new(vec!["NAME".into(), "X".into()]);
        let first = t.render(&[vec!["a".into(), "1".into()]]);
        assert_eq!(first, "NAME   X\na      1\n");
        let later = t.render(&[vec!["longname".into(), "2".into()]]);
        assert_eq!(later, "longname   2\n");
        let again = t.render(&[vec!["b".into(), "3".into()]]);
        assert_eq!(again, "b          3\n");
    }
}
