//! baton-web against a real nats-server and a real config repo: the view built from published
//! events (caught up before `/readyz` says ready, then followed live, also over server-sent
//! events), the JSON API's answers, 400s naming the parameter, 404s, 405 for anything but GET,
//! the security headers, a commit message `<img src=x onerror=alert(1)>` rendered inert, and a
//! Secret's data never shown in a manifest diff; and DORA's figures for a small published
//! history, in `/api/dora` and on the page, equal to a ledger fed the same events and to the
//! values computed by hand from docs/dora.md's formulas.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use async_nats::jetstream;
use baton_kit::{codec, events};
use baton_schemas::config::web::WebSettings;
use baton_schemas::{CdEvent, EventType, subjects};
use baton_tests::{NatsServer, app};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const XSS: &str = "<img src=x onerror=alert(1)>";
const RELEASE: &str = "rel-00000001-shop";
const OLD_RELEASE: &str = "rel-00000000-shop";
/// The Secret's password in the config repo, base64 (`hunter2`).
const PASSWORD: &str = "aHVudGVyMg==";

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    baton_tests::git(dir, args).map_err(anyhow::Error::msg)
}

/// A config repo where staging runs the release (2 replicas) and production the old one (1),
/// both with a Secret; returns its URL and the commit.
fn config_repo(root: &Path) -> Result<(String, String)> {
    git(root, &["init", "-q", "--bare", "-b", "main", "config.git"])?;
    git(root, &["clone", "-q", "config.git", "work"])?;
    let work = root.join("work");
    for (env, replicas, password) in [("staging", 2, PASSWORD), ("production", 1, "b2xkLXBhc3M=")] {
        let dir = work.join(env).join("acme_shop");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("deployment.yaml"),
            format!("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: shop\nspec:\n  replicas: {replicas}\n"),
        )?;
        std::fs::write(
            dir.join("secret.yaml"),
            format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\ndata:\n  password: {password}\n"),
        )?;
        std::fs::write(dir.join(".baton-release.yaml"), "release: {}\n")?;
    }
    git(&work, &["add", "."])?;
    git(
        &work,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "commit",
            "-qm",
            "manifests",
        ],
    )?;
    git(&work, &["push", "-q", "origin", "main"])?;
    let commit = git(&work, &["rev-parse", "HEAD"])?.trim().to_owned();
    Ok((root.join("config.git").display().to_string(), commit))
}

/// Publishes `ty` for the release as the services would (binary mode), without the schema
/// check: the fixtures carry only the fields the web reads.
async fn publish(
    js: &jetstream::Context,
    id: &str,
    ty: EventType,
    chain: &str,
    content: Value,
    data: Value,
) -> Result<()> {
    let event = CdEvent::new(ty, id, format!("/baton/{}", ty.emitted_by()), "acme/shop", content)?
        .with_chain_id(chain)
        .with_custom_data(data)?;
    let (headers, payload) = codec::encode_binary(&events::to_cloudevent(&event));
    js.publish_with_headers(subjects::event_subject("acme/shop", ty), headers, payload)
        .await?
        .await?;
    Ok(())
}

