//! Responses: JSON with the Redfish headers, and Redfish errors whose
//! messages are those of DMTF's Base message registry 1.18.1, word for word:
//! the MessageId, the message text with its arguments, the severity and the
//! resolution (copied into [`BASE_MESSAGES`]; `sim/tests/bmc_registry.rs`
//! checks them against DMTF's registry file when it is at hand).

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// The registry's prefix of every MessageId: `Base.<major>.<minor>`.
pub(super) const REGISTRY: &str = "Base.1.18";
pub(super) const REALM: &str = "Basic realm=\"hostplane-bmc\"";

/// One message of DMTF's Base registry, as the registry has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistryMessage {
    /// The key in the registry's `Messages` (`NoValidSession`).
    pub key: &'static str,
    /// The text, with `%1`, `%2` for the arguments.
    pub message: &'static str,
    /// `MessageSeverity`: OK, Warning or Critical.
    pub severity: &'static str,
    pub resolution: &'static str,
    pub number_of_args: usize,
}

const fn msg(
    key: &'static str,
    message: &'static str,
    severity: &'static str,
    resolution: &'static str,
    number_of_args: usize,
) -> RegistryMessage {
    RegistryMessage {
        key,
        message,
        severity,
        resolution,
        number_of_args,
    }
}

/// Every Base registry message the simulator sends (Base.1.18.1).
pub const BASE_MESSAGES: &[RegistryMessage] = &[
    msg(
        "NoValidSession",
        "There is no valid session established with the implementation.",
        "Critical",
        "Establish a session before attempting any operations.",
        0,
    ),
    msg(
        "ResourceNotFound",
        "The requested resource of type %1 named '%2' was not found.",
        "Critical",
        "Provide a valid resource identifier and resubmit the request.",
        2,
    ),
    msg(
        "OperationNotAllowed",
        "The HTTP method is not allowed on this resource.",
        "Critical",
        "None.",
        0,
    ),
    msg(
        "MalformedJSON",
        "The request body submitted was malformed JSON and could not be parsed by the receiving service.",
        "Critical",
        "Ensure that the request body is valid JSON and resubmit the request.",
        0,
    ),
    msg(
        "EmptyJSON",
        "The request body submitted contained an empty JSON object and the service is unable to process it.",
        "Warning",
        "Add properties in the JSON object and resubmit the request.",
        0,
    ),
    msg(
        "PropertyValueTypeError",
        "The value '%1' for the property %2 is not a type that the property can accept.",
        "Warning",
        "Correct the value for the property in the request body and resubmit the request if the operation failed.",
        2,
    ),
    msg(
        "PropertyValueNotInList",
        "The value '%1' for the property %2 is not in the list of acceptable values.",
        "Warning",
        "Choose a value from the enumeration list that the implementation can support and resubmit the request if the operation failed.",
        2,
    ),
    msg(
        "PropertyNotWritable",
        "The property %1 is a read-only property and cannot be assigned a value.",
        "Warning",
        "Remove the property from the request body and resubmit the request if the operation failed.",
        1,
    ),
    msg(
        "PropertyUnknown",
        "The property %1 is not in the list of valid properties for the resource.",
        "Warning",
        "Remove the unknown property from the request body and resubmit the request if the operation failed.",
        1,
    ),
    msg(
        "PropertyMissing",
        "The property %1 is a required property and must be included in the request.",
        "Warning",
        "Ensure that the property is in the request body and has a valid value and resubmit the request if the operation failed.",
        1,
    ),
    msg(
        "PropertyValueConflict",
        "The property '%1' could not be written because its value would conflict with the value of the '%2' property.",
        "Warning",
        "None.",
        2,
    ),
    msg(
        "PropertyValueOutOfRange",
        "The value '%1' for the property %2 is not in the supported range of acceptable values.",
        "Warning",
        "Correct the value for the property in the request body and resubmit the request if the operation failed.",
        2,
    ),
    msg(
        "ArraySizeTooLong",
        "The array provided for property %1 exceeds the size limit %2.",
        "Warning",
        "Resubmit the request with an appropriate array size.",
        2,
    ),
    msg(
        "ArraySizeTooShort",
        "The array provided for property %1 is under the minimum size limit %2.",
        "Warning",
        "Resubmit the request with an appropriate array size.",
        2,
    ),
    msg(
        "SessionLimitExceeded",
        "The session establishment failed due to the number of simultaneous sessions exceeding the limit of the implementation.",
        "Critical",
        "Reduce the number of other sessions before trying to establish the session or increase the limit of simultaneous sessions, if supported.",
        0,
    ),
    msg(
        "PayloadTooLarge",
        "The supplied payload exceeds the maximum size supported by the service.",
        "Critical",
        "Check that the supplied payload is correct and supported by this service.",
        0,
    ),
    msg(
        "HeaderInvalid",
        "Header '%1' is invalid.",
        "Critical",
        "Resubmit the request with a valid request header.",
        1,
    ),
    msg(
        "ActionParameterMissing",
        "The action %1 requires the parameter %2 to be present in the request body.",
        "Critical",
        "Supply the action with the required parameter in the request body when the request is resubmitted.",
        2,
    ),
    msg(
        "ActionParameterValueNotInList",
        "The value '%1' for the parameter %2 in the action %3 is not in the list of acceptable values.",
        "Warning",
        "Choose a value from the enumeration list that the implementation can support and resubmit the request if the operation failed.",
        3,
    ),
    msg(
        "ActionParameterValueTypeError",
        "The value '%1' for the parameter %2 in the action %3 is not a type that the parameter can accept.",
        "Warning",
        "Correct the value for the parameter in the request body and resubmit the request if the operation failed.",
        3,
    ),
    msg(
        "ActionParameterUnknown",
        "The action %1 was submitted with the invalid parameter %2.",
        "Warning",
        "Correct the invalid action parameter and resubmit the request if the operation failed.",
        2,
    ),
];

