//! The `baton` binary against a real nats-server with a real promoter, config repo and app repo:
//! a release is created and promoted to staging, and the CLI shows it in the event log, its
//! trace, the app's releases and the status, sends signed commands (an approval refused with the
//! reason, exit 4; a pin; a quarantine and its lifting) and asks the promoter who it sees
//! (`whoami`); a command without a key never leaves, and one signed by a key people.yaml does not
//! list is refused with how to add it; `policy show` prints every verb's holders and where that
//! comes from; unreachable NATS, an unknown release and invalid flags are one-line errors with a
//! fix and a non-zero exit.

use baton_kit::service::Service as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use baton_kit::settings::Settings;
use baton_kit::{Outgoing, events};
use baton_schemas::config::CommonSettings;
use baton_schemas::config::promoter::PromoterSettings;
use baton_schemas::payloads::{ImageInfo, Outcome, TestCounts, TestData};
use baton_schemas::{CdEvent, EventType};
use baton_tests::NatsServer;
use baton_tests::people::{Person, SshAgent, people_yaml};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    baton_tests::git(dir, args).map_err(anyhow::Error::msg)
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `baton` with nothing to sign with: no key and no ssh-agent, whatever this machine has.
fn baton(nats: &str, args: &[&str]) -> Run {
    baton_with(nats, args, &[])
}

