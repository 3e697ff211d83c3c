//! The Redfish client against a fixture BMC (tests/redfish_support): both
//! resource variants (EnvironmentMetrics/Controls and Power-only), limits,
//! discovery errors, auth (session, re-login, Basic), the request gate.
mod redfish_support;

use std::path::PathBuf;
use std::time::Duration;

use hostplane_agent::power::bmc::{BmcConfig, RedfishClient, RedfishError};
use hostplane_agent::power::{Method, Scope};
use redfish_support::{AuthUsed, PASSWORD, Shape, USER};

fn password_file(dir: &tempfile::TempDir, password: &str) -> PathBuf {
    let p = dir.path().join("bmc-password");
    std::fs::write(&p, format!("{password}\n")).unwrap();
    p
}

fn config(url: &str, password_file: PathBuf) -> BmcConfig {
    BmcConfig {
        url: url.into(),
        username: USER.into(),
        password_file: Some(password_file),
        min_request_interval: Duration::from_millis(1),
        timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

async fn connect(bmc: &redfish_support::Bmc, dir: &tempfile::TempDir) -> RedfishClient {
    RedfishClient::connect(&config(&bmc.url, password_file(dir, PASSWORD)))
        .await
        .unwrap()
}

#[tokio::test]
async fn modern_bmc_reads_environment_metrics_of_node_and_gpus() {
    let bmc = redfish_support::dgx(Shape::Modern, 4).await;
    let d = tempfile::tempdir().unwrap();
    let c = connect(&bmc, &d).await;
    assert_eq!(
        c.node_device(),
        "DGX",
        "the chassis of the system, not the first member"
    );
    assert_eq!(
        c.gpu_devices(),
        ["HGX_GPU_SXM_1", "HGX_GPU_SXM_2", "HGX_GPU_SXM_3", "HGX_GPU_SXM_4"]
    );
    assert_eq!(c.auth_kind(), "session");
    bmc.clear_log();

    let r = c.sample().await;
    assert_eq!(r.len(), 5);
    let node = &r[0];
    assert_eq!(
        (node.source, node.scope, node.device.as_str(), node.method),
        ("redfish", Scope::Node, "DGX", Method::Measured)
    );
    assert_eq!(
        node.watts,
        Some(6123.5),
        "EnvironmentMetrics.PowerWatts, not Power"
    );
    assert_eq!(
        node.energy_joules,
        Some(0.0),
        "energy counts from the first reading"
    );
    assert_eq!(node.error, None);
    for (i, g) in r[1..].iter().enumerate() {
        assert_eq!(g.scope, Scope::Gpu);
        assert_eq!(g.device, format!("HGX_GPU_SXM_{}", i + 1));
        assert_eq!(g.watts, Some(600.0 + i as f64));
    }
    let hits = bmc.hits();
    assert!(hits.iter().all(|h| h.auth == AuthUsed::Token), "{hits:?}");
    assert!(!hits.iter().any(|h| h.path.ends_with("/Power")), "{hits:?}");

    // 0.5 kWh more on the BMC's counter: 1.8 MJ.
    bmc.edit("/redfish/v1/Chassis/DGX/EnvironmentMetrics", |v| {
        v["EnergykWh"]["Reading"] = 100.5.into();
        v["PowerWatts"]["Reading"] = 7000.0.into();
    });
    let r = c.sample().await;
    assert_eq!(r[0].watts, Some(7000.0));
    assert_eq!(r[0].energy_joules, Some(1.8e6));
    assert_eq!(bmc.posts_to_sessions(), 0, "the session of the connect is reused");

    // A BMC reset: the counter starts over at 2 kWh. That read adds nothing,
    // the energy does not go back, and what follows counts on from there.
    bmc.edit("/redfish/v1/Chassis/DGX/EnvironmentMetrics", |v| {
        v["EnergykWh"]["Reading"] = 2.0.into();
    });
    assert_eq!(c.sample().await[0].energy_joules, Some(1.8e6));
    bmc.edit("/redfish/v1/Chassis/DGX/EnvironmentMetrics", |v| {
        v["EnergykWh"]["Reading"] = 2.25.into();
    });
    assert_eq!(c.sample().await[0].energy_joules, Some(1.8e6 + 0.9e6));
}

#[tokio::test]
async fn power_only_bmc_reads_power_control_and_limits_through_power() {
    let bmc = redfish_support::dgx(Shape::PowerOnly, 2).await;
    let d = tempfile::tempdir().unwrap();
    let c = connect(&bmc, &d).await;
    let r = c.sample().await;
    assert_eq!(
        r[0].watts,
        Some(5432.0),
        "Power.PowerControl[0].PowerConsumedWatts"
    );
    assert_eq!(r[0].energy_joules, None, "Power has no energy counter");
    // GPU chassis without EnvironmentMetrics: said, not a 0.
    let g = &r[1];
    assert_eq!(g.watts, None);
    assert_eq!(
        g.error.as_deref(),
        Some(
            format!(
                "{}/redfish/v1/Chassis/HGX_GPU_SXM_1 has neither EnvironmentMetrics nor Power",
                bmc.url
            )
            .as_str()
        )
    );

    assert_eq!(c.node_limit().await.unwrap(), None);
    assert_eq!(
        c.node_limit_range().await.unwrap(),
        (0.0, 10200.0),
        "PowerCapacityWatts"
    );
    bmc.clear_log();
    assert_eq!(c.set_node_limit(Some(5000.0)).await.unwrap(), Some(5000.0));
    let patch: Vec<_> = bmc.hits().into_iter().filter(|h| h.method == "PATCH").collect();
    assert_eq!(patch.len(), 1);
    assert_eq!(patch[0].path, "/redfish/v1/Chassis/DGX/Power");
    let body: serde_json::Value = serde_json::from_str(&patch[0].body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"PowerControl": [{"PowerLimit": {"LimitInWatts": 5000.0}}]})
    );
    assert_eq!(c.node_limit().await.unwrap(), Some(5000.0));
    assert_eq!(
        c.set_node_limit(None).await.unwrap(),
        None,
        "null lifts the limit"
    );
    assert_eq!(
        bmc.get("/redfish/v1/Chassis/DGX/Power")["PowerControl"][0]["PowerLimit"]["LimitInWatts"],
        serde_json::Value::Null
    );
    let e = c.set_gpu_limit("HGX_GPU_SXM_1", Some(500.0)).await.unwrap_err();
    assert!(
        e.to_string().ends_with("/redfish/v1/Chassis/HGX_GPU_SXM_1 cannot be limited: it has neither a Power control in Controls nor Power"),
        "{e}"
    );
}

