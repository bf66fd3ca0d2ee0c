//! The policy rules as tables: one row per rule, each naming the decision and the reason it
//! expects.

use baton_schemas::environments::{Environment, EnvironmentsFile, PromotionPolicy};
use baton_schemas::payloads::{ImageInfo, Person};
use baton_schemas::release::{ApprovalData, ApprovalKind, ApprovalVote, Pin, PromotionAction, ReleaseData};
use chrono::{DateTime, Utc};

use super::*;
use crate::manager::AUTOMATION;
use crate::state::{BadRelease, Closure, Current, PendingApproval, Scheduled, Trigger};

/// Staging (auto) before production (manual, two approvals, a soak and a weekend freeze).
const POLICY: &str = "
environments:
  - name: staging
    namespace: shop-staging
    policy: auto
  - name: production
    namespace: shop-production
    policy: manual
    soak: 10m
    approvals:
      required: 2
      users: [alice, bob, dana]
      groups: [sre]
      expires_after: 24h
    freeze:
      - name: weekend
        cron: '0 18 * * FRI'
        duration: 62h
groups:
  sre: [carol]
people:
  dana:
    emails: [dana@example.com]
";

const RELEASE: &str = "release-new";
const PROMOTION: &str = "promotion-1";

fn at(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .expect("a valid instant")
        .with_timezone(&Utc)
}

/// A Wednesday noon: no freeze window is open.
fn wednesday() -> DateTime<Utc> {
    at("2025-03-05T12:00:00Z")
}

/// A Saturday noon, inside the weekend window (Friday 18:00 for 62 hours).
fn saturday() -> DateTime<Utc> {
    at("2025-03-01T12:00:00Z")
}

/// When the weekend window around [`saturday`] ends.
fn monday_morning() -> DateTime<Utc> {
    at("2025-03-03T08:00:00Z")
}

fn minutes(n: i64) -> chrono::Duration {
    chrono::Duration::minutes(n)
}

fn policy() -> EnvironmentsFile {
    EnvironmentsFile::parse(POLICY).expect("the test policy is valid")
}

fn environment(name: &str) -> Environment {
    policy().get(name).cloned().expect("the test policy defines it")
}

fn release(id: &str) -> ReleaseData {
    ReleaseData {
        release: id.to_owned(),
        app: "acme/shop".to_owned(),
        commit: "0123456789abcdef0123456789abcdef01234567".to_owned(),
        repository: "https://git.example.com/acme/shop".to_owned(),
        image: ImageInfo {
            registry: "registry.example.com".to_owned(),
            repository: "acme/shop".to_owned(),
            tag: "0123456789abcdef0123456789abcdef01234567".to_owned(),
            digest: "sha256:aa".to_owned(),
            reference: "registry.example.com/acme/shop@sha256:aa".to_owned(),
            purl: "pkg:oci/shop@sha256:aa".to_owned(),
            uploaded_bytes: 0,
        },
        author: Some(Person {
            name: Some("Dana Scully".to_owned()),
            email: Some("dana@example.com".to_owned()),
            username: None,
        }),
        pushed_by: None,
        tested: true,
        test_run: Some("run-1".to_owned()),
        previous_release: None,
        changelog: Vec::new(),
        created_at: at("2025-02-01T00:00:00Z"),
    }
}

/// `release` put into an environment by `promotion`, healthy since `healthy_since`.
fn running(release: &str, promotion: &str, healthy_since: Option<DateTime<Utc>>) -> Current {
    Current {
        release: release.to_owned(),
        promotion: promotion.to_owned(),
        config_commit: "c0ffee".to_owned(),
        action: PromotionAction::Promote,
        healthy_since,
        last_healthy: None,
        pinned: None,
    }
}

fn pin() -> Pin {
    Pin {
        by: "carol".to_owned(),
        reason: "incident 42".to_owned(),
        at: at("2025-02-20T09:00:00Z"),
    }
}

fn quarantine() -> BadRelease {
    BadRelease {
        actor: "baton-promoter".to_owned(),
        reason: "rollout in `staging` failed".to_owned(),
        at: at("2025-02-21T09:00:00Z"),
        release: String::new(),
    }
}