/// The message `key` of [`BASE_MESSAGES`]; panics on a key not in the table
/// (a programming error that every error test would show).
fn registry_message(key: &str) -> &'static RegistryMessage {
    BASE_MESSAGES
        .iter()
        .find(|m| m.key == key)
        .unwrap_or_else(|| panic!("{key} is not in BASE_MESSAGES"))
}

/// `%1`, `%2`, ... replaced by the arguments, as a Redfish client does.
pub fn format_message(template: &str, args: &[String]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let digits = after.chars().take_while(char::is_ascii_digit).count();
        match after[..digits].parse::<usize>() {
            Ok(n) if n >= 1 && n <= args.len() => out.push_str(&args[n - 1]),
            _ => out.push_str(&rest[i..i + 1 + digits]),
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

/// The headers of every Redfish JSON response.
pub(super) fn json_response(status: StatusCode, body: Value) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json; charset=utf-8"),
            (HeaderName::from_static("odata-version"), "4.0"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body.to_string(),
    )
        .into_response()
}

pub(super) fn text_response(status: StatusCode, content_type: &'static str, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

pub(super) fn method_not_allowed_text(allow: &'static str) -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::ALLOW, allow)],
        format!("method not allowed; allowed: {allow}\n"),
    )
        .into_response()
}

/// A refusal, as a message of the DMTF Base registry.
#[derive(Debug)]
pub(super) enum RfError {
    NoValidSession,
    /// (resource type, URI)
    NotFound(&'static str, String),
    MethodNotAllowed,
    MalformedJson,
    EmptyJson,
    TypeError(String, String),
    NotInList(String, String),
    NotWritable(String),
    Unknown(String),
    Missing(String),
    Conflict(String, String),
    /// (value, property)
    OutOfRange(String, String),
    /// (property, limit)
    ArrayTooLong(String, usize),
    /// (property, limit)
    ArrayTooShort(String, usize),
    SessionLimit,
    TooLarge,
    /// A request header the service does not accept (`OData-Version: 4.1`,
    /// the whole header): 412.
    HeaderPrecondition(String),
    /// A body whose `Content-Type` is not JSON (the whole header): 415.
    MediaType(String),
    /// (action, parameter)
    ActionParamMissing(String, String),
    /// (value, parameter, action)
    ActionParamNotInList(String, String, String),
    /// (value, parameter, action)
    ActionParamTypeError(String, String, String),
    /// (action, parameter)
    ActionParamUnknown(String, String),
}

impl RfError {
    fn status(&self) -> StatusCode {
        match self {
            RfError::NoValidSession => StatusCode::UNAUTHORIZED,
            RfError::NotFound(..) => StatusCode::NOT_FOUND,
            RfError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            RfError::SessionLimit => StatusCode::SERVICE_UNAVAILABLE,
            RfError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            RfError::HeaderPrecondition(_) => StatusCode::PRECONDITION_FAILED,
            RfError::MediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            RfError::MalformedJson
            | RfError::EmptyJson
            | RfError::TypeError(..)
            | RfError::NotInList(..)
            | RfError::NotWritable(_)
            | RfError::Unknown(_)
            | RfError::Missing(_)
            | RfError::Conflict(..)
            | RfError::OutOfRange(..)
            | RfError::ArrayTooLong(..)
            | RfError::ArrayTooShort(..)
            | RfError::ActionParamMissing(..)
            | RfError::ActionParamNotInList(..)
            | RfError::ActionParamTypeError(..)
            | RfError::ActionParamUnknown(..) => StatusCode::BAD_REQUEST,
        }
    }

    /// (registry key, arguments)
    fn parts(&self) -> (&'static str, Vec<String>) {
        match self {
            RfError::NoValidSession => ("NoValidSession", vec![]),
            RfError::NotFound(kind, uri) => ("ResourceNotFound", vec![kind.to_string(), uri.clone()]),
            RfError::MethodNotAllowed => ("OperationNotAllowed", vec![]),
            RfError::MalformedJson => ("MalformedJSON", vec![]),
            RfError::EmptyJson => ("EmptyJSON", vec![]),
            RfError::TypeError(v, p) => ("PropertyValueTypeError", vec![v.clone(), p.clone()]),
            RfError::NotInList(v, p) => ("PropertyValueNotInList", vec![v.clone(), p.clone()]),
            RfError::NotWritable(p) => ("PropertyNotWritable", vec![p.clone()]),
            RfError::Unknown(p) => ("PropertyUnknown", vec![p.clone()]),
            RfError::Missing(p) => ("PropertyMissing", vec![p.clone()]),
            RfError::Conflict(a, b) => ("PropertyValueConflict", vec![a.clone(), b.clone()]),
            RfError::OutOfRange(v, p) => ("PropertyValueOutOfRange", vec![v.clone(), p.clone()]),
            RfError::ArrayTooLong(p, n) => ("ArraySizeTooLong", vec![p.clone(), n.to_string()]),
            RfError::ArrayTooShort(p, n) => ("ArraySizeTooShort", vec![p.clone(), n.to_string()]),
            RfError::SessionLimit => ("SessionLimitExceeded", vec![]),
            RfError::TooLarge => ("PayloadTooLarge", vec![]),
            RfError::HeaderPrecondition(h) | RfError::MediaType(h) => ("HeaderInvalid", vec![h.clone()]),
            RfError::ActionParamMissing(a, p) => ("ActionParameterMissing", vec![a.clone(), p.clone()]),
            RfError::ActionParamNotInList(v, p, a) => (
                "ActionParameterValueNotInList",
                vec![v.clone(), p.clone(), a.clone()],
            ),
            RfError::ActionParamTypeError(v, p, a) => (
                "ActionParameterValueTypeError",
                vec![v.clone(), p.clone(), a.clone()],
            ),
            RfError::ActionParamUnknown(a, p) => ("ActionParameterUnknown", vec![a.clone(), p.clone()]),
        }
    }
}

impl IntoResponse for RfError {
    fn into_response(self) -> Response {
        let status = self.status();
        let (key, args) = self.parts();
        let m = registry_message(key);
        debug_assert_eq!(args.len(), m.number_of_args, "{key}");
        let id = format!("{REGISTRY}.{key}");
        let message = format_message(m.message, &args);
        let mut r = json_response(
            status,
            json!({
                "error": {
                    "code": id,
                    "message": message,
                    "@Message.ExtendedInfo": [{
                        "@odata.type": "#Message.v1_2_0.Message",
                        "MessageId": id,
                        "Message": message,
                        "MessageArgs": args,
                        "MessageSeverity": m.severity,
                        "Resolution": m.resolution,
                    }],
                }
            }),
        );
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(REALM));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_fill_the_template() {
        let args = vec!["Chassis".to_string(), "/x".to_string()];
        assert_eq!(
            format_message(
                "The requested resource of type %1 named '%2' was not found.",
                &args
            ),
            "The requested resource of type Chassis named '/x' was not found."
        );
        assert_eq!(format_message("100% sure %3 %", &args), "100% sure %3 %");
        assert_eq!(format_message("%2%1", &args), "/xChassis");
    }

    #[test]
    fn every_message_has_as_many_placeholders_as_arguments() {
        for m in BASE_MESSAGES {
            for n in 1..=m.number_of_args {
                assert!(m.message.contains(&format!("%{n}")), "{}", m.key);
            }
            assert!(
                !m.message.contains(&format!("%{}", m.number_of_args + 1)),
                "{}",
                m.key
            );
            assert!(matches!(m.severity, "OK" | "Warning" | "Critical"), "{}", m.key);
        }
    }
}
