//! Leases: one replica at a time works on a thing (the promoter on an environment's config,
//! the deployer on a namespace), across every replica of every service. A lease is a key in
//! the JetStream KV bucket `baton-locks`, taken with compare-and-set, naming its owner and
//! purpose, and written with a per-message TTL: the *server* removes a lease its holder stopped
//! renewing, so expiry is judged by one clock, not by comparing the clocks of different
//! replicas. A replica that dies holding one only delays the next holder until the lease runs
//! out. A holder doing long work renews its lease ([`Locks::hold`] does it in the background),
//! and every renewal and [`Lease::check`] is a compare-and-set on the revision the holder last
//! wrote, so a holder that was paused past its lease learns that it lost it before it writes.
//!
//! A [`Lease`] is a guard: dropping it releases the lease in the background, so a handler that
//! is cancelled (a deadline, a shutdown) or returns early on any path frees the environment at
//! once instead of holding it until the lease expires. [`Lease::release`] does the same and
//! waits for it.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::header::{NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, NATS_MESSAGE_TTL};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::{self, kv};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::fabric::Topology;

/// How many times in a row the lock store may fail before [`Locks::acquire`] gives up.
const STORE_ATTEMPTS: u32 = 5;

/// A held lease, released when dropped (or by [`Lease::release`]).
#[derive(Debug)]
pub struct Lease {
    kv: kv::Store,
    key: String,
    /// The revision this holder last wrote; shared so renewing needs only `&Lease` and the work
    /// a lease guards can check it while [`Locks::hold`] renews it.
    revision: Arc<AtomicU64>,
    purpose: String,
    released: bool,
}

impl Lease {
    /// Whether the lease is still this holder's: the key's latest revision is the one it last
    /// wrote (taken or renewed). Call it before a write that must not happen once another
    /// replica may have taken over, e.g. after work that could outlast the lease.
    ///
    /// # Errors
    /// [`LockError::Lost`] when it expired (and perhaps was taken over); [`LockError::Store`].
    pub async fn check(&self) -> Result<(), LockError> {
        match self.kv.entry(&self.key).await {
            Ok(Some(entry)) if entry.revision == self.revision() && entry.operation == kv::Operation::Put => Ok(()),
            Ok(_) => Err(LockError::Lost(self.key.clone())),
            Err(e) => Err(LockError::Store(e.to_string())),
        }
    }

    /// Releases the lease and waits until the store has it (only if it is still ours: a lease
    /// taken over after expiry is not).
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn release(mut self) {
        self.released = true;
        delete(&self.kv, &self.key, self.revision()).await;
    }

    fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::debug!(key = %self.key, "no runtime to release the lease on; it expires instead");
            return;
        };
        let (kv, key, revision) = (self.kv.clone(), std::mem::take(&mut self.key), self.revision());
        runtime.spawn(async move { delete(&kv, &key, revision).await });
    }
}

async fn delete(kv: &kv::Store, key: &str, revision: u64) {
    if let Err(e) = kv.delete_expect_revision(key, Some(revision)).await {
        tracing::debug!(key, error = %e, "lease was no longer ours to release");
    }
}

/// What a lease records. `expires_at` is the holder's estimate, shown to whoever waits; the
/// server's TTL (`ttl_seconds`) is what ends the lease. A record without `ttl_seconds` was
/// written by a Baton whose leases had no TTL: the server never removes it, so it is taken over
/// once its `expires_at` passed, as such leases always were.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LeaseRecord {
    owner: String,
    purpose: String,
    expires_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ttl_seconds: Option<u64>,
}

/// The lock could not be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    /// Another replica held it for longer than we may wait.
    #[error("`{name}` is busy ({holder}); retrying later")]
    Busy {
        /// What the lease is for.
        name: String,
        /// Who holds it and for what.
        holder: String,
    },
    /// The lease expired and another replica took it over.
    #[error("the lease on `{0}` was lost to another replica")]
    Lost(String),
    /// KV unavailable (after a few attempts, when taking a lease).
    #[error("the lock store is unavailable: {0}")]
    Store(String),
}

/// The leases of one replica.
#[derive(Debug, Clone)]
pub struct Locks {
    jetstream: jetstream::Context,
    kv: kv::Store,
    owner: String,
    lease: Duration,
    wait: Duration,
}

impl Locks {
    /// Locks in `topology`'s lease bucket held as `owner` (unique per replica) for `lease`,
    /// waiting at most `wait` for one.
    pub fn new(topology: &Topology, owner: impl Into<String>, lease: Duration, wait: Duration) -> Self {
        Self {
            jetstream: topology.jetstream.clone(),
            kv: topology.locks.clone(),
            owner: owner.into(),
            lease,
            wait,
        }
    }

