//! HTTP to one BMC. At most one request is in flight, and each starts at
//! least `min_request_interval` after the previous one finished (the gate:
//! a mutex held for the whole request, body included, and the instant the
//! last one ended). Auth is a session (`X-Auth-Token`, re-created once when
//! the BMC answers 401) or HTTP Basic when the BMC has no SessionService.
//!
//! Requests, and so the credentials, go only to the configured BMC: a link
//! from the BMC's JSON (`@odata.id`, a session's `Location`) that resolves
//! to another scheme, host or port is refused before anything is sent, and
//! redirects are not followed (the client is built without them, see
//! `discover::http_client`).
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderMap, LOCATION};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::time::Instant;

use super::{RedfishError, Secret, parse};

/// How the client proves who it is.
#[derive(Clone)]
enum Auth {
    /// Before the first login.
    None,
    Basic {
        password: Secret,
    },
    Session {
        token: Secret,
        /// The session's URI, deleted at logout.
        location: Option<String>,
    },
}

struct AuthState {
    auth: Auth,
    /// Bumped at every login, so concurrent 401s log in only once.
    generation: u64,
}

pub(super) struct Transport {
    http: reqwest::Client,
    /// `scheme://host[:port]`, no trailing slash.
    origin: String,
    /// `origin` parsed: links are resolved against it and must keep its origin.
    base: reqwest::Url,
    username: String,
    password_file: PathBuf,
    min_interval: Duration,
    timeout: Duration,
    /// When the last request finished; held for the whole of each request.
    gate: tokio::sync::Mutex<Option<Instant>>,
    auth: std::sync::Mutex<AuthState>,
    relogin: tokio::sync::Mutex<()>,
    /// The sessions collection; None: Basic auth.
    sessions: std::sync::Mutex<Option<String>>,
    /// Requests sent, by outcome (`/metrics`).
    counts: RequestCounts,
}

/// `hostplane_bmc_requests_total{outcome}`: every request sent to the BMC,
/// by outcome — `ok` (2xx), `http_error` (any other status, 401 included),
/// `unreachable` (no answer: refused, timed out, TLS). Cheap to clone; the
/// clones count together.
pub type RequestCounts =
    prometheus_client::metrics::family::Family<RequestOutcome, prometheus_client::metrics::counter::Counter>;

#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct RequestOutcome {
    pub outcome: &'static str,
}

/// An answer, read whole while the gate was held.
pub(super) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: bytes::Bytes,
}

impl Transport {
    pub fn new(
        http: reqwest::Client,
        origin: String,
        username: String,
        password_file: PathBuf,
        min_interval: Duration,
        timeout: Duration,
        counts: RequestCounts,
    ) -> Result<Transport, RedfishError> {
        let base = reqwest::Url::parse(&origin).map_err(|e| RedfishError::Config {
            field: "power.bmc.url",
            reason: format!("{origin:?} is not a URL: {e}"),
        })?;
        Ok(Transport {
            http,
            origin,
            base,
            username,
            password_file,
            min_interval,
            timeout,
            gate: tokio::sync::Mutex::new(None),
            auth: std::sync::Mutex::new(AuthState {
                auth: Auth::None,
                generation: 0,
            }),
            relogin: tokio::sync::Mutex::new(()),
            counts,
            sessions: std::sync::Mutex::new(None),
        })
    }

