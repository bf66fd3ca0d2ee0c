//! Carrying out each subcommand.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::jetstream;
use baton_kit::command::{CommandClient, CommandError};
use baton_kit::dora::{self, DoraLedger, DoraReport};
use baton_kit::log::{self, Query, Record};
use baton_kit::provision::History;
use baton_schemas::EventType;
use baton_schemas::commands::{CommandRequest, Verb};
use baton_schemas::drift::{DriftRecord, SyncState, drift_key, names_and_more};
use baton_schemas::release::{ReleaseData, user_of_urn};
use baton_schemas::subjects::{self, sanitize_token};
use chrono::Utc;
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

use crate::CliError;
use crate::cli::{AdminCommand, Cli, Command, Output, PolicyCommand};
use crate::ids::{self, IdKind, Typed};
use crate::render::{self, Style, Tone};
use crate::signing::{self, Chosen};

/// The events stream Baton provisions by default.
const EVENTS_STREAM: &str = "BATON_EVENTS";
/// The KV bucket of small state.
const STATE_BUCKET: &str = "baton-state";
/// The object store of build and test logs.
const LOGS_BUCKET: &str = "baton-logs";
/// Longest an operator command waits for the promoter's answer.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Which attempt of `step` in `run` the log object `name` holds: 1 for `<run>/<step>.log`, `n`
/// for `<run>/<step>.<n>.log`; `None` for another step's log.
fn log_attempt(name: &str, run: &str, step: &str) -> Option<u32> {
    let rest = name.strip_prefix(&format!("{run}/{step}."))?;
    if rest == "log" {
        return Some(1);
    }
    rest.strip_suffix(".log")?.parse().ok().filter(|n| *n >= 2)
}

/// Runs the parsed command line.
///
/// # Errors
/// [`CliError`], printed by `main` on one line.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    let style = Style::detect(cli.output);
    if let Command::Completions { shell } = &cli.command {
        let mut command = <Cli as clap::CommandFactory>::command();
        clap_complete::generate(*shell, &mut command, "baton", &mut std::io::stdout());
        return Ok(());
    }
    if let Command::Up { config_dir } = &cli.command {
        let nats = std::env::args()
            .any(|a| a == "--nats" || a.starts_with("--nats="))
            .then_some(cli.nats.as_str());
        let nats = nats.or(std::env::var("BATON_NATS_URL").ok().map(|_| cli.nats.as_str()));
        return crate::up::up(config_dir, nats).await;
    }
    if let Command::Policy {
        command: PolicyCommand::Show { file },
    } = &cli.command
    {
        return crate::policy::show(file, style);
    }
    let env = |name: &str| std::env::var(name).ok();
    // A command's ids are checked and it is signed before anything is reached: no valid id or
    // no key, no connection.
    if let Some((verb, mut request, who)) = cli.command.promoter_command() {
        let release = request
            .release
            .as_deref()
            .map(|r| Typed::parse(IdKind::Release, r))
            .transpose()?;
        request.actor = signing::actor(who, &env)?;
        let chosen = signing::signer(who, &env)?;
        let client = connect(&cli.nats, nats_auth(&cli, &env)?).await?;
        // The signed body carries the whole id: a prefix is resolved here, never by the promoter.
        request.release = match release {
            Some(typed) => Some(created_release(&jetstream::new(client.clone()), typed).await?),
            None => None,
        };
        return command(&client, style, verb, request, chosen).await;
    }
    // Flags and ids are checked before anything is reached.
    match &cli.command {
        Command::Events {
            event_type: Some(t), ..
        } => {
            parse_type(t)?;
        }
        Command::Trace { release } => {
            Typed::parse(IdKind::Release, release)?;
        }
        Command::Logs { run, .. } => {
            Typed::parse(IdKind::Run, run)?;
        }
        _ => {}
    }
    let auth = nats_auth(&cli, &env)?;
    let client = connect(&cli.nats, auth).await?;
    let js = jetstream::new(client.clone());
    match cli.command {
        Command::Events {
            follow,
            app,
            event_type,
            since,
        } => events(&js, style, follow, app.as_deref(), event_type.as_deref(), since).await,
        Command::Dora {
            app,
            environment,
            window,
            bucket,
        } => dora(&js, style, &app, environment.as_deref(), window, bucket).await,
        Command::Trace { release } => trace(&js, style, &release).await,
        Command::Releases { app } => releases(&js, style, &app).await,
        Command::Status { app } => status(&js, style, app.as_deref()).await,
        Command::Logs { run, step, follow } => logs(&client, &js, &run, step.as_deref(), follow).await,
        Command::Admin {
            command:
                AdminCommand::Provision {
                    config_dir,
                    consumer_history,
                },
        } => {
            let history = consumer_history.map_or(History::Refuse, History::from);
            crate::admin::provision(&client, config_dir.as_deref(), history, style.output).await
        }
        // Answered above, before connecting.
        Command::Completions { .. }
        | Command::Up { .. }
        | Command::Policy { .. }
        | Command::Approve(_)
        | Command::Decline(_)
        | Command::Promote { .. }
        | Command::Rollback { .. }
        | Command::Sync { .. }
        | Command::Restore { .. }
        | Command::Pin(_)
        | Command::Unpin(_)
        | Command::MarkBad { .. }
        | Command::Unquarantine { .. }
        | Command::Whoami { .. } => Ok(()),
    }
}

