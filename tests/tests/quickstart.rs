//! The quickstart suite (`tests/tests/quickstart.rs`): `docs/quickstart.md` run as written, so
//! the page cannot rot. Its fenced `sh` blocks are executed in order, verbatim, the way a
//! newcomer runs them: consecutive blocks in one fresh shell (a terminal) starting in `$HOME`,
//! a block marked `sh keeps-running` (`just dev ~/src/myapp`) in a shell of its own in the Baton
//! checkout, left running until the suite ends. `HOME`, `TMPDIR` and `USER` are a new temporary
//! home, directory and `alice`; what `just setup` installed under the real home (cargo, rustup,
//! pyenv, pip's user base, the Kubernetes and tool caches) stays reachable, as it would for the
//! user. The suite then asserts what the page promises, against the platform's own servers:
//! the app's release healthy in production (`service.deployed` or `service.upgraded`), the config
//! repo's `environments.yaml` exactly as the page shows it, a bare signature from the signing
//! one-liner, and the listener accepting the webhook it signed. It prints the machine time from
//! the empty home to the healthy production rollout (BENCHMARKS.md records it).

#![allow(clippy::print_stderr, reason = "the suite reports the quickstart's machine time")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail, ensure};
use baton_schemas::EventType;

/// The page.
const PAGE: &str = include_str!("../../docs/quickstart.md");
/// What `just dev` prints once every service runs; the page tells the reader to wait for it.
const READY: &str = "baton up: 7 service(s) running";
/// The user the page's `environments.yaml` names (the test's `$USER`).
const USER: &str = "alice";
/// The app: `~/src/myapp`, named after its directory.
const APP: &str = "myapp";
/// How long `just dev` may take to start (a cold `cargo build` of the demo crate included).
const START_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a terminal's blocks may run.
const TERMINAL_TIMEOUT: Duration = Duration::from_secs(240);
/// The block the machine time ends with: the approval, after which production is healthy.
const PRODUCTION_BLOCK: &str = "baton approve";

/// A fenced block of the page.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Block {
    /// The info string's words after the language (`keeps-running`).
    language: String,
    flags: Vec<String>,
    text: String,
}

impl Block {
    fn runs(&self) -> bool {
        self.language == "sh"
    }

    fn keeps_running(&self) -> bool {
        self.flags.iter().any(|flag| flag == "keeps-running")
    }
}

/// Every fenced block of `page`, in order; indented fences (inside list items) included, their
/// indentation removed.
fn blocks(page: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<(usize, Block)> = None;
    for line in page.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match open.as_mut() {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    let mut words = info.split_whitespace().map(str::to_owned);
                    let language = words.next().unwrap_or_default();
                    open = Some((
                        indent,
                        Block {
                            language,
                            flags: words.collect(),
                            text: String::new(),
                        },
                    ));
                }
            }
            Some((fence_indent, block)) => {
                if trimmed == "```" {
                    out.extend(open.take().map(|(_, block)| block));
                } else {
                    block.text.push_str(line.get(*fence_indent..).unwrap_or(trimmed));
                    block.text.push('\n');
                }
            }
        }
    }
    out
}

/// The runnable blocks grouped as the reader runs them: each group is one terminal.
#[derive(Debug)]
enum Terminal {
    /// Blocks run one after another in one shell starting in `$HOME`.
    Shell(Vec<Block>),
    /// A block started in the Baton checkout and left running.
    KeepsRunning(Block),
}

fn terminals(blocks: &[Block]) -> Vec<Terminal> {
    let mut out: Vec<Terminal> = Vec::new();
    for block in blocks.iter().filter(|block| block.runs()) {
        if block.keeps_running() {
            out.push(Terminal::KeepsRunning(block.clone()));
        } else if let Some(Terminal::Shell(shell)) = out.last_mut() {
            shell.push(block.clone());
        } else {
            out.push(Terminal::Shell(vec![block.clone()]));
        }
    }
    out
}

/// Milliseconds since the epoch, as `date +%s%3N` prints them.
fn epoch_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|t| t.as_millis())
        .unwrap_or_default()
}

/// The marker the shell prints after each block: `::block <n> done <epoch ms>::`.
fn marker(n: usize) -> String {
    format!("::block {n} done")
}

/// One shell running `blocks` with `-e` (as a careful reader stops at the first error; no
/// `pipefail`, as in an interactive shell), each followed by its marker on stdout.
fn script(blocks: &[Block]) -> String {
    let mut script = String::from("set -e\ncd \"$HOME\"\n");
    for (n, block) in blocks.iter().enumerate() {
        script.push_str(&block.text);
        script.push_str(&format!("echo \"{} $(date +%s%3N)::\"\n", marker(n)));
    }
    script
}

/// The environment of the reader's machine, in a fresh home.
struct Machine {
    /// Holds `home/` and `tmp/`.
    root: tempfile::TempDir,
    /// Variables set over the inherited environment.
    vars: Vec<(String, String)>,
    /// The Baton checkout.
    checkout: PathBuf,
}

