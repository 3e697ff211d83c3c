//! PATCH bodies that set power limits: validated whole before anything
//! changes, each refusal a Base registry message naming the property.

use serde_json::{Map, Value, json};

use super::Ch;
use super::errors::RfError;
use super::resources::limit_of;
use crate::bmc::power::{OutOfRange, PowerModel};

pub(super) fn parse_object(body: &[u8]) -> Result<Map<String, Value>, RfError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) if o.keys().all(|k| k.starts_with("@odata.")) => Err(RfError::EmptyJson),
        Ok(Value::Object(o)) => Ok(o),
        _ => Err(RfError::MalformedJson),
    }
}

/// `Some(number)`, `None` for null; anything else is a type error naming `name`.
pub(super) fn watts_or_null(v: &Value, name: &str) -> Result<Option<f64>, RfError> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => Ok(n.as_f64()),
        other => Err(RfError::TypeError(other.to_string(), name.to_string())),
    }
}

/// The registry's message has no room for the range: it is in the
/// resource's `AllowableMin`/`AllowableMax`, and in the log.
pub(super) fn out_of_range(value: &Value, name: &str, e: OutOfRange) -> RfError {
    tracing::debug!(property = name, %e, "limit refused");
    RfError::OutOfRange(value.to_string(), name.to_string())
}

/// `{"PowerControl": [{"PowerLimit": {"LimitInWatts": <f or null>}}]}`
pub(super) fn patch_power(p: &mut PowerModel, body: &[u8]) -> Result<(), RfError> {
    let obj = parse_object(body)?;
    let mut limit = None;
    for (k, v) in &obj {
        match k.as_str() {
            "PowerControl" => {
                let Value::Array(items) = v else {
                    return Err(RfError::TypeError(v.to_string(), k.clone()));
                };
                // PowerControl has exactly one member.
                if items.len() > 1 {
                    return Err(RfError::ArrayTooLong(k.clone(), 1));
                }
                if items.is_empty() {
                    return Err(RfError::ArrayTooShort(k.clone(), 1));
                }
                let Value::Object(member) = &items[0] else {
                    return Err(RfError::TypeError(items[0].to_string(), "PowerControl/0".into()));
                };
                for (mk, mv) in member {
                    match mk.as_str() {
                        "PowerLimit" => {
                            let Value::Object(pl) = mv else {
                                return Err(RfError::TypeError(mv.to_string(), "PowerLimit".into()));
                            };
                            for (lk, lv) in pl {
                                match lk.as_str() {
                                    "LimitInWatts" => limit = Some((watts_or_null(lv, lk)?, lv.clone())),
                                    "LimitException" | "CorrectionInMs" => {
                                        return Err(RfError::NotWritable(lk.clone()));
                                    }
                                    _ => return Err(RfError::Unknown(lk.clone())),
                                }
                            }
                        }
                        "@odata.id" | "MemberId" => {}
                        k if known_power_control_property(k) => {
                            return Err(RfError::NotWritable(mk.clone()));
                        }
                        _ => return Err(RfError::Unknown(mk.clone())),
                    }
                }
            }
            k if k.starts_with("@odata.") => {}
            "Id" | "Name" | "Voltages" | "PowerSupplies" | "Redundancy" => {
                return Err(RfError::NotWritable(k.to_string()));
            }
            _ => return Err(RfError::Unknown(k.clone())),
        }
    }
    let Some((watts, raw)) = limit else {
        return Err(RfError::Missing("PowerControl/0/PowerLimit/LimitInWatts".into()));
    };
    p.set_node_limit(watts)
        .map_err(|e| out_of_range(&raw, "LimitInWatts", e))
}

pub(super) fn known_power_control_property(k: &str) -> bool {
    matches!(
        k,
        "Name"
            | "PowerConsumedWatts"
            | "PowerCapacityWatts"
            | "PowerRequestedWatts"
            | "PowerAvailableWatts"
            | "PowerAllocatedWatts"
            | "PowerMetrics"
            | "RelatedItem"
            | "Status"
    )
}

