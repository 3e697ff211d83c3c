//! The Flavor's DPU OS settings (`FlavorSpec.dpu_os`) rendered into bf.cfg,
//! in the shape of DPF's `bfb_modify_os` (docs/operations.md, "DPU OS
//! settings (bf.cfg)").
//!
//! One renderer for both sides: the agent appends [`bfb_modify_os`] to the
//! `KEY='value'` lines it renders from `bf_cfg`, and the coordinator refuses
//! a Flavor whose [`rendered_len`] is over [`crate::limits::MAX_BF_CFG_BYTES`].
//!
//! What is rendered: a helper `hostplane_os_file PATH MODE OWNER OP BASE64`
//! and the installer hook `bfb_modify_os` (the BFB installer calls it once the
//! new OS is on `/mnt`) with one section per setting, in this order, each
//! under a header comment `# hostplane dpu_os section: NAME`:
//!
//! | section       | file on the DPU OS                                   |
//! |---------------|------------------------------------------------------|
//! | `grub`        | [`GRUB_FILE`]: `GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX ..."` |
//! | `sysctl`      | [`SYSCTL_FILE`]: one `key=value` a line              |
//! | `config_file` | the Flavor's path, mode, owner, override or append   |
//! | `ovs`         | [`OVS_SCRIPT`]: `#!/bin/bash`, `set -e`, the script  |
//! | `containerd`  | [`CONTAINERD_HOSTS`]: the registry endpoint as a mirror |
//! | `first_boot`  | [`FIRST_BOOT_SCRIPT`] and [`FIRST_BOOT_UNIT`], enabled |
//!
//! Nothing from the Flavor becomes shell code: every content is embedded
//! base64-encoded (decoded on the DPU with `base64 -d`), and every path, mode
//! and owner is single-quoted (`'` written as `'\''`); header comments carry
//! only fixed section names.
use base64::Engine;

use crate::v1::{ConfigFileOperation, DpuOsConfig};

/// Where the BFB installer has the new OS mounted when it calls `bfb_modify_os`.
pub const OS_ROOT: &str = "/mnt";
/// The grub drop-in with the kernel parameters (read by `update-grub`).
pub const GRUB_FILE: &str = "/etc/default/grub.d/99-hostplane.cfg";
/// The sysctl drop-in (applied by systemd-sysctl at every boot).
pub const SYSCTL_FILE: &str = "/etc/sysctl.d/99-hostplane.conf";
/// The OVS script, run once at the DPU OS's first boot.
pub const OVS_SCRIPT: &str = "/opt/hostplane/ovs.sh";
/// containerd's registry host configuration for every registry (`_default`).
pub const CONTAINERD_HOSTS: &str = "/etc/containerd/certs.d/_default/hosts.toml";
/// What runs once at the first boot of the new OS (sysctl, OVS, containerd, update-grub).
pub const FIRST_BOOT_SCRIPT: &str = "/opt/hostplane/dpu-os-first-boot.sh";
/// The systemd unit that runs [`FIRST_BOOT_SCRIPT`].
pub const FIRST_BOOT_UNIT: &str = "/etc/systemd/system/hostplane-dpu-os.service";
/// The first-boot script's marker: present once it has run to the end.
pub const FIRST_BOOT_MARKER: &str = "/var/lib/hostplane/dpu-os.done";
/// The link that enables [`FIRST_BOOT_UNIT`].
pub const FIRST_BOOT_WANTS: &str = "/etc/systemd/system/multi-user.target.wants/hostplane-dpu-os.service";
/// Paths hostplane writes itself: a Flavor's config file may not name them,
/// nor a directory above them (see [`reserved`]).
pub const RESERVED_PATHS: [&str; 8] = [
    GRUB_FILE,
    SYSCTL_FILE,
    OVS_SCRIPT,
    CONTAINERD_HOSTS,
    FIRST_BOOT_SCRIPT,
    FIRST_BOOT_UNIT,
    FIRST_BOOT_MARKER,
    FIRST_BOOT_WANTS,
];
/// Directories that are hostplane's own on the DPU OS: nothing of a Flavor's goes in them.
pub const RESERVED_DIRS: [&str; 2] = ["/opt/hostplane", "/var/lib/hostplane"];

