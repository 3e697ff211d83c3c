//! Compiles `proto/hostplane/v1/*.proto` with protox (pure Rust, no system
//! protoc), then generates prost messages, tonic services and pbjson serde
//! impls (proto3 JSON mapping: enum names, camelCase fields) from the same
//! descriptor set. The descriptor set is also embedded for gRPC reflection.
use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let public = [
        "proto/hostplane/v1/power.proto",
        "proto/hostplane/v1/resources.proto",
        "proto/hostplane/v1/admin.proto",
        "proto/hostplane/v1/agent.proto",
    ];
    // Between coordinator replicas (docs/ha.md §5): generated with the
    // rest, but kept out of the descriptor set that reflection serves and of
    // pbjson (never stored or printed).
    let internal = ["proto/hostplane/internal/v1/peer.proto"];
    for f in public.iter().chain(&internal) {
        println!("cargo:rerun-if-changed={f}");
    }
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out.join("hostplane_descriptor.bin");
    std::fs::write(
        &descriptor_path,
        protox::compile(public, ["proto"])?.encode_to_vec(),
    )?;
    let fds = protox::compile(public.iter().chain(&internal), ["proto"])?;

    // google.protobuf.FieldMask comes from pbjson-types, which has its
    // proto3 JSON mapping (prost-types has no serde).
    tonic_prost_build::configure()
        .extern_path(".google.protobuf.FieldMask", "::pbjson_types::FieldMask")
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;

    let descriptor_bytes = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptor_bytes)?
        .build(&[".hostplane.v1"])?;
    Ok(())
}
