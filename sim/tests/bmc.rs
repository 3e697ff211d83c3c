//! The Redfish BMC simulator over real HTTP, as a client sees it: the resources, auth, sessions.

mod bmc_common;

use bmc_common::{ADMIN, Auth, assert_error, call, get, spawn};
use hostplane_sim::bmc::{BmcOptions, BmcSim, Model, Workload};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test]
async fn the_service_root_needs_no_auth_and_links_everything() {
    let bmc = spawn("root", Model::DgxH100);
    let c = Client::new();
    let r = call(
        &c,
        Method::GET,
        &format!("{}/redfish/v1", bmc.url()),
        Auth::None,
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["odata-version"], "4.0");
    assert!(
        r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let root = r.body;
    assert_eq!(root["@odata.type"], "#ServiceRoot.v1_15_0.ServiceRoot");
    assert_eq!(root["@odata.id"], "/redfish/v1");
    assert_eq!(root["RedfishVersion"], "1.17.0");
    assert_eq!(root["UUID"].as_str().unwrap().len(), 36);
    for (k, uri) in [
        ("Systems", "/redfish/v1/Systems"),
        ("Chassis", "/redfish/v1/Chassis"),
        ("Managers", "/redfish/v1/Managers"),
        ("SessionService", "/redfish/v1/SessionService"),
    ] {
        assert_eq!(root[k]["@odata.id"], uri, "{k}");
    }
    assert_eq!(
        root["Links"]["Sessions"]["@odata.id"],
        "/redfish/v1/SessionService/Sessions"
    );
    // The trailing-slash form and the version document are public too.
    let r = call(
        &c,
        Method::GET,
        &format!("{}/redfish/v1/", bmc.url()),
        Auth::None,
        None,
    )
    .await;
    assert_eq!(r.body["@odata.id"], "/redfish/v1");
    let r = call(
        &c,
        Method::GET,
        &format!("{}/redfish", bmc.url()),
        Auth::None,
        None,
    )
    .await;
    assert_eq!(r.body, json!({"v1": "/redfish/v1/"}));
    bmc.shutdown().await;
}

#[tokio::test]
async fn every_resource_has_its_id_and_type() {
    let bmc = spawn("types", Model::DgxB200);
    let c = Client::new();
    let mut want: Vec<(String, &str)> = vec![
        (
            "/redfish/v1/Systems".into(),
            "#ComputerSystemCollection.ComputerSystemCollection",
        ),
        (
            "/redfish/v1/Systems/DGX".into(),
            "#ComputerSystem.v1_20_0.ComputerSystem",
        ),
        (
            "/redfish/v1/Chassis".into(),
            "#ChassisCollection.ChassisCollection",
        ),
        ("/redfish/v1/Chassis/DGX".into(), "#Chassis.v1_23_0.Chassis"),
        ("/redfish/v1/Chassis/DGX/Power".into(), "#Power.v1_7_1.Power"),
        (
            "/redfish/v1/Managers".into(),
            "#ManagerCollection.ManagerCollection",
        ),
        ("/redfish/v1/Managers/BMC".into(), "#Manager.v1_18_0.Manager"),
        (
            "/redfish/v1/SessionService".into(),
            "#SessionService.v1_1_9.SessionService",
        ),
        (
            "/redfish/v1/SessionService/Sessions".into(),
            "#SessionCollection.SessionCollection",
        ),
    ];
    for ch in std::iter::once("DGX".to_string()).chain((1..=8).map(|i| format!("HGX_GPU_SXM_{i}"))) {
        let base = format!("/redfish/v1/Chassis/{ch}");
        want.push((base.clone(), "#Chassis.v1_23_0.Chassis"));
        want.push((
            format!("{base}/EnvironmentMetrics"),
            "#EnvironmentMetrics.v1_3_0.EnvironmentMetrics",
        ));
        want.push((format!("{base}/Controls"), "#ControlCollection.ControlCollection"));
        want.push((format!("{base}/Controls/PowerLimit"), "#Control.v1_3_0.Control"));
        want.push((format!("{base}/Sensors"), "#SensorCollection.SensorCollection"));
        want.push((format!("{base}/Sensors/{ch}_Power_0"), "#Sensor.v1_7_0.Sensor"));
    }
    for (uri, ty) in &want {
        let r = get(&c, &format!("{}{uri}", bmc.url())).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}: {}", r.text);
        assert_eq!(r.body["@odata.id"], *uri, "{uri}");
        assert_eq!(r.body["@odata.type"], *ty, "{uri}");
        assert!(r.body["Name"].is_string(), "{uri}");
        if ty.ends_with("Collection") {
            let n = r.body["Members"].as_array().unwrap().len();
            assert_eq!(r.body["Members@odata.count"], n, "{uri}");
            for m in r.body["Members"].as_array().unwrap() {
                let m = m["@odata.id"].as_str().unwrap();
                assert_eq!(
                    get(&c, &format!("{}{m}", bmc.url())).await.status,
                    StatusCode::OK,
                    "{m}"
                );
            }
        } else {
            assert!(r.body["Id"].is_string(), "{uri}");
        }
    }
    let chassis = get(&c, &format!("{}/redfish/v1/Chassis", bmc.url())).await.body;
    assert_eq!(chassis["Members@odata.count"], 9);
    let node = get(&c, &format!("{}/redfish/v1/Chassis/DGX", bmc.url()))
        .await
        .body;
    assert_eq!(node["ChassisType"], "RackMount");
    assert_eq!(node["Model"], "DGX B200");
    assert_eq!(node["Manufacturer"], "NVIDIA");
    assert_eq!(node["Power"]["@odata.id"], "/redfish/v1/Chassis/DGX/Power");
    assert_eq!(
        node["EnvironmentMetrics"]["@odata.id"],
        "/redfish/v1/Chassis/DGX/EnvironmentMetrics"
    );
    assert_eq!(node["Controls"]["@odata.id"], "/redfish/v1/Chassis/DGX/Controls");
    assert_eq!(
        node["Links"]["ComputerSystems"][0]["@odata.id"],
        "/redfish/v1/Systems/DGX"
    );
    assert_eq!(node["Links"]["Contains"].as_array().unwrap().len(), 8);
    let gpu = get(&c, &format!("{}/redfish/v1/Chassis/HGX_GPU_SXM_3", bmc.url()))
        .await
        .body;
    assert_eq!(gpu["ChassisType"], "Module");
    assert_eq!(
        gpu["Links"]["ContainedBy"]["@odata.id"],
        "/redfish/v1/Chassis/DGX"
    );
    let system = get(&c, &format!("{}/redfish/v1/Systems/DGX", bmc.url()))
        .await
        .body;
    assert_eq!(
        (system["PowerState"].as_str(), system["Model"].as_str()),
        (Some("On"), Some("DGX B200"))
    );
    assert_eq!(
        system["Links"]["Chassis"][0]["@odata.id"],
        "/redfish/v1/Chassis/DGX"
    );
    let manager = get(&c, &format!("{}/redfish/v1/Managers/BMC", bmc.url()))
        .await
        .body;
    assert_eq!(manager["ManagerType"], "BMC");
    bmc.shutdown().await;
}

