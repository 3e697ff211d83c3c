//! The Redfish client sends requests, and so the session token or the
//! password, only to the configured BMC: a link in the BMC's JSON that
//! points to another host is refused before anything is sent, and a
//! redirect is not followed.
mod redfish_support;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use hostplane_agent::power::bmc::{BmcConfig, RedfishClient};
use redfish_support::{PASSWORD, Shape, USER};
use serde_json::json;

fn config(url: &str, dir: &tempfile::TempDir) -> BmcConfig {
    let pw: PathBuf = dir.path().join("bmc-password");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    BmcConfig {
        url: url.into(),
        username: USER.into(),
        password_file: Some(pw),
        min_request_interval: Duration::from_millis(1),
        timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_link_to_another_host_is_refused_and_nothing_reaches_it() {
    let other = redfish_support::dgx(Shape::Modern, 1).await;
    let d = tempfile::tempdir().unwrap();
    // Absolute, and protocol-relative (`//host:port/...`).
    let other_host = other.url.trim_start_matches("http:");
    for link in [
        format!("{}/redfish/v1/Chassis", other.url),
        format!("{other_host}/redfish/v1/Chassis"),
    ] {
        let mut res = redfish_support::resources(Shape::Modern, 1, true);
        res.get_mut("/redfish/v1").unwrap()["Chassis"] = json!({"@odata.id": link});
        let bmc = redfish_support::serve(res, true).await;
        let e = RedfishClient::connect(&config(&bmc.url, &d))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("refused the BMC's link {link:?}: ")),
            "{e}"
        );
        assert!(e.contains(&format!("{} (power.bmc.url)", bmc.url)), "{e}");
        assert!(other.hits().is_empty(), "{:?}", other.hits());
        assert!(
            bmc.posts_to_sessions() == 1,
            "the client had a session (a token to leak) when it refused the link"
        );
    }

    // A link met later, at a reading: that reading fails and says why.
    let mut res = redfish_support::resources(Shape::Modern, 1, true);
    let em = format!("{}/redfish/v1/Chassis/DGX/EnvironmentMetrics", other.url);
    res.get_mut("/redfish/v1/Chassis/DGX").unwrap()["EnvironmentMetrics"] = json!({"@odata.id": em});
    let bmc = redfish_support::serve(res, true).await;
    let c = RedfishClient::connect(&config(&bmc.url, &d)).await.unwrap();
    let r = c.sample().await;
    let err = r[0].error.as_deref().unwrap();
    assert!(
        err.starts_with(&format!("refused the BMC's link {em:?}")),
        "{err}"
    );
    assert_eq!(r[0].watts, None);
    assert!(other.hits().is_empty(), "{:?}", other.hits());
}

/// A BMC that logs in with a session, then redirects every authenticated
/// request to `to` (a second server that records what reaches it).
struct Redirector {
    to: String,
    hits: Mutex<Vec<String>>,
}

async fn redirecting(
    State(s): State<Arc<Redirector>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    s.hits.lock().unwrap().push(format!("{method} {}", uri.path()));
    let json = |status: StatusCode, v: serde_json::Value| {
        Response::builder()
            .status(status)
            .header("Content-Type", "application/json")
            .body(Body::from(v.to_string()))
            .unwrap()
    };
    match (method.as_str(), uri.path()) {
        ("GET", "/redfish/v1") => json(
            StatusCode::OK,
            json!({"@odata.id": "/redfish/v1", "Chassis": {"@odata.id": "/redfish/v1/Chassis"},
                "Links": {"Sessions": {"@odata.id": "/redfish/v1/SessionService/Sessions"}}}),
        ),
        ("POST", "/redfish/v1/SessionService/Sessions") => Response::builder()
            .status(StatusCode::CREATED)
            .header("X-Auth-Token", "the-session-token")
            .header("Location", "/redfish/v1/SessionService/Sessions/1")
            .body(Body::empty())
            .unwrap(),
        ("DELETE", _) => Response::builder()
            .status(StatusCode::NO_CONTENT)
            .body(Body::empty())
            .unwrap(),
        (_, path) => {
            assert!(headers.contains_key("X-Auth-Token"));
            Response::builder()
                .status(StatusCode::TEMPORARY_REDIRECT)
                .header("Location", format!("{}{path}", s.to))
                .body(Body::empty())
                .unwrap()
        }
    }
}

#[tokio::test]
async fn a_redirect_is_not_followed() {
    let other = redfish_support::dgx(Shape::Modern, 1).await;
    let state = Arc::new(Redirector {
        to: other.url.clone(),
        hits: Mutex::new(Vec::new()),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new().fallback(redirecting).with_state(state.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let d = tempfile::tempdir().unwrap();
    let e = RedfishClient::connect(&config(&url, &d))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!("GET {url}/redfish/v1/Chassis: 307 Temporary Redirect: ")),
        "{e}"
    );
    assert!(
        e.contains(&format!(
            "the BMC redirects to \"{}/redfish/v1/Chassis\", and redirects are not followed",
            other.url
        )),
        "{e}"
    );
    assert!(
        other.hits().is_empty(),
        "the session token went to the other host: {:?}",
        other.hits()
    );
    assert_eq!(
        state.hits.lock().unwrap().as_slice(),
        [
            "GET /redfish/v1",
            "POST /redfish/v1/SessionService/Sessions",
            "GET /redfish/v1/Chassis",
            "DELETE /redfish/v1/SessionService/Sessions/1"
        ],
        "one try, then the session is deleted"
    );
    server.abort();
}
