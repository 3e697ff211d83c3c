//! bf.cfg: the shell-style `KEY=value` file the DPU's installer reads (it
//! must pass `bash -n` on the DPU). Pushed raw after the BFB images.
//!
//! Rendered from a Flavor's parameters: one `KEY='value'` line per key,
//! sorted, values single-quoted so that no shell expansion happens, a newline
//! at the end, at most [`MAX_BF_CFG_BYTES`] (DPF's cap). Keys must be shell
//! identifiers. Values that are meant as shell code (e.g. a
//! `bfb_modify_os() { ... }` function body) are out of scope for rendered
//! parameters: they would be quoted into inert strings. Use a raw bf.cfg file
//! for those.
//!
//! An operator's own bf.cfg (CLI `--config`) is checked before the device
//! is touched ([`check`]): it must not be empty, and it may hold only
//! comments, `NAME=value` assignments and functions, with balanced quotes.
//!
//! Values of keys that look secret (their name contains PASSWORD, SECRET,
//! TOKEN or KEY) never appear in `Debug` output or in [`RenderedBfCfg::redacted`].

mod check;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use hostplane_proto::dpu_os;
use hostplane_proto::v1::DpuOsConfig;

/// DPF caps bf.cfg at 128 KiB; the coordinator checks Flavors against the same number.
pub const MAX_BF_CFG_BYTES: usize = hostplane_proto::limits::MAX_BF_CFG_BYTES;

const REDACTED: &str = "<redacted>";

#[derive(Debug, thiserror::Error)]
pub enum BfCfgError {
    #[error(
        "bf.cfg parameter {key:?}: not a shell identifier (letters, digits, _; not starting with a digit)"
    )]
    InvalidKey { key: String },
    #[error("bf.cfg parameter {key}: value contains a NUL byte")]
    NulInValue { key: String },
    #[error("bf.cfg{}: {size} bytes is over the {max}-byte limit", origin_suffix(.origin))]
    TooLarge {
        origin: Option<PathBuf>,
        size: u64,
        max: usize,
    },
    #[error("bf.cfg {path}: not UTF-8 text (invalid byte at offset {offset})")]
    NotText { path: PathBuf, offset: usize },
    #[error("bf.cfg {path}: contains a NUL byte at offset {offset}")]
    NulInFile { path: PathBuf, offset: usize },
    #[error("reading bf.cfg {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("bf.cfg{} is empty (leave the bf.cfg out to push none)", origin_suffix(.origin))]
    Empty { origin: Option<PathBuf> },
    #[error("bf.cfg{} line {line}: {problem}", origin_suffix(.origin))]
    Syntax {
        origin: Option<PathBuf>,
        line: usize,
        problem: String,
    },
}

/// The shape check of an operator's bf.cfg text (see [`check`]).
pub fn check_text(origin: Option<&Path>, text: &str) -> Result<(), BfCfgError> {
    if text.trim().is_empty() {
        return Err(BfCfgError::Empty {
            origin: origin.map(Path::to_path_buf),
        });
    }
    check::check(text).map_err(|e| BfCfgError::Syntax {
        origin: origin.map(Path::to_path_buf),
        line: e.line,
        problem: e.problem,
    })
}

fn origin_suffix(origin: &Option<PathBuf>) -> String {
    origin
        .as_ref()
        .map(|p| format!(" {}", p.display()))
        .unwrap_or_default()
}

/// What to append after the BFB.
#[derive(Clone, Default)]
pub enum BfCfg {
    /// No bf.cfg: the installer uses its defaults.
    #[default]
    None,
    /// Parameters from a Flavor, rendered as `KEY='value'` lines.
    Params(BTreeMap<String, String>),
    /// A whole bf.cfg given by an operator (CLI `-c/--config`), checked by [`load_raw`].
    Raw(String),
    /// A Flavor's parameters and its DPU OS settings: the `KEY='value'` lines,
    /// then the `bfb_modify_os` hook of [`hostplane_proto::dpu_os`].
    Flavor {
        params: BTreeMap<String, String>,
        os: DpuOsConfig,
    },
}

impl From<HashMap<String, String>> for BfCfg {
    fn from(map: HashMap<String, String>) -> BfCfg {
        if map.is_empty() {
            BfCfg::None
        } else {
            BfCfg::Params(map.into_iter().collect())
        }
    }
}

impl BfCfg {
    /// What a FlashBfb command asks for: [`BfCfg::Flavor`] when the Flavor has
    /// DPU OS settings, else as [`From<HashMap>`].
    pub fn from_flavor(params: HashMap<String, String>, os: Option<DpuOsConfig>) -> BfCfg {
        match os {
            Some(os) if !dpu_os::is_empty(&os) => BfCfg::Flavor {
                params: params.into_iter().collect(),
                os,
            },
            _ => BfCfg::from(params),
        }
    }
}

/// The DPU OS settings without any content: section names, paths, sizes.
struct OsSummary<'a>(&'a DpuOsConfig);

