//! The `baton-promoter` binary refuses invalid configuration with exit code 64 and a message
//! naming the field, before it connects anywhere or binds a port.

use std::process::Command;

fn run(config: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("promoter.yaml");
    std::fs::write(&path, config).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_baton-promoter"))
        .arg("--config")
        .arg(&path)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .expect("run baton-promoter");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_promoter_without_a_config_repo_is_refused() {
    let (code, stderr) = run("auto_rollback: true\n");
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("config_repo.url"), "{stderr}");
}

#[test]
fn bad_durations_and_unknown_fields_are_named() {
    let (code, stderr) = run("config_repo:\n  url: /srv/config.git\ntick: often\n");
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("tick"), "{stderr}");
    let (code, stderr) = run("config_repo:\n  url: /srv/config.git\n  brnch: main\n");
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("brnch"), "{stderr}");
    let (code, stderr) = run("config_repo:\n  url: /srv/config.git\nlock_lease: 0s\n");
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("lock_lease"), "{stderr}");
}
