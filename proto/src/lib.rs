//! The hostplane gRPC contract, `hostplane.v1`.
//!
//! Generated from `proto/hostplane/v1/*.proto` at build time (protox, no
//! system protoc). Messages also implement serde via pbjson, following the
//! proto3 JSON mapping, which the store and `hostplanectl -o json|yaml` use.

#[allow(clippy::all, clippy::pedantic, missing_docs, rust_2018_idioms)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/hostplane.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/hostplane.v1.serde.rs"));

    /// Encoded `FileDescriptorSet` of the whole package, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/hostplane_descriptor.bin"));
}

/// Calls between coordinator replicas, `hostplane.internal.v1` (docs/ha.md
/// §5): not part of the public contract.
#[allow(clippy::all, clippy::pedantic, missing_docs, rust_2018_idioms)]
pub mod internal {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/hostplane.internal.v1.rs"));
    }
}

/// `google.protobuf` types used by the contract (`FieldMask`), so callers
/// need no dependency of their own.
pub use pbjson_types;

pub mod dpu_os;
mod helpers;
pub mod limits;
pub mod pci;
pub mod power;
