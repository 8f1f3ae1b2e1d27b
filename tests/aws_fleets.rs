//! The EC2 Fleet and Spot Fleet handlers against moto, through the fault proxy, driven by the
//! request driver (observe -> plan -> act -> report) as the controller runs it. Each test has
//! its own region. Calls are counted at the proxy; what was made is read back from moto.
//!
//! moto gaps worked around here: it fulfils every fleet at once, ignores overrides beyond the
//! first per launch template config of a spot fleet, has no ModifyFleet (answers HTTP 500; the
//! maintain EC2 Fleet's scaling is proven on the recorded request in `ec2_fleet`'s unit tests),
//! and reports no fleet type or activity status for spot fleets.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
mod support;

use orb_operator::api::*;
use orb_operator::controller::request::StatusSink;
use orb_operator::provider::{AnyProvider, Holdings, Provider, Released};
use support::aws::{Aws, aws};
use support::driver::{MemoryStatus, converge, edited, quiet_passes, ready, request};
use support::fault_proxy::Fault;

fn fleet_template(aws: &Aws, api: Api, fleet_type: FleetType, types: &[(&str, i32)]) -> MachineTemplate {
    let mut spec = aws.template(types);
    spec.api = api;
    spec.fleet_type = Some(fleet_type);
    ready(MachineTemplate::new("workers", spec))
}

fn owner_of(mr: &MachineRequest) -> orb_operator::provider::Owner {
    orb_operator::controller::request::owner_of(mr).unwrap()
}

/// The request's live machines as its status lists them.
fn live_ids(status: &MachineRequestStatus) -> Vec<String> {
    status.machines.iter().filter(|m| m.counts_as_live()).map(|m| m.instance_id.clone()).collect()
}

/// Releases the request as the controller's finalizer does.
async fn release(aws: &Aws, mr: &MachineRequest, sink: &MemoryStatus, in_use: &[String]) {
    release_by(&aws.provider, mr, sink, in_use).await;
}

/// `release` by `provider` (a restarted operator, say).
async fn release_by(provider: &AnyProvider, mr: &MachineRequest, sink: &MemoryStatus, in_use: &[String]) {
    let status = sink.current().unwrap();
    let known: Vec<String> = status.machines.iter().map(|m| m.instance_id.clone()).collect();
    let holdings = Holdings {
        known: &known,
        resources: &status.resources,
        launch_templates_in_use: in_use,
        last_attempt: status.attempt.as_ref(),
    };
    let released = support::aws::release(provider, &owner_of(mr), holdings).await.unwrap();
    assert_eq!(released, Released::Done);
}

/// Nothing the request made is left: nothing of the cluster alive in the test's region (no
/// active fleet or spot fleet request, no pending or running instance, no launch template),
/// and the launch template the request recorded is gone.
async fn assert_nothing_left(aws: &Aws, mr: &MachineRequest, status: &MachineRequestStatus) {
    assert!(aws.live_of(mr).await.is_empty(), "instances with the request's uid still live");
    let left = support::moto::leftovers(aws.moto, aws.region, support::aws::CLUSTER).await;
    assert!(left.is_empty(), "left behind: {left:?}");
    let lt = status.resources.launch_template_id.clone().expect("the operator made a launch template");
    assert!(!launch_template_exists(aws, &lt).await, "launch template {lt} still exists");
}

async fn launch_template_exists(aws: &Aws, id: &str) -> bool {
    // EC2 answers NotFound for a deleted id; moto answers an empty list.
    match aws.ec2.describe_launch_templates().launch_template_ids(id).send().await {
        Ok(out) => !out.launch_templates().is_empty(),
        Err(e) => !format!("{e:?}").contains("NotFound"),
    }
}

#[tokio::test]
async fn a_launch_template_an_active_fleet_uses_is_kept_whatever_the_cache_says() {
    let test = "a_launch_template_an_active_fleet_uses_is_kept_whatever_the_cache_says";
    let Some(aws) = aws(test).await else { return };
    // Two maintain fleets of one template share its launch template. The first request is
    // released by a restarted operator whose cache does not show the second request's status
    // yet: AWS's listing shows its fleet, and the launch template stays. Released last, it goes.
    let template = fleet_template(&aws, Api::Ec2Fleet, FleetType::Maintain, &[("m5.large", 1)]);
    let (mut first, first_sink) = (request("first", 1), MemoryStatus::default());
    let (mut second, second_sink) = (request("second", 1), MemoryStatus::default());
    converge(&mut first, &template, &aws.provider, &first_sink, 6).await;
    converge(&mut second, &template, &aws.provider, &second_sink, 6).await;
    let lt = first_sink.current().unwrap().resources.launch_template_id.unwrap();
    assert_eq!(second_sink.current().unwrap().resources.launch_template_id.as_ref(), Some(&lt));
    let restarted = aws.restarted().await;
    release_by(&restarted, &first, &first_sink, &[]).await;
    assert!(launch_template_exists(&aws, &lt).await, "deleted under the second request's active fleet");
    release_by(&restarted, &second, &second_sink, &[]).await;
    assert!(!launch_template_exists(&aws, &lt).await, "nothing launches from it any more");
}

