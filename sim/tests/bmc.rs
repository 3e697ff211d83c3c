//! The Redfish BMC simulator over real HTTP(S), as a client sees it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hostplane_sim::bmc::{BmcError, BmcHandle, BmcOptions, BmcSim, Model, TlsFiles, Workload};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};

struct Resp {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
    text: String,
}

enum Auth<'a> {
    None,
    Basic(&'a str, &'a str),
    Token(&'a str),
}

async fn call(client: &Client, method: Method, url: &str, auth: Auth<'_>, body: Option<Value>) -> Resp {
    let mut req = client.request(method, url);
    req = match auth {
        Auth::None => req,
        Auth::Basic(u, p) => req.basic_auth(u, Some(p)),
        Auth::Token(t) => req.header("X-Auth-Token", t),
    };
    if let Some(b) = body {
        req = req.header("Content-Type", "application/json").body(b.to_string());
    }
    let r = req.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = r.status();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Resp {
        status,
        headers,
        body,
        text,
    }
}

const ADMIN: Auth<'static> = Auth::Basic("admin", "admin");

async fn get(c: &Client, url: &str) -> Resp {
    call(c, Method::GET, url, ADMIN, None).await
}

async fn patch(c: &Client, url: &str, body: Value) -> Resp {
    call(c, Method::PATCH, url, ADMIN, Some(body)).await
}

fn spawn(name: &str, model: Model) -> BmcHandle {
    BmcSim::spawn(BmcOptions::new(name, model)).unwrap()
}

fn error_id(r: &Resp) -> &str {
    r.body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no Redfish error: {}", r.text))
}

fn assert_error(r: &Resp, status: StatusCode, id: &str) {
    assert_eq!(r.status, status, "{}", r.text);
    assert_eq!(error_id(r), format!("Base.1.18.{id}"), "{}", r.text);
    let info = &r.body["error"]["@Message.ExtendedInfo"][0];
    assert_eq!(info["MessageId"], format!("Base.1.18.{id}"), "{}", r.text);
    assert!(!r.body["error"]["message"].as_str().unwrap().is_empty());
}

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

async fn node_views(c: &Client, bmc: &BmcHandle) -> (Value, Value, Value) {
    let power = get(c, &format!("{}/redfish/v1/Chassis/DGX/Power", bmc.url()))
        .await
        .body;
    let control = get(
        c,
        &format!("{}/redfish/v1/Chassis/DGX/Controls/PowerLimit", bmc.url()),
    )
    .await
    .body;
    let env = get(
        c,
        &format!("{}/redfish/v1/Chassis/DGX/EnvironmentMetrics", bmc.url()),
    )
    .await
    .body;
    (
        power["PowerControl"][0]["PowerLimit"]["LimitInWatts"].clone(),
        json!([control["SetPoint"], control["ControlMode"]]),
        json!([
            env["PowerLimitWatts"]["SetPoint"],
            env["PowerLimitWatts"]["ControlMode"]
        ]),
    )
}

