//! DORA's four key metrics in the web: `GET /dora` and `GET /api/dora`, answered from the
//! [`DoraLedger`] that the view's consumer feeds event by event
//! (docs/dora.md has the formulas; `baton dora` prints the same figures). With `app` and
//! `environment` the page shows the four figures of that pair over the window, each with its
//! number in `data-value` and a chart of the series; without them, a table of every pair seen.
//! The parameters: `window` (how far back, default 30 days), `until` (the window's end, default
//! now), `bucket` (the charts' bucket, default the roundest that gives at most
//! [`DEFAULT_BUCKETS`]).

use std::sync::Arc;

use askama::Template;
use axum::Json;
use axum::extract::{RawQuery, State};
use axum::response::{Html, IntoResponse, Response};
use baton_kit::dora::{DoraLedger, DoraReport};
use chrono::{DateTime, TimeDelta, Utc};

use crate::chart::{self, Point, Unit};
use crate::http::{ApiError, PageError, Params, WebError};
use crate::pages::stamp;
use crate::query;
use crate::shared::Shared;

/// The parameters of `/dora` and `/api/dora`.
pub const DORA_PARAMS: &[&str] = &["app", "environment", "window", "until", "bucket"];

/// The window when `window` is not given.
pub const DEFAULT_WINDOW: &str = "30d";
/// The longest window: a little over a year.
pub const MAX_WINDOW_DAYS: i64 = 400;
/// The most buckets a chart shows when `bucket` is not given.
pub const DEFAULT_BUCKETS: i64 = 60;
/// The most buckets a chart may have.
pub const MAX_BUCKETS: i64 = 200;

/// What a DORA request asks for, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct DoraQuery {
    /// The app (its name or token), when one.
    pub app: Option<String>,
    /// The environment, when one.
    pub environment: Option<String>,
    /// The window as asked for, for links.
    pub window: String,
    /// Start of the window (included).
    pub from: DateTime<Utc>,
    /// End of the window (excluded).
    pub to: DateTime<Utc>,
    /// The series' bucket.
    pub bucket: TimeDelta,
}

/// Reads the parameters, times read at `now`.
///
/// # Errors
/// [`WebError::BadParameter`] naming the first bad one and what it accepts.
pub fn dora_query(params: &Params, now: DateTime<Utc>) -> Result<DoraQuery, WebError> {
    let window_text = params.get("window").unwrap_or(DEFAULT_WINDOW);
    let longest = TimeDelta::days(MAX_WINDOW_DAYS);
    let window = span(window_text)
        .filter(|w| *w > TimeDelta::zero() && *w <= longest)
        .ok_or_else(|| {
            WebError::bad(
                "window",
                format!("`{window_text}` is not a duration from 1s to {MAX_WINDOW_DAYS}days (30d, 7d, 12h)"),
            )
        })?;
    let to = match params.get("until") {
        Some(v) => query::instant("until", v, now)?,
        None => now,
    };
    let from = to - window;
    let bucket = match params.get("bucket") {
        None => default_bucket(window),
        Some(v) => {
            let bucket = span(v).filter(|b| *b > TimeDelta::zero()).ok_or_else(|| {
                WebError::bad(
                    "bucket",
                    format!("`{v}` is not a duration longer than zero (1d, 6h, 1h)"),
                )
            })?;
            if buckets_in(window, bucket) > MAX_BUCKETS {
                return Err(WebError::bad(
                    "bucket",
                    format!(
                        "`{v}` cuts the window of {} into more than {MAX_BUCKETS} buckets; use a bucket of at least {}",
                        chart::duration(seconds(window)),
                        chart::duration((seconds(window) / MAX_BUCKETS as f64).ceil())
                    ),
                ));
            }
            bucket.min(window)
        }
    };
    Ok(DoraQuery {
        app: params.get("app").map(str::to_owned),
        environment: params.get("environment").map(str::to_owned),
        window: window_text.to_owned(),
        from,
        to,
        bucket,
    })
}

/// A duration parameter (`30d`, `12h`, `90m`).
fn span(value: &str) -> Option<TimeDelta> {
    humantime::parse_duration(value)
        .ok()
        .and_then(|d| TimeDelta::from_std(d).ok())
}