#[tokio::test]
async fn node_limit_goes_through_controls_and_is_read_back() {
    let bmc = redfish_support::dgx(Shape::Modern, 2).await;
    let d = tempfile::tempdir().unwrap();
    let c = connect(&bmc, &d).await;
    assert_eq!(c.node_limit().await.unwrap(), None, "ControlMode Disabled");
    assert_eq!(c.node_limit_range().await.unwrap(), (4000.0, 10200.0));
    bmc.clear_log();
    assert_eq!(c.set_node_limit(Some(6000.0)).await.unwrap(), Some(6000.0));
    let patch: Vec<_> = bmc.hits().into_iter().filter(|h| h.method == "PATCH").collect();
    assert_eq!(patch.len(), 1, "{patch:?}");
    assert_eq!(patch[0].path, "/redfish/v1/Chassis/DGX/Controls/PowerLimit");
    let body: serde_json::Value = serde_json::from_str(&patch[0].body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"SetPoint": 6000.0, "ControlMode": "Automatic"})
    );
    assert_eq!(
        bmc.get("/redfish/v1/Chassis/DGX/Power")["PowerControl"][0]["PowerLimit"]["LimitInWatts"],
        6000.0,
        "the same limit in the Power view"
    );

    // Out of range: the BMC's 400 names the property; nothing changes.
    let e = c.set_node_limit(Some(100.0)).await.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, RedfishError::Status { status: 400, .. }), "{e:?}");
    assert!(
        msg.contains("PATCH") && msg.contains("PropertyValueOutOfRange") && msg.contains("SetPoint"),
        "{msg}"
    );
    assert_eq!(c.node_limit().await.unwrap(), Some(6000.0));
    // Refused before sending: not a number of watts.
    bmc.clear_log();
    for bad in [f64::NAN, -5.0, 0.0, f64::INFINITY] {
        assert!(matches!(
            c.set_node_limit(Some(bad)).await,
            Err(RedfishError::Invalid(_))
        ));
    }
    assert!(bmc.hits().iter().all(|h| h.method != "PATCH"));

    assert_eq!(c.set_node_limit(None).await.unwrap(), None);
    let last = bmc.hits().into_iter().rfind(|h| h.method == "PATCH").unwrap();
    assert_eq!(last.body, r#"{"ControlMode":"Disabled"}"#);
}

