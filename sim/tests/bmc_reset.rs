//! `ComputerSystem.Reset` on the simulated BMC (issue 14's power cycle):
//! the System's `PowerState` goes Off and comes back On after the power
//! transition, the draw is zero while Off, power limits still answer, the
//! resets are counted (in the handle and in `/metrics`), and bad requests
//! are refused with the Base registry's `ActionParameter*` messages.

mod bmc_common;

use std::time::{Duration, Instant};

use bmc_common::{ADMIN, Auth, assert_error, call, get, patch, spawn};
use hostplane_sim::bmc::{Model, PowerState, ResetType, Workload};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};

/// Long enough that the checks made while Off (or PoweringOff) finish
/// inside it on a loaded machine.
const TRANSITION: Duration = Duration::from_millis(1_500);

fn urls(base: &str) -> (String, String) {
    (
        format!("{base}/redfish/v1/Systems/DGX"),
        format!("{base}/redfish/v1/Systems/DGX/Actions/ComputerSystem.Reset"),
    )
}

async fn reset(c: &Client, url: &str, reset_type: &str) -> bmc_common::Resp {
    call(
        c,
        Method::POST,
        url,
        ADMIN,
        Some(json!({ "ResetType": reset_type })),
    )
    .await
}

async fn power_state(c: &Client, system: &str) -> String {
    let r = get(c, system).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body["PowerState"].as_str().expect("PowerState").to_string()
}

/// Poll the System until its `PowerState` is `want`; how long that took.
async fn wait_for(c: &Client, system: &str, want: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let got = power_state(c, system).await;
        if got == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "PowerState is {got}, not {want}, after {:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test]
async fn the_system_advertises_the_reset_action() {
    let bmc = spawn("reset-actions", Model::DgxB200);
    let c = Client::new();
    let (system, target) = urls(&bmc.url());
    let r = get(&c, &system).await;
    assert_eq!(r.body["PowerState"], "On", "{}", r.text);
    let action = &r.body["Actions"]["#ComputerSystem.Reset"];
    assert_eq!(
        action["target"],
        "/redfish/v1/Systems/DGX/Actions/ComputerSystem.Reset"
    );
    let allowed: Vec<&str> = action["ResetType@Redfish.AllowableValues"]
        .as_array()
        .unwrap_or_else(|| panic!("no AllowableValues: {}", r.text))
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        allowed,
        [
            "On",
            "ForceOff",
            "GracefulShutdown",
            "GracefulRestart",
            "ForceRestart",
            "PowerCycle"
        ]
    );
    assert!(target.ends_with(action["target"].as_str().unwrap()));
    // The action's URI is for POST only.
    let r = get(&c, &target).await;
    assert_error(&r, StatusCode::METHOD_NOT_ALLOWED, "OperationNotAllowed");
    assert_eq!(r.headers["allow"], "POST");
    bmc.shutdown().await;
}

#[tokio::test]
async fn a_power_cycle_goes_off_then_on_and_is_counted() {
    let bmc = spawn("reset-cycle", Model::DgxH100);
    bmc.set_workload(Workload::Constant(0.8));
    bmc.set_power_transition(TRANSITION);
    let c = Client::new();
    let (system, target) = urls(&bmc.url());
    let chassis = format!("{}/redfish/v1/Chassis/DGX", bmc.url());
    // Settled at the new workload (within the 1 s correction time).
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let running = bmc.draw_watts();
    assert!(running > 5_000.0, "{running}");
    assert_eq!(bmc.power_cycles(), 0);

    let r = reset(&c, &target, "PowerCycle").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert_eq!(bmc.power_cycles(), 1);
    // Off at once: no draw, the chassis off too.
    let sys = get(&c, &system).await;
    assert_eq!(sys.body["PowerState"], "Off", "{}", sys.text);
    assert_eq!(get(&c, &chassis).await.body["PowerState"], "Off");
    assert_eq!(bmc.power_state(), PowerState::Off);
    assert_eq!(bmc.draw_watts(), 0.0);
    assert!(bmc.gpu_draws().iter().all(|w| *w == 0.0));
    let reading = get(&c, &format!("{chassis}/EnvironmentMetrics")).await;
    assert_eq!(reading.body["PowerWatts"]["Reading"], 0.0, "{}", reading.text);

    // On again after the transition, not before; the draw comes back.
    let took = wait_for(&c, &system, "On", Duration::from_secs(5)).await;
    assert!(
        took + Duration::from_millis(100) >= TRANSITION,
        "On after only {took:?}"
    );
    assert_eq!(get(&c, &chassis).await.body["PowerState"], "On");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert!(
        (bmc.draw_watts() - running).abs() < 0.05 * running,
        "{}",
        bmc.draw_watts()
    );

    // A second one counts again; the metrics say so too.
    let r = reset(&c, &target, "PowerCycle").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert_eq!(bmc.power_cycles(), 2);
    let text = c
        .get(format!("{}/metrics", bmc.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric(
            &text,
            "hostplane_sim_bmc_system_resets_total{bmc=\"reset-cycle\",reset_type=\"PowerCycle\"}"
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "hostplane_sim_bmc_system_resets_total{bmc=\"reset-cycle\",reset_type=\"ForceOff\"}"
        ),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "hostplane_sim_bmc_system_powered{bmc=\"reset-cycle\"}"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "hostplane_sim_bmc_power_watts{bmc=\"reset-cycle\"}"),
        Some(0.0),
        "{text}"
    );
    wait_for(&c, &system, "On", Duration::from_secs(5)).await;
    bmc.shutdown().await;
}