/// How many buckets of `bucket` cover `window`.
fn buckets_in(window: TimeDelta, bucket: TimeDelta) -> i64 {
    let (w, b) = (window.num_milliseconds(), bucket.num_milliseconds().max(1));
    w / b + i64::from(w % b != 0)
}

/// The roundest bucket (a minute, 5, 15 minutes, an hour, 6 hours, a day, a week, 30 days)
/// that cuts `window` into at most [`DEFAULT_BUCKETS`].
pub fn default_bucket(window: TimeDelta) -> TimeDelta {
    [
        TimeDelta::minutes(1),
        TimeDelta::minutes(5),
        TimeDelta::minutes(15),
        TimeDelta::hours(1),
        TimeDelta::hours(6),
        TimeDelta::days(1),
        TimeDelta::weeks(1),
        TimeDelta::days(30),
    ]
    .into_iter()
    .find(|b| buckets_in(window, *b) <= DEFAULT_BUCKETS)
    .unwrap_or(TimeDelta::days(30))
    .min(window)
}

fn seconds(delta: TimeDelta) -> f64 {
    #[allow(clippy::cast_precision_loss, reason = "windows are far below 2^52 ms")]
    let ms = delta.num_milliseconds() as f64;
    ms / 1000.0
}

/// The (app, environment) pairs the query names: one when it names both, else every pair seen
/// that matches what it names.
///
/// # Errors
/// [`WebError::NotFound`] for an app or environment the ledger never saw, listing what it saw.
pub fn scopes(ledger: &DoraLedger, query: &DoraQuery) -> Result<Vec<(String, String)>, WebError> {
    let all = ledger.scopes();
    let app = match &query.app {
        None => None,
        Some(asked) => {
            let known = |name: &str| all.iter().any(|(a, _)| a == name);
            let found = if known(asked) {
                Some(asked.clone())
            } else {
                all.iter()
                    .map(|(a, _)| a)
                    .find(|a| baton_schemas::subjects::sanitize_token(a) == *asked)
                    .cloned()
            };
            let Some(found) = found else {
                let mut apps: Vec<&str> = all.iter().map(|(a, _)| a.as_str()).collect();
                apps.dedup();
                return Err(WebError::NotFound(format!(
                    "no DORA figures for app `{asked}`: it was never deployed to an environment{}",
                    listing("apps with figures", &apps)
                )));
            };
            Some(found)
        }
    };
    let pairs: Vec<(String, String)> = all
        .into_iter()
        .filter(|(a, _)| app.as_ref().is_none_or(|app| a == app))
        .collect();
    if let Some(environment) = &query.environment
        && !pairs.iter().any(|(_, e)| e == environment)
    {
        let mut environments: Vec<&str> = pairs.iter().map(|(_, e)| e.as_str()).collect();
        environments.sort_unstable();
        environments.dedup();
        let whose = app.as_deref().map_or_else(String::new, |a| format!(" of `{a}`"));
        return Err(WebError::NotFound(format!(
            "no DORA figures{whose} in environment `{environment}`{}",
            listing("environments with figures", &environments)
        )));
    }
    Ok(pairs
        .into_iter()
        .filter(|(_, e)| query.environment.as_ref().is_none_or(|env| e == env))
        .collect())
}

/// `; <what>: a, b, c` (the first 20), or nothing.
fn listing(what: &str, names: &[&str]) -> String {
    if names.is_empty() {
        return String::new();
    }
    let more = if names.len() > 20 { ", …" } else { "" };
    format!("; {what}: {}{more}", names[..names.len().min(20)].join(", "))
}

/// The reports the query asks for.
///
/// # Errors
/// [`scopes`]'s.
pub fn reports(shared: &Shared, query: &DoraQuery) -> Result<Vec<DoraReport>, WebError> {
    let ledger = shared.dora();
    let pairs = scopes(&ledger, query)?;
    Ok(pairs
        .iter()
        .map(|(app, env)| ledger.report(app, env, query.from, query.to, query.bucket))
        .collect())
}

