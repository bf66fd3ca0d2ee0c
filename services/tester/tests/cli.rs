//! The `baton-tester` binary refuses invalid configuration with exit code 64 and a message
//! naming the field, before it connects anywhere.

use std::process::Command;

fn run(config: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tester.yaml");
    std::fs::write(&path, config).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_baton-tester"))
        .arg("--config")
        .arg(&path)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .expect("run baton-tester");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn invalid_fields_are_named() {
    let (code, stderr) = run("junit_max_bytes: lots\n");
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("junit_max_bytes"), "{stderr}");
    let (code, stderr) =
        run("source:\n  credentials:\n    - url_prefix: https://x/\n      token_file: /nonexistent/token\n");
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("source.credentials[0].token_file"), "{stderr}");
}
