//! mTLS between agents, the coordinator and admins, with the real binaries.
//!
//! A coordinator process serves mTLS with a lab CA (`hostplanectl certs`
//! code); agent sessions are opened with a real gRPC client holding various
//! certificates: the right one opens, and a certificate from another CA, an
//! expired one, another node's, none at all, and plain TCP are each refused
//! with nothing changed in the store. The daemons refuse insecure or bad TLS
//! settings at start. Finally a real agent provisions a DPU over mTLS (FUSE).
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use hostplane_ctl::certs::{self, Ca, Leaf, Pair, Validity};
use hostplane_proto::v1::{
    self, DpuPhase, Kind, NodeEffect, RebootMethod, agent_service_client::AgentServiceClient,
};
use hostplane_tests::world::{World, WorldOpts};
use hostplane_tests::{Admin, Proc, bin, connect_admin_tls, free_addr, meta, require_fuse, wait_phase};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

const STEP: Duration = Duration::from_secs(15);

struct Site {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    tls: PathBuf,
    addr: std::net::SocketAddr,
    _coordinator: Proc,
    admin: Admin,
}

fn write(dir: &Path, stem: &str, p: &Pair) {
    certs::write_pair(dir, stem, p, true).unwrap();
}

/// A coordinator serving mTLS, nodes n1 and n2, and the certificates the
/// cases use: agent-n1/agent-n2 (good), rogue-n1 (another CA), expired-n1.
async fn site() -> Site {
    let tmp = tempfile::Builder::new()
        .prefix("hostplane-tls-")
        .tempdir()
        .unwrap();
    let dir = tmp.path().to_path_buf();
    let tls = dir.join("tls");
    certs::lab(&tls, &["localhost"], &["n1", "n2"]).unwrap();
    let ca = Ca::load(&tls).unwrap();
    let (rogue, _) = Ca::generate("rogue CA", Validity::days(1)).unwrap();
    let n1 = Leaf::Agent { node: "n1".into() };
    write(&tls, "rogue-n1", &rogue.issue(&n1, Validity::days(1)).unwrap());
    let now = SystemTime::now();
    let past = Validity {
        not_before: now - Duration::from_secs(10 * 86_400),
        not_after: now - Duration::from_secs(86_400),
    };
    write(&tls, "expired-n1", &ca.issue(&n1, past).unwrap());

    let addr = free_addr().unwrap();
    let cfg = dir.join("coordinator.yaml");
    std::fs::write(&cfg, coordinator_yaml(&dir, addr, "server")).unwrap();
    let coordinator = Proc::spawn(
        "coordinator",
        &bin("hostplane-coordinator").unwrap(),
        &["run", "--config", cfg.to_str().unwrap()],
        &dir.join("coordinator.log"),
    )
    .unwrap();
    let mut admin = connect_admin_tls(addr, &tls, Duration::from_secs(20))
        .await
        .unwrap();
    for n in ["n1", "n2"] {
        admin
            .create(v1::CreateRequest {
                resource: Some(
                    v1::Node {
                        metadata: meta(n),
                        spec: Some(v1::NodeSpec {
                            reboot_method: RebootMethod::External as i32,
                        }),
                        status: None,
                    }
                    .into(),
                ),
            })
            .await
            .unwrap();
    }
    Site {
        _tmp: tmp,
        dir,
        tls,
        addr,
        _coordinator: coordinator,
        admin,
    }
}

fn coordinator_yaml(dir: &Path, addr: std::net::SocketAddr, server: &str) -> String {
    let tls = dir.join("tls");
    format!(
        "listen: {addr}\nstore:\n  path: {db}\nauth:\n  tokens_file: {t}/tokens.yaml\n  \
         audit_file: {audit}\ntls:\n  cert_file: {t}/{server}.crt\n  \
         key_file: {t}/{server}.key\n  client_ca_file: {t}/ca.crt\n",
        db = dir.join("coordinator.db").display(),
        audit = dir.join("audit.jsonl").display(),
        t = tls.display(),
    )
}

