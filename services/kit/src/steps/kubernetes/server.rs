//! The workspace server: how a step's pod gets its workspace and gives its outputs back, over
//! HTTP on `steps.kubernetes.workspace.listen`, for as long as the executor lives.
//!
//! Every step opens a [`Ticket`]: a token of 32 random bytes (hex) that is good for that step
//! only, for one `GET /v1/workspace` (the workspace as a tar archive), any number of
//! `GET /v1/workspace/ready` (`ready` once the step's container has ended, `wait` after a while
//! otherwise, so the pod asks again: both 200, which every `wget` takes as success) and one `POST /v1/workspace` (the outputs, accepted only
//! once the step has ended). Tokens are compared in constant time; a token used twice in one
//! direction gets 409, an unknown, dropped or expired one 401, and every refusal is logged. The
//! ticket is dropped with the step, and its token dies with it.
//!
//! The outputs are hostile: they are spooled under a byte cap, decoded from base64 and unpacked by
//! [`archive::unpack`] into a fresh directory beside the workspace, and replace the workspace's
//! contents only when whole and while the step still holds its ticket (outputs that arrive after
//! it gave up waiting never touch a workspace it moved on from).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt as _;
use rand::RngCore as _;
use subtle::ConstantTimeEq as _;
use tokio::io::{AsyncSeekExt as _, AsyncWriteExt as _};
use tokio::sync::{oneshot, watch};

use super::archive::{self, Caps, Unpacked};

/// How long `GET /v1/workspace/ready` holds a request before answering `wait`.
const READY_WAIT: Duration = Duration::from_secs(25);
/// Archive bytes allowed per entry beyond the files' contents (headers, padding, long names).
const ARCHIVE_OVERHEAD_PER_ENTRY: u64 = 1536;

/// The steps whose pods may reach the server now, each by its token.
#[derive(Debug, Default)]
pub(super) struct Transfers {
    open: Mutex<Vec<Arc<Transfer>>>,
}

/// One step's transfers.
#[derive(Debug)]
struct Transfer {
    /// The token, hex, as the pod presents it.
    token: String,
    /// The step's pod, for logs.
    pod: String,
    /// The workspace served, and replaced by the outputs.
    workspace: PathBuf,
    /// What the outputs may hold.
    caps: Caps,
    /// Past this the token is refused even if the step still holds it.
    expires: Instant,
    /// Whether the workspace was fetched (once only).
    fetched: AtomicBool,
    /// Whether outputs were sent (once only).
    returned: AtomicBool,
    /// `true` once the step's container has ended.
    step_ended: watch::Sender<bool>,
    /// Where the outputs' fate goes, once.
    outputs: Mutex<Option<oneshot::Sender<Result<Unpacked, String>>>>,
}

/// One step's right to the server, and its token; dropping it ends the token.
#[derive(Debug)]
pub(super) struct Ticket {
    transfers: Arc<Transfers>,
    transfer: Arc<Transfer>,
    outputs: Option<oneshot::Receiver<Result<Unpacked, String>>>,
}

