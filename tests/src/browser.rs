//! A real browser for suites that check what people see: Debian's `chromium`, driven by a Node
//! script under `tests/browser/` through `playwright-core`'s library API, with
//! `@axe-core/playwright` for accessibility checks. `just setup` installs all three.
//!
//! - [`Browser::locate`] finds `node` (`$NODE_BIN`, else `PATH`), `chromium` (`$CHROMIUM_BIN`,
//!   else `PATH`, else `/usr/bin/chromium`) and the npm modules (`$BATON_BROWSER_MODULES_DIR`,
//!   else the cache `just setup` fills, [`MODULES_DIR`] under `~/.cache/baton`), each missing one
//!   named with how to install it.
//! - [`Browser::start`] runs `tests/browser/<name>.mjs` with the variables it is given, plus
//!   where chromium, the modules and the screenshot directory ([`screenshot_dir`],
//!   `<target>/web-screenshots`) are. Scripts import `tests/browser/lib.mjs`, which launches
//!   chromium headless, runs axe, saves screenshots and speaks the protocol below.
//! - The protocol: a script writes its progress and failures to stderr and one JSON line per
//!   result to stdout. A stdout line `checkpoint <name>` says it waits for the test: the test
//!   sees it with [`Script::checkpoint`], acts (publishes an event, say) and answers with
//!   [`Script::send`], a line on the script's stdin. [`Script::finish`] waits for the exit and
//!   fails with the script's stderr when it exits non-zero or runs past its time.
//!
//! The script runs under Tokio (`kill_on_drop`), so a suite's servers keep running on the same
//! runtime while the browser looks at them, and a failing test leaves no browser behind.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;

use crate::HarnessError;
use crate::process::Program;

/// Environment variable naming the `node` executable; when unset, `PATH` is searched.
pub const NODE_BIN_ENV: &str = "NODE_BIN";
/// Environment variable naming the `chromium` executable; when unset, `PATH` and then
/// `/usr/bin/chromium` are searched.
pub const CHROMIUM_BIN_ENV: &str = "CHROMIUM_BIN";
/// Environment variable naming a directory whose `node_modules` holds `playwright-core` and
/// `@axe-core/playwright`; when unset, [`MODULES_DIR`] in the cache.
pub const BROWSER_MODULES_DIR_ENV: &str = "BATON_BROWSER_MODULES_DIR";
/// The directory under `~/.cache/baton` that `just setup` installs the npm modules into; its name
/// carries their versions (keep in step with the justfile's browser block).
pub const MODULES_DIR: &str = "browser-playwright-core-1.65.2-axe-4.14.1";

/// The npm packages a script imports, as `node_modules/<package>/package.json`.
const PACKAGES: [&str; 2] = ["playwright-core", "@axe-core/playwright"];

const NODE: Program = Program {
    name: "node",
    env: Some(NODE_BIN_ENV),
    install: "Debian package `nodejs`",
    fallbacks: &["/usr/bin/node"],
};

const CHROMIUM: Program = Program {
    name: "chromium",
    env: Some(CHROMIUM_BIN_ENV),
    install: "Debian package `chromium`",
    fallbacks: &["/usr/bin/chromium"],
};

/// What a script is told through its environment (read by `tests/browser/lib.mjs`).
const CHROMIUM_VAR: &str = "BATON_CHROMIUM";
const MODULES_VAR: &str = "BATON_BROWSER_MODULES";
const SCREENSHOTS_VAR: &str = "BATON_SCREENSHOTS";

/// The stdout prefix of a line saying the script waits for the test.
const CHECKPOINT: &str = "checkpoint ";

/// The programs and modules a browser script needs, found.
#[derive(Debug, Clone)]
pub struct Browser {
    node: PathBuf,
    chromium: PathBuf,
    /// The `node_modules` directory holding [`PACKAGES`].
    modules: PathBuf,
}

impl Browser {
    /// Finds node, chromium and the npm modules from the process environment.
    ///
    /// # Errors
    /// [`HarnessError::ProgramNotFound`] naming what is missing and saying to run `just setup`.
    pub fn locate() -> Result<Self, HarnessError> {
        Ok(Self {
            node: NODE.locate()?,
            chromium: CHROMIUM.locate()?,
            modules: modules_in(std::env::var_os(BROWSER_MODULES_DIR_ENV), cache_home())?,
        })
    }

