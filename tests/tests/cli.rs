//! Every service binary refuses invalid configuration the same way: exit code 64 and a message
//! naming the field (never a secret's value), before it connects anywhere or binds a port. One
//! row per refusal; the binaries are the real ones, built by the harness
//! ([`service_binary`]) from the current code.
//!
//! Each run gets an empty environment (`PATH` only, plus the row's variables) and an empty
//! `HOME`, so nothing on the machine (a variable, a kubeconfig in `~/.kube`) can make a bad
//! config pass or a good one fail.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result};
use baton_tests::process::service_binary;

/// One invalid configuration and what the refusal must say.
struct Refusal {
    /// The binary (a service package's name).
    binary: &'static str,
    /// What the row shows.
    case: &'static str,
    /// The `--config` file.
    config: &'static str,
    /// Variables set for the run besides `PATH` and `HOME`.
    env: &'static [(&'static str, &'static str)],
    /// Words the message on stderr must contain, every one.
    names: &'static [&'static str],
}

/// For the chat-ops bot: nothing listens here, so a config that wrongly passed would fail to
/// connect instead of being taken for a refusal.
const NO_NATS: (&str, &str) = ("BATON_NATS_URL", "nats://127.0.0.1:1");

/// For the chat-ops bot: a Slack signing secret, so a row reaches what it is about.
const SLACK_SECRET: (&str, &str) = ("SLACK_SIGNING_SECRET", "not-a-real-secret");