#[tokio::test]
async fn gpu_limits_through_each_gpu_chassis_controls() {
    let bmc = redfish_support::dgx(Shape::Modern, 2).await;
    let d = tempfile::tempdir().unwrap();
    let c = connect(&bmc, &d).await;
    assert_eq!(c.gpu_limit_range("HGX_GPU_SXM_2").await.unwrap(), (200.0, 700.0));
    assert_eq!(
        c.set_gpu_limit("HGX_GPU_SXM_2", Some(450.0)).await.unwrap(),
        Some(450.0)
    );
    assert_eq!(c.gpu_limit("HGX_GPU_SXM_2").await.unwrap(), Some(450.0));
    assert_eq!(
        c.gpu_limit("HGX_GPU_SXM_1").await.unwrap(),
        None,
        "only GPU 2 was limited"
    );
    assert_eq!(
        bmc.get("/redfish/v1/Chassis/HGX_GPU_SXM_2/Controls/PowerLimit")["SetPoint"],
        450.0
    );
    let e = c
        .set_gpu_limit("gpu7", Some(300.0))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no GPU chassis \"gpu7\"") && e.contains("HGX_GPU_SXM_1, HGX_GPU_SXM_2"),
        "{e}"
    );
}

#[tokio::test]
async fn discovery_errors_name_the_resource_and_what_is_missing() {
    let d = tempfile::tempdir().unwrap();
    let pw = password_file(&d, PASSWORD);

    // A node chassis with neither EnvironmentMetrics nor Power.
    let mut res = redfish_support::resources(Shape::Modern, 1, true);
    let node = res
        .get_mut("/redfish/v1/Chassis/DGX")
        .unwrap()
        .as_object_mut()
        .unwrap();
    node.remove("EnvironmentMetrics");
    node.remove("Power");
    let bmc = redfish_support::serve(res, true).await;
    let e = RedfishClient::connect(&config(&bmc.url, pw.clone()))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}/redfish/v1/Chassis/DGX has neither EnvironmentMetrics nor Power",
            bmc.url
        )
    );
    assert!(
        bmc.fixture.tokens.lock().unwrap().is_empty(),
        "a failed connect deletes its session"
    );

    // No Chassis link in the service root.
    let mut res = redfish_support::resources(Shape::Modern, 1, true);
    res.get_mut("/redfish/v1")
        .unwrap()
        .as_object_mut()
        .unwrap()
        .remove("Chassis");
    let bmc = redfish_support::serve(res, true).await;
    let e = RedfishClient::connect(&config(&bmc.url, pw.clone()))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}/redfish/v1 has no Chassis link: the BMC does not expose chassis power",
            bmc.url
        )
    );

    // A configured chassis that is not there: the members are listed.
    let bmc = redfish_support::dgx(Shape::Modern, 1).await;
    let mut cfg = config(&bmc.url, pw.clone());
    cfg.chassis = Some("Node0".into());
    let e = RedfishClient::connect(&cfg).await.unwrap_err().to_string();
    assert!(e.ends_with("/redfish/v1/Chassis has no chassis \"Node0\" (power.bmc.chassis); its members: HGX_GPU_SXM_1, DGX"), "{e}");
    // ... and one that is: read it.
    cfg.chassis = Some("HGX_GPU_SXM_1".into());
    let c = RedfishClient::connect(&cfg).await.unwrap();
    assert_eq!(c.node_device(), "HGX_GPU_SXM_1");

    // A linked resource that is gone: the 404 and its URL.
    let bmc = redfish_support::dgx(Shape::Modern, 1).await;
    let c = RedfishClient::connect(&config(&bmc.url, pw.clone()))
        .await
        .unwrap();
    bmc.remove("/redfish/v1/Chassis/DGX/EnvironmentMetrics");
    let r = c.sample().await;
    let e = r[0].error.as_deref().unwrap();
    assert!(
        e.starts_with(&format!(
            "GET {}/redfish/v1/Chassis/DGX/EnvironmentMetrics: 404 Not Found: Base.1.18.ResourceNotFound",
            bmc.url
        )),
        "{e}"
    );
    assert_eq!(r[0].watts, None, "never a silent 0");

    // Nothing listens there.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", free.local_addr().unwrap());
    drop(free);
    let e = RedfishClient::connect(&config(&url, pw))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.starts_with(&format!("GET {url}/redfish/v1: ")), "{e}");
}

