//! The kubelet's log endpoint for executed pods: every container's stdout and stderr go to one
//! log file, and an HTTPS server (a self-signed certificate; the apiserver, started without
//! `--kubelet-certificate-authority`, does not verify it) answers
//! `GET /containerLogs/{namespace}/{pod}/{container}` with the file's bytes, as the apiserver's
//! `pods/log` asks a kubelet: `follow=true` streams until the container ends, `tailLines` keeps
//! the last lines, `limitBytes` stops after that many bytes. `previous`, `timestamps`, `sinceSeconds`
//! and `sinceTime` are ignored (containers are never restarted, and lines carry no times).
//!
//! The server speaks HTTP/1.1 without keep-alive: one request per connection, the body ending
//! when the connection closes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::SimulatorError;

/// How often a followed log is read again while its container runs.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(100);
/// Longest request head read.
const MAX_HEAD: usize = 16 * 1024;

/// `namespace/pod/container`.
type Key = (String, String, String);

/// The log of one container: where it is written and whether the container still runs.
#[derive(Debug, Clone)]
struct LogEntry {
    path: PathBuf,
    running: watch::Receiver<bool>,
}

/// Every executed container's log, by namespace, pod and container.
#[derive(Debug, Clone, Default)]
pub(super) struct LogBook {
    entries: Arc<Mutex<HashMap<Key, LogEntry>>>,
}

/// Tells the log server the container ended (on drop too).
#[derive(Debug)]
pub(super) struct LogWriterGuard {
    running: watch::Sender<bool>,
}

impl Drop for LogWriterGuard {
    fn drop(&mut self) {
        let _ = self.running.send(false);
    }
}

impl LogBook {
    /// Registers the log file of a container about to run.
    pub(super) fn register(&self, namespace: &str, pod: &str, container: &str, path: &Path) -> LogWriterGuard {
        let (running, receiver) = watch::channel(true);
        let key = (namespace.to_owned(), pod.to_owned(), container.to_owned());
        self.lock().insert(
            key,
            LogEntry {
                path: path.to_owned(),
                running: receiver,
            },
        );
        LogWriterGuard { running }
    }

    /// Forgets a removed pod's logs.
    pub(super) fn forget_pod(&self, namespace: &str, pod: &str) {
        self.lock().retain(|(ns, name, _), _| !(ns == namespace && name == pod));
    }

    fn get(&self, key: &Key) -> Option<LogEntry> {
        self.lock().get(key).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, LogEntry>> {
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The running log server: its port, and its task (aborted on drop).
#[derive(Debug)]
pub(super) struct LogServer {
    pub(super) port: u16,
    task: JoinHandle<()>,
}

impl Drop for LogServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LogServer {
    /// Serves `book` over HTTPS on a free port of 127.0.0.1, with the certificate and key (PEM)
    /// at `cert` and `key`.
    pub(super) async fn start(book: LogBook, cert: &Path, key: &Path) -> Result<Self, SimulatorError> {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let tls_error = |what: String| SimulatorError::Io {
            path: cert.to_owned(),
            source: std::io::Error::other(what),
        };
        let certs = CertificateDer::pem_file_iter(cert)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|e| tls_error(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| tls_error(e.to_string()))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| tls_error(e.to_string()))?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(SimulatorError::FreePort)?;
        let port = listener.local_addr().map_err(SimulatorError::FreePort)?.port();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, book) = (acceptor.clone(), book.clone());
                tokio::spawn(async move {
                    match acceptor.accept(stream).await {
                        Ok(tls) => serve(tls, &book).await,
                        Err(error) => tracing::debug!(%error, "kubelet log server: TLS handshake failed"),
                    }
                });
            }
        });
        Ok(Self { port, task })
    }
}

/// What a log request asks for.
#[derive(Debug, Default, PartialEq, Eq)]
struct LogQuery {
    follow: bool,
    tail_lines: Option<usize>,
    limit_bytes: Option<u64>,
}

