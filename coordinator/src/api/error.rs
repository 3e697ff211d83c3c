//! The admin API's errors and their one mapping to gRPC status codes.
use tonic::{Code, Status};

use crate::store::StoreError;

/// Everything an admin call can fail with. The Display text is what the
/// caller reads, so every variant names the object or field concerned.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A request field is wrong. `field` is its path (`device.spec.node`).
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },
    #[error("{kind} {name:?} already exists")]
    AlreadyExists { kind: &'static str, name: String },
    /// The resource_version precondition failed.
    #[error("{kind} {name} was modified (version {stored}, you sent {sent}); re-read and retry")]
    Conflict {
        kind: &'static str,
        name: String,
        stored: u64,
        sent: u64,
    },
    /// Bfb and Flavor specs never change.
    #[error("{kind} specs are immutable; create a new {title} and point the deployment at it")]
    Immutable { kind: &'static str, title: &'static str },
    /// Dpus are written by the system only.
    #[error("dpu {name:?} is owned by the system; use Reprovision, or change its deployment")]
    SystemOwned { name: String },
    #[error(
        "device {name}: spec.node cannot change ({from:?} -> {to:?}); delete the device and create it on the new node"
    )]
    DeviceMoved { name: String, from: String, to: String },
    #[error("{kind} {name:?} is used by {user_kind} {user:?}; point the {user_kind} elsewhere first")]
    InUse {
        kind: &'static str,
        name: String,
        user_kind: &'static str,
        user: String,
    },
    /// A node may be in at most one Topology.
    #[error(
        "{field}: node {node:?} is already in topology {other:?}; a node is in at most one topology (remove it there first)"
    )]
    NodeInOtherTopology {
        field: String,
        node: String,
        other: String,
    },
    #[error("{kind} {name:?} is being deleted")]
    BeingDeleted { kind: &'static str, name: String },
    #[error("node {node} is not waiting for a reboot")]
    NotWaitingForReboot { node: String },
    #[error(
        "node {node} is rebooted by its agent (reboot_method AGENT); MarkRebooted is only for external reboots \
         (and for a power cycle its agent could not do)"
    )]
    AgentReboots { node: String },
    /// MarkRebooted without power_cycled while a waiting Dpu needs a host power cycle.
    #[error(
        "node {node} must be power-cycled, not only rebooted: the NIC firmware of {dpus} takes effect only \
         after a host power cycle; power-cycle it, then MarkRebooted with power_cycled \
         (hostplanectl node mark-rebooted {node} --power-cycled)"
    )]
    PowerCycleRequired { node: String, dpus: String },
    #[error(
        "watch from version {requested} is ahead of the store (version {current}); list again and watch from the list's version"
    )]
    FromTheFuture { requested: u64, current: u64 },
    #[error("coordinator is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ApiError {
        ApiError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn code(&self) -> Code {
        match self {
            ApiError::Invalid { .. } => Code::InvalidArgument,
            ApiError::NotFound { .. } => Code::NotFound,
            ApiError::AlreadyExists { .. } => Code::AlreadyExists,
            ApiError::Conflict { .. } => Code::Aborted,
            ApiError::Immutable { .. }
            | ApiError::SystemOwned { .. }
            | ApiError::DeviceMoved { .. }
            | ApiError::InUse { .. }
            | ApiError::NodeInOtherTopology { .. }
            | ApiError::BeingDeleted { .. }
            | ApiError::NotWaitingForReboot { .. }
            | ApiError::AgentReboots { .. }
            | ApiError::PowerCycleRequired { .. } => Code::FailedPrecondition,
            ApiError::FromTheFuture { .. } => Code::OutOfRange,
            ApiError::ShuttingDown => Code::Unavailable,
            ApiError::Store(e) => store_code(e),
        }
    }
}

fn store_code(e: &StoreError) -> Code {
    match e {
        StoreError::TooOld { .. } => Code::OutOfRange,
        // A paged List whose snapshot the history no longer holds: list again.
        StoreError::SnapshotGone { .. } => Code::Aborted,
        StoreError::Open { .. }
        | StoreError::SchemaTooNew { .. }
        | StoreError::Sql(_)
        | StoreError::Pg(_)
        | StoreError::Settings(_)
        // A deposed leader's write: the new leader redoes the work.
        | StoreError::Fenced { .. } => Code::Unavailable,
        StoreError::Corrupt { .. } => Code::DataLoss,
        StoreError::Encode { .. } | StoreError::Join(_) => Code::Internal,
    }
}

/// The longest message a caller gets. Validation quotes at most a prefix of
/// what was sent (`hostplane_proto::limits::quote`), so this only ever cuts
/// a message that a future variant let grow: gRPC carries the message in a
/// header, and one over the peer's header limit turns the answer into
/// RESOURCE_EXHAUSTED "Stream removed".
pub const MAX_MESSAGE: usize = 1024;

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        Status::new(e.code(), bounded_message(e.to_string()))
    }
}