fn operator() -> Trigger {
    Trigger::Operator {
        actor: "alice".to_owned(),
        break_glass: false,
    }
}

fn operator_breaking_glass() -> Trigger {
    Trigger::Operator {
        actor: "alice".to_owned(),
        break_glass: true,
    }
}

fn approved(break_glass: bool) -> Trigger {
    Trigger::Approved {
        approval: "A1".to_owned(),
        break_glass,
    }
}

fn promote(actor: &str) -> Decision {
    Decision::Promote(Promotion {
        actor: actor.to_owned(),
        break_glass: false,
        frozen: false,
        pinned: None,
    })
}

/// A newer release the environment runs (its commit descends from the release's).
fn newer() -> Newer {
    Newer {
        release: "release-newer".into(),
        commit: "b".repeat(40),
    }
}

/// Everything a move's decision reads, owned.
struct Given {
    release: ReleaseData,
    env: Environment,
    /// The environment before, and what it runs.
    before: Option<(Environment, Option<Current>)>,
    quarantined: Option<BadRelease>,
    current: Option<Current>,
    /// What the environment runs, when its commit descends from the release's.
    newer: Option<Newer>,
    trigger: Trigger,
    now: DateTime<Utc>,
}

impl Given {
    /// An automatic move of a tested release into an empty staging on a Wednesday.
    fn staging() -> Self {
        Self {
            release: release(RELEASE),
            env: environment("staging"),
            before: None,
            quarantined: None,
            current: None,
            newer: None,
            trigger: Trigger::Auto,
            now: wednesday(),
        }
    }

    /// An automatic move into production; the release has run healthy in staging for an hour.
    fn production() -> Self {
        let now = wednesday();
        Self {
            env: environment("production"),
            before: Some((
                environment("staging"),
                Some(running(RELEASE, "staging-promotion", Some(now - minutes(60)))),
            )),
            now,
            ..Self::staging()
        }
    }

    fn with(mut self, change: impl FnOnce(&mut Self)) -> Self {
        change(&mut self);
        self
    }

    /// What staging runs, healthy since `minutes_ago` (or not healthy).
    fn staging_runs(self, release: &str, minutes_ago: Option<i64>) -> Self {
        self.with(|g| {
            let since = minutes_ago.map(|m| g.now - minutes(m));
            g.before = Some((
                environment("staging"),
                Some(running(release, "staging-promotion", since)),
            ));
        })
    }

    fn facts(&self) -> Facts<'_> {
        Facts {
            quarantined: self.quarantined.as_ref(),
            current: self.current.as_ref(),
            previous: self.previous(),
            newer_running: self.newer.as_ref(),
        }
    }

    fn previous(&self) -> Option<Previous<'_>> {
        self.before.as_ref().map(|(env, current)| Previous {
            env,
            current: current.as_ref(),
        })
    }

    fn decide(&self) -> Decision {
        let request = Move {
            release: &self.release,
            env: &self.env,
            trigger: &self.trigger,
            promotion: PROMOTION,
        };
        promotion(request, &self.facts(), self.now)
    }
}

