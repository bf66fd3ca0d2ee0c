//! A release's page, assembled when it is asked for: its events fetched from the stream by
//! sequence (the view keeps only their sequences), then read for the timeline, the changelog,
//! the approvals and the logs; the manifests compared with what each environment runs now (from
//! the config repo's mirror); the image's layers compared with the previous release's (from the
//! registry).

use std::sync::Arc;

use baton_kit::log::{self, Record};
use baton_schemas::EventType;
use baton_schemas::payloads::{CommitInfo, StepReport};
use baton_schemas::release::ReleaseData;
use baton_schemas::subjects::sanitize_token;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;

use crate::diff::{self, FileDiff};
use crate::http::WebError;
use crate::layers::LayerComparison;
use crate::shared::Shared;
use crate::view::{Image, Lookup, MIN_PREFIX, facts, short_type, tone_word};

/// How many events are fetched from the stream at once.
const FETCH_CONCURRENCY: usize = 32;

/// Everything the release page shows.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseDetail {
    /// The release id.
    pub id: String,
    /// The app.
    pub app: String,
    /// The commit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<Image>,
    /// Its first event's time.
    pub started: DateTime<Utc>,
    /// Where it runs now.
    pub runs_in: Vec<String>,
    /// Whether one of its events reports a failure.
    pub failed: bool,
    /// Its events, in order.
    pub timeline: Vec<TimelineEvent>,
    /// The commits it brings.
    pub changelog: Vec<Change>,
    /// Approval requests and decisions.
    pub approvals: Vec<ApprovalStep>,
    /// Build and test logs.
    pub logs: Vec<StepLog>,
    /// Its manifests against each environment's.
    pub diff: Section<Vec<EnvironmentDiff>>,
    /// Its layers against the previous release's.
    pub layers: Section<LayerComparison>,
}

/// A part of the page that needs the config repo or the registry: its content, or why there is
/// none.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Section<T> {
    /// What was read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<T>,
    /// Why nothing (or not everything) is shown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl<T> Section<T> {
    fn note(note: impl Into<String>) -> Self {
        Self {
            content: None,
            note: Some(note.into()),
        }
    }
}

/// One event of the timeline.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TimelineEvent {
    /// Stream sequence.
    pub sequence: u64,
    /// When.
    pub time: DateTime<Utc>,
    /// Seconds since the previous event of the release.
    pub after_seconds: f64,
    /// Full type.
    #[serde(rename = "type")]
    pub ty: String,
    /// `subject.predicate`.
    pub kind: String,
    /// Who acted.
    pub actor: String,
    /// The environment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// One line.
    pub summary: String,
    /// Its tone.
    pub tone: &'static str,
    /// Whether it reports a failure.
    pub failed: bool,
}

/// One commit of the changelog.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    /// Full sha.
    pub commit: String,
    /// The first line of its message.
    pub summary: String,
    /// Its author.
    pub author: String,
}

/// An approval event.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalStep {
    /// The environment.
    pub environment: String,
    /// `requested`, `approved`, `rejected`, or how the request closed.
    pub what: String,
    /// Who.
    pub actor: String,
    /// When.
    pub at: DateTime<Utc>,
    /// What they said, or why it closed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// One step's log.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepLog {
    /// `build` or `test`.
    pub stage: &'static str,
    /// The run.
    pub run: String,
    /// The step.
    pub step: String,
    /// How it ended.
    pub status: String,
    /// Lines kept.
    pub lines: u64,
    /// The page showing it.
    pub url: String,
}

/// The release's manifests against one environment's.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentDiff {
    /// The environment.
    pub environment: String,
    /// What it runs now.
    pub runs: String,
    /// Its config-repo commit.
    pub config_commit: String,
    /// File by file (empty when identical).
    pub files: Vec<FileDiff>,
}

/// What the release's manifests are compared from: where they are in the config repo.
struct Manifests {
    config_commit: String,
    path: String,
}

