//! The Redfish client against the BMC simulator (hostplane-sim): every
//! modelled system read (node and GPUs), a node limit set and the modelled
//! draw settling under it, GPU limits, a refused limit, a lost session,
//! HTTPS, and several BMCs polled at once.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hostplane_agent::power::Scope;
use hostplane_agent::power::bmc::{self, BmcConfig, RedfishClient, RedfishError};
use hostplane_sim::bmc::{BmcHandle, BmcOptions, BmcSim, Model, TlsFiles, Workload};
use tokio_util::sync::CancellationToken;

fn sim(model: Model, workload: Workload) -> BmcHandle {
    BmcSim::spawn(BmcOptions {
        username: "operator".into(),
        password: format!("pw-{model}"),
        workload,
        ..BmcOptions::new(model.name(), model)
    })
    .unwrap()
}

fn config(bmc: &BmcHandle, dir: &tempfile::TempDir) -> BmcConfig {
    let pw = dir.path().join(format!("{}-password", bmc.name()));
    std::fs::write(&pw, format!("pw-{}\n", bmc.model())).unwrap();
    BmcConfig {
        url: bmc.url(),
        username: "operator".into(),
        password_file: Some(pw),
        poll_interval: Duration::from_millis(100),
        min_request_interval: Duration::from_millis(5),
        ..Default::default()
    }
}

#[tokio::test]
async fn every_model_reads_node_and_gpus() {
    let d = tempfile::tempdir().unwrap();
    for model in Model::ALL {
        let spec = model.spec();
        let bmc = sim(model, Workload::Constant(0.5));
        let c = RedfishClient::connect(&config(&bmc, &d)).await.unwrap();
        assert_eq!(c.auth_kind(), "session", "{model}");
        assert_eq!(c.gpu_devices().len(), spec.gpus, "{model}: {:?}", c.gpu_devices());
        let before = bmc.draw_watts();
        let r = c.sample().await;
        let after = bmc.draw_watts();
        assert!(r.iter().all(|r| r.error.is_none()), "{model}: {r:?}");
        let node = &r[0];
        assert_eq!((node.source, node.scope), ("redfish", Scope::Node));
        assert_eq!(node.device, c.node_device());
        let w = node.watts.unwrap();
        let (lo, hi) = (before.min(after), before.max(after));
        assert!(
            w >= lo * 0.99 && w <= hi * 1.01,
            "{model}: the BMC said {w} W, the model drew {before}..{after} W"
        );
        assert!(
            w > spec.node_idle_watts() && w < spec.node_max_watts(),
            "{model}: {w}"
        );
        assert!(
            node.energy_joules.is_some(),
            "{model}: EnvironmentMetrics has EnergykWh"
        );
        for g in &r[1..] {
            assert_eq!(g.scope, Scope::Gpu);
            let gw = g.watts.unwrap();
            assert!(
                gw >= spec.gpu_idle_watts * 0.99 && gw <= spec.gpu_max_watts * 1.01,
                "{model} {}: {gw}",
                g.device
            );
        }
        assert_eq!(
            c.node_limit_range().await.unwrap(),
            (spec.node_min_cap_watts(), spec.node_max_watts()),
            "{model}"
        );
        c.logout().await;
        bmc.shutdown().await;
    }
}

#[tokio::test]
async fn a_node_limit_takes_effect_and_the_draw_settles_under_it() {
    let d = tempfile::tempdir().unwrap();
    let bmc = sim(Model::DgxH100, Workload::Constant(1.0));
    let spec = Model::DgxH100.spec();
    let c = RedfishClient::connect(&config(&bmc, &d)).await.unwrap();
    assert_eq!(c.node_limit().await.unwrap(), None);
    let limit = ((spec.node_min_cap_watts() + spec.node_max_watts()) / 2.0).round();
    // Full load first: the draw is above the limit before it is set.
    let deadline = Instant::now() + Duration::from_secs(20);
    while bmc.draw_watts() <= limit * 1.05 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(bmc.draw_watts() > limit * 1.05, "modelled {} W", bmc.draw_watts());
    assert_eq!(c.set_node_limit(Some(limit)).await.unwrap(), Some(limit));
    assert_eq!(
        bmc.node_limit(),
        Some(limit),
        "the simulator enforces what the client set"
    );
    assert_eq!(c.node_limit().await.unwrap(), Some(limit));

    // The modelled draw (and what the BMC reports) settles under the limit.
    let deadline = Instant::now() + Duration::from_secs(20);
    let reported = loop {
        let w = c.sample().await[0].watts.unwrap();
        if w <= limit * 1.01 || Instant::now() > deadline {
            break w;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        reported <= limit * 1.01,
        "the BMC reports {reported} W under a {limit} W limit"
    );
    assert!(
        bmc.draw_watts() <= limit * 1.01,
        "modelled {} W",
        bmc.draw_watts()
    );

    // Below the allowed minimum: refused by the BMC, the limit unchanged.
    let e = c
        .set_node_limit(Some(spec.node_min_cap_watts() - 100.0))
        .await
        .unwrap_err();
    assert!(matches!(e, RedfishError::Status { status: 400, .. }), "{e}");
    assert!(e.to_string().contains("PropertyValueOutOfRange"), "{e}");
    assert_eq!(bmc.node_limit(), Some(limit));

    // Lifted: no limit on either side.
    assert_eq!(c.set_node_limit(None).await.unwrap(), None);
    assert_eq!(bmc.node_limit(), None);
    bmc.shutdown().await;
}

#[tokio::test]
async fn gpu_limits_and_a_lost_session() {
    let d = tempfile::tempdir().unwrap();
    let bmc = sim(Model::DgxB200, Workload::Training);
    let spec = Model::DgxB200.spec();
    let c = RedfishClient::connect(&config(&bmc, &d)).await.unwrap();
    let gpus: Vec<String> = c.gpu_devices().into_iter().map(String::from).collect();
    assert_eq!(
        c.gpu_limit_range(&gpus[2]).await.unwrap(),
        (spec.gpu_min_cap_watts, spec.gpu_max_watts)
    );
    let w = spec.gpu_min_cap_watts + 100.0;
    assert_eq!(c.set_gpu_limit(&gpus[2], Some(w)).await.unwrap(), Some(w));
    let limits = bmc.gpu_limits();
    assert_eq!(limits[2], Some(w), "{limits:?}");
    assert!(
        limits.iter().enumerate().all(|(i, l)| i == 2 || l.is_none()),
        "{limits:?}"
    );
    assert_eq!(c.set_gpu_limit(&gpus[2], None).await.unwrap(), None);
    assert_eq!(bmc.gpu_limits()[2], None);

    // The BMC forgets every session (a reboot): the client logs in again.
    bmc.drop_sessions();
    let r = c.sample().await;
    assert!(r.iter().all(|r| r.error.is_none()), "{r:?}");
    bmc.shutdown().await;
}

fn cert_data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../sim/tests/data")
        .join(name)
}

