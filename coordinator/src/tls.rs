//! The coordinator's mTLS listener.
//!
//! tonic can terminate TLS itself, but a refused handshake (a certificate
//! from another CA, an expired one, none at all) then vanishes without a
//! trace. Here each connection's handshake runs in a task of its own (a slow
//! or silent client holds up no one, and gives up after
//! [`HANDSHAKE_TIMEOUT`]); at most [`MAX_HANDSHAKES`] run at once (beyond
//! that the kernel's backlog queues new connections). A refused handshake is
//! logged and written to the audit log with the peer's address and the name
//! in the certificate it offered — unverified, so it goes in `peer`, never
//! in `who` — at most [`AUDIT_PER_IP`] records per source address a minute,
//! then one line counting the rest. Established connections go to tonic as
//! `tokio_rustls` streams, so `Request::peer_certs` and `remote_addr` work as
//! with tonic's own TLS.
//!
//! The rustls settings are tonic's: the server certificate, client
//! certificates verified by webpki against `tls.client_ca_file` (optional
//! only with `tls.client_auth_optional`), ALPN h2. They are built once per
//! (re)load and shared by every connection.
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::client::danger::HandshakeSignatureValid;
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

use crate::audit::{Audit, Budget, Record};
use crate::config::LoadedTls;

/// A client that has not finished its handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; the next connection waits in the backlog.
pub const MAX_HANDSHAKES: usize = 256;
/// Refused-handshake audit records per source address and minute.
pub const AUDIT_PER_IP: u32 = crate::audit::REFUSALS_PER_MINUTE;
#[cfg(test)]
const AUDIT_WINDOW: Duration = crate::audit::REFUSAL_WINDOW;

tokio::task_local! {
    /// The name in the client certificate offered on this connection, set by
    /// the verifier (which rustls calls inside the handshake's poll).
    static OFFERED: Arc<Mutex<Option<String>>>;
}

/// The settings new connections get; replaced whole on reload (SIGHUP),
/// while established connections keep theirs.
pub type SharedTls = Arc<RwLock<Arc<TlsSettings>>>;

