//! The audit file cannot be filled by whoever can reach the API: refused
//! calls with a 1 MiB field add a bounded amount per call (fields cut to
//! `audit::MAX_FIELD`), and refusals are recorded at most
//! `audit::REFUSALS_PER_MINUTE` a minute per peer and identity.
mod backend;

use std::path::Path;

use hostplane_coordinator::api::auth::{AuthConfig, hash_token};
use hostplane_coordinator::audit::{MAX_FIELD, REFUSALS_PER_MINUTE};
use hostplane_coordinator::config::Config;
use hostplane_coordinator::server::{self, ServeOptions};
use hostplane_proto::v1::admin_service_client::AdminServiceClient;
use hostplane_proto::v1::{DeleteRequest, Kind};
use tokio_util::sync::CancellationToken;

fn request(name: &str, token: Option<&str>) -> tonic::Request<DeleteRequest> {
    let mut r = tonic::Request::new(DeleteRequest {
        kind: Kind::Node as i32,
        name: name.into(),
        ..Default::default()
    });
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// A record: six fields of at most MAX_FIELD bytes plus their "… (N bytes)"
/// notes, the JSON around them and the time.
const RECORD_BOUND: u64 = (6 * (MAX_FIELD + 32) + 200) as u64;

#[tokio::test]
async fn refusals_with_a_huge_field_grow_the_audit_file_by_a_bounded_amount() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(
        &tokens,
        format!(
            "tokens:\n  - {{name: ada, role: admin, sha256: {}}}\n",
            hash_token("admin-secret")
        ),
    )
    .unwrap();
    let audit = dir.path().join("audit.jsonl");
    let mut cfg = Config::default();
    cfg.store.path = dir.path().join("c.db");
    cfg.insecure = true;
    cfg.auth = AuthConfig {
        tokens_file: Some(tokens),
        audit_file: Some(audit.clone()),
        ..AuthConfig::default()
    };
    let store = backend::store_at(&cfg.store.path);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let opts = ServeOptions {
        store: Some(store),
        run_reconciler: false,
        reload: None,
        ha: backend::ha_at(&cfg.store.path, addr),
    };
    let server = tokio::spawn(server::serve_with(cfg, listener, stop.clone(), opts));
    let mut c = AdminServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let huge = "n".repeat(1 << 20);

    // No token: refused before anything runs; recorded at most so many times.
    let calls = REFUSALS_PER_MINUTE as u64 * 3;
    for _ in 0..calls {
        let e = c.delete(request(&huge, None)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
    }
    let refused = size(&audit);
    assert!(
        refused <= u64::from(REFUSALS_PER_MINUTE) * RECORD_BOUND,
        "{calls} refusals with a 1 MiB name wrote {refused} bytes"
    );
    let lines = std::fs::read_to_string(&audit).unwrap();
    assert_eq!(lines.lines().count(), REFUSALS_PER_MINUTE as usize);
    let first: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    let target = first["target"].as_str().unwrap();
    assert!(
        target.starts_with("node/nnnn") && target.ends_with(&format!("… ({} bytes)", huge.len() + 5)),
        "the record says how long the field was: {}",
        &target[target.len() - 40..]
    );

    // An admin's failing calls are all recorded (they are not refusals of
    // the caller), each bounded: the name is refused by its length.
    for _ in 0..calls {
        let e = c.delete(request(&huge, Some("admin-secret"))).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().len() < 200, "{}", e.message());
    }
    let grown = size(&audit) - refused;
    assert!(
        grown <= calls * RECORD_BOUND,
        "{calls} failing calls wrote {grown} bytes"
    );
    let text = std::fs::read_to_string(&audit).unwrap();
    assert_eq!(
        text.lines().count() as u64,
        u64::from(REFUSALS_PER_MINUTE) + calls
    );
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["who"], "ada");
    assert!(
        last["result"]
            .as_str()
            .unwrap()
            .starts_with("error InvalidArgument: name: 1048576 bytes, more than the maximum of 63"),
        "{}",
        last["result"]
    );
    stop.cancel();
    server.await.unwrap().unwrap();
}
