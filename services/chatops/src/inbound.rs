//! `POST /slack/commands` and `POST /slack/interactions`.
//!
//! Order of checks: the body size (413), Slack's signature and the replay window over the raw
//! bytes (401), the form (400), the person the Slack user is in `people.yaml` (200 with an
//! ephemeral refusal saying how to get listed), the grammar (200 with the usage). Only then is
//! the intent forwarded to the promoter, signed by the bot, with that person as `actor` and the
//! Slack user id as `chatId`; the promoter's answer becomes the chat reply: `in_channel` when a
//! decision was accepted, `ephemeral` for refusals and errors. Nothing here answers 5xx: when
//! the promoter or the config repo does not answer, the user is told to try again. Nothing
//! reaches the promoter unless the request verified and the user is mapped.
//!
//! Slack waits 3 s for an answer. A promoter answer slower than `answer_within` is acknowledged
//! at once and posted to the request's `response_url` when it arrives; for button clicks (whose
//! HTTP answer Slack does not show) the outcome always goes to `response_url`.
//!
//! Replies are mrkdwn: what the user typed, Slack's user name, the promoter's answer and the
//! state read for `status` go in through [`crate::mrkdwn`]; only the mention of the person who
//! asked and the configured `contact` are written as they are.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use baton_kit::command::{CommandClient, CommandError};
use baton_schemas::commands::{CommandReply, CommandRequest, Verb};
use baton_schemas::subjects::sanitize_token;
use futures::StreamExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tracing::Instrument;

use crate::commands::{self, Intent, USAGE};
use crate::config::Chatops;
use crate::mrkdwn::{bold, code, escape, mention};
use crate::people::People;
use crate::signature::{self, SignatureError};

/// Everything the endpoints need.
#[derive(Debug, Clone)]
pub struct InboundState {
    /// The resolved settings.
    pub config: Arc<Chatops>,
    /// Commands go to the promoter through this client, signed with the bot's key (its
    /// timeout: `command_timeout`).
    pub commands: CommandClient,
    /// Who each Slack user is.
    pub people: Arc<People>,
    /// The `baton-state` bucket (`status` reads the promoter's current releases).
    pub state: kv::Store,
    /// Posts to `response_url`.
    pub http: reqwest::Client,
    /// Request counters.
    pub metrics: ChatMetrics,
}

/// Labels of the request counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChatLabels {
    /// `commands` or `interactions`.
    pub endpoint: &'static str,
    /// `answered` (HTTP 200, refusals in the reply included), `too_large`, `missing_header`,
    /// `stale`, `bad_signature`, `bad_request`.
    pub outcome: &'static str,
}

/// The bot's request metrics.
#[derive(Debug, Clone, Default)]
pub struct ChatMetrics {
    /// Chat requests by endpoint and outcome.
    pub requests: Family<ChatLabels, Counter>,
    /// Requests from Slack users `people.yaml` lists for nobody (answered with a refusal).
    pub unknown_users: Counter,
    /// Requests answered "try again" because `people.yaml` could not be read.
    pub people_unreadable: Counter,
}

impl ChatMetrics {
    /// Registers the counter in the service's registry.
    pub fn register(&self, metrics: &baton_kit::metrics::Metrics) {
        metrics.with_registry(|r| {
            r.register(
                "chat_requests",
                "Slack requests by endpoint and outcome",
                self.requests.clone(),
            );
            r.register(
                "chat_unknown_users",
                "Signed Slack requests refused because people.yaml lists the user for nobody",
                self.unknown_users.clone(),
            );
            r.register(
                "chat_people_unreadable",
                "Signed Slack requests answered with try again because people.yaml could not be read",
                self.people_unreadable.clone(),
            );
        });
    }

    fn count(&self, endpoint: &'static str, outcome: &'static str) {
        self.requests.get_or_create(&ChatLabels { endpoint, outcome }).inc();
    }
}

/// What was wrong with a request. Every message says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    /// The body is over the limit.
    #[error("the body is larger than {0} bytes (max_body_bytes); Slack's requests are far smaller")]
    TooLarge(usize),
    /// Not signed by Slack, or a replay.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// The form is not what Slack sends.
    #[error("{0}")]
    Malformed(String),
}

