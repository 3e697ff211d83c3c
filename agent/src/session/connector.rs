//! Opening the `Session` stream. [`Connector`] is the seam: production uses
//! [`GrpcConnector`] (tonic over HTTP/2); tests can script the stream without
//! a network.
use futures::StreamExt;
use futures::stream::BoxStream;
use hostplane_proto::v1::agent_service_client::AgentServiceClient;
use hostplane_proto::v1::{AgentMessage, CoordinatorMessage};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use super::{SessionConfig, TlsConfig};
use crate::exec::BoxFuture;

/// Messages from the coordinator on one stream.
pub type Inbound = BoxStream<'static, Result<CoordinatorMessage, tonic::Status>>;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid coordinator url {url:?}: {detail}")]
    Url { url: String, detail: String },
    #[error("coordinator {url}: {detail}")]
    Tls { url: String, detail: String },
    #[error("cannot connect to coordinator {url}: {detail}")]
    Transport { url: String, detail: String },
    #[error("coordinator {url} refused the session: {code:?}: {message}")]
    Rejected {
        url: String,
        code: tonic::Code,
        message: String,
    },
}

pub trait Connector: Send + Sync + 'static {
    /// Where this connects, for logs.
    fn target(&self) -> &str;

    /// Open one Session stream. `outbound` already holds Hello; everything the
    /// agent sends on this connection goes through it.
    fn open(&self, outbound: ReceiverStream<AgentMessage>) -> BoxFuture<'_, Result<Inbound, ConnectError>>;
}

/// The production connector: a fresh HTTP/2 connection per attempt, with
/// connect timeout and keepalive from the config.
pub struct GrpcConnector {
    url: String,
    endpoint: Endpoint,
}

impl GrpcConnector {
    /// `tls` is required for `https://` URLs (and read here, so a bad file
    /// fails at start with its name), ignored for `http://`.
    pub fn new(url: &str, s: &SessionConfig, tls: Option<&TlsConfig>) -> Result<GrpcConnector, ConnectError> {
        let mut endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| ConnectError::Url {
                url: url.to_string(),
                detail: error_chain(&e),
            })?
            .connect_timeout(s.connect_timeout)
            .http2_keep_alive_interval(s.keepalive_interval)
            .keep_alive_timeout(s.keepalive_timeout)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        if url.starts_with("https://") {
            let tls_err = |detail: String| ConnectError::Tls {
                url: url.to_string(),
                detail,
            };
            let t = tls
                .ok_or_else(|| tls_err("https needs a tls section (ca_file, cert_file, key_file)".into()))?;
            let files = t.load().map_err(|e| tls_err(format!("invalid config: {e}")))?;
            // The server name checked against the coordinator's certificate is the URL's host.
            let cfg = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&files.ca))
                .identity(Identity::from_pem(&files.cert, &files.key));
            endpoint = endpoint
                .tls_config(cfg)
                .map_err(|e| tls_err(format!("TLS setup: {}", error_chain(&e))))?;
        }
        Ok(GrpcConnector {
            url: url.to_string(),
            endpoint,
        })
    }
}

impl GrpcConnector {
    fn tls_hint(&self) -> &'static str {
        if self.url.starts_with("https://") {
            " (over mTLS a closed connection or an alert usually means the coordinator refused this \
             node's certificate: signed by a CA other than its tls.client_ca_file, expired, or not \
             yet valid; or that tls.ca_file did not sign the coordinator's. The coordinator logs the \
             reason as 'TLS handshake refused' and writes it to its audit file)"
        } else {
            ""
        }
    }
}

impl Connector for GrpcConnector {
    fn target(&self) -> &str {
        &self.url
    }

    fn open(&self, outbound: ReceiverStream<AgentMessage>) -> BoxFuture<'_, Result<Inbound, ConnectError>> {
        Box::pin(async move {
            let channel = self
                .endpoint
                .connect()
                .await
                .map_err(|e| ConnectError::Transport {
                    url: self.url.clone(),
                    detail: error_chain(&e) + self.tls_hint(),
                })?;
            // The same limit the coordinator composes desired states under.
            let mut client = AgentServiceClient::new(channel)
                .max_decoding_message_size(hostplane_proto::limits::MAX_AGENT_MESSAGE_BYTES);
            let response = client.session(outbound).await.map_err(|s| {
                // A certificate the coordinator refused shows up here, on the
                // first request, as a closed connection (TLS 1.3).
                let mut message = s.message().to_string();
                if let Some(src) = std::error::Error::source(&s) {
                    message = format!("{message}: {}{}", error_chain(src), self.tls_hint());
                }
                ConnectError::Rejected {
                    url: self.url.clone(),
                    code: s.code(),
                    message,
                }
            })?;
            Ok(response.into_inner().boxed())
        })
    }
}

/// "a: b: c" from an error and its sources (tonic's transport error alone says only "transport error").
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}
