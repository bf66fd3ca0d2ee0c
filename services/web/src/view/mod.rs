//! The web's view of the world, built incrementally: every event of the stream is observed once,
//! in order ([`View::observe`]), and every change of the state keys it reads once
//! ([`View::apply_state`]); pages and the JSON API only read it. What it keeps is small by
//! design: one compact row per event (sequence, time, type, app, environment, release, actor,
//! one-line summary), at most `view.max_events` of them; per release its commit, image and the
//! stream sequences of its events (its page fetches the full events by sequence); per app and
//! environment the last promotion, rollout, hold and re-application (`sync`, `restore`), and the
//! deployer's drift record. Names (apps, environments, actors) are
//! interned, so a row is a few dozen bytes plus its summary.

pub mod events;
pub mod facts;
pub mod matrix;
pub mod state;

use std::collections::{BTreeMap, HashMap, VecDeque};

use baton_kit::log::{self, Record, Tone};
use baton_schemas::EventType;
use baton_schemas::environments::EnvironmentsFile;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

pub use self::events::{EventFilter, EventOut, short_type, tone_word};
use self::state::{Approval, Bad, Current, Drift, Key, Scheduled};

/// Index of an app in [`View::apps`].
pub type AppId = u32;
/// Index of an environment name.
pub type EnvId = u16;
/// Index of a release in [`View::releases`].
pub type ReleaseId = u32;

/// The shortest release id prefix a page accepts.
pub const MIN_PREFIX: usize = 8;

/// One event, compactly.
#[derive(Debug, Clone)]
pub struct EventRow {
    /// Its stream sequence: how its full event is fetched.
    pub sequence: u64,
    /// When it happened.
    pub time: DateTime<Utc>,
    /// Its catalog type (`None`: a type Baton does not know; the summary names it).
    pub ty: Option<EventType>,
    /// The app.
    pub app: AppId,
    /// The environment it concerns.
    pub environment: Option<EnvId>,
    /// The release (chain) it belongs to.
    pub release: Option<ReleaseId>,
    /// Who acted (an index of the interned actors).
    pub actor: u32,
    /// How it reads.
    pub tone: Tone,
    /// Whether it reports a failure.
    pub failed: bool,
    /// What it says, in one line.
    pub summary: Box<str>,
}

/// An app: its names and the sequences of its events still in memory.
#[derive(Debug)]
pub struct App {
    /// Its subject token (`acme_shop`): the key of its state.
    pub token: Box<str>,
    /// Its name as its events spell it (`acme/shop`).
    pub name: Box<str>,
    /// Sequences of its rows in memory, oldest first.
    events: VecDeque<u64>,
    /// Its releases, oldest first.
    pub releases: Vec<ReleaseId>,
}

/// An image by digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    /// `host[:port]`.
    pub registry: String,
    /// Repository in the registry.
    pub repository: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// `<registry>/<repository>@<digest>`.
    pub reference: String,
}

/// A release (one chain of events from a push on).
#[derive(Debug)]
pub struct Release {
    /// Its id (the `chainId`).
    pub id: Box<str>,
    /// Its app.
    pub app: AppId,
    /// The commit it was built from, once an event names it.
    pub commit: Option<Box<str>>,
    /// Its image, once published.
    pub image: Option<Image>,
    /// Its first event's time.
    pub started: DateTime<Utc>,
    /// When the promoter created it.
    pub created: Option<DateTime<Utc>>,
    /// The release the first environment ran when it was created.
    pub previous: Option<Box<str>>,
    /// Whether one of its events reports a failure.
    pub failed: bool,
    /// Stream sequences of every one of its events, in order.
    pub sequences: Vec<u64>,
}

/// What the events say about one app in one environment.
#[derive(Debug, Default, Clone)]
pub struct Cell {
    /// The last config-repo commit of the promoter for it.
    pub modified: Option<Modified>,
    /// The last rollout event.
    pub rollout: Option<Rollout>,
    /// The last held promotion.
    pub held: Option<Held>,
    /// A `sync` or `restore` of the current release not yet reported synced (nor failed, nor
    /// refused).
    pub reapplying: Option<Reapplying>,
}