/// The rustls server config made from the checked TLS files.
pub struct TlsSettings {
    config: Arc<ServerConfig>,
    /// The client CA check alone, for re-checking live sessions on reload.
    verifier: Arc<dyn ClientCertVerifier>,
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
        let inner = builder.build().map_err(|e| format!("tls.client_ca_file: {e}"))?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(Arc::new(Recording { inner: inner.clone() }))
            .with_single_cert(certs, key)
            .map_err(|e| format!("tls.cert_file / tls.key_file: {e}"))?;
        config.alpn_protocols.push(b"h2".to_vec());
        Ok(TlsSettings {
            config: Arc::new(config),
            verifier: inner,
        })
    }

    /// Would a handshake with this client certificate chain (end entity
    /// first) be accepted now? For sessions opened under earlier settings.
    pub fn verify_chain(&self, chain: &[CertificateDer<'static>]) -> Result<(), String> {
        let (end, intermediates) = chain
            .split_first()
            .ok_or_else(|| "no client certificate".to_string())?;
        self.verifier
            .verify_client_cert(end, intermediates, UnixTime::now())
            .map(|_| ())
            .map_err(|e| e.to_string())
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
    let limit = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let refusals = Arc::new(Refusals::new(audit));
    tokio::spawn(async move {
        let mut last_warning: Option<Instant> = None;
        loop {
            let permit = tokio::select! {
                () = stop.cancelled() => break,
                () = tx.closed() => break,
                p = limit.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let (tcp, addr) = tokio::select! {
                () = stop.cancelled() => break,
                () = tx.closed() => break,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) if out_of_resources(&e) => {
                        // EMFILE and the like: back off (the listener is
                        // still good) and say so once per burst.
                        if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                            tracing::warn!(error = %e, "accepting connections failed; backing off");
                            last_warning = Some(Instant::now());
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                    Err(e) => {
                        // One connection's trouble (aborted, reset, refused by a filter).
                        tracing::debug!(error = %e, "accepting a connection failed");
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
            tokio::spawn(handshake(
                tcp,
                addr,
                current,
                refusals.clone(),
                tx.clone(),
                permit,
            ));
        }
    });
    ReceiverStream::new(rx)
}

fn out_of_resources(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc_errno::EMFILE | libc_errno::ENFILE | libc_errno::ENOBUFS | libc_errno::ENOMEM)
    )
}

/// The errno values `accept` returns when the process or system is out of
/// something (Linux numbering).
mod libc_errno {
    pub const ENOMEM: i32 = 12;
    pub const ENFILE: i32 = 23;
    pub const EMFILE: i32 = 24;
    pub const ENOBUFS: i32 = 105;
}

async fn handshake(
    tcp: TcpStream,
    addr: SocketAddr,
    settings: Arc<TlsSettings>,
    refusals: Arc<Refusals>,
    tx: mpsc::Sender<Result<TlsStream<TcpStream>, std::io::Error>>,
    permit: OwnedSemaphorePermit,
) {
    let offered = Arc::new(Mutex::new(None));
    let accept = TlsAcceptor::from(settings.config.clone()).accept(tcp);
    let result = OFFERED
        .scope(offered.clone(), tokio::time::timeout(HANDSHAKE_TIMEOUT, accept))
        .await;
    drop(permit);
    let why = match result {
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
        Ok(Err(e)) => {
            let text = e.to_string();
            if text.contains("received fatal alert") {
                format!("the client ended the handshake (did it refuse this server's certificate?): {text}")
            } else {
                text
            }
        }
        Err(_) => format!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}"),
    };
    refusals.record(addr, offered_name(&offered), &why);
}

fn offered_name(offered: &Mutex<Option<String>>) -> Option<String> {
    offered.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Refused handshakes to the log and the audit file, at most
/// [`AUDIT_PER_IP`] a minute per source address; the rest are counted and
/// reported with the next record after the window.
struct Refusals {
    audit: Audit,
    windows: Budget<IpAddr>,
}

impl Refusals {
    fn new(audit: Audit) -> Refusals {
        Refusals {
            audit,
            windows: Budget::default(),
        }
    }

    fn record(&self, addr: SocketAddr, offered: Option<String>, why: &str) {
        self.record_at(Instant::now(), addr, offered, why);
    }

    fn record_at(&self, now: Instant, addr: SocketAddr, offered: Option<String>, why: &str) {
        // None: over this address's budget (counted); Some(n): record, with
        // n refusals of the previous window that were not recorded.
        let earlier_suppressed = self.windows.admit(now, addr.ip());
        let Some(suppressed) = earlier_suppressed else {
            return;
        };
        let peer = match &offered {
            Some(n) => format!("{addr} offered_cert={n} (unverified)"),
            None => addr.to_string(),
        };
        let result = if suppressed > 0 {
            format!(
                "refused: {why} ({suppressed} more refused handshakes from {} in the minute before were not recorded)",
                addr.ip()
            )
        } else {
            format!("refused: {why}")
        };
        tracing::warn!(%addr, offered_certificate = ?offered, error = %why, suppressed, "TLS handshake refused");
        self.audit.record(Record {
            who: "unauthenticated",
            role: "",
            method: "TlsHandshake",
            target: "",
            result: &result,
            peer: &peer,
        });
    }
}

/// The webpki verifier, noting the name in the certificate it was shown in
/// the connection's [`OFFERED`] slot.
#[derive(Debug)]
struct Recording {
    inner: Arc<dyn ClientCertVerifier>,
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
        let name = hostplane_common::tls::cert_name(end_entity);
        let _ = OFFERED.try_with(|slot| *slot.lock().unwrap_or_else(|p| p.into_inner()) = name);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(p: &std::path::Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn refusals_are_audited_at_most_so_many_per_address_a_minute() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("audit.jsonl");
        let r = Refusals::new(Audit::open(Some(&file)).unwrap());
        let a: SocketAddr = "10.0.0.1:40000".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:40000".parse().unwrap();
        let t0 = Instant::now();
        for i in 0..(AUDIT_PER_IP + 5) {
            r.record_at(
                t0 + Duration::from_millis(u64::from(i)),
                a,
                Some("n1".into()),
                "bad certificate",
            );
        }
        r.record_at(t0, b, None, "peer sent no certificates");
        let got = lines(&file);
        assert_eq!(
            got.len(),
            AUDIT_PER_IP as usize + 1,
            "a flood from one address is capped, others still recorded"
        );
        assert_eq!(
            got[0]["who"], "unauthenticated",
            "an unverified name is never `who`"
        );
        assert_eq!(got[0]["peer"], "10.0.0.1:40000 offered_cert=n1 (unverified)");
        assert_eq!(got[0]["method"], "TlsHandshake");
        assert_eq!(got.last().unwrap()["peer"], "10.0.0.2:40000");

        // The next window: recorded again, with the count of what was dropped.
        r.record_at(
            t0 + AUDIT_WINDOW + Duration::from_secs(1),
            a,
            None,
            "bad certificate",
        );
        let got = lines(&file);
        let last = got.last().unwrap()["result"].as_str().unwrap().to_string();
        assert!(last.contains("5 more refused handshakes from 10.0.0.1"), "{last}");
    }
}
