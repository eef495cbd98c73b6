//! Compiles `proto/**/*.proto` with protox (no system `protoc`) and generates
//! prost messages plus tonic clients and servers into `OUT_DIR`.

use std::io;
use std::path::{Path, PathBuf};

/// The files to compile; their imports are found under the same root.
const PROTOS: &[&str] = &[
    "buildkit/control/control.proto",
    "buildkit/gateway/gateway.proto",
    "buildkit/session/auth.proto",
    "buildkit/session/filesync.proto",
    "buildkit/session/secrets.proto",
    "buildkit/session/sshforward.proto",
    "buildkit/session/upload.proto",
    "buildkit/solver/errdefs.proto",
    "buildkit/sourcepolicy/policysession.proto",
    "containerd/services/content/v1/content.proto",
    "grpc/health/v1/health.proto",
];

fn main() -> io::Result<()> {
    let root = PathBuf::from("proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let files: Vec<PathBuf> = PROTOS.iter().map(|p| root.join(p)).collect();
    let fds = protox::compile(&files, [Path::new(&root)]).map_err(|e| {
        // The Debug form of a protox error names the file, line and reason.
        io::Error::new(io::ErrorKind::InvalidData, format!("{e:?}"))
    })?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Callers bring their own channel; kiln-proto does not pull in
        // tonic's transport.
        .build_transport(false)
        // Every server-trait method gets a default body answering
        // Unimplemented, so the daemon implements only what it serves and
        // clients probing the rest (history, containers, ...) get the code
        // they expect. Streaming methods then return boxed streams.
        .generate_default_stubs(true)
        .emit_rerun_if_changed(false)
        .compile_fds(fds)
}
