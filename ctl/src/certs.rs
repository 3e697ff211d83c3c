//! `hostplanectl certs`: a CA and the certificates signed by it for mTLS
//! between agents, the coordinator and admins, for a demo or a lab.
//!
//! Files (PEM; keys are written 0600 and never overwritten unless asked):
//! - `certs ca --out DIR`: `DIR/ca.crt`, `DIR/ca.key` (ECDSA P-256, 10 years).
//! - `certs server --ca DIR --name HOST [--ip IP]`: `server.crt`, `server.key`
//!   (serverAuth; the names and IPs agents use in `coordinator: https://...`).
//! - `certs agent --ca DIR --node NODE`: `agent-NODE.crt/.key` (clientAuth;
//!   subject CN = NODE, also a DNS SAN: the node this agent may act for).
//! - `certs client --ca DIR --name NAME`: `client-NAME.crt/.key` (clientAuth,
//!   for `hostplanectl --cert-file/--key-file`).
//!
//! The library functions are what World and the demo use to run with mTLS.
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
const DAY: Duration = Duration::from_secs(86_400);
/// Default validity: the CA 10 years, the others 1 year.
pub const CA_DAYS: u32 = 3650;
pub const LEAF_DAYS: u32 = 365;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: cannot write: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} already exists; pass --force to replace it")]
    Exists { path: PathBuf },
    #[error("{path}: {reason}")]
    BadCa { path: PathBuf, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error("generating the certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leaf {
    /// The coordinator: DNS names and IPs agents and admins connect to (the first is the CN).
    Server { names: Vec<String>, ips: Vec<IpAddr> },
    /// An agent: CN and DNS SAN = the node name.
    Agent { node: String },
    /// An admin client (hostplanectl).
    Client { name: String },
}

impl Leaf {
    /// The base of the file names: `server`, `agent-NODE`, `client-NAME`.
    pub fn file_stem(&self) -> String {
        match self {
            Leaf::Server { .. } => "server".into(),
            Leaf::Agent { node } => format!("agent-{node}"),
            Leaf::Client { name } => format!("client-{name}"),
        }
    }

    fn common_name(&self) -> String {
        match self {
            Leaf::Server { names, ips } => names
                .first()
                .cloned()
                .or_else(|| ips.first().map(|i| i.to_string()))
                .unwrap_or_default(),
            Leaf::Agent { node } => node.clone(),
            Leaf::Client { name } => name.clone(),
        }
    }

    fn validate(&self) -> Result<(), CertError> {
        let check = |what: &str, n: &str| {
            if n.is_empty()
                || n.len() > 253
                || n.chars().any(|c| c.is_whitespace() || c.is_control() || c == '/')
            {
                Err(CertError::Invalid(format!(
                    "{what} {n:?} is not a valid name (1-253 characters, no spaces or '/')"
                )))
            } else {
                Ok(())
            }
        };
        match self {
            Leaf::Server { names, ips } => {
                if names.is_empty() && ips.is_empty() {
                    return Err(CertError::Invalid(
                        "a server certificate needs --name or --ip".into(),
                    ));
                }
                names.iter().try_for_each(|n| check("--name", n))
            }
            Leaf::Agent { node } => check("--node", node),
            Leaf::Client { name } => check("--name", name),
        }
    }
}

/// A validity period.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// From an hour ago (clock skew) for `days` days.
    pub fn days(days: u32) -> Validity {
        let now = SystemTime::now();
        Validity {
            not_before: now - Duration::from_secs(3600),
            not_after: now + DAY * days,
        }
    }
}