    /// The chromium the scripts launch.
    pub fn chromium(&self) -> &Path {
        &self.chromium
    }

    /// Starts `tests/browser/<name>.mjs` with `env` set on top of the harness's variables; it
    /// must [`finish`](Script::finish) within `timeout`.
    ///
    /// # Errors
    /// When the script does not exist, the screenshot directory cannot be made, or node cannot
    /// be launched.
    pub fn start(&self, name: &str, env: &[(&str, &str)], timeout: Duration) -> Result<Script, HarnessError> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("browser")
            .join(format!("{name}.mjs"));
        if !script.is_file() {
            return Err(HarnessError::Io {
                path: script,
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        let screenshots = screenshot_dir()?;
        let mut command = Command::new(&self.node);
        command
            .arg(&script)
            .current_dir(script.parent().unwrap_or(Path::new(".")))
            .env(CHROMIUM_VAR, &self.chromium)
            .env(MODULES_VAR, &self.modules)
            .env(SCREENSHOTS_VAR, &screenshots)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|source| HarnessError::Spawn {
            binary: self.node.clone(),
            source,
        })?;
        let (Some(stdin), Some(stdout), Some(mut stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            unreachable!("all three were piped");
        };
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            // A read error ends what the script said; what came before is kept.
            let _ = stderr.read_to_string(&mut text).await;
            text
        });
        Ok(Script {
            command: format!("node {}", script.display()),
            child,
            stdin: Some(stdin),
            stdout: BufReader::new(stdout).lines(),
            stderr,
            results: Vec::new(),
            deadline: tokio::time::Instant::now() + timeout,
            timeout,
        })
    }

    /// [`start`](Self::start) and [`finish`](Script::finish), for a script that needs nothing
    /// from the test while it runs.
    ///
    /// # Errors
    /// As both.
    pub async fn run(&self, name: &str, env: &[(&str, &str)], timeout: Duration) -> Result<ScriptOutput, HarnessError> {
        self.start(name, env, timeout)?.finish().await
    }
}

/// A running browser script.
#[derive(Debug)]
pub struct Script {
    /// `node <path>`, for errors.
    command: String,
    child: Child,
    /// Closed by [`finish`](Self::finish), so a script still reading sees the end.
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    /// Collects everything the script says on stderr, for errors.
    stderr: JoinHandle<String>,
    /// The stdout lines other than checkpoints, so far.
    results: Vec<String>,
    deadline: tokio::time::Instant,
    timeout: Duration,
}

/// What a script printed.
#[derive(Debug, Clone)]
pub struct ScriptOutput {
    /// Its stdout lines, checkpoints left out: one JSON value each.
    pub results: Vec<String>,
    /// Its progress.
    pub stderr: String,
}

impl ScriptOutput {
    /// The results, each parsed as JSON.
    ///
    /// # Errors
    /// [`HarnessError::CommandOutput`] for a line that is not JSON.
    pub fn json(&self) -> Result<Vec<serde_json::Value>, HarnessError> {
        self.results
            .iter()
            .map(|line| {
                serde_json::from_str(line).map_err(|source| HarnessError::CommandOutput {
                    command: format!("a browser script's result line `{line}`"),
                    source,
                })
            })
            .collect()
    }
}

impl Script {
    /// Waits until the script prints `checkpoint <name>`; other lines are kept as results.
    ///
    /// # Errors
    /// When the script ends first or the script's time runs out: the error quotes its stderr.
    pub async fn checkpoint(&mut self, name: &str) -> Result<(), HarnessError> {
        loop {
            let line = match tokio::time::timeout_at(self.deadline, self.stdout.next_line()).await {
                Ok(Ok(Some(line))) => line,
                Ok(Ok(None) | Err(_)) => {
                    let status = self.child.wait().await.map_err(|source| self.spawn_error(source))?;
                    return Err(self
                        .failed(status, &format!("it ended before `{CHECKPOINT}{name}`"))
                        .await);
                }
                Err(_) => return Err(self.timed_out(&format!("`{CHECKPOINT}{name}`")).await),
            };
            match line.strip_prefix(CHECKPOINT) {
                Some(reached) if reached == name => return Ok(()),
                Some(other) => {
                    self.kill().await;
                    return Err(self
                        .failed_while_running(&format!("it reached `{CHECKPOINT}{other}` instead of `{name}`"))
                        .await);
                }
                None => self.results.push(line),
            }
        }
    }