impl InboundError {
    fn status(&self) -> StatusCode {
        match self {
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Signature(_) => StatusCode::UNAUTHORIZED,
            Self::Malformed(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// Label for logs and metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::TooLarge(_) => "too_large",
            Self::Signature(e) => e.metric_label(),
            Self::Malformed(_) => "bad_request",
        }
    }
}

impl IntoResponse for InboundError {
    fn into_response(self) -> Response {
        (
            self.status(),
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            self.to_string(),
        )
            .into_response()
    }
}

/// Slack's message JSON for an answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlackReply {
    /// `in_channel` (everyone sees it) or `ephemeral` (only the requester).
    pub response_type: &'static str,
    /// The text (Slack mrkdwn).
    pub text: String,
    /// For posts to `response_url`: add a message instead of replacing the one with the buttons.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replace_original: Option<bool>,
}

impl SlackReply {
    /// Seen by everyone in the channel.
    pub fn in_channel(text: impl Into<String>) -> Self {
        Self {
            response_type: "in_channel",
            text: text.into(),
            replace_original: None,
        }
    }

    /// Seen by the requester only.
    pub fn ephemeral(text: impl Into<String>) -> Self {
        Self {
            response_type: "ephemeral",
            text: text.into(),
            replace_original: None,
        }
    }
}

/// Who sent a request, as Slack says.
#[derive(Debug, Clone)]
struct Sender {
    user_id: String,
    user_name: Option<String>,
}

/// The handler of `POST /slack/commands`.
pub async fn slash_command(State(state): State<InboundState>, headers: HeaderMap, body: Body) -> Response {
    match slash(&state, &headers, body).await {
        Ok(reply) => {
            state.metrics.count("commands", "answered");
            Json(reply).into_response()
        }
        Err(e) => {
            state.metrics.count("commands", e.metric_label());
            refused(e)
        }
    }
}

/// The handler of `POST /slack/interactions`.
pub async fn interaction(State(state): State<InboundState>, headers: HeaderMap, body: Body) -> Response {
    match interact(&state, &headers, body).await {
        Ok(reply) => {
            state.metrics.count("interactions", "answered");
            Json(reply).into_response()
        }
        Err(e) => {
            state.metrics.count("interactions", e.metric_label());
            refused(e)
        }
    }
}

fn refused(e: InboundError) -> Response {
    tracing::info!(outcome = e.metric_label(), error = %e, "chat request refused");
    e.into_response()
}

/// Reads the body within the limit and checks Slack's signature; returns the raw bytes.
async fn verified(state: &InboundState, headers: &HeaderMap, body: Body) -> Result<bytes::Bytes, InboundError> {
    let limit = state.config.max_body_bytes;
    let body = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| InboundError::TooLarge(limit))?;
    signature::verify(
        state.config.signing_secret.expose(),
        headers,
        &body,
        chrono::Utc::now().timestamp(),
        state.config.max_request_age,
    )?;
    Ok(body)
}

fn form(body: &[u8]) -> Result<Vec<(String, String)>, InboundError> {
    if std::str::from_utf8(body).is_err() {
        return Err(InboundError::Malformed(
            "the body is not UTF-8: send an application/x-www-form-urlencoded form, as Slack does".into(),
        ));
    }
    Ok(form_urlencoded::parse(body).into_owned().collect())
}

fn field<'f>(fields: &'f [(String, String)], name: &str) -> Option<&'f str> {
    fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// A request id derived from the signed request: a redelivery of the same request (same
/// timestamp and body) gets the same id, so the promoter does not do it twice.
fn request_id(headers: &HeaderMap, body: &[u8]) -> String {
    let timestamp = headers
        .get(signature::TIMESTAMP_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let digest = hex::encode(Sha256::digest(body));
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        format!("baton:slack:{timestamp}:{digest}").as_bytes(),
    )
    .to_string()
}