/// `GET /api/dora?app=&environment=&window=&until=&bucket=`: with `app` and `environment`,
/// their [`DoraReport`]; otherwise a list of reports, one per (app, environment) matching.
///
/// # Errors
/// 400 naming a bad parameter, 404 for an app or environment without figures.
pub async fn api(State(shared): State<Arc<Shared>>, RawQuery(raw): RawQuery) -> Result<Response, ApiError> {
    let params = Params::parse(raw.as_deref(), DORA_PARAMS)?;
    let query = dora_query(&params, Utc::now())?;
    let mut reports = reports(&shared, &query)?;
    if query.app.is_some() && query.environment.is_some() && reports.len() == 1 {
        return Ok(Json(reports.remove(0)).into_response());
    }
    Ok(Json(reports).into_response())
}

/// One of the four figures, as the page shows it.
#[derive(Debug)]
pub struct Figure {
    /// `deployment-frequency`, `lead-time`, `change-failure-rate`, `time-to-restore`.
    pub metric: &'static str,
    /// Its name.
    pub name: &'static str,
    /// The number in the API's unit (per day, seconds, ratio); empty for no data.
    pub value: String,
    /// The number for people, or `no data`.
    pub shown: String,
    /// What it was computed from.
    pub detail: String,
    /// What it means.
    pub formula: &'static str,
    /// The series as an SVG chart (made and escaped by [`chart`]).
    pub chart: String,
}

/// The four figures of `report`.
pub fn figures(report: &DoraReport, bucket: TimeDelta) -> [Figure; 4] {
    let per = chart::duration(seconds(bucket));
    let points = |value: &dyn Fn(&baton_kit::dora::DoraBucket) -> Option<f64>| -> Vec<Point> {
        report
            .series
            .iter()
            .map(|b| Point {
                start: b.start,
                end: b.end,
                value: value(b),
            })
            .collect()
    };
    let number = |v: Option<f64>| v.map_or_else(String::new, |v| v.to_string());
    let window = chart::duration(seconds(report.to - report.from));
    #[allow(clippy::cast_precision_loss, reason = "deployment counts are small")]
    let deployments = points(&|b| Some(b.deployments as f64));
    [
        Figure {
            metric: "deployment-frequency",
            name: "Deployment frequency",
            value: report.deployments_per_day.to_string(),
            shown: format!("{:.2} a day", report.deployments_per_day),
            detail: format!(
                "{} {} in {window}",
                report.deployments,
                plural(report.deployments, "deployment")
            ),
            formula: "A release's first healthy deployment or upgrade in the environment, per day; rollbacks are restores, not deployments.",
            chart: chart::bars(&format!("Deployments per {per}"), Unit::Count, &deployments),
        },
        Figure {
            metric: "lead-time",
            name: "Lead time for changes",
            value: number(report.lead_time_seconds),
            shown: report.lead_time_seconds.map_or_else(no_data, chart::duration),
            detail: "median, from a change's first commit to its deployment".to_owned(),
            formula: "From the earliest commit of the push that made the release to its first healthy event in the environment; the median of the window's deployments.",
            chart: chart::bars(
                &format!("Median lead time per {per}"),
                Unit::Seconds,
                &points(&|b| b.lead_time_seconds),
            ),
        },
        Figure {
            metric: "change-failure-rate",
            name: "Change failure rate",
            value: number(report.change_failure_rate),
            shown: report
                .change_failure_rate
                .map_or_else(no_data, |r| format!("{:.0}%", r * 100.0)),
            detail: format!(
                "{} of {} {} failed",
                report.failed_changes,
                report.changes,
                plural(report.changes, "change")
            ),
            formula: "Of the releases whose rollout in the environment settled in the window, the share that failed there, was rolled back from it or was quarantined while there.",
            chart: chart::bars(
                &format!("Change failure rate per {per}"),
                Unit::Ratio,
                &points(&|b| b.change_failure_rate),
            ),
        },
        Figure {
            metric: "time-to-restore",
            name: "Time to restore",
            value: number(report.time_to_restore_seconds),
            shown: report.time_to_restore_seconds.map_or_else(no_data, chart::duration),
            detail: format!("median of {} {}", report.restores, plural(report.restores, "restore")),
            formula: "From a failure in the environment (a failed rollout, a rollback from a release, a quarantine) to its next healthy event; the median of the window's restores.",
            chart: chart::bars(
                &format!("Median time to restore per {per}"),
                Unit::Seconds,
                &points(&|b| b.time_to_restore_seconds),
            ),
        },
    ]
}