impl Machine {
    fn new() -> Result<Self> {
        let real_home = PathBuf::from(std::env::var("HOME").context("HOME is not set")?);
        let root = tempfile::Builder::new().prefix("baton-quickstart-").tempdir()?;
        for dir in ["home", "tmp"] {
            std::fs::create_dir(root.path().join(dir))?;
        }
        let mut vars = vec![
            ("HOME".to_owned(), root.path().join("home").display().to_string()),
            ("TMPDIR".to_owned(), root.path().join("tmp").display().to_string()),
            ("USER".to_owned(), USER.to_owned()),
            // A newcomer's git knows who they are.
            ("GIT_AUTHOR_NAME".to_owned(), "Alice".to_owned()),
            ("GIT_AUTHOR_EMAIL".to_owned(), "alice@example.com".to_owned()),
            ("GIT_COMMITTER_NAME".to_owned(), "Alice".to_owned()),
            ("GIT_COMMITTER_EMAIL".to_owned(), "alice@example.com".to_owned()),
            ("NO_COLOR".to_owned(), "1".to_owned()),
        ];
        // What `just setup` and the toolchain installed under the real home, found where the
        // real home's defaults put it.
        for (name, default) in [
            ("CARGO_HOME", ".cargo"),
            ("RUSTUP_HOME", ".rustup"),
            ("PYENV_ROOT", ".pyenv"),
            ("PYTHONUSERBASE", ".local"),
            ("XDG_CACHE_HOME", ".cache"),
        ] {
            if std::env::var_os(name).is_none() {
                vars.push((name.to_owned(), real_home.join(default).display().to_string()));
            }
        }
        let checkout = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("the tests crate lies in the checkout")?
            .to_path_buf();
        Ok(Self { root, vars, checkout })
    }

    fn home(&self) -> PathBuf {
        self.root.path().join("home")
    }

    /// `bash -c script` in `dir` in this machine's environment; no `BATON_*` variable of the
    /// suite's own leaks in.
    fn bash(&self, script: &str, dir: &Path) -> Command {
        let mut command = Command::new("bash");
        command.arg("-c").arg(script).current_dir(dir).stdin(Stdio::null());
        for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("BATON_")) {
            command.env_remove(name);
        }
        command.envs(self.vars.iter().map(|(k, v)| (k, v)));
        command
    }
}

/// The `keeps-running` block's process group, stopped as Ctrl-C would stop it when dropped.
struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    fn start(machine: &Machine, block: &Block) -> Result<Self> {
        use std::os::unix::process::CommandExt as _;
        let log = machine.root.path().join("keeps-running.log");
        let file = std::fs::File::create(&log)?;
        let child = machine
            .bash(&block.text, &machine.checkout)
            .stdout(file.try_clone()?)
            .stderr(file)
            .process_group(0)
            .spawn()
            .context("cannot run bash")?;
        Ok(Self { child, log })
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of its output, for an error.
    fn tail(&self) -> String {
        let output = self.output();
        let lines: Vec<&str> = output.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Waits until it prints [`READY`].
    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.output().contains(READY) {
            if let Some(status) = self.child.try_wait()? {
                bail!("`just dev` exited ({status}) before `{READY}`:\n{}", self.tail());
            }
            ensure!(
                Instant::now() < deadline,
                "`just dev` did not print `{READY}` within {START_TIMEOUT:?}:\n{}",
                self.tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, "--", &format!("-{}", self.child.id())])
            .status();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.signal("-INT");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        self.signal("-KILL");
        let _ = self.child.wait();
    }
}

/// What a terminal printed, and when each block ended.
struct Ran {
    stdout: String,
    /// Epoch milliseconds at the end of each block.
    ended: Vec<u128>,
}

/// Runs a terminal's blocks; fails naming the block that failed and both outputs.
fn run_shell(machine: &Machine, blocks: &[Block]) -> Result<Ran> {
    let out = machine.root.path().join("terminal.out");
    let err = machine.root.path().join("terminal.err");
    let mut child = machine
        .bash(&script(blocks), &machine.home())
        .stdout(std::fs::File::create(&out)?)
        .stderr(std::fs::File::create(&err)?)
        .spawn()?;
    let deadline = Instant::now() + TERMINAL_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = std::fs::read_to_string(&out)?;
    let stderr = std::fs::read_to_string(&err)?;
    let mut ended = Vec::new();
    for n in 0..blocks.len() {
        let Some(at) = stdout.find(&marker(n)) else { break };
        let time = stdout[at + marker(n).len()..]
            .split("::")
            .next()
            .and_then(|ms| ms.trim().parse().ok())
            .context("a block's marker holds its time")?;
        ended.push(time);
    }
    if status.is_some_and(|status| status.success()) && ended.len() == blocks.len() {
        return Ok(Ran { stdout, ended });
    }
    let failed = blocks.get(ended.len()).map_or("", |block| block.text.as_str());
    let how = status.map_or_else(|| format!("did not end within {TERMINAL_TIMEOUT:?}"), |s| s.to_string());
    bail!("the page's block failed ({how}):\n{failed}\n--- stdout:\n{stdout}\n--- stderr:\n{stderr}")
}

