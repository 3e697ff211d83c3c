//! Reading Redfish resources: links, collections, and the power properties
//! of `EnvironmentMetrics`, `Power` and `Control` (DSP0266, schema 2023.x).
//! Pure functions over `serde_json::Value`; errors ([`ParseError`]) say what
//! is missing or wrong in words that follow the resource's URL ("has no
//! PowerWatts.Reading").
use serde_json::Value;

/// What a resource lacks, or has wrong, for the value asked of it. Its
/// `Display` is the end of a sentence that starts with the resource's URL
/// (`<url> has no PowerWatts.Reading`). `property` is the property's path
/// as the message names it: JSON pointer segments joined by dots, array
/// items as `[n]` (`PowerControl[0].PowerLimit`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseError {
    /// The property is absent.
    #[error("has no {property}")]
    Missing { property: String },
    /// The property is `null` where a reading must have a value.
    #[error("reports no value ({property} is null)")]
    Null { property: String },
    /// The property is not a JSON number; `value` is it as JSON.
    #[error("{property} is {value}, not a number")]
    NotANumber { property: String, value: String },
    /// A number that is not finite as an `f64`.
    #[error("{property} is {value}, not a finite number")]
    NotFinite { property: String, value: String },
    /// The property is not an array; `value` is it as JSON.
    #[error("{property} is {value}, not an array")]
    NotAnArray { property: String, value: String },
    /// The array is empty where its first item is needed.
    #[error("has an empty {property} array")]
    Empty { property: String },
    /// A `Control` whose `ControlType` is not `Power`.
    #[error("is a {control_type:?} control, not a Power control")]
    NotAPowerControl { control_type: String },
}

impl ParseError {
    /// The same error for a property read inside `parent` (`PowerLimitWatts`,
    /// `PowerControl[0]`): its property becomes `<parent>.<property>`.
    fn within(self, parent: &str) -> ParseError {
        let join = |p: String| format!("{parent}.{p}");
        match self {
            ParseError::Missing { property } => ParseError::Missing {
                property: join(property),
            },
            ParseError::Null { property } => ParseError::Null {
                property: join(property),
            },
            ParseError::NotANumber { property, value } => ParseError::NotANumber {
                property: join(property),
                value,
            },
            ParseError::NotFinite { property, value } => ParseError::NotFinite {
                property: join(property),
                value,
            },
            ParseError::NotAnArray { property, value } => ParseError::NotAnArray {
                property: join(property),
                value,
            },
            ParseError::Empty { property } => ParseError::Empty {
                property: join(property),
            },
            e @ ParseError::NotAPowerControl { .. } => e,
        }
    }
}

/// The name a message gives the property at JSON pointer `ptr`.
fn property(ptr: &str) -> String {
    ptr.trim_start_matches('/').replace('/', ".")
}

/// A resource's own `@odata.id`.
pub fn odata_id(v: &Value) -> Option<&str> {
    v.get("@odata.id").and_then(Value::as_str)
}

/// The link at JSON pointer `ptr` (`/Power`, `/Links/Sessions`): its `@odata.id`.
pub fn link<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr)?.get("@odata.id").and_then(Value::as_str)
}

/// The links of the array at `ptr` (`/Members`, `/Links/Contains`).
pub fn links(v: &Value, ptr: &str) -> Vec<String> {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|m| m.get("@odata.id").and_then(Value::as_str))
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// A string property at `ptr`.
pub fn text<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

/// The number at `ptr`: `Ok(None)` when it is `null` (Redfish's "no
/// value"), an error naming the property when it is absent or not a number.
pub fn number(v: &Value, ptr: &str) -> Result<Option<f64>, ParseError> {
    match v.pointer(ptr) {
        None => Err(ParseError::Missing {
            property: property(ptr),
        }),
        Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            n.as_f64()
                .filter(|f| f.is_finite())
                .map(Some)
                .ok_or_else(|| ParseError::NotFinite {
                    property: property(ptr),
                    value: n.to_string(),
                })
        }
        Some(other) => Err(ParseError::NotANumber {
            property: property(ptr),
            value: other.to_string(),
        }),
    }
}

/// Like [`number`], but `null` is an error too (a reading must have a value).
pub fn reading(v: &Value, ptr: &str) -> Result<f64, ParseError> {
    number(v, ptr)?.ok_or_else(|| ParseError::Null {
        property: property(ptr),
    })
}