/// The user and password to connect with, if `--nats-user` is given.
fn nats_auth(cli: &Cli, env: &dyn Fn(&str) -> Option<String>) -> Result<Option<(String, String)>, CliError> {
    let Some(user) = &cli.nats_user else {
        return Ok(None);
    };
    let password = match &cli.nats_password_file {
        Some(path) => std::fs::read_to_string(path)
            .map(|p| p.trim_end_matches(['\r', '\n']).to_owned())
            .map_err(|e| CliError::Usage(format!("cannot read --nats-password-file {}: {e}", path.display())))?,
        None => env("BATON_NATS_PASSWORD").ok_or_else(|| {
            CliError::Usage(format!(
                "--nats-user {user} needs its password: --nats-password-file FILE or BATON_NATS_PASSWORD"
            ))
        })?,
    };
    Ok(Some((user.clone(), password)))
}

async fn connect(url: &str, auth: Option<(String, String)>) -> Result<async_nats::Client, CliError> {
    let mut options = async_nats::ConnectOptions::new();
    if let Some((user, password)) = auth {
        options = options
            .custom_inbox_prefix(baton_kit::fabric::inbox_prefix(&user))
            .user_and_password(user, password);
    }
    let attempt = options
        .name("baton-cli")
        .connection_timeout(Duration::from_secs(3))
        .connect(url);
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(CliError::Nats(format!(
            "cannot reach NATS at {url} ({e}); start Baton's NATS, or point at it with --nats URL or BATON_NATS_URL"
        ))),
        Err(_) => Err(CliError::Nats(format!(
            "NATS at {url} did not answer within 5 s; check the URL (--nats or BATON_NATS_URL)"
        ))),
    }
}

/// Sends `request` as `verb`, signed with `chosen`'s key, and prints the promoter's answer.
async fn command(
    client: &async_nats::Client,
    style: Style,
    verb: Verb,
    request: CommandRequest,
    chosen: Chosen,
) -> Result<(), CliError> {
    let commands = CommandClient::new(client.clone(), COMMAND_TIMEOUT).with_signer(chosen.signer.clone());
    let reply = commands.send(verb, &request).await.map_err(|e| match e {
        CommandError::Sign(e) => CliError::Sign(e),
        CommandError::NoPromoter => CliError::Nats(format!("{e}; start baton-promoter against this NATS")),
        CommandError::Timeout(_) => CliError::Nats(format!("{e}; try again")),
        CommandError::Request(_) | CommandError::Reply(_) => CliError::Nats(e.to_string()),
    })?;
    let hint = (!reply.ok).then(|| chosen.refusal_hint()).flatten();
    match style.output {
        Output::Json | Output::Yaml => println!("{}", render::document(style.output, &reply)),
        // whoami's answer is the message itself: who the promoter sees.
        _ if verb == Verb::Whoami && reply.ok => println!("{}", reply.message),
        _ => {
            let mark = if reply.ok {
                style.tone(Tone::Good, "ok")
            } else {
                style.tone(Tone::Bad, "refused")
            };
            println!("{mark}: {}", reply.message);
            if let Some(commit) = &reply.config_commit {
                println!("config commit: {commit}");
            }
            if let Some(hint) = &hint {
                println!("note: {hint}");
            }
        }
    }
    if reply.ok {
        Ok(())
    } else {
        // Printed above: `main` does not print it again.
        Err(CliError::CommandRefused(format!("{verb}: {}", reply.message)))
    }
}

