//! The web UI in a real browser (Debian's chromium driven by `tests/browser/web.mjs` through
//! playwright-core, [`baton_tests::browser`]), against what Baton recorded:
//!
//! - the demo's story played into a test stack (a release approved into production by chat, a
//!   failing test, a crash-looping release rolled back, an image pushed by hand held before
//!   production) plus a push whose commit message is `<img src=x onerror=alert(1)>`: the matrix
//!   shows the release and digest each environment runs (as the config repo and the cluster
//!   say), a click leads to a release whose timeline lists its events in stream order with
//!   failures marked, a new push appears on the open event log within seconds without a reload,
//!   the XSS message renders as text (no element, no dialog), and every page passes axe with no
//!   serious or critical violation and is saved under `target/web-screenshots/`;
//! - a fixture history with known timestamps in a NATS server of its own: `/api/dora` and the
//!   DORA page show the figures computed by hand here from docs/dora.md's formulas.

use std::time::Duration;

use anyhow::{Context as _, Result};
use baton_demo::{APP, DEPLOYMENT, Stack, git, of, story, write};
use baton_kit::log::{self, Query, Record};
use baton_kit::{Outgoing, events};
use baton_schemas::config::JetStreamSettings;
use baton_schemas::config::web::WebSettings;
use baton_schemas::payloads::{ImageInfo, PushData};
use baton_schemas::release::{PromotionAction, RELEASE_FILE, ReleaseFile};
use baton_schemas::subjects::sanitize_token;
use baton_schemas::{CdEvent, EventType};
use baton_tests::browser::Browser;
use baton_tests::promotion::Promotion;
use baton_tests::push::Push;
use baton_tests::{NatsServer, app, deployment, eventually};
use chrono::{DateTime, DurationRound as _, TimeDelta, Utc};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// The commit message that must render inert.
const XSS: &str = "<img src=x onerror=alert(1)>";

/// How long a browser script may take.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

/// What the story left behind that the pages must show.
struct Story {
    /// Approved into production, rolled back to in staging.
    first: String,
    /// Stopped by its failing tests.
    failing: String,
    /// Crash-looped in staging, quarantined.
    crashing: String,
    /// The push whose message is [`XSS`].
    xss: String,
}

/// The demo's story ([`baton_demo::story`]; tests/tests/story.rs asserts each step, here it
/// only has to happen), then the XSS push.
async fn play(stack: &mut Stack) -> Result<Story> {
    let first = story::approved_into_production(stack).await?;
    let failing = story::failing_test_stops(stack).await?;
    let crashing = story::crash_loop_rolled_back(stack, &first.release).await?;
    story::hand_pushed_image_held(stack, &first.data).await?;
    // The XSS push: a healthy app again, the message in its changelog.
    let shop = stack.shop();
    write(&shop.join("deploy/deployment.yaml"), DEPLOYMENT)?;
    write(&shop.join("src/greeting.txt"), "hello, safely\n")?;
    let xss = stack.push(XSS, false).await?;
    stack
        .wait_for("the XSS release's tests", of(&xss, EventType::TestSuiteRunFinished))
        .await?;
    Ok(Story {
        first: first.release,
        failing,
        crashing,
        xss,
    })
}

/// The environment's release file in the config repo's `main`: what it runs, as the promoter
/// wrote it.
fn release_file(stack: &Stack, environment: &str) -> Result<ReleaseFile> {
    let path = format!("main:{environment}/{}/{RELEASE_FILE}", sanitize_token(APP));
    Ok(yaml_serde::from_str(&git(&stack.config_repo(), &["show", &path])?)?)
}

/// The events of the stream in order, as the web reads them.
async fn stream(nats: &NatsServer) -> Result<Vec<Record>> {
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    let mut records = Vec::new();
    let stream = JetStreamSettings::default().events_stream;
    log::read(&js, &stream, &Query::default(), |record| {
        records.push(record);
        true
    })
    .await?;
    Ok(records)
}

/// Waits until the web at `base` is ready and its view has observed the stream's last event.
async fn caught_up(base: &str, nats: &NatsServer) -> Result<()> {
    let last = stream(nats).await?.last().map_or(0, |r| r.sequence);
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(60), "the web's view to catch up", async || {
        let ready = http.get(format!("{base}/readyz")).send().await;
        if !ready.as_ref().is_ok_and(|r| r.status().is_success()) {
            return Ok(Err(format!("/readyz: {ready:?}")));
        }
        let seen: Value = http
            .get(format!("{base}/api/events?limit=1"))
            .send()
            .await?
            .json()
            .await?;
        let observed = seen["lastSequence"].as_u64().unwrap_or(0);
        Ok(if observed >= last {
            Ok(())
        } else {
            Err(format!("lastSequence {observed} < {last}"))
        })
    })
    .await
}