/// An operator's `sync` or `restore`: the environment's current release applied again, no
/// promotion. `baton-environment.synced` (how `synced` or `restored`) settles it.
#[derive(Debug, Clone)]
pub struct Reapplying {
    /// The release applied again.
    pub release: ReleaseId,
    /// When.
    pub at: DateTime<Utc>,
    /// `sync` or `restore`.
    pub action: Box<str>,
}

/// A promoter's commit to an environment.
#[derive(Debug, Clone)]
pub struct Modified {
    /// The release the environment runs after it.
    pub release: ReleaseId,
    /// When.
    pub at: DateTime<Utc>,
    /// The config-repo commit.
    pub config_commit: Box<str>,
    /// The folder of the app's manifests in the config repo.
    pub manifests_path: Box<str>,
    /// What it did (`promote`, `rollback`, `pin`, `unpin`; a `sync` or `restore` is no
    /// promotion and is kept as [`Reapplying`]).
    pub action: Box<str>,
}

/// A rollout's last word.
#[derive(Debug, Clone)]
pub struct Rollout {
    /// `service.deployed/upgraded/rolledback`, `baton-deployment.started/failed/superseded`, or
    /// `baton-environment.synced` ending a `sync`, `restore` or heal (its rollout was healthy).
    pub ty: EventType,
    /// The release rolled out.
    pub release: Option<ReleaseId>,
    /// When.
    pub at: DateTime<Utc>,
}

impl Rollout {
    /// Whether it ended with the release healthy.
    pub const fn is_healthy(&self) -> bool {
        matches!(
            self.ty,
            EventType::ServiceDeployed
                | EventType::ServiceUpgraded
                | EventType::ServiceRolledBack
                | EventType::EnvironmentSynced
        )
    }
}

/// A promotion the promoter held.
#[derive(Debug, Clone)]
pub struct Held {
    /// The release held.
    pub release: Option<ReleaseId>,
    /// When.
    pub at: DateTime<Utc>,
    /// Why.
    pub reason: Box<str>,
    /// When it will go ahead by itself, if it will.
    pub retry_at: Option<Box<str>>,
    /// The event's sequence (a later promotion clears it).
    pub sequence: u64,
}

/// The promoter's keys, as last read.
#[derive(Debug, Default)]
pub struct Promoter {
    /// What each (app token, environment) runs.
    pub current: BTreeMap<(Box<str>, Box<str>), Current>,
    /// Approval requests per (app token, environment).
    pub approvals: BTreeMap<(Box<str>, Box<str>), Approval>,
    /// Scheduled promotions per (app token, environment).
    pub scheduled: BTreeMap<(Box<str>, Box<str>), Scheduled>,
    /// Quarantined releases by release token.
    pub bad: HashMap<Box<str>, Bad>,
    /// The last valid `environments.yaml`.
    pub policy: Option<EnvironmentsFile>,
}

/// Why a release id does not name one release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// No release has this id (or prefix).
    NotFound,
    /// The prefix is shorter than [`MIN_PREFIX`] and not a whole id.
    TooShort,
    /// Several releases start so (the first few).
    Ambiguous(Vec<String>),
}

/// The view.
#[derive(Debug)]
pub struct View {
    max_events: usize,
    events: VecDeque<EventRow>,
    /// Every app, in order of appearance.
    pub apps: Vec<App>,
    app_index: HashMap<Box<str>, AppId>,
    environments: Vec<Box<str>>,
    environment_index: HashMap<Box<str>, EnvId>,
    actors: Vec<Box<str>>,
    actor_index: HashMap<Box<str>, u32>,
    /// Every release, in order of appearance.
    pub releases: Vec<Release>,
    release_index: BTreeMap<Box<str>, ReleaseId>,
    /// What the events say per (app, environment).
    pub cells: HashMap<(AppId, EnvId), Cell>,
    /// The promoter's keys.
    pub promoter: Promoter,
    /// The deployer's drift records per (app token, environment).
    pub drift: BTreeMap<(Box<str>, Box<str>), Drift>,
    /// The last sequence observed.
    pub last_sequence: u64,
}