    /// A link as shown in messages (nothing is checked: requests go through
    /// [`Transport::resolve`]).
    pub fn url(&self, path: &str) -> String {
        // A link may carry a JSON-pointer fragment (`.../Power#/PowerControl/0`).
        let path = path.split('#').next().unwrap_or(path);
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}{path}", self.origin)
        }
    }

    /// The URL to request for a link from the BMC (a path, or an absolute
    /// URL), refused unless it is on the configured BMC: same scheme, host
    /// and port as `power.bmc.url`. A BMC (or whoever controls its JSON)
    /// cannot send the session token or the password anywhere else.
    pub fn resolve(&self, link: &str) -> Result<String, RedfishError> {
        let path = link.split('#').next().unwrap_or(link);
        let refused = |why: String| {
            RedfishError::Invalid(format!(
                "refused the BMC's link {link:?}: {why}; requests and credentials go only to the BMC at {} \
                 (power.bmc.url)",
                self.origin
            ))
        };
        let url = self
            .base
            .join(path)
            .map_err(|e| refused(format!("it is not a URL ({e})")))?;
        if url.origin() != self.base.origin() {
            return Err(refused(format!(
                "it points to {}, not to the BMC",
                url.origin().ascii_serialization()
            )));
        }
        Ok(url.to_string())
    }

    /// `power.bmc.timeout`: how long a request waits for its answer.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// "session" or "basic".
    pub fn auth_kind(&self) -> &'static str {
        match self.state().auth {
            Auth::None => "none",
            Auth::Basic { .. } => "basic",
            Auth::Session { .. } => "session",
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, AuthState> {
        self.auth.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One request through the gate (`Auth::None`: no credentials, for the
    /// service root and the login itself).
    async fn send(
        &self,
        method: &Method,
        url: &str,
        auth: &Auth,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Answer, RedfishError> {
        let mut last = self.gate.lock().await;
        if let Some(t) = *last {
            tokio::time::sleep_until(t + self.min_interval).await;
        }
        let mut rb = self
            .http
            .request(method.clone(), url)
            .timeout(timeout)
            .header(reqwest::header::ACCEPT, "application/json");
        match auth {
            Auth::None => {}
            Auth::Basic { password } => rb = rb.basic_auth(&self.username, Some(&password.0)),
            Auth::Session { token, .. } => rb = rb.header("X-Auth-Token", &token.0),
        }
        if let Some(b) = body {
            rb = rb.header(CONTENT_TYPE, "application/json").body(b);
        }
        let result = async {
            let resp = rb.send().await?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.bytes().await?;
            Ok::<_, reqwest::Error>(Answer {
                status,
                headers,
                body,
            })
        }
        .await;
        *last = Some(Instant::now());
        drop(last);
        let outcome = match &result {
            Ok(a) if a.status.is_success() => "ok",
            Ok(_) => "http_error",
            Err(_) => "unreachable",
        };
        self.counts.get_or_create(&RequestOutcome { outcome }).inc();
        result.map_err(|e| RedfishError::Unreachable {
            method: method.to_string(),
            url: url.to_string(),
            reason: transport_reason(&e, timeout),
        })
    }

    /// GET without credentials (the service root).
    pub async fn get_anonymous(&self, path: &str) -> Result<Value, RedfishError> {
        let url = self.resolve(path)?;
        let a = self
            .send(&Method::GET, &url, &Auth::None, None, self.timeout)
            .await?;
        json_of(&Method::GET, &url, a, &self.password_file)
    }

    /// An authenticated request; on a 401, log in again once (a new session,
    /// or the password file read again for Basic) and retry. Returns the body
    /// (Null when empty).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, RedfishError> {
        self.call_within(method, path, body, self.timeout).await
    }

    /// [`Transport::call`] with each request given `timeout` for its answer
    /// instead of `power.bmc.timeout` (a BMC may answer a Reset only after
    /// the power operation).
    pub async fn call_within(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Value, RedfishError> {
        let url = self.resolve(path)?;
        let bytes = body.map(|b| serde_json::to_vec(b).expect("a JSON value serializes"));
        let mut retried = false;
        loop {
            let (auth, generation) = {
                let s = self.state();
                (s.auth.clone(), s.generation)
            };
            let a = self.send(&method, &url, &auth, bytes.clone(), timeout).await?;
            if a.status == StatusCode::UNAUTHORIZED && !retried {
                tracing::info!(%url, "the BMC refused the credentials (401); logging in again");
                self.relogin(generation).await?;
                retried = true;
                continue;
            }
            return json_of(&method, &url, a, &self.password_file);
        }
    }

    /// Log in: a session when the BMC has a sessions collection (`sessions`
    /// Some), else HTTP Basic (checked by the first authenticated GET).
    pub async fn login(&self, sessions: Option<String>) -> Result<(), RedfishError> {
        *self.sessions.lock().unwrap_or_else(|p| p.into_inner()) = sessions;
        let generation = self.state().generation;
        self.relogin(generation).await
    }

    /// Log in again unless someone did since `generation`.
    async fn relogin(&self, generation: u64) -> Result<(), RedfishError> {
        let _one = self.relogin.lock().await;
        if self.state().generation != generation {
            return Ok(());
        }
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let password = read_password_blocking(self.password_file.clone()).await?;
        let auth = match sessions {
            None => Auth::Basic { password },
            Some(path) => self.create_session(&path, password).await?,
        };
        let mut s = self.state();
        s.auth = auth;
        s.generation += 1;
        Ok(())
    }

    async fn create_session(&self, path: &str, password: Secret) -> Result<Auth, RedfishError> {
        let url = self.resolve(path)?;
        let body = serde_json::json!({"UserName": self.username, "Password": password.0});
        let body = serde_json::to_vec(&body).expect("a JSON value serializes");
        let a = self
            .send(&Method::POST, &url, &Auth::None, Some(body), self.timeout)
            .await?;
        if !a.status.is_success() {
            return Err(status_error(&Method::POST, &url, &a, &self.password_file));
        }
        let token = a
            .headers
            .get("X-Auth-Token")
            .and_then(|v| v.to_str().ok())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| RedfishError::Resource {
                url: url.clone(),
                what: format!("answered {} to the login but sent no X-Auth-Token", a.status),
            })?;
        // The session's URI, deleted at logout: the Location header, else the
        // body's @odata.id; one that is not on the BMC is not used (the
        // session then expires on the BMC by itself).
        let from_header = a
            .headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let from_body = serde_json::from_slice::<Value>(&a.body)
            .ok()
            .and_then(|v| parse::odata_id(&v).map(String::from));
        let location = [from_header, from_body]
            .into_iter()
            .flatten()
            .find(|l| match self.resolve(l) {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "the BMC's session URI is not used");
                    false
                }
            });
        Ok(Auth::Session {
            token: Secret(token.to_string()),
            location,
        })
    }

    /// Delete the session, if there is one (BMCs have few session slots). A
    /// later call logs in again.
    pub async fn logout(&self) {
        let auth = self.state().auth.clone();
        let Auth::Session {
            location: Some(loc), ..
        } = &auth
        else {
            return;
        };
        let url = match self.resolve(loc) {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "BMC session not deleted");
                return;
            }
        };
        match self.send(&Method::DELETE, &url, &auth, None, self.timeout).await {
            Ok(a) if a.status.is_success() => tracing::debug!(%url, "BMC session deleted"),
            Ok(a) => tracing::debug!(%url, status = %a.status, "BMC session not deleted"),
            Err(e) => tracing::debug!(error = %e, "BMC session not deleted"),
        }
    }
}

