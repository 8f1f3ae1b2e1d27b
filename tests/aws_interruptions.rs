//! The interruption queue against moto's SQS, with messages in EventBridge's exact JSON: a spot
//! warning replaces the machine before it is lost, a state change shows in seconds, garbage and
//! other clusters' instances change nothing and are deleted, an empty queue costs one long poll
//! per wait, and an unreadable queue is reported without stopping launches.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
mod support;

use orb_operator::api::*;
use orb_operator::provider::Provider;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use support::aws::{Aws, aws_with};
use support::driver::{MemoryStatus, converge, ready, request};
use support::eventbridge::{send, spot_warning, state_change};

/// The harness with an interruption queue of the test's own (made in the test's region); its
/// poller refreshes only when asked (no interval comes round during a test), so whatever
/// changes in seconds was changed by a message.
async fn with_queue(test: &str) -> Option<(Aws, aws_sdk_sqs::Client, String)> {
    let moto = support::moto::server(test)?;
    let url = format!("{}/123456789012/{test}", moto.endpoint);
    let aws = aws_with(test, |s| {
        s.interruption_queue = Some(url.clone());
        s.poll_interval = "10m".into();
        s.steady_poll_interval = "10m".into();
    })
    .await?;
    let sqs = aws_sdk_sqs::Client::new(&support::moto::sdk(moto, aws.region).await);
    let made = sqs.create_queue().queue_name(test).send().await.unwrap();
    assert_eq!(made.queue_url(), Some(url.as_str()));
    Some((aws, sqs, url))
}

/// Messages still in the queue, visible or being read.
async fn left_in(sqs: &aws_sdk_sqs::Client, url: &str) -> i64 {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let out = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap();
    out.attributes().unwrap().values().map(|v| v.parse::<i64>().unwrap()).sum()
}