impl Transfers {
    /// Opens a step's transfers: its workspace served once, its outputs accepted once within
    /// `caps`, for at most `lifetime`.
    pub(super) fn open(self: &Arc<Self>, pod: &str, workspace: &Path, caps: Caps, lifetime: Duration) -> Ticket {
        let mut bytes = [0_u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let (sender, receiver) = oneshot::channel();
        let transfer = Arc::new(Transfer {
            token: hex::encode(bytes),
            pod: pod.to_owned(),
            workspace: workspace.to_owned(),
            caps,
            expires: Instant::now() + lifetime,
            fetched: AtomicBool::new(false),
            returned: AtomicBool::new(false),
            step_ended: watch::Sender::new(false),
            outputs: Mutex::new(Some(sender)),
        });
        self.lock().push(Arc::clone(&transfer));
        Ticket {
            transfers: Arc::clone(self),
            transfer,
            outputs: Some(receiver),
        }
    }

    /// Whether `transfer`'s step still holds its ticket.
    fn is_open(&self, transfer: &Arc<Transfer>) -> bool {
        self.lock().iter().any(|open| Arc::ptr_eq(open, transfer))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Transfer>>> {
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The open transfer of `presented`, comparing it with every token in constant time.
    fn find(&self, presented: &[u8]) -> Option<Arc<Transfer>> {
        let mut found = None;
        for transfer in self.lock().iter() {
            if bool::from(transfer.token.as_bytes().ct_eq(presented)) {
                found = Some(Arc::clone(transfer));
            }
        }
        found
    }
}

impl Ticket {
    /// The token the step's pod presents (`Authorization: Bearer <token>`).
    pub(super) fn token(&self) -> &str {
        &self.transfer.token
    }

    /// Tells the pod's `workspace-out` container (asking `/v1/workspace/ready`) that the step's
    /// container has ended, so the outputs may come back.
    pub(super) fn step_ended(&self) {
        self.transfer.step_ended.send_replace(true);
    }

    /// Waits until the outputs came back and replaced the workspace (or were refused). Once only:
    /// later calls wait forever.
    pub(super) async fn outputs(&mut self) -> Result<Unpacked, String> {
        match self.outputs.take() {
            Some(receiver) => receiver
                .await
                .unwrap_or_else(|_| Err("the workspace server stopped".to_owned())),
            None => std::future::pending().await,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.transfers.lock().retain(|t| !Arc::ptr_eq(t, &self.transfer));
    }
}

/// The server's routes over the open transfers.
pub(super) fn router(transfers: Arc<Transfers>) -> Router {
    Router::new()
        .route("/v1/workspace", get(fetch).post(give_back))
        .route("/v1/workspace/ready", get(ready))
        // The outputs are counted against their step's cap as they arrive.
        .layer(DefaultBodyLimit::disable())
        .with_state(transfers)
}

/// Serves `router` on `listener` until the task is aborted.
pub(super) async fn serve(listener: tokio::net::TcpListener, router: Router) {
    if let Err(e) = axum::serve(listener, router).await {
        tracing::error!(error = %e, "the workspace server stopped");
    }
}

/// The local address a listener is bound to, for logs.
pub(super) fn bound(listener: &tokio::net::TcpListener) -> Option<SocketAddr> {
    listener.local_addr().ok()
}

/// A request the server refuses, and how the pod (or whoever asked) can do better.
#[derive(Debug, thiserror::Error)]
enum TransferError {
    #[error(
        "no step holds this token (it is unknown, or its step ended): present the token of a running step's Secret"
    )]
    Unknown,
    #[error("this token expired with its step's deadline")]
    Expired,
    #[error("the workspace was already fetched with this token: each step fetches it once")]
    AlreadyFetched,
    #[error("outputs were already sent with this token: each step sends them once")]
    AlreadyReturned,
    #[error("the step is still running: send the outputs once /v1/workspace/ready answers 200")]
    StepRunning,
    #[error("the outputs are larger than the step's {cap} bytes")]
    TooLarge { cap: u64 },
    #[error("the outputs were refused: {0}")]
    Refused(String),
    #[error("the workspace cannot be served now")]
    Internal,
}

impl IntoResponse for TransferError {
    fn into_response(self) -> Response {
        let status = match self {
            Self::Unknown | Self::Expired => StatusCode::UNAUTHORIZED,
            Self::AlreadyFetched | Self::AlreadyReturned | Self::StepRunning => StatusCode::CONFLICT,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Refused(_) => StatusCode::BAD_REQUEST,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, format!("{self}\n")).into_response()
    }
}

/// The open transfer whose token the request presents.
fn authorize(transfers: &Transfers, headers: &HeaderMap, route: &'static str) -> Result<Arc<Transfer>, TransferError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or_default();
    let Some(transfer) = transfers.find(presented) else {
        tracing::warn!(route, "workspace request with an unknown token refused");
        return Err(TransferError::Unknown);
    };
    if Instant::now() > transfer.expires {
        tracing::warn!(route, pod = %transfer.pod, "workspace request with an expired token refused");
        return Err(TransferError::Expired);
    }
    Ok(transfer)
}

/// `GET /v1/workspace`: the workspace as a tar archive, once per token.
async fn fetch(State(transfers): State<Arc<Transfers>>, headers: HeaderMap) -> Result<Response, TransferError> {
    let transfer = authorize(&transfers, &headers, "fetch")?;
    if transfer.fetched.swap(true, Ordering::SeqCst) {
        tracing::warn!(pod = %transfer.pod, "second fetch of a workspace refused");
        return Err(TransferError::AlreadyFetched);
    }
    let workspace = transfer.workspace.clone();
    let packed = tokio::task::spawn_blocking(move || {
        let mut file = tempfile::tempfile()?;
        archive::pack(&workspace, &mut file)?;
        Ok::<_, std::io::Error>(file)
    })
    .await;
    let file = match packed {
        Ok(Ok(file)) => file,
        Ok(Err(e)) => {
            tracing::error!(pod = %transfer.pod, error = %e, "cannot pack the workspace");
            return Err(TransferError::Internal);
        }
        Err(e) => {
            tracing::error!(pod = %transfer.pod, error = %e, "packing the workspace panicked");
            return Err(TransferError::Internal);
        }
    };
    let mut file = tokio::fs::File::from_std(file);
    let length = file
        .seek(std::io::SeekFrom::End(0))
        .await
        .map_err(|_| TransferError::Internal)?;
    file.rewind().await.map_err(|_| TransferError::Internal)?;
    tracing::debug!(pod = %transfer.pod, bytes = length, "workspace served");
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-tar".to_owned()),
            (header::CONTENT_LENGTH, length.to_string()),
        ],
        Body::from_stream(tokio_util::io::ReaderStream::new(file)),
    )
        .into_response())
}

