//! Admin API bearer tokens, roles and the audit log, through the real server:
//! a missing or unknown token is UNAUTHENTICATED, a viewer deleting or an
//! operator creating is PERMISSION_DENIED — each changes nothing and is in
//! the audit log; allowed mutating calls are audited with who, what, result.
mod backend;

use std::time::Duration;

use hostplane_coordinator::api::auth::{AuthConfig, hash_token};
use hostplane_coordinator::config::Config;
use hostplane_coordinator::server::{self, ServeOptions};
use hostplane_proto::v1::admin_service_client::AdminServiceClient;
use hostplane_proto::v1::{CreateRequest, DeleteRequest, Kind, ListRequest, Node, NodeRef, ObjectMeta};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

fn with_token<T>(msg: T, token: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

fn node(name: &str) -> Node {
    Node {
        metadata: Some(ObjectMeta {
            name: name.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn revision(c: &mut AdminServiceClient<Channel>) -> u64 {
    c.list(with_token(
        ListRequest {
            kind: Kind::Node as i32,
            ..Default::default()
        },
        Some("viewer-secret"),
    ))
    .await
    .unwrap()
    .into_inner()
    .resource_version
}

#[tokio::test]
async fn tokens_roles_and_the_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(
        &tokens,
        format!(
            "tokens:\n  - {{name: vera, role: viewer, sha256: {}}}\n  - {{name: otto, role: operator, sha256: {}}}\n  - {{name: ada, role: admin, sha256: {}}}\n",
            hash_token("viewer-secret"),
            hash_token("operator-secret"),
            hash_token("admin-secret"),
        ),
    )
    .unwrap();
    let audit = dir.path().join("audit.jsonl");
    let mut cfg = Config::default();
    cfg.store.path = dir.path().join("c.db");
    cfg.insecure = true;
    cfg.auth = AuthConfig {
        tokens_file: Some(tokens.clone()),
        audit_file: Some(audit.clone()),
        ..AuthConfig::default()
    };
    let store = backend::store_at(&cfg.store.path);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let reload = std::sync::Arc::new(tokio::sync::Notify::new());
    let opts = ServeOptions {
        store: Some(store),
        run_reconciler: false,
        reload: Some(reload.clone()),
        ha: backend::ha_at(&cfg.store.path, addr),
    };
    let srv = tokio::spawn(server::serve_with(cfg, listener, stop.clone(), opts));
    let mut c = loop {
        if let Ok(c) = AdminServiceClient::connect(format!("http://{addr}")).await {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // The admin creates; everyone with a token reads.
    let create = |n: &str, t: Option<&str>| {
        with_token(
            CreateRequest {
                resource: Some(node(n).into()),
            },
            t,
        )
    };
    c.create(create("n1", Some("admin-secret"))).await.unwrap();
    let rev = revision(&mut c).await;

    // No token, an unknown token: UNAUTHENTICATED. A viewer deleting, an operator creating: PERMISSION_DENIED.
    let e = c.create(create("n2", None)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let e = c.create(create("n2", Some("guess"))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let del = |t| {
        with_token(
            DeleteRequest {
                kind: Kind::Node as i32,
                name: "n1".into(),
                ..Default::default()
            },
            Some(t),
        )
    };
    let e = c.delete(del("viewer-secret")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert!(
        e.message()
            .contains("vera has role viewer; this call needs admin"),
        "{}",
        e.message()
    );
    let e = c.create(create("n2", Some("operator-secret"))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert_eq!(revision(&mut c).await, rev, "refused calls changed nothing");

    // An operator may approve maintenance; a node that does not exist is an error, audited as such.
    c.approve_maintenance(with_token(NodeRef { name: "n1".into() }, Some("operator-secret")))
        .await
        .unwrap();
    let e = c
        .approve_maintenance(with_token(
            NodeRef { name: "ghost".into() },
            Some("operator-secret"),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    c.delete(del("admin-secret")).await.unwrap();

    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary: Vec<(String, String, String, String)> = lines
        .iter()
        .map(|l| {
            let s = |k: &str| l[k].as_str().unwrap_or("").to_string();
            let result = s("result");
            let short = result.split(':').next().unwrap_or("").to_string();
            (s("who"), s("method"), s("target"), short)
        })
        .collect();
    let expect = |who: &str, method: &str, target: &str, result: &str| {
        (
            who.to_string(),
            method.to_string(),
            target.to_string(),
            result.to_string(),
        )
    };
    assert_eq!(
        summary,
        vec![
            expect("ada", "Create", "node/n1", "ok"),
            expect("unauthenticated", "Create", "node/n2", "denied Unauthenticated"),
            expect("unauthenticated", "Create", "node/n2", "denied Unauthenticated"),
            expect("vera", "Delete", "node/n1", "denied PermissionDenied"),
            expect("otto", "Create", "node/n2", "denied PermissionDenied"),
            expect("otto", "ApproveMaintenance", "node/n1", "ok"),
            expect("otto", "ApproveMaintenance", "node/ghost", "error NotFound"),
            expect("ada", "Delete", "node/n1", "ok"),
        ],
        "{lines:#?}"
    );
    assert!(lines.iter().all(|l| l["at_ms"].as_i64().unwrap_or(0) > 0));
    // Who else: the role a known token has, and where the call came from.
    assert_eq!(lines[3]["role"], "viewer");
    assert!(
        lines
            .iter()
            .all(|l| l["peer"].as_str().unwrap_or("").starts_with("127.0.0.1:")),
        "{lines:#?}"
    );
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(!text.contains("secret"), "tokens never reach the audit log");

    // SIGHUP (the reload notification): the tokens file is read again. vera
    // is revoked, neo added; later calls see the new set.
    std::fs::write(
        &tokens,
        format!(
            "tokens:\n  - {{name: neo, role: viewer, sha256: {}}}\n  - {{name: ada, role: admin, sha256: {}}}\n",
            hash_token("neo-secret"),
            hash_token("admin-secret"),
        ),
    )
    .unwrap();
    reload.notify_one();
    let get = |t: &str| {
        with_token(
            hostplane_proto::v1::ListRequest {
                kind: Kind::Node as i32,
                ..Default::default()
            },
            Some(t),
        )
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while c.list(get("neo-secret")).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the reload never took effect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let e = c.list(get("viewer-secret")).await.unwrap_err();
    assert_eq!(
        e.code(),
        tonic::Code::Unauthenticated,
        "a revoked token is refused after the reload"
    );

    // A broken file on reload: named, audited, and the tokens in force stay.
    std::fs::write(&tokens, "tokens:\n  - {name: x, role: root, sha256: y}\n").unwrap();
    reload.notify_one();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let failed = loop {
        let text = std::fs::read_to_string(&audit).unwrap();
        if let Some(l) = text
            .lines()
            .find(|l| l.contains("\"Reload\"") && l.contains("error"))
        {
            break l.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the failed reload was not audited:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        failed.contains("kept the tokens in force") && failed.contains("root"),
        "{failed}"
    );
    let ok = std::fs::read_to_string(&audit).unwrap();
    assert!(ok.contains("\"result\":\"ok: 2 tokens\""), "{ok}");
    c.list(get("neo-secret"))
        .await
        .expect("the tokens in force survive a bad reload");

    // A Watch opened with a token ends when a reload revokes that token; a
    // Watch with a token still in force goes on.
    let watch = |t: &str| with_token(hostplane_proto::v1::WatchRequest::default(), Some(t));
    let mut neo_watch = c.watch(watch("neo-secret")).await.unwrap().into_inner();
    let mut ada_watch = c.watch(watch("admin-secret")).await.unwrap().into_inner();
    std::fs::write(
        &tokens,
        format!(
            "tokens:\n  - {{name: ada, role: admin, sha256: {}}}\n",
            hash_token("admin-secret")
        ),
    )
    .unwrap();
    reload.notify_one();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match neo_watch.message().await {
                Ok(Some(_)) => continue,
                other => break other,
            }
        }
    })
    .await
    .expect("the revoked token's watch did not end");
    let e = ended.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("revoked"), "{e:?}");
    // ada's watch still delivers: a change made now reaches it.
    c.create(create("n9", Some("admin-secret"))).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let ev = ada_watch.message().await.unwrap().unwrap();
            if ev.resource.as_ref().is_some_and(|r| r.name() == "n9") {
                break ev;
            }
        }
    })
    .await
    .expect("ada's watch stopped");
    assert!(got.resource.is_some());
    stop.cancel();
    srv.await.unwrap().unwrap();
}