#[test]
fn every_gate_of_a_move_decides_as_the_policy_says() {
    let weekend = |g: &mut Given| {
        g.env.freeze = environment("production").freeze;
        g.now = saturday();
    };
    let rows: Vec<(&str, Given, Decision)> = vec![
        (
            "auto: an automatic move into an auto environment promotes at once",
            Given::staging(),
            promote(AUTOMATION),
        ),
        (
            "manual: an automatic move into a manual environment asks for approvals",
            Given::production(),
            Decision::AskApproval {
                requested_by: AUTOMATION.to_owned(),
                break_glass: false,
            },
        ),
        (
            "manual: the approval is asked before soak and freeze are looked at",
            Given::production()
                .staging_runs(RELEASE, None)
                .with(|g| g.now = saturday()),
            Decision::AskApproval {
                requested_by: AUTOMATION.to_owned(),
                break_glass: false,
            },
        ),
        (
            "manual: an operator's promote into a manual environment asks in their name",
            Given::production().with(|g| g.trigger = operator()),
            Decision::AskApproval {
                requested_by: "alice".to_owned(),
                break_glass: false,
            },
        ),
        (
            "manual: an operator's break-glass promote into a manual environment asks for a break-glass approval",
            Given::production().with(|g| g.trigger = operator_breaking_glass()),
            Decision::AskApproval {
                requested_by: "alice".to_owned(),
                break_glass: true,
            },
        ),
        (
            "break-glass: an operator's break-glass promote into an auto environment promotes, skipping the evidence gate",
            Given::staging().with(|g| g.trigger = operator_breaking_glass()),
            Decision::Promote(Promotion {
                actor: "alice".to_owned(),
                break_glass: true,
                frozen: false,
                pinned: None,
            }),
        ),
        (
            "quorum: an approved move into a manual environment promotes in the request's name",
            Given::production().with(|g| g.trigger = approved(false)),
            promote("approval A1"),
        ),
        (
            "operator: an operator's promote into an auto environment promotes in their name",
            Given::staging().with(|g| g.trigger = operator()),
            promote("alice"),
        ),
        (
            "quarantine: a quarantined release is held",
            Given::staging().with(|g| g.quarantined = Some(quarantine())),
            Decision::Hold(Hold::Quarantined(quarantine())),
        ),
        (
            "quarantine: an approval does not let a quarantined release in",
            Given::production().with(|g| {
                g.trigger = approved(false);
                g.quarantined = Some(quarantine());
            }),
            Decision::Hold(Hold::Quarantined(quarantine())),
        ),
        (
            "untested: a release without tests is held from an environment that requires them",
            Given::staging().with(|g| g.release.tested = false),
            Decision::Hold(Hold::Untested),
        ),
        (
            "untested: a release without tests enters an environment that allows them",
            Given::staging().with(|g| {
                g.release.tested = false;
                g.env.allow_untested = true;
            }),
            promote(AUTOMATION),
        ),
        (
            "already there: an automatic move finds the release running from another promotion",
            Given::staging().with(|g| g.current = Some(running(RELEASE, "promotion-0", None))),
            Decision::AlreadyThere,
        ),
        (
            "already there: a retry of the same promotion goes on and finds its commit",
            Given::staging().with(|g| g.current = Some(running(RELEASE, PROMOTION, None))),
            promote(AUTOMATION),
        ),
        (
            "already there: an operator may promote a running release again",
            Given::staging().with(|g| {
                g.trigger = operator();
                g.current = Some(running(RELEASE, "promotion-0", None));
            }),
            promote("alice"),
        ),
        (
            "pin: an automatic move into a pinned environment is held",
            Given::staging().with(|g| {
                g.current = Some(Current {
                    pinned: Some(pin()),
                    ..running("release-old", "promotion-0", None)
                });
            }),
            Decision::Hold(Hold::Pinned(pin())),
        ),
        (
            "history: an automatic move of an older commit than the environment runs is held",
            Given::staging().with(|g| {
                g.current = Some(running("release-newer", "promotion-0", None));
                g.newer = Some(newer());
            }),
            Decision::Hold(Hold::OlderThanRunning(newer())),
        ),
        (
            "history: an operator may move an environment back to an older commit",
            Given::staging().with(|g| {
                g.trigger = operator();
                g.current = Some(running("release-newer", "promotion-0", None));
                g.newer = Some(newer());
            }),
            promote("alice"),
        ),
        (
            "pin: an approved move enters a pinned environment and keeps the pin",
            Given::production().with(|g| {
                g.trigger = approved(false);
                g.current = Some(Current {
                    pinned: Some(pin()),
                    ..running("release-old", "promotion-0", None)
                });
            }),
            Decision::Promote(Promotion {
                actor: "approval A1".to_owned(),
                break_glass: false,
                frozen: false,
                pinned: Some(pin()),
            }),
        ),
        (
            "soak: the move waits until the release has run healthy before for the soak",
            Given::production()
                .staging_runs(RELEASE, Some(1))
                .with(|g| g.trigger = approved(false)),
            Decision::Wait(Wait::Soak {
                previous: "staging".to_owned(),
                until: wednesday() + minutes(9),
            }),
        ),
        (
            "soak: the move goes on the moment the soak is over",
            Given::production()
                .staging_runs(RELEASE, Some(10))
                .with(|g| g.trigger = approved(false)),
            promote("approval A1"),
        ),
        (
            "soak: an automatic move into an auto environment waits too",
            Given::production().staging_runs(RELEASE, Some(1)).with(|g| {
                g.env.policy = PromotionPolicy::Auto;
            }),
            Decision::Wait(Wait::Soak {
                previous: "staging".to_owned(),
                until: wednesday() + minutes(9),
            }),
        ),
        (
            "previous-environment health: the environment before runs another release",
            Given::production()
                .staging_runs("release-old", Some(60))
                .with(|g| g.trigger = approved(false)),
            Decision::Hold(Hold::NotHealthyBefore {
                previous: "staging".to_owned(),
            }),
        ),
        (
            "previous-environment health: the release runs before but is not healthy yet",
            Given::production()
                .staging_runs(RELEASE, None)
                .with(|g| g.trigger = approved(false)),
            Decision::Hold(Hold::NotHealthyBefore {
                previous: "staging".to_owned(),
            }),
        ),
        (
            "previous-environment health: the environment before runs nothing",
            Given::production().with(|g| {
                g.trigger = approved(false);
                g.before = Some((environment("staging"), None));
            }),
            Decision::Hold(Hold::NotHealthyBefore {
                previous: "staging".to_owned(),
            }),
        ),
        (
            "previous-environment health: without a soak the environment before is not asked",
            Given::production().staging_runs("release-old", None).with(|g| {
                g.trigger = approved(false);
                g.env.soak = std::time::Duration::ZERO;
            }),
            promote("approval A1"),
        ),
        (
            "freeze: an automatic move inside a window waits for its end",
            Given::staging().with(weekend),
            Decision::Wait(Wait::Freeze {
                window: "weekend".to_owned(),
                until: monday_morning(),
            }),
        ),
        (
            "freeze: outside every window the move goes on",
            Given::staging().with(|g| g.env.freeze = environment("production").freeze),
            promote(AUTOMATION),
        ),
        (
            "freeze: an operator's promote inside a window is refused (with the break-glass hint)",
            Given::staging().with(weekend).with(|g| g.trigger = operator()),
            Decision::Frozen {
                window: "weekend".to_owned(),
                until: monday_morning(),
            },
        ),
        (
            "freeze: an operator's promote into a frozen manual environment is refused before asking",
            Given::production().with(|g| {
                g.trigger = operator();
                g.now = saturday();
            }),
            Decision::Frozen {
                window: "weekend".to_owned(),
                until: monday_morning(),
            },
        ),
        (
            "freeze: an approved (not break-glass) move waits for the window's end",
            Given::production()
                .with(|g| {
                    g.trigger = approved(false);
                    g.now = saturday();
                })
                .staging_runs(RELEASE, Some(60)),
            Decision::Wait(Wait::Freeze {
                window: "weekend".to_owned(),
                until: monday_morning(),
            }),
        ),
        (
            "soak before freeze: a move that must soak waits for the soak first",
            Given::production()
                .with(|g| {
                    g.trigger = approved(false);
                    g.now = saturday();
                })
                .staging_runs(RELEASE, Some(1)),
            Decision::Wait(Wait::Soak {
                previous: "staging".to_owned(),
                until: saturday() + minutes(9),
            }),
        ),
        (
            "break-glass: an approved break-glass promotion ignores the window and says so",
            Given::production()
                .with(|g| {
                    g.trigger = approved(true);
                    g.now = saturday();
                })
                .staging_runs(RELEASE, Some(60)),
            Decision::Promote(Promotion {
                actor: "approval A1".to_owned(),
                break_glass: true,
                frozen: true,
                pinned: None,
            }),
        ),
        (
            "break-glass: it still soaks",
            Given::production()
                .with(|g| {
                    g.trigger = approved(true);
                    g.now = saturday();
                })
                .staging_runs(RELEASE, Some(1)),
            Decision::Wait(Wait::Soak {
                previous: "staging".to_owned(),
                until: saturday() + minutes(9),
            }),
        ),
    ];
    for (rule, given, expected) in rows {
        assert_eq!(given.decide(), expected, "{rule}");
    }
}