/// A certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A loaded CA that signs leaves.
pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// A new self-signed CA named `cn`.
    pub fn generate(cn: &str, validity: Validity) -> Result<(Ca, Pair), CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, validity);
        let cert = params.self_signed(&key)?;
        let pair = Pair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        Ok((
            Ca {
                cert_pem: pair.cert_pem.clone(),
                issuer: Issuer::new(params, key),
            },
            pair,
        ))
    }

    /// The CA in `dir` (`ca.crt`, `ca.key`).
    pub fn load(dir: &Path) -> Result<Ca, CertError> {
        let (cp, kp) = (dir.join(CA_CERT), dir.join(CA_KEY));
        let cert_pem = read(&cp)?;
        let key_pem = read(&kp)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| CertError::BadCa {
            path: kp.clone(),
            reason: format!("not a PEM private key: {e}"),
        })?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| CertError::BadCa {
            path: cp.clone(),
            reason: format!("not a PEM CA certificate: {e}"),
        })?;
        Ok(Ca { cert_pem, issuer })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Sign a new leaf certificate with a fresh key.
    pub fn issue(&self, leaf: &Leaf, validity: Validity) -> Result<Pair, CertError> {
        leaf.validate()?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(&leaf.common_name());
        let dns = |n: &str| -> Result<SanType, CertError> {
            Ok(SanType::DnsName(n.try_into().map_err(|e| {
                CertError::Invalid(format!("{n:?} is not a DNS name: {e}"))
            })?))
        };
        match leaf {
            Leaf::Server { names, ips } => {
                for n in names {
                    params.subject_alt_names.push(dns(n)?);
                }
                params
                    .subject_alt_names
                    .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            }
            Leaf::Agent { node } => {
                params.subject_alt_names.push(dns(node)?);
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            }
            Leaf::Client { .. } => {
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            }
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, validity);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Pair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn dn(cn: &str) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::OrganizationName, "hostplane");
    d.push(DnType::CommonName, cn);
    d
}

fn set_validity(p: &mut CertificateParams, v: Validity) {
    p.not_before = OffsetDateTime::from(v.not_before);
    p.not_after = OffsetDateTime::from(v.not_after);
}

fn read(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|source| CertError::Read {
        path: path.into(),
        source,
    })
}

/// Write `pair` as `dir/<stem>.crt` (0644) and `dir/<stem>.key` (0600).
/// Existing files are refused unless `force`. Returns the two paths.
pub fn write_pair(dir: &Path, stem: &str, pair: &Pair, force: bool) -> Result<(PathBuf, PathBuf), CertError> {
    std::fs::create_dir_all(dir).map_err(|source| CertError::Write {
        path: dir.into(),
        source,
    })?;
    let (cert, key) = (dir.join(format!("{stem}.crt")), dir.join(format!("{stem}.key")));
    if !force {
        for p in [&cert, &key] {
            if p.exists() {
                return Err(CertError::Exists { path: p.clone() });
            }
        }
    }
    write_file(&key, pair.key_pem.as_bytes(), 0o600)?;
    write_file(&cert, pair.cert_pem.as_bytes(), 0o644)?;
    Ok((cert, key))
}

