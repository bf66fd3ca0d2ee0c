//! Slack messages (`text` + `blocks`) for the events the bot posts: approval requests with
//! Approve/Decline buttons, their outcome, and release news. Pure functions of the events. Every
//! text taken from an event (names, commits, reasons, the changelog) goes in through
//! [`crate::mrkdwn`], so none of it can ping, link or reformat the message.

use baton_schemas::drift::{DriftData, DriftKind};
use baton_schemas::extensions::ReleaseQuarantinedContent;
use baton_schemas::payloads::Person;
use baton_schemas::release::{ApprovalData, DeploymentData};
use baton_schemas::{CdEvent, EventType};
use serde_json::{Value, json};

use crate::mrkdwn::{bold, code, escape};

/// Changelog entries shown in an approval request; the rest are counted.
const CHANGELOG_SHOWN: usize = 5;

/// Why an event cannot be turned into a message (retrying cannot help).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MessageError(String);

/// The message for `event`, or `None` for an event the bot does not post.
///
/// # Errors
/// When the event lacks the `customData` its emitter always puts on it.
pub fn for_event(ty: EventType, event: &CdEvent) -> Result<Option<Value>, MessageError> {
    let data = |what: &str| MessageError(format!("{ty} without the {what} customData"));
    Ok(Some(match ty {
        EventType::ApprovalCreated => {
            approval_request(&event.custom_data_as().map_err(|_| data("approval request's"))?)
        }
        EventType::ApprovalClosed => {
            let status = event.subject.content["status"].as_str().unwrap_or("closed");
            approval_closed(&event.custom_data_as().map_err(|_| data("approval request's"))?, status)
        }
        EventType::ServiceDeployed
        | EventType::ServiceUpgraded
        | EventType::ServiceRolledBack
        | EventType::DeploymentFailed => deployment(ty, &event.custom_data_as().map_err(|_| data("deployer's"))?),
        EventType::ReleaseQuarantined => {
            let content: ReleaseQuarantinedContent = serde_json::from_value(event.subject.content.clone())
                .map_err(|_| MessageError(format!("{ty} without app, actor and reason")))?;
            quarantined(&event.subject.id, &content)
        }
        EventType::EnvironmentDrifted | EventType::EnvironmentSynced => {
            let how = event.subject.content["how"].as_str().unwrap_or("resolved");
            drift(ty, how, &event.custom_data_as().map_err(|_| data("deployer's drift"))?)
        }
        EventType::EnvironmentUnhealed => {
            let reason = event.subject.content["reason"].as_str().unwrap_or("no reason given");
            drift(
                ty,
                reason,
                &event.custom_data_as().map_err(|_| data("deployer's drift"))?,
            )
        }
        _ => return Ok(None),
    }))
}

