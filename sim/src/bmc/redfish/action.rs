//! `POST /redfish/v1/Systems/DGX/Actions/ComputerSystem.Reset`: the body
//! `{"ResetType": "<one of ResetType::ALL>"}`, validated before anything
//! changes; each refusal a Base registry `ActionParameter*` message naming
//! the parameter and the action.

use serde_json::Value;

use super::errors::RfError;
use crate::bmc::reset::ResetType;

/// The action's name in messages and in the System's `Actions`.
pub(super) const RESET_ACTION: &str = "ComputerSystem.Reset";
const RESET_TYPE: &str = "ResetType";

/// The reset a request body asks for.
pub(super) fn parse_reset(body: &[u8]) -> Result<ResetType, RfError> {
    let missing = || RfError::ActionParamMissing(RESET_ACTION.into(), RESET_TYPE.into());
    if body.trim_ascii().is_empty() {
        return Err(missing());
    }
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) else {
        return Err(RfError::MalformedJson);
    };
    let mut reset = None;
    for (k, v) in &obj {
        match k.as_str() {
            RESET_TYPE => {
                let Some(text) = v.as_str() else {
                    return Err(RfError::ActionParamTypeError(
                        v.to_string(),
                        RESET_TYPE.into(),
                        RESET_ACTION.into(),
                    ));
                };
                let parsed = text.parse::<ResetType>().map_err(|_| {
                    RfError::ActionParamNotInList(text.to_string(), RESET_TYPE.into(), RESET_ACTION.into())
                })?;
                reset = Some(parsed);
            }
            // Annotations (`@odata.type`, `@Redfish.OperationApplyTime`, ...) are not parameters.
            k if k.starts_with('@') => {}
            _ => return Err(RfError::ActionParamUnknown(RESET_ACTION.into(), k.clone())),
        }
    }
    reset.ok_or_else(missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_bodies_parse() {
        for r in ResetType::ALL {
            let body = format!("{{\"ResetType\": \"{}\"}}", r.name());
            assert_eq!(parse_reset(body.as_bytes()).unwrap(), r);
        }
        assert_eq!(
            parse_reset(br#"{"@odata.type": "x", "ResetType": "ForceOff"}"#).unwrap(),
            ResetType::ForceOff
        );
    }

    #[test]
    fn bad_reset_bodies_say_what_is_wrong() {
        let cases: [(&[u8], &str); 8] = [
            (b"", "ActionParameterMissing"),
            (b"{}", "ActionParameterMissing"),
            (br#"{"@odata.type": "x"}"#, "ActionParameterMissing"),
            (br#"{"ResetType": "Reboot"}"#, "ActionParameterValueNotInList"),
            (br#"{"ResetType": "powercycle"}"#, "ActionParameterValueNotInList"),
            (br#"{"ResetType": 3}"#, "ActionParameterValueTypeError"),
            (br#"{"ResetType": "On", "Delay": 5}"#, "ActionParameterUnknown"),
            (br#"{"ResetType": "On""#, "MalformedJSON"),
        ];
        for (body, key) in cases {
            let e = parse_reset(body).unwrap_err();
            let got = format!("{e:?}");
            let want = match key {
                "ActionParameterMissing" => "ActionParamMissing",
                "ActionParameterValueNotInList" => "ActionParamNotInList",
                "ActionParameterValueTypeError" => "ActionParamTypeError",
                "ActionParameterUnknown" => "ActionParamUnknown",
                other => other.trim_end_matches("JSON"),
            };
            assert!(got.starts_with(want), "{}: {got}", String::from_utf8_lossy(body));
        }
        match parse_reset(br#"{"ResetType": "Reboot"}"#).unwrap_err() {
            RfError::ActionParamNotInList(v, p, a) => {
                assert_eq!(
                    (v.as_str(), p.as_str(), a.as_str()),
                    ("Reboot", "ResetType", RESET_ACTION)
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