/// Write through a temporary file and rename, so a reader never sees half a
/// key and a replaced key never is world-readable, even for a moment.
pub(crate) fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), CertError> {
    let err = |source| CertError::Write {
        path: path.into(),
        source,
    };
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(data).and_then(|()| f.sync_all()).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// A whole lab set in `dir`: the CA, a server certificate for `server_names`
/// (plus 127.0.0.1 and ::1), one agent certificate per node, one admin
/// client certificate (`client-admin`), and an admin bearer token
/// (`admin.token`, 0600) with its tokens file (`tokens.yaml`, for the
/// coordinator's `auth.tokens_file`). World and the demo use it.
pub fn lab(dir: &Path, server_names: &[&str], nodes: &[&str]) -> Result<(), CertError> {
    let (ca, ca_pair) = Ca::generate("hostplane lab CA", Validity::days(CA_DAYS))?;
    write_pair(dir, "ca", &ca_pair, true)?;
    let server = Leaf::Server {
        names: server_names.iter().map(|s| s.to_string()).collect(),
        ips: vec![
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        ],
    };
    write_pair(
        dir,
        "server",
        &ca.issue(&server, Validity::days(LEAF_DAYS))?,
        true,
    )?;
    for n in nodes {
        let leaf = Leaf::Agent { node: n.to_string() };
        write_pair(
            dir,
            &leaf.file_stem(),
            &ca.issue(&leaf, Validity::days(LEAF_DAYS))?,
            true,
        )?;
    }
    let admin = Leaf::Client { name: "admin".into() };
    write_pair(
        dir,
        &admin.file_stem(),
        &ca.issue(&admin, Validity::days(LEAF_DAYS))?,
        true,
    )?;
    use hostplane_common::tokens::{Role, TokenEntry, TokensFile, generate_token, hash_token};
    let token = generate_token();
    let tokens = TokensFile {
        tokens: vec![TokenEntry {
            name: "admin".into(),
            role: Role::Admin,
            sha256: hash_token(&token),
        }],
    };
    let yaml = serde_norway::to_string(&tokens).map_err(|e| CertError::Write {
        path: dir.join(LAB_TOKENS),
        source: std::io::Error::other(e.to_string()),
    })?;
    write_file(&dir.join(LAB_TOKENS), yaml.as_bytes(), 0o600)?;
    write_file(&dir.join(LAB_ADMIN_TOKEN), format!("{token}\n").as_bytes(), 0o600)?;
    Ok(())
}

/// [`lab`]'s tokens file (the hash of its admin token).
pub const LAB_TOKENS: &str = "tokens.yaml";
/// [`lab`]'s admin bearer token.
pub const LAB_ADMIN_TOKEN: &str = "admin.token";

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn ca_and_leaves_round_trip_through_files() {
        let dir = tempfile::tempdir().unwrap();
        let (_, pair) = Ca::generate("test CA", Validity::days(1)).unwrap();
        write_pair(dir.path(), "ca", &pair, false).unwrap();
        let ca = Ca::load(dir.path()).unwrap();
        let leaf = Leaf::Agent {
            node: "node-7".into(),
        };
        let p = ca.issue(&leaf, Validity::days(1)).unwrap();
        let (crt, key) = write_pair(dir.path(), &leaf.file_stem(), &p, false).unwrap();
        assert_eq!(crt, dir.path().join("agent-node-7.crt"));
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // The node name is what the coordinator reads from the certificate.
        let pem = std::fs::read(&crt).unwrap();
        let certs = hostplane_common::tls::load_certs("cert", &crt).unwrap();
        assert_eq!(certs.pem, pem);
        assert_eq!(
            hostplane_common::tls::pem_cert_name(&pem).as_deref(),
            Some("node-7")
        );
        // Not overwritten without force.
        let e = write_pair(dir.path(), &leaf.file_stem(), &p, false).unwrap_err();
        assert!(matches!(e, CertError::Exists { .. }), "{e}");
        write_pair(dir.path(), &leaf.file_stem(), &p, true).unwrap();
    }

    #[test]
    fn bad_names_and_missing_ca_are_refused() {
        let (ca, _) = Ca::generate("test CA", Validity::days(1)).unwrap();
        for leaf in [
            Leaf::Agent { node: "".into() },
            Leaf::Agent { node: "a b".into() },
            Leaf::Client { name: "x/y".into() },
            Leaf::Server {
                names: vec![],
                ips: vec![],
            },
        ] {
            assert!(
                matches!(ca.issue(&leaf, Validity::days(1)), Err(CertError::Invalid(_))),
                "{leaf:?}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let e = Ca::load(dir.path()).err().unwrap();
        assert!(e.to_string().contains("ca.crt"), "{e}");
    }

    #[test]
    fn an_expired_certificate_is_refused_by_the_loader() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = Ca::generate("test CA", Validity::days(1)).unwrap();
        let now = SystemTime::now();
        let old = Validity {
            not_before: now - DAY * 10,
            not_after: now - DAY,
        };
        let p = ca.issue(&Leaf::Client { name: "old".into() }, old).unwrap();
        let (crt, _) = write_pair(dir.path(), "old", &p, false).unwrap();
        let e = hostplane_common::tls::load_certs("tls.cert_file", &crt).unwrap_err();
        assert!(e.to_string().contains("expired"), "{e}");
    }
}