/// `export NAME='value'` lines of `~/.baton/dev.env`.
fn dev_env(machine: &Machine, name: &str) -> Result<String> {
    let env = std::fs::read_to_string(machine.home().join(".baton/dev.env"))?;
    env.lines()
        .find_map(|line| line.strip_prefix(&format!("export {name}=")))
        .map(|value| value.trim_matches('\'').to_owned())
        .with_context(|| format!("~/.baton/dev.env sets no {name}"))
}

#[test]
fn the_page_lists_its_blocks_as_the_suite_runs_them() {
    let page = "text\n```sh\na\n```\n- item\n\n  ```yaml\n  k: v\n  ```\n```sh keeps-running\nb\n```\n```sh\nc\n```\n```sh\nd\n```\n";
    let found = blocks(page);
    assert_eq!(found.len(), 5);
    assert_eq!(found[1].text, "k: v\n");
    let groups = terminals(&found);
    assert!(
        matches!(&groups[..], [Terminal::Shell(a), Terminal::KeepsRunning(b), Terminal::Shell(cd)]
        if a.len() == 1 && b.text == "b\n" && cd.len() == 2 && cd[1].text == "d\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_quickstart_takes_an_app_from_zero_to_production() -> Result<()> {
    ensure!(PAGE.contains(READY), "the page no longer says to wait for `{READY}`");
    let all = blocks(PAGE);
    let machine = Machine::new()?;
    let started = Instant::now();
    let started_ms = epoch_ms();
    let mut running: Option<Running> = None;
    let mut outputs = Vec::new();
    for terminal in terminals(&all) {
        match terminal {
            Terminal::KeepsRunning(block) => {
                ensure!(running.is_none(), "the suite runs one keeps-running block");
                let mut started = Running::start(&machine, &block)?;
                tokio::task::block_in_place(|| started.wait_ready())?;
                running = Some(started);
            }
            Terminal::Shell(blocks) => {
                let ran = tokio::task::block_in_place(|| run_shell(&machine, &blocks))?;
                outputs.push((blocks, ran));
            }
        }
    }
    let platform = running.context("the page starts the platform (`sh keeps-running`)")?;

    // The machine time: from the empty home to the end of the approval's block, which waits
    // until production runs the release healthy.
    let production_ms = outputs
        .iter()
        .find_map(|(blocks, ran)| {
            let n = blocks.iter().position(|block| block.text.contains(PRODUCTION_BLOCK))?;
            ran.ended.get(n).copied()
        })
        .context("a block approves the release into production")?;
    let machine_time = Duration::from_millis(u64::try_from(production_ms.saturating_sub(started_ms))?);
    eprintln!(
        "quickstart: empty home to a healthy production rollout in {:.1} s of machine time (whole page {:.1} s)",
        machine_time.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );

    // Production runs the app's release healthy, as the deployer reported it.
    let nats = async_nats::connect(dev_env(&machine, "BATON_NATS_URL")?).await?;
    let js = async_nats::jetstream::new(nats);
    let mut healthy = Vec::new();
    for ty in [EventType::ServiceDeployed, EventType::ServiceUpgraded] {
        for (subject, event) in baton_tests::events::with_subjects(&js, ty).await? {
            let environment = event.custom_data.as_ref().and_then(|data| data["environment"].as_str());
            if baton_schemas::subjects::app_of(&subject) == Some(APP) && environment == Some("production") {
                healthy.push(event);
            }
        }
    }
    ensure!(
        !healthy.is_empty(),
        "no service.deployed or service.upgraded of {APP} in production; `just dev` said:\n{}",
        platform.tail()
    );

    // The config repo holds environments.yaml as the page shows it.
    let kubeconfig = PathBuf::from(dev_env(&machine, "KUBECONFIG")?);
    let config_repo = kubeconfig.with_file_name("config.git");
    let environments =
        baton_tests::git(&config_repo, &["show", "main:environments.yaml"]).map_err(anyhow::Error::msg)?;
    let shown = all
        .iter()
        .find(|block| block.language == "yaml" && block.text.starts_with("environments:"))
        .context("the page shows environments.yaml")?;
    assert_eq!(
        environments.trim_end(),
        shown.text.trim_end(),
        "the config repo's environments.yaml differs from the page's"
    );

    // The webhook's signature is a bare HMAC, and the listener took the push it signed.
    let (_, last) = outputs.last().context("the page runs commands")?;
    assert!(
        last.stdout
            .lines()
            .any(|line| line.len() == 64 && line.chars().all(|c| c.is_ascii_hexdigit())),
        "the signing one-liner printed no bare signature:\n{}",
        last.stdout
    );
    assert!(
        last.stdout.contains(r#"{"accepted":[{"#),
        "the listener did not accept the signed webhook:\n{}",
        last.stdout
    );
    drop(platform);
    assert!(
        !machine.home().join(".baton/dev.env").exists(),
        "Ctrl-C leaves ~/.baton/dev.env behind"
    );
    Ok(())
}
