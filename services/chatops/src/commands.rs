//! The `/baton` slash-command grammar, and what a button click means. Pure: parsing text into an
//! [`Intent`]; forwarding it is [`crate::inbound`]'s job.
//!
//! ```text
//! /baton approve <release> [environment]
//! /baton decline <release> [environment|-] [reason…]
//! /baton status <app>
//! /baton rollback <app> <environment> [release]
//! /baton pin <app> <environment> [reason…]
//! /baton unpin <app> <environment>
//! /baton help
//! ```

use baton_schemas::commands::{CommandRequest, Verb};

use crate::mrkdwn::code;

/// The usage text `help` and every grammar mistake show, as mrkdwn: the placeholders' angle
/// brackets are escaped (`&lt;app&gt;`), since Slack reads `<…>` as a link or a mention.
pub const USAGE: &str = "\
Baton understands:
• `/baton approve &lt;release&gt; [environment]` — approve a pending promotion
• `/baton decline &lt;release&gt; [environment|-] [reason…]` — decline it (`-` leaves the environment out)
• `/baton status &lt;app&gt;` — what runs where
• `/baton rollback &lt;app&gt; &lt;environment&gt; [release]` — back to an earlier release (default: the previous good one), and pin
• `/baton pin &lt;app&gt; &lt;environment&gt; [reason…]` — automatic promotion leaves the environment alone
• `/baton unpin &lt;app&gt; &lt;environment&gt;` — let releases in again
• `/baton help` — this text";

/// What a user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intent {
    /// Show the usage.
    Help,
    /// What runs where for an app (read from the promoter's state).
    Status {
        /// The application, as the git host names it.
        app: String,
    },
    /// A promoter command; `actor` and `request_id` are filled in by the caller.
    Command {
        /// The verb.
        verb: Verb,
        /// The request without actor.
        request: CommandRequest,
    },
}

/// A mistake in a slash command, with the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{problem}\n\n{USAGE}")]
pub struct GrammarError {
    /// What is wrong, as mrkdwn: the words the user typed are quoted through [`crate::mrkdwn`].
    pub problem: String,
}

fn wrong(problem: impl Into<String>) -> GrammarError {
    GrammarError {
        problem: problem.into(),
    }
}

/// Parses the `text` of a `/baton` slash command.
///
/// # Errors
/// An unknown verb or missing / extra words, with the usage.
pub fn parse(text: &str) -> Result<Intent, GrammarError> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let Some((verb, args)) = words.split_first() else {
        return Ok(Intent::Help);
    };
    let rest = |from: usize| -> Option<String> { (args.len() > from).then(|| args[from..].join(" ")) };
    let verb_lower = verb.to_ascii_lowercase();
    let arity = |min: usize, max: Option<usize>, shape: &str| -> Result<(), GrammarError> {
        if args.len() < min || max.is_some_and(|m| args.len() > m) {
            return Err(wrong(format!("{} takes {shape}", code(&verb_lower))));
        }
        Ok(())
    };
    let command = |verb: Verb, request: CommandRequest| Ok(Intent::Command { verb, request });
    match verb_lower.as_str() {
        "help" => Ok(Intent::Help),
        "approve" => {
            arity(1, Some(2), "`&lt;release&gt; [environment]`")?;
            command(
                Verb::Approve,
                CommandRequest {
                    release: Some(args[0].to_owned()),
                    environment: args.get(1).map(|e| (*e).to_owned()),
                    ..CommandRequest::default()
                },
            )
        }
        "decline" => {
            arity(1, None, "`&lt;release&gt; [environment|-] [reason…]`")?;
            command(
                Verb::Decline,
                CommandRequest {
                    release: Some(args[0].to_owned()),
                    environment: args.get(1).filter(|e| **e != "-").map(|e| (*e).to_owned()),
                    reason: rest(2),
                    ..CommandRequest::default()
                },
            )
        }
        "status" => {
            arity(1, Some(1), "`&lt;app&gt;`, e.g. `/baton status acme/shop`")?;
            Ok(Intent::Status {
                app: args[0].to_owned(),
            })
        }
        "rollback" => {
            arity(2, Some(3), "`&lt;app&gt; &lt;environment&gt; [release]`")?;
            command(
                Verb::Rollback,
                CommandRequest {
                    app: Some(args[0].to_owned()),
                    environment: Some(args[1].to_owned()),
                    release: args.get(2).map(|r| (*r).to_owned()),
                    ..CommandRequest::default()
                },
            )
        }
        "pin" => {
            arity(2, None, "`&lt;app&gt; &lt;environment&gt; [reason…]`")?;
            command(
                Verb::Pin,
                CommandRequest {
                    app: Some(args[0].to_owned()),
                    environment: Some(args[1].to_owned()),
                    reason: rest(2),
                    ..CommandRequest::default()
                },
            )
        }
        "unpin" => {
            arity(2, Some(2), "`&lt;app&gt; &lt;environment&gt;`")?;
            command(
                Verb::Unpin,
                CommandRequest {
                    app: Some(args[0].to_owned()),
                    environment: Some(args[1].to_owned()),
                    ..CommandRequest::default()
                },
            )
        }
        _ => Err(wrong(format!("Baton does not know {}.", code(verb)))),
    }
}