#[tokio::test]
async fn https_with_a_ca_file_or_insecure_tls_and_refused_otherwise() {
    let d = tempfile::tempdir().unwrap();
    let bmc = BmcSim::spawn(BmcOptions {
        username: "operator".into(),
        password: "pw-dgx-h100".into(),
        tls: Some(TlsFiles {
            cert: cert_data("bmc-test-cert.pem"),
            key: cert_data("bmc-test-key.pem"),
        }),
        ..BmcOptions::new("tls", Model::DgxH100)
    })
    .unwrap();
    assert!(bmc.url().starts_with("https://"));
    let cfg = config(&bmc, &d);
    let e = RedfishClient::connect(&cfg).await.unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("GET {}/redfish/v1: ", bmc.url())) && e.to_lowercase().contains("certificate"),
        "{e}"
    );
    let with_ca = BmcConfig {
        ca_file: Some(cert_data("bmc-test-cert.pem")),
        ..cfg.clone()
    };
    let c = RedfishClient::connect(&with_ca).await.unwrap();
    assert!(c.sample().await[0].watts.is_some());
    c.logout().await;
    let insecure = BmcConfig {
        insecure_tls: true,
        ..cfg.clone()
    };
    let c = RedfishClient::connect(&insecure).await.unwrap();
    assert!(c.sample().await[0].watts.is_some());
    c.logout().await;
    let not_pem = BmcConfig {
        ca_file: Some(cert_data("bmc-test-key.pem")),
        ..cfg
    };
    let e = RedfishClient::connect(&not_pem).await.unwrap_err().to_string();
    assert!(e.starts_with("power.bmc.ca_file: "), "{e}");
    bmc.shutdown().await;
}

#[tokio::test]
async fn three_bmcs_of_different_models_polled_at_once() {
    let d = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let tasks = tokio_util::task::TaskTracker::new();
    let bmcs: Vec<BmcHandle> = [Model::DgxH100, Model::DgxB300, Model::Gb200]
        .into_iter()
        .map(|m| sim(m, Workload::Constant(0.3)))
        .collect();
    let links: Vec<_> = bmcs
        .iter()
        .map(|b| bmc::poll::spawn(config(b, &d), Default::default(), &tasks, stop.clone()))
        .collect();
    for (b, l) in bmcs.iter().zip(&links) {
        let c = l.wait_client().await.unwrap();
        assert_eq!(c.gpu_devices().len(), b.model().spec().gpus);
        let mut r = Vec::new();
        for _ in 0..100 {
            r = l.readings(std::time::Instant::now());
            if !r.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(r.len(), 1 + b.model().spec().gpus, "{}: {r:?}", b.model());
        assert!(r.iter().all(|r| r.error.is_none() && r.age.is_some()), "{r:?}");
    }
    stop.cancel();
    tasks.close();
    tasks.wait().await;
    // The pollers logged out on the way out: every BMC's SessionService is empty.
    for b in &bmcs {
        let body = reqwest::Client::new()
            .get(format!("{}/redfish/v1/SessionService/Sessions", b.url()))
            .basic_auth("operator", Some(format!("pw-{}", b.model())))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let sessions: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(sessions["Members@odata.count"], 0, "{}: {sessions}", b.model());
    }
    for b in bmcs {
        b.shutdown().await;
    }
}