#[tokio::test]
async fn an_instant_fleet_is_one_call_counted_in_units_and_leaves_nothing() {
    let Some(aws) = aws("an_instant_fleet_is_one_call_counted_in_units_and_leaves_nothing").await else { return };
    // The larger type first: moto launches from the first override, 3 x 4 = 12 units for 10.
    let template = fleet_template(&aws, Api::Ec2Fleet, FleetType::Instant, &[("t3.xlarge", 4), ("t3.medium", 2)]);
    let (mut a, sink_a) = (request("fleet-a", 10), MemoryStatus::default());
    let (mut b, sink_b) = (request("fleet-b", 4), MemoryStatus::default());
    let (status_a, error) = converge(&mut a, &template, &aws.provider, &sink_a, 6).await;
    assert!(error.is_none(), "{error:?}");
    let (status_b, error) = converge(&mut b, &template, &aws.provider, &sink_b, 6).await;
    assert!(error.is_none(), "{error:?}");

    assert_eq!(status_a.phase, Some(Phase::Fulfilled), "{:?}", status_a.conditions);
    assert_eq!(status_a.fulfilled_capacity, 12, "fulfilment in units, not instances: 3 machines of 4");
    assert_eq!(live_ids(&status_a).len(), 3);
    assert_eq!(status_b.phase, Some(Phase::Fulfilled));
    for m in &status_a.machines {
        assert_eq!(
            (m.weight, m.instance_type.as_deref(), m.capacity_type.as_deref()),
            (4, Some("t3.xlarge"), Some("on-demand"))
        );
        assert!(m.zone.is_some() && m.subnet_id.is_some(), "{m:?}");
    }
    // Economy: one CreateFleet per request (both subnets and types in that one call), one
    // launch template for the template's generation across both requests, no CreateTags.
    let creates = aws.proxy.calls("CreateFleet");
    assert_eq!(creates.len(), 2, "one CreateFleet per request");
    assert_eq!(creates[0].matches("WeightedCapacity=").count(), 4, "2 types x 2 subnets in the one call");
    assert_eq!(aws.proxy.calls("CreateLaunchTemplate").len(), 1, "one launch template per template generation");
    assert_eq!(aws.proxy.calls("CreateTags").len(), 0, "tagged at creation");
    let tagged = aws.live_of(&a).await;
    assert_eq!(tagged.len(), 3, "instant fleets tag their instances with the request's uid");
    assert_eq!(quiet_passes(&mut a, &template, &aws.provider, &sink_a).await, 0, "a settled request writes nothing");

    // Return one named machine while lowering capacity by its weight: exactly it goes.
    let victim = live_ids(&status_a)[0].clone();
    a.spec.capacity = 8;
    a.spec.return_machines = vec![victim.clone()];
    edited(&mut a);
    let (status_a, error) = converge(&mut a, &template, &aws.provider, &sink_a, 6).await;
    assert!(error.is_none(), "{error:?}");
    let left = live_ids(&status_a);
    assert_eq!(left.len(), 2);
    assert!(!left.contains(&victim));
    assert_eq!(status_a.phase, Some(Phase::Fulfilled));

    // Releasing one request keeps the launch template the other still uses.
    let lt = status_a.resources.launch_template_id.clone().unwrap();
    assert_eq!(status_b.resources.launch_template_id.as_ref(), Some(&lt), "shared by the template's requests");
    release(&aws, &a, &sink_a, std::slice::from_ref(&lt)).await;
    assert_eq!(
        aws.ec2.describe_launch_templates().launch_template_ids(&lt).send().await.unwrap().launch_templates().len(),
        1
    );
    assert_eq!(aws.live_of(&b).await.len(), live_ids(&status_b).len(), "the other request keeps its machines");
    release(&aws, &b, &sink_b, &[]).await;
    assert_nothing_left(&aws, &a, &sink_a.current().unwrap()).await;
    assert_nothing_left(&aws, &b, &sink_b.current().unwrap()).await;
}

#[tokio::test]
async fn a_release_is_one_pass_without_a_describe_and_never_holds_a_worker_while_the_poller_looks() {
    let Some(aws) =
        aws("a_release_is_one_pass_without_a_describe_and_never_holds_a_worker_while_the_poller_looks").await
    else {
        return;
    };
    let template = fleet_template(&aws, Api::Ec2Fleet, FleetType::Instant, &[("m5.large", 1)]);
    let (mut a, sink_a) = (request("quick", 2), MemoryStatus::default());
    let (mut b, sink_b) = (request("after-restart", 2), MemoryStatus::default());
    for (mr, sink) in [(&mut a, &sink_a), (&mut b, &sink_b)] {
        let (status, error) = converge(mr, &template, &aws.provider, sink, 6).await;
        assert!(error.is_none(), "{error:?}");
        assert_eq!(status.phase, Some(Phase::Fulfilled), "{:?}", status.conditions);
    }
    let holdings_of = |status: &MachineRequestStatus| -> (Vec<String>, Resources, Option<Attempt>) {
        (live_ids(status), status.resources.clone(), status.attempt.clone())
    };

    // The poller's view is fresh: the fleet is deleted and the machines of the view terminated
    // (EC2 takes that as done for those on their way out) in one pass, with no look again.
    let (known, resources, attempt) = holdings_of(&sink_a.current().unwrap());
    let holdings =
        Holdings { known: &known, resources: &resources, launch_templates_in_use: &[], last_attempt: attempt.as_ref() };
    let describes = aws.proxy.calls("DescribeInstances").len();
    let released = aws.provider.release(&owner_of(&a), holdings).await.unwrap();
    assert_eq!(released, Released::Done);
    assert_eq!(aws.proxy.calls("DescribeInstances").len(), describes, "before, it described the machines again");
    assert_eq!(aws.proxy.calls("DeleteFleets").len(), 1);
    assert!(aws.live_of(&a).await.is_empty());

    // A restarted operator's poller has not looked at the request yet: the release returns
    // rather than wait for that look (a controller worker is not held while a cycle runs)...
    let restarted = aws.restarted().await;
    let AnyProvider::Aws(restarted_aws) = &restarted else { unreachable!() };
    let mut changes = restarted_aws.changes();
    let denied = Fault::Error {
        status: 403,
        code: "UnauthorizedOperation".into(),
        message: "You are not authorized to perform this operation (injected).".into(),
    };
    aws.proxy.inject("DescribeInstances", None, usize::MAX, denied);
    let (known, resources, attempt) = holdings_of(&sink_b.current().unwrap());
    let holdings =
        Holdings { known: &known, resources: &resources, launch_templates_in_use: &[], last_attempt: attempt.as_ref() };
    let first = restarted.release(&owner_of(&b), holdings).await.unwrap();
    assert_eq!(first, Released::AwaitingWake, "before, the release waited for the cycle");
    // ...the poller wakes the request when that look has run, and a look that failed says why.
    support::aws::changed(&mut changes, &b).await;
    let error = restarted.release(&owner_of(&b), holdings).await.unwrap_err();
    assert_eq!(error.code(), "UnauthorizedOperation", "{error}");
    aws.proxy.clear("DescribeInstances");
    let mut released = Err(error);
    for _ in 0..3 {
        support::aws::changed(&mut changes, &b).await;
        released = restarted.release(&owner_of(&b), holdings).await;
        if released == Ok(Released::Done) {
            break;
        }
    }
    assert_eq!(released, Ok(Released::Done));
    assert_nothing_left(&aws, &a, &sink_a.current().unwrap()).await;
    assert_nothing_left(&aws, &b, &sink_b.current().unwrap()).await;
}

