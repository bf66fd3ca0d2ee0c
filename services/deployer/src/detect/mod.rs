//! Drift detection: the deployer keeps comparing the live objects of every app in every
//! environment with the manifests of the promotion it last applied there (its config commit),
//! reports a drift once (`baton-environment.drifted`) and its end (`baton-environment.synced`),
//! and, where the environment's `drift` policy says `heal`, re-applies the config commit.
//!
//! The contract, in the order the code follows it:
//! 1. What an environment should run is the promotion the deployer last applied to it (KV
//!    `deployer.applied.<app>.<env>`); what it runs is every object carrying the app's and the
//!    environment's labels, and the release's objects by name.
//! 2. A full pass every `drift.interval` compares every app; between passes a watch of the
//!    objects carrying Baton's app label compares an app as soon as one of its objects changes
//!    or is deleted. An app whose rollout is under way (its rollout lease is held, or a newer
//!    promotion is recorded) is not compared: a promotion is never taken for drift.
//! 3. An object is compared with the apiserver's forced server-side apply dry run of the
//!    release's manifest as the app's field manager ([`crate::drift`]): fields other managers own
//!    that the release does not set are not drift. An object compared clean is not compared
//!    again until its resourceVersion or the promotion changes.
//! 4. What the comparison means is decided by [`drift::transition`](crate::drift::transition)
//!    against the record in KV `deployer.drift.<app>.<env>`, written with compare-and-set: of
//!    several replicas, the one whose write wins reports, so a drift is reported once.
//! 5. Healing takes the app's rollout lease without waiting (a rollout holding it is a promotion
//!    in progress: left alone), checks that no newer promotion is recorded, and re-applies through
//!    the normal apply path, rollout health judged; a newer promotion arriving meanwhile
//!    interrupts it. A heal that does not end the drift is recorded, reported once as
//!    `baton-environment.unhealed`, and not tried again for the same drift.
//!
//! The code follows the same order: [`Detector::run`] here drives the full passes (`pass`) and
//! the watch (`watch`); `target` reads what each app should run and the environment's policy,
//! `compare` compares one app with it, `report` records and reports what that means, `heal`
//! re-applies the config commit, and `metrics` counts it all.

mod compare;
mod heal;
mod metrics;
mod pass;
mod report;
mod target;
mod watch;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_kit::lease::Locks;
use baton_kit::metrics::Metrics;
use baton_schemas::config::deployer::DriftSettings;
use baton_schemas::environments::DriftPolicy;
use baton_schemas::release::PromotionData;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::handler::Deployer;
use crate::manifests::Manifest;
use metrics::DriftMetrics;

/// How long the watch gathers changes before comparing the apps they concern: a rollout or an
/// edit touches several objects at once.
const GATHER: Duration = Duration::from_millis(50);

/// What one full pass looked at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassSummary {
    /// Apps (in an environment) compared.
    pub apps: usize,
    /// Objects of their releases compared.
    pub objects: usize,
    /// Apps found drifted.
    pub drifted: usize,
    /// The kinds of the releases per namespace: what the watch follows.
    watched: BTreeMap<String, BTreeSet<(String, String, String)>>,
}

/// An app's release as drift is judged against it: the promotion applied, its manifests, and
/// the environment's policy at its config commit.
struct Target {
    promotion: PromotionData,
    manifests: Arc<Vec<Manifest>>,
    policy: DriftPolicy,
}

/// Drift detection over every app the deployer applied.
#[derive(Debug)]
pub struct Detector {
    deployer: Deployer,
    settings: DriftSettings,
    /// Heals take the rollout lease without waiting: a held lease is a rollout in progress.
    heal_locks: Locks,
    metrics: DriftMetrics,
    /// Parsed manifests by config repo, commit and folder (a commit never changes).
    manifests: Mutex<HashMap<String, Arc<Vec<Manifest>>>>,
    /// The `drift` policy by config repo, commit and environment.
    policies: Mutex<HashMap<String, DriftPolicy>>,
    /// The head commit of each config repo as of the last pass: the policy in force is the one
    /// at the head, so a change to `environments.yaml` applies without a promotion.
    heads: Mutex<HashMap<String, String>>,
    /// Objects compared clean: `namespace/Kind/name` → (resourceVersion, promotion).
    clean: Mutex<HashMap<String, (String, String)>>,
    /// `drift.concurrency` permits: objects compared at once across every app of a pass, not
    /// per app (a namespace's apps are compared together).
    comparing: tokio::sync::Semaphore,
}

impl Detector {
    /// Drift detection for `deployer`'s apps, with `heal_locks` (the deployer's leases, taken
    /// without waiting), its metrics registered in `metrics`.
    pub fn new(deployer: Deployer, settings: DriftSettings, heal_locks: Locks, metrics: &Metrics) -> Self {
        Self {
            deployer,
            heal_locks,
            metrics: DriftMetrics::register(metrics),
            manifests: Mutex::new(HashMap::new()),
            policies: Mutex::new(HashMap::new()),
            heads: Mutex::new(HashMap::new()),
            clean: Mutex::new(HashMap::new()),
            comparing: tokio::sync::Semaphore::new(settings.concurrency.max(1)),
            settings,
        }
    }

    /// Runs full passes every `drift.interval` and, with `drift.watch`, compares an app as soon
    /// as one of its objects changes, until `shutdown`. A failed pass is logged and tried again
    /// at the next interval.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        if self.settings.interval.is_zero() {
            shutdown.cancelled().await;
            return;
        }
        let (changed, mut changes) = mpsc::channel::<(String, String, String)>(1024);
        let mut watches = tokio::task::JoinSet::new();
        let mut watching: HashSet<(String, String, String, String)> = HashSet::new();
        let mut tick = tokio::time::interval(self.settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => match self.pass().await {
                    Ok(summary) => {
                        if self.settings.watch {
                            for (namespace, kinds) in &summary.watched {
                                for (group, version, kind) in kinds {
                                    let key = (namespace.clone(), group.clone(), version.clone(), kind.clone());
                                    // A watch that could not start (the apiserver did not answer
                                    // which resource the kind is) is tried again after the next pass.
                                    if !watching.contains(&key)
                                        && self.watch(&mut watches, namespace, group, version, kind, changed.clone()).await
                                    {
                                        watching.insert(key);
                                    }
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "drift pass failed; trying again at the next interval"),
                },
                Some(first) = changes.recv() => {
                    tokio::time::sleep(GATHER).await;
                    let mut apps = BTreeSet::from([first]);
                    while let Ok(more) = changes.try_recv() {
                        apps.insert(more);
                    }
                    for (namespace, app, environment) in apps {
                        if let Err(e) = self.check_one(&namespace, &app, &environment).await {
                            tracing::warn!(error = %e, app, environment, "drift check failed; the next pass tries again");
                        }
                    }
                }
            }
        }
        watches.abort_all();
    }
}
