//! Leases: one replica at a time works on a thing (the promoter on an environment's config,
//! the deployer on a namespace), across every replica of every service. A lease is a key in
//! the JetStream KV bucket `baton-locks`, taken with compare-and-set, naming its owner and when
//! it expires; a replica that dies holding one only delays the next holder until the lease runs
//! out, then another replica takes it over (again with compare-and-set, so only one does). A
//! holder doing long work renews its lease.
//!
//! A [`Lease`] is a guard: dropping it releases the lease in the background, so a handler that
//! is cancelled (a deadline, a shutdown) or returns early on any path frees the environment at
//! once instead of holding it until the lease expires. [`Lease::release`] does the same and
//! waits for it.

use std::time::Duration;

use async_nats::jetstream::kv;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// How many times in a row the lock store may fail before [`Locks::acquire`] gives up.
const STORE_ATTEMPTS: u32 = 5;

/// A held lease, released when dropped (or by [`Lease::release`]).
#[derive(Debug)]
pub struct Lease {
    kv: kv::Store,
    key: String,
    revision: u64,
    purpose: String,
    released: bool,
}

impl Lease {
    /// Releases the lease and waits until the store has it (only if it is still ours: a lease
    /// taken over after expiry is not).
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn release(mut self) {
        self.released = true;
        delete(&self.kv, &self.key, self.revision).await;
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
        let (kv, key, revision) = (self.kv.clone(), std::mem::take(&mut self.key), self.revision);
        runtime.spawn(async move { delete(&kv, &key, revision).await });
    }
}

async fn delete(kv: &kv::Store, key: &str, revision: u64) {
    if let Err(e) = kv.delete_expect_revision(key, Some(revision)).await {
        tracing::debug!(key, error = %e, "lease was no longer ours to release");
    }
}

/// What a lease records.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LeaseRecord {
    owner: String,
    purpose: String,
    expires_at: DateTime<Utc>,
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
    kv: kv::Store,
    owner: String,
    lease: Duration,
    wait: Duration,
}

impl Locks {
    /// Locks held as `owner` (unique per replica) for `lease`, waiting at most `wait` for one.
    pub fn new(kv: kv::Store, owner: impl Into<String>, lease: Duration, wait: Duration) -> Self {
        Self {
            kv,
            owner: owner.into(),
            lease,
            wait,
        }
    }

    /// Takes the lease `key` (a KV key, e.g. `env.staging`) for `purpose`, waiting while
    /// another live replica holds it, and taking over a lease that expired.
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
            revision,
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
        loop {
            let value = self.record(purpose);
            match self.kv.create(key, value.clone()).await {
                Ok(revision) => return Ok(held(revision)),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => {
                    store_failed(&e)?;
                    continue;
                }
            }
            let holder = match self.kv.entry(key).await {
                Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
                    let current: Option<LeaseRecord> = serde_json::from_slice(&entry.value).ok();
                    let expired = current.as_ref().is_none_or(|c| c.expires_at <= Utc::now());
                    if expired {
                        match self.kv.update(key, value, entry.revision).await {
                            Ok(revision) => {
                                if let Some(c) = &current {
                                    tracing::warn!(key, previous = %c.owner, "took over an expired lease");
                                }
                                return Ok(held(revision));
                            }
                            // Another replica took it over first: look again.
                            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
                            Err(e) => store_failed(&e)?,
                        }
                        continue;
                    }
                    current
                        .map(|c| format!("{} {}", c.owner, c.purpose))
                        .unwrap_or_default()
                }
                // Deleted or gone between our create and this read: try again at once.
                Ok(_) => continue,
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

    fn record(&self, purpose: &str) -> bytes::Bytes {
        let record = LeaseRecord {
            owner: self.owner.clone(),
            purpose: purpose.to_owned(),
            expires_at: Utc::now() + chrono::Duration::from_std(self.lease).unwrap_or(chrono::Duration::seconds(30)),
        };
        serde_json::to_vec(&record).expect("a lease serializes").into()
    }

    /// How long a lease lasts unless renewed.
    pub fn lease_time(&self) -> Duration {
        self.lease
    }

    /// Extends `lease` by a full lease time from now (call well within it, e.g. every third).
    ///
    /// # Errors
    /// [`LockError::Lost`] when another replica took it over; [`LockError::Store`].
    pub async fn renew(&self, lease: &mut Lease) -> Result<(), LockError> {
        match self
            .kv
            .update(&lease.key, self.record(&lease.purpose), lease.revision)
            .await
        {
            Ok(revision) => {
                lease.revision = revision;
                Ok(())
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Err(LockError::Lost(lease.key.clone())),
            Err(e) => Err(LockError::Store(e.to_string())),
        }
    }
}