/// The whole id of the release `typed` names: as typed when whole, else the one release the
/// promoter created (`baton-release.created`) whose id starts so.
async fn created_release(js: &jetstream::Context, typed: Typed) -> Result<String, CliError> {
    let prefix = match typed {
        Typed::Full(id) => return Ok(id),
        Typed::Prefix(prefix) => prefix,
    };
    let query = Query {
        filters: vec![log::filter(None, Some(EventType::ReleaseCreated))],
        ..Query::default()
    };
    let mut known = Vec::new();
    log::read(js, EVENTS_STREAM, &query, |record| {
        known.extend(record.chain().map(str::to_owned));
        true
    })
    .await?;
    ids::resolve(IdKind::Release, &prefix, known.iter().map(String::as_str))
}

async fn events(
    js: &jetstream::Context,
    style: Style,
    follow: bool,
    app: Option<&str>,
    event_type: Option<&str>,
    since: Option<Duration>,
) -> Result<(), CliError> {
    let ty = match event_type {
        Some(t) => Some(parse_type(t)?),
        None => None,
    };
    let since = since.map(|d| Utc::now() - chrono::Duration::from_std(d).unwrap_or_default());
    let query = Query {
        filters: vec![log::filter(app, ty)],
        since,
        follow,
    };
    let mut collected = Vec::new();
    let print_each = follow || matches!(style.output, Output::Human | Output::Wide);
    log::read(js, EVENTS_STREAM, &query, |record| {
        if print_each {
            match style.output {
                Output::Json => println!("{}", serde_json::to_string(&record).unwrap_or_default()),
                Output::Yaml => println!("---\n{}", render::document(Output::Yaml, &record)),
                _ => println!("{}", render::line(&style, &record)),
            }
        } else {
            collected.push(record);
        }
        true
    })
    .await?;
    if !print_each {
        println!("{}", render::document(style.output, &collected));
    }
    Ok(())
}

fn parse_type(t: &str) -> Result<EventType, CliError> {
    if let Ok(ty) = t.parse::<EventType>() {
        return Ok(ty);
    }
    EventType::ALL
        .iter()
        .copied()
        .find(|ty| format!("{}.{}", ty.subject(), ty.predicate()) == t)
        .ok_or_else(|| {
            let known: Vec<String> = EventType::ALL
                .iter()
                .map(|ty| format!("{}.{}", ty.subject(), ty.predicate()))
                .collect();
            CliError::Usage(format!("unknown event type `{t}`; use one of {}", known.join(", ")))
        })
}

