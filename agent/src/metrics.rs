//! The agent's Prometheus endpoint: `GET /metrics`, from one registry that
//! each component registers into under its own prefix (no global metrics),
//! served as OpenMetrics to a scraper that asks for it and as the Prometheus
//! text format 0.0.4 otherwise. Off unless `metrics.listen` is set.
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::routing::get;
use hostplane_common::exposition;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// The `metrics:` section of the agent config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address to serve `/metrics` on, e.g. `127.0.0.1:9464`; unset = no endpoint.
    pub listen: Option<SocketAddr>,
}

/// The agent process's own resources under the conventional `process_*`
/// names (shared with the coordinator).
pub use hostplane_common::exposition::process::ProcessCollector;

/// Render the registry in the OpenMetrics text format (what
/// `prometheus-client` writes; [`hostplane_common::exposition`] converts it
/// for scrapers that asked for the Prometheus text format).
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).expect("writing to a String cannot fail");
    out
}

/// The `/metrics` response for a scraper's `Accept` header: OpenMetrics
/// when it asked for it, else the Prometheus text format 0.0.4, each with
/// its own content type.
pub fn respond(registry: &Registry, accept: Option<&str>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let format = exposition::negotiate(accept);
    match exposition::encode(format, render(registry)) {
        Ok(body) => ([(header::CONTENT_TYPE, format.content_type())], body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode the metrics");
            (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode the metrics: {e}\n"),
            )
                .into_response()
        }
    }
}

/// Bind `listen` now (so a bad address fails at start) and serve until
/// `shutdown`, in a task `tasks` owns.
pub async fn serve(
    listen: SocketAddr,
    registry: Arc<Registry>,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = Router::new().route(
        "/metrics",
        get(move |headers: axum::http::HeaderMap| {
            let registry = registry.clone();
            async move {
                let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
                respond(&registry, accept)
            }
        }),
    );
    let task = tasks.spawn(
        async move {
            let r = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "metrics endpoint failed");
            }
        }
        .instrument(tracing::info_span!("metrics")),
    );
    tracing::info!(%addr, "metrics endpoint serving /metrics");
    Ok((addr, task))
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[tokio::test]
    async fn the_endpoint_serves_the_format_the_scraper_asked_for() {
        let mut registry = Registry::default();
        let c: Counter = Counter::default();
        registry
            .sub_registry_with_prefix("hostplane_test")
            .register("things", "Things counted", c.clone());
        c.inc();
        let stop = CancellationToken::new();
        let (addr, task) = serve(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(registry),
            &TaskTracker::new(),
            stop.clone(),
        )
        .await
        .unwrap();
        let get = |accept: Option<&'static str>| async move {
            let mut req = reqwest::Client::new().get(format!("http://{addr}/metrics"));
            if let Some(a) = accept {
                req = req.header(header::ACCEPT, a);
            }
            let r = req.send().await.unwrap();
            let ct = r.headers()[header::CONTENT_TYPE].to_str().unwrap().to_string();
            (ct, r.text().await.unwrap())
        };
        let (ct, body) = get(None).await;
        assert_eq!(ct, exposition::TEXT_CONTENT_TYPE);
        assert!(
            body.contains("# TYPE hostplane_test_things_total counter\n"),
            "{body}"
        );
        assert!(
            body.contains("hostplane_test_things_total 1\n") && !body.contains("# EOF"),
            "{body}"
        );
        let (ct, body) = get(Some("application/openmetrics-text;version=1.0.0,*/*;q=0.1")).await;
        assert_eq!(ct, exposition::OPENMETRICS_CONTENT_TYPE);
        assert!(body.contains("# TYPE hostplane_test_things counter\n"), "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");
        stop.cancel();
        task.await.unwrap();
    }
}