impl View {
    /// An empty view keeping at most `max_events` rows.
    pub fn new(max_events: usize) -> Self {
        Self {
            max_events: max_events.max(1),
            events: VecDeque::new(),
            apps: Vec::new(),
            app_index: HashMap::new(),
            environments: Vec::new(),
            environment_index: HashMap::new(),
            actors: Vec::new(),
            actor_index: HashMap::new(),
            releases: Vec::new(),
            release_index: BTreeMap::new(),
            cells: HashMap::new(),
            promoter: Promoter::default(),
            drift: BTreeMap::new(),
            last_sequence: 0,
        }
    }

    fn app_id(&mut self, token: &str) -> AppId {
        if let Some(id) = self.app_index.get(token) {
            return *id;
        }
        let id = AppId::try_from(self.apps.len()).unwrap_or(AppId::MAX);
        self.apps.push(App {
            token: token.into(),
            name: token.into(),
            events: VecDeque::new(),
            releases: Vec::new(),
        });
        self.app_index.insert(token.into(), id);
        id
    }

    fn environment_id(&mut self, name: &str) -> EnvId {
        if let Some(id) = self.environment_index.get(name) {
            return *id;
        }
        let id = EnvId::try_from(self.environments.len()).unwrap_or(EnvId::MAX);
        self.environments.push(name.into());
        self.environment_index.insert(name.into(), id);
        id
    }

    fn actor_id(&mut self, actor: &str) -> u32 {
        if let Some(id) = self.actor_index.get(actor) {
            return *id;
        }
        let id = u32::try_from(self.actors.len()).unwrap_or(u32::MAX);
        self.actors.push(actor.into());
        self.actor_index.insert(actor.into(), id);
        id
    }

    fn release_id(&mut self, id: &str, app: AppId, time: DateTime<Utc>) -> ReleaseId {
        if let Some(release) = self.release_index.get(id) {
            return *release;
        }
        let release = ReleaseId::try_from(self.releases.len()).unwrap_or(ReleaseId::MAX);
        self.releases.push(Release {
            id: id.into(),
            app,
            commit: None,
            image: None,
            started: time,
            created: None,
            previous: None,
            failed: false,
            sequences: Vec::new(),
        });
        self.release_index.insert(id.into(), release);
        self.apps[app as usize].releases.push(release);
        release
    }

    /// Takes one event of the stream into account (events come in stream order).
    pub fn observe(&mut self, record: &Record) {
        self.last_sequence = self.last_sequence.max(record.sequence);
        let app = self.app_id(&record.app);
        // An event that names no app (a command's record) gives the subject token back: it must
        // not undo the name (`acme/shop`) an earlier event taught.
        let name = facts::app_name(record);
        if name != record.app && *self.apps[app as usize].name != *name {
            self.apps[app as usize].name = name.into();
        }
        let environment = facts::environment(record).map(|e| self.environment_id(e));
        let time = record.time();
        let release = record.chain().map(|chain| self.release_id(chain, app, time));
        let actor = self.actor_id(&facts::actor(record));
        let failed = facts::is_failure(record);
        let ty = record.event_type();
        if let Some(id) = release {
            self.learn_release(id, record, ty, failed);
        }
        if let (Some(env), Some(ty)) = (environment, ty) {
            self.learn_cell(app, env, release, record, ty);
        }
        let (summary, tone) = log::summary(record);
        let summary = if ty.is_none() {
            format!("{}: {}", record.event.context.ty, summary)
        } else {
            summary
        };
        let row = EventRow {
            sequence: record.sequence,
            time,
            ty,
            app,
            environment,
            release,
            actor,
            tone,
            failed,
            summary: summary.into_boxed_str(),
        };
        self.apps[app as usize].events.push_back(row.sequence);
        self.events.push_back(row);
        while self.events.len() > self.max_events {
            if let Some(old) = self.events.pop_front() {
                let list = &mut self.apps[old.app as usize].events;
                if list.front() == Some(&old.sequence) {
                    list.pop_front();
                }
            }
        }
    }

    /// The last event observed, as pages show it.
    pub fn latest(&self) -> Option<EventOut> {
        self.events.back().map(|row| self.out(row))
    }

