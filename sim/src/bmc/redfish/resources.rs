//! The bodies of the Redfish resources.

use serde_json::{Value, json};

use super::auth::SESSION_TIMEOUT;
use super::{
    ACCOUNT_SERVICE, CHASSIS, Ch, MANAGER, MANAGERS, NODE_CHASSIS, ROOT, SESSION_SERVICE, SESSIONS, SYSTEM,
    SYSTEM_RESET, SYSTEMS,
};
use crate::bmc::Bmc;
use crate::bmc::power::{CORRECTION_S, PowerModel};
use crate::bmc::reset::{PowerState, ResetType};

pub(super) fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

pub(super) fn link(uri: &str) -> Value {
    json!({ "@odata.id": uri })
}

pub(super) fn status_ok() -> Value {
    json!({ "State": "Enabled", "Health": "OK" })
}

pub(super) fn service_root(bmc: &Bmc) -> Value {
    json!({
        "@odata.id": ROOT,
        "@odata.type": "#ServiceRoot.v1_15_0.ServiceRoot",
        "Id": "RootService",
        "Name": "Root Service",
        "RedfishVersion": "1.17.0",
        "UUID": bmc.uuid,
        "Vendor": "hostplane",
        "Product": format!("hostplane BMC simulator ({})", bmc.model.spec().display_name),
        "Systems": link(SYSTEMS),
        "Chassis": link(CHASSIS),
        "Managers": link(MANAGERS),
        "SessionService": link(SESSION_SERVICE),
        "AccountService": link(ACCOUNT_SERVICE),
        "Links": { "Sessions": link(SESSIONS) },
    })
}

/// A resource collection. DMTF collections have no `Id`.
pub(super) fn collection(
    uri: &str,
    odata_type: &str,
    name: &str,
    members: impl IntoIterator<Item = String>,
) -> Value {
    let members: Vec<Value> = members.into_iter().map(|m| link(&m)).collect();
    json!({
        "@odata.id": uri,
        "@odata.type": odata_type,
        "Name": name,
        "Members@odata.count": members.len(),
        "Members": members,
    })
}

pub(super) fn system(bmc: &Bmc, power_state: PowerState) -> Value {
    let spec = bmc.model.spec();
    let reset_types: Vec<&str> = ResetType::ALL.iter().map(|r| r.name()).collect();
    json!({
        "@odata.id": SYSTEM,
        "@odata.type": "#ComputerSystem.v1_20_0.ComputerSystem",
        "Id": "DGX",
        "Name": spec.display_name,
        "SystemType": "Physical",
        "Manufacturer": "NVIDIA",
        "Model": spec.display_name,
        "UUID": bmc.uuid,
        "PowerState": power_state.name(),
        "Status": status_ok(),
        "Links": {
            "Chassis": [link(NODE_CHASSIS)],
            "ManagedBy": [link(MANAGER)],
        },
        "Actions": {
            "#ComputerSystem.Reset": {
                "target": SYSTEM_RESET,
                "ResetType@Redfish.AllowableValues": reset_types,
            },
        },
    })
}

pub(super) fn manager(bmc: &Bmc) -> Value {
    json!({
        "@odata.id": MANAGER,
        "@odata.type": "#Manager.v1_18_0.Manager",
        "Id": "BMC",
        "Name": format!("{} BMC", bmc.name),
        "ManagerType": "BMC",
        "FirmwareVersion": concat!("hostplane-sim ", env!("CARGO_PKG_VERSION")),
        "PowerState": "On",
        "Status": status_ok(),
        "Links": {
            "ManagerForServers": [link(SYSTEM)],
            "ManagerForChassis": [link(NODE_CHASSIS)],
        },
    })
}

pub(super) fn session_service() -> Value {
    json!({
        "@odata.id": SESSION_SERVICE,
        "@odata.type": "#SessionService.v1_1_9.SessionService",
        "Id": "SessionService",
        "Name": "Session Service",
        "ServiceEnabled": true,
        "SessionTimeout": SESSION_TIMEOUT.as_secs(),
        "Sessions": link(SESSIONS),
    })
}

pub(super) fn session(id: &str, user: &str) -> Value {
    json!({
        "@odata.id": format!("{SESSIONS}/{id}"),
        "@odata.type": "#Session.v1_7_0.Session",
        "Id": id,
        "Name": "User Session",
        "UserName": user,
        "Password": null,
        "SessionType": "Redfish",
    })
}

/// A chassis: its `PowerState` is the system's (the GPUs have power when the node does).
pub(super) fn chassis(bmc: &Bmc, ch: Ch, power_state: PowerState) -> Value {
    let spec = bmc.model.spec();
    let uri = ch.uri();
    let mut v = json!({
        "@odata.id": uri,
        "@odata.type": "#Chassis.v1_23_0.Chassis",
        "Id": ch.id(),
        "Manufacturer": "NVIDIA",
        "PowerState": power_state.name(),
        "Status": status_ok(),
        "EnvironmentMetrics": link(&format!("{uri}/EnvironmentMetrics")),
        "Controls": link(&format!("{uri}/Controls")),
        "Sensors": link(&format!("{uri}/Sensors")),
    });
    let o = v.as_object_mut().expect("an object");
    match ch {
        Ch::Node => {
            o.insert("Name".into(), json!(spec.display_name));
            o.insert("ChassisType".into(), json!("RackMount"));
            o.insert("Model".into(), json!(spec.display_name));
            o.insert("Power".into(), link(&format!("{uri}/Power")));
            let gpus: Vec<Value> = (0..spec.gpus).map(|i| link(&Ch::Gpu(i).uri())).collect();
            o.insert(
                "Links".into(),
                json!({
                    "ComputerSystems": [link(SYSTEM)],
                    "ManagedBy": [link(MANAGER)],
                    "Contains": gpus,
                }),
            );
        }
        Ch::Gpu(i) => {
            o.insert("Name".into(), json!(format!("GPU SXM {}", i + 1)));
            o.insert("ChassisType".into(), json!("Module"));
            o.insert("Model".into(), json!(spec.gpu_name));
            o.insert(
                "Links".into(),
                json!({
                    "ContainedBy": link(NODE_CHASSIS),
                    "ManagedBy": [link(MANAGER)],
                }),
            );
        }
    }
    v
}

