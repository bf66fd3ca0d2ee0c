//! One promotion per environment at a time, across every promoter replica: a lease in the
//! JetStream KV bucket `baton-locks`, taken with compare-and-set. A lease names its owner and
//! when it expires; a replica that dies holding one only delays the next promotion until the
//! lease runs out, then another replica takes it over (again with compare-and-set, so only one
//! does).

use std::time::Duration;

use async_nats::jetstream::kv;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A held lease.
#[derive(Debug)]
pub struct Lease {
    key: String,
    revision: u64,
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
    #[error("environment `{environment}` is busy with another promotion ({holder}); retrying later")]
    Busy {
        /// The environment.
        environment: String,
        /// Who holds it and for what.
        holder: String,
    },
    /// KV unavailable.
    #[error("the lock store is unavailable: {0}")]
    Store(String),
}

/// Environment locks of one promoter replica.
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

    /// Takes the lock of `environment` for `purpose`, waiting while another live replica holds
    /// it, and taking over a lease that expired.
    ///
    /// # Errors
    /// [`LockError::Busy`] after `wait`; [`LockError::Store`] when KV fails.
    pub async fn acquire(&self, environment: &str, purpose: &str) -> Result<Lease, LockError> {
        let key = format!("env.{environment}");
        let deadline = tokio::time::Instant::now() + self.wait;
        let mut pause = Duration::from_millis(10);
        loop {
            let record = LeaseRecord {
                owner: self.owner.clone(),
                purpose: purpose.to_owned(),
                expires_at: Utc::now()
                    + chrono::Duration::from_std(self.lease).unwrap_or(chrono::Duration::seconds(30)),
            };
            let value: bytes::Bytes = serde_json::to_vec(&record).expect("a lease serializes").into();
            match self.kv.create(&key, value.clone()).await {
                Ok(revision) => return Ok(Lease { key, revision }),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(LockError::Store(e.to_string())),
            }
            let holder = match self.kv.entry(&key).await {
                Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
                    let current: Option<LeaseRecord> = serde_json::from_slice(&entry.value).ok();
                    let expired = current.as_ref().is_none_or(|c| c.expires_at <= Utc::now());
                    if expired {
                        if let Ok(revision) = self.kv.update(&key, value, entry.revision).await {
                            if let Some(c) = &current {
                                tracing::warn!(environment, previous = %c.owner, "took over an expired environment lock");
                            }
                            return Ok(Lease { key, revision });
                        }
                        continue;
                    }
                    current
                        .map(|c| format!("{} {}", c.owner, c.purpose))
                        .unwrap_or_default()
                }
                // Deleted or gone between our create and this read: try again at once.
                Ok(_) => continue,
                Err(e) => return Err(LockError::Store(e.to_string())),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(LockError::Busy {
                    environment: environment.to_owned(),
                    holder,
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// Releases `lease` (only if it is still ours: a lease taken over after expiry is not).
    pub async fn release(&self, lease: Lease) {
        if let Err(e) = self.kv.delete_expect_revision(&lease.key, Some(lease.revision)).await {
            tracing::debug!(key = %lease.key, error = %e, "lease was no longer ours to release");
        }
    }
}