impl fmt::Debug for OsSummary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let os = self.0;
        let mut d = f.debug_struct("DpuOs");
        if let Some(g) = &os.grub {
            d.field("kernel_parameters", &g.kernel_parameters.len());
        }
        if let Some(s) = &os.sysctl {
            d.field("sysctl", &s.parameters.len());
        }
        let files: Vec<String> = os
            .config_files
            .iter()
            .map(|c| format!("{} ({} bytes)", c.path, c.raw.len()))
            .collect();
        d.field("config_files", &files);
        if let Some(o) = &os.ovs {
            d.field("ovs_script_bytes", &o.raw_config_script.len());
        }
        if let Some(c) = &os.containerd_config {
            d.field("containerd_registry", &c.registry_endpoint);
        }
        d.finish()
    }
}

impl fmt::Debug for BfCfg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BfCfg::None => f.write_str("BfCfg::None"),
            BfCfg::Params(p) => f
                .debug_map()
                .entries(
                    p.iter()
                        .map(|(k, v)| (k, if is_secret_key(k) { REDACTED } else { v.as_str() })),
                )
                .finish(),
            BfCfg::Raw(text) => write!(f, "BfCfg::Raw({:?})", redact_text(text)),
            BfCfg::Flavor { params, os } => f
                .debug_struct("BfCfg::Flavor")
                .field("params", &BfCfg::Params(params.clone()))
                .field("os", &OsSummary(os))
                .finish(),
        }
    }
}

impl BfCfg {
    /// The bytes to push, or `None` when there is no bf.cfg.
    pub fn render(&self) -> Result<Option<RenderedBfCfg>, BfCfgError> {
        match self {
            BfCfg::None => Ok(None),
            BfCfg::Params(p) if p.is_empty() => Ok(None),
            BfCfg::Params(p) => render(p).map(Some),
            BfCfg::Flavor { params, os } => render_with_os(params, os).map(Some),
            BfCfg::Raw(text) => {
                check_size(None, text.len())?;
                if let Some(offset) = text.find('\0') {
                    return Err(BfCfgError::NulInFile {
                        path: PathBuf::from("<raw>"),
                        offset,
                    });
                }
                check_text(None, text)?;
                Ok(Some(RenderedBfCfg { text: text.clone() }))
            }
        }
    }
}

/// A rendered bf.cfg. `Debug` and [`RenderedBfCfg::redacted`] hide secret values.
#[derive(Clone, PartialEq, Eq)]
pub struct RenderedBfCfg {
    text: String,
}

impl RenderedBfCfg {
    /// The real bytes, for the device only. Never log this.
    pub fn as_bytes(&self) -> &[u8] {
        self.text.as_bytes()
    }

    pub fn len(&self) -> usize {
        self.text.len()
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// The text with the values of secret-looking keys replaced, for logs.
    pub fn redacted(&self) -> String {
        redact_text(&self.text)
    }
}

impl fmt::Debug for RenderedBfCfg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RenderedBfCfg")
            .field("text", &self.redacted())
            .finish()
    }
}

/// True for key names whose values must never be logged.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_uppercase();
    ["PASSWORD", "SECRET", "TOKEN", "KEY"]
        .iter()
        .any(|s| k.contains(s))
}

/// A POSIX shell identifier: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_shell_identifier(key: &str) -> bool {
    let mut bytes = key.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Single-quote `value` for a POSIX shell: `'` becomes `'\''`.
pub fn shell_quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// Render parameters as sorted `KEY='value'` lines.
pub fn render(params: &BTreeMap<String, String>) -> Result<RenderedBfCfg, BfCfgError> {
    let mut text = String::new();
    for (key, value) in params {
        if !is_shell_identifier(key) {
            return Err(BfCfgError::InvalidKey { key: key.clone() });
        }
        if value.contains('\0') {
            return Err(BfCfgError::NulInValue { key: key.clone() });
        }
        text.push_str(key);
        text.push('=');
        text.push_str(&shell_quote(value));
        text.push('\n');
        check_size(None, text.len())?;
    }
    Ok(RenderedBfCfg { text })
}

/// Render parameters and DPU OS settings into one bf.cfg: the `KEY='value'`
/// lines, then the `bfb_modify_os` hook ([`hostplane_proto::dpu_os`]). The
/// result is checked as an operator's file would be ([`check_text`]).
pub fn render_with_os(
    params: &BTreeMap<String, String>,
    os: &DpuOsConfig,
) -> Result<RenderedBfCfg, BfCfgError> {
    let mut text = render(params)?.text;
    text.push_str(&dpu_os::bfb_modify_os(os));
    check_size(None, text.len())?;
    if let Some(offset) = text.find('\0') {
        return Err(BfCfgError::NulInFile {
            path: PathBuf::from("<rendered>"),
            offset,
        });
    }
    if !text.is_empty() {
        check_text(None, &text)?;
    }
    Ok(RenderedBfCfg { text })
}

fn check_size(origin: Option<&Path>, size: usize) -> Result<(), BfCfgError> {
    if size > MAX_BF_CFG_BYTES {
        return Err(BfCfgError::TooLarge {
            origin: origin.map(Path::to_path_buf),
            size: size as u64,
            max: MAX_BF_CFG_BYTES,
        });
    }
    Ok(())
}