#[tokio::test]
async fn force_off_stays_off_with_limits_answering_until_on() {
    let bmc = spawn("reset-off", Model::Gb200);
    bmc.set_power_transition(TRANSITION);
    let c = Client::new();
    let (system, target) = urls(&bmc.url());
    let ctl = format!("{}/redfish/v1/Chassis/DGX/Controls/PowerLimit", bmc.url());

    let r = reset(&c, &target, "ForceOff").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert_eq!(power_state(&c, &system).await, "Off");
    // Off stays off, well past the transition.
    tokio::time::sleep(TRANSITION + Duration::from_millis(300)).await;
    assert_eq!(power_state(&c, &system).await, "Off");
    assert_eq!(bmc.draw_watts(), 0.0);
    // Power limits still answer and can be set while off.
    let r = patch(&c, &ctl, json!({"SetPoint": 3_000, "ControlMode": "Automatic"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["SetPoint"], 3_000.0);
    assert_eq!(r.body["Sensor"]["Reading"], 0.0, "{}", r.text);
    assert_eq!(bmc.node_limit(), Some(3_000.0));

    let r = reset(&c, &target, "On").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert_eq!(power_state(&c, &system).await, "On");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let draw = bmc.draw_watts();
    assert!(draw > 1_000.0 && draw <= 3_000.0 + 1e-6, "{draw}");
    assert_eq!(bmc.resets(ResetType::ForceOff), 1);
    assert_eq!(bmc.resets(ResetType::On), 1);
    assert_eq!(bmc.power_cycles(), 0);
    bmc.shutdown().await;
}

#[tokio::test]
async fn a_graceful_shutdown_passes_through_powering_off() {
    let bmc = spawn("reset-graceful", Model::DgxB300);
    bmc.set_power_transition(TRANSITION);
    let c = Client::new();
    let (system, target) = urls(&bmc.url());
    let r = reset(&c, &target, "GracefulShutdown").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert_eq!(power_state(&c, &system).await, "PoweringOff");
    assert!(bmc.draw_watts() > 0.0, "still powered while the OS shuts down");
    wait_for(&c, &system, "Off", Duration::from_secs(5)).await;
    assert_eq!(bmc.draw_watts(), 0.0);
    bmc.shutdown().await;
}

#[tokio::test]
async fn bad_resets_are_refused_with_the_registry_messages_and_change_nothing() {
    let bmc = spawn("reset-bad", Model::DgxH100);
    let c = Client::new();
    let (system, target) = urls(&bmc.url());
    let post = |body: Option<Value>, auth| call(&c, Method::POST, &target, auth, body);

    let r = post(Some(json!({"ResetType": "Reboot"})), ADMIN).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "ActionParameterValueNotInList");
    let info = &r.body["error"]["@Message.ExtendedInfo"][0];
    assert_eq!(
        info["MessageArgs"],
        json!(["Reboot", "ResetType", "ComputerSystem.Reset"])
    );
    assert_eq!(
        info["Message"],
        "The value 'Reboot' for the parameter ResetType in the action ComputerSystem.Reset is not in the list of acceptable values."
    );
    // Enum members are case-sensitive.
    let r = post(Some(json!({"ResetType": "powercycle"})), ADMIN).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "ActionParameterValueNotInList");

    for body in [Some(json!({})), None] {
        let r = post(body, ADMIN).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "ActionParameterMissing");
        assert_eq!(
            r.body["error"]["@Message.ExtendedInfo"][0]["MessageArgs"],
            json!(["ComputerSystem.Reset", "ResetType"])
        );
    }
    let r = post(Some(json!({"ResetType": true})), ADMIN).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "ActionParameterValueTypeError");
    let r = post(Some(json!({"ResetType": "ForceOff", "Force": true})), ADMIN).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "ActionParameterUnknown");

    // Unauthenticated, or with the wrong password: 401, nothing done.
    let r = post(Some(json!({"ResetType": "ForceOff"})), Auth::None).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "NoValidSession");
    let r = post(
        Some(json!({"ResetType": "ForceOff"})),
        Auth::Basic("admin", "wrong"),
    )
    .await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "NoValidSession");
    let r = post(Some(json!({"ResetType": "ForceOff"})), Auth::Token("forged")).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "NoValidSession");

    assert_eq!(power_state(&c, &system).await, "On");
    assert_eq!(bmc.power_state(), PowerState::On);
    for t in ResetType::ALL {
        assert_eq!(bmc.resets(t), 0, "{t}");
    }
    bmc.shutdown().await;
}

#[tokio::test]
async fn a_session_token_may_reset() {
    let bmc = spawn("reset-session", Model::DgxH100);
    let c = Client::new();
    let (system, target) = urls(&bmc.url());
    let login = call(
        &c,
        Method::POST,
        &format!("{}/redfish/v1/SessionService/Sessions", bmc.url()),
        Auth::None,
        Some(json!({"UserName": "admin", "Password": "admin"})),
    )
    .await;
    assert_eq!(login.status, StatusCode::CREATED, "{}", login.text);
    let token = login.headers["x-auth-token"].to_str().unwrap().to_string();
    let r = call(
        &c,
        Method::POST,
        &target,
        Auth::Token(&token),
        Some(json!({"ResetType": "ForceOff"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert_eq!(power_state(&c, &system).await, "Off");
    bmc.shutdown().await;
}
