//! The step executor against a real nats-server: live log lines on `baton.logs.<run>.<step>`,
//! whole logs in the object store, clean environments, exit codes, timeouts that kill a step's
//! whole process group, floods of output, secret masking, rlimits, workdirs that try to leave
//! the workspace, and steps that run on while NATS is down.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use baton_kit::fabric::{self, Topology};
use baton_kit::secret::Secret;
use baton_kit::steps::{LogError, LogRef, ResourceLimits, STEP_PATH, StepOutcome, StepRequest, StepRunner, StepStatus};
use baton_schemas::config::JetStreamSettings;
use baton_schemas::pipeline::Step;
use baton_schemas::subjects;
use baton_tests::NatsServer;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tokio::io::AsyncReadExt;

const WAIT: Duration = Duration::from_secs(30);

/// A nats-server with the Baton topology, and a workspace for the steps.
struct Bench {
    server: NatsServer,
    topology: Topology,
    /// A connection of the test's own, for subscribing to live logs.
    client: async_nats::Client,
    workspace: TempDir,
}

impl Bench {
    async fn start() -> Result<Self> {
        let server = NatsServer::start()?;
        let client = async_nats::connect(server.url()).await?;
        let topology = fabric::provision(&client, &JetStreamSettings::default(), Duration::from_secs(3600)).await?;
        Ok(Self {
            server,
            topology,
            client,
            workspace: tempfile::tempdir()?,
        })
    }

    fn runner(&self) -> StepRunner {
        StepRunner::new(&self.topology)
    }

    async fn run(&self, runner: &StepRunner, run_id: &str, step: &Step) -> StepOutcome {
        run_in(runner, run_id, step, self.workspace.path(), &BTreeMap::new(), &[]).await
    }

    /// Subscribes to a step's live log, confirmed by the server before the step starts.
    async fn live(&self, run_id: &str, step: &str) -> Result<async_nats::Subscriber> {
        let subscriber = self.client.subscribe(subjects::log_subject(run_id, step)).await?;
        self.client.flush().await?;
        Ok(subscriber)
    }

    /// The stored log, read back from the object store.
    async fn stored(&self, log: &LogRef) -> Result<Vec<u8>> {
        let mut object = self.topology.logs.get(&log.object).await?;
        let mut bytes = Vec::new();
        object.read_to_end(&mut bytes).await?;
        Ok(bytes)
    }
}

fn step(name: &str, run: &str) -> Step {
    Step {
        name: name.to_owned(),
        run: run.to_owned(),
        env: BTreeMap::new(),
        timeout: WAIT,
        workdir: None,
        network: false,
        limits: Default::default(),
        secrets: Vec::new(),
        image: None,
    }
}

async fn run_in(
    runner: &StepRunner,
    run_id: &str,
    step: &Step,
    workspace: &Path,
    extra_env: &BTreeMap<String, String>,
    secrets: &[Secret],
) -> StepOutcome {
    runner
        .run(StepRequest {
            run_id,
            app: "acme/shop",
            step,
            workspace,
            extra_env,
            secrets,
            secret_env: &BTreeMap::new(),
            limits: None,
        })
        .await
}

/// Collects live lines until `want` arrived (or the wait is over).
async fn live_lines(subscriber: &mut async_nats::Subscriber, want: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while lines.len() < want {
        match tokio::time::timeout_at(deadline, subscriber.next()).await {
            Ok(Some(message)) => lines.push(String::from_utf8_lossy(&message.payload).into_owned()),
            _ => break,
        }
    }
    lines
}

fn log_ref(outcome: &StepOutcome) -> &LogRef {
    match &outcome.log {
        Ok(log) => log,
        Err(e) => panic!("the log was not stored: {e}"),
    }
}

/// Whether a process still runs (a zombie waiting for its reaper does not count).
fn alive(pid: u32) -> bool {
    let signalled = Command::new("kill")
        .args(["-0", &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    });
    signalled && !zombie
}

