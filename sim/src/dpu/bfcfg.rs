//! A stand-in for the DPU installer's `bash -n bf.cfg` check.
//!
//! Accepted: blank lines, comments, `KEY=value` and `export KEY=value`
//! assignments (quotes may span lines), and shell functions
//! (`name() {` ... `}`, `function name {` ... `}`) whose bodies are taken as
//! they are. Quotes and braces must balance.

/// bf.cfg is capped at this size (as DPF does).
pub const BFCFG_MAX: usize = 128 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BfCfgError {
    #[error("bf.cfg is empty")]
    Empty,
    #[error("bf.cfg is {len} bytes, more than {BFCFG_MAX}")]
    TooLarge { len: u64 },
    #[error("bf.cfg is not valid UTF-8")]
    NotUtf8,
    #[error("bf.cfg line {line}: not an assignment or a function: {text:?}")]
    BadLine { line: usize, text: String },
    #[error("bf.cfg line {line}: unmatched '}}'")]
    UnmatchedBrace { line: usize },
    #[error("bf.cfg: unterminated {what} at end of file")]
    Unterminated { what: &'static str },
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// Whether a line (outside any function or quote) may start a statement.
fn statement_ok(t: &str) -> bool {
    if t.is_empty() || t.starts_with('#') || t == "{" || t.starts_with('}') {
        return true;
    }
    let t = t.strip_prefix("export ").map(str::trim_start).unwrap_or(t);
    if let Some((name, _)) = t.split_once('=') {
        return is_name(name);
    }
    // Function headers: `name() {`, `name ()`, `function name {`.
    if let Some(rest) = t.strip_prefix("function ") {
        let name = rest
            .trim()
            .trim_end_matches('{')
            .trim()
            .trim_end_matches("()")
            .trim();
        return is_name(name);
    }
    if let Some((name, rest)) = t.split_once('(') {
        let rest = rest.trim_start();
        return is_name(name.trim()) && rest.starts_with(')') && {
            let after = rest[1..].trim();
            after.is_empty() || after == "{" || after.starts_with("{ ")
        };
    }
    false
}

/// Check a bf.cfg as the installer's `bash -n` would (approximately).
/// Trailing NUL bytes (padding of the boot stream) are ignored.
pub fn check(raw: &[u8]) -> Result<(), BfCfgError> {
    if raw.len() > BFCFG_MAX {
        return Err(BfCfgError::TooLarge {
            len: raw.len() as u64,
        });
    }
    let end = raw.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let text = std::str::from_utf8(&raw[..end]).map_err(|_| BfCfgError::NotUtf8)?;
    if text.trim().is_empty() {
        return Err(BfCfgError::Empty);
    }
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        if quote.is_none() && depth == 0 && !statement_ok(line.trim()) {
            return Err(BfCfgError::BadLine {
                line: lineno,
                text: line.trim().chars().take(80).collect(),
            });
        }
        let mut chars = line.chars().peekable();
        let mut at_word_start = true;
        while let Some(c) = chars.next() {
            match quote {
                Some('\'') => {
                    if c == '\'' {
                        quote = None;
                    }
                }
                Some(q) => {
                    if c == '\\' {
                        chars.next();
                    } else if c == q {
                        quote = None;
                    }
                }
                None => match c {
                    '\\' => {
                        chars.next();
                    }
                    '\'' | '"' => quote = Some(c),
                    '#' if at_word_start => break,
                    '{' => depth += 1,
                    '}' => {
                        depth = depth
                            .checked_sub(1)
                            .ok_or(BfCfgError::UnmatchedBrace { line: lineno })?;
                    }
                    _ => {}
                },
            }
            at_word_start = c.is_whitespace() || c == ';';
        }
    }
    if quote.is_some() {
        return Err(BfCfgError::Unterminated { what: "quote" });
    }
    if depth > 0 {
        return Err(BfCfgError::Unterminated { what: "'{' block" });
    }
    Ok(())
}

/// What hostplane's `bfb_modify_os` (a Flavor's DPU OS settings, rendered by
/// the agent; docs/operations.md "DPU OS settings (bf.cfg)") would write on
/// the DPU OS, decoded from the bf.cfg the DPU received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DpuOsReport {
    /// `grub`: the kernel parameters of the grub drop-in.
    pub grub: Option<Vec<String>>,
    /// `sysctl`: the `key=value` lines of the sysctl drop-in.
    pub sysctl: Option<Vec<String>>,
    /// `config_file` sections, in order.
    pub files: Vec<OsFile>,
    /// `ovs`: the Flavor's script (after hostplane's `set -e` header).
    pub ovs: Option<String>,
    /// `containerd`: the registry endpoint of hosts.toml.
    pub containerd: Option<String>,
    /// `first_boot`: the first-boot script and unit are written and enabled.
    pub first_boot: bool,
}

