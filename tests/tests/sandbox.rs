//! The sandbox executor against real processes: a hostile pipeline probes the service's
//! environment through `/proc`, its config and secret files, NATS and other ports on
//! 127.0.0.1, the cache and another run's workspace, and tries to leave a `setsid` child behind,
//! fork-bomb, hog memory and fill the disk; every probe fails. A control step proves the
//! sandbox still runs real work: it compiles with the host's toolchain, writes its workspace and
//! reads a granted secret, masked in its log. With `network: true` a step reaches the host's
//! other addresses, never its loopback.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use baton_kit::secret::Secret;
use baton_kit::steps::{Executor, ResourceLimits, Sandbox, StepOutcome, StepRequest, StepRunner, StepStatus};
use baton_schemas::pipeline::Step;
use baton_tests::NatsServer;
use tempfile::TempDir;

/// What the service holds that a step must never see.
const SECRET: &str = "hunter2-the-service-password";

/// A service's surroundings: its "config" and "secret" files, its cache with a workspace of
/// another run, the workspace of this run, and a process of the service's carrying a secret in
/// its environment.
struct Host {
    root: TempDir,
    workspace: PathBuf,
    service: std::process::Child,
}

impl Host {
    fn new() -> Result<Self> {
        let root = tempfile::tempdir()?;
        let base = root.path();
        std::fs::create_dir_all(base.join("etc-baton"))?;
        std::fs::write(base.join("etc-baton/builder.yaml"), format!("password: {SECRET}\n"))?;
        std::fs::write(base.join("etc-baton/registry-token"), SECRET)?;
        std::fs::create_dir_all(base.join("cache/workspaces/other-run"))?;
        std::fs::write(base.join("cache/workspaces/other-run/main.rs"), "fn main() {}\n")?;
        let workspace = base.join("cache/workspaces/this-run");
        std::fs::create_dir_all(&workspace)?;
        std::fs::write(workspace.join("README"), "the checkout\n")?;
        // The "service": a process whose environment holds the secret.
        let service = std::process::Command::new("sleep")
            .arg("600")
            .env("BATON_NATS_PASSWORD", SECRET)
            .spawn()?;
        Ok(Self {
            root,
            workspace,
            service,
        })
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.root.path().join(relative)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.service.kill();
        let _ = self.service.wait();
    }
}

fn sandboxed(limits: ResourceLimits) -> StepRunner {
    StepRunner::offline()
        .with_executor(Executor::Sandbox(Sandbox::new((65534, 65534), Vec::new())))
        .with_limits(limits)
}

fn limits() -> ResourceLimits {
    ResourceLimits {
        cpu_seconds: 60,
        memory_bytes: 512 * 1024 * 1024,
        open_files: 256,
        processes: 64,
        disk_bytes: 32 * 1024 * 1024,
    }
}

fn step(name: &str, run: &str) -> Step {
    Step {
        name: name.to_owned(),
        run: run.to_owned(),
        env: BTreeMap::new(),
        timeout: Duration::from_secs(20),
        workdir: None,
        network: false,
        limits: Default::default(),
        secrets: Vec::new(),
        image: None,
    }
}

async fn run(runner: &StepRunner, host: &Host, step: &Step) -> StepOutcome {
    run_with_secrets(runner, host, step, &BTreeMap::new()).await
}

async fn run_with_secrets(
    runner: &StepRunner,
    host: &Host,
    step: &Step,
    secrets: &BTreeMap<String, Secret>,
) -> StepOutcome {
    runner
        .run(StepRequest {
            run_id: "sandbox-run",
            app: "acme/shop",
            step,
            workspace: &host.workspace,
            extra_env: &BTreeMap::new(),
            secrets: &[],
            secret_env: secrets,
            limits: None,
        })
        .await
}

/// The step's whole output.
fn said(outcome: &StepOutcome) -> String {
    outcome.tail.join("\n")
}

/// A probe must fail (exit non-zero) and must not have printed the secret.
fn refused(what: &str, outcome: &StepOutcome) -> Result<()> {
    ensure!(
        !outcome.status.succeeded(),
        "{what}: the probe succeeded: {}",
        said(outcome)
    );
    ensure!(
        !said(outcome).contains(SECRET),
        "{what}: the secret leaked: {}",
        said(outcome)
    );
    Ok(())
}