#[tokio::test]
async fn capacity_errors_in_an_instant_fleet_drive_a_follow_up_without_the_failed_offering() {
    let Some(aws) = aws("capacity_errors_in_an_instant_fleet_drive_a_follow_up_without_the_failed_offering").await
    else {
        return;
    };
    let template = fleet_template(&aws, Api::Ec2Fleet, FleetType::Instant, &[("m5.large", 1), ("m5.xlarge", 2)]);
    // EC2 answers an instant fleet short of capacity with 200, the errors per override, and
    // what it could launch (here: nothing).
    let subnet = &aws.subnets[0];
    let short = format!(
        r#"<CreateFleetResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>short</requestId><fleetId>fleet-0injected00000000</fleetId><errorSet><item><launchTemplateAndOverrides><overrides><instanceType>m5.large</instanceType><subnetId>{subnet}</subnetId><weightedCapacity>1.0</weightedCapacity></overrides></launchTemplateAndOverrides><lifecycle>on-demand</lifecycle><errorCode>InsufficientInstanceCapacity</errorCode><errorMessage>We currently do not have sufficient m5.large capacity (injected).</errorMessage></item></errorSet><fleetInstanceSet/></CreateFleetResponse>"#
    );
    aws.proxy.inject("CreateFleet", None, 1, Fault::Reply(short));
    let (mut mr, sink) = (request("short", 4), MemoryStatus::default());
    let (status, error) = converge(&mut mr, &template, &aws.provider, &sink, 6).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(status.phase, Some(Phase::Fulfilled), "{:?}", status.conditions);

    let calls = aws.proxy.calls("CreateFleet");
    assert_eq!(calls.len(), 2, "the first call and one follow-up in the same attempt");
    assert_eq!(calls[0].matches("WeightedCapacity=").count(), 4);
    assert_eq!(calls[1].matches("WeightedCapacity=").count(), 3, "the failed offering is left out");
    let token = |body: &str| body.split('&').find_map(|kv| kv.strip_prefix("ClientToken=")).unwrap().to_string();
    assert_ne!(token(&calls[0]), token(&calls[1]), "each call has its own token");
    assert_eq!(status.attempt.as_ref().unwrap().number, 1, "one attempt, not a new one per call");
    let failure = status.failures.iter().find(|f| f.code == "InsufficientInstanceCapacity").expect("recorded");
    assert_eq!(failure.instance_type.as_deref(), Some("m5.large"));
    assert!(failure.message.contains(subnet.as_str()), "{failure:?}");
    release(&aws, &mr, &sink, &[]).await;
    assert_nothing_left(&aws, &mr, &sink.current().unwrap()).await;
}

#[tokio::test]
async fn a_lost_create_fleet_answer_is_replayed_with_its_token_and_never_launches_twice() {
    let Some(aws) = aws("a_lost_create_fleet_answer_is_replayed_with_its_token_and_never_launches_twice").await else {
        return;
    };
    aws.proxy.honour_client_tokens();
    let template = fleet_template(&aws, Api::Ec2Fleet, FleetType::Instant, &[("m5.large", 1)]);
    aws.proxy.inject("CreateFleet", None, 1, Fault::Lost);
    let (mut mr, sink) = (request("lost", 3), MemoryStatus::default());
    let (status, error) = converge(&mut mr, &template, &aws.provider, &sink, 8).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(status.phase, Some(Phase::Fulfilled));
    let calls = aws.proxy.calls("CreateFleet");
    assert_eq!(calls.len(), 2, "the lost call and its replay");
    assert_eq!(calls[0], calls[1], "replayed exactly, same token");
    assert_eq!(aws.live_of(&mr).await.len(), 3, "exactly the capacity, nothing launched twice");
    release(&aws, &mr, &sink, &[]).await;
    assert_nothing_left(&aws, &mr, &sink.current().unwrap()).await;
}

#[tokio::test]
async fn a_request_fleet_is_followed_through_its_members_returned_from_and_deleted() {
    let Some(aws) = aws("a_request_fleet_is_followed_through_its_members_returned_from_and_deleted").await else {
        return;
    };
    let template = fleet_template(&aws, Api::Ec2Fleet, FleetType::Request, &[("m5.large", 1)]);
    let (mut mr, sink) = (request("req-fleet", 3), MemoryStatus::default());
    let (status, error) = converge(&mut mr, &template, &aws.provider, &sink, 6).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(status.phase, Some(Phase::Fulfilled), "{:?}", status.conditions);
    assert_eq!(live_ids(&status).len(), 3, "found through DescribeFleetInstances");
    assert_eq!(status.resources.fleet_ids.len(), 1);
    assert!(aws.live_of(&mr).await.is_empty(), "request fleets cannot tag instances per request: found by fleet");
    for m in &status.machines {
        assert!(m.message.is_none(), "a fleet member is not 'lost by its tags': {m:?}");
    }
    let body = &aws.proxy.calls("CreateFleet")[0];
    assert!(body.contains("Type=request") && body.contains("TagSpecification.1.ResourceType=fleet"), "{body}");

    let victim = live_ids(&status)[0].clone();
    mr.spec.capacity = 2;
    mr.spec.return_machines = vec![victim.clone()];
    edited(&mut mr);
    let (status, error) = converge(&mut mr, &template, &aws.provider, &sink, 6).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(live_ids(&status).len(), 2);
    assert!(!live_ids(&status).contains(&victim));
    assert_eq!(status.phase, Some(Phase::Fulfilled));
    assert_eq!(aws.proxy.calls("CreateFleet").len(), 1, "a return launches nothing");
    assert_eq!(aws.proxy.calls("ModifyFleet").len(), 0, "request fleets cannot be modified");

    release(&aws, &mr, &sink, &[]).await;
    assert!(aws.proxy.calls("DeleteFleets")[0].contains("TerminateInstances=true"));
    assert_nothing_left(&aws, &mr, &sink.current().unwrap()).await;
}