    fn learn_release(&mut self, id: ReleaseId, record: &Record, ty: Option<EventType>, failed: bool) {
        let release = &mut self.releases[id as usize];
        release.sequences.push(record.sequence);
        release.failed |= failed;
        let data = record.event.custom_data.as_ref();
        if release.commit.is_none() {
            let commit = match ty {
                Some(EventType::ChangeMerged) => data.and_then(|d| d.get("after")),
                Some(EventType::ReleaseCreated) => record.event.subject.content.get("commit"),
                _ => data.and_then(|d| d.get("commit")),
            };
            if let Some(commit) = commit.and_then(Value::as_str).filter(|c| !c.is_empty()) {
                release.commit = Some(commit.into());
            }
        }
        if release.image.is_none() {
            let image = data.and_then(|d| d.get("image")).filter(|i| i.is_object());
            if let Some(image) =
                image.and_then(|i| serde_json::from_value::<baton_schemas::payloads::ImageInfo>(i.clone()).ok())
            {
                release.image = Some(Image {
                    registry: image.registry,
                    repository: image.repository,
                    digest: image.digest,
                    reference: image.reference,
                });
            }
        }
        if ty == Some(EventType::ReleaseCreated) {
            release.created = Some(record.time());
            release.previous = data
                .and_then(|d| d.get("previousRelease"))
                .and_then(Value::as_str)
                .map(Into::into);
        }
    }

    fn learn_cell(&mut self, app: AppId, env: EnvId, release: Option<ReleaseId>, record: &Record, ty: EventType) {
        let data = record.event.custom_data.as_ref();
        let field = |key: &str| {
            data.and_then(|d| d.get(key))
                .and_then(Value::as_str)
                .unwrap_or_default()
        };
        let cell = self.cells.entry((app, env)).or_default();
        match ty {
            EventType::EnvironmentModified => {
                let action = field("action");
                if let Some(release) = release.filter(|_| matches!(action, "sync" | "restore")) {
                    // The current release applied again: no promotion, nothing held is moot.
                    cell.reapplying = Some(Reapplying {
                        release,
                        at: record.time(),
                        action: action.into(),
                    });
                } else if let Some(release) = release {
                    cell.modified = Some(Modified {
                        release,
                        at: record.time(),
                        config_commit: field("configCommit").into(),
                        manifests_path: field("manifestsPath").into(),
                        action: field("action").into(),
                    });
                    // The promoter moved the environment: what it held before is moot.
                    cell.held = None;
                    cell.reapplying = None;
                }
            }
            EventType::EnvironmentSynced => {
                // A heal, sync or restore ends with its rollout healthy: it settles the rollout.
                // A drift that ended otherwise (`resolved`, `rolled-out`) says nothing of one.
                let how = record.event.subject.content.get("how").and_then(Value::as_str);
                let healthy = cell
                    .rollout
                    .as_ref()
                    .is_some_and(|r| r.release == release && r.is_healthy());
                if matches!(how, Some("healed" | "synced" | "restored")) {
                    // Healthy already: it stays so since its own rollout.
                    if !healthy {
                        cell.rollout = Some(Rollout {
                            ty,
                            release,
                            at: record.time(),
                        });
                    }
                    cell.reapplying = None;
                }
            }
            EventType::ServiceDeployed
            | EventType::ServiceUpgraded
            | EventType::ServiceRolledBack
            | EventType::DeploymentStarted
            | EventType::DeploymentFailed
            | EventType::DeploymentSuperseded => {
                // The rollout of a sync or restore (the same release again) changes what runs
                // only when it fails: until then the release's own rollout stands, and one
                // refused because another rollout holds the app's lease changes nothing.
                let reapplying = cell.reapplying.as_ref().is_some_and(|r| Some(r.release) == release);
                if !(reapplying && matches!(ty, EventType::DeploymentStarted | EventType::DeploymentSuperseded)) {
                    cell.rollout = Some(Rollout {
                        ty,
                        release,
                        at: record.time(),
                    });
                }
                if reapplying && ty != EventType::DeploymentStarted {
                    cell.reapplying = None;
                }
            }
            EventType::PromotionHeld => {
                let content = &record.event.subject.content;
                cell.held = Some(Held {
                    release,
                    at: record.time(),
                    reason: content.get("reason").and_then(Value::as_str).unwrap_or_default().into(),
                    retry_at: content.get("retryAt").and_then(Value::as_str).map(Into::into),
                    sequence: record.sequence,
                });
            }
            _ => {}
        }
    }