/// Why a config file may not be written at `path` (absolute, normalized), or
/// None: it is one of [`RESERVED_PATHS`], a directory above one of them (a
/// file there would break hostplane's own writes), or inside [`RESERVED_DIRS`].
pub fn reserved(path: &str) -> Option<&'static str> {
    let below = |dir: &str, p: &str| p.strip_prefix(dir).is_some_and(|rest| rest.starts_with('/'));
    if let Some(r) = RESERVED_PATHS.iter().find(|r| **r == path) {
        return Some(r);
    }
    if let Some(d) = RESERVED_DIRS.iter().find(|d| **d == path || below(d, path)) {
        return Some(d);
    }
    RESERVED_PATHS.iter().find(|r| below(path, r)).copied()
}
/// The helper each section calls.
pub const WRITE_FN: &str = "hostplane_os_file";
/// Each section starts with this comment and its name.
pub const SECTION_HEADER: &str = "# hostplane dpu_os section: ";
/// The default mode and owner of a config file.
pub const DEFAULT_PERMISSIONS: &str = "0644";
pub const DEFAULT_OWNER: &str = "root:root";

const PREAMBLE: &str = "\n\
# hostplane: the Flavor's DPU OS settings (dpu_os), in the shape of DPF's bfb_modify_os.\n\
# The BFB installer calls bfb_modify_os once the new OS is on /mnt. Contents are\n\
# base64 (decoded with base64 -d); paths, modes and owners are single-quoted.\n\
# hostplane_os_file PATH MODE OWNER override|append BASE64\n\
hostplane_os_file()\n\
{\n\
\tlocal dest=\"/mnt$1\"\n\
\tmkdir -p \"$(dirname \"$dest\")\" || { hostplane_os_fail \"$1\"; return 1; }\n\
\tif [ \"$4\" = append ]; then\n\
\t\tprintf '%s' \"$5\" | base64 -d >> \"$dest\" || { hostplane_os_fail \"$1\"; return 1; }\n\
\telse\n\
\t\tprintf '%s' \"$5\" | base64 -d > \"$dest\" || { hostplane_os_fail \"$1\"; return 1; }\n\
\tfi\n\
\t# chown first: it clears setuid/setgid bits that chmod sets.\n\
\tchroot /mnt chown \"$3\" \"$1\" 2>/dev/null || chown \"$3\" \"$dest\" || { hostplane_os_fail \"$1\"; return 1; }\n\
\tchmod \"$2\" \"$dest\" || { hostplane_os_fail \"$1\"; return 1; }\n\
}\n\
\n\
# An ERR line where the installer's rshim log takes it (DOCA's install.sh\n\
# defines bfrshlog), else on stderr.\n\
hostplane_os_fail()\n\
{\n\
\techo \"ERROR: hostplane dpu_os: cannot write $1 on the DPU OS\" >&2\n\
\tif command -v bfrshlog >/dev/null 2>&1; then bfrshlog \"ERR hostplane dpu_os: cannot write $1\"; fi\n\
}\n\
\n\
bfb_modify_os()\n\
{\n";

const ENABLE_UNIT: &str = "mkdir -p /mnt/etc/systemd/system/multi-user.target.wants || return 1\n\
ln -sf /etc/systemd/system/hostplane-dpu-os.service \
/mnt/etc/systemd/system/multi-user.target.wants/hostplane-dpu-os.service || return 1\n";

/// After each write: stop the hook at the first file that could not be written.
const CHECK_WRITE: &str = "[ \"$?\" = 0 ] || return 1\n";

/// True when the Flavor sets no DPU OS setting (nothing is rendered).
pub fn is_empty(os: &DpuOsConfig) -> bool {
    os.grub.as_ref().is_none_or(|g| g.kernel_parameters.is_empty())
        && os.sysctl.as_ref().is_none_or(|s| s.parameters.is_empty())
        && os.config_files.is_empty()
        && os.ovs.as_ref().is_none_or(|o| o.raw_config_script.is_empty())
        && os
            .containerd_config
            .as_ref()
            .is_none_or(|c| c.registry_endpoint.is_empty())
}

/// Single-quote `value` for a POSIX shell: `'` becomes `'\''`.
pub fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "'\\''"))
}

