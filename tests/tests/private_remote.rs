//! Polling a private remote: the listener polls a git smart-HTTP server that requires HTTP
//! Basic credentials, with the token of its `source.credentials`, against a real nats-server.
//! The server is git's own `git http-backend`, run as a CGI behind a small axum server that
//! answers 401 to any request without the right credentials and records every request, so
//! the suite can show the listener really authenticated. With the right token a push becomes
//! exactly one `change.merged` with the pushed commits; with no credential or a wrong one
//! nothing is published and the poll's error names the refusal.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use baton_kit::source::{self as git_source, Sources};
use baton_listener::Application;
use baton_listener::poll::Poller;
use baton_schemas::config::listener::ListenerSettings;
use baton_schemas::payloads::PushData;
use baton_schemas::{CdEvent, EventType};
use baton_tests::{NatsServer, app, events, git};
use futures::StreamExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

const USER: &str = "baton";
const TOKEN: &str = "s3cret-poll-token";
/// The variable `source.credentials[0].token_env` names.
const TOKEN_ENV: &str = "PRIVATE_GIT_TOKEN";
const REPO: &str = "shop.git";
const INTERVAL: &str = "200ms";
/// Long enough for several polls at [`INTERVAL`].
const SEVERAL_POLLS: Duration = Duration::from_millis(1_500);

/// Which credentials a request to the git server carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Presented {
    None,
    Wrong,
    Right,
}

/// One request the git server answered.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    /// Path and query, e.g. `/shop.git/info/refs?service=git-upload-pack`.
    uri: String,
    credentials: Presented,
}

impl Seen {
    fn is_upload_pack(&self) -> bool {
        self.method == "POST" && self.uri.ends_with("/git-upload-pack")
    }
}

#[derive(Debug, Clone)]
struct GitHttp {
    /// The directory whose bare repositories are served.
    root: PathBuf,
    /// The `Authorization` header the right credentials make.
    expected: HeaderValue,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// A smart-HTTP git server on a free port that requires `USER`/`TOKEN`, stopped when dropped.
struct GitServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl GitServer {
    async fn start(root: &Path) -> Result<Self> {
        // reqwest's TLS (compiled in for the chat-ops bot's https posts) needs the process's provider.
        baton_kit::tls::install_crypto_provider();
        // The header an HTTP client sends for these credentials, made by one (reqwest).
        let expected = reqwest::Client::new()
            .get("http://127.0.0.1/")
            .basic_auth(USER, Some(TOKEN))
            .build()?
            .headers()
            .get(header::AUTHORIZATION)
            .context("reqwest sets Authorization for basic_auth")?
            .clone();
        let state = GitHttp {
            root: root.to_owned(),
            expected,
            seen: Arc::default(),
        };
        let seen = Arc::clone(&state.seen);
        let router = axum::Router::new().fallback(serve_git).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.expect("the git server serves");
        });
        Ok(Self { addr, seen, task })
    }

    fn url_prefix(&self) -> String {
        format!("http://{}/", self.addr)
    }

    fn repo_url(&self) -> String {
        format!("{}{REPO}", self.url_prefix())
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("the request log is not poisoned").clone()
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Answers 401 unless the request carries the right Basic credentials, then hands it to
/// `git http-backend`.
async fn serve_git(State(server): State<GitHttp>, request: Request) -> Response {
    let credentials = match request.headers().get(header::AUTHORIZATION) {
        None => Presented::None,
        Some(value) if *value == server.expected => Presented::Right,
        Some(_) => Presented::Wrong,
    };
    server.seen.lock().expect("the request log is not poisoned").push(Seen {
        method: request.method().to_string(),
        uri: request.uri().to_string(),
        credentials,
    });
    if credentials != Presented::Right {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"private git\"")],
            "credentials required\n",
        )
            .into_response();
    }
    match http_backend(&server.root, request).await {
        Ok(response) => response,
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("git http-backend: {e:#}\n")).into_response(),
    }
}