#[tokio::test]
async fn spot_fleets_of_both_types_launch_return_and_cancel() {
    let Some(aws) = aws("spot_fleets_of_both_types_launch_return_and_cancel").await else { return };
    aws.spot_fleet_role().await;
    for fleet_type in [FleetType::Request, FleetType::Maintain] {
        let label = format!("{fleet_type:?}").to_lowercase();
        let mut template = fleet_template(&aws, Api::SpotFleet, fleet_type, &[("m5.large", 1)]);
        template.spec.price_type = PriceType::Spot;
        aws.provider.validate(&template.spec).await.expect("the role and everything else exist");
        let before = aws.proxy.calls("RequestSpotFleet").len();
        let (mut mr, sink) = (request(&format!("spot-{label}"), 3), MemoryStatus::default());
        let (status, error) = converge(&mut mr, &template, &aws.provider, &sink, 6).await;
        assert!(error.is_none(), "{label}: {error:?}");
        assert_eq!(status.phase, Some(Phase::Fulfilled), "{label}: {:?}", status.conditions);
        assert_eq!(live_ids(&status).len(), 3, "{label}");
        assert!(status.machines.iter().all(|m| m.capacity_type.as_deref() == Some("spot")), "{label}");
        assert_eq!(status.resources.spot_fleet_request_ids.len(), 1, "{label}");
        let body = aws.proxy.calls("RequestSpotFleet").last().unwrap().clone();
        assert!(body.contains("AllocationStrategy=priceCapacityOptimized"), "{label}: strategy always set: {body}");
        assert!(
            body.contains("role%2Faws-service-role%2Fspotfleet.amazonaws.com%2FAWSServiceRoleForEC2SpotFleet"),
            "{label}: {body}"
        );
        assert!(body.contains(&format!("Type={label}")), "{label}");

        let victim = live_ids(&status)[0].clone();
        mr.spec.capacity = 2;
        mr.spec.return_machines = vec![victim.clone()];
        edited(&mut mr);
        let (status, error) = converge(&mut mr, &template, &aws.provider, &sink, 6).await;
        assert!(error.is_none(), "{label}: {error:?}");
        assert_eq!(live_ids(&status).len(), 2, "{label}");
        assert!(!live_ids(&status).contains(&victim), "{label}");
        let modified = aws.proxy.calls("ModifySpotFleetRequest");
        if fleet_type == FleetType::Maintain {
            let last = modified.last().expect("the maintain fleet is lowered before the return");
            assert!(
                last.contains("TargetCapacity=2") && last.contains("ExcessCapacityTerminationPolicy=noTermination"),
                "{last}"
            );
            // Scaling up again sets the target; no second fleet.
            mr.spec.capacity = 3;
            edited(&mut mr);
            let (status, error) = converge(&mut mr, &template, &aws.provider, &sink, 6).await;
            assert!(error.is_none(), "{error:?}");
            assert_eq!(status.phase, Some(Phase::Fulfilled), "{:?}", status.conditions);
            assert_eq!(live_ids(&status).len(), 3);
            assert!(aws.proxy.calls("ModifySpotFleetRequest").last().unwrap().contains("TargetCapacity=3"));
            assert_eq!(status.resources.spot_fleet_request_ids.len(), 1, "scaled, not created again");
            // Naming a machine at unchanged capacity replaces it (the fleet's target goes down
            // for the return, up for the replacement).
            let bad = live_ids(&status)[0].clone();
            mr.spec.return_machines = vec![victim.clone(), bad.clone()];
            edited(&mut mr);
            let (status, error) = converge(&mut mr, &template, &aws.provider, &sink, 8).await;
            assert!(error.is_none(), "{error:?}");
            assert_eq!(status.phase, Some(Phase::Fulfilled), "{:?}", status.conditions);
            let after = live_ids(&status);
            assert_eq!(after.len(), 3);
            assert!(!after.contains(&bad), "{after:?}");
        } else {
            assert!(modified.is_empty(), "a request fleet is never modified");
        }
        assert_eq!(aws.proxy.calls("RequestSpotFleet").len() - before, 1, "{label}: one spot fleet request");

        release(&aws, &mr, &sink, &[]).await;
        assert!(aws.proxy.calls("CancelSpotFleetRequests").last().unwrap().contains("TerminateInstances=true"));
        assert_nothing_left(&aws, &mr, &sink.current().unwrap()).await;
    }
}

#[tokio::test]
async fn a_spot_fleet_deleted_while_provisioning_is_cancelled_and_leaves_nothing() {
    let Some(aws) = aws("a_spot_fleet_deleted_while_provisioning_is_cancelled_and_leaves_nothing").await else {
        return;
    };
    aws.spot_fleet_role().await;
    let mut template = fleet_template(&aws, Api::SpotFleet, FleetType::Maintain, &[("m5.large", 1)]);
    template.spec.price_type = PriceType::Spot;
    let (mut mr, sink) = (request("early", 4), MemoryStatus::default());
    // One pass: the spot fleet request is made; the request is deleted before any machine was
    // seen running.
    support::driver::pass(&mut mr, &template, &aws.provider, &sink, jiff::Timestamp::now(), false).await.unwrap();
    let status = sink.current().unwrap();
    assert_eq!(status.resources.spot_fleet_request_ids.len(), 1);
    assert!(status.machines.is_empty(), "{:?}", status.machines);
    release(&aws, &mr, &sink, &[]).await;
    assert_eq!(aws.proxy.calls("CancelSpotFleetRequests").len(), 1);
    let sfr = &status.resources.spot_fleet_request_ids[0];
    let out = aws.ec2.describe_spot_fleet_instances().spot_fleet_request_id(sfr).send().await.unwrap();
    assert!(out.active_instances().is_empty(), "{:?}", out.active_instances());
    assert_nothing_left(&aws, &mr, &status).await;
}

