//! Baton's release story, one function per step, played on a [`Stack`]: `just demo` tells it
//! (narrated when the stack narrates), the end-to-end suite (`tests/tests/story.rs`) asserts on
//! what each step returns and leaves behind, and the browser suite (`tests/tests/web.rs`) reads
//! the result through the web UI. The steps run in this order, each on what the ones before left:
//!
//! 1. [`approved_into_production`]: a push to main (a signed webhook) is built, tested, promoted
//!    to staging automatically and rolled out; production waits for an approval, which arrives
//!    through the chat endpoint as a signed Slack request, and production rolls out;
//! 2. [`failing_test_stops`]: a commit whose test fails stops before staging;
//! 3. [`crash_loop_rolled_back`]: a commit whose pods crash-loop fails its rollout in staging,
//!    staging is rolled back automatically to the previous release's digest, and the release is
//!    quarantined (staging pinned);
//! 4. [`hand_pushed_image_held`]: an image pushed by hand to the same registry and announced as
//!    tested runs in staging when alice promotes it there (staging asks for no evidence), but
//!    production's evidence gate holds it before anyone is asked to approve it: nothing signed
//!    it.
//!
//! Each step waits for the events that end it and fails (naming what it waited for) when they do
//! not come, or when what the next steps rely on did not happen: the approval not accepted, the
//! test not failing, the promotion refused.

use anyhow::Result;
use baton_kit::log::Record;
use baton_schemas::EventType;
use baton_schemas::commands::{CommandRequest, Verb};
use baton_schemas::release::ReleaseData;

use crate::{DEPLOYMENT, Stack, in_env, of, say_if, write};

/// What step 1 leaves: a release running in production.
#[derive(Debug, Clone)]
pub struct Approved {
    /// The release, approved into production.
    pub release: String,
    /// What the release was created with: its image, signed by the builder, which later steps
    /// compare against and push beside.
    pub data: ReleaseData,
}

/// Step 1: a push to main reaches staging automatically and production through alice's approval
/// from chat (the bot signs it with its own key and names her Slack user).
///
/// # Errors
/// When an event does not come, or the chat endpoint does not say the release is approved.
pub async fn approved_into_production(stack: &mut Stack) -> Result<Approved> {
    say_if(
        stack.narrates(),
        "1. A push to main: build, sign, test, staging automatically; production waits for an approval and checks the evidence",
    );
    let release = stack.push("Say hello", stack.narrates()).await?;
    stack
        .wait_for(
            "the first release in staging",
            in_env(&release, "staging", &[EventType::ServiceDeployed]),
        )
        .await?;
    stack
        .wait_for("the approval request", of(&release, EventType::ApprovalCreated))
        .await?;
    say_if(
        stack.narrates(),
        "   alice approves from chat: /baton approve <release> production (a signed Slack request)",
    );
    let answer = stack.slash(&format!("approve {release} production")).await?;
    note!(stack.narrates(), "  chat answers: {answer}");
    anyhow::ensure!(
        answer.contains("approved"),
        "the chat approval was not accepted: {answer}"
    );
    stack
        .wait_for(
            "the first release in production",
            in_env(&release, "production", &[EventType::ServiceDeployed]),
        )
        .await?;
    let data = stack
        .wait_for("the first release", of(&release, EventType::ReleaseCreated))
        .await?
        .event
        .custom_data_as()?;
    Ok(Approved { release, data })
}

/// Step 2: a commit whose unit test fails; the release stops at its test verdict. Returns the
/// release.
///
/// # Errors
/// When the verdict does not come or is not a failure.
pub async fn failing_test_stops(stack: &mut Stack) -> Result<String> {
    say_if(
        stack.narrates(),
        "2. A commit whose test fails: it stops before staging",
    );
    write(&stack.shop().join("src/greeting.txt"), "goodbye from Baton\n")?;
    let release = stack
        .push("Say goodbye (breaks the unit test)", stack.narrates())
        .await?;
    let verdict = stack
        .wait_for("the failing test run", of(&release, EventType::TestSuiteRunFinished))
        .await?;
    let outcome = verdict.event.subject.content["outcome"].as_str().unwrap_or_default();
    note!(stack.narrates(), "  outcome: {outcome}; nothing is promoted");
    anyhow::ensure!(outcome == "failure", "the breaking commit's tests ended in {outcome:?}");
    Ok(release)
}