/// One file a `config_file` section writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsFile {
    pub path: String,
    pub mode: String,
    pub owner: String,
    pub append: bool,
    pub content: Vec<u8>,
}

impl DpuOsReport {
    /// The section names found, in the rendered order (`config_file` once per file).
    pub fn sections(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.grub.is_some() {
            out.push("grub");
        }
        if self.sysctl.is_some() {
            out.push("sysctl");
        }
        out.extend(self.files.iter().map(|_| "config_file"));
        if self.ovs.is_some() {
            out.push("ovs");
        }
        if self.containerd.is_some() {
            out.push("containerd");
        }
        if self.first_boot {
            out.push("first_boot");
        }
        out
    }

    /// One line: `grub=2 sysctl=1 files=2 ovs containerd first_boot`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(g) = &self.grub {
            parts.push(format!("grub={}", g.len()));
        }
        if let Some(s) = &self.sysctl {
            parts.push(format!("sysctl={}", s.len()));
        }
        if !self.files.is_empty() {
            parts.push(format!("files={}", self.files.len()));
        }
        if self.ovs.is_some() {
            parts.push("ovs".into());
        }
        if self.containerd.is_some() {
            parts.push("containerd".into());
        }
        if self.first_boot {
            parts.push("first_boot".into());
        }
        parts.join(" ")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DpuOsError {
    #[error("bf.cfg line {line}: {problem}")]
    Bad { line: usize, problem: String },
}

const SECTION_HEADER: &str = "# hostplane dpu_os section: ";
const WRITE_FN: &str = "hostplane_os_file ";
const GRUB_FILE: &str = "/etc/default/grub.d/99-hostplane.cfg";
const SYSCTL_FILE: &str = "/etc/sysctl.d/99-hostplane.conf";
const OVS_SCRIPT: &str = "/opt/hostplane/ovs.sh";
const CONTAINERD_HOSTS: &str = "/etc/containerd/certs.d/_default/hosts.toml";
const FIRST_BOOT_SCRIPT: &str = "/opt/hostplane/dpu-os-first-boot.sh";
const FIRST_BOOT_UNIT: &str = "/etc/systemd/system/hostplane-dpu-os.service";

/// Split a line into shell words: bare text, `'single'` quoted parts and
/// backslash escapes outside quotes (what the renderer writes; `'\''` for a quote).
fn words(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if let Some(w) = cur.take() {
                    out.push(w);
                }
            }
            '\'' => {
                let w = cur.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(x) => w.push(x),
                        None => return Err("unterminated single quote".into()),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(x) => cur.get_or_insert_with(String::new).push(x),
                None => return Err("a backslash at the end of the line".into()),
            },
            '"' | '$' | '`' | ';' | '&' | '|' | '<' | '>' | '(' | ')' => {
                return Err(format!("{c:?} outside single quotes"));
            }
            x => cur.get_or_insert_with(String::new).push(x),
        }
    }
    if let Some(w) = cur {
        out.push(w);
    }
    Ok(out)
}