async fn wait_until_gone(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

fn read_pid(path: &Path) -> Result<u32> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.trim().parse()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passing_step_streams_its_lines_live_and_stores_its_log() -> Result<()> {
    let bench = Bench::start().await?;
    std::fs::create_dir_all(bench.workspace.path().join("app/src"))?;
    let mut compile = step(
        "compile",
        r#"echo "$GREETING from $(basename "$PWD")"; echo "image $BATON_IMAGE"; echo "home $HOME"; echo warning >&2; printf 'a\n\nb\n'"#,
    );
    compile.env.insert("GREETING".into(), "hello".into());
    compile.workdir = Some("app".into());
    let extra = BTreeMap::from([("BATON_IMAGE".to_owned(), "registry.test/shop@sha256:abc".to_owned())]);
    let mut live = bench.live("build-1", "compile").await?;

    let outcome = run_in(
        &bench.runner(),
        "build-1",
        &compile,
        bench.workspace.path(),
        &extra,
        &[],
    )
    .await;

    assert_eq!(outcome.status, StepStatus::Succeeded, "{:?}", outcome.tail);
    let home = bench.workspace.path().canonicalize()?;
    let expected = format!(
        "hello from app\nimage registry.test/shop@sha256:abc\nhome {}\nwarning\na\n\nb\n",
        home.display()
    );
    let expected_lines: Vec<&str> = expected.lines().collect();
    // Live, in order, stdout and stderr interleaved as written.
    assert_eq!(live_lines(&mut live, expected_lines.len()).await, expected_lines);
    // Stored whole, and described by its reference.
    let log = log_ref(&outcome);
    assert_eq!(
        (log.bucket.as_str(), log.object.as_str()),
        ("baton-logs", "build-1/compile.log")
    );
    assert_eq!(String::from_utf8(bench.stored(log).await?)?, expected);
    assert_eq!(
        (log.bytes, log.lines),
        (expected.len() as u64, expected_lines.len() as u64)
    );
    assert_eq!(log.sha256, hex::encode(Sha256::digest(expected.as_bytes())));
    assert_eq!(outcome.tail, expected_lines);
    assert_eq!(outcome.live_skipped, 0);
    let report = outcome.report("compile");
    assert_eq!((report.status.as_str(), report.exit_code), ("succeeded", Some(0)));
    assert_eq!(report.log.map(|l| l.object), Some("build-1/compile.log".to_owned()));
    Ok(())
}

/// Run by [`nothing_leaks_from_the_builder_environment`] in a child process whose environment
/// holds a marker (the test itself cannot set one: `set_var` is `unsafe` in edition 2024).
const MARKER: &str = "BATON_STEPS_TEST_MARKER";

#[test]
fn nothing_leaks_from_the_builder_environment() -> Result<()> {
    let output = Command::new(std::env::current_exe()?)
        .args(["--exact", "env_probe", "--ignored", "--nocapture"])
        .env(MARKER, "leaked-if-you-can-read-this")
        .output()?;
    anyhow::ensure!(
        output.status.success() && String::from_utf8_lossy(&output.stdout).contains("1 passed"),
        "the probe failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

#[tokio::test]
#[ignore = "run by nothing_leaks_from_the_builder_environment, with a marker in its environment"]
async fn env_probe() -> Result<()> {
    assert!(
        std::env::var_os(MARKER).is_some(),
        "run through nothing_leaks_from_the_builder_environment"
    );
    let workspace = tempfile::tempdir()?;
    let mut probe = step("env", "env | sort");
    probe.env.insert("DECLARED".into(), "by the step".into());
    probe.env.insert("OVERRIDDEN".into(), "by the step".into());
    let extra = BTreeMap::from([("OVERRIDDEN".to_owned(), "by the service".to_owned())]);
    let outcome = run_in(&StepRunner::offline(), "run-env", &probe, workspace.path(), &extra, &[]).await;
    assert_eq!(outcome.status, StepStatus::Succeeded, "{:?}", outcome.tail);

    let step_env: BTreeMap<&str, &str> = outcome.tail.iter().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(step_env.get("PATH"), Some(&STEP_PATH));
    let home = workspace.path().canonicalize()?;
    assert_eq!(step_env.get("HOME").copied(), home.to_str());
    assert_eq!(step_env.get("DECLARED"), Some(&"by the step"));
    assert_eq!(step_env.get("OVERRIDDEN"), Some(&"by the service"));
    assert!(!step_env.contains_key(MARKER), "{step_env:?}");
    // Nothing else of the test process either (the shell itself adds PWD).
    for (name, _) in std::env::vars() {
        assert!(
            ["PATH", "HOME", "PWD"].contains(&name.as_str()) || !step_env.contains_key(name.as_str()),
            "{name} leaked into the step"
        );
    }
    let names: Vec<&str> = step_env.keys().copied().collect();
    assert_eq!(names, ["DECLARED", "HOME", "OVERRIDDEN", "PATH", "PWD"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_step_reports_its_exit_code_and_keeps_its_log() -> Result<()> {
    let bench = Bench::start().await?;
    let outcome = bench
        .run(&bench.runner(), "build-2", &step("test", "echo checking; exit 3"))
        .await;
    assert_eq!(
        outcome.status,
        StepStatus::Failed {
            exit_code: Some(3),
            signal: None
        }
    );
    assert_eq!(outcome.tail, ["checking"]);
    assert_eq!(bench.stored(log_ref(&outcome)).await?, b"checking\n");
    let outcome = bench
        .run(&bench.runner(), "build-2", &step("missing", "no-such-command"))
        .await;
    assert_eq!(outcome.status.exit_code(), Some(127));
    assert!(
        outcome.tail[0].contains("no-such-command: not found"),
        "{:?}",
        outcome.tail
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_past_its_timeout_is_killed_with_its_whole_process_group() -> Result<()> {
    let bench = Bench::start().await?;
    let mut hang = step("hang", "sleep 1000 & echo $! > grandchild.pid; echo started; wait");
    hang.timeout = Duration::from_secs(1);

    let outcome = bench.run(&bench.runner(), "build-3", &hang).await;

    assert_eq!(outcome.status, StepStatus::TimedOut);
    assert!(
        outcome.duration >= Duration::from_secs(1) && outcome.duration < Duration::from_secs(5),
        "{:?}",
        outcome.duration
    );
    let grandchild = read_pid(&bench.workspace.path().join("grandchild.pid"))?;
    assert!(
        wait_until_gone(grandchild).await,
        "the background sleep {grandchild} survived"
    );
    assert_eq!(outcome.tail[0], "started");
    assert!(outcome.tail[1].contains("timed out after 1s"), "{:?}", outcome.tail);
    let stored = String::from_utf8(bench.stored(log_ref(&outcome)).await?)?;
    assert!(
        stored.starts_with("started\n") && stored.contains("timed out"),
        "{stored}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_processes_do_not_outlive_a_finished_step() -> Result<()> {
    let bench = Bench::start().await?;
    let started = Instant::now();
    let outcome = bench
        .run(
            &bench.runner(),
            "build-4",
            &step("daemon", "sleep 1000 & echo $! > bg.pid; echo done"),
        )
        .await;
    assert_eq!(outcome.status, StepStatus::Succeeded);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "waited for the background process"
    );
    let background = read_pid(&bench.workspace.path().join("bg.pid"))?;
    assert!(
        wait_until_gone(background).await,
        "the background sleep {background} survived"
    );

    // A process that leaves the group (setsid) cannot hold the step open either: its output is
    // read for a short grace period only.
    let escape = "setsid sh -c 'echo $$ > escaped.pid; exec sleep 20' & \
                  while [ ! -s escaped.pid ]; do sleep 0.01; done; echo done";
    let started = Instant::now();
    let outcome = bench.run(&bench.runner(), "build-4", &step("escape", escape)).await;
    let escaped = read_pid(&bench.workspace.path().join("escaped.pid"))?;
    let _ = Command::new("kill").arg(escaped.to_string()).status();
    assert_eq!(outcome.status, StepStatus::Succeeded);
    assert!(started.elapsed() < Duration::from_secs(6), "{:?}", started.elapsed());
    assert_eq!(outcome.tail.len(), 2, "{:?}", outcome.tail);
    assert_eq!(outcome.tail[0], "done");
    assert!(outcome.tail[1].contains("not captured"), "{:?}", outcome.tail);
    Ok(())
}

/// Peak resident memory of this process (each nextest test runs in its own process).
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_output_is_stored_whole_in_bounded_memory() -> Result<()> {
    const FLOOD: u64 = 50_000_000;
    let bench = Bench::start().await?;
    // A small flood first, so threads, buffers and allocator arenas exist before measuring.
    let warm_up = bench
        .run(&bench.runner(), "build-5", &step("warm-up", "yes | head -c 2000000"))
        .await;
    assert_eq!(warm_up.status, StepStatus::Succeeded);
    // A live subscriber reading along, as a browser tab would (messages are counted, not kept).
    let mut live = bench.live("build-5", "flood").await?;
    let watcher = tokio::spawn(async move {
        let (mut lines, mut notices) = (0_u64, 0_u64);
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(5), live.next()).await {
            lines += 1;
            notices += u64::from(m.payload.starts_with(b"baton: ") && m.payload.ends_with(b"the stored log has them"));
        }
        (lines, notices)
    });
    let before = peak_rss_bytes();

    // This test is about memory and completeness, not speed: a debug build takes about 20 s for
    // the flood on a quiet two-core machine, and longer while other suites run beside it.
    let flood = Step {
        timeout: Duration::from_secs(300),
        ..step("flood", &format!("yes | head -c {FLOOD}"))
    };
    let outcome = bench.run(&bench.runner(), "build-5", &flood).await;
    assert_eq!(outcome.status, StepStatus::Succeeded, "{:?}", outcome.tail);

    // Holding the flood, even as bare bytes, would take 50 MB more.
    if let (Some(before), Some(after)) = (before, peak_rss_bytes()) {
        assert!(
            after - before < FLOOD / 2,
            "peak memory grew by {} bytes",
            after - before
        );
    }
    assert_eq!(outcome.tail, vec!["y"; 50]);
    let log = log_ref(&outcome);
    assert_eq!((log.bytes, log.lines), (FLOOD, FLOOD / 2));
    let block = "y\n".repeat(500_000);
    let mut expected = Sha256::new();
    for _ in 0..FLOOD / block.len() as u64 {
        expected.update(&block);
    }
    let expected = hex::encode(expected.finalize());
    assert_eq!(log.sha256, expected);
    // The stored object is the whole flood: read it back in chunks and hash it.
    let mut object = bench.topology.logs.get(&log.object).await?;
    let (mut stored, mut size, mut chunk) = (Sha256::new(), 0_u64, vec![0_u8; 1 << 20]);
    loop {
        let n = object.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        stored.update(&chunk[..n]);
        size += n as u64;
    }
    assert_eq!((size, hex::encode(stored.finalize())), (FLOOD, expected));
    // The live subscriber got lines, and was told about the ones skipped to keep up.
    let (lines, notices) = watcher.await?;
    assert!(lines > 0);
    assert_eq!(
        outcome.live_skipped > 0,
        notices > 0,
        "{} skipped, {notices} notices",
        outcome.live_skipped
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_masked_live_in_the_stored_log_and_in_the_tail() -> Result<()> {
    const TOKEN: &str = "s3cr3t-T0ken-42";
    let bench = Bench::start().await?;
    let leak = step(
        "leak",
        r#"echo "token is $TOKEN"; echo "twice:$TOKEN,$TOKEN" >&2; echo "short abc stays"; printf '%s\n' "$TOKEN" | rev"#,
    );
    let extra = BTreeMap::from([("TOKEN".to_owned(), TOKEN.to_owned())]);
    let secrets = [
        Secret::new(TOKEN),
        Secret::new("abc"),
        Secret::new(TOKEN.chars().rev().collect::<String>()),
    ];
    let mut live = bench.live("build-6", "leak").await?;

    let outcome = run_in(
        &bench.runner(),
        "build-6",
        &leak,
        bench.workspace.path(),
        &extra,
        &secrets,
    )
    .await;

    assert_eq!(outcome.status, StepStatus::Succeeded, "{:?}", outcome.tail);
    let expected = ["token is ***", "twice:***,***", "short abc stays", "***"];
    assert_eq!(outcome.tail, expected);
    assert_eq!(live_lines(&mut live, expected.len()).await, expected);
    let stored = String::from_utf8(bench.stored(log_ref(&outcome)).await?)?;
    assert_eq!(stored, format!("{}\n", expected.join("\n")));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_limits_are_enforced() -> Result<()> {
    let bench = Bench::start().await?;
    let limits = ResourceLimits {
        cpu_seconds: 1,
        memory_bytes: 64 * 1024 * 1024,
        open_files: 16,
        processes: 0,
        disk_bytes: 0,
    };
    let runner = bench.runner().with_limits(limits);

    let files = "for i in $(seq 1 40); do : > f$i; done; ulimit -n; paste f* > /dev/null";
    let outcome = bench.run(&runner, "build-7", &step("files", files)).await;
    assert_eq!(
        outcome.status,
        StepStatus::Failed {
            exit_code: Some(1),
            signal: None
        },
        "{:?}",
        outcome.tail
    );
    assert_eq!(outcome.tail[0], "16");
    assert!(outcome.tail[1].contains("Too many open files"), "{:?}", outcome.tail);
    // The same step passes under the default limits.
    let outcome = bench.run(&bench.runner(), "build-7", &step("files-ok", files)).await;
    assert_eq!(outcome.status, StepStatus::Succeeded, "{:?}", outcome.tail);

    let started = Instant::now();
    let outcome = bench
        .run(&runner, "build-7", &step("spin", "while :; do :; done"))
        .await;
    assert!(
        matches!(outcome.status, StepStatus::Failed { signal: Some(_), .. }),
        "{:?}",
        outcome.status
    );
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());

    let hog = r#"x=$(head -c 100000000 /dev/zero | tr '\0' a); echo ${#x}"#;
    let outcome = bench.run(&runner, "build-7", &step("hog", hog)).await;
    assert!(matches!(outcome.status, StepStatus::Failed { .. }), "{:?}", outcome);
    // Within the limit, the same kind of step passes.
    let fits = r#"x=$(head -c 1000000 /dev/zero | tr '\0' a); echo ${#x}"#;
    let outcome = bench.run(&runner, "build-7", &step("fits", fits)).await;
    assert_eq!(outcome.status, StepStatus::Succeeded, "{:?}", outcome.tail);
    assert_eq!(outcome.tail, ["1000000"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workdir_outside_the_workspace_is_refused() -> Result<()> {
    let bench = Bench::start().await?;
    let outside = tempfile::tempdir()?;
    std::os::unix::fs::symlink(outside.path(), bench.workspace.path().join("link"))?;
    for workdir in ["../", "sub/../..", "/tmp", "link"] {
        let mut escape = step("escape", "touch escaped");
        escape.workdir = Some(workdir.to_owned());
        let outcome = bench.run(&bench.runner(), "build-8", &escape).await;
        let StepStatus::Error(error) = &outcome.status else {
            panic!("workdir {workdir} was accepted: {outcome:?}");
        };
        assert!(error.to_string().contains("escapes the workspace"), "{error}");
        assert!(outcome.tail[0].contains("escapes the workspace"), "{:?}", outcome.tail);
        assert_eq!(outcome.status.label(), "error");
    }
    assert!(!outside.path().join("escaped").exists());
    let mut missing = step("missing", "true");
    missing.workdir = Some("not-there".into());
    let outcome = bench.run(&bench.runner(), "build-8", &missing).await;
    assert!(matches!(outcome.status, StepStatus::Error(_)), "{outcome:?}");
    // The refusal is in the stored log too, where a developer looks.
    let stored = String::from_utf8(bench.stored(log_ref(&outcome)).await?)?;
    assert!(stored.contains("not-there"), "{stored}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_runs_while_nats_is_down() -> Result<()> {
    let mut bench = Bench::start().await?;
    let runner = bench.runner().with_store_timeout(Duration::from_secs(2));
    tokio::task::block_in_place(|| bench.server.kill())?;

    let started = Instant::now();
    let outcome = bench
        .run(&runner, "build-9", &step("offline", "seq 1 5000; echo still running"))
        .await;

    assert_eq!(outcome.status, StepStatus::Succeeded);
    assert_eq!(outcome.tail.last().map(String::as_str), Some("still running"));
    assert!(matches!(outcome.log, Err(LogError::Store { .. })), "{:?}", outcome.log);
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());

    // Without NATS at all, the same.
    let outcome = bench
        .run(
            &StepRunner::offline(),
            "build-9",
            &step("offline", "echo still running"),
        )
        .await;
    assert_eq!(outcome.status, StepStatus::Succeeded);
    assert_eq!(outcome.log, Err(LogError::NotConfigured));
    tokio::task::block_in_place(|| bench.server.start_again())?;
    Ok(())
}