#[tokio::test]
async fn a_maintain_fleet_is_one_per_request_scaled_by_its_target_and_deleted() {
    let Some(aws) = aws("a_maintain_fleet_is_one_per_request_scaled_by_its_target_and_deleted").await else {
        return;
    };
    let template = fleet_template(&aws, Api::Ec2Fleet, FleetType::Maintain, &[("m5.large", 1)]);
    let (mut mr, sink) = (request("maintained", 3), MemoryStatus::default());
    let (status, error) = converge(&mut mr, &template, &aws.provider, &sink, 6).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(status.phase, Some(Phase::Fulfilled), "{:?}", status.conditions);
    assert_eq!(live_ids(&status).len(), 3, "found through DescribeFleetInstances");
    let body = &aws.proxy.calls("CreateFleet")[0];
    assert!(body.contains("Type=maintain") && body.contains("ExcessCapacityTerminationPolicy=no-termination"));

    // More capacity sets the fleet's target (moto has no ModifyFleet and answers 500: the call
    // is what is proven here; its content is proven in ec2_fleet's unit tests).
    mr.spec.capacity = 4;
    edited(&mut mr);
    let outcome = support::driver::pass(&mut mr, &template, &aws.provider, &sink, jiff::Timestamp::now(), false).await;
    assert!(outcome.is_err(), "moto's 500 surfaces as a retryable error");
    let modify = aws.proxy.calls("ModifyFleet");
    assert!(!modify.is_empty(), "scaled through ModifyFleet");
    assert!(modify[0].contains("TargetCapacitySpecification.TotalTargetCapacity=4"), "{}", modify[0]);
    assert_eq!(aws.proxy.calls("CreateFleet").len(), 1, "one maintain fleet per request");
    let attempt = sink.current().unwrap().attempt.unwrap();
    assert!(!attempt.completed, "an unanswered call keeps the attempt open for an exact replay");

    release(&aws, &mr, &sink, &[]).await;
    assert_nothing_left(&aws, &mr, &sink.current().unwrap()).await;
}

/// An attempt whose create call's answer was lost, started long enough ago that what it made
/// is visible.
fn lost_attempt() -> Attempt {
    let started = jiff::Timestamp::now() - jiff::SignedDuration::from_mins(10);
    Attempt {
        number: 1,
        completed: false,
        started_at: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(started)),
        ..Default::default()
    }
}

