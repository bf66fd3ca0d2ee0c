//! Leases against a real nats-server: a lease is released when its guard is dropped (a
//! cancelled handler frees the environment at once instead of holding it until it expires), a
//! busy lease is waited for and then refused naming the holder, an expired one is taken over,
//! and a lock store that keeps failing is reported after a few attempts instead of retried
//! forever. Expiry is the server's (a per-message TTL), not a replica's clock; a slow holder
//! keeps its lease by renewing it, and a paused one learns it lost the lease before it writes.

use std::time::Duration;

use anyhow::{Context, Result};
use baton_kit::fabric::{self, Topology};
use baton_kit::lease::{LockError, Locks};
use baton_tests::NatsServer;

/// Leases held as `owner` for a minute, waiting at most `wait` for a busy one.
fn locks(topology: &Topology, owner: &str, wait: Duration) -> Locks {
    Locks::new(topology, owner, Duration::from_secs(60), wait)
}

#[tokio::test]
async fn a_dropped_lease_is_released_at_once_and_a_busy_one_names_its_holder() -> Result<()> {
    let server = NatsServer::start()?;
    let topology = server.topology().await?;
    let first = locks(&topology, "replica-a", Duration::from_millis(300));
    let second = locks(&topology, "replica-b", Duration::from_millis(300));

    let held = first.acquire("env.staging", "promote r1").await?;
    match second.acquire("env.staging", "promote r2").await {
        Err(LockError::Busy { name, holder }) => {
            assert_eq!(name, "env.staging");
            assert!(
                holder.contains("replica-a") && holder.contains("promote r1"),
                "{holder}"
            );
        }
        other => panic!("a held lease must be refused as busy, got {other:?}"),
    }

    // A handler cancelled while holding the lease drops it: the next holder gets it long before
    // the minute-long lease would expire.
    let cancelled = tokio::spawn(async move {
        let _held = held;
        std::future::pending::<()>().await;
    });
    cancelled.abort();
    let _ = cancelled.await;
    let waiting = locks(&topology, "replica-b", Duration::from_secs(5));
    let taken = tokio::time::timeout(Duration::from_secs(5), waiting.acquire("env.staging", "promote r2"))
        .await
        .expect("the dropped lease is released, not held until it expires")?;

    // An explicit release waits until the store has it.
    taken.release().await;
    assert!(topology.locks.get("env.staging").await?.is_none());
    Ok(())
}

#[tokio::test]
async fn an_expired_lease_is_taken_over() -> Result<()> {
    let server = NatsServer::start()?;
    let topology = server.topology().await?;
    let short = Locks::new(&topology, "dead-replica", Duration::from_millis(200), Duration::ZERO);
    let held = short.acquire("env.production", "promote r1").await?;
    // The holder dies without releasing: forgetting the guard is what a killed process does.
    std::mem::forget(held);
    let other = locks(&topology, "live-replica", Duration::from_secs(5));
    let taken = other.acquire("env.production", "promote r2").await?;
    let entry = topology
        .locks
        .get("env.production")
        .await?
        .expect("the lease is recorded");
    assert!(String::from_utf8_lossy(&entry).contains("live-replica"));
    taken.release().await;
    Ok(())
}

#[tokio::test]
async fn a_failing_lock_store_is_reported_not_retried_forever() -> Result<()> {
    let server = NatsServer::start()?;
    let topology = server.topology().await?;
    let locks = locks(&topology, "replica-a", Duration::from_secs(60));
    // The bucket's stream is gone: every KV operation fails at once.
    let client = async_nats::connect(server.url()).await?;
    let jetstream = async_nats::jetstream::new(client);
    jetstream.delete_key_value(fabric::LOCKS_BUCKET).await?;
    let failed = tokio::time::timeout(Duration::from_secs(30), locks.acquire("env.staging", "promote r1"))
        .await
        .expect("a failing store ends the attempt instead of looping");
    match failed {
        Err(LockError::Store(message)) => assert!(message.contains("after 5 attempts on `env.staging`"), "{message}"),
        other => panic!("a failing store must be reported as such, got {other:?}"),
    }
    Ok(())
}

/// A holder whose clock runs behind writes an `expires_at` already past; a replica judging by
/// that clock took such a lease over while its holder worked. The server's TTL decides now.
#[tokio::test]
async fn expiry_is_judged_by_the_server_not_by_a_holders_clock() -> Result<()> {
    let server = NatsServer::start()?;
    let topology = server.topology().await?;
    let skewed = serde_json::json!({
        "owner": "replica-with-a-slow-clock",
        "purpose": "promote r1",
        "expires_at": "2020-01-01T00:00:00Z",
        "ttl_seconds": 60,
    });
    topology
        .locks
        .create_with_ttl(
            "env.production",
            serde_json::to_vec(&skewed)?.into(),
            Duration::from_secs(60),
        )
        .await?;
    let other = locks(&topology, "live-replica", Duration::from_millis(500));
    match other.acquire("env.production", "promote r2").await {
        Err(LockError::Busy { holder, .. }) => assert!(holder.contains("replica-with-a-slow-clock"), "{holder}"),
        other => panic!("a lease the server still holds must be busy, got {other:?}"),
    }
    Ok(())
}