#[tokio::test]
async fn power_and_controls_set_the_same_node_limit() {
    let bmc = spawn("limits", Model::DgxH100);
    let c = Client::new();
    let control = format!("{}/redfish/v1/Chassis/DGX/Controls/PowerLimit", bmc.url());
    let power = format!("{}/redfish/v1/Chassis/DGX/Power", bmc.url());

    let r = patch(
        &c,
        &control,
        json!({"SetPoint": 8000, "ControlMode": "Automatic"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["SetPoint"], 8000.0);
    assert_eq!(bmc.node_limit(), Some(8000.0));
    assert_eq!(
        node_views(&c, &bmc).await,
        (
            json!(8000.0),
            json!([8000.0, "Automatic"]),
            json!([8000.0, "Automatic"])
        )
    );

    let r = patch(
        &c,
        &power,
        json!({"PowerControl": [{"PowerLimit": {"LimitInWatts": 7000.5}}]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["PowerControl"][0]["PowerLimit"]["LimitInWatts"], 7000.5);
    assert_eq!(
        node_views(&c, &bmc).await,
        (
            json!(7000.5),
            json!([7000.5, "Automatic"]),
            json!([7000.5, "Automatic"])
        )
    );

    let r = patch(&c, &control, json!({"ControlMode": "Disabled"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(bmc.node_limit(), None);
    assert_eq!(
        node_views(&c, &bmc).await,
        (Value::Null, json!([null, "Disabled"]), json!([null, "Disabled"]))
    );

    patch(
        &c,
        &power,
        json!({"PowerControl": [{"PowerLimit": {"LimitInWatts": 9000}}]}),
    )
    .await;
    let r = patch(
        &c,
        &power,
        json!({"PowerControl": [{"PowerLimit": {"LimitInWatts": null}}]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(bmc.node_limit(), None);
    bmc.shutdown().await;
}

#[tokio::test]
async fn limits_out_of_range_get_400_and_change_nothing() {
    let bmc = spawn("range", Model::DgxH100);
    let c = Client::new();
    let control = format!("{}/redfish/v1/Chassis/DGX/Controls/PowerLimit", bmc.url());
    let power = format!("{}/redfish/v1/Chassis/DGX/Power", bmc.url());
    let gpu = format!(
        "{}/redfish/v1/Chassis/HGX_GPU_SXM_1/Controls/PowerLimit",
        bmc.url()
    );
    patch(
        &c,
        &control,
        json!({"SetPoint": 9000, "ControlMode": "Automatic"}),
    )
    .await;

    let r = patch(&c, &control, json!({"SetPoint": 100, "ControlMode": "Automatic"})).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "PropertyValueOutOfRange");
    assert_eq!(
        r.body["error"]["@Message.ExtendedInfo"][0]["MessageArgs"],
        json!(["100", "SetPoint"])
    );
    let r = patch(&c, &control, json!({"SetPoint": 10_201})).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "PropertyValueOutOfRange");
    let r = patch(
        &c,
        &power,
        json!({"PowerControl": [{"PowerLimit": {"LimitInWatts": 20000}}]}),
    )
    .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "PropertyValueOutOfRange");
    assert!(r.text.contains("LimitInWatts"), "{}", r.text);
    let r = patch(&c, &control, json!({"SetPoint": "lots"})).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "PropertyValueTypeError");
    let r = patch(&c, &control, json!({"ControlMode": "Override"})).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "PropertyValueNotInList");
    let r = patch(&c, &control, json!({"AllowableMax": 50000})).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "PropertyNotWritable");
    let r = call(&c, Method::PATCH, &control, ADMIN, None).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "MalformedJSON");
    assert_eq!(bmc.node_limit(), Some(9000.0));
    assert_eq!(
        node_views(&c, &bmc).await,
        (
            json!(9000.0),
            json!([9000.0, "Automatic"]),
            json!([9000.0, "Automatic"])
        )
    );

    let r = patch(&c, &gpu, json!({"SetPoint": 150, "ControlMode": "Automatic"})).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "PropertyValueOutOfRange");
    assert_eq!(bmc.gpu_limits()[0], None);
    let r = patch(&c, &gpu, json!({"SetPoint": 350, "ControlMode": "Automatic"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(bmc.gpu_limits()[0], Some(350.0));
    assert!(bmc.gpu_limits()[1..].iter().all(Option::is_none));
    bmc.shutdown().await;
}

#[tokio::test]
async fn a_node_limit_set_over_redfish_brings_the_draw_under_it() {
    let bmc = BmcSim::spawn(BmcOptions {
        workload: Workload::Constant(1.0),
        ..BmcOptions::new("settle", Model::Gb200)
    })
    .unwrap();
    let c = Client::new();
    let limit = Model::Gb200.spec().node_min_cap_watts() + 200.0;
    assert!(bmc.draw_watts() > limit + 1000.0);
    let r = patch(
        &c,
        &format!("{}/redfish/v1/Chassis/DGX/Controls/PowerLimit", bmc.url()),
        json!({"SetPoint": limit, "ControlMode": "Automatic"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    // The lag has a 1 s time constant: a few seconds of real time. Wait on
    // the condition (generously), not on a fixed sleep.
    let deadline = Instant::now() + Duration::from_secs(30);
    let env = format!("{}/redfish/v1/Chassis/DGX/EnvironmentMetrics", bmc.url());
    loop {
        let reading = get(&c, &env).await.body["PowerWatts"]["Reading"]
            .as_f64()
            .unwrap();
        if reading <= limit * 1.01 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {reading} W over a {limit} W limit"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(bmc.draw_watts() <= limit * 1.01);
    bmc.shutdown().await;
}

fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name_and_labels)
            .and_then(|v| v.trim().parse().ok())
    })
}

#[tokio::test]
async fn metrics_expose_the_model_and_the_requests() {
    let bmc = BmcSim::spawn(BmcOptions {
        workload: Workload::Idle,
        ..BmcOptions::new("metrics-1", Model::DgxH100)
    })
    .unwrap();
    let c = Client::new();
    get(&c, &format!("{}/redfish/v1/Chassis", bmc.url())).await;
    call(
        &c,
        Method::GET,
        &format!("{}/redfish/v1/Chassis", bmc.url()),
        Auth::None,
        None,
    )
    .await;
    let url = format!("{}/metrics", bmc.url());
    let text = call(&c, Method::GET, &url, Auth::None, None).await.text;
    let idle = Model::DgxH100.spec().node_idle_watts();
    let w = metric(&text, "hostplane_sim_bmc_power_watts{bmc=\"metrics-1\"}").expect(&text);
    assert!((w - idle).abs() < 1e-6, "{w}");
    for g in 1..=8 {
        let w = metric(
            &text,
            &format!("hostplane_sim_bmc_gpu_power_watts{{bmc=\"metrics-1\",gpu=\"{g}\"}}"),
        )
        .unwrap_or_else(|| panic!("gpu {g}: {text}"));
        assert!((w - 75.0).abs() < 1e-6);
    }
    assert!(!text.contains("gpu=\"9\""));
    assert!(!text.contains("hostplane_sim_bmc_power_limit_watts{"), "{text}");
    assert_eq!(
        metric(
            &text,
            "hostplane_sim_bmc_requests_total{bmc=\"metrics-1\",method=\"GET\",code=\"200\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "hostplane_sim_bmc_requests_total{bmc=\"metrics-1\",method=\"GET\",code=\"401\"}"
        ),
        Some(1.0),
        "{text}"
    );
    patch(
        &c,
        &format!("{}/redfish/v1/Chassis/DGX/Controls/PowerLimit", bmc.url()),
        json!({"SetPoint": 7500, "ControlMode": "Automatic"}),
    )
    .await;
    let text = call(&c, Method::GET, &url, Auth::None, None).await.text;
    assert_eq!(
        metric(&text, "hostplane_sim_bmc_power_limit_watts{bmc=\"metrics-1\"}"),
        Some(7500.0)
    );
    assert_eq!(
        metric(
            &text,
            "hostplane_sim_bmc_requests_total{bmc=\"metrics-1\",method=\"PATCH\",code=\"200\"}"
        ),
        Some(1.0),
        "{text}"
    );
    bmc.shutdown().await;
}

#[tokio::test]
async fn the_workload_is_set_through_sim_workload() {
    let bmc = spawn("workload", Model::DgxB200);
    let c = Client::new();
    let url = format!("{}/sim/workload", bmc.url());
    assert_eq!(
        call(&c, Method::GET, &url, Auth::None, None).await.text,
        "training\n"
    );
    let r = c.put(&url).body("constant:0.25").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(bmc.workload(), Workload::Constant(0.25));
    let r = c.put(&url).body("constant:7").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("outside 0..1"));
    assert_eq!(bmc.workload(), Workload::Constant(0.25));
    bmc.set_workload(Workload::Idle);
    assert_eq!(call(&c, Method::GET, &url, Auth::None, None).await.text, "idle\n");
    bmc.shutdown().await;
}

#[tokio::test]
async fn three_bmcs_of_different_models_run_in_one_process() {
    let models = [Model::DgxH100, Model::DgxB200, Model::Gb200];
    let bmcs: Vec<BmcHandle> = models
        .iter()
        .enumerate()
        .map(|(i, m)| spawn(&format!("node-{i}"), *m))
        .collect();
    let c = Client::new();
    let mut ports: Vec<u16> = bmcs.iter().map(|b| b.addr().port()).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 3);
    for (b, m) in bmcs.iter().zip(models) {
        assert_eq!(b.url(), format!("http://127.0.0.1:{}", b.addr().port()));
        let node = get(&c, &format!("{}/redfish/v1/Chassis/DGX", b.url())).await.body;
        assert_eq!(node["Model"], m.spec().display_name);
        assert_eq!(node["Links"]["Contains"].as_array().unwrap().len(), m.spec().gpus);
        assert_eq!(b.gpu_draws().len(), m.spec().gpus);
    }
    // A limit on one leaves the others alone.
    let r = patch(
        &c,
        &format!("{}/redfish/v1/Chassis/DGX/Controls/PowerLimit", bmcs[1].url()),
        json!({"SetPoint": 9000, "ControlMode": "Automatic"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let limits: Vec<Option<f64>> = bmcs.iter().map(|b| b.node_limit()).collect();
    assert_eq!(limits, vec![None, Some(9000.0), None]);
    for b in bmcs {
        let url = b.url();
        b.shutdown().await;
        assert!(
            c.get(format!("{url}/redfish/v1")).send().await.is_err(),
            "{url} still serving"
        );
    }
}

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

#[tokio::test]
async fn https_serves_with_the_given_certificate() {
    let bmc = BmcSim::spawn(BmcOptions {
        tls: Some(TlsFiles {
            cert: data("bmc-test-cert.pem"),
            key: data("bmc-test-key.pem"),
        }),
        ..BmcOptions::new("tls", Model::DgxH100)
    })
    .unwrap();
    assert!(bmc.url().starts_with("https://127.0.0.1:"), "{}", bmc.url());
    let cert = reqwest::Certificate::from_pem(&std::fs::read(data("bmc-test-cert.pem")).unwrap()).unwrap();
    let c = Client::builder().add_root_certificate(cert).build().unwrap();
    let r = get(&c, &format!("{}/redfish/v1/Chassis/DGX", bmc.url())).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["Model"], "DGX H100");
    // Plain HTTP to the HTTPS port gets no Redfish answer.
    let plain = Client::new()
        .get(format!("http://{}/redfish/v1", bmc.addr()))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    bmc.shutdown().await;
}

#[tokio::test]
async fn bad_tls_files_and_busy_ports_are_named() {
    let with_tls = |cert: PathBuf, key: PathBuf| BmcOptions {
        tls: Some(TlsFiles { cert, key }),
        ..BmcOptions::new("bad-tls", Model::DgxH100)
    };
    let missing = data("missing.pem");
    let e = BmcSim::spawn(with_tls(missing.clone(), data("bmc-test-key.pem"))).unwrap_err();
    assert!(matches!(e, BmcError::TlsFile { .. }), "{e}");
    assert!(e.to_string().contains(&missing.display().to_string()), "{e}");
    // The key where the certificate should be, and the reverse.
    let e = BmcSim::spawn(with_tls(data("bmc-test-key.pem"), data("bmc-test-key.pem"))).unwrap_err();
    assert!(e.to_string().contains("CERTIFICATE"), "{e}");
    let e = BmcSim::spawn(with_tls(data("bmc-test-cert.pem"), data("bmc-test-cert.pem"))).unwrap_err();
    assert!(e.to_string().contains("no private key"), "{e}");

    let first = spawn("busy-1", Model::DgxH100);
    let e = BmcSim::spawn(BmcOptions {
        listen: first.addr(),
        ..BmcOptions::new("busy-2", Model::DgxH100)
    })
    .unwrap_err();
    assert!(matches!(e, BmcError::Bind { .. }), "{e}");
    assert!(e.to_string().contains(&first.addr().to_string()), "{e}");
    first.shutdown().await;
}