/// The DORA figures of `app` in each of its environments (or `environment`) over the `window`
/// up to now.
async fn dora(
    js: &jetstream::Context,
    style: Style,
    app: &str,
    environment: Option<&str>,
    window: Duration,
    bucket: Duration,
) -> Result<(), CliError> {
    let too_long = |flag: &str| CliError::Usage(format!("{flag}: too long; write a duration such as 30d"));
    let to = Utc::now();
    let from = chrono::TimeDelta::from_std(window)
        .ok()
        .and_then(|w| to.checked_sub_signed(w))
        .ok_or_else(|| too_long("--window"))?;
    let bucket = chrono::TimeDelta::from_std(bucket).map_err(|_| too_long("--bucket"))?;
    let query = Query {
        filters: dora::EVENT_TYPES
            .iter()
            .map(|ty| log::filter(Some(app), Some(*ty)))
            .collect(),
        ..Query::default()
    };
    let mut ledger = DoraLedger::new();
    log::read(js, EVENTS_STREAM, &query, |record| {
        ledger.observe(&record.event);
        true
    })
    .await?;
    let known = ledger.environments(app);
    if known.is_empty() {
        return Err(CliError::NotFound(format!(
            "{app} has never been promoted into an environment, or is not an app Baton knows; `baton status` lists the apps and where they run"
        )));
    }
    let chosen = match environment {
        Some(env) if known.iter().any(|k| k == env) => vec![env.to_owned()],
        Some(env) => {
            return Err(CliError::NotFound(format!(
                "{app} has never been promoted into {env}; its environments: {}",
                known.join(", ")
            )));
        }
        None => known,
    };
    let reports: Vec<DoraReport> = chosen
        .iter()
        .map(|env| ledger.report(app, env, from, to, bucket))
        .collect();
    match style.output {
        Output::Json | Output::Yaml => println!("{}", render::document(style.output, &reports)),
        Output::Human | Output::Wide => print!("{}", render::dora(&reports)),
    }
    Ok(())
}

/// The release `typed` names (resolved among every release of the log when it is a prefix)
/// and its events, in order.
async fn chain(js: &jetstream::Context, typed: Typed) -> Result<(String, Vec<Record>), CliError> {
    let mut found = Vec::new();
    let (Typed::Full(wanted) | Typed::Prefix(wanted)) = &typed;
    log::read(js, EVENTS_STREAM, &Query::default(), |record| {
        if record.chain().is_some_and(|c| c.starts_with(wanted.as_str())) {
            found.push(record);
        }
        true
    })
    .await?;
    let release = match &typed {
        Typed::Full(id) => id.clone(),
        Typed::Prefix(prefix) => ids::resolve(IdKind::Release, prefix, found.iter().filter_map(Record::chain))?,
    };
    found.retain(|r| r.chain() == Some(release.as_str()));
    Ok((release, found))
}

async fn trace(js: &jetstream::Context, style: Style, release: &str) -> Result<(), CliError> {
    let (release, records) = chain(js, Typed::parse(IdKind::Release, release)?).await?;
    let release = release.as_str();
    let Some(first) = records.first() else {
        return Err(CliError::NotFound(format!(
            "no event belongs to release {release}; `baton releases <app>` lists releases"
        )));
    };
    let app_token = first.app.clone();
    let runs_in = current(js, Some(&app_token))
        .await?
        .into_iter()
        .filter(|(_, _, c)| c["release"].as_str() == Some(release))
        .map(|(_, env, _)| env)
        .collect::<Vec<_>>();
    if matches!(style.output, Output::Json | Output::Yaml) {
        let doc = json!({"release": release, "events": records, "runsIn": runs_in});
        println!("{}", render::document(style.output, &doc));
        return Ok(());
    }
    let start = first.time();
    let mut previous = start;
    // The app as its events name it (`acme/shop`); the subject token (`acme_shop`) otherwise.
    let app = records
        .iter()
        .find_map(|r| r.event.custom_data.as_ref()?.get("app")?.as_str())
        .unwrap_or(&first.app);
    println!("release {release} of {app}");
    for record in &records {
        let (summary, tone) = render::summary(record);
        let at = record.time();
        let step = (at - previous).num_milliseconds().max(0);
        let total = (at - start).num_milliseconds().max(0);
        println!(
            "  +{:>9}  {:>8}  {:<24} {}",
            millis(total),
            format!("({})", millis(step)),
            render::kind(record),
            style.tone(tone, &summary)
        );
        previous = at;
    }
    let approvers: Vec<String> = records
        .iter()
        .filter(|r| r.event_type() == Some(EventType::ApprovalUpdated))
        .filter(|r| r.event.subject.content["decision"] == "approved")
        .filter_map(|r| r.event.subject.content["responder"].as_str())
        .map(|u| user_of_urn(u).to_owned())
        .collect();
    if !approvers.is_empty() {
        println!("approved by: {}", approvers.join(", "));
    }
    println!(
        "runs now in: {}",
        if runs_in.is_empty() {
            "no environment".to_owned()
        } else {
            runs_in.join(", ")
        }
    );
    Ok(())
}

