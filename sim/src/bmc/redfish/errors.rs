//! Responses: JSON with the OData headers, and Redfish errors (messages of
//! the DMTF Base registry 1.18).

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::MAX_BODY;
use super::auth::MAX_SESSIONS;

pub(super) const REGISTRY: &str = "Base.1.18";
pub(super) const REALM: &str = "Basic realm=\"hostplane-bmc\"";

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

pub(super) fn ok(body: Value) -> Response {
    json_response(StatusCode::OK, body)
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

/// A message of the DMTF Base registry.
#[derive(Debug)]
pub(super) enum RfError {
    General(String),
    NoValidSession(String),
    NotFound(String),
    MethodNotAllowed(String),
    MalformedJson,
    EmptyJson,
    TypeError(String, String),
    NotInList(String, String),
    NotWritable(String),
    Unknown(String),
    Missing(String),
    Conflict(String, String),
    OutOfRange {
        value: String,
        property: String,
        min: f64,
        max: f64,
    },
    SessionLimit,
    TooLarge,
}

impl RfError {
    fn status(&self) -> StatusCode {
        match self {
            RfError::NoValidSession(_) => StatusCode::UNAUTHORIZED,
            RfError::NotFound(_) => StatusCode::NOT_FOUND,
            RfError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            RfError::SessionLimit => StatusCode::SERVICE_UNAVAILABLE,
            RfError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// (message id, message, args, resolution)
    fn parts(&self) -> (&'static str, String, Vec<String>, &'static str) {
        const FIX_BODY: &str = "Correct the value for the property in the request body and resubmit the request if the operation failed.";
        match self {
            RfError::General(m) => ("GeneralError", m.clone(), vec![], "None."),
            RfError::TooLarge => (
                "GeneralError",
                format!("The request body is over {MAX_BODY} bytes or could not be read."),
                vec![],
                "Send a smaller request body.",
            ),
            RfError::NoValidSession(why) => (
                "NoValidSession",
                format!("There is no valid session established with the implementation: {why}."),
                vec![],
                "Establish a session before attempting any operations.",
            ),
            RfError::NotFound(uri) => (
                "ResourceNotFound",
                format!("The requested resource of type Resource named '{uri}' was not found."),
                vec!["Resource".into(), uri.clone()],
                "Provide a valid resource identifier and resubmit the request.",
            ),
            RfError::MethodNotAllowed(m) => (
                "OperationNotAllowed",
                format!("The HTTP method {m} is not allowed on this resource."),
                vec![],
                "None.",
            ),
            RfError::MalformedJson => (
                "MalformedJSON",
                "The request body submitted was malformed JSON and could not be parsed by the receiving service."
                    .into(),
                vec![],
                "Ensure that the request body is valid JSON and resubmit the request.",
            ),
            RfError::EmptyJson => (
                "EmptyJSON",
                "The request body submitted contained an empty JSON object and the service is unable to process it."
                    .into(),
                vec![],
                "Add properties in the JSON object and resubmit the request.",
            ),
            RfError::TypeError(v, p) => (
                "PropertyValueTypeError",
                format!("The value '{v}' for the property {p} is not a type that the property can accept."),
                vec![v.clone(), p.clone()],
                FIX_BODY,
            ),
            RfError::NotInList(v, p) => (
                "PropertyValueNotInList",
                format!("The value '{v}' for the property {p} is not in the list of acceptable values."),
                vec![v.clone(), p.clone()],
                "Choose a value from the enumeration list that the implementation can support and resubmit the request if the operation failed.",
            ),
            RfError::NotWritable(p) => (
                "PropertyNotWritable",
                format!("The property {p} is a read only property and cannot be assigned a value."),
                vec![p.clone()],
                "Remove the property from the request body and resubmit the request if the operation failed.",
            ),
            RfError::Unknown(p) => (
                "PropertyUnknown",
                format!("The property {p} is not in the list of valid properties for the resource."),
                vec![p.clone()],
                "Remove the unknown property from the request body and resubmit the request if the operation failed.",
            ),
            RfError::Missing(p) => (
                "PropertyMissing",
                format!("The property {p} is a required property and must be included in the request."),
                vec![p.clone()],
                "Ensure that the property is in the request body and has a valid value and resubmit the request if the operation failed.",
            ),
            RfError::Conflict(a, b) => (
                "PropertyValueConflict",
                format!(
                    "The property '{a}' could not be written because its value would conflict with the value of the '{b}' property."
                ),
                vec![a.clone(), b.clone()],
                "No resolution is required.",
            ),
            RfError::OutOfRange {
                value,
                property,
                min,
                max,
            } => (
                "PropertyValueOutOfRange",
                format!(
                    "The value '{value}' for the property {property} is not in the supported range of acceptable values ({min} to {max})."
                ),
                vec![value.clone(), property.clone()],
                FIX_BODY,
            ),
            RfError::SessionLimit => (
                "SessionLimitExceeded",
                format!(
                    "The session establishment failed due to the number of simultaneous sessions exceeding the limit of the implementation ({MAX_SESSIONS})."
                ),
                vec![],
                "Reduce the number of other sessions before trying to establish the session or increase the limit of simultaneous sessions, if supported.",
            ),
        }
    }
}

impl IntoResponse for RfError {
    fn into_response(self) -> Response {
        let status = self.status();
        let (id, message, args, resolution) = self.parts();
        let id = format!("{REGISTRY}.{id}");
        let severity = if status.is_server_error() {
            "Critical"
        } else {
            "Warning"
        };
        let mut r = json_response(
            status,
            json!({
                "error": {
                    "code": id,
                    "message": message,
                    "@Message.ExtendedInfo": [{
                        "@odata.type": "#Message.v1_1_1.Message",
                        "MessageId": id,
                        "Message": message,
                        "MessageArgs": args,
                        "MessageSeverity": severity,
                        "Resolution": resolution,
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