/// What an Approve/Decline button click means: `action_id` is `approve` or `decline`, `value` is
/// the JSON `{"release": …, "environment": …}` the approval message put on the button.
///
/// # Errors
/// An unknown action or a value that is not such JSON.
pub fn button(action_id: &str, value: &str) -> Result<Intent, GrammarError> {
    let verb = match action_id {
        "approve" => Verb::Approve,
        "decline" => Verb::Decline,
        other => {
            return Err(wrong(format!(
                "the button {} is not one of Baton's (approve, decline)",
                code(other)
            )));
        }
    };
    let target: serde_json::Value = serde_json::from_str(value).map_err(|_| {
        wrong("the button's value is not the JSON Baton put on it ({\"release\": …, \"environment\": …})")
    })?;
    let release = target["release"]
        .as_str()
        .filter(|r| !r.is_empty())
        .ok_or_else(|| wrong("the button's value names no release"))?;
    Ok(Intent::Command {
        verb,
        request: CommandRequest {
            release: Some(release.to_owned()),
            environment: target["environment"].as_str().map(str::to_owned),
            ..CommandRequest::default()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> (Verb, CommandRequest) {
        match parse(text).unwrap() {
            Intent::Command { verb, request } => (verb, request),
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn every_verb_parses() {
        let (v, r) = request("approve r1 production");
        assert_eq!(
            (v, r.release.as_deref(), r.environment.as_deref()),
            (Verb::Approve, Some("r1"), Some("production"))
        );
        let (v, r) = request("  APPROVE   r1 ");
        assert_eq!((v, r.environment), (Verb::Approve, None));
        let (v, r) = request("decline r1 production too risky on a Friday");
        assert_eq!(
            (v, r.environment.as_deref(), r.reason.as_deref()),
            (Verb::Decline, Some("production"), Some("too risky on a Friday"))
        );
        let (_, r) = request("decline r1 - flaky");
        assert_eq!((r.environment, r.reason.as_deref()), (None, Some("flaky")));
        let (v, r) = request("rollback acme/shop production r0");
        assert_eq!(
            (v, r.app.as_deref(), r.environment.as_deref(), r.release.as_deref()),
            (Verb::Rollback, Some("acme/shop"), Some("production"), Some("r0"))
        );
        let (v, r) = request("pin acme/shop production incident 42");
        assert_eq!((v, r.reason.as_deref()), (Verb::Pin, Some("incident 42")));
        let (v, r) = request("unpin acme/shop production");
        assert_eq!((v, r.reason), (Verb::Unpin, None));
        assert_eq!(
            parse("status acme/shop").unwrap(),
            Intent::Status {
                app: "acme/shop".into()
            }
        );
        assert_eq!(parse("").unwrap(), Intent::Help);
        assert_eq!(parse("help").unwrap(), Intent::Help);
    }

    #[test]
    fn mistakes_show_the_usage() {
        for text in [
            "approve",
            "approve a b c",
            "status",
            "rollback acme/shop",
            "unpin a b c",
            "deploy x",
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains("/baton approve &lt;release&gt;"), "{text}: {e}");
        }
    }

    #[test]
    fn mistakes_quote_the_user_s_words_as_inert_text() {
        use crate::mrkdwn::tests::{HOSTILE, assert_inert};
        for word in HOSTILE {
            let problem = parse(&format!("{word} r1")).unwrap_err().problem;
            assert_inert(&problem, &[]);
            assert!(problem.starts_with("Baton does not know `"), "{problem}");
        }
        let problem = parse("deploy`<!here>`").unwrap_err().problem;
        assert_eq!(problem, "Baton does not know `deployˋ&lt;!here&gt;ˋ`.");
        let problem = button("<!channel>", "{}").unwrap_err().problem;
        assert!(problem.starts_with("the button `&lt;!channel&gt;` is not"), "{problem}");
    }

    #[test]
    fn buttons_map_to_votes() {
        let intent = button("decline", r#"{"release":"r1","environment":"production"}"#).unwrap();
        let Intent::Command { verb, request } = intent else {
            panic!()
        };
        assert_eq!((verb, request.release.as_deref()), (Verb::Decline, Some("r1")));
        assert!(button("merge", "{}").is_err());
        assert!(button("approve", "not json").is_err());
        assert!(button("approve", r#"{"environment":"production"}"#).is_err());
    }
}
