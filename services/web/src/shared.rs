//! What every request handler shares: the view behind a read-write lock (written only by the
//! followers, one event or key at a time; read by requests), the DORA ledger fed by the same
//! consumer, the live feed of new events, how far the catch-up has come, the web's own metrics,
//! and the clients of the stream, the log store, the config repo and the registry that a release
//! page reads on demand.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_nats::jetstream::object_store::ObjectStore;
use async_nats::jetstream::stream::Stream;
use baton_kit::dora::DoraLedger;
use baton_kit::source::Sources;
use tokio::sync::{Semaphore, broadcast};
use tokio_util::sync::CancellationToken;

use crate::config::ConfigRepo;
use crate::layers::Layers;
use crate::metrics::WebMetrics;
use crate::view::{EventOut, View};

/// How many new events a slow live subscriber may fall behind before it skips some.
pub const LIVE_BACKLOG: usize = 1024;
/// How many live streams may be open at once: each holds a connection and a subscription for as
/// long as the client keeps it, so without a bound anyone could open them until the server runs
/// out of sockets or memory.
pub const MAX_LIVE_STREAMS: usize = 256;

/// Shared by every handler.
pub struct Shared {
    view: RwLock<View>,
    /// DORA's figures, kept current from the same events as the view (its own lock: a DORA
    /// report never holds up the matrix or the event log).
    dora: RwLock<DoraLedger>,
    /// Requests the web failed, by reason.
    pub metrics: WebMetrics,
    /// New events as they are observed, for the live event log.
    pub live: broadcast::Sender<Arc<EventOut>>,
    /// One permit per open live stream, [`MAX_LIVE_STREAMS`] in all.
    pub live_slots: Arc<Semaphore>,
    /// How far the catch-up has come.
    pub progress: Progress,
    /// The events stream: a release page fetches its events by sequence.
    pub events: Stream,
    /// The log store.
    pub logs: ObjectStore,
    /// The config repo's mirror, when configured.
    pub config_repo: Option<(Sources, ConfigRepo)>,
    /// The registry, when configured.
    pub registry: Option<Layers>,
    /// Cancelled at shutdown: live streams end so the server can stop.
    pub shutdown: CancellationToken,
}

/// The catch-up's progress: `/readyz` is ready once the events up to the stream's last
/// sequence at start are in the view and the promoter's keys are read.
#[derive(Debug, Default)]
pub struct Progress {
    /// The stream's last sequence when the service started.
    pub target: AtomicU64,
    /// The last sequence observed.
    pub observed: AtomicU64,
    /// Whether the events up to `target` are in.
    pub events_caught_up: AtomicBool,
    /// Whether the state bucket's keys are in.
    pub state_loaded: AtomicBool,
}

impl Progress {
    /// Whether the view is current.
    pub fn ready(&self) -> bool {
        self.events_caught_up.load(Ordering::Acquire) && self.state_loaded.load(Ordering::Acquire)
    }

    /// What is still missing, for `/readyz`.
    pub fn missing(&self) -> String {
        let mut missing = Vec::new();
        if !self.events_caught_up.load(Ordering::Acquire) {
            missing.push(format!(
                "catching up with the event log (sequence {} of {})",
                self.observed.load(Ordering::Relaxed),
                self.target.load(Ordering::Relaxed)
            ));
        }
        if !self.state_loaded.load(Ordering::Acquire) {
            missing.push("reading the promoter's state".to_owned());
        }
        missing.join("; ")
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("progress", &self.progress)
            .field("config_repo", &self.config_repo)
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Shares `view` with the clients.
    pub fn new(
        view: View,
        events: Stream,
        logs: ObjectStore,
        config_repo: Option<(Sources, ConfigRepo)>,
        registry: Option<Layers>,
        metrics: WebMetrics,
    ) -> Self {
        Self {
            view: RwLock::new(view),
            dora: RwLock::new(DoraLedger::new()),
            metrics,
            live: broadcast::channel(LIVE_BACKLOG).0,
            live_slots: Arc::new(Semaphore::new(MAX_LIVE_STREAMS)),
            progress: Progress::default(),
            events,
            logs,
            config_repo,
            registry,
            shutdown: CancellationToken::new(),
        }
    }

    /// The view, to read (a poisoned lock is still read: the view is never left half-updated
    /// by a panic it could not survive).
    pub fn read(&self) -> RwLockReadGuard<'_, View> {
        self.view.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The view, to update.
    pub fn write(&self) -> RwLockWriteGuard<'_, View> {
        self.view.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The DORA ledger, to report from.
    pub fn dora(&self) -> RwLockReadGuard<'_, DoraLedger> {
        self.dora.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The DORA ledger, to feed.
    pub fn dora_mut(&self) -> RwLockWriteGuard<'_, DoraLedger> {
        self.dora.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
