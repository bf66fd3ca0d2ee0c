//! The `baton-chatops` binary refuses to start without a signing secret (fail closed) and on
//! other invalid configuration, with exit code 64 and a message naming the field, before it
//! connects anywhere.

use std::process::Command;

fn run(config: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("chatops.yaml");
    std::fs::write(&path, config).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_baton-chatops"))
        .arg("--config")
        .arg(&path)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        // Nothing listens here: a config that passed would fail to connect instead.
        .env("BATON_NATS_URL", "nats://127.0.0.1:1")
        .output()
        .expect("run baton-chatops");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_missing_signing_secret_is_named() {
    let (code, stderr) = run("users:\n  U1: alice\n");
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("signing_secret_env") && stderr.contains("signing_secret_file"),
        "{stderr}"
    );
}

#[test]
fn an_unset_secret_variable_is_named() {
    let (code, stderr) = run("signing_secret_env: SLACK_SIGNING_SECRET\n");
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("signing_secret_env") && stderr.contains("SLACK_SIGNING_SECRET is not set"),
        "{stderr}"
    );
}

#[test]
fn a_mistyped_field_is_named() {
    let (code, stderr) = run("signing_secret_file: /nonexistent\nmax_request_age: soon\n");
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("max_request_age"), "{stderr}");
    let (code, stderr) = run("signing_secret_enf: X\n");
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("signing_secret_enf"), "{stderr}");
}