/// Runs `baton` with `env` set on top of [`baton`]'s environment.
fn baton_with(nats: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(args)
        .env("BATON_NATS_URL", nats)
        .env("BATON_ACTOR", "carol")
        .env("NO_COLOR", "1")
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("BATON_SIGNING_KEY")
        .env_remove("BATON_SIGNING_KEY_FINGERPRINT")
        .envs(env.iter().copied())
        .output()
        .expect("run baton");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `baton` signing as `who`, whose private key is `<dir>/<who>.key` ([`write_keys`]).
fn signed(nats: &str, dir: &Path, who: &str, args: &[&str]) -> Run {
    let key = dir.join(format!("{who}.key")).display().to_string();
    let mut all = args.to_vec();
    all.extend(["--actor", who, "--key", &key]);
    baton(nats, &all)
}

/// The people of the suite: alice and carol are in people.yaml, mallory is not.
fn people() -> [Person; 3] {
    [Person::new("alice"), Person::new("carol"), Person::new("mallory")]
}

/// Writes each person's private key to `<dir>/<name>.key` and returns the people.yaml listing
/// alice and carol.
fn write_keys(dir: &Path) -> Result<String> {
    let [alice, carol, mallory] = people();
    for person in [&alice, &carol, &mallory] {
        person.write_private_key(&dir.join(format!("{}.key", person.name)))?;
    }
    Ok(people_yaml(&[alice.entry(), carol.entry()]))
}

/// A promoter with a config repo (staging automatic, production by alice's approval; alice and
/// carol in people.yaml, their keys in `dir`) and an app repo whose tests passed: returns the
/// release id once staging has it.
async fn released(nats: &NatsServer, dir: &Path) -> Result<(String, tokio_util::sync::CancellationToken)> {
    git(dir, &["init", "-q", "--bare", "-b", "main", "config.git"])?;
    git(dir, &["clone", "-q", "config.git", "seed"])?;
    std::fs::write(
        dir.join("seed/environments.yaml"),
        "environments:\n  - {name: staging, namespace: shop-staging, policy: auto}\n  - name: production\n    namespace: shop-production\n    policy: manual\n    approvals: {users: [alice]}\n",
    )?;
    std::fs::write(dir.join("seed/people.yaml"), write_keys(dir)?)?;
    git(&dir.join("seed"), &["add", "."])?;
    git(&dir.join("seed"), &["commit", "-qm", "environments"])?;
    git(&dir.join("seed"), &["push", "-q", "origin", "main"])?;
    let app = dir.join("app");
    std::fs::create_dir_all(app.join("deploy"))?;
    git(&app, &["init", "-q", "-b", "main"])?;
    std::fs::write(app.join(".baton.yaml"), "manifests: deploy\n")?;
    std::fs::write(
        app.join("deploy/pod.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: shop}\nspec:\n  containers: [{name: shop, image: 'baton/acme_shop:dev'}]\n",
    )?;
    git(&app, &["add", "-A"])?;
    git(&app, &["commit", "-qm", "first"])?;
    let sha = git(&app, &["rev-parse", "HEAD"])?;

    let mut common = CommonSettings::default();
    common.nats.url = nats.url();
    common.http.listen = "127.0.0.1:0".parse()?;
    let mut service = PromoterSettings::default();
    service.config_repo.url = format!("file://{}", dir.join("config.git").display());
    // The admin's provisioning step, before the promoter starts.
    baton_tests::app::provision_for::<baton_promoter::Application>(&common).await?;
    let promoter = baton_promoter::Application::build(
        Settings {
            common,
            service,
            warnings: vec![],
        },
        &|_| None,
    )
    .await?;
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(promoter.run_until_stopped(stop.clone()));

    let digest = format!("sha256:{}", hex::encode(Sha256::digest(b"cli")));
    let image = ImageInfo {
        registry: "127.0.0.1:5000".into(),
        repository: "baton/acme_shop".into(),
        tag: sha.clone(),
        digest: digest.clone(),
        reference: format!("127.0.0.1:5000/baton/acme_shop@{digest}"),
        purl: format!("pkg:oci/acme_shop@{}", digest.replace(':', "%3A")),
        uploaded_bytes: 0,
    };
    let release = "11111111-2222-3333-4444-555555555555".to_owned();
    let data = TestData {
        app: "acme/shop".into(),
        commit: sha.clone(),
        repository: format!("file://{}", app.display()),
        image: Some(image),
        run: "test-cli".into(),
        outcome: Some(Outcome::Success),
        reason: None,
        no_tests_declared: false,
        counts: TestCounts::default(),
        failed_cases: vec![],
        steps: vec![],
        pushed_by: None,
    };
    let event = CdEvent::new(
        EventType::TestSuiteRunFinished,
        "finished-cli",
        "/baton/tester",
        format!("acme/shop@{sha}"),
        json!({"environment": {"id": "baton-tester"}, "testSuite": {"id": "s"}, "outcome": "success"}),
    )?
    .with_chain_id(&release)
    .with_custom_data(data)?;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    events::publish(&js, &Outgoing::new("acme/shop", event)).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let run = baton(&nats.url(), &["status", "acme/shop"]);
        if run.code == Some(0) && run.stdout.contains("staging") {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "staging never got the release: {}",
            run.stderr
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok((release, stop))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_shows_the_log_a_trace_releases_and_status_and_sends_commands() -> Result<()> {
    let nats = NatsServer::start()?;
    let dir = tempfile::tempdir()?;
    let (release, stop) = released(&nats, dir.path()).await?;
    let url = nats.url();

    let events = baton(&url, &["events", "--app", "acme/shop"]);
    assert_eq!(events.code, Some(0), "{}", events.stderr);
    for word in [
        "testsuiterun.finished",
        "baton-release.created",
        "environment.modified",
        "promote → staging",
    ] {
        assert!(events.stdout.contains(word), "`{word}` in:\n{}", events.stdout);
    }
    let only = baton(&url, &["events", "--type", "environment.modified", "-o", "json"]);
    let parsed: Value = serde_json::from_str(&only.stdout).context("-o json is JSON")?;
    assert_eq!(parsed.as_array().map(Vec::len), Some(1), "{}", only.stdout);
    let recent = baton(&url, &["events", "--since", "1h"]);
    assert!(recent.stdout.lines().count() >= 3, "{}", recent.stdout);

    let trace = baton(&url, &["trace", &release]);
    assert_eq!(trace.code, Some(0), "{}", trace.stderr);
    assert!(
        trace.stdout.contains(&format!("release {release} of acme_shop")),
        "{}",
        trace.stdout
    );
    assert!(trace.stdout.contains("runs now in: staging"), "{}", trace.stdout);
    assert!(trace.stdout.contains("+"), "durations: {}", trace.stdout);

    let releases = baton(&url, &["releases", "acme/shop"]);
    assert!(
        releases.stdout.contains(&release) && releases.stdout.contains("staging"),
        "{}",
        releases.stdout
    );
    let status = baton(&url, &["status", "-o", "yaml"]);
    assert!(status.stdout.contains("environment: staging"), "{}", status.stdout);

    // Commands are signed and carry the actor; a refusal says why and exits 4.
    let d = dir.path();
    let approve = signed(&url, d, "carol", &["approve", &release, "--env", "production"]);
    assert_eq!(approve.code, Some(4), "{}{}", approve.stdout, approve.stderr);
    assert!(approve.stdout.contains("refused"), "{}", approve.stdout);
    let pin = signed(
        &url,
        d,
        "alice",
        &["pin", "acme/shop", "staging", "--reason", "demo day"],
    );
    assert_eq!(pin.code, Some(0), "{}{}", pin.stdout, pin.stderr);
    assert!(pin.stdout.contains("pinned"), "{}", pin.stdout);
    let rejected = baton(&url, &["events", "--type", "baton-command.rejected"]);
    assert!(
        rejected.stdout.contains("approve by carol refused"),
        "{}",
        rejected.stdout
    );

    // Who the promoter sees: the person, the key and the channel; nothing is recorded.
    let [alice, _, mallory] = people();
    let recorded = || -> Result<usize> {
        let all = baton(&url, &["events", "-o", "json"]);
        let all: Value = serde_json::from_str(&all.stdout).context("-o json is JSON")?;
        Ok(all.as_array().map_or(0, Vec::len))
    };
    let before = recorded()?;
    let whoami = signed(&url, d, "alice", &["whoami"]);
    assert_eq!(whoami.code, Some(0), "{}{}", whoami.stdout, whoami.stderr);
    for word in ["alice", &alice.signer().fingerprint(), "cli"] {
        assert!(whoami.stdout.contains(word), "`{word}` in: {}", whoami.stdout);
    }
    let as_json = signed(&url, d, "alice", &["whoami", "-o", "json"]);
    let reply: Value = serde_json::from_str(&as_json.stdout).context("whoami -o json is JSON")?;
    assert_eq!(reply["ok"], true, "{}", as_json.stdout);
    assert_eq!(recorded()?, before, "whoami records nothing");

    // Without a key nothing is sent: the error names the three ways to give one.
    let keyless = baton(&url, &["unpin", "acme/shop", "staging", "--actor", "alice"]);
    assert_eq!(keyless.code, Some(2), "{}{}", keyless.stdout, keyless.stderr);
    assert_eq!(keyless.stderr.lines().count(), 1, "{}", keyless.stderr);
    for way in ["--key FILE", "BATON_SIGNING_KEY", "ssh-agent"] {
        assert!(keyless.stderr.contains(way), "names {way}: {}", keyless.stderr);
    }
    let gone = baton(&url, &["unpin", "acme/shop", "staging", "--as", "alice"]);
    assert_eq!(gone.code, Some(2), "{}", gone.stderr);
    assert!(gone.stderr.contains("--actor alice"), "{}", gone.stderr);

    // A key people.yaml does not list: refused, saying how to add it; whoami prints just that.
    let mallory_key = d.join("mallory.key").display().to_string();
    let unknown = baton(
        &url,
        &[
            "unpin",
            "acme/shop",
            "staging",
            "--actor",
            "alice",
            "--key",
            &mallory_key,
        ],
    );
    assert_eq!(unknown.code, Some(4), "{}{}", unknown.stdout, unknown.stderr);
    let stranger = signed(&url, d, "mallory", &["whoami"]);
    assert_eq!(stranger.code, Some(4), "{}{}", stranger.stdout, stranger.stderr);
    for run in [&unknown, &stranger] {
        for word in [&mallory.signer().fingerprint(), "people.yaml", "keys"] {
            assert!(run.stdout.contains(word), "`{word}` in: {}", run.stdout);
        }
    }
    let status = baton(&url, &["status", "acme/shop"]);
    assert!(
        status.stdout.contains("yes: demo day"),
        "still pinned: {}",
        status.stdout
    );

    // Through the ssh-agent: its first key signs, and a refusal says how to pick another.
    let agent = SshAgent::start()?;
    agent.add(&mallory)?;
    agent.add(&alice)?;
    let socket = agent.socket().display().to_string();
    let through_agent = [("SSH_AUTH_SOCK", socket.as_str()), ("BATON_ACTOR", "alice")];
    let first = baton_with(&url, &["whoami"], &through_agent);
    assert_eq!(first.code, Some(4), "{}{}", first.stdout, first.stderr);
    assert!(
        first.stdout.contains("the first of the 2 keys") && first.stdout.contains("--key-fingerprint"),
        "{}",
        first.stdout
    );
    let fingerprint = alice.signer().fingerprint();
    let picked = baton_with(&url, &["whoami", "--key-fingerprint", &fingerprint], &through_agent);
    assert_eq!(picked.code, Some(0), "{}{}", picked.stdout, picked.stderr);
    assert!(picked.stdout.contains(&fingerprint), "{}", picked.stdout);

    // A run's stored logs (as the step executor stores them: `<run>/<step>.log`).
    let js = async_nats::jetstream::new(async_nats::connect(&url).await?);
    let store = js.get_object_store("baton-logs").await?;
    let mut log: &[u8] = b"running unit tests\nall 3 passed\n";
    store.put("test-cli/unit.log", &mut log).await?;
    let logs = baton(&url, &["logs", "test-cli"]);
    assert_eq!(logs.code, Some(0), "{}", logs.stderr);
    assert!(
        logs.stdout.contains("==> test-cli/unit.log <==") && logs.stdout.contains("all 3 passed"),
        "{}",
        logs.stdout
    );
    let one = baton(&url, &["logs", "test-cli", "--step", "unit"]);
    assert_eq!(one.stdout, "running unit tests\nall 3 passed\n");
    let none = baton(&url, &["logs", "build-nothing"]);
    assert_eq!(none.code, Some(3), "{}", none.stderr);

    // Errors: one line, a fix, non-zero.
    let unknown = baton(&url, &["trace", "no-such-release"]);
    assert_eq!(unknown.code, Some(3));
    assert!(unknown.stderr.contains("baton releases"), "{}", unknown.stderr);
    let flag = baton(&url, &["events", "--type", "service.exploded"]);
    assert_eq!(flag.code, Some(2));
    assert!(
        flag.stderr.contains("service.deployed"),
        "lists the known types: {}",
        flag.stderr
    );
    let away = baton("nats://127.0.0.1:1", &["status"]);
    assert_eq!(away.code, Some(69));
    assert_eq!(away.stderr.lines().count(), 1, "{}", away.stderr);
    assert!(away.stderr.contains("--nats"), "{}", away.stderr);
    let bad = baton(&url, &["promote"]);
    assert_eq!(bad.code, Some(2), "clap usage error");
    let completions = baton(&url, &["completions", "bash"]);
    assert!(completions.stdout.contains("baton"), "completions");

    // A quarantine, and lifting it.
    let bad = signed(&url, d, "alice", &["mark-bad", &release, "--reason", "leaks memory"]);
    assert_eq!(bad.code, Some(0), "{}{}", bad.stdout, bad.stderr);
    let lifted = signed(&url, d, "alice", &["unquarantine", &release, "--reason", "false alarm"]);
    assert_eq!(lifted.code, Some(0), "{}{}", lifted.stdout, lifted.stderr);
    assert!(lifted.stdout.contains("no longer quarantined"), "{}", lifted.stdout);
    let again = signed(&url, d, "alice", &["unquarantine", &release]);
    assert_eq!(again.code, Some(4), "{}", again.stdout);
    assert!(again.stdout.contains("is not quarantined"), "{}", again.stdout);
    stop.cancel();
    Ok(())
}

#[test]
fn policy_show_prints_every_verb_with_who_holds_it_and_why() -> Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("environments.yaml"),
        "environments:\n  - {name: staging, namespace: shop-staging, policy: auto}\n  - name: production\n    namespace: shop-production\n    policy: manual\n    approvals: {users: [alice], groups: [sre]}\n    grants:\n      rollback: {users: [bob]}\ngroups:\n  sre: [carol]\n",
    )?;
    // In a clone of the config repo, the file there; no NATS is needed.
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["policy", "show"])
        .current_dir(dir.path())
        .env("BATON_NATS_URL", "nats://127.0.0.1:1")
        .env("NO_COLOR", "1")
        .output()?;
    let shown = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let row = |env: &str, verb: &str| {
        shown
            .lines()
            .find(|line| line.split_whitespace().take(2).eq([env, verb]))
            .unwrap_or_else(|| panic!("no row {env} {verb} in:\n{shown}"))
            .to_owned()
    };
    for verb in [
        "promote",
        "rollback",
        "pin",
        "unpin",
        "mark-bad",
        "unquarantine",
        "break-glass",
    ] {
        row("staging", verb);
        row("production", verb);
    }
    let rollback = row("production", "rollback");
    assert!(rollback.contains("bob") && rollback.contains("granted"), "{rollback}");
    let promote = row("production", "promote");
    assert!(
        promote.contains("alice, group sre") && promote.contains("default: the environment's approvers"),
        "{promote}"
    );
    assert!(
        row("staging", "pin").contains("everyone in people.yaml"),
        "automatic: everyone"
    );
    assert!(
        row("staging", "mark-bad").contains("default: anyone who may approve in any environment"),
        "{shown}"
    );

    let file = dir.path().join("environments.yaml").display().to_string();
    let json = baton("nats://127.0.0.1:1", &["policy", "show", "--file", &file, "-o", "json"]);
    let rows: Value = serde_json::from_str(&json.stdout).context("-o json is JSON")?;
    assert_eq!(rows.as_array().map(Vec::len), Some(14), "{}", json.stdout);
    assert_eq!(rows[7]["environment"], "production");
    assert_eq!(rows[8]["verb"], "rollback");
    assert_eq!(rows[8]["users"], json!(["bob"]));
    assert_eq!(rows[8]["source"], "granted");

    let missing = baton(
        "nats://127.0.0.1:1",
        &["policy", "show", "--file", "/nonexistent/environments.yaml"],
    );
    assert_eq!(missing.code, Some(2), "{}", missing.stderr);
    assert!(
        missing.stderr.contains("clone of the config repo"),
        "{}",
        missing.stderr
    );
    std::fs::write(dir.path().join("bad.yaml"), "environments:\n  - {name: staging}\n")?;
    let bad = dir.path().join("bad.yaml").display().to_string();
    let invalid = baton("nats://127.0.0.1:1", &["policy", "show", "--file", &bad]);
    assert_eq!(invalid.code, Some(64), "{}", invalid.stderr);
    assert!(
        invalid.stderr.contains("namespace"),
        "names the field: {}",
        invalid.stderr
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baton_up_runs_the_configured_services_in_one_process() -> Result<()> {
    let nats = NatsServer::start()?;
    let dir = tempfile::tempdir()?;
    let empty = baton(&nats.url(), &["up", "--config-dir", &dir.path().display().to_string()]);
    assert_eq!(empty.code, Some(2), "{}", empty.stderr);
    assert!(
        empty.stderr.contains("promoter.yaml"),
        "names the files it looks for: {}",
        empty.stderr
    );

    git(dir.path(), &["init", "-q", "--bare", "-b", "main", "config.git"])?;
    git(dir.path(), &["clone", "-q", "config.git", "seed"])?;
    std::fs::write(
        dir.path().join("seed/environments.yaml"),
        "environments:\n  - {name: staging, namespace: shop-staging, policy: auto}\n",
    )?;
    std::fs::write(dir.path().join("seed/people.yaml"), write_keys(dir.path())?)?;
    git(&dir.path().join("seed"), &["add", "."])?;
    git(&dir.path().join("seed"), &["commit", "-qm", "environments"])?;
    git(&dir.path().join("seed"), &["push", "-q", "origin", "main"])?;
    let configs = dir.path().join("configs");
    std::fs::create_dir_all(&configs)?;
    std::fs::write(
        configs.join("promoter.yaml"),
        format!(
            "http: {{listen: '127.0.0.1:0'}}\nconfig_repo: {{url: 'file://{}'}}\n",
            dir.path().join("config.git").display()
        ),
    )?;
    let mut up = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
        .args([
            "up",
            "--config-dir",
            &configs.display().to_string(),
            "--nats",
            &nats.url(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    // The promoter inside `baton up` answers commands.
    let deadline = Instant::now() + Duration::from_secs(30);
    let answered = loop {
        let run = signed(&nats.url(), dir.path(), "alice", &["mark-bad", "no-such-release"]);
        if run.code == Some(4) {
            break run;
        }
        if Instant::now() >= deadline {
            let _ = up.kill();
            anyhow::bail!("the promoter in `baton up` never answered: {}", run.stderr);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(answered.stdout.contains("unknown release"), "{}", answered.stdout);
    up.kill()?;
    up.wait()?;
    Ok(())
}