#[tokio::test]
async fn a_refused_session_logs_in_again_once() {
    let bmc = redfish_support::dgx(Shape::Modern, 1).await;
    let d = tempfile::tempdir().unwrap();
    let c = connect(&bmc, &d).await;
    assert_eq!(bmc.posts_to_sessions(), 1);
    bmc.drop_sessions();
    let r = c.sample().await;
    assert!(r.iter().all(|r| r.error.is_none()), "{r:?}");
    assert_eq!(bmc.posts_to_sessions(), 2, "one re-login after the 401");
    // Several callers meeting the same 401 log in once between them.
    bmc.drop_sessions();
    let (a, b) = tokio::join!(c.node_limit(), c.sample());
    assert!(a.is_ok() && b.iter().all(|r| r.error.is_none()));
    assert_eq!(bmc.posts_to_sessions(), 3);

    // Logout deletes the session.
    c.logout().await;
    assert!(bmc.fixture.tokens.lock().unwrap().is_empty());
    let last = bmc.hits().pop().unwrap();
    assert_eq!(
        (last.method.as_str(), last.path.as_str()),
        ("DELETE", "/redfish/v1/SessionService/Sessions/3")
    );
}

#[tokio::test]
async fn basic_auth_when_the_bmc_has_no_session_service() {
    let bmc = redfish_support::serve(redfish_support::resources(Shape::Modern, 1, false), false).await;
    let d = tempfile::tempdir().unwrap();
    let c = connect(&bmc, &d).await;
    assert_eq!(c.auth_kind(), "basic");
    assert!(c.sample().await.iter().all(|r| r.error.is_none()));
    let hits = bmc.hits();
    assert_eq!(bmc.posts_to_sessions(), 0);
    assert_eq!(
        hits[0].auth,
        AuthUsed::None,
        "the service root needs no credentials"
    );
    assert!(hits[1..].iter().all(|h| h.auth == AuthUsed::Basic), "{hits:?}");

    // A SessionService that refuses to create sessions (404): Basic too.
    let bmc = redfish_support::serve(redfish_support::resources(Shape::Modern, 1, true), false).await;
    let c = connect(&bmc, &d).await;
    assert_eq!(c.auth_kind(), "basic");
    assert!(c.sample().await.iter().all(|r| r.error.is_none()));
    assert_eq!(bmc.posts_to_sessions(), 1, "tried once");
}

