//! Connecting to PostgreSQL (`store.backend: postgres`, docs/ha.md §1,
//! docs/postgres.md).
//!
//! [`PgOptions`] is what the config's `store.postgres` section becomes;
//! [`connect`] opens one synchronous client from it. The store opens its
//! writer, its readers and its LISTEN connection through it, and reopens
//! them through it after PostgreSQL restarts; each call reads the password
//! and TLS files again, so a rotated certificate or password is picked up
//! by the next connection.
//!
//! TLS is rustls (ring), as everywhere else in hostplane; `sslmode` means
//! what it means to libpq:
//!
//! | sslmode | TLS | server certificate |
//! |---|---|---|
//! | `disable` | never | - |
//! | `prefer` | when the server offers it | not checked (checked against `ca_file` when set) |
//! | `require` | always | not checked (checked against `ca_file` when set, as libpq does) |
//! | `verify-ca` | always | signed by `ca_file` |
//! | `verify-full` | always | signed by `ca_file` and naming the host of `url` |
//!
//! "Not checked" accepts any certificate: the connection is encrypted but
//! not authenticated, so a machine in the path can pose as the server.
//! `verify-full` is the mode for production.
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hostplane_common::tls::{TlsFileError, load_certs, load_key};
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use tokio_rustls::rustls::crypto::{
    WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature,
};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    self, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use super::StoreError;

/// How TLS to PostgreSQL is used, named as libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plain TCP (or a Unix socket).
    #[default]
    Disable,
    /// TLS when the server offers it, plain otherwise.
    Prefer,
    /// TLS, the server's certificate not checked (unless `ca_file` is set).
    Require,
    /// TLS, the server's certificate checked against `ca_file`.
    VerifyCa,
    /// `VerifyCa`, and the certificate names the host.
    VerifyFull,
}

impl SslMode {
    /// The name in the config file (libpq's).
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether the server's certificate must be signed by `ca_file`.
    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

impl std::fmt::Display for SslMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SslMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "unknown sslmode {other:?}: expected disable, prefer, require, verify-ca or verify-full"
                ));
            }
        })
    }
}

/// The PostgreSQL backend's connection settings.
#[derive(Debug, Clone, PartialEq)]
pub struct PgOptions {
    /// `postgres://user@host:port/db` or libpq key-value form; no password.
    pub url: String,
    /// A file holding the password (its first line); never in `url`.
    pub password_file: Option<PathBuf>,
    pub sslmode: SslMode,
    /// PEM CA certificate(s) the server's certificate must be signed by.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain), for `cert` authentication in pg_hba.conf.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Read connections per replica, besides the writer and the listener.
    pub pool: usize,
    pub connect_timeout: Duration,
}

impl PgOptions {
    /// Options for `url` with every other setting at its default (tests).
    pub fn from_url(url: impl Into<String>) -> PgOptions {
        PgOptions {
            url: url.into(),
            password_file: None,
            sslmode: SslMode::Disable,
            ca_file: None,
            cert_file: None,
            key_file: None,
            pool: 8,
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// `user@host:port/dbname`, for logs and messages: never the password.
    pub fn describe(&self) -> String {
        match self.url.parse::<postgres::Config>() {
            Ok(cfg) => describe(&cfg),
            Err(_) => "an unparsable store.postgres.url".into(),
        }
    }
}

fn describe(cfg: &postgres::Config) -> String {
    let user = cfg.get_user().unwrap_or("?");
    let host = match cfg.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let db = cfg.get_dbname().unwrap_or(user);
    format!("{user}@{host}:{port}/{db}")
}

/// A settings problem found before PostgreSQL was asked anything.
fn settings(msg: String) -> StoreError {
    StoreError::Settings(msg)
}

/// Open one client with `opts`: the password from `password_file`, TLS as
/// `sslmode` says. Server errors (authentication, a missing database) come
/// back as [`StoreError::Pg`], which prints the server's report.
pub fn connect(opts: &PgOptions) -> Result<postgres::Client, StoreError> {
    let mut cfg: postgres::Config = opts
        .url
        .parse()
        .map_err(|e| settings(format!("store.postgres.url: {e}")))?;
    cfg.connect_timeout(opts.connect_timeout);
    if cfg.get_application_name().is_none() {
        cfg.application_name("hostplane-coordinator");
    }
    if let Some(file) = &opts.password_file {
        cfg.password(read_password(file)?);
    }
    match opts.sslmode {
        SslMode::Disable => {
            cfg.ssl_mode(postgres::config::SslMode::Disable);
            Ok(cfg.connect(postgres::NoTls)?)
        }
        mode => {
            cfg.ssl_mode(if mode == SslMode::Prefer {
                postgres::config::SslMode::Prefer
            } else {
                postgres::config::SslMode::Require
            });
            let tls = MakeRustlsConnect::new(client_tls(opts)?);
            Ok(cfg.connect(tls)?)
        }
    }
}

/// The first line of `file`, its line ending stripped.
fn read_password(file: &Path) -> Result<String, StoreError> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        settings(match e.kind() {
            ErrorKind::NotFound => format!("store.postgres.password_file {}: no such file", file.display()),
            _ => format!(
                "store.postgres.password_file {}: cannot read: {e}",
                file.display()
            ),
        })
    })?;
    let password = text.lines().next().unwrap_or_default();
    if password.is_empty() {
        return Err(settings(format!(
            "store.postgres.password_file {}: empty (the password is its first line)",
            file.display()
        )));
    }
    Ok(password.to_owned())
}