    /// Takes a change of the state bucket into account: `value` is the new value of `key`, or
    /// `None` when it was deleted.
    pub fn apply_state(&mut self, key: &str, value: Option<&[u8]>) {
        let Some(key) = Key::parse(key) else { return };
        let promoter = &mut self.promoter;
        let cell = |app: &str, env: &str| (Box::<str>::from(app), Box::<str>::from(env));
        match key {
            Key::Current(app, env) => {
                self.app_id(app);
                self.environment_id(env);
                let promoter = &mut self.promoter;
                match value.and_then(|v| serde_json::from_slice(v).ok()) {
                    Some(current) => promoter.current.insert(cell(app, env), current),
                    None => promoter.current.remove(&cell(app, env)),
                };
            }
            Key::Approval(app, env) => {
                match value.and_then(|v| serde_json::from_slice(v).ok()) {
                    Some(approval) => promoter.approvals.insert(cell(app, env), approval),
                    None => promoter.approvals.remove(&cell(app, env)),
                };
            }
            Key::Scheduled(app, env) => {
                match value.and_then(|v| serde_json::from_slice(v).ok()) {
                    Some(scheduled) => promoter.scheduled.insert(cell(app, env), scheduled),
                    None => promoter.scheduled.remove(&cell(app, env)),
                };
            }
            Key::Bad(release) => {
                match value.and_then(|v| serde_json::from_slice(v).ok()) {
                    Some(bad) => promoter.bad.insert(release.into(), bad),
                    None => promoter.bad.remove(release),
                };
            }
            Key::Drift(app, env) => {
                match value.and_then(|v| serde_json::from_slice(v).ok()) {
                    Some(drift) => self.drift.insert(cell(app, env), drift),
                    None => self.drift.remove(&cell(app, env)),
                };
            }
            Key::Policy => {
                if let Some(policy) = value.and_then(state::policy) {
                    for env in &policy.environments {
                        self.environment_id(&env.name);
                    }
                    self.promoter.policy = Some(policy);
                }
            }
        }
    }

    /// The row of `row` as pages show it.
    pub fn out(&self, row: &EventRow) -> EventOut {
        EventOut {
            sequence: row.sequence,
            time: row.time,
            ty: row.ty.map_or_else(|| "unknown".to_owned(), |t| t.as_str().to_owned()),
            kind: row.ty.map_or_else(|| "unknown".to_owned(), short_type),
            app: self.apps[row.app as usize].name.to_string(),
            environment: row.environment.map(|e| self.environments[e as usize].to_string()),
            release: row.release.map(|r| self.releases[r as usize].id.to_string()),
            actor: self
                .actors
                .get(row.actor as usize)
                .map(ToString::to_string)
                .unwrap_or_default(),
            summary: row.summary.to_string(),
            tone: tone_word(row.tone),
            failed: row.failed,
        }
    }

    /// The app named `name` (its name or its token).
    pub fn app_named(&self, name: &str) -> Option<AppId> {
        self.app_index.get(name).copied().or_else(|| {
            self.app_index
                .get(baton_schemas::subjects::sanitize_token(name).as_str())
                .copied()
        })
    }

    /// An environment's name.
    pub fn environment_name(&self, env: EnvId) -> &str {
        &self.environments[env as usize]
    }

    /// The environment named `name`.
    pub fn environment_named(&self, name: &str) -> Option<EnvId> {
        self.environment_index.get(name).copied()
    }

    /// The environments in promotion order (`environments.yaml`'s), then any others in order of
    /// appearance.
    pub fn environment_order(&self) -> Vec<EnvId> {
        let mut order: Vec<EnvId> = Vec::new();
        if let Some(policy) = &self.promoter.policy {
            order.extend(
                policy
                    .environments
                    .iter()
                    .filter_map(|e| self.environment_named(&e.name)),
            );
        }
        for id in 0..self.environments.len() {
            let id = EnvId::try_from(id).unwrap_or(EnvId::MAX);
            if !order.contains(&id) {
                order.push(id);
            }
        }
        order
    }