#[tokio::test]
async fn readings_agree_with_the_model() {
    let bmc = BmcSim::spawn(BmcOptions {
        workload: Workload::Constant(0.5),
        ..BmcOptions::new("readings", Model::DgxH100)
    })
    .unwrap();
    let c = Client::new();
    let spec = Model::DgxH100.spec();
    let want = (spec.node_idle_watts() + spec.node_max_watts()) / 2.0;
    let env = get(
        &c,
        &format!("{}/redfish/v1/Chassis/DGX/EnvironmentMetrics", bmc.url()),
    )
    .await
    .body;
    let reading = env["PowerWatts"]["Reading"].as_f64().unwrap();
    assert!((reading - want).abs() < 0.01, "{reading} vs {want}");
    assert!((bmc.draw_watts() - want).abs() < 1e-6);
    assert!(env["EnergykWh"]["Reading"].as_f64().unwrap() >= 0.0);
    assert_eq!(env["PowerLimitWatts"]["ControlMode"], "Disabled");
    assert_eq!(env["PowerLimitWatts"]["SetPoint"], Value::Null);
    assert_eq!(env["PowerLimitWatts"]["AllowableMin"], spec.node_min_cap_watts());
    assert_eq!(env["PowerLimitWatts"]["AllowableMax"], spec.node_max_watts());
    let sensor = env["PowerWatts"]["DataSourceUri"].as_str().unwrap();
    let s = get(&c, &format!("{}{sensor}", bmc.url())).await.body;
    assert_eq!(s["ReadingUnits"], "W");
    assert!((s["Reading"].as_f64().unwrap() - want).abs() < 0.01);

    let power = get(&c, &format!("{}/redfish/v1/Chassis/DGX/Power", bmc.url()))
        .await
        .body;
    let pc = &power["PowerControl"][0];
    assert_eq!(pc["@odata.id"], "/redfish/v1/Chassis/DGX/Power#/PowerControl/0");
    assert_eq!(pc["MemberId"], "0");
    assert!((pc["PowerConsumedWatts"].as_f64().unwrap() - want).abs() < 0.01);
    assert_eq!(pc["PowerCapacityWatts"], spec.node_max_watts());
    assert_eq!(pc["PowerLimit"]["LimitInWatts"], Value::Null);
    assert_eq!(pc["PowerMetrics"]["IntervalInMin"], 1);
    assert!((pc["PowerMetrics"]["AverageConsumedWatts"].as_f64().unwrap() - want).abs() < 0.01);

    let gpu = get(
        &c,
        &format!(
            "{}/redfish/v1/Chassis/HGX_GPU_SXM_2/EnvironmentMetrics",
            bmc.url()
        ),
    )
    .await
    .body;
    let g = gpu["PowerWatts"]["Reading"].as_f64().unwrap();
    assert!((g - bmc.gpu_draws()[1]).abs() < 0.01, "{g}");
    assert_eq!(gpu["PowerLimitWatts"]["AllowableMax"], 700.0);
    let ctl = get(
        &c,
        &format!(
            "{}/redfish/v1/Chassis/HGX_GPU_SXM_2/Controls/PowerLimit",
            bmc.url()
        ),
    )
    .await
    .body;
    assert_eq!(ctl["PhysicalContext"], "GPU");
    assert_eq!(ctl["SetPointUnits"], "W");
    assert_eq!(ctl["ControlType"], "Power");
    assert!((ctl["Sensor"]["Reading"].as_f64().unwrap() - g).abs() < 0.01);
    bmc.shutdown().await;
}

