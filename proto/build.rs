//! Compiles the `.proto` files under `switchboard/` with protox (pure Rust, no system `protoc`)
//! into prost messages plus tonic clients and servers, and writes the encoded
//! `FileDescriptorSet` to `OUT_DIR` for gRPC server reflection. For the public API it also
//! generates serde impls that follow the proto3 JSON mapping (pbjson), used by `-o json`.

use std::{env, error::Error, fs, path::PathBuf};

use prost::Message as _;

/// Directory holding every `.proto` file of this crate; cargo rebuilds when anything in it changes.
const PROTO_DIR: &str = "switchboard";

/// Files to compile, relative to the crate root (which is also the import root).
const PROTO_FILES: &[&str] = &[
    "switchboard/v1/common.proto",
    "switchboard/v1/events.proto",
    "switchboard/v1/calls.proto",
    "switchboard/v1/activity.proto",
    "switchboard/v1/cluster.proto",
    "switchboard/v1/raft.proto",
];

/// File name of the encoded descriptor set in `OUT_DIR`; `lib.rs` includes it by this name.
const DESCRIPTOR_SET_FILE: &str = "switchboard_descriptor.bin";

/// Packages that get proto3 JSON serde impls: only the public API, the Raft transport never
/// leaves the cluster as JSON.
const JSON_PACKAGES: &[&str] = &[".switchboard.v1"];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed={PROTO_DIR}");
    let crate_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    // protox errors carry the file, line and column; Display gives the readable form.
    let fds = protox::compile(PROTO_FILES, [&crate_dir])
        .map_err(|e| format!("failed to compile protos: {e}"))?;
    let fds_bytes = fds.encode_to_vec();
    fs::write(out_dir.join(DESCRIPTOR_SET_FILE), &fds_bytes)?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // prost's codec, but a message that does not decode is INVALID_ARGUMENT (codec.rs).
        .codec_path("crate::codec::InvalidArgumentCodec")
        .compile_fds(fds)?;

    // Writes `switchboard.v1.serde.rs` next to prost's output; `lib.rs` includes it. Fields at
    // their default value are emitted too, so scripts reading `-o json` see every field.
    pbjson_build::Builder::new()
        .register_descriptors(&fds_bytes)?
        .emit_fields()
        .build(JSON_PACKAGES)?;
    Ok(())
}