/// Read an operator's bf.cfg file: at most [`MAX_BF_CFG_BYTES`], UTF-8 text
/// without NUL bytes, not empty, passing [`check_text`]. Blocking-free
/// (tokio fs).
pub async fn load_raw(path: &Path) -> Result<BfCfg, BfCfgError> {
    let io = |source| BfCfgError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = tokio::fs::metadata(path).await.map_err(io)?;
    if meta.len() > MAX_BF_CFG_BYTES as u64 {
        return Err(BfCfgError::TooLarge {
            origin: Some(path.to_path_buf()),
            size: meta.len(),
            max: MAX_BF_CFG_BYTES,
        });
    }
    let bytes = tokio::fs::read(path).await.map_err(io)?;
    check_size(Some(path), bytes.len())?;
    let text = String::from_utf8(bytes).map_err(|e| BfCfgError::NotText {
        path: path.to_path_buf(),
        offset: e.utf8_error().valid_up_to(),
    })?;
    if let Some(offset) = text.find('\0') {
        return Err(BfCfgError::NulInFile {
            path: path.to_path_buf(),
            offset,
        });
    }
    check_text(Some(path), &text)?;
    bash_n(path, &text).await?;
    Ok(BfCfg::Raw(text))
}

/// The installer's own check, where this host has bash: `bash -n` on the
/// text (no code runs). Without bash, [`check_text`] stands alone.
async fn bash_n(path: &Path, text: &str) -> Result<(), BfCfgError> {
    use tokio::io::AsyncWriteExt;
    let spawned = tokio::process::Command::new("bash")
        .arg("-n")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "bash is not available; bf.cfg gets the built-in check only");
            return Ok(());
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A failed write shows up as bash's exit status below.
        let _ = stdin.write_all(text.as_bytes()).await;
    }
    let out = match tokio::time::timeout(std::time::Duration::from_secs(10), child.wait_with_output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "running bash -n on bf.cfg failed; built-in check only");
            return Ok(());
        }
        Err(_) => {
            tracing::warn!("bash -n on bf.cfg took over 10s; built-in check only");
            return Ok(());
        }
    };
    if out.status.success() {
        return Ok(());
    }
    // `bash: line 3: syntax error near unexpected token `;'`
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first = stderr.lines().next().unwrap_or("").trim();
    let rest = first.strip_prefix("bash: ").unwrap_or(first);
    let (line, problem) = match rest
        .strip_prefix("line ")
        .and_then(|r| r.split_once(": "))
        .and_then(|(n, p)| n.parse::<usize>().ok().map(|n| (n, p)))
    {
        Some((n, p)) => (n, p.to_string()),
        None => (0, rest.to_string()),
    };
    Err(BfCfgError::Syntax {
        origin: Some(path.to_path_buf()),
        line,
        problem: format!("bash -n (the installer's check) refuses it: {problem}"),
    })
}

/// Replace the value of every `KEY=...` line whose key looks secret. A
/// quoted value that spans lines is redacted up to its closing quote.
fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut lines = text.split_inclusive('\n');
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if let Some(cut) = os_file_content(trimmed) {
            let indent = &line[..line.len() - trimmed.len()];
            let shown = &trimmed[..cut];
            let b64 = trimmed[cut..].trim_end().trim_matches('\'');
            out.push_str(&format!("{indent}{shown}'<{} bytes of base64>'\n", b64.len()));
            continue;
        }
        let assignment = trimmed.strip_prefix("export ").unwrap_or(trimmed);
        let Some((key, value)) = assignment.split_once('=') else {
            out.push_str(line);
            continue;
        };
        if !is_shell_identifier(key) || !is_secret_key(key) {
            out.push_str(line);
            continue;
        }
        let indent = &line[..line.len() - trimmed.len()];
        let export = if assignment.len() != trimmed.len() {
            "export "
        } else {
            ""
        };
        out.push_str(&format!("{indent}{export}{key}={REDACTED}\n"));
        // Skip continuation lines of a multi-line single- or double-quoted value.
        if let Some(q @ ('\'' | '"')) = value.chars().next() {
            let mut open = still_quoted(&value[1..], q, true);
            while open {
                match lines.next() {
                    Some(next) => open = still_quoted(next, q, true),
                    None => break,
                }
            }
        }
    }
    out
}

/// For a `hostplane_os_file ... 'BASE64'` line (a DPU OS file, whose content
/// may be secret), the offset of its last word, the content.
fn os_file_content(line: &str) -> Option<usize> {
    let rest = line.strip_prefix(dpu_os::WRITE_FN)?.strip_prefix(' ')?;
    let body = line.trim_end();
    if !body.ends_with('\'') || rest.trim_end().len() < 2 {
        return None;
    }
    let start = body[..body.len() - 1].rfind('\'')?;
    let b64 = &body[start + 1..body.len() - 1];
    b64.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
        .then_some(start)
}