/// A chassis's power now, in watts, and its cumulative energy in kWh when it
/// says, from its `EnvironmentMetrics`.
pub fn environment_power(v: &Value) -> Result<(f64, Option<f64>), ParseError> {
    let watts = reading(v, "/PowerWatts/Reading")?;
    let kwh = match v.pointer("/EnergykWh") {
        None => None,
        Some(_) => number(v, "/EnergykWh/Reading")?,
    };
    Ok((watts, kwh))
}

/// The node's power now from the (deprecated, still common) `Power`
/// resource: `PowerControl[0].PowerConsumedWatts`.
pub fn power_consumed(v: &Value) -> Result<f64, ParseError> {
    first_power_control(v)?;
    reading(v, "/PowerControl/0/PowerConsumedWatts")
}

fn first_power_control(v: &Value) -> Result<&Value, ParseError> {
    let property = || "PowerControl".to_string();
    match v.get("PowerControl") {
        None => Err(ParseError::Missing { property: property() }),
        Some(Value::Array(a)) => a
            .first()
            .ok_or_else(|| ParseError::Empty { property: property() }),
        Some(other) => Err(ParseError::NotAnArray {
            property: property(),
            value: other.to_string(),
        }),
    }
}

/// A power limit as a BMC shows it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    /// The limit enforced now; None: no limit.
    pub watts: Option<f64>,
    /// The range a limit may be set in, when the BMC says.
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// The limit of a `Control` (`ControlType` "Power"): `SetPoint` while
/// `ControlMode` is not "Disabled".
pub fn control_limit(v: &Value) -> Result<Limit, ParseError> {
    if let Some(t) = text(v, "/ControlType")
        && t != "Power"
    {
        return Err(ParseError::NotAPowerControl {
            control_type: t.to_string(),
        });
    }
    let disabled = text(v, "/ControlMode") == Some("Disabled");
    let set_point = match v.get("SetPoint") {
        None if disabled => None,
        _ => number(v, "/SetPoint")?,
    };
    Ok(Limit {
        watts: if disabled { None } else { set_point },
        min: optional(v, "/AllowableMin")?,
        max: optional(v, "/AllowableMax")?,
    })
}

/// The limit shown in `EnvironmentMetrics.PowerLimitWatts` (a read-only
/// view here: the client sets limits through `Controls` or `Power`).
pub fn environment_limit(v: &Value) -> Result<Limit, ParseError> {
    const WITHIN: &str = "PowerLimitWatts";
    let l = v.get(WITHIN).ok_or_else(|| ParseError::Missing {
        property: WITHIN.into(),
    })?;
    let disabled = text(l, "/ControlMode") == Some("Disabled");
    let set_point = optional(l, "/SetPoint").map_err(|e| e.within(WITHIN))?;
    Ok(Limit {
        watts: if disabled { None } else { set_point },
        min: optional(l, "/AllowableMin").map_err(|e| e.within(WITHIN))?,
        max: optional(l, "/AllowableMax").map_err(|e| e.within(WITHIN))?,
    })
}

/// The limit of `Power.PowerControl[0].PowerLimit.LimitInWatts` (null: no
/// limit); its maximum is `PowerCapacityWatts`. `Power` has no minimum.
pub fn power_limit(v: &Value) -> Result<Limit, ParseError> {
    const WITHIN: &str = "PowerControl[0]";
    let pc = first_power_control(v)?;
    let watts = match pc.get("PowerLimit") {
        None => {
            return Err(ParseError::Missing {
                property: format!("{WITHIN}.PowerLimit"),
            });
        }
        Some(Value::Null) => None,
        Some(_) => number(pc, "/PowerLimit/LimitInWatts").map_err(|e| e.within(WITHIN))?,
    };
    Ok(Limit {
        watts,
        min: None,
        max: optional(pc, "/PowerCapacityWatts").map_err(|e| e.within(WITHIN))?,
    })
}

/// A number that may be absent or null.
fn optional(v: &Value, ptr: &str) -> Result<Option<f64>, ParseError> {
    match v.pointer(ptr) {
        None => Ok(None),
        Some(_) => number(v, ptr),
    }
}

/// The words of a Redfish error body (`{"error": {"code", "message",
/// "@Message.ExtendedInfo": [{"Message"}]}}`): `code: message (detail)`.
pub fn error_message(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let e = v.get("error")?;
    let code = text(e, "/code");
    let message = text(e, "/message");
    let ext: Vec<&str> = e
        .get("@Message.ExtendedInfo")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|i| text(i, "/Message")).collect())
        .unwrap_or_default();
    let mut out = match (code, message) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(s), None) | (None, Some(s)) => s.to_string(),
        (None, None) => return None,
    };
    let ext: Vec<&str> = ext.into_iter().filter(|m| Some(*m) != message).collect();
    if !ext.is_empty() {
        out += &format!(" ({})", ext.join("; "));
    }
    Some(out)
}