fn millis(ms: i64) -> String {
    if ms >= 60_000 {
        format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000)
    } else if ms >= 1000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{ms}ms")
    }
}

/// `(app token, environment, record)` of the promoter's current state.
async fn current(js: &jetstream::Context, app: Option<&str>) -> Result<Vec<(String, String, Value)>, CliError> {
    let Ok(kv) = js.get_key_value(STATE_BUCKET).await else {
        return Ok(Vec::new());
    };
    let prefix = match app {
        Some(a) => format!("promoter.current.{}.", sanitize_token(a)),
        None => "promoter.current.".to_owned(),
    };
    let keys: Vec<String> = kv
        .keys()
        .await
        .map_err(|e| CliError::Nats(format!("cannot read Baton's state: {e}")))?
        .try_collect()
        .await
        .map_err(|e| CliError::Nats(format!("cannot read Baton's state: {e}")))?;
    let mut out = Vec::new();
    for key in keys.into_iter().filter(|k| k.starts_with(&prefix)) {
        let rest = key.trim_start_matches("promoter.current.");
        let Some((app, env)) = rest.rsplit_once('.') else {
            continue;
        };
        if let Ok(Some(bytes)) = kv.get(&key).await
            && let Ok(value) = serde_json::from_slice::<Value>(&bytes)
        {
            out.push((app.to_owned(), env.to_owned(), value));
        }
    }
    out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    Ok(out)
}

/// The deployer's drift record of each row's app and environment (`None`: not compared yet,
/// or its environment ignores drift).
async fn drift_records(js: &jetstream::Context, rows: &[(String, String, Value)]) -> Vec<Option<DriftRecord>> {
    let Ok(kv) = js.get_key_value(STATE_BUCKET).await else {
        return vec![None; rows.len()];
    };
    let mut out = Vec::with_capacity(rows.len());
    for (app, env, _) in rows {
        let record = kv
            .get(drift_key(app, env))
            .await
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice::<DriftRecord>(&b).ok());
        out.push(record);
    }
    out
}

/// Drifted objects the SYNC column names; the rest are counted.
const SYNC_OBJECTS_SHOWN: usize = 5;

/// The SYNC column: `synced`, `drifted: <objects>` (the first few, with how many more, and a
/// failed heal's reason), or `-`.
fn sync_column(record: Option<&DriftRecord>) -> String {
    match record {
        None => "-".to_owned(),
        Some(r) if r.state == SyncState::Synced => SyncState::Synced.as_str().to_owned(),
        Some(r) => {
            let mut cell = format!(
                "{}: {}",
                r.state.as_str(),
                names_and_more(&r.objects, SYNC_OBJECTS_SHOWN, r.objects_omitted)
            );
            if let Some(failed) = &r.heal_failed {
                cell.push_str(&format!(" (heal failed: {failed})"));
            }
            cell
        }
    }
}

async fn status(js: &jetstream::Context, style: Style, app: Option<&str>) -> Result<(), CliError> {
    let rows = current(js, app).await?;
    if rows.is_empty() {
        return Err(CliError::NotFound(match app {
            Some(a) => format!(
                "{a} has not been promoted anywhere (or is not an app Baton knows); `baton events --app {a}` shows its history"
            ),
            None => "nothing has been promoted yet".into(),
        }));
    }
    let drift = drift_records(js, &rows).await;
    if matches!(style.output, Output::Json | Output::Yaml) {
        let doc: Vec<Value> = rows
            .iter()
            .zip(&drift)
            .map(|((a, e, c), d)| json!({"app": a, "environment": e, "state": c, "sync": d}))
            .collect();
        println!("{}", render::document(style.output, &doc));
        return Ok(());
    }
    let mut table = vec![vec![
        "APP".into(),
        "ENVIRONMENT".into(),
        "RELEASE".into(),
        "HEALTHY SINCE".into(),
        "PINNED".into(),
        "SYNC".into(),
    ]];
    for ((app, env, c), d) in rows.into_iter().zip(drift) {
        table.push(vec![
            app,
            env,
            c["release"].as_str().unwrap_or("-").to_owned(),
            c["healthy_since"].as_str().unwrap_or("not yet").to_owned(),
            c["pinned"]["reason"]
                .as_str()
                .map_or_else(|| "-".to_owned(), |r| format!("yes: {r}")),
            sync_column(d.as_ref()),
        ]);
    }
    print!("{}", render::table(&table));
    Ok(())
}