/// Starts baton-web in this process against `nats` with `config`; returns its base URL.
async fn start_web(nats: &NatsServer, config: WebSettings, stop: &CancellationToken) -> Result<String> {
    let web = app::spawn::<baton_web::Application>(app::common(&nats.url()), config, &|_| None, stop).await?;
    Ok(format!("http://{}", web.addr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_story_reads_in_a_browser() -> Result<()> {
    // Before the stack: a missing browser fails at once, naming `just setup`.
    let browser = Browser::locate()?;
    let mut stack = Box::pin(Stack::start(false)).await?;
    let story = Box::pin(play(&mut stack)).await?;

    // The demo stack's baton-web, on its NATS, config repo and registry.
    let base = stack.web_url().to_owned();
    caught_up(&base, &stack.nats).await?;

    // What each environment runs, as the config repo and the cluster say.
    let mut matrix = serde_json::Map::new();
    for environment in ["staging", "production"] {
        let file = release_file(&stack, environment)?;
        let mut mentions = Vec::new();
        if file.pinned.is_some() {
            mentions.push("pin");
        }
        if environment == "production" {
            // The hand-pushed image's held promotion, with its reason.
            mentions.push("requires evidence");
        }
        matrix.insert(
            environment.to_owned(),
            json!({"release": file.release.release, "digest": file.release.image.digest, "mentions": mentions}),
        );
    }
    let records = stream(&stack.nats).await?;
    let kinds_of = |release: &str| -> Vec<String> {
        records
            .iter()
            .filter(|r| r.chain() == Some(release))
            .map(log::kind)
            .collect()
    };
    let production: ReleaseFile = release_file(&stack, "production")?;
    anyhow::ensure!(
        production.release.release == story.first,
        "the story leaves the first release in production, not {}",
        production.release.release
    );
    let expected = json!({
        "app": APP,
        "matrix": matrix,
        "release": {"id": story.first, "timeline": kinds_of(&story.first)},
        "failures": {
            "tests": {"id": story.failing, "types": ["testsuiterun.finished"]},
            "crashloop": {"id": story.crashing, "types": ["baton-deployment.failed", "baton-release.quarantined"]},
        },
        "xss": {"release": story.xss, "message": XSS},
    });

    let mut script = browser.start(
        "web",
        &[("BASE_URL", &base), ("EXPECTED", &expected.to_string())],
        SCRIPT_TIMEOUT,
    )?;
    // The event log is open: a push now must appear on it without a reload.
    script.checkpoint("events-open").await?;
    write(&stack.shop().join("src/greeting.txt"), "hello, live\n")?;
    stack.push("Live on the event log", false).await?;
    let commit = git(&stack.shop(), &["rev-parse", "HEAD"])?;
    script.send(commit.get(..8).context("a sha")?).await?;
    let output = script.finish().await?;
    let report = output.json()?.pop().context("the script's report")?;
    let live_ms = report["liveMs"].as_u64().context("the live event's delay")?;
    assert!(live_ms <= 3_000, "the live event took {live_ms} ms");

    stack.stop().await;
    Ok(())
}

/// One fixture release of acme/shop: its push's commits, then what happened to it in the
/// environments, in stream order with the times below.
struct Step {
    /// When (hours after the fixture's origin).
    hours: f64,
    /// What.
    what: Happening,
}

enum Happening {
    /// The push of `release` with commits made at these hours.
    Push {
        release: &'static str,
        commits: &'static [f64],
    },
    /// The deployer's report on a promotion of `release` into `environment`.
    Deployed {
        release: &'static str,
        environment: &'static str,
        action: PromotionAction,
        failure: Option<&'static str>,
    },
    /// The promoter quarantined `release`.
    Quarantined { release: &'static str },
}

const DAY: f64 = 24.0;

/// The fixture history (origin `T`, ten days before the test runs, at midnight):
///
/// | release | first commit | production | staging |
/// | --- | --- | --- | --- |
/// | a | T−2h | deployed T+1h (lead 3h) | deployed T+30m (lead 2.5h) |
/// | b | T+1d | deployed T+1d+2h (lead 2h) | deployed T+1d+1h (lead 1h) |
/// | c | T+2d | failed T+2d+1h; rolled back to b T+2d+1.5h (restore 30m) | |
/// | d | T+3d | deployed T+3d+4h (lead 4h); quarantined T+3d+6h | |
/// | e | T+4d−1h | deployed T+4d (lead 1h; restores d's outage: 18h) | |
/// | f | T+5d | deployed T+5d+5h (lead 5h) | |
/// | g | T+6d | failed T+6d+1h; rolled back to f T+6d+3h (restore 2h) | |
const HISTORY: &[Step] = &[
    push(0.0, "a", &[-2.0, -1.0]),
    deployed(0.5, "a", "staging", None),
    deployed(1.0, "a", "production", None),
    push(DAY, "b", &[DAY]),
    deployed(DAY + 1.0, "b", "staging", None),
    deployed(DAY + 2.0, "b", "production", None),
    push(2.0 * DAY, "c", &[2.0 * DAY]),
    deployed(2.0 * DAY + 1.0, "c", "production", Some("CrashLoopBackOff")),
    rolled_back(2.0 * DAY + 1.5, "b", "production"),
    push(3.0 * DAY, "d", &[3.0 * DAY]),
    deployed(3.0 * DAY + 4.0, "d", "production", None),
    Step {
        hours: 3.0 * DAY + 6.0,
        what: Happening::Quarantined { release: "d" },
    },
    push(4.0 * DAY - 1.0, "e", &[4.0 * DAY - 1.0]),
    deployed(4.0 * DAY, "e", "production", None),
    push(5.0 * DAY, "f", &[5.0 * DAY]),
    deployed(5.0 * DAY + 5.0, "f", "production", None),
    push(6.0 * DAY, "g", &[6.0 * DAY]),
    deployed(6.0 * DAY + 1.0, "g", "production", Some("CrashLoopBackOff")),
    rolled_back(6.0 * DAY + 3.0, "f", "production"),
];

const fn push(hours: f64, release: &'static str, commits: &'static [f64]) -> Step {
    Step {
        hours,
        what: Happening::Push { release, commits },
    }
}

const fn deployed(hours: f64, release: &'static str, environment: &'static str, failure: Option<&'static str>) -> Step {
    Step {
        hours,
        what: Happening::Deployed {
            release,
            environment,
            action: PromotionAction::Promote,
            failure,
        },
    }
}

const fn rolled_back(hours: f64, release: &'static str, environment: &'static str) -> Step {
    Step {
        hours,
        what: Happening::Deployed {
            release,
            environment,
            action: PromotionAction::Rollback,
            failure: None,
        },
    }
}

/// The figures docs/dora.md's formulas give for [`HISTORY`] over the 30 days before now:
/// `(deployments per day, median lead time s, change failure rate, median time to restore s)`.
///
/// Production: deployments a, b, d, e, f (c and g failed; rollbacks restore, they do not
/// deploy): 5 / 30 days. Lead times 3h, 2h, 4h, 1h, 5h: median 3h. Changes a..g settled, c and
/// g failed their rollouts and d was quarantined while it ran: 3 / 7. Restores 30m (c), 18h (d:
/// quarantined at T+3d+6h, e deployed at T+4d), 2h (g): median 2h.
///
/// Staging: a and b deployed, 2 / 30 days; lead times 2.5h and 1h: median 1.75h; no change
/// failed: 0 / 2; nothing to restore: no data.
const PRODUCTION: (f64, f64, f64, Option<f64>) = (5.0 / 30.0, 3.0 * 3600.0, 3.0 / 7.0, Some(2.0 * 3600.0));
const STAGING: (f64, f64, f64, Option<f64>) = (2.0 / 30.0, 1.75 * 3600.0, 0.0, None);

/// The fixture's events, stamped from `origin`.
fn fixture(origin: DateTime<Utc>) -> Result<Vec<Outgoing>> {
    #[allow(
        clippy::cast_possible_truncation,
        reason = "the fixture's times are whole minutes, a few days from the origin"
    )]
    let at = |hours: f64| origin + TimeDelta::seconds((hours * 3600.0).round() as i64);
    let image = ImageInfo {
        registry: "127.0.0.1:5000".into(),
        repository: "baton/acme_shop".into(),
        tag: "fixture".into(),
        digest: format!("sha256:{}", "ab".repeat(32)),
        reference: format!("127.0.0.1:5000/baton/acme_shop@sha256:{}", "ab".repeat(32)),
        purl: format!("pkg:oci/acme_shop@sha256%3A{}", "ab".repeat(32)),
        uploaded_bytes: 0,
    };
    let mut out = Vec::new();
    for (n, step) in HISTORY.iter().enumerate() {
        let mut outgoing = match &step.what {
            Happening::Push { release, commits } => {
                let commit = format!("{n:040}");
                let mut event = Push {
                    app: APP,
                    clone_url: "file:///nowhere",
                    commit: &commit,
                    delivery: release,
                }
                .event()?;
                let mut data: PushData = event.event.custom_data_as()?;
                data.commits = commits
                    .iter()
                    .map(|hours| {
                        let mut c = data.head_commit.clone();
                        c.timestamp = Some(at(*hours).to_rfc3339());
                        c
                    })
                    .collect();
                data.head_commit = data.commits.last().cloned().context("a commit")?;
                event.event = event.event.with_custom_data(data)?;
                event
            }
            Happening::Deployed {
                release,
                environment,
                action,
                failure,
            } => {
                let promotion = Promotion {
                    app: APP,
                    environment,
                    namespace: &format!("shop-{environment}"),
                    promotion: format!("promotion-{n}"),
                    release: format!("release-{release}"),
                    image: &image,
                    action: *action,
                    config_repository: "file:///nowhere".into(),
                    config_commit: &"c".repeat(40),
                    manifests_path: format!("{environment}/acme_shop"),
                    actor: "baton-promoter",
                }
                .data();
                deployment::report(&promotion, *failure)?
            }
            Happening::Quarantined { release } => {
                let release = format!("release-{release}");
                let event = CdEvent::new(
                    EventType::ReleaseQuarantined,
                    format!("quarantine-{n}"),
                    "/baton/promoter",
                    release.clone(),
                    json!({"app": APP, "actor": "baton-promoter", "reason": "a failed rollout"}),
                )?
                .with_chain_id(&release);
                Outgoing::new(APP, event)
            }
        };
        outgoing.event.context.timestamp = at(step.hours);
        out.push(outgoing);
    }
    Ok(out)
}

/// Whether `shown` is `expected` within rounding for display (0.5 %, at least 0.005).
fn close(shown: f64, expected: f64) -> bool {
    (shown - expected).abs() <= (expected.abs() * 0.005).max(0.005)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dora_figures_match_a_history_computed_by_hand() -> Result<()> {
    let browser = Browser::locate()?;
    // reqwest builds its TLS config even for plain HTTP.
    baton_kit::tls::install_crypto_provider();
    let nats = NatsServer::start()?;
    let common = app::common(&nats.url());
    app::provision_for::<baton_web::Application>(&common).await?;
    let origin = (Utc::now() - TimeDelta::days(10)).duration_trunc(TimeDelta::days(1))?;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    for outgoing in fixture(origin)? {
        events::publish(&js, &outgoing).await?;
    }
    // A baton-web of its own rather than the demo stack's: the figures are computed by hand
    // for exactly this history, at these times, so its stream must hold nothing else (the
    // story's events would add deployments and failures to acme/shop's), and the history
    // needs no registry, cluster or other service.
    let stop = CancellationToken::new();
    let base = start_web(&nats, WebSettings::default(), &stop).await?;
    caught_up(&base, &nats).await?;

    let http = reqwest::Client::new();
    let mut pages = serde_json::Map::new();
    for (environment, (per_day, lead, failure_rate, restore)) in [("production", PRODUCTION), ("staging", STAGING)] {
        let url = format!("{base}/api/dora?app=acme%2Fshop&environment={environment}&window=30d");
        let response = http.get(&url).send().await?;
        let status = response.status();
        let body = response.text().await?;
        anyhow::ensure!(status.is_success(), "{url}: {status}: {body}");
        let report: Value = serde_json::from_str(&body).with_context(|| format!("{url}: {body}"))?;
        let number = |key: &str| report[key].as_f64();
        assert!(
            number("deploymentsPerDay").is_some_and(|n| close(n, per_day)),
            "{environment}: deployments per day {per_day}, got {report}"
        );
        assert!(
            number("leadTimeSeconds").is_some_and(|n| close(n, lead)),
            "{environment}: lead time {lead} s, got {report}"
        );
        assert!(
            number("changeFailureRate").is_some_and(|n| close(n, failure_rate)),
            "{environment}: change failure rate {failure_rate}, got {report}"
        );
        match restore {
            Some(restore) => assert!(
                number("timeToRestoreSeconds").is_some_and(|n| close(n, restore)),
                "{environment}: time to restore {restore} s, got {report}"
            ),
            None => assert!(
                report["timeToRestoreSeconds"].is_null(),
                "{environment}: nothing to restore, got {report}"
            ),
        }
        pages.insert(
            environment.to_owned(),
            json!({
                "deployment-frequency": per_day,
                "lead-time": lead,
                "change-failure-rate": failure_rate,
                "time-to-restore": restore,
            }),
        );
    }

    let expected = json!({"app": APP, "environments": pages});
    let report = browser
        .run(
            "dora",
            &[("BASE_URL", &base), ("EXPECTED", &expected.to_string())],
            SCRIPT_TIMEOUT,
        )
        .await?
        .json()?
        .pop()
        .context("the script's report")?;
    assert_eq!(report["failures"], json!([]), "{report}");
    stop.cancel();
    Ok(())
}