/// Runs `git http-backend` as a CGI for `request`: the request's body streams to its stdin,
/// and its output's CGI headers (`Status:` included) become the response's. The output is read
/// whole, which suits the small repositories of a test.
async fn http_backend(root: &Path, request: Request) -> Result<Response> {
    let (parts, body) = request.into_parts();
    let header_value =
        |name: header::HeaderName| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mut command = tokio::process::Command::new("git");
    command
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or_default())
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("REMOTE_USER", USER)
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if let Some(value) = header_value(header::CONTENT_TYPE) {
        command.env("CONTENT_TYPE", value);
    }
    // Without CONTENT_LENGTH (a chunked body), http-backend reads its stdin to the end.
    if let Some(value) = header_value(header::CONTENT_LENGTH) {
        command.env("CONTENT_LENGTH", value);
    }
    if let Some(value) = header_value(header::CONTENT_ENCODING) {
        command.env("HTTP_CONTENT_ENCODING", value);
    }
    if let Some(value) = parts.headers.get("git-protocol").and_then(|v| v.to_str().ok()) {
        command.env("GIT_PROTOCOL", value);
    }
    let mut child = command.spawn().context("cannot run git http-backend")?;
    let mut stdin = child.stdin.take().context("stdin is piped")?;
    let mut stdout = child.stdout.take().context("stdout is piped")?;
    let feed = async move {
        let mut chunks = body.into_data_stream();
        while let Some(chunk) = chunks.next().await {
            stdin.write_all(&chunk?).await?;
        }
        // Dropping stdin closes it: the end of the request.
        anyhow::Ok(())
    };
    let read = async move {
        let mut output = Vec::new();
        stdout.read_to_end(&mut output).await?;
        anyhow::Ok(output)
    };
    let (fed, output) = tokio::join!(feed, read);
    fed.context("cannot pass the request body to git http-backend")?;
    let output = output.context("cannot read git http-backend's answer")?;
    let status = child.wait().await?;
    anyhow::ensure!(status.success(), "git http-backend exited with {status}");
    cgi_response(&output)
}

/// A CGI program's output as an HTTP response: headers up to the first empty line, where
/// `Status: <code> <reason>` sets the status (200 without it), then the body.
fn cgi_response(output: &[u8]) -> Result<Response> {
    let (head, body) = [&b"\r\n\r\n"[..], b"\n\n"]
        .iter()
        .filter_map(|blank| {
            output
                .windows(blank.len())
                .position(|w| w == *blank)
                .map(|at| (at, blank.len()))
        })
        .min()
        .map(|(at, len)| (&output[..at], &output[at + len..]))
        .context("git http-backend's output has no end of headers")?;
    let mut response = Response::builder();
    for line in std::str::from_utf8(head)?.lines() {
        let (name, value) = line
            .split_once(':')
            .with_context(|| format!("not a CGI header: {line}"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or_default();
            response = response.status(code.parse::<u16>()?);
        } else {
            response = response.header(name, value);
        }
    }
    Ok(response.body(Body::from(body.to_vec()))?)
}

/// A bare repository served as `REPO`, and a clone to push to it from with the git CLI.
struct Remote {
    _dir: tempfile::TempDir,
    work: PathBuf,
    root: PathBuf,
}

impl Remote {
    /// The remote with one commit, `first`, on main.
    fn seeded() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().join("served");
        std::fs::create_dir(&root)?;
        let bare = root.join(REPO);
        let work = dir.path().join("work");
        git(dir.path(), &["init", "-q", "--bare", "-b", "main", path(&bare)?])?;
        git(dir.path(), &["clone", "-q", path(&bare)?, path(&work)?])?;
        git(&work, &["symbolic-ref", "HEAD", "refs/heads/main"])?;
        let remote = Self { _dir: dir, work, root };
        remote.commit("first")?;
        git(&remote.work, &["push", "-q", "origin", "main"])?;
        Ok(remote)
    }

    fn commit(&self, message: &str) -> Result<String> {
        std::fs::write(self.work.join("README"), format!("{message}\n"))?;
        git(&self.work, &["add", "."])?;
        git(&self.work, &["commit", "-q", "-m", message])?;
        Ok(git(&self.work, &["rev-parse", "HEAD"])?)
    }
}