#[test]
fn holds_and_waits_read_as_the_operator_is_told() {
    let release = release(RELEASE);
    let rows = [
        (
            Hold::Quarantined(quarantine()),
            "release release-new is quarantined (rollout in `staging` failed, by baton-promoter): it is never promoted again",
        ),
        (
            Hold::Untested,
            "commit 0123456789ab declares no test steps and `production` requires tested releases (set `allow_untested: true` to allow them)",
        ),
        (
            Hold::Pinned(pin()),
            "`production` is pinned by carol (incident 42); `baton unpin acme/shop production` lets releases in again",
        ),
        (
            Hold::NotHealthyBefore {
                previous: "staging".to_owned(),
            },
            "release release-new is not running healthy in `staging`, so it cannot soak there before `production`",
        ),
    ];
    for (hold, expected) in rows {
        assert_eq!(hold.message(&release, "production"), expected);
    }
    let soak = Wait::Soak {
        previous: "staging".to_owned(),
        until: monday_morning(),
    };
    assert_eq!(
        soak.describe("production"),
        "soak in `staging` until 2025-03-03 08:00:00 UTC"
    );
    assert_eq!(soak.until(), monday_morning());
    let freeze = Wait::Freeze {
        window: "weekend".to_owned(),
        until: monday_morning(),
    };
    assert_eq!(
        freeze.describe("production"),
        "freeze window weekend of `production` until 2025-03-03 08:00:00 UTC"
    );
    let promotion = |break_glass, frozen| Promotion {
        actor: "approval A1".to_owned(),
        break_glass,
        frozen,
        pinned: None,
    };
    assert_eq!(
        promotion(true, true).reason().as_deref(),
        Some("break-glass promotion during a freeze window")
    );
    assert_eq!(
        promotion(true, false).reason().as_deref(),
        Some("break-glass promotion: the evidence gate is skipped")
    );
    assert_eq!(promotion(false, false).reason(), None);
}