async fn slash(state: &InboundState, headers: &HeaderMap, body: Body) -> Result<SlackReply, InboundError> {
    let body = verified(state, headers, body).await?;
    let fields = form(&body)?;
    let user_id = field(&fields, "user_id").filter(|u| !u.trim().is_empty()).ok_or_else(|| {
        InboundError::Malformed(
            "the form has no `user_id`: send the slash-command form Slack sends (command, text, user_id, response_url, …)"
                .into(),
        )
    })?;
    let sender = Sender {
        user_id: user_id.to_owned(),
        user_name: field(&fields, "user_name").map(str::to_owned),
    };
    let text = field(&fields, "text").unwrap_or_default();
    let response_url = field(&fields, "response_url").map(str::to_owned);
    let actor = match person(state, &sender).await {
        Ok(actor) => actor,
        Err(reply) => return Ok(reply),
    };
    let intent = match commands::parse(text) {
        Ok(intent) => intent,
        Err(e) => return Ok(SlackReply::ephemeral(e.to_string())),
    };
    let id = request_id(headers, &body);
    Ok(act(state, intent, actor, &sender, id, response_url, false).await)
}

async fn interact(state: &InboundState, headers: &HeaderMap, body: Body) -> Result<SlackReply, InboundError> {
    let body = verified(state, headers, body).await?;
    let fields = form(&body)?;
    let payload = field(&fields, "payload").ok_or_else(|| {
        InboundError::Malformed("the form has no `payload`: Slack sends interactions as payload=<JSON>".into())
    })?;
    let payload: Value = serde_json::from_str(payload).map_err(|e| {
        InboundError::Malformed(format!(
            "`payload` is not JSON ({e}): Slack sends interactions as payload=<JSON>"
        ))
    })?;
    let kind = payload["type"].as_str().unwrap_or_default();
    if kind != "block_actions" {
        return Err(InboundError::Malformed(format!(
            "interaction type `{kind}` is not handled: Baton only answers `block_actions` (its Approve/Decline buttons)"
        )));
    }
    let user_id = payload["user"]["id"]
        .as_str()
        .filter(|u| !u.trim().is_empty())
        .ok_or_else(|| InboundError::Malformed("`payload.user.id` is missing: it says who clicked".into()))?;
    let sender = Sender {
        user_id: user_id.to_owned(),
        user_name: payload["user"]["username"]
            .as_str()
            .or_else(|| payload["user"]["name"].as_str())
            .map(str::to_owned),
    };
    let action = &payload["actions"][0];
    let (Some(action_id), Some(value)) = (action["action_id"].as_str(), action["value"].as_str()) else {
        return Err(InboundError::Malformed(
            "`payload.actions[0]` needs `action_id` and `value`: the button that was clicked".into(),
        ));
    };
    let response_url = payload["response_url"].as_str().map(str::to_owned);
    // Slack does not show the HTTP answer to a click: refusals go to `response_url` too.
    let actor = match person(state, &sender).await {
        Ok(actor) => actor,
        Err(reply) => return Ok(tell(state, response_url, reply)),
    };
    let intent = match commands::button(action_id, value) {
        Ok(intent) => intent,
        Err(e) => return Ok(tell(state, response_url, SlackReply::ephemeral(e.problem))),
    };
    let id = request_id(headers, &body);
    Ok(act(state, intent, actor, &sender, id, response_url, true).await)
}

/// Posts `reply` to `response_url` (when there is one) in the background, and returns it.
fn tell(state: &InboundState, response_url: Option<String>, reply: SlackReply) -> SlackReply {
    if let Some(url) = response_url {
        let mut posted = reply.clone();
        posted.replace_original = Some(false);
        let http = state.http.clone();
        let timeout = state.config.post_timeout;
        tokio::spawn(async move { post_response(&http, &url, &posted, timeout).await });
    }
    reply
}

/// The person `sender` is by `people.yaml`, or the reply refusing them.
async fn person(state: &InboundState, sender: &Sender) -> Result<String, SlackReply> {
    match state.people.person(&sender.user_id).await {
        Ok(Some(person)) => Ok(person),
        Ok(None) => {
            state.metrics.unknown_users.inc();
            Err(unknown_user(&state.config, sender))
        }
        Err(e) => {
            state.metrics.people_unreadable.inc();
            tracing::warn!(error = %e, reason = e.metric_label(), "cannot read people.yaml to find a Slack user");
            Err(SlackReply::ephemeral(
                "Baton cannot read people.yaml in the config repo to find who you are; try again",
            ))
        }
    }
}

