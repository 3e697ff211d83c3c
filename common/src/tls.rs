//! PEM files for mTLS between agents, the coordinator and `hostplanectl`:
//! read and checked up front, so a wrong path, a key in the certificate's
//! place or an expired certificate is refused at start with the file named,
//! not as an opaque handshake failure later. Also the name a certificate was
//! issued to: the node an agent's client certificate speaks for.
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    #[error("{what} {path}: cannot read: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path}: {reason}")]
    Invalid {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
}

/// A PEM file that was read and checked; `pem` is the file's bytes as read.
#[derive(Debug, Clone)]
pub struct PemFile {
    pub path: PathBuf,
    pub pem: Vec<u8>,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|source| TlsFileError::Read {
        what,
        path: path.into(),
        source,
    })
}

/// Read a PEM file of one or more certificates (a chain, or CA bundle) and
/// check each parses as X.509 and is valid now. `what` names the file's role
/// in errors ("tls.cert_file").
pub fn load_certs(what: &'static str, path: &Path) -> Result<PemFile, TlsFileError> {
    let pem = read(what, path)?;
    let invalid = |reason: String| TlsFileError::Invalid {
        what,
        path: path.into(),
        reason,
    };
    let mut n = 0;
    for der in CertificateDer::pem_slice_iter(&pem) {
        let der = der.map_err(|e| invalid(format!("not a PEM certificate file: {e}")))?;
        check_validity(&der).map_err(invalid)?;
        n += 1;
    }
    if n == 0 {
        return Err(invalid(
            "no CERTIFICATE block found (is this a key, or a DER file? PEM is expected)".into(),
        ));
    }
    Ok(PemFile {
        path: path.into(),
        pem,
    })
}

/// Read a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(what: &'static str, path: &Path) -> Result<PemFile, TlsFileError> {
    let pem = read(what, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsFileError::Invalid {
        what,
        path: path.into(),
        reason: format!("no PEM private key found: {e}"),
    })?;
    Ok(PemFile {
        path: path.into(),
        pem,
    })
}

fn check_validity(der: &CertificateDer<'_>) -> Result<(), String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let v = cert.validity();
    let subject = cert.subject().to_string();
    if !v.is_valid() {
        let now = x509_parser::time::ASN1Time::now();
        return Err(if now < v.not_before {
            format!("certificate {subject:?} is not valid before {}", v.not_before)
        } else {
            format!(
                "certificate {subject:?} expired at {}; make a new one",
                v.not_after
            )
        });
    }
    Ok(())
}

/// The name a certificate was issued to: its subject Common Name, or, when
/// it has none, its first DNS Subject Alternative Name. For an agent this is
/// the node it may act for.
pub fn cert_name(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    if let Some(cn) = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|s| !s.is_empty())
    {
        return Some(cn.to_string());
    }
    first_dns_name(&cert)
}

/// A certificate's first non-empty DNS Subject Alternative Name.
fn first_dns_name(cert: &X509Certificate<'_>) -> Option<String> {
    let san = cert.subject_alternative_name().ok().flatten()?;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::DNSName(d) if !d.is_empty() => Some(d.to_string()),
        _ => None,
    })
}

/// [`cert_name`] of the first certificate in a PEM file's bytes.
pub fn pem_cert_name(pem: &[u8]) -> Option<String> {
    let der = CertificateDer::pem_slice_iter(pem).next()?.ok()?;
    cert_name(&der)
}

/// The first DNS Subject Alternative Name of the first certificate in a PEM
/// file's bytes (what a TLS client can verify the certificate as).
pub fn pem_first_dns_name(pem: &[u8]) -> Option<String> {
    let der = CertificateDer::pem_slice_iter(pem).next()?.ok()?;
    let (_, cert) = X509Certificate::from_der(&der).ok()?;
    first_dns_name(&cert)
}

/// When the first certificate in `pem` expires (for a log line at start).
pub fn not_after(pem: &[u8]) -> Option<String> {
    let der = CertificateDer::pem_slice_iter(pem).next()?.ok()?;
    let (_, cert) = X509Certificate::from_der(&der).ok()?;
    Some(cert.validity().not_after.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_garbage_files_name_the_file() {
        let dir = std::env::temp_dir().join(format!("hp-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = load_certs("tls.ca_file", &dir.join("nope.pem")).unwrap_err();
        assert!(e.to_string().starts_with("tls.ca_file "), "{e}");
        assert!(e.to_string().contains("nope.pem"), "{e}");
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "hello\n").unwrap();
        let e = load_certs("tls.cert_file", &junk).unwrap_err();
        assert!(e.to_string().contains("no CERTIFICATE block"), "{e}");
        let e = load_key("tls.key_file", &junk).unwrap_err();
        assert!(e.to_string().contains("no PEM private key"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