#[tokio::test]
async fn a_wrong_password_is_a_401_naming_the_password_file() {
    let d = tempfile::tempdir().unwrap();
    let wrong = password_file(&d, "not-the-password");
    for sessions in [true, false] {
        let bmc =
            redfish_support::serve(redfish_support::resources(Shape::Modern, 1, sessions), sessions).await;
        let e = RedfishClient::connect(&config(&bmc.url, wrong.clone()))
            .await
            .unwrap_err();
        assert!(matches!(e, RedfishError::Status { status: 401, .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("401 Unauthorized") && msg.contains(&wrong.display().to_string()),
            "{msg}"
        );
    }
    // No password file at all.
    let bmc = redfish_support::dgx(Shape::Modern, 1).await;
    let e = RedfishClient::connect(&config(&bmc.url, d.path().join("missing")))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("power.bmc.password_file: cannot read the BMC password from"),
        "{e}"
    );
}

#[tokio::test]
async fn one_request_in_flight_each_spaced_by_the_minimum_interval() {
    let bmc = redfish_support::dgx(Shape::Modern, 2).await;
    let d = tempfile::tempdir().unwrap();
    let min = Duration::from_millis(30);
    let mut cfg = config(&bmc.url, password_file(&d, PASSWORD));
    cfg.min_request_interval = min;
    let c = std::sync::Arc::new(RedfishClient::connect(&cfg).await.unwrap());
    *bmc.fixture.delay.lock().unwrap() = Duration::from_millis(5);
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.sample().await })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap().iter().all(|r| r.error.is_none()));
    }
    let hits = bmc.hits();
    assert!(
        hits.len() >= 4 * 3 + 6,
        "connect and four samples: {}",
        hits.len()
    );
    assert_eq!(
        bmc.fixture
            .max_in_flight
            .load(std::sync::atomic::Ordering::SeqCst),
        1,
        "four concurrent samples, one request at a time"
    );
    let mut hits = hits;
    hits.sort_by_key(|h| h.at);
    for w in hits.windows(2) {
        assert!(
            w[1].at >= w[0].end + min,
            "{} {} began {:?} after {} {} ended",
            w[1].method,
            w[1].path,
            w[1].at.saturating_duration_since(w[0].end),
            w[0].method,
            w[0].path
        );
    }
}

#[test]
fn config_is_checked_and_names_the_key() {
    let ok = BmcConfig {
        url: "https://bmc.example".into(),
        username: "admin".into(),
        password_file: Some("/etc/hostplane/bmc-password".into()),
        ..Default::default()
    };
    assert_eq!(ok.validate(), Ok(()));
    assert_eq!(
        BmcConfig::default().validate(),
        Ok(()),
        "no BMC: nothing to check"
    );
    type Edit = fn(&mut BmcConfig);
    let cases: [(&str, Edit); 8] = [
        ("power.bmc.url", |c| c.url = "bmc.example".into()),
        ("power.bmc.url", |c| c.url = "ftp://bmc.example".into()),
        ("power.bmc.url", |c| c.url = "https://admin:pw@bmc.example".into()),
        ("power.bmc.url", |c| {
            c.url = "https://bmc.example/redfish/v1/Chassis".into()
        }),
        ("power.bmc.username", |c| c.username.clear()),
        ("power.bmc.password_file", |c| c.password_file = None),
        ("power.bmc.poll_interval", |c| c.poll_interval = Duration::ZERO),
        ("power.bmc.min_request_interval", |c| {
            c.min_request_interval = Duration::ZERO
        }),
    ];
    for (field, f) in cases {
        let mut c = ok.clone();
        f(&mut c);
        assert_eq!(c.validate().map_err(|e| e.0), Err(field), "{c:?}");
    }
    let mut c = ok.clone();
    c.url = "https://[fe80::1]:8443/redfish/v1/".into();
    assert_eq!(
        c.validate(),
        Ok(()),
        "an address with a port, and the service root path"
    );

    let yaml =
        "url: https://10.0.0.7\nusername: admin\npassword_file: /etc/hostplane/bmc\npoll_interval: 10s\n";
    let parsed: BmcConfig = serde_norway::from_str(yaml).unwrap();
    assert_eq!(parsed.poll_interval, Duration::from_secs(10));
    assert_eq!(parsed.min_request_interval, Duration::from_millis(250));
    assert!(
        serde_norway::from_str::<BmcConfig>("url: x\npassword: hunter2\n").is_err(),
        "no password key"
    );
}