/// Scan `s` starting inside (`in_quote`) or outside a `q`-quoted string;
/// true when it ends still inside. Backslash escapes are honoured outside
/// quotes, and inside double quotes.
fn still_quoted(s: &str, q: char, mut in_quote: bool) -> bool {
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' && (!in_quote || q == '"') {
            chars.next();
        } else if c == q {
            in_quote = !in_quote;
        }
    }
    in_quote
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn renders_sorted_quoted_lines() {
        let r = render(&params(&[
            ("ubuntu_PASSWORD", "$1$abc$xyz"),
            ("BFB_ADD_ON", ""),
            ("DHCP_CLASS_ID", "BF2Client it's"),
        ]))
        .unwrap();
        let text = std::str::from_utf8(r.as_bytes()).unwrap();
        assert_eq!(
            text,
            "BFB_ADD_ON=''\nDHCP_CLASS_ID='BF2Client it'\\''s'\nubuntu_PASSWORD='$1$abc$xyz'\n"
        );
    }

    #[test]
    fn quote_table() {
        for (input, want) in [
            ("", "''"),
            ("plain", "'plain'"),
            ("a'b", r"'a'\''b'"),
            ("$(reboot) `x` \\ \"", "'$(reboot) `x` \\ \"'"),
            ("two\nlines", "'two\nlines'"),
        ] {
            assert_eq!(shell_quote(input), want, "{input:?}");
        }
    }

    #[test]
    fn rejects_bad_keys_naming_them() {
        for key in ["1ABC", "A-B", "A B", "", "A=B", "a;reboot", "ÄÖ"] {
            let err = render(&params(&[(key, "v")])).unwrap_err();
            assert!(matches!(err, BfCfgError::InvalidKey { .. }), "{key:?}: {err}");
            assert!(err.to_string().contains(&format!("{key:?}")), "{err}");
        }
        for key in ["A", "_x", "NVCONFIG_PF0_X1", "ubuntu_PASSWORD"] {
            assert!(is_shell_identifier(key), "{key}");
        }
        let err = render(&params(&[("K", "a\0b")])).unwrap_err();
        assert!(matches!(err, BfCfgError::NulInValue { .. }), "{err}");
    }

    #[test]
    fn caps_size() {
        let big = "x".repeat(MAX_BF_CFG_BYTES);
        let err = render(&params(&[("BIG", &big)])).unwrap_err();
        assert!(matches!(err, BfCfgError::TooLarge { .. }), "{err}");
        let ok = "x".repeat(MAX_BF_CFG_BYTES - "OK=''\n".len());
        assert_eq!(render(&params(&[("OK", &ok)])).unwrap().len(), MAX_BF_CFG_BYTES);
        let err = BfCfg::Raw("y".repeat(MAX_BF_CFG_BYTES + 1)).render().unwrap_err();
        assert!(matches!(err, BfCfgError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn secrets_never_in_debug_or_redacted() {
        let cfg = BfCfg::Params(params(&[
            ("ubuntu_PASSWORD", "hunter2"),
            ("BMC_TOKEN", "tok-123"),
            ("SSH_KEY", "ssh-ed25519 AAAA"),
            ("client_secret", "s3cr3t"),
            ("HOSTNAME", "dpu-7"),
        ]));
        let dbg = format!("{cfg:?}");
        let rendered = cfg.render().unwrap().unwrap();
        let red = rendered.redacted();
        let rdbg = format!("{rendered:?}");
        for shown in [&dbg, &red, &rdbg] {
            for secret in ["hunter2", "tok-123", "AAAA", "s3cr3t"] {
                assert!(!shown.contains(secret), "{secret} leaked in {shown}");
            }
            assert!(shown.contains("dpu-7"), "{shown}");
        }
        assert!(red.contains("ubuntu_PASSWORD=<redacted>\n"), "{red}");
        // The real bytes still carry the secret.
        assert!(
            std::str::from_utf8(rendered.as_bytes())
                .unwrap()
                .contains("'hunter2'")
        );
    }

    #[test]
    fn redacts_raw_files_including_multiline_values() {
        let raw = "HOST=a\nexport ubuntu_PASSWORD='line1\nline2 it'\\''s\nline3'\nAFTER=b\n  API_TOKEN=\"x\\\"y\"\n\
                   bfb_modify_os() {\n  echo hi\n}\n";
        let red = BfCfg::Raw(raw.to_string()).render().unwrap().unwrap().redacted();
        assert_eq!(
            red,
            "HOST=a\nexport ubuntu_PASSWORD=<redacted>\nAFTER=b\n  API_TOKEN=<redacted>\n\
             bfb_modify_os() {\n  echo hi\n}\n"
        );
        let dbg = format!("{:?}", BfCfg::Raw(raw.to_string()));
        assert!(!dbg.contains("line2") && dbg.contains("AFTER=b"), "{dbg}");
    }

    #[test]
    fn rendered_file_is_valid_shell_that_round_trips_values() {
        let Ok(out) = std::process::Command::new("bash").arg("--version").output() else {
            eprintln!("skipping: no bash on this host");
            return;
        };
        assert!(out.status.success());
        let values = params(&[
            ("A", "it's $(echo pwned) `id` \\n \"q\""),
            ("B", "multi\nline"),
            ("C", ""),
        ]);
        let r = render(&values).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bf.cfg");
        std::fs::write(&path, r.as_bytes()).unwrap();
        let check = std::process::Command::new("bash")
            .arg("-n")
            .arg(&path)
            .status()
            .unwrap();
        assert!(check.success(), "bash -n failed");
        for (k, v) in &values {
            let out = std::process::Command::new("bash")
                .arg("-c")
                .arg(format!("source \"$0\"; printf %s \"${k}\""))
                .arg(&path)
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), *v, "{k}");
        }
    }

    #[tokio::test]
    async fn load_raw_checks_text_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.cfg");
        std::fs::write(&good, "A=1\n").unwrap();
        assert!(matches!(load_raw(&good).await.unwrap(), BfCfg::Raw(t) if t == "A=1\n"));

        let bin = dir.path().join("bin.cfg");
        std::fs::write(&bin, b"A=1\n\xff\xfe").unwrap();
        let err = load_raw(&bin).await.unwrap_err();
        assert!(matches!(err, BfCfgError::NotText { offset: 4, .. }), "{err}");
        assert!(err.to_string().contains("bin.cfg"), "{err}");

        let nul = dir.path().join("nul.cfg");
        std::fs::write(&nul, b"A=1\0").unwrap();
        assert!(matches!(
            load_raw(&nul).await.unwrap_err(),
            BfCfgError::NulInFile { offset: 3, .. }
        ));

        let big = dir.path().join("big.cfg");
        std::fs::write(&big, vec![b'x'; MAX_BF_CFG_BYTES + 1]).unwrap();
        let err = load_raw(&big).await.unwrap_err();
        assert!(
            matches!(err, BfCfgError::TooLarge { .. }) && err.to_string().contains("big.cfg"),
            "{err}"
        );

        let err = load_raw(&dir.path().join("absent")).await.unwrap_err();
        assert!(
            matches!(err, BfCfgError::Io { .. }) && err.to_string().contains("absent"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn load_raw_refuses_empty_and_malformed_files_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bf.cfg");
        for (text, needle) in [
            ("", "is empty"),
            ("  \n\n", "is empty"),
            ("A=1\nB='open\n", "line 2: unterminated single quote"),
            ("A=1\nrm -rf /\n", "line 2: not an assignment"),
        ] {
            std::fs::write(&p, text).unwrap();
            let err = load_raw(&p).await.unwrap_err().to_string();
            assert!(err.contains(needle) && err.contains("bf.cfg"), "{text:?}: {err}");
        }
        // Balanced, but not shell: the built-in check lets it through and,
        // where bash exists, `bash -n` refuses it naming its line.
        std::fs::write(&p, "A=1\nf() {\n  if true; then echo x\n}\n").unwrap();
        match std::process::Command::new("bash").arg("--version").output() {
            Ok(_) => {
                let err = load_raw(&p).await.unwrap_err().to_string();
                assert!(err.contains("bash -n") && err.contains(" line "), "{err}");
            }
            Err(_) => eprintln!("skipping the bash -n case: no bash on this host"),
        }
        std::fs::write(&p, "A=1\nf() {\n  if true; then echo x; fi\n}\n").unwrap();
        assert!(matches!(load_raw(&p).await.unwrap(), BfCfg::Raw(_)));
        assert!(matches!(
            BfCfg::Raw(String::new()).render(),
            Err(BfCfgError::Empty { .. })
        ));
    }

    #[test]
    fn from_map_and_empty() {
        assert!(matches!(BfCfg::from(HashMap::new()), BfCfg::None));
        assert!(BfCfg::None.render().unwrap().is_none());
        let m: HashMap<String, String> = [("Z".to_string(), "1".to_string())].into();
        assert!(matches!(BfCfg::from(m), BfCfg::Params(p) if p.len() == 1));
    }

    use hostplane_proto::v1::{
        ConfigFile, ConfigFileOperation, ContainerdConfig, GrubConfig, OvsConfig, SysctlConfig,
    };

    fn has_bash() -> bool {
        std::process::Command::new("bash")
            .arg("--version")
            .output()
            .is_ok()
    }

    fn file(path: &str, op: ConfigFileOperation, raw: &str, mode: &str, owner: &str) -> ConfigFile {
        ConfigFile {
            path: path.into(),
            operation: op as i32,
            raw: raw.into(),
            permissions: mode.into(),
            owner: owner.into(),
        }
    }

    fn every_section() -> DpuOsConfig {
        DpuOsConfig {
            grub: Some(GrubConfig {
                kernel_parameters: vec!["hugepages=3072".into(), "iommu=pt".into()],
            }),
            sysctl: Some(SysctlConfig {
                parameters: vec!["net.ipv4.ip_forward=1".into(), "vm.swappiness=10".into()],
            }),
            config_files: vec![
                file(
                    "/etc/hostplane test/it's.conf",
                    ConfigFileOperation::Override,
                    "token='$(reboot)' `id`\nline2\n",
                    "0600",
                    "root:root",
                ),
                file("/etc/motd", ConfigFileOperation::Append, "welcome\n", "", ""),
            ],
            ovs: Some(OvsConfig {
                raw_config_script: "ovs-vsctl set Open_vSwitch . other_config:hw-offload=true".into(),
            }),
            containerd_config: Some(ContainerdConfig {
                registry_endpoint: "https://registry.lab:5000".into(),
            }),
        }
    }

    fn bash_n(text: &str) -> Result<(), String> {
        use std::io::Write;
        let mut child = std::process::Command::new("bash")
            .arg("-n")
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    #[test]
    fn flavor_with_dpu_os_renders_params_then_the_hook() {
        let cfg = BfCfg::from_flavor(
            [("UPDATE_DPU_OS".to_string(), "yes".to_string())].into(),
            Some(every_section()),
        );
        assert!(matches!(cfg, BfCfg::Flavor { .. }));
        let r = cfg.render().unwrap().unwrap();
        let text = std::str::from_utf8(r.as_bytes()).unwrap();
        assert!(text.starts_with("UPDATE_DPU_OS='yes'\n\n# hostplane:"), "{text}");
        assert!(text.contains("\nbfb_modify_os()\n{\n"), "{text}");
        check::check(text).unwrap();
        // No DPU OS settings: the same as the parameters alone.
        let plain = BfCfg::from_flavor(
            [("A".to_string(), "1".to_string())].into(),
            Some(DpuOsConfig::default()),
        );
        assert!(matches!(plain, BfCfg::Params(_)));
        assert!(matches!(BfCfg::from_flavor(HashMap::new(), None), BfCfg::None));
        // Only DPU OS settings: a bf.cfg with the hook alone.
        let only = BfCfg::from_flavor(HashMap::new(), Some(every_section()))
            .render()
            .unwrap()
            .unwrap();
        assert!(
            std::str::from_utf8(only.as_bytes())
                .unwrap()
                .starts_with("\n# hostplane:")
        );
    }

    #[test]
    fn dpu_os_contents_stay_out_of_debug_and_redacted_output() {
        let mut os = every_section();
        os.config_files[0].raw = "password=hunter2\n".into();
        let cfg = BfCfg::from_flavor(
            [("ubuntu_PASSWORD".to_string(), "s3cr3t".to_string())].into(),
            Some(os),
        );
        let dbg = format!("{cfg:?}");
        let r = cfg.render().unwrap().unwrap();
        let real = std::str::from_utf8(r.as_bytes()).unwrap().to_string();
        let line = real.lines().find(|l| l.contains("it'\\''s.conf")).unwrap();
        let b64 = line.rsplit('\'').nth(1).unwrap().to_string();
        assert!(b64.len() > 16, "{line}");
        for shown in [dbg.clone(), r.redacted(), format!("{r:?}")] {
            assert!(!shown.contains("hunter2") && !shown.contains("s3cr3t"), "{shown}");
            assert!(!shown.contains(&b64), "base64 content leaked: {shown}");
        }
        assert!(dbg.contains("/etc/motd (8 bytes)"), "{dbg}");
        let red = r.redacted();
        assert!(
            red.contains("hostplane_os_file '/etc/motd' '0644' 'root:root' append '<12 bytes of base64>'"),
            "{red}"
        );
    }

    #[test]
    fn over_size_dpu_os_is_refused_naming_the_size() {
        let mut os = every_section();
        os.config_files[0].raw = "x".repeat(MAX_BF_CFG_BYTES);
        let err = BfCfg::from_flavor(HashMap::new(), Some(os.clone()))
            .render()
            .unwrap_err();
        assert!(matches!(err, BfCfgError::TooLarge { .. }), "{err}");
        let want = hostplane_proto::dpu_os::rendered_len(&BTreeMap::new(), Some(&os));
        assert!(err.to_string().contains(&format!("{want} bytes")), "{err}");
    }

    /// The hook run for real by bash, in a mount namespace of its own with a
    /// tmpfs on /mnt (root only): each file has the Flavor's bytes and mode.
    #[test]
    fn the_hook_writes_each_file_under_mnt() {
        if !has_bash() || !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipping: needs bash and root (a mount namespace)");
            return;
        }
        let os = every_section();
        let r = BfCfg::from_flavor([("A".into(), "1".into())].into(), Some(os.clone()))
            .render()
            .unwrap()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("bf.cfg");
        std::fs::write(&cfg, r.as_bytes()).unwrap();
        let out_dir = dir.path().join("out");
        std::fs::create_dir(&out_dir).unwrap();
        let script = format!(
            "set -e; mount -t tmpfs hp /mnt; mkdir -p /mnt/etc; printf 'hello\\n' > /mnt/etc/motd; \
             source {cfg}; bfb_modify_os; cp -a /mnt/. {out}/",
            cfg = cfg.display(),
            out = out_dir.display()
        );
        let st = std::process::Command::new("unshare")
            .args(["-m", "--propagation", "private", "bash", "-c", &script])
            .output()
            .unwrap();
        assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
        let read = |p: &str| std::fs::read_to_string(out_dir.join(p.trim_start_matches('/'))).unwrap();
        let mode = |p: &str| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(out_dir.join(p.trim_start_matches('/')))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(read("/etc/hostplane test/it's.conf"), os.config_files[0].raw);
        assert_eq!(mode("/etc/hostplane test/it's.conf"), 0o600);
        assert_eq!(
            read("/etc/motd"),
            "hello\nwelcome\n",
            "append keeps what was there"
        );
        assert_eq!(mode("/etc/motd"), 0o644);
        assert_eq!(
            read(dpu_os::GRUB_FILE),
            dpu_os::grub_file(&os.grub.as_ref().unwrap().kernel_parameters)
        );
        assert_eq!(
            read(dpu_os::SYSCTL_FILE),
            "# hostplane: the Flavor's sysctl settings\nnet.ipv4.ip_forward=1\nvm.swappiness=10\n"
        );
        assert!(read(dpu_os::OVS_SCRIPT).ends_with("other_config:hw-offload=true\n"));
        assert_eq!(mode(dpu_os::OVS_SCRIPT), 0o755);
        assert!(read(dpu_os::CONTAINERD_HOSTS).contains("[host.\"https://registry.lab:5000\"]"));
        assert_eq!(read(dpu_os::FIRST_BOOT_SCRIPT), dpu_os::first_boot_script(&os));
        let link = out_dir.join("etc/systemd/system/multi-user.target.wants/hostplane-dpu-os.service");
        assert_eq!(
            std::fs::read_link(link).unwrap(),
            Path::new(dpu_os::FIRST_BOOT_UNIT)
        );
        // The first-boot script itself is shell.
        bash_n(&read(dpu_os::FIRST_BOOT_SCRIPT)).unwrap();
    }

    /// A config file the hook cannot write (its parent is a file) stops the
    /// hook with an error naming it, before the files after it and the
    /// first-boot unit; a setuid mode survives the chown (chown runs first).
    #[test]
    fn a_file_that_cannot_be_written_stops_the_hook_and_setuid_survives() {
        if !has_bash() || !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipping: needs bash and root (a mount namespace)");
            return;
        }
        let os = DpuOsConfig {
            config_files: vec![
                file(
                    "/usr/local/bin/tool",
                    ConfigFileOperation::Override,
                    "#!/bin/sh\n",
                    "4755",
                    "root:root",
                ),
                file("/etc/motd/x", ConfigFileOperation::Override, "nope\n", "", ""),
                file(
                    "/etc/after.conf",
                    ConfigFileOperation::Override,
                    "later\n",
                    "",
                    "",
                ),
            ],
            ..Default::default()
        };
        let r = BfCfg::from_flavor(HashMap::new(), Some(os))
            .render()
            .unwrap()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("bf.cfg");
        std::fs::write(&cfg, r.as_bytes()).unwrap();
        let out_dir = dir.path().join("out");
        std::fs::create_dir(&out_dir).unwrap();
        let script = format!(
            "set -e; mount -t tmpfs hp /mnt; mkdir -p /mnt/etc; printf 'hello\\n' > /mnt/etc/motd; \
             source {cfg}; if bfb_modify_os; then echo HOOK=ok; else echo HOOK=failed; fi; cp -a /mnt/. {out}/",
            cfg = cfg.display(),
            out = out_dir.display()
        );
        let st = std::process::Command::new("unshare")
            .args(["-m", "--propagation", "private", "bash", "-c", &script])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&st.stdout);
        let stderr = String::from_utf8_lossy(&st.stderr);
        assert!(st.status.success(), "{stderr}");
        assert!(stdout.contains("HOOK=failed"), "{stdout}");
        assert!(
            stderr.contains("cannot write /etc/motd/x on the DPU OS"),
            "{stderr}"
        );
        use std::os::unix::fs::PermissionsExt;
        let tool = std::fs::metadata(out_dir.join("usr/local/bin/tool")).unwrap();
        assert_eq!(tool.permissions().mode() & 0o7777, 0o4755);
        assert!(!out_dir.join("etc/after.conf").exists());
        assert!(
            !out_dir
                .join(dpu_os::FIRST_BOOT_UNIT.trim_start_matches('/'))
                .exists()
        );
    }

    fn any_os() -> impl proptest::strategy::Strategy<Value = DpuOsConfig> {
        use proptest::prelude::*;
        // Paths and contents with every character shell cares about; contents any text but NUL.
        let path = "/[a-z '\"$`;&|<>(){}#\\*?!\n-]{1,20}(/[a-z '$`;.]{1,10}){0,2}";
        let content = "[^\x00]{0,200}";
        let cfile =
            (path, content, "0[0-7]{3}", proptest::bool::ANY).prop_map(|(p, raw, mode, app)| ConfigFile {
                path: p,
                operation: if app {
                    ConfigFileOperation::Append
                } else {
                    ConfigFileOperation::Override
                } as i32,
                raw,
                permissions: mode,
                owner: "root:root".into(),
            });
        (
            proptest::collection::vec("[^\\x00\\s]{1,30}", 0..4),
            proptest::collection::vec("[a-z.]{1,10}=[^\x00\n]{0,20}", 0..4),
            proptest::collection::vec(cfile, 0..4),
            content,
            "[^\x00]{0,40}",
        )
            .prop_map(|(k, sys, files, ovs, reg)| DpuOsConfig {
                grub: Some(GrubConfig { kernel_parameters: k }),
                sysctl: Some(SysctlConfig { parameters: sys }),
                config_files: files,
                ovs: Some(OvsConfig {
                    raw_config_script: ovs,
                }),
                containerd_config: Some(ContainerdConfig {
                    registry_endpoint: reg,
                }),
            })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Whatever the Flavor holds, the rendered bf.cfg passes the agent's
        /// own check and real `bash -n`, its size is the coordinator's
        /// formula, and sourcing it runs nothing and defines the hook.
        #[test]
        fn any_dpu_os_renders_a_file_bash_accepts(
            params in proptest::collection::btree_map("[A-Za-z_][A-Za-z0-9_]{0,8}", "[^\\x00]{0,20}", 0..4),
            os in any_os(),
        ) {
            if dpu_os::is_empty(&os) {
                return Ok(());
            }
            let r = render_with_os(&params, &os).unwrap();
            let text = std::str::from_utf8(r.as_bytes()).unwrap();
            proptest::prop_assert_eq!(r.len(), dpu_os::rendered_len(&params, Some(&os)));
            proptest::prop_assert!(check::check(text).is_ok(), "{:?}", check::check(text));
            if has_bash() {
                proptest::prop_assert!(bash_n(text).is_ok(), "{:?}", bash_n(text));
                let out = std::process::Command::new("bash")
                    .arg("-c")
                    .arg("source /dev/stdin; declare -F bfb_modify_os hostplane_os_file")
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .and_then(|mut c| {
                        use std::io::Write;
                        c.stdin.take().unwrap().write_all(text.as_bytes())?;
                        c.wait_with_output()
                    })
                    .unwrap();
                proptest::prop_assert_eq!(
                    String::from_utf8_lossy(&out.stdout).into_owned(),
                    "bfb_modify_os\nhostplane_os_file\n"
                );
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(16))]
        /// The hook run for real (root: a private mount namespace with a
        /// tmpfs on /mnt) writes every generated file with exactly its
        /// bytes and mode, whatever its path and content hold.
        #[test]
        fn the_hook_writes_generated_files_byte_for_byte(
            files in proptest::collection::vec(
                ("[a-z '\"$`;&|<>(){}#\\*?!-]{1,12}", "[^\x00]{0,120}", "0[0-7][0-7][0-7]"),
                1..5,
            ),
        ) {
            if !has_bash() || !nix::unistd::Uid::effective().is_root() {
                return Ok(());
            }
            let os = DpuOsConfig {
                config_files: files
                    .iter()
                    .enumerate()
                    .map(|(i, (name, raw, mode))| {
                        file(&format!("/etc/hp{i}/{name}"), ConfigFileOperation::Override, raw, mode, "root")
                    })
                    .collect(),
                ..Default::default()
            };
            let r = render_with_os(&BTreeMap::new(), &os).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let cfg = dir.path().join("bf.cfg");
            std::fs::write(&cfg, r.as_bytes()).unwrap();
            let out_dir = dir.path().join("out");
            std::fs::create_dir(&out_dir).unwrap();
            let script = format!(
                "set -e; mount -t tmpfs hp /mnt; source {}; bfb_modify_os; cp -a /mnt/. {}/",
                cfg.display(),
                out_dir.display()
            );
            let st = std::process::Command::new("unshare")
                .args(["-m", "--propagation", "private", "bash", "-c", &script])
                .output()
                .unwrap();
            proptest::prop_assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
            for f in &os.config_files {
                use std::os::unix::fs::PermissionsExt;
                let p = out_dir.join(f.path.trim_start_matches('/'));
                proptest::prop_assert_eq!(std::fs::read(&p).unwrap(), f.raw.as_bytes());
                let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
                proptest::prop_assert_eq!(format!("{mode:04o}"), f.permissions.clone());
            }
        }
    }

    proptest::proptest! {
        /// The coordinator refuses a Flavor by `limits::bf_cfg_rendered_len`;
        /// it must be the length this module renders, or the two sides disagree.
        #[test]
        fn the_coordinators_size_formula_is_the_rendered_length(
            kv in proptest::collection::btree_map("[A-Za-z_][A-Za-z0-9_]{0,12}", "[^\\x00]{0,40}", 0..12)
        ) {
            let rendered = render(&kv).unwrap();
            proptest::prop_assert_eq!(
                rendered.text.len(),
                hostplane_proto::limits::bf_cfg_rendered_len(&kv)
            );
        }
    }
}