async fn story(js: &jetstream::Context, config_commit: &str) -> Result<()> {
    publish(
        js,
        "e1",
        EventType::ChangeMerged,
        RELEASE,
        json!({}),
        json!({"app": "acme/shop", "after": "c0ffee0011223344556677889900aabbccddeeff", "ref": "refs/heads/main",
               "pusher": {"username": "alice"},
               "commits": [{"id": "c0ffee0011223344556677889900aabbccddeeff", "message": format!("{XSS}\n\nbody"),
                            "author": {"name": "Alice"}}]}),
    )
    .await?;
    publish(
        js,
        "e2",
        EventType::BuildFinished,
        RELEASE,
        json!({}),
        json!({"app": "acme/shop", "commit": "c0ffee0011223344556677889900aabbccddeeff", "run": "build-1",
               "outcome": "success", "repository": "file:///shop",
               "steps": [{"name": "compile", "status": "succeeded", "durationMs": 10,
                          "log": {"bucket": "baton-logs", "object": "build-1/compile.log", "bytes": 30, "lines": 2}}]}),
    )
    .await?;
    publish(
        js,
        "e3",
        EventType::EnvironmentModified,
        RELEASE,
        json!({}),
        json!({"app": "acme/shop", "environment": "staging", "action": "promote", "actor": "baton-promoter",
               "configCommit": config_commit, "manifestsPath": "staging/acme_shop", "pinned": false}),
    )
    .await?;
    publish(
        js,
        "e4",
        EventType::ServiceDeployed,
        RELEASE,
        json!({}),
        json!({"app": "acme/shop", "environment": "staging", "image": "127.0.0.1:5000/baton/acme_shop@sha256:ab"}),
    )
    .await?;
    Ok(())
}

/// `text` as the templates escape it.
fn escaped(text: &str) -> String {
    text.replace('<', "&#60;").replace('>', "&#62;")
}

async fn get(http: &reqwest::Client, base: &str, path: &str) -> Result<reqwest::Response> {
    Ok(http.get(format!("{base}{path}")).send().await?)
}

async fn json_of(http: &reqwest::Client, base: &str, path: &str) -> Result<Value> {
    let response = get(http, base, path).await?;
    let status = response.status();
    let body: Value = response.json().await?;
    if !status.is_success() {
        bail!("{path}: {status} {body}");
    }
    Ok(body)
}