    /// Writes `line` to the script's stdin (its answer to a checkpoint).
    ///
    /// # Errors
    /// When the script no longer reads.
    pub async fn send(&mut self, line: &str) -> Result<(), HarnessError> {
        let Some(stdin) = self.stdin.as_mut() else {
            unreachable!("stdin is only closed by finish, which consumes the script");
        };
        let written = async {
            stdin.write_all(line.as_bytes()).await?;
            stdin.write_all(b"\n").await?;
            stdin.flush().await
        };
        match written.await {
            Ok(()) => Ok(()),
            Err(source) => Err(HarnessError::Io {
                path: PathBuf::from(format!("the stdin of {}", self.command)),
                source,
            }),
        }
    }

    /// Waits for the script to exit and returns what it printed.
    ///
    /// # Errors
    /// [`HarnessError::CommandFailed`] quoting its stderr when it exits non-zero or prints a
    /// checkpoint nobody waits for; [`HarnessError::Timeout`] (with its stderr) when it runs
    /// past its time.
    pub async fn finish(mut self) -> Result<ScriptOutput, HarnessError> {
        drop(self.stdin.take());
        loop {
            match tokio::time::timeout_at(self.deadline, self.stdout.next_line()).await {
                Ok(Ok(Some(line))) => {
                    if let Some(name) = line.strip_prefix(CHECKPOINT) {
                        self.kill().await;
                        return Err(self
                            .failed_while_running(&format!(
                                "it waits at `{CHECKPOINT}{name}`, which the test never answers"
                            ))
                            .await);
                    }
                    self.results.push(line);
                }
                Ok(Ok(None) | Err(_)) => break,
                Err(_) => return Err(self.timed_out("its exit").await),
            }
        }
        let status = match tokio::time::timeout_at(self.deadline, self.child.wait()).await {
            Ok(status) => status.map_err(|source| self.spawn_error(source))?,
            Err(_) => return Err(self.timed_out("its exit").await),
        };
        if !status.success() {
            return Err(self.failed(status, "").await);
        }
        let stderr = self.stderr.await.unwrap_or_default();
        Ok(ScriptOutput {
            results: self.results,
            stderr,
        })
    }

    async fn kill(&mut self) {
        // Killing a child that already exited fails harmlessly; waiting reaps it either way.
        let _ = self.child.kill().await;
    }

    /// Everything the script said on stderr (it has exited or been killed).
    async fn stderr_text(&mut self) -> String {
        match tokio::time::timeout(Duration::from_secs(5), &mut self.stderr).await {
            Ok(Ok(text)) => text.trim().to_owned(),
            _ => "(its stderr could not be read)".to_owned(),
        }
    }

    async fn failed(&mut self, status: ExitStatus, why: &str) -> HarnessError {
        let mut stderr = self.stderr_text().await;
        if !why.is_empty() {
            stderr = format!("{why}; its stderr:\n{stderr}");
        }
        HarnessError::CommandFailed {
            command: self.command.clone(),
            status,
            stderr,
        }
    }

    async fn failed_while_running(&mut self, why: &str) -> HarnessError {
        match self.child.wait().await {
            Ok(status) => self.failed(status, why).await,
            Err(source) => self.spawn_error(source),
        }
    }

    async fn timed_out(&mut self, what: &str) -> HarnessError {
        self.kill().await;
        let stderr = self.stderr_text().await;
        HarnessError::Timeout {
            what: format!("{} to print {what}; its stderr:\n{stderr}", self.command),
            timeout: self.timeout,
        }
    }

    fn spawn_error(&self, source: std::io::Error) -> HarnessError {
        HarnessError::Spawn {
            binary: PathBuf::from(&self.command),
            source,
        }
    }
}