#[test]
fn an_operators_promote_must_be_healthy_before_and_asks_break_glass_in_a_freeze() {
    let rows: Vec<(&str, Given, bool, OperatorGate)> = vec![
        (
            "quarantine: a quarantined release is refused",
            Given::production().with(|g| g.quarantined = Some(quarantine())),
            false,
            OperatorGate::Refuse(OperatorRefusal::Quarantined(quarantine())),
        ),
        (
            "previous-environment health: another release runs before",
            Given::production().staging_runs("release-old", Some(60)),
            false,
            OperatorGate::Refuse(OperatorRefusal::NotHealthyBefore {
                previous: "staging".to_owned(),
            }),
        ),
        (
            "previous-environment health: the release runs before but is not healthy",
            Given::production().staging_runs(RELEASE, None),
            false,
            OperatorGate::Refuse(OperatorRefusal::NotHealthyBefore {
                previous: "staging".to_owned(),
            }),
        ),
        (
            "previous-environment health: checked even without a soak",
            Given::production()
                .staging_runs(RELEASE, None)
                .with(|g| g.env.soak = std::time::Duration::ZERO),
            false,
            OperatorGate::Refuse(OperatorRefusal::NotHealthyBefore {
                previous: "staging".to_owned(),
            }),
        ),
        (
            "healthy before: on to the gates",
            Given::production(),
            false,
            OperatorGate::Gates,
        ),
        (
            "the first environment has nothing before it",
            Given::staging(),
            false,
            OperatorGate::Gates,
        ),
        (
            "break-glass: during a freeze it asks for approvals",
            Given::production().with(|g| g.now = saturday()),
            true,
            OperatorGate::BreakGlass,
        ),
        (
            "freeze without break-glass: the gates refuse it",
            Given::production().with(|g| g.now = saturday()),
            false,
            OperatorGate::Gates,
        ),
        (
            "break-glass outside a freeze: an ordinary promote",
            Given::production(),
            true,
            OperatorGate::Gates,
        ),
    ];
    for (rule, given, break_glass, expected) in rows {
        let decided = operator_promote(
            &given.release,
            &given.env,
            given.quarantined.as_ref(),
            given.previous(),
            break_glass,
            given.now,
        );
        assert_eq!(decided, expected, "{rule}");
    }
    let release = release(RELEASE);
    assert_eq!(
        OperatorRefusal::Quarantined(quarantine()).message(&release, "production"),
        "release release-new is quarantined (rollout in `staging` failed); it is never promoted again"
    );
    assert_eq!(
        OperatorRefusal::NotHealthyBefore {
            previous: "staging".to_owned()
        }
        .message(&release, "production"),
        "release release-new is not running healthy in `staging`, the environment before `production`: promote it there first"
    );
}

