//! The `baton-listener` binary refuses invalid configuration with exit code 64 and a message
//! naming the field, before it connects anywhere or binds a port.

use std::process::Command;

fn run(config: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("listener.yaml");
    std::fs::write(&path, config).expect("write config");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_baton-listener"));
    cmd.arg("--config").arg(&path).env_clear().env("PATH", "/usr/bin:/bin");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run baton-listener");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_webhook_repository_without_a_secret_is_refused() {
    let (code, stderr) = run("repositories:\n  - name: acme/shop\n    provider: github\n", &[]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("repositories[0].secret_env"), "{stderr}");
}

#[test]
fn a_missing_secret_variable_is_named_not_printed() {
    let (code, stderr) = run(
        "repositories:\n  - name: acme/shop\n    provider: github\n    secret_env: SHOP_SECRET\n",
        &[],
    );
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("SHOP_SECRET is not set"), "{stderr}");
}

#[test]
fn a_mistyped_common_field_is_named() {
    let (code, stderr) = run("nats:\n  url: http://localhost:4222\n", &[]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("field `nats.url`"), "{stderr}");
    let (code, stderr) = run("", &[("BATON_RUNNER__CONCURRENCY", "many")]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("runner.concurrency"), "{stderr}");
}

#[test]
fn an_unknown_field_is_named() {
    let (code, stderr) = run("repositories:\n  - name: acme/shop\n    provder: github\n", &[]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("provder"), "{stderr}");
}
