//! The AWS provider and its RunInstances handler against moto (a real AWS API emulator), with
//! faults injected by our proxy. Each test has its own region. Assertions read back from moto
//! what was launched (tags, markets, subnets, counts) and from the proxy what was sent.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
mod support;

use aws_sdk_ec2::types::Filter;
use orb_operator::api::*;
use orb_operator::controller::template::readiness;
use orb_operator::provider::{
    AnyProvider, Holdings, Owner, Provider, ProviderError, ProvisionRequest, Registry, Released, ReturnRequest,
};
use std::collections::BTreeMap;
use support::aws::{CLUSTER, aws, changed};
use support::driver::{MemoryStatus, converge, edited, pass, quiet_passes, ready, request};
use support::fault_proxy::Fault;

fn template_object(spec: MachineTemplateSpec) -> MachineTemplate {
    ready(MachineTemplate::new("workers", spec))
}

fn owner_of(mr: &MachineRequest) -> Owner {
    orb_operator::controller::request::owner_of(mr).unwrap()
}

/// A request that holds no fleet and no launch template.
static NO_RESOURCES: Resources = Resources {
    fleet_ids: Vec::new(),
    asg_name: None,
    spot_fleet_request_ids: Vec::new(),
    reservation_ids: Vec::new(),
    launch_template_id: None,
};

/// What a release of a RunInstances request gets: the ids its status knows.
fn holdings(known: &[String]) -> Holdings<'_> {
    Holdings { known, resources: &NO_RESOURCES, launch_templates_in_use: &[], last_attempt: None }
}

fn tags_of(i: &aws_sdk_ec2::types::Instance) -> BTreeMap<String, String> {
    i.tags().iter().map(|t| (t.key().unwrap().to_string(), t.value().unwrap().to_string())).collect()
}

fn lifecycle(i: &aws_sdk_ec2::types::Instance) -> &str {
    i.instance_lifecycle().map_or("on-demand", |l| l.as_str())
}

#[tokio::test]
async fn health_names_the_region() {
    let Some(aws) = aws("health_names_the_region").await else { return };
    let health = aws.provider.health().await.unwrap();
    assert!(health.contains("reachable"), "{health}");
}

