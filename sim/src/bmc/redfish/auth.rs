//! Who may call: HTTP Basic against the BMC's one account, or a session
//! token (`X-Auth-Token`) from `POST /redfish/v1/SessionService/Sessions`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::Value;

use super::errors::{RfError, json_response};
use super::patch::parse_object;
use super::resources::session;
use super::{Bmc, BmcState, SESSIONS};

/// `SessionService.SessionTimeout`: a session unused this long is gone.
pub(crate) const SESSION_TIMEOUT: Duration = Duration::from_secs(1800);
/// Open sessions at most; a login beyond gets 503 SessionLimitExceeded.
pub(crate) const MAX_SESSIONS: usize = 64;

/// Open sessions by token.
#[derive(Default)]
pub(crate) struct Sessions {
    next_id: u64,
    by_token: HashMap<String, Session>,
}

struct Session {
    id: String,
    user: String,
    last_used: Instant,
}

impl Sessions {
    fn expire(&mut self) {
        self.expire_at(Instant::now());
    }

    fn expire_at(&mut self, now: Instant) {
        self.by_token
            .retain(|_, s| now.saturating_duration_since(s.last_used) < SESSION_TIMEOUT);
    }

    /// A new session: (id, token); None when [`MAX_SESSIONS`] are open.
    fn create(&mut self, user: &str) -> Option<(String, String)> {
        self.expire();
        if self.by_token.len() >= MAX_SESSIONS {
            return None;
        }
        self.next_id += 1;
        let id = self.next_id.to_string();
        let token = uuid::Uuid::new_v4().simple().to_string();
        self.by_token.insert(
            token.clone(),
            Session {
                id: id.clone(),
                user: user.to_string(),
                last_used: Instant::now(),
            },
        );
        Some((id, token))
    }

    /// The session's user, marking it used.
    fn touch(&mut self, token: &str) -> Option<String> {
        self.expire();
        let s = self.by_token.get_mut(token)?;
        s.last_used = Instant::now();
        Some(s.user.clone())
    }

    pub(super) fn user_of(&mut self, id: &str) -> Option<String> {
        self.expire();
        self.by_token
            .values()
            .find(|s| s.id == id)
            .map(|s| s.user.clone())
    }

    pub(super) fn remove(&mut self, id: &str) -> bool {
        let before = self.by_token.len();
        self.by_token.retain(|_, s| s.id != id);
        self.by_token.len() != before
    }

    pub(super) fn ids(&mut self) -> Vec<String> {
        self.expire();
        let mut ids: Vec<u64> = self.by_token.values().filter_map(|s| s.id.parse().ok()).collect();
        ids.sort_unstable();
        ids.into_iter().map(|i| i.to_string()).collect()
    }

    pub(crate) fn clear(&mut self) {
        self.by_token.clear();
    }
}

/// `X-Auth-Token` (a session) or `Authorization: Basic`.
pub(super) fn authenticate(bmc: &Bmc, state: &mut BmcState, headers: &HeaderMap) -> Result<String, RfError> {
    if let Some(token) = headers.get("x-auth-token") {
        let token = token.to_str().unwrap_or_default();
        return state
            .sessions
            .touch(token)
            .ok_or_else(|| unauthorized("the X-Auth-Token names no open session"));
    }
    let Some(auth) = headers.get(header::AUTHORIZATION) else {
        return Err(unauthorized(
            "no credentials: send X-Auth-Token or Authorization: Basic",
        ));
    };
    let Some((user, password)) = auth.to_str().ok().and_then(parse_basic) else {
        return Err(unauthorized("the Authorization header is not Basic credentials"));
    };
    if user == bmc.username && password == bmc.password {
        Ok(user)
    } else {
        Err(unauthorized("wrong username or password"))
    }
}

pub(super) fn parse_basic(value: &str) -> Option<(String, String)> {
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// 401 NoValidSession; the registry's text has no room for why, so the log says it.
pub(super) fn unauthorized(why: &str) -> RfError {
    tracing::debug!(why, "request refused: 401");
    RfError::NoValidSession
}

pub(super) fn login(bmc: &Bmc, sessions: &mut Sessions, body: &[u8]) -> Response {
    let obj = match parse_object(body) {
        Ok(o) => o,
        Err(e) => return e.into_response(),
    };
    let field = |name: &str| -> Result<String, RfError> {
        match obj.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(v) => Err(RfError::TypeError(v.to_string(), name.to_string())),
            None => Err(RfError::Missing(name.to_string())),
        }
    };
    let (user, password) = match (field("UserName"), field("Password")) {
        (Ok(u), Ok(p)) => (u, p),
        (Err(e), _) | (_, Err(e)) => return e.into_response(),
    };
    if user != bmc.username || password != bmc.password {
        tracing::debug!(bmc = %bmc.name, %user, "login refused");
        return unauthorized("wrong username or password").into_response();
    }
    let Some((id, token)) = sessions.create(&user) else {
        return RfError::SessionLimit.into_response();
    };
    tracing::debug!(bmc = %bmc.name, %user, session = %id, "session created");
    let location = format!("{SESSIONS}/{id}");
    let mut r = json_response(StatusCode::CREATED, session(&id, &user));
    let h = r.headers_mut();
    h.insert(
        HeaderName::from_static("x-auth-token"),
        HeaderValue::from_str(&token).expect("a hex token is a valid header"),
    );
    h.insert(
        header::LOCATION,
        HeaderValue::from_str(&location).expect("a path is a valid header"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_decode() {
        assert_eq!(
            parse_basic("Basic YWRtaW46YTpi"),
            Some(("admin".into(), "a:b".into()))
        );
        assert_eq!(
            parse_basic("basic YWRtaW46YWRtaW4="),
            Some(("admin".into(), "admin".into()))
        );
        assert_eq!(parse_basic("Bearer YWRtaW46YWRtaW4="), None);
        assert_eq!(parse_basic("Basic !!!"), None);
        assert_eq!(parse_basic("Basic YWRtaW4="), None);
    }

    #[test]
    fn sessions_expire_and_are_capped() {
        let mut s = Sessions::default();
        let (id, token) = s.create("admin").unwrap();
        assert_eq!(s.touch(&token).as_deref(), Some("admin"));
        assert_eq!(s.ids(), vec![id.clone()]);
        s.expire_at(Instant::now() + SESSION_TIMEOUT / 2);
        assert_eq!(s.ids(), vec![id.clone()]);
        s.expire_at(Instant::now() + SESSION_TIMEOUT);
        assert_eq!(s.touch(&token), None);
        for _ in 0..MAX_SESSIONS {
            assert!(s.create("admin").is_some());
        }
        assert!(s.create("admin").is_none());
        let first = s.ids()[0].clone();
        assert!(s.remove(&first));
        assert!(!s.remove(&first));
        assert!(s.create("admin").is_some());
    }
}