async fn ready(http: &reqwest::Client, base: &str) -> Result<()> {
    let start = Instant::now();
    loop {
        let response = get(http, base, "/readyz").await?;
        if response.status().is_success() {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(20) {
            bail!("not ready after 20s: {}", response.text().await?);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_web_shows_what_the_log_and_the_state_hold_safely() -> Result<()> {
    baton_kit::tls::install_crypto_provider();
    let nats = NatsServer::start()?;
    let common = app::common(&nats.url());
    let topology = nats.provision(&common).await?;
    let js = topology.jetstream.clone();
    let root = tempfile::tempdir()?;
    let (repo, config_commit) = config_repo(root.path())?;

    // Before the web starts: the story so far, the promoter's state, a step's log.
    story(&js, &config_commit).await?;
    let current = |release: &str| {
        json!({"release": release, "promotion": "p", "config_commit": config_commit, "action": "promote",
               "healthy_since": "2024-05-01T10:00:00Z", "last_healthy": null, "pinned": null})
    };
    topology
        .state
        .put(
            "promoter.current.acme_shop.staging",
            serde_json::to_vec(&current(RELEASE))?.into(),
        )
        .await?;
    topology
        .state
        .put(
            "promoter.current.acme_shop.production",
            serde_json::to_vec(&current(OLD_RELEASE))?.into(),
        )
        .await?;
    // The deployer's drift record of staging, with hostile object names and heal failure.
    let drift = json!({"state": "drifted", "configCommit": config_commit, "objects": ["Deployment/shop", XSS],
                       "fingerprint": "f", "since": "2024-05-01T11:00:00Z", "healFailed": XSS});
    topology
        .state
        .put(
            baton_schemas::drift::drift_key("acme/shop", "staging"),
            serde_json::to_vec(&drift)?.into(),
        )
        .await?;
    topology
        .logs
        .put("build-1/compile.log", &mut format!("compiling\n{XSS}\n").as_bytes())
        .await?;

    let mut settings = WebSettings::default();
    settings.config_repo.url = repo;
    settings.source.cache_dir = Some(root.path().join("cache"));
    let stop = CancellationToken::new();
    let web = app::spawn::<baton_web::Application>(common, settings, &|_| None, &stop).await?;
    let base = format!("http://{}", web.addr);
    let http = reqwest::Client::new();
    ready(&http, &base).await?;

    // Caught up: the matrix and the event log.
    let matrix = json_of(&http, &base, "/api/matrix").await?;
    let row = &matrix["apps"][0];
    assert_eq!(row["app"], "acme/shop", "{matrix}");
    let staging = row["cells"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["environment"] == "staging")
        .unwrap();
    assert_eq!(staging["release"]["id"], RELEASE, "{matrix}");
    assert_eq!(staging["health"], "healthy", "{matrix}");
    let production = row["cells"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["environment"] == "production")
        .unwrap();
    assert_eq!(production["release"]["id"], OLD_RELEASE, "{matrix}");
    assert_eq!(staging["sync"]["state"], "drifted", "{matrix}");
    assert_eq!(staging["sync"]["objects"][1], XSS, "{matrix}");
    assert!(production.get("sync").is_none(), "{matrix}");
    let html = get(&http, &base, "/").await?.text().await?;
    assert!(html.contains("drifted: 2 objects"), "{html}");
    assert!(
        html.contains(&format!("heal failed: {}", escaped(XSS))) && !html.contains("<img"),
        "{html}"
    );
    let events = json_of(&http, &base, "/api/events?limit=2").await?;
    let sequences: Vec<u64> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(sequences, [4, 3], "newest first: {events}");
    let deployed = json_of(&http, &base, "/api/events?type=service.deployed&app=acme/shop").await?;
    assert_eq!(deployed["events"].as_array().unwrap().len(), 1, "{deployed}");
    let apps = json_of(&http, &base, "/api/apps").await?;
    assert_eq!(apps[0]["latestRelease"], RELEASE, "{apps}");

    // The release: its timeline, the XSS commit escaped, the diff without the Secret's data.
    let release = json_of(&http, &base, &format!("/api/releases/{}", &RELEASE[..12])).await?;
    assert_eq!(release["id"], RELEASE);
    assert_eq!(release["timeline"].as_array().unwrap().len(), 4, "{release}");
    assert_eq!(release["changelog"][0]["summary"], XSS);
    assert_eq!(release["logs"][0]["url"], "/logs/build%2D1/compile", "{release}");
    let diff = release["diff"].to_string();
    assert!(
        !diff.contains(PASSWORD) && !diff.contains("b2xkLXBhc3M="),
        "a Secret's data in the diff: {diff}"
    );
    let production_diff = release["diff"]["content"]
        .as_array()
        .context("diffs")?
        .iter()
        .find(|d| d["environment"] == "production")
        .context("production's diff")?;
    let lines: Vec<String> = production_diff["files"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| {
            f["hunks"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|h| h.as_array().unwrap().iter())
        })
        .map(|l| format!("{}{}", l["tag"].as_str().unwrap(), l["text"].as_str().unwrap()))
        .collect();
    assert!(
        lines.contains(&"+  replicas: 2".to_owned()) && lines.contains(&"-  replicas: 1".to_owned()),
        "{lines:?}"
    );
    let page = get(&http, &base, &format!("/releases/{RELEASE}")).await?;
    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    let html = page.text().await?;
    assert!(html.contains(&escaped(XSS)), "the commit message is shown escaped");
    assert!(!html.contains("<img"), "no markup from a commit message");
    assert!(!html.contains(PASSWORD), "no Secret data on the page");
    assert!(html.contains("id=\"timeline\"") && html.contains("data-type=\"service.deployed\""));
    assert_eq!(
        headers["content-security-policy"],
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    );
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    assert!(
        !html.contains("<script>") && !html.contains(" style="),
        "no inline script or style"
    );
    let log = get(&http, &base, "/logs/build-1/compile").await?.text().await?;
    assert!(log.contains(&escaped(XSS)) && !log.contains("<img"), "{log}");

    // Bad requests name their parameter; unknown things are 404; only GET is allowed.
    for (path, parameter) in [
        ("/api/events?limit=0", "limit"),
        ("/api/events?type=service.exploded", "type"),
        ("/api/events?since=yesterday", "since"),
        ("/api/events?colour=red", "colour"),
    ] {
        let response = get(&http, &base, path).await?;
        assert_eq!(response.status(), 400, "{path}");
        let body: Value = response.json().await?;
        assert_eq!(body["parameter"], parameter, "{path}: {body}");
    }
    let page = get(&http, &base, "/events?limit=ten").await?;
    assert_eq!(page.status(), 400);
    assert!(page.text().await?.contains("`limit`"));
    let missing = get(&http, &base, "/releases/rel-99999999").await?;
    assert_eq!(missing.status(), 404);
    assert!(missing.text().await?.contains("rel-99999999"));
    assert_eq!(get(&http, &base, "/api/releases/rel-99999999").await?.status(), 404);
    assert_eq!(get(&http, &base, "/nowhere").await?.status(), 404);
    assert_eq!(get(&http, &base, "/api/nowhere").await?.status(), 404);
    for method in [reqwest::Method::POST, reqwest::Method::PUT, reqwest::Method::DELETE] {
        let response = http
            .request(method.clone(), format!("{base}/api/matrix"))
            .send()
            .await?;
        assert_eq!(response.status(), 405, "{method}");
        assert_eq!(response.headers()["allow"], "GET, HEAD");
    }

    // Live: a new event reaches the live stream and the view within a second or two.
    let mut live = get(&http, &base, "/events/live?app=acme/shop&type=baton-deployment.failed").await?;
    assert_eq!(live.status(), 200);
    publish(
        &js,
        "e5",
        EventType::DeploymentFailed,
        RELEASE,
        json!({"environment": "production", "app": "acme/shop", "artifactId": "pkg:oci/shop", "reason": "CrashLoopBackOff"}),
        json!({"app": "acme/shop", "environment": "production"}),
    )
    .await?;
    let mut received = String::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !received.contains("CrashLoopBackOff") {
        let chunk = tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), live.chunk())
            .await
            .context("no live event within 5s")??
            .context("the live stream ended")?;
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        received.contains("event: baton") && received.contains("\"sequence\":5"),
        "{received}"
    );
    let failed = json_of(&http, &base, "/api/events?type=baton-deployment.failed").await?;
    assert_eq!(failed["events"][0]["sequence"], 5, "{failed}");
    assert_eq!(failed["events"][0]["failed"], true);

    // A command concerning no app is recorded under subjects::NO_APP: it is in the log, but it
    // is no app of /api/apps.
    let refused = CdEvent::new(
        EventType::CommandRejected,
        "e-no-app",
        "/baton/promoter",
        "restore",
        json!({}),
    )?
    .with_custom_data(json!({"actor": "mallory", "verb": "restore"}))?;
    let (headers, payload) = codec::encode_binary(&events::to_cloudevent(&refused));
    js.publish_with_headers(
        format!(
            "{}.{}.baton-command.rejected",
            subjects::EVENTS_PREFIX,
            subjects::NO_APP
        ),
        headers,
        payload,
    )
    .await?
    .await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let rejected = json_of(&http, &base, "/api/events?type=baton-command.rejected").await?;
        if rejected["events"].as_array().is_some_and(|e| !e.is_empty()) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the refused command never reached the view");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let apps = json_of(&http, &base, "/api/apps").await?;
    let names: Vec<&str> = apps
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["app"].as_str())
        .collect();
    assert_eq!(names, ["acme/shop"], "{apps}");

    drop(live);
    stop.cancel();
    web.task.await??;
    Ok(())
}

/// A small history of `acme/cart` in production, from `2024-03-01T00:00:00Z` (T):
///
/// | release | push (first commit) | production |
/// | --- | --- | --- |
/// | r1 | T+09:00 (08:00) | promoted 10:00, deployed 11:00: lead 3h |
/// | r2 | T+2d 09:00 (07:00) | promoted 10:00, failed 10:30; rolled back to r1 10:40, healthy 10:50: a restore of 20m |
/// | r3 | T+6d 09:00 (08:00) | promoted 10:00, deployed 13:00: lead 5h |
///
/// Over `[T, T+10d)`: 2 deployments (0.2 a day), lead time median(3h, 5h) = 4h, 1 failed of 3
/// changes, time to restore 20m. In buckets of 5 days: (1, 3h, 1/2, 20m) then (1, 5h, 0, none).
async fn dora_history(js: &jetstream::Context) -> Result<Vec<CdEvent>> {
    use baton_schemas::payloads::{ImageInfo, PushData};
    use baton_schemas::release::PromotionAction::{Promote, Rollback};
    use baton_tests::{deployment, promotion, push};

    let t = |day: i64, hour: i64, minute: i64| -> chrono::DateTime<chrono::Utc> {
        "2024-03-01T00:00:00Z".parse::<chrono::DateTime<chrono::Utc>>().unwrap()
            + chrono::TimeDelta::days(day)
            + chrono::TimeDelta::hours(hour)
            + chrono::TimeDelta::minutes(minute)
    };
    let image = ImageInfo {
        registry: "127.0.0.1:5000".into(),
        repository: "baton/acme_cart".into(),
        tag: "dora".into(),
        digest: format!("sha256:{}", "cd".repeat(32)),
        reference: format!("127.0.0.1:5000/baton/acme_cart@sha256:{}", "cd".repeat(32)),
        purl: format!("pkg:oci/acme_cart@sha256%3A{}", "cd".repeat(32)),
        uploaded_bytes: 0,
    };
    let mut history = Vec::new();
    let mut promotions = 0;
    let mut promotion = |release: &str, action, at, reported: Option<(_, Option<&str>)>| -> Result<()> {
        promotions += 1;
        let data = promotion::Promotion {
            app: "acme/cart",
            environment: "production",
            namespace: "cart-production",
            promotion: format!("p{promotions}"),
            release: format!("release-{release}"),
            image: &image,
            action,
            config_repository: "file:///config".into(),
            config_commit: &"c".repeat(40),
            manifests_path: "production/acme_cart".into(),
            actor: "baton-promoter",
        }
        .data();
        history.push((promotion::event(&data, &format!("modified-{promotions}"))?, at));
        if let Some((reported, failure)) = reported {
            history.push((deployment::report(&data, failure)?, reported));
        }
        Ok(())
    };
    let mut pushes = Vec::new();
    for (release, at, commit) in [
        ("r1", t(0, 9, 0), t(0, 8, 0)),
        ("r2", t(2, 9, 0), t(2, 7, 0)),
        ("r3", t(6, 9, 0), t(6, 8, 0)),
    ] {
        let sha = format!("{:0>40}", &release[1..]);
        let mut outgoing = push::Push {
            app: "acme/cart",
            clone_url: "file:///cart",
            commit: &sha,
            delivery: release,
        }
        .event()?;
        let mut data: PushData = outgoing.event.custom_data_as()?;
        data.head_commit.timestamp = Some(commit.to_rfc3339());
        data.commits = vec![data.head_commit.clone()];
        outgoing.event = outgoing.event.with_custom_data(data)?;
        pushes.push((outgoing, at));
    }
    let mut pushes = pushes.into_iter();
    let mut next_push = || pushes.next().context("a push");
    let first = next_push()?;
    let second = next_push()?;
    let third = next_push()?;
    promotion("r1", Promote, t(0, 10, 0), Some((t(0, 11, 0), None)))?;
    promotion(
        "r2",
        Promote,
        t(2, 10, 0),
        Some((t(2, 10, 30), Some("CrashLoopBackOff"))),
    )?;
    promotion("r1", Rollback, t(2, 10, 40), Some((t(2, 10, 50), None)))?;
    promotion("r3", Promote, t(6, 10, 0), Some((t(6, 13, 0), None)))?;
    // In time order: each push before its promotions.
    let mut ordered = vec![first];
    ordered.extend(history.drain(..2));
    ordered.push(second);
    ordered.extend(history.drain(..4));
    ordered.push(third);
    ordered.append(&mut history);
    let mut published = Vec::new();
    for (mut outgoing, at) in ordered {
        outgoing.event.context.timestamp = at;
        events::publish(js, &outgoing).await?;
        published.push(outgoing.event);
    }
    Ok(published)
}

#[tokio::test]
async fn dora_figures_of_a_published_history_are_the_ledgers_and_the_hand_computed() -> Result<()> {
    use baton_kit::dora::{DoraBucket, DoraLedger, DoraReport};

    baton_kit::tls::install_crypto_provider();
    let nats = NatsServer::start()?;
    let common = app::common(&nats.url());
    let topology = nats.provision(&common).await?;
    let history = dora_history(&topology.jetstream).await?;
    let stop = CancellationToken::new();
    let web = app::spawn::<baton_web::Application>(common, WebSettings::default(), &|_| None, &stop).await?;
    let base = format!("http://{}", web.addr);
    let http = reqwest::Client::new();
    ready(&http, &base).await?;

    let until = "2024-03-11T00:00:00Z";
    let query = format!("app=acme%2Fcart&environment=production&window=10d&until={until}&bucket=5d");
    let report: DoraReport = serde_json::from_value(json_of(&http, &base, &format!("/api/dora?{query}")).await?)?;

    // The same events through a ledger of our own: the same report.
    let mut ledger = DoraLedger::new();
    for event in &history {
        ledger.observe(event);
    }
    let to = until.parse::<chrono::DateTime<chrono::Utc>>()?;
    let from = to - chrono::TimeDelta::days(10);
    assert_eq!(
        report,
        ledger.report("acme/cart", "production", from, to, chrono::TimeDelta::days(5))
    );
    // And the values computed by hand (see `dora_history`).
    assert_eq!((report.from, report.to), (from, to));
    assert_eq!(report.deployments, 2);
    assert!((report.deployments_per_day - 0.2).abs() < 1e-9, "{report:?}");
    assert_eq!(report.lead_time_seconds, Some(4.0 * 3600.0));
    assert_eq!((report.failed_changes, report.changes), (1, 3));
    assert_eq!(report.change_failure_rate, Some(1.0 / 3.0));
    assert_eq!((report.restores, report.time_to_restore_seconds), (1, Some(1200.0)));
    let middle = from + chrono::TimeDelta::days(5);
    let bucket = |start, end, deployments, lead: f64, rate, restore| DoraBucket {
        start,
        end,
        deployments,
        lead_time_seconds: Some(lead * 3600.0),
        change_failure_rate: Some(rate),
        time_to_restore_seconds: restore,
    };
    assert_eq!(
        report.series,
        [
            bucket(from, middle, 1, 3.0, 0.5, Some(1200.0)),
            bucket(middle, to, 1, 5.0, 0.0, None)
        ]
    );
    // Without an environment: a list, one report per environment; the token names the app too.
    let all = json_of(
        &http,
        &base,
        &format!("/api/dora?app=acme_cart&window=10d&until={until}"),
    )
    .await?;
    assert_eq!(all.as_array().map(Vec::len), Some(1), "{all}");
    assert_eq!(all[0]["changeFailureRate"], json!(1.0 / 3.0));

    // The page: each figure's number in its unit, a chart each, the links to the other windows.
    let page = get(&http, &base, &format!("/dora?{query}")).await?;
    assert_eq!(page.status(), 200);
    let html = page.text().await?;
    for (metric, value) in [
        ("deployment-frequency", report.deployments_per_day.to_string()),
        ("lead-time", "14400".to_owned()),
        ("change-failure-rate", (1.0_f64 / 3.0).to_string()),
        ("time-to-restore", "1200".to_owned()),
    ] {
        assert!(
            html.contains(&format!("data-metric=\"{metric}\" data-value=\"{value}\"")),
            "{metric} = {value} in {html}"
        );
    }
    assert_eq!(html.matches("<svg class=\"chart\"").count(), 4, "{html}");
    assert!(html.contains("2 buckets of 5d from Mar 1 to Mar 11"), "{html}");
    assert!(!html.contains(" style="), "no inline style");
    let overview = get(&http, &base, "/dora").await?.text().await?;
    assert!(
        overview.contains("<tr data-app=\"acme/cart\" data-environment=\"production\">"),
        "{overview}"
    );
    let matrix = get(&http, &base, "/").await?.text().await?;
    assert!(
        matrix.contains("href=\"/dora?app=acme%2Fcart\""),
        "the matrix links to DORA: {matrix}"
    );

    // Bad parameters are 400s naming them; apps and environments without figures are 404s.
    for (path, parameter) in [
        ("/api/dora?window=soon", "window"),
        ("/api/dora?window=30d&bucket=1m", "bucket"),
        ("/api/dora?until=later", "until"),
        ("/api/dora?apps=acme", "apps"),
    ] {
        let response = get(&http, &base, path).await?;
        assert_eq!(response.status(), 400, "{path}");
        let body: Value = response.json().await?;
        assert_eq!(body["parameter"], parameter, "{path}: {body}");
    }
    let page = get(&http, &base, "/dora?window=0s").await?;
    assert_eq!(page.status(), 400);
    assert!(page.text().await?.contains("`window`"));
    let missing = get(&http, &base, "/api/dora?app=acme/none").await?;
    assert_eq!(missing.status(), 404);
    assert!(
        missing.text().await?.contains("acme/cart"),
        "names the apps with figures"
    );
    assert_eq!(
        get(&http, &base, "/dora?app=acme/cart&environment=qa").await?.status(),
        404
    );

    // The failures are counted by reason.
    let metrics = get(&http, &base, "/metrics").await?.text().await?;
    for line in [
        "baton_web_failed_requests_total{reason=\"bad_parameter\"} 5",
        "baton_web_failed_requests_total{reason=\"not_found\"} 2",
    ] {
        assert!(metrics.contains(line), "`{line}` in:\n{metrics}");
    }

    stop.cancel();
    web.task.await??;
    Ok(())
}

/// Live streams hold a connection each for as long as the client likes: past
/// [`MAX_LIVE_STREAMS`] one more is a 503 with the security headers, not another held open, and
/// a stream's slot is given back when its client goes away.
#[tokio::test]
async fn live_streams_are_bounded_and_give_their_slot_back() -> Result<()> {
    use baton_web::shared::MAX_LIVE_STREAMS;

    baton_kit::tls::install_crypto_provider();
    let nats = NatsServer::start()?;
    let common = app::common(&nats.url());
    nats.provision(&common).await?;
    let stop = CancellationToken::new();
    let web = app::spawn::<baton_web::Application>(common, WebSettings::default(), &|_| None, &stop).await?;
    let base = format!("http://{}", web.addr);
    let http = reqwest::Client::new();
    ready(&http, &base).await?;

    let mut open = Vec::with_capacity(MAX_LIVE_STREAMS);
    for _ in 0..MAX_LIVE_STREAMS {
        let live = get(&http, &base, "/events/live").await?;
        assert_eq!(live.status(), 200);
        open.push(live);
    }
    let refused = get(&http, &base, "/events/live?app=acme/shop").await?;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("content-security-policy"));
    let body: Value = refused.json().await?;
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("live streams are open"),
        "{body}"
    );

    drop(open.pop());
    let start = Instant::now();
    loop {
        let live = get(&http, &base, "/events/live").await?;
        if live.status() == 200 {
            break;
        }
        if start.elapsed() > Duration::from_secs(20) {
            bail!("a closed stream's slot was not given back: {}", live.status());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    drop(open);
    stop.cancel();
    web.task.await??;
    Ok(())
}
