//! `baton admin provision`: the admin's provisioning step. Baton's services may not create or
//! change streams, buckets or consumers (deploy/base/nats/auth.conf); this command does it,
//! with the NATS admin user, before they start and after every change of their JetStream or
//! runner settings (on Kubernetes, the Job `baton-provision`). It reads the same config files
//! the services do: each `<service>.yaml` present in `--config-dir` provisions that service's
//! stage consumer, tuned by its `runner` section, and all of them must name the same streams
//! and buckets. Without `--config-dir` it provisions every stage with the defaults (and
//! `BATON_*` overrides). `baton up` does the same before it starts the services.

use std::path::{Path, PathBuf};

use baton_kit::provision::{self, ConsumerChange, History, Plan, Provisioned};
use baton_kit::service::{self, Service};
use baton_kit::settings;
use baton_schemas::config::CommonSettings;
use serde_json::json;

use crate::CliError;
use crate::cli::Output;

/// Loads the common settings of one service's config file in a directory, if it is there.
type Loader = fn(&Path) -> Result<Option<(PathBuf, CommonSettings)>, CliError>;

/// Every service's config file, in start order: what `baton up` starts and what provisioning
/// reads.
pub(crate) const CONFIGS: [(&str, Loader); 6] = [
    ("listener", load::<baton_listener::Application>),
    ("builder", load::<baton_builder::Application>),
    ("tester", load::<baton_tester::Application>),
    ("promoter", load::<baton_promoter::Application>),
    ("deployer", load::<baton_deployer::Application>),
    ("chatops", load::<baton_chatops::Application>),
];

/// `<dir>/<service>.yaml` with `BATON_*` overrides; `None` when the file does not exist.
fn load<S: Service>(dir: &Path) -> Result<Option<(PathBuf, CommonSettings)>, CliError> {
    let path = dir.join(format!("{}.yaml", service::short_name::<S>()));
    if !path.exists() {
        return Ok(None);
    }
    let settings = settings::load::<S::Config>(Some(&path), std::env::vars())
        .map_err(|e| CliError::Config(format!("{}: {e}", path.display())))?;
    Ok(Some((path, settings.common)))
}

/// The plan of the config files in `dir`: their streams and buckets (which must agree), and the
/// consumer of each stage whose service has a file, tuned by that file's `runner` section.
/// `None` when the directory holds no service config.
///
/// # Errors
/// [`CliError::Config`] for an invalid file, or two that name different streams or buckets.
pub fn plan_from_dir(dir: &Path) -> Result<Option<(Plan, CommonSettings)>, CliError> {
    let mut plan: Option<(Plan, PathBuf, CommonSettings)> = None;
    for (name, loader) in CONFIGS {
        let Some((path, common)) = loader(dir)? else {
            continue;
        };
        let (plan, first, _) = plan.get_or_insert_with(|| (Plan::streams_only(&common), path.clone(), common.clone()));
        if plan.jetstream != common.jetstream || plan.remember_handled != common.runner.remember_handled {
            return Err(CliError::Config(format!(
                "{} and {} name different JetStream settings (jetstream, runner.remember_handled): \
                 every service must use the same streams and buckets",
                first.display(),
                path.display()
            )));
        }
        if let Some(stage) = provision::stage(name) {
            plan.consumers.push((*stage, common.runner.clone()));
        }
    }
    Ok(plan.map(|(plan, _, common)| (plan, common)))
}

/// `baton admin provision`: provisions with `client` (the admin's connection) and prints what it
/// did.
///
/// # Errors
/// [`CliError::Config`] for the config files, [`CliError::Refused`] when a consumer would be
/// created over history and no `--consumer-history` was given, [`CliError::Nats`] when JetStream
/// refuses (e.g. the user is not the admin).
pub async fn provision(
    client: &async_nats::Client,
    config_dir: Option<&Path>,
    history: History,
    output: Output,
) -> Result<(), CliError> {
    let plan = match config_dir {
        Some(dir) => {
            plan_from_dir(dir)?
                .ok_or_else(|| {
                    CliError::Usage(format!(
                        "no service config in {}: write one or more of {}",
                        dir.display(),
                        CONFIGS.map(|(name, _)| format!("{name}.yaml")).join(", ")
                    ))
                })?
                .0
        }
        None => {
            let defaults = settings::load::<serde_json::Map<String, serde_json::Value>>(None, std::env::vars())
                .map_err(|e| CliError::Config(e.to_string()))?;
            Plan::new(&defaults.common)
        }
    };
    let provisioned = apply(client, &plan.with_history(history)).await?;
    report(&provisioned, output);
    Ok(())
}

/// Applies `plan`, mapping refusals to what the operator does next.
///
/// # Errors
/// [`CliError::Refused`] for a consumer over history, [`CliError::Nats`] otherwise.
pub async fn apply(client: &async_nats::Client, plan: &Plan) -> Result<Provisioned, CliError> {
    provision::apply(client, plan).await.map_err(|e| match e {
        e @ baton_kit::fabric::FabricError::ConsumerHistory { .. } => CliError::Refused(e.to_string()),
        e => CliError::Nats(format!(
            "{}; provisioning needs the NATS admin user (--nats-user admin, deploy/README.md)",
            service::chain(&e)
        )),
    })
}

fn report(provisioned: &Provisioned, output: Output) {
    let settings = &provisioned.topology.settings;
    let streams = [
        format!("stream {}", settings.events_stream),
        format!("stream {}", settings.deadletter_stream),
        format!("key-value bucket {}", baton_kit::fabric::HANDLED_BUCKET),
        format!("key-value bucket {}", baton_kit::fabric::STATE_BUCKET),
        format!("key-value bucket {}", baton_kit::fabric::LOCKS_BUCKET),
        format!("object store {}", settings.logs_bucket),
    ];
    let change = |c: ConsumerChange| match c {
        ConsumerChange::Created => "created",
        ConsumerChange::CreatedSkippingHistory => "created after the newest event (history skipped)",
        ConsumerChange::CreatedReplaying => "created from the stream's start (history replayed)",
        ConsumerChange::Updated => "present, settings applied, position kept",
    };
    match output {
        Output::Json | Output::Yaml => {
            let value = json!({
                "provisioned": streams,
                "consumers": provisioned.consumers.iter()
                    .map(|(name, c)| json!({"consumer": name, "stream": settings.events_stream, "change": change(*c)}))
                    .collect::<Vec<_>>(),
            });
            println!("{}", crate::render::document(output, &value));
        }
        Output::Human | Output::Wide => {
            for piece in &streams {
                println!("{piece}: provisioned");
            }
            for (name, c) in &provisioned.consumers {
                println!("consumer {name} of stream {}: {}", settings.events_stream, change(*c));
            }
        }
    }
}