/// `<target>/web-screenshots`, created if needed: the target directory the running test binary
/// comes from (`<target>/<profile>/deps/<suite>-<hash>`), so a reader finds the screenshots next
/// to the build, wherever `CARGO_TARGET_DIR` puts it.
///
/// # Errors
/// When the test binary is not in a target directory or the directory cannot be made.
pub fn screenshot_dir() -> Result<PathBuf, HarnessError> {
    let exe = std::env::current_exe().map_err(|source| HarnessError::Io {
        path: PathBuf::from("/proc/self/exe"),
        source,
    })?;
    let target = exe.ancestors().nth(3).ok_or_else(|| HarnessError::Io {
        path: exe.clone(),
        source: std::io::Error::other("the test binary is not in <target>/<profile>/deps"),
    })?;
    let dir = target.join("web-screenshots");
    crate::create_dir(&dir)?;
    Ok(dir)
}

/// `$XDG_CACHE_HOME`, else `$HOME/.cache`.
fn cache_home() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|value| !value.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
}

/// The `node_modules` directory under `dir_override` (the value of [`BROWSER_MODULES_DIR_ENV`]),
/// else under `<cache_home>/baton/`[`MODULES_DIR`], if it holds every one of [`PACKAGES`].
fn modules_in(dir_override: Option<OsString>, cache_home: Option<PathBuf>) -> Result<PathBuf, HarnessError> {
    let (dir, named_by) = match dir_override.filter(|value| !value.is_empty()) {
        Some(dir) => (PathBuf::from(dir), format!("{BROWSER_MODULES_DIR_ENV} names")),
        None => match cache_home {
            Some(cache) => (cache.join("baton").join(MODULES_DIR), "the cache".to_owned()),
            None => return Err(modules_not_found("neither XDG_CACHE_HOME nor HOME is set".to_owned())),
        },
    };
    let modules = dir.join("node_modules");
    match PACKAGES
        .iter()
        .find(|package| !modules.join(package).join("package.json").is_file())
    {
        None => Ok(modules),
        Some(missing) => Err(modules_not_found(format!(
            "{named_by} {}, which has no node_modules/{missing}",
            dir.display()
        ))),
    }
}