#[tokio::test]
async fn validation_names_each_bad_field() {
    let Some(aws) = aws("validation_names_each_bad_field").await else { return };
    let good = aws.template(&[("m5.large", 1), ("m5.xlarge", 2)]);
    let facts = aws.provider.validate(&good).await.unwrap();
    // What HostFactory's getAvailableTemplates answers from, in the template's order.
    let summary: Vec<_> =
        facts.iter().map(|f| (f.type_.as_str(), f.vcpus, f.memory_mib, f.architecture.as_str())).collect();
    assert_eq!(summary, [("m5.large", 2, 8192, "x86_64"), ("m5.xlarge", 4, 16384, "x86_64")]);

    let field_of = |r: Result<Vec<InstanceTypeFacts>, ProviderError>| match r {
        Err(ProviderError::Invalid { field, .. }) => field,
        other => panic!("expected Invalid, got {other:?}"),
    };
    let mut t = good.clone();
    t.image_id = Some("ami-0000000000000dead".into());
    assert_eq!(field_of(aws.provider.validate(&t).await), "spec.imageId");

    let mut t = good.clone();
    t.subnet_ids.push("subnet-0000000000000dead".into());
    assert_eq!(field_of(aws.provider.validate(&t).await), "spec.subnetIds[2]");

    let mut t = good.clone();
    t.security_group_ids = vec!["sg-0000000000000dead".into()];
    assert_eq!(field_of(aws.provider.validate(&t).await), "spec.securityGroupIds[0]");

    let mut t = good.clone();
    t.instance_types[1].type_ = "m5.enormous".into();
    assert_eq!(field_of(aws.provider.validate(&t).await), "spec.instanceTypes[1].type");

    let mut t = good.clone();
    t.image_id = Some("resolve:ssm:/orb/test/missing".into());
    assert_eq!(field_of(aws.provider.validate(&t).await), "spec.imageId");

    // Only the instance profiles the provider config allows (here: `worker`) may be passed.
    let mut t = good.clone();
    t.instance_profile = Some("arn:aws:iam::123456789012:instance-profile/admin".into());
    let calls = aws.proxy.calls("GetInstanceProfile").len();
    match aws.provider.validate(&t).await {
        Err(ProviderError::Invalid { field, code, message }) => {
            assert_eq!((field.as_str(), code.as_str()), ("spec.instanceProfile", "InstanceProfileNotAllowed"));
            assert!(message.contains("allowed: worker"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(aws.proxy.calls("GetInstanceProfile").len(), calls, "refused before any call");
    t.instance_profile = Some("worker".into());
    assert_eq!(field_of(aws.provider.validate(&t).await), "spec.instanceProfile", "allowed, but moto has none");

    let mut t = good.clone();
    t.api = Api::Asg;
    t.subnet_ids.clear();
    assert_eq!(field_of(aws.provider.validate(&t).await), "spec.subnetIds");

    let mut t = good.clone();
    t.api = Api::SpotFleet;
    t.spot_fleet_role = Some("no-such-fleet-role".into());
    assert_eq!(field_of(aws.provider.validate(&t).await), "spec.spotFleetRole");

    let mut t = good.clone();
    t.api = Api::SpotFleet;
    t.fleet_type = Some(FleetType::Instant);
    assert_eq!(field_of(aws.provider.validate(&t).await), "spec.fleetType");
}

#[tokio::test]
async fn an_image_from_an_ssm_parameter_is_resolved_and_launched() {
    let Some(aws) = aws("an_image_from_an_ssm_parameter_is_resolved_and_launched").await else { return };
    let AnyProvider::Aws(p) = &aws.provider else { unreachable!() };
    p.ops()
        .ssm
        .put_parameter()
        .name("/orb/test/ami")
        .value(&aws.image)
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .send()
        .await
        .unwrap();
    let mut spec = aws.template(&[("m5.large", 1)]);
    spec.image_id = Some("resolve:ssm:/orb/test/ami".into());
    aws.provider.validate(&spec).await.unwrap();
    let (mut mr, sink) = (request("ssm", 1), MemoryStatus::default());
    let (status, _) = converge(&mut mr, &template_object(spec), &aws.provider, &sink, 5).await;
    assert_eq!(status.phase, Some(Phase::Fulfilled));
    assert_eq!(aws.live_of(&mr).await[0].image_id(), Some(aws.image.as_str()));
}

#[tokio::test]
async fn an_invalid_image_is_not_ready_and_launches_nothing() {
    let Some(aws) = aws("an_invalid_image_is_not_ready_and_launches_nothing").await else { return };
    let mut spec = aws.template(&[("m5.large", 1)]);
    spec.image_id = Some("ami-0000000000000dead".into());
    let mut template = MachineTemplate::new("workers", spec);
    template.metadata.generation = Some(1);
    let registry = Registry::with([("default".to_string(), aws.provider)]);
    let verdict = readiness(&template, &registry).await;
    assert!(!verdict.status);
    assert_eq!(verdict.reason, "InvalidSpec");
    assert!(verdict.message.contains("spec.imageId"), "{}", verdict.message);

    // The template controller records the verdict; the request then waits and launches nothing.
    let mut status = MachineTemplateStatus::default();
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now());
    orb_operator::api::conditions::upsert(&mut status.conditions, verdict, Some(1), &now);
    template.status = Some(status);
    let (mut mr, sink) = (request("bad-image", 2), MemoryStatus::default());
    let provider = registry.get("default").unwrap();
    let (status, _) = converge(&mut mr, &template, provider, &sink, 3).await;
    assert_eq!(status.phase, Some(Phase::Pending));
    let ready = orb_operator::api::conditions::find(&status.conditions, "Ready").unwrap();
    assert_eq!(ready.reason, "TemplateNotReady");
    assert!(ready.message.contains("spec.imageId"));
    assert!(aws.proxy.calls("RunInstances").is_empty(), "nothing was launched");
}

#[tokio::test]
async fn a_launch_tags_spreads_and_tokens_every_call() {
    let Some(aws) = aws("a_launch_tags_spreads_and_tokens_every_call").await else { return };
    let template = template_object(aws.template(&[("m5.large", 1)]));
    let (mut mr, sink) = (request("shape", 3), MemoryStatus::default());
    let (status, error) = converge(&mut mr, &template, &aws.provider, &sink, 5).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(status.phase, Some(Phase::Fulfilled));
    assert_eq!(status.fulfilled_capacity, 3);

    let live = aws.live_of(&mr).await;
    assert_eq!(live.len(), 3);
    for i in &live {
        let tags = tags_of(i);
        assert_eq!(tags["orb.dev/cluster"], CLUSTER);
        assert_eq!(tags["orb.dev/request-uid"], mr.metadata.uid.clone().unwrap());
        assert_eq!(tags["orb.dev/request"], "grid/shape");
        assert_eq!(tags["orb.dev/template"], "workers");
        assert_eq!(tags["Name"], "grid.shape");
        assert_eq!(tags["team"], "grid");
        assert_eq!(i.instance_type().unwrap().as_str(), "m5.large");
        assert_eq!(i.security_groups()[0].group_id(), Some(aws.group.as_str()));
    }
    let mut per_subnet = BTreeMap::new();
    for i in &live {
        *per_subnet.entry(i.subnet_id().unwrap().to_string()).or_insert(0) += 1;
    }
    assert_eq!(per_subnet.values().copied().collect::<Vec<_>>().iter().sum::<i32>(), 3);
    assert_eq!(per_subnet.len(), 2, "spread over both subnets: {per_subnet:?}");

    let volumes = aws
        .ec2
        .describe_volumes()
        .filters(Filter::builder().name("tag:orb.dev/request-uid").values(mr.metadata.uid.clone().unwrap()).build())
        .send()
        .await
        .unwrap();
    assert_eq!(volumes.volumes().len(), 3, "volumes are tagged at launch too");

    let calls = aws.proxy.calls("RunInstances");
    assert_eq!(calls.len(), 2, "one call per subnet");
    let token = &status.attempt.as_ref().unwrap().client_token;
    for (k, body) in calls.iter().enumerate() {
        // One token per offering: on-demand, first type, subnet k.
        assert!(body.contains(&format!("ClientToken={token}-o0-{k}")), "{body}");
        let min = body.split('&').find_map(|p| p.strip_prefix("MinCount=")).unwrap();
        let max = body.split('&').find_map(|p| p.strip_prefix("MaxCount=")).unwrap();
        assert_eq!(min, max, "MinCount = MaxCount");
        assert!(!body.contains("CreateTags"));
    }
    assert!(aws.proxy.calls("CreateTags").is_empty(), "tags come with the launch, never afterwards");
    // Machines in status are the distinct instances moto gave.
    let ids: std::collections::BTreeSet<_> = status.machines.iter().map(|m| m.instance_id.clone()).collect();
    assert_eq!(ids.len(), 3);
}

#[tokio::test]
async fn weighted_capacity_is_counted_in_units_with_at_most_one_machine_of_surplus() {
    let Some(aws) = aws("weighted_capacity_is_counted_in_units_with_at_most_one_machine_of_surplus").await else {
        return;
    };
    for (label, types) in
        [("small-first", [("m5.large", 2), ("m5.xlarge", 4)]), ("large-first", [("m5.xlarge", 4), ("m5.large", 2)])]
    {
        let template = template_object(aws.template(&types));
        let (mut mr, sink) = (request(label, 10), MemoryStatus::default());
        let (status, error) = converge(&mut mr, &template, &aws.provider, &sink, 5).await;
        assert!(error.is_none(), "{error:?}");
        let weight = |t: &str| types.iter().find(|(n, _)| *n == t).unwrap().1;
        let live = aws.live_of(&mr).await;
        let units: i32 = live.iter().map(|i| weight(i.instance_type().unwrap().as_str())).sum();
        let biggest = types.iter().map(|(_, w)| *w).max().unwrap();
        assert!(units >= 10 && units < 10 + biggest, "{label}: {units} units from {} machines", live.len());
        assert_eq!(status.fulfilled_capacity, units, "{label}: fulfilledCapacity is in capacity units");
        assert_eq!(status.phase, Some(Phase::Fulfilled));
    }
}

#[tokio::test]
async fn spot_templates_launch_spot_with_the_price_cap() {
    let Some(aws) = aws("spot_templates_launch_spot_with_the_price_cap").await else { return };
    let mut spec = aws.template(&[("m5.large", 1)]);
    spec.price_type = PriceType::Spot;
    spec.max_spot_price = Some("0.05".into());
    let (mut mr, sink) = (request("spot", 2), MemoryStatus::default());
    let (status, _) = converge(&mut mr, &template_object(spec), &aws.provider, &sink, 5).await;
    assert_eq!(status.phase, Some(Phase::Fulfilled));
    let live = aws.live_of(&mr).await;
    assert!(live.iter().all(|i| lifecycle(i) == "spot"), "all spot");
    assert!(status.machines.iter().all(|m| m.capacity_type.as_deref() == Some("spot")));
    let body = &aws.proxy.calls("RunInstances")[0];
    assert!(body.contains("InstanceMarketOptions.MarketType=spot"), "{body}");
    assert!(body.contains("InstanceMarketOptions.SpotOptions.MaxPrice=0.05"), "{body}");
    assert!(body.contains("TagSpecification.3.ResourceType=spot-instances-request"), "{body}");
}

#[tokio::test]
async fn heterogeneous_templates_split_on_demand_and_spot() {
    let Some(aws) = aws("heterogeneous_templates_split_on_demand_and_spot").await else { return };
    let mut spec = aws.template(&[("m5.large", 1)]);
    spec.price_type = PriceType::Heterogeneous;
    spec.on_demand_base = Some(2);
    spec.on_demand_percent = Some(50);
    let (mut mr, sink) = (request("mixed", 10), MemoryStatus::default());
    let (status, _) = converge(&mut mr, &template_object(spec), &aws.provider, &sink, 5).await;
    assert_eq!(status.phase, Some(Phase::Fulfilled));
    let live = aws.live_of(&mr).await;
    let spot = live.iter().filter(|i| lifecycle(i) == "spot").count();
    assert_eq!((live.len() - spot, spot), (6, 4), "base 2 + 50% of 8 on-demand, the rest spot");
}

#[tokio::test]
async fn a_capacity_error_falls_back_to_the_next_type_and_is_reported() {
    let Some(aws) = aws("a_capacity_error_falls_back_to_the_next_type_and_is_reported").await else { return };
    aws.proxy.inject("RunInstances", Some("InstanceType=m5.large"), 100, Fault::capacity());
    let template = template_object(aws.template(&[("m5.large", 1), ("m5.xlarge", 2)]));
    let (mut mr, sink) = (request("fallback", 4), MemoryStatus::default());
    let (status, error) = converge(&mut mr, &template, &aws.provider, &sink, 5).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(status.phase, Some(Phase::Fulfilled));
    let live = aws.live_of(&mr).await;
    assert_eq!(live.len(), 2);
    assert!(live.iter().all(|i| i.instance_type().unwrap().as_str() == "m5.xlarge"));
    // Both subnets were tried for m5.large; each failure names its availability zone.
    let zones: Vec<_> = aws
        .ec2
        .describe_subnets()
        .set_subnet_ids(Some(aws.subnets.clone()))
        .send()
        .await
        .unwrap()
        .subnets()
        .iter()
        .map(|s| s.availability_zone().unwrap().to_string())
        .collect();
    let failures: Vec<_> = status.failures.iter().filter(|f| f.code == "InsufficientInstanceCapacity").collect();
    assert_eq!(failures.len(), 2, "{failures:?}");
    for f in failures {
        assert_eq!(f.instance_type.as_deref(), Some("m5.large"));
        assert!(zones.contains(f.zone.as_ref().unwrap()), "{f:?}");
        assert!(f.message.contains("RunInstances") && f.message.contains("subnet-"), "{}", f.message);
        assert_eq!(f.count, 1);
    }
}

#[tokio::test]
async fn throttling_is_retried_and_surfaces_when_it_persists() {
    let Some(aws) = aws("throttling_is_retried_and_surfaces_when_it_persists").await else { return };
    let spec = aws.template(&[("m5.large", 1)]);
    let mr = request("throttled", 1);
    let owner = owner_of(&mr);
    let launch = |token: &'static str| ProvisionRequest {
        owner: &owner,
        template: &spec,
        mix: orb_operator::provider::MarketMix { on_demand: 1, spot: 0 },
        client_token: token,
        resources: &NO_RESOURCES,
        target_units: 1,
        replay: false,
        left_out: &[],
    };

    aws.proxy.inject("RunInstances", None, 2, Fault::throttle());
    let outcome = aws.provider.provision(&launch("t-1")).await.expect("retried past two throttles");
    assert_eq!(outcome.launched.len(), 1);
    assert_eq!(aws.proxy.calls("RunInstances").len(), 3, "two throttled attempts, then success");

    aws.proxy.inject("RunInstances", None, 100, Fault::throttle());
    let error = aws.provider.provision(&launch("t-2")).await.unwrap_err();
    assert!(matches!(&error, ProviderError::Throttled { code, .. } if code == "RequestLimitExceeded"), "{error:?}");
    assert_eq!(aws.live_of(&mr).await.len(), 1, "nothing more launched");

    // /metrics counts each call once (its SDK retries inside), by outcome, with its latency.
    let text = aws.metrics.render([]);
    for expected in [
        r#"operation="RunInstances",outcome="ok"} 1"#,
        r#"operation="RunInstances",outcome="throttled"} 1"#,
        r#"orb_aws_call_duration_seconds_count{provider="default",operation="RunInstances"} 2"#,
    ] {
        assert!(text.contains(expected), "missing {expected} in:\n{text}");
    }
}

#[tokio::test]
async fn server_errors_are_retried() {
    let Some(aws) = aws("server_errors_are_retried").await else { return };
    aws.proxy.inject("DescribeInstances", None, 1, Fault::server_error());
    aws.proxy.inject("RunInstances", None, 1, Fault::server_error());
    let template = template_object(aws.template(&[("m5.large", 1)]));
    let (mut mr, sink) = (request("five-hundred", 2), MemoryStatus::default());
    let (status, error) = converge(&mut mr, &template, &aws.provider, &sink, 5).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(status.phase, Some(Phase::Fulfilled));
    assert_eq!(aws.live_of(&mr).await.len(), 2);
}

#[tokio::test]
async fn a_slow_answer_is_waited_for() {
    let Some(aws) = aws("a_slow_answer_is_waited_for").await else { return };
    aws.proxy.inject("RunInstances", None, 1, Fault::Delay(std::time::Duration::from_secs(2)));
    let template = template_object(aws.template(&[("m5.large", 1)]));
    let (mut mr, sink) = (request("slow", 1), MemoryStatus::default());
    let (status, error) = converge(&mut mr, &template, &aws.provider, &sink, 5).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(status.phase, Some(Phase::Fulfilled));
    assert_eq!(aws.live_of(&mr).await.len(), 1);
}

#[tokio::test]
async fn a_crash_between_launch_and_status_write_never_duplicates() {
    let Some(aws) = aws("a_crash_between_launch_and_status_write_never_duplicates").await else { return };
    let template = template_object(aws.template(&[("m5.large", 1)]));
    let (mut mr, sink) = (request("crash", 3), MemoryStatus::default());
    // Write 1 records the attempt; write 2 (after RunInstances) is lost.
    sink.drop_write(2);
    let (status, _) = converge(&mut mr, &template, &aws.provider, &sink, 6).await;
    assert_eq!(status.phase, Some(Phase::Fulfilled));
    assert_eq!(aws.live_of(&mr).await.len(), 3, "the retry adopted the instances found by tag");
    assert_eq!(aws.proxy.calls("RunInstances").len(), 2, "no second launch after the crash");
    assert_eq!(status.machines.len(), 3);
}

#[tokio::test]
async fn a_lost_answer_a_lagging_listing_and_a_stale_cache_never_launch_twice() {
    let Some(aws) = aws("a_lost_answer_a_lagging_listing_and_a_stale_cache_never_launch_twice").await else { return };
    aws.proxy.honour_client_tokens();
    let template = template_object(aws.template(&[("m5.large", 1)]));
    let (mut mr, sink) = (request("laggy", 3), MemoryStatus::default());
    // 3 machines: 2 in the first subnet, 1 in the second. The second call launches, but every
    // answer to it is lost (the SDK's retries included); the tag listing shows nothing for a
    // while; and every pass starts from a cache one write behind.
    aws.proxy.inject("RunInstances", Some(&aws.subnets[1]), 3, Fault::Lost);
    aws.proxy.inject("DescribeInstances", Some("tag%3Aorb.dev"), 6, Fault::empty_listing());
    let start = jiff::Timestamp::now();
    for round in 0..8 {
        let now = start + jiff::SignedDuration::from_secs(15 * round);
        let _ = pass(&mut mr, &template, &aws.provider, &sink, now, true).await;
    }
    let status = sink.current().unwrap();
    assert_eq!(aws.live_of(&mr).await.len(), 3, "exactly the capacity asked for: nothing launched twice");
    assert_eq!(status.machines.len(), 3, "{:?}", status.machines);
    assert_eq!(status.attempt.as_ref().unwrap().number, 1, "the open attempt was replayed, not replaced");
    let tokens: std::collections::BTreeSet<String> = aws
        .proxy
        .calls("RunInstances")
        .iter()
        .filter_map(|body| body.split('&').find_map(|kv| kv.strip_prefix("ClientToken=")).map(str::to_string))
        .collect();
    assert!(tokens.iter().all(|t| t.starts_with("orb-1-")), "only attempt 1's tokens were ever sent: {tokens:?}");
    assert!(sink.fetches.load(std::sync::atomic::Ordering::SeqCst) > 0, "the stale cache was noticed");
    assert_eq!(status.phase, Some(Phase::Fulfilled));
}

/// A tag policy removes the operator's tags from `id`: the tag listing no longer finds it.
/// Returns once the poller, refreshing the machine by id, has seen it lose them.
async fn strip_tags(aws: &support::aws::Aws, mr: &MachineRequest, id: &str) {
    let mut changes = aws.changes();
    let tag = |key: &str| aws_sdk_ec2::types::Tag::builder().key(key).build();
    aws.ec2
        .delete_tags()
        .resources(id)
        .tags(tag("orb.dev/request-uid"))
        .tags(tag("orb.dev/cluster"))
        .send()
        .await
        .unwrap();
    changed(&mut changes, mr).await;
}

#[tokio::test]
async fn a_machine_whose_tags_were_stripped_is_kept_by_id_and_released() {
    let Some(aws) = aws("a_machine_whose_tags_were_stripped_is_kept_by_id_and_released").await else { return };
    let template = template_object(aws.template(&[("m5.large", 1)]));
    let (mut mr, sink) = (request("stripped", 2), MemoryStatus::default());
    converge(&mut mr, &template, &aws.provider, &sink, 5).await;
    let stripped = sink.current().unwrap().machines[0].instance_id.clone();
    strip_tags(&aws, &mr, &stripped).await;
    let later = jiff::Timestamp::now() + jiff::SignedDuration::from_mins(5);
    for _ in 0..3 {
        pass(&mut mr, &template, &aws.provider, &sink, later, false).await.unwrap();
    }
    let status = sink.current().unwrap();
    let machine = status.machines.iter().find(|m| m.instance_id == stripped).expect("still tracked by id");
    assert!(machine.message.as_deref().unwrap().contains("tracked by instance id"), "{machine:?}");
    assert_eq!(aws.live_of(&mr).await.len(), 1, "the listing sees one; nothing was relaunched for the other");
    // Release terminates it too: it is in no listing, only in the status.
    let known: Vec<String> = status.machines.iter().map(|m| m.instance_id.clone()).collect();
    support::aws::release(&aws.provider, &owner_of(&mr), holdings(&known)).await.unwrap();
    let after = aws.ec2.describe_instances().instance_ids(&stripped).send().await.unwrap();
    let state = after.reservations()[0].instances()[0].state().unwrap().name().unwrap().as_str().to_string();
    assert!(state == "terminated" || state == "shutting-down", "{state}");
}

#[tokio::test]
async fn scale_down_and_returns_terminate_exactly_the_chosen_machines() {
    let Some(aws) = aws("scale_down_and_returns_terminate_exactly_the_chosen_machines").await else { return };
    let template = template_object(aws.template(&[("m5.large", 1)]));
    let (mut mr, sink) = (request("shrink", 4), MemoryStatus::default());
    converge(&mut mr, &template, &aws.provider, &sink, 5).await;
    let ids = |v: Vec<aws_sdk_ec2::types::Instance>| -> std::collections::BTreeSet<String> {
        v.iter().map(|i| i.instance_id().unwrap().to_string()).collect()
    };
    let four = ids(aws.live_of(&mr).await);
    assert_eq!(four.len(), 4);

    // 4 -> 3 naming the one to go.
    let victim = four.iter().nth(2).unwrap().clone();
    mr.spec.capacity = 3;
    mr.spec.return_machines = vec![victim.clone()];
    edited(&mut mr);
    let (status, _) = converge(&mut mr, &template, &aws.provider, &sink, 6).await;
    let three = ids(aws.live_of(&mr).await);
    let mut expected = four.clone();
    expected.remove(&victim);
    assert_eq!(three, expected, "exactly the named machine left");
    assert_eq!(status.fulfilled_capacity, 3);
    let returned = status.machines.iter().find(|m| m.instance_id == victim).expect("listed while EC2 reports it");
    assert_eq!((returned.returning, returned.result), (true, Some(MachineResult::Succeed)), "{returned:?}");
    assert_degraded_false(&status);
    assert_eq!(
        quiet_passes(&mut mr, &template, &aws.provider, &sink).await,
        0,
        "passes after convergence write nothing"
    );

    // Unchanged capacity, one more named: it is replaced.
    let bad = three.iter().next().unwrap().clone();
    mr.spec.return_machines.push(bad.clone());
    edited(&mut mr);
    let (status, _) = converge(&mut mr, &template, &aws.provider, &sink, 6).await;
    let now = ids(aws.live_of(&mr).await);
    assert_eq!(now.len(), 3);
    assert!(!now.contains(&bad));
    assert_eq!(now.intersection(&three).count(), 2, "only the named machine was replaced");
    assert_eq!(status.phase, Some(Phase::Fulfilled));
    assert_degraded_false(&status);
    assert!(status.machines.iter().all(|m| m.result != Some(MachineResult::Fail)), "{:?}", status.machines);
    assert_eq!(
        quiet_passes(&mut mr, &template, &aws.provider, &sink).await,
        0,
        "passes after convergence write nothing"
    );
}

fn assert_degraded_false(status: &orb_operator::api::MachineRequestStatus) {
    let degraded = orb_operator::api::conditions::find(&status.conditions, "Degraded").unwrap();
    assert_eq!(degraded.status, "False", "{degraded:?}");
}

#[tokio::test]
async fn a_machine_terminated_outside_the_operator_is_failed_and_replaced() {
    let Some(aws) = aws("a_machine_terminated_outside_the_operator_is_failed_and_replaced").await else { return };
    let template = template_object(aws.template(&[("m5.large", 1)]));
    let (mut mr, sink) = (request("reclaim", 2), MemoryStatus::default());
    converge(&mut mr, &template, &aws.provider, &sink, 5).await;
    let gone = aws.live_of(&mr).await[0].instance_id().unwrap().to_string();
    let mut changes = aws.changes();
    aws.ec2.terminate_instances().instance_ids(&gone).send().await.unwrap();
    // The poller sees it go by itself and wakes the request; nothing else describes it.
    changed(&mut changes, &mr).await;
    let (status, _) = converge(&mut mr, &template, &aws.provider, &sink, 5).await;
    assert_eq!(aws.live_of(&mr).await.len(), 2, "its capacity was provisioned again");
    let lost = status.machines.iter().find(|m| m.instance_id == gone).unwrap();
    assert_eq!(lost.result, Some(MachineResult::Fail));
    assert!(lost.message.as_deref().unwrap().contains("outside the operator"));
    assert_eq!(orb_operator::api::conditions::find(&status.conditions, "Degraded").unwrap().reason, "MachinesLost");
}

#[tokio::test]
async fn release_leaves_nothing_running_and_never_touches_other_requests() {
    let Some(aws) = aws("release_leaves_nothing_running_and_never_touches_other_requests").await else { return };
    let template = template_object(aws.template(&[("m5.large", 1)]));
    let (mut mine, sink) = (request("mine", 3), MemoryStatus::default());
    let (mut other, other_sink) = (request("other", 1), MemoryStatus::default());
    converge(&mut mine, &template, &aws.provider, &sink, 5).await;
    converge(&mut other, &template, &aws.provider, &other_sink, 5).await;

    // Returning another request's instance through this request does nothing.
    let foreign = aws.live_of(&other).await[0].instance_id().unwrap().to_string();
    let spec = template.spec.clone();
    let request = ReturnRequest {
        instance_ids: std::slice::from_ref(&foreign),
        template: &spec,
        resources: &NO_RESOURCES,
        target_units: 0,
    };
    aws.provider.return_machines(&owner_of(&mine), &request).await.unwrap();
    assert_eq!(aws.live_of(&other).await.len(), 1);

    // Release with the ids status knows, a foreign one slipped in: only the request's own go.
    let mut known: Vec<String> = sink.current().unwrap().machines.iter().map(|m| m.instance_id.clone()).collect();
    known.push(foreign.clone());
    assert_eq!(
        support::aws::release(&aws.provider, &owner_of(&mine), holdings(&known)).await.unwrap(),
        orb_operator::provider::Released::Done
    );
    assert!(aws.live_of(&mine).await.is_empty(), "no pending or running instance carries the request's uid");
    assert_eq!(aws.instances_of(&mine).await.len(), 3, "they are terminated, not forgotten");
    assert_eq!(aws.live_of(&other).await.len(), 1);
}

#[tokio::test]
async fn release_terminates_machines_the_tag_lookup_does_not_list_yet() {
    let Some(aws) = aws("release_terminates_machines_the_tag_lookup_does_not_list_yet").await else { return };
    let template = template_object(aws.template(&[("m5.large", 1)]));
    let (mut mr, sink) = (request("fresh", 2), MemoryStatus::default());
    converge(&mut mr, &template, &aws.provider, &sink, 5).await;
    // EC2's listing is eventually consistent: the tag-filtered describe shows nothing yet.
    aws.proxy.inject("DescribeInstances", Some("tag%3Aorb.dev%2Frequest-uid"), 1, Fault::empty_listing());
    let known: Vec<String> = sink.current().unwrap().machines.iter().map(|m| m.instance_id.clone()).collect();
    assert_eq!(known.len(), 2);
    support::aws::release(&aws.provider, &owner_of(&mr), holdings(&known)).await.unwrap();
    assert!(aws.live_of(&mr).await.is_empty(), "the ids status knew were terminated");
}

#[tokio::test]
async fn every_aws_example_template_launches() {
    let Some(aws) = aws("every_aws_example_template_launches").await else { return };
    aws.spot_fleet_role().await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/aws");
    let mut launched = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let object: serde_json::Value = serde_yaml::from_str(&text).unwrap();
        if object["kind"] != "MachineTemplate" {
            continue;
        }
        let mut template: MachineTemplate = serde_json::from_value(object).unwrap();
        // The examples' placeholder ids become moto's.
        template.spec.image_id = Some(aws.image.clone());
        template.spec.subnet_ids = aws.subnets.clone();
        template.spec.security_group_ids = vec![aws.group.clone()];
        if template.spec.api == Api::Asg {
            // moto launches an Auto Scaling group's launch template type, ignoring the weighted
            // overrides (count one unit per machine), and truncates fractional units of the
            // on-demand percentage (4 units at 20% above a base of 2 make 3 machines there).
            for t in &mut template.spec.instance_types {
                t.weight = 1;
            }
            template.spec.on_demand_percent = template.spec.on_demand_percent.map(|_| 50);
        }
        let facts = aws.provider.validate(&template.spec).await.unwrap();
        let name = template.metadata.name.clone().unwrap();
        // Launched as the controller launches: from the types validation resolved, if any.
        let mut template = ready(template);
        template.status.as_mut().unwrap().instance_types = facts;
        let (mut mr, sink) = (request(&name, 4), MemoryStatus::default());
        let (status, error) = converge(&mut mr, &template.for_launch(), &aws.provider, &sink, 5).await;
        assert!(error.is_none(), "{name}: {error:?}");
        assert_eq!(status.phase, Some(Phase::Fulfilled), "{name}");
        launched += 1;
    }
    assert_eq!(
        launched, 12,
        "RunInstances and ASG x 3 prices, EC2 Fleet x 3 fleet types and by attributes, Spot Fleet x 2"
    );
    let body = aws.proxy.calls("RunInstances").join("\n");
    assert!(body.contains("BlockDeviceMapping.1.Ebs.VolumeType=gp3"), "root volume sent");
    assert!(body.contains("UserData="), "user data sent");
}

#[tokio::test]
async fn a_template_leaving_the_type_to_its_launch_template_learns_that_types_facts() {
    let Some(aws) = aws("a_template_leaving_the_type_to_its_launch_template_learns_that_types_facts").await else {
        return;
    };
    let data = aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
        .image_id(&aws.image)
        .instance_type(aws_sdk_ec2::types::InstanceType::C5Xlarge)
        .build();
    aws.ec2.create_launch_template().launch_template_name("given").launch_template_data(data).send().await.unwrap();
    let template = MachineTemplateSpec {
        launch_template: Some(LaunchTemplateRef { name: Some("given".into()), ..Default::default() }),
        subnet_ids: aws.subnets.clone(),
        ..Default::default()
    };
    let facts = aws.provider.validate(&template).await.unwrap();
    let summary: Vec<_> = facts.iter().map(|f| (f.type_.as_str(), f.vcpus, f.memory_mib)).collect();
    assert_eq!(summary, [("c5.xlarge", 4, 8192)], "what HostFactory's attributes are built from");
}

#[tokio::test]
async fn a_machine_whose_tags_were_stripped_and_termination_refused_holds_back_no_other() {
    let test = "a_machine_whose_tags_were_stripped_and_termination_refused_holds_back_no_other";
    let Some(aws) = aws(test).await else { return };
    let template = template_object(aws.template(&[("m5.large", 1)]));
    let (mut mr, sink) = (request("stripped-denied", 3), MemoryStatus::default());
    converge(&mut mr, &template, &aws.provider, &sink, 5).await;
    let status = sink.current().unwrap();
    let stripped = status.machines[0].instance_id.clone();
    strip_tags(&aws, &mr, &stripped).await;
    // The shipped IAM policy: TerminateInstances only on instances tagged with the cluster id.
    // Every call that names the stripped instance is refused, as IAM refuses it.
    let refusal = Fault::Error {
        status: 403,
        code: "UnauthorizedOperation".into(),
        message: "You are not authorized to perform this operation (injected)".into(),
    };
    aws.proxy.inject("TerminateInstances", Some(&format!("={stripped}")), 100, refusal);
    let known: Vec<String> = status.machines.iter().map(|m| m.instance_id.clone()).collect();
    let error = support::aws::release(&aws.provider, &owner_of(&mr), holdings(&known)).await.unwrap_err();
    let text = error.to_string();
    assert_eq!(error.code(), "UnauthorizedOperation");
    assert!(text.contains(&stripped) && text.contains("administrator") && text.contains("orb.dev/cluster="), "{text}");
    // Every other machine went; only the refused one runs on.
    let left: Vec<_> = aws.live_of(&mr).await.iter().filter_map(|i| i.instance_id().map(str::to_string)).collect();
    assert!(left.is_empty(), "the tagged machines were held back by the refused one: {left:?}");
    let after = aws.ec2.describe_instances().instance_ids(&stripped).send().await.unwrap();
    let state = after.reservations()[0].instances()[0].state().unwrap().name().unwrap().as_str().to_string();
    assert_eq!(state, "running");
}

#[tokio::test]
async fn a_release_moments_after_a_launch_waits_for_ec2_to_show_its_machines() {
    let test = "a_release_moments_after_a_launch_waits_for_ec2_to_show_its_machines";
    let Some(aws) = aws(test).await else { return };
    let template = template_object(aws.template(&[("m5.large", 1)]));
    let (mut mr, sink) = (request("just-made", 2), MemoryStatus::default());
    converge(&mut mr, &template, &aws.provider, &sink, 5).await;
    let mut status = sink.current().unwrap();
    let known: Vec<String> = status.machines.iter().map(|m| m.instance_id.clone()).collect();
    assert_eq!(known.len(), 2);
    // The launch call was answered minutes after its attempt began (it waited behind the
    // budget, which the SDK's operation timeout allows): the machines are seconds old all the
    // same. Before, a release counted EC2's lag from the attempt's start only.
    let attempt = status.attempt.as_mut().unwrap();
    attempt.started_at = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        jiff::Timestamp::now() - jiff::SignedDuration::from_secs(200),
    ));
    // Deleted seconds after the launch, by an operator that restarted meanwhile (nothing in
    // memory): eventually consistent EC2 does not show the machines yet (by id or by tag).
    // Before, the release took that for "gone", reported done, and the finalizer went while
    // the machines ran on.
    let restarted = aws.restarted().await;
    aws.proxy.inject("DescribeInstances", None, usize::MAX, Fault::empty_listing());
    let holdings = || Holdings {
        known: &known,
        resources: &status.resources,
        launch_templates_in_use: &[],
        last_attempt: status.attempt.as_ref(),
    };
    let released = support::aws::release(&restarted, &owner_of(&mr), holdings()).await.unwrap();
    assert!(
        matches!(&released, Released::InProgress(left) if left.contains(&known[0])),
        "not found moments after the launch is not gone: {released:?}"
    );
    aws.proxy.clear("DescribeInstances");
    assert_eq!(aws.live_of(&mr).await.len(), 2, "nothing was given up");
    // Once EC2 shows them, the release finishes.
    let released = support::aws::release(&restarted, &owner_of(&mr), holdings()).await.unwrap();
    assert_eq!(released, Released::Done);
    assert!(aws.live_of(&mr).await.is_empty());
}
