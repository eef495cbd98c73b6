//! Pieces of LLB definitions as buildctl writes them, for the tests that
//! send kilnd raw LLB: one encoding of an op with its digest, and the
//! `sh -c CMD` exec on the root mount that most of them run.

use kiln_proto::llb;
use prost::Message;

/// An op's bytes and their digest, as a definition lists and names them.
pub fn op_bytes(op: &llb::Op) -> (Vec<u8>, String) {
    let b = op.encode_to_vec();
    let d = kiln_solver::Digest::of(&b).to_string();
    (b, d)
}

/// `sh -c CMD` in `/` with `PATH=/bin`, its input 0 mounted at `/` as
/// output 0.
pub fn shell_exec(cmd: &str) -> llb::ExecOp {
    llb::ExecOp {
        meta: Some(llb::Meta {
            args: vec!["/bin/sh".into(), "-c".into(), cmd.into()],
            cwd: "/".into(),
            env: vec!["PATH=/bin".into()],
            ..Default::default()
        }),
        mounts: vec![llb::Mount {
            input: 0,
            dest: "/".into(),
            output: 0,
            ..Default::default()
        }],
        ..Default::default()
    }
}