impl Site {
    async fn node(&mut self, name: &str) -> v1::Node {
        let r = self
            .admin
            .get(v1::GetRequest {
                kind: Kind::Node as i32,
                name: name.into(),
            })
            .await
            .unwrap()
            .into_inner();
        match r.kind {
            Some(v1::resource::Kind::Node(n)) => n,
            other => panic!("not a node: {other:?}"),
        }
    }

    /// An agent session for `node` with `stem.crt/.key`, kept open: the
    /// stream of what the coordinator sends, after its first message.
    async fn open_session(&self, stem: &str, node: &str) -> tonic::Streaming<v1::CoordinatorMessage> {
        let ep = Endpoint::from_shared(format!("https://{}", self.addr))
            .unwrap()
            .tls_config(self.client_tls(Some(stem)))
            .unwrap();
        let hello = hello(node);
        let outbound = futures::stream::iter([hello]).chain(futures::stream::pending());
        let mut inbound = AgentServiceClient::new(ep.connect().await.unwrap())
            .session(outbound)
            .await
            .unwrap()
            .into_inner();
        inbound.next().await.unwrap().unwrap();
        inbound
    }

    fn read(&self, f: &str) -> Vec<u8> {
        std::fs::read(self.tls.join(f)).unwrap()
    }

    /// TLS with the lab CA and, when `stem` is set, `stem.crt/.key` as the client identity.
    fn client_tls(&self, stem: Option<&str>) -> ClientTlsConfig {
        let mut c = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(self.read("ca.crt")));
        if let Some(s) = stem {
            c = c.identity(Identity::from_pem(
                self.read(&format!("{s}.crt")),
                self.read(&format!("{s}.key")),
            ));
        }
        c
    }

    /// Open an agent session saying Hello for `node`; Ok once the
    /// coordinator sends its first message, else the error, with its causes.
    async fn session(&self, scheme: &str, tls: Option<ClientTlsConfig>, node: &str) -> Result<(), String> {
        let mut ep = Endpoint::from_shared(format!("{scheme}://{}", self.addr)).unwrap();
        if let Some(t) = tls {
            ep = ep.tls_config(t).unwrap();
        }
        let attempt = async {
            let channel = ep
                .connect()
                .await
                .map_err(|e| format!("connect: {}", chain(&e)))?;
            let hello = hello(node);
            // The stream stays open (pending) after Hello, as an agent's does.
            let outbound = futures::stream::iter([hello]).chain(futures::stream::pending());
            let mut inbound = AgentServiceClient::new(channel)
                .session(outbound)
                .await
                .map_err(|s| status_text(&s))?
                .into_inner();
            match inbound.next().await {
                Some(Ok(_)) => Ok(()),
                Some(Err(s)) => Err(status_text(&s)),
                None => Err("stream ended".into()),
            }
        };
        tokio::time::timeout(STEP, attempt)
            .await
            .unwrap_or_else(|_| Err("timed out".into()))
    }
}

/// "Code: message: causes" (a transport failure's causes say what TLS saw).
/// An agent's Hello for `node`.
fn hello(node: &str) -> v1::AgentMessage {
    v1::AgentMessage {
        msg: Some(v1::agent_message::Msg::Hello(v1::Hello {
            node_name: node.into(),
            agent_version: "test".into(),
            boot_id: "00000000-0000-4000-8000-000000000001".into(),
            ..Default::default()
        })),
    }
}