/// The container a `GET` of `target` names, and the query.
fn parse_target(target: &str) -> Option<(Key, LogQuery)> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut parts = path.strip_prefix("/containerLogs/")?.split('/');
    let (namespace, pod, container) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let mut parsed = LogQuery::default();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        match name.as_ref() {
            "follow" => parsed.follow = value == "true" || value == "1",
            "tailLines" => parsed.tail_lines = value.parse().ok(),
            "limitBytes" => parsed.limit_bytes = value.parse().ok(),
            _ => {}
        }
    }
    Some(((namespace.to_owned(), pod.to_owned(), container.to_owned()), parsed))
}

/// The start offset that keeps the last `lines` lines of `content`.
fn tail_offset(content: &[u8], lines: usize) -> usize {
    if lines == 0 {
        return content.len();
    }
    let body = content.strip_suffix(b"\n").unwrap_or(content);
    let mut seen = 0;
    for (index, byte) in body.iter().enumerate().rev() {
        if *byte == b'\n' {
            seen += 1;
            if seen == lines {
                return index + 1;
            }
        }
    }
    0
}

async fn serve<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(stream: S, book: &LogBook) {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).await.is_err() {
        return;
    }
    // The rest of the head: headers are not needed.
    let mut read = request_line.len();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(n) => read += n,
        }
        if line == "\r\n" || line == "\n" || read > MAX_HEAD {
            break;
        }
    }
    let mut words = request_line.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let mut stream = reader.into_inner();
    let respond = async |stream: &mut S, status: &str, body: &str| {
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.shutdown().await;
    };
    let Some((key, query)) = parse_target(target).filter(|_| method == "GET") else {
        respond(
            &mut stream,
            "404 Not Found",
            "only GET /containerLogs/{namespace}/{pod}/{container} is served\n",
        )
        .await;
        return;
    };
    let Some(mut entry) = book.get(&key) else {
        let (namespace, pod, container) = &key;
        let body = format!("container \"{container}\" in pod \"{pod}\" (namespace {namespace}) has not started\n");
        respond(&mut stream, "400 Bad Request", &body).await;
        return;
    };
    let Ok(mut file) = tokio::fs::File::open(&entry.path).await else {
        respond(&mut stream, "404 Not Found", "the container's log is gone\n").await;
        return;
    };
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n";
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    if let Some(lines) = query.tail_lines {
        let mut content = Vec::new();
        if file.read_to_end(&mut content).await.is_err() {
            return;
        }
        let start = tail_offset(&content, lines);
        if file.seek(std::io::SeekFrom::Start(start as u64)).await.is_err() {
            return;
        }
    }
    let mut remaining = query.limit_bytes.unwrap_or(u64::MAX);
    let mut buffer = vec![0_u8; 64 * 1024];
    loop {
        let running = *entry.running.borrow_and_update();
        // Everything written so far.
        loop {
            let want = usize::try_from(remaining.min(buffer.len() as u64)).unwrap_or(buffer.len());
            if want == 0 {
                let _ = stream.shutdown().await;
                return;
            }
            match file.read(&mut buffer[..want]).await {
                Ok(0) => break,
                Ok(n) => {
                    if stream.write_all(&buffer[..n]).await.is_err() || stream.flush().await.is_err() {
                        return;
                    }
                    remaining -= n as u64;
                }
                Err(_) => return,
            }
        }
        if !query.follow || !running {
            break;
        }
        let _ = tokio::time::timeout(FOLLOW_INTERVAL, entry.running.changed()).await;
    }
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_requests_name_a_container_and_what_of_its_log() {
        let (key, query) =
            parse_target("/containerLogs/ns/pod/step?follow=true&tailLines=3&limitBytes=10").expect("a log request");
        assert_eq!(key, ("ns".to_owned(), "pod".to_owned(), "step".to_owned()));
        assert_eq!(
            query,
            LogQuery {
                follow: true,
                tail_lines: Some(3),
                limit_bytes: Some(10)
            }
        );
        assert_eq!(parse_target("/containerLogs/ns/pod").map(|(k, _)| k), None);
        assert_eq!(parse_target("/exec/ns/pod/c").map(|(k, _)| k), None);
    }

    #[test]
    fn tails_keep_the_last_lines() {
        assert_eq!(tail_offset(b"a\nb\nc\n", 2), 2);
        assert_eq!(tail_offset(b"a\nb\nc", 2), 2);
        assert_eq!(tail_offset(b"a\nb\nc\n", 5), 0);
        assert_eq!(tail_offset(b"a\nb\n", 0), 4);
    }
}