/// A create whose answer was lost (the operator killed after the call, or a timeout) is replayed
/// with the same token. EC2 would answer with what the first call made; moto, like any client
/// that reaches a different endpoint, makes another. The replay must find the first call's
/// fleet by the request's tags and adopt it, and a release after a lost answer must remove it.
async fn a_lost_create_is_adopted_on_replay_and_released(test: &str, api: Api, fleet_type: FleetType) {
    let Some(aws) = aws(test).await else { return };
    aws.spot_fleet_role().await;
    let template = fleet_template(&aws, api, fleet_type, &[("t3.medium", 1)]);
    let mr = request("lost-answer", 2);
    let owner = owner_of(&mr);
    let nothing = Resources::default();
    let launch = |replay| orb_operator::provider::ProvisionRequest {
        owner: &owner,
        template: &template.spec,
        mix: orb_operator::provider::MarketMix { on_demand: 2, spot: 0 },
        client_token: "orb-1-lost",
        resources: &nothing,
        target_units: 2,
        replay,
        left_out: &[],
    };
    let first = aws.provider.provision(&launch(false)).await.unwrap();
    let made = [first.resources.fleet_ids.clone(), first.resources.spot_fleet_request_ids.clone()].concat();
    assert_eq!(made.len(), 1, "{first:?}");
    // The answer is lost: nothing was recorded. The replay adopts instead of creating.
    let creates = |aws: &Aws| aws.proxy.calls("CreateFleet").len() + aws.proxy.calls("RequestSpotFleet").len();
    let replayed = aws.provider.provision(&launch(true)).await.unwrap();
    assert_eq!(creates(&aws), 1, "the replay created again instead of adopting");
    let adopted = [replayed.resources.fleet_ids.clone(), replayed.resources.spot_fleet_request_ids.clone()].concat();
    assert_eq!(adopted, made);
    let ids = |o: &orb_operator::provider::ProvisionOutcome| {
        o.launched.iter().map(|m| m.instance_id.clone()).collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(ids(&replayed), ids(&first), "an instant fleet's machines come with it");
    assert_eq!(replayed.accepted_units, first.accepted_units);

    // Deleted before anything was recorded: the release finds the fleet by its tags.
    release_with_nothing_recorded(&aws, &owner).await;
}

/// Releases `owner`'s request as one deleted while its create's answer was lost (nothing in
/// its status), and requires that nothing of the cluster is left.
async fn release_with_nothing_recorded(aws: &Aws, owner: &orb_operator::provider::Owner) {
    let holdings = Holdings {
        known: &[],
        resources: &Resources::default(),
        launch_templates_in_use: &[],
        last_attempt: Some(&lost_attempt()),
    };
    let released = support::aws::release(&aws.provider, owner, holdings).await.unwrap();
    assert_eq!(released, Released::Done);
    let left = support::moto::leftovers(aws.moto, aws.region, support::aws::CLUSTER).await;
    assert!(left.is_empty(), "left behind after a release that had lost the create's answer: {left:?}");
}

#[tokio::test]
async fn a_request_fleet_whose_create_answer_was_lost_is_adopted_and_released() {
    let test = "a_request_fleet_whose_create_answer_was_lost_is_adopted_and_released";
    a_lost_create_is_adopted_on_replay_and_released(test, Api::Ec2Fleet, FleetType::Request).await;
}

#[tokio::test]
async fn an_instant_fleet_whose_create_answer_was_lost_is_adopted_with_its_machines() {
    let test = "an_instant_fleet_whose_create_answer_was_lost_is_adopted_with_its_machines";
    a_lost_create_is_adopted_on_replay_and_released(test, Api::Ec2Fleet, FleetType::Instant).await;
}

#[tokio::test]
async fn a_spot_fleet_whose_create_answer_was_lost_is_adopted_and_released() {
    let test = "a_spot_fleet_whose_create_answer_was_lost_is_adopted_and_released";
    a_lost_create_is_adopted_on_replay_and_released(test, Api::SpotFleet, FleetType::Maintain).await;
}

/// After a burst of lost create answers every request looks for what its create made in a
/// listing of every fleet of the account (DescribeFleets filters by no tag): the requests
/// replaying at the same moment share one listing, each adopting its own fleet from it.
#[tokio::test]
async fn requests_replaying_lost_creates_together_share_one_listing_of_the_accounts_fleets() {
    let test = "requests_replaying_lost_creates_together_share_one_listing_of_the_accounts_fleets";
    let Some(aws) = aws(test).await else { return };
    let template = fleet_template(&aws, Api::Ec2Fleet, FleetType::Request, &[("t3.medium", 1)]);
    let nothing = Resources::default();
    let owners: Vec<_> = ["lost-a", "lost-b", "lost-c"].iter().map(|name| owner_of(&request(name, 1))).collect();
    let launch = |owner, replay| orb_operator::provider::ProvisionRequest {
        owner,
        template: &template.spec,
        mix: orb_operator::provider::MarketMix { on_demand: 1, spot: 0 },
        client_token: "orb-1-lost",
        resources: &nothing,
        target_units: 1,
        replay,
        left_out: &[],
    };
    let mut made = vec![];
    for owner in &owners {
        made.push(aws.provider.provision(&launch(owner, false)).await.unwrap().resources.fleet_ids);
    }
    // Every answer was lost: all three replay at once.
    let listings = aws.proxy.calls("DescribeFleets").len();
    let asks: Vec<_> = owners.iter().map(|owner| launch(owner, true)).collect();
    let replays = futures::future::join_all(asks.iter().map(|ask| aws.provider.provision(ask))).await;
    for (replayed, made) in replays.into_iter().zip(&made) {
        assert_eq!(&replayed.unwrap().resources.fleet_ids, made, "each request adopts the fleet its own create made");
    }
    assert_eq!(aws.proxy.calls("CreateFleet").len(), 3, "no replay created again");
    assert_eq!(aws.proxy.calls("DescribeFleets").len() - listings, 1, "one listing for the three replays");
    // Deleted before anything was recorded, together: each release finds its own fleet.
    let lost = lost_attempt();
    let holdings =
        || Holdings { known: &[], resources: &nothing, launch_templates_in_use: &[], last_attempt: Some(&lost) };
    let released =
        futures::future::join_all(owners.iter().map(|owner| support::aws::release(&aws.provider, owner, holdings())))
            .await;
    assert!(released.iter().all(|r| r == &Ok(Released::Done)), "{released:?}");
    let left = support::moto::leftovers(aws.moto, aws.region, support::aws::CLUSTER).await;
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[tokio::test]
async fn an_auto_scaling_group_whose_create_answer_was_lost_is_released() {
    let test = "an_auto_scaling_group_whose_create_answer_was_lost_is_released";
    let Some(aws) = aws(test).await else { return };
    let template = fleet_template(&aws, Api::Asg, FleetType::Maintain, &[("t3.medium", 1)]);
    let mut template_spec = template.spec.clone();
    template_spec.fleet_type = None;
    let mr = request("lost-group", 2);
    let owner = owner_of(&mr);
    let nothing = Resources::default();
    let launch = orb_operator::provider::ProvisionRequest {
        owner: &owner,
        template: &template_spec,
        mix: orb_operator::provider::MarketMix { on_demand: 2, spot: 0 },
        client_token: "orb-1-lost",
        resources: &nothing,
        target_units: 2,
        replay: false,
        left_out: &[],
    };
    let made = aws.provider.provision(&launch).await.unwrap();
    assert!(made.resources.asg_name.is_some(), "{made:?}");
    // The answer is lost; the request is deleted before anything was recorded.
    release_with_nothing_recorded(&aws, &owner).await;
}

#[tokio::test]
async fn a_lost_fleet_create_closed_without_a_replay_is_adopted_and_then_released() {
    let test = "a_lost_fleet_create_closed_without_a_replay_is_adopted_and_then_released";
    let Some(aws) = aws(test).await else { return };
    let template = fleet_template(&aws, Api::Ec2Fleet, FleetType::Request, &[("m5.large", 1)]);
    // Every answer lost, the SDK's retries' too; like EC2, the proxy makes one fleet per token.
    aws.proxy.honour_client_tokens();
    aws.proxy.inject("CreateFleet", None, 10, Fault::Lost);
    let (mut mr, sink) = (request("lost-then-lowered", 3), MemoryStatus::default());
    let _ = support::driver::pass(&mut mr, &template, &aws.provider, &sink, jiff::Timestamp::now(), false).await;
    let status = sink.current().unwrap();
    assert!(status.outcome_unknown(), "the create's answer was lost: {:?}", status.attempt);
    assert!(status.resources.fleet_ids.is_empty());
    let calls = aws.proxy.calls("CreateFleet").len();

    // Capacity lowered to nothing before the replay: the attempt is closed without one, and
    // the fleet the lost call made is adopted rather than left to run untracked.
    mr.spec.capacity = 0;
    edited(&mut mr);
    let (status, error) = converge(&mut mr, &template, &aws.provider, &sink, 6).await;
    assert!(error.is_none(), "{error:?}");
    assert!(!status.outcome_unknown());
    assert_eq!(aws.proxy.calls("CreateFleet").len(), calls, "no replay for capacity 0");
    assert_eq!(status.resources.fleet_ids.len(), 1, "the lost create's fleet is adopted: {:?}", status.resources);
    release(&aws, &mr, &sink, &[]).await;
    assert_nothing_left(&aws, &mr, &sink.current().unwrap()).await;
}

#[tokio::test]
async fn a_release_moments_after_a_fleet_was_made_waits_for_ec2_to_show_it() {
    let test = "a_release_moments_after_a_fleet_was_made_waits_for_ec2_to_show_it";
    let Some(aws) = aws(test).await else { return };
    let template = fleet_template(&aws, Api::Ec2Fleet, FleetType::Request, &[("m5.large", 1)]);
    let (mut mr, sink) = (request("fleet-just-made", 2), MemoryStatus::default());
    converge(&mut mr, &template, &aws.provider, &sink, 6).await;
    let status = sink.current().unwrap();
    let fleet = status.resources.fleet_ids[0].clone();
    // Deleted seconds later by an operator that restarted meanwhile; eventually consistent EC2
    // does not know the new fleet yet, to describe or to delete. Before, the release took it
    // for gone.
    let restarted = aws.restarted().await;
    let nothing = r#"<DescribeFleetsResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>lag</requestId><fleetSet/></DescribeFleetsResponse>"#;
    aws.proxy.inject("DescribeFleets", None, usize::MAX, Fault::Reply(nothing.into()));
    let unknown = format!(
        r#"<DeleteFleetsResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>lag</requestId><successfulFleetDeletionSet/><unsuccessfulFleetDeletionSet><item><error><code>fleetIdDoesNotExist</code><message>The fleet ID '{fleet}' does not exist</message></error><fleetId>{fleet}</fleetId></item></unsuccessfulFleetDeletionSet></DeleteFleetsResponse>"#
    );
    aws.proxy.inject("DeleteFleets", None, usize::MAX, Fault::Reply(unknown));
    let known: Vec<String> = status.machines.iter().map(|m| m.instance_id.clone()).collect();
    let holdings = || Holdings {
        known: &known,
        resources: &status.resources,
        launch_templates_in_use: &[],
        last_attempt: status.attempt.as_ref(),
    };
    let released = support::aws::release(&restarted, &owner_of(&mr), holdings()).await.unwrap();
    assert!(
        matches!(&released, Released::InProgress(left) if left.contains(&fleet)),
        "a fleet not shown moments after its creation is not gone: {released:?}"
    );
    aws.proxy.clear("DescribeFleets");
    aws.proxy.clear("DeleteFleets");
    // Shown now: deleted, and a later pass does not wait for the fleet it deleted itself.
    let mut released = support::aws::release(&restarted, &owner_of(&mr), holdings()).await.unwrap();
    for _ in 0..3 {
        if released == Released::Done {
            break;
        }
        released = support::aws::release(&restarted, &owner_of(&mr), holdings()).await.unwrap();
    }
    assert_eq!(released, Released::Done);
    assert_nothing_left(&aws, &mr, &sink.current().unwrap()).await;
}

/// An orphaned `maintain` fleet's later instances come from the shared launch template, whose
/// tags carry no mark: orphaning makes a marked version of it and points the fleet at it.
async fn an_orphaned_maintain_fleet_launches_marked(test: &str, api: Api, modify: &str) {
    let Some(aws) = aws(test).await else { return };
    if api == Api::SpotFleet {
        aws.spot_fleet_role().await;
    }
    let template = fleet_template(&aws, api, FleetType::Maintain, &[("m5.large", 1)]);
    let (mut mr, sink) = (request("kept", 2), MemoryStatus::default());
    converge(&mut mr, &template, &aws.provider, &sink, 6).await;
    let status = sink.current().unwrap();
    let lt = status.resources.launch_template_id.clone().expect("the operator's launch template");
    // moto has no ModifyFleet (and ignores a spot fleet's new launch template configs): the
    // call is answered as EC2 would, and its content checked.
    let ok = format!(
        "<{modify}Response xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>ok</requestId><return>true</return></{modify}Response>"
    );
    aws.proxy.inject(modify, None, 2, Fault::Reply(ok));
    if api == Api::SpotFleet {
        // moto describes a spot fleet request without its type and launch template configs
        // (every describe from now on answers as EC2 would).
        let id = &status.resources.spot_fleet_request_ids[0];
        let described = format!(
            "<DescribeSpotFleetRequestsResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>d</requestId><spotFleetRequestConfigSet><item><spotFleetRequestId>{id}</spotFleetRequestId><spotFleetRequestState>active</spotFleetRequestState><spotFleetRequestConfig><type>maintain</type><targetCapacity>2</targetCapacity><launchTemplateConfigs><item><launchTemplateSpecification><launchTemplateId>{lt}</launchTemplateId><version>1</version></launchTemplateSpecification><overrides><item><instanceType>m5.large</instanceType><weightedCapacity>1.0</weightedCapacity></item></overrides></item></launchTemplateConfigs></spotFleetRequestConfig></item></spotFleetRequestConfigSet></DescribeSpotFleetRequestsResponse>"
        );
        aws.proxy.inject("DescribeSpotFleetRequests", None, usize::MAX, Fault::Reply(described));
    }
    let known = live_ids(&status);
    let holdings =
        Holdings { known: &known, resources: &status.resources, launch_templates_in_use: &[], last_attempt: None };
    aws.provider.orphan(&owner_of(&mr), holdings).await.unwrap();
    let versions = aws.ec2.describe_launch_template_versions().launch_template_id(&lt).versions("2").send().await;
    let marked =
        versions.unwrap().launch_template_versions()[0].launch_template_data().unwrap().tag_specifications().to_vec();
    let instance_tags = marked
        .iter()
        .find(|s| s.resource_type() == Some(&aws_sdk_ec2::types::ResourceType::Instance))
        .map(|s| s.tags().iter().filter_map(|t| t.key()).collect::<Vec<_>>())
        .unwrap_or_default();
    assert!(instance_tags.contains(&"orb.dev/orphaned"), "{instance_tags:?}");
    assert!(instance_tags.contains(&"orb.dev/cluster"), "the launch template's own tags stay: {instance_tags:?}");
    let calls = aws.proxy.calls(modify);
    let body = calls
        .last()
        .unwrap_or_else(|| panic!("the fleet is pointed at the marked version: {:?}", aws.proxy.all_calls()));
    assert!(body.contains(&format!("LaunchTemplateId={lt}")) && body.contains("Version=2"), "{body}");
    assert!(body.contains("InstanceType=m5.large"), "the overrides are kept: {body}");
    // An orphaning retried (its first try failed after the version was made) reuses the version.
    let holdings =
        Holdings { known: &known, resources: &status.resources, launch_templates_in_use: &[], last_attempt: None };
    aws.provider.orphan(&owner_of(&mr), holdings).await.unwrap();
    assert_eq!(aws.proxy.calls("CreateLaunchTemplateVersion").len(), 1, "the marked version is made once");
    assert!(aws.proxy.calls(modify).last().unwrap().contains("Version=2"));
}

#[tokio::test]
async fn an_orphaned_maintain_ec2_fleet_launches_marked_instances_from_then_on() {
    let test = "an_orphaned_maintain_ec2_fleet_launches_marked_instances_from_then_on";
    an_orphaned_maintain_fleet_launches_marked(test, Api::Ec2Fleet, "ModifyFleet").await;
}

#[tokio::test]
async fn an_orphaned_maintain_spot_fleet_launches_marked_instances_from_then_on() {
    let test = "an_orphaned_maintain_spot_fleet_launches_marked_instances_from_then_on";
    an_orphaned_maintain_fleet_launches_marked(test, Api::SpotFleet, "ModifySpotFleetRequest").await;
}

/// An orphaned instant fleet launches nothing later: no marked launch template version is made
/// for it, nothing is modified.
#[tokio::test]
async fn an_orphaned_instant_fleet_gets_no_marked_launch_template_version() {
    let Some(aws) = aws("an_orphaned_instant_fleet_gets_no_marked_launch_template_version").await else { return };
    let template = fleet_template(&aws, Api::Ec2Fleet, FleetType::Instant, &[("m5.large", 1)]);
    let (mut mr, sink) = (request("kept", 2), MemoryStatus::default());
    converge(&mut mr, &template, &aws.provider, &sink, 6).await;
    let status = sink.current().unwrap();
    assert!(status.resources.launch_template_id.is_some() && !status.resources.fleet_ids.is_empty());
    let known = live_ids(&status);
    let holdings =
        Holdings { known: &known, resources: &status.resources, launch_templates_in_use: &[], last_attempt: None };
    aws.provider.orphan(&owner_of(&mr), holdings).await.unwrap();
    assert!(aws.proxy.calls("CreateLaunchTemplateVersion").is_empty(), "no version for an instant fleet");
    assert!(aws.proxy.calls("ModifyFleet").is_empty());
}

/// Deleting many requests of one template costs what creating them did, not a listing each:
/// releases made together share the fleet deletions, the terminations and one look at what
/// launches from the shared launch template, which is deleted once; a release done again sends
/// nothing for what it already removed.
#[tokio::test]
async fn releasing_many_requests_together_deletes_their_shared_launch_template_once_after_one_listing() {
    let test = "releasing_many_requests_together_deletes_their_shared_launch_template_once_after_one_listing";
    let Some(aws) = aws(test).await else { return };
    const N: usize = 20;
    let template = fleet_template(&aws, Api::Ec2Fleet, FleetType::Instant, &[("m5.large", 1)]);
    let mut requests = vec![];
    for i in 0..N {
        let (mut mr, sink) = (request(&format!("many-{i}"), 1), MemoryStatus::default());
        let (status, error) = converge(&mut mr, &template, &aws.provider, &sink, 6).await;
        assert!(error.is_none() && status.phase == Some(Phase::Fulfilled), "{error:?}");
        requests.push((mr, sink));
    }
    let lt = requests[0].1.current().unwrap().resources.launch_template_id.unwrap();
    let before = aws.proxy.all_calls();
    futures::future::join_all(requests.iter().map(|(mr, sink)| release_by(&aws.provider, mr, sink, &[]))).await;
    let spent = aws.proxy.spent_since(&before);
    let total: usize = spent.values().sum();
    eprintln!("releasing {N} requests: {total} calls {spent:?}");
    assert_eq!(spent.get("DescribeLaunchTemplates"), Some(&1), "one listing for all, not one each: {spent:?}");
    assert_eq!(spent.get("DeleteLaunchTemplate"), Some(&1), "the shared launch template deleted once: {spent:?}");
    assert!(total as f64 <= 1.2 * N as f64, "{total} calls for {N} releases: {spent:?}");
    assert!(!launch_template_exists(&aws, &lt).await);
    let left = support::moto::leftovers(aws.moto, aws.region, support::aws::CLUSTER).await;
    assert!(left.is_empty(), "left behind: {left:?}");
    // A release done again (the finalizer's retry) sends nothing for what is gone.
    let again = aws.proxy.all_calls();
    release_by(&aws.provider, &requests[0].0, &requests[0].1, &[]).await;
    for action in ["DeleteFleets", "DeleteLaunchTemplate", "DescribeFleets"] {
        assert_eq!(aws.proxy.calls(action).len(), again.get(action).copied().unwrap_or(0), "{action} sent again");
    }
}

/// A request that adopted a fleet launching from the user's own launch template (a lost create
/// found by its tags records the fleet's launch template) never deletes it on release: only this
/// cluster's launch templates are deleted.
#[tokio::test]
async fn a_release_never_deletes_the_users_own_launch_template_even_when_recorded() {
    let Some(aws) = aws("a_release_never_deletes_the_users_own_launch_template_even_when_recorded").await else {
        return;
    };
    let data = aws_sdk_ec2::types::RequestLaunchTemplateData::builder().image_id(&aws.image).build();
    let made = aws.ec2.create_launch_template().launch_template_name("users-own").launch_template_data(data);
    let users = made.send().await.unwrap().launch_template().unwrap().launch_template_id().unwrap().to_string();
    let mut template = fleet_template(&aws, Api::Ec2Fleet, FleetType::Instant, &[("m5.large", 1)]);
    template.spec.image_id = None;
    template.spec.launch_template = Some(LaunchTemplateRef { id: Some(users.clone()), ..Default::default() });
    let (mut mr, sink) = (request("users-lt", 1), MemoryStatus::default());
    let (status, error) = converge(&mut mr, &template, &aws.provider, &sink, 6).await;
    assert!(error.is_none() && status.phase == Some(Phase::Fulfilled), "{error:?} {status:?}");
    // As an adoption of what a lost create made records it.
    let mut adopted = status.clone();
    adopted.resources.launch_template_id = Some(users.clone());
    sink.write(&adopted).await.unwrap();
    release_by(&aws.provider, &mr, &sink, &[]).await;
    assert!(launch_template_exists(&aws, &users).await, "the user's launch template was deleted");
    assert!(aws.proxy.calls("DeleteLaunchTemplate").is_empty());
}