/// An address of this host other than loopback (the one its default route leaves from).
fn outside_address() -> Option<std::net::IpAddr> {
    let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// Processes on the host whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let mut cmdline = Vec::new();
        if std::fs::File::open(entry.path().join("cmdline"))
            .and_then(|mut f| f.read_to_end(&mut cmdline))
            .is_ok()
        {
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.contains(marker) {
                found.push(format!("{}: {text}", entry.file_name().to_string_lossy()));
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_step_reaches_nothing_of_the_service() -> Result<()> {
    let host = Host::new()?;
    let nats = NatsServer::start()?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let runner = sandboxed(limits());
    Executor::Sandbox(Sandbox::new((65534, 65534), Vec::new()))
        .check()
        .await
        .context("the sandbox must work on this machine (bubblewrap, slirp4netns, util-linux)")?;

    let service_pid = host.service.id();
    // Each probe with `true` beside it succeeds when run unsandboxed (checked last): it is a
    // real probe, and only the sandbox stops it.
    let probes: Vec<(&str, String, bool)> = vec![
        (
            "the service's environment through /proc",
            format!("cat /proc/*/environ 2>/dev/null | grep -a -q {SECRET}"),
            true,
        ),
        (
            "the service's processes",
            format!("test -e /proc/{service_pid}/cmdline"),
            true,
        ),
        (
            "its config file",
            format!("cat {}", host.path("etc-baton/builder.yaml").display()),
            true,
        ),
        (
            "its secret file",
            format!("cat {}", host.path("etc-baton/registry-token").display()),
            true,
        ),
        (
            "the host's /etc beyond what programs need",
            "cat /etc/hostname".to_owned(),
            true,
        ),
        (
            "NATS on 127.0.0.1",
            format!(
                "python3 -c \"import socket; socket.create_connection(('127.0.0.1', {}), 2)\"",
                nats.port()
            ),
            true,
        ),
        (
            "another port on 127.0.0.1",
            format!(
                "python3 -c \"import socket; socket.create_connection(('127.0.0.1', {}), 2)\"",
                listener.local_addr()?.port()
            ),
            true,
        ),
        (
            "a write into the cache",
            format!("echo pwned > {}", host.path("cache/pwned").display()),
            true,
        ),
        (
            "a write into another run's workspace",
            format!(
                "echo pwned >> {}",
                host.path("cache/workspaces/other-run/main.rs").display()
            ),
            true,
        ),
        (
            "the parent of the workspace",
            "ls ../ | grep -q other-run".to_owned(),
            true,
        ),
        (
            "a write outside the workspace and /tmp",
            "echo pwned > /pwned || echo pwned > /usr/pwned || echo pwned > /etc/pwned".to_owned(),
            false,
        ),
    ];
    for (what, probe, _) in &probes {
        let outcome = run(&runner, &host, &step("probe", probe)).await;
        refused(what, &outcome)?;
    }
    ensure!(!host.path("cache/pwned").exists(), "the cache was written");
    ensure!(
        std::fs::read_to_string(host.path("cache/workspaces/other-run/main.rs"))? == "fn main() {}\n",
        "another run's workspace was changed"
    );
    let unsandboxed = StepRunner::offline().with_limits(limits());
    for (what, probe, _) in probes.iter().filter(|(_, _, control)| *control) {
        let outcome = run(&unsandboxed, &host, &step("control", probe)).await;
        ensure!(
            outcome.status.succeeded(),
            "{what}: the probe does not work even unsandboxed: {}",
            said(&outcome)
        );
    }
    // The step sees its own processes only.
    let outcome = run(&runner, &host, &step("ps", "ls /proc | grep -c '^[0-9]'")).await;
    ensure!(outcome.status.succeeded(), "{}", said(&outcome));
    let count: u32 = outcome.tail.first().context("a count")?.trim().parse()?;
    ensure!(count < 8, "the step sees {count} processes");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_a_step_starts_outlives_it_and_its_limits_hold() -> Result<()> {
    let host = Host::new()?;
    let runner = sandboxed(limits());

    // A setsid (and double-forked) child left behind.
    let marker = "31415926";
    let outcome = run(
        &runner,
        &host,
        &step(
            "leave",
            &format!("setsid sleep {marker} & (sh -c 'sleep {marker}1 &' &); sleep 0.2; echo left"),
        ),
    )
    .await;
    ensure!(outcome.status.succeeded(), "{}", said(&outcome));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !processes_with(marker).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(
        processes_with(marker).is_empty(),
        "left behind: {:?}",
        processes_with(marker)
    );

    // A fork bomb: bounded by its processes, ended with the step; the service still forks.
    let started = Instant::now();
    let bomb = run(&runner, &host, &step("bomb", "b() { b | b & }; b; sleep 2")).await;
    ensure!(
        started.elapsed() < Duration::from_secs(30),
        "the bomb ran {:?}",
        started.elapsed()
    );
    ensure!(
        std::process::Command::new("true").status()?.success(),
        "the service cannot start processes after the bomb ({bomb:?})"
    );

    // A memory hog fails, and the service is unharmed.
    let hog = run(
        &runner,
        &host,
        &step(
            "hog",
            "python3 -c \"x = bytearray(2 * 1024 * 1024 * 1024); print(len(x))\"",
        ),
    )
    .await;
    ensure!(!hog.status.succeeded(), "the hog got its memory: {}", said(&hog));
    ensure!(said(&hog).contains("MemoryError"), "{}", said(&hog));
    ensure!(
        said(&hog).contains("reached its limit memory_bytes"),
        "the limit is named: {}",
        said(&hog)
    );

    // A disk filler: one big file stops at the limit, many files are stopped by the watch.
    let one = run(&runner, &host, &step("fill-one", "head -c 100000000 /dev/zero > big")).await;
    ensure!(!one.status.succeeded(), "one big file: {}", said(&one));
    let many = run(
        &runner,
        &host,
        &step(
            "fill-many",
            "i=0; while [ $i -lt 400 ]; do head -c 1000000 /dev/zero > f$i || exit 1; i=$((i+1)); sleep 0.01; done",
        ),
    )
    .await;
    ensure!(
        matches!(
            many.status,
            StepStatus::LimitExceeded {
                limit: "disk_bytes",
                ..
            }
        ),
        "{:?}: {}",
        many.status,
        said(&many)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandboxed_step_still_does_real_work() -> Result<()> {
    let host = Host::new()?;
    let runner = sandboxed(limits());
    let secrets = BTreeMap::from([("API_TOKEN".to_owned(), Secret::new("s3cr3t-t0ken-value"))]);
    let control = "printf 'int main(void) { return 42; }\\n' > m.c && cc m.c -o m && { ./m; echo exit $?; } \
                   && echo built > out.txt && test \"$API_TOKEN\" = s3cr3t-t0ken-value && echo \"token $API_TOKEN\" \
                   && echo home $HOME && id -u";
    let outcome = run_with_secrets(&runner, &host, &step("control", control), &secrets).await;
    ensure!(outcome.status.succeeded(), "{:?}: {}", outcome.status, said(&outcome));
    ensure!(outcome.tail.iter().any(|l| l == "exit 42"), "{}", said(&outcome));
    ensure!(
        outcome.tail.iter().any(|l| l == "token ***"),
        "masked: {}",
        said(&outcome)
    );
    ensure!(
        outcome.tail.iter().any(|l| l == "home /workspace"),
        "{}",
        said(&outcome)
    );
    ensure!(
        outcome.tail.last().map(String::as_str) == Some("65534"),
        "{}",
        said(&outcome)
    );
    ensure!(std::fs::read_to_string(host.workspace.join("out.txt"))? == "built\n");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_network_a_step_reaches_out_but_never_the_hosts_loopback() -> Result<()> {
    let host = Host::new()?;
    let runner = sandboxed(limits());
    let loopback = TcpListener::bind("127.0.0.1:0")?;
    let connect = |address: &str, port: u16| {
        format!("python3 -c \"import socket; socket.create_connection(('{address}', {port}), 3); print('connected')\"")
    };
    let mut networked = step("net", "");
    networked.network = true;
    for address in ["127.0.0.1", "10.0.2.2"] {
        networked.run = connect(address, loopback.local_addr()?.port());
        let outcome = run(&runner, &host, &networked).await;
        refused(&format!("the host's loopback as {address}"), &outcome)?;
    }
    // Without network, nothing at all: not even the host's other addresses.
    let outside = outside_address().context("this host has no address but loopback")?;
    let reachable = TcpListener::bind((outside, 0))?;
    let port = reachable.local_addr()?.port();
    let offline = run(&runner, &host, &step("offline", &connect(&outside.to_string(), port))).await;
    refused("the network without `network: true`", &offline)?;
    // With it, the step reaches out.
    networked.run = connect(&outside.to_string(), port);
    let online = run(&runner, &host, &networked).await;
    ensure!(online.status.succeeded(), "{:?}: {}", online.status, said(&online));
    ensure!(said(&online).contains("connected"));
    Ok(())
}

/// The sandbox needs nothing of the workspace's path: a path the step's user cannot traverse
/// (the service's home, mode 700) still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_under_a_private_directory_is_usable() -> Result<()> {
    let private = tempfile::tempdir()?;
    std::fs::set_permissions(private.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let workspace: &Path = &private.path().join("ws");
    std::fs::create_dir_all(workspace)?;
    let runner = sandboxed(limits());
    let outcome = runner
        .run(StepRequest {
            run_id: "private",
            app: "acme/shop",
            step: &step("write", "echo ok > written && cat written"),
            workspace,
            extra_env: &BTreeMap::new(),
            secrets: &[],
            secret_env: &BTreeMap::new(),
            limits: None,
        })
        .await;
    ensure!(outcome.status.succeeded(), "{:?}: {}", outcome.status, said(&outcome));
    ensure!(std::fs::read_to_string(workspace.join("written"))? == "ok\n");
    Ok(())
}