fn path(p: &Path) -> Result<&str> {
    p.to_str().context("temporary paths are UTF-8")
}

/// The listener's config: `acme/private` polled at `url`, with `credentials` (YAML list items)
/// under `source.credentials`.
fn listener_config(url: &str, credentials: &str) -> String {
    format!(
        "repositories:\n  - name: acme/private\n    branches: [main]\n    poll:\n      url: {url}\n      interval: {INTERVAL}\nsource:\n  credentials: [{credentials}]\n"
    )
}

fn token_credential(server: &GitServer) -> String {
    format!(
        "{{url_prefix: '{}', username: {USER}, token_env: {TOKEN_ENV}}}",
        server.url_prefix()
    )
}

/// A running listener with its own nats-server.
struct Listener {
    _nats: NatsServer,
    js: async_nats::jetstream::Context,
    settings: ListenerSettings,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), baton_kit::service::StartError>>,
}

impl Listener {
    /// Builds and runs the listener with `config`, its `token_env` reading `token`.
    async fn start(config: &str, token: &'static str) -> Result<Self> {
        let nats = NatsServer::start()?;
        let service: ListenerSettings = yaml_serde::from_str(config)?;
        let env = move |name: &str| (name == TOKEN_ENV).then(|| token.to_owned());
        let stop = CancellationToken::new();
        let listener = app::spawn::<Application>(app::common(&nats.url()), service.clone(), &env, &stop).await?;
        let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
        Ok(Self {
            _nats: nats,
            js,
            settings: service,
            stop,
            task: listener.task,
        })
    }

    async fn pushes(&self) -> Result<Vec<CdEvent>> {
        events::of(&self.js, EventType::ChangeMerged).await
    }

    /// Every `change.merged` once there are at least `count`.
    async fn wait_for_pushes(&self, count: usize) -> Result<Vec<CdEvent>> {
        events::wait_for(
            &self.js,
            EventType::ChangeMerged,
            count,
            Duration::from_secs(20),
            |_| true,
        )
        .await
    }

    /// One poll of the configured repository, as the listener's poller does it, with the
    /// credentials resolved from the same config and `token`: its error is what the listener
    /// logs after each failed poll.
    async fn poll_once(&self, token: &'static str) -> Result<Result<usize, baton_listener::poll::PollError>> {
        let env = move |name: &str| (name == TOKEN_ENV).then(|| token.to_owned());
        let repositories = baton_listener::config::resolve(&self.settings, &env)?;
        let repo = repositories.polled().next().context("one polled repository")?;
        let credentials = git_source::resolve_credentials(&self.settings.source.credentials, &env)?;
        let cache = tempfile::tempdir()?;
        let state = self.js.get_key_value("baton-state").await?;
        let poller = Poller::new(
            Arc::clone(repo),
            Sources::new(cache.path().to_owned(), credentials),
            self.js.clone(),
            state,
        )
        .context("the repository is polled")?;
        Ok(poller.poll_once().await)
    }

    /// Stops the listener; its nats-server keeps running until `self` is dropped.
    async fn stop(&mut self) -> Result<()> {
        self.stop.cancel();
        (&mut self.task).await??;
        Ok(())
    }
}

