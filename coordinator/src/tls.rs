//! The coordinator's mTLS listener.
//!
//! tonic can terminate TLS itself, but a refused handshake (a certificate
//! from another CA, an expired one, none at all) then vanishes without a
//! trace. Here each connection's handshake runs in a task of its own (a slow
//! or silent client holds up no one, and gives up after
//! [`HANDSHAKE_TIMEOUT`]); a refused one is logged and written to the audit
//! log with the peer's address and the name in the certificate it offered.
//! Established connections go to tonic as `tokio_rustls` streams, so
//! `Request::peer_certs` and `remote_addr` work as with tonic's own TLS.
//!
//! The rustls settings are tonic's: the server certificate, client
//! certificates verified by webpki against `tls.client_ca_file` (optional
//! only with `tls.client_auth_optional`), ALPN h2.
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::client::danger::HandshakeSignatureValid;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::{
    self, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::audit::{Audit, Record};
use crate::config::LoadedTls;

/// A client that has not finished its handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The settings new connections get; replaced whole on reload (SIGHUP),
/// while established connections keep theirs.
pub type SharedTls = Arc<RwLock<Arc<TlsSettings>>>;

/// The checked TLS material, from which each connection's rustls config is made.
pub struct TlsSettings {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    verifier: Arc<dyn ClientCertVerifier>,
    provider: Arc<CryptoProvider>,
}

impl TlsSettings {
    /// From the files `TlsConfig::load` read and checked.
    pub fn new(files: &LoadedTls, client_auth_optional: bool) -> Result<TlsSettings, String> {
        let certs = CertificateDer::pem_slice_iter(&files.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("tls.cert_file: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(&files.key).map_err(|e| format!("tls.key_file: {e}"))?;
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&files.client_ca) {
            let ca = ca.map_err(|e| format!("tls.client_ca_file: {e}"))?;
            roots
                .add(ca)
                .map_err(|e| format!("tls.client_ca_file: not a usable CA certificate: {e}"))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
        let builder = if client_auth_optional {
            builder.allow_unauthenticated()
        } else {
            builder
        };
        let verifier = builder.build().map_err(|e| format!("tls.client_ca_file: {e}"))?;
        let settings = TlsSettings {
            certs,
            key,
            verifier,
            provider,
        };
        // Fail at start, not at the first connection, when the key does not fit.
        settings
            .config_for(Arc::default())
            .map_err(|e| format!("tls.cert_file / tls.key_file: {e}"))?;
        Ok(settings)
    }

    /// One connection's config: the shared verifier, wrapped to remember
    /// the name in the certificate the client offered (for the audit log).
    fn config_for(&self, offered: Arc<Mutex<Option<String>>>) -> Result<ServerConfig, rustls::Error> {
        let verifier = Arc::new(Recording {
            inner: self.verifier.clone(),
            offered,
        });
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.certs.clone(), self.key.clone_key())?;
        config.alpn_protocols.push(b"h2".to_vec());
        Ok(config)
    }
}

/// The established connections on `listener`, for tonic's
/// `serve_with_incoming_shutdown`. Accepting stops when `stop` is cancelled
/// or the server drops the stream.
pub fn incoming(
    listener: TcpListener,
    settings: SharedTls,
    audit: Audit,
    stop: CancellationToken,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, addr) = tokio::select! {
                () = stop.cancelled() => break,
                () = tx.closed() => break,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // EMFILE and the like: do not spin; the listener is still good.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            // Without TCP_NODELAY every unary call waits out Nagle + delayed
            // ACK (~45 ms each; measured by the coordinator bench).
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(%addr, error = %e, "cannot set TCP_NODELAY");
            }
            let current = settings.read().unwrap_or_else(|p| p.into_inner()).clone();
            tokio::spawn(handshake(tcp, addr, current, audit.clone(), tx.clone()));
        }
    });
    ReceiverStream::new(rx)
}

async fn handshake(
    tcp: TcpStream,
    addr: SocketAddr,
    settings: Arc<TlsSettings>,
    audit: Audit,
    tx: mpsc::Sender<Result<TlsStream<TcpStream>, std::io::Error>>,
) {
    let offered = Arc::new(Mutex::new(None));
    let config = match settings.config_for(offered.clone()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot make the TLS config for a connection");
            return;
        }
    };
    let why = match tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(Arc::new(config)).accept(tcp))
        .await
    {
        Ok(Ok(tls)) => {
            // The server may have stopped meanwhile; the connection just closes.
            let _ = tx.send(Ok(tls)).await;
            return;
        }
        // A TCP probe (a load balancer, a port check) that sends nothing is no refusal.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof && offered_name(&offered).is_none() => {
            tracing::debug!(%addr, error = %e, "connection closed before a TLS handshake");
            return;
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}"),
    };
    let name = offered_name(&offered);
    let who = name.as_deref().unwrap_or("unauthenticated");
    let peer = match &name {
        Some(n) => format!("{addr} cert={n}"),
        None => addr.to_string(),
    };
    tracing::warn!(%addr, certificate = ?name, error = %why, "TLS handshake refused");
    audit.record(Record {
        who,
        role: "",
        method: "TlsHandshake",
        target: "",
        result: &format!("refused: {why}"),
        peer: &peer,
    });
}

fn offered_name(offered: &Mutex<Option<String>>) -> Option<String> {
    offered.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// The webpki verifier, noting the name in the certificate it was shown.
#[derive(Debug)]
struct Recording {
    inner: Arc<dyn ClientCertVerifier>,
    offered: Arc<Mutex<Option<String>>>,
}

impl ClientCertVerifier for Recording {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        *self.offered.lock().unwrap_or_else(|p| p.into_inner()) =
            hostplane_common::tls::cert_name(end_entity);
        self.inner.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
