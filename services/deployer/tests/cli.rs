//! The `baton-deployer` binary refuses invalid configuration with exit code 64 and a message
//! naming the field, before it connects anywhere.

use std::process::Command;

fn run(config: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("deployer.yaml");
    std::fs::write(&path, config).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_baton-deployer"))
        .arg("--config")
        .arg(&path)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", dir.path())
        .output()
        .expect("run baton-deployer");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_missing_kubeconfig_is_named() {
    let (code, stderr) = run("kubeconfig: /nonexistent/kubeconfig\n");
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("kubeconfig") && stderr.contains("/nonexistent/kubeconfig"),
        "{stderr}"
    );
}

#[test]
fn no_kubeconfig_at_all_is_named() {
    let (code, stderr) = run("");
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("kubeconfig"), "{stderr}");
}

#[test]
fn zero_durations_and_unknown_fields_are_named() {
    let (code, stderr) = run("rollout_timeout: 0s\n");
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("rollout_timeout"), "{stderr}");
    let (code, stderr) = run("rolout_timeout: 5m\n");
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("rolout_timeout"), "{stderr}");
}