/// An approval request of `kind` for `release` into production with `votes`, closed as
/// `closed` (status) if given.
fn request(release_id: &str, kind: ApprovalKind, votes: &[(&str, &str)], closed: Option<&str>) -> PendingApproval {
    PendingApproval {
        data: ApprovalData {
            approval: format!("approval-{release_id}"),
            kind,
            app: "acme/shop".to_owned(),
            environment: "production".to_owned(),
            release: release(release_id),
            current_release: None,
            current_image: None,
            required: 2,
            approvers: vec!["alice".to_owned(), "bob".to_owned()],
            votes: votes
                .iter()
                .map(|(actor, decision)| ApprovalVote {
                    actor: (*actor).to_owned(),
                    decision: (*decision).to_owned(),
                    at: wednesday() - minutes(5),
                    comment: None,
                })
                .collect(),
            expires_at: wednesday() + minutes(60),
            requested_by: AUTOMATION.to_owned(),
            reason: None,
        },
        promotion: "promote-after-approval".to_owned(),
        cause: "cause".to_owned(),
        closed: closed.map(|status| Closure {
            status: status.to_owned(),
            reason: format!("it was {status}"),
            at: wednesday() - minutes(1),
        }),
        promotion_pending: false,
        trace: None,
    }
}

#[test]
fn an_approval_request_is_opened_once_and_not_asked_again_after_a_no() {
    let promotion = ApprovalKind::Promotion;
    let rows: Vec<(&str, Option<PendingApproval>, Asking)> = vec![
        ("no request yet: open one", None, Asking::Open),
        (
            "the release's request is open: that one",
            Some(request(RELEASE, promotion, &[], None)),
            Asking::AlreadyOpen(format!("approval-{RELEASE}")),
        ),
        (
            "declined: not asked again",
            Some(request(RELEASE, promotion, &[], Some("rejected"))),
            Asking::NotAgain(
                request(RELEASE, promotion, &[], Some("rejected"))
                    .closed
                    .expect("closed"),
            ),
        ),
        (
            "expired: not asked again",
            Some(request(RELEASE, promotion, &[], Some("expired"))),
            Asking::NotAgain(
                request(RELEASE, promotion, &[], Some("expired"))
                    .closed
                    .expect("closed"),
            ),
        ),
        (
            "approved before: asked again",
            Some(request(RELEASE, promotion, &[], Some("approved"))),
            Asking::Open,
        ),
        (
            "an older release's open request: a new one supersedes it",
            Some(request("release-old", promotion, &[], None)),
            Asking::Open,
        ),
        (
            "a break-glass request is not the promotion's",
            Some(request(RELEASE, ApprovalKind::BreakGlass, &[], Some("rejected"))),
            Asking::Open,
        ),
    ];
    for (rule, existing, expected) in rows {
        assert_eq!(
            approval_request(existing.as_ref(), &release(RELEASE), promotion),
            expected,
            "{rule}"
        );
    }
}

/// One vote on a request, and what it should come to: the tally and the closure (status,
/// reason), or the refusal.
struct VoteRow<'a> {
    rule: &'a str,
    policy: &'a EnvironmentsFile,
    request: PendingApproval,
    voter: &'a str,
    approve: bool,
    comment: Option<&'a str>,
    expected: Result<(Tally, Closing<'a>), VoteRefusal>,
}

/// How a vote closes the request: status and reason (`None`: it stays open).
type Closing<'a> = Option<(&'a str, &'a str)>;