/// The release `id` names, assembled.
///
/// # Errors
/// [`WebError::NotFound`] naming the id; [`WebError::Unavailable`] when its events cannot be
/// fetched.
pub async fn detail(shared: &Arc<Shared>, id: &str) -> Result<ReleaseDetail, WebError> {
    let (entry, app_name, app_token, runs_in, previous, sequences, environments) = {
        let view = shared.read();
        let release = view.release_named(id).map_err(|e| match e {
            Lookup::NotFound => WebError::NotFound(format!(
                "no release `{id}`; the matrix and the event log link every release Baton knows"
            )),
            Lookup::TooShort => WebError::NotFound(format!(
                "no release `{id}`; give the whole id or at least its first {MIN_PREFIX} characters"
            )),
            Lookup::Ambiguous(ids) => WebError::NotFound(format!(
                "`{id}` names more than one release ({}…); give more of the id",
                ids.join(", ")
            )),
        })?;
        let entry = &view.releases[release as usize];
        let app = &view.apps[entry.app as usize];
        let previous = view.previous_release(release).map(|p| {
            let p = &view.releases[p as usize];
            (p.id.to_string(), p.image.clone())
        });
        let environments: Vec<(String, String, String)> = view
            .environment_order()
            .into_iter()
            .filter_map(|env| {
                let name = view.environment_name(env);
                view.promoter
                    .current
                    .get(&(app.token.clone(), name.into()))
                    .map(|c| (name.to_owned(), c.release.clone(), c.config_commit.clone()))
            })
            .collect();
        (
            (
                entry.id.to_string(),
                entry.commit.as_deref().map(str::to_owned),
                entry.image.clone(),
                entry.started,
                entry.failed,
            ),
            app.name.to_string(),
            app.token.to_string(),
            view.runs_in(release),
            previous,
            entry.sequences.clone(),
            environments,
        )
    };
    let (id, commit, image, started, failed) = entry;
    let records = fetch(shared, &sequences).await?;

    let mut timeline = Vec::with_capacity(records.len());
    let mut previous_time = records.first().map(Record::time);
    for record in &records {
        let (summary, tone) = log::summary(record);
        let time = record.time();
        timeline.push(TimelineEvent {
            sequence: record.sequence,
            time,
            after_seconds: previous_time.map_or(0.0, |p| seconds(time - p)),
            ty: record.event.context.ty.clone(),
            kind: record.event_type().map_or_else(|| "unknown".to_owned(), short_type),
            actor: facts::actor(record),
            environment: facts::environment(record).map(str::to_owned),
            summary,
            tone: tone_word(tone),
            failed: facts::is_failure(record),
        });
        previous_time = Some(time);
    }

    let manifests = records
        .iter()
        .rev()
        .filter(|r| r.event_type() == Some(EventType::EnvironmentModified))
        .filter_map(|r| r.event.custom_data.as_ref())
        .filter(|d| matches!(d.get("action").and_then(Value::as_str), Some("promote" | "rollback")))
        .find_map(|d| {
            Some(Manifests {
                config_commit: d.get("configCommit")?.as_str()?.to_owned(),
                path: d.get("manifestsPath")?.as_str()?.to_owned(),
            })
        });
    let diff = diff_section(shared, manifests, &app_token, environments).await;
    let layers = match (&shared.registry, &image) {
        (None, _) => Section::note("no registry is configured (registry.address), so layers are not shown"),
        (Some(_), None) => Section::note("the release has no image yet"),
        (Some(registry), Some(image)) => {
            let previous = previous
                .as_ref()
                .and_then(|(id, image)| image.as_ref().map(|i| (id.as_str(), i)));
            match registry.compare(image, previous).await {
                Ok(comparison) => Section {
                    content: Some(comparison),
                    note: previous
                        .is_none()
                        .then(|| "no earlier release of this app to compare with".to_owned()),
                },
                Err(e) => Section::note(e.to_string()),
            }
        }
    };
    Ok(ReleaseDetail {
        id,
        app: app_name,
        commit,
        image,
        started,
        runs_in,
        failed,
        changelog: changelog(&records),
        approvals: approvals(&records),
        logs: logs(&records),
        timeline,
        diff,
        layers,
    })
}

fn seconds(delta: chrono::TimeDelta) -> f64 {
    delta.num_milliseconds().max(0) as f64 / 1000.0
}

/// The events at `sequences`, in order (those that are no longer in the stream, or not
/// CDEvents, left out).
async fn fetch(shared: &Shared, sequences: &[u64]) -> Result<Vec<Record>, WebError> {
    let fetched: Vec<Result<Option<Record>, WebError>> = futures::stream::iter(sequences.iter().copied())
        .map(|sequence| async move {
            match shared.events.direct_get(sequence).await {
                Ok(message) => Ok(Record::decode(
                    &message.subject,
                    Some(&message.headers),
                    &message.payload,
                    sequence,
                )),
                Err(e) if e.kind() == async_nats::jetstream::stream::DirectGetErrorKind::NotFound => Ok(None),
                Err(e) => Err(WebError::Unavailable {
                    what: "the release's events cannot be read".to_owned(),
                    reason: e.to_string(),
                }),
            }
        })
        .buffered(FETCH_CONCURRENCY)
        .collect()
        .await;
    fetched.into_iter().filter_map(Result::transpose).collect()
}

/// The commits the release brings: the promoter's changelog, else the push's commits.
fn changelog(records: &[Record]) -> Vec<Change> {
    let created = records
        .iter()
        .find(|r| r.event_type() == Some(EventType::ReleaseCreated))
        .and_then(|r| r.event.custom_data_as::<ReleaseData>().ok());
    if let Some(release) = created.filter(|r| !r.changelog.is_empty()) {
        return release
            .changelog
            .into_iter()
            .map(|c| Change {
                commit: c.commit,
                summary: c.summary,
                author: person(&c.author),
            })
            .collect();
    }
    // The push's commits, oldest first; each read on its own, so one odd commit does not hide
    // the others.
    let commits = records
        .iter()
        .find(|r| r.event_type() == Some(EventType::ChangeMerged))
        .and_then(|r| r.event.custom_data.as_ref())
        .and_then(|d| d.get("commits"))
        .and_then(Value::as_array);
    commits
        .into_iter()
        .flatten()
        .rev()
        .filter_map(|c| serde_json::from_value::<CommitInfo>(c.clone()).ok())
        .map(|c| Change {
            summary: c.message.lines().next().unwrap_or_default().to_owned(),
            commit: c.id,
            author: person(&c.author),
        })
        .collect()
}