fn unknown_user(config: &Chatops, sender: &Sender) -> SlackReply {
    let who = sender
        .user_name
        .as_deref()
        .map(|n| format!("{n} ({})", sender.user_id))
        .unwrap_or_else(|| sender.user_id.clone());
    tracing::info!(slack.user = %sender.user_id, "request from a Slack user people.yaml lists for nobody refused");
    // `contact` is the operator's own mrkdwn (it may link a channel): written as it is.
    SlackReply::ephemeral(format!(
        "Sorry, Baton does not know you yet: people.yaml in the config repo lists Slack user {} \
         for nobody, so Baton cannot act for you. Add your chat id under your name's `chat` there \
         ({}), or ask {} to.",
        escape(&who),
        code(&format!("people: {{<your name>: {{chat: [{}]}}}}", sender.user_id)),
        config.contact,
    ))
}

/// Carries out an intent for `actor`. A slow answer is acknowledged and goes to `response_url`;
/// with `always_post` (button clicks) it goes there in any case.
async fn act(
    state: &InboundState,
    intent: Intent,
    actor: String,
    sender: &Sender,
    request_id: String,
    response_url: Option<String>,
    always_post: bool,
) -> SlackReply {
    let (verb, mut request) = match intent {
        Intent::Help => return SlackReply::ephemeral(USAGE),
        Intent::Status { app } => return status(state, &app).await,
        Intent::Command { verb, request } => (verb, request),
    };
    request.actor = actor;
    // The promoter checks that people.yaml lists this Slack user for the actor.
    request.chat_id = Some(sender.user_id.clone());
    request.request_id = Some(request_id);
    tracing::info!(verb = %verb, actor = %request.actor, slack.user = %sender.user_id, "forwarding a chat command to the promoter");
    let mention = mention(&sender.user_id);
    let work = {
        let state = state.clone();
        // In the request's span: the command it sends is linked from the release's trace.
        tokio::spawn(async move { forward(&state, verb, request, &mention).await }.in_current_span())
    };
    let mut work = work;
    let finished = tokio::time::timeout(state.config.answer_within, &mut work).await;
    match (finished, response_url) {
        (Ok(done), url) => {
            let reply = done.unwrap_or_else(|_| unanswered());
            if always_post { tell(state, url, reply) } else { reply }
        }
        (Err(_), Some(url)) => {
            let http = state.http.clone();
            let timeout = state.config.post_timeout;
            tokio::spawn(async move {
                let mut reply = work.await.unwrap_or_else(|_| unanswered());
                reply.replace_original = Some(false);
                post_response(&http, &url, &reply, timeout).await;
            });
            SlackReply::ephemeral(format!(
                "Working on `{verb}`: Baton answers here once the promoter has decided."
            ))
        }
        (Err(_), None) => work.await.unwrap_or_else(|_| unanswered()),
    }
}

fn unanswered() -> SlackReply {
    SlackReply::ephemeral("Baton's promoter did not answer; try again")
}

/// Sends the command to the promoter and turns its reply into the chat answer.
async fn forward(state: &InboundState, verb: Verb, request: CommandRequest, mention: &str) -> SlackReply {
    let reply = match state.commands.send(verb, &request).await {
        Ok(reply) => reply,
        Err(e) => {
            tracing::warn!(verb = %verb, error = %e, "a chat command got no usable answer from the promoter");
            return SlackReply::ephemeral(match e {
                CommandError::NoPromoter => {
                    "Baton's promoter did not answer (no promoter is running); try again".into()
                }
                CommandError::Timeout(timeout) => format!(
                    "Baton's promoter did not answer within {}; try again",
                    humanize(timeout)
                ),
                CommandError::Request(_) => "Baton's promoter did not answer; try again".into(),
                CommandError::Reply(_) => "Baton's promoter answered something unexpected; try again".into(),
                CommandError::Sign(_) => {
                    "Baton could not sign the command; an operator should check the bot's signing key".into()
                }
            });
        }
    };
    answer(verb, &request, mention, &reply)
}

