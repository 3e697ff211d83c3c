//! The coordinator connection's part of the agent config: the `coordinator:`
//! URL, `insecure:` and the `tls:` section (the agent's side of mTLS), and
//! their checks. Defined and checked here; the config root
//! ([`crate::config::Config`]) only assembles the sections and re-exports
//! [`TlsConfig`] and [`LoadedTls`].
use std::path::PathBuf;

use hostplane_common::tls::TlsFileError;
use serde::{Deserialize, Serialize};

/// The agent's side of mTLS (PEM files).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// CA certificate(s) the coordinator's server certificate must be signed by.
    pub ca_file: PathBuf,
    /// This node's client certificate; its subject CN must be `node_name`.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// [`TlsConfig`]'s files, read and checked.
#[derive(Debug, Clone)]
pub struct LoadedTls {
    pub ca: Vec<u8>,
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl TlsConfig {
    /// Read and check the files; errors name the key and the path.
    pub fn load(&self) -> Result<LoadedTls, TlsFileError> {
        use hostplane_common::tls::{load_certs, load_key};
        Ok(LoadedTls {
            ca: load_certs("tls.ca_file", &self.ca_file)?.pem,
            cert: load_certs("tls.cert_file", &self.cert_file)?.pem,
            key: load_key("tls.key_file", &self.key_file)?.pem,
        })
    }
}

/// Why the coordinator connection's settings are refused.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionConfigError {
    /// A key's value: the key as the config names it, and why.
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// One entry of a list-valued key (`coordinator[1]`), and why.
    #[error("{field}[{index}]: {reason}")]
    InvalidEntry {
        field: &'static str,
        index: usize,
        reason: String,
    },
    /// A `tls:` file that cannot be read or is not what its key says.
    #[error(transparent)]
    File(#[from] TlsFileError),
}

/// True when `url` is a plaintext (`http://`) coordinator.
pub fn is_plaintext(url: &str) -> bool {
    url.starts_with("http://")
}

/// Check `coordinator` (the URL), `insecure` and `tls` together, for the
/// node `node_name`: `https://` needs `tls` (its files readable and valid,
/// the certificate issued to this node); `http://` needs `insecure: true`
/// and no `tls`. The first problem found is returned.
pub fn validate_connection(
    coordinator: &str,
    insecure: bool,
    tls: Option<&TlsConfig>,
    node_name: &str,
) -> Result<(), ConnectionConfigError> {
    let invalid = |field: &'static str, reason: String| Err(ConnectionConfigError::Invalid { field, reason });
    if let Err(reason) = check_coordinator_url(coordinator) {
        return invalid("coordinator", reason);
    }
    if is_plaintext(coordinator) {
        if !insecure {
            return invalid(
                "coordinator",
                format!(
                    "{coordinator:?} is plain http: the agent talks mTLS unless told otherwise; use \
                     https:// with a `tls:` section (ca_file, cert_file, key_file; see \
                     docs/operations.md, Certificates), or set `insecure: true` \
                     (HOSTPLANE_INSECURE=1) on a trusted network"
                ),
            );
        }
        if tls.is_some() {
            return invalid(
                "tls",
                "set, but coordinator is http://; use https:// or remove tls".into(),
            );
        }
        return Ok(());
    }
    let Some(t) = tls else {
        return invalid(
            "tls",
            format!(
                "required for {coordinator:?}: set tls.ca_file, tls.cert_file and tls.key_file (this node's \
                 certificate, CN = {node_name:?}; `hostplanectl certs agent --node {node_name}` makes one)"
            ),
        );
    };
    for (field, p) in [
        ("tls.ca_file", &t.ca_file),
        ("tls.cert_file", &t.cert_file),
        ("tls.key_file", &t.key_file),
    ] {
        if !p.is_absolute() {
            return invalid(field, format!("{:?} must be an absolute path", p.display()));
        }
    }
    let files = t.load()?;
    if let Some(name) = hostplane_common::tls::pem_cert_name(&files.cert)
        && name != node_name
    {
        return invalid(
            "tls.cert_file",
            format!(
                "{} was issued to {name:?}, not to this node ({node_name:?}); the coordinator would refuse it",
                t.cert_file.display(),
            ),
        );
    }
    Ok(())
}

/// The `coordinator:` setting: one URL (`coordinator: https://c:50051`) or
/// several replicas' (a YAML sequence; `HOSTPLANE_COORDINATOR` takes them
/// comma-separated). One URL serializes back as a plain string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "UrlsRepr", into = "UrlsRepr")]
pub struct CoordinatorUrls(Vec<String>);

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum UrlsRepr {
    One(String),
    Many(Vec<String>),
}

impl From<UrlsRepr> for CoordinatorUrls {
    fn from(r: UrlsRepr) -> Self {
        match r {
            UrlsRepr::One(u) => CoordinatorUrls(vec![u]),
            UrlsRepr::Many(v) => CoordinatorUrls(v),
        }
    }
}

impl From<CoordinatorUrls> for UrlsRepr {
    fn from(c: CoordinatorUrls) -> Self {
        match <[String; 1]>::try_from(c.0) {
            Ok([one]) => UrlsRepr::One(one),
            Err(v) => UrlsRepr::Many(v),
        }
    }
}

impl CoordinatorUrls {
    pub fn new(urls: Vec<String>) -> Self {
        CoordinatorUrls(urls)
    }

