//! HTTPS for the simulated BMCs: rustls (ring) through tokio-rustls, both
//! already in the build for reqwest, behind axum's `Listener` trait so the
//! same `axum::serve` (and its graceful shutdown) serves HTTP and HTTPS;
//! and a lab certificate (a throwaway CA and a server certificate it signs,
//! made with rcgen) for a BMC started without certificate files.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;

use super::{BmcError, TlsFiles};

/// A client that connects but does not finish the handshake is dropped after this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the server to take them.
const BACKLOG: usize = 64;

/// Lab certificates: a CA made for this run, and a server certificate it
/// signed for `localhost` and the given addresses. Clients trust `ca_pem`
/// (the agent's `power.bmc.ca_file`), as they would a site CA; the CA's key
/// is dropped once the server certificate is signed.
#[derive(Debug, Clone)]
pub struct LabCerts {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// File names in the directory [`LabCerts::write`] fills.
pub const LAB_CA_FILE: &str = "ca.crt";
pub const LAB_CERT_FILE: &str = "bmc.crt";
pub const LAB_KEY_FILE: &str = "bmc.key";

impl LabCerts {
    /// A CA and a server certificate for `localhost`, 127.0.0.1, ::1 and
    /// `ips`, valid from a day ago for a year.
    pub fn generate(ips: &[std::net::IpAddr]) -> Result<LabCerts, BmcError> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
            KeyUsagePurpose, SanType,
        };
        let err = |e: rcgen::Error| BmcError::TlsGenerate {
            message: e.to_string(),
        };
        let now = time::OffsetDateTime::now_utc();
        let validity = |p: &mut CertificateParams| {
            p.not_before = now - time::Duration::days(1);
            p.not_after = now + time::Duration::days(365);
        };
        let ca_key = KeyPair::generate().map_err(err)?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        ca.distinguished_name
            .push(DnType::CommonName, "hostplane-sim BMC lab CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut ca);
        let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().map_err(err)?;
        let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).map_err(err)?;
        leaf.distinguished_name
            .push(DnType::CommonName, "hostplane-sim BMC");
        let mut all: Vec<std::net::IpAddr> = vec![
            std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::Ipv6Addr::LOCALHOST.into(),
        ];
        for ip in ips {
            if !ip.is_unspecified() && !all.contains(ip) {
                all.push(*ip);
            }
        }
        leaf.subject_alt_names
            .extend(all.into_iter().map(SanType::IpAddress));
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.use_authority_key_identifier_extension = true;
        validity(&mut leaf);
        let cert = leaf.signed_by(&key, &issuer).map_err(err)?;
        Ok(LabCerts {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Write `ca.crt`, `bmc.crt` and `bmc.key` (mode 0600) into `dir`
    /// (created if missing); the server's files are returned.
    pub fn write(&self, dir: &std::path::Path) -> Result<TlsFiles, BmcError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let io = |path: std::path::PathBuf| move |source| BmcError::TlsWrite { path, source };
        std::fs::create_dir_all(dir).map_err(io(dir.to_path_buf()))?;
        for (name, text, mode) in [
            (LAB_CA_FILE, &self.ca_pem, 0o644),
            (LAB_CERT_FILE, &self.cert_pem, 0o644),
            (LAB_KEY_FILE, &self.key_pem, 0o600),
        ] {
            let path = dir.join(name);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(&path)
                .map_err(io(path.clone()))?;
            f.write_all(text.as_bytes()).map_err(io(path.clone()))?;
        }
        Ok(TlsFiles {
            cert: dir.join(LAB_CERT_FILE),
            key: dir.join(LAB_KEY_FILE),
        })
    }
}

/// Load the PEM files into a server configuration (HTTP/1.1 only, as served).
pub(crate) fn server_config(name: &str, files: &TlsFiles) -> Result<Arc<ServerConfig>, BmcError> {
    let read = |path: &std::path::PathBuf| {
        std::fs::read(path).map_err(|source| BmcError::TlsFile {
            name: name.to_string(),
            path: path.clone(),
            source,
        })
    };
    let pem_err = |path: &std::path::PathBuf, message: String| BmcError::TlsPem {
        name: name.to_string(),
        path: path.clone(),
        message,
    };
    let cert_pem = read(&files.cert)?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(&files.cert, format!("not a PEM certificate chain: {e}")))?;
    if certs.is_empty() {
        return Err(pem_err(&files.cert, "no CERTIFICATE block".to_string()));
    }
    let key_pem = read(&files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| pem_err(&files.key, format!("no private key: {e}")))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config_err = |e: tokio_rustls::rustls::Error| BmcError::TlsConfig {
        name: name.to_string(),
        message: e.to_string(),
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(config_err)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(config_err)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts TCP connections and hands over those whose TLS handshake
/// succeeded; handshakes run in their own tasks so a slow client does not
/// hold up the others.
pub(crate) struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: std::io::Result<SocketAddr>,
    acceptor: JoinHandle<()>,
}

impl TlsListener {
    pub(crate) fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> TlsListener {
        let local = tcp.local_addr();
        let (tx, rx) = mpsc::channel(BACKLOG);
        let tls = TlsAcceptor::from(config);
        let acceptor = tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of descriptors and the like: wait rather than spin.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let tls = tls.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                        Ok(Ok(s)) => {
                            let _ = tx.send((s, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        TlsListener { rx, local, acceptor }
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The acceptor is gone (only when this listener is dropped): no more connections.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match &self.local {
            Ok(a) => Ok(*a),
            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_certificates_make_a_server_config_and_chain_to_their_ca() {
        use tokio_rustls::rustls::client::danger::ServerCertVerifier;
        let dir = tempfile::tempdir().unwrap();
        let ip: std::net::IpAddr = "10.1.2.3".parse().unwrap();
        let certs = LabCerts::generate(&[ip, "0.0.0.0".parse().unwrap()]).unwrap();
        let files = certs.write(&dir.path().join("tls")).unwrap();
        assert!(server_config("lab", &files).is_ok());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&files.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the key is private");
        // The server certificate verifies against the CA, for the addresses asked.
        let ca = CertificateDer::from_pem_slice(certs.ca_pem.as_bytes()).unwrap();
        let mut roots = tokio_rustls::rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let verifier = tokio_rustls::rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider,
        )
        .build()
        .unwrap();
        let leaf = CertificateDer::from_pem_slice(certs.cert_pem.as_bytes()).unwrap();
        let now = tokio_rustls::rustls::pki_types::UnixTime::now();
        for name in ["localhost", "127.0.0.1", "::1", "10.1.2.3"] {
            let name = tokio_rustls::rustls::pki_types::ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(&leaf, &[], &name, &[], now)
                .unwrap_or_else(|e| panic!("{name:?}: {e}"));
        }
        let other = tokio_rustls::rustls::pki_types::ServerName::try_from("10.9.9.9").unwrap();
        assert!(verifier.verify_server_cert(&leaf, &[], &other, &[], now).is_err());
    }
}