/// The chat answer to the promoter's `reply`: accepted decisions for the channel, refusals for
/// the requester.
fn answer(verb: Verb, request: &CommandRequest, mention: &str, reply: &CommandReply) -> SlackReply {
    let subject = match (&request.release, &request.app, &request.environment) {
        (Some(release), _, Some(env)) if request.app.is_none() => {
            format!("release {} into {}", code(release), code(env))
        }
        (Some(release), None, None) => format!("release {}", code(release)),
        (_, Some(app), Some(env)) => format!("{} in {}", code(app), code(env)),
        _ => String::new(),
    };
    // The promoter's answer repeats what was asked (release names, reasons): text, not mrkdwn.
    if reply.ok {
        tracing::info!(verb = %verb, actor = %request.actor, "chat command accepted");
        SlackReply::in_channel(format!(
            "{mention} ({}) {} {subject}: {}",
            escape(&request.actor),
            past_tense(verb),
            escape(&reply.message)
        ))
    } else {
        tracing::info!(verb = %verb, actor = %request.actor, reason = %reply.message, "chat command refused by the promoter");
        SlackReply::ephemeral(format!("Baton refused to {verb} {subject}: {}", escape(&reply.message)))
    }
}

fn past_tense(verb: Verb) -> &'static str {
    match verb {
        Verb::Approve => "approved",
        Verb::Decline => "declined",
        Verb::Promote => "promoted",
        Verb::Rollback => "rolled back",
        Verb::Pin => "pinned",
        Verb::Unpin => "unpinned",
        Verb::Sync => "synced",
        Verb::Restore => "restored",
        Verb::MarkBad => "marked bad",
        Verb::Unquarantine => "unquarantined",
        Verb::Whoami => "asked who they are",
    }
}

fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// `status <app>`: what the promoter's state says runs in each environment.
async fn status(state: &InboundState, app: &str) -> SlackReply {
    let prefix = format!("promoter.current.{}.", sanitize_token(app));
    let keys = match state.state.keys().await {
        Ok(keys) => keys,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the promoter's state");
            return SlackReply::ephemeral("Baton's state store did not answer; try again");
        }
    };
    let mut keys: Vec<String> = keys
        .filter_map(|k| async move { k.ok() })
        .filter(|k| std::future::ready(k.starts_with(&prefix)))
        .collect()
        .await;
    keys.sort();
    let mut lines = Vec::new();
    for key in keys {
        let env = key.trim_start_matches(&prefix);
        let value = match state.state.get(&key).await {
            Ok(Some(bytes)) => serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the promoter's state");
                return SlackReply::ephemeral("Baton's state store did not answer; try again");
            }
        };
        lines.push(describe_current(env, &value));
    }
    listing(app, &lines)
}

/// The answer to `status <app>`: one line per environment (from [`describe_current`]).
fn listing(app: &str, lines: &[String]) -> SlackReply {
    if lines.is_empty() {
        return SlackReply::ephemeral(format!(
            "No environment runs {}: check the name (as the git host names it, e.g. acme/shop), \
             or wait for its first release to pass its tests",
            code(app)
        ));
    }
    SlackReply::ephemeral(format!("{}\n{}", bold(app), lines.join("\n")))
}

fn describe_current(env: &str, current: &Value) -> String {
    let release = current["release"].as_str().unwrap_or("?");
    let health = match current["healthy_since"].as_str() {
        Some(since) => format!("healthy since {}", escape(since)),
        None => "not reported healthy yet".to_owned(),
    };
    let pin = match &current["pinned"] {
        Value::Object(pin) => format!(
            " — pinned by {}: {}",
            escape(pin.get("by").and_then(Value::as_str).unwrap_or("?")),
            escape(pin.get("reason").and_then(Value::as_str).unwrap_or(""))
        ),
        _ => String::new(),
    };
    format!("• {}: release {}, {health}{pin}", code(env), code(release))
}