/// The last segment of a resource path: `/redfish/v1/Chassis/DGX` -> `DGX`.
pub fn last_segment(path: &str) -> &str {
    path.trim_end_matches('/').rsplit('/').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The sentence of an error.
    fn said<T: std::fmt::Debug>(r: Result<T, ParseError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn links_and_collections() {
        let root = json!({
            "@odata.id": "/redfish/v1",
            "Chassis": {"@odata.id": "/redfish/v1/Chassis"},
            "Links": {"Sessions": {"@odata.id": "/redfish/v1/SessionService/Sessions"}},
        });
        assert_eq!(link(&root, "/Chassis"), Some("/redfish/v1/Chassis"));
        assert_eq!(
            link(&root, "/Links/Sessions"),
            Some("/redfish/v1/SessionService/Sessions")
        );
        assert_eq!(link(&root, "/Systems"), None);
        let coll = json!({"Members": [{"@odata.id": "/a"}, {"x": 1}, {"@odata.id": "/b"}], "Members@odata.count": 2});
        assert_eq!(links(&coll, "/Members"), vec!["/a", "/b"]);
        assert!(links(&coll, "/Links/Contains").is_empty());
        assert_eq!(last_segment("/redfish/v1/Chassis/DGX/"), "DGX");
    }

    #[test]
    fn environment_metrics_with_and_without_energy() {
        let em = json!({
            "PowerWatts": {"DataSourceUri": "/x", "Reading": 6123.5},
            "EnergykWh": {"Reading": 12.5},
        });
        assert_eq!(environment_power(&em), Ok((6123.5, Some(12.5))));
        let no_energy = json!({"PowerWatts": {"Reading": 700}});
        assert_eq!(environment_power(&no_energy), Ok((700.0, None)));
        let null = json!({"PowerWatts": {"Reading": null}});
        assert_eq!(
            said(environment_power(&null)),
            "reports no value (PowerWatts.Reading is null)"
        );
        let missing = json!({"TemperatureCelsius": {"Reading": 40}});
        assert_eq!(said(environment_power(&missing)), "has no PowerWatts.Reading");
        let text = json!({"PowerWatts": {"Reading": "700 W"}});
        assert_eq!(
            said(environment_power(&text)),
            "PowerWatts.Reading is \"700 W\", not a number"
        );
    }

    #[test]
    fn power_resource_reading_and_limit() {
        let p = json!({"PowerControl": [{
            "@odata.id": "/redfish/v1/Chassis/DGX/Power#/PowerControl/0",
            "MemberId": "0",
            "PowerConsumedWatts": 5400.0,
            "PowerCapacityWatts": 10200.0,
            "PowerLimit": {"LimitInWatts": 8000.0, "LimitException": "LogEventOnly", "CorrectionInMs": 1000},
        }]});
        assert_eq!(power_consumed(&p), Ok(5400.0));
        assert_eq!(
            power_limit(&p),
            Ok(Limit {
                watts: Some(8000.0),
                min: None,
                max: Some(10200.0)
            })
        );
        let unlimited =
            json!({"PowerControl": [{"PowerConsumedWatts": 1.0, "PowerLimit": {"LimitInWatts": null}}]});
        assert_eq!(power_limit(&unlimited).unwrap().watts, None);
        assert_eq!(
            said(power_consumed(&json!({"PowerControl": []}))),
            "has an empty PowerControl array"
        );
        assert_eq!(said(power_consumed(&json!({}))), "has no PowerControl");
        assert_eq!(
            said(power_limit(
                &json!({"PowerControl": [{"PowerConsumedWatts": 1.0}]})
            )),
            "has no PowerControl[0].PowerLimit"
        );
    }

    #[test]
    fn errors_say_which_property_and_what_is_wrong_with_it() {
        assert_eq!(
            reading(&json!({"PowerWatts": {"Reading": null}}), "/PowerWatts/Reading"),
            Err(ParseError::Null {
                property: "PowerWatts.Reading".into()
            })
        );
        assert_eq!(
            power_consumed(&json!({})),
            Err(ParseError::Missing {
                property: "PowerControl".into()
            })
        );
        let object = json!({"PowerControl": {"PowerConsumedWatts": 1.0}});
        assert!(
            matches!(power_consumed(&object), Err(ParseError::NotAnArray { ref property, .. }) if property == "PowerControl"),
            "{:?}",
            power_consumed(&object)
        );
        assert_eq!(
            said(power_consumed(&object)),
            "PowerControl is {\"PowerConsumedWatts\":1.0}, not an array"
        );
        // A property inside another is named from the resource down.
        let no_watts = json!({"PowerControl": [{"PowerLimit": {}}]});
        assert_eq!(
            power_limit(&no_watts),
            Err(ParseError::Missing {
                property: "PowerControl[0].PowerLimit.LimitInWatts".into()
            })
        );
        assert_eq!(
            said(power_limit(&no_watts)),
            "has no PowerControl[0].PowerLimit.LimitInWatts"
        );
        let bad_max = json!({"PowerControl": [{"PowerLimit": null, "PowerCapacityWatts": "big"}]});
        assert_eq!(
            power_limit(&bad_max),
            Err(ParseError::NotANumber {
                property: "PowerControl[0].PowerCapacityWatts".into(),
                value: "\"big\"".into()
            })
        );
        let null_min = json!({"PowerLimitWatts": {"AllowableMin": null}});
        assert_eq!(environment_limit(&null_min).unwrap().min, None);
        assert_eq!(
            control_limit(&json!({"ControlType": "Power", "SetPoint": []})),
            Err(ParseError::NotANumber {
                property: "SetPoint".into(),
                value: "[]".into()
            })
        );
    }

    #[test]
    fn control_limit_enforced_and_disabled() {
        let on = json!({
            "ControlType": "Power", "SetPoint": 6000.0, "SetPointUnits": "W",
            "AllowableMin": 4000.0, "AllowableMax": 10200.0, "ControlMode": "Automatic",
        });
        assert_eq!(
            control_limit(&on),
            Ok(Limit {
                watts: Some(6000.0),
                min: Some(4000.0),
                max: Some(10200.0)
            })
        );
        let off = json!({"ControlType": "Power", "SetPoint": 6000.0, "AllowableMin": 4000.0,
            "AllowableMax": 10200.0, "ControlMode": "Disabled"});
        assert_eq!(
            control_limit(&off).unwrap().watts,
            None,
            "Disabled: no limit, whatever SetPoint says"
        );
        let null = json!({"ControlType": "Power", "SetPoint": null, "ControlMode": "Automatic"});
        assert_eq!(control_limit(&null).unwrap().watts, None);
        let temp = json!({"ControlType": "Temperature", "SetPoint": 60});
        assert_eq!(
            said(control_limit(&temp)),
            "is a \"Temperature\" control, not a Power control"
        );
    }

    #[test]
    fn environment_limit_view() {
        let em = json!({"PowerWatts": {"Reading": 1.0}, "PowerLimitWatts": {
            "SetPoint": 700.0, "AllowableMin": 200.0, "AllowableMax": 700.0, "ControlMode": "Automatic"}});
        assert_eq!(
            environment_limit(&em),
            Ok(Limit {
                watts: Some(700.0),
                min: Some(200.0),
                max: Some(700.0)
            })
        );
        let bad = json!({"PowerLimitWatts": {"AllowableMax": "lots"}});
        assert_eq!(
            said(environment_limit(&bad)),
            "PowerLimitWatts.AllowableMax is \"lots\", not a number"
        );
    }

    #[test]
    fn redfish_error_bodies() {
        let body = json!({"error": {"code": "Base.1.18.PropertyValueOutOfRange",
            "message": "The value 10 for the property SetPoint is not in the supported range.",
            "@Message.ExtendedInfo": [{"MessageId": "Base.1.18.PropertyValueOutOfRange",
                "Message": "The value 10 for the property SetPoint is not in the supported range."}]}});
        assert_eq!(
            error_message(body.to_string().as_bytes()).as_deref(),
            Some(
                "Base.1.18.PropertyValueOutOfRange: The value 10 for the property SetPoint is not in the supported range."
            )
        );
        let ext = json!({"error": {"code": "Base.1.18.GeneralError", "message": "See ExtendedInfo",
            "@Message.ExtendedInfo": [{"Message": "SetPoint must be 4000-10200"}]}});
        assert_eq!(
            error_message(ext.to_string().as_bytes()).as_deref(),
            Some("Base.1.18.GeneralError: See ExtendedInfo (SetPoint must be 4000-10200)")
        );
        assert_eq!(error_message(b"<html>bad gateway</html>"), None);
    }
}