fn data(event: &CdEvent) -> PushData {
    event.custom_data_as().expect("customData is a PushData")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_its_token_a_push_to_a_private_remote_becomes_one_change_merged() -> Result<()> {
    let remote = Remote::seeded()?;
    let first = git(&remote.work, &["rev-parse", "HEAD"])?;
    let server = GitServer::start(&remote.root).await?;
    let mut listener = Listener::start(&listener_config(&server.repo_url(), &token_credential(&server)), TOKEN).await?;

    // The head the listener finds at its first poll.
    let seeded = listener.wait_for_pushes(1).await?;
    assert_eq!(seeded.len(), 1);
    assert_eq!(data(&seeded[0]).after, first);

    // One push of two commits: exactly one more event, listing both.
    let second = remote.commit("second")?;
    let third = remote.commit("third")?;
    git(&remote.work, &["push", "-q", "origin", "main"])?;
    let pushes = listener.wait_for_pushes(2).await?;
    let push = data(&pushes[1]);
    assert_eq!(push.provider, "poll");
    assert_eq!(push.git_ref, "refs/heads/main");
    assert_eq!(
        (push.before.as_str(), push.after.as_str()),
        (first.as_str(), third.as_str())
    );
    assert_eq!(
        push.commits.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        vec![second.as_str(), third.as_str()]
    );
    assert_eq!(push.head_commit.id, third);
    assert_eq!(push.repository.full_name, "acme/private");
    assert_eq!(pushes[1].subject.id, third);
    tokio::time::sleep(SEVERAL_POLLS).await;
    assert_eq!(listener.pushes().await?.len(), 2, "later polls publish nothing more");

    // The listener got in only with the token: git asked without credentials first and was
    // refused, and every request that reached git carried the right ones.
    let seen = server.seen();
    assert!(
        seen.iter()
            .any(|s| s.credentials == Presented::None && s.uri.contains("/info/refs")),
        "the first request goes without credentials and is refused: {seen:?}"
    );
    assert!(
        !seen.iter().any(|s| s.credentials == Presented::Wrong),
        "no wrong credentials: {seen:?}"
    );
    let listed = seen
        .iter()
        .filter(|s| s.credentials == Presented::Right && s.uri.ends_with("/info/refs?service=git-upload-pack"))
        .count();
    assert!(listed >= 3, "each poll lists the refs with the token: {seen:?}");
    let fetched: Vec<&Seen> = seen.iter().filter(|s| s.is_upload_pack()).collect();
    assert!(
        fetched.len() >= 2,
        "both new heads were fetched over the authenticated server: {seen:?}"
    );
    assert!(fetched.iter().all(|s| s.credentials == Presented::Right), "{seen:?}");
    listener.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_right_token_polling_publishes_nothing_and_says_why() -> Result<()> {
    let remote = Remote::seeded()?;
    let server = GitServer::start(&remote.root).await?;
    let refused = format!(
        "authentication failed: the repository refused the credential configured for {}",
        server.url_prefix()
    );
    for (case, credentials, token, presented, reason) in [
        (
            "no credential",
            String::new(),
            TOKEN,
            Presented::None,
            "the repository asks for credentials and none are configured for it",
        ),
        (
            "a wrong token",
            token_credential(&server),
            "not-the-token",
            Presented::Wrong,
            refused.as_str(),
        ),
    ] {
        let before = server.seen().len();
        let mut listener = Listener::start(&listener_config(&server.repo_url(), &credentials), token).await?;
        tokio::time::sleep(SEVERAL_POLLS).await;
        listener.stop().await?;
        assert_eq!(listener.pushes().await?.len(), 0, "{case}: nothing is published");
        let seen = server.seen().split_off(before);
        assert!(
            seen.iter().any(|s| s.credentials == presented),
            "{case}: the listener polled and was refused: {seen:?}"
        );
        assert!(
            seen.iter()
                .all(|s| s.credentials != Presented::Right && !s.is_upload_pack()),
            "{case}: nothing got past the server's check: {seen:?}"
        );

        // The error of one poll, with the listener stopped so that only this poll asks.
        let before = server.seen().len();
        let error = listener
            .poll_once(token)
            .await?
            .expect_err("a poll without the right credentials fails");
        let message = error.to_string();
        assert_eq!(
            message,
            format!("cannot fetch {}: {reason}", server.repo_url()),
            "{case}: the poll's error names the remote and the refusal"
        );
        assert!(!message.contains(token), "{case}: the token stays out of messages");
        let asked: Vec<Presented> = server.seen()[before..].iter().map(|s| s.credentials).collect();
        let expected = if presented == Presented::None {
            vec![Presented::None]
        } else {
            vec![Presented::None, presented]
        };
        assert_eq!(
            asked, expected,
            "{case}: one request without credentials, then the configured credential once, never replayed"
        );
    }
    Ok(())
}
