//! The `baton` binary against a real nats-server with a real promoter, config repo and app repo:
//! a release is created and promoted to staging, and the CLI shows it in the event log, its
//! trace, the app's releases and the status, sends signed commands (an approval refused with the
//! reason, exit 4; a pin; a quarantine and its lifting) and asks the promoter who it sees
//! (`whoami`); a command without a key never leaves, and one signed by a key people.yaml does not
//! list is refused with how to add it; `policy show` prints every verb's holders and where that
//! comes from; unreachable NATS, an unknown release and invalid flags are one-line errors with a
//! fix and a non-zero exit. `baton dora` prints the DORA figures computed by hand for a fixture
//! history published into the stream.

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

/// The test run of the suite's release: `baton events` shows it as `test-5cc719e8`.
const RUN: &str = "test-5cc719e8-2b0f-5d3e-9a41-0c6f1e2d3b4a";
/// The suite's release: `baton events` shows it as `11111111`.
const RELEASE: &str = "11111111-2222-3333-4444-555555555555";
/// A well-formed release id nobody created.
const NOBODYS_RELEASE: &str = "0badf00d-0000-5000-8000-000000000000";

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

/// The tester's `testsuiterun.finished` of `run` for `sha` of the app repo at `app`, in release
/// `release`.
fn tests_finished(
    release: &str,
    run: &str,
    outcome: Outcome,
    sha: &str,
    app: &Path,
    image: Option<ImageInfo>,
) -> Result<CdEvent> {
    let data = TestData {
        app: "acme/shop".into(),
        commit: sha.to_owned(),
        repository: format!("file://{}", app.display()),
        image,
        run: run.into(),
        outcome: Some(outcome),
        reason: None,
        no_tests_declared: false,
        counts: TestCounts::default(),
        failed_cases: vec![],
        steps: vec![],
        pushed_by: None,
    };
    Ok(CdEvent::new(
        EventType::TestSuiteRunFinished,
        format!("finished-{run}"),
        "/baton/tester",
        format!("acme/shop@{sha}"),
        json!({"environment": {"id": "baton-tester"}, "testSuite": {"id": "s"}, "outcome": outcome}),
    )?
    .with_chain_id(release)
    .with_custom_data(data)?)
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
    let release = RELEASE.to_owned();
    let event = tests_finished(&release, RUN, Outcome::Success, &sha, &app, Some(image))?;
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
        trace.stdout.contains(&format!("release {release} of acme/shop")),
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
    store.put(format!("{RUN}/unit.log").as_str(), &mut log).await?;
    let logs = baton(&url, &["logs", RUN]);
    assert_eq!(logs.code, Some(0), "{}", logs.stderr);
    assert!(
        logs.stdout.contains(&format!("==> {RUN}/unit.log <==")) && logs.stdout.contains("all 3 passed"),
        "{}",
        logs.stdout
    );
    // The short run id `baton events` shows is taken as it is.
    let one = baton(&url, &["logs", "test-5cc719e8", "--step", "unit"]);
    assert_eq!(one.stdout, "running unit tests\nall 3 passed\n");
    let none = baton(&url, &["logs", "build-0badf00d"]);
    assert_eq!(none.code, Some(3), "{}", none.stderr);
    let malformed = baton(&url, &["logs", "build-nothing"]);
    assert_eq!(malformed.code, Some(2), "{}", malformed.stderr);
    assert!(
        malformed.stderr.contains("build- or test- and a UUID"),
        "{}",
        malformed.stderr
    );

    // Errors: one line, a fix, non-zero.
    let unknown = baton(&url, &["trace", NOBODYS_RELEASE]);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_are_taken_by_a_unique_prefix_checked_before_sending_and_refusals_printed_once() -> Result<()> {
    let nats = NatsServer::start()?;
    let dir = tempfile::tempdir()?;
    let (release, stop) = released(&nats, dir.path()).await?;
    let (url, d) = (nats.url(), dir.path());
    let rejected = || -> Result<Vec<Value>> {
        let out = baton(&url, &["events", "--type", "baton-command.rejected", "-o", "json"]);
        let all: Value = serde_json::from_str(&out.stdout).context("-o json is JSON")?;
        Ok(all.as_array().cloned().unwrap_or_default())
    };

    // The human log shows the run id, and the 8 characters of the release it shows are taken
    // back by `trace` and by a signed command, which carries the whole id.
    let events = baton(&url, &["events", "--app", "acme/shop"]);
    assert!(events.stdout.contains("(run test-5cc719e8)"), "{}", events.stdout);
    assert!(events.stdout.contains("11111111 "), "{}", events.stdout);
    let trace = baton(&url, &["trace", "11111111"]);
    assert_eq!(trace.code, Some(0), "{}", trace.stderr);
    assert!(
        trace.stdout.contains(&format!("release {release} of")),
        "{}",
        trace.stdout
    );
    let approve = signed(&url, d, "carol", &["approve", "11111111", "--env", "production"]);
    assert_eq!(approve.code, Some(4), "{}{}", approve.stdout, approve.stderr);
    assert!(!approve.stdout.contains("unknown release"), "{}", approve.stdout);
    // The refusal is printed once, on stdout; nothing repeats it on stderr.
    assert_eq!(approve.stdout.matches("refused").count(), 1, "{}", approve.stdout);
    assert_eq!(approve.stderr, "", "printed once");
    let recorded = rejected()?;
    let [refusal] = recorded.as_slice() else {
        anyhow::bail!("one refusal: {recorded:?}");
    };
    assert_eq!(
        refusal["event"]["customData"]["release"],
        release.as_str(),
        "signed in full"
    );
    assert_eq!(refusal["app"], "acme_shop", "filed under the release's app");

    // A prefix of two releases is refused naming both; nothing is sent.
    let sha = git(&d.join("app"), &["rev-parse", "HEAD"])?;
    let twin = "11111111-aaaa-5aaa-8aaa-aaaaaaaaaaaa";
    let failed = tests_finished(
        twin,
        "test-0badf00d-0000-5000-8000-000000000000",
        Outcome::Failure,
        &sha,
        &d.join("app"),
        None,
    )?;
    let js = async_nats::jetstream::new(async_nats::connect(&url).await?);
    events::publish(&js, &Outgoing::new("acme/shop", failed)).await?;
    let ambiguous = baton(&url, &["trace", "1111"]);
    assert_eq!(ambiguous.code, Some(2), "{}", ambiguous.stderr);
    assert!(
        ambiguous.stderr.contains(&release) && ambiguous.stderr.contains(twin),
        "names the candidates: {}",
        ambiguous.stderr
    );
    // Only created releases are candidates for a command: the twin never was one.
    let mark = signed(&url, d, "alice", &["mark-bad", "1111", "--reason", "by prefix"]);
    assert_eq!(mark.code, Some(0), "{}{}", mark.stdout, mark.stderr);
    let nothing = signed(&url, d, "alice", &["unquarantine", "ffff"]);
    assert_eq!(nothing.code, Some(3), "{}", nothing.stderr);
    assert!(nothing.stderr.contains("baton releases"), "{}", nothing.stderr);

    // A malformed id never leaves: refused before NATS is even reached, saying what an id is.
    for (args, sends) in [
        (&["approve", "5cc"][..], true),
        (&["promote", "no-such-release", "staging"], true),
        (&["rollback", "acme/shop", "staging", "--release", "v1.2"], true),
        (&["trace", "no-such-release"], false),
        (&["logs", "5cc719e8"], false),
    ] {
        let away = if sends {
            signed("nats://127.0.0.1:1", d, "alice", args)
        } else {
            baton("nats://127.0.0.1:1", args)
        };
        assert_eq!(away.code, Some(2), "{args:?}: {}", away.stderr);
        assert!(away.stderr.contains("UUID"), "{args:?}: {}", away.stderr);
    }
    assert_eq!(rejected()?.len(), 1, "nothing more was recorded");

    // A release nobody created: the promoter refuses it, recorded under no app.
    let unknown = signed(&url, d, "alice", &["mark-bad", NOBODYS_RELEASE]);
    assert_eq!(unknown.code, Some(4), "{}{}", unknown.stdout, unknown.stderr);
    assert!(unknown.stdout.contains("unknown release"), "{}", unknown.stdout);
    let recorded = rejected()?;
    assert_eq!(recorded.len(), 2, "{recorded:?}");
    assert_eq!(recorded[1]["app"], baton_schemas::subjects::NO_APP);
    let human = baton(&url, &["events", "--type", "baton-command.rejected"]);
    assert!(
        human.stdout.contains(&format!(
            "mark-bad by alice refused: unknown release `{NOBODYS_RELEASE}`"
        )),
        "{}",
        human.stdout
    );
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
        let run = signed(&nats.url(), dir.path(), "alice", &["mark-bad", NOBODYS_RELEASE]);
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

/// A time of the fixture: (day of March, hour, minute).
type At = (i64, i64, i64);

/// The DORA fixture history of `baton_kit::dora`'s unit tests for `acme/shop` (see the table
/// there), published as Baton's services publish it, with "Mar 1 00:00" at `anchor`.
struct DoraHistory {
    js: async_nats::jetstream::Context,
    anchor: chrono::DateTime<chrono::Utc>,
    image: ImageInfo,
    promotions: u32,
}

impl DoraHistory {
    /// Day `day` of the fixture's March at `hour:minute` (day 1 is the anchor; 0 and below are
    /// February's last days).
    fn mar(&self, day: i64, hour: i64, minute: i64) -> chrono::DateTime<chrono::Utc> {
        self.anchor
            + chrono::TimeDelta::days(day - 1)
            + chrono::TimeDelta::hours(hour)
            + chrono::TimeDelta::minutes(minute)
    }

    async fn publish(&self, mut outgoing: Outgoing, at: chrono::DateTime<chrono::Utc>) -> Result<()> {
        outgoing.event.context.timestamp = at;
        events::publish(&self.js, &outgoing).await?;
        Ok(())
    }

    /// The push of `release`, its one commit made at `commit` (`None`: no time given).
    async fn push(&self, release: &str, at: At, commit: Option<At>) -> Result<()> {
        let sha = format!("{:0>40}", release.trim_start_matches('r'));
        let push = baton_tests::push::Push {
            app: "acme/shop",
            clone_url: "file:///nowhere",
            commit: &sha,
            delivery: release,
        };
        let mut outgoing = push.event()?;
        if let Some((d, h, m)) = commit
            && let Some(data) = outgoing.event.custom_data.as_mut()
        {
            let time = json!(self.mar(d, h, m).to_rfc3339());
            data["commits"][0]["timestamp"] = time.clone();
            data["headCommit"]["timestamp"] = time;
        }
        self.publish(outgoing, self.mar(at.0, at.1, at.2)).await
    }

    /// The promoter moving `environment` to `release` (`release-<name>`), then the deployer's
    /// report on it (healthy unless `failure`) at `reported`, if any.
    async fn promotion(
        &mut self,
        environment: &str,
        release: &str,
        action: baton_schemas::release::PromotionAction,
        at: At,
        reported: Option<(At, Option<&str>)>,
    ) -> Result<()> {
        self.promotions += 1;
        let data = baton_tests::promotion::Promotion {
            app: "acme/shop",
            environment,
            namespace: environment,
            promotion: format!("dora-{}", self.promotions),
            release: format!("release-{release}"),
            image: &self.image,
            action,
            config_repository: "file:///config".into(),
            config_commit: &"c".repeat(40),
            manifests_path: format!("{environment}/acme_shop"),
            actor: "baton-promoter",
        }
        .data();
        let modified = baton_tests::promotion::event(&data, &format!("modified-{}", self.promotions))?;
        self.publish(modified, self.mar(at.0, at.1, at.2)).await?;
        if let Some(((d, h, m), failure)) = reported {
            let report = baton_tests::deployment::report(&data, failure)?;
            self.publish(report, self.mar(d, h, m)).await?;
        }
        Ok(())
    }

    async fn quarantined(&self, release: &str, at: At) -> Result<()> {
        let release = format!("release-{release}");
        let content = baton_schemas::extensions::ReleaseQuarantinedContent {
            app: "acme/shop".into(),
            actor: "baton-promoter".into(),
            reason: "rollout in `production` failed".into(),
        };
        let event = CdEvent::new(
            EventType::ReleaseQuarantined,
            format!("quarantined-{release}"),
            "/baton/promoter",
            release.clone(),
            content,
        )?
        .with_chain_id(&release);
        self.publish(Outgoing::new("acme/shop", event), self.mar(at.0, at.1, at.2))
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dora_prints_the_figures_computed_by_hand_for_the_fixture_history() -> Result<()> {
    use baton_kit::dora::DoraReport;
    use baton_schemas::release::PromotionAction::{Promote, Rollback};
    use chrono::SubsecRound as _;

    let nats = NatsServer::start()?;
    let url = nats.url();
    let provisioned = baton(&url, &["admin", "provision"]);
    assert_eq!(provisioned.code, Some(0), "{}", provisioned.stderr);
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(b"dora")));
    let mut h = DoraHistory {
        js: async_nats::jetstream::new(async_nats::connect(&url).await?),
        // The window `--window 10d` ends when the CLI runs, a moment after now: the fixture's
        // window [Mar 1, Mar 11) starts here, and its first event inside comes 10 hours later.
        anchor: chrono::Utc::now().trunc_subsecs(0) - chrono::TimeDelta::days(10),
        image: ImageInfo {
            registry: "127.0.0.1:5000".into(),
            repository: "baton/acme_shop".into(),
            tag: "dora".into(),
            digest: digest.clone(),
            reference: format!("127.0.0.1:5000/baton/acme_shop@{digest}"),
            purl: format!("pkg:oci/acme_shop@{}", digest.replace(':', "%3A")),
            uploaded_bytes: 0,
        },
        promotions: 0,
    };
    let failed = Some("CrashLoopBackOff");
    // r1: healthy in staging before the window; its first production rollout fails (nothing
    // ran there yet), and it is quarantined while staging runs it.
    h.push("r1", (-1, 8, 0), Some((-1, 7, 0))).await?;
    h.promotion("staging", "r1", Promote, (-1, 9, 0), Some(((-1, 9, 10), None)))
        .await?;
    h.promotion("production", "r1", Promote, (1, 10, 0), Some(((1, 10, 20), failed)))
        .await?;
    h.quarantined("r1", (1, 10, 21)).await?;
    // r2: healthy everywhere.
    h.push("r2", (2, 11, 0), Some((2, 10, 0))).await?;
    h.promotion("staging", "r2", Promote, (2, 12, 0), Some(((2, 12, 30), None)))
        .await?;
    h.promotion("production", "r2", Promote, (2, 14, 0), Some(((2, 14, 30), None)))
        .await?;
    // r3: deployed twice in staging (a second promotion of it), rolled back from production.
    h.push("r3", (4, 9, 0), Some((4, 8, 0))).await?;
    h.promotion("staging", "r3", Promote, (4, 9, 30), Some(((4, 10, 0), None)))
        .await?;
    h.promotion("staging", "r3", Promote, (4, 10, 2), Some(((4, 10, 5), None)))
        .await?;
    h.promotion("production", "r3", Promote, (4, 11, 0), Some(((4, 12, 0), None)))
        .await?;
    h.promotion("production", "r2", Rollback, (5, 9, 0), Some(((5, 9, 15), None)))
        .await?;
    // r4: no commit time; fails in production, quarantined while staging runs it, rolled back.
    h.push("r4", (7, 8, 0), None).await?;
    h.promotion("staging", "r4", Promote, (7, 8, 30), Some(((7, 9, 0), None)))
        .await?;
    h.promotion("production", "r4", Promote, (7, 10, 0), Some(((7, 10, 30), failed)))
        .await?;
    h.quarantined("r4", (7, 10, 31)).await?;
    h.promotion("production", "r2", Rollback, (7, 10, 32), Some(((7, 10, 40), None)))
        .await?;
    // r5: healthy inside the window, rolled back from production after it.
    h.push("r5", (8, 12, 0), Some((8, 11, 0))).await?;
    h.promotion("staging", "r5", Promote, (8, 13, 0), Some(((8, 13, 20), None)))
        .await?;
    h.promotion("production", "r5", Promote, (10, 20, 0), Some(((10, 22, 0), None)))
        .await?;
    h.promotion("production", "r2", Rollback, (11, 9, 0), Some(((11, 9, 30), None)))
        .await?;

    // The figures computed by hand in baton_kit::dora's tests.
    let json = baton(
        &url,
        &["dora", "acme/shop", "--window", "10d", "--bucket", "5d", "-o", "json"],
    );
    assert_eq!(json.code, Some(0), "{}", json.stderr);
    let reports: Vec<DoraReport> = serde_json::from_str(&json.stdout).context("-o json is the reports")?;
    let [production, staging] = reports.as_slice() else {
        anyhow::bail!("one report per environment: {}", json.stdout);
    };
    assert_eq!(
        (production.environment.as_str(), staging.environment.as_str()),
        ("production", "staging")
    );
    let figures = |r: &DoraReport| {
        (
            r.deployments,
            r.lead_time_seconds,
            r.failed_changes,
            r.changes,
            r.change_failure_rate,
            r.restores,
            r.time_to_restore_seconds,
        )
    };
    assert_eq!(
        figures(production),
        (3, Some(16_200.0), 4, 5, Some(0.8), 2, Some(750.0))
    );
    assert_eq!(
        figures(staging),
        (4, Some(7_800.0), 1, 4, Some(0.25), 2, Some(95_340.0))
    );
    for (report, per_day) in [(production, 0.3), (staging, 0.4)] {
        assert!((report.deployments_per_day - per_day).abs() < 1e-9, "{report:?}");
    }
    let series = |r: &DoraReport| -> Vec<_> {
        r.series
            .iter()
            .map(|b| {
                (
                    b.deployments,
                    b.lead_time_seconds,
                    b.change_failure_rate,
                    b.time_to_restore_seconds,
                )
            })
            .collect()
    };
    assert_eq!(
        series(production),
        [
            (2, Some(15_300.0), Some(2.0 / 3.0), Some(900.0)),
            (1, Some(212_400.0), Some(1.0), Some(600.0))
        ]
    );
    assert_eq!(
        series(staging),
        [
            (2, Some(8_100.0), Some(0.0), Some(94_140.0)),
            (2, Some(6_000.0), Some(0.5), Some(96_540.0))
        ]
    );

    // For people: a row per environment, durations in words.
    let human = baton(&url, &["dora", "acme/shop", "--window", "10d"]);
    assert_eq!(human.code, Some(0), "{}", human.stderr);
    let row = |env: &str| {
        human
            .stdout
            .lines()
            .find(|l| l.starts_with(env))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    for cell in ["3", "0.30", "4h 30m", "80% (4 of 5)", "12m 30s (2 restores)"] {
        assert!(row("production").contains(cell), "`{cell}` in:\n{}", human.stdout);
    }
    for cell in ["4", "0.40", "2h 10m", "25% (1 of 4)", "1d 2h 29m (2 restores)"] {
        assert!(row("staging").contains(cell), "`{cell}` in:\n{}", human.stdout);
    }
    assert!(human.stdout.starts_with("acme/shop from "), "{}", human.stdout);
    let yaml = baton(&url, &["dora", "acme/shop", "--environment", "staging", "-o", "yaml"]);
    assert!(yaml.stdout.contains("environment: staging"), "{}", yaml.stdout);
    assert!(!yaml.stdout.contains("environment: production"), "{}", yaml.stdout);

    // Nothing in the last hour: no data, not zero.
    let quiet = baton(
        &url,
        &["dora", "acme/shop", "--environment", "production", "--window", "1h"],
    );
    assert_eq!(quiet.code, Some(0), "{}", quiet.stderr);
    assert_eq!(quiet.stdout.matches("no data").count(), 3, "{}", quiet.stdout);

    // Errors: an unknown app or environment is not found, saying where to look; a bad window
    // is a usage error naming the flag.
    let unknown = baton(&url, &["dora", "acme/nothing"]);
    assert_eq!(unknown.code, Some(3), "{}", unknown.stderr);
    assert!(unknown.stderr.contains("baton status"), "{}", unknown.stderr);
    let nowhere = baton(&url, &["dora", "acme/shop", "--environment", "qa"]);
    assert_eq!(nowhere.code, Some(3), "{}", nowhere.stderr);
    assert!(nowhere.stderr.contains("production, staging"), "{}", nowhere.stderr);
    for window in ["soon", "0s"] {
        let bad = baton(&url, &["dora", "acme/shop", "--window", window]);
        assert_eq!(bad.code, Some(2), "{}", bad.stderr);
        assert!(bad.stderr.contains("--window"), "{}", bad.stderr);
    }
    Ok(())
}