const REFUSALS: &[Refusal] = &[
    Refusal {
        binary: "baton-listener",
        case: "a webhook repository without a secret",
        config: "repositories:\n  - name: acme/shop\n    provider: github\n",
        env: &[],
        names: &["repositories[0].secret_env"],
    },
    Refusal {
        binary: "baton-listener",
        case: "a missing secret variable is named, not printed",
        config: "repositories:\n  - name: acme/shop\n    provider: github\n    secret_env: SHOP_SECRET\n",
        env: &[],
        names: &["SHOP_SECRET is not set"],
    },
    Refusal {
        binary: "baton-listener",
        case: "a mistyped common field in the file",
        config: "nats:\n  url: http://localhost:4222\n",
        env: &[],
        names: &["field `nats.url`"],
    },
    Refusal {
        binary: "baton-listener",
        case: "a mistyped common field in the environment",
        config: "",
        env: &[("BATON_RUNNER__CONCURRENCY", "many")],
        names: &["runner.concurrency"],
    },
    Refusal {
        binary: "baton-listener",
        case: "an unknown field",
        config: "repositories:\n  - name: acme/shop\n    provder: github\n",
        env: &[],
        names: &["provder"],
    },
    Refusal {
        binary: "baton-builder",
        case: "a credential without its token",
        config: "source:\n  credentials:\n    - url_prefix: https://github.com/acme/\n      token_env: GITHUB_TOKEN\n",
        env: &[],
        names: &["source.credentials[0].token_env", "GITHUB_TOKEN is not set"],
    },
    Refusal {
        binary: "baton-builder",
        case: "an unknown field",
        config: "registry:\n  adress: localhost:5000\n",
        env: &[],
        names: &["adress"],
    },
    Refusal {
        binary: "baton-builder",
        case: "a mistyped number",
        config: "limits:\n  cpu_seconds: lots\n",
        env: &[],
        names: &["limits.cpu_seconds"],
    },
    Refusal {
        binary: "baton-tester",
        case: "a mistyped size",
        config: "junit_max_bytes: lots\n",
        env: &[],
        names: &["junit_max_bytes"],
    },
    Refusal {
        binary: "baton-tester",
        case: "a credential whose token file is missing",
        config: "source:\n  credentials:\n    - url_prefix: https://x/\n      token_file: /nonexistent/token\n",
        env: &[],
        names: &["source.credentials[0].token_file"],
    },
    Refusal {
        binary: "baton-promoter",
        case: "no config repo",
        config: "auto_rollback: true\n",
        env: &[],
        names: &["config_repo.url"],
    },
    Refusal {
        binary: "baton-promoter",
        case: "a bad duration",
        config: "config_repo:\n  url: /srv/config.git\ntick: often\n",
        env: &[],
        names: &["tick"],
    },
    Refusal {
        binary: "baton-promoter",
        case: "an unknown field",
        config: "config_repo:\n  url: /srv/config.git\n  brnch: main\n",
        env: &[],
        names: &["brnch"],
    },
    Refusal {
        binary: "baton-promoter",
        case: "a zero lease",
        config: "config_repo:\n  url: /srv/config.git\nlock_lease: 0s\n",
        env: &[],
        names: &["lock_lease"],
    },
    Refusal {
        binary: "baton-deployer",
        case: "a missing kubeconfig",
        config: "kubeconfig: /nonexistent/kubeconfig\n",
        env: &[],
        names: &["kubeconfig", "/nonexistent/kubeconfig"],
    },
    Refusal {
        binary: "baton-deployer",
        case: "no kubeconfig at all",
        config: "",
        env: &[],
        names: &["kubeconfig"],
    },
    Refusal {
        binary: "baton-deployer",
        case: "a zero duration",
        config: "rollout_timeout: 0s\n",
        env: &[],
        names: &["rollout_timeout"],
    },
    Refusal {
        binary: "baton-deployer",
        case: "an unknown field",
        config: "rolout_timeout: 5m\n",
        env: &[],
        names: &["rolout_timeout"],
    },
    Refusal {
        binary: "baton-chatops",
        case: "no signing secret (fail closed)",
        config: "users:\n  U1: alice\n",
        env: &[NO_NATS],
        names: &["signing_secret_env", "signing_secret_file"],
    },
    Refusal {
        binary: "baton-chatops",
        case: "no signing key: the promoter refuses unsigned commands",
        config: "signing_secret_env: SLACK_SIGNING_SECRET\npeople: {repository: 'file:///srv/config.git'}\n",
        env: &[NO_NATS, SLACK_SECRET],
        names: &["signing_key_file", "people.yaml"],
    },
    Refusal {
        binary: "baton-chatops",
        case: "the old users map, which people.yaml replaces",
        config: "signing_secret_env: SLACK_SIGNING_SECRET\nusers:\n  U1: alice\n",
        env: &[NO_NATS, SLACK_SECRET],
        names: &["users", "people.alice.chat"],
    },
    Refusal {
        binary: "baton-chatops",
        case: "an unset secret variable",
        config: "signing_secret_env: SLACK_SIGNING_SECRET\n",
        env: &[NO_NATS],
        names: &["signing_secret_env", "SLACK_SIGNING_SECRET is not set"],
    },
    Refusal {
        binary: "baton-chatops",
        case: "a mistyped duration",
        config: "signing_secret_file: /nonexistent\nmax_request_age: soon\n",
        env: &[NO_NATS],
        names: &["max_request_age"],
    },
    Refusal {
        binary: "baton-chatops",
        case: "an unknown field",
        config: "signing_secret_enf: X\n",
        env: &[NO_NATS],
        names: &["signing_secret_enf"],
    },
];

/// Runs `binary --config <file holding config>` in an empty environment; returns the exit code
/// and stderr.
fn run(binary: &Path, config: &str, env: &[(&str, &str)]) -> Result<(Option<i32>, String)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, config)?;
    let out = Command::new(binary)
        .arg("--config")
        .arg(&path)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", dir.path())
        .envs(env.iter().copied())
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    Ok((out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned()))
}

#[test]
fn every_service_refuses_bad_configuration_with_64_and_the_field() -> Result<()> {
    let mut failures = Vec::new();
    for refusal in REFUSALS {
        let (code, stderr) = run(&service_binary(refusal.binary)?, refusal.config, refusal.env)?;
        let missing: Vec<&str> = refusal
            .names
            .iter()
            .copied()
            .filter(|name| !stderr.contains(name))
            .collect();
        if code != Some(64) || !missing.is_empty() {
            failures.push(format!(
                "{} ({}): exit {code:?}, not naming {missing:?}:\n{stderr}",
                refusal.binary, refusal.case
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    Ok(())
}

#[test]
fn every_service_binary_has_refusals() {
    for package in baton_tests::process::SERVICE_PACKAGES {
        assert!(
            REFUSALS.iter().any(|refusal| refusal.binary == package),
            "{package} has no row"
        );
    }
}