/// The grub drop-in's content for these kernel parameters.
pub fn grub_file(kernel_parameters: &[String]) -> String {
    format!(
        "# hostplane: the Flavor's kernel parameters\nGRUB_CMDLINE_LINUX=\"$GRUB_CMDLINE_LINUX {}\"\n",
        kernel_parameters.join(" ")
    )
}

/// The sysctl drop-in's content.
pub fn sysctl_file(parameters: &[String]) -> String {
    let mut out = String::from("# hostplane: the Flavor's sysctl settings\n");
    for p in parameters {
        out.push_str(p);
        out.push('\n');
    }
    out
}

/// The OVS script as written on the DPU.
pub fn ovs_script(raw: &str) -> String {
    let nl = if raw.ends_with('\n') || raw.is_empty() {
        ""
    } else {
        "\n"
    };
    format!("#!/bin/bash\n# hostplane: the Flavor's OVS configuration script\nset -e\n{raw}{nl}")
}

/// containerd's hosts.toml naming the endpoint as the mirror for every registry.
pub fn containerd_hosts(endpoint: &str) -> String {
    format!(
        "# hostplane: the Flavor's registry endpoint, a mirror for every registry\n\
         [host.\"{endpoint}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    )
}

/// The first-boot script: what needs the running DPU OS, in DPF's order
/// (sysctl, OVS, containerd, then update-grub and one reboot so the kernel
/// parameters take effect). It runs once (a marker file) and stops at the
/// first failure without the marker, so the next boot tries again.
pub fn first_boot_script(os: &DpuOsConfig) -> String {
    let grub = os.grub.as_ref().is_some_and(|g| !g.kernel_parameters.is_empty());
    let sysctl = os.sysctl.as_ref().is_some_and(|s| !s.parameters.is_empty());
    let ovs = os.ovs.as_ref().is_some_and(|o| !o.raw_config_script.is_empty());
    let containerd = os
        .containerd_config
        .as_ref()
        .is_some_and(|c| !c.registry_endpoint.is_empty());
    let mut s = String::from(
        "#!/bin/bash\n\
         # hostplane: the Flavor's DPU OS settings that need the running OS, once.\n\
         set -eu\n",
    );
    s.push_str(&format!(
        "marker={FIRST_BOOT_MARKER}\n[ -e \"$marker\" ] && exit 0\nmkdir -p /var/lib/hostplane\n"
    ));
    if sysctl {
        s.push_str(&format!("sysctl -p {SYSCTL_FILE}\n"));
    }
    if ovs {
        s.push_str(&format!("/bin/bash {OVS_SCRIPT}\n"));
    }
    if containerd {
        s.push_str(
            "cfg=/etc/containerd/config.toml\n\
             if [ -f \"$cfg\" ] && grep -q 'config_path = \"\"' \"$cfg\"; then\n\
             \tsed -i 's|config_path = \"\"|config_path = \"/etc/containerd/certs.d\"|' \"$cfg\"\n\
             fi\n\
             systemctl restart containerd\n",
        );
    }
    // The marker only once every step, update-grub included, succeeded.
    if grub {
        s.push_str("update-grub\n");
    }
    s.push_str("touch \"$marker\"\n");
    if grub {
        s.push_str("reboot\n");
    }
    s
}

/// The first-boot unit.
pub fn first_boot_unit() -> String {
    format!(
        "[Unit]\nDescription=hostplane: the Flavor's DPU OS settings (first boot)\n\
         After=network-online.target openvswitch-switch.service containerd.service\n\
         Wants=network-online.target\n\n[Service]\nType=oneshot\nExecStart=/bin/bash {FIRST_BOOT_SCRIPT}\n\n\
         [Install]\nWantedBy=multi-user.target\n"
    )
}

fn section(out: &mut String, name: &str) {
    out.push_str(SECTION_HEADER);
    out.push_str(name);
    out.push('\n');
}

fn write_file(out: &mut String, path: &str, mode: &str, owner: &str, append: bool, content: &str) {
    let b64 = base64::engine::general_purpose::STANDARD.encode(content.as_bytes());
    out.push_str(WRITE_FN);
    for word in [path, mode, owner] {
        out.push(' ');
        out.push_str(&shell_quote(word));
    }
    out.push_str(if append { " append '" } else { " override '" });
    out.push_str(&b64);
    out.push_str("'\n");
    out.push_str(CHECK_WRITE);
}

/// The `bfb_modify_os` hook (with its helper) for these settings, to append
/// after the `KEY='value'` lines; "" when [`is_empty`].
pub fn bfb_modify_os(os: &DpuOsConfig) -> String {
    if is_empty(os) {
        return String::new();
    }
    let mut out = String::from(PREAMBLE);
    if let Some(g) = os.grub.as_ref().filter(|g| !g.kernel_parameters.is_empty()) {
        section(&mut out, "grub");
        let text = grub_file(&g.kernel_parameters);
        write_file(&mut out, GRUB_FILE, "0644", DEFAULT_OWNER, false, &text);
    }
    if let Some(s) = os.sysctl.as_ref().filter(|s| !s.parameters.is_empty()) {
        section(&mut out, "sysctl");
        let text = sysctl_file(&s.parameters);
        write_file(&mut out, SYSCTL_FILE, "0644", DEFAULT_OWNER, false, &text);
    }
    for f in &os.config_files {
        section(&mut out, "config_file");
        let mode = if f.permissions.is_empty() {
            DEFAULT_PERMISSIONS
        } else {
            &f.permissions
        };
        let owner = if f.owner.is_empty() {
            DEFAULT_OWNER
        } else {
            &f.owner
        };
        let append = f.operation == ConfigFileOperation::Append as i32;
        write_file(&mut out, &f.path, mode, owner, append, &f.raw);
    }
    if let Some(o) = os.ovs.as_ref().filter(|o| !o.raw_config_script.is_empty()) {
        section(&mut out, "ovs");
        let text = ovs_script(&o.raw_config_script);
        write_file(&mut out, OVS_SCRIPT, "0755", DEFAULT_OWNER, false, &text);
    }
    if let Some(c) = os
        .containerd_config
        .as_ref()
        .filter(|c| !c.registry_endpoint.is_empty())
    {
        section(&mut out, "containerd");
        let text = containerd_hosts(&c.registry_endpoint);
        write_file(&mut out, CONTAINERD_HOSTS, "0644", DEFAULT_OWNER, false, &text);
    }
    section(&mut out, "first_boot");
    let script = first_boot_script(os);
    write_file(&mut out, FIRST_BOOT_SCRIPT, "0755", DEFAULT_OWNER, false, &script);
    write_file(
        &mut out,
        FIRST_BOOT_UNIT,
        "0644",
        DEFAULT_OWNER,
        false,
        &first_boot_unit(),
    );
    out.push_str(ENABLE_UNIT);
    out.push_str("}\n");
    out
}

/// The length of the whole bf.cfg the agent renders: the `KEY='value'` lines
/// ([`crate::limits::bf_cfg_rendered_len`]) and [`bfb_modify_os`].
pub fn rendered_len<'a>(
    params: impl IntoIterator<Item = (&'a String, &'a String)>,
    os: Option<&DpuOsConfig>,
) -> usize {
    crate::limits::bf_cfg_rendered_len(params) + os.map_or(0, |o| bfb_modify_os(o).len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{ConfigFile, ContainerdConfig, GrubConfig, OvsConfig, SysctlConfig};

    fn full() -> DpuOsConfig {
        DpuOsConfig {
            grub: Some(GrubConfig {
                kernel_parameters: vec!["hugepages=3072".into(), "iommu=pt".into()],
            }),
            sysctl: Some(SysctlConfig {
                parameters: vec!["net.ipv4.ip_forward=1".into()],
            }),
            config_files: vec![ConfigFile {
                path: "/etc/it's here".into(),
                operation: ConfigFileOperation::Append as i32,
                raw: "a\nb '$(reboot)'\n".into(),
                permissions: "0600".into(),
                owner: "ubuntu:adm".into(),
            }],
            ovs: Some(OvsConfig {
                raw_config_script: "ovs-vsctl set Open_vSwitch . other_config:hw-offload=true".into(),
            }),
            containerd_config: Some(ContainerdConfig {
                registry_endpoint: "https://registry.lab:5000".into(),
            }),
        }
    }

    #[test]
    fn empty_settings_render_nothing() {
        assert!(is_empty(&DpuOsConfig::default()));
        assert_eq!(bfb_modify_os(&DpuOsConfig::default()), "");
        let only_empty_parts = DpuOsConfig {
            grub: Some(GrubConfig::default()),
            sysctl: Some(SysctlConfig::default()),
            ovs: Some(OvsConfig::default()),
            containerd_config: Some(ContainerdConfig::default()),
            config_files: vec![],
        };
        assert_eq!(bfb_modify_os(&only_empty_parts), "");
    }

    #[test]
    fn sections_in_order_with_quoted_paths_and_base64_contents() {
        let text = bfb_modify_os(&full());
        let sections: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix(SECTION_HEADER))
            .collect();
        assert_eq!(
            sections,
            ["grub", "sysctl", "config_file", "ovs", "containerd", "first_boot"]
        );
        let b64 = base64::engine::general_purpose::STANDARD.encode("a\nb '$(reboot)'\n");
        assert!(
            text.contains(&format!(
                "hostplane_os_file '/etc/it'\\''s here' '0600' 'ubuntu:adm' append '{b64}'\n"
            )),
            "{text}"
        );
        assert!(!text.contains("$(reboot)"), "content leaked unencoded: {text}");
        assert!(text.starts_with("\n# hostplane:") && text.ends_with("}\n"));
    }

    #[test]
    fn grub_and_first_boot_follow_the_settings() {
        assert_eq!(
            grub_file(&["a=1".into(), "b".into()]),
            "# hostplane: the Flavor's kernel parameters\nGRUB_CMDLINE_LINUX=\"$GRUB_CMDLINE_LINUX a=1 b\"\n"
        );
        let fb = first_boot_script(&full());
        let order: Vec<usize> = [
            "sysctl -p",
            "/bin/bash /opt/hostplane/ovs.sh",
            "restart containerd",
            "update-grub",
        ]
        .iter()
        .map(|n| fb.find(n).unwrap_or_else(|| panic!("{n} missing in {fb}")))
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{fb}");
        let only_files = DpuOsConfig {
            config_files: full().config_files,
            ..Default::default()
        };
        let fb = first_boot_script(&only_files);
        assert!(
            !fb.contains("update-grub") && !fb.contains("ovs") && !fb.contains("sysctl"),
            "{fb}"
        );
    }

    #[test]
    fn the_marker_follows_update_grub_and_precedes_the_reboot() {
        let fb = first_boot_script(&full());
        let at = |n: &str| fb.find(n).unwrap_or_else(|| panic!("{n} missing in {fb}"));
        assert!(
            at("update-grub") < at("touch \"$marker\"") && at("touch \"$marker\"") < at("reboot"),
            "{fb}"
        );
        assert!(fb.contains(&format!("marker={FIRST_BOOT_MARKER}")), "{fb}");
    }

    #[test]
    fn reserved_paths_their_parents_and_hostplanes_dirs() {
        for p in [
            FIRST_BOOT_MARKER,
            GRUB_FILE,
            "/etc/default/grub.d",
            "/etc/default",
            "/etc/systemd/system/multi-user.target.wants",
            "/opt/hostplane",
            "/opt/hostplane/other.sh",
            "/var/lib/hostplane/x",
        ] {
            assert!(reserved(p).is_some(), "{p}");
        }
        for p in [
            "/etc/hosts",
            "/etc/default/grub",
            "/opt/hostplane2",
            "/var/lib/hostplanex/y",
            "/etc/systemd/x",
        ] {
            assert_eq!(reserved(p), None, "{p}");
        }
    }

    #[test]
    fn every_write_is_checked() {
        let text = bfb_modify_os(&full());
        let lines: Vec<&str> = text.lines().collect();
        let call = format!("{WRITE_FN} ");
        let writes = lines.iter().filter(|l| l.starts_with(&call)).count();
        assert!(writes >= 7, "{text}");
        for (i, l) in lines.iter().enumerate() {
            if l.starts_with(&call) {
                assert_eq!(lines[i + 1], CHECK_WRITE.trim_end(), "after {l}");
            }
        }
    }

    #[test]
    fn rendered_len_adds_the_hook() {
        let params: std::collections::BTreeMap<String, String> = [("A".to_string(), "x".to_string())].into();
        let os = full();
        assert_eq!(
            rendered_len(&params, Some(&os)),
            "A='x'\n".len() + bfb_modify_os(&os).len()
        );
        assert_eq!(rendered_len(&params, None), "A='x'\n".len());
    }
}