async fn post_response(http: &reqwest::Client, url: &str, reply: &SlackReply, timeout: Duration) {
    // `response_url` accepts a few posts for 30 minutes; one retry covers a blip.
    for attempt in 1..=2 {
        match http.post(url).timeout(timeout).json(reply).send().await {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => tracing::warn!(status = %r.status(), attempt, "posting a chat answer to response_url failed"),
            Err(e) => tracing::warn!(error = %e.without_url(), attempt, "posting a chat answer to response_url failed"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_say_what_runs_and_the_pin() {
        let line = describe_current(
            "production",
            &serde_json::json!({"release": "r1", "healthy_since": "2025-01-01T00:00:00Z", "pinned": {"by": "bob", "reason": "incident"}}),
        );
        assert_eq!(
            line,
            "• `production`: release `r1`, healthy since 2025-01-01T00:00:00Z — pinned by bob: incident"
        );
        let line = describe_current(
            "staging",
            &serde_json::json!({"release": "r2", "healthy_since": null, "pinned": null}),
        );
        assert_eq!(line, "• `staging`: release `r2`, not reported healthy yet");
    }

    #[test]
    fn user_text_in_replies_cannot_ping_link_or_break_out() {
        use crate::mrkdwn::tests::{HOSTILE, assert_inert};
        let [here, channel, link, user, escaped] = HOSTILE;
        let own = mention("U0ALICE");
        for (release, app, environment) in [
            (Some(format!("r1`{here}`")), None, Some(channel.to_owned())),
            (Some(link.to_owned()), None, None),
            (None, Some(format!("*{user}*")), Some(escaped.to_owned())),
        ] {
            let request = CommandRequest {
                actor: here.into(),
                release,
                app,
                environment,
                ..CommandRequest::default()
            };
            for ok in [true, false] {
                let reply = CommandReply {
                    ok,
                    message: format!("unknown release `{link}`: {channel}"),
                    config_commit: None,
                    approval: None,
                    release: None,
                };
                let text = answer(Verb::Approve, &request, &own, &reply).text;
                assert!(
                    !ok || text.starts_with("<@U0ALICE> (&lt;!here&gt;) approved "),
                    "{text}"
                );
                assert!(
                    text.ends_with(": unknown release `&lt;https://evil|view diff&gt;`: &lt;!channel&gt;"),
                    "{text}"
                );
                assert_inert(&text, &[&own]);
            }
        }

        let config = Chatops {
            signing_secret: baton_kit::secret::Secret::new("s"),
            signing_key_file: "chatops-key".into(),
            people_repository: "https://git.example.com/config.git".into(),
            people_branch: "main".into(),
            people_refresh: Duration::from_secs(30),
            credentials: vec![],
            cache_dir: None,
            contact: "<#C024BE7LR|platform-team>".into(),
            incoming_webhook_url: None,
            max_request_age: Duration::from_secs(300),
            command_timeout: Duration::from_secs(10),
            answer_within: Duration::from_millis(2500),
            post_timeout: Duration::from_secs(10),
            max_body_bytes: 1024,
        };
        let sender = Sender {
            user_id: "U0MALLORY".into(),
            user_name: Some(format!("{here} {link}")),
        };
        let text = unknown_user(&config, &sender).text;
        assert!(
            text.contains("Slack user &lt;!here&gt; &lt;https://evil|view diff&gt; (U0MALLORY)"),
            "{text}"
        );
        assert!(
            text.contains("`people: {&lt;your name&gt;: {chat: [U0MALLORY]}}`"),
            "{text}"
        );
        assert!(
            text.contains("or ask <#C024BE7LR|platform-team> to."),
            "the operator's link works: {text}"
        );
        assert_inert(&text, &[&config.contact]);

        let line = describe_current(
            &format!("prod`{here}"),
            &serde_json::json!({"release": link, "healthy_since": escaped, "pinned": {"by": user, "reason": channel}}),
        );
        assert_eq!(
            line,
            "• `prodˋ&lt;!here&gt;`: release `&lt;https://evil|view diff&gt;`, healthy since &amp;lt; — pinned by &lt;@U123&gt;: &lt;!channel&gt;"
        );
        for app in HOSTILE {
            assert_inert(&listing(app, std::slice::from_ref(&line)).text, &[]);
            assert_inert(&listing(app, &[]).text, &[]);
        }
    }

    #[test]
    fn a_redelivery_has_the_same_request_id() {
        let mut h = HeaderMap::new();
        h.insert(signature::TIMESTAMP_HEADER, "1700000000".parse().unwrap());
        assert_eq!(request_id(&h, b"a"), request_id(&h, b"a"));
        assert_ne!(request_id(&h, b"a"), request_id(&h, b"b"));
    }
}