fn modules_not_found(reason: String) -> HarnessError {
    HarnessError::ProgramNotFound {
        program: "playwright-core and @axe-core/playwright",
        reason,
        fix: format!(
            "Install them with `just setup` (npm install into ~/.cache/baton/{MODULES_DIR}) or set \
             {BROWSER_MODULES_DIR_ENV} to a directory whose node_modules holds both"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::{Arc, Mutex};

    use tokio::net::TcpListener;

    #[test]
    fn missing_modules_say_to_run_just_setup() -> anyhow::Result<()> {
        let empty = tempfile::tempdir()?;
        let message = modules_in(Some(empty.path().into()), None)
            .expect_err("no modules")
            .to_string();
        assert!(message.contains("BATON_BROWSER_MODULES_DIR names"), "{message}");
        assert!(message.contains("no node_modules/playwright-core"), "{message}");
        assert!(message.contains("`just setup`"), "{message}");
        let message = modules_in(None, Some(empty.path().into()))
            .expect_err("an empty cache")
            .to_string();
        assert!(message.contains(MODULES_DIR), "{message}");
        let message = modules_in(None, None).expect_err("no home").to_string();
        assert!(message.contains("neither XDG_CACHE_HOME nor HOME"), "{message}");
        Ok(())
    }

    /// The page the self-test serves: its script (a file, as the CSP demands) fetches
    /// `/answer` and writes it into the page, so the browser must run it to pass.
    const PAGE: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Harness check</title>\
        <script src=\"/page.js\" defer></script></head><body><main><h1 id=\"heading\">Harness check</h1>\
        <p id=\"answer\">waiting</p></main></body></html>";
    /// A page axe must fault: an image without a text alternative (critical `image-alt`).
    const UNLABELLED: &str = "<!doctype html><html lang=\"en\"><head><title>Unlabelled</title></head>\
        <body><main><h1>Unlabelled</h1><img src=\"/page.js\"></main></body></html>";
    const PAGE_JS: &str =
        "fetch('/answer').then(r => r.text()).then(t => { document.getElementById('answer').textContent = t; });";

    /// Serves [`PAGE`], `/page.js` and `/answer` (whose body changes once the test says so) on
    /// 127.0.0.1; records every request line and User-Agent.
    async fn serve(answer: Arc<Mutex<String>>, seen: Arc<Mutex<Vec<String>>>) -> anyhow::Result<String> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (answer, seen) = (Arc::clone(&answer), Arc::clone(&seen));
                tokio::spawn(async move {
                    let mut stream = BufReader::new(stream);
                    let mut request = Vec::new();
                    let mut line = String::new();
                    while stream.read_line(&mut line).await.is_ok_and(|n| n > 0) && line.trim() != "" {
                        request.push(line.trim().to_owned());
                        line.clear();
                    }
                    let path = request
                        .first()
                        .and_then(|l| l.split(' ').nth(1))
                        .unwrap_or("")
                        .to_owned();
                    let agent = request.iter().find(|l| l.to_lowercase().starts_with("user-agent:"));
                    seen.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(format!("{path} {}", agent.map_or("", String::as_str)));
                    let (status, kind, body) = match path.as_str() {
                        "/" => ("200 OK", "text/html; charset=utf-8", PAGE.to_owned()),
                        "/unlabelled" => ("200 OK", "text/html; charset=utf-8", UNLABELLED.to_owned()),
                        "/page.js" => ("200 OK", "text/javascript", PAGE_JS.to_owned()),
                        "/answer" => (
                            "200 OK",
                            "text/plain",
                            answer.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone(),
                        ),
                        _ => ("404 Not Found", "text/plain", "not found".to_owned()),
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
                         Content-Security-Policy: default-src 'none'; script-src 'self'; connect-src 'self'\r\n\
                         Connection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.get_mut().write_all(response.as_bytes()).await;
                });
            }
        });
        Ok(base)
    }

    /// The harness end to end: chromium loads a local page and runs its script, the script
    /// stops at a checkpoint while the test changes what the server answers, sees the change
    /// after the test's answer, runs axe (which passes this page and faults another), saves a
    /// screenshot, and reports; a failing script's error quotes its stderr.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_script_drives_chromium_against_a_local_page() -> anyhow::Result<()> {
        let browser = Browser::locate()?;
        let answer = Arc::new(Mutex::new("42".to_owned()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let base = serve(Arc::clone(&answer), Arc::clone(&seen)).await?;

        let mut script = browser.start("selftest", &[("BASE_URL", &base)], Duration::from_secs(60))?;
        script.checkpoint("first-answer-read").await?;
        *answer.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = "43".to_owned();
        script.send("answer changed").await?;
        let output = script.finish().await?;
        let results = output.json()?;
        assert_eq!(results.len(), 1, "{:?}", output.results);
        let report = &results[0];
        assert_eq!(report["heading"], "Harness check");
        assert_eq!(report["first"], "42", "the browser ran the page's script");
        assert_eq!(
            report["second"], "43",
            "the reload after the checkpoint saw the test's change"
        );
        assert_eq!(report["violations"], serde_json::json!([]), "axe found nothing serious");
        let unlabelled = report["unlabelled"].to_string();
        assert!(
            unlabelled.contains("critical image-alt"),
            "axe faults an image without alt: {unlabelled}"
        );
        let screenshot = screenshot_dir()?.join("harness-selftest.png");
        let png = std::fs::read(&screenshot)?;
        assert!(png.starts_with(b"\x89PNG"), "{} is a PNG", screenshot.display());

        let requests = seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let answers: Vec<&String> = requests.iter().filter(|r| r.starts_with("/answer ")).collect();
        assert_eq!(answers.len(), 2, "{requests:?}");
        assert!(answers[0].contains("Chrome/"), "chromium asked: {answers:?}");

        // A script that fails: its error carries what it said.
        let error = browser
            .run(
                "selftest",
                &[("BASE_URL", &base), ("SELFTEST_EXPECT", "no such heading")],
                Duration::from_secs(60),
            )
            .await
            .expect_err("the heading differs");
        let message = error.to_string();
        assert!(message.contains("no such heading"), "{message}");
        Ok(())
    }
}