/// `GET /v1/workspace/ready`: `ready` once the step's container ended, else `wait` after a while.
async fn ready(State(transfers): State<Arc<Transfers>>, headers: HeaderMap) -> Result<Response, TransferError> {
    let transfer = authorize(&transfers, &headers, "ready")?;
    let mut ended = transfer.step_ended.subscribe();
    drop(transfer);
    match tokio::time::timeout(READY_WAIT, ended.wait_for(|ended| *ended)).await {
        Ok(Ok(_)) => Ok((StatusCode::OK, "ready\n").into_response()),
        // The step ended without telling (its ticket was dropped): the pod is going away.
        Ok(Err(_)) => Err(TransferError::Unknown),
        Err(_) => Ok((StatusCode::OK, "wait\n").into_response()),
    }
}

/// `POST /v1/workspace`: the outputs (base64 of a tar archive), once per token and only after
/// the step ended.
async fn give_back(
    State(transfers): State<Arc<Transfers>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, TransferError> {
    let transfer = authorize(&transfers, &headers, "give_back")?;
    if !*transfer.step_ended.borrow() {
        tracing::warn!(pod = %transfer.pod, "outputs sent while the step runs refused");
        return Err(TransferError::StepRunning);
    }
    if transfer.returned.swap(true, Ordering::SeqCst) {
        tracing::warn!(pod = %transfer.pod, "second sending of outputs refused");
        return Err(TransferError::AlreadyReturned);
    }
    let result = receive(&transfers, &transfer, body).await;
    let told = match &result {
        Ok(unpacked) => Ok(*unpacked),
        Err(e) => Err(e.to_string()),
    };
    if let Some(sender) = transfer
        .outputs
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
    {
        let _ = sender.send(told);
    }
    match result {
        Ok(unpacked) => {
            tracing::debug!(pod = %transfer.pod, bytes = unpacked.bytes, entries = unpacked.entries, "outputs received");
            Ok((StatusCode::OK, "received\n").into_response())
        }
        Err(e) => {
            tracing::warn!(pod = %transfer.pod, error = %e, "outputs refused");
            Err(e)
        }
    }
}

/// Spools the outputs under the cap, unpacks them beside the workspace and swaps them in, unless
/// the step let go of its workspace meanwhile (it timed out waiting, or was dropped).
async fn receive(transfers: &Arc<Transfers>, transfer: &Arc<Transfer>, body: Body) -> Result<Unpacked, TransferError> {
    // The archive's size, as base64 (4 characters for 3 bytes, and line breaks).
    let archive = transfer
        .caps
        .bytes
        .saturating_add(transfer.caps.entries.saturating_mul(ARCHIVE_OVERHEAD_PER_ENTRY))
        .saturating_add(1 << 20);
    let cap = archive.saturating_add(archive / 2);
    let spool = tempfile::tempfile().map_err(|_| TransferError::Internal)?;
    let mut spool = tokio::fs::File::from_std(spool);
    let mut received: u64 = 0;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| TransferError::Refused(format!("the upload broke off: {e}")))?;
        received += chunk.len() as u64;
        if received > cap {
            return Err(TransferError::TooLarge {
                cap: transfer.caps.bytes,
            });
        }
        spool.write_all(&chunk).await.map_err(|_| TransferError::Internal)?;
    }
    spool.rewind().await.map_err(|_| TransferError::Internal)?;
    let spool = spool.into_std().await;
    let (transfers, transfer) = (Arc::clone(transfers), Arc::clone(transfer));
    tokio::task::spawn_blocking(move || {
        let (workspace, caps) = (&transfer.workspace, transfer.caps);
        let parent = workspace.parent().unwrap_or(workspace);
        let fresh = tempfile::Builder::new()
            .prefix(".baton-outputs-")
            .tempdir_in(parent)
            .map_err(|e| TransferError::Refused(format!("no room beside the workspace: {e}")))?;
        let unpacked = archive::unpack(
            archive::Base64Reader::new(std::io::BufReader::new(spool)),
            fresh.path(),
            caps,
        )
        .map_err(|e| match e {
            archive::ArchiveError::TooLarge { cap } => TransferError::TooLarge { cap },
            other => TransferError::Refused(other.to_string()),
        })?;
        if !transfers.is_open(&transfer) {
            return Err(TransferError::Unknown);
        }
        archive::replace_contents(workspace, fresh.path())
            .map_err(|e| TransferError::Refused(format!("cannot replace the workspace: {e}")))?;
        Ok(unpacked)
    })
    .await
    .map_err(|_| TransferError::Internal)?
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPS: Caps = Caps {
        bytes: 1 << 20,
        entries: 100,
    };

    struct Server {
        transfers: Arc<Transfers>,
        base: String,
        http: reqwest::Client,
        _task: tokio_util::task::AbortOnDropHandle<()>,
    }

    async fn server() -> Server {
        let transfers = Arc::new(Transfers::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(serve(listener, router(Arc::clone(&transfers))));
        // reqwest builds its TLS config even for plain HTTP, from the process's provider.
        crate::tls::install_crypto_provider();
        Server {
            transfers,
            base,
            http: reqwest::Client::new(),
            _task: tokio_util::task::AbortOnDropHandle::new(task),
        }
    }

    impl Server {
        async fn get(&self, path: &str, token: &str) -> reqwest::Response {
            self.http
                .get(format!("{}{path}", self.base))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
        }

        async fn post(&self, token: &str, body: Vec<u8>) -> reqwest::Response {
            self.http
                .post(format!("{}/v1/workspace", self.base))
                .bearer_auth(token)
                .body(body)
                .send()
                .await
                .unwrap()
        }
    }

    fn workspace() -> tempfile::TempDir {
        let parent = tempfile::tempdir().unwrap().keep();
        let dir = tempfile::tempdir_in(parent).unwrap();
        std::fs::write(dir.path().join("input.txt"), "in\n").unwrap();
        dir
    }

    fn outputs() -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("input.txt"), "in\n").unwrap();
        std::fs::write(dir.path().join("report.xml"), "<testsuite/>").unwrap();
        let mut archive = Vec::new();
        archive::pack(dir.path(), &mut archive).unwrap();
        archive::tests::base64(&archive)
    }

    #[tokio::test]
    async fn a_step_fetches_once_and_gives_back_once_after_it_ended() {
        let server = server().await;
        let workspace = workspace();
        let mut ticket = server
            .transfers
            .open("pod-1", workspace.path(), CAPS, Duration::from_secs(60));
        let token = ticket.token().to_owned();
        assert_eq!(token.len(), 64);

        let fetched = server.get("/v1/workspace", &token).await;
        assert_eq!(fetched.status(), 200);
        let archive = fetched.bytes().await.unwrap();
        let unpacked = tempfile::tempdir().unwrap();
        archive::unpack(&archive[..], unpacked.path(), CAPS).unwrap();
        assert_eq!(
            std::fs::read_to_string(unpacked.path().join("input.txt")).unwrap(),
            "in\n"
        );
        // Replayed: refused.
        assert_eq!(server.get("/v1/workspace", &token).await.status(), 409);

        // Outputs before the step ended: refused, and the token keeps its one sending.
        assert_eq!(server.post(&token, outputs()).await.status(), 409);
        ticket.step_ended();
        let ready = server.get("/v1/workspace/ready", &token).await;
        assert_eq!(ready.status(), 200);
        assert_eq!(ready.text().await.unwrap(), "ready\n");
        assert_eq!(server.post(&token, outputs()).await.status(), 200);
        let unpacked = ticket.outputs().await.unwrap();
        assert_eq!(unpacked.entries, 2);
        assert_eq!(
            std::fs::read_to_string(workspace.path().join("report.xml")).unwrap(),
            "<testsuite/>"
        );
        // Replayed: refused.
        assert_eq!(server.post(&token, outputs()).await.status(), 409);

        // The step is over: its token is worth nothing.
        drop(ticket);
        assert_eq!(server.get("/v1/workspace/ready", &token).await.status(), 401);
        assert_eq!(server.get("/v1/workspace", &token).await.status(), 401);
    }

    #[tokio::test]
    async fn forged_and_expired_tokens_are_refused() {
        let server = server().await;
        let workspace = workspace();
        let ticket = server
            .transfers
            .open("pod-1", workspace.path(), CAPS, Duration::from_secs(60));
        let token = ticket.token().to_owned();
        let mut forged = token.clone().into_bytes();
        forged[63] = if forged[63] == b'0' { b'1' } else { b'0' };
        let forged = String::from_utf8(forged).unwrap();
        for bad in [forged.as_str(), &token[..63], "", "Bearer", &format!("{token}0")] {
            assert_eq!(server.get("/v1/workspace", bad).await.status(), 401, "{bad:?}");
        }
        let no_header = server
            .http
            .get(format!("{}/v1/workspace", server.base))
            .send()
            .await
            .unwrap();
        assert_eq!(no_header.status(), 401);
        // Another step's token does not open this one's workspace twice.
        let other = server
            .transfers
            .open("pod-2", workspace.path(), CAPS, Duration::from_secs(60));
        assert_eq!(server.get("/v1/workspace", other.token()).await.status(), 200);
        assert_eq!(server.get("/v1/workspace", &token).await.status(), 200);

        let expired = server.transfers.open("pod-3", workspace.path(), CAPS, Duration::ZERO);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let response = server.get("/v1/workspace", expired.token()).await;
        assert_eq!(response.status(), 401);
        assert!(response.text().await.unwrap().contains("expired"));
    }

    #[tokio::test]
    async fn outputs_arriving_after_the_step_let_go_leave_the_workspace_alone() {
        use tokio::io::AsyncReadExt as _;

        let server = server().await;
        let workspace = workspace();
        let ticket = server
            .transfers
            .open("pod-1", workspace.path(), CAPS, Duration::from_secs(60));
        ticket.step_ended();
        // The upload starts while the step holds its ticket and ends after it let go of it.
        let body = outputs();
        let (first, rest) = body.split_at(body.len() / 2);
        let address = server.base.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let head = format!(
            "POST /v1/workspace HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            ticket.token(),
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(first).await.unwrap();
        stream.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(ticket);
        stream.write_all(rest).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 401"), "{response}");
        assert!(!workspace.path().join("report.xml").exists());
        assert_eq!(
            std::fs::read_to_string(workspace.path().join("input.txt")).unwrap(),
            "in\n"
        );
    }

    #[tokio::test]
    async fn hostile_or_oversized_outputs_leave_the_workspace_as_it_was() {
        let server = server().await;
        let workspace = workspace();
        let small = Caps { bytes: 8, entries: 100 };
        let mut ticket = server
            .transfers
            .open("pod-1", workspace.path(), small, Duration::from_secs(60));
        ticket.step_ended();
        let response = server.post(ticket.token(), outputs()).await;
        assert_eq!(response.status(), 413);
        assert!(ticket.outputs().await.unwrap_err().contains("larger than"));
        assert_eq!(
            std::fs::read_to_string(workspace.path().join("input.txt")).unwrap(),
            "in\n"
        );
        assert!(!workspace.path().join("report.xml").exists());

        let mut ticket = server
            .transfers
            .open("pod-2", workspace.path(), CAPS, Duration::from_secs(60));
        ticket.step_ended();
        let mut header = tar::Header::new_gnu();
        header.as_old_mut().name[..9].copy_from_slice(b"../escape");
        header.set_size(1);
        header.set_cksum();
        let mut hostile = tar::Builder::new(Vec::new());
        hostile.append(&header, &b"x"[..]).unwrap();
        let response = server
            .post(ticket.token(), archive::tests::base64(&hostile.into_inner().unwrap()))
            .await;
        assert_eq!(response.status(), 400);
        assert!(ticket.outputs().await.unwrap_err().contains(".."));
        assert_eq!(
            std::fs::read_to_string(workspace.path().join("input.txt")).unwrap(),
            "in\n"
        );
        let beside: Vec<_> = std::fs::read_dir(workspace.path().parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(beside.len(), 1, "the fresh directory was left behind: {beside:?}");
    }
}