/// `text` cut to [`MAX_MESSAGE`] bytes on a character boundary, saying so.
pub fn bounded_message(mut text: String) -> String {
    if text.len() <= MAX_MESSAGE {
        return text;
    }
    let total = text.len();
    let mut end = MAX_MESSAGE - 32;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(&format!("… ({total} bytes in all)"));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_its_code_and_display_text() {
        let json_err = serde_json::from_str::<u8>("x").unwrap_err();
        let cases: Vec<(ApiError, Code, &str)> = vec![
            (
                ApiError::invalid("device.spec.node", "required"),
                Code::InvalidArgument,
                "device.spec.node: required",
            ),
            (
                ApiError::NotFound {
                    kind: "node",
                    name: "n9".into(),
                },
                Code::NotFound,
                "node \"n9\" not found",
            ),
            (
                ApiError::AlreadyExists {
                    kind: "bfb",
                    name: "b".into(),
                },
                Code::AlreadyExists,
                "bfb \"b\" already exists",
            ),
            (
                ApiError::Conflict {
                    kind: "node",
                    name: "n1".into(),
                    stored: 12,
                    sent: 9,
                },
                Code::Aborted,
                "node n1 was modified (version 12, you sent 9); re-read and retry",
            ),
            (
                ApiError::Immutable {
                    kind: "bfb",
                    title: "Bfb",
                },
                Code::FailedPrecondition,
                "bfb specs are immutable; create a new Bfb and point the deployment at it",
            ),
            (
                ApiError::SystemOwned { name: "d".into() },
                Code::FailedPrecondition,
                "owned by the system",
            ),
            (
                ApiError::DeviceMoved {
                    name: "d".into(),
                    from: "a".into(),
                    to: "b".into(),
                },
                Code::FailedPrecondition,
                "spec.node cannot change",
            ),
            (
                ApiError::InUse {
                    kind: "bfb",
                    name: "b".into(),
                    user_kind: "deployment",
                    user: "dep".into(),
                },
                Code::FailedPrecondition,
                "bfb \"b\" is used by deployment \"dep\"",
            ),
            (
                ApiError::NodeInOtherTopology {
                    field: "topology.spec.elements[4].name".into(),
                    node: "n1".into(),
                    other: "hall-a".into(),
                },
                Code::FailedPrecondition,
                "topology.spec.elements[4].name: node \"n1\" is already in topology \"hall-a\"",
            ),
            (
                ApiError::BeingDeleted {
                    kind: "node",
                    name: "n".into(),
                },
                Code::FailedPrecondition,
                "being deleted",
            ),
            (
                ApiError::NotWaitingForReboot { node: "n1".into() },
                Code::FailedPrecondition,
                "node n1 is not waiting for a reboot",
            ),
            (
                ApiError::AgentReboots { node: "n1".into() },
                Code::FailedPrecondition,
                "reboot_method AGENT",
            ),
            (
                ApiError::PowerCycleRequired {
                    node: "n1".into(),
                    dpus: "d1 (flavor f1)".into(),
                },
                Code::FailedPrecondition,
                "node n1 must be power-cycled, not only rebooted: the NIC firmware of d1 (flavor f1) takes effect",
            ),
            (
                ApiError::FromTheFuture {
                    requested: 9,
                    current: 3,
                },
                Code::OutOfRange,
                "ahead of the store",
            ),
            (ApiError::ShuttingDown, Code::Unavailable, "shutting down"),
            (
                ApiError::Store(StoreError::TooOld {
                    requested: 1,
                    oldest: 5,
                }),
                Code::OutOfRange,
                "watch from version 1 is too old",
            ),
            (
                ApiError::Store(StoreError::SnapshotGone { at: 7, floor: 9 }),
                Code::Aborted,
                "list again from the first page",
            ),
            (
                ApiError::Store(StoreError::Sql(rusqlite::Error::InvalidQuery)),
                Code::Unavailable,
                "store query failed",
            ),
            (
                ApiError::Store(StoreError::SchemaTooNew {
                    path: "/x".into(),
                    found: 3,
                    supported: 1,
                }),
                Code::Unavailable,
                "upgrade the coordinator",
            ),
            (
                ApiError::Store(StoreError::Corrupt {
                    kind: "node",
                    name: "n".into(),
                    source: json_err,
                }),
                Code::DataLoss,
                "stored node \"n\" is not readable",
            ),
            (
                ApiError::Store(StoreError::Join("panic".into())),
                Code::Internal,
                "store worker failed",
            ),
        ];
        for (err, code, text) in cases {
            let shown = err.to_string();
            let status = Status::from(err);
            assert_eq!(status.code(), code, "{shown}");
            assert!(
                status.message().contains(text),
                "{:?} does not contain {text:?}",
                status.message()
            );
            assert_eq!(status.message(), shown, "the message is the Display text");
        }
    }

    #[test]
    fn a_long_message_is_cut_on_a_character_boundary() {
        let e = ApiError::invalid("x", "é".repeat(5000));
        let status = Status::from(e);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().len() <= MAX_MESSAGE,
            "{}",
            status.message().len()
        );
        assert!(status.message().starts_with("x: éé"));
        assert!(
            status.message().ends_with("… (10003 bytes in all)"),
            "{}",
            status.message()
        );
    }
}
