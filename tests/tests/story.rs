//! The end-to-end suite (`tests/tests/story.rs`): the demo's story ([`baton_demo::story`], the
//! steps `just demo` plays) as assertions, on the same local stack (real NATS, registry,
//! Kubernetes control plane with simulated nodes, git repos, every service):
//!
//! - a push becomes a release that reaches staging automatically and production through a signed
//!   chat approval (the bot signs it with its own key, for alice, whose Slack id people.yaml
//!   lists) and production's evidence gate: the builder's signature and provenance and the
//!   tester's passing verdict, verified with the config repo's keys and recorded in the config
//!   commit; a failing test stops its release before staging; a crash-looping release is rolled
//!   back to the previous digest;
//! - an image pushed by hand to the same registry, announced as tested, runs in staging (which
//!   asks for no evidence) when alice promotes it there, and is held before production with a
//!   reason naming the missing signature before anyone is asked to approve it: production keeps
//!   the signed release;
//! - every release's log is a complete, ordered chain: one chainId from the push on, every event
//!   but the push and the records of people's commands linked to the event that caused it, and
//!   each of them valid against the official schema of its type (CDEvents 0.5.1, the 0.6 draft
//!   for approvals, Baton's own);
//! - the cluster runs the right digests, and the config repo's history is the releases'.

use std::collections::HashMap;

use anyhow::{Context as _, Result};
use baton_demo::{APP, CHAT_BOT, Stack, git, in_env, of, story};
use baton_kit::evidence::{SLSA_PROVENANCE_V1, TEST_RESULT_V0_1};
use baton_kit::log::Record;
use baton_schemas::EventType;
use baton_schemas::release::{PromotionAction, PromotionData, RELEASE_FILE, ReleaseData, ReleaseFile};
use baton_schemas::subjects::sanitize_token;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use serde_json::json;

async fn image_in(stack: &Stack, namespace: &str) -> Result<String> {
    let deployments: Api<Deployment> = Api::namespaced(stack.cluster.client()?, namespace);
    let spec = deployments
        .get("shop")
        .await?
        .spec
        .and_then(|s| s.template.spec)
        .context("a pod template")?;
    Ok(spec.containers[0].image.clone().unwrap_or_default())
}

