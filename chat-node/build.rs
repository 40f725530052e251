//! Generates the gRPC client (and, for tests, server) of the external
//! moderation service from `proto/moderation.proto`. The proto is parsed by
//! `protox`, a pure-Rust compiler, so no `protoc` binary is needed anywhere.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = "../proto";
    let proto = "../proto/moderation.proto";
    println!("cargo:rerun-if-changed={proto}");
    let files = protox::compile([proto], [proto_dir])?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(files)?;
    Ok(())
}