/// Who a person is, as mrkdwn: `name <email>`, escaped.
fn person(p: Option<&Person>) -> String {
    let Some(p) = p else { return "unknown".to_owned() };
    let plain = match (&p.name, &p.email, &p.username) {
        (Some(name), Some(email), _) => format!("{name} <{email}>"),
        (Some(name), None, _) => name.clone(),
        (None, Some(email), _) => email.clone(),
        (None, None, Some(user)) => user.clone(),
        (None, None, None) => return "unknown".to_owned(),
    };
    escape(&plain).into_owned()
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

fn section(text: String) -> Value {
    json!({"type": "section", "text": {"type": "mrkdwn", "text": text}})
}

/// An approval request: what is released, by whom, what runs now, the quorum and the expiry,
/// with Approve/Decline buttons (`action_id` `approve`/`decline`, `value`
/// `{"release": …, "environment": …}`).
pub fn approval_request(a: &ApprovalData) -> Value {
    let r = &a.release;
    let kind = match a.kind {
        baton_schemas::release::ApprovalKind::Promotion => "Approval needed",
        baton_schemas::release::ApprovalKind::BreakGlass => "Break-glass approval needed (freeze window)",
    };
    let headline = format!(
        "{kind}: release {} of {} into {}",
        code(&r.release),
        bold(&a.app),
        bold(&a.environment)
    );
    let mut changes: Vec<String> = r
        .changelog
        .iter()
        .take(CHANGELOG_SHOWN)
        .map(|c| {
            format!(
                "• {} {} — {}",
                code(short(&c.commit)),
                escape(&c.summary),
                person(Some(&c.author))
            )
        })
        .collect();
    if r.changelog.len() > CHANGELOG_SHOWN {
        changes.push(format!("…and {} more", r.changelog.len() - CHANGELOG_SHOWN));
    }
    if changes.is_empty() {
        changes.push(format!("• {}", code(short(&r.commit))));
    }
    let running = match (&a.current_release, &a.current_image) {
        (Some(release), Some(image)) => format!("release {}, {}", code(release), code(image)),
        (None, Some(image)) => code(image),
        (Some(release), None) => format!("release {}", code(release)),
        (None, None) => "nothing yet".to_owned(),
    };
    let approvers = if a.approvers.is_empty() {
        "nobody is allowed (check environments.yaml)".to_owned()
    } else {
        escape(&a.approvers.join(", ")).into_owned()
    };
    let details = format!(
        "*Commit* {} by {}, pushed by {}\n*Changes*\n{}\n*Image* {}\n*Running now* {}\n*Needs* {} approval(s) from {}\n*Expires* {}\n*Asked by* {}",
        code(short(&r.commit)),
        person(r.author.as_ref()),
        person(r.pushed_by.as_ref()),
        changes.join("\n"),
        code(&r.image.reference),
        running,
        a.required,
        approvers,
        a.expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        escape(&a.requested_by),
    );
    let value = json!({"release": r.release, "environment": a.environment}).to_string();
    json!({
        "text": format!("{headline} — {}", code(&format!("/baton approve {} {}", r.release, a.environment))),
        "blocks": [
            section(headline),
            section(details),
            {
                "type": "actions",
                "block_id": format!("baton-approval-{}", a.approval),
                "elements": [
                    {"type": "button", "action_id": "approve", "style": "primary",
                     "text": {"type": "plain_text", "text": "Approve"}, "value": value},
                    {"type": "button", "action_id": "decline", "style": "danger",
                     "text": {"type": "plain_text", "text": "Decline"}, "value": value}
                ]
            }
        ]
    })
}

/// The outcome of an approval request.
pub fn approval_closed(a: &ApprovalData, status: &str) -> Value {
    let text = format!(
        "Approval of release {} of {} into {}: {}{}",
        code(&a.release.release),
        bold(&a.app),
        bold(&a.environment),
        escape(status),
        a.reason
            .as_deref()
            .map(|r| format!(" ({})", escape(r)))
            .unwrap_or_default()
    );
    json!({"text": text, "blocks": [section(text.clone())]})
}

/// Release news from the deployer: deployed, upgraded, rolled back, or failed with the reason
/// and the failing pods.
pub fn deployment(ty: EventType, d: &DeploymentData) -> Value {
    let what = match ty {
        EventType::ServiceDeployed => "runs healthy in",
        EventType::ServiceUpgraded => "upgraded, healthy, in",
        EventType::ServiceRolledBack => "rolled back to, healthy, in",
        _ => "FAILED to roll out in",
    };
    let mut text = format!(
        "Release {} of {} {what} {} ({}, image {})",
        code(&d.release),
        bold(&d.app),
        bold(&d.environment),
        code(&d.namespace),
        code(&d.image)
    );
    if let Some(reason) = &d.reason {
        text.push_str(&format!("\n*Why* {}", escape(reason)));
    }
    // A pod's reason and message come from the cluster, and a container writes its own
    // termination message: escaped like any other text.
    for pod in &d.failing_pods {
        text.push_str(&format!(
            "\n• pod {} {}{}{}, {} restart(s)",
            code(&pod.name),
            escape(&pod.phase),
            pod.reason
                .as_deref()
                .map(|r| format!(" {}", escape(r)))
                .unwrap_or_default(),
            pod.message
                .as_deref()
                .map(|m| format!(": {}", escape(m)))
                .unwrap_or_default(),
            pod.restarts
        ));
    }
    json!({"text": text, "blocks": [section(text.clone())]})
}

/// Fields of a drifted object shown; the rest are counted.
const DRIFT_FIELDS_SHOWN: usize = 5;
/// Drifted objects shown (a Slack section holds 3,000 characters); the rest are counted.
const DRIFT_OBJECTS_SHOWN: usize = 10;

/// Drift news: which objects of an app differ from its config commit (each changed field old →
/// new, and who changed it), what the environment's policy does about it; that it is in sync
/// again, and how (`detail`); or that a heal did not end it, and why (`detail`).
pub fn drift(ty: EventType, detail: &str, d: &DriftData) -> Value {
    let mut text = if ty == EventType::EnvironmentUnhealed {
        format!(
            "{} in {} ({}) is NOT HEALED: re-applying config commit {} did not end its drift: {}. \
             Not tried again for this drift; `baton status` shows it",
            bold(&d.app),
            bold(&d.environment),
            code(&d.namespace),
            code(short(&d.config_commit)),
            escape(detail)
        )
    } else if ty == EventType::EnvironmentDrifted {
        let policy = match d.policy.as_deref() {
            Some("heal") => "Baton puts the release back (`drift: heal`)",
            _ => "left as it is: `baton sync` puts the release back",
        };
        format!(
            "{} in {} ({}) DRIFTED from config commit {}: {policy}",
            bold(&d.app),
            bold(&d.environment),
            code(&d.namespace),
            code(short(&d.config_commit))
        )
    } else {
        format!(
            "{} in {} is in sync with config commit {} again ({})",
            bold(&d.app),
            bold(&d.environment),
            code(short(&d.config_commit)),
            escape(detail)
        )
    };
    for object in d.objects.iter().take(DRIFT_OBJECTS_SHOWN) {
        let kind = match object.kind {
            DriftKind::Changed => "changed",
            DriftKind::Missing => "missing",
            DriftKind::Extra => "not in the release",
        };
        text.push_str(&format!("\n• {} {kind}", code(&object.object)));
        for field in object.fields.iter().take(DRIFT_FIELDS_SHOWN) {
            let value = |v: &Option<Value>| v.as_ref().map_or_else(|| "(none)".to_owned(), |v| code(&v.to_string()));
            text.push_str(&format!(
                "\n    {}: {} → {}{}",
                code(&field.path),
                value(&field.expected),
                value(&field.live),
                field
                    .changed_by
                    .as_deref()
                    .map(|m| format!(" by {}", escape(m)))
                    .unwrap_or_default()
            ));
        }
        let more_fields = object.fields.len().saturating_sub(DRIFT_FIELDS_SHOWN) as u64 + object.fields_omitted;
        if more_fields > 0 {
            text.push_str(&format!("\n    and {more_fields} more field(s)"));
        }
    }
    let more_objects = d.objects.len().saturating_sub(DRIFT_OBJECTS_SHOWN) as u64 + d.objects_omitted;
    if more_objects > 0 {
        text.push_str(&format!("\n…and {more_objects} more object(s)"));
    }
    json!({"text": text, "blocks": [section(text.clone())]})
}

/// A release marked bad.
pub fn quarantined(release: &str, q: &ReleaseQuarantinedContent) -> Value {
    let text = format!(
        "Release {} of {} is quarantined by {}: {} — it will never be promoted again",
        code(release),
        bold(&q.app),
        escape(&q.actor),
        escape(&q.reason)
    );
    json!({"text": text, "blocks": [section(text.clone())]})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mrkdwn::tests::{HOSTILE, assert_inert};
    use baton_schemas::payloads::ImageInfo;
    use baton_schemas::release::{ApprovalKind, ChangeEntry, PodReport, PromotionAction, ReleaseData};

    fn approval() -> ApprovalData {
        let person = |n: &str| Person {
            name: Some(n.into()),
            email: Some(format!("{n}@example.com")),
            username: None,
        };
        ApprovalData {
            approval: "a1".into(),
            kind: ApprovalKind::Promotion,
            app: "acme/shop".into(),
            environment: "production".into(),
            release: ReleaseData {
                release: "r1".into(),
                app: "acme/shop".into(),
                commit: "0123456789abcdef0123".into(),
                repository: "file:///app".into(),
                image: ImageInfo {
                    registry: "reg".into(),
                    repository: "shop".into(),
                    tag: "t".into(),
                    digest: "sha256:new".into(),
                    reference: "reg/shop@sha256:new".into(),
                    purl: "pkg:oci/shop".into(),
                    uploaded_bytes: 0,
                },
                author: Some(person("ada")),
                pushed_by: Some(person("bob")),
                tested: true,
                test_run: None,
                previous_release: None,
                changelog: (0..7)
                    .map(|i| ChangeEntry {
                        commit: format!("{i:040}"),
                        summary: format!("change {i}"),
                        author: person("ada"),
                        committer: None,
                    })
                    .collect(),
                created_at: chrono::Utc::now(),
            },
            current_release: Some("r0".into()),
            current_image: Some("reg/shop@sha256:old".into()),
            required: 2,
            approvers: vec!["alice".into(), "bob".into()],
            votes: vec![],
            expires_at: chrono::Utc::now(),
            requested_by: "baton-promoter".into(),
            reason: None,
        }
    }

    #[test]
    fn an_approval_request_says_what_and_has_buttons() {
        let m = approval_request(&approval());
        let all = m.to_string();
        for needle in [
            "r1",
            "sha256:new",
            "sha256:old",
            "ada &lt;ada@example.com&gt;",
            "pushed by bob",
            "change 4",
            "and 2 more",
            "2 approval(s) from alice, bob",
        ] {
            assert!(all.contains(needle), "{needle}: {all}");
        }
        let buttons = &m["blocks"][2]["elements"];
        assert_eq!(buttons[0]["action_id"], "approve");
        assert_eq!(buttons[1]["action_id"], "decline");
        let value: Value = serde_json::from_str(buttons[0]["value"].as_str().unwrap()).unwrap();
        assert_eq!(value, json!({"release": "r1", "environment": "production"}));
        // The value round-trips through the button grammar.
        assert!(crate::commands::button("approve", buttons[0]["value"].as_str().unwrap()).is_ok());
    }

    /// The message's mrkdwn: its fallback `text` and each section's text.
    fn mrkdwn_of(message: &Value) -> Vec<String> {
        let mut texts = vec![message["text"].as_str().unwrap().to_owned()];
        for block in message["blocks"].as_array().unwrap() {
            if block["text"]["type"] == "mrkdwn" {
                texts.push(block["text"]["text"].as_str().unwrap().to_owned());
            }
        }
        texts
    }

    /// Every hostile text, each in its own field, reaches Slack as inert text; `shown` is what
    /// must be seen of it (escaped, so it reads as typed).
    fn assert_all_inert(message: &Value, shown: &[&str]) {
        let texts = mrkdwn_of(message);
        for text in &texts {
            assert_inert(text, &[]);
        }
        let all = texts.join("\n");
        for needle in shown {
            assert!(all.contains(needle), "{needle}: {all}");
        }
    }

    fn hostile_person(name: &str) -> Person {
        Person {
            name: Some(name.into()),
            email: Some("<mailto:boss@example.com|boss@example.com>".into()),
            username: None,
        }
    }

    fn deployment_data() -> DeploymentData {
        DeploymentData {
            promotion: "p".into(),
            action: PromotionAction::Promote,
            app: "acme/shop".into(),
            environment: "production".into(),
            namespace: "shop".into(),
            release: "r1".into(),
            config_commit: "c".into(),
            image: "reg/shop@sha256:new".into(),
            reason: Some("crash loop".into()),
            applied: vec![],
            pruned: vec![],
            failing_pods: vec![PodReport {
                name: "shop-1".into(),
                phase: "Running".into(),
                ready: false,
                reason: Some("CrashLoopBackOff".into()),
                message: None,
                restarts: 4,
            }],
            rollout_wait_ms: None,
        }
    }

    #[test]
    fn user_text_in_an_approval_request_cannot_ping_link_or_break_out() {
        let [here, channel, link, user, escaped] = HOSTILE;
        let mut a = approval();
        a.app = format!("acme/{here}* into *production");
        a.environment = channel.into();
        a.release.release = format!("r1` {link} `");
        a.release.commit = user.into();
        a.release.author = Some(hostile_person(escaped));
        a.release.pushed_by = Some(hostile_person(here));
        a.release.image.reference = format!("reg/shop{channel}");
        for (i, change) in a.release.changelog.iter_mut().enumerate() {
            change.summary = HOSTILE[i % HOSTILE.len()].into();
            change.author = hostile_person(link);
        }
        a.current_release = Some(link.into());
        a.current_image = Some(user.into());
        a.approvers = vec![here.into(), user.into()];
        a.requested_by = channel.into();
        let m = approval_request(&a);
        assert_all_inert(
            &m,
            &[
                "*acme/&lt;!here&gt;∗ into ∗production*",
                "*&lt;!channel&gt;*",
                "`r1ˋ &lt;https://evil|view diff&gt; ˋ`",
                "&amp;lt; &lt;&lt;mailto:boss@example.com|boss@example.com&gt;&gt;",
                "• `000000000000` &lt;!here&gt; —",
                "`&lt;https://evil|view diff&gt;`, `&lt;@U123&gt;`",
                "from &lt;!here&gt;, &lt;@U123&gt;",
                "*Asked by* &lt;!channel&gt;",
            ],
        );
        // The buttons still name the release as it is: they are data, not mrkdwn.
        let value: Value = serde_json::from_str(m["blocks"][2]["elements"][0]["value"].as_str().unwrap()).unwrap();
        assert_eq!(value["release"], a.release.release);

        a.reason = Some(format!("{link} {here}"));
        assert_all_inert(
            &approval_closed(&a, "<!everyone>"),
            &["&lt;!everyone&gt; (&lt;https://evil|view diff&gt; &lt;!here&gt;)"],
        );
    }

    #[test]
    fn user_text_in_release_news_cannot_ping_link_or_break_out() {
        let [here, channel, link, user, escaped] = HOSTILE;
        let mut d = deployment_data();
        d.app = here.into();
        d.environment = channel.into();
        d.release = format!("`{link}`");
        d.namespace = user.into();
        d.image = escaped.into();
        d.reason = Some(format!("{here}\n*Approved by* the CTO"));
        d.failing_pods[0].name = link.into();
        d.failing_pods[0].reason = Some(user.into());
        d.failing_pods[0].message = Some(format!("{channel} see {link}"));
        for ty in [EventType::ServiceDeployed, EventType::DeploymentFailed] {
            assert_all_inert(
                &deployment(ty, &d),
                &[
                    "Release `ˋ&lt;https://evil|view diff&gt;ˋ` of *&lt;!here&gt;*",
                    "*&lt;!channel&gt;* (`&lt;@U123&gt;`, image `&amp;lt;`)",
                    "*Why* &lt;!here&gt;",
                    "• pod `&lt;https://evil|view diff&gt;` Running &lt;@U123&gt;: &lt;!channel&gt; see",
                ],
            );
        }

        let q = ReleaseQuarantinedContent {
            app: format!("shop*{here}"),
            actor: user.into(),
            reason: format!("{link} {escaped}"),
        };
        assert_all_inert(
            &quarantined(&format!("r`{channel}"), &q),
            &[
                "Release `rˋ&lt;!channel&gt;` of *shop∗&lt;!here&gt;* is quarantined by &lt;@U123&gt;: &lt;https://evil|view diff&gt; &amp;lt; —",
            ],
        );
    }

    #[test]
    fn drift_news_names_the_fields_old_to_new_and_who_and_user_text_stays_inert() {
        use baton_schemas::drift::{DriftedObject, FieldDrift, REDACTED};
        let [here, _, link, user, _] = HOSTILE;
        let at = chrono::DateTime::from_timestamp(0, 0).unwrap();
        let d = DriftData {
            app: "acme/shop".into(),
            environment: "production".into(),
            namespace: "shop-prod".into(),
            release: "r1".into(),
            promotion: "p1".into(),
            config_commit: "0123456789abcdef".into(),
            policy: Some("report".into()),
            objects: vec![
                DriftedObject {
                    object: "Deployment/shop".into(),
                    kind: DriftKind::Changed,
                    fields: vec![FieldDrift {
                        path: "spec.template.spec.containers[name=shop].image".into(),
                        expected: Some(Value::String("shop@sha256:aa".into())),
                        live: Some(Value::String(link.into())),
                        changed_by: Some(user.into()),
                        changed_at: None,
                    }],
                    fields_omitted: 0,
                },
                DriftedObject {
                    object: format!("Secret/{here}"),
                    kind: DriftKind::Changed,
                    fields: vec![FieldDrift {
                        path: "data.password".into(),
                        expected: Some(Value::String(REDACTED.into())),
                        live: Some(Value::String(REDACTED.into())),
                        changed_by: None,
                        changed_at: None,
                    }],
                    fields_omitted: 0,
                },
                DriftedObject {
                    object: "ConfigMap/settings".into(),
                    kind: DriftKind::Missing,
                    fields: Vec::new(),
                    fields_omitted: 0,
                },
            ],
            objects_omitted: 0,
            detected_at: at,
            synced_at: None,
            rollout_wait_ms: None,
        };
        assert_all_inert(
            &drift(EventType::EnvironmentDrifted, "", &d),
            &[
                "*acme/shop* in *production* (`shop-prod`) DRIFTED from config commit `0123456789ab`: left as it is: `baton sync` puts the release back",
                "• `Deployment/shop` changed",
                "`spec.template.spec.containers[name=shop].image`: `\"shop@sha256:aa\"` → `\"&lt;https://evil|view diff&gt;\"` by &lt;@U123&gt;",
                "• `Secret/&lt;!here&gt;` changed",
                "`data.password`: `\"&lt;redacted&gt;\"` → `\"&lt;redacted&gt;\"`",
                "• `ConfigMap/settings` missing",
            ],
        );
        // Thousands of extra objects (anyone who can label objects can make them): ten shown,
        // the rest counted, with those the report itself left out.
        let flood = DriftData {
            objects: (0..50)
                .map(|i| DriftedObject {
                    object: format!("ConfigMap/extra-{i}"),
                    kind: DriftKind::Extra,
                    fields: Vec::new(),
                    fields_omitted: 0,
                })
                .collect(),
            objects_omitted: 4950,
            ..d.clone()
        };
        let text = drift(EventType::EnvironmentDrifted, "", &flood)["text"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(text.matches("not in the release").count(), 10, "{text}");
        assert!(text.ends_with("…and 4990 more object(s)"), "{text}");
        // A heal that did not end the drift: why, with whatever the cluster named kept inert.
        let unhealed = drift(
            EventType::EnvironmentUnhealed,
            &format!("re-applied, but ConfigMap/{here} still differ"),
            &d,
        );
        let text = unhealed["text"].as_str().unwrap();
        assert!(
            text.starts_with(
                "*acme/shop* in *production* (`shop-prod`) is NOT HEALED: re-applying config commit \
                 `0123456789ab` did not end its drift: re-applied, but ConfigMap/&lt;!here&gt; still differ."
            ),
            "{text}"
        );
        let synced = drift(
            EventType::EnvironmentSynced,
            "healed",
            &DriftData {
                objects: Vec::new(),
                ..d
            },
        );
        assert_eq!(
            synced["text"],
            "*acme/shop* in *production* is in sync with config commit `0123456789ab` again (healed)"
        );
    }

    #[test]
    fn a_failure_names_the_reason_and_the_pods() {
        let d = deployment_data();
        let text = deployment(EventType::DeploymentFailed, &d)["text"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(text.contains("FAILED") && text.contains("crash loop"), "{text}");
        assert!(
            text.contains("`shop-1` Running CrashLoopBackOff, 4 restart(s)"),
            "{text}"
        );
    }
}