    /// The release `id` names: the whole id, or a unique prefix of at least [`MIN_PREFIX`].
    ///
    /// # Errors
    /// [`Lookup`] says why it names none.
    pub fn release_named(&self, id: &str) -> Result<ReleaseId, Lookup> {
        if let Some(release) = self.release_index.get(id) {
            return Ok(*release);
        }
        if id.chars().count() < MIN_PREFIX {
            return Err(Lookup::TooShort);
        }
        let found: Vec<(&Box<str>, &ReleaseId)> = self
            .release_index
            .range::<str, _>((std::ops::Bound::Included(id), std::ops::Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(id))
            .take(5)
            .collect();
        match found.as_slice() {
            [] => Err(Lookup::NotFound),
            [(_, release)] => Ok(**release),
            many => Err(Lookup::Ambiguous(many.iter().map(|(k, _)| k.to_string()).collect())),
        }
    }

    /// The events `filter` admits, newest first, at most `limit`.
    pub fn events(&self, filter: &EventFilter, limit: usize) -> Vec<EventOut> {
        let app = match &filter.app {
            Some(name) => match self.app_named(name) {
                Some(app) => Some(app),
                None => return Vec::new(),
            },
            None => None,
        };
        let environment = match &filter.environment {
            Some(name) => match self.environment_named(name) {
                Some(env) => Some(env),
                None => return Vec::new(),
            },
            None => None,
        };
        let release = match &filter.release {
            Some(id) => match self.release_named(id) {
                Ok(release) => Some(release),
                Err(_) => return Vec::new(),
            },
            None => None,
        };
        let admits = |row: &EventRow| {
            app.is_none_or(|a| row.app == a)
                && filter.ty.is_none_or(|t| row.ty == Some(t))
                && environment.is_none_or(|e| row.environment == Some(e))
                && release.is_none_or(|r| row.release == Some(r))
                && filter.since.is_none_or(|s| row.time >= s)
                && filter.until.is_none_or(|u| row.time < u)
        };
        // The narrowest index there is: a release's events, an app's, or all.
        let candidates: Box<dyn Iterator<Item = &EventRow>> = if let Some(release) = release {
            Box::new(
                self.releases[release as usize]
                    .sequences
                    .iter()
                    .rev()
                    .filter_map(|s| self.row(*s)),
            )
        } else if let Some(app) = app {
            Box::new(self.apps[app as usize].events.iter().rev().filter_map(|s| self.row(*s)))
        } else {
            Box::new(self.events.iter().rev())
        };
        candidates
            .filter(|row| admits(row))
            .take(limit)
            .map(|row| self.out(row))
            .collect()
    }

    /// The row of `sequence`, while it is in memory.
    fn row(&self, sequence: u64) -> Option<&EventRow> {
        let index = self.events.binary_search_by_key(&sequence, |row| row.sequence).ok()?;
        self.events.get(index)
    }

    /// How many rows are in memory.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether no event was observed.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The environments (of `app`) whose current release is `release`.
    pub fn runs_in(&self, release: ReleaseId) -> Vec<String> {
        let release = &self.releases[release as usize];
        let app = &self.apps[release.app as usize].token;
        self.environment_order()
            .into_iter()
            .map(|env| self.environment_name(env))
            .filter(|env| {
                self.promoter
                    .current
                    .get(&(app.clone(), (*env).into()))
                    .is_some_and(|c| *c.release == *release.id)
            })
            .map(str::to_owned)
            .collect()
    }

    /// The release before `release` of the same app: the one it names, else the one created
    /// before it.
    pub fn previous_release(&self, release: ReleaseId) -> Option<ReleaseId> {
        let entry = &self.releases[release as usize];
        if let Some(previous) = entry.previous.as_deref().and_then(|p| self.release_index.get(p)) {
            return Some(*previous);
        }
        let releases = &self.apps[entry.app as usize].releases;
        let at = releases.iter().position(|r| *r == release)?;
        releases[..at]
            .iter()
            .rev()
            .find(|r| self.releases[**r as usize].image.is_some())
            .copied()
    }
}

#[cfg(test)]
mod tests;