fn status_text(s: &tonic::Status) -> String {
    let causes = std::error::Error::source(s)
        .map(|e| format!(": {}", chain(e)))
        .unwrap_or_default();
    format!("{:?}: {}{causes}", s.code(), s.message())
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_nodes_own_certificate_opens_its_session() {
    let mut s = site().await;
    let before = s.node("n1").await;

    // Refused at the TLS layer: the server never sees a Hello.
    let no_cert = s.session("https", Some(s.client_tls(None)), "n1").await;
    let rogue = s
        .session("https", Some(s.client_tls(Some("rogue-n1"))), "n1")
        .await;
    let expired = s
        .session("https", Some(s.client_tls(Some("expired-n1"))), "n1")
        .await;
    let plain = s.session("http", None, "n1").await;
    for (case, r) in [
        ("no client certificate", &no_cert),
        ("another CA", &rogue),
        ("expired", &expired),
        ("plaintext", &plain),
    ] {
        let e = r.as_ref().expect_err(case);
        eprintln!("{case}: {e}");
    }
    // The connection is closed during or right after the handshake (with
    // TLS 1.3 the client learns of a refused certificate on its first
    // request): a transport error, never a gRPC answer from the service.
    for r in [&no_cert, &rogue, &expired, &plain] {
        let e = r.as_ref().unwrap_err();
        assert!(e.contains("transport error") || e.starts_with("connect:"), "{e}");
    }

    // n2's certificate claiming n1: the coordinator refuses the Hello.
    let e = s
        .session("https", Some(s.client_tls(Some("agent-n2"))), "n1")
        .await
        .unwrap_err();
    assert!(e.starts_with("PermissionDenied"), "{e}");
    assert!(e.contains("\"n2\"") && e.contains("node n1"), "{e}");

    // An admin's client certificate is no agent's either.
    let e = s
        .session("https", Some(s.client_tls(Some("client-admin"))), "n1")
        .await
        .unwrap_err();
    assert!(e.starts_with("PermissionDenied"), "{e}");

    // Nothing of that reached the store.
    assert_eq!(s.node("n1").await, before, "a refused session changed the node");

    // The node's own certificate opens the session, and the Hello is recorded.
    s.session("https", Some(s.client_tls(Some("agent-n1"))), "n1")
        .await
        .unwrap();
    assert_ne!(s.node("n1").await, before, "the session was not recorded");

    let log = std::fs::read_to_string(s.dir.join("coordinator.log")).unwrap();
    assert!(log.contains("serving mTLS"), "{log}");
    assert!(log.contains("agent session refused"), "{log}");

    // Every refusal is in the audit log: who (the certificate's name when
    // one was offered), what, the reason, and where from.
    let audit: Vec<serde_json::Value> = std::fs::read_to_string(s.dir.join("audit.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // (case, method, who, in the result, in the peer). A certificate that
    // failed verification names no one: its name is in `peer`, marked unverified.
    let found = |method: &str, who: &str, reason: &str, peer: &str| {
        audit.iter().any(|l| {
            l["method"] == method
                && l["who"] == who
                && l["result"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("refused") && r.contains(reason))
                && l["peer"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("127.0.0.1:") && p.contains(peer))
        })
    };
    let unverified_n1 = "offered_cert=n1 (unverified)";
    for (case, method, who, reason, peer) in [
        (
            "another CA",
            "TlsHandshake",
            "unauthenticated",
            "UnknownIssuer",
            unverified_n1,
        ),
        (
            "expired",
            "TlsHandshake",
            "unauthenticated",
            "expired",
            unverified_n1,
        ),
        (
            "no client certificate",
            "TlsHandshake",
            "unauthenticated",
            "certificate",
            "",
        ),
        ("plaintext", "TlsHandshake", "unauthenticated", "refused", ""),
        (
            "another node's certificate",
            "AgentService/Session",
            "n2",
            "node n1",
            "cert=n2",
        ),
        (
            "an admin certificate",
            "AgentService/Session",
            "admin",
            "node n1",
            "cert=admin",
        ),
    ] {
        assert!(
            found(method, who, reason, peer),
            "{case}: not audited as {method} by {who} ({reason}, {peer}):\n{audit:#?}"
        );
    }
    let session_refusal = audit
        .iter()
        .find(|l| l["method"] == "AgentService/Session" && l["who"] == "n2")
        .unwrap();
    assert_eq!(session_refusal["target"], "node/n1");
    assert!(
        session_refusal["peer"].as_str().unwrap().ends_with("cert=n2"),
        "{session_refusal}"
    );
}

/// SIGHUP re-reads the TLS files: a second CA added to `tls.client_ca_file`
/// (a CA rotation) is trusted by new connections, the first still is; a
/// broken file is refused and the settings in force are kept. Audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_client_ca() {
    let s = site().await;
    let (ca2, _) = Ca::generate("second CA", Validity::days(1)).unwrap();
    let n2 = Leaf::Agent { node: "n2".into() };
    write(&s.tls, "ca2-n2", &ca2.issue(&n2, Validity::days(1)).unwrap());
    let e = s
        .session("https", Some(s.client_tls(Some("ca2-n2"))), "n2")
        .await
        .unwrap_err();
    assert!(e.contains("transport error"), "before the rotation: {e}");

    let hup = || {
        nix::sys::signal::kill(s._coordinator.pid().unwrap(), nix::sys::signal::Signal::SIGHUP).unwrap();
    };
    let ca_file = s.tls.join("ca.crt");
    let first = std::fs::read_to_string(&ca_file).unwrap();
    std::fs::write(&ca_file, format!("{first}{}", ca2.cert_pem())).unwrap();
    hup();
    let deadline = std::time::Instant::now() + STEP;
    while let Err(e) = s.session("https", Some(s.client_tls(Some("ca2-n2"))), "n2").await {
        assert!(
            std::time::Instant::now() < deadline,
            "the reload never took effect: {e}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.session("https", Some(s.client_tls(Some("agent-n1"))), "n1")
        .await
        .expect("the first CA is still trusted");

    // A client CA file that is not PEM: refused, the settings in force kept.
    std::fs::write(&ca_file, "not a certificate\n").unwrap();
    hup();
    let audit_file = s.dir.join("audit.jsonl");
    let deadline = std::time::Instant::now() + STEP;
    let failed = loop {
        let text = std::fs::read_to_string(&audit_file).unwrap_or_default();
        if let Some(l) = text
            .lines()
            .find(|l| l.contains("\"Reload\"") && l.contains("\"tls\"") && l.contains("error"))
        {
            break l.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no failed reload audited:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(failed.contains("tls.client_ca_file"), "{failed}");
    // Restore the file for the clients of this test; the server still has both CAs.
    std::fs::write(&ca_file, format!("{first}{}", ca2.cert_pem())).unwrap();
    s.session("https", Some(s.client_tls(Some("ca2-n2"))), "n2")
        .await
        .expect("the settings in force survived the bad reload");
    let text = std::fs::read_to_string(&audit_file).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("\"Reload\"") && l.contains("\"tls\"") && l.contains("\"ok: ")),
        "{text}"
    );

    // Dropping the first CA ends the live session it vouched for (a stolen
    // key does not outlive the CA's removal); the second CA's stays.
    let mut n1 = s.open_session("agent-n1", "n1").await;
    let mut n2 = s.open_session("ca2-n2", "n2").await;
    std::fs::write(&ca_file, ca2.cert_pem()).unwrap();
    hup();
    let status = tokio::time::timeout(STEP, async {
        loop {
            match n1.next().await {
                Some(Ok(_)) => continue,
                Some(Err(st)) => break st,
                None => panic!("n1's session ended without a status"),
            }
        }
    })
    .await
    .expect("n1's session was not ended after its CA was removed");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("no longer trusted"), "{status:?}");
    let still = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            match n2.next().await {
                Some(Ok(_)) => continue,
                other => break other,
            }
        }
    })
    .await;
    assert!(
        still.is_err(),
        "n2's session (second CA) must stay open: {still:?}"
    );
    let text = std::fs::read_to_string(&audit_file).unwrap();
    assert!(
        text.lines().any(|l| l.contains("\"who\":\"n1\"")
            && l.contains("ended: the client certificate is no longer trusted")),
        "{text}"
    );
    assert!(
        text.contains("agent sessions ended as no longer trusted: n1\""),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_client_auth_still_requires_a_certificate_for_agents() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = &tmp.path().to_path_buf();
    let tls = dir.join("tls");
    certs::lab(&tls, &["localhost"], &["n1"]).unwrap();
    let addr = free_addr().unwrap();
    let cfg = dir.join("coordinator.yaml");
    std::fs::write(
        &cfg,
        coordinator_yaml(dir, addr, "server") + "  client_auth_optional: true\n",
    )
    .unwrap();
    let _c = Proc::spawn(
        "coordinator",
        &bin("hostplane-coordinator").unwrap(),
        &["run", "--config", cfg.to_str().unwrap()],
        &dir.join("coordinator.log"),
    )
    .unwrap();
    let mut admin = connect_admin_tls(addr, &tls, Duration::from_secs(20))
        .await
        .unwrap();
    admin
        .create(v1::CreateRequest {
            resource: Some(
                v1::Node {
                    metadata: meta("n1"),
                    spec: Some(v1::NodeSpec {
                        reboot_method: RebootMethod::External as i32,
                    }),
                    status: None,
                }
                .into(),
            ),
        })
        .await
        .unwrap();
    let s = Site {
        _tmp: tmp,
        dir: dir.to_path_buf(),
        tls: tls.clone(),
        addr,
        _coordinator: _c,
        admin,
    };
    // An admin without a certificate may connect (its token is checked per call)...
    let ep = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(s.client_tls(None))
        .unwrap();
    let token = hostplane_tests::lab_admin_token(&tls).unwrap();
    let mut anon = v1::admin_service_client::AdminServiceClient::with_interceptor(
        ep.connect().await.unwrap(),
        hostplane_tests::Bearer::new(&token).unwrap(),
    );
    anon.get(v1::GetRequest {
        kind: Kind::Node as i32,
        name: "n1".into(),
    })
    .await
    .unwrap();
    // ...an agent may not.
    let e = s
        .session("https", Some(s.client_tls(None)), "n1")
        .await
        .unwrap_err();
    assert!(
        e.starts_with("Unauthenticated") && e.contains("client certificate"),
        "{e}"
    );
    s.session("https", Some(s.client_tls(Some("agent-n1"))), "n1")
        .await
        .unwrap();
}

fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut c = std::process::Command::new(bin(program).unwrap());
    c.args(args).env_remove("HOSTPLANE_INSECURE");
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout),
    )
}