fn no_data() -> String {
    "no data".to_owned()
}

fn plural(n: u64, word: &str) -> String {
    if n == 1 { word.to_owned() } else { format!("{word}s") }
}

/// A link to another DORA page.
#[derive(Debug)]
pub struct Link {
    /// What it reads.
    pub text: String,
    /// `/dora?…`.
    pub href: String,
    /// Whether it is the page shown.
    pub current: bool,
}

/// `/dora?app=&environment=&window=`, the parameters given.
pub fn url(app: Option<&str>, environment: Option<&str>, window: &str) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    if let Some(app) = app {
        query.append_pair("app", app);
    }
    if let Some(environment) = environment {
        query.append_pair("environment", environment);
    }
    query.append_pair("window", window);
    format!("/dora?{}", query.finish())
}

/// A row of the overview: one (app, environment).
#[derive(Debug)]
pub struct OverviewRow {
    /// The app.
    pub app: String,
    /// The environment.
    pub environment: String,
    /// Its page.
    pub href: String,
    /// Its figures (charts unused).
    pub figures: [Figure; 4],
}

/// The DORA page: one app and environment's figures, or the overview of every pair.
#[derive(Debug, Template)]
#[template(path = "dora.html")]
pub struct DoraPage {
    title: String,
    /// The window, as people read it, and its ends.
    window: String,
    from: String,
    to: String,
    bucket: String,
    /// The figures, when one app and environment is shown.
    figures: Option<[Figure; 4]>,
    /// The app and environment shown.
    scope: Option<(String, String)>,
    /// The overview's rows, otherwise.
    overview: Vec<OverviewRow>,
    /// The same page over other windows.
    windows: Vec<Link>,
    /// The app's other environments.
    environments: Vec<Link>,
}

