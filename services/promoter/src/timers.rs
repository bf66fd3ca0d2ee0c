//! What happens by itself as time passes: promotions waiting for a soak or a freeze window to
//! end are carried out, approval requests past their expiry are closed, and approved
//! promotions a failure left owed are carried out. Every replica
//! ticks; promotions are idempotent and taken under the environment's lock, and closing a
//! request is compare-and-set, so replicas never do the same thing twice.
//!
//! Each of these acts in a span that continues the release's trace from the `traceparent` stored
//! with the schedule or the approval request, so the release reads as one trace however late its
//! promotion comes.

use std::sync::Arc;
use std::time::Duration;

use baton_kit::telemetry;
use baton_schemas::commands::PROMOTER;
use baton_schemas::release::ReleaseData;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::advance::Advance;
use crate::error::PromoteError;
use crate::gates::{self, Move};
use crate::manager::{AUTOMATION, ReleaseManager};
use crate::state::{self, PendingApproval, Scheduled};

/// Ticks every `period` until `shutdown`.
pub async fn run(promoter: Arc<ReleaseManager>, period: Duration, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = interval.tick() => {
                if let Err(e) = tick(&promoter).await {
                    tracing::warn!(error = %e, "promoter timers: will try again at the next tick");
                }
            }
        }
    }
}

/// One pass over the scheduled promotions and the open approval requests, as of one reading of
/// the clock.
///
/// # Errors
/// The first failure; the rest is retried at the next tick.
pub async fn tick(promoter: &ReleaseManager) -> Result<(), PromoteError> {
    let now = promoter.now();
    let mut due = Vec::new();
    for key in promoter.state.keys(&format!("{}.scheduled.", state::PREFIX)).await? {
        if let Some(s) = promoter.state.get::<Scheduled>(&key).await?
            && gates::due(&s.value, now)
        {
            due.push(s.value);
        }
    }
    let (mut expired, mut owed) = (Vec::new(), Vec::new());
    for key in promoter.state.keys(&format!("{}.approval.", state::PREFIX)).await? {
        match promoter.state.get::<PendingApproval>(&key).await? {
            Some(p) if gates::expired(&p.value, now) => expired.push((key, p)),
            Some(p) if p.value.promotion_pending => owed.push((key, p.value)),
            _ => {}
        }
    }
    if due.is_empty() && expired.is_empty() && owed.is_empty() {
        return Ok(());
    }
    let policy = promoter.policy().await?;
    promoter.publish(&policy.events).await?;
    // Approved promotions a failure left owed (each is idempotent by its promotion id).
    for (key, pending) in owed {
        let (release, environment) = (&pending.data.release.release, &pending.data.environment);
        let span = timer_span(
            "approved promotion owed",
            release,
            environment,
            pending.trace.as_deref(),
        );
        record_release(&span, &pending.data.release);
        match promoter
            .carry_out(&policy.value, &key, &pending, true, now)
            .instrument(span)
            .await
        {
            Ok(outcome) => tracing::info!(%release, %environment, ?outcome, "approved promotion carried out"),
            Err(e) => tracing::warn!(%release, %environment, error = %e, "approved promotion still owed; next tick"),
        }
    }
    for (key, pending) in expired {
        let request = &pending.value;
        let span = timer_span(
            "approval expiry",
            &request.data.release.release,
            &request.data.environment,
            request.trace.as_deref(),
        );
        record_release(&span, &request.data.release);
        async {
            let reason = gates::expiry_reason(request);
            if promoter.close_approval(&key, &pending, "expired", &reason, now).await? {
                let event = promoter.approval_closed(request, "expired", "rejected", AUTOMATION, &reason);
                promoter.publish(&[event]).await?;
                tracing::info!(release = %request.data.release.release, environment = %request.data.environment, "approval request expired");
            }
            Ok::<_, PromoteError>(())
        }
        .instrument(span)
        .await?;
    }
    for scheduled in due {
        let span = timer_span(
            "scheduled promotion",
            &scheduled.release,
            &scheduled.environment,
            scheduled.trace.as_deref(),
        );
        promote_when_due(promoter, &policy.value, &scheduled, now)
            .instrument(span)
            .await?;
    }
    Ok(())
}

/// The span a timer acts in: a child of the release's span that stored `trace`. Its app and
/// commit are recorded once the release is read ([`record_release`]).
fn timer_span(what: &'static str, release: &str, environment: &str, trace: Option<&str>) -> tracing::Span {
    let span = tracing::info_span!(
        parent: None,
        "timer",
        otel.name = what,
        baton.service = PROMOTER,
        baton.release.id = release,
        baton.environment = environment,
        baton.app = tracing::field::Empty,
        vcs.ref.head.revision = tracing::field::Empty,
    );
    telemetry::continue_trace(&span, trace);
    span
}

/// Records the release's app and commit on a [`timer_span`].
fn record_release(span: &tracing::Span, release: &ReleaseData) {
    span.record(telemetry::attr::APP, release.app.as_str());
    span.record(telemetry::attr::COMMIT, release.commit.as_str());
}

/// Evaluates a scheduled promotion that is due, and clears the schedule once it is done with.
async fn promote_when_due(
    promoter: &ReleaseManager,
    policy: &crate::policy::Policy,
    scheduled: &Scheduled,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), PromoteError> {
    {
        let Some(release) = promoter.state.release(&scheduled.release).await? else {
            return Ok(());
        };
        record_release(&tracing::Span::current(), &release);
        let Some(env) = policy.file.get(&scheduled.environment) else {
            return Ok(());
        };
        let env = env.clone();
        let outcome = promoter
            .advance(
                policy,
                Move {
                    release: &release,
                    env: &env,
                    trigger: &scheduled.trigger,
                    promotion: &scheduled.promotion,
                },
                &scheduled.cause,
                now,
            )
            .await?;
        promoter.publish(&outcome.events).await?;
        tracing::info!(release = %release.release, environment = %env.name, outcome = ?outcome.value, "scheduled promotion evaluated");
        // A promotion clears its schedule; a hold that will not pass by itself does too.
        if matches!(outcome.value, Advance::Held(_) | Advance::AlreadyThere) {
            let key = state::scheduled_key(&release.app, &env.name);
            if let Some(s) = promoter.state.get::<Scheduled>(&key).await?
                && s.value.promotion == scheduled.promotion
            {
                promoter.state.delete_at(&key, s.revision).await?;
            }
        }
    }
    Ok(())
}