    /// `HOSTPLANE_COORDINATOR`'s form: URLs separated by commas (spaces around them ignored).
    pub fn parse_list(s: &str) -> Self {
        CoordinatorUrls(s.split(',').map(|u| u.trim().to_string()).collect())
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    /// True when the connection is plaintext (all URLs share the scheme once validated).
    pub fn is_plaintext(&self) -> bool {
        self.0.first().is_some_and(|u| is_plaintext(u))
    }
}

impl From<&str> for CoordinatorUrls {
    fn from(url: &str) -> Self {
        CoordinatorUrls(vec![url.to_string()])
    }
}

impl From<String> for CoordinatorUrls {
    fn from(url: String) -> Self {
        CoordinatorUrls(vec![url])
    }
}

/// Equal to one URL when it is the only one.
impl PartialEq<&str> for CoordinatorUrls {
    fn eq(&self, other: &&str) -> bool {
        matches!(self.0.as_slice(), [one] if one == other)
    }
}

/// The URLs, comma-separated (the env var's form).
impl std::fmt::Display for CoordinatorUrls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

/// Check every coordinator URL, then `insecure` and `tls` against them as
/// [`validate_connection`] does for one. With several, errors about one URL
/// name its index (`coordinator[1]: ...`); all must share the scheme (all
/// `https://` with `tls`, or all `http://` with `insecure`) and none may repeat.
pub fn validate_coordinators(
    urls: &CoordinatorUrls,
    insecure: bool,
    tls: Option<&TlsConfig>,
    node_name: &str,
) -> Result<(), ConnectionConfigError> {
    let urls = urls.as_slice();
    let at = |index: usize, reason: String| {
        Err(ConnectionConfigError::InvalidEntry {
            field: "coordinator",
            index,
            reason,
        })
    };
    let first = match urls {
        [] => {
            return Err(ConnectionConfigError::Invalid {
                field: "coordinator",
                reason: "must name at least one URL".into(),
            });
        }
        [one] => return validate_connection(one, insecure, tls, node_name),
        [first, ..] => first,
    };
    for (i, u) in urls.iter().enumerate() {
        if let Err(reason) = check_coordinator_url(u) {
            return at(i, reason);
        }
        if is_plaintext(u) != is_plaintext(first) {
            return at(
                i,
                format!(
                    "{u:?} and coordinator[0] {first:?} differ in scheme; all must be https:// (with tls) \
                     or all http:// (with insecure: true)"
                ),
            );
        }
        let key = |s: &str| s.trim_end_matches('/').to_ascii_lowercase();
        if let Some(j) = urls[..i].iter().position(|p| key(p) == key(u)) {
            return at(i, format!("{u:?} repeats coordinator[{j}]"));
        }
    }
    // The scheme's requirements (insecure, tls and its files) are the same for all.
    validate_connection(first, insecure, tls, node_name)
}

/// An `http://` or `https://` URL with a host and no path.
fn check_coordinator_url(url: &str) -> Result<(), String> {
    let uri: tonic::transport::Uri = url.parse().map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        Some(other) => {
            return Err(format!(
                "{url:?}: unsupported scheme {other:?}; expected https or http"
            ));
        }
        None => return Err(format!("{url:?}: missing scheme; expected https://host:port")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{url:?}: missing host"));
    }
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(format!("{url:?}: must not have a path"));
    }
    Ok(())
}
