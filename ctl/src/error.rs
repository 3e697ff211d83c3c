//! Errors of `hostplanectl` and the exit codes scripts can rely on.
//!
//! Every failure ends as `error: <Display>` on stderr and one of the codes in
//! [`exit`]; gRPC statuses map through [`exit_code_for`].
use std::time::Duration;

use tonic::Code;

/// Exit codes. Documented in `docs/cli.md`; changing one breaks scripts.
pub mod exit {
    pub const OK: u8 = 0;
    /// Any failure without a more specific code (also: a Dpu reached `Error` while waiting).
    pub const FAILURE: u8 = 1;
    /// Bad command line (clap's own code for usage errors).
    pub const USAGE: u8 = 2;
    /// `--check` answered "no" (node not waiting for reboot, dpu not ready).
    pub const CHECK_FAILED: u8 = 3;
    pub const NOT_FOUND: u8 = 4;
    pub const ALREADY_EXISTS: u8 = 5;
    /// The server (or the local input file) rejected a field.
    pub const INVALID_ARGUMENT: u8 = 6;
    pub const FAILED_PRECONDITION: u8 = 7;
    /// resource_version conflict: re-read and retry.
    pub const CONFLICT: u8 = 8;
    /// The server cannot be reached (sysexits EX_UNAVAILABLE).
    pub const UNAVAILABLE: u8 = 69;
    /// Not authenticated or not allowed (sysexits EX_NOPERM).
    pub const DENIED: u8 = 77;
    /// `--timeout` ran out (as timeout(1) does).
    pub const TIMEOUT: u8 = 124;
}

/// The exit code for a gRPC status code.
pub fn exit_code_for(code: Code) -> u8 {
    match code {
        Code::Ok => exit::OK,
        Code::NotFound => exit::NOT_FOUND,
        Code::AlreadyExists => exit::ALREADY_EXISTS,
        Code::InvalidArgument => exit::INVALID_ARGUMENT,
        Code::FailedPrecondition => exit::FAILED_PRECONDITION,
        Code::Aborted => exit::CONFLICT,
        Code::Unavailable => exit::UNAVAILABLE,
        Code::PermissionDenied | Code::Unauthenticated => exit::DENIED,
        Code::DeadlineExceeded => exit::TIMEOUT,
        Code::Cancelled
        | Code::Unknown
        | Code::ResourceExhausted
        | Code::OutOfRange
        | Code::Unimplemented
        | Code::Internal
        | Code::DataLoss => exit::FAILURE,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid --server {server:?}: {reason}")]
    BadServer { server: String, reason: String },
    #[error("cannot reach {server}: {reason}")]
    Connect { server: String, reason: String },
    #[error("invalid --token: it must be printable ASCII")]
    BadToken,
    #[error("TLS: {reason}")]
    Tls { reason: String },
    #[error("certs: {0}")]
    Certs(#[from] crate::certs::CertError),
    /// A call failed on the server; the message is the server's (it names the field).
    #[error("{}", status_text(.status))]
    Rpc { status: tonic::Status },
    #[error("timed out after {}", humantime::format_duration(*.after))]
    Timeout { after: Duration },
    #[error("cannot read {path}: {source}")]
    ReadInput {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse {path}: {reason}")]
    ParseInput { path: String, reason: String },
    #[error("{path}: {reason}")]
    InvalidInput { path: String, reason: String },
    #[error("{reason}")]
    Usage { reason: String },
    #[error("cannot format output as {format}: {reason}")]
    Render { format: &'static str, reason: String },
    #[error("cannot write output: {source}")]
    WriteOutput {
        #[source]
        source: std::io::Error,
    },
    #[error("dpu {dpu} is in Error: {message}")]
    DpuFailed { dpu: String, message: String },
    #[error("the server closed the watch on {what}")]
    WatchClosed { what: String },
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::BadServer { .. } | Error::BadToken | Error::Usage { .. } | Error::Tls { .. } => {
                exit::USAGE
            }
            Error::Certs(_) => exit::FAILURE,
            Error::Connect { .. } | Error::WatchClosed { .. } => exit::UNAVAILABLE,
            Error::Rpc { status } => exit_code_for(status.code()),
            Error::Timeout { .. } => exit::TIMEOUT,
            Error::ParseInput { .. } | Error::InvalidInput { .. } => exit::INVALID_ARGUMENT,
            Error::ReadInput { .. }
            | Error::Render { .. }
            | Error::WriteOutput { .. }
            | Error::DpuFailed { .. } => exit::FAILURE,
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Error::Rpc { status }
    }
}

fn status_text(status: &tonic::Status) -> String {
    if status.message().is_empty() {
        status.code().description().to_string()
    } else {
        status.message().to_string()
    }
}

/// `e` and its sources joined with ": " (transport errors hide the useful part in the chain).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let part = inner.to_string();
        if !s.contains(&part) {
            s.push_str(": ");
            s.push_str(&part);
        }
        cur = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_map_to_documented_exit_codes() {
        let table = [
            (Code::Ok, 0),
            (Code::NotFound, 4),
            (Code::AlreadyExists, 5),
            (Code::InvalidArgument, 6),
            (Code::FailedPrecondition, 7),
            (Code::Aborted, 8),
            (Code::Unavailable, 69),
            (Code::PermissionDenied, 77),
            (Code::Unauthenticated, 77),
            (Code::DeadlineExceeded, 124),
            (Code::OutOfRange, 1),
            (Code::Internal, 1),
            (Code::Unknown, 1),
            (Code::Unimplemented, 1),
        ];
        for (code, want) in table {
            assert_eq!(exit_code_for(code), want, "{code:?}");
            let e = Error::from(tonic::Status::new(code, "x"));
            assert_eq!(e.exit_code(), want, "{code:?}");
        }
    }

    #[test]
    fn local_errors_have_their_codes() {
        let cases = [
            (
                Error::Timeout {
                    after: Duration::from_secs(3),
                },
                124,
            ),
            (
                Error::Connect {
                    server: "s".into(),
                    reason: "r".into(),
                },
                69,
            ),
            (Error::WatchClosed { what: "dpu".into() }, 69),
            (Error::BadToken, 2),
            (
                Error::ParseInput {
                    path: "f".into(),
                    reason: "r".into(),
                },
                6,
            ),
            (
                Error::DpuFailed {
                    dpu: "d".into(),
                    message: "m".into(),
                },
                1,
            ),
        ];
        for (e, want) in cases {
            assert_eq!(e.exit_code(), want, "{e}");
        }
    }

    #[test]
    fn rpc_error_prints_the_server_message_only() {
        let e = Error::from(tonic::Status::invalid_argument(
            "spec.sha256: must be 64 hex characters",
        ));
        assert_eq!(e.to_string(), "spec.sha256: must be 64 hex characters");
        let e = Error::from(tonic::Status::new(Code::NotFound, ""));
        assert_eq!(e.to_string(), "Some requested entity was not found");
        let e = Error::Timeout {
            after: Duration::from_secs(90),
        };
        assert_eq!(e.to_string(), "timed out after 1m 30s");
    }
}