/// The app's Deployment with the annotation that makes the simulated nodes' pods crash-loop.
pub fn crashing_deployment() -> String {
    DEPLOYMENT.replace(
        "      labels: {app: shop}\n    spec:",
        "      labels: {app: shop}\n      annotations: {baton.dev/simulate: crashloop}\n    spec:",
    )
}

/// Step 3: a commit whose pods crash-loop; its rollout fails in staging, staging is rolled back
/// to `previous` (the release that ran there before) and the release is quarantined. Returns the
/// release.
///
/// # Errors
/// When the failed rollout, the rollback or the quarantine does not come.
pub async fn crash_loop_rolled_back(stack: &mut Stack, previous: &str) -> Result<String> {
    say_if(
        stack.narrates(),
        "3. A commit whose pods crash-loop: the rollout fails and staging is rolled back automatically",
    );
    let shop = stack.shop();
    write(&shop.join("src/greeting.txt"), "hello again from Baton\n")?;
    write(&shop.join("deploy/deployment.yaml"), &crashing_deployment())?;
    let release = stack.push("Crash on start", stack.narrates()).await?;
    stack
        .wait_for("the failed rollout", of(&release, EventType::DeploymentFailed))
        .await?;
    stack
        .wait_for("the rollback", of(previous, EventType::ServiceRolledBack))
        .await?;
    stack
        .wait_for("its quarantine", of(&release, EventType::ReleaseQuarantined))
        .await?;
    Ok(release)
}

/// What step 4 leaves: an image Baton did not build, in staging and held before production.
#[derive(Debug, Clone)]
pub struct HandPushed {
    /// The release the hand-pushed image became.
    pub release: String,
    /// The image, pinned by digest.
    pub image: String,
    /// Why production's gate holds it.
    pub held: String,
    /// What the chat endpoint answered alice's attempt to approve it into production.
    pub answer: String,
}

/// Whether `record` holds `release`'s promotion into `environment`.
fn held_in<'a>(release: &'a str, environment: &'a str) -> impl Fn(&Record) -> bool + 'a {
    move |r: &Record| {
        r.chain() == Some(release)
            && r.event_type() == Some(EventType::PromotionHeld)
            && r.event.subject.content["environment"] == environment
    }
}

/// Step 4: an image pushed by hand into the repository of `signed`'s image and announced as
/// tested becomes a release, held from staging by step 3's pin; alice promotes it into staging
/// by a signed command (staging asks for no evidence), and production's gate holds it before
/// anyone is asked to approve it; alice then tries to approve it from chat anyway.
///
/// # Errors
/// When the image cannot be pushed, the promoter refuses alice's promotion, or a held promotion
/// does not come.
pub async fn hand_pushed_image_held(stack: &mut Stack, signed: &ReleaseData) -> Result<HandPushed> {
    let narrate = stack.narrates();
    say_if(
        narrate,
        "4. An image pushed by hand to the registry, announced as tested: staging takes it, production's gate does not",
    );
    let (release, image) = stack.push_by_hand(signed, narrate).await?;
    stack
        .wait_for("the pinned staging", held_in(&release, "staging"))
        .await?;
    say_if(
        narrate,
        "   alice promotes it into staging: baton promote <release> staging (signed with her key)",
    );
    let promote = CommandRequest {
        release: Some(release.clone()),
        environment: Some("staging".into()),
        ..CommandRequest::default()
    };
    let promoted = stack.command(Verb::Promote, promote).await?;
    note!(narrate, "  the promoter answers: {}", promoted.message);
    anyhow::ensure!(promoted.ok, "the promoter refused alice's promotion: {promoted:?}");
    let held = stack
        .wait_for("production's gate", held_in(&release, "production"))
        .await?;
    say_if(
        narrate,
        "   production's gate verifies its evidence before asking anyone to approve it",
    );
    let held = held.event.subject.content["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    note!(narrate, "  held: {held}");
    say_if(narrate, "   alice tries to approve it from chat anyway");
    let answer = stack.slash(&format!("approve {release} production")).await?;
    note!(narrate, "  chat answers: {answer}");
    Ok(HandPushed {
        release,
        image,
        held,
        answer,
    })
}