/// A record the server never removes (written without a TTL by an older Baton, or not a lease
/// record at all) is judged by its `expires_at`: one still running is busy, one past it or
/// unreadable is taken over, and the lease taken is an ordinary one.
#[tokio::test]
async fn a_record_without_a_ttl_is_taken_over_once_it_expired_or_if_unreadable() -> Result<()> {
    let server = NatsServer::start()?;
    let topology = server.topology().await?;
    let old = |expires_at: &str| {
        serde_json::to_vec(&serde_json::json!({
            "owner": "old-replica",
            "purpose": "promote r1",
            "expires_at": expires_at,
        }))
    };
    let other = locks(&topology, "live-replica", Duration::from_millis(300));

    topology
        .locks
        .create("env.staging", old("2999-01-01T00:00:00Z")?.into())
        .await?;
    match other.acquire("env.staging", "promote r2").await {
        Err(LockError::Busy { holder, .. }) => assert!(holder.contains("old-replica"), "{holder}"),
        other => panic!("an old lease still running must be busy, got {other:?}"),
    }

    topology
        .locks
        .create("env.production", old("2020-01-01T00:00:00Z")?.into())
        .await?;
    topology.locks.create("env.qa", "not a lease".into()).await?;
    for key in ["env.production", "env.qa"] {
        let lease = other.acquire(key, "promote r2").await?;
        lease.check().await?;
        let record: serde_json::Value = serde_json::from_slice(&topology.locks.get(key).await?.context("a lease")?)?;
        assert_eq!(record["owner"], "live-replica", "{key}: {record}");
        lease.release().await;
        assert!(topology.locks.get(key).await?.is_none(), "{key}");
    }
    Ok(())
}

/// Work that outlasts the lease time keeps the lease: it is renewed in the background.
#[tokio::test]
async fn a_slow_holder_keeps_its_lease_while_it_works() -> Result<()> {
    let server = NatsServer::start()?;
    let topology = server.topology().await?;
    let slow = Locks::new(&topology, "slow-replica", Duration::from_secs(1), Duration::ZERO);
    let lease = slow.acquire("env.staging", "promote r1").await?;
    let other = locks(&topology, "other-replica", Duration::ZERO);
    let work = async {
        tokio::time::sleep(Duration::from_millis(3500)).await;
        // Three lease times later, another replica still finds it held.
        other.acquire("env.staging", "promote r2").await.err()
    };
    let refused = slow.hold(&lease, work).await?;
    assert!(
        matches!(refused, Some(LockError::Busy { ref holder, .. }) if holder.contains("slow-replica")),
        "{refused:?}"
    );
    lease.check().await?;
    lease.release().await;
    Ok(())
}

/// A holder paused past its lease (stopped, starved) finds on resuming that it lost the lease:
/// the check before a write, a renewal and a held work all say so, and its release leaves the
/// new holder's lease alone.
#[tokio::test]
async fn a_paused_holder_learns_it_lost_the_lease_before_it_writes() -> Result<()> {
    let server = NatsServer::start()?;
    let topology = server.topology().await?;
    let paused = Locks::new(&topology, "paused-replica", Duration::from_secs(1), Duration::ZERO);
    let lease = paused.acquire("env.staging", "promote r1").await?;
    // Paused: no renewal while the server's TTL runs out and another replica takes over.
    let other = locks(&topology, "live-replica", Duration::from_secs(10));
    let taken = other.acquire("env.staging", "promote r2").await?;

    assert!(
        matches!(lease.check().await, Err(LockError::Lost(_))),
        "the check before a write"
    );
    assert!(
        matches!(paused.renew(&lease).await, Err(LockError::Lost(_))),
        "a renewal"
    );
    let held = paused.hold(&lease, tokio::time::sleep(Duration::from_secs(5))).await;
    assert!(
        matches!(held, Err(LockError::Lost(_))),
        "held work is stopped: {held:?}"
    );
    lease.release().await;
    taken.check().await?;
    let entry = topology.locks.get("env.staging").await?.expect("the new lease stays");
    assert!(String::from_utf8_lossy(&entry).contains("live-replica"));
    taken.release().await;
    Ok(())
}