#[tokio::test]
async fn requests_without_valid_credentials_get_401() {
    let bmc = spawn("auth", Model::Gb200);
    let c = Client::new();
    let url = format!("{}/redfish/v1/Chassis/DGX", bmc.url());
    for auth in [
        Auth::None,
        Auth::Basic("admin", "wrong"),
        Auth::Basic("root", "admin"),
        Auth::Token("not-a-token"),
    ] {
        let r = call(&c, Method::GET, &url, auth, None).await;
        assert_error(&r, StatusCode::UNAUTHORIZED, "NoValidSession");
        assert_eq!(r.headers["www-authenticate"], "Basic realm=\"hostplane-bmc\"");
    }
    // An unknown path under /redfish/v1 says 401 before 404: nothing is revealed.
    let r = call(
        &c,
        Method::GET,
        &format!("{}/redfish/v1/Nope", bmc.url()),
        Auth::None,
        None,
    )
    .await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "NoValidSession");
    // A PATCH without credentials changes nothing.
    let r = call(
        &c,
        Method::PATCH,
        &format!("{}/redfish/v1/Chassis/DGX/Controls/PowerLimit", bmc.url()),
        Auth::None,
        Some(json!({"SetPoint": 3000, "ControlMode": "Automatic"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(bmc.node_limit(), None);
    // Basic with the right credentials works.
    assert_eq!(get(&c, &url).await.status, StatusCode::OK);
    bmc.shutdown().await;
}

#[tokio::test]
async fn unknown_paths_get_404_and_wrong_methods_405() {
    let bmc = spawn("errors", Model::Gb200);
    let c = Client::new();
    for path in [
        "/redfish/v1/Chassis/HGX_GPU_SXM_5",
        "/redfish/v1/Chassis/HGX_GPU_SXM_1/Power",
        "/redfish/v1/Systems/Other",
        "/redfish/v1/SessionService/Sessions/999",
        "/index.html",
    ] {
        let r = get(&c, &format!("{}{path}", bmc.url())).await;
        assert_error(&r, StatusCode::NOT_FOUND, "ResourceNotFound");
        assert!(
            r.body["error"]["message"].as_str().unwrap().contains(path),
            "{}",
            r.text
        );
    }
    for (method, path, allow) in [
        (Method::DELETE, "/redfish/v1/Chassis/DGX", "GET, HEAD"),
        (Method::POST, "/redfish/v1/Chassis/DGX/Power", "GET, HEAD, PATCH"),
        (
            Method::PATCH,
            "/redfish/v1/Chassis/DGX/EnvironmentMetrics",
            "GET, HEAD",
        ),
        (
            Method::PUT,
            "/redfish/v1/SessionService/Sessions",
            "GET, HEAD, POST",
        ),
    ] {
        let r = call(
            &c,
            method.clone(),
            &format!("{}{path}", bmc.url()),
            ADMIN,
            Some(json!({})),
        )
        .await;
        assert_error(&r, StatusCode::METHOD_NOT_ALLOWED, "OperationNotAllowed");
        assert_eq!(r.headers["allow"], allow, "{method} {path}");
    }
    bmc.shutdown().await;
}

#[tokio::test]
async fn sessions_log_in_work_and_end() {
    let bmc = spawn("sessions", Model::DgxB300);
    let c = Client::new();
    let sessions = format!("{}/redfish/v1/SessionService/Sessions", bmc.url());
    let chassis = format!("{}/redfish/v1/Chassis/DGX", bmc.url());

    let r = call(
        &c,
        Method::POST,
        &sessions,
        Auth::None,
        Some(json!({"UserName": "admin", "Password": "wrong"})),
    )
    .await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "NoValidSession");
    let r = call(
        &c,
        Method::POST,
        &sessions,
        Auth::None,
        Some(json!({"UserName": "admin"})),
    )
    .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "PropertyMissing");
    assert!(r.text.contains("Password"), "{}", r.text);

    let r = call(
        &c,
        Method::POST,
        &sessions,
        Auth::None,
        Some(json!({"UserName": "admin", "Password": "admin"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let token = r.headers["x-auth-token"].to_str().unwrap().to_string();
    let location = r.headers["location"].to_str().unwrap().to_string();
    assert!(
        location.starts_with("/redfish/v1/SessionService/Sessions/"),
        "{location}"
    );
    assert_eq!(r.body["@odata.type"], "#Session.v1_7_0.Session");
    assert_eq!(r.body["@odata.id"], location.as_str());
    assert_eq!(r.body["UserName"], "admin");
    assert_eq!(r.body["Password"], Value::Null);

    let r = call(&c, Method::GET, &chassis, Auth::Token(&token), None).await;
    assert_eq!(r.status, StatusCode::OK);
    let list = call(&c, Method::GET, &sessions, Auth::Token(&token), None).await;
    assert_eq!(list.body["Members"], json!([{"@odata.id": location}]));
    let me = call(
        &c,
        Method::GET,
        &format!("{}{location}", bmc.url()),
        Auth::Token(&token),
        None,
    )
    .await;
    assert_eq!(me.body["Id"], location.rsplit('/').next().unwrap());

    let r = call(
        &c,
        Method::DELETE,
        &format!("{}{location}", bmc.url()),
        Auth::Token(&token),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = call(&c, Method::GET, &chassis, Auth::Token(&token), None).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "NoValidSession");
    let r = call(
        &c,
        Method::DELETE,
        &format!("{}{location}", bmc.url()),
        ADMIN,
        None,
    )
    .await;
    assert_error(&r, StatusCode::NOT_FOUND, "ResourceNotFound");

    // A BMC that forgets its sessions (reboot, timeout) refuses their tokens.
    let r = call(
        &c,
        Method::POST,
        &sessions,
        Auth::None,
        Some(json!({"UserName": "admin", "Password": "admin"})),
    )
    .await;
    let token = r.headers["x-auth-token"].to_str().unwrap().to_string();
    assert_eq!(
        call(&c, Method::GET, &chassis, Auth::Token(&token), None)
            .await
            .status,
        StatusCode::OK
    );
    bmc.drop_sessions();
    let r = call(&c, Method::GET, &chassis, Auth::Token(&token), None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    bmc.shutdown().await;
}