/// The rustls client config for `opts` (any sslmode but `disable`).
fn client_tls(opts: &PgOptions) -> Result<ClientConfig, StoreError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls_err = |e: TlsFileError| settings(e.to_string());
    let verifier: Arc<dyn ServerCertVerifier> = match (&opts.ca_file, opts.sslmode) {
        (Some(ca_file), mode) => {
            let pem = load_certs("store.postgres.ca_file", ca_file).map_err(tls_err)?;
            let mut roots = RootCertStore::empty();
            for der in CertificateDer::pem_slice_iter(&pem.pem) {
                let der =
                    der.map_err(|e| settings(format!("store.postgres.ca_file {}: {e}", ca_file.display())))?;
                roots.add(der).map_err(|e| {
                    settings(format!(
                        "store.postgres.ca_file {}: not a usable CA certificate: {e}",
                        ca_file.display()
                    ))
                })?;
            }
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| settings(format!("store.postgres.ca_file {}: {e}", ca_file.display())))?;
            if mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(AnyName(webpki))
            }
        }
        (None, mode) if mode.verifies() => {
            return Err(settings(format!(
                "store.postgres.sslmode {mode} needs store.postgres.ca_file (the CA that signed the server's certificate)"
            )));
        }
        (None, _) => Arc::new(Unverified(provider.signature_verification_algorithms)),
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| settings(format!("TLS to PostgreSQL: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match (&opts.cert_file, &opts.key_file) {
        (Some(cert_file), Some(key_file)) => {
            let cert = load_certs("store.postgres.cert_file", cert_file).map_err(tls_err)?;
            let key = load_key("store.postgres.key_file", key_file).map_err(tls_err)?;
            let chain = CertificateDer::pem_slice_iter(&cert.pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| settings(format!("store.postgres.cert_file {}: {e}", cert_file.display())))?;
            let key = PrivateKeyDer::from_pem_slice(&key.pem)
                .map_err(|e| settings(format!("store.postgres.key_file {}: {e}", key_file.display())))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                settings(format!(
                    "store.postgres.cert_file {} and key_file {}: {e}",
                    cert_file.display(),
                    key_file.display()
                ))
            })
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(_), None) => Err(settings(
            "store.postgres.cert_file is set without key_file".into(),
        )),
        (None, Some(_)) => Err(settings(
            "store.postgres.key_file is set without cert_file".into(),
        )),
    }
}

/// `verify-ca` (and `require`/`prefer` with a `ca_file`): the chain must
/// lead to the CA, the name in the certificate is not compared with the host.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `require` / `prefer` without a `ca_file`: any certificate is accepted
/// (libpq's behaviour: encrypted, not authenticated). The handshake's
/// signatures are still checked, so the peer holds the certificate's key.
#[derive(Debug)]
struct Unverified(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_names_round_trip() {
        for m in [
            SslMode::Disable,
            SslMode::Prefer,
            SslMode::Require,
            SslMode::VerifyCa,
            SslMode::VerifyFull,
        ] {
            assert_eq!(m.as_str().parse::<SslMode>().unwrap(), m);
        }
        let e = "verify_full".parse::<SslMode>().unwrap_err();
        assert!(e.contains("verify_full") && e.contains("verify-full"), "{e}");
    }

    #[test]
    fn the_password_is_the_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret \r\nsecond line\n").unwrap();
        assert_eq!(read_password(&f).unwrap(), "s3cret ");
        std::fs::write(&f, "\n").unwrap();
        let e = read_password(&f).unwrap_err().to_string();
        assert!(e.contains("empty") && e.contains(&f.display().to_string()), "{e}");
        let missing = dir.path().join("nope");
        let e = read_password(&missing).unwrap_err().to_string();
        assert!(
            e.contains("store.postgres.password_file") && e.contains("nope: no such file"),
            "{e}"
        );
    }

    #[test]
    fn describe_hides_the_password() {
        let o = PgOptions::from_url("postgres://u:hunter2@db.example:6543/store");
        assert_eq!(o.describe(), "u@db.example:6543/store");
        let o = PgOptions::from_url("host=/run/postgresql user=hp dbname=x password=hunter2");
        assert_eq!(o.describe(), "hp@/run/postgresql:5432/x");
    }

    #[test]
    fn verify_modes_need_a_ca() {
        let mut o = PgOptions::from_url("postgres://u@h/d");
        o.sslmode = SslMode::VerifyFull;
        let e = client_tls(&o).unwrap_err().to_string();
        assert!(e.contains("verify-full needs store.postgres.ca_file"), "{e}");
        o.sslmode = SslMode::Require;
        client_tls(&o).unwrap();
    }
}