async fn releases(js: &jetstream::Context, style: Style, app: &str) -> Result<(), CliError> {
    let query = Query {
        filters: vec![log::filter(Some(app), Some(EventType::ReleaseCreated))],
        ..Query::default()
    };
    let mut found: Vec<ReleaseData> = Vec::new();
    log::read(js, EVENTS_STREAM, &query, |record| {
        if let Ok(release) = record.event.custom_data_as::<ReleaseData>() {
            found.push(release);
        }
        true
    })
    .await?;
    if found.is_empty() {
        return Err(CliError::NotFound(format!(
            "no releases of {app}; check the name as the git host writes it (e.g. acme/shop), or `baton events` for what happened"
        )));
    }
    found.reverse();
    let mut runs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (_, env, c) in current(js, Some(app)).await? {
        if let Some(r) = c["release"].as_str() {
            runs.entry(r.to_owned()).or_default().push(env);
        }
    }
    if matches!(style.output, Output::Json | Output::Yaml) {
        let doc: Vec<Value> = found
            .iter()
            .map(|r| json!({"release": r, "runsIn": runs.get(&r.release).cloned().unwrap_or_default()}))
            .collect();
        println!("{}", render::document(style.output, &doc));
        return Ok(());
    }
    let mut table = vec![vec![
        "RELEASE".into(),
        "CREATED".into(),
        "COMMIT".into(),
        "IMAGE".into(),
        "RUNS IN".into(),
    ]];
    for r in &found {
        table.push(vec![
            r.release.clone(),
            r.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            r.commit.get(..12).unwrap_or(&r.commit).to_owned(),
            r.image.digest.get(..19).unwrap_or(&r.image.digest).to_owned(),
            runs.get(&r.release).map_or_else(|| "-".into(), |e| e.join(", ")),
        ]);
    }
    print!("{}", render::table(&table));
    Ok(())
}

/// The event types that carry a run id (`run` in their data).
const RUN_EVENTS: [EventType; 5] = [
    EventType::BuildQueued,
    EventType::BuildStarted,
    EventType::BuildFinished,
    EventType::TestSuiteRunStarted,
    EventType::TestSuiteRunFinished,
];

/// The whole id of the run `typed` names: as typed when whole, else the one run of the build
/// and test events, or of the stored logs, whose id starts so.
async fn run_id(js: &jetstream::Context, typed: Typed) -> Result<String, CliError> {
    let prefix = match typed {
        Typed::Full(id) => return Ok(id),
        Typed::Prefix(prefix) => prefix,
    };
    let query = Query {
        filters: RUN_EVENTS.iter().map(|ty| log::filter(None, Some(*ty))).collect(),
        ..Query::default()
    };
    let mut known = BTreeSet::new();
    log::read(js, EVENTS_STREAM, &query, |record| {
        known.extend(render::run(&record).map(str::to_owned));
        true
    })
    .await?;
    // Logs stored without their events (or after the events aged out of the stream).
    if let Ok(store) = js.get_object_store(LOGS_BUCKET).await
        && let Ok(mut list) = store.list().await
    {
        while let Some(Ok(info)) = list.next().await {
            if let Some((run, _)) = info.name.split_once('/') {
                known.insert(run.to_owned());
            }
        }
    }
    ids::resolve(IdKind::Run, &prefix, known.iter().map(String::as_str))
}