/// `{"SetPoint": <f>, "ControlMode": "Automatic"}` sets; `{"ControlMode": "Disabled"}` clears.
pub(super) fn patch_control(p: &mut PowerModel, ch: Ch, body: &[u8]) -> Result<(), RfError> {
    let obj = parse_object(body)?;
    let mut set_point: Option<(Option<f64>, Value)> = None;
    let mut mode: Option<bool> = None; // Some(true) = Automatic, Some(false) = Disabled
    for (k, v) in &obj {
        match k.as_str() {
            "SetPoint" => set_point = Some((watts_or_null(v, k)?, v.clone())),
            "ControlMode" => match v.as_str() {
                Some("Automatic") => mode = Some(true),
                Some("Disabled") => mode = Some(false),
                Some(_) => return Err(RfError::NotInList(v.to_string(), k.clone())),
                None => return Err(RfError::TypeError(v.to_string(), k.clone())),
            },
            k if k.starts_with("@odata.") => {}
            "Id" | "Name" | "ControlType" | "SetPointUnits" | "AllowableMin" | "AllowableMax"
            | "PhysicalContext" | "Sensor" | "Status" | "RelatedItem" => {
                return Err(RfError::NotWritable(k.to_string()));
            }
            _ => return Err(RfError::Unknown(k.clone())),
        }
    }
    let current = limit_of(p, ch);
    let new = match (set_point, mode) {
        (Some((Some(_), _)), Some(false)) => {
            return Err(RfError::Conflict("SetPoint".into(), "ControlMode".into()));
        }
        (Some((None, _)), Some(true)) => {
            return Err(RfError::Conflict("ControlMode".into(), "SetPoint".into()));
        }
        (Some((Some(w), raw)), _) => Some((w, raw)),
        (Some((None, _)), None) | (_, Some(false)) => None,
        (None, Some(true)) => match current {
            Some(w) => Some((w, json!(w))),
            None => return Err(RfError::Missing("SetPoint".into())),
        },
        (None, None) => return Err(RfError::EmptyJson),
    };
    let raw = new.as_ref().map(|(_, r)| r.clone()).unwrap_or(Value::Null);
    let watts = new.map(|(w, _)| w);
    let result = match ch {
        Ch::Node => p.set_node_limit(watts),
        Ch::Gpu(i) => p.set_gpu_limit(i, watts),
    };
    result.map_err(|e| out_of_range(&raw, "SetPoint", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h100() -> PowerModel {
        PowerModel::new(*crate::bmc::Model::DgxH100.spec(), crate::bmc::Workload::Idle)
    }

    #[test]
    fn control_patches_set_and_clear() {
        let mut p = h100();
        patch_control(
            &mut p,
            Ch::Node,
            br#"{"SetPoint": 8000, "ControlMode": "Automatic"}"#,
        )
        .unwrap();
        assert_eq!(p.node_limit(), Some(8000.0));
        patch_control(&mut p, Ch::Node, br#"{"SetPoint": 7000}"#).unwrap();
        assert_eq!(p.node_limit(), Some(7000.0));
        patch_control(&mut p, Ch::Node, br#"{"ControlMode": "Automatic"}"#).unwrap();
        assert_eq!(p.node_limit(), Some(7000.0));
        patch_control(&mut p, Ch::Node, br#"{"ControlMode": "Disabled"}"#).unwrap();
        assert_eq!(p.node_limit(), None);
        patch_control(
            &mut p,
            Ch::Gpu(3),
            br#"{"SetPoint": 300, "ControlMode": "Automatic"}"#,
        )
        .unwrap();
        assert_eq!(p.gpu_limit(3), Some(300.0));
        patch_control(&mut p, Ch::Gpu(3), br#"{"SetPoint": null}"#).unwrap();
        assert_eq!(p.gpu_limit(3), None);
    }

    #[test]
    fn bad_control_patches_change_nothing() {
        let mut p = h100();
        p.set_node_limit(Some(9000.0)).unwrap();
        for body in [
            &br#"{"SetPoint": 100}"#[..],
            br#"{"SetPoint": 99999, "ControlMode": "Automatic"}"#,
            br#"{"SetPoint": "9000"}"#,
            br#"{"SetPoint": 8000, "ControlMode": "Disabled"}"#,
            br#"{"SetPoint": null, "ControlMode": "Automatic"}"#,
            br#"{"ControlMode": "Override"}"#,
            br#"{"AllowableMax": 20000}"#,
            br#"{"Colour": "red"}"#,
            br#"{}"#,
            br#"[1]"#,
            br#"{"SetPoint": 8000"#,
        ] {
            assert!(
                patch_control(&mut p, Ch::Node, body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(p.node_limit(), Some(9000.0));
        }
        let mut fresh = h100();
        assert!(patch_control(&mut fresh, Ch::Node, br#"{"ControlMode": "Automatic"}"#).is_err());
        assert_eq!(fresh.node_limit(), None);
    }

    #[test]
    fn power_patches_set_clear_and_refuse() {
        let mut p = h100();
        patch_power(
            &mut p,
            br#"{"PowerControl": [{"PowerLimit": {"LimitInWatts": 8000}}]}"#,
        )
        .unwrap();
        assert_eq!(p.node_limit(), Some(8000.0));
        for body in [
            &br#"{"PowerControl": [{"PowerLimit": {"LimitInWatts": 100}}]}"#[..],
            br#"{"PowerControl": [{"PowerLimit": {"LimitInWatts": true}}]}"#,
            br#"{"PowerControl": [{"PowerLimit": {"LimitException": "HardPowerOff"}}]}"#,
            br#"{"PowerControl": [{}, {}]}"#,
            br#"{"PowerControl": [{"PowerConsumedWatts": 1}]}"#,
            br#"{"PowerControl": {}}"#,
            br#"{"Voltages": []}"#,
            br#"{"PowerControl": [{}]}"#,
        ] {
            assert!(
                patch_power(&mut p, body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(p.node_limit(), Some(8000.0));
        }
        patch_power(
            &mut p,
            br#"{"PowerControl": [{"PowerLimit": {"LimitInWatts": null}}]}"#,
        )
        .unwrap();
        assert_eq!(p.node_limit(), None);
    }
}