/// The DPU OS settings in a bf.cfg: `None` when it has no hostplane
/// `bfb_modify_os`; an error when one is there but a section cannot be
/// decoded (a quote, an argument, base64, or a section's own format).
/// Quoted multi-line values of the `KEY=value` part are not scanned.
pub fn parse_dpu_os(raw: &[u8]) -> Result<Option<DpuOsReport>, DpuOsError> {
    use base64::Engine;
    let end = raw.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let Ok(text) = std::str::from_utf8(&raw[..end]) else {
        return Ok(None);
    };
    let mut lines = text
        .lines()
        .enumerate()
        .skip_while(|(_, l)| *l != "bfb_modify_os()");
    if lines.next().is_none() {
        return Ok(None);
    }
    let mut report = DpuOsReport::default();
    let mut section: Option<&str> = None;
    let mut first_boot_files = 0;
    for (i, line) in lines {
        let n = i + 1;
        let bad = |problem: String| DpuOsError::Bad { line: n, problem };
        if line == "}" {
            break;
        }
        if let Some(name) = line.strip_prefix(SECTION_HEADER) {
            section = Some(name);
            continue;
        }
        let Some(args) = line.strip_prefix(WRITE_FN) else {
            continue;
        };
        let w = words(args).map_err(bad)?;
        let [path, mode, owner, op, b64] = w.as_slice() else {
            return Err(bad(format!("{} arguments, not 5", w.len())));
        };
        let append = match op.as_str() {
            "append" => true,
            "override" => false,
            other => return Err(bad(format!("operation {other:?}"))),
        };
        let content = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| bad(format!("content of {path:?} is not base64: {e}")))?;
        let as_text =
            || String::from_utf8(content.clone()).map_err(|_| bad(format!("{path:?} is not UTF-8")));
        let expect = |want: &str| {
            if path != want {
                Err(bad(format!(
                    "section {} writes {path:?}, not {want}",
                    section.unwrap_or("-")
                )))
            } else {
                Ok(())
            }
        };
        match section {
            Some("grub") => {
                expect(GRUB_FILE)?;
                let t = as_text()?;
                let params = t
                    .lines()
                    .find_map(|l| l.strip_prefix("GRUB_CMDLINE_LINUX=\"$GRUB_CMDLINE_LINUX "))
                    .and_then(|l| l.strip_suffix('"'))
                    .ok_or_else(|| bad("the grub drop-in has no GRUB_CMDLINE_LINUX line".into()))?;
                report.grub = Some(params.split(' ').map(str::to_string).collect());
            }
            Some("sysctl") => {
                expect(SYSCTL_FILE)?;
                let t = as_text()?;
                report.sysctl = Some(
                    t.lines()
                        .filter(|l| !l.starts_with('#'))
                        .map(str::to_string)
                        .collect(),
                );
            }
            Some("config_file") => report.files.push(OsFile {
                path: path.clone(),
                mode: mode.clone(),
                owner: owner.clone(),
                append,
                content,
            }),
            Some("ovs") => {
                expect(OVS_SCRIPT)?;
                let t = as_text()?;
                let (_, script) = t
                    .split_once("\nset -e\n")
                    .ok_or_else(|| bad("the OVS script has no `set -e` header".into()))?;
                report.ovs = Some(script.to_string());
            }
            Some("containerd") => {
                expect(CONTAINERD_HOSTS)?;
                let t = as_text()?;
                let ep = t
                    .lines()
                    .find_map(|l| l.strip_prefix("[host.\"")?.strip_suffix("\"]"))
                    .ok_or_else(|| bad("hosts.toml has no [host.\"...\"] table".into()))?;
                report.containerd = Some(ep.to_string());
            }
            Some("first_boot") => {
                if path != FIRST_BOOT_SCRIPT && path != FIRST_BOOT_UNIT {
                    return Err(bad(format!("section first_boot writes {path:?}")));
                }
                first_boot_files += 1;
            }
            Some(other) => return Err(bad(format!("unknown section {other:?}"))),
            None => return Err(bad("a file written outside any section".into())),
        }
    }
    report.first_boot = first_boot_files == 2;
    Ok(Some(report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hostplane_proto::dpu_os as renderer;
    use hostplane_proto::v1::{
        ConfigFile, ConfigFileOperation, ContainerdConfig, DpuOsConfig, GrubConfig, OvsConfig, SysctlConfig,
    };
    use proptest::prelude::*;

    fn rendered(os: &DpuOsConfig) -> String {
        format!("UPDATE_DPU_OS='yes'\n{}", renderer::bfb_modify_os(os))
    }

    fn every_section() -> DpuOsConfig {
        DpuOsConfig {
            grub: Some(GrubConfig {
                kernel_parameters: vec!["hugepages=3072".into(), "iommu=pt".into()],
            }),
            sysctl: Some(SysctlConfig {
                parameters: vec!["net.ipv4.ip_forward=1".into()],
            }),
            config_files: vec![
                ConfigFile {
                    path: "/etc/it's a file".into(),
                    operation: ConfigFileOperation::Append as i32,
                    raw: "x='$(y)'\n".into(),
                    permissions: "0600".into(),
                    owner: "ubuntu:adm".into(),
                },
                ConfigFile {
                    path: "/etc/b".into(),
                    ..Default::default()
                },
            ],
            ovs: Some(OvsConfig {
                raw_config_script: "ovs-vsctl show\n".into(),
            }),
            containerd_config: Some(ContainerdConfig {
                registry_endpoint: "https://registry.lab:5000".into(),
            }),
        }
    }

    #[test]
    fn every_section_of_hostplanes_hook_is_found_and_decoded() {
        let text = rendered(&every_section());
        assert_eq!(check(text.as_bytes()), Ok(()));
        let r = parse_dpu_os(text.as_bytes()).unwrap().unwrap();
        assert_eq!(
            r.sections(),
            [
                "grub",
                "sysctl",
                "config_file",
                "config_file",
                "ovs",
                "containerd",
                "first_boot"
            ]
        );
        assert_eq!(
            r.grub.as_deref(),
            Some(&["hugepages=3072".to_string(), "iommu=pt".to_string()][..])
        );
        assert_eq!(
            r.sysctl.as_deref(),
            Some(&["net.ipv4.ip_forward=1".to_string()][..])
        );
        assert_eq!(
            r.files[0],
            OsFile {
                path: "/etc/it's a file".into(),
                mode: "0600".into(),
                owner: "ubuntu:adm".into(),
                append: true,
                content: b"x='$(y)'\n".to_vec(),
            }
        );
        assert_eq!(
            (r.files[1].mode.as_str(), r.files[1].owner.as_str()),
            ("0644", "root:root")
        );
        assert!(!r.files[1].append && r.files[1].content.is_empty());
        assert_eq!(r.ovs.as_deref(), Some("ovs-vsctl show\n"));
        assert_eq!(r.containerd.as_deref(), Some("https://registry.lab:5000"));
        assert!(r.first_boot);
        assert_eq!(r.summary(), "grub=2 sysctl=1 files=2 ovs containerd first_boot");
    }

    #[test]
    fn only_some_sections_and_none() {
        let os = DpuOsConfig {
            sysctl: Some(SysctlConfig {
                parameters: vec!["a.b=1".into()],
            }),
            ..Default::default()
        };
        let r = parse_dpu_os(rendered(&os).as_bytes()).unwrap().unwrap();
        assert_eq!(r.sections(), ["sysctl", "first_boot"]);
        assert_eq!(parse_dpu_os(b"A=1\n").unwrap(), None);
        assert_eq!(
            parse_dpu_os(b"bfb_modify_os()\n{\n  echo x\n}\n").unwrap(),
            Some(DpuOsReport::default())
        );
    }

    #[test]
    fn a_damaged_section_is_refused_naming_the_line() {
        let good = rendered(&every_section());
        type Damage<'a> = (&'a dyn Fn(&str) -> String, &'a str);
        let damage: [Damage<'_>; 5] = [
            (&|t| t.replacen("override '", "override '!!", 1), "not base64"),
            (
                &|t| t.replacen("' append '", "' prepend '", 1),
                "operation \"prepend\"",
            ),
            (&|t| t.replacen("'/etc/b' ", "", 1), "4 arguments, not 5"),
            (
                &|t| {
                    t.replacen(
                        "# hostplane dpu_os section: ovs",
                        "# hostplane dpu_os section: tea",
                        1,
                    )
                },
                "unknown section \"tea\"",
            ),
            (
                &|t| t.replacen("# hostplane dpu_os section: grub\n", "", 1),
                "outside any section",
            ),
        ];
        for (f, want) in damage {
            let bad = f(&good);
            assert_ne!(bad, good, "{want}");
            let err = parse_dpu_os(bad.as_bytes()).unwrap_err().to_string();
            assert!(
                err.contains(want) && err.starts_with("bf.cfg line "),
                "{want}: {err}"
            );
        }
    }

    proptest! {
        /// Whatever the Flavor holds, the simulated DPU reads back exactly
        /// what hostplane's renderer embedded: paths, modes, owners and bytes.
        #[test]
        fn reads_back_what_the_renderer_wrote(
            files in proptest::collection::vec(
                ("/[a-z '\"$`;\\{}#-]{1,16}", "[^\x00]{0,80}", "[0-7]{3,4}", proptest::bool::ANY),
                0..4,
            ),
            kernel in proptest::collection::vec("[a-z0-9=,._-]{1,12}", 0..4),
            ovs in "[^\x00]{0,60}",
        ) {
            let os = DpuOsConfig {
                grub: Some(GrubConfig { kernel_parameters: kernel.clone() }),
                config_files: files
                    .iter()
                    .map(|(p, raw, m, app)| ConfigFile {
                        path: p.clone(),
                        raw: raw.clone(),
                        permissions: m.clone(),
                        operation: if *app { ConfigFileOperation::Append } else { ConfigFileOperation::Override } as i32,
                        owner: "root".into(),
                    })
                    .collect(),
                ovs: Some(OvsConfig { raw_config_script: ovs.clone() }),
                ..Default::default()
            };
            if renderer::is_empty(&os) {
                return Ok(());
            }
            let text = rendered(&os);
            prop_assert_eq!(check(text.as_bytes()), Ok(()));
            let r = parse_dpu_os(text.as_bytes()).unwrap().unwrap();
            prop_assert_eq!(r.files.len(), files.len());
            for (got, (p, raw, m, app)) in r.files.iter().zip(&files) {
                prop_assert_eq!(&got.path, p);
                prop_assert_eq!(&got.content, raw.as_bytes());
                prop_assert_eq!(&got.mode, m);
                prop_assert_eq!(got.append, *app);
            }
            prop_assert_eq!(r.grub, (!kernel.is_empty()).then_some(kernel));
            let want_ovs = (!ovs.is_empty()).then(|| if ovs.ends_with('\n') { ovs.clone() } else { format!("{ovs}\n") });
            prop_assert_eq!(r.ovs, want_ovs);
            prop_assert!(r.first_boot);
        }
    }

    #[test]
    fn typical_bf_cfgs_pass() {
        let good = [
            "BFB_ADD_ON=\n",
            "# generated by hostplane\nubuntu_PASSWORD='$1$abc$xyz'\nDHCP_CLASS_ID=\"BF3Client\"\n",
            "export NUM_OF_VFS=16\n\nNVCONFIG_PF0=\"SRIOV_EN=1 NUM_OF_VFS=16\"\n",
            "bfb_modify_os()\n{\n  echo \"hello\" > /mnt/etc/motd\n  if [ -x /bin/x ]; then x; fi\n}\n",
            "function bfb_pre_install {\n  log \"INFO: pre\"\n}\nA=1\n",
            "MULTI='line one\nline two'\nB=2\n",
            "A=1\n\0\0\0\0\0",
        ];
        for cfg in good {
            assert_eq!(check(cfg.as_bytes()), Ok(()), "{cfg:?}");
        }
    }

    #[test]
    fn broken_bf_cfgs_fail_with_the_reason() {
        let cases: [(&[u8], &str); 8] = [
            (b"", "empty"),
            (b"\n  \n", "empty"),
            (b"\xff\xfe", "UTF-8"),
            (b"this is not shell\n", "line 1"),
            (b"A=1\nB='unterminated\n", "quote"),
            (b"f() {\n echo\n", "block"),
            (b"A=1\n}\n", "unmatched"),
            (b"1A=2\n", "line 1"),
        ];
        for (cfg, want) in cases {
            let err = check(cfg).unwrap_err().to_string();
            assert!(err.contains(want), "{cfg:?}: {err}");
        }
        let big = vec![b'#'; BFCFG_MAX + 1];
        assert!(matches!(check(&big), Err(BfCfgError::TooLarge { .. })));
    }
}