pub(super) fn draw_of(p: &PowerModel, ch: Ch) -> f64 {
    match ch {
        Ch::Node => p.node_draw(),
        Ch::Gpu(i) => p.gpu_draws()[i],
    }
}

pub(super) fn limit_of(p: &PowerModel, ch: Ch) -> Option<f64> {
    match ch {
        Ch::Node => p.node_limit(),
        Ch::Gpu(i) => p.gpu_limit(i),
    }
}

pub(super) fn range_of(p: &PowerModel, ch: Ch) -> (f64, f64) {
    match ch {
        Ch::Node => p.node_limit_range(),
        Ch::Gpu(_) => p.gpu_limit_range(),
    }
}

pub(super) fn energy_kwh(p: &PowerModel, ch: Ch) -> f64 {
    let j = match ch {
        Ch::Node => p.node_energy_j(),
        Ch::Gpu(i) => p.gpu_energy_j(i),
    };
    (j / 3.6e6 * 1e6).round() / 1e6
}

pub(super) fn control_mode(limit: Option<f64>) -> &'static str {
    if limit.is_some() { "Automatic" } else { "Disabled" }
}

pub(super) fn sensor_uri(ch: Ch) -> String {
    format!("{}/Sensors/{}", ch.uri(), ch.sensor_id())
}

pub(super) fn physical_context(ch: Ch) -> &'static str {
    match ch {
        Ch::Node => "Chassis",
        Ch::Gpu(_) => "GPU",
    }
}

pub(super) fn power(p: &PowerModel) -> Value {
    let uri = format!("{NODE_CHASSIS}/Power");
    let stats = p.stats();
    json!({
        "@odata.id": uri,
        "@odata.type": "#Power.v1_7_1.Power",
        "Id": "Power",
        "Name": "Power",
        "PowerControl@odata.count": 1,
        "PowerControl": [{
            "@odata.id": format!("{uri}#/PowerControl/0"),
            "MemberId": "0",
            "Name": "Chassis Power Control",
            "PowerConsumedWatts": round2(p.node_draw()),
            "PowerCapacityWatts": p.spec().node_max_watts(),
            "PowerLimit": {
                "LimitInWatts": p.node_limit(),
                "LimitException": "LogEventOnly",
                "CorrectionInMs": (CORRECTION_S * 1000.0).round() as u64,
            },
            "PowerMetrics": {
                "IntervalInMin": 1,
                "MinConsumedWatts": round2(stats.min),
                "MaxConsumedWatts": round2(stats.max),
                "AverageConsumedWatts": round2(stats.average),
            },
            "RelatedItem": [link(NODE_CHASSIS)],
            "Status": status_ok(),
        }],
    })
}

pub(super) fn environment_metrics(p: &PowerModel, ch: Ch) -> Value {
    let limit = limit_of(p, ch);
    let (min, max) = range_of(p, ch);
    json!({
        "@odata.id": format!("{}/EnvironmentMetrics", ch.uri()),
        "@odata.type": "#EnvironmentMetrics.v1_3_0.EnvironmentMetrics",
        "Id": "EnvironmentMetrics",
        "Name": format!("{} Environment Metrics", ch.id()),
        "PowerWatts": {
            "DataSourceUri": sensor_uri(ch),
            "Reading": round2(draw_of(p, ch)),
        },
        "EnergykWh": { "Reading": energy_kwh(p, ch) },
        "PowerLimitWatts": {
            "SetPoint": limit,
            "AllowableMin": min,
            "AllowableMax": max,
            "ControlMode": control_mode(limit),
        },
    })
}

pub(super) fn control(p: &PowerModel, ch: Ch) -> Value {
    let limit = limit_of(p, ch);
    let (min, max) = range_of(p, ch);
    json!({
        "@odata.id": format!("{}/Controls/PowerLimit", ch.uri()),
        "@odata.type": "#Control.v1_3_0.Control",
        "Id": "PowerLimit",
        "Name": format!("{} Power Limit", ch.id()),
        "ControlType": "Power",
        "SetPoint": limit,
        "SetPointUnits": "W",
        "AllowableMin": min,
        "AllowableMax": max,
        "ControlMode": control_mode(limit),
        "PhysicalContext": physical_context(ch),
        "Sensor": {
            "Reading": round2(draw_of(p, ch)),
            "DataSourceUri": sensor_uri(ch),
        },
        "RelatedItem": [link(&ch.uri())],
        "Status": status_ok(),
    })
}

pub(super) fn sensor(p: &PowerModel, ch: Ch) -> Value {
    json!({
        "@odata.id": sensor_uri(ch),
        "@odata.type": "#Sensor.v1_7_0.Sensor",
        "Id": ch.sensor_id(),
        "Name": format!("{} Power", ch.id()),
        "ReadingType": "Power",
        "ReadingUnits": "W",
        "Reading": round2(draw_of(p, ch)),
        "PhysicalContext": physical_context(ch),
        "Status": status_ok(),
    })
}
