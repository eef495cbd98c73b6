//! Frontend inputs through kilnd: a `dockerfile.v0` solve whose named
//! contexts read LLB definitions the client sends along
//! (`context:NAME=input:X`, as buildx bake sends a `target:` context),
//! with the input's image config in `input-metadata:X` or without one.

use base64::Engine as _;
use kiln_integration::llbdef::{op_bytes, shell_exec};
use kiln_integration::{buildctl_like_binary, Harness, Kilnd};
use kiln_proto::llb;
use prost::Message;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// busybox with `/input.txt` written by a step: an input's definition,
/// encoded into `dir/NAME.pb`.
fn input_definition(dir: &Path, name: &str, text: &str) -> PathBuf {
    let (src_b, src_d) = op_bytes(&llb::Op {
        op: Some(llb::op::Op::Source(llb::SourceOp {
            identifier: "docker-image://docker.io/library/busybox:latest".into(),
            ..Default::default()
        })),
        ..Default::default()
    });
    let (exec_b, exec_d) = op_bytes(&llb::Op {
        inputs: vec![llb::Input {
            digest: src_d,
            index: 0,
        }],
        op: Some(llb::op::Op::Exec(shell_exec(&format!(
            "echo {text} > /input.txt"
        )))),
        ..Default::default()
    });
    let (last_b, _) = op_bytes(&llb::Op {
        inputs: vec![llb::Input {
            digest: exec_d,
            index: 0,
        }],
        ..Default::default()
    });
    let def = llb::Definition {
        def: vec![src_b, exec_b, last_b],
        ..Default::default()
    };
    let path = dir.join(format!("{name}.pb"));
    std::fs::write(&path, def.encode_to_vec()).expect("write definition");
    path
}

fn buildctl(k: &Kilnd, ctx: &Path, image: &str, opts: &str, inputs: &str) -> Output {
    Command::new(buildctl_like_binary().expect("buildctl-like"))
        .arg(k.addr())
        .arg(ctx)
        .arg(image)
        .env("BUILDCTL_LIKE_OPTS", opts)
        .env("BUILDCTL_LIKE_INPUTS", inputs)
        .output()
        .expect("buildctl-like runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_contexts_read_frontend_inputs() {
    let ns = "frontend-inputs";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let defs = h.state_dir().join("inputs");
    std::fs::create_dir_all(&defs).expect("mkdir");
    let base = input_definition(&defs, "base", "from the base input");
    let tools = input_definition(&defs, "tools", "from the tools input");
    // The base input's image config, as bake sends a target's.
    let config = serde_json::json!({
        "architecture": kiln_engine::oci::worker_platform().architecture,
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "FROM_INPUT=yes"],
            "WorkingDir": "/srv",
        },
        "rootfs": {"type": "layers", "diff_ids": []},
    });
    let metadata = format!(
        r#"{{"containerimage.config":"{}"}}"#,
        base64::engine::general_purpose::STANDARD.encode(config.to_string())
    );
    let ctx = h.context(
        "inputs",
        &[(
            "Dockerfile",
            "FROM base\nCOPY --from=tools /input.txt tools.txt\nRUN cat /input.txt > copied.txt\n\
             CMD [\"sh\", \"-c\", \"pwd; cat copied.txt tools.txt; echo $FROM_INPUT\"]\n",
        )],
    );
    let inputs = format!("base={},tools={}", base.display(), tools.display());
    let opts =
        format!("context:base=input:base,context:tools=input:tools,input-metadata:base={metadata}");
    let image = "docker.io/library/from-inputs:1";
    let out = buildctl(&k, &ctx, image, &opts, &inputs);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let want = "/srv\nfrom the base input\nfrom the tools input\nyes\n";
    let got = h.run_image_expecting(ns, image, "frontend-inputs-run", &[], want);
    assert_eq!(got, want);

    // An input a named context reads but the client did not send, and one
    // sent that nothing reads (a build result as the main context), fail
    // before any step runs, naming the input.
    let cases = [
        (
            "context:base=input:missing".to_string(),
            String::new(),
            "invalid input missing for base",
        ),
        (
            "context:tools=input:tools".to_string(),
            inputs.clone(),
            "frontend inputs (base) are not supported yet",
        ),
    ];
    for (i, (opts, inputs, want)) in cases.iter().enumerate() {
        let image = format!("docker.io/library/from-inputs:bad{i}");
        let out = buildctl(&k, &ctx, &image, opts, inputs);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{opts}: {stderr}");
        assert!(stderr.contains(want), "{opts}: want {want:?} in\n{stderr}");
    }
}