#[test]
fn every_vote_rule_decides_as_the_policy_says() {
    let standard = policy();
    let mut author_may_approve = policy();
    author_may_approve.environments[1].approvals.author_may_approve = true;
    let mut without_production = policy();
    without_production.environments.truncate(1);
    let open = |votes: &[(&str, &str)]| request(RELEASE, ApprovalKind::Promotion, votes, None);
    let one_of_two = Tally::Open {
        approvals: 1,
        required: 2,
    };
    let expired = request(RELEASE, ApprovalKind::Promotion, &[], Some("expired"));
    let rows = vec![
        VoteRow {
            rule: "approver: someone not allowed to approve is refused",
            policy: &standard,
            request: open(&[]),
            voter: "erin",
            approve: true,
            comment: None,
            expected: Err(VoteRefusal::NotAnApprover {
                approvers: vec!["alice".into(), "bob".into(), "carol".into(), "dana".into()],
            }),
        },
        VoteRow {
            rule: "approver: a member of an allowed group counts",
            policy: &standard,
            request: open(&[]),
            voter: "carol",
            approve: true,
            comment: None,
            expected: Ok((one_of_two.clone(), None)),
        },
        VoteRow {
            rule: "self-approval: the author of the commit (by their listed e-mail) may not approve it",
            policy: &standard,
            request: open(&[]),
            voter: "dana",
            approve: true,
            comment: None,
            expected: Err(VoteRefusal::OwnChange),
        },
        VoteRow {
            rule: "self-approval: allowed where author_may_approve",
            policy: &author_may_approve,
            request: open(&[]),
            voter: "dana",
            approve: true,
            comment: None,
            expected: Ok((one_of_two.clone(), None)),
        },
        VoteRow {
            rule: "one vote each: a second vote by the same person is refused",
            policy: &standard,
            request: open(&[("alice", "approved")]),
            voter: "alice",
            approve: true,
            comment: None,
            expected: Err(VoteRefusal::AlreadyVoted {
                decision: "approved".into(),
            }),
        },
        VoteRow {
            rule: "quorum: the second distinct approval closes the request as approved",
            policy: &standard,
            request: open(&[("alice", "approved")]),
            voter: "bob",
            approve: true,
            comment: None,
            expected: Ok((Tally::Approved, Some(("approved", "2 of 2 approvals")))),
        },
        VoteRow {
            rule: "quorum: a decline does not count toward it",
            policy: &standard,
            request: open(&[("alice", "rejected")]),
            voter: "bob",
            approve: true,
            comment: None,
            expected: Ok((one_of_two.clone(), None)),
        },
        VoteRow {
            rule: "decline: closes the request as rejected, with the reason",
            policy: &standard,
            request: open(&[("alice", "approved")]),
            voter: "bob",
            approve: false,
            comment: Some("not during the sale"),
            expected: Ok((
                Tally::Declined,
                Some(("rejected", "declined by bob: not during the sale")),
            )),
        },
        VoteRow {
            rule: "decline: without a reason",
            policy: &standard,
            request: open(&[]),
            voter: "bob",
            approve: false,
            comment: None,
            expected: Ok((Tally::Declined, Some(("rejected", "declined by bob")))),
        },
        VoteRow {
            rule: "closed: a vote on a closed (here expired) request is refused",
            policy: &standard,
            request: expired.clone(),
            voter: "alice",
            approve: true,
            comment: None,
            expected: Err(VoteRefusal::Closed(expired.closed.clone().expect("closed"))),
        },
        VoteRow {
            rule: "policy: a request whose environment left the policy is refused",
            policy: &without_production,
            request: open(&[]),
            voter: "alice",
            approve: true,
            comment: None,
            expected: Err(VoteRefusal::UnknownEnvironment(UnknownEnvironment {
                name: "production".into(),
                known: vec!["staging".into()],
            })),
        },
    ];
    let now = wednesday();
    for row in rows {
        let rule = row.rule;
        let nobody = std::collections::BTreeSet::new();
        let ballot = Ballot {
            actor: row.voter,
            approve: row.approve,
            comment: row.comment,
            involved: &nobody,
        };
        let voted = vote(row.policy, &row.request, &release(RELEASE), ballot, now);
        let got = voted.clone().map(|v| {
            let closure = v.request.closed.map(|c| (c.status, c.reason));
            (v.tally, closure)
        });
        let expected = row.expected.map(|(tally, closure)| {
            let closure = closure.map(|(status, reason)| (status.to_owned(), reason.to_owned()));
            (tally, closure)
        });
        assert_eq!(got, expected, "{rule}");
        if let Ok(voted) = voted {
            let last = voted.request.data.votes.last().expect("the vote is recorded");
            let decision = if row.approve { "approved" } else { "rejected" };
            assert_eq!(
                (
                    last.actor.as_str(),
                    last.decision.as_str(),
                    last.at,
                    last.comment.as_deref()
                ),
                (row.voter, decision, now, row.comment),
                "{rule}: the vote as recorded"
            );
            assert_eq!(
                voted.request.data.votes.len(),
                row.request.data.votes.len() + 1,
                "{rule}"
            );
            assert!(voted.request.closed.is_none_or(|c| c.at == now), "{rule}");
        }
    }
}