#[test]
fn daemons_refuse_insecure_or_bad_tls_settings_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let tls = dir.join("tls");
    certs::lab(&tls, &["localhost"], &["n1", "n2"]).unwrap();
    let ca = Ca::load(&tls).unwrap();
    let now = SystemTime::now();
    let past = Validity {
        not_before: now - Duration::from_secs(10 * 86_400),
        not_after: now - Duration::from_secs(86_400),
    };
    let old = Leaf::Server {
        names: vec!["localhost".into()],
        ips: vec![],
    };
    write(&tls, "old-server", &ca.issue(&old, past).unwrap());
    let addr = "127.0.0.1:1".parse().unwrap();
    let cfg = dir.join("c.yaml");
    let cfg_s = cfg.to_str().unwrap();

    // No TLS, not insecure: refused (78), saying how to fix it.
    std::fs::write(
        &cfg,
        format!("listen: {addr}\nstore:\n  path: {}/c.db\n", dir.display()),
    )
    .unwrap();
    let (code, out) = run("hostplane-coordinator", &["validate", "--config", cfg_s], &[]);
    assert_eq!(code, 78, "{out}");
    assert!(
        out.contains("tls: not set") && out.contains("--insecure"),
        "{out}"
    );
    // Explicitly insecure: accepted (the flag or the variable).
    let (code, out) = run(
        "hostplane-coordinator",
        &["validate", "--insecure", "--config", cfg_s],
        &[],
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = run(
        "hostplane-coordinator",
        &["validate", "--config", cfg_s],
        &[("HOSTPLANE_INSECURE", "1")],
    );
    assert_eq!(code, 0, "{out}");

    // An expired server certificate, a missing key.
    std::fs::write(&cfg, coordinator_yaml(dir, addr, "old-server")).unwrap();
    let (code, out) = run("hostplane-coordinator", &["validate", "--config", cfg_s], &[]);
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("tls.cert_file") && out.contains("expired"), "{out}");
    std::fs::write(&cfg, coordinator_yaml(dir, addr, "nope")).unwrap();
    let (code, out) = run("hostplane-coordinator", &["validate", "--config", cfg_s], &[]);
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("nope.crt"), "{out}");
    std::fs::write(&cfg, coordinator_yaml(dir, addr, "server")).unwrap();
    let (code, out) = run("hostplane-coordinator", &["validate", "--config", cfg_s], &[]);
    assert_eq!(code, 0, "{out}");

    // TLS without admin tokens: refused, unless auth is disabled explicitly.
    let no_auth = coordinator_yaml(dir, addr, "server").replace("auth:\n  tokens_file:", "x_tokens_file:");
    let no_auth: String = no_auth
        .lines()
        .filter(|l| !l.starts_with("x_tokens_file") && !l.trim_start().starts_with("audit_file"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&cfg, &no_auth).unwrap();
    let (code, out) = run("hostplane-coordinator", &["validate", "--config", cfg_s], &[]);
    assert_eq!(code, 78, "{out}");
    assert!(
        out.contains("auth.tokens_file is not set") && out.contains("hostplanectl token create"),
        "{out}"
    );
    std::fs::write(&cfg, format!("{no_auth}auth:\n  disabled: true\n")).unwrap();
    let (code, out) = run("hostplane-coordinator", &["validate", "--config", cfg_s], &[]);
    assert_eq!(code, 0, "{out}");
    // A broken tokens file is named.
    std::fs::write(
        tls.join("bad-tokens.yaml"),
        "tokens:\n  - {name: a, role: root, sha256: x}\n",
    )
    .unwrap();
    std::fs::write(
        &cfg,
        format!(
            "{no_auth}auth:\n  tokens_file: {}/bad-tokens.yaml\n",
            tls.display()
        ),
    )
    .unwrap();
    let (code, out) = run("hostplane-coordinator", &["validate", "--config", cfg_s], &[]);
    assert_eq!(code, 78, "{out}");
    assert!(
        out.contains("bad-tokens.yaml") && out.contains("unknown variant `root`"),
        "{out}"
    );

    // The agent: plain http without insecure, and another node's certificate.
    let acfg = dir.join("agent.yaml");
    let a_s = acfg.to_str().unwrap();
    let state = dir.join("state");
    std::fs::write(
        &acfg,
        format!(
            "node_name: n1\ncoordinator: http://{addr}\nstate_dir: {}\n",
            state.display()
        ),
    )
    .unwrap();
    let (code, out) = run("hostplane-agent", &["validate", "--config", a_s], &[]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("plain http") && out.contains("insecure: true"),
        "{out}"
    );
    let agent_tls = |stem: &str| {
        format!(
            "node_name: n1\ncoordinator: https://localhost:1\nstate_dir: {}\ntls:\n  ca_file: {t}/ca.crt\n  \
             cert_file: {t}/{stem}.crt\n  key_file: {t}/{stem}.key\n",
            state.display(),
            t = tls.display()
        )
    };
    std::fs::write(&acfg, agent_tls("agent-n2")).unwrap();
    let (code, out) = run("hostplane-agent", &["validate", "--config", a_s], &[]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("issued to \"n2\""), "{out}");
    std::fs::write(&acfg, agent_tls("agent-n1")).unwrap();
    let (code, out) = run("hostplane-agent", &["validate", "--config", a_s], &[]);
    assert_eq!(code, 0, "{out}");
}

