//! The `baton-builder` binary refuses invalid configuration with exit code 64 and a message
//! naming the field, before it connects anywhere.

use std::process::Command;

fn run(config: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("builder.yaml");
    std::fs::write(&path, config).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_baton-builder"))
        .arg("--config")
        .arg(&path)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .expect("run baton-builder");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_credential_without_its_token_is_refused() {
    let (code, stderr) =
        run("source:\n  credentials:\n    - url_prefix: https://github.com/acme/\n      token_env: GITHUB_TOKEN\n");
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("source.credentials[0].token_env") && stderr.contains("GITHUB_TOKEN is not set"),
        "{stderr}"
    );
}

#[test]
fn a_mistyped_field_is_named() {
    let (code, stderr) = run("registry:\n  adress: localhost:5000\n");
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("adress"), "{stderr}");
    let (code, stderr) = run("limits:\n  cpu_seconds: lots\n");
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("limits.cpu_seconds"), "{stderr}");
}