#[test]
fn vote_refusals_tell_the_voter_why() {
    let release = release(RELEASE);
    let rows = [
        (
            VoteRefusal::NotAnApprover {
                approvers: vec!["alice".into(), "bob".into()],
            },
            "erin may not approve promotions into `production`; environments.yaml allows alice, bob",
        ),
        (
            VoteRefusal::OwnChange,
            "erin authored or pushed a commit of release release-new (its author, its changelog's authors and its pusher, as people.yaml maps their e-mails and logins) and may not approve their own change into `production` (approvals.author_may_approve is false)",
        ),
        (
            VoteRefusal::OwnBreakGlass,
            "erin asked for this break-glass promotion into `production` and may not approve it: someone else must",
        ),
        (
            VoteRefusal::AlreadyVoted {
                decision: "rejected".into(),
            },
            "erin already rejected this request",
        ),
        (
            VoteRefusal::Closed(Closure {
                status: "expired".into(),
                reason: "nobody decided".into(),
                at: wednesday(),
            }),
            "the approval request for release release-new into `production` is already closed (expired: nobody decided)",
        ),
        (
            VoteRefusal::UnknownEnvironment(UnknownEnvironment::in_policy(&policy(), "prod")),
            "unknown environment `prod`; environments.yaml defines staging, production",
        ),
    ];
    for (refusal, expected) in rows {
        assert_eq!(refusal.message("erin", &release, "production"), expected);
    }
}

#[test]
fn expiry_closes_an_open_request_at_its_time_and_no_sooner() {
    let now = wednesday();
    assert_eq!(
        expires_at(&environment("production"), now),
        now + chrono::Duration::hours(24),
        "expires_after from the moment the request opens"
    );
    let open = request(RELEASE, ApprovalKind::Promotion, &[("alice", "approved")], None);
    let due_at = open.data.expires_at;
    let rows = [
        (
            "a second before its expiry: open",
            &open,
            due_at - chrono::Duration::seconds(1),
            false,
        ),
        ("at its expiry: expired", &open, due_at, true),
        ("after its expiry: expired", &open, due_at + minutes(1), true),
    ];
    for (rule, pending, now, expected) in rows {
        assert_eq!(expired(pending, now), expected, "{rule}");
    }
    let closed = request(RELEASE, ApprovalKind::Promotion, &[], Some("approved"));
    assert!(
        !expired(&closed, due_at + minutes(1)),
        "a closed request does not expire"
    );
    assert_eq!(
        expiry_reason(&open),
        "nobody decided before 2025-03-05 13:00:00 UTC (1 of 2 approvals)"
    );
}

#[test]
fn a_scheduled_promotion_is_due_at_its_time_and_no_sooner() {
    let scheduled = Scheduled {
        release: RELEASE.to_owned(),
        environment: "production".to_owned(),
        promotion: PROMOTION.to_owned(),
        not_before: monday_morning(),
        trigger: Trigger::Auto,
        cause: "cause".to_owned(),
        waiting_for: "freeze window weekend of `production` until 2025-03-03 08:00:00 UTC".to_owned(),
        trace: None,
    };
    assert!(!due(&scheduled, monday_morning() - chrono::Duration::seconds(1)));
    assert!(due(&scheduled, monday_morning()));
    assert!(due(&scheduled, monday_morning() + minutes(1)));
}