/// Step 4 of the story ([`story::hand_pushed_image_held`]): the image pushed by hand into the
/// app's repository of the same registry (`signed`'s), announced as tested, runs in staging when
/// alice promotes it there and is held before production before anyone is asked to approve it,
/// production keeping `signed`. Returns its release.
async fn hand_pushed_image_is_held(stack: &mut Stack, signed: &ReleaseData) -> Result<String> {
    let reference = &signed.image.reference;
    let by_hand = story::hand_pushed_image_held(stack, signed).await?;
    // alice's promotion into staging ran it there: staging asks for no evidence.
    stack
        .wait_for(
            "the hand-pushed image in staging",
            in_env(
                &by_hand.release,
                "staging",
                &[EventType::ServiceDeployed, EventType::ServiceUpgraded],
            ),
        )
        .await?;
    assert_eq!(image_in(stack, "shop-staging").await?, by_hand.image);
    // Production's gate holds it before anyone is asked: nothing signed the image, so alice has
    // nothing to approve.
    let reason = &by_hand.held;
    assert!(
        reason.contains("`production` requires evidence") && reason.contains("`signature`"),
        "{reason}"
    );
    let answer = &by_hand.answer;
    assert!(answer.contains("no approval request"), "nothing to approve: {answer}");
    assert!(
        !stack
            .events()
            .iter()
            .any(|r| r.chain() == Some(by_hand.release.as_str()) && r.event_type() == Some(EventType::ApprovalCreated)),
        "nobody was asked to approve the hand-pushed image"
    );
    assert_eq!(
        image_in(stack, "shop-production").await?,
        *reference,
        "production keeps the signed release"
    );

    Ok(by_hand.release)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_release_story_end_to_end() -> Result<()> {
    let mut stack = Box::pin(Stack::start(false)).await?;

    // 1. Push → staging automatically → production by a signed chat approval.
    let story::Approved {
        release: first,
        data: signed,
    } = story::approved_into_production(&mut stack).await?;
    // The bot signs it with its own key and names alice's Slack user: the promoter accepts it
    // for alice because people.yaml lets the bot speak for her through that id.
    let accepted = stack
        .wait_for("the approval's record", of(&first, EventType::CommandAccepted))
        .await?;
    let proven = &accepted.event.subject.content;
    assert_eq!(
        (&proven["verb"], &proven["person"], &proven["channel"]),
        (&json!("approve"), &json!("alice"), &json!(CHAT_BOT)),
        "{proven}"
    );
    let vote = stack
        .wait_for("alice's vote", of(&first, EventType::ApprovalUpdated))
        .await?;
    assert_eq!(vote.event.subject.content["responder"], "urn:baton:user:alice");

    // 2. A failing test stops the release before staging (the step checks the verdict).
    let second = story::failing_test_stops(&mut stack).await?;

    // 3. A crash-looping release is rolled back to the previous digest.
    let third = story::crash_loop_rolled_back(&mut stack, &first).await?;

    // The cluster runs the first release's digest in both environments.
    let reference = signed.image.reference.clone();
    assert_eq!(image_in(&stack, "shop-production").await?, reference);
    assert_eq!(
        image_in(&stack, "shop-staging").await?,
        reference,
        "staging rolled back to the previous digest"
    );

    // 4. An image pushed by hand, promoted by alice: held before production.
    let by_hand = Box::pin(hand_pushed_image_is_held(&mut stack, &signed)).await?;

    let events = stack.events();
    // Nothing about the second release after its test verdict.
    let second_types: Vec<EventType> = events
        .iter()
        .filter(|r| r.chain() == Some(second.as_str()))
        .filter_map(Record::event_type)
        .collect();
    assert_eq!(
        second_types.last(),
        Some(&EventType::TestSuiteRunFinished),
        "{second_types:?}"
    );
    assert!(!second_types.contains(&EventType::ReleaseCreated));

    // Every event valid against its schema; every release a linked, ordered chain.
    let by_id: HashMap<&str, &Record> = events.iter().map(|r| (r.event.context.id.as_str(), r)).collect();
    for record in &events {
        let ty = record.event_type().context("a catalog type")?;
        baton_schemas::validate_event(ty, &serde_json::to_value(&record.event)?)
            .with_context(|| format!("{ty} {}", record.event.context.id))?;
        if ty == EventType::ChangeMerged {
            assert!(record.event.context.links.is_none(), "a push starts its chain");
            continue;
        }
        let by_alice = ty == EventType::EnvironmentModified
            && record.event.custom_data.as_ref().is_some_and(|d| d["actor"] == "alice");
        if matches!(ty, EventType::CommandAccepted | EventType::CommandRejected) || by_alice {
            // A person's command, or the promotion it made: caused by no event.
            continue;
        }
        if ty == EventType::TestSuiteRunFinished && record.chain() == Some(by_hand.as_str()) {
            // Announced by hand: no push, no build.
            continue;
        }
        let links = record.event.context.links.clone().unwrap_or_default();
        assert!(!links.is_empty(), "{ty} links to its cause");
        for link in links {
            let cause = link.from.context("a PATH link")?.context_id;
            let caused_by = by_id
                .get(cause.as_str())
                .with_context(|| format!("{ty}: its cause {cause} is in the log"))?;
            assert!(caused_by.time() <= record.time(), "{ty} comes after its cause");
        }
    }
    for release in [&first, &second, &third] {
        let chain: Vec<&Record> = events.iter().filter(|r| r.chain() == Some(release.as_str())).collect();
        assert_eq!(
            chain[0].event_type(),
            Some(EventType::ChangeMerged),
            "{release} starts with its push"
        );
        let kinds: Vec<EventType> = chain.iter().filter_map(|r| r.event_type()).collect();
        for step in [
            EventType::BuildQueued,
            EventType::BuildFinished,
            EventType::ArtifactPublished,
            EventType::ArtifactSigned,
            EventType::TestSuiteRunFinished,
        ] {
            assert!(kinds.contains(&step), "{release}: {step} in {kinds:?}");
        }
    }

    // The config repo's history is the promotions, one commit each, in order.
    let promotions: Vec<PromotionData> = events
        .iter()
        .filter(|r| r.event_type() == Some(EventType::EnvironmentModified))
        .map(|r| r.event.custom_data_as())
        .collect::<Result<_, _>>()?;
    let log = git(&stack.config_repo(), &["log", "--reverse", "--format=%H", "main"])?;
    let commits: Vec<&str> = log.lines().skip(1).collect();
    let announced: Vec<&str> = promotions.iter().map(|p| p.config_commit.as_str()).collect();
    assert_eq!(commits, announced, "one config commit per promotion, in order");
    let actions: Vec<(PromotionAction, &str)> = promotions.iter().map(|p| (p.action, p.environment.as_str())).collect();
    assert_eq!(
        actions,
        [
            (PromotionAction::Promote, "staging"),
            (PromotionAction::Promote, "production"),
            (PromotionAction::Promote, "staging"),
            (PromotionAction::Rollback, "staging"),
            (PromotionAction::Promote, "staging"),
        ]
    );

    // The production commit records the evidence its gate verified: the builder's signature
    // (its .sig manifest), the provenance and the tester's verdict (their .att manifest).
    let production = promotions
        .iter()
        .find(|p| p.environment == "production")
        .context("the production promotion")?;
    let file: ReleaseFile = yaml_serde::from_str(&git(
        &stack.config_repo(),
        &[
            "show",
            &format!(
                "{}:production/{}/{RELEASE_FILE}",
                production.config_commit,
                sanitize_token(APP)
            ),
        ],
    )?)?;
    let evidence = file.evidence.context("the release file records the evidence")?;
    let signature = evidence.signature.as_ref().context("the signature")?;
    assert_eq!(signature.key, "builder");
    let attested: Vec<(&str, &str)> = evidence
        .attestations
        .iter()
        .map(|a| (a.predicate_type.as_str(), a.key.as_str()))
        .collect();
    assert_eq!(
        attested,
        [(SLSA_PROVENANCE_V1, "builder"), (TEST_RESULT_V0_1, "tester")]
    );
    for manifest in std::iter::once(&signature.manifest).chain(evidence.attestations.iter().map(|a| &a.manifest)) {
        assert!(manifest.starts_with("sha256:"), "{manifest}");
    }
    assert_eq!(production.evidence.as_ref(), Some(&evidence));
    assert!(
        !promotions
            .iter()
            .any(|p| p.release.release == by_hand && p.environment == "production"),
        "the hand-pushed image never entered production"
    );
    stack.stop().await;
    Ok(())
}