    /// Takes the lease `key` (a KV key, e.g. `env.staging`) for `purpose`, waiting while
    /// another replica holds it: until the server removes a lease its holder stopped renewing.
    ///
    /// # Errors
    /// [`LockError::Busy`] after `wait`; [`LockError::Store`] when KV fails.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn acquire(&self, key: &str, purpose: &str) -> Result<Lease, LockError> {
        let deadline = tokio::time::Instant::now() + self.wait;
        let mut pause = Duration::from_millis(10);
        let held = |revision: u64| Lease {
            kv: self.kv.clone(),
            key: key.to_owned(),
            revision: Arc::new(AtomicU64::new(revision)),
            purpose: purpose.to_owned(),
            released: false,
        };
        // Store failures in a row: a conflict with another replica is the normal race and
        // resets nothing, but a store that keeps failing is reported, not retried forever.
        let mut failures = 0;
        let mut store_failed = |e: &dyn std::fmt::Display| {
            failures += 1;
            if failures >= STORE_ATTEMPTS {
                Err(LockError::Store(format!("{e} (after {failures} attempts on `{key}`)")))
            } else {
                tracing::debug!(key, error = %e, "lock store failed, trying again");
                Ok(())
            }
        };
        // The revision the next write expects: 0 (the key was never written or was removed by
        // its TTL) unless the last look found a delete marker or a stale record to write over.
        let mut expected = 0;
        // The owner of the stale record being taken over, if that is what the write does.
        let mut stale_owner: Option<String> = None;
        loop {
            match self.write(key, purpose, expected).await {
                Ok(revision) => {
                    if let Some(previous) = stale_owner {
                        tracing::warn!(key, %previous, "took over a lease that had no expiry on the server");
                    }
                    return Ok(held(revision));
                }
                // Another replica wrote first, or the key is held: look again.
                Err(Written::Conflict) => {}
                Err(Written::Failed(e)) => {
                    store_failed(&e)?;
                    continue;
                }
            }
            (expected, stale_owner) = (0, None);
            let holder = match self.kv.entry(key).await {
                Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
                    let current: Option<LeaseRecord> = serde_json::from_slice(&entry.value).ok();
                    // Only a record the server will never remove is judged by the clock.
                    let stale = current
                        .as_ref()
                        .is_none_or(|c| c.ttl_seconds.is_none() && c.expires_at <= Utc::now());
                    if stale {
                        expected = entry.revision;
                        stale_owner = Some(current.map(|c| c.owner).unwrap_or_default());
                        continue;
                    }
                    current
                        .map(|c| format!("{} {}", c.owner, c.purpose))
                        .unwrap_or_default()
                }
                // Released (a delete marker) or removed by its TTL: take it over the marker.
                Ok(Some(entry)) => {
                    expected = entry.revision;
                    continue;
                }
                // Gone between our write and this read: try again at once.
                Ok(None) => continue,
                Err(e) => {
                    store_failed(&e)?;
                    continue;
                }
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(LockError::Busy {
                    name: key.to_owned(),
                    holder,
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// The lease's TTL on the server: the lease time in whole seconds (NATS's unit), at least one.
    fn ttl(&self) -> Duration {
        Duration::from_secs((self.lease.as_secs() + u64::from(self.lease.subsec_nanos() > 0)).max(1))
    }

    /// Writes a lease record for `purpose` to `key` with the lease's TTL, only if the key's last
    /// revision is `expected` (0: no message). async-nats's `create` and `update` cannot give a
    /// TTL to every write (re-creating over a delete marker, renewing), so this publishes as
    /// they do, with both headers.
    async fn write(&self, key: &str, purpose: &str, expected: u64) -> Result<u64, Written> {
        let ttl = self.ttl();
        let record = LeaseRecord {
            owner: self.owner.clone(),
            purpose: purpose.to_owned(),
            expires_at: Utc::now() + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::seconds(30)),
            ttl_seconds: Some(ttl.as_secs()),
        };
        let value: bytes::Bytes = serde_json::to_vec(&record).expect("a lease serializes").into();
        // Baton's contexts have no JetStream domain, so the bucket's own prefix is the subject's.
        let subject = format!("{}{key}", self.kv.put_prefix.as_ref().unwrap_or(&self.kv.prefix));
        let mut headers = HeaderMap::new();
        headers.insert(NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, expected.to_string().as_str());
        headers.insert(NATS_MESSAGE_TTL, ttl.as_secs().to_string().as_str());
        let written = async {
            self.jetstream
                .publish_with_headers(subject, headers, value)
                .await?
                .await
        };
        match written.await {
            Ok(ack) => Ok(ack.sequence),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Err(Written::Conflict),
            Err(e) => Err(Written::Failed(e.to_string())),
        }
    }

    /// How long a lease lasts unless renewed.
    pub fn lease_time(&self) -> Duration {
        self.lease
    }

    /// Extends `lease` by a full lease time from now (call well within it, e.g. every third).
    ///
    /// # Errors
    /// [`LockError::Lost`] when it expired or another replica took it over; [`LockError::Store`].
    pub async fn renew(&self, lease: &Lease) -> Result<(), LockError> {
        match self.write(&lease.key, &lease.purpose, lease.revision()).await {
            Ok(revision) => {
                lease.revision.store(revision, Ordering::Release);
                Ok(())
            }
            Err(Written::Conflict) => Err(LockError::Lost(lease.key.clone())),
            Err(Written::Failed(e)) => Err(LockError::Store(e)),
        }
    }

    /// Runs `work` while holding `lease`, renewing it every third of the lease time. When a
    /// renewal finds the lease lost (the holder was paused past it, or the store failed for
    /// that long), `work` is dropped at once and the loss returned. A holder that was paused
    /// (stopped, starved) may resume with its work ready before the renewal tick, so `work`
    /// still calls [`Lease::check`] before each write it must not make without the lease.
    ///
    /// # Errors
    /// [`LockError::Lost`] or [`LockError::Store`] from a renewal.
    pub async fn hold<F: Future>(&self, lease: &Lease, work: F) -> Result<F::Output, LockError> {
        let period = (self.lease / 3).max(Duration::from_millis(10));
        let mut renewals = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        renewals.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(work);
        loop {
            tokio::select! {
                done = &mut work => return Ok(done),
                _ = renewals.tick() => self.renew(lease).await?,
            }
        }
    }
}

/// Why a conditional write of a lease did not happen.
enum Written {
    /// The key's last revision was not the one expected.
    Conflict,
    /// The store failed.
    Failed(String),
}