async fn logs(
    client: &async_nats::Client,
    js: &jetstream::Context,
    run: &str,
    step: Option<&str>,
    follow: bool,
) -> Result<(), CliError> {
    let run = run_id(js, Typed::parse(IdKind::Run, run)?).await?;
    let run = run.as_str();
    if follow {
        let subject = subjects::log_subject(run, step.unwrap_or("*"));
        let subject = if step.is_none() {
            format!("{}.{}.*", subjects::LOGS_PREFIX, sanitize_token(run))
        } else {
            subject
        };
        let mut lines = client
            .subscribe(subject)
            .await
            .map_err(|e| CliError::Nats(format!("cannot follow the log: {e}")))?;
        while let Some(message) = lines.next().await {
            println!("{}", String::from_utf8_lossy(&message.payload).trim_end_matches('\n'));
        }
        return Ok(());
    }
    let store = js
        .get_object_store(LOGS_BUCKET)
        .await
        .map_err(|e| CliError::Nats(format!("no log store {LOGS_BUCKET} on this server: {e}")))?;
    let mut list = store
        .list()
        .await
        .map_err(|e| CliError::Nats(format!("cannot list logs: {e}")))?;
    let mut names = Vec::new();
    while let Some(info) = list.next().await {
        let info = info.map_err(|e| CliError::Nats(format!("cannot list logs: {e}")))?;
        if info.name.starts_with(&format!("{run}/")) {
            names.push(info.name);
        }
    }
    names.sort();
    if let Some(step) = step {
        // A retried run keeps each attempt's log: `<step>.log`, then `<step>.<n>.log` (n ≥ 2);
        // the step's log is the latest attempt's.
        let latest = names
            .iter()
            .filter_map(|name| log_attempt(name, run, step).map(|attempt| (attempt, name)))
            .max()
            .map(|(_, name)| name.clone());
        names = vec![latest.unwrap_or_else(|| format!("{run}/{step}.log"))];
    }
    if names.is_empty() {
        return Err(CliError::NotFound(format!(
            "no logs for run {run}; run ids are in build and test events (`baton events --type build.finished`)"
        )));
    }
    for name in names {
        let mut object = store.get(&name).await.map_err(|_| {
            CliError::NotFound(format!(
                "no log {name}; `baton logs {run}` lists the steps that have one"
            ))
        })?;
        let mut text = String::new();
        object
            .read_to_string(&mut text)
            .await
            .map_err(|e| CliError::Nats(format!("cannot read {name}: {e}")))?;
        if step.is_none() {
            println!("==> {name} <==");
        }
        print!("{text}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{log_attempt, sync_column};
    use baton_schemas::drift::{DriftRecord, SyncState};

    #[test]
    fn the_sync_column_names_a_few_drifted_objects_and_counts_the_rest() {
        let record = DriftRecord {
            state: SyncState::Drifted,
            config_commit: "c1".into(),
            objects: (0..200).map(|i| format!("ConfigMap/extra-{i}")).collect(),
            objects_omitted: 4800,
            fingerprint: "f".into(),
            since: chrono::DateTime::from_timestamp(0, 0).unwrap(),
            heal_failed: Some("rollout failed".into()),
        };
        assert_eq!(
            sync_column(Some(&record)),
            "drifted: ConfigMap/extra-0, ConfigMap/extra-1, ConfigMap/extra-2, ConfigMap/extra-3, \
             ConfigMap/extra-4 and 4995 more (heal failed: rollout failed)"
        );
        let one = DriftRecord {
            objects: vec!["Deployment/shop".into()],
            objects_omitted: 0,
            heal_failed: None,
            ..record
        };
        assert_eq!(sync_column(Some(&one)), "drifted: Deployment/shop");
        assert_eq!(sync_column(None), "-");
    }

    #[test]
    fn a_steps_log_attempts_are_told_apart_from_other_steps() {
        assert_eq!(log_attempt("build-1/compile.log", "build-1", "compile"), Some(1));
        assert_eq!(log_attempt("build-1/compile.3.log", "build-1", "compile"), Some(3));
        assert_eq!(log_attempt("build-1/compile.x.log", "build-1", "compile"), None);
        assert_eq!(
            log_attempt("build-1/compile.1.log", "build-1", "compile"),
            None,
            "the first has no number"
        );
        assert_eq!(log_attempt("build-1/lint.log", "build-1", "compile"), None);
        assert_eq!(log_attempt("build-12/compile.log", "build-1", "compile"), None);
    }
}
