//! The connection to the coordinator's AdminService.
use std::path::PathBuf;
use std::time::Duration;

use hostplane_proto::v1::admin_service_client::AdminServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::error::{Error, chain};

/// The generated client with the bearer-token interceptor.
pub type Client = AdminServiceClient<InterceptedService<Channel, Auth>>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Adds `authorization: Bearer <token>` to every call when a token is set.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    bearer: Option<MetadataValue<Ascii>>,
}

impl Auth {
    pub fn new(token: Option<&str>) -> Result<Self, Error> {
        let bearer = match token.filter(|t| !t.is_empty()) {
            None => None,
            Some(t) => Some(format!("Bearer {t}").parse().map_err(|_| Error::BadToken)?),
        };
        Ok(Auth { bearer })
    }
}

impl Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.bearer {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// TLS files for `https://` servers (`--ca-file`, `--cert-file`, `--key-file`).
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl TlsFiles {
    fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.cert_file.is_none() && self.key_file.is_none()
    }

    /// The checked files as tonic's client TLS settings.
    pub fn client_config(&self) -> Result<ClientTlsConfig, Error> {
        use hostplane_common::tls::{load_certs, load_key};
        let tls = |e: hostplane_common::tls::TlsFileError| Error::Tls {
            reason: e.to_string(),
        };
        let mut cfg = ClientTlsConfig::new();
        match &self.ca_file {
            Some(p) => {
                cfg = cfg.ca_certificate(Certificate::from_pem(
                    load_certs("--ca-file", p).map_err(tls)?.pem,
                ))
            }
            None => {
                return Err(Error::Tls {
                    reason: "an https:// server needs --ca-file (HOSTPLANE_CA_FILE): the CA that signed the \
                             coordinator's certificate"
                        .into(),
                });
            }
        }
        if let (Some(c), Some(k)) = (&self.cert_file, &self.key_file) {
            let cert = load_certs("--cert-file", c).map_err(tls)?.pem;
            let key = load_key("--key-file", k).map_err(tls)?.pem;
            cfg = cfg.identity(Identity::from_pem(cert, key));
        }
        Ok(cfg)
    }
}

/// Connect to `server` (`http://host:port`); a server that cannot be reached is [`Error::Connect`].
pub async fn connect(server: &str, token: Option<&str>) -> Result<Client, Error> {
    connect_with(server, token, &TlsFiles::default()).await
}

/// [`connect`], over TLS when `server` is `https://` (with a client certificate when given).
pub async fn connect_with(server: &str, token: Option<&str>, tls: &TlsFiles) -> Result<Client, Error> {
    let auth = Auth::new(token)?;
    let mut endpoint = Endpoint::from_shared(server.to_string())
        .map_err(|e| Error::BadServer {
            server: server.into(),
            reason: chain(&e),
        })?
        .connect_timeout(CONNECT_TIMEOUT);
    if server.starts_with("https://") {
        endpoint = endpoint
            .tls_config(tls.client_config()?)
            .map_err(|e| Error::Tls {
                reason: format!("TLS setup: {}", chain(&e)),
            })?;
    } else if !tls.is_empty() {
        return Err(Error::Tls {
            reason: format!(
                "--ca-file/--cert-file/--key-file given, but --server {server:?} is not https://"
            ),
        });
    }
    let channel = endpoint.connect().await.map_err(|e| Error::Connect {
        server: server.into(),
        reason: chain(&e),
    })?;
    Ok(AdminServiceClient::with_interceptor(channel, auth))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_becomes_bearer_metadata() {
        let mut auth = Auth::new(Some("s3cret")).unwrap();
        let req = auth.call(tonic::Request::new(())).unwrap();
        assert_eq!(req.metadata().get("authorization").unwrap(), "Bearer s3cret");

        let mut none = Auth::new(None).unwrap();
        assert!(
            none.call(tonic::Request::new(()))
                .unwrap()
                .metadata()
                .get("authorization")
                .is_none()
        );
        let mut empty = Auth::new(Some("")).unwrap();
        assert!(
            empty
                .call(tonic::Request::new(()))
                .unwrap()
                .metadata()
                .get("authorization")
                .is_none()
        );

        assert!(matches!(Auth::new(Some("bad\ntoken")), Err(Error::BadToken)));
    }

    #[tokio::test]
    async fn bad_server_address_is_a_usage_error() {
        let e = connect("not a url", None).await.unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
        assert!(e.to_string().contains("not a url"), "{e}");
    }
}
