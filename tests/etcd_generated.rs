//! The etcd client's gRPC code is committed (`vendor/etcd-client/src/rpc/generated/`) so that
//! building switchyard needs no protoc. This test generates it again from the committed
//! protobuf files, as the published crate's build script does, with a protoc that comes as a
//! crate, and fails when anything differs. `SWITCHYARD_WRITE_GENERATED=1` writes the files
//! instead (after an etcd-client or tonic upgrade; review the diff).

use std::path::Path;

/// The packages the client includes (`src/rpc/pb.rs`), one file each.
const PACKAGES: [&str; 5] = [
    "authpb",
    "etcdserverpb",
    "mvccpb",
    "v3electionpb",
    "v3lockpb",
];

/// The published crate's build script compiles these, against `proto/`.
const PROTOS: [&str; 5] = [
    "etcd/api/authpb/auth.proto",
    "etcd/api/etcdserverpb/rpc.proto",
    "etcd/api/mvccpb/kv.proto",
    "etcd/server/etcdserver/api/v3election/v3electionpb/v3election.proto",
    "etcd/server/etcdserver/api/v3lock/v3lockpb/v3lock.proto",
];

#[test]
fn the_committed_etcd_client_code_is_what_its_protobuf_files_generate() {
    let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("vendor/etcd-client");
    let proto_root = client.join("proto");
    let out = tempfile::tempdir().expect("tempdir");

    let Ok(protoc) = protoc_bin_vendored::protoc_bin_path() else {
        // protoc-bin-vendored ships protoc for Linux, macOS and Windows on the common CPUs.
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr().lock(),
            "\n*** no vendored protoc for this platform: the etcd client's generated code was \
             not checked ***\n"
        );
        return;
    };
    // The well-known types (google/protobuf/descriptor.proto, struct.proto) that etcd's
    // files import: they come with that protoc.
    let well_known = protoc_bin_vendored::include_path().expect("protoc's include directory");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    let protos: Vec<_> = PROTOS.iter().map(|p| proto_root.join(p)).collect();
    tonic_prost_build::configure()
        .build_server(false)
        .emit_rerun_if_changed(false)
        .out_dir(out.path())
        .compile_with_config(config, &protos, &[proto_root, well_known])
        .expect("etcd's protobuf files compile");

    let committed_dir = client.join("src/rpc/generated");
    let write = std::env::var_os("SWITCHYARD_WRITE_GENERATED").is_some();
    let mut stale = Vec::new();
    for package in PACKAGES {
        let file = format!("{package}.rs");
        let fresh = std::fs::read_to_string(out.path().join(&file)).expect("generated file");
        let committed = std::fs::read_to_string(committed_dir.join(&file)).unwrap_or_default();
        if fresh != committed {
            if write {
                std::fs::write(committed_dir.join(&file), &fresh).expect("write generated file");
            }
            stale.push(file);
        }
    }
    assert!(
        write || stale.is_empty(),
        "vendor/etcd-client/src/rpc/generated/ differs from what proto/ generates in {stale:?}: \
         run `SWITCHYARD_WRITE_GENERATED=1 cargo test --test etcd_generated` and review the diff"
    );
}