/// `GET /dora?app=&environment=&window=&until=&bucket=`.
///
/// # Errors
/// 400 naming a bad parameter, 404 for an app or environment without figures.
pub async fn page(State(shared): State<Arc<Shared>>, RawQuery(raw): RawQuery) -> Result<Html<String>, PageError> {
    let params = Params::parse(raw.as_deref(), DORA_PARAMS)?;
    let query = dora_query(&params, Utc::now())?;
    let single = query.app.is_some() && query.environment.is_some();
    let (all, reports) = {
        let ledger = shared.dora();
        // The overview shows each pair's figures over the whole window: one bucket is enough.
        let bucket = if single { query.bucket } else { query.to - query.from };
        let reports: Vec<DoraReport> = scopes(&ledger, &query)?
            .iter()
            .map(|(app, env)| ledger.report(app, env, query.from, query.to, bucket))
            .collect();
        (ledger.scopes(), reports)
    };
    let scope = single
        .then(|| reports.first().map(|r| (r.app.clone(), r.environment.clone())))
        .flatten();
    let app = scope.as_ref().map(|(a, _)| a.as_str());
    let environment = scope.as_ref().map(|(_, e)| e.as_str());
    let windows = ["7d", "30d", "90d", "365d"]
        .into_iter()
        .map(|w| Link {
            text: w.to_owned(),
            href: url(
                app.or(query.app.as_deref()),
                environment.or(query.environment.as_deref()),
                w,
            ),
            current: w == query.window,
        })
        .collect();
    let environments = match &scope {
        Some((app, current)) => all
            .iter()
            .filter(|(a, _)| a == app)
            .map(|(_, e)| Link {
                text: e.clone(),
                href: url(Some(app), Some(e), &query.window),
                current: e == current,
            })
            .collect(),
        None => Vec::new(),
    };
    let title = match &scope {
        Some((app, environment)) => format!("DORA metrics of {app} in {environment}"),
        None => "DORA metrics".to_owned(),
    };
    let (figures, overview) = if single {
        (reports.first().map(|r| figures(r, query.bucket)), Vec::new())
    } else {
        let rows = reports
            .iter()
            .map(|r| OverviewRow {
                href: url(Some(&r.app), Some(&r.environment), &query.window),
                app: r.app.clone(),
                environment: r.environment.clone(),
                figures: figures(r, query.to - query.from),
            })
            .collect();
        (None, rows)
    };
    let page = DoraPage {
        title,
        window: chart::duration(seconds(query.to - query.from)),
        from: stamp(&query.from),
        to: stamp(&query.to),
        bucket: chart::duration(seconds(query.bucket)),
        figures,
        scope,
        overview,
        windows,
        environments,
    };
    Ok(Html(page.render()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        "2024-05-31T12:00:00Z".parse().unwrap()
    }

    fn query(q: &str) -> Result<DoraQuery, WebError> {
        dora_query(&Params::parse(Some(q), DORA_PARAMS)?, now())
    }

    #[test]
    fn the_window_and_bucket_default_and_are_checked_by_name() {
        let q = query("app=acme%2Fshop&environment=production").unwrap();
        assert_eq!(
            (q.app.as_deref(), q.environment.as_deref()),
            (Some("acme/shop"), Some("production"))
        );
        assert_eq!((q.to - q.from, q.bucket), (TimeDelta::days(30), TimeDelta::days(1)));
        let q = query("window=12h&until=2024-05-01T00:00:00Z").unwrap();
        assert_eq!(q.to.to_rfc3339(), "2024-05-01T00:00:00+00:00");
        assert_eq!(
            (q.to - q.from, q.bucket),
            (TimeDelta::hours(12), TimeDelta::minutes(15))
        );
        assert_eq!(query("window=365d").unwrap().bucket, TimeDelta::weeks(1));
        assert_eq!(query("window=10d&bucket=5d").unwrap().bucket, TimeDelta::days(5));
        for (q, name) in [
            ("window=soon", "window"),
            ("window=0s", "window"),
            ("window=1000days", "window"),
            ("bucket=0s", "bucket"),
            ("window=30d&bucket=1m", "bucket"),
            ("until=later", "until"),
            ("colour=red", "colour"),
        ] {
            let e = query(q).unwrap_err();
            assert!(
                matches!(&e, WebError::BadParameter { name: n, .. } if n == name),
                "{q}: {e}"
            );
            assert_eq!(e.status(), axum::http::StatusCode::BAD_REQUEST);
        }
        let e = query("window=30d&bucket=1m").unwrap_err();
        assert!(e.to_string().contains("at least 3h 36m"), "{e}");
    }

    fn deployed(app: &str, environment: &str, release: &str, at: &str) -> baton_schemas::CdEvent {
        baton_schemas::CdEvent::new(
            baton_schemas::EventType::ServiceDeployed,
            format!("{release}-{environment}"),
            "/baton/deployer",
            app,
            serde_json::json!({}),
        )
        .unwrap()
        .with_chain_id(release)
        .with_custom_data(serde_json::json!({
            "app": app, "environment": environment, "release": release, "promotion": "p",
            "action": "promote", "namespace": environment,
        }))
        .unwrap()
        .at(at)
    }

    trait At {
        fn at(self, t: &str) -> Self;
    }

    impl At for baton_schemas::CdEvent {
        fn at(mut self, t: &str) -> Self {
            self.context.timestamp = t.parse().unwrap();
            self
        }
    }

    #[test]
    fn scopes_are_found_by_name_or_token_and_unknown_ones_are_named() {
        let mut ledger = DoraLedger::new();
        ledger.observe(&deployed("acme/shop", "staging", "r1", "2024-05-30T10:00:00Z"));
        ledger.observe(&deployed("acme/shop", "production", "r1", "2024-05-30T11:00:00Z"));
        ledger.observe(&deployed("acme/cart", "staging", "r2", "2024-05-30T12:00:00Z"));
        assert_eq!(
            ledger.scopes().len(),
            3,
            "the fixture's events are read: {:?}",
            ledger.scopes()
        );
        let pairs = |q: &str| scopes(&ledger, &query(q).unwrap());
        assert_eq!(pairs("").unwrap().len(), 3);
        assert_eq!(
            pairs("app=acme_shop").unwrap(),
            [
                ("acme/shop".to_owned(), "production".to_owned()),
                ("acme/shop".to_owned(), "staging".to_owned())
            ]
        );
        assert_eq!(pairs("environment=staging").unwrap().len(), 2);
        let e = pairs("app=acme/none").unwrap_err();
        assert!(e.to_string().contains("acme/cart, acme/shop"), "{e}");
        assert_eq!(e.status(), axum::http::StatusCode::NOT_FOUND);
        let e = pairs("app=acme/cart&environment=production").unwrap_err();
        assert!(e.to_string().contains("environments with figures: staging"), "{e}");
    }

    #[test]
    fn the_figures_carry_the_reports_numbers_and_no_data_is_empty() {
        let mut ledger = DoraLedger::new();
        ledger.observe(&deployed("acme/shop", "production", "r1", "2024-05-30T11:00:00Z"));
        let q = query("app=acme/shop&environment=production&window=10d&bucket=5d").unwrap();
        let report = ledger.report("acme/shop", "production", q.from, q.to, q.bucket);
        let [frequency, lead, failure, restore] = figures(&report, q.bucket);
        assert_eq!(frequency.value, "0.1");
        assert_eq!(frequency.detail, "1 deployment in 10d");
        assert_eq!((lead.value.as_str(), lead.shown.as_str()), ("", "no data"));
        assert_eq!(failure.value, "0");
        assert_eq!(failure.shown, "0%");
        assert_eq!(restore.value, "");
        for figure in [&frequency, &lead, &failure, &restore] {
            assert!(
                figure.chart.starts_with("<svg") && figure.chart.contains("2 buckets of 5d"),
                "{}",
                figure.chart
            );
        }
    }

    #[test]
    fn the_page_shows_one_pair_with_charts_or_all_pairs() {
        let mut ledger = DoraLedger::new();
        ledger.observe(&deployed(
            "acme/<b>shop</b>",
            "production",
            "r1",
            "2024-05-30T11:00:00Z",
        ));
        let report = ledger.report(
            "acme/<b>shop</b>",
            "production",
            now() - TimeDelta::days(30),
            now(),
            TimeDelta::days(1),
        );
        let page = DoraPage {
            title: "DORA metrics of acme/<b>shop</b> in production".to_owned(),
            window: "30d".to_owned(),
            from: stamp(&report.from),
            to: stamp(&report.to),
            bucket: "1d".to_owned(),
            figures: Some(figures(&report, TimeDelta::days(1))),
            scope: Some((report.app.clone(), report.environment.clone())),
            overview: Vec::new(),
            windows: Vec::new(),
            environments: Vec::new(),
        };
        let html = page.render().unwrap();
        assert!(!html.contains("<b>"), "names are escaped: {html}");
        assert!(html.contains("id=\"dora\""), "{html}");
        for metric in [
            "deployment-frequency",
            "lead-time",
            "change-failure-rate",
            "time-to-restore",
        ] {
            assert_eq!(
                html.matches(&format!("data-metric=\"{metric}\"")).count(),
                1,
                "{metric}"
            );
        }
        assert!(
            html.contains(&format!(
                "data-metric=\"deployment-frequency\" data-value=\"{}\"",
                1.0 / 30.0
            )),
            "{html}"
        );
        assert!(html.contains("data-metric=\"lead-time\" data-value=\"\""), "{html}");
        assert_eq!(html.matches("<svg class=\"chart\"").count(), 4);
        assert!(!html.contains(" style="), "no inline style");

        let overview = DoraPage {
            title: "DORA metrics".to_owned(),
            figures: None,
            scope: None,
            overview: vec![OverviewRow {
                app: report.app.clone(),
                environment: report.environment.clone(),
                href: url(Some(&report.app), Some(&report.environment), "30d"),
                figures: figures(&report, report.to - report.from),
            }],
            ..page
        };
        let html = overview.render().unwrap();
        assert!(
            !html.contains("id=\"dora\"") && html.contains("id=\"dora-overview\""),
            "{html}"
        );
        assert!(
            html.contains("<tr data-app=\"acme/&#60;b&#62;shop&#60;/b&#62;\" data-environment=\"production\">"),
            "{html}"
        );
        assert!(
            html.contains("href=\"/dora?app=acme%2F%3Cb%3Eshop%3C%2Fb%3E&#38;environment=production&#38;window=30d\""),
            "{html}"
        );
        assert!(!html.contains("<svg"), "the overview has no charts: {html}");
    }
}