fn person(p: &baton_schemas::payloads::Person) -> String {
    p.name
        .clone()
        .or_else(|| p.username.clone())
        .or_else(|| p.email.clone())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Approval requests, votes and closings, in order.
fn approvals(records: &[Record]) -> Vec<ApprovalStep> {
    records
        .iter()
        .filter_map(|r| {
            let data = r.event.custom_data.as_ref();
            let content = &r.event.subject.content;
            let text = |v: Option<&Value>, k: &str| v.and_then(|v| v.get(k)).and_then(Value::as_str).map(str::to_owned);
            let what = match r.event_type()? {
                EventType::ApprovalCreated => "requested".to_owned(),
                EventType::ApprovalUpdated => text(Some(content), "decision")?,
                EventType::ApprovalClosed => format!("closed: {}", text(Some(content), "status").unwrap_or_default()),
                _ => return None,
            };
            let comment = match r.event_type()? {
                EventType::ApprovalUpdated => text(Some(content), "comment").or_else(|| {
                    data.and_then(|d| d.get("votes"))
                        .and_then(Value::as_array)
                        .and_then(|v| v.last())
                        .and_then(|v| v.get("comment"))
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                }),
                _ => text(data, "reason"),
            };
            Some(ApprovalStep {
                environment: facts::environment(r).unwrap_or_default().to_owned(),
                what,
                actor: facts::actor(r),
                at: r.time(),
                comment,
            })
        })
        .collect()
}

/// Each step of each build and test run that kept a log.
fn logs(records: &[Record]) -> Vec<StepLog> {
    let mut logs: Vec<StepLog> = Vec::new();
    for record in records {
        let stage = match record.event_type() {
            Some(EventType::BuildFinished) => "build",
            Some(EventType::TestSuiteRunFinished) => "test",
            _ => continue,
        };
        let Some(data) = record.event.custom_data.as_ref() else {
            continue;
        };
        let Some(run) = data.get("run").and_then(Value::as_str) else {
            continue;
        };
        let steps: Vec<StepReport> = data
            .get("steps")
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .unwrap_or_default();
        for step in steps {
            let Some(location) = &step.log else { continue };
            let Some(name) = crate::logs::step_of(&location.object, run) else {
                continue;
            };
            logs.retain(|l| !(l.run == run && l.step == name));
            logs.push(StepLog {
                stage,
                run: run.to_owned(),
                step: name.to_owned(),
                status: step.status.clone(),
                lines: location.lines,
                url: format!("/logs/{}/{}", segment(run), segment(name)),
            });
        }
    }
    logs
}

/// `s` as one URL path segment.
pub fn segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The diff section: the release's manifests against each environment's current ones.
async fn diff_section(
    shared: &Arc<Shared>,
    manifests: Option<Manifests>,
    app_token: &str,
    environments: Vec<(String, String, String)>,
) -> Section<Vec<EnvironmentDiff>> {
    let Some((sources, repo)) = shared.config_repo.clone() else {
        return Section::note("no config repo is configured (config_repo.url), so manifest diffs are not shown");
    };
    let Some(manifests) = manifests else {
        return Section::note(
            "the release has not been promoted anywhere yet, so its manifests are not in the config repo",
        );
    };
    if environments.is_empty() {
        return Section::note("no environment runs this app yet");
    }
    let app_token = sanitize_token(app_token);
    let read = tokio::task::spawn_blocking(move || {
        let files = |commit: &str, dir: &str| -> Result<Vec<(String, String)>, String> {
            let mut files: Vec<(String, String)> = sources
                .files_at(&repo.url, commit, dir)
                .map_err(|e| e.to_string())?
                .into_iter()
                .filter(|(path, _)| baton_schemas::release::is_manifest_file(path))
                .map(|(path, bytes)| {
                    let text = diff::canonical(&path, &bytes);
                    (path, text)
                })
                .collect();
            files.sort();
            Ok(files)
        };
        let ours = files(&manifests.config_commit, &manifests.path)?;
        let mut out = Vec::new();
        for (environment, runs, config_commit) in environments {
            let theirs = if config_commit.is_empty() {
                Vec::new()
            } else {
                files(&config_commit, &format!("{environment}/{app_token}"))?
            };
            let mut files = diff::compare(&ours, &theirs);
            files.retain(|f| f.status != "same");
            out.push(EnvironmentDiff {
                environment,
                runs,
                config_commit,
                files,
            });
        }
        Ok::<_, String>(out)
    })
    .await;
    match read {
        Ok(Ok(diffs)) => Section {
            content: Some(diffs),
            note: None,
        },
        Ok(Err(e)) => Section::note(format!("the config repo could not be read: {e}")),
        Err(e) => Section::note(format!("the config repo could not be read: {e}")),
    }
}
