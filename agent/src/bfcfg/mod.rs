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