/// The password, read from its file now (so a rotated password is used at
/// the next login); one trailing newline is not part of it.
pub(super) fn read_password(path: &Path) -> Result<Secret, RedfishError> {
    let text = std::fs::read_to_string(path).map_err(|e| RedfishError::Config {
        field: "power.bmc.password_file",
        reason: format!("cannot read the BMC password from {}: {e}", path.display()),
    })?;
    let p = text
        .strip_suffix('\n')
        .map(|p| p.strip_suffix('\r').unwrap_or(p))
        .unwrap_or(&text);
    if p.is_empty() {
        return Err(RedfishError::Config {
            field: "power.bmc.password_file",
            reason: format!("{} is empty", path.display()),
        });
    }
    Ok(Secret(p.to_string()))
}

/// [`read_password`] on a blocking thread: a file read never runs on an
/// async worker.
async fn read_password_blocking(path: PathBuf) -> Result<Secret, RedfishError> {
    tokio::task::spawn_blocking(move || read_password(&path))
        .await
        .unwrap_or_else(|e| {
            Err(RedfishError::Config {
                field: "power.bmc.password_file",
                reason: format!("the thread reading the BMC password failed: {e}"),
            })
        })
}

fn json_of(method: &Method, url: &str, a: Answer, password_file: &Path) -> Result<Value, RedfishError> {
    if !a.status.is_success() {
        return Err(status_error(method, url, &a, password_file));
    }
    if a.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&a.body).map_err(|e| RedfishError::Resource {
        url: url.to_string(),
        what: format!("is not JSON: {e}"),
    })
}