fn queue_count(aws: &Aws, kind: &str, outcome: &str) -> u64 {
    let prefix = format!(r#"orb_interruption_messages_total{{provider="default",kind="{kind}",outcome="{outcome}"}} "#);
    aws.metrics.render([]).lines().find_map(|l| l.strip_prefix(prefix.as_str())?.trim().parse().ok()).unwrap_or(0)
}

/// Waits (at most `secs`) for `check`.
async fn eventually<F: std::future::Future<Output = bool>>(secs: u64, what: &str, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(Instant::now() < deadline, "not within {secs} s: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn spot_template(aws: &Aws) -> MachineTemplate {
    let mut spec = aws.template(&[("m5.large", 1)]);
    spec.price_type = PriceType::Spot;
    spec.subnet_ids.truncate(1);
    ready(MachineTemplate::new("workers", spec))
}

fn ids(instances: &[aws_sdk_ec2::types::Instance]) -> BTreeSet<String> {
    instances.iter().filter_map(|i| i.instance_id().map(str::to_string)).collect()
}

#[tokio::test]
async fn a_spot_warning_launches_the_replacement_before_the_loss_and_a_state_change_shows_in_seconds() {
    let Some((aws, sqs, url)) = with_queue("interruption-warning").await else { return };
    let template = spot_template(&aws);
    let (mut mr, sink) = (request("warned", 3), MemoryStatus::default());
    let (status, error) = converge(&mut mr, &template, &aws.provider, &sink, 20).await;
    assert!(error.is_none() && status.phase == Some(Phase::Fulfilled), "{error:?} {status:?}");
    let first = ids(&aws.live_of(&mr).await);
    assert_eq!(first.len(), 3);
    let victim = first.iter().next().unwrap().clone();

    // The warning: the request is woken, and its next passes launch one replacement.
    let mut changes = aws.changes();
    send(&sqs, &url, &spot_warning(&victim, aws.region)).await;
    support::aws::changed(&mut changes, &mr).await;
    let (status, error) = converge(&mut mr, &template, &aws.provider, &sink, 20).await;
    assert!(error.is_none(), "{error:?}");
    let live = ids(&aws.live_of(&mr).await);
    assert_eq!(live.len(), 4, "exactly capacity + 1 at the peak: {live:?}");
    assert!(live.contains(&victim), "the warned machine is left to run out its two minutes");
    let warned = status.machines.iter().find(|m| m.instance_id == victim).unwrap();
    let notice = warned.notice.as_ref().expect("the status shows the notice");
    assert_eq!((notice.kind, notice.replaced), (NoticeKind::SpotInterruption, true));
    let seconds_left = notice.deadline.as_ref().unwrap().0.duration_since(jiff::Timestamp::now()).as_secs();
    assert!((100..=120).contains(&seconds_left), "two minutes from the warning: {seconds_left} s left");
    assert_eq!((status.phase, status.fulfilled_capacity), (Some(Phase::Fulfilled), 3), "{status:?}");
    assert_eq!(queue_count(&aws, "spot_interruption", "applied"), 1);

    // EC2 takes it; its state change is seen in seconds (the poller's intervals are minutes).
    aws.ec2.terminate_instances().instance_ids(&victim).send().await.unwrap();
    let mut changes = aws.changes();
    let told = Instant::now();
    send(&sqs, &url, &state_change(&victim, aws.region, "shutting-down")).await;
    support::aws::changed(&mut changes, &mr).await;
    let (status, _) = converge(&mut mr, &template, &aws.provider, &sink, 20).await;
    let gone = status.machines.iter().find(|m| m.instance_id == victim).unwrap();
    assert!(matches!(gone.state.as_str(), "shutting-down" | "terminated"), "{gone:?}");
    assert!(told.elapsed() < Duration::from_secs(5), "reflected in status after {:?}", told.elapsed());
    // Nothing more is launched: exactly capacity after the loss.
    let live = ids(&aws.live_of(&mr).await);
    assert_eq!(live.len(), 3, "{live:?}");
    assert!(!live.contains(&victim));
    assert_eq!((status.phase, status.fulfilled_capacity), (Some(Phase::Fulfilled), 3), "{status:?}");
    eventually(10, "every message deleted", || async { left_in(&sqs, &url).await == 0 }).await;
}

#[tokio::test]
async fn garbage_foreign_regions_and_other_clusters_instances_change_nothing_and_are_deleted() {
    let Some((aws, sqs, url)) = with_queue("interruption-garbage").await else { return };
    let template = spot_template(&aws);
    let (mut mr, sink) = (request("kept", 2), MemoryStatus::default());
    let (status, _) = converge(&mut mr, &template, &aws.provider, &sink, 20).await;
    assert_eq!(status.phase, Some(Phase::Fulfilled));
    let mine = ids(&aws.live_of(&mr).await).into_iter().next().unwrap();
    // An instance of no request of this cluster (another cluster's, or a forged id).
    let stranger = aws
        .ec2
        .run_instances()
        .image_id(&aws.image)
        .instance_type(aws_sdk_ec2::types::InstanceType::M5Large)
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .unwrap()
        .instances()[0]
        .instance_id()
        .unwrap()
        .to_string();
    // SQS throttles the first reads: the consumer backs off and reads on.
    let throttled = support::fault_proxy::Fault::Error {
        status: 400,
        code: "ThrottlingException".into(),
        message: "Rate exceeded (injected)".into(),
    };
    aws.proxy.inject("ReceiveMessage", None, 2, throttled);
    for body in [
        "not json at all".to_string(),
        r#"{"detail-type": "EC2 Spot Instance Interruption Warning"}"#.to_string(),
        spot_warning(&stranger, aws.region),
        spot_warning("i-0123456789abcdef0", aws.region),
        spot_warning(&mine, "ap-southeast-7"),
    ] {
        send(&sqs, &url, &body).await;
    }
    eventually(15, "every message read and deleted", || async {
        queue_count(&aws, "malformed", "malformed") == 2
            && queue_count(&aws, "spot_interruption", "unknown") == 2
            && queue_count(&aws, "spot_interruption", "foreign") == 1
            && left_in(&sqs, &url).await == 0
    })
    .await;
    let (after, error) = converge(&mut mr, &template, &aws.provider, &sink, 20).await;
    assert!(error.is_none(), "{error:?}");
    assert!(after.machines.iter().all(|m| m.notice.is_none()), "{after:?}");
    assert_eq!(ids(&aws.live_of(&mr).await).len(), 2, "nothing launched");
    assert_eq!(queue_count(&aws, "spot_interruption", "applied"), 0);
    let reads = aws.proxy.calls("ReceiveMessage").len();
    assert!(reads >= 3, "two throttled reads, then the one that got the messages: {reads}");
}

#[tokio::test]
async fn an_empty_queue_costs_one_long_poll_per_wait() {
    let Some((aws, _sqs, _url)) = with_queue("interruption-empty").await else { return };
    // The consumer starts with the first request the provider serves.
    let owner = orb_operator::provider::Owner {
        uid: "uid-idle".into(),
        namespace: "grid".into(),
        name: "idle".into(),
        template: "workers".into(),
    };
    aws.provider.observe(&owner, &[], false).await.unwrap();
    let before = aws.proxy.all_calls();
    tokio::time::sleep(Duration::from_secs(21)).await;
    let spent = aws.proxy.spent_since(&before);
    let polls = spent.iter().find(|(a, _)| a.ends_with("ReceiveMessage")).map_or(0, |(_, n)| *n);
    assert!((1..=2).contains(&polls), "one long poll per 20 s: {spent:?}");
    assert!(spent.iter().all(|(a, _)| a.ends_with("ReceiveMessage")), "no other call: {spent:?}");
}

#[tokio::test]
async fn an_unreadable_queue_is_reported_by_health_and_launches_go_on() {
    let Some(moto) = support::moto::server("interruption-gone") else { return };
    let gone = format!("{}/123456789012/no-such-queue", moto.endpoint);
    let Some(aws) = aws_with("interruption-gone", |s| s.interruption_queue = Some(gone.clone())).await else {
        return;
    };
    let template = spot_template(&aws);
    let (mut mr, sink) = (request("despite", 1), MemoryStatus::default());
    let (status, error) = converge(&mut mr, &template, &aws.provider, &sink, 20).await;
    assert!(error.is_none() && status.phase == Some(Phase::Fulfilled), "{error:?} {status:?}");
    let orb_operator::provider::AnyProvider::Aws(provider) = &aws.provider else { unreachable!() };
    eventually(10, "the queue reported unreadable", || async { provider.degraded().is_some() }).await;
    let problem = provider.degraded().unwrap();
    assert!(problem.contains("no-such-queue") && problem.contains("NonExistentQueue"), "{problem}");
    let health = aws.provider.health().await.expect("the provider still answers");
    assert!(health.contains("interruption queue"), "{health}");
    let registry = orb_operator::provider::Registry::with([("default".to_string(), aws.provider)]);
    assert_eq!(registry.degraded().len(), 1, "what /readyz reports");
}
