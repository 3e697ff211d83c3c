//! The simulated BMC's `ComputerSystem.Reset` seen by a Redfish client
//! nobody here wrote: OpenStack's sushy (installed by scripts/setup, as
//! Ironic uses it against real BMCs; sim/testdata/sushy_reset.py does the
//! talking). sushy must find the System, read PowerCycle among its allowed
//! reset types, power-cycle it and watch PowerState go Off and back On, and
//! parse the server's refusal of a reset type the System does not allow.

mod bmc_common;

use std::process::Command;
use std::time::Duration;

use bmc_common::spawn;
use hostplane_sim::bmc::{Model, PowerState};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sushy_power_cycles_the_simulated_system() {
    let have = Command::new("python3")
        .args(["-c", "import sushy"])
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        eprintln!("SKIP: python3 with sushy is needed (scripts/setup installs it with pip)");
        return;
    }
    let bmc = spawn("sushy", Model::DgxB200);
    bmc.set_power_transition(Duration::from_millis(500));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/sushy_reset.py");
    let out = tokio::process::Command::new("python3")
        .args([script, &bmc.url(), "admin", "admin"])
        .output()
        .await
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");

    assert_eq!(seen["systems"], serde_json::json!(["/redfish/v1/Systems/DGX"]));
    let allowed: Vec<&str> = seen["allowed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(allowed.contains(&"PowerCycle"), "{allowed:?}");
    assert!(!allowed.contains(&"Nmi"), "{allowed:?}");
    assert_eq!(seen["before"], "On");
    // sushy saw the System Off, then On again (PoweringOff may show between).
    let states: Vec<&str> = seen["states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let off = states.iter().position(|s| *s == "Off");
    assert!(off.is_some(), "never Off: {states:?}");
    assert_eq!(states.last(), Some(&"On"), "{states:?}");
    // The simulator counted exactly that one power cycle and is On.
    assert_eq!(bmc.power_cycles(), 1);
    assert_eq!(bmc.power_state(), PowerState::On);

    // sushy refuses Nmi itself (from the allowed values it read); sent
    // anyway, the server's 400 carries the Base registry's message.
    assert_eq!(seen["nmi_client"], "InvalidParameterValueError");
    let server = &seen["nmi_server"];
    assert_eq!(server["status"], 400, "{server}");
    assert_eq!(server["error"], "BadRequestError", "{server}");
    assert!(
        server["detail"]
            .as_str()
            .unwrap()
            .contains("Base.1.18.ActionParameterValueNotInList"),
        "{server}"
    );
    assert_eq!(bmc.power_cycles(), 1, "the refused reset changed nothing");
}