fn status_error(method: &Method, url: &str, a: &Answer, password_file: &Path) -> RedfishError {
    let mut message = parse::error_message(&a.body).unwrap_or_else(|| {
        let text = String::from_utf8_lossy(&a.body);
        let text = text.trim();
        if text.is_empty() {
            "no error body".into()
        } else {
            text.chars().take(200).collect()
        }
    });
    if a.status.is_redirection() {
        let to = a
            .headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("nowhere it says");
        message = format!(
            "the BMC redirects to {to:?}, and redirects are not followed (requests and credentials go \
             only to power.bmc.url; set it to the BMC's own address)"
        );
    }
    if a.status == StatusCode::UNAUTHORIZED {
        message += &format!(
            " (check power.bmc.username and the password in {})",
            password_file.display()
        );
    }
    RedfishError::Status {
        method: method.to_string(),
        url: url.to_string(),
        status: a.status.as_u16(),
        message: format!("{}: {message}", a.status),
    }
}

/// Why there was no answer, without repeating the URL.
fn transport_reason(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("no answer within {}", humantime::format_duration(timeout));
    }
    let mut parts = Vec::new();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        parts.push(s.to_string());
        src = s.source();
    }
    if parts.is_empty() {
        parts.push(e.to_string());
    }
    parts.dedup();
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transport(origin: &str) -> Transport {
        Transport::new(
            reqwest::Client::new(),
            origin.into(),
            "admin".into(),
            PathBuf::from("/nonexistent"),
            Duration::from_millis(1),
            Duration::from_secs(1),
            RequestCounts::default(),
        )
        .unwrap()
    }

    #[test]
    fn links_resolve_only_onto_the_configured_bmc() {
        let t = transport("http://bmc.example:8080");
        for (link, want) in [
            (
                "/redfish/v1/Chassis",
                "http://bmc.example:8080/redfish/v1/Chassis",
            ),
            (
                "/redfish/v1/Chassis/DGX/Power#/PowerControl/0",
                "http://bmc.example:8080/redfish/v1/Chassis/DGX/Power",
            ),
            (
                "http://bmc.example:8080/redfish/v1",
                "http://bmc.example:8080/redfish/v1",
            ),
            (
                "HTTP://BMC.Example:8080/redfish/v1",
                "http://bmc.example:8080/redfish/v1",
            ),
            // Tricks that must stay on the BMC: a userinfo-looking path and
            // a host-suffix-looking path (`origin + link` would leave it).
            ("@evil.example/x", "http://bmc.example:8080/@evil.example/x"),
            (".evil.example/x", "http://bmc.example:8080/.evil.example/x"),
        ] {
            assert_eq!(t.resolve(link).unwrap(), want, "{link}");
        }
        for link in [
            "http://evil.example:8080/redfish/v1/Chassis",
            "//evil.example:8080/redfish/v1/Chassis",
            "https://bmc.example:8080/redfish/v1",
            "http://bmc.example/redfish/v1",
            "http://bmc.example:8081/redfish/v1",
            "http://admin:pw@evil.example/redfish/v1",
        ] {
            let e = t.resolve(link).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("refused the BMC's link {link:?}: ")),
                "{link}: {e}"
            );
            assert!(e.contains("http://bmc.example:8080 (power.bmc.url)"), "{e}");
        }
        // The default port is the same origin as no port.
        let t = transport("https://bmc.example");
        assert_eq!(
            t.resolve("https://bmc.example:443/redfish/v1").unwrap(),
            "https://bmc.example/redfish/v1"
        );
    }
}