/// The whole agent over mTLS: a real agent process flashes a simulated DPU.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_its_certificate_provisions_over_mtls() {
    require_fuse!();
    let mut w = World::start(WorldOpts {
        dpus: 1,
        agent_yaml: "flash:\n  poll_interval: 50ms\nsession:\n  backoff_initial: 100ms\n  backoff_max: 1s\n"
            .into(),
        ..Default::default()
    })
    .await
    .unwrap();
    w.start_agent("n1").unwrap();
    w.add_node(
        "n1",
        RebootMethod::External,
        &[("dpu-a", "rshim0")],
        &[("model", "bf3")],
    )
    .await
    .unwrap();
    w.add_bfb("bfb-1", 1 << 20, "4.9.0").await.unwrap();
    w.add_flavor("f1", &[("HOSTNAME", "dpu")]).await.unwrap();
    w.add_deployment(
        "d1",
        v1::DeploymentSpec {
            device_selector: [("model".to_string(), "bf3".to_string())].into(),
            bfb: "bfb-1".into(),
            flavor: "f1".into(),
            max_unavailable: 1,
            node_effect: NodeEffect::Auto as i32,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // Flashed and waiting for the host's (external) reboot: the agent did its part over mTLS.
    wait_phase(
        &mut w.admin,
        "dpu-a",
        DpuPhase::Rebooting,
        Duration::from_secs(90),
    )
    .await
    .unwrap();
    let log = std::fs::read_to_string(w.log_path("agent-n1")).unwrap();
    assert!(!log.contains("plain http"), "the agent ran without TLS: {log}");
    w.shutdown().await.unwrap();
}
